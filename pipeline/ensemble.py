"""`python -m pipeline ensemble RUN [RUN...]`: blend runs' saved logits into predictions.csv.

Methods (weighted by --weights, or by greedy selection counts; equal weights by default):
    prob   mean of the members' softmax probabilities (default)
    logit  mean of the members' logits, then softmax
--select greedy is Caruana et al. 2004 forward selection with replacement on the val logits:
start empty; each round add the member (possibly again) whose addition gives the best val
accuracy, ties broken by lower val log-loss (then by run order); stop after --rounds rounds or
when the best addition improves neither; the weights are the counts.

Members must share the val split and test ids (checked, naming the runs). Writes the CSV in the
sample submission's form and `<stem>.ensemble.json` beside it (members, weights, method, val
accuracy, data root, competition, sha256s), which `submit` reads.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import click
import numpy as np

from pipeline.artifacts import file_entry, load_npy, read_json, sha256_file, write_manifest
from pipeline.cli_config import resolve_flags, setting, stage_options
from pipeline.config import config_dict
from pipeline.data.dataset import lineage_changes
from pipeline.errors import PipelineError
from pipeline.registry import Registry
from pipeline.run_layout import OUTPUTS, PREDICT_JSON
from pipeline.submission import read_sample, sidecar_path, write_predictions

log = logging.getLogger(__name__)

METHODS = Registry("ensemble method")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@METHODS.register("prob")
def mean_probabilities(logits: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_i w_i softmax(l_i) / sum_i w_i"""
    w = np.asarray(weights, dtype=np.float64)
    return sum(wi * softmax(l) for wi, l in zip(w, logits) if wi) / w.sum()


@METHODS.register("logit")
def mean_logits(logits: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """softmax(sum_i w_i l_i / sum_i w_i)"""
    w = np.asarray(weights, dtype=np.float64)
    return softmax(sum(wi * np.asarray(l, np.float64) for wi, l in zip(w, logits) if wi) / w.sum())


def combine(method: str, logits: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Ensemble class probabilities (N, classes)."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) != len(logits) or (weights < 0).any() or weights.sum() <= 0:
        raise PipelineError(f"weights must be {len(logits)} non-negative numbers, not all zero; got {weights.tolist()}")
    combined: Callable = METHODS.get(method)
    return combined(logits, weights)


def correct_count(probs: np.ndarray, labels: np.ndarray) -> int:
    return int((probs.argmax(1) == labels).sum())


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-15, 1.0)).mean())


def greedy_select(
    val_logits: Sequence[np.ndarray], labels: np.ndarray, method: str, rounds: int
) -> np.ndarray:
    """Caruana forward selection with replacement; returns how often each member was picked."""
    if rounds < 1:
        raise PipelineError(f"--rounds must be >= 1, got {rounds}")
    counts = np.zeros(len(val_logits), dtype=np.int64)
    current: tuple[int, float] | None = None  # (correct, -log loss) of the ensemble so far
    for _ in range(rounds):
        best: tuple[tuple[int, float], int] | None = None
        for i in range(len(val_logits)):
            trial = counts.copy()
            trial[i] += 1
            probs = combine(method, val_logits, trial)
            score = (correct_count(probs, labels), -log_loss(probs, labels))
            if best is None or score > best[0]:
                best = (score, i)
        if current is not None and not best[0] > current:
            break
        counts[best[1]] += 1
        current = best[0]
    return counts


def crossfit_greedy_accuracy(val_logits: Sequence[np.ndarray], labels: np.ndarray, method: str,
                             rounds: int) -> float:
    """An honest figure for greedy selection: weights chosen on the even val rows are scored on the
    odd rows and vice versa (the in-sample accuracy flatters the selection it was fitted to)."""
    rows = np.arange(len(labels))
    halves = (rows % 2 == 0, rows % 2 == 1)
    correct = 0
    for fit, score in (halves, halves[::-1]):
        weights = greedy_select([v[fit] for v in val_logits], labels[fit], method, rounds)
        correct += correct_count(combine(method, [v[score] for v in val_logits], weights), labels[score])
    return correct / len(labels)


@dataclass
class Member:
    run: str
    folder: Path
    info: dict[str, Any]  # predict.json
    val_logits: np.ndarray
    val_ids: np.ndarray
    val_labels: np.ndarray
    test_logits: np.ndarray
    test_ids: np.ndarray


def load_member(runs_dir: Path, run: str) -> Member:
    folder = runs_dir / run
    info_path = folder / PREDICT_JSON
    if not info_path.is_file():
        raise PipelineError(f"{info_path}: not found; run `python -m pipeline predict --run {run}` first")
    info = read_json(info_path)
    recorded = {Path(entry["path"]).name: entry["sha256"] for entry in info.get("outputs", [])}
    for name in OUTPUTS:
        path = folder / name
        if not path.is_file():
            raise PipelineError(f"{path}: missing; rerun `python -m pipeline predict --run {run}`")
        if recorded.get(name) != sha256_file(path):
            raise PipelineError(f"{path}: does not match its sha256 in {info_path} (an interrupted or "
                                f"concurrent predict?); rerun `python -m pipeline predict --run {run}`")
    arrays = {name[:-4]: load_npy(folder / name) for name in OUTPUTS}
    member = Member(run=run, folder=folder, info=info, **arrays)
    for split in ("val", "test"):
        logits, ids = getattr(member, f"{split}_logits"), getattr(member, f"{split}_ids")
        if logits.ndim != 2 or len(logits) != len(ids):
            raise PipelineError(f"{folder}: {split}_logits {logits.shape} does not fit {len(ids)} {split} ids")
    return member


def check_compatible(members: Sequence[Member]) -> None:
    """Refuse members predicted on different data: their logits would not line up."""
    first = members[0]
    for other in members[1:]:
        differ = []
        if first.info.get("data", {}).get("competition") != other.info.get("data", {}).get("competition"):
            differ.append("competition")
        same_val = (np.array_equal(first.val_ids, other.val_ids)
                    and np.array_equal(first.val_labels, other.val_labels)
                    and first.info.get("data", {}).get("split_sha256") == other.info.get("data", {}).get("split_sha256"))
        if not same_val:
            differ.append("val split")
        if not np.array_equal(first.test_ids, other.test_ids):
            differ.append("test ids")
        # Same ids can still be other images: a folder rebuilt from another source, or another data root.
        changed = lineage_changes(first.info.get("data", {}).get("arrays_sha256") or {},
                                  other.info.get("data", {}).get("arrays_sha256") or {})
        if changed and not differ:
            differ.append(f"prepared data ({', '.join(changed)} differ)")
        if first.val_logits.shape[1] != other.val_logits.shape[1]:
            differ.append("number of classes")
        if differ:
            raise PipelineError(
                f"runs '{first.run}' and '{other.run}' differ in {', '.join(differ)}; ensemble only "
                "runs predicted on the same prepared data")


@dataclass
class EnsembleConfig:
    runs: list[str] = setting([], "Runs to blend (the command's arguments).")
    runs_dir: str = setting("checkpoints", "Where runs live.")
    method: str = setting("prob", "prob: mean of probabilities; logit: mean of logits.", choices=lambda: METHODS.names())
    weights: Optional[list] = setting(None, "One weight per run (equal if unset).", metavar="W1,W2,...")
    select: Optional[str] = setting(None, "greedy: Caruana forward selection with replacement on val accuracy "
                                          "(its val figure is then also cross-fitted).", choices=("greedy",))
    rounds: int = setting(20, "Greedy selection rounds.")
    out: str = setting("submissions/predictions.csv", "Predictions CSV.")


def choose_weights(cfg: EnsembleConfig, members: Sequence[Member]) -> np.ndarray:
    if cfg.select not in (None, "greedy"):
        raise PipelineError(f"unknown --select '{cfg.select}'; choose from: greedy")
    if cfg.select and cfg.weights:
        raise PipelineError("give either --weights or --select greedy, not both")
    if cfg.select == "greedy":
        return greedy_select([m.val_logits for m in members], members[0].val_labels, cfg.method, cfg.rounds)
    if cfg.weights:
        if len(cfg.weights) != len(members):
            raise PipelineError(f"--weights has {len(cfg.weights)} values for {len(members)} runs")
        return np.asarray(cfg.weights, dtype=np.float64)
    return np.ones(len(members))


def _members(cfg: EnsembleConfig) -> list[Member]:
    """The runs' predict outputs, each named once and all of the same val/test images."""
    if not cfg.runs:
        raise PipelineError("name at least one run to ensemble")
    repeated = sorted({r for r in cfg.runs if cfg.runs.count(r) > 1})
    if repeated:
        raise PipelineError(f"run {', '.join(repeated)} listed more than once; use --weights to weight it")
    METHODS.get(cfg.method)  # an unknown method fails before any file is read
    members = [load_member(Path(cfg.runs_dir), run) for run in cfg.runs]
    check_compatible(members)
    return members


def run_ensemble(cfg: EnsembleConfig) -> dict[str, Any]:
    started = time.time()
    members = _members(cfg)
    weights = choose_weights(cfg, members)
    labels = members[0].val_labels

    val_probs = combine(cfg.method, [m.val_logits for m in members], weights)
    test_probs = combine(cfg.method, [m.test_logits for m in members], weights)
    member_acc = {m.run: correct_count(softmax(m.val_logits), labels) / len(labels) for m in members}
    val_accuracy = correct_count(val_probs, labels) / len(labels)
    crossfit = None
    if cfg.select == "greedy" and len(labels) >= 2:
        crossfit = crossfit_greedy_accuracy([m.val_logits for m in members], labels, cfg.method, cfg.rounds)

    data_info = members[0].info.get("data", {})
    root = Path(data_info.get("root", ""))
    meta = read_json(root / "meta.json")
    if data_info.get("split_sha256") != sha256_file(root / "split.npz"):
        raise PipelineError(f"{root}/split.npz changed since the runs were predicted; rerun predict")
    sample = read_sample(root / meta.get("submission", {}).get("file", "sample_submission.csv"))
    out = Path(cfg.out)
    write_predictions(out, sample, members[0].test_ids, test_probs.argmax(1), meta)

    sidecar = sidecar_path(out)
    member_rows = [
        {"run": m.run, "weight": float(w), "val_accuracy": member_acc[m.run], "tta": m.info.get("tta"),
         "checkpoint": m.info.get("checkpoint", {}).get("path"),
         "predict_json_sha256": sha256_file(m.folder / PREDICT_JSON)}
        for m, w in zip(members, weights)
    ]
    write_manifest(
        out.parent, "ensemble",
        inputs=[m.folder / name for m in members for name in (PREDICT_JSON, *OUTPUTS)],
        outputs=[file_entry(out)],
        config=config_dict(cfg),
        metrics={"val_accuracy": val_accuracy, "member_val_accuracy": member_acc},
        started=started,
        name=sidecar.name,
        extra={
            "members": member_rows,
            "runs": [m.run for m, w in zip(members, weights) if w > 0],
            "method": cfg.method,
            "weights": [float(w) for w in weights],
            "select": cfg.select,
            "val_accuracy": val_accuracy,
            "val_accuracy_crossfit": crossfit,
            "val_log_loss": log_loss(val_probs, labels),
            "data": {"root": str(root), "competition": data_info.get("competition"),
                     "split_sha256": data_info.get("split_sha256")},
            "predictions": {"path": str(out), "sha256": sha256_file(out), "rows": len(sample.ids)},
        },
    )
    return {"members": member_rows, "val_accuracy": val_accuracy, "out": out, "sidecar": sidecar,
            "rows": len(sample.ids), "method": cfg.method, "val_accuracy_crossfit": crossfit}


def summary_lines(result: dict[str, Any]) -> list[str]:
    width = max(len("ensemble"), *(len(m["run"]) for m in result["members"]))
    lines = [f"{'member':<{width}}  val acc  weight"]
    for m in result["members"]:
        lines.append(f"{m['run']:<{width}}  {m['val_accuracy']:.4f}   {m['weight']:g}")
    fitted = " of weights fitted on val: optimistic" if result.get("val_accuracy_crossfit") is not None else ""
    lines.append(f"{'ensemble':<{width}}  {result['val_accuracy']:.4f}   ({result['method']} mean{fitted})")
    if result.get("val_accuracy_crossfit") is not None:
        lines.append(f"{'held out':<{width}}  {result['val_accuracy_crossfit']:.4f}   (greedy weights fitted on one "
                     "half of val, scored on the other, both ways)")
    lines.append(f"wrote {result['out']} ({result['rows']} rows) and {result['sidecar']}")
    return lines


@click.command("ensemble")
@stage_options(EnsembleConfig, argument="runs", nargs=-1, required=True)
def command(config_file: str | None, **flags: Any) -> None:
    """Blend runs' saved logits; write predictions.csv and its ensemble manifest."""
    cfg = resolve_flags(EnsembleConfig, config_file, flags)
    for line in summary_lines(run_ensemble(cfg)):
        click.echo(line)
