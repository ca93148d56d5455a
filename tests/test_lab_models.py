"""The course labs' models: parameter and MAC counts by hand, and the variants the labs switch on."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.info import summarize
from pipeline.models import create_model


def totals(name, input_size=(3, 32, 32), **opts):
    model = create_model(name, num_classes=10, in_chans=input_size[0], input_size=input_size, **opts)
    return summarize(model, input_size)["totals"]


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def test_lenet5_counts_match_the_ece590_report():
    # conv1 3->6 5x5: 6*75 + 6 = 456, out 28x28 -> MACs 28*28*6*75 = 352,800
    # conv2 6->16 5x5: 16*150 + 16 = 2,416, out 10x10 -> MACs 10*10*16*150 = 240,000
    # fc 400->120: 48,120 (48,000 MACs); 120->84: 10,164 (10,080); 84->10: 850 (840)
    # params 456 + 2,416 + 48,120 + 10,164 + 850 = 62,006; MACs 352,800 + 240,000 + 58,920 = 651,720
    t = totals("lenet5")
    assert (t["params"], t["macs"]) == (62_006, 651_720)
    # With BN the conv biases go (-6 -16) and each BN adds scale and shift (+2*6 +2*16): 62,028;
    # the report's 62,006 is the count of the network without BN (BN layers have no MACs here).
    t = totals("lenet5", bn=True)
    assert (t["params"], t["macs"]) == (62_028, 651_720)


def test_simplenn_counts_ece661():
    # conv1 3->8 5x5: 8*75 + 8 = 608; conv2 8->16 3x3: 16*72 + 16 = 1,168
    # fc 576->120: 69,240; 120->84: 10,164; 84->10: 850 -> 82,030
    assert totals("simplenn")["params"] == 82_030


def test_cnn3_counts_cmpe597():
    # convs (no bias, BN follows): 3*32*9 = 864 (+64 BN), 32*64*9 = 18,432 (+128), 64*128*9 = 73,728 (+256)
    # fc 2048->512 no bias 1,048,576 (+1,024 BN1d); 512->128 65,536 (+256); 128->10 1,290
    # 928 + 18,560 + 73,984 + 1,049,600 + 65,792 + 1,290 = 1,210,154
    assert totals("cnn3")["params"] == 1_210_154
    # kernels 7,5,3 with same padding: conv weights 3*32*49 = 4,704 and 32*64*25 = 51,200 instead of
    # 864 and 18,432; the FC input stays 128*4*4 = 2048
    assert totals("cnn3", kernels="7,5,3")["params"] == 1_210_154 + (4_704 - 864) + (51_200 - 18_432)


def test_cnn3_variants():
    plain = create_model("cnn3", num_classes=10, in_chans=3, bn=False, act="tanh")
    assert count(plain, nn.BatchNorm2d) == 0 and count(plain, nn.BatchNorm1d) == 0
    assert count(plain, nn.Tanh) == 5 and count(plain, nn.AvgPool2d) == 3
    with pytest.raises(PipelineError, match=r"model 'cnn3': option kernels='4,3,3' must be 3 odd sizes"):
        create_model("cnn3", num_classes=10, in_chans=3, kernels="4,3,3")


def test_cnn4_cs535_variants():
    # base: convs 896 + 9,248 + 18,496 + 36,928; fc1 4096*512 + 512 = 2,097,664; fc2 5,130 -> 2,168,362
    assert totals("cnn4")["params"] == 2_168_362
    # BN1d(affine=False) after fc1: no parameters, and fc1 keeps its bias
    model = create_model("cnn4", num_classes=10, in_chans=3, fc_bn=True, fc_bn_affine=False)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 1 and not bns[0].affine
    assert totals("cnn4", fc_bn=True, fc_bn_affine=False)["params"] == 2_168_362
    # fc2 without bias: -10; BN before fc2: +2*512
    assert totals("cnn4", head_bias=False)["params"] == 2_168_362 - 10
    head = create_model("cnn4", num_classes=10, in_chans=3, head_bn=True).classifier
    assert isinstance(head[-2], nn.BatchNorm1d) and isinstance(head[-1], nn.Linear)
    assert totals("cnn4", head_bn=True)["params"] == 2_168_362 + 1_024


def test_lenet5_tanh_fmnist_and_xavier():
    # 1x28x28: conv1 1->6 5x5 156; conv2 2,416; 28->24->12->8->4: fc 256->120 30,840; 10,164; 850 -> 44,426
    assert totals("lenet5", (1, 28, 28), act="tanh")["params"] == 44_426
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_chans=1, input_size=(1, 28, 28), act="tanh",
                         init="xavier_normal")
    fc1 = [m for m in model.modules() if isinstance(m, nn.Linear)][0]
    # Xavier normal: std = sqrt(2 / (fan_in + fan_out)) = sqrt(2 / 376)
    assert fc1.weight.std().item() == pytest.approx((2 / 376) ** 0.5, rel=0.05)
    assert count(model, nn.Tanh) == 4
