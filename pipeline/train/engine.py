"""The training loop: run_training (a whole run), train_one_epoch and evaluate (one pass each).

One code path for 1 CPU process, 1 GPU, or N processes under torchrun (DDP). Per iteration:
autocast around forward *and* loss, GradScaler only for fp16 (unscale_ before clipping), exactly
one optimizer step, one scheduler step, one EMA update. After every epoch rank 0 writes best.pt
(if improved), last.pt, metrics and curves, in that order, so an interruption at any point leaves
a run that --resume continues to the same result.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import flips
from pipeline.artifacts import sha256_file, write_manifest
from pipeline.augment import build_eval_loader, build_train_loader
from pipeline.checkpoint import save_checkpoint
from pipeline.config import config_dict, load_yaml, save_config
from pipeline.data.dataset import PreparedData, load_prepared
from pipeline.errors import PipelineError
from pipeline.models import create_model
from pipeline.models.init import dirac_init_, first_conv, whiten_init_
from pipeline.run_layout import snapshot_name
from pipeline.runtime import (PRECISIONS, autocast, autocast_factory, fallback_channels_last, fallback_compile,
                              nhwc_to_nchw, normalizer, resolve_precision, to_model_input)
from pipeline.train import distributed, logbook, probe
from pipeline.train.budget import BudgetClock
from pipeline.train.config import TrainConfig, check_config
from pipeline.train.ema import Lookahead, ModelEma
from pipeline.train.resume import (Progress, checkpoint_state, configure_determinism, resume_from, rng_state,
                                   seed_everything)
from pipeline.train.run_folder import (RUN_FILES, check_run_dir, extension_of, prepare_writing_dir, resolve_run_name,
                                       snapshots, swap_in, writing_dir)
from pipeline.train.optim import build_optimizer, decayed_parameters, l1_penalty
from pipeline.train.schedules import build_scheduler, total_steps

log = logging.getLogger(__name__)

# curves.png takes ~0.1-0.3 s to draw on a small CPU: refresh it after an epoch only if the last
# drawing is this old, so tiny/fast runs are not dominated by plotting; the finished run always gets it.
CURVES_EVERY_S = 5.0
# Without a terminal (logs, CI, `make ... | tee`) there is no bar: a progress line this often instead.
PROGRESS_EVERY_S = 30.0


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
    precision = resolve_precision(cfg.precision, device)
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision '{cfg.precision}'; choose from: auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise PipelineError("--precision fp16 needs CUDA; use bf16 or fp32 on CPU")
    # The optimizer sees the resolved precision (Muon's Newton-Schulz follows it).
    optimizer = build_optimizer(module, dataclasses.replace(cfg, precision=precision),
                                batch_size=cfg.batch_size * world_size)
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
    if fallback_compile(device) if cfg.compile is None else cfg.compile:
        model = torch.compile(model)
    eval_model = model if world_size == 1 else module
    channels_last = fallback_channels_last(device) if cfg.channels_last is None else cfg.channels_last
    return Trainer(
        model=model, module=module, eval_model=eval_model, optimizer=optimizer, scheduler=scheduler,
        scaler=scaler, criterion=criterion, inputs=ModelInput(*normalizer(mean, std, device), channels_last),
        device=device, precision=precision, ema=ema, lookahead=lookahead, mixup=mixup, grad_clip=cfg.grad_clip,
        l1=cfg.l1, l1_params=decayed_parameters(module) if cfg.l1 else [], micro_batch=cfg.micro_batch_size,
        autocast=autocast_factory(device, precision),
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
    heartbeat_s: float = 0.0,
) -> dict[str, float]:
    """One pass over `loader` (or its first max_steps batches: the last epoch of a fractional run);
    returns loss/acc/samples summed over all processes, seconds, img/s. heartbeat_s > 0: log a
    progress line whenever that many seconds passed since the last (for logs, where no bar shows)."""
    tr.model.train()
    loss_sum = torch.zeros((), device=tr.device)
    correct = torch.zeros((), dtype=torch.long, device=tr.device)
    seen = 0
    pending: list[torch.Tensor] = []  # per-step losses not yet checked for NaN/inf
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    bar = _progress(steps, desc or f"epoch {epoch}", show_progress)
    start = last_line = time.perf_counter()
    step = 0
    for step, (images, labels) in enumerate(loader, start=1):
        logits, loss = train_step(tr, images, labels)
        n = labels.shape[0]
        seen += n
        loss_sum += loss.detach().float() * n
        correct += (logits.detach().argmax(1) == labels).sum()
        pending.append(loss.detach())
        # Checking (and printing) needs a device sync, so it happens every log_every steps only.
        if step % log_every == 0 or step == steps:
            _check_finite(pending, epoch, step)
            pending.clear()
            if tr.budget is not None and step < steps and not distributed.env_info().enabled:
                # behind the budget: the schedule's rest is squeezed into fewer steps, maybe this epoch's
                steps = min(len(loader), _budget_check(tr, step, time.perf_counter() - start))
            if bar is not None:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}",
                                lr=f"{tr.lr:.3g}", img_s=f"{seen / elapsed:.0f}", refresh=False)
        if bar is not None:
            bar.update(1)
        if heartbeat_s and step < steps and time.perf_counter() - last_line >= heartbeat_s:
            last_line = time.perf_counter()  # .item() syncs the device, but only once per line
            elapsed = last_line - start
            log.info("%s step %d/%d: loss %.4f acc %.4f lr %.3g, %.0f img/s, epoch ends in ~%.0fs",
                     desc or f"epoch {epoch}", step, steps, loss_sum.item() / seen, correct.item() / seen,
                     tr.lr, seen / elapsed, elapsed / step * (steps - step))
        if step == steps < len(loader):
            break  # the last epoch of a fractional (or budget-shortened) run
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


def _run(cfg, dist_info, device, on_epoch_end, started) -> dict[str, Any]:
    main = dist_info.is_main
    configure_determinism(cfg.deterministic)
    seed_everything(cfg.seed)
    data = load_prepared(cfg.data, cfg.competition)
    cfg = resolve_run_name(cfg, data)
    cfg = flips.resolve_train(cfg, data.meta)  # flip_mode auto -> what this data allows
    run_dir = Path(cfg.out_dir) / cfg.run
    cfg = extension_of(run_dir, cfg)  # --extend: a longer run continues the shorter one
    check_run_dir(run_dir, cfg)  # before any work: a wrong --run/--resume fails in a second
    out = writing_dir(run_dir, cfg)  # run_dir, or with --replace its staging folder until the end
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
    # auto precision / memory format / compile: measured (or cached), and written into cfg
    cfg, probed = tune_runtime(cfg, module, data, len(train_labels), device, dist_info)
    if cfg.channels_last:
        module.to(memory_format=torch.channels_last)

    train_loader = build_train_loader(
        train_images, train_labels, policy=cfg.augment, batch_size=cfg.batch_size, device=device,
        seed=cfg.seed, drop_last=True, rank=dist_info.rank, world_size=dist_info.world_size,
        workers=cfg.workers, cutout=cfg.cutout, crop_pad=cfg.crop_pad, pad_mode=cfg.pad_mode,
        flip_mode=cfg.flip_mode)
    # Every rank validates the whole split: simplest correct, and these splits are small.
    val_loader = build_eval_loader(val_images, val_labels, batch_size=cfg.eval_batch_size, device=device)
    clock = None
    if cfg.time_budget:  # size the run (cfg.epochs) to fit the budget
        cfg, clock = plan_budget(cfg, module, probed, data, len(train_loader), len(val_labels), device,
                                 dist_info, run_dir, started)
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

    progress = Progress()
    if cfg.resume:
        progress = resume_from(run_dir / "last.pt", tr, cfg, model_kwargs, data_info, dist_info.rank)
        if tr.lookahead is not None:
            tr.lookahead.resume(tr.global_step)
    elif main:
        prepare_writing_dir(run_dir, out, cfg.overwrite)
    if clock is not None:  # a compressed schedule (saved with the scheduler) ends where its warp says
        steps_total = clock.start(tr, steps_total, resumed=cfg.resume)
    distributed.barrier()
    if main:
        save_config(cfg, out / "config.yaml")
        # On resume this drops rows (and curve points) of epochs after the checkpoint.
        logbook.write_metrics(out, progress.history, plot=bool(progress.history))

    stopped_early = _patience_exhausted(cfg, progress)
    show_bar = main and sys.stderr.isatty()
    epoch = progress.epoch
    last_plot = time.monotonic()
    try:
        for epoch in range(progress.epoch + 1, sys.maxsize):
            if tr.budget is not None:  # a run behind its budget ends sooner (one far ahead, later)
                steps_total = tr.budget.total_steps
                epochs_total = math.ceil(steps_total / len(train_loader))
            if stopped_early or (epoch - 1) * len(train_loader) >= steps_total:
                break
            epoch_start = time.perf_counter()
            train_loader.set_epoch(epoch)
            if whiten_conv is not None and whiten_conv.bias is not None and cfg.whiten_bias_epochs > 0:
                # A frozen bias gets no gradient, so the optimizer skips it (no decay, no momentum).
                whiten_conv.bias.requires_grad_(epoch <= cfg.whiten_bias_epochs)
            train = train_one_epoch(tr, train_loader, epoch, log_every=cfg.log_every, show_progress=show_bar,
                                    heartbeat_s=PROGRESS_EVERY_S if main and not show_bar else 0.0,
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
                _save_epoch(out, tr, cfg, model_kwargs, data_info, progress, rng, improved, plot)
                last_plot = time.monotonic() if plot else last_plot
                _log_epoch(row, epochs_total, improved)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, row)
            stopped_early = _patience_exhausted(cfg, progress)
            if tr.budget is not None:
                _budget_epoch_end(tr, train, epoch_start, main)
    except NonFiniteLoss as e:
        kept = f"{out / 'last.pt'} keeps epoch {progress.epoch}" if progress.epoch else "no checkpoint was written"
        if out != run_dir:
            kept = f"{run_dir} keeps the earlier run"
        raise PipelineError(f"{e}; stopped ({kept}). Try a lower --lr, --grad-clip 1, or --precision fp32") from None
    except KeyboardInterrupt:
        if main:
            where = (f"{run_dir / 'last.pt'} holds epoch {progress.epoch}; continue with --resume"
                     if progress.epoch else "no epoch completed, nothing saved")
            if out != run_dir:
                where = f"{run_dir} keeps the earlier run (the retrain starts afresh next time)"
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
    if tr.budget is not None:
        summary["budget"] = tr.budget.record()
    if main:
        logbook.write_metrics(out, progress.history)  # final curves.png
        outputs = [name for name in (*RUN_FILES, *snapshots(out)) if (out / name).is_file()
                   and name != "manifest.json"]
        write_manifest(
            out, "train", inputs=[data.root / "meta.json", data.root / "split.npz"], outputs=outputs,
            config=config_dict(cfg), seed=cfg.seed, started=started,
            metrics={k: summary[k] for k in ("best_val_acc", "best_epoch", "epochs_run", "stopped_early")}
            | {"best_metric": "ema_val_acc" if tr.ema is not None else "val_acc",
               "final": progress.history[-1] if progress.history else None},
            extra={"probe": probed.record(), **({"budget": tr.budget.record()} if tr.budget is not None else {})},
        )
        if out != run_dir:
            swap_in(out, run_dir)  # complete: the retrained run takes the earlier one's place
        # debug: the train command prints the result once itself; library callers get `summary`
        log.debug("best val accuracy %.4f at epoch %d -> %s", summary["best_val_acc"] or float("nan"),
                 summary["best_epoch"], run_dir / "best.pt")
    return summary


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
            return _probe_step(cfg, module, candidate, batch, shape, data, steps_per_epoch, device)

        result = probe.run_probe(
            precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile, device=device,
            key_fields={"model": cfg.model, "model_opts": cfg.model_opts, "batch_size": cfg.batch_size,
                        "micro_batch_size": cfg.micro_batch_size, "input_shape": shape,
                        "optimizer": cfg.optimizer},
            batch_size=cfg.batch_size, make_step=make_step, run_steps=total_steps(cfg.epochs, steps_per_epoch),
            time_budget=cfg.time_budget, enabled=cfg.probe)
        log.info("%s", result.line())
    result = distributed.broadcast_object(result)
    choice = result.choice
    return dataclasses.replace(cfg, precision=choice.precision, channels_last=choice.channels_last,
                               compile=choice.compile), result


def _probe_step(cfg: TrainConfig, module: nn.Module, candidate: "probe.Candidate", batch: int,
                shape: tuple[int, ...], data: PreparedData, steps_per_epoch: int,
                device: torch.device) -> Callable[[], None]:
    """One real training step (train_step) of `candidate` on a copy of `module` and a fixed random
    batch of `batch` images: pixel values do not change the speed, the run's weights stay untouched."""
    twin = copy.deepcopy(module)
    if candidate.channels_last:
        twin.to(memory_format=torch.channels_last)
    tr = build_trainer(dataclasses.replace(cfg, precision=candidate.precision, channels_last=candidate.channels_last,
                                           compile=candidate.compile),
                       twin, steps_per_epoch=steps_per_epoch, num_classes=data.num_classes,
                       mean=data.meta["mean"], std=data.meta["std"], device=device)
    gen = torch.Generator().manual_seed(0)
    batch += batch % 2 if tr.mixup is not None else 0  # mixup pairs images
    images = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=gen).to(device)
    labels = torch.randint(0, data.num_classes, (batch,), generator=gen).to(device)
    return lambda: train_step(tr, images, labels)


def plan_budget(cfg: TrainConfig, module: nn.Module, probed: probe.ProbeResult, data: PreparedData,
                steps_per_epoch: int, n_val: int, device: torch.device, dist_info, run_dir: Path,
                started: float) -> tuple[TrainConfig, BudgetClock]:
    """--time-budget: epochs sized so training, evaluations, checkpoints and the write-up fit
    (printed as one line); a resumed run keeps the epochs it was planned with."""
    clock = None
    if dist_info.is_main:
        step_s = cfg.batch_size / probed.img_per_s
        # one evaluation pass and two checkpoint writes (best + last) per epoch, measured here
        # (`module` is already in its final memory format; eval mode changes no state)
        batch = min(cfg.eval_batch_size, n_val)
        x = torch.randn(batch, *data.input_size, device=device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        was_training = module.training
        module.eval()
        with torch.inference_mode(), autocast(device, cfg.precision):
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                module(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
        module.train(was_training)
        eval_s = min(times) * math.ceil(n_val / batch) * (2 if cfg.ema > 0 else 1)  # the EMA is evaluated too
        t0 = time.perf_counter()
        torch.save({"model": module.state_dict(), "twice": module.state_dict()}, io.BytesIO())
        save_s = 2 * (time.perf_counter() - t0)
        clock = BudgetClock(budget_s=cfg.time_budget, started=started, steps_per_epoch=steps_per_epoch,
                            batch_size=cfg.batch_size * dist_info.world_size,
                            step_s=step_s, epoch_overhead_s=eval_s + save_s, final_s=eval_s + save_s)
        if cfg.resume:
            epochs = float(load_yaml(run_dir / "config.yaml")["epochs"])
            clock.total_steps = total_steps(epochs, steps_per_epoch)
            clock.planned_epochs = epochs
            clock.plan_line = f"budget {cfg.time_budget:g} s: resuming the planned {epochs:g} epochs"
            log.info("%s", clock.plan_line)
        else:
            clock.plan()
            log.info("%s", clock.freeze_plan())
    clock = distributed.broadcast_object(clock)
    return dataclasses.replace(cfg, epochs=clock.planned_epochs), clock


def _budget_check(tr: Trainer, step: int, epoch_s: float) -> int:
    """In-epoch check of tr.budget after `step` steps of this epoch: how many steps this epoch
    may take (fewer than planned if the run fell behind and its schedule was compressed)."""
    clock = tr.budget
    done = tr.global_step
    first = done - step
    if clock.check(done, first // clock.steps_per_epoch, epoch_s, step, _schedule_done(tr)) is not None:
        _compress(tr)
    return clock.total_steps - first


def _budget_epoch_end(tr: Trainer, train: dict, epoch_start: float, main: bool) -> None:
    """Record the epoch's measured times, then check the budget at the boundary (rank 0 decides)."""
    clock = tr.budget
    overhead = time.perf_counter() - epoch_start - train["seconds"]
    clock.end_epoch(train["seconds"], train["steps"], overhead)
    new_total = clock.check(tr.global_step, math.ceil(tr.global_step / clock.steps_per_epoch),
                            schedule_done=_schedule_done(tr)) if main else None
    new_total = distributed.broadcast_object(new_total)
    if new_total is not None:
        clock.total_steps = new_total
        _compress(tr)


def _schedule_done(tr: Trainer) -> float:
    return tr.scheduler.warp(tr.global_step) / max(1, tr.budget.schedule_steps)


def _compress(tr: Trainer) -> None:
    """Fit the rest of the lr schedule (and lookahead's horizon) into tr.budget.total_steps steps:
    squeezed when behind the budget, stretched when far ahead early on."""
    clock = tr.budget
    # the lr at this step stays what it is (the warp keeps it); later steps reach the floor sooner
    tr.scheduler.warp.compress(tr.global_step, clock.total_steps, clock.schedule_steps)
    if tr.lookahead is not None:
        tr.lookahead.total_steps = clock.total_steps
    last = clock.replans[-1] if clock.replans else None
    if last is not None:
        log.info("%s the time budget at step %d (%.1f s): the schedule now ends at step %d instead of %d",
                 "behind" if last.new_total < last.old_total else "ahead of", last.at_step, last.elapsed_s,
                 last.new_total, last.old_total)


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


def _save_epoch(out, tr, cfg, model_kwargs, data_info, progress, rng, improved, plot) -> None:
    # best.pt before last.pt: if interrupted in between, last.pt still points at the previous epoch
    # and --resume redoes this one, rewriting the same best.pt.
    state = checkpoint_state(tr, cfg, model_kwargs, data_info, progress, rng)
    if improved:
        save_checkpoint(out / "best.pt", state)
    save_checkpoint(out / "last.pt", state)
    if cfg.save_every and progress.epoch % cfg.save_every == 0:
        save_checkpoint(out / snapshot_name(progress.epoch), state)
    logbook.write_metrics(out, progress.history, plot=plot)


def _log_epoch(row: dict, epochs: int, improved: bool) -> None:
    ema = f" ema_val_acc {row['ema_val_acc']:.4f}" if "ema_val_acc" in row else ""
    log.info("epoch %d/%d train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f%s lr %.3g "
             "(%.1fs, %.0f img/s)%s", row["epoch"], epochs, row["train_loss"], row["train_acc"],
             row["val_loss"], row["val_acc"], ema, row["lr"], row["seconds"], row["img_per_s"],
             " *best" if improved else "")


def _patience_exhausted(cfg: TrainConfig, progress: Progress) -> bool:
    return bool(cfg.early_stop_patience and progress.history
                and progress.epoch - progress.best_epoch >= cfg.early_stop_patience)


def data_provenance(data: PreparedData) -> dict[str, Any]:
    return {
        "root": str(data.root),
        "competition": data.meta.get("competition"),
        "meta_sha256": sha256_file(data.root / "meta.json"),
        "split_sha256": sha256_file(data.root / "split.npz"),
        "arrays_sha256": data.lineage,  # what predict and ensemble check the data against
    }


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
