"""Kaggle-style competition files: `train/<id>.<ext>` + a labels CSV (or `train/<class>/*`),
`test/<id>.<ext>` and a sample submission CSV, from a folder or zip.

File names are matched without regard to case or underscores (trainLabels.csv, train_labels.csv,
train.csv, labels.csv; sampleSubmission.csv, sample_submission.csv); id and label columns are
found from the header. Test ids and their order come from the sample submission when there is
one, and its bytes are kept as they are.
"""
from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

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
_INT = re.compile(r"[+-]?\d+")


def _canonical(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def find_top_file(tree: FileTree, candidates: tuple[str, ...]) -> str | None:
    """The top-level file whose canonical name comes first in `candidates`."""
    top = {_canonical(n): n for n in tree.names() if "/" not in n}
    return next((top[c] for c in candidates if c in top), None)


def natural_key(text: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


@dataclass
class CsvTable:
    where: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]  # line number of each row, for error messages

    def column(self, index: int) -> list[str]:
        return [r[index] for r in self.rows]


def read_csv(tree: FileTree, name: str) -> CsvTable:
    """A CSV's rows, streamed: its size is held to the CSV limit before and while it is read."""
    where = tree.where(name)
    tree.limits.check_csv(where, tree.size(name))
    # The header's size can lie (or a folder file can grow): count what actually comes out too.
    raw = BoundedReader(tree.open(name), where, tree.limits.check_csv)
    text = io.TextIOWrapper(io.BufferedReader(raw, 1 << 20), encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    header: list[str] | None = None
    rows, lines = [], []
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            fields = [f.strip() for f in fields]
            if header is None:
                header = fields
            elif len(fields) != len(header):
                raise PipelineError(
                    f"{where}: line {reader.line_num} has {len(fields)} fields, the header has {len(header)}"
                )
            else:
                rows.append(fields)
                lines.append(reader.line_num)
    except csv.Error as e:
        raise PipelineError(f"{where}: line {reader.line_num}: {e}") from None
    except UnicodeDecodeError as e:
        raise PipelineError(f"{where}: not UTF-8 text ({e})") from None
    finally:
        text.close()
    if header is None or not rows:
        raise PipelineError(f"{where}: no rows")
    return CsvTable(where, header, rows, lines)


def id_and_label_columns(table: CsvTable) -> tuple[int, int]:
    names = [_canonical(h) for h in table.header]
    if len(names) < 2:
        raise PipelineError(f"{table.where}: needs an id and a label column, header is {table.header}")
    id_col = next((names.index(c) for c in ID_COLUMNS if c in names), 0)
    rest = [i for i in range(len(names)) if i != id_col]
    label_col = next((names.index(c) for c in LABEL_COLUMNS if c in names and names.index(c) != id_col), rest[0])
    return id_col, label_col


def unique_ids(table: CsvTable, col: int) -> list[str]:
    seen: dict[str, int] = {}
    for value, line in zip(table.column(col), table.lines):
        if not value:
            raise PipelineError(f"{table.where}: line {line}: empty id")
        if value in seen:
            raise PipelineError(f"{table.where}: duplicate id '{value}' (lines {seen[value]} and {line})")
        seen[value] = line
    return list(seen)


def encode_labels(table: CsvTable, col: int, expected: list[str] | None) -> tuple[list[str], np.ndarray, str]:
    """Labels -> (classes, int64 indices, "name" | "index").

    Names: classes sorted alphabetically (or `expected`, in its order). Integers: class indices,
    which must cover 0..K-1 (or index into `expected`).
    """
    values = table.column(col)
    for value, line in zip(values, table.lines):
        if not value:
            raise PipelineError(f"{table.where}: line {line}: empty label")
    ints = all(_INT.fullmatch(v) for v in values)
    if ints and not (expected and set(values) <= set(expected)):
        idx = np.array([int(v) for v in values], np.int64)
        k = len(expected) if expected else int(idx.max()) + 1
        hint = _one_based_hint(idx, len(expected) if expected else None)
        bad = np.flatnonzero((idx < 0) | (idx >= k))
        if len(bad):
            raise PipelineError(
                f"{table.where}: line {table.lines[bad[0]]}: unknown class {values[bad[0]]} "
                f"(integer labels are class indices 0..{k - 1}){hint}"
            )
        if not expected:
            missing = sorted(set(range(k)) - set(idx.tolist()))
            if missing:
                raise PipelineError(
                    f"{table.where}: integer labels must cover 0..{k - 1}, but class {missing[0]} never occurs{hint}"
                )
        return (expected or [str(i) for i in range(k)]), idx, "index"
    classes = expected or sorted(set(values))
    lookup = {c: i for i, c in enumerate(classes)}
    for value, line in zip(values, table.lines):
        if value not in lookup:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise PipelineError(f"{table.where}: line {line}: unknown class '{value}' (known: {shown})")
    return list(classes), np.array([lookup[v] for v in values], np.int64), "name"


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


def locate_labelled(tree: FileTree, table: CsvTable, ids: list[str]) -> str | None:
    """The folder under train*/ holding the labels CSV's images (train/train/ from unzipping train.zip
    into train/); None when none of its ids is an image there. Half a match is an error: a labels
    file is never ignored while its ids name images."""
    hits = {
        folder: sum(_lookup(files, i) is not None for i in ids)
        for folder, files in image_folders(tree).items() if _is_train_folder(folder)
    }
    hits = {f: n for f, n in hits.items() if n}
    if not hits:
        return None
    best = max(hits, key=lambda f: (hits[f], -f.count("/")))
    if hits[best] == len(ids):
        return best
    spread = f" (spread over {len(hits)} folders)" if len(hits) > 1 else ""
    raise PipelineError(
        f"{table.where}: its ids name images under train/, but no one folder holds them all: "
        f"{best}/ has {hits[best]:,} of {len(ids):,}{spread}; put the labelled images in train/<id>.<ext>, "
        "or remove the CSV to take labels from train/<class>/ folders"
    )


def load_train(tree: FileTree, expected: list[str] | None) -> tuple[list[str], ImageSet, str]:
    """(classes, train set, label form of the labels file)."""
    flat = image_files(tree, "train")
    folders = class_folders(tree, "train")
    labels_csv = find_top_file(tree, LABEL_CSVS)
    table = folder = None
    if labels_csv is not None:
        table = read_csv(tree, labels_csv)
        id_col, label_col = id_and_label_columns(table)
        ids = unique_ids(table, id_col)
        folder = "train" if flat else locate_labelled(tree, table, ids)
    if folder is not None:
        flat = image_files(tree, folder)
        classes, labels, form = encode_labels(table, label_col, expected)
        paths, missing = [], []
        for ident, line in zip(ids, table.lines):
            path = _lookup(flat, ident)
            if path is None:
                missing.append(f"'{ident}' (line {line})")
            paths.append(path)
        if missing:
            raise PipelineError(f"{table.where}: {len(missing)} ids have no image in {folder}/: {_examples(missing)}")
        unlabelled = sorted(set(flat.values()) - set(paths), key=natural_key)
        if unlabelled:
            raise PipelineError(
                f"{table.where}: {len(unlabelled)} images in {folder}/ have no label: {_examples(unlabelled)}"
            )
        if folder != "train":
            log.info("%s: labelled images found in %s/", table.where, folder)
        where = table.where
    elif flat:
        raise PipelineError(
            f"{tree.label}: train/ has images but no labels CSV (looked for trainLabels.csv, "
            "train_labels.csv, train.csv, labels.csv)"
        )
    elif folders:
        if labels_csv is not None:
            # Its ids name no image under train/: it labels something else (so it is safe to leave out).
            log.warning("%s: none of its ids is an image under train/; labels come from the train/<class>/ "
                        "folders", table.where)
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
    if not files:
        # test/test/<id>.png (test.zip unzipped into test/): one image folder under test*/ is unambiguous.
        nested = [f for f in image_folders(tree) if _canonical(f.split("/", 1)[0]).startswith("test")]
        if len(nested) == 1:
            files = image_files(tree, nested[0])
    if not files:
        raise PipelineError(f"{tree.label}: no test images: expected test/<id>.<ext>")
    sample_name = find_top_file(tree, SAMPLE_CSVS)
    if sample_name is None:
        ids = sorted(files, key=natural_key)
        fmt = SubmissionFormat("id", "label", train_form)
        sample = None
        where = f"{tree.label}:test/"
    else:
        table = read_csv(tree, sample_name)
        if len(table.header) != 2:
            raise PipelineError(
                f"{table.where}: expected 2 columns (id, label), got {len(table.header)}: {table.header}"
            )
        id_col, label_col = id_and_label_columns(table)
        ids = unique_ids(table, id_col)
        missing = [i for i in ids if _lookup(files, i) is None]
        if missing:
            raise PipelineError(f"{table.where}: {len(missing)} ids have no image in test/: {_examples(missing)}")
        if len(files) > len(ids):
            log.warning("%s: %d images in test/ are not in it and are left out", table.where, len(files) - len(ids))
        form = "index" if all(_INT.fullmatch(v) for v in table.column(label_col)) else "name"
        fmt = SubmissionFormat(table.header[id_col], table.header[label_col], form)
        sample = tree.read(sample_name)
        where = table.where
    paths = [_lookup(files, i) for i in ids]
    return ImageSet(ids=ids, labels=None, load=_decoder(tree, paths, "test"), where=where), fmt, sample


def load_kaggle_layout(tree: FileTree, expected_classes: list[str] | None = None) -> Ingested:
    classes, train, form = load_train(tree, expected_classes)
    test, fmt, sample = load_test(tree, form)
    return Ingested(classes=classes, train=train, test=test, submission=fmt, sample_submission=sample)
