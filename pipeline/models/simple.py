"""Small CNNs for quick baselines: simplenn, lenet5, cnn3, cnn4 (all on the shared ConvNet).

Each builder only states its architecture as a feature spec plus FC widths; the FC input size
follows from input_size, so the same model runs on 3x32x32, 1x28x28 and 1x32x32.
"""
from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.models.catalog import register_model
from pipeline.models.layers import ConvNet


@register_model("simplenn")
def simplenn(*, num_classes, in_chans, input_size, bn: bool = False, act: str = "relu"):
    """conv 5x5 -> 8, max pool, conv 3x3 -> 16, max pool, FC 120, 84, classes; no padding."""
    return ConvNet("simplenn", [(8, 5), "M", (16, 3), "M"], hidden=(120, 84), bn=bn, act=act,
                   num_classes=num_classes, in_chans=in_chans, input_size=input_size)


@register_model("lenet5")
def lenet5(*, num_classes, in_chans, input_size, bn: bool = False, dropout: float = 0.0,
           act: str = "relu", init: str = "default"):
    """LeNet-5 (LeCun et al. 1998) with max pools: conv 5x5 -> 6, pool, conv 5x5 -> 16, pool, FC 120, 84.

    act=tanh gives the paper's squashing units; init=xavier_normal the Glorot init (Keras' default family).
    """
    return ConvNet("lenet5", [(6, 5), "M", (16, 5), "M"], hidden=(120, 84), bn=bn, act=act,
                   dropout=dropout, init=init, num_classes=num_classes, in_chans=in_chans,
                   input_size=input_size)


@register_model("cnn3")
def cnn3(*, num_classes, in_chans, input_size, dropout: float = 0.0, bn: bool = True,
         kernels: str = "3,3,3", act: str = "relu"):
    """Three conv blocks (32, 64, 128: 3x3, BN, ReLU, 2x2 avg pool); FC 2048 -> 512 -> 128, BatchNorm1d.

    kernels: the three blocks' kernel sizes, e.g. "7,5,3" (same padding, so the FC size is unchanged);
    bn=false drops BatchNorm from the convs and the FC layers alike.
    """
    sizes = _kernels("cnn3", kernels, 3)
    features = [(32, sizes[0]), "A", (64, sizes[1]), "A", (128, sizes[2]), "A"]
    return ConvNet("cnn3", features, padding="same", bn=bn, hidden=(512, 128), fc_bn=bn, dropout=dropout,
                   act=act, num_classes=num_classes, in_chans=in_chans, input_size=input_size)


def _kernels(model: str, text, count: int) -> list[int]:
    """'7,5,3' -> [7, 5, 3]: odd kernel sizes, one per conv block."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) != count or any(k < 1 or k % 2 == 0 for k in sizes):
        raise PipelineError(f"model '{model}': option kernels={text!r} must be {count} odd sizes like 3,3,3")
    return sizes


@register_model("cnn4")
def cnn4(*, num_classes, in_chans, input_size, fc_bn: bool = False, fc_bn_affine: bool = True,
         extra_fc: bool = False, head_bn: bool = False, head_bias: bool = True, dropout: float = 0.0):
    """conv 32, 32, max pool, conv 64, 64, max pool (3x3, pad 1); FC 4096 -> 512 [-> 512] -> classes.

    fc_bn: BatchNorm1d after the first FC layer (fc_bn_affine=false: without scale and shift);
    extra_fc: a second 512-wide FC layer; head_bn: BatchNorm1d just before the last FC layer;
    head_bias=false: the last FC layer without bias.
    """
    hidden = (512, 512) if extra_fc else (512,)
    fc_bns = (fc_bn,) + (False,) * (len(hidden) - 1)
    return ConvNet("cnn4", [32, 32, "M", 64, 64, "M"], padding=1, hidden=hidden, fc_bn=fc_bns,
                   fc_bn_affine=fc_bn_affine, head_bn=head_bn, head_bias=head_bias,
                   dropout=dropout, num_classes=num_classes, in_chans=in_chans, input_size=input_size)
