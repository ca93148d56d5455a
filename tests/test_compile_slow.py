"""Real torch.compile (inductor, not the eager backend) on the CPU: minutes of C++ compilation on a
small machine, so it runs with `make test-slow` rather than in CI's `make test`."""
from __future__ import annotations

import pytest
import torch

from helpers_train import make_prepared, tiny_config
from pipeline.checkpoint import build_model, load_checkpoint
from pipeline.train.engine import run_training


@pytest.mark.slow
def test_inductor_compile_on_cpu_trains_and_saves_a_clean_state_dict(tmp_path):
    data = make_prepared(tmp_path / "tiny")
    summary = run_training(tiny_config(data, tmp_path, epochs=1, compile=True))
    assert summary["epochs_run"] == 1
    ckpt = load_checkpoint(tmp_path / "t" / "last.pt")
    assert ckpt["model"] and not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    model = build_model(ckpt)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
