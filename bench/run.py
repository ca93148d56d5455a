"""`make bench`: ResNet-20 training and inference img/s, the naive torchvision loop vs this pipeline.

Everything runs in one process on the same CIFAR-10-shaped data (random uint8 images: throughput
does not depend on pixel values), so the ratios survive a noisy machine better than separate runs
would. Phase 1 times every variant (fp32/bf16, NCHW/channels_last, eager/compiled) as a first
`make bench` on a machine would, and records the speeds and compile times in the probe cache (a
compile costs more than any run's probe may spend). Phase 2 times the default path - what
`pipeline train` does here with no speed flags: its probe (pipeline/train/probe.py, measured afresh
in a temporary cache that keeps only those records) picks precision, memory format and compile -
beside every variant again. Variants take turns, one epoch of `window` steps each per round, so a
load change on a shared machine hits all alike; each figure is the median over rounds.
Prints default / best and default / naive; writes bench/results/<date>-<host>.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.machine import machine_summary
from bench.naive import naive_loader, naive_train_steps
from bench.timing import round_robin, sync, windows_img_per_s
from pipeline.artifacts import atomic_write_json, versions
from pipeline.augment import build_train_loader
from pipeline.models import create_model
from pipeline.predict import view_logits
from pipeline.runtime import resolve_device
from pipeline.train.config import TrainConfig
from pipeline.train import probe
from pipeline.train.epoch import train_one_epoch
from pipeline.train.trainer import build_trainer
from pipeline.train.tune import probe_key_fields, probe_step
from pipeline.tta import TTA_LEVELS, level_views

MEAN, STD = [0.491, 0.482, 0.447], [0.247, 0.243, 0.261]  # CIFAR-10 train statistics
SHAPE = (3, 32, 32)
# The run the default path is sized for: TrainConfig's 30 epochs of CIFAR-10's 45,000 training images.
DEFAULT_RUN_EPOCHS, CIFAR_TRAIN = TrainConfig().epochs, 45_000


def cifar_shaped(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def resnet20(device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = create_model("resnet20", num_classes=10, in_chans=3, input_size=SHAPE).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def bench_naive(images, labels, device, args) -> dict:
    loader = naive_loader(images, labels, MEAN, STD, batch_size=args.batch_size, workers=2)
    steps = naive_train_steps(resnet20(device, channels_last=False), loader, device)
    return windows_img_per_s(steps, device=device, warmup=args.window, window=args.window,
                             windows=args.windows)


def pipeline_epochs(images, labels, device, args, **overrides):
    """An endless stream of real training epochs (TrainConfig + overrides, the real loader,
    build_trainer, train_one_epoch) of `window` steps; each next() runs one, yields its samples.
    Per-epoch costs (shuffling, the final sync) are paid inside the measurement, as in a real run."""
    cfg = dataclasses.replace(TrainConfig(), model="resnet20", batch_size=args.batch_size,
                              device=str(device), **overrides)
    n = args.window * args.batch_size
    loader = build_train_loader(images[:n], labels[:n], policy=cfg.augment, batch_size=cfg.batch_size,
                                device=device, seed=0, workers=cfg.workers)
    model = resnet20(device, bool(cfg.channels_last))
    tr = build_trainer(cfg, model, steps_per_epoch=len(loader), num_classes=10, mean=MEAN, std=STD,
                       device=device)
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield train_one_epoch(tr, loader, epoch)["samples"]
        epoch += 1


def probe_default(device, args) -> probe.ProbeResult:
    """What `pipeline train` settles for TrainConfig's auto values here, measured afresh (a
    temporary cache), for a run long enough that the probe gets its full allowance."""
    cfg, module = default_config(args), resnet20(device, channels_last=False)

    def make_step(c: probe.Candidate, batch: int):  # the engine's own probe step
        return probe_step(cfg, module, c, batch, SHAPE, num_classes=10, mean=MEAN, std=STD,
                          steps_per_epoch=CIFAR_TRAIN // args.batch_size, device=device)

    user_cache = probe.cache_path()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / probe.CACHE_FILE
        # what this machine measured before (compile time, speeds with compile) counts, as in a real run
        for key in (probe.COMPILE_KEY, probe.SPEEDS_KEY):
            if (entry := probe.read_cache(key, user_cache)) is not None:
                probe.write_cache(key, entry, fresh)
        return probe.run_probe(precision="auto", channels_last=None, compile=None, device=device,
                               key_fields=key_fields(args), batch_size=args.batch_size, make_step=make_step,
                               run_steps=DEFAULT_RUN_EPOCHS * (CIFAR_TRAIN // args.batch_size), path=fresh)


def default_config(args) -> TrainConfig:
    """The run `pipeline train --model resnet20` makes at this batch, with no speed flags."""
    return dataclasses.replace(TrainConfig(), model="resnet20", batch_size=args.batch_size)


def key_fields(args) -> dict:
    """What the probe's cache keys hold for that run: the engine's own fields (tune.probe_key_fields)."""
    return probe_key_fields(default_config(args), SHAPE)


def warm_up(streams: dict, device: torch.device) -> dict[str, float]:
    """One untimed epoch of every stream; its seconds (a compiled variant's compile is in there)."""
    warm = {}
    for name, stream in streams.items():
        t0 = time.perf_counter()
        next(stream)
        sync(device)
        warm[name] = time.perf_counter() - t0
    return warm


def timed_rounds(streams: dict, rounds: int, device: torch.device) -> dict[str, dict]:
    """img/s of one epoch of every stream per round, taking turns; the median over rounds."""
    rates = round_robin(streams, rounds, device)
    return {name: {"img_per_s": statistics.median(r), "min": min(r), "max": max(r), "windows": r}
            for name, r in rates.items()}


def bench_inference(images, device, args, precision: str, channels_last: bool) -> dict:
    """img/s of predict's own batched, autocast, inference-mode loop for each TTA level."""
    model = resnet20(device, channels_last)
    batch = images[: args.eval_batch_size * args.infer_window]
    results = {}
    for level in TTA_LEVELS.names():
        views = level_views(level)

        def steps():
            while True:
                view_logits(model, batch, views, mean=MEAN, std=STD, device=device, precision=precision,
                            batch_size=args.eval_batch_size, channels_last=channels_last)
                yield len(batch)

        results[level] = windows_img_per_s(steps(), device=device, warmup=1, window=1, windows=args.windows)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--window", type=int, default=15, help="training steps per timed window")
    parser.add_argument("--infer-window", type=int, default=2, help="inference batches per timed window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-variant", action="append", default=[], help="e.g. pipeline_bf16_channels_last")
    parser.add_argument("--skip-compile", action="store_true", help="no torch.compile variants (they compile first)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    images, labels = cifar_shaped(max(args.window * args.batch_size * 2, args.eval_batch_size))
    report = {"machine": {"host": platform.node(), "cpu_threads": torch.get_num_threads(),
                          "device": str(device), "gpu": torch.cuda.get_device_name(device)
                          if device.type == "cuda" else None, **machine_summary()},
              "versions": versions(), "date": dt.datetime.now().isoformat(timespec="seconds"),
              "settings": vars(args), "train": {}, "inference": {}}
    train = report["train"]

    def show(name: str, figures: dict, default_rate: float | None = None) -> None:
        vs = f"  default/this {default_rate / figures['img_per_s']:.2f}x" if default_rate else ""
        print(f"  {name:<38} {figures['img_per_s']:>7.0f} img/s  (windows {figures['min']:.0f}-"
              f"{figures['max']:.0f}){vs}", flush=True)

    print(f"ResNet-20 training on {device} = {machine_summary()['label']}, batch {args.batch_size}, "
          f"median of {args.windows} interleaved windows of {args.window} steps:", flush=True)
    if not args.skip_naive:
        train["naive_fp32_nchw"] = bench_naive(images, labels, device, args)
        show("naive torchvision loop (fp32)", train["naive_fp32_nchw"])
    halves = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]
    speed = {}
    for compiled in (False, True):
        for precision in ["fp32", *halves]:
            for layout in (False, True):
                name = (f"pipeline_{precision}_{'channels_last' if layout else 'nchw'}"
                        f"{'_compile' if compiled else ''}")
                speed[name] = dict(precision=precision, channels_last=layout, compile=compiled)
    for name in args.skip_variant:
        speed.pop(name, None)
    if args.skip_compile:
        speed = {k: v for k, v in speed.items() if not v["compile"]}
    streams = {name: pipeline_epochs(images, labels, device, args, **overrides) for name, overrides in speed.items()}
    # Phase 1, as a user's first `make bench` here: every variant once, compiled ones included; their
    # speeds and compile times go into the probe cache (no run's probe can afford to compile).
    warm = warm_up(streams, device)
    first = timed_rounds(streams, args.windows, device)
    compiles = {name: warm[name] - args.window * args.batch_size / first[name]["img_per_s"]
                for name, overrides in speed.items() if overrides["compile"]}  # warm epoch minus steady steps
    if compiles:
        # the quickest compile: inductor's on-disk cache was warm, as it is for every later run here
        probe.record_compile_seconds(device, min(compiles.values()))
        print("  compile took " + ", ".join(f"{n.replace('pipeline_', '').replace('_', ' ')} {s:.0f} s"
                                           for n, s in compiles.items()) + f" (recorded in {probe.cache_path()})")
    probe.record_speeds(device, key_fields(args), {
        probe.Candidate(o["precision"], o["channels_last"], o["compile"]).name: first[n]["img_per_s"]
        for n, o in speed.items()})
    # Phase 2: the default path (the probe's choice, as `pipeline train` makes it) beside every variant.
    found = probe_default(device, args)
    print(f"  default path = {found.line()}", flush=True)
    report["probe"] = found.record()
    choice = found.choice
    default = dict(precision=choice.precision, channels_last=choice.channels_last, compile=choice.compile)
    extra = {"pipeline_default": default,
             "pipeline_albumentations_lab": dict(default, augment="lab-albu")}  # another loader: not a speed variant
    extra_streams = {name: pipeline_epochs(images, labels, device, args, **o) for name, o in extra.items()}
    warm.update(warm_up(extra_streams, device))
    figures = timed_rounds({"pipeline_default": extra_streams["pipeline_default"], **streams,
                            "pipeline_albumentations_lab": extra_streams["pipeline_albumentations_lab"]},
                           args.windows, device)
    for name, overrides in {**extra, **speed}.items():
        train[name] = figures[name] | {"config": overrides, "warmup_s": round(warm[name], 2),
                                       "phase1_img_per_s": first.get(name, {}).get("img_per_s")}
        if name in compiles:
            train[name]["compile_s"] = round(compiles[name], 1)
    default_rate = train["pipeline_default"]["img_per_s"]
    speed = {k: train[k] for k in speed}
    for name in ["pipeline_default", *speed, "pipeline_albumentations_lab"]:
        show(name.replace("_", " "), train[name], default_rate)
    best = max(speed, key=lambda k: speed[k]["img_per_s"])
    ratio = default_rate / speed[best]["img_per_s"]
    report["ratio_default_over_best"] = ratio
    report["best_variant"] = best
    print(f"  ratio default / best ({best.replace('_', ' ')}): {ratio:.3f}x", flush=True)
    if "naive_fp32_nchw" in train:
        ratio = default_rate / train["naive_fp32_nchw"]["img_per_s"]
        report["ratio_pipeline_over_naive"] = ratio
        print(f"  ratio pipeline default / naive: {ratio:.2f}x")

    print(f"Inference ({choice.precision}, channels_last={choice.channels_last}, batch {args.eval_batch_size}):")
    report["inference"] = bench_inference(images, device, args, choice.precision, choice.channels_last)
    for level, figures in report["inference"].items():
        show(f"TTA {level}", figures)

    out = Path(args.out) if args.out else (Path(__file__).parent / "results" /
                                           f"{dt.date.today().isoformat()}-{platform.node()}.json")
    atomic_write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
