"""predictions.csv validation: every kind of problem, reported with its line number."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.submission import (
    read_sample, score_against_answers, validate_predictions, write_predictions,
)
from helpers_predict import make_data, run_cli

LABELS = ["cat", "dog", "frog"]


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.csv"
    path.write_text("id,label\n3,cat\n1,cat\n2,cat\n")
    return read_sample(path)


def check(tmp_path, sample, text, labels=LABELS, raw: bytes | None = None):
    path = tmp_path / "pred.csv"
    path.write_bytes(raw if raw is not None else text.encode())
    return [(p.line, p.message) for p in validate_predictions(path, sample, labels)]


def test_a_valid_file_passes_even_with_bom_and_crlf(tmp_path, sample):
    assert check(tmp_path, sample, "id,label\n3,dog\n1,cat\n2,frog\n") == []
    assert check(tmp_path, sample, "", raw=b"\xef\xbb\xbfid,label\r\n3,dog\r\n1,cat\r\n2,frog\r\n") == []


def test_wrong_header(tmp_path, sample):
    assert check(tmp_path, sample, "ID,Label\n3,dog\n1,cat\n2,frog\n") == [
        (1, "header is 'ID,Label'; expected 'id,label'")]


def test_missing_extra_and_duplicate_ids(tmp_path, sample):
    problems = check(tmp_path, sample, "id,label\n3,dog\n3,cat\n7,frog\n")
    assert (3, "duplicate id '3' (first on line 2)") in problems
    assert (4, "id '7' is not in the sample submission") in problems
    assert (None, "missing id '1' (sample line 3)") in problems
    assert (None, "missing id '2' (sample line 4)") in problems
    assert len(problems) == 4  # 3 rows = 3 rows: no row-count problem; order not judged


def test_unknown_labels_and_empty_values(tmp_path, sample):
    problems = check(tmp_path, sample, "id,label\n3,Dog\n1,\n,frog\n")
    assert (2, "unknown label 'Dog'; expected one of cat, dog, frog") in problems
    assert (3, "empty label") in problems
    assert (4, "empty id") in problems
    assert (None, "missing id '2' (sample line 4)") in problems


def test_wrong_row_count_and_broken_rows(tmp_path, sample):
    problems = check(tmp_path, sample, "id,label\n3,dog\n1,cat\n2,frog\n\n4,cat,extra\n")
    assert (5, "empty row") in problems
    assert (6, "3 fields; expected 2") in problems
    assert (None, "4 rows; the sample submission has 3") in problems
    problems = check(tmp_path, sample, "id,label\n3,dog\n")
    assert (None, "1 rows; the sample submission has 3") in problems


def test_wrong_order_names_the_first_misplaced_line(tmp_path, sample):
    assert check(tmp_path, sample, "id,label\n3,dog\n2,cat\n1,frog\n") == [
        (3, "wrong order: id '2' where the sample submission has '1' (2 rows out of place)")]


def test_ids_compare_as_exact_strings(tmp_path, sample):
    problems = check(tmp_path, sample, "id,label\n03,dog\n1,cat\n2,frog\n")
    assert (2, "id '03' is not in the sample submission") in problems
    assert (None, "missing id '3' (sample line 2)") in problems


def test_index_label_form(tmp_path, sample):
    labels = ["0", "1", "2"]
    assert check(tmp_path, sample, "id,label\n3,2\n1,0\n2,1\n", labels) == []
    assert check(tmp_path, sample, "id,label\n3,cat\n1,3\n2,1\n", labels) == [
        (2, "unknown label 'cat'; expected one of 0, 1, 2"),
        (3, "unknown label '3'; expected one of 0, 1, 2")]


def test_write_predictions_follows_the_sample_and_refuses_other_ids(tmp_path, sample):
    meta = {"classes": LABELS, "submission": {"label_form": "name"}}
    out = tmp_path / "out.csv"
    write_predictions(out, sample, np.array(["1", "2", "3"]), np.array([0, 1, 2]), meta)
    assert out.read_text() == "id,label\n3,frog\n1,cat\n2,dog\n"
    assert validate_predictions(out, sample, LABELS) == []
    with pytest.raises(PipelineError, match="do not match the sample submission"):
        write_predictions(out, sample, np.array(["1", "2", "4"]), np.array([0, 1, 2]), meta)
    assert out.read_text() == "id,label\n3,frog\n1,cat\n2,dog\n"  # the failed write left it alone


def test_score_against_answers(tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text("id,label\n3,frog\n1,cat\n2,cat\n")
    pred = tmp_path / "pred.csv"
    pred.write_text("id,label\n3,frog\n1,cat\n2,dog\n")
    assert score_against_answers(pred, answers) == (pytest.approx(2 / 3), 3)


def test_validate_cli_exit_codes_and_line_numbers(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    sample_text = (data / "sample_submission.csv").read_text()
    good = tmp_path / "good.csv"
    good.write_text(sample_text.replace(",cat", ",frog"))
    code, out, _ = run_cli(["validate", str(good), "--data", str(data)], capsys)
    assert code == 0 and out.strip() == "OK: 11 rows"

    lines = sample_text.splitlines()
    lines[4] = lines[4].split(",")[0] + ",wolf"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    code, out, _ = run_cli(["validate", str(bad), "--data", str(data)], capsys)
    assert code == 1
    assert f"{bad}:5: unknown label 'wolf'; expected one of cat, dog, frog" in out
    assert out.strip().endswith(f"INVALID: 1 problem in {bad}")

    code, out, err = run_cli(["validate", str(bad), "--sample", str(data / "sample_submission.csv")], capsys)
    assert code == 0 and "labels not checked" in err  # no meta.json: structure only
    code, _, err = run_cli(["validate", str(bad)], capsys)
    assert code == 2 and "pass --data DIR or --sample PATH" in err
