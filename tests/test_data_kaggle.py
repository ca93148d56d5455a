"""Kaggle-style competition files (zip or folder) -> data/<competition>/ through the data stage."""
from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers_data import encode_image, kaggle_files, serve_folder, write_tree, write_zip
from PIL import Image

from pipeline.data.dataset import load_prepared
from pipeline.data.stage import DataConfig, run
from pipeline.errors import PipelineError


def _run(tmp_path, source, **kw):
    cfg = DataConfig(competition="comp", source=str(source), data_root=str(tmp_path / "data"), **kw)
    meta = run(cfg)
    return meta, load_prepared(tmp_path / "data" / "comp", "comp")


def test_zip_with_class_names(tmp_path):
    files, made = kaggle_files()
    archive = write_zip(tmp_path / "comp.zip", files)
    meta, data = _run(tmp_path, archive)

    assert data.classes == ["cat", "dog", "frog"]
    np.testing.assert_array_equal(data.train_images, made["train"])  # PNG: exact, in CSV order
    np.testing.assert_array_equal(data.train_labels, made["labels"])
    assert data.train_ids.tolist() == [str(i) for i in range(1, 21)]
    # Test ids and order come from the sample submission, which is kept byte for byte.
    assert data.test_ids.tolist() == [str(i) for i in made["test_order"]]
    np.testing.assert_array_equal(data.test_images, made["test"][made["test_order"] - 1])
    assert data.sample_submission.read_bytes() == files["sampleSubmission.csv"]
    assert meta["submission"] == {
        "file": "sample_submission.csv", "id_column": "id", "label_column": "label",
        "label_form": "name", "generated": False,
    }
    assert meta["image_shape"] == [8, 8, 3] and data.input_size == (3, 8, 8)
    assert meta["raw_inputs"] == [
        {"path": "raw/comp.zip", "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
         "bytes": archive.stat().st_size}
    ]
    assert (data.root / "raw" / "comp.zip").read_bytes() == archive.read_bytes()
    assert meta["withheld"] is None and not (data.root / "withheld").exists()
    assert meta["counts"] == {"all": 20, "train": 18, "val": 2, "test": 7}


def test_folder_with_jpeg_integer_labels_and_other_file_names(tmp_path):
    files, made = kaggle_files(fmt="JPEG", label_form="index", labels_name="train_labels.csv",
                               sample_name="sample_submission.csv")
    folder = write_tree(tmp_path / "src" / "mycomp", files)
    meta, data = _run(tmp_path, folder)
    assert data.classes == ["0", "1", "2"]
    assert meta["submission"]["label_form"] == "index"
    np.testing.assert_array_equal(data.train_labels, made["labels"])
    decoded = [np.asarray(Image.open(io.BytesIO(files[f"train/{i}.jpg"]))) for i in range(1, 21)]
    np.testing.assert_array_equal(data.train_images, np.stack(decoded))  # what PIL decodes, in CSV order
    # A folder source is copied into raw/ and hashed as one tree.
    assert (data.root / "raw" / "mycomp" / "train_labels.csv").read_bytes() == files["train_labels.csv"]
    assert meta["raw_inputs"][0]["path"] == "raw/mycomp/" and meta["raw_inputs"][0]["files"] == len(files)


def test_class_subfolders_without_sample_submission(tmp_path):
    rng = np.random.default_rng(1)
    imgs = {c: rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8) for c in ("truck", "bird")}
    files = {f"train/{c}/{c}{i}.png": encode_image(imgs[c][i], "PNG") for c in imgs for i in range(3)}
    files |= {f"test/{i}.png": encode_image(imgs["bird"][0], "PNG") for i in (10, 2, 1)}
    meta, data = _run(tmp_path, write_tree(tmp_path / "folders", files), val_fraction=0.0)
    assert data.classes == ["bird", "truck"]
    assert data.train_ids.tolist() == ["bird0", "bird1", "bird2", "truck0", "truck1", "truck2"]
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(data.train_images[3], imgs["truck"][0])
    assert data.test_ids.tolist() == ["1", "2", "10"]  # numeric order, not "1", "10", "2"
    assert data.sample_submission.read_text() == "id,label\n1,bird\n2,bird\n10,bird\n"
    assert meta["submission"]["generated"] is True
    assert len(data.val_idx) == 0


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.__setitem__("trainLabels.csv", f["trainLabels.csv"] + b"99,cat\n"),
         r"{zip}:trainLabels\.csv: 1 ids have no image in train/: '99' \(line 22\)"),
        (lambda f: f.__setitem__("trainLabels.csv", f["trainLabels.csv"].replace(b"\n20,", b"\n19,")),
         r"{zip}:trainLabels\.csv: duplicate id '19' \(lines 20 and 21\)"),
        (lambda f: f.__setitem__("trainLabels.csv", f["trainLabels.csv"].replace(b"\n20,dog", b"\n")),
         r"{zip}:trainLabels\.csv: 1 images in train/ have no label: train/20\.png"),
        (lambda f: f.__setitem__("trainLabels.csv", f["trainLabels.csv"].replace(b"5,dog", b"5,wolf")),
         r"{zip}:trainLabels\.csv: line 6: unknown class 'wolf' \(known: cat, dog, frog\)"),
        (lambda f: f.__setitem__("sampleSubmission.csv", f["sampleSubmission.csv"] + b"404,cat\n"),
         r"{zip}:sampleSubmission\.csv: 1 ids have no image in test/: '404' \(line 9\)$"),
        (lambda f: f.__setitem__("train/3.png", f["train/3.png"][:40]),
         r"{zip}:train/3\.png: cannot decode image"),
        (lambda f: f.pop("trainLabels.csv"),
         r"{zip}: train/ has images but no labels CSV"),
    ],
    ids=["label-without-image", "duplicate-id", "image-without-label", "unknown-class", "sample-id-without-image",
         "truncated-png", "no-labels-csv"],
)
def test_bad_competition_files_are_one_line_errors(tmp_path, edit, message):
    files, _ = kaggle_files()
    edit(files)
    archive = write_zip(tmp_path / "comp.zip", files)
    # Errors name the file as the user gave it: the archive path, then the member.
    with pytest.raises(PipelineError, match="^" + message.replace("{zip}", re.escape(str(archive)))):
        _run(tmp_path, archive, classes=["cat", "dog", "frog"])
    assert not (tmp_path / "data" / "comp").exists()
    assert [p.name for p in (tmp_path / "data").iterdir()] == []  # no temp folders left either


def test_limit_is_stratified_and_keeps_sample_order(tmp_path):
    files, made = kaggle_files(n_train=60, n_test=130)
    meta, data = _run(tmp_path, write_zip(tmp_path / "comp.zip", files), limit=30)
    assert np.bincount(data.train_labels).tolist() == [10, 10, 10]
    # The kept rows are real rows of the source, with their own labels.
    for img, label, ident in zip(data.train_images, data.train_labels, data.train_ids):
        np.testing.assert_array_equal(img, made["train"][int(ident) - 1])
        assert label == made["labels"][int(ident) - 1]
    # Test: the first max(100, 30 // 5) rows of the sample submission, and a sample cut to match.
    assert data.test_ids.tolist() == [str(i) for i in made["test_order"][:100]]
    lines = files["sampleSubmission.csv"].decode().splitlines(keepends=True)
    assert data.sample_submission.read_text() == "".join(lines[:101])
    assert meta["limit"] == 30 and meta["counts"]["test"] == 100


def test_kaggle_slug_downloads_then_ingests(tmp_path, monkeypatch):
    import pipeline.kaggle_api as kaggle_api

    files, _ = kaggle_files()
    bundle = write_zip(tmp_path / "bundle" / "tiny-comp.zip", {f"x/{k}": v for k, v in files.items()})
    calls = []

    def fake_download(slug, dest):
        calls.append(slug)
        return [Path(shutil.copy(bundle, dest))]

    monkeypatch.setattr(kaggle_api, "download_competition", fake_download)
    cfg = DataConfig(competition="tiny", kaggle="tiny-comp", data_root=str(tmp_path / "data"))
    meta = run(cfg)
    assert calls == ["tiny-comp"]
    assert meta["source"] == {"format": "kaggle", "kaggle": "tiny-comp"}
    assert meta["classes"] == ["cat", "dog", "frog"] and meta["counts"]["test"] == 7
    assert meta["raw_inputs"][0]["path"] == "raw/tiny-comp.zip"


def test_tar_gz_competition_is_extracted_safely_and_read(tmp_path):
    files, made = kaggle_files()
    src = write_tree(tmp_path / "src", files)
    archive = tmp_path / "comp.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="comp")
    meta, data = _run(tmp_path, archive)
    np.testing.assert_array_equal(data.train_images, made["train"])
    assert meta["raw_inputs"][0]["path"] == "raw/comp.tar.gz"
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["comp"]  # scratch extraction is gone


def test_competition_zip_from_a_url(tmp_path):
    files, made = kaggle_files()
    write_zip(tmp_path / "site" / "comp.zip", files)
    with serve_folder(tmp_path / "site") as base:
        meta, data = _run(tmp_path, base + "comp.zip")
    assert meta["source"]["location"] == base + "comp.zip"
    assert (data.root / "raw" / "comp.zip").read_bytes() == (tmp_path / "site" / "comp.zip").read_bytes()
    np.testing.assert_array_equal(data.train_images, made["train"])
