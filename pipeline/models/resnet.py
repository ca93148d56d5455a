"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", section 4.2): depth 6n + 2.

A 3x3 stem to 16 channels (no max pool), three stages of n basic blocks at 16/32/64 channels
(the first block of stages 2 and 3 has stride 2), global average pool, FC.
Shortcuts: "A" (the paper's CIFAR choice) is a parameter-free identity that subsamples with
stride 2 and zero-pads the new channels; "B" uses a 1x1 projection conv + BN where the shape
changes and the identity elsewhere. Kaiming init as in the paper; zero_init_residual (Goyal et al.
2017, "Accurate, Large Minibatch SGD") starts each block's last BN scale at 0, so every block
begins as its shortcut: an init choice, the architecture is unchanged.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from pipeline.models.catalog import register_model
from pipeline.models.layers import check_choice, init_weights, spatial_size

SHORTCUTS = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)


class PadShortcut(nn.Module):
    """Option A: x[:, :, ::s, ::s] with the extra channels zero-padded; no parameters."""

    def __init__(self, in_chans: int, out_chans: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = out_chans - in_chans

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads the last dims first: (W left, W right, H left, H right, C left, C right)
        return F.pad(x, (0, 0, 0, 0, 0, self.pad))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.pad}"


class BasicBlock(nn.Module):
    def __init__(self, in_chans: int, out_chans: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.relu2 = nn.ReLU()
        if stride == 1 and in_chans == out_chans:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_chans, out_chans, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chans),
            )

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, name: str, n: int, *, num_classes: int, in_chans: int, input_size, shortcut: str,
                 zero_init_residual: bool = False):
        super().__init__()
        shortcut = str(shortcut).upper()
        check_choice(name, "shortcut", shortcut, SHORTCUTS)
        spatial_size(name, in_chans, input_size)  # any H, W >= 1 works: convs pad, the pool is global
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, STAGE_WIDTHS[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(STAGE_WIDTHS[0]),
            nn.ReLU(),
        )
        stages = []
        chans = STAGE_WIDTHS[0]
        for i, width in enumerate(STAGE_WIDTHS):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(chans, width, stride, shortcut))
                chans = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(chans, num_classes)
        init_weights(self, "kaiming")
        if zero_init_residual:
            for block in self.modules():
                if isinstance(block, BasicBlock):
                    nn.init.zeros_(block.bn2.weight)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


def _register(depth: int) -> None:
    name = f"resnet{depth}"
    n = (depth - 2) // 6

    def builder(*, num_classes, in_chans, input_size, shortcut: str = "A", zero_init_residual: bool = False):
        return CifarResNet(name, n, num_classes=num_classes, in_chans=in_chans,
                           input_size=input_size, shortcut=shortcut, zero_init_residual=bool(zero_init_residual))

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"ResNet-{depth} for CIFAR (n={n}, {6 * n + 2} layers); shortcut 'A' or 'B', zero_init_residual."
    register_model(name)(builder)


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
