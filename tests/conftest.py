"""Shared fixtures: where the repo and the shared real-data bundle are."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_BUNDLE = REPO.parent / "shared" / "competitions" / "cifar10-jpg" / "cifar10-jpg.zip"

# Unit tests use tiny tensors; more threads only add contention on small CI machines.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def cifar_bundle() -> Path:
    if not SHARED_BUNDLE.is_file():
        pytest.skip(f"real CIFAR-10 bundle not found at {SHARED_BUNDLE} (../shared is absent)")
    return SHARED_BUNDLE
