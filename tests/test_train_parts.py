"""Schedules, optimizers, parameter groups, L1, EMA and the single training step, on hand-made numbers."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers_train import TinyNet
from pipeline.errors import PipelineError
from pipeline.train.config import TrainConfig
from pipeline.train.ema import ModelEma
from pipeline.train.epoch import train_one_epoch
from pipeline.train.optim import OPTIMIZERS, build_optimizer, l1_penalty, param_groups
from pipeline.train.schedules import SCHEDULES, build_scheduler, lr_factor
from pipeline.train.trainer import build_trainer


def factors(cfg: TrainConfig, steps_per_epoch: int, steps: list[int]) -> list[float]:
    f = lr_factor(cfg, steps_per_epoch)
    return [f(s) for s in steps]


def test_registries_hold_the_promised_names():
    assert set(OPTIMIZERS.names()) == {"sgd", "adam", "adamw", "rmsprop", "adagrad", "adamax", "muon"}
    assert set(SCHEDULES.names()) == {"step", "multistep", "exponential", "cosine", "onecycle", "constant",
                                      "triangle"}
    with pytest.raises(PipelineError, match="unknown schedule 'poly'"):
        lr_factor(TrainConfig(schedule="poly"), 10)
    with pytest.raises(PipelineError, match="unknown optimizer 'lamb'"):
        build_optimizer(TinyNet(4, 3), TrainConfig(optimizer="lamb"))


def test_multistep_divides_by_ten_at_half_and_three_quarters():
    cfg = TrainConfig(schedule="multistep", epochs=8, milestones=[0.5, 0.75], gamma=0.1)
    # 10 steps/epoch: milestones at epoch 4 (step 40) and epoch 6 (step 60)
    assert factors(cfg, 10, [0, 39, 40, 59, 60, 79]) == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_step_schedule_is_a_staircase():
    cfg = TrainConfig(schedule="step", gamma=0.96, step_epochs=2, epochs=10)
    assert factors(cfg, 10, [0, 19, 20, 39, 45]) == pytest.approx([1, 1, 0.96, 0.96, 0.96 ** 2])


def test_exponential_is_gamma_per_epoch_applied_smoothly():
    cfg = TrainConfig(schedule="exponential", gamma=0.5, epochs=5)
    assert factors(cfg, 4, [0, 2, 4, 8]) == pytest.approx([1, math.sqrt(0.5), 0.5, 0.25])


def test_cosine_with_linear_warmup():
    cfg = TrainConfig(schedule="cosine", epochs=5, warmup_epochs=1, lr=0.1, min_lr=0.0)
    # warmup over 10 steps: (step+1)/10; then half a cosine over the remaining 40 steps
    assert factors(cfg, 10, [0, 4, 9, 30, 50]) == pytest.approx([0.1, 0.5, 1.0, 0.5, 0.0], abs=1e-12)


def test_onecycle_matches_torch_onecyclelr_step_for_step():
    lr, epochs, spe = 0.1, 4, 10
    cfg = TrainConfig(schedule="onecycle", epochs=epochs, lr=lr, pct_start=0.25, min_lr=lr / 25 / 1e4)
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=lr, total_steps=epochs * spe, pct_start=0.25,
                                              anneal_strategy="cos", cycle_momentum=False)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    ours = build_scheduler(opt, cfg, spe)
    for _ in range(epochs * spe):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        ref_opt.step(), opt.step()
        ref.step(), ours.step()
    assert lr_factor(cfg, spe)(0) == pytest.approx(1 / 25)


def test_bn_and_bias_are_not_decayed_by_default():
    model = TinyNet(num_classes=4, in_chans=3)
    decay, no_decay = param_groups(model, 5e-4)
    # conv 8x3x3x3 = 216 and fc 4x32 = 128 are decayed; BN weight 8 + bias 8 and fc bias 4 are not
    assert (decay["weight_decay"], sum(p.numel() for p in decay["params"])) == (5e-4, 344)
    assert (no_decay["weight_decay"], sum(p.numel() for p in no_decay["params"])) == (0.0, 20)
    (everything,) = param_groups(model, 5e-4, decay_bn_bias=True)
    assert sum(p.numel() for p in everything["params"]) == 364


def test_l1_penalty_is_the_sum_of_absolute_weights():
    w = [torch.full((8, 3, 3, 3), 0.5), torch.full((4, 32), -0.25)]
    assert l1_penalty(w).item() == pytest.approx(216 * 0.5 + 128 * 0.25)


def test_optimizers_get_their_hyperparameters():
    model = TinyNet(4, 3)
    sgd = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.3, momentum=0.8, nesterov=True))
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (0.3, 0.8, True)
    adam = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, betas=[0.8, 0.99], weight_decay=0.05))
    assert isinstance(adam, torch.optim.AdamW) and adam.defaults["betas"] == (0.8, 0.99)
    assert [g["weight_decay"] for g in adam.param_groups] == [0.05, 0.0]
    with pytest.raises(PipelineError, match="nesterov"):
        build_optimizer(model, TrainConfig(optimizer="sgd", momentum=0.0, nesterov=True))


def test_ema_decay_warms_up_and_averages_float_state_only():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    nn.init.zeros_(model[0].weight)
    ema = ModelEma(model, decay=0.9)
    model[0].weight.data.fill_(1.0)
    model[1].running_mean.fill_(2.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model, step=0)  # warm-up decay min(0.9, 1/10) = 0.1: mostly the new weights
    assert ema.module[0].weight.item() == pytest.approx(0.9)
    assert ema.module[1].running_mean.item() == pytest.approx(1.8)
    assert ema.module[1].num_batches_tracked.item() == 7
    ema.update(model, step=1000)  # decay 0.9: 0.9 * 0.9 + 0.1 * 1
    assert ema.module[0].weight.item() == pytest.approx(0.91)


def _trainer(model, device=torch.device("cpu"), **overrides):
    cfg = TrainConfig(**{"optimizer": "sgd", "lr": 1.0, "momentum": 0.0, "weight_decay": 0.0,
                         "schedule": "constant", "precision": "fp32", "channels_last": False, **overrides})
    return build_trainer(cfg, model, steps_per_epoch=2, num_classes=4, mean=[0.5] * 3, std=[0.25] * 3,
                         device=device)


def _batches(n=2, bs=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (bs, 3, 8, 8), dtype=torch.uint8, generator=g),
             torch.randint(0, 4, (bs,), generator=g)) for _ in range(n)]


def test_one_optimizer_step_per_iteration_with_forward_and_loss_under_autocast():
    torch.manual_seed(0)
    tr = _trainer(TinyNet(4, 3), precision="bf16", schedule="onecycle", lr=0.1, epochs=1)
    seen = []
    criterion = tr.criterion
    def recording_criterion(logits, target):
        seen.append((torch.is_autocast_enabled("cpu"), logits.dtype))
        return criterion(logits, target)
    tr.criterion = recording_criterion
    steps = []
    tr.optimizer.register_step_post_hook(lambda *args: steps.append(1))
    out = train_one_epoch(tr, _batches(3), epoch=1)
    assert len(steps) == 3 and tr.global_step == 3
    assert seen == [(True, torch.bfloat16)] * 3  # the loss ran inside autocast on bf16 logits
    assert out["samples"] == 12 and 0.0 <= out["acc"] <= 1.0


def test_l1_moves_every_weight_by_lr_times_lambda_and_leaves_bn_and_bias_alone():
    torch.manual_seed(0)
    model = TinyNet(4, 3)
    tr = _trainer(model, l1=0.01)
    tr.criterion = lambda logits, target: logits.sum() * 0.0  # only the penalty has a gradient
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_one_epoch(tr, _batches(1), epoch=1)
    for name in ("conv.weight", "fc.weight"):  # SGD, lr 1: w -= 0.01 * sign(w)
        torch.testing.assert_close(model.state_dict()[name], before[name] - 0.01 * before[name].sign())
    for name in ("bn.weight", "bn.bias", "fc.bias"):
        torch.testing.assert_close(model.state_dict()[name], before[name])


def test_grad_clip_bounds_the_update_norm():
    torch.manual_seed(0)
    model = TinyNet(4, 3)
    tr = _trainer(model, grad_clip=0.5, lr=0.1)
    tr.criterion = lambda logits, target: logits.pow(2).sum() * 1e3  # a huge gradient
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train_one_epoch(tr, _batches(1), epoch=1)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.1 * 0.5, rel=1e-4)  # lr * max_norm


def test_micro_batches_accumulate_the_whole_batch_gradient_and_report_its_loss():
    # Without BatchNorm the slices' weighted gradients sum to the batch's: one SGD step from the same
    # weights must land on the same weights, and the reported loss/accuracy must be the batch's.
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))
    whole, sliced = net(), net()
    a = train_one_epoch(_trainer(whole, lr=0.5), _batches(1, bs=6), epoch=1)
    b = train_one_epoch(_trainer(sliced, lr=0.5, micro_batch_size=4), _batches(1, bs=6), epoch=1)  # 4 + 2
    for p, q in zip(whole.parameters(), sliced.parameters()):
        torch.testing.assert_close(p, q)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["acc"] == a["acc"] and b["samples"] == 6
