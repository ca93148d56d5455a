"""Training throughput of the model zoo: forward + backward images/s on this machine.

    .venv/bin/python -m bench.model_throughput [--models lenet5 resnet20 timm:resnet18] [--out FILE]

Per model: random CIFAR-shaped batch (default 128 x 3x32x32, channels_last), bf16 autocast around
forward and loss, backward; a few warm-up steps, then the median of the timed steps. Prints a
markdown table (model, params, MACs per image, img/s). Figures depend on the CPU and on whatever
else runs on it; the median damps, but does not remove, interference.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from bench.timing import windows_img_per_s
from pipeline.artifacts import atomic_write_text
from pipeline.info import markdown_table, natural_key, parse_input_size, summarize
from pipeline.models import create_model, list_models
from pipeline.runtime import autocast


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> Iterator[int]:
    """Endless forward + backward steps (no optimizer: the model's cost, not the optimizer's)."""
    model.train()
    while True:
        with autocast(x.device, precision):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        yield x.shape[0]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--input", default="3x32x32", help="CxHxW")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)

    input_size = parse_input_size(args.input)
    names = args.models or sorted((n for n in list_models() if n != "timm"), key=natural_key)
    device = torch.device("cpu")
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, *input_size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch_size,), device=device)

    rows = []
    for name in names:
        model = create_model(name, num_classes=args.classes, in_chans=input_size[0], input_size=input_size)
        totals = summarize(model, input_size)["totals"]
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        # one step per window: the median over steps, measured like every other bench here
        rate = windows_img_per_s(train_steps(model, x, y, args.precision), device=device,
                                 warmup=args.warmup, window=1, windows=args.steps)["img_per_s"]
        rows.append([name, totals["params"], totals["macs"], rate])
        print(f"{name}: {rows[-1][3]:,.1f} img/s", file=sys.stderr, flush=True)

    header = (
        f"forward+backward, batch {args.batch_size} x {args.input}, "
        f"{args.precision + ' autocast' if args.precision != 'fp32' else 'fp32 (no autocast)'}, "
        f"{'channels_last' if args.channels_last else 'contiguous'}, median of {args.steps} steps "
        f"after {args.warmup} warm-up; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    table = markdown_table(["model", "params", "MACs", "img/s"], rows)
    text = f"{header}\n\n{table}\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return text


if __name__ == "__main__":
    main()
