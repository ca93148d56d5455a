"""`make leaderboard`: the recipes that fit this machine, each end to end, plus their greedy ensemble.

Each (recipe, seed) is one `bench/quality.py` run (data -> train -> predict with every TTA level ->
validate, the Makefile's stages) into checkpoints/lb-<recipe>-s<seed>; make decides what is stale,
so a run it finds up to date keeps its figures and an interrupted leaderboard continues. Then every
run is blended with Caruana's greedy selection (`make ensemble ENSEMBLE_ARGS="--select greedy"`).
Greedy selection fits its weights on val, so its val accuracy flatters it; the table also gives a
cross-fitted figure (select on one half of val, score on the other, both ways) and says plainly
whether that beats the best single run.

Each run's figures, with its per-epoch curve, are also kept as a record in the tracked folder
results/leaderboard/<machine_id>/ (pipeline/records.py), where `train --recipe auto` plans from them;
a recipe may run at another epoch count (PATH@EPOCHS) so that it has several points. The
accuracy-vs-time frontier of this machine's records is drawn to bench/results/leaderboard.png
(--from-records: only that, from the records, training nothing). --blend RUN... blends runs already
trained here, from their records, so that runs made over several sessions form one ensemble.

Writes bench/results/leaderboard.md and .json and, with --readme, the table and the picture between
the leaderboard markers of README.md.
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
from pipeline import records as lb_records
from pipeline.config import load_yaml
from pipeline.artifacts import (atomic_write_bytes, atomic_write_json, atomic_write_text, read_json,
                                write_between_markers)
from pipeline.ensemble import combine, correct_count
from pipeline.info import markdown_table
from pipeline.run_layout import VAL_LABELS, VAL_LOGITS

# PATH[@EPOCHS][:SEEDS]: airbench94's target is a mean over 2 seeds at least; a GPU runs 5 of everything.
CPU_RECIPES = ("configs/airbench94.yaml:2", "configs/airbench94-muon.yaml", "configs/resnet20-cpu-quality.yaml")
GPU_RECIPES = ("configs/airbench94.yaml", "configs/airbench94-muon.yaml", "configs/resnet20-cpu-quality.yaml",
               "configs/resnet20-gpu-fast.yaml", "configs/resnet56-gpu-ensemble.yaml")
README_START, README_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"


PNG = REPO / "bench" / "results" / "leaderboard.png"


def run_name(config: str, seed: int, epochs: float | None = None) -> str:
    """lb-<recipe>[-e<epochs>]-s<seed>: a recipe at another epoch count is another run."""
    return f"lb-{Path(config).stem}{f'-e{epochs:g}' if epochs is not None else ''}-s{seed}"


def parse_recipe(item: str, seeds: int) -> list[tuple[str, float | None, int]]:
    """'configs/x.yaml@5:2' -> [(configs/x.yaml, 5.0, 0), (configs/x.yaml, 5.0, 1)]; no @: the config's epochs."""
    head, _, count = item.partition(":")
    config, _, epochs = head.partition("@")
    try:
        return [(config, float(epochs) if epochs else None, seed) for seed in range(int(count) if count else seeds)]
    except ValueError:
        raise SystemExit(f"--recipes {item}: expected CONFIG[@EPOCHS][:SEEDS], e.g. configs/airbench94.yaml@5:2")


def run_recipe(args, config: str, epochs: float | None, seed: int, results_dir: Path) -> dict:
    """The recipe's figures: quality.py runs what make finds stale (nothing when all is up to date);
    kept as this machine's record too."""
    run = run_name(config, seed, epochs)
    out = results_dir / f"{run}.json"
    cmd = [sys.executable, "-m", "bench.quality", "--source", args.source, "--config", config,
           "--seed", str(seed), "--run", run, "--out", str(out), "--runs-dir", args.runs_dir,
           "--tta", args.tta, *([f"--train-arg=--epochs {epochs:g}"] if epochs is not None else []),
           *(["--rerun"] if args.rerun else [])]
    print(f"\n== {run}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    result = read_json(out)
    machine = result["machine"]
    lb_records.write_record(REPO / args.records, machine["id"], {**result, "source": "make leaderboard",
                                                                 "machine_label": machine["label"]})
    return result


def ensemble_record(blend: dict, results: list[dict]) -> dict:
    """The blend as a record: its cross-fitted accuracy for the training time of the runs it takes
    (weight > 0); `offered_seconds` is every run it chose from, the budget a user spends to get it."""
    members = [run for run, w in zip(blend["runs"], blend["weights"]) if w]
    return {"kind": "ensemble", "members": members, "val_acc": blend["crossfit_val_acc"],
            "greedy_val_acc": blend["greedy_val_acc"], "seconds": train_seconds(results, members),
            "offered": list(blend["runs"]), "offered_seconds": train_seconds(results, blend["runs"]),
            "date": dt.datetime.now().isoformat(timespec="seconds"), "source": "make leaderboard"}


def train_seconds(results: list[dict], runs: list[str]) -> float:
    """The training time of `runs` in all, from their figures (0 for a run make found up to date)."""
    return sum((r.get("seconds") or {}).get("train") or 0.0 for r in results if r["run"] in runs)


def recorded_runs(root: Path, machine: dict, runs: list[str]) -> list[dict]:
    """--blend: the records of runs already trained on this machine, in the order given."""
    by_run = {r.get("run"): r for r in this_machine(root, machine)[0]}
    missing = [run for run in runs if run not in by_run]
    if missing:
        raise SystemExit(f"--blend {' '.join(missing)}: no record of this run in {root}/{machine['id']}/ "
                         f"({machine['label']}); `make leaderboard` trains a run and writes its record")
    return [by_run[run] for run in runs]


def draw_frontier(root: Path, machine: dict, png: Path = PNG) -> Path | None:
    """bench/results/leaderboard.png from this machine's records; None when it has none."""
    from pipeline import plots

    found = lb_records.points(lb_records.read_records(root), machine["id"])
    if not found:
        return None
    front = lb_records.pareto(found)
    atomic_write_bytes(png, plots.frontier(found, front, f"CIFAR-10 recipes on {machine['label']}"))
    print(f"{png}: {len(found)} points, frontier: " + ", ".join(p.label for p in front))
    return png


def budget_plan(args, machine: dict) -> list[tuple[str, float | None, int]]:
    """--ensemble-budget S: the diverse runs whose expected training time (this machine's records)
    sums to at most S (pipeline/ensemble_plan.py), as (config, epochs, seed)."""
    from pipeline.ensemble_plan import plan

    members = plan(lb_records.read_records(REPO / args.records), machine["id"], args.ensemble_budget,
                   args.train_images, args.records)
    total = sum(m.seconds for m in members)
    print(f"ensemble plan for {args.ensemble_budget:g} s of training: " + ", ".join(
        f"{Path(m.config).stem} {m.epochs:g} ep seed {m.seed} (~{m.seconds:.0f} s, {100 * m.acc:.1f}%)"
        for m in members) + f"; ~{total:.0f} s expected", flush=True)
    # at the config's own epochs a member is the plain run (lb-<recipe>-s<seed>), reused if made before
    return [(m.config, None if m.epochs == load_yaml(REPO / m.config).get("epochs") else m.epochs, m.seed)
            for m in members]


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
    by_config: dict[tuple, list[dict]] = {}
    for r in results:
        by_config.setdefault((r["config"], r["epochs"]), []).append(r)
    for (config, _), group in by_config.items():
        def mean(values):
            values = [v for v in values if v is not None]
            return statistics.fmean(values) if values else None

        best_level = max(group[0]["tta_val_acc"], key=lambda lv: mean(g["tta_val_acc"].get(lv) for g in group))
        rows.append([
            Path(config).stem, f"{group[0]['epochs']:g}", ", ".join(str(g["seed"]) for g in group),
            pct(mean(g["tta_val_acc"].get("none") for g in group)),
            pct(mean(g["tta_val_acc"].get("flip") for g in group)),
            f"{pct(mean(g['tta_val_acc'].get(best_level) for g in group))} ({best_level})",
            whole(mean((g.get("seconds") or {}).get("train") for g in group)),
            whole(mean((g.get("seconds") or {}).get("predict") for g in group)),
            whole(mean(g.get("train_img_per_s") for g in group)),
        ])
    return rows


def ensemble_rows(ensembles: list[dict]) -> list[list[str]]:
    """An ensemble record as a table row: its cross-fitted accuracy for its members' training time."""
    return [[f"ensemble of {len(e['members'])}", "-", "-", "-", "-", f"{pct(e['val_acc'])} (cross-fitted)",
             whole(e.get("seconds")), "-", "-"] for e in ensembles]


def this_machine(root: Path, machine: dict) -> tuple[list[dict], list[dict]]:
    """This machine's records, (runs, ensembles): the table shows all it has measured, not one call's."""
    here = [r for r in lb_records.read_records(root) if r["machine_id"] == machine["id"]]
    return [r for r in here if r.get("kind") != "ensemble"], [r for r in here if r.get("kind") == "ensemble"]


def render(results: list[dict], blend: dict | None, machine: dict, ensembles: list[dict] = ()) -> str:
    headers = ["recipe", "epochs", "seeds", "val none %", "val flip %", "val best TTA %", "train s",
               "predict s", "train img/s"]
    dates = sorted(str(r.get("date", ""))[:10] for r in [*results, *ensembles] if r.get("date")) or \
        [dt.date.today().isoformat()]
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    lines = [f"Measured {when} on {machine['label']}, torch {machine['torch']}; shared CIFAR-10 bundle (JPEG), "
             "45,000 train / 5,000 val images, final weights (--checkpoint last); val accuracy is the mean over "
             "seeds; the records in results/leaderboard/ of this machine, each kept from the run that made it.", "",
             markdown_table(headers, recipe_rows(results) + ensemble_rows(list(ensembles)))]
    if blend is not None:
        verdict = ("beats" if blend["crossfit_val_acc"] > blend["best_member_val_acc"] else "does not beat")
        weights = ", ".join(f"{run} x{w:g}" for run, w in zip(blend["runs"], blend["weights"]) if w)
        train_s = train_seconds(results, blend["runs"])
        lines += ["", f"**Ensemble: {pct(blend['crossfit_val_acc'])}% val, cross-fitted** (greedy weights fitted on "
                  f"one half of val and scored on the other, both ways) from {train_s / 60:.0f} min of training in "
                  f"all ({weights}); with weights fitted on all of val {pct(blend['greedy_val_acc'])}% "
                  f"(optimistic); plain mean of all runs {pct(blend['mean_of_all_val_acc'])}%. Best single run: "
                  f"{blend['best_member']} {pct(blend['best_member_val_acc'])}%, so the ensemble {verdict} its best "
                  "member (cross-fitted figure)."]
    return "\n".join(lines) + "\n"


def update_readme(table: str) -> None:
    write_between_markers(REPO / "README.md", README_START, README_END, table)


PICTURE = ("![Accuracy (val, best TTA, mean over seeds) against training time of every recipe, epoch count "
           "and ensemble measured on this machine; the dashed line is the frontier]"
           "(bench/results/leaderboard.png)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="the Kaggle-style CIFAR-10 zip (not needed with --from-records)")
    on_gpu = torch.cuda.is_available()
    parser.add_argument("--recipes", nargs="+", default=list(GPU_RECIPES if on_gpu else CPU_RECIPES),
                        metavar="CONFIG[@EPOCHS][:SEEDS]")
    parser.add_argument("--seeds", type=int, default=5 if on_gpu else 1, help="seeds of a recipe without :N")
    parser.add_argument("--tta", default="none,flip,flip+shift,airbench")
    parser.add_argument("--rounds", type=int, default=20, help="greedy selection rounds")
    parser.add_argument("--ensemble-budget", type=float, default=0.0, metavar="SECONDS",
                        help="instead of --recipes: the diverse runs whose expected training time on this "
                             "machine (its records) fits SECONDS in all, then their blend")
    parser.add_argument("--blend", nargs="+", metavar="RUN",
                        help="instead of --recipes: blend runs already trained here (their records give the "
                             "training time; make re-predicts what is stale), training nothing")
    parser.add_argument("--train-images", type=int, default=45_000, help="images per epoch the plan assumes")
    parser.add_argument("--runs-dir", default="checkpoints")
    parser.add_argument("--records", default=str(lb_records.RECORDS_DIR), help="the tracked records' folder")
    parser.add_argument("--rerun", action="store_true", help="retrain even where make finds a run up to date")
    parser.add_argument("--from-records", action="store_true",
                        help="only redraw bench/results/leaderboard.png and README's table from this machine's "
                             "records (no training)")
    parser.add_argument("--png", default=str(PNG), help="where the frontier picture goes")
    parser.add_argument("--no-readme", dest="readme", action="store_false")
    args = parser.parse_args(argv)
    if not args.from_records and not args.blend and not args.source:
        parser.error("--source is required (or --from-records, --blend)")
    if args.blend and len(args.blend) < 2:
        parser.error("--blend needs two runs or more")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_summary()
    if args.from_records:
        if draw_frontier(REPO / args.records, machine, Path(args.png)) is None:
            raise SystemExit(f"{args.records}/{machine['id']}: no records of this machine "
                             f"({machine['label']}) to draw; `make leaderboard` writes them")
        if args.readme:
            runs_here, ensembles_here = this_machine(REPO / args.records, machine)
            update_readme(render(runs_here, None, machine, ensembles_here) + f"\n{PICTURE}\n")
            print("README.md leaderboard table and picture redrawn from the records")
        return
    results_dir = REPO / "bench" / "results" / "leaderboard"
    if args.blend:
        results = recorded_runs(REPO / args.records, machine, args.blend)
    else:
        plan = budget_plan(args, machine) if args.ensemble_budget else \
            [run for item in args.recipes for run in parse_recipe(item, args.seeds)]
        results = [run_recipe(args, config, epochs, seed, results_dir) for config, epochs, seed in plan]
    runs = [r["run"] for r in results]
    blend = ensemble(args, runs) if len(runs) > 1 else None
    if blend is not None:
        lb_records.write_record(REPO / args.records, machine["id"], ensemble_record(blend, results))
    runs_here, ensembles_here = this_machine(REPO / args.records, machine)
    table = render(runs_here, blend, machine, ensembles_here)
    print("\n" + table)
    atomic_write_text(REPO / "bench" / "results" / "leaderboard.md", table)
    atomic_write_json(REPO / "bench" / "results" / "leaderboard.json",
                      {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine,
                       "runs": results, "ensemble": blend})
    drawn = draw_frontier(REPO / args.records, machine, Path(args.png))
    if args.readme:
        update_readme(table + (f"\n{PICTURE}\n" if drawn else ""))
        print("README.md leaderboard table updated")


if __name__ == "__main__":
    main()
