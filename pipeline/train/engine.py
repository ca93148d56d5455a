"""The training loop: run_training (a whole run), train_one_epoch and evaluate (one pass each).

One code path for 1 CPU process, 1 GPU, or N processes under torchrun (DDP). Per iteration:
autocast around forward *and* loss, GradScaler only for fp16 (unscale_ before clipping), exactly
one optimizer step, one scheduler step, one EMA update. After every epoch rank 0 writes best.pt
(if improved), last.pt, metrics and curves, in that order, so an interruption at any point leaves
a run that --resume continues to the same result.
"""
from __future__ import annotations

import contextlib

import dataclasses
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.artifacts import sha256_file, write_manifest
from pipeline.augment import build_eval_loader, build_train_loader
from pipeline.checkpoint import clean_state_dict, load_checkpoint, save_checkpoint
from pipeline.config import config_dict, save_config
from pipeline.data.dataset import PreparedData, load_prepared
from pipeline.errors import PipelineError
from pipeline.models import create_model
from pipeline.models.init import dirac_init_, first_conv, whiten_init_
from pipeline.runtime import PRECISIONS, autocast, nhwc_to_nchw, normalizer, resolve_precision, to_model_input
from pipeline.train import distributed, logbook
from pipeline.train.config import TrainConfig, check_config
from pipeline.train.ema import Lookahead, ModelEma
from pipeline.train.optim import build_optimizer, decayed_parameters, l1_penalty
from pipeline.train.schedules import build_scheduler, total_steps

log = logging.getLogger(__name__)

# Config keys that may change on --resume; any other difference makes it a different experiment.
RESUME_MAY_CHANGE = frozenset({
    "data", "resume", "overwrite", "workers", "device", "save_every", "log_every", "eval_batch_size",
    "compile", "early_stop_patience", "precision", "channels_last", "deterministic", "epochs",
    "out_dir", "run",
})
# curves.png takes ~0.1-0.3 s to draw on a small CPU: refresh it after an epoch only if the last
# drawing is this old, so tiny/fast runs are not dominated by plotting; the finished run always gets it.
CURVES_EVERY_S = 5.0
RUN_FILES = ("best.pt", "last.pt", "config.yaml", "manifest.json", *logbook.FILES)


class NonFiniteLoss(PipelineError):
    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"loss became {value} at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


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
    precision = resolve_precision(cfg.precision, device)
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision '{cfg.precision}'; choose from: auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise PipelineError("--precision fp16 needs CUDA; use bf16 or fp32 on CPU")
    optimizer = build_optimizer(module, cfg, batch_size=cfg.batch_size * world_size)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # bf16 needs no scaling
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        if cfg.batch_size % 2:
            raise PipelineError(f"mixup/cutmix pair samples within a batch: --batch-size must be even, got {cfg.batch_size}")
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                      num_classes=num_classes)
        criterion = SoftTargetCrossEntropy()  # Mixup already smoothed the soft targets
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    ema = ModelEma(module, cfg.ema) if cfg.ema > 0 else None
    lookahead = None
    if cfg.lookahead:
        lookahead = Lookahead(module, every=cfg.lookahead_every, decay=cfg.lookahead_decay, power=cfg.lookahead_pow,
                              start_step=round(cfg.lookahead_start_epochs * steps_per_epoch),
                              total_steps=total_steps(cfg.epochs, steps_per_epoch))
    model = module
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if cfg.compile:
        model = torch.compile(model)
    eval_model = model if world_size == 1 else module
    return Trainer(
        model=model, module=module, eval_model=eval_model, optimizer=optimizer, scheduler=scheduler,
        scaler=scaler, criterion=criterion, inputs=ModelInput(*normalizer(mean, std, device), cfg.channels_last),
        device=device, precision=precision, ema=ema, lookahead=lookahead, mixup=mixup, grad_clip=cfg.grad_clip,
        l1=cfg.l1, l1_params=decayed_parameters(module) if cfg.l1 else [], micro_batch=cfg.micro_batch_size,
    )


def train_one_epoch(
    tr: Trainer,
    loader,
    epoch: int,
    *,
    log_every: int = 20,
    show_progress: bool = False,
    desc: str = "",
    max_steps: int | None = None,
) -> dict[str, float]:
    """One pass over `loader` (or its first max_steps batches: the last epoch of a fractional run);
    returns loss/acc/samples summed over all processes, seconds, img/s."""
    tr.model.train()
    loss_sum = torch.zeros((), device=tr.device)
    correct = torch.zeros((), dtype=torch.long, device=tr.device)
    seen = 0
    pending: list[torch.Tensor] = []  # per-step losses not yet checked for NaN/inf
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    bar = _progress(steps, desc or f"epoch {epoch}", show_progress)
    start = time.perf_counter()
    step = 0
    for step, (images, labels) in enumerate(loader, start=1):
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

        n = labels.shape[0]
        seen += n
        loss_sum += loss.detach().float() * n
        correct += (logits.detach().argmax(1) == labels).sum()
        pending.append(loss.detach())
        # Checking (and printing) needs a device sync, so it happens every log_every steps only.
        if step % log_every == 0 or step == steps:
            _check_finite(pending, epoch, step)
            pending.clear()
            if bar is not None:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}",
                                lr=f"{tr.lr:.3g}", img_s=f"{seen / elapsed:.0f}", refresh=False)
        if bar is not None:
            bar.update(1)
        if step == steps < len(loader):
            break  # the last epoch of a fractional run: let a full epoch's loader run to its end
    if tr.lookahead is not None:
        tr.lookahead.end_epoch()
    _check_finite(pending, epoch, step)
    if bar is not None:
        bar.close()
    if tr.device.type == "cuda":
        torch.cuda.synchronize(tr.device)
    seconds = time.perf_counter() - start
    total_loss, total_correct, total_seen = distributed.all_reduce_sum(
        [loss_sum.item(), float(correct.item()), float(seen)], tr.device)
    return {
        "loss": total_loss / max(total_seen, 1),
        "acc": total_correct / max(total_seen, 1),
        "samples": int(total_seen),
        "steps": step,
        "seconds": seconds,
        "img_per_s": total_seen / seconds if seconds > 0 else float("nan"),
    }


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
        with sync:
            with autocast(tr.device, tr.precision):
                logits = tr.model(xs)
                loss = tr.criterion(logits, ts)
                objective = loss * (xs.shape[0] / n)
                if tr.l1 and i == 0:
                    objective = objective + tr.l1 * l1_penalty(tr.l1_params)
            tr.scaler.scale(objective).backward()
        all_logits.append(logits.detach())
        losses.append(loss.detach() * (xs.shape[0] / n))
    if len(slices) == 1:
        return all_logits[0], losses[0]
    return torch.cat(all_logits), torch.stack(losses).sum()


@torch.inference_mode()
def evaluate(model: nn.Module, loader, inputs: ModelInput, device: torch.device, precision: str) -> dict[str, float]:
    """Mean cross entropy (no label smoothing, so runs compare) and accuracy over `loader`."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for images, labels in loader:
        with autocast(device, precision):
            logits = model(inputs(images))
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.shape[0]
    model.train(was_training)
    if seen == 0:
        return {"loss": float("nan"), "acc": float("nan"), "samples": 0}
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen, "samples": seen}


def run_training(cfg: TrainConfig, on_epoch_end: Callable[[int, dict], Any] | None = None) -> dict[str, Any]:
    """Train a run end to end (or continue it with cfg.resume); returns a summary dict.

    on_epoch_end(epoch, row) runs on rank 0 after the epoch's checkpoints and metrics are on disk;
    an exception from it (optuna.TrialPruned, KeyboardInterrupt) propagates with the files consistent.
    """
    started = time.time()
    check_config(cfg)
    owns_group = distributed.env_info().enabled and not torch.distributed.is_initialized()
    dist_info, device = distributed.setup(cfg.device)
    try:
        return _run(cfg, dist_info, device, on_epoch_end, started)
    finally:
        if owns_group:
            distributed.cleanup()


@dataclass
class _Progress:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float = -math.inf
    best_epoch: int = 0

    @property
    def epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0


def _run(cfg, dist_info, device, on_epoch_end, started) -> dict[str, Any]:
    main = dist_info.is_main
    configure_determinism(cfg.deterministic)
    seed_everything(cfg.seed)
    data = load_prepared(cfg.data, cfg.competition)
    cfg = resolve_run_name(cfg, data)
    run_dir = Path(cfg.out_dir) / cfg.run
    check_run_dir(run_dir, cfg)  # before any work: a wrong --run/--resume fails in a second
    data_info = data_provenance(data)

    train_images, train_labels, _ = data.subset("all" if cfg.final_fit else "train")
    val_images, val_labels, _ = data.subset("val")
    if cfg.final_fit and main:
        log.warning("final fit: the %d val images are trained on too, so val accuracy is not a held-out "
                    "figure; judge the settings on a run without --final-fit", len(val_labels))
    if len(val_labels) == 0:
        raise PipelineError(f"{data.root / 'split.npz'}: the validation split is empty; training needs it "
                            "for best.pt and early stopping")
    model_kwargs = {"num_classes": data.num_classes, "in_chans": data.in_chans,
                    "input_size": list(data.input_size), "opts": dict(cfg.model_opts)}
    module = create_model(cfg.model, num_classes=data.num_classes, in_chans=data.in_chans,
                          input_size=data.input_size, **cfg.model_opts)
    module.to(device)
    whiten_conv = initialise(module, cfg, train_images, data.meta["mean"], data.meta["std"], device)
    if cfg.channels_last:
        module.to(memory_format=torch.channels_last)

    train_loader = build_train_loader(
        train_images, train_labels, policy=cfg.augment, batch_size=cfg.batch_size, device=device,
        seed=cfg.seed, drop_last=True, rank=dist_info.rank, world_size=dist_info.world_size,
        workers=cfg.workers, cutout=cfg.cutout, crop_pad=cfg.crop_pad, pad_mode=cfg.pad_mode,
        flip_mode=cfg.flip_mode)
    # Every rank validates the whole split: simplest correct, and these splits are small.
    val_loader = build_eval_loader(val_images, val_labels, batch_size=cfg.eval_batch_size, device=device)
    tr = build_trainer(cfg, module, steps_per_epoch=len(train_loader), num_classes=data.num_classes,
                       mean=data.meta["mean"], std=data.meta["std"], device=device,
                       world_size=dist_info.world_size)
    steps_total = total_steps(cfg.epochs, len(train_loader))
    epochs_total = math.ceil(steps_total / len(train_loader))
    if main:
        log.info("training %s on %s: %d train / %d val images, %d steps/epoch x %g epochs = %d steps, %s%s -> %s",
                 cfg.model, data.meta.get("competition"), len(train_labels), len(val_labels),
                 len(train_loader), cfg.epochs, steps_total, tr.precision,
                 ", channels_last" if cfg.channels_last else "", run_dir)
    # Per-rank streams for dropout/mixup; rank 0 keeps exactly the single-process stream.
    seed_everything(cfg.seed + 1000 * dist_info.rank)

    progress = _Progress()
    if cfg.resume:
        progress = resume_from(run_dir / "last.pt", tr, cfg, model_kwargs, data_info, dist_info.rank)
        if tr.lookahead is not None:
            tr.lookahead.resume(tr.global_step)
    elif main:
        fresh_run_dir(run_dir, cfg.overwrite)
    distributed.barrier()
    if main:
        save_config(cfg, run_dir / "config.yaml")
        # On resume this drops rows (and curve points) of epochs after the checkpoint.
        logbook.write_metrics(run_dir, progress.history, plot=bool(progress.history))

    stopped_early = _patience_exhausted(cfg, progress)
    show_bar = main and sys.stderr.isatty()
    epoch = progress.epoch
    last_plot = time.monotonic()
    try:
        for epoch in range(progress.epoch + 1, epochs_total + 1):
            if stopped_early:
                break
            epoch_start = time.perf_counter()
            train_loader.set_epoch(epoch)
            if whiten_conv is not None and whiten_conv.bias is not None and cfg.whiten_bias_epochs > 0:
                # A frozen bias gets no gradient, so the optimizer skips it (no decay, no momentum).
                whiten_conv.bias.requires_grad_(epoch <= cfg.whiten_bias_epochs)
            train = train_one_epoch(tr, train_loader, epoch, log_every=cfg.log_every, show_progress=show_bar,
                                    desc=f"epoch {epoch}/{epochs_total}",
                                    max_steps=steps_total - (epoch - 1) * len(train_loader))
            distributed.sync_buffers(tr.module)
            row = _epoch_row(tr, val_loader, epoch, train, epoch_start)
            row = distributed.broadcast_object(row)  # rank 0's numbers drive every rank's decisions
            progress.history.append(row)
            score = row["ema_val_acc"] if tr.ema is not None else row["val_acc"]
            improved = score > progress.best_metric
            if improved:
                progress.best_metric, progress.best_epoch = score, epoch
            rng = distributed.all_gather_object(rng_state())
            if main:
                plot = time.monotonic() - last_plot >= CURVES_EVERY_S
                _save_epoch(run_dir, tr, cfg, model_kwargs, data_info, progress, rng, improved, plot)
                last_plot = time.monotonic() if plot else last_plot
                _log_epoch(row, epochs_total, improved)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, row)
            stopped_early = _patience_exhausted(cfg, progress)
    except NonFiniteLoss as e:
        kept = f"{run_dir / 'last.pt'} keeps epoch {progress.epoch}" if progress.epoch else "no checkpoint was written"
        raise PipelineError(f"{e}; stopped ({kept}). Try a lower --lr, --grad-clip 1, or --precision fp32") from None
    except KeyboardInterrupt:
        if main:
            where = (f"{run_dir / 'last.pt'} holds epoch {progress.epoch}; continue with --resume"
                     if progress.epoch else "no epoch completed, nothing saved")
            log.warning("interrupted during epoch %d: %s", epoch, where)
        raise

    if stopped_early:
        log.info("early stop after epoch %d: no better val accuracy for %d epochs; best is epoch %d (best.pt)",
                 progress.epoch, cfg.early_stop_patience, progress.best_epoch)
    summary = {
        "run_dir": str(run_dir),
        "best_val_acc": progress.best_metric if progress.history else None,
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "wall_seconds": round(time.time() - started, 3),
        "stopped_early": stopped_early,
    }
    if main:
        logbook.write_metrics(run_dir, progress.history)  # final curves.png
        outputs = [name for name in (*RUN_FILES, *_snapshots(run_dir)) if (run_dir / name).is_file()
                   and name != "manifest.json"]
        write_manifest(
            run_dir, "train", inputs=[data.root / "meta.json", data.root / "split.npz"], outputs=outputs,
            config=config_dict(cfg), seed=cfg.seed, started=started,
            metrics={k: summary[k] for k in ("best_val_acc", "best_epoch", "epochs_run", "stopped_early")}
            | {"best_metric": "ema_val_acc" if tr.ema is not None else "val_acc",
               "final": progress.history[-1] if progress.history else None},
        )
        log.info("best val accuracy %.4f at epoch %d -> %s", summary["best_val_acc"] or float("nan"),
                 summary["best_epoch"], run_dir / "best.pt")
    return summary


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


def _epoch_row(tr: Trainer, val_loader, epoch: int, train: dict, epoch_start: float) -> dict[str, Any]:
    val = evaluate(tr.eval_model, val_loader, tr.inputs, tr.device, tr.precision)
    row = {
        "epoch": epoch,
        "train_loss": round(train["loss"], 6),
        "train_acc": round(train["acc"], 6),
        "val_loss": round(val["loss"], 6),
        "val_acc": round(val["acc"], 6),
        "lr": tr.lr,
        "seconds": None,
        "img_per_s": round(train["img_per_s"], 1),
    }
    if tr.ema is not None:
        ema_val = evaluate(tr.ema.module, val_loader, tr.inputs, tr.device, tr.precision)
        row["ema_val_loss"] = round(ema_val["loss"], 6)
        row["ema_val_acc"] = round(ema_val["acc"], 6)
    row["seconds"] = round(time.perf_counter() - epoch_start, 3)
    return row


def _save_epoch(run_dir, tr, cfg, model_kwargs, data_info, progress, rng, improved, plot) -> None:
    # best.pt before last.pt: if interrupted in between, last.pt still points at the previous epoch
    # and --resume redoes this one, rewriting the same best.pt.
    state = checkpoint_state(tr, cfg, model_kwargs, data_info, progress, rng)
    if improved:
        save_checkpoint(run_dir / "best.pt", state)
    save_checkpoint(run_dir / "last.pt", state)
    if cfg.save_every and progress.epoch % cfg.save_every == 0:
        save_checkpoint(run_dir / f"epoch_{progress.epoch}.pt", state)
    logbook.write_metrics(run_dir, progress.history, plot=plot)


def _log_epoch(row: dict, epochs: int, improved: bool) -> None:
    ema = f" ema_val_acc {row['ema_val_acc']:.4f}" if "ema_val_acc" in row else ""
    log.info("epoch %d/%d train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f%s lr %.3g "
             "(%.1fs, %.0f img/s)%s", row["epoch"], epochs, row["train_loss"], row["train_acc"],
             row["val_loss"], row["val_acc"], ema, row["lr"], row["seconds"], row["img_per_s"],
             " *best" if improved else "")


def _patience_exhausted(cfg: TrainConfig, progress: _Progress) -> bool:
    return bool(cfg.early_stop_patience and progress.history
                and progress.epoch - progress.best_epoch >= cfg.early_stop_patience)


def checkpoint_state(tr: Trainer, cfg: TrainConfig, model_kwargs: dict, data_info: dict,
                     progress: _Progress, rng: list) -> dict[str, Any]:
    return {
        "arch": cfg.model,
        "model_kwargs": model_kwargs,
        "model": clean_state_dict(tr.module.state_dict()),
        "ema": tr.ema.state_dict() if tr.ema is not None else None,
        "best_weights": "ema" if tr.ema is not None else "model",  # which weights best.pt was picked by
        "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(),
        "scaler": tr.scaler.state_dict() if tr.scaler.is_enabled() else None,
        "epoch": progress.epoch,
        "best_metric": progress.best_metric,
        "best_epoch": progress.best_epoch,
        "metrics": list(progress.history),
        "config": config_dict(cfg),
        "data": data_info,
        "rng": rng,
    }


def resume_from(path: Path, tr: Trainer, cfg: TrainConfig, model_kwargs: dict, data_info: dict,
                rank: int = 0) -> _Progress:
    ckpt = load_checkpoint(path)
    check_resumable(path, ckpt, cfg, model_kwargs, data_info)
    tr.module.load_state_dict(clean_state_dict(ckpt["model"]))
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    tr.scheduler.load_state_dict(ckpt["scheduler"])
    if tr.scaler.is_enabled() and ckpt.get("scaler"):
        tr.scaler.load_state_dict(ckpt["scaler"])
    if tr.ema is not None:
        tr.ema.load_state_dict(ckpt["ema"])
    states = ckpt.get("rng") or []
    if states:
        set_rng_state(states[rank] if rank < len(states) else states[0])
    log.info("resuming %s from epoch %d (best val %.4f at epoch %d)", path.parent.name, ckpt["epoch"],
             ckpt["best_metric"], ckpt["best_epoch"])
    return _Progress(history=list(ckpt["metrics"]), best_metric=ckpt["best_metric"],
                     best_epoch=ckpt["best_epoch"])


def check_resumable(path: Path, ckpt: dict, cfg: TrainConfig, model_kwargs: dict, data_info: dict) -> None:
    """A checkpoint of another model, data split or experiment config cannot be continued."""
    if ckpt["arch"] != cfg.model or ckpt["model_kwargs"] != model_kwargs:
        raise PipelineError(
            f"{path}: checkpoint is of model '{ckpt['arch']}' {ckpt['model_kwargs']}, not '{cfg.model}' "
            f"{model_kwargs}; use another --run to start a new one")
    if ckpt.get("data", {}).get("split_sha256") != data_info["split_sha256"]:
        raise PipelineError(f"{path}: checkpoint was trained on another data split than "
                            f"{data_info['root']}/split.npz; use another --run to start a new one")
    old, new = ckpt.get("config", {}), config_dict(cfg)
    changed = sorted(k for k in new if k not in RESUME_MAY_CHANGE and old.get(k) != new[k])
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise PipelineError(f"{path}: the config differs from the checkpoint's ({diffs}); "
                            "resume with the same settings or use another --run")
    if old.get("epochs") != cfg.epochs:
        log.warning("resuming with epochs %s instead of %s: the lr schedule is rebuilt for the new length",
                    cfg.epochs, old.get("epochs"))


def check_run_dir(run_dir: Path, cfg: TrainConfig) -> None:
    if cfg.resume:
        if not (run_dir / "last.pt").is_file():
            raise PipelineError(f"{run_dir / 'last.pt'}: not found, nothing to resume; drop --resume to start the run")
        return
    held = [name for name in ("last.pt", "best.pt") if (run_dir / name).exists()]
    if held and not cfg.overwrite:
        raise PipelineError(f"{run_dir}: already holds {', '.join(held)}; pass --resume to continue that run, "
                            "--overwrite to start it afresh, or --run NAME for a new one")


def fresh_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run folder; with --overwrite, first remove the earlier run's files (only those)."""
    if overwrite:
        for name in (*RUN_FILES, *_snapshots(run_dir)):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def _snapshots(run_dir: Path) -> list[str]:
    found = [p.name for p in run_dir.glob("epoch_*.pt")] if run_dir.is_dir() else []
    return sorted(found, key=lambda name: int(name[6:-3]) if name[6:-3].isdigit() else -1)


def resolve_run_name(cfg: TrainConfig, data: PreparedData) -> TrainConfig:
    """Fill competition (from meta.json) and the run name, so the saved config is complete."""
    competition = cfg.competition or data.meta.get("competition") or Path(cfg.data).name
    run = cfg.run or f"{competition}-{cfg.model}"
    run = run.replace(":", "-").replace("/", "-")
    if run in ("", ".", ".."):
        raise PipelineError(f"--run '{cfg.run}' is not a usable folder name")
    return dataclasses.replace(cfg, competition=competition, run=run)


def data_provenance(data: PreparedData) -> dict[str, Any]:
    return {
        "root": str(data.root),
        "competition": data.meta.get("competition"),
        "meta_sha256": sha256_file(data.root / "meta.json"),
        "split_sha256": sha256_file(data.root / "split.npz"),
        "arrays_sha256": data.lineage,  # what predict and ensemble check the data against
    }


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # fixed input sizes: autotuning pays off


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as plain lists/tensors (weights_only-safe)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(words), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_finite(losses: list[torch.Tensor], epoch: int, last_step: int) -> None:
    """Raise NonFiniteLoss naming the first step whose loss was NaN or inf (one sync for all)."""
    if not losses:
        return
    values = torch.stack([v.float() for v in losses])
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise NonFiniteLoss(epoch, last_step - len(losses) + 1 + first, float(values[first]))


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)
