"""predictions.csv: written in the sample submission's exact form, and validated against it.

A valid file has the sample's header, its ids (compared as strings, exactly) in its row order,
one label per row in the competition's label form (class names, or class indices as integers,
per meta.json submission.label_form) and no empty values. Files are read with the csv module;
a UTF-8 BOM and CRLF line ends are accepted, as Kaggle accepts them.

`python -m pipeline validate FILE [--data DIR] [--sample PATH]` prints every problem as
`FILE:LINE: message` and exits 1, or prints `OK: N rows` and exits 0.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import click
import numpy as np

from pipeline.artifacts import atomic_write_text, read_json
from pipeline.cli_config import resolve_flags, setting, stage_options
from pipeline.errors import PipelineError

MAX_PRINTED = 50  # problems printed in full; a broken 300k-row file should not flood the terminal


@dataclass(frozen=True)
class Problem:
    line: int | None  # 1-based line in the checked file (the header is line 1); None: the whole file
    message: str

    def format(self, path: str | os.PathLike) -> str:
        return f"{path}:{self.line}: {self.message}" if self.line else f"{path}: {self.message}"


@dataclass(frozen=True)
class SampleSubmission:
    path: Path
    header: list[str]
    ids: list[str]
    lines: list[int]  # line of each id in the sample file

    @property
    def id_column(self) -> str:
        return self.header[0]


def sidecar_path(csv_path: str | os.PathLike) -> Path:
    """The ensemble manifest written beside a predictions file: <stem>.ensemble.json."""
    csv_path = Path(csv_path)
    return csv_path.with_name(f"{csv_path.stem}.ensemble.json")


# ---- reading ---------------------------------------------------------------------------------

def read_table(path: str | os.PathLike) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header or None if the file is empty, [(line, fields)] of the data rows)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path}: not UTF-8 text (byte {e.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    header = None
    try:
        for fields in reader:
            if header is None:
                header = fields
            else:
                rows.append((reader.line_num, fields))
    except csv.Error as e:
        raise PipelineError(f"{path}:{reader.line_num}: unreadable CSV ({e})") from None
    return header, rows


def read_sample(path: str | os.PathLike) -> SampleSubmission:
    path = Path(path)
    header, rows = read_table(path)
    if not header or len(header) != 2:
        raise PipelineError(f"{path}: a sample submission needs a header of two columns (id, label)")
    ids = [fields[0] for _, fields in rows if fields]
    if len(set(ids)) != len(ids):
        raise PipelineError(f"{path}: the sample submission repeats ids")
    return SampleSubmission(path, header, ids, [line for line, fields in rows if fields])


def check_meta(meta: Any, where: str = "meta.json") -> None:
    """The fields a submission check reads, with their types: a hand-edited meta.json gets one line, not a TypeError."""
    fix = "rebuild it with `python -m pipeline data` or restore the field"
    if not isinstance(meta, dict):
        raise PipelineError(f"{where}: expected a JSON object, got {type(meta).__name__}; {fix}")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, (str, int)) for c in classes):
        raise PipelineError(f"{where}: 'classes' is {json.dumps(classes)[:60]}, expected a list of class names; {fix}")
    submission = meta.get("submission", {})
    if not isinstance(submission, dict):
        raise PipelineError(f"{where}: 'submission' is {json.dumps(submission)[:60]}, expected an object; {fix}")
    for key in ("file", "label_form"):
        if key in submission and not isinstance(submission[key], str):
            raise PipelineError(f"{where}: 'submission.{key}' is {json.dumps(submission[key])[:60]}, expected a "
                                f"string; {fix}")


def label_names(meta: dict[str, Any]) -> list[str]:
    """The strings a submission may use as labels, indexed by class."""
    check_meta(meta)
    form = meta.get("submission", {}).get("label_form", "name")
    classes = list(meta["classes"])
    if form == "name":
        return [str(c) for c in classes]
    if form == "index":
        return [str(i) for i in range(len(classes))]
    raise PipelineError(f"meta.json: unknown submission.label_form '{form}' (expected name or index)")


# ---- writing ---------------------------------------------------------------------------------

def write_predictions(
    path: str | os.PathLike,
    sample: SampleSubmission,
    test_ids: Sequence[Any],
    class_indices: np.ndarray,
    meta: dict[str, Any],
) -> Path:
    """Write one label per sample id, in the sample's order and header; atomic."""
    names = label_names(meta)
    class_indices = np.asarray(class_indices)
    ids = [str(i) for i in test_ids]
    if len(ids) != len(class_indices):
        raise PipelineError(f"{len(ids)} test ids but {len(class_indices)} predictions")
    if class_indices.size and (class_indices.min() < 0 or class_indices.max() >= len(names)):
        raise PipelineError(f"predicted class outside 0..{len(names) - 1}")
    predicted = dict(zip(ids, class_indices.tolist()))
    if len(predicted) != len(ids):
        raise PipelineError("the test ids repeat; the prepared data is broken (rerun the data stage)")
    if set(predicted) != set(sample.ids):
        missing = [i for i in sample.ids if i not in predicted]
        extra = [i for i in ids if i not in set(sample.ids)]
        raise PipelineError(
            f"{sample.path}: the test ids do not match the sample submission "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(extra)} extra, e.g. {extra[:3]})"
        )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(sample.header)
    writer.writerows((i, names[predicted[i]]) for i in sample.ids)
    return atomic_write_text(path, out.getvalue())


# ---- validating ------------------------------------------------------------------------------

def validate_predictions(
    path: str | os.PathLike, sample: SampleSubmission, labels: Sequence[str] | None
) -> list[Problem]:
    """Every way `path` differs from what the sample submission asks for (empty list: valid).

    labels: the allowed label strings, or None to skip the label check (no meta.json at hand).
    """
    header, rows = read_table(path)
    if header is None:
        return [Problem(1, "the file is empty (no header)")]
    problems: list[Problem] = []
    if header != sample.header:
        problems.append(Problem(1, f"header is {','.join(header)!r}; expected {','.join(sample.header)!r}"))
    sample_line = dict(zip(sample.ids, sample.lines))
    allowed = set(labels) if labels is not None else None
    seen: dict[str, int] = {}
    order: list[tuple[int, str]] = []
    irregular = False  # duplicates, extra ids or broken rows: the order check would mislead
    for line, fields in rows:
        if not any(fields):
            problems.append(Problem(line, "empty row"))
            irregular = True
            continue
        if len(fields) != len(sample.header):
            problems.append(Problem(line, f"{len(fields)} fields; expected {len(sample.header)}"))
            irregular = True
            continue
        row_id, label = fields[0], fields[1]
        if row_id == "":
            problems.append(Problem(line, "empty id"))
            irregular = True
        elif row_id in seen:
            problems.append(Problem(line, f"duplicate id {row_id!r} (first on line {seen[row_id]})"))
            irregular = True
        elif row_id not in sample_line:
            problems.append(Problem(line, f"id {row_id!r} is not in the sample submission"))
            irregular = True
        else:
            seen[row_id] = line
            order.append((line, row_id))
        if label == "":
            problems.append(Problem(line, "empty label"))
        elif allowed is not None and label not in allowed:
            problems.append(Problem(line, f"unknown label {label!r}; expected one of {_preview(labels)}"))
    missing = [i for i in sample.ids if i not in seen]
    for row_id in missing:
        problems.append(Problem(None, f"missing id {row_id!r} (sample line {sample_line[row_id]})"))
    data_rows = sum(1 for _, fields in rows if any(fields))
    if data_rows != len(sample.ids):
        problems.append(Problem(None, f"{data_rows} rows; the sample submission has {len(sample.ids)}"))
    if not irregular and not missing:
        misplaced = [(line, got, want) for (line, got), want in zip(order, sample.ids) if got != want]
        if misplaced:
            line, got, want = misplaced[0]
            problems.append(Problem(
                line, f"wrong order: id {got!r} where the sample submission has {want!r} "
                      f"({len(misplaced)} rows out of place)"))
    return problems


def _preview(labels: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > limit else "")


def score_against_answers(path: str | os.PathLike, answers: str | os.PathLike) -> tuple[float, int]:
    """(label accuracy, rows scored) of a valid predictions file against an id,label answer key."""
    _, answer_rows = read_table(answers)
    truth = {fields[0]: fields[1] for _, fields in answer_rows if len(fields) >= 2}
    _, rows = read_table(path)
    predicted = {fields[0]: fields[1] for _, fields in rows if len(fields) >= 2}
    scored = [row_id for row_id in truth if row_id in predicted]
    if not scored:
        raise PipelineError(f"{answers}: no id in common with {path}")
    correct = sum(predicted[i] == truth[i] for i in scored)
    return correct / len(scored), len(scored)


# ---- finding the sample and labels for a file ------------------------------------------------

def resolve_references(
    file: str | os.PathLike, data: str | os.PathLike | None, sample: str | os.PathLike | None
) -> tuple[SampleSubmission, list[str] | None, dict[str, Any] | None]:
    """(sample submission, allowed labels or None, meta or None) for checking `file`.

    The data folder comes from --data, else from the ensemble manifest beside the file.
    """
    if data is None and sidecar_path(file).is_file():
        data = read_json(sidecar_path(file)).get("data", {}).get("root")
    meta = None
    if data is not None:
        meta_path = Path(data) / "meta.json"
        meta = read_json(meta_path)
        check_meta(meta, str(meta_path))
        if sample is None:
            sample = Path(data) / meta.get("submission", {}).get("file", "sample_submission.csv")
    if sample is None:
        raise PipelineError(f"{file}: no sample submission to check against; pass --data DIR or --sample PATH")
    return read_sample(sample), (label_names(meta) if meta else None), meta


def report(file: str | os.PathLike, problems: list[Problem], rows: int) -> str:
    if not problems:
        return f"OK: {rows} rows"
    lines = [p.format(file) for p in problems[:MAX_PRINTED]]
    if len(problems) > MAX_PRINTED:
        lines.append(f"... and {len(problems) - MAX_PRINTED} more problems")
    lines.append(f"INVALID: {len(problems)} problem{'s' if len(problems) != 1 else ''} in {file}")
    return "\n".join(lines)


@dataclass
class ValidateConfig:
    file: str = setting("", "The predictions CSV (the command's argument).", required=True)
    data: Optional[str] = setting(None, "Prepared data folder (meta.json + sample submission); default: from "
                                        "FILE's ensemble manifest.")
    sample: Optional[str] = setting(None, "The competition's sample submission (default: the data folder's).",
                                    metavar="FILE")


@click.command("validate")
@stage_options(ValidateConfig, argument="file", required=False)
def validate_command(config_file: str | None, **flags: Any) -> None:
    """Check a predictions CSV against the competition's sample submission."""
    cfg = resolve_flags(ValidateConfig, config_file, flags)
    file = Path(cfg.file)
    sample_sub, labels, _ = resolve_references(file, cfg.data and Path(cfg.data), cfg.sample and Path(cfg.sample))
    problems = validate_predictions(file, sample_sub, labels)
    click.echo(report(file, problems, len(sample_sub.ids)))
    if labels is None:
        click.echo("note: labels not checked (no meta.json; pass --data)", err=True)
    if problems:
        # SystemExit, not ctx.exit: cli.main runs click with standalone_mode=False, which turns
        # ctx.exit(1) into a return value and the process would exit 0.
        raise SystemExit(1)
