"""The data stage end to end: CIFAR python archives, course pickles, Fashion-MNIST, digits, the CLI."""
from __future__ import annotations

import csv
import hashlib
import pickle
import re
import shutil
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_data import (
    CIFAR_CLASSES,
    EvilPickle,
    course_test_pickle,
    idx_bytes,
    kaggle_files,
    make_cifar_folder,
    make_cifar_targz,
    serve_folder,
    write_zip,
)

from pipeline.artifacts import read_json, sha256_file
from pipeline.cli import cli, main
from pipeline.data import sources
from pipeline.data.dataset import load_prepared
from pipeline.data.stage import DataConfig, run
from pipeline.errors import PipelineError


def _cfg(tmp_path, competition="c10", **kw):
    return DataConfig(competition=competition, data_root=str(tmp_path / "data"), **kw)


def _answers(root):
    with open(root / "withheld" / "answers.csv", newline="") as f:
        return list(csv.reader(f))


# ------------------------------------------------------------------------------------ CIFAR-10


def test_cifar_archive_end_to_end(tmp_path):
    archive, made = make_cifar_targz(tmp_path)
    meta = run(_cfg(tmp_path, source=str(archive)))
    data = load_prepared(tmp_path / "data" / "c10", "c10")

    assert data.classes == CIFAR_CLASSES and meta["image_shape"] == [32, 32, 3]
    np.testing.assert_array_equal(data.train_images, made["images"])
    np.testing.assert_array_equal(data.train_labels, made["labels"])
    assert data.train_ids.tolist() == [str(i) for i in range(1, 51)]
    # Test set Kaggle-style: ids 1..N, images only; labels only in the withheld answer key.
    np.testing.assert_array_equal(data.test_images, made["test_images"])
    assert data.test_ids.tolist() == [str(i) for i in range(1, 13)]
    assert not any("label" in p.name for p in data.root.glob("test_*"))
    assert _answers(data.root) == [["id", "label"]] + [
        [str(i + 1), CIFAR_CLASSES[y]] for i, y in enumerate(made["test_labels"])
    ]
    assert data.sample_submission.read_text().splitlines()[:2] == ["id,label", "1,airplane"]
    assert meta["submission"]["label_form"] == "name" and meta["withheld"] == "withheld/answers.csv"
    assert meta["source"] == {"format": "cifar10", "location": str(archive)}
    # Mean/std: what numpy says of the train images on a 0..1 scale.
    flat = made["images"].reshape(-1, 3) / 255
    np.testing.assert_allclose(meta["mean"], flat.mean(0), atol=1e-12)
    np.testing.assert_allclose(meta["std"], flat.std(0), atol=1e-12)
    # Every output's sha256 in meta.json is the file's; the manifest records the stage.
    for entry in meta["outputs"]:
        assert sha256_file(data.root / entry["path"]) == entry["sha256"]
    manifest = read_json(data.root / "manifest.json")
    assert manifest["stage"] == "data" and manifest["config"]["source"] == str(archive)
    assert manifest["inputs"] == meta["raw_inputs"] and manifest["inputs"][0]["path"] == "raw/cifar-10-python.tar.gz"
    assert {e["path"] for e in manifest["outputs"]} >= {"meta.json", "train_images.npy", "split.npz"}


def test_cifar_folder_forms(tmp_path):
    made = make_cifar_folder(tmp_path / "extracted")
    for source in (made["folder"], made["folder"].parent):  # cifar-10-batches-py/ or a folder holding it
        meta = run(_cfg(tmp_path, source=str(source)))
        assert meta["source"]["format"] == "cifar10" and meta["counts"]["all"] == 50
        data = load_prepared(tmp_path / "data" / "c10")
        np.testing.assert_array_equal(data.test_images, made["test_images"])


@pytest.mark.parametrize("hwc", [False, True], ids=["Nx3072", "Nx32x32x3"])
def test_course_test_pickle_beside_the_batches(tmp_path, hwc):
    made = make_cifar_folder(tmp_path / "course")
    images = np.random.default_rng(9).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "course" / "cifar_test_nolabels.pkl").write_bytes(course_test_pickle(images, [5, 3, 8, 1, 0, 2], hwc))
    meta = run(_cfg(tmp_path, source=str(tmp_path / "course")))
    data = load_prepared(tmp_path / "data" / "c10")
    np.testing.assert_array_equal(data.test_images, images)
    assert data.test_ids.tolist() == ["5", "3", "8", "1", "0", "2"]
    assert meta["submission"] == {"file": "sample_submission.csv", "id_column": "ID", "label_column": "Labels",
                                  "label_form": "index", "generated": True}
    assert data.sample_submission.read_text().splitlines()[:2] == ["ID,Labels", "5,0"]
    assert meta["withheld"] is None
    np.testing.assert_array_equal(data.train_images, made["images"])


def test_test_source_flag_replaces_the_test_set(tmp_path):
    archive, _ = make_cifar_targz(tmp_path)
    images = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pkl = tmp_path / "cifar_test_nolabel.pkl"
    pkl.write_bytes(course_test_pickle(images, [7, 8, 9], hwc=True))
    meta = run(_cfg(tmp_path, source=str(archive), test_source=str(pkl)))
    data = load_prepared(tmp_path / "data" / "c10")
    np.testing.assert_array_equal(data.test_images, images)
    assert meta["submission"]["id_column"] == "ID" and meta["source"]["test_source"] == str(pkl)
    assert sorted(e["path"] for e in meta["raw_inputs"]) == ["raw/cifar-10-python.tar.gz", "raw/cifar_test_nolabel.pkl"]


def test_malicious_batch_inside_a_folder_is_refused(tmp_path):
    made = make_cifar_folder(tmp_path / "src")
    marker = tmp_path / "pwned"
    (made["folder"] / "data_batch_3").write_bytes(pickle.dumps({b"data": EvilPickle(marker)}, protocol=2))
    with pytest.raises(PipelineError, match=r"data_batch_3: refused to unpickle: it asks for '(posix|os)\.system'"):
        run(_cfg(tmp_path, source=str(tmp_path / "src")))
    assert not marker.exists() and not (tmp_path / "data" / "c10").exists()


def test_default_cifar_download_checks_md5_and_is_reused(tmp_path, monkeypatch):
    archive, made = make_cifar_targz(tmp_path / "site")
    monkeypatch.setattr(sources, "CIFAR10_MD5", "0" * 32)
    with serve_folder(archive.parent) as base:
        monkeypatch.setattr(sources, "CIFAR10_URL", base + archive.name)
        with pytest.raises(PipelineError, match=r"^cifar-10-python\.tar\.gz: checksum mismatch"):
            run(_cfg(tmp_path, competition="cifar10"))
        assert not (tmp_path / "data" / "cifar10").exists()
        monkeypatch.setattr(sources, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
        run(_cfg(tmp_path, competition="cifar10"))
    raw = tmp_path / "data" / "cifar10" / "raw" / "cifar-10-python.tar.gz"
    assert raw.read_bytes() == archive.read_bytes()
    # The server is gone: a rerun finds the verified download in the old raw/ instead of fetching.
    meta = run(_cfg(tmp_path, competition="cifar10", seed=3))
    assert meta["split"]["seed"] == 3 and raw.read_bytes() == archive.read_bytes()


# ------------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_download(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 256, (8, 28, 28))
    train_y, test_y = np.arange(30) % 10, np.arange(8) % 10
    site = tmp_path / "site"
    site.mkdir()
    contents = {
        "train-images-idx3-ubyte.gz": idx_bytes(train, 0x0803),
        "train-labels-idx1-ubyte.gz": idx_bytes(train_y, 0x0801),
        "t10k-images-idx3-ubyte.gz": idx_bytes(test, 0x0803),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(test_y, 0x0801),
    }
    for name, data in contents.items():
        (site / name).write_bytes(data)
    monkeypatch.setattr(sources, "FASHION_MNIST_FILES", {n: hashlib.md5(d).hexdigest() for n, d in contents.items()})
    with serve_folder(site) as base:
        monkeypatch.setattr(sources, "FASHION_MNIST_MIRROR", base)
        meta = run(_cfg(tmp_path, competition="fashion-mnist"))
    data = load_prepared(tmp_path / "data" / "fashion-mnist")
    assert meta["image_shape"] == [28, 28, 1] and data.classes[0] == "T-shirt/top"
    np.testing.assert_array_equal(data.train_images[..., 0], train)
    np.testing.assert_array_equal(data.train_labels, train_y)
    assert _answers(data.root)[1:3] == [["1", "T-shirt/top"], ["2", "Trouser"]]
    assert sorted(e["path"] for e in meta["raw_inputs"]) == sorted(f"raw/{n}" for n in contents)


def test_idx_with_wrong_size_is_named(tmp_path):
    folder = tmp_path / "fm"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(idx_bytes(np.zeros((2, 28, 28)), 0x0803)[:-8])
    with pytest.raises(PipelineError, match=r"fm/train-images-idx3-ubyte\.gz: (damaged gzip|header says)"):
        run(_cfg(tmp_path, source=str(folder)))


# -------------------------------------------------------------------------------------- digits


def test_digits_end_to_end(tmp_path):
    meta = run(_cfg(tmp_path, competition="digits"))
    data = load_prepared(tmp_path / "data" / "digits", "digits")
    # sklearn's digits: 1797 images; 20% (rounded up, as train_test_split does) held out as test.
    assert len(data.train_labels) + len(data.test_ids) == 1797 and len(data.test_ids) == 360
    assert data.train_images.shape[1:] == (32, 32, 1) and data.input_size == (1, 32, 32)
    assert data.train_images.dtype == np.uint8 and data.train_images.max() == 255
    assert data.classes == [str(d) for d in range(10)] and meta["submission"]["label_form"] == "index"
    # Val is stratified: every digit is 10% of its own count, give or take one.
    counts = np.bincount(data.train_labels, minlength=10)
    val_counts = np.bincount(data.train_labels[data.val_idx], minlength=10)
    assert np.all(np.abs(val_counts - counts * 0.1) <= 1)
    answers = _answers(data.root)
    assert len(answers) == 361 and answers[0] == ["id", "label"]
    assert meta["raw_inputs"][0]["path"] == "raw/digits.csv.gz"


def test_digits_pixels_are_sklearn_digits_scaled_and_upsampled(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    run(_cfg(tmp_path, competition="digits"))
    data = load_prepared(tmp_path / "data" / "digits")
    ref = load_digits()
    # Train ids are the rows of sklearn's table; pixels 0..16 become 0..255, then 8 -> 32 bilinear.
    for row in (0, 1, 700, len(data.train_ids) - 1):
        original = ref.images[int(data.train_ids[row])]
        scaled = Image.fromarray(np.rint(original * 255 / 16).astype(np.uint8))
        expected = np.asarray(scaled.resize((32, 32), Image.BILINEAR))
        np.testing.assert_array_equal(data.train_images[row, :, :, 0], expected)
        assert data.train_labels[row] == ref.target[int(data.train_ids[row])]


def test_limit_is_stratified_and_split_is_seeded(tmp_path):
    meta = run(_cfg(tmp_path, competition="digits", limit=200))
    data = load_prepared(tmp_path / "data" / "digits")
    counts = np.bincount(data.train_labels, minlength=10)
    assert counts.sum() == 200 and counts.min() >= 19 and counts.max() <= 21
    assert meta["counts"]["test"] == 100  # min(360, max(100, 200 // 5))
    split = (data.train_idx.copy(), data.val_idx.copy())
    run(_cfg(tmp_path, competition="digits", limit=200))
    again = load_prepared(tmp_path / "data" / "digits")
    np.testing.assert_array_equal(again.val_idx, split[1])
    np.testing.assert_array_equal(again.train_ids, data.train_ids)
    run(_cfg(tmp_path, competition="digits", limit=200, seed=1))
    other = load_prepared(tmp_path / "data" / "digits")
    assert not np.array_equal(other.train_ids, data.train_ids)
    assert np.union1d(other.train_idx, other.val_idx).tolist() == list(range(200))


# ------------------------------------------------------------------------------ failure + CLI


def test_failed_rerun_keeps_the_good_folder(tmp_path):
    files, _ = kaggle_files()
    good = write_zip(tmp_path / "good.zip", files)
    run(_cfg(tmp_path, competition="comp", source=str(good)))
    folder = tmp_path / "data" / "comp"
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    files["train/4.png"] = files["train/4.png"][:30]
    bad = write_zip(tmp_path / "bad.zip", files)
    with pytest.raises(PipelineError, match="bad.zip:train/4.png: cannot decode image"):
        run(_cfg(tmp_path, competition="comp", source=str(bad)))
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["comp"]


def test_cli_prints_one_line_error_and_exits_2(tmp_path, capsys):
    files, _ = kaggle_files()
    files["train/2.png"] = b"not an image"
    bad = write_zip(tmp_path / "comp.zip", files)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "--competition", "comp", "--source", str(bad), "--data-root", str(tmp_path / "data")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {bad}:train/2.png: cannot decode image (not a known image format)\n"


def test_cli_prints_a_summary(tmp_path):
    files, _ = kaggle_files()
    archive = write_zip(tmp_path / "comp.zip", files)
    result = CliRunner().invoke(
        cli, ["data", "--competition", "comp", "--source", str(archive), "--data-root", str(tmp_path / "d"),
              "--val-fraction", "0.25", "--classes", "cat,dog,frog"],
    )
    assert result.exit_code == 0, result.output
    assert "20 labelled (15 train / 5 val), 7 test, 8x8x3" in result.output
    assert "classes (3): cat, dog, frog" in result.output
    assert read_json(tmp_path / "d" / "comp" / "manifest.json")["config"]["classes"] == ["cat", "dog", "frog"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"competition": "nowhere"}, "competition 'nowhere' has no built-in source; pass --source"),
        ({"competition": "../x", "source": "s"}, r"competition name '\.\./x' must be"),
        ({"source": "s", "val_fraction": 1.0}, r"--val-fraction must be in \[0, 1\)"),
        ({"source": "s", "kaggle": "slug"}, "either --source or --kaggle"),
        ({"competition": "digits", "source_format": "digits", "source": "{zip}"}, "takes no --source"),
        ({"source_format": "cifar100"}, "unknown data source 'cifar100'.*; choose from: cifar10, digits"),
        ({"source": "does/not/exist"}, "^does/not/exist: not found"),
    ],
)
def test_bad_requests(tmp_path, overrides, message):
    archive = write_zip(tmp_path / "comp.zip", kaggle_files()[0])
    if overrides.get("source") == "{zip}":
        overrides["source"] = str(archive)
    with pytest.raises(PipelineError, match=message):
        run(_cfg(tmp_path, **{"competition": "c", **overrides}))


def test_real_bundle_limited(tmp_path, cifar_bundle):
    meta = run(_cfg(tmp_path, competition="cifar10-jpg", source=str(cifar_bundle), limit=500))
    data = load_prepared(tmp_path / "data" / "cifar10-jpg", "cifar10-jpg")
    assert data.classes == CIFAR_CLASSES
    assert data.train_images.shape == (500, 32, 32, 3) and data.test_images.shape == (100, 32, 32, 3)
    assert np.bincount(data.train_labels).tolist() == [50] * 10  # the bundle is balanced: 5,000 a class
    assert data.test_ids.tolist() == [str(i) for i in range(1, 101)]  # sample submission order
    assert meta["submission"]["label_form"] == "name" and meta["submission"]["generated"] is False
    assert data.sample_submission.read_text().splitlines()[:2] == ["id,label", "1,cat"]
    assert (data.root / "raw" / cifar_bundle.name).stat().st_size == cifar_bundle.stat().st_size
    shutil.rmtree(tmp_path / "data")


def test_cifar_tar_with_a_symlink_is_refused_before_anything_is_written(tmp_path):
    made = make_cifar_folder(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(made["folder"], arcname="cifar-10-batches-py")
        link = tarfile.TarInfo("cifar-10-batches-py/readme")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    refused = rf"^{re.escape(str(archive))}: member 'cifar-10-batches-py/readme' is a link"
    with pytest.raises(PipelineError, match=refused):
        run(_cfg(tmp_path, source=str(archive)))
    assert list((tmp_path / "data").iterdir()) == []


def test_classes_flag_must_match_the_source(tmp_path):
    made = make_cifar_folder(tmp_path / "src")
    with pytest.raises(PipelineError, match=r"classes are \['airplane', .*\], not --classes \['cat', 'dog'\]"):
        run(_cfg(tmp_path, source=str(made["folder"]), classes=["cat", "dog"]))


def test_course_download_zip_with_archive_and_test_pickle(tmp_path):
    """A course competition's download: one zip holding the CIFAR tar.gz and the unlabelled test pickle."""
    archive, made = make_cifar_targz(tmp_path / "parts")
    images = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    bundle = write_zip(tmp_path / "course.zip", {
        "cifar-10-python.tar.gz": archive.read_bytes(),
        "cifar_test_nolabels.pkl": course_test_pickle(images, [0, 1, 2, 3], hwc=False),
    })
    meta = run(_cfg(tmp_path, source=str(bundle)))
    data = load_prepared(tmp_path / "data" / "c10")
    assert meta["source"]["format"] == "cifar10" and meta["submission"]["label_column"] == "Labels"
    np.testing.assert_array_equal(data.train_images, made["images"])
    np.testing.assert_array_equal(data.test_images, images)
