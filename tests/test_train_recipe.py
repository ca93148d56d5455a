"""airbench's techniques as engine features: each one's defining property, then a run that uses them all."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers_train import TinyNet, make_prepared, tiny_config
from pipeline import tta
from pipeline.augment import build_train_loader
from pipeline.augment.fast import FastTrainLoader, pad_images, reflect_index
from pipeline.checkpoint import load_checkpoint
from pipeline.config import resolve_config
from pipeline.errors import PipelineError
from pipeline.models import MODELS, register_model
from pipeline.train.config import TrainConfig
from pipeline.train.ema import Lookahead
from pipeline.train.engine import run_training
from pipeline.train.muon import MuonWithSGD, orthogonalise
from pipeline.train.optim import build_optimizer, kilostep_scale
from pipeline.train.schedules import lr_factor, total_steps

WHITEN_NET = "tiny_whiten_net"


class TinyWhitenNet(nn.Module):
    """A 2x2 conv with 2*C*2*2 filters (whitening-ready), BN, then a linear head."""

    def __init__(self, num_classes: int, in_chans: int):
        super().__init__()
        self.whiten = nn.Conv2d(in_chans, 2 * in_chans * 4, 2)
        self.conv = nn.Conv2d(2 * in_chans * 4, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.bn(self.conv(F.gelu(self.whiten(x)))).relu()
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


if WHITEN_NET not in MODELS:
    @register_model(WHITEN_NET)
    def tiny_whiten_net(*, num_classes, in_chans, input_size):
        return TinyWhitenNet(num_classes, in_chans)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("data") / "tiny")


# ---- learning rates and weight decay --------------------------------------------------------------

def test_decoupled_units_follow_airbench():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    cfg = TrainConfig(optimizer="sgd", lr=11.5, momentum=0.85, nesterov=True, decoupled=True,
                      weight_decay=0.0153, decay_bn_bias=True, bn_bias_lr_scale=64.0, batch_size=1024)
    opt = build_optimizer(model, cfg)
    ks = 1024 * (1 + 1 / (1 - 0.85))  # 7850.67: airbench's kilostep_scale
    assert kilostep_scale(0.85) == pytest.approx(ks)
    by_role = {g["role"]: g for g in opt.param_groups}  # decay_bn_bias: one decayed group per role
    other_w, bn_bias = by_role["other"], by_role["bn_bias"]
    assert bn_bias["params"] == [model[1].bias]
    # The loss is a batch mean, so torch's lr is airbench's (per summed loss) times the batch size.
    assert other_w["lr"] == pytest.approx(11.5 / ks * 1024)
    assert bn_bias["lr"] == pytest.approx(64 * 11.5 / ks * 1024)
    # Decoupled: lr x coefficient is the same decay per step for every group, whatever its lr.
    for group in opt.param_groups:
        assert group["lr"] * group["weight_decay"] == pytest.approx(0.0153 * 1024 / ks)
    # Twice the batch: twice the torch lr (same per-example step), same decay per example.
    double = build_optimizer(model, dataclasses.replace(cfg, batch_size=2048))
    assert double.param_groups[0]["lr"] == pytest.approx(2 * other_w["lr"])


def test_bn_bias_scale_and_head_lr_reach_only_their_parameters():
    model = TinyNet(num_classes=4, in_chans=3)
    opt = build_optimizer(model, TrainConfig(lr=0.1, bn_bias_lr_scale=10.0, head_lr=0.03, weight_decay=1e-4))
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.bn.bias)] == pytest.approx(1.0)
    assert lrs[id(model.bn.weight)] == pytest.approx(0.1)
    assert lrs[id(model.fc.weight)] == pytest.approx(0.03)
    assert lrs[id(model.fc.bias)] == pytest.approx(0.1) and lrs[id(model.conv.weight)] == pytest.approx(0.1)
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model.fc.weight)] == 1e-4 and decays[id(model.bn.bias)] == 0.0
    with pytest.raises(PipelineError, match="--decoupled is for sgd"):
        build_optimizer(model, TrainConfig(optimizer="adam", decoupled=True))


def test_triangle_schedule_by_hand():
    cfg = TrainConfig(epochs=10, schedule="triangle", pct_start=0.23, lr_start_factor=0.2, lr_end_factor=0.07)
    factor = lr_factor(cfg, 10)  # 100 steps, peak at int(0.23 * 100) = 23
    assert factor(0) == pytest.approx(0.2)
    assert factor(23) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(0.2 + 0.8 * 10 / 23)
    assert factor(100) == pytest.approx(0.07)
    assert factor(50) == pytest.approx(1 - 0.93 * 27 / 77)
    linear = lr_factor(TrainConfig(epochs=8, schedule="triangle", pct_start=0.0, lr_end_factor=0.0), 5)
    assert [linear(s) for s in (0, 10, 40)] == pytest.approx([1.0, 0.75, 0.0])  # airbench_muon: 1 - step/total


def test_fractional_epochs_round_steps_up():
    assert total_steps(9.9, 43) == 426  # ceil(425.7), as airbench's ceil(len(loader) * epochs)
    assert total_steps(2, 43) == 86


# ---- lookahead EMA -------------------------------------------------------------------------------

def test_lookahead_averages_every_n_steps_copies_back_and_warms_up():
    w = nn.Parameter(torch.zeros(1))
    model = nn.Module()
    model.w = w
    la = Lookahead(model, every=2, start_step=2, total_steps=10, decay=0.5, power=1.0)
    trajectory = []
    for step in range(1, 11):
        with torch.no_grad():
            w += 1.0  # one "optimizer step"
        la.update(step)
        trajectory.append(w.item())
    # steps 1-2: before the start (step must exceed 2); step 4: the EMA starts as a copy (4.0);
    # step 6: rho = 0.5**2 * 6/10 = 0.15 -> ema = 0.15*4 + 0.85*6 = 5.7, and w is set to it;
    # step 8: w = 7.7, rho = 0.25*0.8 = 0.2 -> 0.2*5.7 + 0.8*7.7 = 7.3; step 10: w = 9.3, rho 0.25 -> 8.8
    assert trajectory == pytest.approx([1, 2, 3, 4, 5, 5.7, 6.7, 7.3, 8.3, 8.8])
    with torch.no_grad():
        w += 5.0
    la.end_epoch()
    assert w.item() == pytest.approx(8.8)  # the epoch ends on the EMA


def test_lookahead_resume_rebuilds_the_state_at_an_epoch_boundary():
    model = nn.Linear(2, 1)
    la = Lookahead(model, every=5, start_step=20, total_steps=100)
    la.resume(24)
    assert la.average is None  # the first average is at step 25
    la.resume(25)
    assert la.average is not None and torch.equal(la.average[0], model.weight.detach())


# ---- augmentation --------------------------------------------------------------------------------

def test_reflect_padding_matches_numpy():
    assert reflect_index(4, 2).tolist() == [2, 1, 0, 1, 2, 3, 2, 1]
    images = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8)
    expected = np.pad(images.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    assert np.array_equal(pad_images(images, 2, "reflect").numpy(), expected)
    assert np.array_equal(pad_images(images, 1, "zero").numpy(), np.pad(images.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1))))


def test_alternating_flip_shows_every_image_once_mirrored_in_any_two_epochs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)
    loader = FastTrainLoader(images, np.arange(40), flip=True, flip_mode="alternate", batch_size=8, seed=3)
    originals = torch.from_numpy(images).permute(0, 3, 1, 2)

    def mirrored_by_label(epoch):
        loader.set_epoch(epoch)
        seen = {}
        for x, y in loader:
            for img, label in zip(x, y.tolist()):
                same, flipped = torch.equal(img, originals[label]), torch.equal(img, originals[label].flip(-1))
                assert same or flipped
                seen[label] = flipped
        return seen

    epochs = [mirrored_by_label(e) for e in (1, 2, 3, 4)]
    for a, b in zip(epochs, epochs[1:]):
        assert all(a[i] != b[i] for i in range(40))
    assert 5 < sum(epochs[0].values()) < 35  # the base bits are random, not all equal


def test_reflect_translate_crops_only_come_from_the_reflected_image():
    images = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1) * 7
    loader = build_train_loader(images, np.arange(2), policy="standard", batch_size=2, crop_pad=2,
                                pad_mode="reflect", flip_mode="alternate")
    padded = pad_images(torch.from_numpy(images).permute(0, 3, 1, 2), 2, "reflect")
    windows = {src[i, :, r:r + 4, c:c + 4].numpy().tobytes()
               for src in (padded, padded.flip(-1)) for i in range(2) for r in range(5) for c in range(5)}
    for epoch in range(1, 6):
        loader.set_epoch(epoch)
        for x, _ in loader:
            assert all(img.numpy().tobytes() in windows for img in x)
    with pytest.raises(PipelineError, match="crop_pad/pad_mode/flip_mode"):
        build_train_loader(images, np.arange(2), policy="none", batch_size=2, pad_mode="reflect")


# ---- Muon ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_orthogonalise_keeps_directions_and_flattens_singular_values(dtype):
    torch.manual_seed(0)
    g = torch.randn(16, 40) @ torch.diag(torch.logspace(0, 2, 40))
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    out = orthogonalise(g, steps=5, dtype=dtype)
    assert out.dtype == dtype
    out = out.float()
    singular = torch.linalg.svdvals(out)
    assert singular.min() > 0.5 and singular.max() < 1.5  # S' ~ U(0.5, 1.5), not S
    # same singular vectors: U^T out V is (close to) diagonal
    core = u.T @ out @ vh.T
    off = core - torch.diag(torch.diagonal(core))
    assert off.abs().max() < 0.1 * torch.diagonal(core).abs().min()
    assert orthogonalise(g.T, steps=5).shape == (40, 16)


def test_muon_optimizer_sgd_part_is_torch_nesterov_sgd_and_filters_are_renormalised():
    torch.manual_seed(0)
    filt = nn.Parameter(torch.randn(8, 3, 3, 3))
    bias = nn.Parameter(torch.randn(8))
    ref_bias = nn.Parameter(bias.detach().clone())
    opt = MuonWithSGD([{"params": [filt], "role": "filter", "lr": 0.2, "momentum": 0.6},
                       {"params": [bias], "role": "other", "lr": 0.05, "weight_decay": 0.01}],
                      lr=0.05, momentum=0.85, ns_steps=3)
    ref = torch.optim.SGD([ref_bias], lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.01)
    for _ in range(4):
        grads = torch.randn(8, 3, 3, 3), torch.randn(8)
        filt.grad, bias.grad, ref_bias.grad = grads[0], grads[1], grads[1].clone()
        opt.step(), ref.step()
    torch.testing.assert_close(bias, ref_bias)
    # each Muon step first rescales the filter bank to norm sqrt(out): seen with a zero lr
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    assert filt.norm().item() == pytest.approx(math.sqrt(8))



def test_muon_newton_schulz_follows_the_runs_resolved_precision(data, tmp_path, monkeypatch):
    import pipeline.train.muon as muon

    seen = []
    real = muon.orthogonalise

    def recording(matrix, steps, dtype):
        seen.append(dtype)
        return real(matrix, steps, dtype=dtype)

    monkeypatch.setattr(muon, "orthogonalise", recording)
    net = TinyNet(4, 3)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        assert build_optimizer(net, TrainConfig(optimizer="muon", precision=precision)).ns_dtype == dtype
    # "auto" without a probe is fp32 on a CPU: the engine hands the optimizer the resolved name.
    run_training(tiny_config(data, tmp_path, epochs=1, optimizer="muon", precision="auto", probe=False))
    assert seen and set(seen) == {torch.float32}

def test_muon_config_puts_conv_filters_under_muon():
    from pipeline.models import create_model

    net = create_model("airbench94", num_classes=10, in_chans=3, input_size=(3, 32, 32),
                       head_scale=1 / 256, head_unit_std=True)
    cfg = resolve_config(TrainConfig, "configs/airbench94-muon.yaml")
    opt = build_optimizer(net, cfg)
    filters = [g for g in opt.param_groups if g["role"] == "filter"]
    assert sum(len(g["params"]) for g in filters) == 6  # the whitening conv is frozen
    assert all(g["lr"] == 0.24 and g["momentum"] == 0.6 for g in filters)
    head = next(g for g in opt.param_groups if g["role"] == "head")
    assert head["lr"] == pytest.approx(0.67 * 2000, rel=1e-4)  # the script's 0.67 per summed loss
    others = [g for g in opt.param_groups if g["role"] != "filter"]
    assert all(g["lr"] * g["weight_decay"] == pytest.approx(2e-6 * 2000, rel=1e-4) for g in others)


def test_resnet20_quality_recipe_puts_all_19_convs_under_muon_and_the_rest_under_sgd():
    from pipeline.models import create_model

    net = create_model("resnet20", num_classes=10)
    cfg = resolve_config(TrainConfig, "configs/resnet20-cpu-quality.yaml")
    opt = build_optimizer(net, cfg)
    by_role: dict[str, list] = {}
    for g in opt.param_groups:
        by_role.setdefault(g["role"], []).append(g)
    # He et al. 2016 sec. 4.2: 1 stem conv + 3 stages x 3 blocks x 2 convs; option-A shortcuts have
    # no weights. The 19 BNs' scales and shifts (38 tensors) and the 64->10 head's weight and bias stay SGD.
    filters = [p for g in by_role.pop("filter") for p in g["params"]]
    assert len(filters) == 19 and all(p.ndim == 4 for p in filters)
    assert {p.shape[0] for p in filters} == {16, 32, 64}
    assert set(by_role) == {"other"}
    sgd = [p for g in by_role["other"] for p in g["params"]]
    assert len(sgd) == 38 + 2
    decayed = [p for g in by_role["other"] if g["weight_decay"] > 0 for p in g["params"]]
    assert [tuple(p.shape) for p in decayed] == [(10, 64)]  # only the head's weight: BN and biases are not


# ---- TTA as in the paper -------------------------------------------------------------------------

def test_airbench_tta_level_is_the_papers_weighted_mirror_translate():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    weight = torch.randn(10, 3 * 8 * 8)

    def net(x):
        return x.float().flatten(1) @ weight.T

    def mirror(x):
        return 0.5 * net(x) + 0.5 * net(x.flip(-1))

    padded = F.pad(images.float(), (1, 1, 1, 1), mode="reflect")
    translated = [padded[:, :, 0:8, 0:8], padded[:, :, 2:10, 2:10]]
    paper = 0.5 * mirror(images) + 0.5 * torch.stack([mirror(t) for t in translated]).mean(0)

    views = {view: net(tta.apply_view(images, view)) for view in tta.level_views("airbench")}
    torch.testing.assert_close(tta.combine(views, "airbench"), paper)
    assert sum(tta.level_weights("airbench")) == pytest.approx(1.0)
    assert tta.most_complete(["none", "airbench"]) == "airbench"


# ---- the engine with everything on ---------------------------------------------------------------

RECIPE = dict(model=WHITEN_NET, epochs=2.5, batch_size=16, optimizer="sgd", lr=2.0, momentum=0.85, nesterov=True,
              decoupled=True, weight_decay=0.01, decay_bn_bias=True, bn_bias_lr_scale=8.0, label_smoothing=0.2,
              schedule="triangle", pct_start=0.23, lookahead=True, lookahead_every=2, lookahead_start_epochs=1,
              whiten_init=True, whiten_images=20, whiten_bias_epochs=1, crop_pad=2, pad_mode="reflect",
              flip_mode="alternate", save_every=1)


def test_recipe_run_fractional_epochs_whiten_bias_freeze_and_exact_resume(data, tmp_path):
    summary = run_training(tiny_config(data, tmp_path / "a", **RECIPE))
    run = tmp_path / "a" / "t"
    last = load_checkpoint(run / "last.pt")
    # 48 train images / batch 16 = 3 steps an epoch; 2.5 epochs -> ceil(7.5) = 8 steps over 3 epochs
    assert summary["epochs_run"] == 3 and last["scheduler"]["last_epoch"] == 8
    assert lr_factor(resolve_config(TrainConfig, None, RECIPE), 3)(8) == pytest.approx(0.07)
    e1, e2 = load_checkpoint(run / "epoch_1.pt"), load_checkpoint(run / "epoch_2.pt")
    # the whitening weights never move; its bias trains in epoch 1 only
    torch.testing.assert_close(e1["model"]["whiten.weight"], last["model"]["whiten.weight"])
    assert torch.equal(e1["model"]["whiten.bias"], last["model"]["whiten.bias"])
    assert not torch.equal(e1["model"]["conv.weight"], e2["model"]["conv.weight"])

    def stop_after_one(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_config(data, tmp_path / "b", **RECIPE), on_epoch_end=stop_after_one)
    run_training(tiny_config(data, tmp_path / "b", resume=True, **RECIPE))
    resumed = load_checkpoint(tmp_path / "b" / "t" / "last.pt")
    for name, value in last["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_final_fit_trains_on_every_labelled_image(data, tmp_path):
    run_training(tiny_config(data, tmp_path, epochs=1, augment="none", final_fit=True))
    last = load_checkpoint(tmp_path / "t" / "last.pt")
    assert last["config"]["final_fit"] is True
    assert last["scheduler"]["last_epoch"] == (48 + 16) // 16  # train + val images, batch 16


def test_shipped_recipes_resolve():
    for name in ("airbench94", "airbench94-muon", "resnet20-cpu-quality"):
        cfg = resolve_config(TrainConfig, f"configs/{name}.yaml")
        assert cfg.epochs > 0
    paper = resolve_config(TrainConfig, "configs/airbench94.yaml")
    assert (paper.epochs, paper.batch_size, paper.lr, paper.weight_decay) == (9.9, 1024, 11.5, 0.0153)
