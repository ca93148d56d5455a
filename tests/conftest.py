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


@pytest.fixture(autouse=True)
def probe_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty probe cache: none reads or writes the user's ~/.cache."""
    from pipeline.train.probe import CACHE_ENV

    folder = tmp_path_factory.mktemp("probe-cache")
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one; `make test-gpu` runs them)")
    config.addinivalue_line("markers", "slow: minutes of CPU (real torch.compile); `make test-slow` runs them")


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    not_asked = pytest.mark.skip(reason="slow: run with `make test-slow` (pytest -m slow)")
    slow_asked = "slow" in (config.option.markexpr or "")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "slow" in item.keywords and not slow_asked:
            item.add_marker(not_asked)
