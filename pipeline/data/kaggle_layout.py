"""Kaggle-style competition files: `train/<id>.<ext>` + a labels CSV (or `train/<class>/*`),
`test/<id>.<ext>` and a sample submission CSV, from a folder or zip.

File names are matched without regard to case or underscores (trainLabels.csv, train_labels.csv,
train.csv, labels.csv; sampleSubmission.csv, sample_submission.csv); id and label columns are
found from the header. Test ids and their order come from the sample submission when there is
one, and its bytes are kept as they are.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import re
from array import array
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterator

import numpy as np

from pipeline.data.archives import FileTree
from pipeline.data.images import decode_images, is_image_name
from pipeline.data.ingested import ImageSet, Ingested, SubmissionFormat
from pipeline.data.limits import BoundedReader
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

LABEL_CSVS = ("trainlabels.csv", "train.csv", "labels.csv")
SAMPLE_CSVS = ("samplesubmission.csv",)
ID_COLUMNS = ("id", "imageid", "image", "filename", "file", "fname", "name", "img")
LABEL_COLUMNS = ("label", "labels", "class", "classname", "category", "target", "y")
# Up to 9 digits: a longer "number" is a name (and int() of a huge one is slow or refused).
_INT = re.compile(r"[+-]?\d{1,9}")


def _canonical(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def find_top_file(tree: FileTree, candidates: tuple[str, ...]) -> str | None:
    """The top-level file whose canonical name comes first in `candidates`."""
    top = {_canonical(n): n for n in tree.names() if "/" not in n}
    return next((top[c] for c in candidates if c in top), None)


def natural_key(text: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


# A labels or sample submission line is an id and a label: a much longer line is not such a file,
# and would be held whole by the csv module. Ids name files, which cannot be longer than 255.
MAX_LINE = 1 << 16
MAX_ID = 255


def csv_records(tree: FileTree, name: str) -> Iterator[tuple[int, list[str]]]:
    """(line, stripped fields) of each non-blank record of a CSV, the header first, streamed.

    The size is held to the CSV limit before and while it is read; a record that spans lines (a
    quote left open) is an error naming the line where it starts.
    """
    where = tree.where(name)
    tree.limits.check_csv(where, tree.size(name))
    # The header's size can lie (or a folder file can grow): count what actually comes out too.
    raw = BoundedReader(tree.open(name), where, tree.limits.check_csv)
    text = io.TextIOWrapper(io.BufferedReader(raw, 1 << 16), encoding="utf-8-sig", newline="")
    reader = csv.reader(_lines(text, where), strict=True)
    start = 1
    try:
        for fields in reader:
            if reader.line_num > start:
                raise PipelineError(f"{where}: line {start}: a quoted field runs on to line {reader.line_num}; "
                                    "close the quote on its own line")
            if any(f.strip() for f in fields):
                yield start, [f.strip() for f in fields]
            start = reader.line_num + 1
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise PipelineError(f"{where}: line {start}: unterminated quote (its field runs to the end of the "
                                "file); close or remove the quote") from None
        raise PipelineError(f"{where}: line {start}: {e}") from None
    finally:
        text.close()


def _lines(text: io.TextIOWrapper, where: str) -> Iterator[str]:
    number = 0
    while True:
        try:
            line = text.readline(MAX_LINE + 1)
        except UnicodeDecodeError as e:
            raise PipelineError(f"{where}: not UTF-8 text (after line {number}: {e.reason}); save it as UTF-8") \
                from None
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE:
            raise PipelineError(f"{where}: line {number} is over {MAX_LINE:,} characters; not a CSV of ids and labels")
        yield line


def id_and_label_columns(where: str, header: list[str]) -> tuple[int, int]:
    names = [_canonical(h) for h in header]
    if len(names) < 2:
        raise PipelineError(f"{where}: needs an id and a label column, header is {header}")
    id_col = next((names.index(c) for c in ID_COLUMNS if c in names), 0)
    rest = [i for i in range(len(names)) if i != id_col]
    label_col = next((names.index(c) for c in LABEL_COLUMNS if c in names and names.index(c) != id_col), rest[0])
    return id_col, label_col


@dataclass
class LabelRows:
    """A labels or sample submission CSV, each row resolved to the image it names as it is read.

    Memory is a few small objects per row (its id, its image's name, its line, a label code), and
    rows never outnumber images: one image is never two rows.
    """

    where: str
    header: list[str]
    ids: list[str]
    paths: list[str]  # the image file of each row
    lines: array  # line number of each row, for error messages
    codes: array  # label of each row, as an index into `values`
    values: list[str]  # the distinct labels, in order of first appearance

    def first_line(self, value: str) -> int:
        return self.lines[self.codes.index(self.values.index(value))]

    def lines_of(self, value: str) -> list[int]:
        code = self.values.index(value)
        return [line for line, c in zip(self.lines, self.codes) if c == code]


def read_rows(tree: FileTree, name: str, files: dict[str, str], folder: str, columns: int | None = None) -> LabelRows:
    """Stream a CSV of ids (and labels), resolving each id to an image of `files` (id -> name)."""
    where = tree.where(name)
    records = csv_records(tree, name)
    with contextlib.closing(records):
        first = next(records, None)
        if first is None:
            raise PipelineError(f"{where}: no rows")
        header = first[1]
        if columns is not None and len(header) != columns:
            raise PipelineError(f"{where}: expected {columns} columns (id, label), got {len(header)}: {header}")
        id_col, label_col = id_and_label_columns(where, header)
        rows = LabelRows(where, header, [], [], array("l"), array("l"), [])
        code_of: dict[str, int] = {}
        claimed: dict[str, int] = {}  # image name -> the row that named it
        missing, examples, count, stopped = 0, [], 0, 0
        for line, fields in records:
            if len(fields) != len(header):
                raise PipelineError(f"{where}: line {line} has {len(fields)} fields, the header has {len(header)}")
            count += 1
            ident = _check_id(where, line, fields[id_col])
            path = _lookup(files, ident)
            if path is None:
                missing += 1
                if len(examples) < 4:
                    examples.append(f"'{ident}' (line {line})")
                if count > len(files):
                    # More rows than images: it cannot be right, and reading on would only cost time.
                    if next(records, None) is not None:
                        stopped = line
                    break
                continue
            _check_unclaimed(rows, claimed.get(path), ident, line, path)
            claimed[path] = len(rows.ids)
            label = fields[label_col]
            code = code_of.get(label)
            if code is None:
                code = code_of[label] = len(rows.values)
                rows.values.append(label)
            rows.ids.append(ident)
            rows.paths.append(path)
            rows.lines.append(line)
            rows.codes.append(code)
    if stopped:
        raise PipelineError(f"{where}: more rows than the {len(files):,} images in {folder}/ (stopped reading at line "
                            f"{stopped}); ids with no image: {_examples(examples)}")
    if missing:
        raise PipelineError(f"{where}: {missing:,} ids have no image in {folder}/: {_examples(examples)}")
    if not rows.ids:
        raise PipelineError(f"{where}: no rows")
    return rows


def _check_id(where: str, line: int, ident: str) -> str:
    if not ident:
        raise PipelineError(f"{where}: line {line}: empty id")
    if len(ident) > MAX_ID:
        raise PipelineError(f"{where}: line {line}: an id of {len(ident):,} characters; ids are file names, "
                            f"at most {MAX_ID}")
    return ident


def _check_unclaimed(rows: LabelRows, earlier: int | None, ident: str, line: int, path: str) -> None:
    """One image is never two rows: `earlier` is the row that already named `path`, if any."""
    if earlier is None:
        return
    if rows.ids[earlier] == ident:
        raise PipelineError(f"{rows.where}: duplicate id '{ident}' (lines {rows.lines[earlier]} and {line})")
    raise PipelineError(
        f"{rows.where}: lines {rows.lines[earlier]} ('{rows.ids[earlier]}') and {line} ('{ident}') both name "
        f"{path}; one image cannot be two rows: remove one of them")


def encode_labels(rows: LabelRows, expected: list[str] | None) -> tuple[list[str], np.ndarray, str]:
    """Labels -> (classes, int64 indices, "name" | "index").

    Names: classes sorted alphabetically (or `expected`, in its order). Integers: class indices,
    which must cover 0..K-1 (or index into `expected`).
    """
    values = rows.values
    codes = np.frombuffer(rows.codes, dtype=f"i{rows.codes.itemsize}").astype(np.int64)
    if "" in values:
        raise PipelineError(f"{rows.where}: line {rows.first_line('')}: empty label")
    ints = all(_INT.fullmatch(v) for v in values)
    if ints and not (expected and set(values) <= set(expected)):
        idx = np.array([int(v) for v in values], np.int64)[codes]
        k = len(expected) if expected else int(idx.max()) + 1
        hint = _one_based_hint(idx, len(expected) if expected else None)
        bad = np.flatnonzero((idx < 0) | (idx >= k))
        if len(bad):
            raise PipelineError(
                f"{rows.where}: line {rows.lines[bad[0]]}: unknown class {values[codes[bad[0]]]} "
                f"(integer labels are class indices 0..{k - 1}){hint}"
            )
        if not expected:
            present = np.unique(idx)
            gaps = np.flatnonzero(present != np.arange(len(present)))
            if len(present) < k:
                missing = int(gaps[0]) if len(gaps) else len(present)
                raise PipelineError(
                    f"{rows.where}: integer labels must cover 0..{k - 1}, but class {missing} never occurs{hint}"
                )
        return (expected or [str(i) for i in range(k)]), idx, "index"
    classes = expected or sorted(values)
    lookup = {c: i for i, c in enumerate(classes)}
    for value in values:
        if value not in lookup:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            alike = next((c for c in classes if c.casefold() == value.casefold()), None)
            case = f"; '{value}' differs from '{alike}' only by case" if alike else ""
            raise PipelineError(
                f"{rows.where}: line {rows.first_line(value)}: unknown class '{value}' (known: {shown}){case}")
    if not expected:
        flag_suspect_labels(rows, codes)
    return list(classes), np.array([lookup[v] for v in values], np.int64)[codes], "name"


# A label seen once among at least this many rows is more likely a typo than a class.
RARE_AMONG = 1000


def flag_suspect_labels(rows: LabelRows, codes: np.ndarray, shown: int = 5) -> list[str]:
    """Warn about labels that look like typos of another (only the case differs) or occur once among
    thousands of rows: without --classes each silently becomes a class of its own."""
    counts = np.bincount(codes, minlength=len(rows.values))
    by_fold: dict[str, list[int]] = {}
    for code, value in enumerate(rows.values):
        by_fold.setdefault(value.casefold(), []).append(code)
    suspects = []  # (code, why)
    for group in by_fold.values():
        main = max(group, key=lambda c: (counts[c], -c))
        suspects += [(c, f"differs from '{rows.values[main]}' only by case") for c in group if c != main]
    if len(codes) >= RARE_AMONG:
        suspects += [(int(c), f"occurs once among {len(codes):,} rows") for c in np.flatnonzero(counts == 1)
                     if len(by_fold[rows.values[c].casefold()]) == 1]
    hint = "; if it is a typo, fix it, else pass --classes NAME,... to say which classes exist"
    warnings = []
    for code, why in suspects[:shown]:
        lines = [rows.lines[i] for i in np.flatnonzero(codes == code)[:shown + 1]]
        warnings.append(f"{rows.where}: label '{rows.values[code]}' ({_line_list(lines, shown)}) {why}{hint}")
    if len(suspects) > shown:
        warnings.append(f"{rows.where}: {len(suspects) - shown} more labels like these")
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _line_list(lines: list[int], n: int = 5) -> str:
    shown = ", ".join(str(x) for x in lines[:n]) + (", ..." if len(lines) > n else "")
    return f"line{'s' if len(lines) > 1 else ''} {shown}"


def _one_based_hint(idx: np.ndarray, k: int | None) -> str:
    """A hint when integer labels run 1..K: counted from 1, where class indices start at 0."""
    if len(idx) and idx.min() == 1 and (k is None or idx.max() == k):
        return (f"; the labels run 1..{int(idx.max())}, so they look counted from 1: subtract 1 from each, "
                "or give them names")
    return ""


def image_files(tree: FileTree, folder: str) -> dict[str, str]:
    """Images directly inside `folder`/, by id (the file name without its extension)."""
    found: dict[str, str] = {}
    for name in tree.names():
        parent, _, base = name.rpartition("/")
        if parent == folder and is_image_name(base):
            key = base.rsplit(".", 1)[0]
            if key in found:
                raise PipelineError(f"{tree.where(name)}: same id as {tree.where(found[key])}")
            found[key] = name
    return found


def class_folders(tree: FileTree, folder: str) -> dict[str, list[str]]:
    """`folder`/<class>/<image> files, by class."""
    found: dict[str, list[str]] = {}
    for name in tree.names():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == folder and is_image_name(parts[2]):
            found.setdefault(parts[1], []).append(name)
    return found


def _lookup(index: dict[str, str], ident: str) -> str | None:
    return index.get(ident) or index.get(PurePosixPath(ident).stem)


def _decoder(tree: FileTree, paths: list[str], desc: str):
    def load(idx: np.ndarray, like: tuple[int, int, int] | None = None, dest=None, workers: int = 1) -> np.ndarray:
        return decode_images(tree, [paths[i] for i in idx], like=like, desc=desc, dest=dest, workers=workers)

    return load


def _examples(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def image_folders(tree: FileTree) -> dict[str, dict[str, str]]:
    """Every folder holding images: folder -> {id: name} of the images directly inside it."""
    found: dict[str, dict[str, str]] = {}
    for name in tree.names():
        parent, _, base = name.rpartition("/")
        if is_image_name(base):
            found.setdefault(parent, {}).setdefault(base.rsplit(".", 1)[0], name)
    return found


def _is_train_folder(folder: str) -> bool:
    return _canonical(folder.split("/", 1)[0]).startswith("train")


def locate_labelled(tree: FileTree, name: str) -> str | None:
    """The folder under train*/ holding the labels CSV's images (train/train/ from unzipping train.zip
    into train/); None when none of its ids is an image there. Half a match is an error: a labels
    file is never ignored while its ids name images. Counts only: memory does not grow with rows."""
    folders = {f: files for f, files in image_folders(tree).items() if _is_train_folder(f)}
    hits = dict.fromkeys(folders, 0)
    where, total = tree.where(name), 0
    records = csv_records(tree, name)
    with contextlib.closing(records):
        first = next(records, None)
        if first is None:
            raise PipelineError(f"{where}: no rows")
        id_col, _ = id_and_label_columns(where, first[1])
        for _, fields in records:
            total += 1
            ident = fields[id_col] if id_col < len(fields) else ""
            for folder, files in folders.items():
                hits[folder] += _lookup(files, ident) is not None
    hits = {f: n for f, n in hits.items() if n}
    if not hits:
        return None
    best = max(hits, key=lambda f: (hits[f], -f.count("/")))
    if hits[best] == total:
        return best
    spread = f" (spread over {len(hits)} folders)" if len(hits) > 1 else ""
    raise PipelineError(
        f"{where}: its ids name images under train/, but no one folder holds them all: "
        f"{best}/ has {hits[best]:,} of {total:,}{spread}; put the labelled images in train/<id>.<ext>, "
        "or remove the CSV to take labels from train/<class>/ folders"
    )


def load_train(tree: FileTree, expected: list[str] | None) -> tuple[list[str], ImageSet, str]:
    """(classes, train set, label form of the labels file)."""
    flat = image_files(tree, "train")
    folders = class_folders(tree, "train")
    labels_csv = find_top_file(tree, LABEL_CSVS)
    folder = None
    if labels_csv is not None:
        folder = "train" if flat else locate_labelled(tree, labels_csv)
    if folder is not None:
        flat = image_files(tree, folder)
        rows = read_rows(tree, labels_csv, flat, folder)
        classes, labels, form = encode_labels(rows, expected)
        ids, paths = rows.ids, rows.paths
        if len(paths) < len(flat):
            unlabelled = sorted(set(flat.values()) - set(paths), key=natural_key)
            raise PipelineError(
                f"{rows.where}: {len(unlabelled)} images in {folder}/ have no label: {_examples(unlabelled)}"
            )
        if folder != "train":
            log.info("%s: labelled images found in %s/", rows.where, folder)
        where = rows.where
    elif flat:
        raise PipelineError(
            f"{tree.label}: train/ has images but no labels CSV (looked for trainLabels.csv, "
            "train_labels.csv, train.csv, labels.csv)"
        )
    elif folders:
        if labels_csv is not None:
            # Its ids name no image under train/: it labels something else (so it is safe to leave out).
            log.warning("%s: none of its ids is an image under train/; labels come from the train/<class>/ "
                        "folders", tree.where(labels_csv))
        classes = list(expected or sorted(folders))
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise PipelineError(f"{tree.label}: train/{unknown[0]}/ is not one of the classes {classes}")
        paths, labels_list = [], []
        for ci, cls in enumerate(classes):
            for path in sorted(folders.get(cls, []), key=natural_key):
                paths.append(path)
                labels_list.append(ci)
        stems = [PurePosixPath(p).stem for p in paths]
        # File names are the ids when they are unique across classes, else <class>/<name>.
        ids = stems if len(set(stems)) == len(stems) else [p.split("/", 1)[1].rsplit(".", 1)[0] for p in paths]
        labels, form, where = np.array(labels_list, np.int64), "name", f"{tree.label}:train/"
    else:
        raise PipelineError(
            f"{tree.label}: no training images: expected train/<id>.<ext> with a labels CSV, "
            f"or train/<class>/<image>"
        )
    return classes, ImageSet(ids=ids, labels=labels, load=_decoder(tree, paths, "train"), where=where), form


def load_test(tree: FileTree, train_form: str) -> tuple[ImageSet, SubmissionFormat, bytes | None]:
    files = image_files(tree, "test")
    folder = "test"
    if not files:
        # test/test/<id>.png (test.zip unzipped into test/): one image folder under test*/ is unambiguous.
        nested = [f for f in image_folders(tree) if _canonical(f.split("/", 1)[0]).startswith("test")]
        if len(nested) == 1:
            folder = nested[0]
            files = image_files(tree, folder)
    if not files:
        raise PipelineError(f"{tree.label}: no test images: expected test/<id>.<ext>")
    sample_name = find_top_file(tree, SAMPLE_CSVS)
    if sample_name is None:
        ids = sorted(files, key=natural_key)
        paths = [files[i] for i in ids]
        fmt = SubmissionFormat("id", "label", train_form)
        sample = None
        where = f"{tree.label}:test/"
    else:
        rows = read_rows(tree, sample_name, files, folder, columns=2)
        id_col, label_col = id_and_label_columns(rows.where, rows.header)
        ids, paths = rows.ids, rows.paths
        if len(files) > len(ids):
            log.warning("%s: %d images in %s/ are not in it and are left out", rows.where, len(files) - len(ids),
                        folder)
        form = "index" if all(_INT.fullmatch(v) for v in rows.values) else "name"
        fmt = SubmissionFormat(rows.header[id_col], rows.header[label_col], form)
        sample = tree.read(sample_name)
        where = rows.where
    return ImageSet(ids=ids, labels=None, load=_decoder(tree, paths, "test"), where=where), fmt, sample


def load_kaggle_layout(tree: FileTree, expected_classes: list[str] | None = None) -> Ingested:
    classes, train, form = load_train(tree, expected_classes)
    test, fmt, sample = load_test(tree, form)
    return Ingested(classes=classes, train=train, test=test, submission=fmt, sample_submission=sample)
