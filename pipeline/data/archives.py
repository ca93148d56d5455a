"""Reading competition files from folders, zips and tars without trusting the archive.

A FileTree is a flat name -> file view over a folder, a zip (read in place, no extraction) or a
tar (extracted once, safely, into a scratch folder: gzip cannot seek cheaply). Every member name
is checked when an archive is opened: absolute paths, `..`, drive letters, links and device files
are refused, whether or not the member would ever be extracted.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable

from pipeline.errors import PipelineError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
UNSUPPORTED_SUFFIXES = (".7z", ".rar")
# OS litter that zips made on desktops carry; never data.
_DRIVE = re.compile(r"^[A-Za-z]:")
_JUNK = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|\._[^/]*$|Thumbs\.db$)")


def check_member_name(name: str, archive: str) -> None:
    """Refuse a member name that could land outside the folder it is extracted into."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix) or ".." in posix.split("/") or "\x00" in name:
        raise PipelineError(f"{archive}: member '{name}' would escape the target folder")


def _check_zip(zf: zipfile.ZipFile, archive: str) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    for info in infos:
        check_member_name(info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise PipelineError(f"{archive}: member '{info.filename}' is a symlink; links are not allowed")
    return infos


def _check_tar(tf: tarfile.TarFile, archive: str) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        check_member_name(m.name, archive)
        if m.issym() or m.islnk():
            raise PipelineError(f"{archive}: member '{m.name}' is a link; links are not allowed")
        if not (m.isfile() or m.isdir()):
            raise PipelineError(f"{archive}: member '{m.name}' is not a regular file")
    return members


def archive_kind(path: Path) -> str | None:
    """"zip", "tar" or None, from the file's content (names lie)."""
    if path.is_file():
        if zipfile.is_zipfile(path):
            return "zip"
        try:
            if tarfile.is_tarfile(path):
                return "tar"
        except OSError:
            return None
    return None


def safe_extract(archive: Path, target: Path, label: str | None = None) -> Path:
    """Extract a zip or tar into `target` after checking every member; returns `target`."""
    label = label or archive.name
    target.mkdir(parents=True, exist_ok=True)
    kind = archive_kind(archive)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, label)
                zf.extractall(target)
        elif kind == "tar":
            with tarfile.open(archive) as tf:
                _check_tar(tf, label)
                # The "data" filter repeats the checks above inside tarfile itself (belt and braces).
                tf.extractall(target, filter="data")
        else:
            raise PipelineError(f"{label}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise PipelineError(f"{label}: damaged archive ({e})") from None
    return target


class _ZipBackend:
    def __init__(self, path: Path, label: str):
        self.label = label
        try:
            self.zf = zipfile.ZipFile(path)
            self.infos = _check_zip(self.zf, label)
        except (zipfile.BadZipFile, OSError) as e:
            raise PipelineError(f"{label}: not a readable zip archive ({e})") from None

    def keys(self) -> Iterable[str]:
        return (i.filename for i in self.infos if not i.is_dir())

    def open(self, key: str) -> BinaryIO:
        return self.zf.open(key)

    def read(self, key: str) -> bytes:
        return self.zf.read(key)

    def where(self, key: str) -> str:
        return f"{self.label}:{key}"

    def close(self) -> None:
        self.zf.close()


class _FolderBackend:
    def __init__(self, root: Path, label: str):
        self.root, self.label = root, label

    def keys(self) -> Iterable[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root)
            for f in sorted(filenames):
                yield (rel / f).as_posix()

    def open(self, key: str) -> BinaryIO:
        return open(self.root / key, "rb")

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def where(self, key: str) -> str:
        return f"{self.label}/{key}"

    def close(self) -> None:
        pass


class FileTree:
    """Files by relative posix name, whatever holds them; names in errors point at the source."""

    def __init__(self, label: str, entries: dict[str, tuple[object, str]], backends: list):
        self.label = label
        self._entries = entries  # name -> (backend, key inside that backend)
        self._backends = backends

    @classmethod
    def from_backend(cls, backend, label: str) -> "FileTree":
        entries = {k: (backend, k) for k in backend.keys() if not _JUNK.search(k)}
        return cls(label, entries, [backend])

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def where(self, name: str) -> str:
        backend, key = self._entries[name]
        return backend.where(key)

    def read(self, name: str) -> bytes:
        backend, key = self._entries[name]
        try:
            return backend.read(key)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise PipelineError(f"{backend.where(key)}: cannot read ({e})") from None

    def open(self, name: str) -> BinaryIO:
        backend, key = self._entries[name]
        return backend.open(key)

    def close(self) -> None:
        for b in self._backends:
            b.close()

    def top_folder(self) -> str | None:
        """The one folder everything lives in, if there is exactly one and no top-level file."""
        tops = {n.split("/", 1)[0] if "/" in n else None for n in self._entries}
        return tops.pop() if len(tops) == 1 and None not in tops else None

    def without_top_folder(self) -> "FileTree":
        """Drop wrapper folders (`cifar10/train/...` -> `train/...`), as unzip tools leave them."""
        tree = self
        while (top := tree.top_folder()) is not None:
            cut = len(top) + 1
            tree = FileTree(tree.label, {n[cut:]: e for n, e in tree._entries.items()}, tree._backends)
        return tree

    def replace(self, name: str, prefix: str, other: "FileTree") -> "FileTree":
        """This tree with the member `name` swapped for `other`'s files mounted under `prefix`."""
        entries = {n: e for n, e in self._entries.items() if n != name}
        for n, e in other._entries.items():
            mounted = f"{prefix}{n}"
            if mounted in entries:
                raise PipelineError(f"{other.where(n)}: clashes with {self.where(mounted)}")
            entries[mounted] = e
        return FileTree(self.label, entries, self._backends + other._backends)


def open_tree(path: Path, work: Path, label: str | None = None) -> FileTree:
    """A FileTree over a folder, zip or tar; tars are extracted (checked) into a folder under `work`."""
    label = label or path.name
    if path.is_dir():
        return FileTree.from_backend(_FolderBackend(path, label), label)
    if not path.is_file():
        raise PipelineError(f"{label}: not found")
    kind = archive_kind(path)
    if kind == "zip":
        return FileTree.from_backend(_ZipBackend(path, label), label)
    if kind == "tar":
        target = Path(_unique_dir(work, path.name))
        safe_extract(path, target, label)
        return FileTree.from_backend(_FolderBackend(target, label), label)
    if path.name.lower().endswith(UNSUPPORTED_SUFFIXES):
        raise PipelineError(f"{label}: {path.suffix} archives are not supported; extract it and pass the folder")
    raise PipelineError(f"{label}: not a folder, zip or tar archive")


def open_nested(tree: FileTree, work: Path, depth: int = 2) -> FileTree:
    """Open archives found at the top of `tree` (a Kaggle download's train.zip, a course's tar.gz).

    An archive whose files all sit in one folder is mounted at the top; one with loose files is
    mounted under its own stem, so train.zip holding `1.png` becomes `train/1.png`.
    """
    tree = tree.without_top_folder()
    for _ in range(depth):
        nested = [n for n in tree.names() if "/" not in n and n.lower().endswith(ARCHIVE_SUFFIXES)]
        if not nested:
            break
        for name in nested:
            local = Path(_unique_dir(work, "nested")) / name
            with tree.open(name) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            inner = open_tree(local, work, label=tree.where(name))
            prefix = "" if inner.top_folder() else f"{_stem(name)}/"
            tree = tree.replace(name, prefix, inner)
        tree = tree.without_top_folder()
    return tree


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _unique_dir(work: Path, hint: str) -> str:
    work.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(dir=work, prefix=f"{_stem(hint)}.")
