"""One pass each: train_one_epoch (the steps of an epoch, with progress and NaN checks) and
evaluate (validation), plus the epoch's row of metrics.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.runtime import autocast
from pipeline.train import distributed
from pipeline.train.budget import check_in_epoch
from pipeline.train.trainer import ModelInput, Trainer, train_step

log = logging.getLogger(__name__)


class NonFiniteLoss(PipelineError):
    """The loss became NaN/inf: a result for a lab (a diverged run), an error for a plain training run.
    `detail` is what the engine adds (what was kept, what to try), so callers still see the type."""

    def __init__(self, epoch: int, step: int, value: float, detail: str = ""):
        super().__init__(f"loss became {value} at epoch {epoch}, step {step}{detail}")
        self.epoch, self.step, self.value = epoch, step, value


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
    meter = _Meter(tr.device)
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    desc = desc or f"epoch {epoch}"
    bar = _progress(steps, desc, show_progress)
    start = last_line = time.perf_counter()
    step = 0
    for step, (images, labels) in enumerate(loader, start=1):
        logits, loss = train_step(tr, images, labels)
        meter.add(logits, loss, labels)
        if step == 1 and tr.budget is not None:
            tr.budget.mark_warm(time.perf_counter() - start, 1)
        # Checking (and printing) needs a device sync, so it happens every log_every steps only.
        if step % log_every == 0 or step == steps:
            meter.check_finite(epoch, step)
            if tr.budget is not None and step < steps and not distributed.env_info().enabled:
                # behind the budget: the schedule's rest is squeezed into fewer steps, maybe this epoch's
                steps = min(len(loader), check_in_epoch(tr, step, time.perf_counter() - start))
            if bar is not None:
                bar.set_postfix(**meter.postfix(tr.lr, time.perf_counter() - start), refresh=False)
        if bar is not None:
            bar.update(1)
        if heartbeat_s and step < steps and time.perf_counter() - last_line >= heartbeat_s:
            last_line = time.perf_counter()  # .item() syncs the device, but only once per line
            meter.heartbeat(desc, step, steps, tr.lr, last_line - start)
        if step == steps < len(loader):
            break  # the last epoch of a fractional (or budget-shortened) run
    if tr.lookahead is not None:
        tr.lookahead.end_epoch()
    meter.check_finite(epoch, step)
    if bar is not None:
        bar.close()
    if tr.device.type == "cuda":
        torch.cuda.synchronize(tr.device)
    return meter.totals(tr.device, step, time.perf_counter() - start)


@dataclass
class _Meter:
    """An epoch's running loss and accuracy, kept on the device (read only when printed or at the end)."""

    device: torch.device
    loss_sum: torch.Tensor = field(init=False)
    correct: torch.Tensor = field(init=False)
    seen: int = 0
    pending: list[torch.Tensor] = field(default_factory=list)  # per-step losses not yet checked for NaN/inf

    def __post_init__(self):
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), dtype=torch.long, device=self.device)

    def add(self, logits: torch.Tensor, loss: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.seen += n
        self.loss_sum += loss.detach().float() * n
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.pending.append(loss.detach())

    def check_finite(self, epoch: int, step: int) -> None:
        _check_finite(self.pending, epoch, step)
        self.pending.clear()

    def postfix(self, lr: float, elapsed: float) -> dict[str, str]:
        return {"loss": f"{self.loss_sum.item() / self.seen:.4f}", "acc": f"{self.correct.item() / self.seen:.4f}",
                "lr": f"{lr:.3g}", "img_s": f"{self.seen / elapsed:.0f}"}

    def heartbeat(self, desc: str, step: int, steps: int, lr: float, elapsed: float) -> None:
        log.info("%s step %d/%d: loss %.4f acc %.4f lr %.3g, %.0f img/s, epoch ends in ~%.0fs",
                 desc, step, steps, self.loss_sum.item() / self.seen, self.correct.item() / self.seen,
                 lr, self.seen / elapsed, elapsed / step * (steps - step))

    def totals(self, device: torch.device, steps: int, seconds: float) -> dict[str, float]:
        """The epoch's figures summed over all processes."""
        total_loss, total_correct, total_seen = distributed.all_reduce_sum(
            [self.loss_sum.item(), float(self.correct.item()), float(self.seen)], device)
        return {
            "loss": total_loss / max(total_seen, 1),
            "acc": total_correct / max(total_seen, 1),
            "samples": int(total_seen),
            "steps": steps,
            "seconds": seconds,
            "img_per_s": total_seen / seconds if seconds > 0 else float("nan"),
        }


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


def epoch_row(tr: Trainer, val_loader, epoch: int, train: dict, epoch_start: float) -> dict[str, Any]:
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
