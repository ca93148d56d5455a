"""`make bench`: ResNet-20 training and inference img/s, the naive torchvision loop vs this pipeline.

Everything runs in one process on the same CIFAR-10-shaped data (random uint8 images: throughput
does not depend on pixel values), so the ratio survives a noisy machine better than two separate
runs would. Each figure is the median of several timed windows after a warm-up.
Writes bench/results/<date>-<host>.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.naive import naive_loader, naive_train_steps  # noqa: E402
from bench.timing import forever, windows_img_per_s  # noqa: E402
from pipeline.artifacts import atomic_write_json, versions  # noqa: E402
from pipeline.augment import build_train_loader  # noqa: E402
from pipeline.models import create_model  # noqa: E402
from pipeline.predict import view_logits  # noqa: E402
from pipeline.runtime import resolve_device  # noqa: E402
from pipeline.train.config import TrainConfig  # noqa: E402
from pipeline.train.engine import build_trainer, train_one_epoch  # noqa: E402
from pipeline.tta import TTA_LEVELS, level_views  # noqa: E402

MEAN, STD = [0.491, 0.482, 0.447], [0.247, 0.243, 0.261]  # CIFAR-10 train statistics


def cifar_shaped(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def resnet20(device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = create_model("resnet20", num_classes=10, in_chans=3, input_size=(3, 32, 32)).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def bench_naive(images, labels, device, args) -> dict:
    loader = naive_loader(images, labels, MEAN, STD, batch_size=args.batch_size, workers=2)
    steps = naive_train_steps(resnet20(device, channels_last=False), loader, device)
    return windows_img_per_s(steps, device=device, warmup=args.window, window=args.window,
                             windows=args.windows)


def bench_pipeline(images, labels, device, args, **overrides) -> dict:
    """The real training path: TrainConfig defaults, the real loader, build_trainer, train_one_epoch.

    One epoch over `window` batches is one timed window, so per-epoch costs (shuffling, the final
    sync) are paid inside the measurement, as in a real run.
    """
    cfg = dataclasses.replace(TrainConfig(), model="resnet20", batch_size=args.batch_size,
                              device=str(device), **overrides)
    n = args.window * args.batch_size
    loader = build_train_loader(images[:n], labels[:n], policy=cfg.augment, batch_size=cfg.batch_size,
                                device=device, seed=0, workers=cfg.workers)
    model = resnet20(device, cfg.channels_last)
    tr = build_trainer(cfg, model, steps_per_epoch=len(loader), num_classes=10, mean=MEAN, std=STD,
                       device=device)

    def epochs(epoch: int):
        loader.set_epoch(epoch)
        result = train_one_epoch(tr, loader, epoch)
        yield result["samples"]

    stream = forever(epochs)
    figures = windows_img_per_s(stream, device=device, warmup=1, window=1, windows=args.windows)
    figures["config"] = {k: getattr(cfg, k) for k in ("precision", "channels_last", "compile", "augment")}
    return figures


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
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    images, labels = cifar_shaped(max(args.window * args.batch_size * 2, args.eval_batch_size))
    report = {"machine": {"host": platform.node(), "cpu_threads": torch.get_num_threads(),
                          "device": str(device), "gpu": torch.cuda.get_device_name(device)
                          if device.type == "cuda" else None},
              "versions": versions(), "date": dt.datetime.now().isoformat(timespec="seconds"),
              "settings": vars(args), "train": {}, "inference": {}}
    train = report["train"]

    def show(name: str, figures: dict) -> None:
        print(f"  {name:<34} {figures['img_per_s']:>9.0f} img/s  (windows {figures['min']:.0f}-{figures['max']:.0f})",
              flush=True)

    print(f"ResNet-20 training on {device} (batch {args.batch_size}), median of {args.windows} windows:")
    if not args.skip_naive:
        train["naive_fp32_nchw"] = bench_naive(images, labels, device, args)
        show("naive torchvision loop (fp32)", train["naive_fp32_nchw"])
    train["pipeline_default"] = bench_pipeline(images, labels, device, args)
    show("pipeline default path", train["pipeline_default"])
    variants = {
        "pipeline_fp32_nchw": dict(precision="fp32", channels_last=False),
        "pipeline_fp32_channels_last": dict(precision="fp32", channels_last=True),
        "pipeline_bf16_channels_last": dict(precision="bf16", channels_last=True),
        "pipeline_albumentations_lab": dict(augment="lab"),
    }
    if device.type == "cuda":
        variants.update({
            "pipeline_fp16_channels_last": dict(precision="fp16", channels_last=True),
            "pipeline_bf16_channels_last_compile": dict(precision="bf16", channels_last=True, compile=True),
        })
    for name in args.skip_variant:
        variants.pop(name, None)
    for name, overrides in variants.items():
        train[name] = bench_pipeline(images, labels, device, args, **overrides)
        show(name.replace("_", " "), train[name])
    if "naive_fp32_nchw" in train:
        ratio = train["pipeline_default"]["img_per_s"] / train["naive_fp32_nchw"]["img_per_s"]
        report["ratio_pipeline_over_naive"] = ratio
        print(f"  ratio pipeline / naive: {ratio:.2f}x")

    default = TrainConfig()
    print(f"Inference ({default.precision}, channels_last={default.channels_last}, batch {args.eval_batch_size}):")
    report["inference"] = bench_inference(images, device, args, default.precision, default.channels_last)
    for level, figures in report["inference"].items():
        show(f"TTA {level}", figures)

    out = Path(args.out) if args.out else (Path(__file__).parent / "results" /
                                           f"{dt.date.today().isoformat()}-{platform.node()}.json")
    atomic_write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
