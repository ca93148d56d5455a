"""VGG (Simonyan & Zisserman 2015) for small images: configs A/B/D/E as lists, CIFAR-sized heads.

vgg11..vgg19: 3x3 convs with BatchNorm, then 512 -> 512 -> 512 -> classes with dropout
(the usual CIFAR head instead of ImageNet's 4096-wide one), Kaiming init.
vgg19_elu: ELU everywhere, head 512 -> 4096 -> 4096 -> 1024 -> 512 -> classes with dropout 0.5
between FC layers, Xavier-normal init.
"""
from __future__ import annotations

from pipeline.models.catalog import register_model
from pipeline.models.layers import ConvNet

# The paper's configurations: ints are 3x3 conv widths, "M" is a 2x2 max pool.
CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _vgg(name: str, config: str, **kwargs) -> ConvNet:
    return ConvNet(name, CONFIGS[config], padding=1, **kwargs)


def _register_standard(name: str) -> None:
    def builder(*, num_classes, in_chans, input_size, bn: bool = True, dropout: float = 0.5):
        return _vgg(name, name, hidden=(512, 512), bn=bn, dropout=dropout, init="kaiming",
                    num_classes=num_classes, in_chans=in_chans, input_size=input_size)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{name.upper()} with BatchNorm and a 512-512 head (CIFAR-sized)."
    register_model(name)(builder)


for _name in CONFIGS:
    _register_standard(_name)


@register_model("vgg19_elu")
def vgg19_elu(*, num_classes, in_chans, input_size, bn: bool = True, dropout: float = 0.5):
    """VGG19 with ELU activations, a 4096-4096-1024-512 head and Xavier-normal init."""
    return _vgg("vgg19_elu", "vgg19", hidden=(4096, 4096, 1024, 512), bn=bn, act="elu",
                dropout=dropout, init="xavier_normal",
                num_classes=num_classes, in_chans=in_chans, input_size=input_size)
