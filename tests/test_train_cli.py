"""`python -m pipeline train`: flag generation, defaults < YAML < flags, shipped configs, one-line errors."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from helpers_train import TINY_MODEL, make_prepared
from pipeline.cli import cli, main
from pipeline.config import resolve_config
from pipeline.errors import PipelineError
from pipeline.models import MODELS
from pipeline.runtime import resolve_precision
from pipeline.train.config import TrainConfig, check_config
from pipeline.train.stage import command

REPO = Path(__file__).resolve().parents[1]
FAST = ["--model", TINY_MODEL, "--batch-size", "16", "--eval-batch-size", "16", "--workers", "0",
        "--device", "cpu", "--precision", "fp32", "--no-channels-last", "--run", "t"]


def test_every_config_field_has_a_flag():
    flags = {opt for p in command.params for opt in p.opts}
    for f in dataclasses.fields(TrainConfig):
        flag = "--model-opt" if f.name == "model_opts" else "--" + f.name.replace("_", "-")
        assert flag in flags, f"TrainConfig.{f.name} has no CLI flag"
    assert "--no-channels-last" in {opt for p in command.params for opt in p.secondary_opts}


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    data = make_prepared(tmp_path / "tiny")
    config = tmp_path / "x.yaml"
    config.write_text(yaml.safe_dump({"lr": 0.02, "epochs": 3, "schedule": "multistep",
                                      "model_opts": {"dropout": 0.1}, "nesterov": True}))
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--data", str(data),
                                      "--out-dir", str(tmp_path / "ck"), "--epochs", "1",
                                      "--milestones", "0.3,0.6", "--model-opt", "dropout=0.2",
                                      "--no-nesterov", *FAST])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "ck" / "t" / "config.yaml").read_text())
    assert saved["lr"] == 0.02 and saved["schedule"] == "multistep"  # from the YAML
    assert saved["epochs"] == 1 and saved["milestones"] == [0.3, 0.6] and saved["nesterov"] is False  # flags
    assert saved["model_opts"] == {"dropout": 0.2}
    assert saved["momentum"] == 0.9 and saved["optimizer"] == "sgd"  # defaults
    assert "best val accuracy" in result.output


def test_augment_help_lists_every_policy():
    from pipeline.augment import POLICIES

    help_text = next(p.help for p in command.params if p.name == "augment")
    missing = [name for name in POLICIES.names() if not re.search(rf"(^|[ ;:(]){re.escape(name)}\b", help_text)]
    assert not missing, f"--augment help does not name {missing}"


@pytest.mark.parametrize("args, message", [
    (["--optimizer", "lamb"], "error: unknown optimizer 'lamb'; choose from: adagrad, adam"),
    (["--schedule", "poly"], "error: unknown schedule 'poly'; choose from:"),
    (["--model", "resnet21"], "error: unknown model 'resnet21' (did you mean 'resnet20' or 'resnet32'?); choose from:"),
    (["--model", "timm:resnet81"], "error: unknown timm model 'timm:resnet81' (did you mean 'timm:resnet18'"),
    (["--augment", "standart"], "error: unknown augmentation policy 'standart' (did you mean 'standard'?); choose from:"),
    (["--milestones", "half"], "error: --milestones: expected comma-separated numbers"),
])
def test_bad_names_are_one_line_errors(tmp_path, capsys, args, message):
    data = make_prepared(tmp_path / "tiny")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", str(data), "--out-dir", str(tmp_path / "ck"), "--epochs", "1", *FAST, *args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith(message) and "\n" not in err


def test_unknown_yaml_key_is_an_error(tmp_path, capsys):
    config = tmp_path / "x.yaml"
    config.write_text("learning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config)])
    assert "unknown config key 'learning_rate'" in capsys.readouterr().err


def test_shipped_configs_resolve_and_name_real_models():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"resnet20-paper.yaml", "resnet20-fast.yaml", "vgg16.yaml"}
    for path in configs:
        cfg = resolve_config(TrainConfig, path)
        assert cfg.model in MODELS, path.name
    paper = resolve_config(TrainConfig, REPO / "configs" / "resnet20-paper.yaml")
    # He et al. 2016, section 4.2
    assert (paper.optimizer, paper.lr, paper.momentum, paper.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (paper.schedule, paper.milestones, paper.gamma) == ("multistep", [0.5, 0.75], 0.1)
    assert (paper.epochs, paper.batch_size) == (182, 128)


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 0}, "--epochs must be positive, got 0"),
    ({"ema": 1.0}, "--ema must be 0 (off) or a decay in (0, 1), got 1.0"),
    ({"label_smoothing": 1.0}, "--label-smoothing must be in [0, 1)"),
    ({"min_lr": 0.5, "lr": 0.1}, "--min-lr must be between 0 and --lr"),
    ({"resume": True, "overwrite": True}, "--resume and --overwrite contradict"),
])
def test_out_of_range_values_are_refused_before_any_work(overrides, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        check_config(TrainConfig(**overrides))


def test_auto_precision_is_a_real_precision_and_names_pass_through():
    cpu = torch.device("cpu")
    assert TrainConfig().precision == "auto"
    assert resolve_precision("auto", cpu) in ("fp32", "bf16")  # never fp16 on a CPU
    assert [resolve_precision(p, cpu) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
