"""TTA views and the predict stage on a tiny run: files, sha256s and val accuracy checked independently."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline import tta
from pipeline.artifacts import sha256_file
from pipeline.checkpoint import build_model, load_checkpoint
from pipeline.errors import PipelineError
from pipeline.predict import PredictConfig, run_predict
from pipeline.runtime import nhwc_to_nchw, normalizer, to_model_input
from helpers_predict import make_data, make_run, run_cli

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def model_input(images_nhwc: np.ndarray) -> torch.Tensor:
    scale, shift = normalizer(MEAN, STD, torch.device("cpu"))
    return to_model_input(nhwc_to_nchw(images_nhwc), scale, shift)


def test_flip_mirrors_the_width_axis_not_the_height():
    # A 1x3x4x3 image whose every pixel/channel differs, so any wrong axis shows.
    image = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(1, 3, 4, 3) * 7
    flipped_view = tta.apply_view(nhwc_to_nchw(image), tta.View(mirror=True))
    scale, shift = normalizer(MEAN, STD, torch.device("cpu"))
    got = to_model_input(flipped_view, scale, shift)
    # NHWC axis 2 is the width: image[:, :, ::-1] is the left-right mirror.
    assert torch.equal(got, model_input(np.ascontiguousarray(image[:, :, ::-1])))
    assert not torch.equal(got, model_input(np.ascontiguousarray(image[:, ::-1])))
    # Row 0, channel 0 of the original reads 0, 21, 42, 63 (step 3 channels * 7); mirrored: 63, 42, 21, 0.
    assert flipped_view[0, 0, 0].tolist() == [63, 42, 21, 0]


def test_shift_moves_content_and_fills_zeros():
    x = torch.arange(1, 17, dtype=torch.uint8).reshape(1, 1, 4, 4)
    # rows of x: [1 2 3 4] [5 6 7 8] [9 10 11 12] [13 14 15 16]
    down_right = tta.apply_view(x, tta.View(shift=(2, 2)))
    assert down_right[0, 0].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 2], [0, 0, 5, 6]]
    up_left = tta.apply_view(x, tta.View(shift=(-2, -2)))
    assert up_left[0, 0].tolist() == [[11, 12, 0, 0], [15, 16, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    right_only = tta.apply_view(x, tta.View(shift=(0, 1)))
    assert right_only[0, 0].tolist() == [[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11], [0, 13, 14, 15]]
    # mirror first, then shift: mirrored row 0 is [4 3 2 1], shifted right by 1 -> [0 4 3 2]
    both = tta.apply_view(x, tta.View(mirror=True, shift=(0, 1)))
    assert both[0, 0, 0].tolist() == [0, 4, 3, 2]


def test_levels_views_and_the_level_saved():
    assert tta.level_views("none") == (tta.View(),)
    assert set(tta.level_views("flip")) == {tta.View(), tta.View(mirror=True)}
    shifts = {(0, 0), (2, 2), (-2, -2)}
    assert set(tta.level_views("flip+shift")) == {tta.View(m, s) for m in (False, True) for s in shifts}
    assert tta.parse_levels(["none,flip", "flip+shift", "flip"]) == ["none", "flip", "flip+shift"]
    assert tta.most_complete(["flip+shift", "none", "flip"]) == "flip+shift"
    assert len(tta.unique_views(["none", "flip", "flip+shift"])) == 6  # shared views computed once
    with pytest.raises(PipelineError, match="unknown TTA level 'mirror'; choose from: airbench, flip, flip\\+shift, none"):
        tta.parse_levels(["mirror"])


def test_combine_is_the_mean_of_view_logits():
    views = tta.level_views("flip")
    logits = {views[0]: torch.tensor([[1.0, 3.0]]), views[1]: torch.tensor([[3.0, -1.0]])}
    assert tta.combine(logits, "flip").tolist() == [[2.0, 1.0]]


@pytest.fixture
def tiny_run(tmp_path):
    data = make_data(tmp_path / "data" / "tiny")
    runs = tmp_path / "runs"
    make_run(runs, "r1", data, ema=True)
    return runs, data


def direct_logits(ckpt_path, weights, images_nhwc, meta):
    """What the model says, computed without predict: normalise by hand, torch flips the width."""
    model = build_model(load_checkpoint(ckpt_path), weights).eval()
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    x = (torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        return model(x).numpy(), model(x.flip(3)).numpy()


def test_predict_writes_logits_whose_accuracy_matches_a_direct_computation(tiny_run):
    runs, data = tiny_run
    result = run_predict(PredictConfig(run="r1", runs_dir=str(runs), tta=["none", "flip"], precision="fp32"))
    folder = runs / "r1"
    meta = json.loads((data / "meta.json").read_text())
    split = np.load(data / "split.npz")
    images = np.load(data / "train_images.npy")[split["val_idx"]]
    labels = np.load(data / "train_labels.npy")[split["val_idx"]]
    # best.pt of a run trained with EMA is selected by the EMA weights, so predict uses them.
    plain, mirrored = direct_logits(folder / "best.pt", "ema", images, meta)
    expected = {"none": (plain.argmax(1) == labels).mean(), "flip": (((plain + mirrored) / 2).argmax(1) == labels).mean()}
    assert result["val_accuracy"] == pytest.approx(expected)

    saved = np.load(folder / "val_logits.npy")
    assert saved.dtype == np.float32 and saved.shape == (12, 3)
    np.testing.assert_allclose(saved, (plain + mirrored) / 2, rtol=1e-5, atol=1e-5)  # flip is saved
    assert np.array_equal(np.load(folder / "val_ids.npy"), np.load(data / "train_ids.npy")[split["val_idx"]])
    assert np.array_equal(np.load(folder / "val_labels.npy"), labels)
    assert np.load(folder / "val_labels.npy").dtype == np.int64
    test_images = np.load(data / "test_images.npy")
    t_plain, t_mirrored = direct_logits(folder / "best.pt", "ema", test_images, meta)
    np.testing.assert_allclose(np.load(folder / "test_logits.npy"), (t_plain + t_mirrored) / 2, rtol=1e-5, atol=1e-5)
    assert np.array_equal(np.load(folder / "test_ids.npy"), np.load(data / "test_ids.npy"))

    info = json.loads((folder / "predict.json").read_text())
    assert info["checkpoint"]["sha256"] == sha256_file(folder / "best.pt")
    assert info["checkpoint"]["weights"] == "ema"
    assert info["tta"] == "flip" and info["tta_levels"] == ["none", "flip"]
    assert info["metrics"]["val_accuracy"] == pytest.approx(expected)
    assert info["data"]["split_sha256"] == sha256_file(data / "split.npz")
    assert info["data"]["competition"] == "tiny" and info["data"]["root"] == str(data)
    outputs = {e["path"].rsplit("/", 1)[-1]: e["sha256"] for e in info["outputs"]}
    assert outputs == {name: sha256_file(folder / name) for name in
                       ("val_logits.npy", "val_ids.npy", "val_labels.npy", "test_logits.npy", "test_ids.npy")}


def test_bf16_batched_predict_agrees_with_fp32(tiny_run):
    runs, _ = tiny_run
    fp32 = run_predict(PredictConfig(run="r1", runs_dir=str(runs), checkpoint="last", precision="fp32"))
    logits32 = np.load(runs / "r1" / "val_logits.npy")
    bf16 = run_predict(PredictConfig(run="r1", runs_dir=str(runs), checkpoint="last", batch_size=5,
                                     precision="bf16"))
    logits16 = np.load(runs / "r1" / "val_logits.npy")
    assert logits16.dtype == np.float32
    np.testing.assert_allclose(logits16, logits32, atol=0.05 * np.abs(logits32).max())
    assert fp32["checkpoint"].weights == bf16["checkpoint"].weights == "model"
    assert json.loads((runs / "r1" / "predict.json").read_text())["precision"] == "bf16"


def test_predict_cli_prints_each_level_and_saves_the_most_complete(tiny_run, capsys):
    runs, _ = tiny_run
    code, out, err = run_cli(["predict", "--run", "r1", "--runs-dir", str(runs), "--tta", "flip+shift",
                              "--tta", "none,flip", "--checkpoint", "last", "--precision", "fp32"], capsys)
    assert code == 0, err
    for level in ("none", "flip", "flip+shift"):
        assert any(line.startswith(f"val accuracy  {level} ") for line in out.splitlines()), out
    saved = [line for line in out.splitlines() if line.endswith("<- saved")]
    assert len(saved) == 1 and saved[0].startswith("val accuracy  flip+shift ")
    assert json.loads((runs / "r1" / "predict.json").read_text())["tta"] == "flip+shift"


def test_predict_refuses_a_changed_split_and_missing_ema(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    runs = tmp_path / "runs"
    make_run(runs, "plain", data, ema=False)
    code, _, err = run_cli(["predict", "--run", "plain", "--runs-dir", str(runs), "--checkpoint", "ema"], capsys)
    assert code == 2 and "no 'ema' weights" in err and "Traceback" not in err
    np.savez(data / "split.npz", train_idx=np.arange(20), val_idx=np.arange(20, 42))
    code, _, err = run_cli(["predict", "--run", "plain", "--runs-dir", str(runs)], capsys)
    assert code == 2 and "split.npz: not the split" in err
    assert not (runs / "plain" / "predict.json").exists()
    code, _, err = run_cli(["predict", "--run", "nope", "--runs-dir", str(runs)], capsys)
    assert code == 2 and "no such run folder" in err
