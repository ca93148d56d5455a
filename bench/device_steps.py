"""What each step of `make device-check` does, and the figures it returns.

Every step that trains or tests runs the project's own commands (`python -m pipeline data / train
/ predict`, pytest, bench/device_throughput.py) as child processes of this python, each limited to
the seconds left of the check's budget, with its output in WORK/logs/<step>.log. The chain is run
directly rather than through make: the device image may lack GNU make, and make's staleness logic
(covered by the tests) is not what is measured here, while the seconds of every extra process are.
"""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.device_plan import StepFailed
from bench.quality import run_figures
from pipeline.artifacts import read_json, versions
from pipeline.run_layout import MANIFEST
from pipeline.train.logbook import read_metrics

REPO = Path(__file__).resolve().parents[1]
COMPETITION = "cifar10-jpg"
TTA = "none,flip,flip+shift,airbench"
# Not in the device image unless carried as wheels: every code path the check runs must import
# them lazily (tests/test_device_check.py runs the tiny path with them blocked).
OPTIONAL_PACKAGES = ("albumentations", "kaggle", "optuna", "kornia")


@dataclass(frozen=True)
class Work:
    """The check's own folder: prepared data, runs, logs (nothing of the repo's data/ or checkpoints/)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data" / COMPETITION

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def log(self, step: str) -> Path:
        return self.root / "logs" / f"{step}.log"


def run_python(args: list[str], timeout: float, log: Path, check: bool = True) -> int:
    """`python ARGS` in the repo, killed after `timeout` seconds, output appended to `log`. A failure
    (check) raises StepFailed with the output's last line, which names the cause in this project."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ python {' '.join(args)}\n")
        out.flush()
        code = subprocess.run([sys.executable, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                              timeout=max(timeout, 1.0)).returncode
    if check and code != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise StepFailed(f"{' '.join(args[:3])} exited {code}: {lines[-1] if lines else 'no output'} (log: {log})")
    return code


def environment() -> dict[str, Any]:
    """torch, the device, and which optional packages this python has."""
    import torch

    from bench.machine import machine_summary

    facts: dict[str, Any] = {"python": platform.python_version(), "versions": versions(),
                             "cuda_available": torch.cuda.is_available(), "machine": machine_summary(),
                             "optional_packages": {name: _installed(name) for name in OPTIONAL_PACKAGES}}
    if facts["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        facts |= {"device_name": props.name, "capability": f"{props.major}.{props.minor}",
                  "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version(), "device_count": torch.cuda.device_count()}
    return facts


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def prepare_data(work: Work, source: str, limit: int | None, timeout: float) -> dict[str, Any]:
    if not Path(source).is_file():
        raise StepFailed(f"{source}: no such file (give the Kaggle-style CIFAR-10 zip: SOURCE=path.zip)")
    run_python(["-m", "pipeline", "data", "--competition", COMPETITION, "--source", source,
                "--data-root", str(work.data.parent), *(["--limit", str(limit)] if limit else [])],
               timeout, work.log("data"))
    return {"data": str(work.data), "source": Path(source).name, "limit": limit,
            "counts": read_json(work.data / "meta.json")["counts"]}


def recipe(work: Work, config: str, run: str, seed: int, train_args: list[str], timeout: float) -> dict[str, Any]:
    """Train `config` afresh, predict val and test with every TTA level (final weights, as airbench
    scores), and read the figures back from the run's own files."""
    if not (work.data / "meta.json").is_file():
        raise StepFailed(f"{work.data}: no prepared data (the data step did not finish)")
    start, log = time.monotonic(), work.log(run)
    run_python(["-m", "pipeline", "train", "--config", config, "--data", str(work.data), "--run", run,
                "--out-dir", str(work.runs), "--seed", str(seed), "--overwrite", *train_args], timeout, log)
    run_python(["-m", "pipeline", "predict", "--run", run, "--runs-dir", str(work.runs), "--tta", TTA,
                "--checkpoint", "last"], timeout - (time.monotonic() - start), log)
    run_dir = work.runs / run
    manifest = read_json(run_dir / MANIFEST)
    return {"config": config, "run": run, "seed": seed, "epochs": manifest["config"].get("epochs"),
            "train_args": train_args, **run_figures(run_dir), "train_s": train_seconds(run_dir),
            "train_stage_s": manifest.get("wall_seconds"), "speed_choice": manifest["probe"]["choice"]}


def train_seconds(run_dir: Path) -> float:
    """The run's training seconds as its metrics record them: the sum over epochs of metrics.jsonl's
    `seconds` (each epoch's training steps and its val pass, from the engine's clock). Process
    start-up, data loading, the probe, the whitening init and checkpoint writes are outside it."""
    return round(sum(row["seconds"] for row in read_metrics(run_dir)), 3)


def cuda_tests(work: Work, timeout: float) -> dict[str, Any]:
    """pytest -m cuda over the test files that hold cuda-marked tests (collecting only those: other
    files may import packages the device lacks). On a machine without CUDA they skip."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                   if "mark.cuda" in p.read_text(encoding="utf-8"))
    junit = work.root / "cuda-tests.xml"
    junit.unlink(missing_ok=True)
    code = run_python(["-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
                       f"--junitxml={junit}", *files], timeout, work.log("cuda-tests"), check=False)
    if not junit.is_file():
        raise StepFailed(f"pytest exited {code} without a report (is pytest installed? log: {work.log('cuda-tests')})")
    counts = junit_counts(junit) | {"files": files}
    if code != 0 or counts["failed"] or counts["errors"]:
        raise StepFailed(f"{counts['failed']} failed, {counts['errors']} errors (log: {work.log('cuda-tests')})",
                         counts)
    return counts


def junit_counts(path: Path) -> dict[str, int]:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failed, errors, skipped = (int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped"))
    return {"tests": total, "passed": total - failed - errors - skipped, "failed": failed, "errors": errors,
            "skipped": skipped}


def throughput(work: Work, tiny: bool, timeout: float) -> dict[str, Any]:
    out = work.root / "throughput.json"
    # the tiny path stays on the CPU, as its recipes do, whatever the machine has
    run_python(["-m", "bench.device_throughput", "--out", str(out), *(["--tiny", "--device", "cpu"] if tiny else [])],
               timeout, work.log("throughput"))
    return read_json(out)
