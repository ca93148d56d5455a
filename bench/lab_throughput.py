"""`make bench-lab`: each CIFAR-10 lab's model trained through the lab runner vs a bare loop, same run.

The lab side is the real path: the lab's base configuration at full scale as one unit
(pipeline.lab.run.train_unit: the engine with its probe, loader and augmentation policy, per-epoch
evaluation, checkpoints, the result file), EPOCHS epochs on the prepared data. Two figures come
from it: the training phase's img/s (the engine's own per-epoch figure over the epochs after the
first, evaluation left out) and the whole unit's (every image trained over the unit's wall time:
start-up, evaluation and files included). The bare side is bench.engine_overhead's loop with the
unit's resolved settings (precision, memory format, optimizer, schedule) over batches the same
policy augmented beforehand: the maths alone, one warm-up pass then EPOCHS - 1 timed ones. The ratio
lab / bare says how far a lab runs from the speed of its FLOPs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.engine_overhead import bare_side
from bench.machine import machine_summary
from pipeline.artifacts import atomic_write_json
from pipeline.lab.run import LabRun, lab_folder, train_unit
from pipeline.lab.spec import load_lab
from pipeline.report.runs import read_config
from pipeline.sweep.spec import train_config

LABS = ("ece661-simplenn", "ece590-lenet5", "cs535-cnn4", "cmpe597-cnn3")


def lab_side(name: str, data: str, epochs: int, work: Path) -> dict:
    spec = load_lab(name)
    lab = LabRun(spec, "full", lab_folder(name, "full", work / "sweeps"), data,
                 {"epochs": epochs, "early_stop_patience": 0}, 1, work / "results")
    point = base_point(spec)
    unit = lab.units(point)[0]
    started = time.perf_counter()
    _, error = train_unit(lab, unit)
    wall = time.perf_counter() - started
    if error:
        raise SystemExit(f"{name}: the lab unit failed: {error}")
    result = json.loads(unit.path(lab.results).read_text(encoding="utf-8"))
    rows = result["epochs"]
    trained = sum(r["img_per_s"] * r["seconds"] for r in rows)
    steady = rows[1:] or rows  # the first epoch pays for oneDNN's primitive creation; the bare side warms up too
    return {"unit": unit.name, "settings": lab.settings(point), "run_dir": lab.runs_dir / unit.name,
            "train_img_per_s": sum(r["img_per_s"] * r["seconds"] for r in steady) / sum(r["seconds"] for r in steady),
            "unit_img_per_s": trained / wall, "wall_s": wall, "runtime": result["runtime"]}


def base_point(spec):
    """The preset's own base configuration (a variant that changes nothing), else its first point."""
    points = spec.points("full")
    for exp in spec.experiments:
        for var in exp.variants:
            if not var.overrides:
                return points[(exp.name, var.label)]
    return spec.unique_points("full")[0]


def bare_loop(run_dir: Path, settings: dict, data: str, epochs: int) -> float:
    """img/s of the unit's maths alone: its resolved config, pre-augmented batches, a for loop."""
    from pipeline.data.dataset import load_prepared

    resolved = read_config(run_dir)
    cfg = train_config({**settings, "precision": resolved["precision"],
                        "channels_last": resolved["channels_last"], "flip_mode": resolved["flip_mode"]})
    images, labels, _ = load_prepared(data).subset("train")
    device = torch.device("cpu")
    steps = len(images) // cfg.batch_size
    window = bare_side(cfg, np.ascontiguousarray(images), np.asarray(labels), device, steps)
    window()  # warm-up pass: allocator, oneDNN primitives (the lab side's probe did the same)
    rates = []
    for _ in range(max(epochs - 1, 1)):  # as many timed passes as the lab side's steady epochs
        started = time.perf_counter()
        rates.append(window() / (time.perf_counter() - started))
    return sum(rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/cifar10-jpg", help="a prepared CIFAR-10 folder (make data)")
    parser.add_argument("--labs", default=",".join(LABS))
    parser.add_argument("--epochs", type=int, default=3, help="per side; the first is a warm-up on both")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not (Path(args.data) / "meta.json").is_file():
        raise SystemExit(f"{args.data}: no prepared data; make data COMPETITION=cifar10-jpg "
                         "SOURCE=../shared/competitions/cifar10-jpg/cifar10-jpg.zip")
    machine = machine_summary()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        for name in args.labs.split(","):
            lab = lab_side(name, args.data, args.epochs, Path(tmp))
            bare = bare_loop(lab["run_dir"], lab["settings"], args.data, args.epochs)
            rows[name] = {"model": lab["settings"]["model"], "augment": lab["settings"]["augment"],
                          "batch_size": lab["settings"]["batch_size"], "runtime": lab["runtime"],
                          "lab_train_img_per_s": round(lab["train_img_per_s"], 1),
                          "lab_unit_img_per_s": round(lab["unit_img_per_s"], 1),
                          "bare_img_per_s": round(bare, 1), "unit_wall_s": round(lab["wall_s"], 1),
                          "ratio_train": round(lab["train_img_per_s"] / bare, 3),
                          "ratio_unit": round(lab["unit_img_per_s"] / bare, 3)}
            r = rows[name]
            runtime = f"{r['runtime']['precision']}{' channels_last' if r['runtime']['channels_last'] else ''}"
            print(f"{name:<16} {r['model']:<9} {r['augment']:<9} batch {r['batch_size']:<4} {runtime:<20} "
                  f"lab {r['lab_train_img_per_s']:8.0f} img/s training "
                  f"({r['lab_unit_img_per_s']:.0f} over the whole unit, {r['unit_wall_s']:.0f} s) | bare "
                  f"{r['bare_img_per_s']:8.0f} img/s | ratio {r['ratio_train']:.2f} ({r['ratio_unit']:.2f})",
                  flush=True)
    print(f"machine: {machine['label']}, torch threads {torch.get_num_threads()}")
    out = Path(args.out) if args.out else (Path(__file__).parent / "results" /
                                           f"{dt.date.today().isoformat()}-{platform.node()}-lab-throughput.json")
    atomic_write_json(out, {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine,
                            "settings": vars(args), "labs": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
