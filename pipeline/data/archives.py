"""Reading competition files from folders, zips, tars and 7z archives without trusting the archive.

A FileTree is a flat name -> file view over a folder, a zip (read in place, no extraction) or a
tar or 7z (extracted once, safely, into a scratch folder: gzip cannot seek cheaply, and a solid
7z must be decompressed in order anyway). Every member is checked when an archive is opened:
absolute paths, `..`, drive letters, links and device files are refused, and sizes from the
headers are held to the Limits, whether or not the member would ever be read.
"""
from __future__ import annotations

import io
import lzma
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


# How deep archives inside the source are opened: source.zip > train.zip > train.7z is 2.
MAX_NESTING = 2


def _check_size(name: str, size: int, archive: str, limits: Limits, extracted: bool) -> None:
    limits.check_member(f"{archive}:{name}", size)
    if extracted and name.lower().endswith(".csv"):
        # Its header holds the size: refuse an oversized CSV before a byte of it reaches the disk.
        limits.check_csv(f"{archive}:{name}", size)


def _check_sizes(sizes: Iterable[tuple[str, int]], archive: str, limits: Limits, extracted: bool) -> None:
    total = 0
    for name, size in sizes:
        _check_size(name, size, archive, limits, extracted)
        total += size
    if extracted:
        limits.charge_extract(archive, total)


def _check_zip(zf: zipfile.ZipFile, archive: str, limits: Limits, extracted: bool = False) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    for info in infos:
        check_member_name(info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise PipelineError(f"{archive}: member '{info.filename}' is a symlink; links are not allowed")
    _check_sizes(((i.filename, i.file_size) for i in infos), archive, limits, extracted)
    return infos


def _check_tar(tf: tarfile.TarFile, archive: str, limits: Limits) -> list[tarfile.TarInfo]:
    """Every header checked as it is reached: a member whose header holds a bomb's size is refused
    before the stream is decompressed past it (a tar's headers are spread through its data)."""
    members, total = [], 0
    for m in tf:
        check_member_name(m.name, archive)
        if m.issym() or m.islnk():
            raise PipelineError(f"{archive}: member '{m.name}' is a link; links are not allowed")
        if not (m.isfile() or m.isdir()):
            raise PipelineError(f"{archive}: member '{m.name}' is not a regular file")
        _check_size(m.name, m.size, archive, limits, extracted=True)
        total += m.size
        limits.check_extract(archive, total)
        members.append(m)
    limits.charge_extract(archive, total)
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


_LZMA2, _LZMA = b"\x21", b"\x03\x01\x01"


def _lzma_filters(coder: dict) -> list[dict] | None:
    """The lzma module's raw filter chain for a 7z LZMA2/LZMA coder; None for any other method."""
    props = coder.get("properties") or b""
    if coder.get("method") == _LZMA2 and len(props) == 1 and props[0] <= 40:
        bits = props[0]
        dict_size = 0xFFFFFFFF if bits == 40 else (2 | (bits & 1)) << (bits // 2 + 11)
        return [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]
    if coder.get("method") == _LZMA and len(props) == 5 and props[0] < 9 * 5 * 5:
        lc, rest = props[0] % 9, props[0] // 9
        return [{"id": lzma.FILTER_LZMA1, "lc": lc, "lp": rest % 5, "pb": rest // 5,
                 "dict_size": int.from_bytes(props[1:5], "little")}]
    return None


def _extract_7z_streams(sz, target: Path, label: str) -> bool:
    """Extract a 7z of plain LZMA/LZMA2 folders (what Kaggle serves) by decompressing each folder as
    one stream with the lzma module and cutting it into files by their sizes, checking each file's
    CRC. py7zr's own extraction costs about 1 ms a file: 5 minutes for 300,000 small PNGs.
    Returns False, having written nothing, for any other kind of 7z (py7zr extracts those)."""
    streams = sz.header.main_streams
    if streams is None or streams.unpackinfo is None:
        return False
    folders, pack = streams.unpackinfo.folders, streams.packinfo
    filters = [_lzma_filters(f.coders[0]) if len(f.coders) == 1 and len(f.packed_indices) == 1 else None
               for f in folders]
    if None in filters or len(pack.packsizes) != len(folders):
        return False
    counts = streams.substreamsinfo.num_unpackstreams_folders if streams.substreamsinfo else [1] * len(folders)
    members = [f for f in sz.files if not f.emptystream]
    if sum(counts) != len(members):
        return False
    made: set[Path] = set()

    def create(name: str) -> Path:
        path = target / name
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        return path

    for f in sz.files:
        if f.emptystream:
            if f.is_directory:
                create(f.filename + "/x").parent.mkdir(parents=True, exist_ok=True)
            else:
                create(f.filename).write_bytes(b"")
    first = 0
    for index, folder in enumerate(folders):
        group, first = members[first:first + counts[index]], first + counts[index]
        sz.fp.seek(sz.afterheader + pack.packpositions[index])
        _cut_stream(sz.fp, pack.packsizes[index], lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters[index]),
                    group, create, label)
    return True


def _cut_stream(fp, packed: int, decompressor, group, create, label: str) -> None:
    """Decompress `packed` bytes of `fp` and write them out as the files of `group`, in order."""
    members = iter(group)
    member, left, crc, out = None, 0, 0, None

    def pieces():
        remaining = packed
        while remaining > 0:
            block = fp.read(min(1 << 20, remaining))
            if not block:
                break
            remaining -= len(block)
            yield decompressor.decompress(block, max_length=1 << 22)
            while not decompressor.needs_input and not decompressor.eof:
                yield decompressor.decompress(b"", max_length=1 << 22)

    try:
        for data in pieces():
            view = memoryview(data)
            while view:
                if member is None:
                    member = next(members, None)
                    if member is None:
                        raise PipelineError(f"{label}: damaged archive (more data than its files hold)")
                    left, crc, out = int(member.uncompressed), 0, open(create(member.filename), "wb")
                piece, view = view[:left], view[left:]
                out.write(piece)
                crc, left = zlib.crc32(piece, crc), left - len(piece)
                if left == 0:
                    out.close()
                    if member.crc32 is not None and crc != member.crc32:
                        raise PipelineError(f"{label}: damaged archive (CRC mismatch in {member.filename})")
                    member = None
    except (lzma.LZMAError, EOFError) as e:
        raise PipelineError(f"{label}: damaged archive ({e})") from None
    finally:
        if out is not None and not out.closed:
            out.close()
    for rest in ([member] if member is not None else []) + list(members):
        if rest is member or int(rest.uncompressed):
            raise PipelineError(f"{label}: damaged or truncated archive (its data ends before its files do)")
        create(rest.filename).write_bytes(b"")  # a 0-byte file at the end of a stream


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
    errors: tuple[type[BaseException], ...] = (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error,
                                               lzma.LZMAError)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, label, limits, extracted=True)
                zf.extractall(target)
        elif kind == "tar":
            with tarfile.open(archive) as tf:
                members = _check_tar(tf, label, limits)
                # The "data" filter repeats the checks above inside tarfile itself (belt and braces).
                tf.extractall(target, members=members, filter="data")
        elif kind == "7z":
            py7zr = _py7zr()
            errors = (*errors, py7zr.exceptions.ArchiveError, py7zr.exceptions.CrcError,
                      py7zr.exceptions.DecompressionError, py7zr.exceptions.UnsupportedCompressionMethodError,
                      py7zr.exceptions.PasswordRequired, py7zr.exceptions.AbsolutePathError, ValueError)
            with py7zr.SevenZipFile(archive) as sz:
                if sz.needs_password():
                    raise PipelineError(f"{label}: the 7z archive is encrypted; extract it with its password first")
                _check_7z(sz, label, limits)
                if not _extract_7z_streams(sz, target, label):
                    sz.extractall(target)
        else:
            raise PipelineError(f"{label}: not a zip, tar or 7z archive")
    except errors as e:
        raise PipelineError(f"{label}: damaged archive ({type(e).__name__}: {e})") from None
    return target


# What reading a damaged member raises: a bad CRC, a size header that understates the data, a cut stream.
READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError)


def damaged(where: str, error: BaseException) -> PipelineError:
    return PipelineError(f"{where}: damaged archive member ({error}); download or re-create the archive")


class GuardedReader(io.RawIOBase):
    """A member's stream whose read errors become one line naming the member (never a traceback)."""

    def __init__(self, raw: BinaryIO, where: str):
        self._raw, self._where = raw, where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._raw.read(len(buffer))
        except READ_ERRORS as e:
            raise damaged(self._where, e) from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


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
        except READ_ERRORS as e:
            raise damaged(backend.where(key), e) from None

    def open(self, name: str) -> BinaryIO:
        """A stream of the member; a damaged one fails with a one-line error naming it."""
        backend, key = self._entries[name]
        self.limits.check_member(backend.where(key), backend.size(key))
        try:
            raw = backend.open(key)
        except READ_ERRORS as e:
            raise damaged(backend.where(key), e) from None
        return io.BufferedReader(GuardedReader(raw, backend.where(key)), 1 << 16)

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


def open_nested(tree: FileTree, work: Path, depth: int = MAX_NESTING) -> FileTree:
    """Open archives found at the top of `tree` (a Kaggle download's train.zip, a course's tar.gz).

    An archive whose files all sit in one folder is mounted at the top; one with loose files is
    mounted under its own stem, so train.zip holding `1.png` becomes `train/1.png`. Archives are
    opened `depth` levels deep; one deeper is an error. Every copy and extraction is charged to the
    run's one extraction budget (tree.limits), so nesting cannot multiply --max-extract-mb.
    """
    tree = tree.without_top_folder()
    for level in range(depth + 1):
        nested = [n for n in tree.names() if "/" not in n and n.lower().endswith(ARCHIVE_SUFFIXES)]
        if not nested:
            break
        if level == depth:
            raise PipelineError(
                f"{tree.where(nested[0])}: an archive nested {depth + 1} deep; at most {depth} levels of archives "
                "inside the source are opened (extract it and pass the folder)")
        for name in nested:
            local = Path(_unique_dir(work, "nested")) / name
            tree.limits.charge_extract(tree.where(name), tree.size(name))
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
