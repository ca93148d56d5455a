"""Files between stages: atomic writes, sha256s and the manifest every stage leaves behind."""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.errors import PipelineError
from pipeline.run_layout import MANIFEST  # every stage's, a run folder's included


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def between_markers(text: str, start: str, end: str, block: str, where: str) -> str:
    """`text` with what lies between the marker lines `start` and `end` set to `block` (generated
    sections of a README: the lab tables, the leaderboard, the device check)."""
    if start not in text or end not in text:
        raise PipelineError(f"{where}: no {start} ... {end} markers to put the block between")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{block}{end}{rest.split(end, 1)[1]}"


def write_between_markers(path: str | os.PathLike, start: str, end: str, block: str) -> Path:
    """between_markers on the file at `path`, written atomically."""
    if not Path(path).is_file():
        raise PipelineError(f"{path}: no such file to write the block in")
    text = Path(path).read_text(encoding="utf-8")
    return atomic_write_text(path, between_markers(text, start, end, block, str(path)))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """np.load that never unpickles and names the file when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise PipelineError(f"{path}: not a readable .npy array ({e})") from None


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: not valid JSON ({e})") from None


@contextlib.contextmanager
def building_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final`, on failure it vanishes.

    Whatever was at `final` before stays intact until the new folder is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.building."))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result is an ordinary folder
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "timm"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[pkg] = md.version(pkg)
    return found


def file_entry(path: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, Any]:
    path = Path(path)
    name = str(path.relative_to(root)) if root else str(path)
    return {"path": name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(
    folder: str | os.PathLike,
    stage: str,
    *,
    inputs: list[str | os.PathLike | dict[str, Any]] = (),
    outputs: list[str | os.PathLike | dict[str, Any]] = (),
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    started: float | None = None,
    seed: int | None = None,
    name: str = MANIFEST,
    extra: dict[str, Any] | None = None,
) -> Path:
    """What made these files, from which inputs (with sha256s), how, and how long it took.

    An input/output may be a path or an entry already made by file_entry (saves hashing twice).
    """
    folder = Path(folder)
    manifest = {
        "stage": stage,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "host": platform.node(),
        "versions": versions(),
        "seed": seed,
        "config": config or {},
        "inputs": [p if isinstance(p, dict) else file_entry(p) for p in inputs],
        "outputs": [
            p if isinstance(p, dict) else file_entry(folder / p if not Path(p).is_absolute() else p, None)
            for p in outputs
        ],
        "metrics": metrics or {},
        "wall_seconds": round(time.time() - started, 3) if started else None,
    }
    if extra:
        manifest.update(extra)
    return atomic_write_json(folder / name, manifest)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
