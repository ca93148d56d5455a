"""run_training end to end on a tiny prepared folder: files, checkpoints, resume, interrupts, errors."""
from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from helpers_train import TinyNet, WrappedLoader, make_prepared, tiny_config
from pipeline.artifacts import sha256_file
from pipeline.checkpoint import build_model, load_checkpoint
from pipeline.errors import PipelineError
from pipeline.train import engine, resume
from pipeline.train import epoch as epoch_pass
from pipeline.train.engine import run_training

# Dropout (torch RNG), mixup (numpy RNG), crop+flip (loader seed), EMA and one-cycle all in play,
# so an exact resume has to restore every piece of state.
RESUME_SETTINGS = dict(epochs=4, ema=0.9, mixup=0.2, model_opts={"dropout": 0.2}, augment="standard")
TIMING = ("seconds", "img_per_s")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    summary = run_training(tiny_config(data, out, **RESUME_SETTINGS))
    return summary, load_checkpoint(out / "t" / "last.pt")


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _assert_same_run(ckpt, reference):
    for key in ("model", "ema"):
        for name, value in reference[key].items():
            torch.testing.assert_close(ckpt[key][name], value, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
    ours, theirs = _without_timing(ckpt["metrics"]), _without_timing(reference["metrics"])
    assert [r["epoch"] for r in ours] == [r["epoch"] for r in theirs]
    for row, ref in zip(ours, theirs):
        assert row == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert ckpt["scheduler"]["last_epoch"] == reference["scheduler"]["last_epoch"] == 4 * 3


def test_run_writes_checkpoints_metrics_curves_and_manifest(data, tmp_path):
    summary = run_training(tiny_config(data, tmp_path, epochs=6, augment="none"))
    run = tmp_path / "t"
    assert summary["run_dir"] == str(run) and summary["epochs_run"] == 6 and not summary["stopped_early"]
    assert summary["best_val_acc"] >= 0.75  # chance is 0.25 on 4 balanced classes

    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "img_per_s"]
    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in jsonl] == [float(r["val_acc"]) for r in rows]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best_epoch = max(jsonl, key=lambda r: r["val_acc"])["epoch"]  # first epoch with the top accuracy
    assert summary["best_epoch"] == best_epoch
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["run"] == "t" and saved["competition"] == "tiny" and saved["epochs"] == 6

    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")  # weights_only=True
    assert (last["epoch"], best["epoch"], last["best_epoch"]) == (6, best_epoch, best_epoch)
    assert last["arch"] == "tiny_test_net"
    assert last["model_kwargs"] == {"num_classes": 4, "in_chans": 3, "input_size": [3, 8, 8], "opts": {}}
    assert last["data"]["split_sha256"] == sha256_file(data / "split.npz")
    assert last["data"]["meta_sha256"] == sha256_file(data / "meta.json")
    assert last["ema"] is None and last["scaler"] is None and last["config"]["lr"] == 0.05
    assert len(last["metrics"]) == 6 and len(last["rng"]) == 1
    net = build_model(best)
    assert isinstance(net, TinyNet)

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stage"] == "train"
    assert [i["sha256"] for i in manifest["inputs"]] == [sha256_file(data / "meta.json"), sha256_file(data / "split.npz")]
    outputs = {o["path"].rsplit("/", 1)[-1] for o in manifest["outputs"]}
    assert {"best.pt", "last.pt", "metrics.csv", "metrics.jsonl", "curves.png", "config.yaml"} <= outputs
    assert manifest["metrics"]["best_epoch"] == best_epoch and manifest["seed"] == 0


def test_interrupt_after_epoch_2_then_resume_matches_a_straight_run(data, tmp_path, straight_run):
    def stop_after_two(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_config(data, tmp_path, **RESUME_SETTINGS), on_epoch_end=stop_after_two)
    run = tmp_path / "t"
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert not (run / "manifest.json").exists()  # an unfinished run has no manifest

    summary = run_training(tiny_config(data, tmp_path, resume=True, **RESUME_SETTINGS))
    assert summary["epochs_run"] == 4
    _assert_same_run(load_checkpoint(run / "last.pt"), straight_run[1])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # no duplicated rows
    assert "ema_val_acc" in rows[0]


class _InterruptingLoader(WrappedLoader):
    """Wraps a train loader; raises KeyboardInterrupt (Ctrl-C) mid-epoch `epoch` after `after` batches."""

    def __init__(self, inner, epoch, after):
        super().__init__(inner)
        self.at_epoch, self.after = epoch, after

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if self.epoch == self.at_epoch and i == self.after:
                raise KeyboardInterrupt
            yield batch


def test_ctrl_c_mid_epoch_keeps_the_last_completed_epoch(data, tmp_path, straight_run, monkeypatch):
    real = engine.build_train_loader
    monkeypatch.setattr(engine, "build_train_loader", lambda *a, **k: _InterruptingLoader(real(*a, **k), 3, 1))
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_config(data, tmp_path, **RESUME_SETTINGS))
    run = tmp_path / "t"
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 2

    monkeypatch.setattr(engine, "build_train_loader", real)
    run_training(tiny_config(data, tmp_path, resume=True, **RESUME_SETTINGS))
    _assert_same_run(load_checkpoint(run / "last.pt"), straight_run[1])


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    real_forward, calls, shas = TinyNet.forward, [0], {}

    def forward(self, x):
        out = real_forward(self, x)
        if self.training:
            calls[0] += 1
            if calls[0] == 7:  # 3 steps per epoch: epoch 3, step 1
                return out * float("nan")
        return out

    monkeypatch.setattr(TinyNet, "forward", forward)
    record = lambda epoch, row: shas.__setitem__(epoch, sha256_file(tmp_path / "t" / "last.pt"))
    with pytest.raises(PipelineError, match=r"loss became nan at epoch 3, step 1.*last.pt keeps epoch 2"):
        run_training(tiny_config(data, tmp_path, epochs=4), on_epoch_end=record)
    assert sha256_file(tmp_path / "t" / "last.pt") == shas[2]
    assert load_checkpoint(tmp_path / "t" / "last.pt")["epoch"] == 2


def test_early_stopping_keeps_the_best_epoch(data, tmp_path, monkeypatch):
    accuracies = iter([0.5, 0.6, 0.6, 0.55, 0.9, 0.9])

    def fake_evaluate(*args, **kwargs):
        return {"loss": 1.0, "acc": next(accuracies), "samples": 16}

    monkeypatch.setattr(epoch_pass, "evaluate", fake_evaluate)
    summary = run_training(tiny_config(data, tmp_path, epochs=10, early_stop_patience=2))
    # best at epoch 2; epochs 3 (a tie is no improvement) and 4 are worse -> stop after epoch 4
    assert (summary["best_epoch"], summary["epochs_run"], summary["stopped_early"]) == (2, 4, True)
    assert summary["best_val_acc"] == 0.6
    assert load_checkpoint(tmp_path / "t" / "best.pt")["epoch"] == 2


def test_save_every_keeps_snapshots(data, tmp_path):
    run_training(tiny_config(data, tmp_path, epochs=4, save_every=2))
    assert sorted(p.name for p in (tmp_path / "t").glob("epoch_*.pt")) == ["epoch_2.pt", "epoch_4.pt"]
    assert load_checkpoint(tmp_path / "t" / "epoch_2.pt")["epoch"] == 2


def test_same_seed_same_weights_other_seed_other_weights(data, tmp_path):
    weights = []
    for run, seed in (("a", 1), ("b", 1), ("c", 2)):
        run_training(tiny_config(data, tmp_path, run=run, seed=seed, epochs=1, deterministic=True))
        weights.append(load_checkpoint(tmp_path / run / "last.pt")["model"]["fc.weight"])
    resume.configure_determinism(False)
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_compiled_model_saves_plain_state_dict_keys(data, tmp_path, monkeypatch):
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="eager"))
    run_training(tiny_config(data, tmp_path, epochs=1, compile=True))
    ckpt = load_checkpoint(tmp_path / "t" / "last.pt")
    assert ckpt["model"] and not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    build_model(ckpt)


def test_bf16_channels_last_run(data, tmp_path):
    summary = run_training(tiny_config(data, tmp_path, epochs=1, precision="bf16", channels_last=True))
    assert summary["epochs_run"] == 1


def test_existing_run_needs_resume_or_overwrite(data, tmp_path):
    run_training(tiny_config(data, tmp_path, epochs=1))
    with pytest.raises(PipelineError, match="already holds last.pt, best.pt; pass --resume"):
        run_training(tiny_config(data, tmp_path, epochs=1))
    (tmp_path / "t" / "epoch_9.pt").write_bytes(b"stale")
    run_training(tiny_config(data, tmp_path, epochs=1, overwrite=True))
    assert not (tmp_path / "t" / "epoch_9.pt").exists()
    with pytest.raises(PipelineError, match="nothing to resume"):
        run_training(tiny_config(data, tmp_path, run="never-ran", resume=True))


def test_replace_keeps_the_earlier_run_until_the_retrain_completes(data, tmp_path):
    run_training(tiny_config(data, tmp_path, epochs=1))
    run = tmp_path / "t"
    (run / "predict.json").write_text("{}")  # a downstream output of the earlier model
    earlier = sha256_file(run / "last.pt")

    def interrupt(epoch, row):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_config(data, tmp_path, epochs=2, replace=True), on_epoch_end=interrupt)
    assert sha256_file(run / "last.pt") == earlier and (run / "predict.json").is_file()

    summary = run_training(tiny_config(data, tmp_path, epochs=2, replace=True))
    assert summary["run_dir"] == str(run) and summary["epochs_run"] == 2
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert not (run / "predict.json").exists()  # the earlier model's predictions left with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no staging or retired folder left


def test_extend_continues_a_shorter_run_and_retrains_a_different_one(data, tmp_path):
    run_training(tiny_config(data, tmp_path, epochs=1))
    first = load_checkpoint(tmp_path / "t" / "last.pt")["metrics"][0]
    run_training(tiny_config(data, tmp_path, epochs=2, replace=True, extend=True))
    extended = load_checkpoint(tmp_path / "t" / "last.pt")["metrics"]
    assert [r["epoch"] for r in extended] == [1, 2] and extended[0] == first  # epoch 1 was kept, not redone
    run_training(tiny_config(data, tmp_path, epochs=3, lr=0.02, replace=True, extend=True))
    retrained = load_checkpoint(tmp_path / "t" / "last.pt")["metrics"]
    assert [r["epoch"] for r in retrained] == [1, 2, 3] and retrained[0]["lr"] != first["lr"]


def test_a_swap_killed_between_its_renames_is_undone_or_finished(tmp_path):
    from pipeline.train.run_folder import recover_swap
    run = tmp_path / "r"
    (tmp_path / ".r.retired").mkdir()
    (tmp_path / ".r.retired" / "last.pt").write_text("earlier")
    recover_swap(run)  # killed after the first rename: the earlier run comes back
    assert (run / "last.pt").read_text() == "earlier" and not (tmp_path / ".r.retired").exists()
    (tmp_path / ".r.retired").mkdir()
    recover_swap(run)  # killed after the second rename: only the leftover goes
    assert (run / "last.pt").read_text() == "earlier" and not (tmp_path / ".r.retired").exists()


def test_resume_refuses_another_model_config_or_data_split(data, tmp_path):
    run_training(tiny_config(data, tmp_path, epochs=1))
    with pytest.raises(PipelineError, match="checkpoint is of model 'tiny_test_net'"):
        run_training(tiny_config(data, tmp_path, epochs=2, resume=True, model_opts={"dropout": 0.5}))
    with pytest.raises(PipelineError, match=r"config differs .*lr: 0.05 -> 0.1"):
        run_training(tiny_config(data, tmp_path, epochs=2, resume=True, lr=0.1))
    other = make_prepared(tmp_path / "other", seed=1)
    with pytest.raises(PipelineError, match="another data split"):
        run_training(tiny_config(other, tmp_path, epochs=2, resume=True))
    # run-control settings may change: more epochs continues the run
    assert run_training(tiny_config(data, tmp_path, epochs=2, resume=True, workers=1))["epochs_run"] == 2


def test_bad_inputs_are_one_line_errors(data, tmp_path):
    with pytest.raises(PipelineError, match="not found; run `python -m pipeline data` first"):
        run_training(tiny_config(tmp_path / "nowhere", tmp_path))
    with pytest.raises(PipelineError, match="data is for competition 'tiny', not 'cifar10'"):
        run_training(tiny_config(data, tmp_path, competition="cifar10"))
    with pytest.raises(PipelineError, match="unknown model 'resnet9000'"):
        run_training(tiny_config(data, tmp_path, model="resnet9000"))
    with pytest.raises(PipelineError, match="fp16 needs CUDA"):
        run_training(tiny_config(data, tmp_path, precision="fp16"))
    with pytest.raises(PipelineError, match="batch-size must be even"):
        run_training(tiny_config(data, tmp_path, mixup=0.2, batch_size=15))
    assert not any(tmp_path.glob("t/*.pt"))  # nothing was started
