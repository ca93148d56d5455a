"""Augmentation-only img/s of the "lab" policy: batched torch ops vs albumentations per image.

    make bench-augment   (python -m bench.lab_augment [--batch-size 64 --batches 150 --rounds 5 --threads 2])

Both loaders walk the same random 32x32x3 uint8 images (the policy's cost does not depend on pixel
values) on the CPU: "lab" (pipeline.augment.batched + lab.LabPolicy, in this process with
--threads torch threads) and "lab-albu" (albumentations in 2 DataLoader workers). They take turns,
`batches` batches each per round, so a load change on a shared machine hits both; the figure is the
median img/s over rounds (min-max beside it).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench.machine import machine_summary
from pipeline.augment import build_train_loader


def timed(loader, epoch: int) -> float:
    loader.set_epoch(epoch)
    start, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += len(x)
    return seen / (time.perf_counter() - start)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.batch_size * args.batches
    images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    loaders = {name: build_train_loader(images, labels, policy=name, batch_size=args.batch_size, workers=2)
               for name in ("lab", "lab-albu")}
    for loader in loaders.values():
        timed(loader, 0)  # warm-up: worker start-up, first-call allocations
    rates = {name: [] for name in loaders}
    for r in range(args.rounds):
        for name, loader in loaders.items():
            rates[name].append(timed(loader, r + 1))
    print(f"{machine_summary()['label']}; batch {args.batch_size}, 32x32x3, torch threads {args.threads}")
    for name, values in rates.items():
        print(f"  {name:9s} {statistics.median(values):9.0f} img/s ({min(values):.0f}-{max(values):.0f})")
    print(f"  ratio lab / lab-albu: {statistics.median(rates['lab']) / statistics.median(rates['lab-albu']):.1f}x")


if __name__ == "__main__":
    main()
