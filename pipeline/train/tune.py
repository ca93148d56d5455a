"""Settling a run's `auto` precision, memory format and compile with the probe (train/probe.py),
timing real training steps (train_step) of candidates on copies of the run's model.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Callable

import torch
from torch import nn

from pipeline.data.dataset import PreparedData
from pipeline.train import distributed, probe
from pipeline.train.config import TrainConfig
from pipeline.train.schedules import total_steps
from pipeline.train.trainer import build_trainer, train_step

log = logging.getLogger(__name__)


def probe_key_fields(cfg: TrainConfig, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """What a step's speed depends on, hence the probe cache's key (bench/ records speeds under the
    same key, so that a run finds what `make bench` measured)."""
    return {"model": cfg.model, "model_opts": cfg.model_opts, "batch_size": cfg.batch_size,
            "micro_batch_size": cfg.micro_batch_size, "input_shape": tuple(input_shape),
            "optimizer": cfg.optimizer}


def tune_runtime(cfg: TrainConfig, module: nn.Module, data: PreparedData, n_train: int, device: torch.device,
                 dist_info) -> tuple[TrainConfig, probe.ProbeResult]:
    """Settle cfg's auto precision / channels_last / compile with the probe (rank 0 measures on
    copies of `module`, every rank takes its answer) and write the resolved values into cfg, so
    config.yaml and the manifest record what ran."""
    result = None
    if dist_info.is_main:
        steps_per_epoch = max(1, n_train // (cfg.batch_size * dist_info.world_size))
        shape = tuple(data.input_size)

        def make_step(candidate: probe.Candidate, batch: int) -> Callable[[], None]:
            return probe_step(cfg, module, candidate, batch, shape, num_classes=data.num_classes,
                              mean=data.meta["mean"], std=data.meta["std"], steps_per_epoch=steps_per_epoch,
                              device=device)

        result = probe.run_probe(
            precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile, device=device,
            key_fields=probe_key_fields(cfg, shape),
            batch_size=cfg.batch_size, make_step=make_step, run_steps=total_steps(cfg.epochs, steps_per_epoch),
            time_budget=cfg.time_budget, enabled=cfg.probe)
        log.info("%s", result.line())
    result = distributed.broadcast_object(result)
    choice = result.choice
    return dataclasses.replace(cfg, precision=choice.precision, channels_last=choice.channels_last,
                               compile=choice.compile), result


def probe_step(cfg: TrainConfig, module: nn.Module, candidate: probe.Candidate, batch: int,
               shape: tuple[int, ...], *, num_classes: int, mean: list[float], std: list[float],
               steps_per_epoch: int, device: torch.device) -> Callable[[], None]:
    """One real training step (train_step) of `candidate` on a copy of `module` and a fixed random
    batch of `batch` images: pixel values do not change the speed, the run's weights stay untouched.
    (bench/run.py times its candidates with this too.)"""
    twin = copy.deepcopy(module)
    if candidate.channels_last:
        twin.to(memory_format=torch.channels_last)
    tr = build_trainer(dataclasses.replace(cfg, precision=candidate.precision, channels_last=candidate.channels_last,
                                           compile=candidate.compile),
                       twin, steps_per_epoch=steps_per_epoch, num_classes=num_classes, mean=mean, std=std,
                       device=device)
    gen = torch.Generator().manual_seed(0)
    batch += batch % 2 if tr.mixup is not None else 0  # mixup pairs images
    images = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    return lambda: train_step(tr, images, labels)
