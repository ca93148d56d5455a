"""Image files -> one uint8 NHWC array (in memory or a .npy memmap), and per-channel statistics.

At Kaggle scale (300,000 test PNGs) the .npy file is laid out first and filled by forked worker
processes, each decoding a chunk of files and writing its rows in place (pwrite), so no process
holds more than a chunk of the array; the caller gets a read-only memmap of the result.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Everything else (RGB, RGBA, P, CMYK, YCbCr, ...) counts as colour.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# Gray images with 16 bits per pixel (mode "I" is how some Pillow versions open 16-bit PNGs).
WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
# How many images (spread evenly) decide the size and colour mode before the full decode.
SAMPLE = 256
# Below this many images a worker pool costs more than it saves.
PARALLEL_MIN = 2000
CHUNK = 1000
PROGRESS_SECONDS = 15


# An image file is streamed, never read whole: at most this much is read to find its header
# (format, width, height, mode), then at most what a real image of that shape can take.
HEAD_LIMIT = 16 << 20
MIB = 1 << 20


class Readable(Protocol):
    def read(self, name: str) -> bytes: ...
    def open(self, name: str) -> BinaryIO: ...
    def size(self, name: str) -> int: ...
    def where(self, name: str) -> str: ...


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class _Tally:
    """What a decode pass saw: how many images of each size/mode, and the first index of each."""

    sizes: Counter = field(default_factory=Counter)  # (h, w) -> count
    families: Counter = field(default_factory=Counter)
    first_size: dict = field(default_factory=dict)  # (h, w) -> first index
    first_family: dict = field(default_factory=dict)

    def add(self, i: int, size: tuple[int, int], family: str) -> None:
        self.sizes[size] += 1
        self.families[family] += 1
        self.first_size.setdefault(size, i)
        self.first_family.setdefault(family, i)

    def merge(self, other: "_Tally") -> None:
        self.sizes.update(other.sizes)
        self.families.update(other.families)
        for mine, theirs in ((self.first_size, other.first_size), (self.first_family, other.first_family)):
            for key, i in theirs.items():
                mine[key] = min(mine.get(key, i), i)


def decode_images(
    files: Readable,
    names: Sequence[str],
    like: tuple[int, int, int] | None = None,
    desc: str = "decode",
    dest: str | os.PathLike | None = None,
    workers: int = 1,
) -> np.ndarray:
    """Decode `names` into one (N, H, W, C) uint8 array, C = 3 (RGB) or 1 (L).

    Images in the minority mode are converted to the majority one; an image of another size than
    the majority is an error naming the file. `like` = (H, W, C) of an array decoded before (the
    train set) forces both. With `dest` the array is a .npy file filled in place (a read-only
    memmap is returned) by up to `workers` processes.
    """
    if not names:
        empty = np.zeros((0, *(like or (0, 0, 0))), np.uint8)
        if dest is not None:
            np.save(dest, empty)
        return empty
    if like is not None:
        mode, size, reference = _mode_of(like[2]), tuple(like[:2]), "the training images"
    else:
        mode, size = _guess(files, names)
        reference = None
    out, tally = _decode_all(files, names, mode, size, desc, dest, workers)
    _check_sizes(files, names, tally, size, reference)
    majority = tally.families.most_common(1)[0][0]
    if like is None and majority != mode:
        # The sample guessed the mode wrong (few images of it): decode again in the majority's mode.
        log.info("%s: most images are %s; decoding again", desc, majority)
        out, tally = _decode_all(files, names, majority, size, desc, dest, workers)
        mode = majority
    if len(tally.families) > 1:
        odd = [f for f in tally.families if f != mode]
        log.info("%s: converted %d %s images to %s", desc, sum(tally.families[f] for f in odd), "/".join(odd), mode)
    return np.load(dest, mmap_mode="r") if dest is not None else out


def _guess(files: Readable, names: Sequence[str]) -> tuple[str, tuple[int, int]]:
    """(mode, (h, w)) most common among up to SAMPLE images spread over `names`, ties to the earliest."""
    picks = np.unique(np.linspace(0, len(names) - 1, min(SAMPLE, len(names))).astype(int))
    tally = _Tally()
    for i in picks:
        with _open(files, names[i]) as img:  # the header is enough: nothing is decoded here
            tally.add(int(i), (img.height, img.width), _family(img))
    return _most_common(tally.families, tally.first_family), _most_common(tally.sizes, tally.first_size)


def _most_common(counts: Counter, first: dict):
    return max(counts, key=lambda k: (counts[k], -first[k]))


def _check_sizes(files, names, tally: _Tally, size, reference: str | None) -> None:
    if set(tally.sizes) == {tuple(size)}:
        return
    odd = min((i for s, i in tally.first_size.items() if s != tuple(size)))
    h, w = next(s for s, i in tally.first_size.items() if i == odd)
    if reference is not None:
        raise PipelineError(
            f"{files.where(names[odd])}: image is {w}x{h}, expected {size[1]}x{size[0]} like {reference}")
    n = tally.sizes[tuple(size)]
    others = sum(tally.sizes.values()) - n
    raise PipelineError(
        f"{files.where(names[odd])}: image is {w}x{h}, expected {size[1]}x{size[0]} like most images "
        f"({n:,} of {len(names):,}; {others:,} differ)")


# One decode job at a time per process; forked workers inherit it (files, names, output) unpickled.
_JOB: dict = {}


def _decode_all(
    files: Readable, names: Sequence[str], mode: str, size: tuple[int, int], desc: str,
    dest: str | os.PathLike | None, workers: int,
) -> tuple[np.ndarray, _Tally]:
    from tqdm import tqdm

    shape = (len(names), *size, 1 if mode == "L" else 3)
    out, offset = None, 0
    if dest is not None:
        # The file is laid out (header, then zeros: sparse) and rows are written into it with pwrite,
        # a chunk at a time: no process maps it, so the rows live in the page cache, not in anyone's RSS.
        layout = np.lib.format.open_memmap(dest, mode="w+", dtype=np.uint8, shape=shape)
        offset = layout.offset
        del layout
    else:
        out = np.empty(shape, np.uint8)
    chunks = [(s, min(s + CHUNK, len(names))) for s in range(0, len(names), CHUNK)]
    parallel = dest is not None and workers > 1 and len(names) >= PARALLEL_MIN and _can_fork()
    tally = _Tally()
    _JOB.update(files=files, names=names, mode=mode, size=tuple(size), row=shape[1:], out=out, dest=dest,
                offset=offset)
    pool = None
    try:
        if parallel:
            import multiprocessing

            # Forked before the progress bar starts its monitor thread (fork and threads do not mix).
            pool = multiprocessing.get_context("fork").Pool(min(workers, len(chunks)))
            parts = pool.imap_unordered(_decode_chunk, chunks)
        else:
            parts = map(_decode_chunk, chunks)
        with tqdm(total=len(names), desc=desc, unit="img", disable=None, leave=False, smoothing=0.1) as bar:
            last = time.monotonic()
            for part, n in parts:
                _raise_if_error(part)
                tally.merge(part)
                bar.update(n)
                if bar.disable and time.monotonic() - last > PROGRESS_SECONDS:
                    # No terminal (make, CI, a log file): a line now and then instead of the bar.
                    last = time.monotonic()
                    log.info("%s: %s of %s images decoded", desc, f"{bar.n:,}", f"{len(names):,}")
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()
        if _JOB.get("fd_pid") == os.getpid():
            os.close(_JOB["fd"])
        _JOB.clear()
    return (np.load(dest, mmap_mode="r") if dest is not None else out), tally


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _raise_if_error(part) -> None:
    if isinstance(part, PipelineError):
        raise part


def _write_rows(start: int, rows: np.ndarray) -> None:
    """Put decoded rows at their place: the in-memory array, or the .npy file (one fd per process)."""
    if _JOB["out"] is not None:
        _JOB["out"][start:start + len(rows)] = rows
        return
    if _JOB.get("fd_pid") != os.getpid():  # first write of this (possibly forked) process
        _JOB["fd"], _JOB["fd_pid"] = os.open(_JOB["dest"], os.O_WRONLY), os.getpid()
    data = memoryview(np.ascontiguousarray(rows)).cast("B")
    position = _JOB["offset"] + start * int(np.prod(_JOB["row"]))
    while data:
        written = os.pwrite(_JOB["fd"], data, position)
        data, position = data[written:], position + written


def _decode_chunk(bounds: tuple[int, int]):
    """Decode names[start:stop] into the output rows; a PipelineError is returned, not raised, from workers."""
    start, stop = bounds
    files, names, mode, size = _JOB["files"], _JOB["names"], _JOB["mode"], _JOB["size"]
    rows = np.zeros((stop - start, *_JOB["row"]), np.uint8)
    tally = _Tally()
    try:
        for i in range(start, stop):
            with _open(files, names[i]) as img:
                tally.add(i, (img.height, img.width), _family(img))
                if (img.height, img.width) != size:
                    continue  # not decoded: reported once all sizes are counted, with the majority
                _load(img, files.where(names[i]))
                rows[i - start] = _to_array(img, mode, files.where(names[i])).reshape(rows.shape[1:])
    except PipelineError as e:
        return e, stop - start
    _write_rows(start, rows)
    return tally, stop - start


def _to_array(img: Image.Image, mode: str, where: str) -> np.ndarray:
    if img.mode in WIDE_MODES:
        # 16-bit gray: scale 0..65535 to 0..255 (Pillow's convert would clip everything above 255).
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    try:
        return np.asarray(img if img.mode == mode else img.convert(mode))
    except (OSError, ValueError) as e:
        raise PipelineError(f"{where}: cannot convert {img.mode} to {mode} ({e})") from None


class _Member(io.RawIOBase):
    """A member's bytes as a seekable stream for Pillow, pulled from the member only as far as Pillow
    reads, and never past `limit` bytes (a file longer than its image can be is refused, not held)."""

    def __init__(self, raw: BinaryIO, where: str, limit: int):
        self._raw, self.where, self.limit = raw, where, limit
        self._buf, self._pos, self._eof = bytearray(), 0, False

    def _fill(self, upto: int) -> None:
        # Never more than limit + 1 bytes, whatever a (hostile) length field makes Pillow ask for.
        upto = min(upto, self.limit + 1)
        while len(self._buf) < upto and not self._eof:
            chunk = self._raw.read(min(max(upto - len(self._buf), 1 << 16), self.limit + 1 - len(self._buf)))
            self._eof = not chunk
            self._buf += chunk
        if len(self._buf) > self.limit:
            raise PipelineError(
                f"{self.where}: more than {self.limit / MIB:,.1f} MiB read and still no complete image; "
                "not a real image file (remove it)")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            self._fill(self.limit + 2)  # the end is wherever the member ends (within the limit)
            offset += len(self._buf)
        elif whence == io.SEEK_CUR:
            offset += self._pos
        self._pos = max(offset, 0)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        # RawIOBase.read(n) would allocate n bytes before reading: a length field could ask for 2 GB.
        end = self.limit + 1 if size is None or size < 0 else self._pos + size
        self._fill(end)
        with memoryview(self._buf) as view:
            piece = bytes(view[self._pos:end])
        self._pos += len(piece)
        return piece

    def readinto(self, buffer) -> int:
        piece = self.read(len(buffer))
        buffer[: len(piece)] = piece
        return len(piece)

    def close(self) -> None:
        self._raw.close()
        self._buf = bytearray()
        super().close()


def max_file_bytes(height: int, width: int, mode: str) -> int:
    """The most bytes a real image file of this shape can take: twice its raw pixels (uncompressed
    PNG, BMP or TIFF rows with filter bytes and padding; a JPEG of noise at quality 100) plus 1 MiB
    of headers and metadata (EXIF, ICC profiles)."""
    depth = 4 if mode in ("I", "F") else 2 if mode.startswith("I;16") else 1
    try:
        bands = Image.getmodebands(mode)
    except (KeyError, ValueError):  # a mode this Pillow does not name: count it as the widest
        bands, depth = 4, 4
    return 2 * height * width * bands * depth + MIB


@contextlib.contextmanager
def _open(files: Readable, name: str):
    """The image with only its header read (format, size, mode): decoding is left to _load.

    A file larger than an image of its header's shape can be is refused from its size, unread; an
    image over Pillow's pixel limit (a decompression bomb) is refused before it is decoded.
    """
    where = files.where(name)
    declared = files.size(name)
    stream = None
    member: io.IOBase
    try:
        if declared <= MIB:
            # Within what any image may take: read at once (Pillow reads a BytesIO at C speed).
            data = files.read(name)
            if len(data) > MIB:
                raise PipelineError(f"{where}: grew while being read (the header said {declared:,} bytes)")
            member = io.BytesIO(data)
        else:
            stream = files.open(name)
            member = _Member(stream, where, HEAD_LIMIT)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(member)
        cap = max_file_bytes(img.height, img.width, img.mode)
        if declared > cap:
            raise PipelineError(
                f"{where}: {declared / MIB:,.1f} MiB for a {img.width}x{img.height} {img.mode} image, more than "
                f"such an image can take ({cap / MIB:,.1f} MiB); not a real image file (remove it)")
        if isinstance(member, _Member):
            member.limit = max(cap, member.tell())
        yield img
    except UnidentifiedImageError:
        raise PipelineError(f"{where}: cannot decode image (not a known image format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise PipelineError(f"{where}: {e} (remove or downscale it)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise PipelineError(f"{where}: cannot decode image ({e})") from None
    finally:
        if stream is not None:
            stream.close()


def _load(img: Image.Image, where: str) -> None:
    """Decode now, so a truncated file fails here and names itself."""
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise PipelineError(f"{where}: cannot decode image ({e})") from None


def _family(img: Image.Image) -> str:
    return "L" if img.mode in GRAY_MODES else "RGB"


def _mode_of(channels: int) -> str:
    return {1: "L", 3: "RGB"}[channels]


def channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 NHWC images on a 0..1 scale.

    Sums are exact integers, so the result does not depend on the chunk size or the order.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty NHWC array, got shape {images.shape}")
    c = images.shape[-1]
    total = np.zeros(c, np.uint64)
    squares = np.zeros(c, np.uint64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, c).astype(np.uint32)
        total += block.sum(axis=0, dtype=np.uint64)
        squares += (block * block).sum(axis=0, dtype=np.uint64)
    count = images.size // c
    mean = total.astype(np.float64) / count
    var = squares.astype(np.float64) / count - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    return [float(m / 255) for m in mean], [float(s / 255) for s in std]
