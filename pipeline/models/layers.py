"""Small pieces the zoo shares: an activation registry and the shape arithmetic for FC sizes.

Models size their first fully connected layer from input_size with `conv_out`/`pool_out`
instead of a dummy forward pass, so building a model is cheap and the numbers are inspectable.
"""
from __future__ import annotations

import functools
from typing import Sequence

from torch import nn

from pipeline.errors import PipelineError
from pipeline.registry import Registry

ACTIVATIONS = Registry("activation")
ACTIVATIONS.register("relu")(nn.ReLU)
ACTIVATIONS.register("swish")(nn.SiLU)
ACTIVATIONS.register("elu")(nn.ELU)
ACTIVATIONS.register("leaky_relu")(functools.partial(nn.LeakyReLU, 0.01))
ACTIVATIONS.register("gelu")(nn.GELU)
ACTIVATIONS.register("tanh")(nn.Tanh)


def make_act(name: str, model: str | None = None) -> nn.Module:
    """A fresh activation module by name (`act=` option of the models); unknown names list the choices."""
    if model is not None:
        check_choice(model, "act", name, ACTIVATIONS.names())
    return ACTIVATIONS.get(str(name))()


def check_choice(model: str, option: str, value, choices: Sequence) -> None:
    if value not in choices:
        listed = ", ".join(str(c) for c in choices)
        raise PipelineError(f"model '{model}': option {option}={value!r} is not one of: {listed}")


def check_dropout(model: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise PipelineError(f"model '{model}': option dropout={p!r} must be a number in [0, 1)")
    return float(p)


def spatial_size(model: str, in_chans: int, input_size: Sequence[int]) -> tuple[int, int]:
    """(H, W) of a (C, H, W) input_size, checked against in_chans."""
    if len(input_size) != 3:
        raise PipelineError(f"model '{model}': input_size must be (C, H, W), got {tuple(input_size)}")
    c, h, w = (int(v) for v in input_size)
    if c != in_chans:
        raise PipelineError(f"model '{model}': input_size has {c} channels but in_chans={in_chans}")
    return h, w


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a conv (or floor-mode pool) along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def pool_out(size: int, kernel: int = 2, ceil_mode: bool = False) -> int:
    """Output length of a kernel-sized, kernel-strided pool along one axis."""
    return -(-size // kernel) if ceil_mode else size // kernel


def check_positive(model: str, input_size: Sequence[int], h: int, w: int) -> None:
    """A model whose feature map shrinks to nothing gets a clear error instead of a shape crash."""
    if h < 1 or w < 1:
        raise PipelineError(
            f"model '{model}': input {'x'.join(map(str, input_size))} is too small "
            f"(the feature map shrinks to {h}x{w})"
        )


INIT_SCHEMES = ("default", "kaiming", "xavier_normal")


def init_weights(model: nn.Module, scheme: str) -> None:
    """'kaiming' (He et al. 2015, fan_out as in torchvision), 'xavier_normal', or 'default' (PyTorch's)."""
    check_choice(type(model).__name__, "init", scheme, INIT_SCHEMES)
    if scheme == "default":
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# A feature spec is a list of: int (3x3 conv, padding `padding`, to that many channels),
# (channels, kernel) (a kxk conv), "M" (2x2 max pool) or "A" (2x2 average pool).
# padding="same" pads every kxk conv by k // 2, so odd kernels keep the feature map's size.
FeatureSpec = Sequence["int | tuple[int, int] | str"]


class ConvNet(nn.Module):
    """conv/pool feature stack -> flatten -> MLP head: one implementation for LeNet, SimpleNN, CNN3/4 and VGG.

    Pools use ceil_mode, so an odd feature map keeps its border row and 28x28 inputs survive the
    five pools of VGG (28 -> 14 -> 7 -> 4 -> 2 -> 1); on even sizes this equals floor mode.
    Convs drop their bias when BatchNorm follows (the BN shift makes it redundant).
    """

    def __init__(
        self,
        name: str,
        features: FeatureSpec,
        *,
        num_classes: int,
        in_chans: int,
        input_size: Sequence[int],
        hidden: Sequence[int] = (),
        padding: int | str = 0,
        bn: bool = False,
        fc_bn: bool | Sequence[bool] = False,
        fc_bn_affine: bool = True,
        head_bn: bool = False,
        head_bias: bool = True,
        act: str = "relu",
        dropout: float = 0.0,
        init: str = "default",
    ):
        super().__init__()
        make_act(act, name)  # fail early, with the list of activations, on an unknown name
        dropout = check_dropout(name, dropout)
        h, w = spatial_size(name, in_chans, input_size)
        layers: list[nn.Module] = []
        chans = in_chans
        for item in features:
            if item in ("M", "A"):
                pool = nn.MaxPool2d if item == "M" else nn.AvgPool2d
                layers.append(pool(2, ceil_mode=True))
                h, w = pool_out(h, 2, ceil_mode=True), pool_out(w, 2, ceil_mode=True)
                continue
            out, k = (item, 3) if isinstance(item, int) else item
            pad = k // 2 if padding == "same" else padding
            layers.append(nn.Conv2d(chans, out, k, padding=pad, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(out))
            layers.append(make_act(act))
            h, w = conv_out(h, k, padding=pad), conv_out(w, k, padding=pad)
            check_positive(name, input_size, h, w)
            chans = out
        check_positive(name, input_size, h, w)
        self.features = nn.Sequential(*layers)

        fc_bns = [fc_bn] * len(hidden) if isinstance(fc_bn, bool) else list(fc_bn)
        head: list[nn.Module] = [nn.Flatten()]
        width = chans * h * w
        for out, use_bn in zip(hidden, fc_bns, strict=True):
            # Without affine the BN has no shift, so the Linear keeps its bias.
            head.append(nn.Linear(width, out, bias=not (use_bn and fc_bn_affine)))
            if use_bn:
                head.append(nn.BatchNorm1d(out, affine=fc_bn_affine))
            head.append(make_act(act))
            if dropout:
                head.append(nn.Dropout(dropout))
            width = out
        if head_bn:  # BatchNorm1d on the classifier's input (after the last hidden activation)
            head.append(nn.BatchNorm1d(width))
        head.append(nn.Linear(width, num_classes, bias=head_bias))
        self.classifier = nn.Sequential(*head)
        init_weights(self, init)

    def forward(self, x):
        return self.classifier(self.features(x))
