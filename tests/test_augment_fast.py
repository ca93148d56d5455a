"""Batched crop / flip / cutout and the on-device training loader (pipeline.augment.fast)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.augment import build_train_loader
from pipeline.augment.fast import FastTrainLoader, crop_sources, cutout_, gather_crops
from pipeline.errors import PipelineError


def positional_images(n=6, size=8, chans=3):
    """Every pixel of every image distinct and non-zero, so a window locates itself."""
    values = np.arange(1, n * size * size * chans + 1).reshape(n, size, size, chans) % 251 + 1
    return values.astype(np.uint8)


def nchw(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def test_sources_are_zero_padded_images_and_their_mirrors():
    x = nchw(positional_images(n=2))
    sources = crop_sources(x, 4, mirror=True)
    assert sources.shape == (2, 2, 3, 16, 16)
    assert torch.equal(sources[0, :, :, 4:12, 4:12], x)
    assert torch.equal(sources[1, :, :, 4:12, 4:12], torch.flip(x, dims=[-1]))
    assert sources[0].sum() == x.sum() and sources[1].sum() == x.sum()  # the border is zeros
    assert crop_sources(x, 0, mirror=False).shape == (1, 2, 3, 8, 8)


def test_crop_is_the_padded_images_window_at_each_offset():
    x = nchw(positional_images(n=5))
    sources = crop_sources(x, 4, mirror=False)
    index = torch.tensor([3, 0, 3, 1])
    top, left = torch.tensor([0, 8, 4, 2]), torch.tensor([8, 0, 4, 7])
    out = gather_crops(sources, torch.zeros(4, dtype=torch.int64), index, top, left, (8, 8))
    assert out.shape == (4, 3, 8, 8) and out.is_contiguous()
    padded = F.pad(x, (4, 4, 4, 4))
    for k in range(4):
        i, t, l = index[k], top[k], left[k]
        assert torch.equal(out[k], padded[i, :, t:t + 8, l:l + 8])
    assert torch.equal(out[2], x[3])  # offset (4, 4) is the original image


def test_crop_with_no_padding_returns_the_input():
    x = nchw(positional_images(n=4))
    index = torch.tensor([2, 0, 3])
    zeros = torch.zeros(3, dtype=torch.int64)
    out = gather_crops(crop_sources(x, 0, mirror=False), zeros, index, zeros, zeros, (8, 8))
    assert torch.equal(out, x[index])


def test_flip_mirrors_the_width_axis_of_the_chosen_images_only():
    x = nchw(positional_images(n=4))
    copy = torch.tensor([1, 0, 1, 0])
    zeros = torch.zeros(4, dtype=torch.int64)
    out = gather_crops(crop_sources(x, 0, mirror=True), copy, torch.arange(4), zeros, zeros, (8, 8))
    flipped = copy.bool()
    assert torch.equal(out[flipped], torch.flip(x[flipped], dims=[-1]))
    assert torch.equal(out[~flipped], x[~flipped])
    assert not torch.equal(out[flipped], torch.flip(x[flipped], dims=[-2]))  # not a vertical flip
    assert torch.equal(out[0, :, :, 0], x[0, :, :, -1])  # first column is the old last column


def test_cutout_zeros_exactly_the_square_around_the_center():
    x = torch.full((1, 3, 10, 10), 200, dtype=torch.uint8)
    cutout_(x, torch.tensor([5]), torch.tensor([3]), 4)  # rows 3..6, columns 1..4
    expected = torch.full((10, 10), 200, dtype=torch.uint8)
    expected[3:7, 1:5] = 0
    assert torch.equal(x[0, 0], expected) and torch.equal(x[0, 2], expected)


def test_cutout_is_clipped_at_the_borders():
    x = torch.full((2, 1, 10, 10), 200, dtype=torch.uint8)
    cutout_(x, torch.tensor([0, 9]), torch.tensor([9, 0]), 4)
    top_right, bottom_left = torch.full((10, 10), 200, dtype=torch.uint8), torch.full((10, 10), 200, dtype=torch.uint8)
    top_right[0:2, 7:10] = 0  # rows -2..1, columns 7..10 -> clipped to 2 x 3
    bottom_left[7:10, 0:2] = 0
    assert torch.equal(x[0, 0], top_right) and torch.equal(x[1, 0], bottom_left)


def test_loader_cutout_holes_are_squares_of_the_size_or_clipped():
    images = np.full((64, 12, 12, 1), 255, dtype=np.uint8)
    loader = FastTrainLoader(images, np.arange(64), cutout=5, batch_size=64)
    (x, _), = list(loader)
    for image in x[:, 0]:
        rows, cols = torch.nonzero(image == 0, as_tuple=True)
        height = int(rows.max() - rows.min() + 1)
        width = int(cols.max() - cols.min() + 1)
        assert len(rows) == height * width  # one filled rectangle
        for extent, low, high in ((height, rows.min(), rows.max()), (width, cols.min(), cols.max())):
            assert 3 <= extent <= 5  # >= 5 - 5 // 2 when the center sits on a border
            assert extent == 5 or low == 0 or high == 11


def test_loader_cutout_inside_keeps_whole_squares_with_every_corner_reachable():
    # airbench96's placement: the 5x5 square always whole, its top-left corner uniform over 0..7
    images = np.full((2000, 12, 12, 1), 255, dtype=np.uint8)
    loader = FastTrainLoader(images, np.arange(2000), cutout=5, cutout_inside=True, batch_size=2000)
    (x, _), = list(loader)
    zero = x[:, 0] == 0
    assert (zero.sum((1, 2)) == 25).all()  # never clipped
    tops = zero.any(2).int().argmax(1)
    lefts = zero.any(1).int().argmax(1)
    for corners in (tops, lefts):
        counts = torch.bincount(corners, minlength=8)
        assert len(counts) == 8 and counts.min() > 2000 / 8 * 0.7  # all 8 positions, none favoured
    with pytest.raises(PipelineError, match="does not fit"):
        list(FastTrainLoader(images, np.arange(2000), cutout=13, cutout_inside=True, batch_size=2000))


def locate(window, padded):
    """(image, top, left, flipped) of the padded window equal to `window`; None if there is none."""
    _, _, hp, wp = padded.shape
    h, w = window.shape[-2:]
    found = [(i, t, l, f) for i in range(len(padded)) for t in range(hp - h + 1) for l in range(wp - w + 1)
             for f in (False, True)
             if torch.equal(window, padded[i, :, t:t + h, l:l + w].flip(-1) if f else padded[i, :, t:t + h, l:l + w])]
    return found[0] if len(found) == 1 else None


def test_standard_policy_outputs_are_windows_within_the_padding_with_random_flips():
    images = positional_images(n=8, size=6)
    padded = F.pad(nchw(images), (4, 4, 4, 4))
    loader = build_train_loader(images, np.arange(8), policy="standard", batch_size=8, seed=3)
    placements = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        for x, y in loader:
            for window, label in zip(x, y):
                where = locate(window, padded)
                assert where is not None and where[0] == label  # the right image, offsets in 0..8
                placements.append(where[1:])
    assert len({(t, l) for t, l, _ in placements}) > 10
    assert {f for _, _, f in placements} == {False, True}


def test_none_policy_yields_the_images_of_their_labels_unchanged():
    images = positional_images(n=10)
    loader = build_train_loader(images, np.arange(10), policy="none", batch_size=5)
    for x, y in loader:
        assert torch.equal(x, nchw(images)[y])


def batches(policy, seed=0, epoch=0, rank=0, world_size=1, n=32):
    images = np.random.default_rng(9).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    loader = build_train_loader(images, np.arange(n), policy=policy, batch_size=8, seed=seed,
                                rank=rank, world_size=world_size, cutout=3 if "cutout" in policy else 0)
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b):
    return all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize("policy", ["standard", "standard+cutout", "standard+cutout-inside"])
def test_same_seed_same_batches_other_epoch_or_seed_different(policy):
    reference = batches(policy, seed=1, epoch=2)
    assert same(reference, batches(policy, seed=1, epoch=2))
    assert not same(reference, batches(policy, seed=1, epoch=3))
    assert not same(reference, batches(policy, seed=2, epoch=2))


def test_two_ranks_see_each_sample_once_in_equal_numbers_of_batches():
    per_rank = [batches("standard", seed=4, epoch=1, rank=r, world_size=2) for r in range(2)]
    labels = torch.cat([y for rank in per_rank for _, y in rank]).tolist()
    assert sorted(labels) == list(range(32))
    assert len(per_rank[0]) == len(per_rank[1]) == 2


def test_labels_stay_with_their_images_through_shuffling():
    images = np.repeat(np.arange(20, dtype=np.uint8)[:, None, None, None], 8, axis=1).repeat(8, 2).repeat(3, 3)
    loader = build_train_loader(images, np.arange(20) + 100, policy="none", batch_size=4, seed=7)
    loader.set_epoch(5)
    for x, y in loader:
        assert torch.equal(x[:, 0, 0, 0].long() + 100, y)
