"""`make bench-engine`: airbench94 trained through the engine vs a bare loop of the same maths, same run.

Both sides run configs/airbench94.yaml's training step on the same CIFAR-shaped data: the same
network, optimizer groups (decoupled lrs, BN-bias lr scale), triangle schedule, label smoothing,
lookahead EMA, autocast precision and memory format. The engine side is the real path
(build_train_loader + build_trainer + train_one_epoch: loader, progress bookkeeping, NaN checks).
The bare side is a plain Python loop over batches augmented beforehand, so everything the engine
adds around the maths counts against it. Windows alternate (engine, bare, engine, ...) so drift of
a shared machine hits both; the figure is the ratio of the median img/s.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import platform
import statistics
from pathlib import Path

import torch

from bench.machine import machine_summary
from bench.run import MEAN, STD, cifar_shaped
from bench.timing import round_robin
from pipeline.artifacts import atomic_write_json
from pipeline.augment import build_train_loader
from pipeline.config import resolve_config
from pipeline.models import create_model
from pipeline.runtime import autocast, normalizer, resolve_device, resolve_precision, to_model_input
from pipeline.train.config import TrainConfig
from pipeline.train.ema import Lookahead
from pipeline.train.epoch import train_one_epoch
from pipeline.train.optim import build_optimizer
from pipeline.train.schedules import build_scheduler, total_steps
from pipeline.train.trainer import build_trainer


def make_model(cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    model = create_model(cfg.model, num_classes=10, in_chans=3, input_size=(3, 32, 32), **cfg.model_opts).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def engine_side(cfg, images, labels, device, steps_per_window):
    loader = build_train_loader(images, labels, policy=cfg.augment, batch_size=cfg.batch_size, device=device,
                                crop_pad=cfg.crop_pad, pad_mode=cfg.pad_mode, flip_mode=cfg.flip_mode)
    tr = build_trainer(cfg, make_model(cfg, device), steps_per_epoch=len(loader), num_classes=10,
                       mean=MEAN, std=STD, device=device)
    assert len(loader) == steps_per_window
    epoch = 0

    def window() -> int:
        nonlocal epoch
        epoch += 1
        loader.set_epoch(epoch)
        return train_one_epoch(tr, loader, epoch, log_every=cfg.log_every)["samples"]

    return window


def bare_side(cfg, images, labels, device, steps_per_window):
    """The same maths with nothing around it: pre-augmented batches, a for loop."""
    loader = build_train_loader(images, labels, policy=cfg.augment, batch_size=cfg.batch_size, device=device,
                                crop_pad=cfg.crop_pad, pad_mode=cfg.pad_mode, flip_mode=cfg.flip_mode)
    loader.set_epoch(1)
    batches = list(loader)
    model = make_model(cfg, device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_window)
    lookahead = Lookahead(model, every=cfg.lookahead_every, start_step=0,
                          total_steps=total_steps(cfg.epochs, steps_per_window),
                          decay=cfg.lookahead_decay, power=cfg.lookahead_pow) if cfg.lookahead else None
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    scale, shift = normalizer(MEAN, STD, device)
    precision = resolve_precision(cfg.precision, device)
    step = 0

    def window() -> int:
        nonlocal step
        seen = 0
        for x, y in batches:
            with autocast(device, precision):
                loss = criterion(model(to_model_input(x, scale, shift, cfg.channels_last)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if lookahead is not None:
                lookahead.update(step)
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return seen

    return window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/airbench94.yaml")
    parser.add_argument("--batch-size", type=int, default=256, help="smaller than the recipe's 1024: "
                        "per-step overheads weigh more, so this is the stricter test")
    parser.add_argument("--steps", type=int, default=200, help="training steps per side")
    parser.add_argument("--window", type=int, default=25, help="steps per timed window")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    cfg = resolve_config(TrainConfig, args.config, {"batch_size": args.batch_size, "device": str(device),
                                                    "epochs": 1000, "whiten_init": False,
                                                    "lookahead_start_epochs": 0})
    images, labels = cifar_shaped(args.window * cfg.batch_size)
    sides = {"engine": engine_side(cfg, images, labels, device, args.window),
             "bare": bare_side(cfg, images, labels, device, args.window)}
    for run in sides.values():
        run()  # warm-up window: allocator, oneDNN/cuDNN primitives
    # each window in turn (engine, bare, engine, ...): a window is one call of its side
    rates = round_robin({name: iter(run, None) for name, run in sides.items()}, max(1, args.steps // args.window),
                        device)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    ratio = medians["engine"] / medians["bare"]
    machine = machine_summary()
    print(f"airbench94 training step ({cfg.precision} -> {resolve_precision(cfg.precision, device)}, "
          f"channels_last={cfg.channels_last}, batch {cfg.batch_size}) on {machine['label']}:")
    for name, r in rates.items():
        print(f"  {name:<7} {medians[name]:7.0f} img/s (windows {min(r):.0f}-{max(r):.0f})")
    print(f"  ratio engine / bare loop: {ratio:.3f}x")
    out = Path(args.out) if args.out else (Path(__file__).parent / "results" /
                                           f"{dt.date.today().isoformat()}-{platform.node()}-engine-overhead.json")
    atomic_write_json(out, {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine,
                            "settings": vars(args) | {"config": dataclasses.asdict(cfg)},
                            "img_per_s": medians, "windows": rates, "ratio_engine_over_bare": ratio})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
