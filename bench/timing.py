"""Throughput measured the same way for every contender: warm up, then the median of timed windows."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Iterator

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def windows_img_per_s(
    batches: Iterator[int],
    *,
    device: torch.device,
    warmup: int,
    window: int,
    windows: int,
) -> dict[str, float]:
    """Consume `batches` (each step yields its batch size); median img/s over `windows` windows."""
    for _ in range(warmup):
        next(batches)
    sync(device)
    rates = []
    for _ in range(windows):
        n, t0 = 0, time.perf_counter()
        for _ in range(window):
            n += next(batches)
        sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return {"img_per_s": statistics.median(rates), "min": min(rates), "max": max(rates), "windows": rates}


def round_robin(streams: dict[str, Iterator[int]], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """img/s of one item of every stream per round, the streams taking turns (so a load change on a
    shared machine hits all alike)."""
    rates: dict[str, list[float]] = {name: [] for name in streams}
    for _ in range(rounds):
        for name, stream in streams.items():
            sync(device)
            t0 = time.perf_counter()
            n = next(stream)
            sync(device)
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def forever(make_epoch: Callable[[int], Iterator[int]]) -> Iterator[int]:
    """Chain epochs 0, 1, 2, ... of an epoch generator into one endless stream of steps."""
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1
