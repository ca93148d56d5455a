"""Every stage configured alike: one dataclass per stage, --config FILE, choices declared once on
the field (from the registry that builds them) and shown by --help, every value checked before any
data is read."""
from __future__ import annotations

import dataclasses
import importlib
import json

import pytest
import yaml
from click.testing import CliRunner

from helpers_train import make_prepared, tiny_config

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
    "sweep": "pipeline.sweep:SweepConfig",
    "lab": "pipeline.lab:LabConfig",
    "report": "pipeline.report:ReportConfig",
    "info": "pipeline.info:InfoConfig",
    "validate": "pipeline.submission:ValidateConfig",
    "compare": "pipeline.report:CompareConfig",
}


def _load(spec: str):
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def test_every_command_has_a_config_dataclass():
    assert sorted(STAGE_CONFIGS) == sorted(COMMANDS)


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


def test_a_sweep_takes_its_options_from_a_yaml_config_and_saves_them(tmp_path, monkeypatch):
    from test_sweep import FakeTrainer

    import pipeline.train.engine

    trainer = FakeTrainer()
    monkeypatch.setattr(pipeline.train.engine, "run_training", trainer)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"name": "s", "grid": ["lr=0.1,0.2"], "sets": ["epochs=1", "model=simplenn"],
                                      "out_dir": str(tmp_path / "runs"), "seed": 3, "sampler": "tpe"}))
    main(["sweep", "--config", str(config), "--sweeps-dir", str(tmp_path / "sweeps"), "--seed", "4"])
    assert len(trainer.calls) == 2  # the YAML's grid
    saved = json.loads((tmp_path / "sweeps" / "s" / "manifest.json").read_text())["config"]
    assert (saved["seed"], saved["sampler"], saved["sets"]) == (4, "tpe", ["epochs=1", "model=simplenn"])  # flag wins
    assert saved["grid"] == {"lr": [0.1, 0.2]}  # as the study parsed it
    assert saved["sweeps_dir"] == str(tmp_path / "sweeps") and saved["take_over_running"] is False
    config.write_text("sampler: grid\n")
    with pytest.raises(SystemExit):
        main(["sweep", "--config", str(config), "--name", "t"])


LAB = {
    "title": "Tiny lab", "source": "a test", "metric": "val accuracy", "unit": "percent",
    "base": {"model": "lenet5", "optimizer": "sgd", "lr": 0.05, "batch_size": 64, "epochs": 30,
             "schedule": "constant", "augment": "none", "workers": 0, "log_every": 5},
    "scales": {"quick": {"data": {"competition": "digits", "limit": 300}, "cap": {"epochs": 1}, "seeds": 2},
               "full": {"data": {"competition": "digits"}, "seeds": 1}},
    "experiments": [{"name": "bn", "title": "BatchNorm", "claim": "BN raised val accuracy", "variants": [
        {"label": "no BN", "set": {}, "report": 60.0}, {"label": "BN", "set": {"model_opts": {"bn": True}}}]}],
}


def test_a_lab_takes_its_options_from_a_yaml_config_and_saves_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the data stage writes data/digits here
    (tmp_path / "labs").mkdir()
    (tmp_path / "labs" / "tiny.yaml").write_text(yaml.safe_dump(LAB))
    config = tmp_path / "lab.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny", "labs_dir": "labs", "results_dir": "results", "seeds": 1,
                                      "max_units": 1, "sets": ["workers=0"], "figures": False}))
    main(["lab", "--config", str(config), "--max-units", "2"])
    folder = tmp_path / "sweeps" / "lab-tiny-quick"
    assert len(list((tmp_path / "results").rglob("u-*.json"))) == 2 and not (folder / "report.html").exists()
    saved = json.loads((folder / "manifest.json").read_text())["config"]
    assert (saved["max_units"], saved["seeds"], saved["figures"], saved["sets"]) == (2, 1, False, ["workers=0"])
    assert saved["lab"] == "tiny" and saved["scale"] == "quick"


def test_a_report_takes_its_options_from_a_yaml_config_and_saves_them_beside_the_page(tmp_path):
    data = make_prepared(tmp_path / "data", n_train=32, n_val=16, classes=4)
    run_training_ = importlib.import_module("pipeline.train.engine").run_training
    run_training_(tiny_config(data, tmp_path / "runs", run="r", epochs=1))
    skipped = ["confusion", "mistakes", "augmented", "weights", "tsne", "params"]
    config = tmp_path / "report.yaml"
    config.write_text(yaml.safe_dump({"runs_dir": str(tmp_path / "runs"), "skip": skipped, "tsne_points": 50}))
    main(["report", "r", "--config", str(config), "--tsne-points", "60"])
    saved = json.loads((tmp_path / "runs" / "r" / "report" / "manifest.json").read_text())["config"]
    assert (saved["skip"], saved["tsne_points"], saved["device"]) == (skipped, 60, "cpu")
    assert (tmp_path / "runs" / "r" / "report.html").is_file()
    config.write_text("skip: [tnse]\n")
    with pytest.raises(SystemExit):
        main(["report", "r", "--config", str(config)])


def test_info_takes_a_yaml_config_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "info.yaml").write_text("model: lenet5\nclasses: 7\njson: true\n")
    main(["info", "--config", "info.yaml", "--input", "1x28x28"])
    shown = json.loads(capsys.readouterr().out)
    assert (shown["model"], shown["num_classes"]) == ("lenet5", 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["info.yaml"]


@pytest.mark.parametrize("args, field", [(["report"], "run"), (["sweep"], "name"), (["predict"], "run"),
                                          (["validate"], "file")])
def test_a_required_value_missing_from_flags_and_config_is_one_line(args, field, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith(f"error: '{field}' is required (") and "\n" not in err
