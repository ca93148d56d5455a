"""The CUDA paths, for a machine with a GPU (`make test-gpu`); every test here skips without one.

fp16 + GradScaler through a checkpoint and an exact resume, bf16, real inductor compile with a
clean state_dict, the device-resident fast loader, predict on the GPU, and the probe's choice.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers_train import make_prepared, tiny_config
from pipeline.augment import build_train_loader
from pipeline.checkpoint import build_model, load_checkpoint
from pipeline.train.engine import run_training

pytestmark = pytest.mark.cuda

SETTINGS = dict(epochs=3, ema=0.9, model_opts={"dropout": 0.2}, augment="standard", device="cuda",
                deterministic=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("data") / "tiny", n_train=64, size=16)


def test_fp16_gradscaler_checkpoint_and_exact_resume(data, tmp_path):
    straight = tmp_path / "straight"
    run_training(tiny_config(data, straight, precision="fp16", **SETTINGS))
    reference = load_checkpoint(straight / "t" / "last.pt")
    assert reference["scaler"] and reference["scaler"]["scale"] > 0  # GradScaler state is saved

    def stop_after_one(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    split = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_config(data, split, precision="fp16", **SETTINGS), on_epoch_end=stop_after_one)
    run_training(tiny_config(data, split, precision="fp16", resume=True, **SETTINGS))
    resumed = load_checkpoint(split / "t" / "last.pt")
    for key in ("model", "ema"):
        for name, value in reference[key].items():
            torch.testing.assert_close(resumed[key][name], value, msg=f"{key}.{name}")
    assert resumed["scaler"] == reference["scaler"]


def test_bf16_channels_last_run_on_cuda(data, tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    summary = run_training(tiny_config(data, tmp_path, precision="bf16", channels_last=True, **SETTINGS))
    assert summary["epochs_run"] == 3 and summary["best_val_acc"] is not None
    assert load_checkpoint(tmp_path / "t" / "last.pt")["scaler"] is None  # bf16 needs no scaler


def test_inductor_compile_saves_a_clean_state_dict(data, tmp_path):
    run_training(tiny_config(data, tmp_path, compile=True, precision="auto", channels_last=True,
                             **{**SETTINGS, "epochs": 1}))
    ckpt = load_checkpoint(tmp_path / "t" / "last.pt")
    assert ckpt["model"] and not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    build_model(ckpt)


def test_fast_loader_keeps_the_dataset_and_batches_on_the_gpu():
    images = np.random.default_rng(0).integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(96) % 4
    loader = build_train_loader(images, labels, policy="standard", batch_size=32, device=torch.device("cuda"),
                                workers=0)
    loader.set_epoch(1)
    batches = list(loader)
    assert len(batches) == 3
    for x, y in batches:
        assert x.is_cuda and y.is_cuda and x.dtype == torch.uint8 and x.shape == (32, 3, 16, 16)


def test_predict_on_the_gpu_matches_the_cpu(data, tmp_path):
    from pipeline.predict import PredictConfig, run_predict

    run_training(tiny_config(data, tmp_path, **{**SETTINGS, "epochs": 1, "precision": "fp32",
                                                "channels_last": False}))
    logits = {}
    for device in ("cuda", "cpu"):
        run_predict(PredictConfig(run="t", runs_dir=str(tmp_path), tta=["none"], device=device, precision="fp32"))
        logits[device] = np.load(tmp_path / "t" / "val_logits.npy")
    np.testing.assert_allclose(logits["cuda"], logits["cpu"], rtol=1e-3, atol=1e-3)


def test_probe_on_cuda_picks_a_gpu_precision_and_records_it(data, tmp_path):
    run_training(tiny_config(data, tmp_path, precision="auto", channels_last=None, epochs=40, device="cuda"))
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["config"]["precision"] in ("bf16", "fp16", "fp32")
    assert manifest["probe"]["source"] in ("measured", "too short")
    assert manifest["probe"]["device"] == torch.cuda.get_device_name(0)
