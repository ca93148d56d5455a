"""The baseline users start from: torchvision's CIFAR-10 recipe, written the way its tutorials do.

A Dataset over in-memory arrays that makes a PIL image per sample (as torchvision.datasets.CIFAR10
does), RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, a DataLoader with two
workers, fp32, NCHW, and a plain training loop.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class ArrayImageDataset(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def naive_loader(images: np.ndarray, labels: np.ndarray, mean, std, batch_size: int = 128,
                 workers: int = 2) -> DataLoader:
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    return DataLoader(ArrayImageDataset(images, labels, transform), batch_size=batch_size,
                      shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)


def naive_train_steps(model: nn.Module, loader: DataLoader, device: torch.device,
                      lr: float = 0.1) -> Iterator[int]:
    """Endless plain SGD steps; yields each step's batch size."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    while True:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            yield x.shape[0]
