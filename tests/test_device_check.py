"""`make device-check` (bench/device_check.py): its CPU path at tiny scale runs here, through the real
Makefile target, with albumentations, kaggle, optuna and kornia blocked as on the device image, so
the GPU check cannot rot before a GPU is lent; its budget and its GPU block are checked on their own."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import device_check
from bench.device_plan import Budget, Step, StepFailed, run_plan
from bench.device_readme import END, START, render
from helpers_data import CIFAR_CLASSES, kaggle_files, write_zip
from pipeline.train.probe import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("albumentations", "kaggle", "optuna", "kornia")
N_TRAIN = 300  # fewer than --tiny's limit of 400: the data stage keeps them all


def blocking_env(tmp: Path) -> dict[str, str]:
    """An environment whose every python (children too: PYTHONPATH is inherited) starts with the
    device image's missing packages unimportable: None in sys.modules makes `import x` fail."""
    folder = tmp / "blocker"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED))
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])
    env[CACHE_ENV] = str(tmp / "probe-cache")
    return env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One `make device-check TINY=1` on a CIFAR-like Kaggle zip of 300 JPEGs, packages blocked."""
    tmp = tmp_path_factory.mktemp("device-check")
    files, _ = kaggle_files(n_train=N_TRAIN, n_test=40, classes=tuple(CIFAR_CLASSES), fmt="JPEG", size=32)
    source = write_zip(tmp / "cifar10-jpg.zip", files)
    readme = tmp / "README.md"
    shutil.copy2(REPO / "README.md", readme)
    args = f"--work-dir {tmp / 'work'} --out {tmp / 'check.json'} --readme {readme}"
    if shutil.which("make"):
        cmd = ["make", "--no-print-directory", "-C", str(REPO), "device-check", "TINY=1", f"SOURCE={source}",
               f"PY={sys.executable}", f"LOCAL_MK={tmp / 'local.mk'}", f"DEVICE_CHECK_ARGS={args}"]
    else:  # the module the target runs, with the same arguments
        cmd = [sys.executable, "-m", "bench.device_check", "--tiny", "--source", str(source), *args.split()]
    env = blocking_env(tmp)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return {"tmp": tmp, "env": env, "readme": readme, "result": json.loads((tmp / "check.json").read_text())}


def test_the_blocker_really_blocks_the_device_images_missing_packages(tiny):
    for name in BLOCKED:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], env=tiny["env"], capture_output=True,
                              text=True)
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, name


def test_every_step_of_the_tiny_path_ran_with_those_packages_blocked(tiny):
    steps = tiny["result"]["steps"]
    assert list(steps)[:3] == ["environment", "data", "airbench94-s0"]
    assert {"cuda-tests", "airbench94-muon-s0", "airbench95-s0", "throughput", "resnet20-gpu-fast-s0"} <= set(steps)
    for name, record in steps.items():
        if name == "airbench95-s0" and not (REPO / "configs" / "airbench95.yaml").is_file():
            assert record["status"] == "skipped" and "not found" in record["reason"]
        else:
            assert record["status"] == "ok", (name, record)
    assert steps["data"]["counts"]["train"] + steps["data"]["counts"]["val"] == N_TRAIN
    assert tiny["result"]["mode"] == "cpu-tiny" and tiny["result"]["used_s"] < tiny["result"]["budget_s"]


def test_each_recipes_figures_are_its_runs_own_files(tiny):
    work = tiny["tmp"] / "work"
    recipes = {n: r for n, r in tiny["result"]["steps"].items() if "config" in r and r["status"] == "ok"}
    assert len(recipes) >= 3
    for name, record in recipes.items():
        run_dir = work / "runs" / record["run"]
        predicted = json.loads((run_dir / "predict.json").read_text())
        assert record["tta_val_acc"] == predicted["metrics"]["val_accuracy"]
        assert set(record["tta_val_acc"]) == {"none", "flip", "flip+shift", "airbench"}
        assert all(0.0 <= acc <= 1.0 for acc in record["tta_val_acc"].values())
        # the saved level's logits give back its accuracy
        logits, labels = np.load(run_dir / "val_logits.npy"), np.load(run_dir / "val_labels.npy")
        assert float((logits.argmax(1) == labels).mean()) == pytest.approx(record["tta_val_acc"][record["tta_saved"]])
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert record["train_s"] == pytest.approx(sum(r["seconds"] for r in rows)) and record["train_s"] > 0
        assert record["epochs"] == 0.5 and record["train_img_per_s"] > 0


def test_cuda_tests_and_throughput_are_counted(tiny):
    steps = tiny["result"]["steps"]
    cuda = steps["cuda-tests"]
    assert cuda["tests"] >= 1 and cuda["failed"] == cuda["errors"] == 0
    if not torch.cuda.is_available():
        assert cuda["skipped"] == cuda["tests"]
    variants = steps["throughput"]["variants"]
    assert {"fp32_nchw", "fp32_channels_last", "bf16_nchw", "bf16_channels_last"} <= set(variants)
    assert all(row["img_per_s"] > 0 for row in variants.values())
    assert "compile" in steps["throughput"]["not_timed"]


def test_the_readme_copy_says_not_measured_on_a_gpu_and_keeps_the_rest(tiny):
    text, original = tiny["readme"].read_text(), (REPO / "README.md").read_text()
    block = text.split(START, 1)[1].split(END, 1)[0]
    assert "not measured on a GPU" in block and "airbench94-s0: ok" in block and "cuda-tests: ok" in block
    assert text.split(START)[0] == original.split(START)[0] and text.split(END)[1] == original.split(END)[1]
    assert tiny["result"]["target"]["verdict"] == "not measured on a GPU"


def test_the_budget_skips_what_no_longer_fits_and_records_every_outcome():
    now = [0.0]
    budget = Budget(100, clock=lambda: now[0])

    def takes(seconds: float, figures: dict | None = None):
        def run(left: float) -> dict:
            now[0] += seconds
            return figures or {}
        return run

    def fails(left: float) -> dict:
        raise StepFailed("2 failed", {"tests": 5, "failed": 2})

    def overruns(left: float) -> dict:
        raise subprocess.TimeoutExpired("python", left)

    snapshots = []
    steps = [Step("a", 30, 0, takes(40, {"x": 1})), Step("b", 10, 0, fails), Step("c", 50, 0, overruns),
             Step("d", 70, 0, takes(1)), Step("e", 60, 0, takes(1))]
    records = run_plan(steps, budget, tiny=False, after_each=lambda done: snapshots.append(dict(done)))
    assert [r["status"] for r in records.values()] == ["ok", "failed", "timed out", "skipped", "ok"]
    assert records["a"]["x"] == 1 and records["b"]["tests"] == 5 and "60 s of the 100 s" in records["d"]["reason"]
    assert [len(s) for s in snapshots] == [1, 2, 3, 4, 5]  # the JSON is rewritten after every step


def gpu_result(train_s: float, accs: list[float]) -> dict:
    def run(seed: int, acc: float) -> dict:
        return {"status": "ok", "config": device_check.AIRBENCH94, "run": f"dc-airbench94-s{seed}", "seed": seed,
                "epochs": 9.9, "tta_val_acc": {"none": acc - 0.006, "airbench": acc}, "train_s": train_s,
                "train_img_per_s": 120_000.0, "speed_choice": {"precision": "bf16", "channels_last": True,
                                                                "compile": False}}

    steps = {"environment": {"status": "ok", "device_name": "NVIDIA H100 80GB HBM3", "versions": {"torch": "2.11.0"}},
             **{f"airbench94-s{s}": run(s, acc) for s, acc in enumerate(accs)},
             "cuda-tests": {"status": "ok", "tests": 6, "passed": 6, "failed": 0, "errors": 0, "skipped": 0},
             "throughput": {"status": "ok", "batch_size": 512, "variants": {
                 "bf16_channels_last": {"img_per_s": 50_000.0},
                 "bf16_channels_last_compile": {"img_per_s": 70_000.0, "compile_s": 31.0}}},
             "resnet20-gpu-fast-s0": {"status": "skipped", "reason": "needs ~130 s, 20 s of the 480 s budget left"}}
    return {"mode": "gpu", "date": "2027-01-01 00:00 UTC", "used_s": 470.0, "budget_s": 480, "out": "x.json",
            "steps": steps, "target": device_check.target(steps, "gpu")}


def test_the_gpu_block_gives_the_targets_verdict_the_tables_and_what_was_skipped():
    met = gpu_result(3.6, [0.901, 0.903, 0.899, 0.905, 0.902])
    assert met["target"]["met"] is True
    block = render(met)
    assert "**met**" in block and "90.20% +- 0.22" in block and "NVIDIA H100" in block
    assert "| airbench94 | 9.9" in block and "0, 1, 2, 3, 4" in block and "bf16, channels_last" in block
    assert "bf16 channels last compile | 70,000 | 31" in block and "6 passed" in block
    assert "resnet20-gpu-fast-s0: skipped (needs ~130 s" in block
    assert device_check.target(gpu_result(4.5, [0.91] * 5)["steps"], "gpu")["verdict"] == "not met"
    assert device_check.target(gpu_result(3.0, [0.91] * 3)["steps"], "gpu")["verdict"] == "not measured"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_full_check_refuses_a_machine_without_cuda_in_one_line(tmp_path, capsys):
    zip_path = tmp_path / "c.zip"
    zip_path.write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        device_check.main(["--source", str(zip_path), "--out", str(tmp_path / "x.json"), "--no-readme"])
    assert "no CUDA device here" in str(e.value) and "TINY=1" in str(e.value)
    with pytest.raises(SystemExit) as e:
        device_check.main(["--tiny", "--no-readme"])
    assert "give the CIFAR-10 zip" in str(e.value)
    with pytest.raises(SystemExit) as e:
        device_check.main(["--tiny", "--source", str(tmp_path / "absent.zip"), "--no-readme"])
    assert "absent.zip: no such file" in str(e.value)
