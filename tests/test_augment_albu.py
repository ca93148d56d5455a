"""Per-sample policies in DataLoader workers (pipeline.augment.albu): seeding, epochs, shapes."""
import numpy as np
import pytest
import torch

from pipeline.augment import build_train_loader
from pipeline.augment.albu import AlbumentationsAugmenter, autoaugment_policy


def tiny(n=16, size=12, chans=3):
    images = np.random.default_rng(2).integers(0, 256, (n, size, size, chans), dtype=np.uint8)
    return images, np.arange(n, dtype=np.int64)


def collect(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize("chans", [3, 1])
@pytest.mark.parametrize("policy", ["lab-albu", "autoaugment", "randaugment"])
def test_policy_keeps_uint8_shape_and_changes_some_images(policy, chans):
    images, labels = tiny(n=24, chans=chans)
    loader = build_train_loader(images, labels, policy=policy, batch_size=8, workers=0)
    changed = 0
    for x, y in collect(loader, 0):
        assert x.dtype == torch.uint8 and x.shape == (8, chans, 12, 12) and x.is_contiguous()
        assert y.dtype == torch.int64
        original = torch.from_numpy(images[y.numpy()]).permute(0, 3, 1, 2)
        changed += int((x != original).flatten(1).any(1).sum())
    assert 0 < changed <= 24


def test_lab_albu_policy_with_two_workers_is_reproducible_per_seed_and_epoch():
    images, labels = tiny()
    # Augmenting in this process first also guards against OpenCV deadlocking the forked workers.
    in_process = build_train_loader(images, labels, policy="lab-albu", batch_size=4, seed=3, workers=0)
    reference = collect(in_process, 0)
    first = build_train_loader(images, labels, policy="lab-albu", batch_size=4, seed=3, workers=2)
    second = build_train_loader(images, labels, policy="lab-albu", batch_size=4, seed=3, workers=2)
    other_seed = build_train_loader(images, labels, policy="lab-albu", batch_size=4, seed=4, workers=0)
    epoch0 = collect(first, 0)
    assert same(epoch0, collect(second, 0))
    assert same(epoch0, reference)  # independent of how samples reach workers
    epoch1 = collect(first, 1)  # the same persistent workers, next epoch
    assert first.loader._iterator is not None and first.loader.persistent_workers
    assert not same(epoch0, epoch1)
    assert same(epoch1, collect(in_process, 1))
    assert not same(epoch0, collect(other_seed, 0))


def test_same_sample_same_epoch_is_augmented_alike_whatever_its_batch_or_rank():
    images, labels = tiny()
    whole = build_train_loader(images, labels, policy="randaugment", batch_size=8, seed=1, workers=0)
    ranks = [build_train_loader(images, labels, policy="randaugment", batch_size=2, seed=1, workers=0,
                                rank=r, world_size=2) for r in range(2)]
    by_label = {int(y): x for xs, ys in collect(whole, 2) for x, y in zip(xs, ys)}
    seen = []
    for loader in ranks:
        for xs, ys in collect(loader, 2):
            for x, y in zip(xs, ys):
                assert torch.equal(x, by_label[int(y)])
                seen.append(int(y))
    assert sorted(seen) == list(range(16))


def test_torchvision_policy_leaves_the_global_random_stream_alone():
    augment = autoaugment_policy()
    image = tiny(n=1)[0][0]
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    a = augment(image, 11)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(a, augment(image, 11))


def test_transforms_in_one_pipeline_draw_independent_coin_flips():
    # A.Compose(seed=s) would hand every transform its own copy of one stream: both flips would
    # then always fire together. The augmenter shares one generator, so all four outcomes occur.
    import albumentations as A

    augment = AlbumentationsAugmenter(A.Compose([A.VerticalFlip(p=0.5), A.HorizontalFlip(p=0.5)]))
    image = tiny(n=1)[0][0]
    chw = torch.from_numpy(image).permute(2, 0, 1)
    outcomes = set()
    for seed in range(64):
        out = augment(image, seed)
        for vertical in (False, True):
            for horizontal in (False, True):
                dims = [d for d, on in ((-2, vertical), (-1, horizontal)) if on]
                if torch.equal(out, chw.flip(dims) if dims else chw):
                    outcomes.add((vertical, horizontal))
    assert outcomes == {(False, False), (False, True), (True, False), (True, True)}
