"""--recipe auto (issue 25): the recipe and epochs chosen for a time budget from planted leaderboard
records, its one line, and the CLI and Makefile that run it on tiny data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.machine import machine_id
from pipeline.records import Point, pareto, points, read_records, record_name
from pipeline.train.recipe_auto import choose, expected_acc

REPO = Path(__file__).resolve().parents[1]
HERE, THERE = "this-machine-00000000", "other-machine-11111111"


def record(config, epochs, acc, train_s=None, seed=0, curve_s=None, images=45000, **extra):
    r = {"config": config, "epochs": epochs, "seed": seed, "tta_val_acc": {"none": acc - 0.005, "airbench": acc},
         "seconds": {"train": train_s} if train_s else {}, "train_images": images, **extra}
    if curve_s is not None:  # seconds spent inside the epochs (the rest is start-up and write-up)
        r["curve"] = [{"epoch": 1, "val_acc": acc, "seconds": curve_s}]
    return r


def plant(root: Path, machine: str, *records) -> Path:
    for r in records:
        path = root / machine / record_name(r)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    return root


@pytest.fixture
def board(tmp_path):
    """fast: 5 epochs 0.88 / 10 epochs 0.90 at 50 s per epoch + 20 s fixed (this machine);
    slow: 10 epochs 0.92, 120 s per epoch here; deep: measured only elsewhere (no speed here)."""
    return plant(tmp_path / "lb", HERE,
                 record("fast.yaml", 5, 0.88, 270, curve_s=250), record("fast.yaml", 10, 0.90, 520, curve_s=500),
                 record("slow.yaml", 10, 0.92, 1220, curve_s=1200))


def pick(root, budget, images=45000, rate=lambda c: None):
    return choose(read_records(root), HERE, budget, images, rate, root)


def test_the_best_recipe_that_fits_each_budget(board):
    assert (pick(board, 2000).config, pick(board, 2000).epochs) == ("slow.yaml", 10)
    long_does_not_fit = pick(board, 1000)  # slow needs 1220 s: the fast recipe at its longest
    assert (long_does_not_fit.config, long_does_not_fit.epochs) == ("fast.yaml", 10)


def test_between_measured_counts_accuracy_is_interpolated_and_never_extrapolated(board):
    chosen = pick(board, 400)  # 20 + 50 E <= 400 -> E = 7.6
    assert chosen.config == "fast.yaml" and chosen.epochs == pytest.approx(7.6)
    assert chosen.max_epochs == 10  # the run may stretch to the most epochs measured, if it runs fast
    assert chosen.acc == pytest.approx(0.88 + 0.02 * 2.6 / 5)
    assert expected_acc([(5, 0.88), (10, 0.90)], 12) is None and expected_acc([(5, 0.88), (10, 0.90)], 4) is None
    with pytest.raises(PipelineError, match="fits 200 s"):
        pick(board, 200)  # 5 epochs, the fewest measured, need 270 s


def test_other_machines_give_accuracy_but_never_time(board, tmp_path):
    plant(board, THERE, record("slow.yaml", 5, 0.91, 10, curve_s=5),  # a far faster machine
          record("deep.yaml", 10, 0.99, 100, curve_s=90))
    chosen = pick(board, 700)  # slow from 5 epochs (0.91, the other machine's), 20 + 120 s per epoch here
    assert (chosen.config, chosen.epochs) == ("slow.yaml", 5.6) and chosen.seconds == pytest.approx(692)
    assert "time: 1 run on this machine" in chosen.line()
    assert pick(board, 700).config != "deep.yaml"  # no speed known here for deep


def test_without_records_here_time_comes_from_the_probe_corrected_by_what_records_show(tmp_path):
    root = plant(tmp_path / "lb", THERE, record("a.yaml", 4, 0.8, 100), record("a.yaml", 8, 0.85, 200))
    plant(root, HERE, record("b.yaml", 1, 0.5, 100, probe_img_per_s=1000, train_img_per_s=500))
    chosen = pick(root, 600, images=45000, rate=lambda c: 1000.0 if c == "a.yaml" else None)
    # 1000 img/s probe x 0.5 (this machine's real epochs ran at half the probe's speed): 90 s per epoch
    assert (chosen.config, chosen.epochs) == ("a.yaml", 6.6) and "probe 1000 img/s x 0.50" in chosen.line()


def test_the_one_line(board):
    line = pick(board, 2000).line()
    assert line == ("recipe auto: slow at 10 epochs (expected 92.0% val with TTA, ~1220 s of 2000 s; "
                    "accuracy: 1 run; time: 1 run on this machine)")
    assert "\n" not in line


def test_no_records_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(PipelineError, match=f"no leaderboard records in {tmp_path / 'none'}/"):
        pick(tmp_path / "none", 600)


def test_frontier_points_are_this_machines_means_and_the_pareto_front(board):
    plant(board, HERE, record("fast.yaml", 10, 0.92, 500, seed=1, curve_s=480),
          {"kind": "ensemble", "members": ["a", "b", "c"], "val_acc": 0.93, "seconds": 1740})
    plant(board, THERE, record("fast.yaml", 2, 0.99, 1))  # another machine's: not on this one's picture
    got = points(read_records(board), HERE)
    assert [(p.label, round(p.acc, 3), p.seconds, p.runs) for p in got] == [
        ("fast 5 ep", 0.88, 270, 1), ("fast 10 ep", 0.91, 510, 2), ("slow 10 ep", 0.92, 1220, 1),
        ("ensemble of 3", 0.93, 1740, 3)]
    worse = Point("x", "x.yaml", 1, 0.80, 600, 1)  # slower than fast 10 ep and less accurate: off the front
    assert [p.label for p in pareto([*got, worse])] == ["fast 5 ep", "fast 10 ep", "slow 10 ep", "ensemble of 3"]


def tiny_recipes(tmp_path: Path) -> Path:
    """Two recipes for digits planted as this machine's records; times at CIFAR-10's 45,000 images,
    scaled to digits' 1,293 (a 90 s epoch there is ~2.6 s here)."""
    configs = tmp_path / "configs"
    configs.mkdir()
    for name, lr in (("small", 0.05), ("big", 0.05)):
        (configs / f"{name}.yaml").write_text(f"model: simplenn\nbatch_size: 64\nlr: {lr}\nworkers: 0\n"
                                              "device: cpu\naugment: standard\n")
    root = tmp_path / "lb"
    small, big = str(configs / "small.yaml"), str(configs / "big.yaml")
    return plant(root, machine_id(), record(small, 1, 0.6, 95, curve_s=90), record(small, 2, 0.7, 185, curve_s=180),
                 record(big, 2, 0.8, 20000, curve_s=19990))


def test_train_recipe_auto_runs_the_choice_and_keeps_it_in_the_config(tmp_path):
    from pipeline.data.stage import DataConfig, run as prepare

    prepare(DataConfig(competition="digits", data_root=str(tmp_path / "data")))
    root = tiny_recipes(tmp_path)
    train = [sys.executable, "-m", "pipeline", "train", "--recipe", "auto", "--time-budget", "30",
             "--records", str(root), "--data", str(tmp_path / "data" / "digits"), "--run", "a",
             "--out-dir", str(tmp_path / "ck")]
    out = subprocess.run(train, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("recipe auto:")]
    assert lines == [lines[0]] and lines[0].startswith("recipe auto: small at 2 epochs (expected 70.0% val")
    manifest = json.loads((tmp_path / "ck" / "a" / "manifest.json").read_text())
    assert manifest["config"]["recipe"] == "auto" and manifest["config"]["recipe_note"] == lines[0]
    assert manifest["config"]["model"] == "simplenn" and manifest["config"]["epochs"] == 2
    assert manifest["config"]["recipe_max_epochs"] == 2  # small's records measured 1 and 2 epochs
    assert manifest["budget"]["final_steps"] <= manifest["budget"]["plan"]["steps"]  # never past the records
    # A record written since (big's, replaced: it now fits and scores higher) must not switch the run
    # on --resume.
    plant(root, machine_id(), record(str(tmp_path / "configs" / "big.yaml"), 2, 0.8, 20, curve_s=10))
    resumed = subprocess.run([*train, "--resume"], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{lines[0]} (kept on --resume)" in resumed.stdout.splitlines()
    assert json.loads((tmp_path / "ck" / "a" / "manifest.json").read_text())["config"]["model"] == "simplenn"
    fresh = subprocess.run([*train[:-3], "b", *train[-2:]], cwd=REPO, capture_output=True, text=True)
    assert "recipe auto: big at 2 epochs" in fresh.stdout, fresh.stderr  # a new run does choose again


def test_make_train_with_only_a_budget_plans_with_recipe_auto(tmp_path):
    from tests.helpers_make import Make

    make = Make(REPO, tmp_path)
    root = tiny_recipes(tmp_path)
    make("data", "COMPETITION=digits")
    out = make("train", "COMPETITION=digits", "BUDGET=30", f"TRAIN_ARGS=--records {root}")
    assert "--recipe auto" in out.stdout and "recipe auto: small at 2 epochs" in out.stdout
    assert (tmp_path / "ck" / "digits-auto" / "manifest.json").is_file()
    missing = make("train", "COMPETITION=digits", "BUDGET=30", "RUN=b", f"TRAIN_ARGS=--records {tmp_path}/no",
                   check=False)
    assert missing.returncode != 0 and f"no leaderboard records in {tmp_path}/no/" in missing.stderr


def test_leaderboard_redraws_the_frontier_from_records_alone(tmp_path, capsys):
    from bench import leaderboard
    from bench.machine import machine_summary

    here = machine_summary()["id"]
    root = plant(tmp_path / "lb", here, record("configs/a.yaml", 4, 0.85, 300), record("configs/a.yaml", 8, 0.90, 600),
                 record("configs/b.yaml", 8, 0.88, 900))
    plant(root, THERE, record("configs/c.yaml", 1, 0.99, 10))
    png = tmp_path / "frontier.png"
    leaderboard.main(["--from-records", "--records", str(root), "--png", str(png), "--no-readme"])
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "3 points, frontier: a 4 ep, a 8 ep" in capsys.readouterr().out  # b: slower and worse; c: elsewhere
    # README's table: every run and ensemble of this machine's records, none of another machine's
    plant(root, here, {"kind": "ensemble", "members": ["r1", "r2"], "val_acc": 0.9123, "seconds": 1500})
    machine = machine_summary()
    runs, ensembles = leaderboard.this_machine(root, machine)
    table = leaderboard.render(runs, None, machine, ensembles)
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()[3:]]
    assert [(r[0], r[1], r[5], r[6]) for r in rows[1:]] == [
        ("a", "4", "85.00 (airbench)", "300"), ("a", "8", "90.00 (airbench)", "600"),
        ("b", "8", "88.00 (airbench)", "900"), ("ensemble of 2", "-", "91.23 (cross-fitted)", "1500")]
    with pytest.raises(SystemExit, match="no records of this machine"):
        leaderboard.main(["--from-records", "--records", str(tmp_path / "none"), "--png", str(png), "--no-readme"])


def test_leaderboard_blends_recorded_runs_and_counts_every_run_offered(tmp_path):
    from bench import leaderboard
    from bench.machine import machine_summary

    machine = machine_summary()
    root = plant(tmp_path / "lb", machine["id"], record("configs/a.yaml", 8, 0.90, 600, run="lb-a-s0"),
                 record("configs/b.yaml", 15, 0.91, 1500, run="lb-b-s0"),
                 record("configs/c.yaml", 4, 0.85, 200, run="lb-c-s0"))
    plant(root, THERE, record("configs/d.yaml", 4, 0.99, 10, run="lb-d-s0"))
    results = leaderboard.recorded_runs(root, machine, ["lb-b-s0", "lb-a-s0", "lb-c-s0"])
    assert [r["run"] for r in results] == ["lb-b-s0", "lb-a-s0", "lb-c-s0"]
    blend = {"runs": ["lb-b-s0", "lb-a-s0", "lb-c-s0"], "weights": [2, 1, 0], "crossfit_val_acc": 0.92,
             "greedy_val_acc": 0.925}
    rec = leaderboard.ensemble_record(blend, results)
    assert rec["members"] == ["lb-b-s0", "lb-a-s0"] and rec["seconds"] == 1500 + 600  # what the blend uses
    assert rec["offered_seconds"] == 1500 + 600 + 200  # what it was chosen from
    # a run trained only on another machine has no speed here: named, not guessed
    with pytest.raises(SystemExit, match=r"--blend lb-d-s0 lb-x-s0: no record of this run in"):
        leaderboard.recorded_runs(root, machine, ["lb-a-s0", "lb-d-s0", "lb-x-s0"])
    with pytest.raises(SystemExit):  # argparse: one run is no blend
        leaderboard.parse_args(["--blend", "lb-a-s0"])


def test_leaderboard_recipes_take_epochs_and_seeds():
    from bench.leaderboard import parse_recipe, run_name

    assert parse_recipe("configs/a.yaml@5:2", 1) == [("configs/a.yaml", 5.0, 0), ("configs/a.yaml", 5.0, 1)]
    assert parse_recipe("configs/a.yaml", 1) == [("configs/a.yaml", None, 0)]
    assert run_name("configs/a.yaml", 1, 5.0) == "lb-a-e5-s1" and run_name("configs/a.yaml", 0) == "lb-a-s0"


def test_ensemble_plan_takes_new_architectures_before_more_seeds_within_the_budget(tmp_path):
    from pipeline.ensemble_plan import plan

    root = plant(tmp_path / "lb", HERE,
                 record("a94.yaml", 10, 0.900, 850, curve_s=800, model="airbench94"),
                 record("muon.yaml", 8, 0.902, 650, curve_s=600, model="airbench94"),
                 record("r20.yaml", 10, 0.878, 1300, curve_s=1250, model="resnet20"))
    plant(root, THERE, record("wide.yaml", 15, 0.95, 100, curve_s=90, model="airbench95"))  # no time here
    members = plan(read_records(root), HERE, 3000, 45000)
    # muon first (most accurate), then resnet20 (a new architecture) although a94 is more accurate,
    # then, no new architecture left, muon's second seed; 650 + 1300 + 650 = 2600, and 400 s fits nothing
    assert [(m.config, m.seed, m.seconds) for m in members] == [
        ("muon.yaml", 0, 650), ("r20.yaml", 0, 1300), ("muon.yaml", 1, 650)]
    assert members[0].spec() == "muon.yaml@8"
    assert [m.config for m in plan(read_records(root), HERE, 1000, 45000)] == ["muon.yaml"]
    with pytest.raises(PipelineError, match="no run fits 500 s here .*muon, needs ~650 s"):
        plan(read_records(root), HERE, 500, 45000)
    with pytest.raises(PipelineError, match="no recipe with records of this machine"):
        plan(read_records(root), "a-third-machine-22222222", 3000, 45000)


def test_a_records_probe_rate_is_the_chosen_candidates_when_the_run_had_no_budget():
    from pipeline.train.probe import rate_of

    # without --time-budget the probe keeps no img_per_s of its own, only its candidates' timings
    probe = {"choice": {"precision": "bf16", "channels_last": True, "compile": False}, "img_per_s": None,
             "measured": {"fp32 channels_last": 285.9, "bf16 channels_last": 938.5}}
    assert rate_of(probe) == 938.5
    assert rate_of({**probe, "img_per_s": 700.0}) == 700.0
    assert rate_of({**probe, "choice": {"precision": "fp32", "channels_last": False, "compile": False}}) is None
    assert rate_of({}) is None
    compiled = {"choice": {"precision": "bf16", "channels_last": True, "compile": True},
                "measured": {"bf16 channels_last": 938.5, "bf16 channels_last compile": 1200.0}}
    assert rate_of(compiled) == 1200.0  # the compiled candidate's figure, not the eager one's


def test_recipe_auto_reads_the_probe_cache_of_this_machine_for_a_recipe_without_records(tmp_path):
    from pipeline.train.recipe_auto import cached_probe_rate

    fields = {"device": "cpu-x", "torch": "9.9", "model": "airbench94", "opts": {}, "batch": 1024,
              "micro_batch": 0, "input": [3, 32, 32], "optimizer": "sgd"}
    entry = {"choice": {"precision": "bf16", "channels_last": True, "compile": False}, "img_per_s": None,
             "measured": {"bf16 channels_last": 900.0}}
    cache = tmp_path / "probe.json"
    cache.write_text(json.dumps({json.dumps({**fields, "candidates": ["bf16 channels_last"]}, sort_keys=True): entry,
                                 "speeds": {"x": 1}}))
    config = {"model": "airbench94", "batch_size": 1024}
    assert cached_probe_rate(config, (3, 32, 32), "cpu-x", cache) == 900.0  # a slice's figure when no batch's
    assert cached_probe_rate({**config, "batch_size": 512}, (3, 32, 32), "cpu-x", cache) is None
    assert cached_probe_rate(config, (3, 32, 32), "cpu-y", cache) is None
