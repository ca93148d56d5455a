"""ResNet-20 (or --model) training img/s through the real train_one_epoch: precision x layout x loader.

    .venv/bin/python bench/train_throughput.py [--batch-size 128 --window 20 --windows 5] [--out FILE]
    .venv/bin/python bench/train_throughput.py --model lenet5 --model-opt bn=true --batch-size 64 \
        --variants "bf16 NCHW none" "bf16 NCHW lab" "bf16 NCHW lab-albu"   # the ECE 590 lab's loaders

Variants: fp32 / bf16 autocast, NCHW / channels_last, on the fast batched loader ("standard":
crop + flip on the device) and on the per-sample albumentations loader ("lab-albu", worker processes).
Each is a TrainConfig run through build_trainer + train_one_epoch on random CIFAR-shaped uint8
data (throughput does not depend on pixel values); one epoch of `window` steps is one timed window.
The variants take turns, one window each per round, so a load change on a shared machine hits
all of them alike; the figure is the median over rounds after a warm-up epoch. Prints a markdown
table and writes it to --out; the spread (min-max) says how much to trust a figure.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.timing import round_robin  # noqa: E402
from pipeline.artifacts import atomic_write_text  # noqa: E402
from pipeline.augment import build_train_loader  # noqa: E402
from pipeline.models import create_model, parse_model_opts  # noqa: E402
from pipeline.runtime import resolve_device, resolve_precision  # noqa: E402
from pipeline.train.config import TrainConfig  # noqa: E402
from pipeline.train.engine import build_trainer, train_one_epoch  # noqa: E402

MEAN, STD = [0.491, 0.482, 0.447], [0.247, 0.243, 0.261]  # CIFAR-10 train statistics
VARIANTS = {  # name -> TrainConfig overrides
    "fp32 NCHW standard": dict(precision="fp32", channels_last=False, augment="standard"),
    "fp32 channels_last standard": dict(precision="fp32", channels_last=True, augment="standard"),
    "bf16 NCHW standard": dict(precision="bf16", channels_last=False, augment="standard"),
    "bf16 channels_last standard": dict(precision="bf16", channels_last=True, augment="standard"),
    "fp32 NCHW lab (albumentations)": dict(precision="fp32", channels_last=False, augment="lab-albu"),
    "fp32 channels_last lab (albumentations)": dict(precision="fp32", channels_last=True, augment="lab-albu"),
    "fp32 NCHW lab (batched)": dict(precision="fp32", channels_last=False, augment="lab"),
    # the ECE 590 LeNet-5 lab (the probe picks bf16 NCHW for it on an AMX Xeon): no / batched / per-image policy
    "bf16 NCHW none": dict(precision="bf16", channels_last=False, augment="none"),
    "bf16 NCHW lab": dict(precision="bf16", channels_last=False, augment="lab"),
    "bf16 NCHW lab-albu": dict(precision="bf16", channels_last=False, augment="lab-albu"),
}
LAB_VARIANTS = ("bf16 NCHW none", "bf16 NCHW lab", "bf16 NCHW lab-albu")
DEFAULT_VARIANTS = [name for name in VARIANTS if name not in LAB_VARIANTS]  # the ResNet-20 table


def epochs(cfg: TrainConfig, images: np.ndarray, labels: np.ndarray, device: torch.device) -> Iterator[int]:
    """An endless stream of training epochs of `cfg`; each next() runs one and yields its sample count."""
    loader = build_train_loader(images, labels, policy=cfg.augment, batch_size=cfg.batch_size, device=device,
                                seed=0, workers=cfg.workers)
    model = create_model(cfg.model, num_classes=10, in_chans=3, input_size=(3, 32, 32), **cfg.model_opts).to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    tr = build_trainer(cfg, model, steps_per_epoch=len(loader), num_classes=10, mean=MEAN, std=STD, device=device)
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield train_one_epoch(tr, loader, epoch)["samples"]
        epoch += 1


def interleaved(streams: dict[str, Iterator[int]], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """img/s of one epoch of every stream per round, after one warm-up epoch each."""
    for stream in streams.values():
        next(stream)
    return round_robin(streams, rounds, device)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--model-opt", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--window", type=int, default=20, help="training steps per timed window (one epoch)")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS), metavar="NAME")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the lab policy")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.md"))
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    n = args.window * args.batch_size
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    base = dataclasses.replace(TrainConfig(), model=args.model, model_opts=parse_model_opts(args.model_opt),
                               batch_size=args.batch_size, device=str(device), workers=args.workers)
    lines = [f"{args.model} {' '.join(args.model_opt)} training on {device} ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads), batch {args.batch_size}, median of {args.windows} "
             f"interleaved windows of {args.window} steps; default precision here: "
             f"{resolve_precision(base.precision, device)}",
             "", "| variant | img/s | min-max |", "|---|---:|---:|"]
    print("\n".join(lines), flush=True)
    streams = {name: epochs(dataclasses.replace(base, **VARIANTS[name]), images, labels, device)
               for name in args.variants}
    for name, rates in interleaved(streams, args.windows, device).items():
        line = f"| {name} | {statistics.median(rates):.0f} | {min(rates):.0f}-{max(rates):.0f} |"
        lines.append(line)
        print(line, flush=True)
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    return text


if __name__ == "__main__":
    main()
