"""Issue 13 point 5: runs record the sha256 of the prepared arrays; predict refuses rebuilt data (or,
with --allow-changed-data, warns); ensemble refuses members predicted on different images."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers_data import kaggle_files, write_zip
from helpers_predict import make_run

from pipeline.artifacts import read_json
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.data.dataset import LINEAGE_FILES, lineage_changes, load_prepared
from pipeline.data.stage import DataConfig, run
from pipeline.ensemble import EnsembleConfig, run_ensemble
from pipeline.errors import PipelineError
from pipeline.predict import PredictConfig, run_predict


def _prepare(tmp_path, root: str, seed: int) -> object:
    """data/<root>/comp from a Kaggle zip; another seed: the same ids and labels, other pixels."""
    files, _ = kaggle_files(n_train=30, n_test=9, size=16)
    if seed:
        rng = np.random.default_rng(seed)
        for name in [n for n in files if n.endswith(".png")]:
            from helpers_data import encode_image

            files[name] = encode_image(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "PNG")
    source = write_zip(tmp_path / f"src{seed}" / "comp.zip", files)
    run(DataConfig(competition="comp", source=str(source), data_root=str(tmp_path / root)))
    return load_prepared(tmp_path / root / "comp", "comp")


def _trained_run(runs, name, data) -> None:
    """A run whose checkpoint records its data as training does (engine.data_provenance)."""
    from pipeline.train.engine import data_provenance

    folder = make_run(runs, name, data.root)
    for file in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(folder / file)
        ckpt["data"] = data_provenance(data)
        save_checkpoint(folder / file, ckpt)


def _predict(runs, name, **kw):
    return run_predict(PredictConfig(run=name, runs_dir=str(runs), tta=["none"], precision="fp32", **kw))


def test_training_records_the_arrays_and_predict_refuses_a_rebuilt_folder(tmp_path, caplog):
    data = _prepare(tmp_path, "data", seed=0)
    assert sorted(data.lineage) == sorted(LINEAGE_FILES)
    runs = tmp_path / "runs"
    _trained_run(runs, "r1", data)
    assert load_checkpoint(runs / "r1" / "best.pt")["data"]["arrays_sha256"] == data.lineage
    _predict(runs, "r1")
    assert read_json(runs / "r1" / "predict.json")["data"]["arrays_sha256"] == data.lineage

    rebuilt = _prepare(tmp_path, "data", seed=5)  # same folder, same ids and split, other images
    changed = lineage_changes(data.lineage, rebuilt.lineage)
    assert changed == ["train_images.npy", "test_images.npy"]
    with pytest.raises(PipelineError, match=r"comp: train_images\.npy, test_images\.npy changed since .*best\.pt "
                                            r"was trained \(the data folder was rebuilt\); retrain, or pass "
                                            r"--allow-changed-data"):
        _predict(runs, "r1")
    with caplog.at_level(logging.WARNING):
        _predict(runs, "r1", allow_changed_data=True)
    assert "predicting anyway (--allow-changed-data)" in caplog.text


def test_a_run_from_before_arrays_were_recorded_falls_back_to_meta_json(tmp_path):
    data = _prepare(tmp_path, "data", seed=0)
    runs = tmp_path / "runs"
    make_run(runs, "old", data.root)  # records meta.json's sha256 only
    _predict(runs, "old")
    _prepare(tmp_path, "data", seed=5)
    with pytest.raises(PipelineError, match=r"meta\.json changed since .* was trained"):
        _predict(runs, "old")


def test_ensemble_refuses_members_predicted_on_other_images_with_the_same_ids(tmp_path):
    """The same competition name, ids and split under two data roots, built from different sources."""
    first, second = _prepare(tmp_path, "data", seed=0), _prepare(tmp_path, "elsewhere", seed=5)
    runs = tmp_path / "runs"
    _trained_run(runs, "a", first)
    _trained_run(runs, "b", second)
    _trained_run(runs, "c", first)
    for name in ("a", "b", "c"):
        _predict(runs, name)
    with pytest.raises(PipelineError, match=r"runs 'a' and 'b' differ in prepared data \(train_images\.npy, "
                                            r"test_images\.npy differ\); ensemble only runs predicted on the same "
                                            r"prepared data"):
        run_ensemble(EnsembleConfig(runs=["a", "b"], runs_dir=str(runs), out=str(tmp_path / "p.csv")))
    result = run_ensemble(EnsembleConfig(runs=["a", "c"], runs_dir=str(runs), out=str(tmp_path / "p.csv")))
    assert result["rows"] == 9
