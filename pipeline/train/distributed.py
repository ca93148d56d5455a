"""DDP under torchrun: read RANK/WORLD_SIZE/LOCAL_RANK, pick NCCL (GPU) or gloo (CPU), small collectives.

Without those variables everything here is a no-op for a single process, so the engine has one
code path for 1 or N processes.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeline.errors import PipelineError
from pipeline.runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise PipelineError("WORLD_SIZE/RANK/LOCAL_RANK must be integers (set by torchrun)") from None
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def setup(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (if any) and return this process's device."""
    info = env_info()
    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
        log.info("rank %d/%d joined the %s process group on %s", info.rank, info.world_size, backend, device)
    return info, device


def cleanup() -> None:
    """Leave the group in step, then let gloo's worker threads drop their last work before exit.

    A gloo worker frees a finished collective's tensors under the GIL; if the interpreter is
    already finalizing by then, the process aborts ("terminate called without an active
    exception"; ~1 exit in 10 on 2 CPU cores). The sleep releases the GIL so they take it first.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        time.sleep(0.05)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all processes (identity without a process group)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s value on every process, so all ranks take the same decisions (best, stop)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BN running stats) to all ranks so every rank evaluates one model."""
    if not dist.is_initialized():
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=src)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
