"""Every stage configured alike: one dataclass per stage, --config FILE, choices declared once on
the field (from the registry that builds them) and shown by --help, every value checked before any
data is read."""
from __future__ import annotations

import dataclasses
import importlib

import pytest
from click.testing import CliRunner

from pipeline.cli import COMMANDS, main
from pipeline.config import field_choices
from pipeline.errors import PipelineError
from pipeline.train.config import TrainConfig, check_config

# stage -> its config dataclass ("module:attribute")
STAGE_CONFIGS = {
    "data": "pipeline.data.stage:DataConfig",
    "train": "pipeline.train.config:TrainConfig",
    "predict": "pipeline.predict:PredictConfig",
    "ensemble": "pipeline.ensemble:EnsembleConfig",
    "submit": "pipeline.submit:SubmitConfig",
}


def _load(spec: str):
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("stage", sorted(STAGE_CONFIGS))
def test_every_stage_help_shows_config_and_the_choices_of_its_fields(stage):
    command, cls = _load(COMMANDS[stage][0]), _load(STAGE_CONFIGS[stage])
    out = CliRunner().invoke(command, ["--help"], terminal_width=10_000).output
    assert "--config FILE" in out
    for f in dataclasses.fields(cls):
        found = field_choices(f)
        if found and not f.metadata.get("hidden"):
            missing = [name for name in found[0] if name not in out]
            assert not missing, f"{stage} --help does not name {f.name}'s choices {missing}"


def test_the_optimizer_help_names_every_registered_optimizer_muon_included():
    from pipeline.train.optim import OPTIMIZERS

    out = CliRunner().invoke(_load(COMMANDS["train"][0]), ["--help"], terminal_width=10_000).output
    line = next(line for line in out.splitlines() if line.strip().startswith("--optimizer"))
    assert "muon" in OPTIMIZERS and all(name in line for name in OPTIMIZERS.names())


@pytest.mark.parametrize("key, value, message", [
    ("precision", "fp8", "unknown precision 'fp8'; choose from: auto, fp32, bf16, fp16"),
    ("optimizer", "lamb", "unknown optimizer 'lamb'; choose from: adagrad, adam"),
    ("augment", "standart", "unknown augmentation policy 'standart' (did you mean 'standard'?)"),
    ("flip_mode", "sometimes", "unknown flip mode 'sometimes'; choose from: auto, random, alternate, none"),
])
def test_a_bad_choice_fails_in_check_config_before_any_data_is_read(tmp_path, key, value, message):
    cfg = TrainConfig(data=str(tmp_path / "nowhere"), device="cpu", **{key: value})
    with pytest.raises(PipelineError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        check_config(cfg)
    from pipeline.train.engine import run_training

    with pytest.raises(PipelineError) as error:  # the data folder does not exist: never reached
        run_training(cfg)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_bad_choice_in_a_yaml_config_is_one_line_before_data(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("precision: fp8\n")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", str(config), "--data", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err == "error: unknown precision 'fp8'; choose from: auto, fp32, bf16, fp16"


def test_fp16_on_a_cpu_fails_before_data_is_read(tmp_path):
    from pipeline.train.engine import run_training

    with pytest.raises(PipelineError, match="^--precision fp16 needs CUDA"):
        run_training(TrainConfig(data=str(tmp_path / "nowhere"), device="cpu", precision="fp16"))
