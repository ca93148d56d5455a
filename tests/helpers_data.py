"""Fixtures for the data-stage tests, all built in tmp_path in the real file formats."""
from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Py2Pickler(pickle._Pickler):
    """Pickles text and bytes as Python 2 `str`, and names numpy.core.multiarray._reconstruct,
    byte for byte the way cPickle wrote the real CIFAR-10 python batches (protocol 2)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(raw)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


class EvilPickle:
    """Unpickling this runs `touch marker`: what the data stage's restricted unpickler must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def nhwc_to_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> N x 3072 rows, channel planes first, as in the CIFAR batches."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def cifar_batch(images: np.ndarray, labels: list[int], name: str) -> bytes:
    return py2_pickle({
        "batch_label": name,
        "labels": [int(x) for x in labels],
        "data": nhwc_to_rows(images),
        "filenames": [f"img_{i:05d}.png" for i in range(len(labels))],
    })


def make_cifar_folder(root: Path, per_batch: int = 10, n_test: int = 12) -> dict:
    """cifar-10-batches-py/ with 5 train batches, test_batch and batches.meta; returns what is inside."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = cifar_images(5 * per_batch, seed=1)
    labels = np.arange(5 * per_batch) % 10
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        (folder / f"data_batch_{b + 1}").write_bytes(
            cifar_batch(images[part], labels[part].tolist(), f"training batch {b + 1} of 5")
        )
    test_images = cifar_images(n_test, seed=2)
    test_labels = (np.arange(n_test) * 3) % 10
    (folder / "test_batch").write_bytes(cifar_batch(test_images, test_labels.tolist(), "testing batch 1 of 1"))
    (folder / "batches.meta").write_bytes(
        py2_pickle({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072})
    )
    return {
        "folder": folder, "images": images, "labels": labels, "test_images": test_images, "test_labels": test_labels,
    }


def make_cifar_targz(root: Path, **kw) -> tuple[Path, dict]:
    made = make_cifar_folder(root / "src", **kw)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(made["folder"], arcname="cifar-10-batches-py")
    return archive, made


def course_test_pickle(images: np.ndarray, ids: list[int], hwc: bool) -> bytes:
    data = images if hwc else nhwc_to_rows(images)
    return pickle.dumps({b"data": data, b"ids": np.array(ids)}, protocol=4)


def encode_image(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    mode = "L" if array.ndim == 2 else "RGB"
    Image.fromarray(array, mode).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def kaggle_files(
    n_train: int = 20,
    n_test: int = 7,
    classes: tuple[str, ...] = ("cat", "dog", "frog"),
    label_form: str = "name",
    fmt: str = "PNG",
    size: int = 8,
    labels_name: str = "trainLabels.csv",
    sample_name: str = "sampleSubmission.csv",
) -> tuple[dict[str, bytes], dict]:
    """A Kaggle-style competition: train/<id>.<ext>, a labels CSV, test/<id>.<ext>, a sample submission.

    The sample submission lists test ids in a shuffled order, as real ones may.
    """
    rng = np.random.default_rng(0)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    train = rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8)
    labels = np.arange(n_train) % len(classes)
    files = {f"train/{i + 1}.{ext}": encode_image(train[i], fmt) for i in range(n_train)}
    files |= {f"test/{i + 1}.{ext}": encode_image(test[i], fmt) for i in range(n_test)}
    shown = [classes[y] if label_form == "name" else str(y) for y in labels]
    files[labels_name] = ("id,label\n" + "".join(f"{i + 1},{s}\n" for i, s in enumerate(shown))).encode()
    order = rng.permutation(n_test) + 1
    placeholder = classes[0] if label_form == "name" else "0"
    files[sample_name] = ("id,label\n" + "".join(f"{i},{placeholder}\n" for i in order)).encode()
    return files, {"train": train, "test": test, "labels": labels, "test_order": order}


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """An http.server on 127.0.0.1 serving `folder`; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())
