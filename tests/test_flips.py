"""meta.json's flip_safe: decided by the data stage, obeyed by train's augmentation and predict's TTA
defaults; an explicit choice wins, with a warning on data whose labels do not survive a mirror."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import yaml

from helpers_predict import make_data, make_run, run_cli
from helpers_train import make_prepared, tiny_config
from pipeline import flips
from pipeline.augment import build_train_loader
from pipeline.data.stage import DataConfig, run
from pipeline.errors import PipelineError
from pipeline.predict import PredictConfig, run_predict
from pipeline.train.engine import run_training


@pytest.mark.parametrize("names, classes, safe", [
    (["digits", "digits"], [str(d) for d in range(10)], False),
    (["digit-recognizer", "kaggle"], [str(d) for d in range(10)], False),
    (["fashion-mnist", "fashion-mnist"], ["T-shirt/top", "Trouser"], True),  # clothing, not characters
    (["cifar10-smoke", "kaggle", "cifar10-jpg.zip"], ["airplane", "cat"], True),
    (["gtsrb-traffic-signs", "kaggle"], ["stop", "yield"], False),
    (["my-comp", "kaggle"], ["a", "b", "c"], False),  # single letters as classes: text-like
    (["my-comp", "kaggle"], ["healthy", "rust"], True),  # nothing known: flips stay on, as before
])
def test_flip_safety_from_names_then_classes(names, classes, safe):
    got, why = flips.decide(None, names, classes)
    assert got is safe and why


def test_override_wins_over_the_rules():
    assert flips.decide(True, ["digits"], ["0", "1"]) == (True, "--flip")
    assert flips.decide(False, ["cifar10"], ["cat", "dog"]) == (False, "--no-flip")


def test_data_stage_records_flip_safety_and_cli_overrides(tmp_path, capsys):
    meta = run(DataConfig(competition="digits", data_root=str(tmp_path / "data"), limit=200))
    assert meta["flip_safe"] is False and "digit" in meta["flip_why"]
    code, out, err = run_cli(["data", "--competition", "digits", "--data-root", str(tmp_path / "data"),
                              "--limit", "200", "--flip"], capsys)
    assert code == 0, err
    assert "horizontal flips: on in training and TTA by default (--flip)" in out
    written = json.loads((tmp_path / "data" / "digits" / "meta.json").read_text())
    assert written["flip_safe"] is True and written["flip_why"] == "--flip"


def test_flip_mode_none_never_mirrors_and_random_does():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 6, 6, 3), dtype=np.uint8)
    plain = torch.from_numpy(images).permute(0, 3, 1, 2)

    def mirrored_count(flip_mode: str) -> int:
        loader = build_train_loader(images, np.arange(64), policy="standard", batch_size=64, crop_pad=0,
                                    flip_mode=flip_mode, seed=1)
        loader.set_epoch(1)
        batch, labels = next(iter(loader))
        same = [torch.equal(batch[i], plain[labels[i]]) for i in range(64)]
        flipped = [torch.equal(batch[i], plain[labels[i]].flip(-1)) for i in range(64)]
        assert all(a or b for a, b in zip(same, flipped))
        return sum(flipped)

    assert mirrored_count("none") == 0
    assert 16 < mirrored_count("random") < 48
    with pytest.raises(PipelineError, match="crop_pad/pad_mode/flip_mode"):
        build_train_loader(images, np.arange(64), policy="autoaugment", flip_mode="alternate")


def _set_flip_safe(data, safe: bool):
    meta = json.loads((data / "meta.json").read_text())
    meta.update(flip_safe=safe, flip_why="test")
    (data / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("safe, asked, used", [
    (False, "auto", "none"), (True, "auto", "random"), (False, "alternate", "alternate")])
def test_training_flips_follow_meta_unless_asked(tmp_path, caplog, safe, asked, used):
    data = make_prepared(tmp_path / "tiny")
    _set_flip_safe(data, safe)
    caplog.set_level(logging.WARNING, logger="pipeline.flips")
    run_training(tiny_config(data, tmp_path / "ck", epochs=1, flip_mode=asked))
    saved = yaml.safe_load((tmp_path / "ck" / "t" / "config.yaml").read_text())
    assert saved["flip_mode"] == used
    warned = [r.getMessage() for r in caplog.records if "training with horizontal flips" in r.getMessage()]
    assert len(warned) == (1 if asked != "auto" and not safe else 0)


def test_predict_tta_default_follows_meta_and_an_explicit_level_wins(tmp_path, caplog):
    runs = tmp_path / "runs"
    old = make_data(tmp_path / "data" / "old")  # meta.json without flip_safe: as before, flips on
    make_run(runs, "old", old)
    digits_like = make_data(tmp_path / "data" / "tiny")
    _set_flip_safe(digits_like, False)
    make_run(runs, "r1", digits_like)
    caplog.set_level(logging.WARNING, logger="pipeline.flips")

    assert run_predict(PredictConfig(run="old", runs_dir=str(runs), precision="fp32"))["levels"] == ["flip"]
    assert run_predict(PredictConfig(run="r1", runs_dir=str(runs), precision="fp32"))["levels"] == ["none"]
    assert json.loads((runs / "r1" / "predict.json").read_text())["tta_levels"] == ["none"]
    assert not caplog.records
    result = run_predict(PredictConfig(run="r1", runs_dir=str(runs), precision="fp32", tta=["none", "flip"]))
    assert result["levels"] == ["none", "flip"]  # the user's choice, with one warning naming the data
    [warning] = caplog.records
    assert "TTA flip averages mirrored images" in warning.getMessage() and "'tiny'" in warning.getMessage()
