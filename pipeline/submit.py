"""`python -m pipeline submit [FILE]`: validate, upload to Kaggle, record it in the ledger.

Order of checks, cheapest first, so no daily submission is wasted: the file must pass `validate`
against the sample submission; then credentials (before kaggle is imported); then Kaggle's
GetSubmissionLimits must allow one more today; only then is the file uploaded. `--dry-run` stops
before Kaggle and, when the data folder holds a withheld answer key (the digits demo), prints the
file's local score against it.

Every attempt, dry or real, adds a row to the ledger (submissions/ledger.csv, rewritten
atomically): time, file and its sha256, competition, runs, val accuracy, message, status
(dry-run | submitted | complete | failed: reason), Kaggle's submission ref, public score when
known, local score for dry runs. `--wait` polls the submissions list until the score is ready
and then updates the row.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import click

from pipeline import kaggle_api
from pipeline.artifacts import atomic_write_text, git_sha, read_json, sha256_file
from pipeline.cli_config import resolve_flags, setting, stage_options
from pipeline.config import config_dict
from pipeline.errors import PipelineError
from pipeline.submission import (
    read_table, report, resolve_references, score_against_answers, sidecar_path, validate_predictions,
)

log = logging.getLogger(__name__)

LEDGER_FIELDS = ("time", "file", "file_sha256", "competition", "runs", "val_accuracy", "message",
                 "status", "ref", "public_score", "local_score")


@dataclass
class SubmitConfig:
    file: str = setting("submissions/predictions.csv", "The predictions CSV (the command's argument).")
    competition: Optional[str] = setting(None, "Kaggle competition slug (default: the one the data was downloaded "
                                               "from with --kaggle).")
    message: Optional[str] = setting(None, "Submission description (default: runs, val accuracy, git commit).",
                                     short="-m")
    data: Optional[str] = setting(None, "Prepared data folder (default: from FILE's ensemble manifest).")
    dry_run: bool = setting(False, "Validate and record in the ledger, but do not upload.")
    wait: bool = setting(False, "Poll until Kaggle has scored the submission.")
    wait_timeout: float = setting(900.0, "Seconds to wait for the score.")
    poll_interval: float = setting(15.0, "Seconds between polls.")
    ledger: str = setting("submissions/ledger.csv", "Ledger CSV of every submission.")
    allow_subset: bool = setting(False, "Upload even if the data was prepared with --limit (a partial test set).")


# ---- ledger ----------------------------------------------------------------------------------

def read_ledger(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        return list(LEDGER_FIELDS), []
    header, rows = read_table(path)
    fields = list(header or [])
    fields += [f for f in LEDGER_FIELDS if f not in fields]
    return fields, [dict(zip(header or [], values)) for _, values in rows if any(values)]


def write_ledger(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    atomic_write_text(path, out.getvalue())


def append_ledger(path: Path, row: dict[str, Any]) -> None:
    fields, rows = read_ledger(path)
    write_ledger(path, fields, rows + [row])


def update_ledger(path: Path, match: dict[str, Any], changes: dict[str, Any]) -> None:
    """Update the last row whose values equal `match`'s."""
    fields, rows = read_ledger(path)
    for row in reversed(rows):
        if all(row.get(k) == str(v) for k, v in match.items()):
            row.update({k: "" if v is None else str(v) for k, v in changes.items()})
            break
    write_ledger(path, fields, rows)


# ---- what is being submitted -----------------------------------------------------------------

@dataclass
class Provenance:
    data_root: str | None
    runs: list[str]
    val_accuracy: float | None


def provenance(file: Path, data: str | None) -> Provenance:
    """Runs, val accuracy and data folder from the ensemble manifest beside `file`, if it matches."""
    sidecar = sidecar_path(file)
    if not sidecar.is_file():
        return Provenance(data, [], None)
    info = read_json(sidecar)
    recorded = (info.get("predictions") or {}).get("sha256")
    root = data or (info.get("data") or {}).get("root")
    if recorded != sha256_file(file):
        log.warning("%s changed since %s was written; its runs and val accuracy are not used", file, sidecar)
        return Provenance(root, [], None)
    # A greedy blend's in-sample accuracy flatters it: report the cross-fitted (held-out) figure.
    honest = info.get("val_accuracy_crossfit")
    return Provenance(root, list(info.get("runs") or []), honest if honest is not None else info.get("val_accuracy"))


def kaggle_slug(meta: dict[str, Any] | None) -> str | None:
    """The competition the data was downloaded from; a local copy's name says nothing about Kaggle."""
    return ((meta or {}).get("source") or {}).get("kaggle")


def upload_blockers(cfg: SubmitConfig, slug: str | None, meta: dict[str, Any] | None, root: str) -> list[str]:
    """Why a real upload of this file must not happen (a dry run reports them and goes on)."""
    problems = []
    if not slug:
        where = ((meta or {}).get("source") or {}).get("location") or "a local source"
        problems.append(f"{root}/meta.json: the data came from {where}, not from Kaggle, so the competition is "
                        "unknown; pass --competition SLUG (make: SUBMIT_ARGS='--competition SLUG')")
    limit = (meta or {}).get("limit")
    if limit and not cfg.allow_subset:
        problems.append(f"{root}/meta.json: prepared with --limit {limit}, so the predictions cover only a subset "
                        "of the test set and Kaggle would score a partial file; rebuild the data without --limit "
                        "(make: LIMIT=) or pass --allow-subset")
    return problems


def default_message(prov: Provenance) -> str:
    parts = ["+".join(prov.runs) if prov.runs else "predictions"]
    if prov.val_accuracy is not None:
        parts.append(f"val acc {prov.val_accuracy:.4f}")
    sha = git_sha()
    if sha:
        parts.append(f"git {sha[:10]}")
    return " | ".join(parts)


# ---- submitting ------------------------------------------------------------------------------

def run_submit(cfg: SubmitConfig, echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    file, ledger = Path(cfg.file), Path(cfg.ledger)
    if not file.is_file():
        raise PipelineError(f"{file}: not found; run `python -m pipeline ensemble RUN...` first")
    row: dict[str, Any] = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "file": str(file), "file_sha256": sha256_file(file), "competition": cfg.competition,
    }
    try:
        prov = provenance(file, cfg.data)
        if prov.data_root is None:
            raise PipelineError(f"{file}: no ensemble manifest beside it ({sidecar_path(file).name}); pass --data DIR")
        sample, labels, meta = resolve_references(file, prov.data_root, None)
    except PipelineError as e:
        # Every try is a row, one that fails before its data folder is known included.
        append_ledger(ledger, {**row, "message": cfg.message, "status": f"failed: {e}"})
        raise
    slug = cfg.competition or kaggle_slug(meta)
    message = cfg.message or default_message(prov)
    row.update({
        "competition": slug, "runs": "+".join(prov.runs),
        "val_accuracy": f"{prov.val_accuracy:.6f}" if prov.val_accuracy is not None else "",
        "message": message,
    })

    try:
        problems = validate_predictions(file, sample, labels)
    except PipelineError as e:
        # An unreadable file (not UTF-8, a broken quote) is a try like any other: it gets its row.
        append_ledger(ledger, {**row, "status": f"failed: {e}"})
        raise
    if problems:
        echo(report(file, problems, len(sample.ids)))
        append_ledger(ledger, {**row, "status": f"failed: invalid file ({len(problems)} problems)"})
        raise PipelineError(f"{file}: not a valid submission ({len(problems)} problems above); nothing uploaded")

    blockers = upload_blockers(cfg, slug, meta, prov.data_root)
    if cfg.dry_run:
        return dry_run(file, ledger, row, blockers, Path(prov.data_root), meta, len(sample.ids), echo)
    if blockers:
        append_ledger(ledger, {**row, "status": "refused: " + blockers[0].split(": ", 1)[1].split(";")[0]})
        raise PipelineError(blockers[0] + "; nothing uploaded")

    try:
        limits = kaggle_api.submission_limits(slug)
        check_limits(slug, limits)
        result = kaggle_api.submit_file(file, slug, message)
    except PipelineError as e:
        append_ledger(ledger, {**row, "status": f"failed: {e}"})
        raise
    except KeyboardInterrupt:
        append_ledger(ledger, {**row, "status": "failed: interrupted (check kaggle.com before resubmitting)"})
        raise
    append_ledger(ledger, {**row, "status": "submitted", "ref": result.ref})
    echo(f"submitted {file} to '{slug}' (ref {result.ref}): {message}")
    echo(f"Kaggle: {result.message}; {max(limits.num_allowed_now - 1, 0)} submissions left today")
    row.update(status="submitted", ref=result.ref)
    if cfg.wait:
        row.update(wait_for_score(cfg, slug, result.ref, message, {"time": row["time"], "ref": result.ref}, echo))
    return row


def check_limits(slug: str, limits) -> None:
    if limits.num_allowed_now <= 0:
        cap = "lifetime cap" if limits.limited_by_total else "daily limit"
        raise PipelineError(f"'{slug}': submission {cap} reached ({limits.num_today} today, "
                            f"{limits.num_total} in all); nothing uploaded, try again after the reset")


def dry_run(file: Path, ledger: Path, row: dict[str, Any], blockers: list[str], data_root: Path, meta: dict,
            rows: int, echo: Callable[[str], None]) -> dict[str, Any]:
    """A valid file's rehearsal: its ledger row, what a real submit would refuse, its local score if any."""
    local = _local_score(file, data_root, meta)
    append_ledger(ledger, {**row, "status": "dry-run", "local_score": f"{local[0]:.6f}" if local else ""})
    echo(f"dry run: {file} is valid ({rows} rows, sha256 {row['file_sha256'][:12]}); "
         f"would submit to '{row['competition'] or '?'}' with message: {row['message']}")
    for problem in blockers:
        echo(f"a real submit would refuse: {problem}")
    if local:
        echo(f"local score against the withheld answers: {local[0]:.4f} ({local[1]} rows)")
    return {**row, "status": "dry-run", "local_score": local[0] if local else None}


def wait_for_score(cfg: SubmitConfig, slug: str, ref: int, message: str, ledger_row: dict[str, Any],
                   echo: Callable[[str], None]) -> dict[str, Any]:
    """Poll until the submission is scored (ledger: complete + public score) or errors, or time runs out."""
    ledger = Path(cfg.ledger)
    deadline = time.monotonic() + cfg.wait_timeout
    while True:
        try:
            found = kaggle_api.list_submissions(slug)
        except PipelineError as e:
            raise PipelineError(f"submitted (ref {ref}), but checking its score failed: {e}") from None
        mine = next((s for s in found if (s.ref == ref if ref else s.description == message)), None)
        if mine is not None and mine.status == "complete":
            update_ledger(ledger, ledger_row, {"status": "complete", "public_score": mine.public_score})
            echo(f"public score: {mine.public_score}")
            return {"status": "complete", "public_score": mine.public_score}
        if mine is not None and mine.status == "error":
            reason = mine.error or "no reason given"
            update_ledger(ledger, ledger_row, {"status": f"failed: scoring error: {reason}"})
            raise PipelineError(f"Kaggle could not score submission {ref}: {reason}")
        if time.monotonic() + cfg.poll_interval > deadline:
            echo(f"no score after {cfg.wait_timeout:g}s; the submission is in (ref {ref}), check it later "
                 f"on https://www.kaggle.com/competitions/{slug}/submissions")
            return {}
        time.sleep(cfg.poll_interval)


def _local_score(file: Path, root: Path, meta: dict[str, Any] | None) -> tuple[float, int] | None:
    answers = root / (meta or {}).get("withheld") if (meta or {}).get("withheld") else None
    if answers is None or not answers.is_file():
        return None
    return score_against_answers(file, answers)


@click.command("submit")
@stage_options(SubmitConfig, argument="file", required=False)
def command(config_file: str | None, **flags: Any) -> None:
    """Validate FILE (default submissions/predictions.csv) and submit it to Kaggle."""
    cfg = resolve_flags(SubmitConfig, config_file, flags)
    log.debug("submit config: %s", config_dict(cfg))
    run_submit(cfg)
