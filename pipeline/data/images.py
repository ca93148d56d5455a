"""Image files -> one uint8 NHWC array, and the per-channel statistics of such arrays."""
from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from typing import Protocol, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Everything else (RGB, RGBA, P, CMYK, YCbCr, ...) counts as colour.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class Readable(Protocol):
    def read(self, name: str) -> bytes: ...
    def where(self, name: str) -> str: ...


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_images(
    files: Readable,
    names: Sequence[str],
    like: tuple[int, int, int] | None = None,
    desc: str = "decode",
) -> np.ndarray:
    """Decode `names` into one (N, H, W, C) uint8 array, C = 3 (RGB) or 1 (L).

    Images in the minority mode are converted to the majority one; a different size is an error
    naming the file. `like` = (H, W, C) of an array decoded before (the train set) forces both.
    """
    if not names:
        return np.zeros((0, *(like or (0, 0, 0))), np.uint8)
    if like is not None:
        out, _ = _decode_all(files, names, _mode_of(like[2]), like[:2], desc)
        return out
    first_mode = _family(_open(files, names[0]))
    out, families = _decode_all(files, names, first_mode, None, desc)
    majority = families.most_common(1)[0][0]
    if majority != first_mode:
        # The first image was the odd one out: decode again in the mode most images have.
        log.info("%s: most images are %s; converting the %d others", desc, majority, families[first_mode])
        out, _ = _decode_all(files, names, majority, out.shape[1:3], desc)
    elif len(families) > 1:
        odd = next(m for m in families if m != majority)
        log.info("%s: converted %d %s images to %s", desc, families[odd], odd, majority)
    return out


def _decode_all(
    files: Readable, names: Sequence[str], mode: str, size: tuple[int, int] | None, desc: str
) -> tuple[np.ndarray, Counter]:
    from tqdm import tqdm

    families: Counter = Counter()
    out: np.ndarray | None = None
    reference = "the training images" if size else files.where(names[0])
    with warnings.catch_warnings():
        # A decompression bomb is bad input like any other: raise, then name the file.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for i, name in enumerate(tqdm(names, desc=desc, unit="img", disable=None, leave=False)):
            img = _open(files, name)
            families[_family(img)] += 1
            try:
                arr = np.asarray(img if img.mode == mode else img.convert(mode))
            except (OSError, ValueError) as e:
                raise PipelineError(f"{files.where(name)}: cannot convert {img.mode} to {mode} ({e})") from None
            if out is None:
                out = np.empty((len(names), *(size or arr.shape[:2]), 1 if mode == "L" else 3), np.uint8)
            if arr.shape[:2] != out.shape[1:3]:
                h, w = arr.shape[:2]
                raise PipelineError(
                    f"{files.where(name)}: image is {w}x{h}, expected {out.shape[2]}x{out.shape[1]} "
                    f"like {reference}"
                )
            out[i] = arr.reshape(out.shape[1:])
    return out, families


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
