"""Worker for test_train_ddp: one torchrun process training on a tiny folder with gloo.

usage: torchrun --nproc_per_node=2 tests/helpers_train_ddp.py DATA OUT_DIR LOG_DIR
Records the labels each rank's train loader yields per epoch to LOG_DIR/rank<R>.jsonl; with
unique labels (one per sample) those are exactly the samples the rank consumed.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, for `pipeline`

from helpers_train import WrappedLoader, tiny_config  # noqa: E402
from pipeline.train import engine  # noqa: E402


class RecordingLoader(WrappedLoader):
    def __init__(self, inner, log_path: Path):
        super().__init__(inner)
        self.log_path = log_path

    def __iter__(self):
        seen = []
        for images, labels in self.inner:
            seen += labels.tolist()
            yield images, labels
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"epoch": self.epoch, "labels": seen}) + "\n")


def main() -> None:
    data, out_dir, log_dir = (Path(p) for p in sys.argv[1:4])
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    real = engine.build_train_loader
    engine.build_train_loader = lambda *a, **k: RecordingLoader(real(*a, **k), log_dir / f"rank{rank}.jsonl")
    summary = engine.run_training(tiny_config(data, out_dir, epochs=2, batch_size=4, eval_batch_size=8,
                                              augment="standard", precision="fp32"))
    (log_dir / f"summary{rank}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
