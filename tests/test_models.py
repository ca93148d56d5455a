"""Model zoo: every registered model trains on every data shape; options do what they say.

Expected sizes are worked out by hand in the comments (or taken from He et al. 2016, Table 6).
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models import MODELS, create_model, list_models, model_options, parse_model_opts
from pipeline.models.resnet import PadShortcut

SHAPES = [(3, 32, 32), (1, 28, 28), (1, 32, 32)]  # CIFAR-10, FashionMNIST, digits (padded to 32)
TIMM_SMALL = "timm:test_resnet"  # timm's own tiny test network (~0.37M params)
ZOO = [name for name in list_models() if name != "timm"] + [TIMM_SMALL]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ZOO)
def test_forward_backward_every_model(name, shape):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=shape[0], input_size=shape)
    model.train()
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 7)
    nn.functional.cross_entropy(out, torch.tensor([0, 6])).backward()
    for pname, p in model.named_parameters():
        if not p.requires_grad:  # frozen by design (airbench94's whitening weights and BN scales)
            continue
        assert p.grad is not None, f"{name}: {pname} got no gradient (unused layer?)"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


def test_registry_holds_the_issue_models():
    expected = {"simplenn", "lenet5", "cnn3", "cnn4", "resnet20", "resnet32", "resnet44", "resnet56",
                "resnet110", "vgg11", "vgg13", "vgg16", "vgg19", "vgg19_elu", "airbench94", "airbench95", "airbench96",
                "timm"}
    # Other test modules register throwaway models; only the package's own count here.
    shipped = {n for n in list_models() if MODELS.get(n).__module__.startswith("pipeline.models")}
    assert shipped == expected


@pytest.mark.parametrize("name", [n for n in list_models() if n != "timm"])
def test_builder_options_are_keyword_only_with_defaults(name):
    params = inspect.signature(MODELS.get(name)).parameters
    assert {"num_classes", "in_chans", "input_size"} <= set(params)
    for pname, p in params.items():
        assert p.kind == p.KEYWORD_ONLY, f"{name}: '{pname}' must be keyword-only"
        if pname not in ("num_classes", "in_chans", "input_size"):
            assert p.default is not p.empty, f"{name}: option '{pname}' needs a default"
    assert set(model_options(name)) == set(params) - {"num_classes", "in_chans", "input_size"}


# -- FC sizes follow from the input size ------------------------------------------------------------

@pytest.mark.parametrize("name, shape, fc1_in", [
    # lenet5 3x32x32: 32-4=28, pool 14, 14-4=10, pool 5 -> 16*5*5
    ("lenet5", (3, 32, 32), 400),
    # lenet5 1x28x28: 28-4=24, pool 12, 12-4=8, pool 4 -> 16*4*4
    ("lenet5", (1, 28, 28), 256),
    # simplenn 3x32x32: 32-4=28, pool 14, 14-2=12, pool 6 -> 16*6*6
    ("simplenn", (3, 32, 32), 576),
    # simplenn 1x28x28: 28-4=24, pool 12, 12-2=10, pool 5 -> 16*5*5
    ("simplenn", (1, 28, 28), 400),
    # cnn3 3x32x32: padded convs, avg pools 32 -> 16 -> 8 -> 4 -> 128*4*4 (the issue's 2048)
    ("cnn3", (3, 32, 32), 2048),
    # cnn3 1x28x28: 28 -> 14 -> 7 -> 4 (ceil-mode pool keeps the border row) -> 128*4*4
    ("cnn3", (1, 28, 28), 2048),
    # cnn4 3x32x32: two max pools 32 -> 16 -> 8 -> 64*8*8 (the issue's 4096)
    ("cnn4", (3, 32, 32), 4096),
    # cnn4 1x28x28: 28 -> 14 -> 7 -> 64*7*7
    ("cnn4", (1, 28, 28), 3136),
    # vgg 1x28x28: five ceil-mode pools 28 -> 14 -> 7 -> 4 -> 2 -> 1 -> 512*1*1
    ("vgg11", (1, 28, 28), 512),
    ("vgg19_elu", (3, 32, 32), 512),
])
def test_first_fc_size_from_input_size(name, shape, fc1_in):
    model = create_model(name, num_classes=10, in_chans=shape[0], input_size=shape)
    assert linears(model)[0].in_features == fc1_in


def test_input_too_small_is_a_clear_error():
    # lenet5 on 8x8: 8-4=4, pool 2, 2-4 < 1
    with pytest.raises(PipelineError, match="too small"):
        create_model("lenet5", num_classes=10, in_chans=1, input_size=(1, 8, 8))


def test_in_chans_must_match_input_size():
    with pytest.raises(PipelineError, match="channels"):
        create_model("cnn3", num_classes=10, in_chans=3, input_size=(1, 28, 28))


# -- options -----------------------------------------------------------------------------------

def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_simplenn_and_lenet5_options():
    plain = create_model("simplenn", num_classes=10, in_chans=3)
    with_bn = create_model("simplenn", num_classes=10, in_chans=3, bn=True, act="swish")
    assert count(plain, nn.BatchNorm2d) == 0 and count(plain, nn.ReLU) == 4  # 2 convs + 2 hidden FCs
    assert count(with_bn, nn.BatchNorm2d) == 2 and count(with_bn, nn.SiLU) == 4
    # BN replaces the conv biases (8 + 16) with 2 * (8 + 16) affine params
    assert n_params(with_bn) - n_params(plain) == (2 * 8 - 8) + (2 * 16 - 16)

    lenet = create_model("lenet5", num_classes=10, in_chans=3, dropout=0.25, act="elu")
    drops = [m for m in lenet.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.25 for d in drops)  # after FC 120 and FC 84
    assert count(lenet, nn.ELU) == 4


@pytest.mark.parametrize("act, kind", [("relu", nn.ReLU), ("swish", nn.SiLU), ("elu", nn.ELU),
                                       ("leaky_relu", nn.LeakyReLU), ("gelu", nn.GELU),
                                       ("tanh", nn.Tanh)])
def test_activation_choices(act, kind):
    model = create_model("lenet5", num_classes=10, in_chans=1, input_size=(1, 28, 28), act=act)
    assert count(model, kind) == 4


def test_cnn3_layout():
    model = create_model("cnn3", num_classes=10, in_chans=3)
    assert count(model, nn.AvgPool2d) == 3 and count(model, nn.BatchNorm2d) == 3
    assert count(model, nn.BatchNorm1d) == 2
    assert [(m.in_features, m.out_features) for m in linears(model)] == [(2048, 512), (512, 128), (128, 10)]


def test_cnn4_options():
    base = create_model("cnn4", num_classes=10, in_chans=3)
    assert [(m.in_features, m.out_features) for m in linears(base)] == [(4096, 512), (512, 10)]
    assert count(base, nn.MaxPool2d) == 2 and count(base, nn.BatchNorm1d) == 0
    full = create_model("cnn4", num_classes=10, in_chans=3, fc_bn=True, extra_fc=True)
    assert [(m.in_features, m.out_features) for m in linears(full)] == [(4096, 512), (512, 512), (512, 10)]
    assert count(full, nn.BatchNorm1d) == 1


def test_vgg19_elu_head_and_init():
    torch.manual_seed(0)
    model = create_model("vgg19_elu", num_classes=10, in_chans=3)
    widths = [(m.in_features, m.out_features) for m in linears(model)]
    assert widths == [(512, 4096), (4096, 4096), (4096, 1024), (1024, 512), (512, 10)]
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 4 and all(d.p == 0.5 for d in drops)  # between the five FC layers
    assert count(model, nn.ReLU) == 0 and count(model, nn.ELU) == 16 + 4  # 16 convs, 4 hidden FCs
    # Xavier normal: std = sqrt(2 / (fan_in + fan_out)) = sqrt(2 / 8192) for the 4096x4096 layer
    assert linears(model)[1].weight.std().item() == pytest.approx(math.sqrt(2 / 8192), rel=0.02)


@pytest.mark.parametrize("name, convs", [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)])
def test_vgg_depths(name, convs):
    model = create_model(name, num_classes=10, in_chans=3)
    assert count(model, nn.Conv2d) == convs and count(model, nn.BatchNorm2d) == convs
    assert len(linears(model)) == 3  # conv layers + 3 FC = the name's depth


@pytest.mark.parametrize("depth, paper_params", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_resnet_sizes_match_the_paper(depth, paper_params):
    model = create_model(f"resnet{depth}", num_classes=10, in_chans=3)
    # 6n + 2 weighted layers: stem conv, 6n block convs, FC (option A adds no convs)
    assert count(model, nn.Conv2d) + len(linears(model)) == depth
    digits = 1 if depth == 110 else 2  # He et al. 2016, Table 6 gives 1.7M for ResNet-110
    assert round(n_params(model) / 1e6, digits) == paper_params


def test_resnet_shortcut_options():
    a = create_model("resnet20", num_classes=10, in_chans=3)
    b = create_model("resnet20", num_classes=10, in_chans=3, shortcut="B")
    assert count(a, PadShortcut) == 2 and count(a, nn.Conv2d) == 19
    # option B: a 1x1 projection conv + BN only at the two stage transitions
    assert count(b, PadShortcut) == 0 and count(b, nn.Conv2d) == 19 + 2
    # 16->32: 512 weights + 64 BN; 32->64: 2048 weights + 128 BN
    assert n_params(b) - n_params(a) == 512 + 64 + 2048 + 128


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).view(2, 16, 4, 4)
    y = PadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 2, 2)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0


def test_resnet_kaiming_init():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_chans=3)
    weight = model.stages[2][1].conv1.weight  # 64 -> 64, 3x3
    # He et al. 2015: std = sqrt(2 / n), n = k*k*C_out (fan_out mode) = 9 * 64
    assert weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.03)
    bn = model.stages[0][0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_zero_init_residual_starts_every_block_as_its_shortcut():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_chans=3, zero_init_residual=True).eval()
    blocks = [b for stage in model.stages for b in stage]
    assert len(blocks) == 9 and all(torch.all(b.bn2.weight == 0) for b in blocks)
    x = torch.relu(torch.randn(2, 16, 8, 8))  # a block's input comes out of a ReLU
    for block in (model.stages[0][0], model.stages[1][0]):  # identity, and option A (stride 2, pad)
        with torch.no_grad():
            torch.testing.assert_close(block(x), torch.relu(block.shortcut(x)))
        x = block(x)
    plain = create_model("resnet20", num_classes=10, in_chans=3)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in model.parameters())


# -- errors --------------------------------------------------------------------------------------

def test_unknown_model_suggests_close_names_and_lists_choices():
    with pytest.raises(PipelineError, match=r"unknown model 'resnet21' \(did you mean 'resnet20' or 'resnet32'\?\); "
                                            r"choose from: .*resnet20.*vgg19_elu"):
        create_model("resnet21", num_classes=10, in_chans=3)
    with pytest.raises(PipelineError, match=r"unknown model 'zzz'; choose from: "):  # nothing close: no guess
        create_model("zzz", num_classes=10, in_chans=3)


def test_unregistered_name_that_timm_knows_points_to_timm_prefix():
    with pytest.raises(PipelineError, match=r"^unknown model 'resnet18'; timm has it: use 'timm:resnet18'$"):
        create_model("resnet18", num_classes=10, in_chans=3)


def test_unknown_option_lists_options():
    with pytest.raises(PipelineError, match=r"no option width; options: bn=False, dropout=0.0, act=relu"):
        create_model("lenet5", num_classes=10, in_chans=3, width=2)


@pytest.mark.parametrize("name, opts, message", [
    ("resnet20", {"shortcut": "C"}, r"shortcut='C' is not one of: A, B"),
    ("simplenn", {"act": "sigmoid"}, r"act='sigmoid' is not one of: elu, gelu, leaky_relu, relu, swish, tanh"),
    ("lenet5", {"dropout": 1.5}, r"dropout=1.5 must be a number in \[0, 1\)"),
])
def test_invalid_option_values(name, opts, message):
    with pytest.raises(PipelineError, match=message):
        create_model(name, num_classes=10, in_chans=3, **opts)


def test_model_opts_from_strings():
    opts = parse_model_opts(("bn=true", "dropout=0.25", "act=elu"))
    assert opts == {"bn": True, "dropout": 0.25, "act": "elu"}
    model = create_model("lenet5", num_classes=10, in_chans=3, **opts)
    assert count(model, nn.BatchNorm2d) == 2


# -- timm ----------------------------------------------------------------------------------------

def test_timm_model_gets_classes_and_channels():
    model = create_model("timm:resnet18", num_classes=7, in_chans=1, input_size=(1, 28, 28))
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_timm_fixed_size_model_is_built_for_the_data():
    # timm's test_vit expects 160x160 by default; it is built for 32x32 here
    model = create_model("timm:test_vit", num_classes=10, in_chans=3, input_size=(3, 32, 32))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_timm_errors():
    with pytest.raises(PipelineError, match=r"unknown timm model 'timm:resnet81' \(did you mean 'timm:resnet18'.*\?\); "
                                            r"all names: "):
        create_model("timm:resnet81", num_classes=10, in_chans=3)
    with pytest.raises(PipelineError, match=r"timm:resnet18: invalid option\(s\) foo=1"):
        create_model("timm:resnet18", num_classes=10, in_chans=3, foo=1)
    with pytest.raises(PipelineError, match="pretrained weights are not supported"):
        create_model("timm:resnet18", num_classes=10, in_chans=3, pretrained=True)
    with pytest.raises(PipelineError, match="timm:<name>"):
        create_model("timm", num_classes=10, in_chans=3)
