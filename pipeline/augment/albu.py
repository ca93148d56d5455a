"""The per-sample augmentation path: albumentations or torchvision policies in DataLoader workers.

Reproducibility does not depend on worker scheduling: the batch sampler yields (index, epoch)
keys, and each sample's random state is derived from (seed, epoch, index) just before it is
augmented. The epoch travels inside the keys, so it reaches persistent workers without rebuilding
them. A sample's augmentation is also independent of rank and world size.
albumentations (and OpenCV) are imported only when the "lab-albu" policy is built (the "lab"
policy is the same policy batched in torch ops: lab.py).
"""
from __future__ import annotations

import os
import random
import sys
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.augment.loaders import Batching, EpochPlan, check_images, derive_seed
from pipeline.errors import PipelineError

WORKER_TIMEOUT_S = 300  # per batch; healthy batches take well under a second

# An augmenter maps (HWC uint8 image, seed) to a CHW uint8 tensor; same seed, same result.
Augmenter = Callable[[np.ndarray, int], torch.Tensor]


def lab_policy(height: int, width: int, pad: int = 4, hflip: bool = True) -> Augmenter:
    """In random order: vflip .10, hflip .15 (unless hflip=False), padded random crop .15, affine
    (rotate +-45, translate +-15%) .20, color jitter (.1, .1, .1, .05) .15; then random erasing .10."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
    import albumentations as A
    import cv2

    # OpenCV's thread pool gains nothing on one small image, and once started here it can
    # deadlock the DataLoader workers forked later (they inherit its state but not its threads).
    cv2.setNumThreads(0)
    transform = A.Compose([
        A.RandomOrder([
            A.VerticalFlip(p=0.10),
            A.HorizontalFlip(p=0.15 if hflip else 0.0),  # p=0 keeps the draws of the other transforms
            A.Sequential([
                A.PadIfNeeded(height + 2 * pad, width + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0),
                A.RandomCrop(height, width),
            ], p=0.15),
            A.Affine(rotate=(-45, 45), translate_percent=(-0.15, 0.15), border_mode=cv2.BORDER_CONSTANT,
                     fill=0, p=0.20),
            A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.05, p=0.15),
        ], n=5, p=1.0),  # n = all five: RandomOrder then only shuffles them
        A.Erasing(p=0.10),
    ])
    return AlbumentationsAugmenter(transform)


class AlbumentationsAugmenter:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image: np.ndarray, seed: int) -> torch.Tensor:
        # One shared generator pair for the whole tree: A.Compose(seed=...) would give every
        # transform its own copy of the same stream, so their p-draws would be identical.
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self.transform(image=image)["image"]
        # reshape: keep the (H, W, 1) of grayscale images should a transform return (H, W).
        return torch.from_numpy(out.reshape(image.shape)).permute(2, 0, 1)


def autoaugment_policy() -> Augmenter:
    """AutoAugment's CIFAR-10 policy (the one searched on small images)."""
    from torchvision.transforms import v2

    return TorchvisionAugmenter(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))


def randaugment_policy() -> Augmenter:
    """RandAugment with the paper's N=2 operations at magnitude 9."""
    from torchvision.transforms import v2

    return TorchvisionAugmenter(v2.RandAugment(num_ops=2, magnitude=9))


class TorchvisionAugmenter:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image: np.ndarray, seed: int) -> torch.Tensor:
        # torchvision draws from torch's global CPU generator: seed it for this sample and restore
        # it after, so the caller's stream is untouched (with workers=0 the caller is the training
        # process). torch.manual_seed would also seed every accelerator, ~100x slower per call.
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.transform(torch.from_numpy(image).permute(2, 0, 1))
        finally:
            generator.set_state(state)


class AugmentedImages(Dataset):
    """Map-style dataset keyed by (index, epoch); fetches whole batches via __getitems__."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: Augmenter, seed: int):
        self.images, self.labels = np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64)
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key
        return self.augment(self.images[index], derive_seed(self.seed, epoch, index)), int(self.labels[index])

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        samples = [self[key] for key in keys]
        images = torch.stack([image for image, _ in samples])
        return images, torch.tensor([label for _, label in samples], dtype=torch.int64)


class EpochBatches(Sampler):
    """Batches of (index, epoch) keys following an EpochPlan; set `epoch` before iterating."""

    def __init__(self, plan: EpochPlan):
        self.plan, self.epoch = plan, 0

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.plan.indices(self.epoch).tolist()
        for start in range(0, len(order), self.plan.batch_size):
            yield [(index, self.epoch) for index in order[start : start + self.plan.batch_size]]


def _whole_batch(batch):
    """collate_fn: __getitems__ already returns the stacked batch."""
    return batch


def _init_worker(worker_id: int) -> None:
    # Workers split the cores already; OpenCV threads would oversubscribe them. (Forked workers
    # inherit lab_policy's setting; spawned ones import a fresh OpenCV, hence this.)
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(0)


class WorkerTrainLoader:
    """TrainLoader that augments per sample in `workers` persistent DataLoader processes."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        augment: Augmenter,
        *,
        workers: int = 2,
        **batching: Any,
    ):
        """batching: the fields of Batching (batch_size, device, seed, drop_last, rank, world_size)."""
        check_images(images, labels, "train")
        if workers < 0:
            raise PipelineError(f"workers must be >= 0, got {workers}")
        options = Batching(**batching)
        self.plan = options.plan(len(images))
        self.num_samples = self.plan.num_samples
        self.device = torch.device(options.device)
        self.batches = EpochBatches(self.plan)
        pin = self.device.type == "cuda"
        self.loader = DataLoader(
            AugmentedImages(images, labels, augment, options.seed),
            batch_sampler=self.batches,
            collate_fn=_whole_batch,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=pin,
            worker_init_fn=_init_worker if workers else None,
            # A stuck worker becomes an error instead of a training run that hangs forever.
            timeout=WORKER_TIMEOUT_S if workers else 0,
            # DataLoader seeds its workers from this, not from torch's global RNG, so building an
            # iterator each epoch leaves the training loop's random stream alone.
            generator=torch.Generator().manual_seed(derive_seed(options.seed, options.rank)),
        )
        self._non_blocking = pin

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise PipelineError(f"epoch must be non-negative, got {epoch}")
        self.batches.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield (images.to(self.device, non_blocking=self._non_blocking),
                   labels.to(self.device, non_blocking=self._non_blocking))
