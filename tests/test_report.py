"""`pipeline report` and `pipeline compare` on tiny runs trained by the real engine."""
from __future__ import annotations

import base64
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from helpers_train import make_prepared, tiny_config
from pipeline.artifacts import atomic_save_npy, atomic_write_json, sha256_file
from pipeline.cli import cli
from pipeline.errors import PipelineError
from pipeline.report import runs
from pipeline.report.build import build_report
from pipeline.report.compare import RunRecord, compare_runs, differing_keys
from pipeline.report.context import RunContext
from pipeline.report.features import capture_features, perplexity_for, pick_checkpoints
from pipeline.report.sections import SECTIONS
from pipeline.train.engine import run_training

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CPU = torch.device("cpu")


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which must directly follow the signature."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Two 3-epoch runs of the tiny model with epoch snapshots: 'a' (lr 0.05) and 'b' (lr 0.2)."""
    root = tmp_path_factory.mktemp("report")
    data = make_prepared(root / "data", n_train=48, n_val=24, classes=4)
    for run, lr in (("a", 0.05), ("b", 0.2)):
        run_training(tiny_config(data, root / "runs", run=run, lr=lr, save_every=1, epochs=3))
    return root / "runs"


def test_report_writes_valid_pngs_all_embedded_in_one_page(trained):
    run_dir = trained / "a"
    result = build_report(run_dir, device=CPU, tsne_points=20)
    assert result.skipped == {}
    names = sorted(p.name for p in (run_dir / "report").glob("*.png"))
    assert names == sorted(["curves.png", "lr_schedule.png", "confusion.png", "per_class_accuracy.png",
                            "misclassified.png", "augmented.png", "weights.png", "tsne.png"])
    html = (run_dir / "report.html").read_text()
    for name in names:
        data = (run_dir / "report" / name).read_bytes()
        width, height = png_size(data)
        assert width > 0 and height > 0
        assert f'src="data:image/png;base64,{base64.b64encode(data).decode()}"' in html, name
    # Self-contained: every image is a data URI; nothing is fetched from anywhere.
    assert len(re.findall(r"<img ", html)) == len(names)
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    manifest = json.loads((run_dir / "report" / "manifest.json").read_text())
    assert sorted(o["path"] for o in manifest["outputs"]) == names
    assert set(manifest["metrics"]["section_seconds"]) == set(SECTIONS)
    assert result.seconds > 0


def test_report_page_holds_the_params_table_and_val_accuracy(trained):
    run_dir = trained / "a"
    build_report(run_dir, device=CPU, tsne_points=20, skip=("tsne", "augmented", "weights", "mistakes"))
    html = (run_dir / "report.html").read_text()
    # TinyNet on 3x8x8 input, 4 classes: conv 3*8*3*3 = 216 (no bias), BN 16, fc 32*4+4 = 132 -> 364.
    # MACs: conv 216 * 8*8 = 13,824; fc 32*4 = 128 -> 13,952.
    assert "364 parameters" in html and "13,952 multiply-accumulates" in html
    ctx = RunContext(run_dir, CPU)
    assert f"accuracy {ctx.val_predictions.accuracy:.4f}" in html
    best, _ = runs.best_row(runs.read_metrics(run_dir))
    assert ctx.val_predictions.accuracy == pytest.approx(best["val_acc"], abs=1e-6)
    assert f"best.pt (epoch {best['epoch']}, model weights), no TTA" == ctx.val_predictions.source
    # Skipped sections leave no PNG behind from an earlier report.
    assert not (run_dir / "report" / "tsne.png").exists()


def test_report_reuses_predict_val_logits_only_for_the_current_best(trained, tmp_path):
    run_dir = tmp_path / "a"
    shutil.copytree(trained / "a", run_dir)
    ctx = RunContext(run_dir, CPU)
    images, labels, ids = ctx.val
    # predict wrote them in another order: all class 1 except the first val image, class 0.
    logits = np.zeros((len(ids), 4), np.float32)
    logits[:, 1] = 5.0
    logits[-1] = [5.0, 0, 0, 0]
    atomic_save_npy(run_dir / "val_logits.npy", logits)
    atomic_save_npy(run_dir / "val_ids.npy", ids[::-1].copy())
    info = {"checkpoint": {"path": str(run_dir / "best.pt"), "sha256": sha256_file(run_dir / "best.pt"),
                           "epoch": 3}, "tta": "flip"}
    atomic_write_json(run_dir / "predict.json", info)
    pred = RunContext(run_dir, CPU).val_predictions
    assert "predict's val_logits.npy" in pred.source and "TTA flip" in pred.source
    assert pred.predicted[0] == 0 and (pred.predicted[1:] == 1).all()

    info["checkpoint"]["sha256"] = "0" * 64  # logits of an older best.pt: computed afresh
    atomic_write_json(run_dir / "predict.json", info)
    assert RunContext(run_dir, CPU).val_predictions.source.startswith("best.pt")


def test_section_that_cannot_apply_is_noted_not_fatal(trained, tmp_path):
    run_dir = tmp_path / "a"
    shutil.copytree(trained / "a", run_dir)
    for snapshot in run_dir.glob("*.pt"):
        if snapshot.name != "best.pt":
            snapshot.unlink()
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("augment: standard",
                                                                                        "augment: no-such-policy"))
    result = build_report(run_dir, device=CPU, tsne_points=20, skip=("tsne", "weights"))
    assert "unknown augmentation policy 'no-such-policy'" in result.skipped["augmented"]
    assert "not available: unknown augmentation policy" in (run_dir / "report.html").read_text()


def test_pick_checkpoints_first_middle_last(trained, tmp_path):
    assert [e for e, _ in pick_checkpoints(trained / "a")] == [1, 2, 3]
    for epoch in (4, 5, 6, 7):  # more snapshots: still three, spread out
        shutil.copy(trained / "a" / "epoch_3.pt", tmp_path / f"epoch_{epoch}.pt")
    shutil.copy(trained / "a" / "epoch_1.pt", tmp_path / "epoch_1.pt")
    assert [e for e, _ in pick_checkpoints(tmp_path)] == [1, 5, 7]
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(trained / "a" / "last.pt", only / "last.pt")
    shutil.copy(trained / "a" / "epoch_1.pt", only / "epoch_1.pt")
    assert [(e, p.name) for e, p in pick_checkpoints(only)] == [(1, "epoch_1.pt"), (3, "last.pt")]
    with pytest.raises(PipelineError, match="no checkpoints"):
        pick_checkpoints(tmp_path / "nothing")


def test_capture_features_is_the_input_of_the_last_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(7, 3, 2, 2)
    with capture_features(model) as batches:
        model(x[:4])
        model(x[4:])
    features = torch.cat(batches)
    assert torch.allclose(features, torch.relu(model[1](x.flatten(1))).detach())
    model(x)
    assert len(batches) == 2  # the hook is gone after the block
    with pytest.raises(PipelineError, match="no nn.Linear"):
        with capture_features(nn.Sequential(nn.ReLU())):
            pass


@pytest.mark.parametrize("n, perplexity", [(5, 4 / 3), (16, 5.0), (91, 30.0), (1000, 30.0)])
def test_perplexity_stays_below_the_number_of_points(n, perplexity):
    assert perplexity_for(n) == pytest.approx(perplexity) and perplexity_for(n) < n


def test_best_row_earliest_of_ties_and_ema_when_kept():
    rows = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.7}, {"epoch": 3, "val_acc": 0.7}]
    best, metric = runs.best_row(rows)
    assert (best["epoch"], metric) == (2, "val_acc")
    ema = [{**r, "ema_val_acc": a} for r, a in zip(rows, (0.6, 0.65, 0.8))]
    best, metric = runs.best_row(ema)
    assert (best["epoch"], metric) == (3, "ema_val_acc")
    assert runs.best_row([]) == (None, "val_acc")


def test_report_cli_prints_time_and_unknown_run_is_one_line(trained):
    result = CliRunner().invoke(cli, ["report", "b", "--runs-dir", str(trained), "--skip", "tsne"])
    assert result.exit_code == 0, result.output
    assert re.search(r"wrote .*report\.html and 7 figures in .* in \d+\.\d+s", result.output)
    with pytest.raises(PipelineError, match="no run folder"):
        runs.find_run("missing", trained)
    with pytest.raises(PipelineError, match="unknown report section"):
        build_report(trained / "b", device=CPU, skip=("tnse",))


def test_compare_overlays_and_tabulates(trained, tmp_path):
    out = tmp_path / "cmp" / "compare.png"
    table, figure = compare_runs(["a", "b"], trained, out)
    width, height = png_size(figure.read_bytes())
    assert width > 0 and height > 0
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["run", "model", "lr", "best val acc", "epoch", "wall s"]
    for line, run in zip(lines[2:], ("a", "b")):
        best, _ = runs.best_row(runs.read_metrics(trained / run))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [run, "tiny_test_net", {"a": "0.05", "b": "0.2"}[run]]
        assert float(cells[3]) == pytest.approx(best["val_acc"], abs=1e-4) and int(cells[4]) == best["epoch"]
    assert out.with_suffix(".md").read_text().strip() == table.strip()
    with pytest.raises(PipelineError, match="named twice"):
        compare_runs(["a", "a"], trained, out)


def test_differing_keys_include_single_model_options():
    def record(**config):
        return RunRecord("r", Path("r"), config, [], None)

    records = [record(model="m", lr=0.1, seed=0, model_opts={"bn": True, "act": "relu"}, run="x"),
               record(model="m", lr=0.1, seed=1, model_opts={"bn": False, "act": "relu"}, run="y")]
    assert differing_keys(records) == ["seed", "model_opts.bn"]
