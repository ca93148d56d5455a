"""`make quality CONFIG=configs/<name>.yaml`: one recipe end to end on the shared CIFAR-10 bundle.

data (reused when the full bundle is already prepared) -> train (the 45k/5k split) -> predict with
every TTA level -> ensemble (this run alone) -> validate, each stage the CLI a user would type, run
as a subprocess and timed. `--final-fit` then retrains the same config on all 50,000 labelled
images (no val split: its val figure is the held-out model's) and writes the submission from it.
The figures (val accuracy per TTA level, wall time per stage, img/s, machine) are printed and
written to bench/results/<date>-<host>-<run>.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import machine_summary
from pipeline.artifacts import atomic_write_json, read_json, sha256_file
from pipeline.config import load_yaml
from pipeline.run_layout import MANIFEST, PREDICT_JSON
from pipeline.train.logbook import read_metrics

REPO = Path(__file__).resolve().parents[1]


def stage(name: str, args: list[str], timings: dict[str, float]) -> None:
    cmd = [sys.executable, "-m", "pipeline", *args]
    print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"== {name} took {timings[name]:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the Kaggle-style CIFAR-10 zip")
    parser.add_argument("--competition", default="cifar10-jpg")
    parser.add_argument("--config", default="configs/resnet20-cpu-quality.yaml")
    parser.add_argument("--run", default=None, help="run name (default quality-<config name>[-s<seed>])")
    parser.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    parser.add_argument("--tta", default="none,flip,flip+shift,airbench")
    parser.add_argument("--checkpoint", default="last", help="best (picked on val: optimistic) or last")
    parser.add_argument("--final-fit", action="store_true",
                        help="then retrain on all 50,000 labelled images and submit that model")
    parser.add_argument("--train-arg", action="append", default=[], help="extra train flag, repeatable")
    parser.add_argument("--out", default=None, help="figures JSON (default bench/results/<date>-<host>-<run>.json)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--runs-dir", default="checkpoints")
    args = parser.parse_args()

    config = load_yaml(REPO / args.config)
    run = args.run or f"quality-{Path(args.config).stem}" + (f"-s{args.seed}" if args.seed is not None else "")
    data_dir = Path(args.data_root) / args.competition
    submission = Path("submissions") / f"{run}-predictions.csv"
    seed_args = ["--seed", str(args.seed)] if args.seed is not None else []
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if (REPO / data_dir / "meta.json").is_file() and read_json(REPO / data_dir / "meta.json").get("limit") is None:
        print(f"== data: {data_dir} already prepared from the full bundle, reused")
        timings["data"] = 0.0
    else:
        stage("data", ["data", "--competition", args.competition, "--source", args.source,
                       "--data-root", args.data_root], timings)
    train_args = ["train", "--config", args.config, "--data", str(data_dir), "--out-dir", args.runs_dir,
                  "--overwrite", *seed_args, *args.train_arg]
    stage("train", [*train_args, "--run", run], timings)
    stage("predict", ["predict", "--run", run, "--runs-dir", args.runs_dir, "--tta", args.tta,
                      "--checkpoint", args.checkpoint], timings)
    submitted = run
    if args.final_fit:
        submitted = f"{run}-full"
        stage("train_full", [*train_args, "--run", submitted, "--final-fit"], timings)
        stage("predict_full", ["predict", "--run", submitted, "--runs-dir", args.runs_dir, "--tta",
                               tta_most_complete(args.tta), "--checkpoint", "last"], timings)
    stage("ensemble", ["ensemble", submitted, "--runs-dir", args.runs_dir, "--out", str(submission)], timings)
    stage("validate", ["validate", str(submission), "--data", str(data_dir)], timings)
    total = round(time.perf_counter() - start, 1)

    run_dir = REPO / args.runs_dir / run
    train_manifest = read_json(run_dir / MANIFEST)
    predicted = read_json(run_dir / PREDICT_JSON)
    history = train_manifest["metrics"].get("final") or {}
    rows = read_metrics(run_dir)
    speeds = sorted(r["img_per_s"] for r in rows)
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
        "machine": machine_summary(), "config": args.config, "run": run, "model": config.get("model"),
        "config_sha256": sha256_file(REPO / args.config), "settings_sha256": settings_sha256(REPO / args.config),
        "seed": args.seed if args.seed is not None else config.get("seed", 0),
        "epochs": config.get("epochs"), "checkpoint": args.checkpoint, "train_args": args.train_arg,
        "final_val_acc": history.get("val_acc"), "best_val_acc": train_manifest["metrics"].get("best_val_acc"),
        "tta_val_acc": predicted.get("metrics", {}).get("val_accuracy"), "tta_saved": predicted.get("tta"),
        "train_img_per_s": speeds[len(speeds) // 2] if speeds else None,
        "seconds": timings, "total_seconds": total, "submission": str(submission),
        "submitted_run": submitted,
        "val_note": ("val figures are the held-out model's; the submitted model was refit on all "
                     "labelled images" if args.final_fit else "val figures are the submitted model's"),
    }
    print("\n" + json.dumps(result, indent=2))
    out = Path(args.out) if args.out else (REPO / "bench" / "results" /
                                           f"{dt.date.today().isoformat()}-{platform.node()}-{run}.json")
    atomic_write_json(out, result)
    print(f"wrote {out}")


def settings_sha256(config: Path) -> str:
    """sha256 of a config's settings (its parsed keys and values): editing a comment changes the
    file's sha256 but not the experiment, so it must not force a rerun."""
    import hashlib

    settings = load_yaml(config)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def tta_most_complete(levels: str) -> str:
    from pipeline.tta import most_complete, parse_levels

    return most_complete(parse_levels([levels]))


if __name__ == "__main__":
    main()
