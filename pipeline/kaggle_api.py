"""The only module that talks to Kaggle: download a competition, submit, list submissions, limits.

`import kaggle` authenticates at import time and calls exit(1) when no credentials exist, so
kaggle is imported lazily, and only after `check_credentials` has found some. Every client
failure becomes a one-line PipelineError that says what to do; the API key never appears in
one (messages are redacted). Checked against kaggle 2.2.4 / kagglesdk 0.1.37.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

# What kaggle's competition_submit returns (instead of raising) when the file upload failed.
UPLOAD_FAILED_MESSAGE = "Could not submit to competition"
TOKEN_URL = "https://www.kaggle.com/settings (API -> Create New Token)"


@dataclass(frozen=True)
class Limits:
    num_today: int
    num_total: int
    num_allowed_now: int
    limited_by_total: bool


@dataclass(frozen=True)
class SubmitResult:
    ref: int
    message: str


@dataclass(frozen=True)
class SubmissionInfo:
    ref: int
    date: str
    file_name: str
    description: str
    status: str  # "pending" | "complete" | "error"
    public_score: str | None
    error: str | None


# ---- credentials -------------------------------------------------------------------------

def kaggle_config_dir() -> Path:
    """Where the kaggle client looks for kaggle.json, resolved from the environment *now*.

    (KaggleApi computes this once, at import; tests and long-lived processes may change it.)
    """
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured)
    legacy = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(xdg) / "kaggle"
    return legacy


def _kaggle_json() -> dict[str, Any]:
    path = kaggle_config_dir() / "kaggle.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PipelineError(f"{path}: not valid JSON; download a fresh one from {TOKEN_URL}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected {{\"username\": ..., \"key\": ...}}")
    if os.name != "nt" and path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; chmod 600 it", path)
    return data


def _secrets() -> list[str]:
    found = [os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_API_TOKEN")]
    with contextlib.suppress(PipelineError):
        found.append(_kaggle_json().get("key"))
    return [s for s in found if isinstance(s, str) and len(s) >= 4]


def redact(text: str) -> str:
    """`text` with every known credential replaced by ***."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def check_credentials() -> str:
    """How the client will authenticate; PipelineError (before kaggle is imported) if it cannot.

    Same sources as the client: KAGGLE_USERNAME/KAGGLE_KEY (environment over kaggle.json), an
    access token (KAGGLE_API_TOKEN or ~/.kaggle/access_token) or OAuth credentials from
    `kaggle auth login` (~/.kaggle/credentials.json).
    """
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    home_kaggle = Path.home() / ".kaggle"
    for name in ("access_token", "access_token.txt", "credentials.json"):
        if (home_kaggle / name).is_file():
            return str(home_kaggle / name)
    file_values = _kaggle_json()
    username = os.environ.get("KAGGLE_USERNAME") or file_values.get("username")
    key = os.environ.get("KAGGLE_KEY") or file_values.get("key")
    if username and key:
        return "KAGGLE_USERNAME/KAGGLE_KEY" if "KAGGLE_KEY" in os.environ else "kaggle.json"
    missing = "credentials"
    if username or key:
        missing = "KAGGLE_KEY" if username else "KAGGLE_USERNAME"
    raise PipelineError(
        f"no Kaggle {missing}: set KAGGLE_USERNAME and KAGGLE_KEY, or save the kaggle.json from "
        f"{TOKEN_URL} as {kaggle_json_where()} (chmod 600), or put an API token in KAGGLE_API_TOKEN "
        f"or {home_kaggle / 'access_token'}"
    )


def kaggle_json_where() -> str:
    """Where kaggle.json goes, phrased as the client resolves it (kaggle 2.2.4, KaggleApi._load_config):
    $KAGGLE_CONFIG_DIR if set, else ~/.kaggle, except on Linux while ~/.kaggle does not exist:
    then $XDG_CONFIG_HOME/kaggle (default ~/.config/kaggle)."""
    path = kaggle_config_dir() / "kaggle.json"
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return f"{path} ($KAGGLE_CONFIG_DIR)"
    legacy = Path.home() / ".kaggle"
    if path.parent != legacy:
        return f"{path} (or {legacy / 'kaggle.json'}: the client reads ~/.config/kaggle only while ~/.kaggle does not exist)"
    return str(path)


# ---- the client ----------------------------------------------------------------------------

@contextlib.contextmanager
def _client(slug: str) -> Iterator[Any]:
    """An authenticated KaggleApi; its printed chatter goes to the debug log, its errors become
    PipelineErrors about `slug`."""
    check_credentials()
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            try:
                from kaggle.api.kaggle_api_extended import KaggleApi
            except ImportError:
                raise PipelineError("the kaggle package is not installed; pip install -r requirements.txt") from None
            api = KaggleApi()
            api.config_dir = str(kaggle_config_dir())
            api.config = os.path.join(api.config_dir, "kaggle.json")
            try:
                api.authenticate()
            except SystemExit:
                raise PipelineError(
                    f"Kaggle authentication failed; check KAGGLE_USERNAME/KAGGLE_KEY or {api.config}"
                ) from None
            yield api
    except PipelineError as e:
        raise PipelineError(redact(str(e))) from None
    except Exception as e:
        raise PipelineError(explain(e, slug)) from None
    finally:
        if chatter.getvalue().strip():
            log.debug("kaggle client output: %s", redact(chatter.getvalue().strip()))


# What an HTTP status from Kaggle means for the user; {slug} and {detail} (the server's message) filled in.
HTTP_ADVICE = {
    401: "Kaggle rejected the credentials (401 Unauthorized); check KAGGLE_USERNAME/KAGGLE_KEY or make a "
         f"new token at {TOKEN_URL}",
    403: "Kaggle refused access to competition '{slug}' (403: {detail}); accept its rules at "
         "https://www.kaggle.com/competitions/{slug}/rules (the API cannot) and check the slug",
    404: "competition '{slug}' not found on Kaggle (404); check the slug in its URL",
    429: "Kaggle says too many requests (429: {detail}); wait and try again later",
}


def explain(error: BaseException, slug: str) -> str:
    """One line saying what a kaggle client exception means and what to do about it."""
    import requests

    detail = redact(" ".join(str(error).split()))
    if isinstance(error, requests.HTTPError):
        status = error.response.status_code if error.response is not None else None
        advice = HTTP_ADVICE.get(status, "Kaggle API error for '{slug}' ({status}: {detail})")
        return advice.format(slug=slug, detail=detail, status=status)
    if isinstance(error, (requests.RequestException, ConnectionError, TimeoutError)):
        return f"network failure talking to Kaggle ({type(error).__name__}: {detail}); check the connection"
    return f"Kaggle client failed for '{slug}' ({type(error).__name__}: {detail})"


# ---- operations ----------------------------------------------------------------------------

def submission_limits(slug: str) -> Limits:
    with _client(slug) as api:
        limits = api.competition_get_submission_limits(slug)
    return Limits(int(limits.num_today or 0), int(limits.num_total or 0),
                  int(limits.num_allowed_now or 0), bool(limits.limited_by_total))


def submit_file(path: str | os.PathLike, slug: str, message: str) -> SubmitResult:
    """Upload `path` to competition `slug`; PipelineError unless Kaggle accepted it."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    chatter = io.StringIO()
    with _client(slug) as api, contextlib.redirect_stdout(chatter):
        response = api.competition_submit(str(path), message, slug, quiet=True)
    if response is None or response.message == UPLOAD_FAILED_MESSAGE:
        # The client prints the reason instead of raising it; keep its last line.
        printed = [line for line in redact(chatter.getvalue()).splitlines() if line.strip()]
        reason = printed[-1].strip() if printed else "no reason given"
        reason = re.sub(r"\?[^\s)'\"]+", "?...", reason)  # upload URLs carry signed query strings
        raise PipelineError(f"upload of {path.name} to '{slug}' failed ({reason}); nothing was submitted")
    return SubmitResult(ref=int(response.ref or 0), message=redact(response.message or ""))


def list_submissions(slug: str) -> list[SubmissionInfo]:
    """The team's submissions to `slug`, newest first."""
    with _client(slug) as api:
        found = api.competition_submissions(slug) or []
    return [
        SubmissionInfo(
            ref=int(s.ref or 0),
            date=s.date.isoformat() if s.date else "",
            file_name=s.file_name or "",
            description=s.description or "",
            status=s.status.name.lower() if s.status is not None else "pending",
            public_score=s.public_score or None,
            error=s.error_description or None,
        )
        for s in found
        if s is not None
    ]


def download_competition(slug: str, dest: str | os.PathLike) -> list[Path]:
    """Download competition `slug`'s files (one zip, kept as fetched) into `dest`; return their paths.

    The download lands in a temp folder first, so a broken transfer leaves `dest` untouched.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download.") as tmp:
        with _client(slug) as api:
            api.competition_download_files(slug, path=tmp, force=True, quiet=True)
        fetched = sorted(p for p in Path(tmp).iterdir() if p.is_file() and not p.name.startswith("."))
        if not fetched:
            raise PipelineError(f"Kaggle sent no files for competition '{slug}'")
        paths = []
        for path in fetched:
            if path.suffix == ".zip" and not zipfile.is_zipfile(path):
                raise PipelineError(f"the download of '{slug}' ({path.name}) is not a valid zip archive")
            final = dest / path.name
            shutil.move(str(path), final)
            paths.append(final)
    log.info("downloaded %s into %s", ", ".join(p.name for p in paths), dest)
    return paths
