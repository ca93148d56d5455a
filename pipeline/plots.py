"""Matplotlib figures as PNG bytes, for `report`, `compare` and a training run's curves.png.

Each helper builds a matplotlib.figure.Figure directly (no pyplot): no global figure state, no
GUI backend, safe to call from any process. PNG bytes go to the caller, who writes them atomically.
"""
from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

DPI = 90


def to_png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI, bbox_inches="tight")
    return out.getvalue()


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None and not math.isnan(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def training_curves(rows: Sequence[dict[str, Any]], *, quick: bool = False) -> bytes:
    """Loss and accuracy against epoch: train, val and (when kept) EMA val.

    quick: the run folder's curves.png, redrawn after epochs while training runs (~0.1-0.3 s on a
    small CPU): fixed margins, since a tight bounding box draws the figure twice, and fewer pixels.
    """
    fig = Figure(figsize=(10, 4), dpi=80) if quick else Figure(figsize=(11, 4))
    if quick:
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
    for ax, metric, label in zip(fig.subplots(1, 2), ("loss", "acc"), ("loss", "accuracy")):
        for split, style in (("train", "-"), ("val", "-"), ("ema_val", "--")):
            x, y = _series(rows, f"{split}_{metric}")
            if x:
                ax.plot(x, y, style, marker="o", markersize=3, label=split.replace("_", " "))
        ax.set(xlabel="epoch", ylabel=label, title=label)
        if metric == "loss":
            ax.set_yscale("log")  # an early spike (val loss in the thousands) would flatten the rest
        ax.grid(alpha=0.3)
        ax.legend()
    if quick:
        out = io.BytesIO()
        fig.savefig(out, format="png")
        return out.getvalue()
    return to_png(fig)


def lr_schedule(rows: Sequence[dict[str, Any]], per_step: tuple[np.ndarray, np.ndarray] | None) -> bytes:
    """The learning rate: per iteration (fractional epochs) when known, and as logged at each epoch's end."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    if per_step is not None:
        ax.plot(per_step[0], per_step[1], "-", linewidth=1.2, label="per iteration")
    x, y = _series(rows, "lr")
    if x:
        ax.plot(x, y, "o", markersize=4, label="logged after epoch")
    ax.set(xlabel="epoch", ylabel="learning rate", title="learning-rate schedule")
    ax.grid(alpha=0.3)
    ax.legend()
    return to_png(fig)


def confusion_matrix(matrix: np.ndarray, classes: Sequence[str]) -> bytes:
    """Counts, coloured by the fraction of each true class (rows sum to 1 in colour)."""
    k = len(classes)
    side = min(14, 2.5 + 0.55 * k)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.subplots()
    totals = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=classes, rotation=90 if k > 10 else 45, ha="right" if k <= 10 else "center")
    ax.set_yticks(ticks, labels=classes)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (val)")
    if k <= 20:  # numbers stay legible up to about 20 classes
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.5 else "black")
    return to_png(fig)


def per_class_accuracy(accuracy: np.ndarray, counts: np.ndarray, classes: Sequence[str], overall: float) -> bytes:
    k = len(classes)
    fig = Figure(figsize=(7, max(2.5, 0.3 * k + 1)))
    ax = fig.subplots()
    y = np.arange(k)
    ax.barh(y, accuracy, color="tab:blue")
    ax.set_yticks(y, labels=[f"{c} (n={n})" for c, n in zip(classes, counts)])
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="accuracy", title="per-class accuracy (val)")
    ax.axvline(overall, color="black", linestyle="--", linewidth=1, label=f"overall {overall:.4f}")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return to_png(fig)


def image_grid(images_nhwc: np.ndarray, titles: Sequence[str], title: str, ncols: int = 8) -> bytes:
    """uint8 NHWC images in a grid, one caption each; single-channel images in gray."""
    n = len(images_nhwc)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(1.45 * ncols, 1.6 * nrows + 0.4))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, caption in zip(axes, images_nhwc, titles):
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title)
    return to_png(fig)


def weight_histograms(weights: Sequence[tuple[str, np.ndarray]], bins: int = 60) -> bytes:
    """One histogram per layer's weights (log counts, so the tails and the spike at 0 both show)."""
    n = len(weights)
    ncols = min(4, max(1, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(3.2 * ncols, 2.4 * nrows + 0.4))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    for ax, (name, values) in zip(axes, weights):
        ax.hist(values.ravel(), bins=bins, color="tab:blue", log=True)
        ax.set_title(f"{name} ({values.size:,})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("weight distributions per layer (log count)")
    fig.tight_layout()
    return to_png(fig)


def embedding_panels(panels: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, classes: Sequence[str]) -> bytes:
    """2-D embeddings (e.g. t-SNE) side by side, points coloured by true class."""
    n = len(panels)
    fig = Figure(figsize=(4.6 * n + 1.6, 4.6))
    axes = np.atleast_1d(fig.subplots(1, n))
    cmap = "tab10" if len(classes) <= 10 else "tab20"
    for ax, (title, xy) in zip(axes, panels):
        points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=cmap, s=6, vmin=-0.5, vmax=len(classes) - 0.5)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(classes) <= 20:
        handles = [Line2D([], [], marker="o", linestyle="", color=points.cmap(points.norm(i)))
                   for i in range(len(classes))]
        fig.legend(handles, classes, loc="center right", fontsize=8, title="class")
    return to_png(fig)


def compare_curves(histories: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> bytes:
    """Val accuracy and train loss against epoch, one line per run."""
    fig = Figure(figsize=(12, 4.5))
    panels = (("val_acc", "val accuracy"), ("train_loss", "train loss"))
    for ax, (key, label) in zip(fig.subplots(1, 2), panels):
        for name, rows in histories:
            x, y = _series(rows, key)
            if x:
                ax.plot(x, y, marker="o", markersize=3, label=name)
        ax.set(xlabel="epoch", ylabel=label, title=label)
        if key.endswith("loss"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return to_png(fig)


def frontier(points: Sequence[Any], front: Sequence[Any], title: str) -> bytes:
    """Accuracy against training seconds of every (recipe, epochs) point and ensemble (records.Point),
    one colour per recipe, the Pareto frontier joined: the picture a user chooses a recipe from."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    recipes = sorted({p.label.rsplit(" ", 2)[0] if p.kind == "recipe" else "ensemble" for p in points})
    colours = {name: f"C{i % 10}" for i, name in enumerate(recipes)}
    for p in points:
        name = p.label.rsplit(" ", 2)[0] if p.kind == "recipe" else "ensemble"
        ax.scatter(p.seconds / 60, 100 * p.acc, color=colours[name], marker="*" if p.kind == "ensemble" else "o",
                   s=90 if p.kind == "ensemble" else 40, zorder=3)
        tag = f"{p.epochs:g} ep" if p.kind == "recipe" else p.label
        if p.runs > 1 and p.kind == "recipe":
            tag += f" ({p.runs} seeds)"
        ax.annotate(tag, (p.seconds / 60, 100 * p.acc), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if front:
        # a step: the accuracy a budget buys is the best point left of it, not a line between two
        ax.plot([p.seconds / 60 for p in front], [100 * p.acc for p in front], "k--", lw=1, zorder=2,
                drawstyle="steps-post")
    handles = [Line2D([], [], color=c, marker="o", ls="", label=n) for n, c in colours.items()]
    handles.append(Line2D([], [], color="k", ls="--", label="frontier (nothing faster is as accurate)"))
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set(xlabel="training time (minutes, the train stage)", ylabel="val accuracy, best TTA (%)", title=title)
    ax.grid(alpha=0.3)
    return to_png(fig)
