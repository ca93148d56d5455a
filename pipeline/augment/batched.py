"""A TrainLoader for any batched policy (e.g. lab.LabPolicy): the dataset on the device, no workers.

A batched policy has draw(count, generator, device) -> {name: per-sample tensor} and
__call__(uint8 NCHW batch, that batch's slice of the draws) -> uint8 NCHW. The epoch's draws come
up front from the generator seeded by (seed, epoch, rank), so equal seeds give identical batches.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import torch

from pipeline.augment.loaders import DeviceTrainLoader


class BatchedPolicy(Protocol):
    def draw(self, count: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]: ...

    def __call__(self, images: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor: ...


class PolicyTrainLoader(DeviceTrainLoader):
    """TrainLoader that augments each batch on the device with a BatchedPolicy."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, policy: BatchedPolicy, *,
                 batch_size: int = 128, device: torch.device = torch.device("cpu"), seed: int = 0,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1):
        super().__init__(images, labels, batch_size=batch_size, device=device, seed=seed,
                         drop_last=drop_last, rank=rank, world_size=world_size)
        self.policy = policy
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.plan.indices(self.epoch).to(self.device)
        draws = self.policy.draw(len(order), self.epoch_generator(), self.device)
        for start in range(0, len(order), self.plan.batch_size):
            batch = slice(start, start + self.plan.batch_size)
            index = order[batch]
            yield self.policy(self.images[index], {k: v[batch] for k, v in draws.items()}), self.labels[index]
