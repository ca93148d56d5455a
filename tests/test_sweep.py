"""`pipeline sweep`: flag parsing, the results table, Optuna bookkeeping (resume, pruning, failures)
with a stand-in trainer that writes real metrics files, and a real 4-trial digits sweep killed
after its first trial and resumed."""
from __future__ import annotations

import math
import csv
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.errors import PipelineError
from pipeline.sweep import results
from pipeline.sweep.spec import Range, SweepSpec, parse_grid, parse_ranges, parse_scalar, parse_sets, trial_config
from pipeline.sweep.study import make_sampler, run_sweep
from pipeline.train import logbook

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text, value", [
    ("1e-4", 0.0001), ("0.1", 0.1), ("3", 3), ("true", True), ("False", False), ("relu", "relu"),
    ("null", None), ("5e-4", 0.0005), ("timm:resnet18", "timm:resnet18"),
])
def test_parse_scalar_reads_yaml_scalars_and_exponent_floats(text, value):
    parsed = parse_scalar(text)
    assert parsed == value and type(parsed) is type(value)


def test_parse_scalar_refuses_lists():
    with pytest.raises(PipelineError, match="single value"):
        parse_scalar("[1, 2]")


def test_parse_grid_keeps_order_types_and_model_options():
    grid = parse_grid(["lr=0.1,0.05,0.01", "weight-decay=1e-4,0", "model_opts.bn=true,false",
                       "model_opts.act=relu,swish"])
    assert list(grid) == ["lr", "weight_decay", "model_opts.bn", "model_opts.act"]
    assert grid["lr"] == [0.1, 0.05, 0.01]
    assert grid["weight_decay"] == [0.0001, 0]
    assert grid["model_opts.bn"] == [True, False]
    assert grid["model_opts.act"] == ["relu", "swish"]


@pytest.mark.parametrize("items, message", [
    (["lr"], "KEY=VALUE"),
    (["lr="], "KEY=VALUE"),
    (["learning_rate=0.1,0.2"], "unknown key 'learning_rate'|'learning_rate': unknown key"),
    (["run=a,b"], "set by the sweep"),
    (["model_opts=1,2"], "model_opts.<name>"),
    (["lr=0.1,,0.2"], "empty value"),
    (["lr=0.1,0.1"], "listed twice"),
    (["lr=0.1", "lr=0.2"], "given twice"),
])
def test_parse_grid_errors(items, message):
    with pytest.raises(PipelineError, match=message):
        parse_grid(items)


def test_parse_ranges():
    ranges = parse_ranges(["lr=1e-3:1:log", "epochs=2:8:int", "momentum=0.8:0.99"])
    assert ranges == {"lr": Range(0.001, 1.0, log=True), "epochs": Range(2.0, 8.0, integer=True),
                      "momentum": Range(0.8, 0.99)}
    assert ranges["epochs"].distribution().low == 2 and ranges["lr"].distribution().log


@pytest.mark.parametrize("item, message", [
    ("lr=1:0.1", "LOW must be below HIGH"),
    ("lr=0:1:log", "LOW > 0"),
    ("lr=1e-3", "LOW:HIGH"),
    ("lr=1e-3:1:square", "LOW:HIGH"),
    ("epochs=1.5:3:int", "whole-number"),
    ("lr=a:b", "must be numbers"),
])
def test_parse_range_errors(item, message):
    with pytest.raises(PipelineError, match=message):
        parse_ranges([item])


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "nothing to sweep"),
    (dict(ranges={"lr": Range(0.1, 1)}), "needs --random"),
    (dict(n_random=3), "to sample from"),
    (dict(n_random=0, grid={"lr": [1]}), "N >= 1"),
    (dict(n_random=2, grid={"lr": [1, 2]}, ranges={"lr": Range(0.1, 1)}), "both --grid and --range"),
    (dict(grid={"lr": [1, 2]}, fixed={"lr": 3}), "fixed with --set"),
])
def test_spec_validation(kwargs, message):
    with pytest.raises(PipelineError, match=message):
        SweepSpec(name="s", **kwargs)


def test_spec_name_must_be_a_folder_name():
    with pytest.raises(PipelineError, match="--name"):
        SweepSpec(name="../evil", grid={"lr": [1]})


def test_trial_config_layers_base_file_set_and_params(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"model": "simplenn", "lr": 0.3, "epochs": 9,
                                    "model_opts": {"bn": True, "act": "relu"}}))
    spec = SweepSpec(name="s", base_config=str(base), grid={"lr": [0.05], "model_opts.act": ["swish"]},
                     fixed=parse_sets(["epochs=2", "weight_decay=0"]), out_dir=str(tmp_path / "runs"))
    cfg = trial_config(spec, {"lr": 0.05, "model_opts.act": "swish"}, run="s-3", resume=True)
    assert (cfg.lr, cfg.epochs, cfg.weight_decay) == (0.05, 2, 0.0)
    assert isinstance(cfg.weight_decay, float)  # a YAML 0 becomes the field's float
    assert cfg.model_opts == {"bn": True, "act": "swish"}
    assert (cfg.run, cfg.out_dir, cfg.resume, cfg.model) == ("s-3", str(tmp_path / "runs"), True, "simplenn")


# ------------------------------------------------------------------------------ the table


def _row(trial, acc, state="COMPLETE"):
    return {"trial": trial, "run": f"s-{trial}", "lr": 0.1, "best_val_acc": acc, "best_epoch": 1,
            "epochs": 2, "wall_s": 1.5, "state": state, "error": ""}


def test_sort_rows_best_first_missing_last_ties_by_trial():
    rows = [_row(0, None, "FAIL"), _row(1, 0.5), _row(2, float("nan"), "RUNNING"), _row(3, 0.9), _row(4, 0.5)]
    assert [r["trial"] for r in results.sort_rows(rows)] == [3, 1, 4, 0, 2]


def test_results_csv_and_markdown():
    rows = results.sort_rows([_row(0, 0.25), _row(1, 0.75), {**_row(2, None, "FAIL"), "error": "PipelineError: bad"}])
    parsed = list(csv.DictReader(io.StringIO(results.results_csv(rows, ["lr"]))))
    assert list(parsed[0]) == ["trial", "run", "lr", "best_val_acc", "best_epoch", "epochs", "wall_s", "state", "error"]
    assert [(r["trial"], r["best_val_acc"], r["state"]) for r in parsed] == [
        ("1", "0.75", "COMPLETE"), ("0", "0.25", "COMPLETE"), ("2", "", "FAIL")]
    md = results.results_markdown(rows, ["lr"], "demo")
    lines = md.splitlines()
    assert lines[0] == "# Sweep demo"
    assert "3 trials (2 complete, 1 fail)" in md
    assert "| 1 | s-1 | 0.1 | 0.7500 | 1 | 2 | 1.5 | COMPLETE |" in lines
    assert "| 2 | s-2 | 0.1 | - | 1 | 2 | 1.5 | FAIL |" in lines
    assert "- trial 2: PipelineError: bad" in lines


# ------------------------------------------------------------------------------ bookkeeping with a stand-in trainer


class FakeTrainer:
    """Writes a run folder the way the engine does (metrics via the engine's logbook, last.pt),
    calls on_epoch_end per epoch, and can be told to fail or be interrupted.

    val_acc(epoch) = score(cfg) * epoch / epochs, so the table order is known in advance.
    """

    def __init__(self, score=None, interrupt_at=None, fail_if=None):
        self.score = score or (lambda cfg: 0.5 + cfg.lr)
        self.interrupt_at = interrupt_at  # (call index, epoch): KeyboardInterrupt after that epoch
        self.fail_if = fail_if or (lambda cfg: False)
        self.calls: list[tuple[str, bool, int]] = []  # (run, resume, first epoch trained)

    def __call__(self, cfg, on_epoch_end=None):
        run_dir = Path(cfg.out_dir) / cfg.run
        history = logbook.read_metrics(run_dir) if cfg.resume else []
        held = [name for name in ("last.pt", "best.pt") if (run_dir / name).exists()]
        if held and not (cfg.resume or cfg.overwrite):  # as the engine refuses
            raise PipelineError(f"{run_dir}: already holds {', '.join(held)}")
        call = len(self.calls)
        self.calls.append((cfg.run, cfg.resume, len(history) + 1))
        if self.fail_if(cfg):
            raise PipelineError(f"bad config for {cfg.run}")
        run_dir.mkdir(parents=True, exist_ok=True)
        for epoch in range(len(history) + 1, math.ceil(cfg.epochs) + 1):
            acc = round(self.score(cfg) * epoch / cfg.epochs, 6)
            history.append({"epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": acc, "val_loss": 1.0 / epoch,
                            "val_acc": acc, "lr": cfg.lr, "seconds": 0.5, "img_per_s": 100.0})
            logbook.write_metrics(run_dir, history, plot=False)
            (run_dir / "best.pt").write_bytes(b"epoch %d" % epoch)  # val_acc rises every epoch
            (run_dir / "last.pt").write_bytes(b"epoch %d" % epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch, history[-1])
            if self.interrupt_at == (call, epoch):
                raise KeyboardInterrupt
        best = max(history, key=lambda r: r["val_acc"])
        return {"run_dir": str(run_dir), "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
                "epochs_run": len(history), "wall_seconds": 1.0, "stopped_early": False}


def _spec(tmp_path, name="s", **kw):
    kw.setdefault("grid", {"lr": [0.1, 0.2], "weight_decay": [0.0, 0.001]})
    kw.setdefault("fixed", {"epochs": 2, "model": "simplenn"})
    return SweepSpec(name=name, out_dir=str(tmp_path / "runs"), **kw)


def _table(tmp_path, name="s"):
    return list(csv.DictReader((tmp_path / "sweeps" / name / "results.csv").open()))


def test_grid_sweep_table_and_run_folders(tmp_path):
    trainer = FakeTrainer()
    rows = run_sweep(_spec(tmp_path), sweeps_dir=tmp_path / "sweeps", train_fn=trainer)
    assert len(trainer.calls) == 4
    assert sorted((r["lr"], r["weight_decay"]) for r in rows) == [(0.1, 0.0), (0.1, 0.001), (0.2, 0.0), (0.2, 0.001)]
    assert [r["best_val_acc"] for r in rows] == [0.7, 0.7, 0.6, 0.6]  # 0.5 + lr, best first
    assert all(r["state"] == "COMPLETE" and r["best_epoch"] == 2 and r["epochs"] == 2 for r in rows)
    table = _table(tmp_path)
    assert [row["run"] for row in table] == [r["run"] for r in rows]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["s-0", "s-1", "s-2", "s-3"]
    manifest = yaml.safe_load((tmp_path / "sweeps" / "s" / "manifest.json").read_text())
    assert manifest["stage"] == "sweep" and manifest["metrics"]["best_val_acc"] == 0.7
    # Running it again finds nothing to do.
    again = FakeTrainer()
    assert len(run_sweep(_spec(tmp_path), sweeps_dir=tmp_path / "sweeps", train_fn=again)) == 4
    assert again.calls == []


def test_interrupted_sweep_resumes_the_open_trial_and_runs_only_the_rest(tmp_path):
    first = FakeTrainer(interrupt_at=(2, 1))  # Ctrl-C after epoch 1 of the third trial
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_spec(tmp_path), sweeps_dir=tmp_path / "sweeps", train_fn=first)
    table = _table(tmp_path)
    assert sorted(row["state"] for row in table) == ["COMPLETE", "COMPLETE", "RUNNING"]
    interrupted = first.calls[2][0]

    second = FakeTrainer()
    rows = run_sweep(_spec(tmp_path), sweeps_dir=tmp_path / "sweeps", train_fn=second)
    # The open trial continues from its last.pt at epoch 2, then the one point never started.
    assert second.calls[0] == (interrupted, True, 2)
    assert len(second.calls) == 2 and second.calls[1][1] is False
    done_before = {run for run, _, _ in first.calls[:2]}
    assert not done_before & {run for run, _, _ in second.calls}
    assert len(rows) == 4 and all(r["state"] == "COMPLETE" for r in rows)
    assert len({(r["lr"], r["weight_decay"]) for r in rows}) == 4
    assert len(list((tmp_path / "runs").iterdir())) == 4
    assert len(_table(tmp_path)) == 4


def test_trial_killed_before_its_first_last_pt_starts_afresh(tmp_path):
    first = FakeTrainer(interrupt_at=(0, 1))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_spec(tmp_path, grid={"lr": [0.1, 0.2]}), sweeps_dir=tmp_path / "sweeps", train_fn=first)
    run = first.calls[0][0]
    (tmp_path / "runs" / run / "last.pt").unlink()  # killed between epoch 1's best.pt and last.pt
    second = FakeTrainer()
    rows = run_sweep(_spec(tmp_path, grid={"lr": [0.1, 0.2]}), sweeps_dir=tmp_path / "sweeps", train_fn=second)
    assert second.calls[0] == (run, False, 1)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]


def test_trial_of_a_dead_process_is_taken_over_but_a_live_ones_is_not(tmp_path):
    import optuna

    spec = _spec(tmp_path, grid={"lr": [0.1, 0.2, 0.3]})
    run_sweep(spec, sweeps_dir=tmp_path / "sweeps", train_fn=FakeTrainer(), max_trials=1)
    storage = f"sqlite:///{tmp_path / 'sweeps' / 's' / 'study.db'}"
    study = optuna.load_study(study_name="s", storage=storage, sampler=make_sampler(spec, 0))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claims = {"dead": int(dead.stdout), "alive": os.getppid()}
    numbers = {}
    for who, pid in claims.items():
        trial = study.ask(spec.distributions())
        for key, value in {"run": f"s-{trial.number}", "host": socket.gethostname(), "pid": pid}.items():
            trial.set_user_attr(key, value)
        numbers[who] = trial.number
    trainer = FakeTrainer()
    rows = run_sweep(spec, sweeps_dir=tmp_path / "sweeps", train_fn=trainer)
    assert [run for run, _, _ in trainer.calls] == [f"s-{numbers['dead']}"]
    states = {r["trial"]: r["state"] for r in rows}
    assert states[numbers["dead"]] == "COMPLETE" and states[numbers["alive"]] == "RUNNING"


def test_random_search_draws_new_points_after_a_restart(tmp_path):
    spec = _spec(tmp_path, grid={}, ranges={"lr": Range(0.001, 0.1, log=True)}, n_random=3)
    run_sweep(spec, sweeps_dir=tmp_path / "sweeps", train_fn=FakeTrainer(), max_trials=2)
    rows = run_sweep(spec, sweeps_dir=tmp_path / "sweeps", train_fn=FakeTrainer())
    lrs = [r["lr"] for r in rows]
    assert len(rows) == 3 and len(set(lrs)) == 3 and all(0.001 <= lr <= 0.1 for lr in lrs)


def test_median_pruner_stops_a_trial_below_the_median(tmp_path):
    order = iter([0.9, 0.8, 0.85, 0.1])  # the fourth trial is far below the others
    scores = {}

    def score(cfg):  # fixed per run, in the order the trials start
        if cfg.run not in scores:
            scores[cfg.run] = next(order)
        return scores[cfg.run]

    spec = _spec(tmp_path, grid={"seed": [0, 1, 2, 3]}, fixed={"epochs": 4, "model": "simplenn"}, prune=True)
    rows = run_sweep(spec, sweeps_dir=tmp_path / "sweeps", train_fn=FakeTrainer(score=score))
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    assert len(pruned) == 1 and pruned[0]["run"] == [run for run, s in scores.items() if s == 0.1][0]
    # --prune-warmup 1: epoch 1 is never pruned, epoch 2 is the first that can be.
    assert pruned[0]["epochs"] == 2 and pruned[0]["best_val_acc"] == pytest.approx(0.05)
    assert rows[-1]["state"] == "PRUNED"


def test_failed_trial_is_tabulated_and_the_others_run(tmp_path):
    trainer = FakeTrainer(fail_if=lambda cfg: cfg.lr == 0.2 and cfg.weight_decay == 0.0)
    rows = run_sweep(_spec(tmp_path), sweeps_dir=tmp_path / "sweeps", train_fn=trainer)
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert len(failed) == 1 and failed[0]["error"].startswith("PipelineError: bad config for")
    assert rows[-1] is failed[0]
    assert sum(r["state"] == "COMPLETE" for r in rows) == 3
    assert "Errors:" in (tmp_path / "sweeps" / "s" / "results.md").read_text()


def test_all_trials_failing_is_an_error(tmp_path):
    with pytest.raises(PipelineError, match="all 4 trials failed"):
        run_sweep(_spec(tmp_path), sweeps_dir=tmp_path / "sweeps", train_fn=FakeTrainer(fail_if=lambda cfg: True))


def test_rerun_with_another_search_space_is_refused(tmp_path):
    run_sweep(_spec(tmp_path, grid={"lr": [0.1]}), sweeps_dir=tmp_path / "sweeps", train_fn=FakeTrainer())
    with pytest.raises(PipelineError, match="different grid"):
        run_sweep(_spec(tmp_path, grid={"lr": [0.1, 0.2]}), sweeps_dir=tmp_path / "sweeps", train_fn=FakeTrainer())
    with pytest.raises(PipelineError, match=r"base config \(epochs\)"):
        run_sweep(_spec(tmp_path, grid={"lr": [0.1]}, fixed={"epochs": 5, "model": "simplenn"}),
                  sweeps_dir=tmp_path / "sweeps", train_fn=FakeTrainer())


def test_new_study_refuses_to_reuse_existing_run_folders(tmp_path):
    (tmp_path / "runs" / "s-0").mkdir(parents=True)
    with pytest.raises(PipelineError, match="run folders s-0 exist"):
        run_sweep(_spec(tmp_path), sweeps_dir=tmp_path / "sweeps", train_fn=FakeTrainer())


def test_unknown_model_option_is_caught_before_any_training(tmp_path):
    trainer = FakeTrainer()
    with pytest.raises(PipelineError, match="has no option widht"):
        run_sweep(_spec(tmp_path, grid={"model_opts.widht": [1, 2]}), sweeps_dir=tmp_path / "sweeps", train_fn=trainer)
    assert trainer.calls == []


# ------------------------------------------------------------------------------ the real thing: digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    subprocess.run([sys.executable, "-m", "pipeline", "data", "--competition", "digits", "--data-root", str(root),
                    "--limit", "200"], cwd=REPO, check=True, capture_output=True)
    return root / "digits"


def _sweep_cmd(tmp_path, base):
    return [sys.executable, "-m", "pipeline", "sweep", "--name", "dg", "--base-config", str(base),
            "--grid", "lr=0.1,0.05", "--grid", "model_opts.bn=true,false",
            "--sweeps-dir", str(tmp_path / "sweeps"), "--out-dir", str(tmp_path / "runs")]


def test_digits_sweep_killed_after_first_trial_resumes(digits, tmp_path, caplog):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "data": str(digits), "model": "simplenn", "epochs": 1, "batch_size": 60, "precision": "fp32",
        "channels_last": False, "workers": 0, "device": "cpu", "augment": "none", "lr": 0.05,
    }))
    proc = subprocess.Popen(_sweep_cmd(tmp_path, base), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    done_before = []
    try:
        for line in proc.stderr:  # one line per trial: "trial N RUN [...] val_acc ... COMPLETE"
            match = re.search(r"trial (\d+) (\S+) .* COMPLETE", line)
            if match:
                done_before.append(int(match.group(1)))
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert done_before, "the sweep never completed a trial"
    best_before = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/best.pt")}

    from pipeline.sweep import command

    caplog.set_level(logging.INFO, logger="pipeline.sweep")
    result = CliRunner().invoke(command, _sweep_cmd(tmp_path, base)[4:], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ran_now = [int(m.group(1)) for m in (re.search(r"^trial (\d+) .* COMPLETE", r.getMessage()) for r in caplog.records) if m]
    assert sorted(ran_now + done_before) == [0, 1, 2, 3]
    table = _table(tmp_path, "dg")
    assert len(table) == 4 and all(row["state"] == "COMPLETE" for row in table)
    accs = [float(row["best_val_acc"]) for row in table]
    assert accs == sorted(accs, reverse=True) and all(0 <= a <= 1 for a in accs)
    assert {(row["lr"], row["model_opts.bn"]) for row in table} == {
        ("0.1", "True"), ("0.1", "False"), ("0.05", "True"), ("0.05", "False")}
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [f"dg-{i}" for i in range(4)]
    for name, mtime in best_before.items():
        if int(name.split("-")[1]) in done_before:  # a completed trial's files are never touched again
            assert (tmp_path / "runs" / name / "best.pt").stat().st_mtime_ns == mtime
    assert "| trial | run | lr | model_opts.bn |" in result.output
