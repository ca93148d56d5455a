"""The shared pieces every stage stands on: registry, config layering, atomic files, checkpoints, CLI."""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline import artifacts, checkpoint
from pipeline.cli import COMMANDS, cli, main
from pipeline.config import resolve_config, save_config
from pipeline.errors import PipelineError
from pipeline.registry import Registry


def test_registry_rejects_duplicates_and_lists_choices():
    reg = Registry("widget")

    @reg.register("a")
    def a():
        return 1

    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(lambda: 2)
    assert reg.get("a") is a and "a" in reg and reg.names() == ["a"]
    with pytest.raises(PipelineError, match="unknown widget 'b'; choose from: a"):
        reg.get("b")


@dataclasses.dataclass
class _Cfg:
    lr: float = 0.1
    epochs: int = 10
    name: str = "x"
    milestones: list = dataclasses.field(default_factory=lambda: [0.5])
    flag: bool = False


def test_config_layers_defaults_then_yaml_then_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1e-3\nepochs: 5\nmilestones: [0.25, 0.75]\n")
    cfg = resolve_config(_Cfg, f, {"epochs": 7, "name": None, "flag": "true"})
    # YAML 1.1 reads "1e-3" as a string; the config still yields a float.
    assert cfg == _Cfg(lr=0.001, epochs=7, name="x", milestones=[0.25, 0.75], flag=True)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert resolve_config(_Cfg, tmp_path / "resolved.yaml") == cfg


def test_config_errors_name_the_file_and_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.1\nlearning_rate: 2\n")
    with pytest.raises(PipelineError, match=r"c\.yaml: unknown config key 'learning_rate'"):
        resolve_config(_Cfg, f)
    f.write_text("epochs: [1\n")
    with pytest.raises(PipelineError, match=r"c\.yaml: not valid YAML"):
        resolve_config(_Cfg, f)
    with pytest.raises(PipelineError, match="expects"):
        resolve_config(_Cfg, None, {"epochs": "ten"})
    # Wrong YAML types end in one line naming the file, the key and the value, never a traceback.
    for text, message in [("epochs: 1.5\n", "'epochs' expects an integer, got 1.5"),
                          ("lr: fast\n", "'lr' expects a number, got 'fast'"),
                          ("milestones: 0.5\n", "'milestones' expects a list, got 0.5"),
                          ("flag: maybe\n", "'flag' expects true or false, got 'maybe'"),
                          ("name: [a, b]\n", "'name' expects a string, got ['a', 'b']"),
                          ("epochs: true\n", "'epochs' expects an integer, got True")]:
        f.write_text(text)
        with pytest.raises(PipelineError, match=r"c\.yaml: config key " + re.escape(message)):
            resolve_config(_Cfg, f)
    f.write_text("epochs: 4.0\n")  # an integral float is the integer it spells
    assert resolve_config(_Cfg, f).epochs == 4


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    artifacts.atomic_write_json(target, {"v": 1})

    def boom(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        artifacts.atomic_write_json(target, {"v": 2})
    monkeypatch.undo()
    assert artifacts.read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_building_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "out"
    with artifacts.building_dir(final) as d:
        (d / "f.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with artifacts.building_dir(final) as d:
            (d / "f.txt").write_text("two")
            raise RuntimeError("stage failed")
    assert (final / "f.txt").read_text() == "one"
    with artifacts.building_dir(final) as d:
        (d / "f.txt").write_text("three")
    assert (final / "f.txt").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_npy_roundtrip_refuses_pickled_objects(tmp_path):
    artifacts.atomic_save_npy(tmp_path / "ids.npy", np.array(["a", "bb"]))
    assert artifacts.load_npy(tmp_path / "ids.npy").tolist() == ["a", "bb"]
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PipelineError, match="obj.npy: not a readable .npy"):
        artifacts.load_npy(tmp_path / "obj.npy")


def test_manifest_records_input_hashes(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"abc")
    (tmp_path / "out.txt").write_text("x")
    artifacts.write_manifest(tmp_path, "unit", inputs=[src], outputs=["out.txt"], config={"a": 1})
    m = artifacts.read_json(tmp_path / "manifest.json")
    # sha256("abc"), a published test vector (FIPS 180-2 appendix B.1)
    assert m["inputs"][0]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert m["stage"] == "unit" and m["config"] == {"a": 1} and m["outputs"][0]["bytes"] == 1


def test_checkpoint_prefixes_stripped_and_bad_files_named(tmp_path):
    state = {"_orig_mod.module.fc.weight": torch.zeros(1), "module.bn.running_mean": torch.ones(1)}
    assert sorted(checkpoint.clean_state_dict(state)) == ["bn.running_mean", "fc.weight"]
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(PipelineError, match="best.pt: not a loadable checkpoint"):
        checkpoint.load_checkpoint(bad)
    checkpoint.save_checkpoint(tmp_path / "ok.pt", {"arch": "x", "model": {"w": torch.ones(2)},
                                                    "rng": {"torch": torch.get_rng_state()}})
    loaded = checkpoint.load_checkpoint(tmp_path / "ok.pt")
    assert loaded["format_version"] == checkpoint.FORMAT_VERSION and loaded["model"]["w"].sum() == 2


def test_cli_lists_every_command_and_reports_errors_in_one_line(capsys):
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
    with pytest.raises(SystemExit) as exc:
        main(["info", "--model", "no_such_model"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown model 'no_such_model'")
