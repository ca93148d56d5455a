"""airbench94: the network counted by hand, and the initialisations it relies on (dirac, whitening)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.info import summarize
from pipeline.models import create_model
from pipeline.models.airbench import FrozenScaleBatchNorm
from pipeline.models.init import dirac_init_, image_patches, whiten_init_, whitening_filters


def _airbench(**opts):
    return create_model("airbench94", num_classes=10, in_chans=3, input_size=(3, 32, 32), **opts)


def test_airbench94_params_and_macs_by_hand():
    # Parameters (3x32x32 in, 10 classes):
    #   whiten conv 2x2, 3 -> 24 (= 2*3*2*2), bias:  24*3*2*2 = 288 weights (frozen) + 24 bias
    #   group 1: conv 24->64 3x3 = 13,824; conv 64->64 = 36,864; 2 BN x (64 scale + 64 bias) = 256
    #   group 2: conv 64->256 = 147,456; conv 256->256 = 589,824; 2 BN x 512 = 1,024
    #   group 3: conv 256->256 = 589,824; conv 256->256 = 589,824; 2 BN x 512 = 1,024
    #   head 256 -> 10, no bias = 2,560
    params = 288 + 24 + 13_824 + 36_864 + 256 + 147_456 + 589_824 + 1_024 + 2 * 589_824 + 1_024 + 2_560
    # frozen: the whitening weights and every BN scale (64+64+256+256+256+256)
    frozen = 288 + 2 * 64 + 4 * 256
    # MACs per image (conv and linear layers; output positions x weights):
    #   whiten: 31x31 out x 288 = 276,768
    #   g1 conv1 at 31x31: 961 x 13,824 = 13,284,864; pool -> 15x15; conv2: 225 x 36,864 = 8,294,400
    #   g2 conv1 at 15x15: 225 x 147,456 = 33,177,600; pool -> 7x7; conv2: 49 x 589,824 = 28,901,376
    #   g3 conv1 at 7x7: 49 x 589,824 = 28,901,376; pool -> 3x3; conv2: 9 x 589,824 = 5,308,416
    #   maxpool 3 -> 1x1; head: 2,560
    macs = (276_768 + 13_284_864 + 8_294_400 + 33_177_600 + 28_901_376 + 28_901_376 + 5_308_416 + 2_560)
    assert (params, params - frozen, macs) == (1_972_792, 1_971_352, 118_147_360)
    totals = summarize(_airbench(), (3, 32, 32))["totals"]
    assert (totals["params"], totals["trainable_params"], totals["macs"]) == (params, params - frozen, macs)


def test_airbench95_params_and_macs_by_hand():
    # airbench94's net at widths 128/384/384 (legacy/airbench95.py):
    #   whiten 288 (frozen) + 24 bias
    #   group 1: conv 24->128 = 24*128*9 = 27,648; conv 128->128 = 147,456; BN 2 x 256 = 512
    #   group 2: conv 128->384 = 442,368; conv 384->384 = 1,327,104; BN 2 x 768 = 1,536
    #   group 3: conv 384->384 = 1,327,104 twice; BN 1,536
    #   head 384 -> 10 = 3,840
    params = 288 + 24 + 27_648 + 147_456 + 512 + 442_368 + 1_327_104 + 1_536 + 2 * 1_327_104 + 1_536 + 3_840
    frozen = 288 + 2 * 128 + 4 * 384
    #   whiten 961 x 288; g1 conv1 961 x 27,648 = 26,569,728; conv2 225 x 147,456 = 33,177,600
    #   g2 conv1 225 x 442,368 = 99,532,800; conv2 49 x 1,327,104 = 65,028,096
    #   g3 conv1 49 x 1,327,104 = 65,028,096; conv2 9 x 1,327,104 = 11,943,936; head 3,840
    macs = 276_768 + 26_569_728 + 33_177_600 + 99_532_800 + 65_028_096 + 65_028_096 + 11_943_936 + 3_840
    assert (params, params - frozen, macs) == (4_606_520, 4_604_440, 301_560_864)  # 2.55x airbench94's MACs
    net = create_model("airbench95", num_classes=10, in_chans=3, input_size=(3, 32, 32))
    totals = summarize(net, (3, 32, 32))["totals"]
    assert (totals["params"], totals["trainable_params"], totals["macs"]) == (params, params - frozen, macs)


def test_airbench96_params_and_macs_by_hand():
    # widths 128/384/512, three convs per group (legacy/airbench96.py):
    #   whiten 288 (frozen) + 24 bias
    #   group 1: conv 24->128 = 27,648; 2 x conv 128->128 = 2 x 147,456; BN 3 x 256 = 768
    #   group 2: conv 128->384 = 442,368; 2 x conv 384->384 = 2 x 1,327,104; BN 3 x 768 = 2,304
    #   group 3: conv 384->512 = 1,769,472; 2 x conv 512->512 = 2 x 2,359,296; BN 3 x 1,024 = 3,072
    #   head 512 -> 10 = 5,120
    params = (288 + 24 + 27_648 + 2 * 147_456 + 768 + 442_368 + 2 * 1_327_104 + 2_304
              + 1_769_472 + 2 * 2_359_296 + 3_072 + 5_120)
    frozen = 288 + 3 * (128 + 384 + 512)
    #   whiten 276,768; g1 conv1 961 x 27,648 = 26,569,728; conv2, conv3 at 15x15: 2 x 33,177,600
    #   g2 conv1 225 x 442,368 = 99,532,800; conv2, conv3 at 7x7: 2 x 65,028,096
    #   g3 conv1 49 x 1,769,472 = 86,704,128; conv2, conv3 at 3x3: 2 x 21,233,664; head 5,120
    macs = (276_768 + 26_569_728 + 2 * 33_177_600 + 99_532_800 + 2 * 65_028_096 + 86_704_128
            + 2 * 21_233_664 + 5_120)
    assert (params, params - frozen, macs) == (9_918_776, 9_915_416, 451_967_264)  # 3.8x airbench94's MACs
    net = create_model("airbench96", num_classes=10, in_chans=3, input_size=(3, 32, 32))
    totals = summarize(net, (3, 32, 32))["totals"]
    assert (totals["params"], totals["trainable_params"], totals["macs"]) == (params, params - frozen, macs)


def test_airbench96_group_adds_its_first_activation_over_the_last_two_convs():
    net = create_model("airbench96", num_classes=10, in_chans=3, input_size=(3, 32, 32)).eval()
    assert all(m.momentum == pytest.approx(0.1) for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    group = net.groups[1]
    x = torch.randn(2, 128, 15, 15)
    x0 = group.act1(group.norm1(group.pool(group.conv1(x))))
    y = group.norm3(group.conv3(group.act2(group.norm2(group.conv2(x0)))))
    torch.testing.assert_close(group(x), group.act3(x0 + y))
    assert not torch.allclose(group(x), group.act3(y))  # the skip is really there
    # airbench94's groups have no third conv
    assert not hasattr(_airbench().groups[0], "conv3")


def test_airbench94_structure_follows_the_paper():
    net = _airbench()
    assert net.whiten.kernel_size == (2, 2) and net.whiten.out_channels == 24 and net.whiten.bias is not None
    assert not net.whiten.weight.requires_grad
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6 and all(isinstance(m, FrozenScaleBatchNorm) for m in norms)
    assert all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)
    assert all(m.eps == 1e-12 and m.momentum == pytest.approx(0.4) for m in norms)
    assert all(isinstance(m, nn.GELU) for m in (net.act, net.groups[0].act1, net.groups[2].act2))
    assert net.head.bias is None and net.scale.factor == pytest.approx(1 / 9)
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 10)
    assert _airbench(head_scale=1 / 256, head_unit_std=True).head.weight.std().item() == pytest.approx(1.0)


def test_airbench94_on_fashion_mnist_shape_and_bad_sizes():
    net = create_model("airbench94", num_classes=10, in_chans=1, input_size=(1, 28, 28))
    assert net.whiten.out_channels == 8 and net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(PipelineError, match="about 32x32"):
        create_model("airbench94", num_classes=10, in_chans=3, input_size=(3, 64, 64))


def test_dirac_init_makes_convs_identities_on_their_first_channels():
    conv_same = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    conv_wider = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    even = nn.Conv2d(4, 4, 2, bias=False)
    before = even.weight.clone()
    assert dirac_init_(nn.Sequential(conv_same, conv_wider, even)) == 2
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(conv_same(x), x)
    torch.testing.assert_close(conv_wider(x)[:, :4], x)
    assert conv_wider.weight[4:].abs().sum() > 0  # the extra filters keep their random init
    assert torch.equal(even.weight, before)  # no centre tap: left alone
    # In airbench94 every conv2 (in == out) starts as an exact identity.
    net = _airbench()
    y = torch.randn(1, 64, 6, 6)
    torch.testing.assert_close(net.groups[0].conv2(y), y)


def test_whitening_filters_whiten_the_patches_in_plus_minus_pairs():
    torch.manual_seed(0)
    # Correlated channels and neighbouring pixels: smooth noise mixed across channels.
    base = torch.nn.functional.avg_pool2d(torch.randn(64, 3, 18, 18), 3, stride=1)
    images = torch.einsum("nchw,dc->ndhw", base, torch.tensor([[1.0, 0.5, 0.2], [0.3, 1.0, 0.1], [0.0, 0.4, 1.0]]))
    conv = nn.Conv2d(3, 24, 2)
    whiten_init_(conv, images, eps=1e-9)
    assert not conv.weight.requires_grad
    filters = conv.weight.detach()
    torch.testing.assert_close(filters[12:], -filters[:12])
    patches = image_patches(images, (2, 2)).double()
    out = patches @ filters[:12].reshape(12, -1).double().T
    covariance = out.T @ out / len(out)
    torch.testing.assert_close(covariance, torch.eye(12, dtype=torch.float64), atol=1e-4, rtol=0)
    # the first filter is the direction of largest variance of the raw patches
    raw = patches.T @ patches / len(patches)
    variances = torch.einsum("fi,ij,fj->f", filters[:12].reshape(12, -1).double(),
                             raw, filters[:12].reshape(12, -1).double())
    assert torch.all(variances > 0.99)
    eig = torch.linalg.eigvalsh(raw)
    direction = filters[0].reshape(-1).double() * torch.sqrt(eig[-1] + 1e-9)
    assert float(direction @ raw @ direction) == pytest.approx(float(eig[-1]), rel=1e-4)


def test_whitening_needs_the_right_filter_count():
    with pytest.raises(PipelineError, match=r"2\*C\*k\*k = 24 filters"):
        whiten_init_(nn.Conv2d(3, 16, 2), torch.randn(4, 3, 8, 8))
    assert whitening_filters(torch.randn(4, 1, 6, 6), (3, 3)).shape == (18, 1, 3, 3)
