"""`make bench-probe`: is the probe's img/s the speed real epochs train at? (issue 25)

`--time-budget` plans a run from the probe's img/s (bare training steps on one fixed batch: no
loader, augmentation or per-epoch evaluation), and `--recipe auto` falls back on it where this
machine has no leaderboard records. For each recipe this trains a short budgeted run on the
shared bundle with a fresh probe cache (so the probe measures, at the run's real batch, as a
budgeted run does) and sets the probe's figure beside the img/s of the first real epochs (the
metrics' own figure, training steps with the loader in the loop). The ratio is the planner's
honesty correction; within 10% (0.9-1.1) the probe may be trusted as it is. Writes
bench/results/probe_honesty.json. Minutes of CPU per recipe: run it on an idle machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.chain import REPO, Chain
from bench.machine import machine_summary
from pipeline.artifacts import atomic_write_json, read_json
from pipeline.run_layout import MANIFEST
from pipeline.train.logbook import read_metrics
from pipeline.train.probe import rate_of

RECIPES = ("configs/airbench94.yaml", "configs/airbench94-muon.yaml", "configs/resnet20-cpu-quality.yaml")


def measure(config: str, args: argparse.Namespace) -> dict:
    run = f"probe-honesty-{Path(config).stem}"
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: the probe measures, as on a first run
        cmd = [sys.executable, "-m", "pipeline", "train", "--config", config, "--data", f"data/{args.competition}",
               "--run", run, "--out-dir", args.runs_dir, "--time-budget", str(args.budget), "--overwrite"]
        print("==", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PIPELINE_CACHE_DIR": cache})
    run_dir = REPO / args.runs_dir / run
    probe = read_json(run_dir / MANIFEST).get("probe") or {}
    epochs = [r["img_per_s"] for r in read_metrics(run_dir)][:args.epochs]
    real = statistics.median(epochs) if epochs else None
    rate = rate_of(probe)
    ratio = real / rate if real and rate else None
    return {"config": config, "probe_img_per_s": rate, "probe_choice": probe.get("choice"),
            "probe_batch": probe.get("batch"), "epochs_img_per_s": epochs, "real_img_per_s": real,
            "ratio_real_over_probe": ratio, "within_10pct": ratio is not None and 0.9 <= ratio <= 1.1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the Kaggle-style CIFAR-10 zip")
    parser.add_argument("--competition", default="cifar10-jpg")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--budget", type=float, default=300, help="seconds per run (a few epochs)")
    parser.add_argument("--epochs", type=int, default=2, help="first real epochs to compare against")
    parser.add_argument("--runs-dir", default="checkpoints")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "probe_honesty.json"))
    args = parser.parse_args(argv)
    Chain({"COMPETITION": args.competition, "SOURCE": args.source}).run("data")
    rows = [measure(config, args) for config in args.recipes]
    for r in rows:
        ratio = f"{r['ratio_real_over_probe']:.2f}" if r["ratio_real_over_probe"] else "-"
        print(f"{Path(r['config']).stem}: probe {r['probe_img_per_s']} img/s, first epochs {r['epochs_img_per_s']} "
              f"img/s: real/probe {ratio} ({'within' if r['within_10pct'] else 'NOT within'} 10%)")
    atomic_write_json(args.out, {"machine": machine_summary(), "budget_s": args.budget, "recipes": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
