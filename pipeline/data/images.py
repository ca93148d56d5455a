"""Image files -> one uint8 NHWC array (in memory or a .npy memmap), and per-channel statistics.

At Kaggle scale (300,000 test PNGs) the .npy file is laid out first and filled by forked worker
processes, each decoding a chunk of files and writing its rows in place (pwrite), so no process
holds more than a chunk of the array; the caller gets a read-only memmap of the result.
"""
from __future__ import annotations

import io
import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, Sequence

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


class Readable(Protocol):
    def read(self, name: str) -> bytes: ...
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
        img = _open(files, names[i])
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
        with warnings.catch_warnings():
            # A decompression bomb is bad input like any other: raise, then name the file.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for i in range(start, stop):
                img = _open(files, names[i])
                tally.add(i, (img.height, img.width), _family(img))
                if (img.height, img.width) != size:
                    continue  # reported once all sizes are counted, with the majority
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


def _open(files: Readable, name: str) -> Image.Image:
    data = files.read(name)
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # decode now, so a truncated file fails here and names itself
    except UnidentifiedImageError:
        raise PipelineError(f"{files.where(name)}: cannot decode image (not a known image format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise PipelineError(f"{files.where(name)}: cannot decode image ({e})") from None
    return img


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
