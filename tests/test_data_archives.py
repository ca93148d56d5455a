"""Archives are opened without trusting them; downloads are checked; raw inputs get digests."""
from __future__ import annotations

import hashlib
import io
import stat
import tarfile
import zipfile

import pytest
from helpers_data import serve_folder, write_zip

from pipeline.data import fetch as fetch_mod
from pipeline.data.archives import open_nested, open_tree, safe_extract
from pipeline.errors import PipelineError


def _tar(path, members):
    """members: (TarInfo, bytes | None)."""
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file_info(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize("name", ["../evil", "train/../../evil", "/etc/evil", "C:/evil"])
def test_zip_member_escaping_the_folder_is_refused(tmp_path, name):
    archive = write_zip(tmp_path / "bad.zip", {"train/1.png": b"ok", name: b"pwned"})
    with pytest.raises(PipelineError, match=r"^bad\.zip: member '.*' would escape the target folder"):
        open_tree(archive, tmp_path / "work")
    with pytest.raises(PipelineError, match="would escape"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out").joinpath("train").exists()


def test_zip_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("train/passwd")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(PipelineError, match="link.zip: member 'train/passwd' is a symlink"):
        open_tree(archive, tmp_path / "work")


def test_tar_absolute_path_is_refused_and_nothing_extracted(tmp_path):
    archive = _tar(tmp_path / "abs.tar.gz", [_file_info("ok.txt"), _file_info(str(tmp_path / "evil.txt"))])
    with pytest.raises(PipelineError, match=r"abs\.tar\.gz: member '/.*evil\.txt' would escape"):
        open_tree(archive, tmp_path / "work")
    assert not (tmp_path / "evil.txt").exists()
    assert not any((tmp_path / "work").rglob("ok.txt"))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_are_refused(tmp_path, kind):
    link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    link.type, link.linkname = kind, "/etc/passwd"
    archive = _tar(tmp_path / "links.tar.gz", [_file_info("cifar-10-batches-py/batches.meta"), (link, None)])
    with pytest.raises(PipelineError, match="member 'cifar-10-batches-py/data_batch_1' is a link"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "cifar-10-batches-py").exists()


def test_tar_device_file_is_refused(tmp_path):
    dev = tarfile.TarInfo("dev/null")
    dev.type = tarfile.CHRTYPE
    archive = _tar(tmp_path / "dev.tar", [(dev, None)])
    with pytest.raises(PipelineError, match="is not a regular file"):
        open_tree(archive, tmp_path / "work")


def test_zip_is_read_in_place_and_wrapper_folder_dropped(tmp_path):
    archive = write_zip(
        tmp_path / "comp.zip",
        {"comp/train/1.png": b"a", "comp/trainLabels.csv": b"id,label\n", "__MACOSX/comp/._x": b"junk"},
    )
    tree = open_nested(open_tree(archive, tmp_path / "work"), tmp_path / "work")
    assert sorted(tree.names()) == ["train/1.png", "trainLabels.csv"]
    assert tree.read("train/1.png") == b"a"
    assert tree.where("train/1.png") == "comp.zip:comp/train/1.png"
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())  # nothing extracted


def test_nested_archives_are_mounted(tmp_path):
    """A Kaggle download: one zip holding train.zip (loose files) and test.zip (a test/ folder)."""
    inner_train = io.BytesIO()
    with zipfile.ZipFile(inner_train, "w") as zf:
        zf.writestr("1.png", b"t1")
    inner_test = io.BytesIO()
    with zipfile.ZipFile(inner_test, "w") as zf:
        zf.writestr("test/9.png", b"t9")
    outer = write_zip(
        tmp_path / "slug.zip",
        {"train.zip": inner_train.getvalue(), "test.zip": inner_test.getvalue(), "sampleSubmission.csv": b"id\n"},
    )
    tree = open_nested(open_tree(outer, tmp_path / "work"), tmp_path / "work")
    assert sorted(tree.names()) == ["sampleSubmission.csv", "test/9.png", "train/1.png"]
    assert tree.read("train/1.png") == b"t1" and tree.read("test/9.png") == b"t9"
    assert tree.where("train/1.png") == "slug.zip:train.zip:1.png"


def test_nested_traversal_is_refused_too(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("../../evil", b"x")
    outer = write_zip(tmp_path / "slug.zip", {"train.zip": inner.getvalue()})
    with pytest.raises(PipelineError, match=r"slug\.zip:train\.zip: member '\.\./\.\./evil' would escape"):
        open_nested(open_tree(outer, tmp_path / "work"), tmp_path / "work")


def test_damaged_archive_names_itself(tmp_path):
    bad = tmp_path / "cut.zip"
    good = write_zip(tmp_path / "good.zip", {"a.txt": b"x" * 1000})
    bad.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(PipelineError, match="^cut.zip: damaged or truncated zip"):
        open_tree(bad, tmp_path / "work")
    seven = tmp_path / "train.7z"
    seven.write_bytes(b"7z\xbc\xaf\x27\x1c" + b"\0" * 30)
    with pytest.raises(PipelineError, match="^train.7z: damaged archive"):
        open_tree(seven, tmp_path / "work")
    rar = tmp_path / "train.rar"
    rar.write_bytes(b"Rar!\x1a\x07\x00" + b"\0" * 30)
    with pytest.raises(PipelineError, match="train.rar: .rar archives are not supported"):
        open_tree(rar, tmp_path / "work")


# ------------------------------------------------------------------------------------- downloads


def test_download_checks_md5_and_reports_progress(tmp_path, caplog):
    payload = b"cifar" * 50_000
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "data.tar.gz").write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    raw = tmp_path / "raw"
    with serve_folder(tmp_path / "site") as base, caplog.at_level("INFO"):
        got = fetch_mod.fetch(base + "data.tar.gz", raw, md5=md5)
    assert got == raw / "data.tar.gz" and got.read_bytes() == payload
    assert f"md5 {md5}" in caplog.text and "downloading" in caplog.text


def test_download_with_wrong_md5_leaves_nothing(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "data.tar.gz").write_bytes(b"tampered")
    raw = tmp_path / "raw"
    with serve_folder(tmp_path / "site") as base:
        mismatch = r"^data\.tar\.gz: checksum mismatch \(md5 [0-9a-f]{32}, expected 0{32}\)"
        with pytest.raises(PipelineError, match=mismatch):
            fetch_mod.fetch(base + "data.tar.gz", raw, md5="0" * 32)
        with pytest.raises(PipelineError, match=r"/missing\.zip: download failed \(HTTP 404 "):
            fetch_mod.fetch(base + "missing.zip", raw)
    assert list(raw.iterdir()) == []


def test_reuse_previous_download_when_md5_matches(tmp_path):
    old = tmp_path / "old_raw"
    old.mkdir()
    (old / "x.bin").write_bytes(b"kept")
    md5 = hashlib.md5(b"kept").hexdigest()
    # The URL points nowhere: a download attempt would fail.
    got = fetch_mod.fetch("http://127.0.0.1:9/x.bin", tmp_path / "raw", md5=md5, reuse=old)
    assert got.read_bytes() == b"kept"


def test_raw_entry_of_a_folder_is_a_digest_of_its_files(tmp_path):
    folder = tmp_path / "raw" / "comp"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "1.png").write_bytes(b"one")
    (folder / "labels.csv").write_bytes(b"id,label\n")
    entry = fetch_mod.raw_entry(folder, tmp_path)
    lines = "".join(
        f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in [("labels.csv", b"id,label\n"), ("train/1.png", b"one")]
    )
    assert entry == {
        "path": "raw/comp/",
        "sha256": hashlib.sha256(lines.encode()).hexdigest(),
        "bytes": 12,
        "files": 2,
    }
