"""Issue 13: Kaggle's real download shapes (7z inside the zip), size limits, no silent wrong data,
a crash-proof folder swap with leftovers cleaned, and the clearer errors. All inputs built here."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers_data import kaggle_files, write_tree, write_zip
from PIL import Image

from pipeline.data import folders
from pipeline.data.archives import open_tree
from pipeline.data.dataset import load_prepared
from pipeline.data.pickles import read_batch
from pipeline.data.stage import DataConfig, run
from pipeline.errors import PipelineError

py7zr = pytest.importorskip("py7zr")
REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path, source, competition="comp", **kw):
    cfg = DataConfig(competition=competition, source=str(source), data_root=str(tmp_path / "data"), **kw)
    meta = run(cfg)
    return meta, load_prepared(tmp_path / "data" / competition, competition)


def write_7z(path: Path, files: dict[str, bytes]) -> Path:
    with py7zr.SevenZipFile(path, "w") as sz:
        for name, data in files.items():
            sz.writestr(data, name)
    return path


def _seven(files: dict[str, bytes], prefix: str) -> bytes:
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as sz:
        for name, data in files.items():
            if name.startswith(prefix):
                sz.writestr(data, name)
    return buf.getvalue()


def _hidden(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "data").iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------------------- 7z


def test_kaggle_zip_holding_train_7z_and_test_7z(tmp_path):
    """cifar-10.zip as Kaggle serves it: train.7z, test.7z (PNGs), trainLabels.csv, sampleSubmission.csv."""
    files, made = kaggle_files(n_train=24, n_test=9)
    outer = {"train.7z": _seven(files, "train/"), "test.7z": _seven(files, "test/"),
             "trainLabels.csv": files["trainLabels.csv"], "sampleSubmission.csv": files["sampleSubmission.csv"]}
    meta, data = _run(tmp_path, write_zip(tmp_path / "cifar-10.zip", outer))
    np.testing.assert_array_equal(data.train_images, made["train"])
    np.testing.assert_array_equal(data.test_images, made["test"][made["test_order"] - 1])
    assert data.classes == ["cat", "dog", "frog"] and meta["counts"]["test"] == 9
    assert _hidden(tmp_path) == []  # the scratch folder of the extraction is gone


def test_a_7z_source_reads_like_a_folder(tmp_path):
    files, made = kaggle_files(n_train=12, n_test=4)
    meta, data = _run(tmp_path, write_7z(tmp_path / "comp.7z", {f"comp/{k}": v for k, v in files.items()}))
    np.testing.assert_array_equal(data.train_images, made["train"])


@pytest.mark.parametrize("filters", [[{"id": "LZMA2"}], [{"id": "LZMA"}], None, [{"id": "BZIP2"}], [{"id": "COPY"}]],
                         ids=["lzma2", "lzma", "bcj+lzma2-py7zr", "bzip2-py7zr", "copy-py7zr"])
def test_7z_extraction_matches_py7zr_for_every_method(tmp_path, monkeypatch, filters):
    """LZMA/LZMA2 folders are cut from one decompressed stream; other methods go through py7zr."""
    from pipeline.data.archives import safe_extract

    if filters and filters[0]["id"] in ("LZMA2", "LZMA"):
        monkeypatch.setattr(py7zr.SevenZipFile, "extractall", lambda *a, **k: pytest.fail("not streamed"))
    if filters:
        filters = [{"id": getattr(py7zr, f"FILTER_{f['id']}")} for f in filters]
    rng = np.random.default_rng(1)
    files = {f"d/{i}.bin": rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
             for i in range(60)}
    files["d/empty.txt"] = b""
    archive = tmp_path / "a.7z"
    with py7zr.SevenZipFile(archive, "w", filters=filters) as sz:
        for name, data in files.items():
            sz.writestr(data, name)
    safe_extract(archive, tmp_path / "out")
    assert {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
            for p in (tmp_path / "out").rglob("*") if p.is_file()} == files


@pytest.mark.parametrize("filters", [[{"id": "LZMA2"}], None], ids=["streamed", "py7zr"])
def test_damaged_7z_data_is_a_one_line_error(tmp_path, filters):
    from pipeline.data.archives import safe_extract

    archive = tmp_path / "a.7z"
    with py7zr.SevenZipFile(archive, "w", filters=filters and [{"id": py7zr.FILTER_LZMA2}]) as sz:
        for i in range(20):
            sz.writestr(f"line {i}\n".encode() * 50, f"d/{i}.txt")
    raw = bytearray(archive.read_bytes())
    raw[40] ^= 0xFF  # inside the packed stream (after the 32-byte start header)
    archive.write_bytes(raw)
    with pytest.raises(PipelineError, match=r"^a\.7z: damaged"):
        safe_extract(archive, tmp_path / "out", "a.7z")


def _hostile_7z(path: Path, name: str) -> Path:
    """A 7z whose member is called `name`: py7zr refuses to write such names, a hostile tool does not.
    Written with a plain (unencoded) header, the name patched in and both header CRCs redone."""
    safe = "q" * len(name)
    with py7zr.SevenZipFile(path, "w") as sz:
        sz.set_encoded_header_mode(False)
        sz.writestr(b"x", safe)
    raw = bytearray(path.read_bytes())
    offset, size = int.from_bytes(raw[12:20], "little") + 32, int.from_bytes(raw[20:28], "little")
    header = bytes(raw[offset:offset + size]).replace(safe.encode("utf-16-le"), name.encode("utf-16-le"))
    raw[offset:offset + size] = header
    raw[28:32] = zlib.crc32(header).to_bytes(4, "little")
    raw[8:12] = zlib.crc32(bytes(raw[12:32])).to_bytes(4, "little")
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("name", ["../evil.png", "/abs.png"])
def test_7z_member_escaping_the_folder_is_refused(tmp_path, name):
    archive = _hostile_7z(tmp_path / "bad.7z", name)
    with py7zr.SevenZipFile(archive) as sz:
        assert [f.filename for f in sz.files] == [name]
    with pytest.raises(PipelineError, match=f"^bad.7z: member '{re.escape(name)}' would escape"):
        open_tree(archive, tmp_path / "work")
    assert not any(p.is_file() for p in tmp_path.rglob("*") if p != archive)


def test_7z_symlink_is_refused_and_nothing_extracted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "target.png").write_bytes(b"x")
    os.symlink("/etc/passwd", src / "link.png")
    archive = tmp_path / "links.7z"
    with py7zr.SevenZipFile(archive, "w") as sz:
        sz.write(src / "target.png", "target.png")
        sz.write(src / "link.png", "link.png")
    with pytest.raises(PipelineError, match="^links.7z: member 'link.png' is a link"):
        open_tree(archive, tmp_path / "work")
    assert not any(p.is_file() for p in (tmp_path / "work").rglob("*"))


def test_7z_sizes_are_checked_before_extracting(tmp_path):
    archive = write_7z(tmp_path / "big.7z", {"train/1.png": b"\0" * (3 << 20)})  # compresses to a few KB
    with pytest.raises(PipelineError, match=r"big\.7z:train/1\.png: 3\.0 MiB, over the 2 MiB limit for a file "
                                            r"inside an archive \(raise it with --max-member-mb\)$"):
        _run(tmp_path, archive, max_member_mb=2)
    with pytest.raises(PipelineError, match=r"/big\.7z: 3\.0 MiB, over the 1 MiB limit for what one run "
                                            r"extracts to disk, nested archives included \(raise it with "
                                            r"--max-extract-mb\)$"):
        _run(tmp_path, archive, max_extract_mb=1)
    assert not (tmp_path / "data" / "comp").exists() and _hidden(tmp_path) == []


# ------------------------------------------------------------------------------------- limits


def test_csv_bomb_is_refused_before_it_is_read(tmp_path):
    """A small zip whose labels CSV expands far beyond the CSV limit: refused from the header."""
    files, _ = kaggle_files()
    files["trainLabels.csv"] += b"\n" * (3 << 20)  # blank lines: deflate to a few KB
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    assert archive.stat().st_size < 100_000
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(archive))}:trainLabels\.csv: 3\.0 MiB, over the 1 "
                                            r"MiB limit for a CSV file \(raise it with --max-csv-mb\)$"):
        _run(tmp_path, archive, max_csv_mb=1)
    # Overridable: with room for it the same file is read (blank lines are skipped).
    meta, _ = _run(tmp_path, archive, max_csv_mb=8)
    assert meta["counts"]["all"] == 20


def test_csv_is_also_checked_while_streamed(tmp_path):
    """A folder file has no header to trust: the streamed byte count trips the limit."""
    from pipeline.data.archives import FileTree, _FolderBackend
    from pipeline.data.kaggle_layout import csv_records
    from pipeline.data.limits import Limits

    folder = write_tree(tmp_path / "src", {"labels.csv": b"id,label\n" + b"1,a\n" * 400_000})
    backend = _FolderBackend(folder, "src")
    backend.size = lambda key: 10  # a size that lies
    tree = FileTree.from_backend(backend, "src", Limits(csv_mb=1))
    with pytest.raises(PipelineError, match=r"^src/labels\.csv: 1\.0 MiB, over the 1 MiB limit for a CSV file"):
        list(csv_records(tree, "labels.csv"))


def test_zip_member_over_the_limit_names_member_and_limit(tmp_path):
    files, _ = kaggle_files()
    files["train/5.png"] = files["train/5.png"] + b"\0" * (2 << 20)
    archive = write_zip(tmp_path / "comp.zip", files)
    with pytest.raises(PipelineError, match=r"comp\.zip:train/5\.png: 2\.0 MiB, over the 1 MiB limit for a file "
                                            r"inside an archive \(raise it with --max-member-mb\)$"):
        _run(tmp_path, archive, max_member_mb=1)


# ------------------------------------------------------------------------ no silent wrong data


def test_labels_csv_beside_train_train_finds_the_images(tmp_path):
    """Unzipping train.zip into train/ gives train/train/<id>.png: the CSV's ids are found there."""
    files, made = kaggle_files()
    nested = {(f"train/{k}" if k.startswith("train/") else k): v for k, v in files.items()}
    meta, data = _run(tmp_path, write_tree(tmp_path / "src", nested))
    assert data.classes == ["cat", "dog", "frog"]
    np.testing.assert_array_equal(data.train_images, made["train"])
    np.testing.assert_array_equal(data.train_labels, made["labels"])


def test_labels_csv_half_matching_is_refused(tmp_path):
    files, _ = kaggle_files()
    moved = {(f"train/a/{k[6:]}" if k in ("train/1.png", "train/2.png") else
              f"train/b/{k[6:]}" if k.startswith("train/") else k): v for k, v in files.items()}
    with pytest.raises(PipelineError, match=r"trainLabels\.csv: its ids name images under train/, but no one folder "
                                            r"holds them all: train/b/ has 18 of 20 \(spread over 2 folders\)"):
        _run(tmp_path, write_tree(tmp_path / "src", moved))


def test_one_class_is_an_error(tmp_path):
    files, _ = kaggle_files()
    one = {(f"train/only/{k[6:]}" if k.startswith("train/") else k): v for k, v in files.items()
           if k != "trainLabels.csv"}
    with pytest.raises(PipelineError, match=r"the training images have 1 class \('only'\); a classifier needs "
                                            r"at least 2"):
        _run(tmp_path, write_tree(tmp_path / "src", one))
    assert not (tmp_path / "data" / "comp").exists()


def test_one_based_integer_labels_get_a_hint(tmp_path):
    files, _ = kaggle_files(label_form="index")
    lines = files["trainLabels.csv"].decode().splitlines()
    files["trainLabels.csv"] = "\n".join(
        [lines[0]] + [f"{i},{int(y) + 1}" for i, y in (r.split(",") for r in lines[1:])]).encode()
    with pytest.raises(PipelineError, match=r"class 0 never occurs; the labels run 1\.\.3, so they look counted "
                                            r"from 1: subtract 1 from each, or give them names$"):
        _run(tmp_path, write_zip(tmp_path / "comp.zip", files))


def test_16_bit_pngs_end_to_end_are_scaled(tmp_path):
    files, _ = kaggle_files(classes=("a", "b"))
    rng = np.random.default_rng(3)
    wide = {}
    for name in [n for n in files if n.endswith(".png")]:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16)).save(buf, "PNG")
        files[name] = wide[name] = buf.getvalue()
    meta, data = _run(tmp_path, write_zip(tmp_path / "comp.zip", files))
    assert data.train_images.shape[-1] == 1
    first = np.asarray(Image.open(io.BytesIO(wide["train/1.png"]))).astype(np.int64)
    np.testing.assert_array_equal(data.train_images[0, :, :, 0], (first * 255 + 32767) // 65535)
    assert 100 < data.train_images.mean() < 155  # uniform 16-bit noise, not clipped to 255


# ---------------------------------------------------------------------------------- clearer errors


def test_truncated_zip_says_so(tmp_path):
    files, _ = kaggle_files()
    good = write_zip(tmp_path / "good.zip", files)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(cut))}: damaged or truncated zip"):
        _run(tmp_path, cut)


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"Plain text, not a pickle\n", b""])
def test_non_pickle_in_the_pickle_slot_says_not_a_pickle(data):
    with pytest.raises(PipelineError, match=r"^data_batch_1: not a pickle \(it starts with"):
        read_batch(data, "data_batch_1")


# ------------------------------------------------------------------------- crash-proof swap

_KILLER = """
import os, signal, sys
from pathlib import Path
from pipeline.data import folders, stage

step, source, root = sys.argv[1:4]
final = Path(root) / "comp"
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_exchange, real_replace = folders.exchange, os.replace
if step == "after-exchange":
    def exchange(a, b):
        assert real_exchange(a, b)
        die()
    folders.exchange = exchange
elif step == "between-renames":
    folders.exchange = lambda a, b: False  # a file system without the atomic exchange
    def replace(a, b):
        real_replace(a, b)
        if Path(a) == final:
            die()  # the old folder is renamed away, the new one not yet in
    os.replace = replace
elif step == "while-decoding":
    from pipeline.data import images
    images._decode_chunk = lambda bounds: die()
stage.run(stage.DataConfig(competition="comp", source=source, data_root=root))
"""


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("step", ["while-decoding", "after-exchange", "between-renames"])
def test_kill_at_any_step_leaves_a_complete_folder_and_the_next_run_cleans_up(tmp_path, step):
    old_files, _ = kaggle_files(n_train=20)
    new_files, _ = kaggle_files(n_train=24)
    old_zip = write_zip(tmp_path / "old" / "comp.zip", old_files)
    new_zip = write_zip(tmp_path / "new" / "comp.zip", new_files)
    _run(tmp_path, old_zip)
    folder = tmp_path / "data" / "comp"
    before = _snapshot(folder)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _KILLER, step, str(new_zip), str(tmp_path / "data")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _hidden(tmp_path)  # the killed run left something behind
    if step == "between-renames":
        assert not folder.exists()  # the one instant without the exchange, repaired by recover()
    else:
        counts = load_prepared(folder, "comp").meta["counts"]["all"]  # complete: old or new
        assert counts == (24 if step == "after-exchange" else 20)
    folders.recover(folder)  # what the next run does first
    assert _hidden(tmp_path) == []
    if step != "after-exchange":
        assert _snapshot(folder) == before  # the old folder, byte for byte
    meta, _ = _run(tmp_path, new_zip)  # and the next run works
    assert meta["counts"]["all"] == 24 and _hidden(tmp_path) == []


def test_leftovers_of_live_owners_are_kept(tmp_path):
    final = tmp_path / "data" / "comp"
    final.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    mine = final.with_name(f".comp.work.{os.getpid()}.abc")
    gone = final.with_name(f".comp.building.{dead_pid}.xyz")
    other = final.with_name(f".other.work.{dead_pid}.xyz")
    for path in (mine, gone, other):
        (path / "sub").mkdir(parents=True)
    legacy_old, legacy_new = final.with_name(".comp.work.k2j_x9ab"), final.with_name(".comp.building.a1b2c3d4")
    for path in (legacy_old, legacy_new):
        (path / "sub").mkdir(parents=True)
    hour_ago = os.path.getmtime(legacy_old) - 2 * folders.LEGACY_IDLE_SECONDS
    for path in (legacy_old / "sub", legacy_old):
        os.utime(path, (hour_ago, hour_ago))
    removed = folders.recover(final)
    assert removed == [gone, legacy_old]
    assert mine.exists() and other.exists() and legacy_new.exists() and not gone.exists()


def test_exchange_swaps_two_folders_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "x").mkdir(parents=True)
    (b / "y").mkdir(parents=True)
    if not folders.exchange(a, b):
        pytest.skip("no renameat2 exchange on this system")
    assert (a / "y").is_dir() and (b / "x").is_dir()
