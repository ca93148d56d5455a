"""The batched lab policy (pipeline.augment.lab) against its per-image albumentations definition.

Statistics over many images, not equality: the component kernels are compared with
albumentations at fixed parameters, the random parts by fractions and distributions (seeded, so
every figure here is deterministic; the tolerances are about 4 standard errors of the statistic).
"""
import os

import numpy as np
import pytest
import torch
from scipy import stats

from pipeline.augment import build_train_loader, color, geometry
from pipeline.augment.lab import PROBABILITIES, LabPolicy
from pipeline.errors import PipelineError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
CPU = torch.device("cpu")


def only(size=(32, 32), **p):
    """The policy with every transform off except those given."""
    return LabPolicy(*size, p={**{name: 0.0 for name in PROBABILITIES}, **p})


def apply(policy, images, seed=0):
    draws = policy.draw(len(images), torch.Generator().manual_seed(seed), CPU)
    return policy(images, draws), draws


def noise(n, size=(32, 32), chans=3, seed=0):
    """uint8 NCHW random images: no flip or shift leaves one unchanged."""
    return torch.from_numpy(np.random.default_rng(seed).integers(1, 256, (n, chans, *size), dtype=np.uint8))


def constant(n, value, size=(32, 32), chans=3):
    return torch.full((n, chans, *size), value, dtype=torch.uint8)


def within(fraction, p, n, sigmas=4.0):
    return abs(fraction - p) <= sigmas * np.sqrt(p * (1 - p) / n)


def albu(augment, images):
    """albumentations' per-image result for uint8 NCHW images, seeded by position."""
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    return torch.stack([augment(image, seed) for seed, image in enumerate(hwc)])


def zero_fraction(images):
    return (images == 0).flatten(1).float().mean(1).numpy()


# -- shapes, paths, loader ---------------------------------------------------------------------

@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("sync_free", [False, True])
def test_output_is_uint8_nchw_and_both_selection_paths_agree(chans, sync_free):
    # sync_free=True is the accelerator path (compute everywhere, torch.where): checked here on CPU.
    images = noise(96, size=(12, 20), chans=chans)
    policy = LabPolicy(12, 20, p={"jitter": 1.0, "affine": 0.5, "crop": 0.5, "erase": 0.5}, sync_free=sync_free)
    out, draws = apply(policy, images)
    assert out.dtype == torch.uint8 and out.shape == (96, chans, 12, 20) and out.is_contiguous()
    indexed = LabPolicy(12, 20, p={"jitter": 1.0, "affine": 0.5, "crop": 0.5, "erase": 0.5}, sync_free=False)
    assert torch.equal(out, indexed(images, draws))


@pytest.mark.parametrize("sync_free", [False, True])
def test_every_step_leaves_whole_numbers_in_range_so_the_uint8_cast_is_exact(sync_free):
    # All transforms on every image, extreme pixels included: the cast rounds nothing.
    images = torch.cat([noise(64), constant(16, 0), constant(16, 255)])
    policy = LabPolicy(32, 32, p={name: 1.0 for name in PROBABILITIES}, sync_free=sync_free)
    draws = policy.draw(len(images), torch.Generator().manual_seed(5), CPU)
    x = policy.augment_float(images, draws)
    assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= 255
    assert torch.equal(policy(images, draws), x.to(torch.uint8))
    assert (x == 0).flatten(1).any(1).all()  # every image erased somewhere: the erasing ran


def test_loader_is_registered_as_lab_deterministic_per_seed_and_epoch():
    images, labels = noise(48).permute(0, 2, 3, 1).numpy(), np.arange(48)

    def epoch(seed, e):
        loader = build_train_loader(images, labels, policy="lab", batch_size=16, seed=seed)
        loader.set_epoch(e)
        return [(x, y) for x, y in loader]

    first = epoch(3, 0)
    one_batch_at_a_time = build_train_loader(images, labels, policy="lab", batch_size=16, seed=3)
    one_batch_at_a_time.chunk = 16
    assert all(torch.equal(x, x2) for (x, _), (x2, _) in zip(first, one_batch_at_a_time))
    assert all(x.dtype == torch.uint8 and x.shape == (16, 3, 32, 32) and x.is_contiguous() for x, _ in first)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == list(range(48))
    assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(first, epoch(3, 0)))
    for other in (epoch(3, 1), epoch(4, 0)):
        assert not all(torch.equal(x, x2) for (x, _), (x2, _) in zip(first, other))


def test_unknown_transform_or_bad_probability_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="unknown lab transform"):
        LabPolicy(32, 32, p={"mixup": 1.0})
    with pytest.raises(PipelineError, match=r"probabilities must be in \[0, 1\]"):
        LabPolicy(32, 32, p={"erase": 1.5})


# -- flips, crop, order ------------------------------------------------------------------------

@pytest.mark.parametrize("name, dim", [("vflip", -2), ("hflip", -1)])
def test_flip_fraction_matches_its_probability(name, dim):
    images = noise(4000)
    for p in (1.0, PROBABILITIES[name]):
        out, _ = apply(only(**{name: p}), images)
        flipped = (out == images.flip(dim)).flatten(1).all(1)
        unchanged = (out == images).flatten(1).all(1)
        assert bool((flipped | unchanged).all())
        assert within(flipped.float().mean().item(), p, len(images)) if p < 1 else bool(flipped.all())


def test_hflip_false_never_mirrors_even_with_its_probability_forced():
    images = noise(2000)
    out, _ = apply(LabPolicy(32, 32, hflip=False, p={**{n: 0.0 for n in PROBABILITIES}, "hflip": 1.0}), images)
    assert torch.equal(out, images)


def test_crop_shifts_are_uniform_over_the_padding():
    images = constant(4000, 1, size=(16, 16), chans=1)
    images[:, :, 8, 8] = 255  # a marker: where it lands is the shift
    out, _ = apply(only((16, 16), crop=1.0), images)
    flat = out.flatten(1).float()
    assert bool(((flat == 255).sum(1) == 1).all())  # a 4-pixel shift never crops the centre out
    where = flat.argmax(1)
    dy, dx = (where // 16 - 8).numpy(), (where % 16 - 8).numpy()
    for shift in (dy, dx):
        counts = np.bincount(shift + 4, minlength=9)
        assert len(counts) == 9 and stats.chisquare(counts).pvalue > 1e-3
    # the padding is zeros: a shift of s rows and t columns leaves (16|s| + 16|t| - |st|) zero pixels
    zeros = (out == 0).flatten(1).sum(1).numpy()
    assert np.array_equal(zeros, 16 * np.abs(dy) + 16 * np.abs(dx) - np.abs(dy * dx))


def test_each_image_follows_its_own_random_order():
    # vflip and a padded crop do not commute: the result tells which ran first.
    images = noise(1000, size=(16, 16))
    out, draws = apply(only((16, 16), vflip=1.0, crop=1.0), images)
    vflip_first = draws["position"][:, 0] < draws["position"][:, 2]
    crop = geometry.padded_crop(images.float(), draws["crop_top"], draws["crop_left"], 4)
    as_drawn = torch.where(vflip_first.view(-1, 1, 1, 1),
                           geometry.padded_crop(images.flip(-2).float(), draws["crop_top"], draws["crop_left"], 4),
                           crop.flip(-2))
    assert torch.equal(out, as_drawn.to(torch.uint8))
    assert within(vflip_first.float().mean().item(), 0.5, len(images))


# -- affine ------------------------------------------------------------------------------------

@pytest.mark.parametrize("angle, tx, ty", [(30.0, 0.1, -0.05), (-44.0, 0.0, 0.149), (10.0, -0.15, 0.0)])
def test_rotate_translate_matches_albumentations_affine(angle, tx, ty):
    import albumentations as A
    import cv2

    image = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8), (5, 5), 1.5)
    ref = A.Affine(rotate=(angle, angle), translate_percent={"x": (tx, tx), "y": (ty, ty)},
                   border_mode=cv2.BORDER_CONSTANT, fill=0, p=1)(image=image)["image"]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    ours = geometry.rotate_translate(x, torch.tensor([angle]), torch.tensor([[int(tx * 32), int(ty * 32)]]))
    diff = (ours.round()[0].permute(1, 2, 0) - torch.from_numpy(ref).float()).abs()
    assert diff.max() <= 1 and diff.mean() < 0.05


def bar_images(n, size=48):
    """A horizontal bar through the centre (28 x 3 px): its orientation and centroid are measurable."""
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    c = size // 2
    images[:, :, c - 2:c + 1, c - 14:c + 14] = 255  # rows 21-23, columns 10-37: centred on 23.5 wide
    return images


def orientation_and_centroid(images):
    w = images[:, 0].double()
    ys, xs = torch.meshgrid(torch.arange(w.shape[1]).double(), torch.arange(w.shape[2]).double(), indexing="ij")
    mass = w.sum((1, 2))
    my, mx = (w * ys).sum((1, 2)) / mass, (w * xs).sum((1, 2)) / mass
    dy, dx = ys - my.view(-1, 1, 1), xs - mx.view(-1, 1, 1)
    mu20, mu02, mu11 = (w * dx * dx).sum((1, 2)), (w * dy * dy).sum((1, 2)), (w * dx * dy).sum((1, 2))
    # y grows downwards, so a counter-clockwise turn of a degrees gives -a in these coordinates
    angle = -0.5 * torch.rad2deg(torch.atan2(2 * mu11, mu20 - mu02))
    return angle.numpy(), mx.numpy(), my.numpy()


def test_rotation_angles_and_shifts_recovered_from_the_images():
    images = bar_images(1500)
    out, draws = apply(only((48, 48), affine=1.0), images)
    angle, mx, my = orientation_and_centroid(out)
    drawn = draws["angle"].numpy()
    assert np.abs(angle - drawn).max() < 0.5  # the image turned by the drawn angle (error ~0.06 degrees)
    assert stats.kstest(angle, stats.uniform(-45, 90).cdf).pvalue > 0.01
    _, cx, cy = orientation_and_centroid(images[:1])
    shift = draws["shift"].numpy()
    # the shifts are whole pixels; rounding the rotated bar moves its centroid by under half of one
    assert np.abs(mx - cx - shift[:, 0]).max() < 0.5 and np.abs(my - cy - shift[:, 1]).max() < 0.5
    assert set(np.unique(shift)) <= set(range(-7, 8))  # int(U(-.15, .15) * 48)
    real, _ = apply(only((48, 48), affine=PROBABILITIES["affine"]), images)
    assert within((real != images).flatten(1).any(1).float().mean().item(), PROBABILITIES["affine"], len(images))


# -- colour jitter -----------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [0.9, 1.07])
def test_colour_adjustments_match_albumentations(factor):
    import cv2
    from albumentations.augmentations.pixel import functional as fp

    # smooth colours, as photographs have (on pure noise OpenCV's uint8 HSV rounds hue by up to 7 levels)
    image = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8), (5, 5), 1.5)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    pairs = [(fp.adjust_brightness_torchvision, color.brightness, factor),
             (fp.adjust_contrast_torchvision, color.contrast, factor),
             (fp.adjust_saturation_torchvision, color.saturation, factor),
             (fp.adjust_hue_torchvision, color.hue, (factor - 1) / 2)]  # hue: -0.05 and 0.035 turns
    for reference, ours, f in pairs:
        expected = torch.from_numpy(reference(image, f)).permute(2, 0, 1).float()
        diff = (ours(x.clone(), torch.tensor([f]))[0] - expected).abs()
        # hue: OpenCV keeps uint8 hue in 2-degree steps, so a pixel may land a level or two away
        mean_tol, max_tol = (0.25, 3) if ours is color.hue else (0.06, 1)
        assert diff.mean() < mean_tol and diff.max() <= max_tol


def test_jitter_changes_its_fraction_of_images_and_leaves_grey_images_grey():
    images = noise(3000)
    out, _ = apply(only(jitter=PROBABILITIES["jitter"]), images)
    changed = (out != images).flatten(1).any(1).float().mean().item()
    assert within(changed, PROBABILITIES["jitter"], len(images))
    grey, _ = apply(only(jitter=1.0), noise(200, chans=1))
    assert grey.shape == (200, 1, 32, 32)


# -- erasing and the whole policy vs albumentations --------------------------------------------

def test_erased_area_distribution_matches_albumentations_erasing():
    import albumentations as A

    from pipeline.augment.albu import AlbumentationsAugmenter

    images = constant(1500, 200)
    ours, _ = apply(only(erase=1.0), images)
    theirs = albu(AlbumentationsAugmenter(A.Compose([A.Erasing(p=1.0)])), images)
    a, b = zero_fraction(ours), zero_fraction(theirs)
    assert (a > 0).all() and (b > 0).all()
    assert stats.ks_2samp(a, b).pvalue > 0.01
    assert abs(a.mean() - b.mean()) < 0.012  # ~0.16 each; 4 standard errors (0.003) of the difference
    real, _ = apply(only(erase=PROBABILITIES["erase"]), images)
    assert within(float((zero_fraction(real) > 0).mean()), PROBABILITIES["erase"], len(images))


def test_whole_policy_zero_pixels_match_the_albumentations_policy():
    from pipeline.augment.albu import lab_policy

    images = constant(2000, 128)
    ours, _ = apply(LabPolicy(32, 32), images)
    theirs = albu(lab_policy(32, 32), images)
    a, b = zero_fraction(ours), zero_fraction(theirs)
    assert abs(a.mean() - b.mean()) < 0.012  # ~0.057 each; standard error of the difference 0.0028
    assert abs((a > 0).mean() - (b > 0).mean()) < 0.06  # images with any zero pixel, ~0.37; s.e. 0.015
    assert stats.ks_2samp(a, b).pvalue > 0.01
