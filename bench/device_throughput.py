"""ResNet-20 training img/s per precision, memory layout and compile: the device check's throughput step.

The variants of `make bench` timed by bench/run.py's own functions (the real loader, trainer and
epoch on CIFAR-shaped data, every variant taking turns, the median over rounds), cut to what fits
the check's budget: fp32/bf16/fp16 (fp16 on CUDA only) x NCHW/channels_last eager, and bf16
channels_last compiled (the combination configs/resnet20-gpu-fast.yaml trains with; one compile is
~tens of seconds on a GPU). --tiny: a few steps of each eager variant on the CPU, no compile.
"""
from __future__ import annotations

import argparse
import types

import torch

from bench.run import cifar_shaped, pipeline_epochs, timed_rounds, warm_up
from pipeline.artifacts import atomic_write_json
from pipeline.runtime import resolve_device

# (batch, steps per timed epoch, rounds): batch 512 as the GPU recipe trains (at 128 a GPU this size
# is bound by kernel launches, which hides the precisions' differences).
GPU_SIZES, TINY_SIZES = (512, 15, 3), (32, 2, 1)
COMPILE_NOTE = "not timed on a CPU: an inductor compile takes minutes there (make test-slow covers it)"


def variants(cuda: bool, tiny: bool) -> dict[str, dict]:
    halves = ["bf16", "fp16"] if cuda else ["bf16"]
    found = {f"{precision}_{'channels_last' if layout else 'nchw'}":
             dict(precision=precision, channels_last=layout, compile=False)
             for precision in ["fp32", *halves] for layout in (False, True)}
    if cuda and not tiny:
        found["bf16_channels_last_compile"] = dict(precision="bf16", channels_last=True, compile=True)
    return found


def measure(device: torch.device, tiny: bool) -> dict:
    batch, window, rounds = TINY_SIZES if tiny else GPU_SIZES
    args = types.SimpleNamespace(batch_size=batch, window=window)  # what bench.run's functions read
    images, labels = cifar_shaped(batch * window)
    # workers 0: the loader's own processes would only add start-up time to a few steps
    speed = {name: dict(o, workers=0) for name, o in variants(device.type == "cuda", tiny).items()}
    streams = {name: pipeline_epochs(images, labels, device, args, **o) for name, o in speed.items()}
    warm = warm_up(streams, device)
    figures = timed_rounds(streams, rounds, device)
    result = {"model": "resnet20", "batch_size": batch, "steps_per_window": window, "rounds": rounds,
              "device": str(device), "variants": {}}
    for name, o in speed.items():
        row = {"img_per_s": round(figures[name]["img_per_s"], 1), "warmup_s": round(warm[name], 2),
               **{k: o[k] for k in ("precision", "channels_last", "compile")}}
        if o["compile"]:  # the warm epoch minus its steps at the steady speed
            row["compile_s"] = round(warm[name] - batch * window / figures[name]["img_per_s"], 1)
        result["variants"][name] = row
    if device.type != "cuda":
        result["not_timed"] = {"fp16": "CUDA only", "compile": COMPILE_NOTE}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the figures' JSON")
    parser.add_argument("--tiny", action="store_true", help="a few steps of the eager variants (the CPU path)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    result = measure(resolve_device(args.device), args.tiny)
    for name, row in result["variants"].items():
        print(f"  {name:<28} {row['img_per_s']:>9.0f} img/s", flush=True)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
