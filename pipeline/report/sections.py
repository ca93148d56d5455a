"""The report's sections, in page order: each turns a RunContext into figures and an HTML fragment.

Add a section by writing one function decorated with @section; the page and the PNG folder pick
it up. A section that cannot apply to a run raises PipelineError and the page says why instead.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from pipeline import plots
from pipeline.errors import PipelineError
from pipeline.report.context import RunContext
from pipeline.run_layout import CURVES, METRICS_CSV

AUGMENTED_IMAGES = 32
MISTAKE_IMAGES = 40
TOP_CONFUSIONS = 10
MAX_HISTOGRAMS = 16  # more layers than this: an even spread, first and last included
NEAR_ZERO = 1e-3


@dataclass
class Section:
    figures: dict[str, bytes] = field(default_factory=dict)  # PNG file name -> bytes, in page order
    html: str = ""  # fragment shown under the figures
    note: str = ""  # why the section is empty, if it is


SectionFn = Callable[[RunContext], Section]
SECTIONS: dict[str, tuple[str, SectionFn]] = {}  # name -> (title, builder), in page order


def section(name: str, title: str) -> Callable[[SectionFn], SectionFn]:
    def register(fn: SectionFn) -> SectionFn:
        if name in SECTIONS:
            raise ValueError(f"report section '{name}' is registered twice")
        SECTIONS[name] = (title, fn)
        return fn

    return register


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            text = f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        elif isinstance(value, int) and not isinstance(value, bool):
            text = f"{value:,}"
        else:
            text = "" if value is None else str(value)
        align = ' class="num"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
        return f"<td{align}>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------------------------ sections


@section("curves", "Training curves and learning rate")
def curves(ctx: RunContext) -> Section:
    rows = ctx.metrics
    if not rows:
        raise PipelineError(f"{ctx.run_dir / METRICS_CSV}: no epochs logged yet")
    out = Section()
    out.figures[CURVES] = plots.training_curves(rows)
    out.figures["lr_schedule.png"] = plots.lr_schedule(rows, _per_step_lr(ctx))
    last = rows[-1]
    keys = [k for k in ("train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc", "lr", "seconds",
                        "img_per_s") if last.get(k) is not None]
    out.html = "<p>Last epoch:</p>" + table(["epoch", *keys], [[last["epoch"], *(last[k] for k in keys)]])
    return out


def _per_step_lr(ctx: RunContext) -> tuple[np.ndarray, np.ndarray] | None:
    """The schedule rebuilt from the run's config, one point per optimizer step (single process)."""
    from pipeline.config import resolve_config
    from pipeline.train.config import TrainConfig
    from pipeline.train.schedules import lr_factor, total_steps

    try:
        cfg = resolve_config(TrainConfig, None, ctx.config)
        steps_per_epoch = len(ctx.data.train_idx) // cfg.batch_size
        factor = lr_factor(cfg, steps_per_epoch)
    except PipelineError:
        return None  # the logged per-epoch values still show
    # After s optimizer steps the scheduler holds lr * factor(s); epoch e's logged lr is s = e * steps_per_epoch.
    steps = np.arange(total_steps(cfg.epochs, steps_per_epoch) + 1)
    return steps / steps_per_epoch, np.array([cfg.lr * factor(int(s)) for s in steps])


@section("confusion", "Confusion matrix and per-class accuracy (val)")
def confusion(ctx: RunContext) -> Section:
    pred = ctx.val_predictions
    k = len(ctx.classes)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (pred.labels, pred.predicted), 1)
    counts = matrix.sum(1)
    per_class = np.divide(np.diag(matrix), counts, out=np.zeros(k), where=counts > 0)
    out = Section()
    out.figures["confusion.png"] = plots.confusion_matrix(matrix, ctx.classes)
    out.figures["per_class_accuracy.png"] = plots.per_class_accuracy(per_class, counts, ctx.classes, pred.accuracy)
    off = [(int(matrix[i, j]), i, j) for i in range(k) for j in range(k) if i != j and matrix[i, j]]
    top = sorted(off, key=lambda t: (-t[0], t[1], t[2]))[:TOP_CONFUSIONS]
    rows = [[ctx.classes[i], ctx.classes[j], n, n / counts[i]] for n, i, j in top]
    out.html = (
        f"<p>{len(pred.labels):,} val images, accuracy {pred.accuracy:.4f}. Logits: {html.escape(pred.source)}.</p>"
        + ("<p>Most frequent confusions:</p>" + table(["true", "predicted", "count", "share of true class"], rows)
           if rows else "<p>No confusions.</p>")
    )
    return out


@section("mistakes", "Misclassified val images")
def mistakes(ctx: RunContext) -> Section:
    pred = ctx.val_predictions
    wrong = np.flatnonzero(pred.predicted != pred.labels)
    out = Section()
    if len(wrong) == 0:
        out.note = "every val image is classified correctly"
        return out
    probs = torch.softmax(torch.from_numpy(pred.logits[wrong]).float(), 1).numpy()
    confidence = probs[np.arange(len(wrong)), pred.predicted[wrong]]
    order = np.argsort(-confidence, kind="stable")[:MISTAKE_IMAGES]  # most confident mistakes first
    chosen = wrong[order]
    images = ctx.val[0][chosen]
    titles = [f"{ctx.classes[pred.labels[i]]} → {ctx.classes[pred.predicted[i]]}\n{c:.2f}"
              for i, c in zip(chosen, confidence[order])]
    out.figures["misclassified.png"] = plots.image_grid(
        images, titles, f"{len(wrong)} of {len(pred.labels)} val images wrong; most confident first "
        "(true → predicted, probability)")
    return out


@section("augmented", "Augmented training images (as the model sees them, before normalisation)")
def augmented(ctx: RunContext) -> Section:
    from pipeline.augment import build_train_loader

    images, labels, _ = ctx.data.subset("train")
    n = min(AUGMENTED_IMAGES, len(images))
    if n == 0:
        raise PipelineError(f"{ctx.data.root}: no training images")
    cfg = ctx.config
    policy = cfg.get("augment", "standard")
    loader = build_train_loader(images, labels, policy=policy, batch_size=n, device=torch.device("cpu"),
                                seed=int(cfg.get("seed", 0)), workers=0, cutout=int(cfg.get("cutout", 0)),
                                crop_pad=int(cfg.get("crop_pad", 4)), pad_mode=cfg.get("pad_mode", "zero"),
                                flip_mode=cfg.get("flip_mode", "random"))  # as trained (config.yaml is resolved)
    loader.set_epoch(1)
    batch, batch_labels = next(iter(loader))
    nhwc = batch.permute(0, 2, 3, 1).contiguous().numpy()
    titles = [ctx.classes[int(y)] for y in batch_labels]
    out = Section()
    out.figures["augmented.png"] = plots.image_grid(nhwc, titles, f"policy '{policy}', epoch 1, seed {cfg.get('seed', 0)}")
    mixing = [f"{k}={cfg[k]}" for k in ("mixup", "cutmix") if cfg.get(k)]
    if mixing:
        out.html = f"<p>Not shown: {', '.join(mixing)} mixes these batches inside the training step.</p>"
    return out


@section("weights", "Weight distributions (best.pt)")
def weights(ctx: RunContext) -> Section:
    layers = [(name, p.detach().float().cpu().numpy()) for name, p in ctx.best.model.named_parameters()
              if name.endswith("weight") and p.dim() > 1]
    if not layers:
        raise PipelineError("the model has no conv or linear weights")
    shown = layers
    if len(layers) > MAX_HISTOGRAMS:
        picks = np.unique(np.linspace(0, len(layers) - 1, MAX_HISTOGRAMS).round().astype(int))
        shown = [layers[i] for i in picks]
    out = Section()
    out.figures["weights.png"] = plots.weight_histograms(shown)
    rows = [[name, int(w.size), float(np.abs(w).mean()), float(w.std()), float(np.abs(w).max()),
             float((np.abs(w) < NEAR_ZERO).mean())] for name, w in layers]
    cfg = ctx.config
    out.html = (
        f"<p>weight_decay={cfg.get('weight_decay')}, l1={cfg.get('l1')}. "
        f"{len(shown)} of {len(layers)} layers plotted; all in the table.</p>"
        + table(["layer", "weights", "mean |w|", "std", "max |w|", f"share |w| < {NEAR_ZERO:g}"], rows)
    )
    return out


@section("tsne", "t-SNE of penultimate-layer features (val)")
def tsne(ctx: RunContext) -> Section:
    from pipeline.report.features import perplexity_for

    panels, labels = tsne_embeddings(ctx)
    out = Section()
    out.figures["tsne.png"] = plots.embedding_panels(panels, labels, ctx.classes)
    out.html = (f"<p>{len(labels):,} val images; features are the input of the last linear layer; "
                f"perplexity {perplexity_for(len(labels)):g}. Saved with <code>train --save-every K</code>, "
                "epoch_&lt;N&gt;.pt snapshots give the early/middle/late views.</p>")
    return out


def tsne_embeddings(ctx: RunContext) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
    """([(panel title, 2-D t-SNE of the penultimate features)] per picked checkpoint, their true labels)."""
    from pipeline.checkpoint import build_model, load_checkpoint
    from pipeline.report.features import capture_features, pick_checkpoints, tsne_2d

    images, labels, _ = ctx.val
    seed = int(ctx.config.get("seed", 0))
    n = min(ctx.tsne_points, len(images))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    panels = []
    for epoch, path in pick_checkpoints(ctx.run_dir):
        ckpt = load_checkpoint(path)
        model = build_model(ckpt, ckpt.get("best_weights") or "model")
        with capture_features(model) as batches:
            ctx.forward(model, images[chosen])
        features = torch.cat(batches).numpy()
        panels.append((f"epoch {epoch} ({path.name}), {features.shape[1]}-d", tsne_2d(features, seed)))
    return panels, labels[chosen]


@section("params", "Parameters and MACs")
def params(ctx: RunContext) -> Section:
    from pipeline.info import summarize

    summary = summarize(ctx.best.model, ctx.data.input_size)
    rows = [[r["name"], r["type"], "" if r["output_shape"] is None else "×".join(map(str, r["output_shape"])),
             r["params"], r["macs"]] for r in summary["rows"]]
    totals = summary["totals"]
    rows.append(["total", "", "", totals["params"], totals["macs"]])
    out = Section()
    size = "×".join(map(str, summary["input_size"]))
    out.html = (f"<p>Input {size}; {totals['params']:,} parameters ({totals['trainable_params']:,} trainable), "
                f"{totals['macs']:,} multiply-accumulates per image ({totals['macs'] / 1e6:.2f} M).</p>"
                + table(["layer", "type", "output", "params", "MACs"], rows))
    return out

