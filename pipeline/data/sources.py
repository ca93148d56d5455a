"""Data sources by name: where a competition's files come from and how they are read.

Each source is a class registered in SOURCES with
    detect(tree) -> bool       does this folder/archive look like mine? (None: never guessed)
    load(ctx, tree) -> Ingested tree is the fetched --source/--kaggle input, or None for the
                               source's own default (a canonical URL, sklearn's bundled file)
`--format auto` asks each source's detect in turn and falls back to the Kaggle layout.
"""
from __future__ import annotations

import gzip
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data import pickles
from pipeline.data.archives import FileTree, open_nested, open_tree
from pipeline.data.fetch import fetch, is_url, url_filename
from pipeline.data.ingested import (
    COURSE_FORMAT,
    KAGGLE_FORMAT,
    ImageSet,
    Ingested,
    SubmissionFormat,
    numbered_ids,
)
from pipeline.data.kaggle_layout import load_kaggle_layout
from pipeline.data.limits import Limits
from pipeline.errors import PipelineError
from pipeline.registry import Registry

log = logging.getLogger(__name__)

SOURCES = Registry("data source")
FALLBACK = "kaggle"

# Canonical downloads, with the checksums torchvision checks (torchvision/datasets/{cifar,mnist}.py).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FASHION_MNIST_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# The digits competition's test split is part of its definition: it never moves with --seed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0
DIGITS_SIZE = 32

# Which source a competition name uses when neither --source nor --kaggle is given.
DEFAULT_SOURCE = {"cifar10": "cifar10", "fashion-mnist": "fashion-mnist", "digits": "digits"}


@dataclass
class FetchContext:
    """Where a source puts what it fetches (raw/), scratch space, and what the user asked for."""

    raw_dir: Path
    work_dir: Path
    reuse_dir: Path | None = None  # the previous run's raw/, to skip downloading again
    classes: list[str] | None = None
    limits: Limits = field(default_factory=Limits)
    _trees: list[FileTree] = field(default_factory=list)

    def fetch(self, location: str, md5: str | None = None) -> Path:
        return fetch(location, self.raw_dir, md5=md5, reuse=self.reuse_dir)

    def open(self, path: Path, label: str | None = None) -> FileTree:
        tree = open_nested(open_tree(path, self.work_dir, label, self.limits), self.work_dir)
        self._trees.append(tree)
        return tree

    def close(self) -> None:
        for tree in self._trees:
            tree.close()


def detect_format(tree: FileTree) -> str:
    for name in SOURCES:
        source = SOURCES.get(name)
        if name != FALLBACK and source.detect is not None and source.detect(tree):
            return name
    return FALLBACK


def _base(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _basenames(tree: FileTree) -> dict[str, str]:
    return {_base(n): n for n in tree.names()}


class _KnownFiles:
    """A built-in source: recognised by its files (all of one of `markers`, sets of base names) and
    downloaded by `download(ctx) -> (tree, details)` when no source is given; `read` ingests the tree."""

    markers: tuple[frozenset[str], ...] = ()

    @classmethod
    def detect(cls, tree: FileTree) -> bool:
        names = set(_basenames(tree))
        return any(marker <= names for marker in cls.markers)

    @classmethod
    def load(cls, ctx: FetchContext, tree: FileTree | None) -> Ingested:
        tree, details = cls.download(ctx) if tree is None else (tree, {})
        return cls.read(tree, details)


# ----------------------------------------------------------------------------------- CIFAR-10

CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


@SOURCES.register("cifar10")
class Cifar10Python(_KnownFiles):
    """The CIFAR-10 python archive, or its extracted cifar-10-batches-py/ folder.

    A course test pickle beside the batches (e.g. cifar_test_nolabels.pkl) becomes the test set,
    with `ID,Labels` integer submissions; otherwise test_batch's images are the test set, ids
    1..10000, and its labels only the withheld answer key.
    """

    markers = (frozenset({"batches.meta", "data_batch_1"}),)

    @staticmethod
    def download(ctx: FetchContext) -> tuple[FileTree, dict]:
        return ctx.open(ctx.fetch(CIFAR10_URL, md5=CIFAR10_MD5)), {"url": CIFAR10_URL, "md5": CIFAR10_MD5}

    @staticmethod
    def read(tree: FileTree, details: dict) -> Ingested:
        batch_dir = _cifar_batch_dir(tree)
        classes = pickles.read_meta(*_member(tree, batch_dir + "batches.meta"))
        parts = [pickles.read_batch(*_member(tree, batch_dir + b)) for b in CIFAR_TRAIN_BATCHES]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        _check_label_range(labels, classes, tree.where(batch_dir + "data_batch_1"))
        train = ImageSet.from_arrays(images, numbered_ids(len(images)), labels, tree.label)
        course_test = _course_test_in(tree, batch_dir)
        if course_test is not None:
            test = read_course_test(tree.read(course_test), tree.where(course_test))
            return Ingested(classes, train, test, COURSE_FORMAT, details={**details, "test_file": course_test})
        test_images, test_labels = pickles.read_batch(*_member(tree, batch_dir + "test_batch"))
        _check_label_range(test_labels, classes, tree.where(batch_dir + "test_batch"))
        test = ImageSet.from_arrays(
            test_images, numbered_ids(len(test_images)), test_labels, tree.where(batch_dir + "test_batch")
        )
        return Ingested(classes, train, test, KAGGLE_FORMAT, details=details)


def _member(tree: FileTree, name: str) -> tuple[bytes, str]:
    if name not in tree:
        raise PipelineError(f"{tree.label}: {name} is missing")
    return tree.read(name), tree.where(name)


def _cifar_batch_dir(tree: FileTree) -> str:
    dirs = {n[: -len("batches.meta")] for n in tree.names() if _base(n) == "batches.meta"}
    if len(dirs) != 1:
        raise PipelineError(f"{tree.label}: expected one cifar-10-batches-py/ folder, found {len(dirs) or 'none'}")
    return dirs.pop()


def _course_test_in(tree: FileTree, batch_dir: str) -> str | None:
    found = [
        n for n in tree.names()
        if n.endswith(".pkl") and "test" in _base(n).lower() and not n.startswith(batch_dir)
    ]
    if len(found) > 1:
        raise PipelineError(f"{tree.label}: several test pickles ({', '.join(found)}); pass one with --test-source")
    return found[0] if found else None


def _check_label_range(labels: np.ndarray, classes: list[str], where: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise PipelineError(f"{where}: labels outside 0..{len(classes) - 1}")


def read_course_test(data: bytes, where: str) -> ImageSet:
    """A course competition's test pickle {data, ids}: the test set, with no answers."""
    images, ids = pickles.read_test_pickle(data, where)
    return ImageSet.from_arrays(images, ids, None, where)


# ------------------------------------------------------------------------------ Fashion-MNIST

IDX_IMAGES, IDX_LABELS = 0x0803, 0x0801


@SOURCES.register("fashion-mnist")
class FashionMnist(_KnownFiles):
    """Fashion-MNIST's four idx files (gzipped or not): 28 x 28 gray, 60,000 train / 10,000 test."""

    markers = (frozenset({"train-images-idx3-ubyte.gz"}), frozenset({"train-images-idx3-ubyte"}))

    @staticmethod
    def download(ctx: FetchContext) -> tuple[FileTree, dict]:
        for name, md5 in FASHION_MNIST_FILES.items():
            ctx.fetch(FASHION_MNIST_MIRROR + name, md5=md5)
        return ctx.open(ctx.raw_dir, label="raw"), {"url": FASHION_MNIST_MIRROR}

    @staticmethod
    def read(tree: FileTree, details: dict) -> Ingested:
        names = _basenames(tree)

        def idx(stem: str, magic: int) -> np.ndarray:
            name = names.get(stem + ".gz") or names.get(stem)
            if name is None:
                raise PipelineError(f"{tree.label}: {stem}(.gz) is missing")
            return read_idx(tree.read(name), tree.where(name), magic, tree.limits)

        parts = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = idx(f"{prefix}-images-idx3-ubyte", IDX_IMAGES)
            labels = idx(f"{prefix}-labels-idx1-ubyte", IDX_LABELS).astype(np.int64)
            where = f"{tree.label}:{prefix}-*"
            if len(images) != len(labels):
                raise PipelineError(f"{where}: {len(images)} images but {len(labels)} labels")
            _check_label_range(labels, FASHION_MNIST_CLASSES, where)
            parts[split] = ImageSet.from_arrays(images[..., None], numbered_ids(len(images)), labels, where)
        return Ingested(list(FASHION_MNIST_CLASSES), parts["train"], parts["test"], KAGGLE_FORMAT, details=details)


def read_idx(data: bytes, where: str, magic: int, limits: Limits | None = None) -> np.ndarray:
    """An idx file (http://yann.lecun.com/exdb/mnist/): big-endian magic, dims, then uint8 values.

    A gzipped one is inflated only as far as its header's shape says: a gzip bomb costs no more
    memory than the array it claims to hold (and that is held to --max-member-mb)."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if data[:2] == b"\x1f\x8b":
        limits = limits or Limits()
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                head = gz.read(header)
                expected = int(np.prod(_idx_shape(head, where, magic, ndim)))
                limits.check_member(where, header + expected)
                data = head + gz.read(expected + 1)  # one byte more tells a file longer than its header says
        except (OSError, EOFError) as e:
            raise PipelineError(f"{where}: damaged gzip ({e})") from None
    shape = _idx_shape(data[:header], where, magic, ndim)
    if len(data) - header != int(np.prod(shape)):
        raise PipelineError(f"{where}: header says {shape}, data has {len(data) - header} bytes")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy()


def _idx_shape(head: bytes, where: str, magic: int, ndim: int) -> tuple[int, ...]:
    if len(head) < 4 + 4 * ndim or int.from_bytes(head[:4], "big") != magic:
        raise PipelineError(f"{where}: not an idx file of {ndim}-d uint8 data (magic {head[:4].hex()})")
    return tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


# ------------------------------------------------------------------------------------- digits


@SOURCES.register("digits")
class SklearnDigits:
    """scikit-learn's bundled 8 x 8 digits (offline), as 32 x 32 gray uint8, 20% held out as test."""

    detect = None

    @staticmethod
    def load(ctx: FetchContext, tree: FileTree | None) -> Ingested:
        if tree is not None:
            raise PipelineError(f"{tree.label}: the digits source is built in and takes no --source")
        import sklearn.datasets
        from sklearn.model_selection import train_test_split

        bundled = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
        raw = ctx.fetch(str(bundled))
        try:
            table = np.loadtxt(gzip.open(raw, "rt"), delimiter=",")
        except (OSError, ValueError) as e:
            raise PipelineError(f"{bundled}: not the digits table ({e})") from None
        if table.ndim != 2 or table.shape[1] != 65:
            raise PipelineError(f"{bundled}: expected 65 columns (8 x 8 pixels + label), got {table.shape}")
        images = upscale_digits(table[:, :64].reshape(-1, 8, 8), DIGITS_SIZE)
        labels = table[:, 64].astype(np.int64)
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_TEST_SEED
        )
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
        classes = [str(d) for d in range(10)]
        where = str(bundled)
        # Train ids are rows of sklearn's table (traceable); test ids are Kaggle-style 1..M.
        train = ImageSet.from_arrays(images[train_idx], train_idx.astype(str), labels[train_idx], where)
        test = ImageSet.from_arrays(images[test_idx], numbered_ids(len(test_idx)), labels[test_idx], where)
        details = {"test_fraction": DIGITS_TEST_FRACTION, "test_seed": DIGITS_TEST_SEED, "size": DIGITS_SIZE}
        return Ingested(classes, train, test, SubmissionFormat("id", "label", "index"), details=details)


def upscale_digits(images: np.ndarray, size: int) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> (N, size, size, 1) uint8 0..255, bilinear."""
    from PIL import Image

    scaled = np.clip(np.rint(images * (255 / 16)), 0, 255).astype(np.uint8)
    out = np.empty((len(scaled), size, size, 1), np.uint8)
    for i, img in enumerate(scaled):
        out[i, :, :, 0] = np.asarray(Image.fromarray(img, "L").resize((size, size), Image.BILINEAR))
    return out


# --------------------------------------------------------------------------------- Kaggle layout


@SOURCES.register(FALLBACK)
class KaggleLayout:
    """A Kaggle-style folder or zip (see kaggle_layout); also what `--kaggle SLUG` downloads."""

    detect = None

    @staticmethod
    def load(ctx: FetchContext, tree: FileTree | None) -> Ingested:
        if tree is None:
            raise PipelineError("the kaggle source needs --source PATH_OR_URL or --kaggle SLUG")
        return load_kaggle_layout(tree, ctx.classes)


# ------------------------------------------------------------------------------------ resolving


def ingest(
    ctx: FetchContext,
    competition: str,
    *,
    source: str | None = None,
    kaggle: str | None = None,
    test_source: str | None = None,
    source_format: str = "auto",
) -> Ingested:
    """Fetch the inputs into ctx.raw_dir and read them with the right source."""
    if source and kaggle:
        raise PipelineError("give either --source or --kaggle, not both")
    tree, details = None, {}
    if kaggle:
        from pipeline.kaggle_api import download_competition

        files = download_competition(kaggle, ctx.raw_dir)
        log.info("kaggle %s: downloaded %s", kaggle, ", ".join(p.name for p in files))
        tree = ctx.open(files[0]) if len(files) == 1 else ctx.open(ctx.raw_dir, label="raw")
        details = {"kaggle": kaggle}
    elif source:
        label = url_filename(source) if is_url(source) else source
        tree = ctx.open(ctx.fetch(source), label=label)
        details = {"location": source}
    if source_format == "auto":
        if tree is not None:
            source_format = detect_format(tree)
        elif competition in DEFAULT_SOURCE:
            source_format = DEFAULT_SOURCE[competition]
        else:
            raise PipelineError(
                f"competition '{competition}' has no built-in source; pass --source PATH_OR_URL or "
                f"--kaggle SLUG (built in: {', '.join(sorted(DEFAULT_SOURCE))})"
            )
    if tree is None:
        details = {"location": "built-in"}
    data = SOURCES.get(source_format).load(ctx, tree)
    if ctx.classes and data.classes != ctx.classes:
        where = tree.label if tree else source_format
        raise PipelineError(f"{where}: classes are {data.classes}, not --classes {ctx.classes}")
    if test_source:
        where = url_filename(test_source) if is_url(test_source) else test_source
        fetched = ctx.fetch(test_source)
        if not fetched.is_file():
            raise PipelineError(f"{test_source}: --test-source must be a pickle file, not a folder")
        ctx.limits.check_member(where, fetched.stat().st_size)
        data.test = read_course_test(fetched.read_bytes(), where)
        data.submission, data.sample_submission = COURSE_FORMAT, None
        details["test_source"] = test_source
    data.details = {"format": source_format, **details, **data.details}
    return data

