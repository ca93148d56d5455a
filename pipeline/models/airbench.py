"""airbench94 (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498).

The paper's 8-layer net, written from its description:
  whiten: conv 2x2 (no padding), 3 -> 2*3*2*2 = 24 channels, with bias; its weights are set from
          the data's patch covariance (pipeline/models/init.py: whiten_init_) and never trained;
  GELU;
  three conv groups (widths 64, 256, 256), each
          conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU
          (convs 'same'-padded without bias; BN with its scale fixed at 1, only its bias trained,
          eps 1e-12 and a running-stat momentum of 0.4 in torch's convention, 0.6 in the paper's);
  maxpool 3 (3x3 -> 1x1), linear 256 -> 10 without bias, logits multiplied by 1/9.
Convs start as identities where their shape allows (dirac init of the first in_channels filters).

The Muon variant (airbench94_muon) is the same net with another head: output divided by the
feature width (256) and the head's weights rescaled to unit standard deviation at init
(head_scale=0.00390625, head_unit_std=true).

The paper's wider rungs (KellerJordan/cifar10-airbench, legacy/airbench95.py and airbench96.py):
  airbench95: the same net at widths 128/384/384;
  airbench96: widths 128/384/512 and a third conv per group with a residual over the last two
              (conv1 -> pool -> BN -> GELU = x0; conv2 -> BN -> GELU -> conv3 -> BN; + x0; GELU),
              BN running-stat momentum torch's default 0.1 (the paper's 0.9).
"""
from __future__ import annotations

from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.catalog import register_model
from pipeline.models.layers import make_act, spatial_size
from pipeline.models.init import dirac_init_


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1 (not a trained parameter): only the shift (bias) learns."""

    def __init__(self, num_features: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    """conv -> pool -> BN -> act -> conv -> BN -> act; with residual=True (airbench96) a third conv
    whose BN output is added to the first act's before the last act."""

    def __init__(self, in_chans: int, out_chans: int, bn_momentum: float, act: str, residual: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FrozenScaleBatchNorm(out_chans, bn_momentum)
        self.act1 = make_act(act)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding="same", bias=False)
        self.norm2 = FrozenScaleBatchNorm(out_chans, bn_momentum)
        self.act2 = make_act(act)
        self.residual = residual
        if residual:
            self.conv3 = nn.Conv2d(out_chans, out_chans, 3, padding="same", bias=False)
            self.norm3 = FrozenScaleBatchNorm(out_chans, bn_momentum)
            self.act3 = make_act(act)

    def forward(self, x):
        x = self.act1(self.norm1(self.pool(self.conv1(x))))
        if not self.residual:
            return self.act2(self.norm2(self.conv2(x)))
        y = self.norm3(self.conv3(self.act2(self.norm2(self.conv2(x)))))
        return self.act3(x + y)


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


class AirbenchNet(nn.Module):
    def __init__(self, num_classes: int, in_chans: int, widths: tuple[int, int, int], whiten_kernel: int,
                 bn_momentum: float, head_scale: float, head_unit_std: bool, act: str, residual: bool = False):
        super().__init__()
        self.whiten = nn.Conv2d(in_chans, 2 * in_chans * whiten_kernel**2, whiten_kernel, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from the data (whitening init), never trained
        nn.init.zeros_(self.whiten.bias)
        self.act = make_act(act)
        chans = [self.whiten.out_channels, *widths]
        self.groups = nn.Sequential(*(ConvGroup(chans[i], chans[i + 1], bn_momentum, act, residual) for i in range(3)))
        self.pool = nn.MaxPool2d(3)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.scale = Scale(head_scale)
        dirac_init_(self.groups)
        if head_unit_std:
            self.head.weight.data /= self.head.weight.data.std()

    def forward(self, x):
        x = self.groups(self.act(self.whiten(x)))
        return self.scale(self.head(self.flatten(self.pool(x))))


def build_airbench(name: str, *, num_classes: int, in_chans: int, input_size, widths, whiten_kernel: int,
                   bn_momentum: float, head_scale: float, head_unit_std: bool, act: str,
                   residual: bool = False) -> nn.Module:
    height, width = spatial_size(name, in_chans, input_size)
    widths = tuple(int(w) for w in widths)
    if len(widths) != 3 or min(widths) < 1:
        raise PipelineError(f"model '{name}': option widths must be three positive ints, got {list(widths)}")
    # whiten conv (k-1 lost), three 2x2 pools, then the 3x3 pool must leave exactly one position.
    side = min(height, width) - whiten_kernel + 1
    for _ in range(3):
        side //= 2
    if not 3 <= side <= 5 or height != width:
        raise PipelineError(f"model '{name}' needs square inputs of about 32x32 (after its pools a 3x3 map "
                            f"is left); got {height}x{width}")
    return AirbenchNet(num_classes, in_chans, widths, whiten_kernel, bn_momentum, head_scale,
                       bool(head_unit_std), act, bool(residual))


def register_airbench(name: str, widths: tuple[int, int, int], bn_momentum: float, residual: bool = False):
    """Register one rung of the ladder: its widths, BN momentum and block as the builder's defaults."""

    def build(*, num_classes: int, in_chans: int, input_size, widths: list = widths, whiten_kernel: int = 2,
              bn_momentum: float = bn_momentum, head_scale: float = 1 / 9, head_unit_std: bool = False,
              act: str = "gelu") -> nn.Module:
        return build_airbench(name, num_classes=num_classes, in_chans=in_chans, input_size=input_size,
                              widths=widths, whiten_kernel=whiten_kernel, bn_momentum=bn_momentum,
                              head_scale=head_scale, head_unit_std=head_unit_std, act=act, residual=residual)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{name}: widths {'/'.join(map(str, widths))}" + (", residual 3-conv groups" if residual else "")
    return register_model(name)(build)


airbench94 = register_airbench("airbench94", (64, 256, 256), bn_momentum=0.4)
airbench95 = register_airbench("airbench95", (128, 384, 384), bn_momentum=0.4)
airbench96 = register_airbench("airbench96", (128, 384, 512), bn_momentum=0.1, residual=True)
