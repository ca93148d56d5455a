"""Image files decode to uint8 NHWC with clear errors; channel statistics match numpy."""
from __future__ import annotations

import io

import numpy as np
import pytest
from helpers_data import encode_image
from PIL import Image

from pipeline.data.images import channel_stats, decode_images
from pipeline.errors import PipelineError


class Files(dict):
    def read(self, name):
        return self[name]

    def open(self, name):
        return io.BytesIO(self[name])

    def size(self, name):
        return len(self[name])

    def where(self, name):
        return f"comp.zip:{name}"


def _rgb(seed, size=6):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_png_decodes_exactly_and_jpeg_closely():
    a, b = _rgb(0), _rgb(1)
    files = Files({"train/1.png": encode_image(a, "PNG"), "train/2.png": encode_image(b, "PNG")})
    out = decode_images(files, ["train/2.png", "train/1.png"])
    assert out.dtype == np.uint8 and out.shape == (2, 6, 6, 3)
    np.testing.assert_array_equal(out[0], b)
    np.testing.assert_array_equal(out[1], a)
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    jpg = decode_images(Files({"x.jpg": encode_image(np.stack([smooth] * 3, -1), "JPEG")}), ["x.jpg"])
    assert np.abs(jpg[0, :, :, 0].astype(int) - smooth).max() < 8


def test_minority_mode_is_converted_to_the_majority():
    gray = np.full((6, 6), 77, np.uint8)
    files = Files({"g.png": encode_image(gray, "PNG"), "c1.png": encode_image(_rgb(2), "PNG"),
                   "c2.png": encode_image(_rgb(3), "PNG")})
    # The gray image comes first, yet RGB is the majority: it is replicated into 3 channels.
    out = decode_images(files, ["g.png", "c1.png", "c2.png"])
    assert out.shape == (3, 6, 6, 3)
    assert (out[0] == 77).all()
    files2 = Files({"g1.png": encode_image(gray, "PNG"), "g2.png": encode_image(gray, "PNG"),
                    "c.png": encode_image(np.full((6, 6, 3), [255, 0, 0], np.uint8), "PNG")})
    out2 = decode_images(files2, ["c.png", "g1.png", "g2.png"])
    assert out2.shape == (3, 6, 6, 1)
    assert out2[0, 0, 0, 0] == 76  # ITU-R 601 luma of pure red: 0.299 * 255


def test_rgba_and_palette_become_rgb():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 128))
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([200, 100, 0] * 256)
    buf1, buf2 = io.BytesIO(), io.BytesIO()
    rgba.save(buf1, "PNG")
    pal.save(buf2, "PNG")
    out = decode_images(Files({"a.png": buf1.getvalue(), "b.png": buf2.getvalue()}), ["a.png", "b.png"])
    assert out.shape == (2, 4, 4, 3)
    assert out[0, 0, 0].tolist() == [10, 20, 30] and out[1, 0, 0].tolist() == [200, 100, 0]


def test_size_mismatch_names_the_odd_file_and_the_majority():
    files = Files({f"{i}.png": encode_image(_rgb(i, 6), "PNG") for i in range(2, 5)})
    files["1.png"] = encode_image(_rgb(1, 5), "PNG")
    # The odd image comes first: it is the one blamed, not the correct ones after it.
    names = ["1.png", "2.png", "3.png", "4.png"]
    with pytest.raises(PipelineError, match=r"^comp\.zip:1\.png: image is 5x5, expected 6x6 like most images "
                                            r"\(3 of 4; 1 differ\)$"):
        decode_images(files, names)


def test_16_bit_gray_is_scaled_not_clipped():
    wide = np.array([[0, 257, 32896], [65535, 65280, 128]], np.uint16)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG")
    out = decode_images(Files({"a.png": buf.getvalue()}), ["a.png"])
    assert out.shape == (1, 2, 3, 1)
    assert out[0, :, :, 0].tolist() == [[0, 1, 128], [255, 254, 0]]
    # Converted to RGB (train set in colour): the same scaled value in every channel.
    rgb = decode_images(Files({"a.png": buf.getvalue()}), ["a.png"], like=(2, 3, 3))
    assert rgb[0, 0, 2].tolist() == [128, 128, 128]


def test_parallel_decode_into_a_memmap_equals_the_serial_one(tmp_path, monkeypatch):
    import pipeline.data.images as images

    monkeypatch.setattr(images, "PARALLEL_MIN", 10)
    monkeypatch.setattr(images, "CHUNK", 7)
    files = Files({f"{i}.png": encode_image(_rgb(i, 5), "PNG") for i in range(40)})
    names = [f"{i}.png" for i in range(40)]
    serial = decode_images(files, names)
    parallel = decode_images(files, names, dest=tmp_path / "x.npy", workers=2)
    assert isinstance(parallel, np.memmap)
    np.testing.assert_array_equal(parallel, serial)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), serial)
    # An error in a worker is the same one-line error, naming the file.
    files["33.png"] = b"garbage"
    with pytest.raises(PipelineError, match=r"^comp\.zip:33\.png: cannot decode image"):
        decode_images(files, names, dest=tmp_path / "y.npy", workers=2)
    files["33.png"] = encode_image(_rgb(33, 4), "PNG")
    with pytest.raises(PipelineError, match=r"^comp\.zip:33\.png: image is 4x4, expected 5x5 like most images "
                                            r"\(39 of 40; 1 differ\)$"):
        decode_images(files, names, dest=tmp_path / "z.npy", workers=2)


def test_test_images_follow_the_train_shape():
    gray = encode_image(np.full((6, 6), 9, np.uint8), "PNG")
    out = decode_images(Files({"t.png": gray}), ["t.png"], like=(6, 6, 3))
    assert out.shape == (1, 6, 6, 3) and (out == 9).all()
    with pytest.raises(PipelineError, match="^comp.zip:t.png: image is 6x6, expected 8x8 like the training images$"):
        decode_images(Files({"t.png": gray}), ["t.png"], like=(8, 8, 3))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_broken_jpeg_is_a_one_line_error(damage):
    jpg = encode_image(_rgb(4, 32), "JPEG")
    data = {"truncated": jpg[: len(jpg) // 2], "garbage": b"\xff\xd8\xff" + b"\x00" * 40, "empty": b""}[damage]
    files = Files({"train/1.jpg": encode_image(_rgb(5, 32), "JPEG"), "train/2.jpg": data})
    with pytest.raises(PipelineError, match=r"^comp\.zip:train/2\.jpg: cannot decode image \(.+\)$"):
        decode_images(files, ["train/1.jpg", "train/2.jpg"])


def test_channel_stats_match_numpy():
    images = np.random.default_rng(7).integers(0, 256, (37, 5, 4, 3), dtype=np.uint8)
    mean, std = channel_stats(images, chunk=8)  # chunks that do not divide N
    flat = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, flat.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, flat.std(0), rtol=0, atol=1e-12)
    gray_mean, gray_std = channel_stats(np.full((3, 2, 2, 1), 51, np.uint8))
    assert gray_mean == [pytest.approx(0.2)] and gray_std == [pytest.approx(0.0, abs=1e-9)]
