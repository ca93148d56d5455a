"""What both training-loader backends share (epoch order, DDP sharding, seeding) and the eval loader.

Epoch order and sharding rule (`EpochPlan`):
  * every rank draws the same permutation of range(N) from a CPU torch.Generator seeded by
    (seed, epoch), so the order does not depend on the device;
  * the permutation is made a multiple of world_size: with drop_last its last N % world_size
    entries are dropped (different samples each epoch), without drop_last its first entries are
    repeated at the end (as torch's DistributedSampler does);
  * rank r takes every world_size-th entry starting at r, then cuts batches of batch_size; with
    drop_last the final partial batch is dropped, so every rank yields the same number of batches.
  So when N is a multiple of world_size (and, with drop_last, of world_size * batch_size) every
  sample is seen exactly once per epoch across all ranks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.runtime import nhwc_to_nchw


@runtime_checkable
class TrainLoader(Protocol):
    """What the training loop iterates: uint8 NCHW images and int64 labels on the device."""

    num_samples: int  # samples this rank sees per epoch

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative integer keys such as (seed, epoch, rank).

    SeedSequence mixes the keys, so nearby keys give unrelated streams (seed+epoch would not).
    """
    words = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)
    return int(words[0] >> np.uint64(1))


def check_images(images: np.ndarray, labels: np.ndarray | None, what: str) -> None:
    """Bad arrays are a one-line PipelineError here, not a torch traceback deep in an epoch."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if hasattr(images, "shape") else type(images).__name__
        raise PipelineError(f"{what} images: expected uint8 NHWC (N, H, W, C), got {got}")
    if labels is None:
        return
    if labels.ndim != 1 or len(labels) != len(images):
        raise PipelineError(
            f"{what} labels: expected shape ({len(images)},), got {tuple(labels.shape)}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise PipelineError(f"{what} labels: expected integers, got {labels.dtype}")


def check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise PipelineError(f"rank {rank} is not in a world of size {world_size}")


@dataclass(frozen=True)
class EpochPlan:
    """Which sample indices this rank sees in which order each epoch (rule in the module docstring)."""

    num_items: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = True

    def __post_init__(self) -> None:
        check_shard(self.rank, self.world_size)
        if self.batch_size < 1:
            raise PipelineError(f"batch size must be at least 1, got {self.batch_size}")
        if self.seed < 0:
            raise PipelineError(f"seed must be non-negative, got {self.seed}")
        if len(self) == 0:
            raise PipelineError(
                f"{self.num_items} training samples over {self.world_size} rank(s) make no full "
                f"batch of {self.batch_size}; lower the batch size"
            )

    @property
    def shard_size(self) -> int:
        divide = math.floor if self.drop_last else math.ceil
        return divide(self.num_items / self.world_size)

    def __len__(self) -> int:
        divide = math.floor if self.drop_last else math.ceil
        return divide(self.shard_size / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self.shard_size

    def indices(self, epoch: int) -> torch.Tensor:
        """int64 CPU tensor of this rank's sample indices for `epoch`, num_samples long."""
        if epoch < 0:
            raise PipelineError(f"epoch must be non-negative, got {epoch}")
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        order = torch.randperm(self.num_items, generator=generator)
        total = self.shard_size * self.world_size
        if total > self.num_items:  # pad by wrapping around (never more than world_size - 1)
            order = torch.cat([order, order[: total - self.num_items]])
        return order[self.rank : total : self.world_size][: self.num_samples]


@dataclass(frozen=True)
class Batching:
    """How every training loader batches and shards, whatever its policy: spelled once here, and
    passed through by build_train_loader and the loaders as keywords (batch_size=..., seed=...)."""

    batch_size: int = 128
    device: torch.device | str = "cpu"
    seed: int = 0
    drop_last: bool = True
    rank: int = 0
    world_size: int = 1

    def plan(self, num_items: int) -> EpochPlan:
        return EpochPlan(num_items, self.batch_size, self.seed, self.rank, self.world_size, self.drop_last)


class DeviceTrainLoader:
    """Base of the batched TrainLoaders (dataset on the device): the EpochPlan, the epoch, the labels
    on the device, and each epoch's generator there, seeded by (seed, epoch, rank)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batching: Batching):
        check_images(images, labels, "train")
        self.plan = batching.plan(len(images))
        self.num_samples = self.plan.num_samples
        self.device = torch.device(batching.device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise PipelineError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan)

    def epoch_generator(self) -> torch.Generator:
        """A generator on the device for this epoch's per-sample random numbers (drawn up front)."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(derive_seed(self.plan.seed, self.epoch, self.plan.rank))
        return generator


class EvalLoader:
    """Fixed-order, unaugmented batches: (uint8 NCHW images, int64 labels or None) on the device.

    With world_size > 1 each rank takes one contiguous slice of the data (np.array_split, sizes
    differ by at most one); `indices` holds the positions this rank covers, in the order yielded,
    so concatenating the ranks' outputs in rank order restores the original order.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        *,
        batch_size: int = 512,
        device: torch.device = torch.device("cpu"),
        rank: int = 0,
        world_size: int = 1,
    ):
        check_images(images, labels, "eval")
        check_shard(rank, world_size)
        if batch_size < 1:
            raise PipelineError(f"batch size must be at least 1, got {batch_size}")
        if world_size == 1:
            self.indices = np.arange(len(images))
        else:
            self.indices = np.array_split(np.arange(len(images)), world_size)[rank]
        lo, hi = (int(self.indices[0]), int(self.indices[-1]) + 1) if len(self.indices) else (0, 0)
        self.batch_size = batch_size
        self.num_samples = hi - lo
        # One copy of the shard on the device; batches are contiguous views of it.
        self.images = nhwc_to_nchw(np.ascontiguousarray(images[lo:hi])).to(device)
        self.labels = None if labels is None else torch.from_numpy(
            np.ascontiguousarray(labels[lo:hi], dtype=np.int64)).to(device)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for start in range(0, self.num_samples, self.batch_size):
            stop = start + self.batch_size
            yield self.images[start:stop], None if self.labels is None else self.labels[start:stop]
