"""`make bench-data`: the data stage, predict, ensemble and validate at real Kaggle CIFAR-10 scale.

Builds (once, cached under --work) a synthetic copy of Kaggle's cifar-10 download: a zip holding
50,000 train and 300,000 test 32x32 PNGs (as train/ and test/ folders, or with --layout 7z as
train.7z and test.7z, Kaggle's own form), trainLabels.csv and sampleSubmission.csv. Then runs, each as its own process, timing it and sampling the resident
memory of its whole process tree (workers included):
    data      python -m pipeline data --source cifar-10.zip
    train     a few steps of the small `simplenn` model (not a figure: predict needs a run)
    predict   val + 300,000 test logits
    ensemble  predictions.csv of 300,000 rows
    validate  the CSV against the sample submission
and prints wall time, peak RSS and the output arrays' size; --json writes them too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def machine() -> str:
    name, flags = "unknown CPU", set()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores ({' '.join(f for f in SPEED_FLAGS if f in flags) or 'no AVX2'})"


# ------------------------------------------------------------------------------------ the data set


def _png_batch(args: tuple[int, int, int]) -> list[bytes]:
    """PNGs of smooth random 32x32 images (blocks + noise: they compress like photos, ~2 KB)."""
    import io

    from PIL import Image

    start, stop, seed = args
    rng = np.random.default_rng(seed)
    n = stop - start
    coarse = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.int16).repeat(4, 1).repeat(4, 2)
    images = np.clip(coarse + rng.integers(-12, 13, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _write_7z(path: Path, folder: str, n: int, seed: int, pool) -> None:
    import py7zr

    step = 5000
    jobs = [(s, min(s + step, n), seed + s) for s in range(0, n, step)]
    # Fast LZMA2 preset: PNGs hardly compress, and building the set is not what is measured.
    with py7zr.SevenZipFile(path, "w", filters=[{"id": py7zr.FILTER_LZMA2, "preset": 1}]) as sz:
        for (start, _, _), pngs in zip(jobs, pool.imap(_png_batch, jobs)):
            for i, data in enumerate(pngs):
                sz.writestr(data, f"{folder}/{start + i + 1}.png")


def build(work: Path, n_train: int, n_test: int, layout: str) -> Path:
    """work/cifar-10-<layout>.zip in Kaggle's layout; reused when it exists with the same counts.

    layout "7z": train.7z and test.7z inside the zip, as Kaggle serves cifar-10 (LZMA2 compression of
    350,000 PNGs takes this machine many minutes); "zip": the train/ and test/ folders stored in the zip.
    """
    import multiprocessing

    bundle = work / f"cifar-10-{layout}.zip"
    stamp = bundle.with_suffix(".counts")
    if bundle.is_file() and stamp.is_file() and stamp.read_text() == f"{n_train} {n_test}":
        return bundle
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), n_train)
    with multiprocessing.get_context("fork").Pool(2) as pool, \
            zipfile.ZipFile(bundle, "w", zipfile.ZIP_STORED) as zf:
        for folder, n, seed in (("train", n_train, 1), ("test", n_test, 10**7)):
            if layout == "7z":
                _write_7z(work / f"{folder}.7z", folder, n, seed, pool)
                zf.write(work / f"{folder}.7z", f"{folder}.7z")
                (work / f"{folder}.7z").unlink()
                continue
            jobs = [(s, min(s + 5000, n), seed + s) for s in range(0, n, 5000)]
            for (start, _, _), pngs in zip(jobs, pool.imap(_png_batch, jobs)):
                for i, data in enumerate(pngs):
                    zf.writestr(f"{folder}/{start + i + 1}.png", data)
        zf.writestr("trainLabels.csv", "id,label\n" + "".join(f"{i + 1},{CLASSES[y]}\n" for i, y in enumerate(labels)))
        zf.writestr("sampleSubmission.csv", "id,label\n" + "".join(f"{i},cat\n" for i in range(1, n_test + 1)))
    stamp.write_text(f"{n_train} {n_test}")
    print(f"built {bundle} ({bundle.stat().st_size / 2**20:.0f} MiB) in {time.time() - started:.0f} s", flush=True)
    return bundle


# -------------------------------------------------------------------------------------- measuring


def measure(name: str, args: list[str]) -> dict:
    """Run `python -m pipeline ARGS`: wall seconds, and the peak over time of its process tree's
    memory summed over processes, as RSS (counts pages forked workers share once per process: an
    upper bound) and as PSS (shared pages split between their sharers: the tree's real footprint)."""
    import psutil

    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        rss, pss = zip(*(_memory(p) for p in tree))
        peak_rss, peak_pss = max(peak_rss, sum(rss)), max(peak_pss, sum(pss))
        time.sleep(0.2)
    output = proc.stdout.read()
    seconds = time.time() - started
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}):\n{output}")
    print(f"{name:<9} {seconds:7.1f} s  peak RSS {peak_rss / 2**20:6.0f} MiB  peak PSS {peak_pss / 2**20:6.0f} MiB",
          flush=True)
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(peak_rss / 2**20),
            "peak_pss_mib": round(peak_pss / 2**20), "output": output.strip()[-800:]}


def _memory(p) -> tuple[int, int]:
    import psutil

    try:
        info = p.memory_full_info()
        return info.rss, getattr(info, "pss", info.rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/bench-data", help="Scratch folder (the set is cached there).")
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=300_000)
    parser.add_argument("--layout", choices=("zip", "7z"), default="zip",
                        help="zip: train/ and test/ folders in the zip; 7z: train.7z and test.7z in it, as Kaggle "
                             "serves cifar-10 (building it takes much longer) [zip].")
    parser.add_argument("--json", help="Also write the figures to this JSON file.")
    parser.add_argument("--data-only", action="store_true", help="Measure the data stage only.")
    args = parser.parse_args()
    work = Path(args.work)
    bundle = build(work, args.train, args.test, args.layout)
    label = machine()
    print(f"machine: {label}", flush=True)
    data_root, runs = work / "data", work / "runs"
    folder = data_root / "bench-cifar10"
    results = {"machine": label, "train": args.train, "test": args.test, "layout": args.layout,
               "bundle_mib": round(bundle.stat().st_size / 2**20)}
    results["data"] = measure("data", ["data", "--competition", "bench-cifar10", "--source", str(bundle),
                                       "--data-root", str(data_root)])
    arrays = sum((folder / f"{n}.npy").stat().st_size for n in ("train_images", "train_labels", "train_ids",
                                                               "test_images", "test_ids"))
    results["arrays_mib"] = round(arrays / 2**20)
    for kind in ("rss", "pss"):
        results["data"][f"{kind}_over_arrays"] = round(results["data"][f"peak_{kind}_mib"] / results["arrays_mib"], 2)
    print(f"output arrays {results['arrays_mib']} MiB; data-stage peak / arrays: RSS "
          f"{results['data']['rss_over_arrays']}, PSS {results['data']['pss_over_arrays']}", flush=True)
    if not args.data_only:
        run = "bench-simplenn"
        measure("train", ["train", "--data", str(folder), "--model", "simplenn", "--run", run, "--out-dir",
                          str(runs), "--epochs", "0.05", "--overwrite"])
        results["predict"] = measure("predict", ["predict", "--run", run, "--runs-dir", str(runs)])
        csv = work / "predictions.csv"
        results["ensemble"] = measure("ensemble", ["ensemble", run, "--runs-dir", str(runs), "--out", str(csv)])
        results["validate"] = measure("validate", ["validate", str(csv), "--data", str(folder)])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
