"""The trainer: everything one optimizer step touches (Trainer), how it is built from a config
(build_trainer), and the step itself (train_step).

Per step: autocast around forward *and* loss, GradScaler only for fp16 (unscale_ before clipping),
exactly one optimizer step, one scheduler step, one EMA update. The epoch loop (train/epoch.py),
the probe (train/tune.py) and bench/ all step through train_step, so they time and train the same
code.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.init import dirac_init_, first_conv, whiten_init_
from pipeline.runtime import (autocast_factory, fallback_channels_last, fallback_compile, nhwc_to_nchw,
                              normalizer, resolve_precision, to_model_input)
from pipeline.train.budget import BudgetClock
from pipeline.train.config import TrainConfig
from pipeline.train.ema import Lookahead, ModelEma
from pipeline.train.optim import build_optimizer, decayed_parameters, l1_penalty
from pipeline.train.schedules import build_scheduler, total_steps


@dataclass
class ModelInput:
    """uint8 NCHW batch -> normalised float input, the same way predict does it."""

    scale: torch.Tensor
    shift: torch.Tensor
    channels_last: bool

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return to_model_input(batch, self.scale, self.shift, self.channels_last)

@dataclass
class Trainer:
    """Everything one training step touches."""

    model: nn.Module  # what forward runs: maybe DDP- and/or compile-wrapped
    module: nn.Module  # the plain network: state dicts, EMA source
    eval_model: nn.Module  # what validation runs (no DDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    inputs: ModelInput
    device: torch.device
    precision: str
    ema: ModelEma | None = None
    lookahead: Lookahead | None = None
    mixup: Callable | None = None
    grad_clip: float = 0.0
    l1: float = 0.0
    l1_params: list[nn.Parameter] = field(default_factory=list)
    micro_batch: int = 0  # forward/backward in slices of this many images (0 = the whole batch)
    autocast: Callable[[], Any] = contextlib.nullcontext  # the step's autocast context, resolved once
    budget: BudgetClock | None = None  # a --time-budget run's clock: may end the schedule sooner

    @property
    def global_step(self) -> int:
        # LambdaLR counts one step per optimizer step, and it is checkpointed: no extra counter.
        return self.scheduler.last_epoch

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

def build_trainer(
    cfg: TrainConfig,
    module: nn.Module,
    *,
    steps_per_epoch: int,
    num_classes: int,
    mean: list[float],
    std: list[float],
    device: torch.device,
    world_size: int = 1,
) -> Trainer:
    """Optimizer, schedule, scaler, EMA, loss and wrappers for `module` (already on `device`, in its
    final memory format: the EMA and lookahead keep references to its tensors)."""
    precision = resolve_precision(cfg.precision, device)  # checked by run_training before any data was read
    # The optimizer sees the resolved precision (Muon's Newton-Schulz follows it).
    optimizer = build_optimizer(module, dataclasses.replace(cfg, precision=precision),
                                batch_size=cfg.batch_size * world_size)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # bf16 needs no scaling
    mixup, criterion = _loss(cfg, num_classes)
    ema = ModelEma(module, cfg.ema) if cfg.ema > 0 else None
    lookahead = _lookahead(cfg, module, steps_per_epoch)
    model, eval_model = _wrap(cfg, module, device, world_size)
    channels_last = fallback_channels_last(device) if cfg.channels_last is None else cfg.channels_last
    return Trainer(
        model=model, module=module, eval_model=eval_model, optimizer=optimizer, scheduler=scheduler,
        scaler=scaler, criterion=criterion, inputs=ModelInput(*normalizer(mean, std, device), channels_last),
        device=device, precision=precision, ema=ema, lookahead=lookahead, mixup=mixup, grad_clip=cfg.grad_clip,
        l1=cfg.l1, l1_params=decayed_parameters(module) if cfg.l1 else [], micro_batch=cfg.micro_batch_size,
        autocast=autocast_factory(device, precision),
    )


def _loss(cfg: TrainConfig, num_classes: int) -> tuple[Callable | None, Callable]:
    """(mixup/cutmix of a batch or None, the criterion its targets need)."""
    if not (cfg.mixup > 0 or cfg.cutmix > 0):
        return None, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    if cfg.batch_size % 2:
        raise PipelineError("mixup/cutmix pair samples within a batch: --batch-size must be even, "
                            f"got {cfg.batch_size}")
    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                  num_classes=num_classes)
    return mixup, SoftTargetCrossEntropy()  # Mixup already smoothed the soft targets


def _lookahead(cfg: TrainConfig, module: nn.Module, steps_per_epoch: int) -> Lookahead | None:
    if not cfg.lookahead:
        return None
    return Lookahead(module, every=cfg.lookahead_every, decay=cfg.lookahead_decay, power=cfg.lookahead_pow,
                     start_step=round(cfg.lookahead_start_epochs * steps_per_epoch),
                     total_steps=total_steps(cfg.epochs, steps_per_epoch))


def _wrap(cfg: TrainConfig, module: nn.Module, device: torch.device, world_size: int) -> tuple[nn.Module, nn.Module]:
    """(what forward runs: maybe DDP- and/or compile-wrapped, what validation runs: no DDP wrapper)."""
    model = module
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if fallback_compile(device) if cfg.compile is None else cfg.compile:
        model = torch.compile(model)
    return model, model if world_size == 1 else module

def train_step(tr: Trainer, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a uint8 batch (the probe times exactly this); returns logits and loss."""
    x = tr.inputs(images)
    targets = labels
    if tr.mixup is not None:
        x, targets = tr.mixup(x, labels)
    tr.optimizer.zero_grad(set_to_none=True)
    logits, loss = _forward_backward(tr, x, targets)
    if tr.grad_clip > 0:
        tr.scaler.unscale_(tr.optimizer)
        nn.utils.clip_grad_norm_(tr.module.parameters(), tr.grad_clip)
    tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    tr.scheduler.step()
    if tr.ema is not None:
        tr.ema.update(tr.module, tr.global_step)
    if tr.lookahead is not None:
        tr.lookahead.update(tr.global_step)
    return logits, loss

def _forward_backward(tr: Trainer, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the batch's mean loss (+ L1); returns the batch's logits and mean loss.

    With tr.micro_batch the batch runs in slices whose losses are weighted by their share of the
    batch, so the accumulated gradient is the whole batch's (gradient accumulation). Smaller
    activations can be faster on a CPU's caches; BatchNorm then normalises each slice on its own.
    """
    n = x.shape[0]
    size = tr.micro_batch if 0 < tr.micro_batch < n else n
    slices = list(zip(x.split(size), targets.split(size)))
    all_logits, losses = [], []
    for i, (xs, ts) in enumerate(slices):
        last = i == len(slices) - 1
        # DDP all-reduces on every backward: only the last slice's may sync
        sync = contextlib.nullcontext() if last or not hasattr(tr.model, "no_sync") else tr.model.no_sync()
        share = xs.shape[0] / n  # 1 without slices: no extra ops on the usual path
        with sync:
            with tr.autocast():
                logits = tr.model(xs)
                loss = tr.criterion(logits, ts)
                objective = loss if share == 1 else loss * share
                if tr.l1 and i == 0:
                    objective = objective + tr.l1 * l1_penalty(tr.l1_params)
            tr.scaler.scale(objective).backward()
        all_logits.append(logits.detach())
        losses.append(loss.detach() if share == 1 else loss.detach() * share)
    if len(slices) == 1:
        return all_logits[0], losses[0]
    return torch.cat(all_logits), torch.stack(losses).sum()

def initialise(module: nn.Module, cfg: TrainConfig, train_images, mean, std, device) -> nn.Conv2d | None:
    """dirac_init / whiten_init of cfg on `module`; returns the whitening conv (if any).

    Runs on resume too (then the checkpoint overwrites the weights): whitening also freezes the
    conv's weights, and the optimizer must be built without them."""
    whiten_conv = first_conv(module) if cfg.whiten_init else None
    if cfg.dirac_init:
        dirac_init_(module, skip=(whiten_conv,) if whiten_conv is not None else ())
    if whiten_conv is not None:
        scale, shift = normalizer(mean, std, device)
        sample = nhwc_to_nchw(train_images[: cfg.whiten_images]).to(device)
        whiten_init_(whiten_conv, to_model_input(sample, scale, shift))
    return whiten_conv
