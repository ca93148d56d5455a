"""A training run end to end: run_training, as a short sequence of named steps (see _run).

One code path for 1 CPU process, 1 GPU, or N processes under torchrun (DDP). The pieces live
beside it: trainer.py (the Trainer and its step), epoch.py (one pass of training or validation),
tune.py (the probe's auto values), budget.py (--time-budget), resume.py (checkpoint contents,
exact resume), run_folder.py (the folder's checks and swaps), logbook.py (the metrics files).
After every epoch rank 0 writes best.pt (if improved), last.pt, metrics and curves, in that order,
so an interruption at any point leaves a run that --resume continues to the same result.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from pipeline import flips
from pipeline.artifacts import sha256_file, write_manifest
from pipeline.augment import build_eval_loader, build_train_loader
from pipeline.checkpoint import save_checkpoint
from pipeline.config import config_dict, save_config
from pipeline.data.dataset import PreparedData, load_prepared
from pipeline.errors import PipelineError
from pipeline.models import create_model
from pipeline.run_layout import BEST, CONFIG, LAST, MANIFEST, TRAIN_FILES, snapshot_name, snapshots
from pipeline.runtime import check_precision
from pipeline.train import distributed, logbook
from pipeline.train.budget import BudgetClock, check_at_epoch_end, plan_budget
from pipeline.train.config import TrainConfig, check_config
from pipeline.train.epoch import NonFiniteLoss, epoch_row, train_one_epoch
from pipeline.train.probe import ProbeResult
from pipeline.train.resume import (Progress, checkpoint_state, configure_determinism, resume_from, rng_state,
                                   seed_everything)
from pipeline.train.run_folder import (check_run_dir, extension_of, prepare_writing_dir, resolve_run_name, swap_in,
                                       writing_dir)
from pipeline.train.schedules import total_steps
from pipeline.train.trainer import Trainer, build_trainer, initialise
from pipeline.train.tune import tune_runtime

log = logging.getLogger(__name__)

# curves.png takes ~0.1-0.3 s to draw on a small CPU: refresh it after an epoch only if the last
# drawing is this old, so tiny/fast runs are not dominated by plotting; the finished run always gets it.
CURVES_EVERY_S = 5.0
# Without a terminal (logs, CI, `make ... | tee`) there is no bar: a progress line this often instead.
PROGRESS_EVERY_S = 30.0


@dataclass
class Run:
    """What the steps of one run share: its settled config, data, folders and process."""

    cfg: TrainConfig
    data: PreparedData
    run_dir: Path  # OUT_DIR/RUN
    out: Path  # where files go while it trains: run_dir, or with --replace its staging folder
    dist_info: Any
    device: torch.device
    started: float  # time.time() at the start (a time budget counts from here)
    on_epoch_end: Callable[[int, dict], Any] | None = None
    data_info: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.dist_info.is_main


class Loaders(NamedTuple):
    train: Any
    val: Any


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
        check_precision(cfg.precision, device)
        return _run(cfg, dist_info, device, on_epoch_end, started)
    finally:
        if owns_group:
            distributed.cleanup()


def _run(cfg, dist_info, device, on_epoch_end, started) -> dict[str, Any]:
    # The order of these steps is the order of the global RNG's draws: keep it, or a seed's run changes.
    configure_determinism(cfg.deterministic)
    seed_everything(cfg.seed)
    run = _open_run(cfg, load_prepared(cfg.data, cfg.competition), dist_info, device, started, on_epoch_end)
    (train_images, train_labels), val_split = _splits(run)
    module, whiten_conv = _build_model(run, train_images)
    # auto precision / memory format / compile: measured (or cached), and written into cfg
    run.cfg, probed = tune_runtime(run.cfg, module, run.data, len(train_labels), device, dist_info)
    if run.cfg.channels_last:
        module.to(memory_format=torch.channels_last)
    loaders = _loaders(run, train_images, train_labels, *val_split)
    clock = None
    if run.cfg.time_budget:  # size the run (cfg.epochs) to fit the budget
        run.cfg, clock = plan_budget(run.cfg, module, probed, run.data, len(loaders.train), len(val_split[1]),
                                     device, dist_info, run.run_dir, started)
    tr = build_trainer(run.cfg, module, steps_per_epoch=len(loaders.train), num_classes=run.data.num_classes,
                       mean=run.data.meta["mean"], std=run.data.meta["std"], device=device,
                       world_size=dist_info.world_size)
    steps_total = total_steps(run.cfg.epochs, len(loaders.train))
    if run.main:
        _log_start(run, tr, loaders, len(train_labels), len(val_split[1]), steps_total)
    # Per-rank streams for dropout/mixup; rank 0 keeps exactly the single-process stream.
    seed_everything(run.cfg.seed + 1000 * dist_info.rank)
    progress = _start(run, tr, clock, steps_total)
    stopped_early = _train_epochs(run, tr, progress, loaders, whiten_conv, steps_total)
    return _finish(run, tr, progress, probed, stopped_early)


def _open_run(cfg: TrainConfig, data: PreparedData, dist_info, device: torch.device, started: float,
              on_epoch_end) -> Run:
    """Settle the run's name, flips and folder, and check the folder before any work: a wrong
    --run/--resume fails in a second."""
    cfg = resolve_run_name(cfg, data)
    cfg = flips.resolve_train(cfg, data.meta)  # flip_mode auto -> what this data allows
    run_dir = Path(cfg.out_dir) / cfg.run
    cfg = extension_of(run_dir, cfg)  # --extend: a longer run continues the shorter one
    check_run_dir(run_dir, cfg)
    return Run(cfg=cfg, data=data, run_dir=run_dir, out=writing_dir(run_dir, cfg), dist_info=dist_info,
               device=device, started=started, on_epoch_end=on_epoch_end, data_info=data_provenance(data))


def _splits(run: Run) -> tuple[tuple, tuple]:
    """((train images, labels), (val images, labels)); a final fit trains on the val images too."""
    data, cfg = run.data, run.cfg
    train_images, train_labels, _ = data.subset("all" if cfg.final_fit else "train")
    val_images, val_labels, _ = data.subset("val")
    if cfg.final_fit and run.main:
        log.warning("final fit: the %d val images are trained on too, so val accuracy is not a held-out "
                    "figure; judge the settings on a run without --final-fit", len(val_labels))
    if len(val_labels) == 0:
        raise PipelineError(f"{data.root / 'split.npz'}: the validation split is empty; training needs it "
                            "for best.pt and early stopping")
    return (train_images, train_labels), (val_images, val_labels)


def _build_model(run: Run, train_images) -> tuple[nn.Module, nn.Conv2d | None]:
    """The network on the device, initialised; (it, its whitening conv if any). Records model_kwargs."""
    data, cfg = run.data, run.cfg
    run.model_kwargs = {"num_classes": data.num_classes, "in_chans": data.in_chans,
                        "input_size": list(data.input_size), "opts": dict(cfg.model_opts)}
    module = create_model(cfg.model, num_classes=data.num_classes, in_chans=data.in_chans,
                          input_size=data.input_size, **cfg.model_opts)
    module.to(run.device)
    whiten_conv = initialise(module, cfg, train_images, data.meta["mean"], data.meta["std"], run.device)
    return module, whiten_conv


def _loaders(run: Run, train_images, train_labels, val_images, val_labels) -> Loaders:
    cfg, dist_info = run.cfg, run.dist_info
    train = build_train_loader(
        train_images, train_labels, policy=cfg.augment, batch_size=cfg.batch_size, device=run.device,
        seed=cfg.seed, drop_last=True, rank=dist_info.rank, world_size=dist_info.world_size,
        workers=cfg.workers, cutout=cfg.cutout, crop_pad=cfg.crop_pad, pad_mode=cfg.pad_mode,
        flip_mode=cfg.flip_mode)
    # Every rank validates the whole split: simplest correct, and these splits are small.
    return Loaders(train, build_eval_loader(val_images, val_labels, batch_size=cfg.eval_batch_size,
                                            device=run.device))


def _log_start(run: Run, tr: Trainer, loaders: Loaders, n_train: int, n_val: int, steps_total: int) -> None:
    cfg = run.cfg
    log.info("training %s on %s: %d train / %d val images, %d steps/epoch x %g epochs = %d steps, %s%s -> %s",
             cfg.model, run.data.meta.get("competition"), n_train, n_val, len(loaders.train), cfg.epochs,
             steps_total, tr.precision, ", channels_last" if cfg.channels_last else "", run.run_dir)


def _start(run: Run, tr: Trainer, clock: BudgetClock | None, steps_total: int) -> Progress:
    """A resumed run's state from its last.pt, or a fresh folder; config.yaml and the metrics files."""
    cfg, progress = run.cfg, Progress()
    if cfg.resume:
        progress = resume_from(run.run_dir / LAST, tr, cfg, run.model_kwargs, run.data_info,
                               run.dist_info.rank)
        if tr.lookahead is not None:
            tr.lookahead.resume(tr.global_step)
    elif run.main:
        prepare_writing_dir(run.run_dir, run.out, cfg.overwrite)
    if clock is not None:  # a compressed schedule (saved with the scheduler) ends where its warp says
        clock.start(tr, steps_total, resumed=cfg.resume)
    distributed.barrier()
    if run.main:
        save_config(cfg, run.out / CONFIG)
        # On resume this drops rows (and curve points) of epochs after the checkpoint.
        logbook.write_metrics(run.out, progress.history, plot=bool(progress.history))
    return progress


def _train_epochs(run: Run, tr: Trainer, progress: Progress, loaders: Loaders, whiten_conv: nn.Conv2d | None,
                  steps_total: int) -> bool:
    """The epochs left to train; returns whether early stopping ended them. A NaN loss or Ctrl-C
    says which files hold what."""
    stopped_early = _patience_exhausted(run.cfg, progress)
    show_bar = run.main and sys.stderr.isatty()
    epoch = progress.epoch
    last_plot = time.monotonic()
    try:
        for epoch in range(progress.epoch + 1, sys.maxsize):
            if tr.budget is not None:  # a run behind its budget ends sooner (one far ahead, later)
                steps_total = tr.budget.total_steps
            if stopped_early or (epoch - 1) * len(loaders.train) >= steps_total:
                break
            last_plot = _train_epoch(run, tr, progress, loaders, whiten_conv, epoch, steps_total, show_bar,
                                     last_plot)
            stopped_early = _patience_exhausted(run.cfg, progress)
    except NonFiniteLoss as e:
        kept = f"{run.out / LAST} keeps epoch {progress.epoch}" if progress.epoch else "no checkpoint was written"
        if run.out != run.run_dir:
            kept = f"{run.run_dir} keeps the earlier run"
        raise NonFiniteLoss(e.epoch, e.step, e.value,
                            f"; stopped ({kept}). Try a lower --lr, --grad-clip 1, or --precision fp32") from None
    except KeyboardInterrupt:
        if run.main:
            where = (f"{run.run_dir / LAST} holds epoch {progress.epoch}; continue with --resume"
                     if progress.epoch else "no epoch completed, nothing saved")
            if run.out != run.run_dir:
                where = f"{run.run_dir} keeps the earlier run (the retrain starts afresh next time)"
            log.warning("interrupted during epoch %d: %s", epoch, where)
        raise
    return stopped_early


def _train_epoch(run: Run, tr: Trainer, progress: Progress, loaders: Loaders, whiten_conv: nn.Conv2d | None,
                 epoch: int, steps_total: int, show_bar: bool, last_plot: float) -> float:
    """Train and validate one epoch, then (rank 0) save it; returns when curves.png was last drawn."""
    cfg, main = run.cfg, run.main
    epochs_total = math.ceil(steps_total / len(loaders.train))
    epoch_start = time.perf_counter()
    loaders.train.set_epoch(epoch)
    if whiten_conv is not None and whiten_conv.bias is not None and cfg.whiten_bias_epochs > 0:
        # A frozen bias gets no gradient, so the optimizer skips it (no decay, no momentum).
        whiten_conv.bias.requires_grad_(epoch <= cfg.whiten_bias_epochs)
    train = train_one_epoch(tr, loaders.train, epoch, log_every=cfg.log_every, show_progress=show_bar,
                            heartbeat_s=PROGRESS_EVERY_S if main and not show_bar else 0.0,
                            desc=f"epoch {epoch}/{epochs_total}",
                            max_steps=steps_total - (epoch - 1) * len(loaders.train))
    distributed.sync_buffers(tr.module)
    row = epoch_row(tr, loaders.val, epoch, train, epoch_start)
    row = distributed.broadcast_object(row)  # rank 0's numbers drive every rank's decisions
    progress.history.append(row)
    score = row["ema_val_acc"] if tr.ema is not None else row["val_acc"]
    improved = score > progress.best_metric
    if improved:
        progress.best_metric, progress.best_epoch = score, epoch
    rng = distributed.all_gather_object(rng_state())
    if main:
        plot = time.monotonic() - last_plot >= CURVES_EVERY_S
        _save_epoch(run.out, tr, cfg, run.model_kwargs, run.data_info, progress, rng, improved, plot)
        last_plot = time.monotonic() if plot else last_plot
        _log_epoch(row, epochs_total, improved)
        if run.on_epoch_end is not None:
            run.on_epoch_end(epoch, row)
    if tr.budget is not None:
        check_at_epoch_end(tr, train, epoch_start, main)
    return last_plot


def _finish(run: Run, tr: Trainer, progress: Progress, probed: ProbeResult, stopped_early: bool) -> dict[str, Any]:
    """The summary; rank 0 writes the final curves and the manifest, and swaps a retrain into place."""
    cfg, out = run.cfg, run.out
    if stopped_early:
        log.info("early stop after epoch %d: no better val accuracy for %d epochs; best is epoch %d (best.pt)",
                 progress.epoch, cfg.early_stop_patience, progress.best_epoch)
    summary = {
        "run_dir": str(run.run_dir),
        "best_val_acc": progress.best_metric if progress.history else None,
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "wall_seconds": round(time.time() - run.started, 3),
        "stopped_early": stopped_early,
    }
    if tr.budget is not None:
        summary["budget"] = tr.budget.record()
    if run.main:
        logbook.write_metrics(out, progress.history)  # final curves.png
        _write_manifest(run, tr, progress, probed, summary)
        if out != run.run_dir:
            swap_in(out, run.run_dir)  # complete: the retrained run takes the earlier one's place
        # debug: the train command prints the result once itself; library callers get `summary`
        log.debug("best val accuracy %.4f at epoch %d -> %s", summary["best_val_acc"] or float("nan"),
                  summary["best_epoch"], run.run_dir / BEST)
    return summary


def _write_manifest(run: Run, tr: Trainer, progress: Progress, probed: ProbeResult, summary: dict) -> None:
    out, data = run.out, run.data
    outputs = [name for name in (*TRAIN_FILES, *(path.name for _, path in snapshots(out)))
               if (out / name).is_file() and name != MANIFEST]
    write_manifest(
        out, "train", inputs=[data.root / "meta.json", data.root / "split.npz"], outputs=outputs,
        config=config_dict(run.cfg), seed=run.cfg.seed, started=run.started,
        metrics={k: summary[k] for k in ("best_val_acc", "best_epoch", "epochs_run", "stopped_early")}
        | {"best_metric": "ema_val_acc" if tr.ema is not None else "val_acc",
           "final": progress.history[-1] if progress.history else None},
        extra={"probe": probed.record(), **({"budget": tr.budget.record()} if tr.budget is not None else {})},
    )


def _save_epoch(out, tr, cfg, model_kwargs, data_info, progress, rng, improved, plot) -> None:
    # best.pt before last.pt: if interrupted in between, last.pt still points at the previous epoch
    # and --resume redoes this one, rewriting the same best.pt.
    state = checkpoint_state(tr, cfg, model_kwargs, data_info, progress, rng)
    if improved:
        save_checkpoint(out / BEST, state)
    save_checkpoint(out / LAST, state)
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
