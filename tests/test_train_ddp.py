"""Two CPU processes under torchrun (gloo): every sample once per epoch, one consistent checkpoint."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from helpers_train import make_prepared
from pipeline.checkpoint import build_model, load_checkpoint

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_shards_the_data_and_writes_one_loadable_checkpoint(tmp_path):
    # 16 train samples with labels 0..23 unique to each sample: 2 ranks x 2 batches of 4 per epoch
    data = make_prepared(tmp_path / "tiny", n_train=16, n_val=8, unique_labels=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(HERE / "helpers_train_ddp.py"), str(data),
           str(tmp_path / "ck"), str(logs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    with np.load(data / "split.npz") as split:
        train_labels = set(np.load(data / "train_labels.npy")[split["train_idx"]].tolist())
    per_rank = [[json.loads(line) for line in (logs / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    for epoch in (1, 2):
        shards = [next(e["labels"] for e in rank_log if e["epoch"] == epoch) for rank_log in per_rank]
        assert len(shards[0]) == len(shards[1]) == 8
        assert sorted(shards[0] + shards[1]) == sorted(train_labels)  # each sample exactly once
    assert per_rank[0][0]["labels"] != per_rank[0][1]["labels"]  # reshuffled between epochs

    summaries = [json.loads((logs / f"summary{r}.json").read_text()) for r in (0, 1)]
    assert summaries[0]["best_epoch"] == summaries[1]["best_epoch"]  # both ranks took the same decisions
    ckpt = load_checkpoint(tmp_path / "ck" / "t" / "last.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    build_model(ckpt)  # loads in this single process
    rows = (tmp_path / "ck" / "t" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # written once, by rank 0
