"""`make quality CONFIG=configs/<name>.yaml`: one recipe end to end on the shared CIFAR-10 bundle.

data -> train (the 45k/5k split) -> predict with every TTA level -> ensemble (this run alone) ->
validate, each the Makefile's own stage (bench/chain.py) with this recipe's variables, and timed:
make reruns what is stale and reuses the rest, so a recipe whose whole chain is up to date keeps
the figures it has. `--final-fit` then retrains the same config on all 50,000 labelled images (no
val split: its val figure is the held-out model's) and writes the submission from it. The figures
(val accuracy per TTA level, wall time per stage, img/s, machine) are printed and written to
bench/results/<date>-<host>-<run>.json (or --out).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

from bench.chain import REPO, Chain
from bench.machine import machine_summary
from pipeline.artifacts import atomic_write_json, read_json, sha256_file
from pipeline.config import load_yaml
from pipeline.records import curve_from_metrics
from pipeline.run_layout import MANIFEST, PREDICT_JSON
from pipeline.train.logbook import read_metrics
from pipeline.train.probe import rate_of


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=None, help="the Kaggle-style CIFAR-10 zip (make quality gives the "
                                                       "shared bundle; none for a built-in competition)")
    parser.add_argument("--competition", default="cifar10-jpg")
    parser.add_argument("--config", default="configs/resnet20-cpu-quality.yaml")
    parser.add_argument("--run", default=None, help="run name (default quality-<config name>[-s<seed>])")
    parser.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    parser.add_argument("--tta", default="none,flip,flip+shift,airbench")
    parser.add_argument("--checkpoint", default="last", help="best (picked on val: optimistic) or last")
    parser.add_argument("--final-fit", action="store_true",
                        help="then retrain on all 50,000 labelled images and submit that model")
    parser.add_argument("--train-arg", action="append", default=[], help="extra train flag, repeatable")
    parser.add_argument("--rerun", action="store_true", help="retrain even where the run is up to date")
    parser.add_argument("--out", default=None, help="figures JSON (default bench/results/<date>-<host>-<run>.json)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--runs-dir", default="checkpoints")
    parser.add_argument("--params-dir", default=".make", help="where make keeps each stage's last arguments")
    parser.add_argument("--submissions-dir", default="submissions")
    parser.add_argument("--make-var", action="append", default=[], metavar="KEY=VALUE",
                        help="another variable for every make call (e.g. LOCAL_MK=...), repeatable")
    return parser.parse_args(argv)


def chains(args: argparse.Namespace, run: str) -> list[tuple[str, str, Chain]]:
    """(stage name, make target, the chain's variables for it), in order."""
    seed = ["--seed", str(args.seed)] if args.seed is not None else []
    common = {"COMPETITION": args.competition, **({"SOURCE": args.source} if args.source else {}),
              "DATA_ROOT": args.data_root, "RUNS_DIR": args.runs_dir, "PARAMS_DIR": args.params_dir,
              "CONFIG": args.config, "SUBMISSION": str(submission_path(args, run)),
              **dict(item.split("=", 1) for item in args.make_var)}
    what_if = (args.config,) if args.rerun else ()
    held_out = Chain({**common, "RUN": run, "TRAIN_ARGS": " ".join([*seed, *args.train_arg]), "TTA": args.tta,
                      "CHECKPOINT": args.checkpoint}, what_if)
    steps = [("data", "data", held_out), ("train", "train", held_out), ("predict", "predict", held_out)]
    submitted = held_out
    if args.final_fit:
        submitted = Chain({**common, "RUN": f"{run}-full", "TTA": tta_most_complete(args.tta), "CHECKPOINT": "last",
                           "TRAIN_ARGS": " ".join([*seed, *args.train_arg, "--final-fit"])}, what_if)
        steps += [("train_full", "train", submitted), ("predict_full", "predict", submitted)]
    blend = Chain({**submitted.variables, "RUNS": submitted.variables["RUN"]}, what_if)
    return [*steps, ("ensemble", "ensemble", blend), ("validate", "validate", blend)]


def submission_path(args: argparse.Namespace, run: str) -> Path:
    return Path(args.submissions_dir) / f"{run}-predictions.csv"


def figures_path(args: argparse.Namespace, run: str) -> Path:
    return Path(args.out) if args.out else (REPO / "bench" / "results" /
                                            f"{dt.date.today().isoformat()}-{platform.node()}-{run}.json")


def up_to_date(args: argparse.Namespace, run: str) -> bool:
    """The recipe's figures exist and make would rerun none of its stages."""
    return figures_path(args, run).is_file() and all(
        chain.up_to_date(target) for name, target, chain in chains(args, run) if name != "validate")


def run_name(args: argparse.Namespace) -> str:
    return args.run or f"quality-{Path(args.config).stem}" + (f"-s{args.seed}" if args.seed is not None else "")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = run_name(args)
    out = figures_path(args, run)
    if not args.rerun and up_to_date(args, run):
        print(f"== {run}: up to date (make would rerun nothing); figures kept in {out}")
        return
    config = load_yaml(REPO / args.config)
    # a stage make finds up to date keeps the seconds it took when it last ran (None: not known)
    timings: dict[str, float | None] = dict(read_json(out).get("seconds", {})) if out.is_file() else {}
    start = time.perf_counter()
    for name, target, chain in chains(args, run):
        if chain.up_to_date(target) and name != "validate":
            print(f"== {name}: up to date, not rerun", flush=True)
            timings.setdefault(name, None)
        else:
            timings[name] = chain.run(target)
    submitted = f"{run}-full" if args.final_fit else run
    submission = submission_path(args, run)
    total = round(time.perf_counter() - start, 1)

    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
        "machine": machine_summary(), "config": args.config, "run": run, "model": config.get("model"),
        "config_sha256": sha256_file(REPO / args.config),
        "seed": args.seed if args.seed is not None else config.get("seed", 0),
        # the epochs the run trained (a --train-arg --epochs N or a time budget changes the config's)
        "recipe_epochs": config.get("epochs"), "checkpoint": args.checkpoint, "train_args": args.train_arg,
        **run_figures(REPO / args.runs_dir / run, default_epochs=config.get("epochs")),
        "train_images": read_json(REPO / args.data_root / args.competition / "meta.json")["counts"]["train"],
        "seconds": timings, "total_seconds": total, "submission": str(submission),
        "submitted_run": submitted,
        "val_note": ("val figures are the held-out model's; the submitted model was refit on all "
                     "labelled images" if args.final_fit else "val figures are the submitted model's"),
    }
    print("\n" + json.dumps(result, indent=2))
    atomic_write_json(out, result)
    print(f"wrote {out}")


def run_figures(run_dir: Path, default_epochs: float | None = None) -> dict:
    """A trained and predicted run's accuracies and speed, read from its own files (also what
    bench/device_check.py reports per recipe), with its per-epoch curve and the probe's img/s
    beside the epochs' own (how far the probe missed them is --recipe auto's correction)."""
    train_manifest = read_json(run_dir / MANIFEST)
    predicted = read_json(run_dir / PREDICT_JSON)
    history = train_manifest["metrics"].get("final") or {}
    rows = read_metrics(run_dir)
    speeds = sorted(r["img_per_s"] for r in rows)
    return {"epochs": train_manifest.get("config", {}).get("epochs", default_epochs),
            "final_val_acc": history.get("val_acc"), "best_val_acc": train_manifest["metrics"].get("best_val_acc"),
            "tta_val_acc": predicted.get("metrics", {}).get("val_accuracy"), "tta_saved": predicted.get("tta"),
            "train_img_per_s": speeds[len(speeds) // 2] if speeds else None,
            "probe_img_per_s": rate_of(train_manifest.get("probe") or {}),
            "curve": curve_from_metrics(rows)}


def tta_most_complete(levels: str) -> str:
    from pipeline.tta import most_complete, parse_levels

    return most_complete(parse_levels([levels]))


if __name__ == "__main__":
    main()
