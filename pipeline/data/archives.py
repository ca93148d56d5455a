"""Reading competition files from folders, zips, tars and 7z archives without trusting the archive.

A FileTree is a flat name -> file view over a folder, a zip (read in place, no extraction) or a
tar or 7z (extracted once, safely, into a scratch folder: gzip cannot seek cheaply, and a solid
7z must be decompressed in order anyway). Every member is checked when an archive is opened:
absolute paths, `..`, drive letters, links and device files are refused, and sizes from the
headers are held to the Limits, whether or not the member would ever be read.
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

from pipeline.data.limits import Limits
from pipeline.errors import PipelineError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z")
UNSUPPORTED_SUFFIXES = (".rar",)
SEVEN_ZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# OS litter that zips made on desktops carry; never data.
_DRIVE = re.compile(r"^[A-Za-z]:")
_JUNK = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|\._[^/]*$|Thumbs\.db$)")


def check_member_name(name: str, archive: str) -> None:
    """Refuse a member name that could land outside the folder it is extracted into."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix) or ".." in posix.split("/") or "\x00" in name:
        raise PipelineError(f"{archive}: member '{name}' would escape the target folder")


def _check_sizes(sizes: Iterable[tuple[str, int]], archive: str, limits: Limits, extracted: bool) -> None:
    total = 0
    for name, size in sizes:
        limits.check_member(f"{archive}:{name}", size)
        total += size
    if extracted:
        limits.check_extract(archive, total)


def _check_zip(zf: zipfile.ZipFile, archive: str, limits: Limits, extracted: bool = False) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    for info in infos:
        check_member_name(info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise PipelineError(f"{archive}: member '{info.filename}' is a symlink; links are not allowed")
    _check_sizes(((i.filename, i.file_size) for i in infos), archive, limits, extracted)
    return infos


def _check_tar(tf: tarfile.TarFile, archive: str, limits: Limits) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        check_member_name(m.name, archive)
        if m.issym() or m.islnk():
            raise PipelineError(f"{archive}: member '{m.name}' is a link; links are not allowed")
        if not (m.isfile() or m.isdir()):
            raise PipelineError(f"{archive}: member '{m.name}' is not a regular file")
    _check_sizes(((m.name, m.size) for m in members), archive, limits, extracted=True)
    return members


def _check_7z(sz, archive: str, limits: Limits) -> None:
    files = list(sz.files)
    for f in files:
        check_member_name(f.filename, archive)
        if f.is_symlink or f.is_junction:
            raise PipelineError(f"{archive}: member '{f.filename}' is a link; links are not allowed")
        if f.is_socket:
            raise PipelineError(f"{archive}: member '{f.filename}' is not a regular file")
    _check_sizes(((f.filename, int(f.uncompressed or 0)) for f in files if not f.is_directory),
                 archive, limits, extracted=True)


def _head(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def archive_kind(path: Path, label: str | None = None) -> str | None:
    """"zip", "tar", "7z" or None, from the file's content (names lie); a damaged zip is an error."""
    if not path.is_file():
        return None
    head = _head(path)
    if head.startswith(SEVEN_ZIP_MAGIC):
        return "7z"
    if zipfile.is_zipfile(path):
        return "zip"
    if head.startswith(ZIP_MAGICS):
        # Starts like a zip but has no readable central directory: cut short (or corrupted).
        raise PipelineError(f"{label or path.name}: damaged or truncated zip (no readable central directory)")
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, EOFError, tarfile.TarError, zlib.error):
        return None
    return None


def _py7zr():
    try:
        import py7zr
    except ImportError:  # pragma: no cover - py7zr is in requirements.txt
        raise PipelineError("reading .7z archives needs py7zr (pip install -r requirements.txt)") from None
    return py7zr


def safe_extract(archive: Path, target: Path, label: str | None = None, limits: Limits | None = None) -> Path:
    """Extract a zip, tar or 7z into `target` after checking every member; returns `target`."""
    label = label or archive.name
    limits = limits or Limits()
    target.mkdir(parents=True, exist_ok=True)
    kind = archive_kind(archive, label)
    errors: tuple[type[BaseException], ...] = (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, label, limits, extracted=True)
                zf.extractall(target)
        elif kind == "tar":
            with tarfile.open(archive) as tf:
                _check_tar(tf, label, limits)
                # The "data" filter repeats the checks above inside tarfile itself (belt and braces).
                tf.extractall(target, filter="data")
        elif kind == "7z":
            py7zr = _py7zr()
            errors = (*errors, py7zr.exceptions.ArchiveError, py7zr.exceptions.CrcError,
                      py7zr.exceptions.DecompressionError, py7zr.exceptions.UnsupportedCompressionMethodError,
                      py7zr.exceptions.PasswordRequired, py7zr.exceptions.AbsolutePathError, ValueError)
            with py7zr.SevenZipFile(archive) as sz:
                if sz.needs_password():
                    raise PipelineError(f"{label}: the 7z archive is encrypted; extract it with its password first")
                _check_7z(sz, label, limits)
                sz.extractall(target)
        else:
            raise PipelineError(f"{label}: not a zip, tar or 7z archive")
    except errors as e:
        raise PipelineError(f"{label}: damaged archive ({type(e).__name__}: {e})") from None
    return target


class _ZipBackend:
    """Members read in place; each process opens its own handle (a forked decode worker shares no file offset)."""

    def __init__(self, path: Path, label: str, limits: Limits):
        self.path, self.label = path, label
        try:
            self.zf = zipfile.ZipFile(path)
            self.infos = _check_zip(self.zf, label, limits)
        except (zipfile.BadZipFile, OSError) as e:
            raise PipelineError(f"{label}: damaged or truncated zip ({e})") from None
        self._sizes = {i.filename: i.file_size for i in self.infos}
        self._pid = os.getpid()

    def _zip(self) -> zipfile.ZipFile:
        if self._pid != os.getpid():
            self.zf, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self.zf

    def keys(self) -> Iterable[str]:
        return (i.filename for i in self.infos if not i.is_dir())

    def size(self, key: str) -> int:
        return self._sizes[key]

    def open(self, key: str) -> BinaryIO:
        return self._zip().open(key)

    def read(self, key: str) -> bytes:
        return self._zip().read(key)

    def where(self, key: str) -> str:
        return f"{self.label}:{key}"

    def close(self) -> None:
        self.zf.close()


class _FolderBackend:
    def __init__(self, root: Path, label: str):
        self.root, self.label = root, label

    def size(self, key: str) -> int:
        return (self.root / key).stat().st_size

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

    def __init__(self, label: str, entries: dict[str, tuple[object, str]], backends: list,
                 limits: Limits | None = None):
        self.label = label
        self._entries = entries  # name -> (backend, key inside that backend)
        self._backends = backends
        self.limits = limits or Limits()

    @classmethod
    def from_backend(cls, backend, label: str, limits: Limits | None = None) -> "FileTree":
        entries = {k: (backend, k) for k in backend.keys() if not _JUNK.search(k)}
        return cls(label, entries, [backend], limits)

    def size(self, name: str) -> int:
        backend, key = self._entries[name]
        return backend.size(key)

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
            self.limits.check_member(backend.where(key), backend.size(key))
            return backend.read(key)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise PipelineError(f"{backend.where(key)}: cannot read ({e})") from None

    def open(self, name: str) -> BinaryIO:
        backend, key = self._entries[name]
        self.limits.check_member(backend.where(key), backend.size(key))
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
            tree = FileTree(tree.label, {n[cut:]: e for n, e in tree._entries.items()}, tree._backends, tree.limits)
        return tree

    def replace(self, name: str, prefix: str, other: "FileTree") -> "FileTree":
        """This tree with the member `name` swapped for `other`'s files mounted under `prefix`."""
        entries = {n: e for n, e in self._entries.items() if n != name}
        for n, e in other._entries.items():
            mounted = f"{prefix}{n}"
            if mounted in entries:
                raise PipelineError(f"{other.where(n)}: clashes with {self.where(mounted)}")
            entries[mounted] = e
        return FileTree(self.label, entries, self._backends + other._backends, self.limits)


def open_tree(path: Path, work: Path, label: str | None = None, limits: Limits | None = None) -> FileTree:
    """A FileTree over a folder, zip, tar or 7z; tars and 7z are extracted (checked) into a folder under `work`."""
    label = label or path.name
    limits = limits or Limits()
    if path.is_dir():
        return FileTree.from_backend(_FolderBackend(path, label), label, limits)
    if not path.is_file():
        raise PipelineError(f"{label}: not found")
    kind = archive_kind(path, label)
    if kind == "zip":
        return FileTree.from_backend(_ZipBackend(path, label, limits), label, limits)
    if kind in ("tar", "7z"):
        target = Path(_unique_dir(work, path.name))
        safe_extract(path, target, label, limits)
        return FileTree.from_backend(_FolderBackend(target, label), label, limits)
    if path.name.lower().endswith(UNSUPPORTED_SUFFIXES):
        raise PipelineError(f"{label}: {path.suffix} archives are not supported; extract it and pass the folder")
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise PipelineError(f"{label}: damaged or truncated archive (not a readable {_suffix(path.name)} file)")
    raise PipelineError(f"{label}: not a folder, zip, tar or 7z archive")


def _suffix(name: str) -> str:
    lower = name.lower()
    return next(s for s in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True) if lower.endswith(s))


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
            inner = open_tree(local, work, label=tree.where(name), limits=tree.limits)
            if not zipfile.is_zipfile(local):
                local.unlink()  # extracted already; a zip is read in place (and reopened by decode workers)
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
