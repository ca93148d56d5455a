"""Getting inputs into raw/: downloads with checksums, copies of local files, and their digests."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline.artifacts import sha256_file
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def is_url(location: str) -> bool:
    return urlsplit(location).scheme in ("http", "https")


def url_filename(url: str) -> str:
    name = unquote(Path(urlsplit(url).path).name)
    if not name or name in (".", ".."):
        raise PipelineError(f"{url}: cannot tell a file name from this URL")
    return name


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, *, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Stream `url` to `dest` (via a .part file), logging progress; a wrong MD5 leaves nothing behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.md5()
    done, last_log = 0, time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            log.info("downloading %s (%s)", url, _mib(total) if total else "size unknown")
            while block := response.read(CHUNK):
                out.write(block)
                digest.update(block)
                done += len(block)
                if time.monotonic() - last_log > 5:
                    last_log = time.monotonic()
                    pct = f" ({100 * done / total:.0f}%)" if total else ""
                    log.info("%s: %s%s", dest.name, _mib(done), pct)
        if total and done != total:
            raise PipelineError(f"{dest.name}: download from {url} stopped at {done} of {total} bytes")
        if md5 and digest.hexdigest() != md5:
            raise PipelineError(
                f"{dest.name}: checksum mismatch (md5 {digest.hexdigest()}, expected {md5}) for {url}"
            )
        os.replace(part, dest)
    except urllib.error.HTTPError as e:
        raise PipelineError(f"{url}: download failed (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise PipelineError(f"{url}: download failed ({getattr(e, 'reason', e)})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    log.info("%s: %s, md5 %s", dest.name, _mib(done), digest.hexdigest())
    return dest


def fetch(location: str, raw_dir: Path, *, md5: str | None = None, reuse: Path | None = None) -> Path:
    """Put one input into `raw_dir` exactly as it comes: download a URL, copy a local file or folder.

    `reuse` is the previous run's raw/ folder: a download already there with the right MD5 is
    linked instead of fetched again (raw files are never modified, so sharing them is safe).
    """
    dest = raw_dir / (url_filename(location) if is_url(location) else Path(location).expanduser().resolve().name)
    if dest.exists():
        raise PipelineError(f"{location}: another input already has the name {dest.name}; rename one of them")
    if is_url(location):
        cached = reuse / dest.name if reuse else None
        if md5 and cached and cached.is_file() and md5_file(cached) == md5:
            log.info("%s: reusing the copy in %s (md5 matches)", dest.name, reuse)
            return _link_or_copy(cached, dest)
        return download(location, dest, md5=md5)
    src = Path(location).expanduser()
    if not src.exists():
        raise PipelineError(f"{location}: not found")
    try:
        if src.is_dir():
            copy_folder(src, dest, location)
        else:
            shutil.copy2(src, dest)
    except OSError as e:
        raise PipelineError(f"{location}: cannot copy it into raw/ ({e})") from None
    if dest.is_file() and md5 and md5_file(dest) != md5:
        raise PipelineError(f"{location}: checksum mismatch (md5 {md5_file(dest)}, expected {md5})")
    return dest


def copy_folder(src: Path, dest: Path, location: str) -> None:
    """Copy a folder, following links on purpose (a local folder is the user's own data, often
    symlinked in), but never into the folder being written: a source that holds the data root
    (`--source .` with the default data/), or links to it or to itself, would copy itself forever."""
    target = os.path.realpath(dest.parent)  # raw/, inside the folder being built under the data root
    root = dest.parent.parent.parent

    def copy(folder: str, into: Path, chain: tuple[str, ...]) -> None:
        real = os.path.realpath(folder)
        if real == target or target.startswith(real.rstrip(os.sep) + os.sep):
            where = "it" if folder == str(src) else f"{folder} inside it"
            raise PipelineError(
                f"{location}: {where} holds the data root {root}/, so copying it into "
                "raw/ would copy itself; pass the competition's own folder, or a --data-root outside it")
        if real in chain:
            raise PipelineError(f"{location}: {folder} links back to {real}, which is being copied; remove the link")
        into.mkdir()
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir():  # follows links
                    copy(entry.path, into / entry.name, (*chain, real))
                else:
                    shutil.copy2(entry.path, into / entry.name)

    copy(str(src), dest, ())


def raw_entry(path: Path, root: Path) -> dict[str, Any]:
    """sha256 of a raw input; a folder gets one digest over its sorted `sha256  path` lines."""
    name = path.relative_to(root).as_posix()
    if path.is_file():
        return {"path": name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    lines, size, count = [], 0, 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        lines.append(f"{sha256_file(file)}  {file.relative_to(path).as_posix()}\n")
        size += file.stat().st_size
        count += 1
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()
    return {"path": name + "/", "sha256": digest, "bytes": size, "files": count}


def _link_or_copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
    return dest


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
