"""`make bench-step`: what the per-step bookkeeping around the maths costs, item by item.

ResNet-20 (batch 128 gradients in place, no forward/backward): the optimizer step for-loop vs
foreach vs fused, the EMA update rebuilding both state_dicts every step vs tensor lists built
once, autocast resolved every step vs once per run. Each figure is the median of several timed
repeats in microseconds per step, printed beside a full training step's time, so the share is
plain. These costs are too small for `make bench`'s windows to resolve (its spread is a few %),
hence this separate, direct timing.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from bench.machine import machine_summary
from pipeline.models import create_model
from pipeline.runtime import autocast, autocast_factory
from pipeline.train.ema import ModelEma


def per_call_us(fn, calls: int, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def ema_rebuilt_every_step(ema_module, model, decay=0.999):
    """The old update: both state_dicts walked every step."""
    with torch.no_grad():
        model_state = model.state_dict()
        for key, value in ema_module.state_dict().items():
            if value.is_floating_point():
                value.lerp_(model_state[key], 1 - decay)
            else:
                value.copy_(model_state[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    device = torch.device("cpu")
    model = create_model("resnet20", num_classes=10, in_chans=3, input_size=(3, 32, 32))
    model.to(memory_format=torch.channels_last)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)

    def full_step():
        with autocast(device, "bf16"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_us = per_call_us(full_step, 5, repeats=3)
    print(f"{machine_summary()['label']}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"ResNet-20 training step, batch 128, bf16 channels_last: {step_us / 1000:.1f} ms")
    rows = []
    for name, make in [
        ("SGD for-loop", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=False)),
        ("SGD foreach (engine)", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True)),
        ("SGD fused", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True)),
        ("AdamW for-loop", lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=False)),
        ("AdamW foreach", lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True)),
        ("AdamW fused", lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True)),
    ]:
        twin = copy.deepcopy(model)
        for p in twin.parameters():
            p.grad = torch.randn_like(p)
        try:
            o = make(list(twin.parameters()))
            rows.append((f"optimizer step: {name}", per_call_us(o.step, args.calls)))
        except (RuntimeError, ValueError) as e:
            rows.append((f"optimizer step: {name} (unavailable: {str(e).splitlines()[0][:60]})", float("nan")))
    ema = ModelEma(model, 0.999)
    rows.append(("EMA: both state_dicts every step (before)",
                 per_call_us(lambda: ema_rebuilt_every_step(ema.module, model), args.calls)))
    rows.append(("EMA: tensor lists built once (engine)", per_call_us(lambda: ema.update(model, 10_000), args.calls)))

    def resolve_each_step():
        with autocast(device, "bf16"):
            pass

    once = autocast_factory(device, "bf16")

    def resolved_once():
        with once():
            pass

    rows.append(("autocast resolved every step (before)", per_call_us(resolve_each_step, 2000)))
    rows.append(("autocast resolved once per run (engine)", per_call_us(resolved_once, 2000)))
    for name, us in rows:
        print(f"  {name:<58} {us:>9.1f} us  ({us / step_us * 100:.2f}% of a step)")


if __name__ == "__main__":
    main()
