"""`make leaderboard`: the recipes that fit this machine, each end to end, plus their greedy ensemble.

Each (recipe, seed) is one `bench/quality.py` run (data -> train -> predict with every TTA level ->
validate, the Makefile's stages) into checkpoints/lb-<recipe>-s<seed>; make decides what is stale,
so a run it finds up to date keeps its figures and an interrupted leaderboard continues. Then every
run is blended with Caruana's greedy selection (`make ensemble ENSEMBLE_ARGS="--select greedy"`).
Greedy selection fits its weights on val, so its val accuracy flatters it; the table also gives a
cross-fitted figure (select on one half of val, score on the other, both ways) and says plainly
whether that beats the best single run.

Writes bench/results/leaderboard.md and .json and, with --readme, the table between the
leaderboard markers of README.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bench.chain import REPO, Chain
from bench.machine import machine_summary
from pipeline.artifacts import atomic_write_json, atomic_write_text, read_json
from pipeline.ensemble import combine, correct_count
from pipeline.info import markdown_table
from pipeline.run_layout import VAL_LABELS, VAL_LOGITS

# PATH[:SEEDS]: airbench94's target is a mean over 2 seeds at least; a GPU runs 5 of everything.
CPU_RECIPES = ("configs/airbench94.yaml:2", "configs/airbench94-muon.yaml", "configs/resnet20-cpu-quality.yaml")
GPU_RECIPES = ("configs/airbench94.yaml", "configs/airbench94-muon.yaml", "configs/resnet20-cpu-quality.yaml",
               "configs/resnet20-gpu-fast.yaml", "configs/resnet56-gpu-ensemble.yaml")
README_START, README_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"


def run_name(config: str, seed: int) -> str:
    return f"lb-{Path(config).stem}-s{seed}"


def run_recipe(args, config: str, seed: int, results_dir: Path) -> dict:
    """The recipe's figures: quality.py runs what make finds stale (nothing when all is up to date)."""
    run = run_name(config, seed)
    out = results_dir / f"{run}.json"
    cmd = [sys.executable, "-m", "bench.quality", "--source", args.source, "--config", config,
           "--seed", str(seed), "--run", run, "--out", str(out), "--runs-dir", args.runs_dir,
           "--tta", args.tta, *(["--rerun"] if args.rerun else [])]
    print(f"\n== {run}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return read_json(out)


def ensemble(args, runs: list[str]) -> dict:
    out = REPO / "submissions" / "leaderboard-predictions.csv"
    Chain({"RUNS": " ".join(runs), "RUNS_DIR": args.runs_dir, "SUBMISSION": str(out.relative_to(REPO)),
           "ENSEMBLE_ARGS": f"--select greedy --rounds {args.rounds}"}).run("ensemble")
    sidecar = read_json(out.with_name(out.stem + ".ensemble.json"))
    folders = [REPO / args.runs_dir / run for run in runs]
    labels = np.load(folders[0] / VAL_LABELS)
    val_logits = [np.load(f / VAL_LOGITS) for f in folders]
    members = {m["run"]: m["val_accuracy"] for m in sidecar["members"]}
    plain = correct_count(combine("prob", val_logits, np.ones(len(runs))), labels) / len(labels)
    return {"runs": runs, "weights": sidecar["weights"], "greedy_val_acc": sidecar["val_accuracy"],
            "crossfit_val_acc": sidecar["val_accuracy_crossfit"],
            "mean_of_all_val_acc": plain, "best_member": max(members, key=members.get),
            "best_member_val_acc": max(members.values()), "submission": str(out.relative_to(REPO))}


def pct(value) -> str:
    return f"{100 * value:.2f}" if value is not None else "-"


def whole(value) -> str:
    # a stage make found up to date on a run's first figures has no seconds: "-"
    return f"{value:.0f}" if value is not None else "-"


def recipe_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    by_config: dict[str, list[dict]] = {}
    for r in results:
        by_config.setdefault(r["config"], []).append(r)
    for config, group in by_config.items():
        def mean(values):
            values = [v for v in values if v is not None]
            return statistics.fmean(values) if values else None

        best_level = max(group[0]["tta_val_acc"], key=lambda lv: mean(g["tta_val_acc"][lv] for g in group))
        rows.append([
            Path(config).stem, f"{group[0]['epochs']:g}", ", ".join(str(g["seed"]) for g in group),
            pct(mean(g["tta_val_acc"].get("none") for g in group)),
            pct(mean(g["tta_val_acc"].get("flip") for g in group)),
            f"{pct(mean(g['tta_val_acc'][best_level] for g in group))} ({best_level})",
            whole(mean(g["seconds"].get("train") for g in group)),
            whole(mean(g["seconds"].get("predict") for g in group)),
            whole(mean(g["train_img_per_s"] for g in group)),
        ])
    return rows


def render(results: list[dict], blend: dict | None, machine: dict) -> str:
    headers = ["recipe", "epochs", "seeds", "val none %", "val flip %", "val best TTA %", "train s",
               "predict s", "train img/s"]
    lines = [f"Measured {dt.date.today().isoformat()} on {machine['label']}, torch {machine['torch']}; "
             "shared CIFAR-10 bundle (JPEG), 45,000 train / 5,000 val images, final weights "
             "(--checkpoint last); val accuracy is the mean over seeds.", "",
             markdown_table(headers, recipe_rows(results))]
    if blend is not None:
        verdict = ("beats" if blend["crossfit_val_acc"] > blend["best_member_val_acc"] else "does not beat")
        weights = ", ".join(f"{run} x{w:g}" for run, w in zip(blend["runs"], blend["weights"]) if w)
        lines += ["", f"Greedy ensemble ({weights}): {pct(blend['greedy_val_acc'])}% val with weights fitted on "
                  f"val (optimistic); cross-fitted (fit on half of val, score on the other half) "
                  f"{pct(blend['crossfit_val_acc'])}%; plain mean of all runs {pct(blend['mean_of_all_val_acc'])}%. "
                  f"Best single run: {blend['best_member']} {pct(blend['best_member_val_acc'])}%, so the "
                  f"ensemble {verdict} its best member (cross-fitted figure)."]
    return "\n".join(lines) + "\n"


def update_readme(table: str) -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme}: no {README_START} ... {README_END} markers to put the table between")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    atomic_write_text(readme, f"{head}{README_START}\n{table}{README_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the Kaggle-style CIFAR-10 zip")
    on_gpu = torch.cuda.is_available()
    parser.add_argument("--recipes", nargs="+", default=list(GPU_RECIPES if on_gpu else CPU_RECIPES),
                        metavar="CONFIG[:SEEDS]")
    parser.add_argument("--seeds", type=int, default=5 if on_gpu else 1, help="seeds of a recipe without :N")
    parser.add_argument("--tta", default="none,flip,flip+shift,airbench")
    parser.add_argument("--rounds", type=int, default=20, help="greedy selection rounds")
    parser.add_argument("--runs-dir", default="checkpoints")
    parser.add_argument("--rerun", action="store_true", help="retrain even where make finds a run up to date")
    parser.add_argument("--no-readme", dest="readme", action="store_false")
    args = parser.parse_args()

    results_dir = REPO / "bench" / "results" / "leaderboard"
    plan = []
    for item in args.recipes:
        config, _, count = item.partition(":")
        plan += [(config, seed) for seed in range(int(count) if count else args.seeds)]
    results = [run_recipe(args, config, seed, results_dir) for config, seed in plan]
    runs = [r["run"] for r in results]
    blend = ensemble(args, runs) if len(runs) > 1 else None
    machine = machine_summary()
    table = render(results, blend, machine)
    print("\n" + table)
    atomic_write_text(REPO / "bench" / "results" / "leaderboard.md", table)
    atomic_write_json(REPO / "bench" / "results" / "leaderboard.json",
                      {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine,
                       "runs": results, "ensemble": blend})
    if args.readme:
        update_readme(table)
        print("README.md leaderboard table updated")


if __name__ == "__main__":
    main()
