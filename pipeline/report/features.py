"""Penultimate-layer features (the input of the last nn.Linear) and their t-SNE maps over training."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.run_layout import CHECKPOINTS, snapshots

PCA_DIMS = 50  # t-SNE on more dimensions is slow and no better (scikit-learn's advice)
DEFAULT_PERPLEXITY = 30.0


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier: the last nn.Linear in definition order."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not found:
        raise PipelineError(f"{type(model).__name__} has no nn.Linear layer to take features from")
    return found[-1]


@contextlib.contextmanager
def capture_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the (flattened, float32, CPU) input of the model's last nn.Linear on every forward."""
    batches: list[torch.Tensor] = []

    def hook(module, inputs):
        batches.append(inputs[0].detach().flatten(1).float().cpu())

    handle = last_linear(model).register_forward_pre_hook(hook)
    try:
        yield batches
    finally:
        handle.remove()


def pick_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the first, middle and last saved checkpoints of a run.

    Prefers the epoch_<N>.pt snapshots of `train --save-every K`; with fewer than three, last.pt
    and best.pt fill in (deduplicated by epoch).
    """
    from pipeline.checkpoint import load_checkpoint

    found = dict(snapshots(run_dir))
    if len(found) < 3:
        for name in CHECKPOINTS:
            path = run_dir / name
            if path.is_file():
                found.setdefault(int(load_checkpoint(path).get("epoch", 0)), path)
    if not found:
        raise PipelineError(f"{run_dir}: no checkpoints (epoch_<N>.pt, last.pt or best.pt)")
    epochs = sorted(found)
    chosen = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]})
    return [(epoch, found[epoch]) for epoch in chosen]


def perplexity_for(n: int) -> float:
    """scikit-learn needs perplexity < n; a third of the points keeps small sets meaningful."""
    return float(min(DEFAULT_PERPLEXITY, max(1.0, (n - 1) / 3)))


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, d) features -> (n, 2) t-SNE coordinates (PCA to 50 dimensions first when d is larger)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(features)
    if n < 5:
        raise PipelineError(f"t-SNE needs at least 5 points, the val split has {n}")
    x = features.astype(np.float32)
    dims = min(PCA_DIMS, n, x.shape[1])
    if x.shape[1] > dims:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=perplexity_for(n), init="pca", random_state=seed)
    # One thread: OpenMP's spin-waiting made 1,000 points 4-5x slower with 2 threads on a busy
    # 2-core machine (16 s vs 74-87 s), and the gain from more threads on an idle one is small.
    with threadpool_limits(limits=1):
        return tsne.fit_transform(x)
