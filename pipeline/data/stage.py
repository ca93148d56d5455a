"""`python -m pipeline data`: raw competition files -> data/<competition>/ (layout in dataset.py).

Everything is built in a temp folder beside data/<competition> and swapped into place at the end
(folders.py), so a failed or interrupted run leaves the previous good folder as it was. Images are
decoded by worker processes straight into the .npy files (images.py).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import click
import numpy as np

from pipeline import flips
from pipeline.artifacts import atomic_write_json, file_entry, write_manifest
from pipeline.cli_config import resolve_flags, setting, stage_options
from pipeline.config import check_fields, config_dict
from pipeline.data.fetch import raw_entry
from pipeline.data.folders import building_dir, recover, scratch_dir
from pipeline.data.images import channel_stats, default_workers
from pipeline.data.ingested import Ingested
from pipeline.data.limits import Limits
from pipeline.data.sources import SOURCES, FetchContext, ingest
from pipeline.data.split import minimum_rows, stratified_split, stratified_subset
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

SAMPLE_SUBMISSION = "sample_submission.csv"
ANSWERS = "withheld/answers.csv"
SPLIT = "split.npz"
# --limit keeps a small test set too, for smoke runs of predict/submit.
MIN_LIMITED_TEST = 100


@dataclass
class DataConfig:
    competition: str = setting("", "Name of the competition; the output is DATA_ROOT/<competition>/.")
    source: Optional[str] = setting(None, "Local folder/zip/tar/7z or URL of the competition files (default: the "
                                          "competition's built-in source).")
    kaggle: Optional[str] = setting(None, "Download the competition's files with the Kaggle API.", metavar="SLUG")
    test_source: Optional[str] = setting(None, "A course test pickle ({data, ids}) to use as the test set.")
    source_format: str = setting("auto", "Source format (auto-detected by default).",
                                 choices=SOURCES, also=("auto",), short="--format")
    classes: Optional[list[str]] = setting(None, "Expected class names, in index order; other labels are errors.",
                                           metavar="NAME,NAME")
    limit: Optional[int] = setting(None, "Keep a stratified subset of N training images (smoke runs).")
    val_fraction: float = setting(0.1, "Fraction of training images held out for validation.")
    seed: int = setting(0, "Seed of the --limit subset and the validation split.")
    data_root: str = setting("data", "Folder holding prepared competitions.")
    workers: int = setting(0, "Image decode processes; 0: one per available core.")
    max_member_mb: int = setting(Limits.member_mb, "Largest file read from inside an archive, MiB.")
    max_csv_mb: int = setting(Limits.csv_mb, "Largest CSV read, MiB.")
    max_extract_mb: int = setting(Limits.extract_mb, "Most the archives of one run may write to scratch space in "
                                                     "all (extracted files, nested archive copies), MiB.")
    flip: Optional[bool] = setting(None, "Whether a horizontal flip keeps an image's label (recorded in meta.json; "
                                         "train's flips and predict's TTA follow it); unset: from the competition's "
                                         "name and classes, off for digits and text-like data, on for photos and "
                                         "clothing.")


def check_config(cfg: DataConfig) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.competition or ""):
        raise PipelineError(f"competition name '{cfg.competition}' must be letters, digits, '.', '_' or '-'")
    check_fields(cfg)  # --format: a registered source or auto
    if cfg.limit is not None and cfg.limit < 1:
        raise PipelineError(f"--limit must be at least 1, got {cfg.limit}")
    if cfg.classes:
        seen = set()
        for name in cfg.classes:
            if name in seen:
                raise PipelineError(f"--classes names '{name}' twice; give each class once, in index order")
            seen.add(name)
    if not 0 <= cfg.val_fraction < 1:
        raise PipelineError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.workers < 0:
        raise PipelineError(f"--workers must be 0 (one per core) or more, got {cfg.workers}")
    for flag, value in (("--max-member-mb", cfg.max_member_mb), ("--max-csv-mb", cfg.max_csv_mb),
                        ("--max-extract-mb", cfg.max_extract_mb)):
        if value < 1:
            raise PipelineError(f"{flag} must be at least 1, got {value}")


def run(cfg: DataConfig) -> dict[str, Any]:
    """Build data/<competition>/ and return its meta.json content."""
    started = time.time()
    check_config(cfg)
    root = Path(cfg.data_root)
    final = root / cfg.competition
    root.mkdir(parents=True, exist_ok=True)
    recover(final)
    work = scratch_dir(final, "work")
    try:
        with building_dir(final) as out:
            raw = out / "raw"
            raw.mkdir()
            ctx = FetchContext(
                raw_dir=raw,
                work_dir=work,
                reuse_dir=final / "raw" if (final / "raw").is_dir() else None,
                classes=cfg.classes,
                limits=Limits(cfg.max_member_mb, cfg.max_csv_mb, cfg.max_extract_mb),
            )
            try:
                data = ingest(
                    ctx,
                    cfg.competition,
                    source=cfg.source,
                    kaggle=cfg.kaggle,
                    test_source=cfg.test_source,
                    source_format=cfg.source_format,
                )
                meta = write_prepared(out, data, cfg, started)
            finally:
                ctx.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return meta


@dataclass
class Selected:
    """The rows this run keeps (all, or what --limit keeps), decoded."""

    arrays: dict[str, np.ndarray]  # train_images, train_labels, train_ids, test_images, test_ids
    answers: np.ndarray | None  # withheld test labels, aligned with test_ids


def check_classes(data: Ingested) -> None:
    """A classifier needs at least two classes among its training labels."""
    present = np.unique(data.train.labels)
    if len(data.classes) < 2 or len(present) < 2:
        only = data.classes[int(present[0])] if len(present) == 1 else "none"
        raise PipelineError(
            f"{data.train.where}: the training images have {len(present)} class ('{only}'); "
            "a classifier needs at least 2. Check the layout (train/<class>/ folders, or train/<id> with a labels CSV)")


def check_size(data: Ingested, cfg: DataConfig) -> None:
    """Enough training rows (all, or --limit's) for every class and for both sides of the split."""
    classes = len(np.unique(data.train.labels))
    least = minimum_rows(classes, cfg.val_fraction)
    if cfg.limit is not None and cfg.limit < least:
        raise PipelineError(
            f"--limit {cfg.limit} is below the minimum of {least} for this data ({classes} classes with "
            f"--val-fraction {cfg.val_fraction:g}: one image of each class, and the split needs at least one "
            "train and one validation image); raise --limit")
    if len(data.train) < least:
        raise PipelineError(
            f"{data.train.where}: {len(data.train)} training images, below the minimum of {least} for "
            f"--val-fraction {cfg.val_fraction:g} ({classes} classes); add images or lower --val-fraction")


def select(data: Ingested, cfg: DataConfig, out: Path) -> Selected:
    """Choose the rows (a stratified --limit subset; the sample submission's first test rows) and decode
    them straight into out/train_images.npy and out/test_images.npy."""
    if len(data.train) == 0:
        raise PipelineError(f"{data.train.where}: no training images")
    if len(data.test) == 0:
        raise PipelineError(f"{data.test.where}: no test images")
    check_classes(data)
    check_size(data, cfg)
    if cfg.limit:
        train_rows = stratified_subset(data.train.labels, cfg.limit, cfg.seed)
        n_test = min(len(data.test), max(MIN_LIMITED_TEST, cfg.limit // 5))
    else:
        train_rows, n_test = np.arange(len(data.train)), len(data.test)
    workers = cfg.workers or default_workers()
    train_images = data.train.load(train_rows, None, dest=out / "train_images.npy", workers=workers)
    if train_images.ndim != 4 or train_images.shape[-1] not in (1, 3):
        raise PipelineError(f"{data.train.where}: images have shape {train_images.shape[1:]}, expected H x W x 1 or 3")
    test_images = data.test.load(np.arange(n_test), train_images.shape[1:], dest=out / "test_images.npy",
                                 workers=workers)
    if test_images.shape[1:] != train_images.shape[1:]:
        raise PipelineError(
            f"{data.test.where}: test images are {test_images.shape[1:]}, "
            f"train images {train_images.shape[1:]} (H, W, C)"
        )
    arrays = {
        "train_images": train_images,
        "train_labels": data.train.labels[train_rows],
        "train_ids": data.train.ids[train_rows],
        "test_images": test_images,
        "test_ids": data.test.ids[:n_test],
    }
    answers = data.test.labels[:n_test] if data.test.labels is not None else None
    return Selected(arrays, answers)


def write_prepared(out: Path, data: Ingested, cfg: DataConfig, started: float) -> dict[str, Any]:
    """Write arrays, split, sample submission, answer key, meta.json and manifest.json into `out`."""
    kept = select(data, cfg, out)
    outputs, (train_idx, val_idx) = _write_arrays(out, data, kept, cfg)
    meta = _meta(out, data, kept, cfg, outputs, len(train_idx), len(val_idx))
    atomic_write_json(out / "meta.json", meta)
    write_manifest(
        out,
        "data",
        inputs=meta["raw_inputs"],
        outputs=[*meta["outputs"], file_entry(out / "meta.json", out)],
        config=config_dict(cfg),
        metrics={"counts": meta["counts"], "mean": meta["mean"], "std": meta["std"]},
        started=started,
        seed=cfg.seed,
    )
    meta["seconds"] = round(time.time() - started, 1)
    return meta


def _write_arrays(out: Path, data: Ingested, kept: Selected,
                  cfg: DataConfig) -> tuple[list[str], tuple[np.ndarray, np.ndarray]]:
    """The arrays, the split, the sample submission and the answer key; (their names, (train, val) indices)."""
    arrays, fmt = kept.arrays, data.submission
    # Plain np.save: `out` is a temp folder renamed only when complete, so each file need not be atomic.
    for name, array in arrays.items():
        if not name.endswith("_images"):  # the images were decoded into their files already
            np.save(out / f"{name}.npy", array, allow_pickle=False)
    train_idx, val_idx = stratified_split(arrays["train_labels"], cfg.val_fraction, cfg.seed)
    np.savez(out / SPLIT, train_idx=train_idx, val_idx=val_idx)
    n_test = len(arrays["test_ids"])
    if data.sample_submission is not None:
        sample = first_rows(data.sample_submission, n_test)
    else:
        sample = fmt.csv_text(arrays["test_ids"], np.zeros(n_test, np.int64), data.classes).encode()
    (out / SAMPLE_SUBMISSION).write_bytes(sample)
    outputs = [f"{name}.npy" for name in arrays] + [SPLIT, SAMPLE_SUBMISSION]
    if kept.answers is not None:
        (out / ANSWERS).parent.mkdir()
        (out / ANSWERS).write_text(fmt.csv_text(arrays["test_ids"], kept.answers, data.classes))
        outputs.append(ANSWERS)
    return outputs, (train_idx, val_idx)


def _meta(out: Path, data: Ingested, kept: Selected, cfg: DataConfig, outputs: list[str], n_train: int,
          n_val: int) -> dict[str, Any]:
    """meta.json: what train and predict read about the data (shape, classes, stats, flips, files)."""
    arrays, fmt = kept.arrays, data.submission
    mean, std = channel_stats(arrays["train_images"])
    h, w, c = arrays["train_images"].shape[1:]
    names = (cfg.competition, data.details.get("format"), data.details.get("kaggle"),
             Path(str(data.details.get("location", ""))).name)
    flip_safe, flip_why = flips.decide(cfg.flip, names, data.classes)
    return {
        "competition": cfg.competition,
        "classes": data.classes,
        "image_shape": [h, w, c],
        "counts": {"all": len(arrays["train_ids"]), "train": n_train, "val": n_val, "test": len(arrays["test_ids"])},
        "class_counts": np.bincount(arrays["train_labels"], minlength=len(data.classes)).tolist(),
        "mean": mean,
        "std": std,
        "flip_safe": flip_safe,  # read by train (augmentation) and predict (TTA) defaults
        "flip_why": flip_why,
        "split": {"file": SPLIT, "seed": cfg.seed, "val_fraction": cfg.val_fraction},
        "submission": {
            "file": SAMPLE_SUBMISSION,
            "id_column": fmt.id_column,
            "label_column": fmt.label_column,
            "label_form": fmt.label_form,
            "generated": data.sample_submission is None,
        },
        "withheld": ANSWERS if kept.answers is not None else None,
        "limit": cfg.limit,
        "source": data.details,
        "raw_inputs": [raw_entry(p, out) for p in sorted((out / "raw").iterdir())],
        "outputs": [file_entry(out / name, out) for name in outputs],
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def first_rows(csv_bytes: bytes, n: int) -> bytes:
    """The header and the first `n` non-blank rows of a CSV, bytes unchanged."""
    lines = csv_bytes.splitlines(keepends=True)
    kept, rows = lines[:1], 0
    for line in lines[1:]:
        if rows == n:
            break
        kept.append(line)
        rows += bool(line.strip())
    return b"".join(kept)


def summary(meta: dict[str, Any], folder: Path) -> str:
    counts = meta["counts"]
    h, w, c = meta["image_shape"]
    classes = meta["classes"]
    shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    fmt = " ".join(f"{v:.4f}" for v in meta["mean"]), " ".join(f"{v:.4f}" for v in meta["std"])
    return "\n".join([
        f"{folder}: {counts['all']} labelled ({counts['train']} train / {counts['val']} val), "
        f"{counts['test']} test, {h}x{w}x{c}",
        f"classes ({len(classes)}): {shown}",
        f"mean {fmt[0]}  std {fmt[1]}",
        f"horizontal flips: {'on' if flips.flip_safe(meta) else 'off'} in training and TTA by default "
        f"({meta.get('flip_why')})",
        f"done in {meta['seconds']:.1f} s",
    ])


@click.command("data")
@stage_options(DataConfig)
def command(config_file: str | None, **flags: Any) -> None:
    """Fetch a competition's raw files and write canonical arrays, split and meta.json.

    Built in (no --source needed): cifar10 (the official python archive, MD5-checked),
    fashion-mnist (torchvision's mirror), digits (scikit-learn's bundled copy, offline).
    """
    cfg = resolve_flags(DataConfig, config_file, flags)
    meta = run(cfg)
    click.echo(summary(meta, Path(cfg.data_root) / cfg.competition))
