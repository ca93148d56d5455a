"""`make quality`: the real-data run. ResNet-20, 10 epochs, full 45k/5k split of the shared CIFAR-10
bundle on this machine, then TTA predictions and a validated predictions.csv.

Each stage is the CLI a user would type, run as a subprocess and timed; the figures (val accuracy,
wall time per stage and in all) are printed and written to bench/results/<date>-<host>-quality.json.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.artifacts import atomic_write_json, read_json  # noqa: E402


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
    parser.add_argument("--run", default="quality-resnet20")
    parser.add_argument("--tta", default="none,flip,flip+shift")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--runs-dir", default="checkpoints")
    args = parser.parse_args()

    data_dir = Path(args.data_root) / args.competition
    submission = Path("submissions") / f"{args.run}-predictions.csv"
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if (REPO / data_dir / "meta.json").is_file() and read_json(REPO / data_dir / "meta.json").get("limit") is None:
        print(f"== data: {data_dir} already prepared from the full bundle, reused")
        timings["data"] = 0.0
    else:
        stage("data", ["data", "--competition", args.competition, "--source", args.source,
                       "--data-root", args.data_root], timings)
    stage("train", ["train", "--config", args.config, "--data", str(data_dir), "--run", args.run,
                    "--out-dir", args.runs_dir, "--overwrite"], timings)
    stage("predict", ["predict", "--run", args.run, "--runs-dir", args.runs_dir, "--tta", args.tta], timings)
    stage("ensemble", ["ensemble", args.run, "--runs-dir", args.runs_dir, "--out", str(submission)], timings)
    stage("validate", ["validate", str(submission), "--data", str(data_dir)], timings)
    total = round(time.perf_counter() - start, 1)

    run_dir = REPO / args.runs_dir / args.run
    train_manifest = read_json(run_dir / "manifest.json")
    predicted = read_json(run_dir / "predict.json")
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
        "config": args.config, "best_val_acc": train_manifest["metrics"].get("best_val_acc"),
        "tta_val_acc": predicted.get("val_accuracy"), "seconds": timings, "total_seconds": total,
    }
    print("\n" + json.dumps(result, indent=2))
    out = REPO / "bench" / "results" / f"{dt.date.today().isoformat()}-{platform.node()}-quality.json"
    atomic_write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
