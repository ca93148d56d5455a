"""Building data/<competition>/ beside the old one and swapping it in so a crash never loses both.

The new folder is built as `.NAME.building.<pid>.<random>` and then exchanged with NAME in one
atomic step (Linux renameat2 RENAME_EXCHANGE): at every instant NAME is the old complete folder
or the new one. Where the exchange is not available, the old folder is renamed to
`.NAME.old.<pid>` first and the new one renamed in; a run that finds NAME missing and such a
folder left behind puts it back. Scratch folders (`.NAME.work.<pid>.<random>`) carry their
owner's pid too, so the next run removes what killed runs left, and nothing of a live run
(leftovers named before pids were, which have no owner to ask, once untouched for an hour).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
KINDS = ("building", "work", "old")
LEGACY_IDLE_SECONDS = 3600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def scratch_dir(final: Path, kind: str) -> Path:
    """A new `.NAME.<kind>.<pid>.<random>` folder beside `final`, with the usual permissions."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{kind}.{os.getpid()}."))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result is an ordinary folder
    return tmp


def swap_in(tmp: Path, final: Path) -> None:
    """Make `tmp` the folder at `final`; the previous `final` (if any) ends up at `tmp` or vanishes."""
    if not final.exists():
        os.replace(tmp, final)
        return
    if exchange(tmp, final):
        return  # tmp now holds the old folder; the caller removes it
    old = final.with_name(f".{final.name}.old.{os.getpid()}")
    os.replace(final, old)
    os.replace(tmp, final)
    os.replace(old, tmp)


@contextlib.contextmanager
def building_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a folder beside `final`; on success it replaces `final`, on failure it vanishes."""
    final = Path(final)
    tmp = scratch_dir(final, "building")
    try:
        yield tmp
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _idle_seconds(path: Path) -> float:
    """Seconds since anything in the folder tree was last modified."""
    newest = path.stat().st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    return time.time() - newest


def recover(final: Path) -> list[Path]:
    """Put back a folder a killed non-atomic swap left renamed away; remove dead runs' leftovers.

    Returns the folders removed. Only leftovers whose owner process is gone are touched.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.({'|'.join(KINDS)})\.(\d+)(?:\..*)?$")
    # Before owners' pids were in the names: mkdtemp's 8 random characters only.
    legacy = re.compile(rf"^\.{re.escape(final.name)}\.(building|work)\.[A-Za-z0-9_]{{8}}$")
    removed = []
    for path in sorted(final.parent.iterdir()):
        m = pattern.match(path.name)
        if m is None and legacy.match(path.name) and _idle_seconds(path) > LEGACY_IDLE_SECONDS:
            shutil.rmtree(path, ignore_errors=True)  # no owner to ask: untouched for an hour is abandoned
            removed.append(path)
            continue
        if not m or _alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not final.exists():
            os.replace(path, final)  # killed between the two renames: the old folder is still whole
            log.warning("%s: restored from %s, left by a killed run", final, path.name)
            continue
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            raise PipelineError(f"{path}: cannot remove this leftover of a killed run; remove it by hand")
        removed.append(path)
    if removed:
        log.info("removed %d leftover folder(s) of killed runs: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed
