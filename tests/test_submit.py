"""`submit` against a fake Kaggle server, through the real kaggle client (kaggle 2.2.4 / kagglesdk 0.1.37).

In-process tests point kagglesdk's PROD endpoint at the fake server; the end-to-end tests run
`python -m pipeline submit` in a subprocess with KAGGLE_API_ENVIRONMENT=LOCALHOST and the fake
server as HTTP proxy, the way the kaggle CLI itself would be redirected.
"""
from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from fake_kaggle import FakeKaggle, isolate_kaggle
from helpers_predict import make_data, run_cli, write_predictions_of
from pipeline.ensemble import EnsembleConfig, run_ensemble

SLUG = "tiny-comp"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A project folder with data (and its withheld answers), two predicted runs and their ensemble."""
    monkeypatch.chdir(tmp_path)
    data = make_data(tmp_path / "data" / "tiny", answers=True, kaggle_slug=SLUG)
    rng = np.random.default_rng(3)
    for run in ("a", "b"):
        write_predictions_of(tmp_path / "checkpoints", run, data, rng.normal(size=(12, 3)), rng.normal(size=(11, 3)))
    run_ensemble(EnsembleConfig(runs=["a", "b"], runs_dir="checkpoints", out="submissions/predictions.csv"))
    return tmp_path


@pytest.fixture
def fake():
    with FakeKaggle() as server:
        yield server


@pytest.fixture
def client(fake, tmp_path, monkeypatch):
    """The real kaggle client in this process, talking to `fake` with fake's credentials."""
    fake.serve_in_process(monkeypatch, tmp_path / "home")
    return fake


def ledger_rows(workdir):
    with open(workdir / "submissions" / "ledger.csv", newline="") as f:
        return list(csv.DictReader(f))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_no_secret(fake, *texts):
    for text in texts:
        assert fake.key not in text


def test_submit_uploads_the_exact_bytes_and_records_it(workdir, client, capsys):
    predictions = workdir / "submissions" / "predictions.csv"
    code, out, err = run_cli(["submit"], capsys)
    assert code == 0, err
    assert client.received_sha256() == [sha256(predictions)]
    order = [r.rpc for r in client.requests if r.rpc]
    assert order == ["GetSubmissionLimits", "StartSubmissionUpload", "CreateSubmission"]
    start = client.calls("StartSubmissionUpload")[0].json
    assert start["competitionName"] == SLUG and start["fileName"] == "predictions.csv"
    assert start["contentLength"] == predictions.stat().st_size
    description = client.calls("CreateSubmission")[0].json["submissionDescription"]
    assert description.startswith("a+b | val acc 0.")
    [row] = ledger_rows(workdir)
    assert row["status"] == "submitted" and row["ref"] == "40000" and row["competition"] == SLUG
    assert row["file_sha256"] == sha256(predictions) and row["runs"] == "a+b" and row["message"] == description
    assert "submitted submissions/predictions.csv to 'tiny-comp' (ref 40000)" in out
    assert_no_secret(client, out, err, (workdir / "submissions" / "ledger.csv").read_text())


def test_wait_polls_until_the_score_appears(workdir, client, capsys):
    client.polls_until_scored = 2
    code, out, err = run_cli(["submit", "-m", "try 1", "--wait", "--poll-interval", "0.01"], capsys)
    assert code == 0, err
    assert len(client.calls("ListSubmissions")) == 3  # pending, pending, complete
    assert "public score: 0.93750" in out
    [row] = ledger_rows(workdir)
    assert row["status"] == "complete" and row["public_score"] == "0.93750" and row["message"] == "try 1"


def test_wait_gives_up_after_its_timeout(workdir, client, capsys):
    client.polls_until_scored = 10_000
    code, out, err = run_cli(["submit", "--wait", "--poll-interval", "0.01", "--wait-timeout", "0.05"], capsys)
    assert code == 0, err
    assert "no score after 0.05s; the submission is in (ref 40000)" in out
    assert ledger_rows(workdir)[0]["status"] == "submitted"


def test_wrong_key_401(workdir, client, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_KEY", "not-the-right-key-0000")
    code, out, err = run_cli(["submit"], capsys)
    assert_one_line_error(code, err, "Kaggle rejected the credentials (401 Unauthorized)")
    assert client.puts() == [] and "not-the-right-key-0000" not in out + err
    assert ledger_rows(workdir)[0]["status"].startswith("failed: Kaggle rejected the credentials")


def test_rules_not_accepted_403(workdir, client, capsys):
    client.fail("StartSubmissionUpload", 403, "You must accept this competition's rules before you'll be able to submit.")
    code, _, err = run_cli(["submit"], capsys)
    assert_one_line_error(code, err, "403: You must accept this competition's rules",
                          "https://www.kaggle.com/competitions/tiny-comp/rules")
    assert client.puts() == [] and client.calls("CreateSubmission") == []
    assert ledger_rows(workdir)[0]["status"].startswith("failed: Kaggle refused access")


def test_too_many_requests_429(workdir, client, capsys):
    client.fail("GetSubmissionLimits", 429, "Too many requests")
    code, _, err = run_cli(["submit"], capsys)
    assert_one_line_error(code, err, "too many requests (429: Too many requests)")
    assert client.calls("StartSubmissionUpload") == []


def test_daily_limit_reached_uploads_nothing(workdir, client, capsys):
    client.limits.update(numToday=5, numAllowedNow=0)
    code, _, err = run_cli(["submit"], capsys)
    assert_one_line_error(code, err, "daily limit reached (5 today", "nothing uploaded")
    assert client.calls("StartSubmissionUpload") == [] and client.puts() == []
    assert ledger_rows(workdir)[0]["status"].startswith("failed: 'tiny-comp': submission daily limit reached")


def test_connection_dropped_mid_upload_loses_nothing(workdir, client, monkeypatch, capsys):
    import urllib3.util.retry

    # The client retries the PUT 10 times with exponential backoff (minutes); the waits are only time.
    monkeypatch.setattr(urllib3.util.retry.Retry, "get_backoff_time", lambda self: 0.0)
    predictions = workdir / "submissions" / "predictions.csv"
    before = predictions.read_bytes()
    assert run_cli(["submit", "--dry-run"], capsys)[0] == 0
    client.upload_mode = "drop"
    code, _, err = run_cli(["submit"], capsys)
    assert_one_line_error(code, err, "upload of predictions.csv to 'tiny-comp' failed", "nothing was submitted")
    assert len(client.puts()) >= 1 and all(len(p.body) < len(before) for p in client.puts())
    assert client.calls("CreateSubmission") == []  # the trap: the client returned instead of raising
    assert predictions.read_bytes() == before
    dry, failed = ledger_rows(workdir)
    assert dry["status"] == "dry-run" and failed["status"].startswith("failed: upload of predictions.csv")
    assert dry["file_sha256"] == failed["file_sha256"] == sha256(predictions)


def test_rejected_upload_is_detected(workdir, client, capsys):
    client.upload_mode = "reject"  # the PUT gets a 403; competition_submit returns "Could not submit..."
    code, _, err = run_cli(["submit"], capsys)
    assert_one_line_error(code, err, "failed", "nothing was submitted")
    assert client.calls("CreateSubmission") == [] and len(client.puts()) == 1


def test_key_in_a_server_message_is_redacted(workdir, client, capsys):
    client.fail("StartSubmissionUpload", 400, f"bad request from key {client.key}")
    code, out, err = run_cli(["submit"], capsys)
    assert_one_line_error(code, err, "bad request from key ***")
    assert_no_secret(client, out, err, (workdir / "submissions" / "ledger.csv").read_text())


def test_network_failure_is_one_line(workdir, client, monkeypatch, capsys):
    from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

    with FakeKaggle() as gone:
        closed = gone.url
    monkeypatch.setitem(_env_to_endpoint, KaggleEnv.PROD, closed)  # nothing listens there any more
    code, _, err = run_cli(["submit"], capsys)
    assert_one_line_error(code, err, "network failure talking to Kaggle (ConnectionError")
    assert ledger_rows(workdir)[0]["status"].startswith("failed: network failure")


def test_invalid_file_is_not_uploaded(workdir, client, capsys):
    predictions = workdir / "submissions" / "predictions.csv"
    lines = predictions.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    predictions.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(["submit"], capsys)
    assert_one_line_error(code, err, "not a valid submission (1 problems above); nothing uploaded")
    assert "predictions.csv:2: wrong order" in out and client.requests == []
    assert ledger_rows(workdir)[0]["status"] == "failed: invalid file (1 problems)"


def test_dry_run_prints_the_local_score_without_kaggle(workdir, tmp_path, monkeypatch, capsys):
    isolate_kaggle(monkeypatch, tmp_path / "nohome")  # no credentials at all: a dry run needs none
    code, out, err = run_cli(["submit", "--dry-run"], capsys)
    assert code == 0, err
    predicted = list(csv.reader(open(workdir / "submissions" / "predictions.csv")))[1:]
    truth = dict(csv.reader(open(workdir / "data" / "tiny" / "withheld" / "answers.csv")))
    expected = sum(truth[i] == label for i, label in predicted) / len(predicted)
    assert f"local score against the withheld answers: {expected:.4f} (11 rows)" in out
    [row] = ledger_rows(workdir)
    assert row["status"] == "dry-run" and float(row["local_score"]) == pytest.approx(expected, abs=1e-6)


def subprocess_env(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and "proxy" not in k.lower()}
    env.update(extra)
    env["PYTHONPATH"] = REPO
    return env


def test_missing_credentials_one_line_before_kaggle_is_imported(workdir, tmp_path, fake):
    env = subprocess_env({"HOME": str(tmp_path / "empty-home"), "KAGGLE_CONFIG_DIR": str(tmp_path / "no-config"),
                          "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": fake.url, "NO_PROXY": ""})
    proc = subprocess.run([sys.executable, "-m", "pipeline", "submit"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or save the kaggle.json from "
        f"https://www.kaggle.com/settings (API -> Create New Token) as {tmp_path / 'no-config' / 'kaggle.json'} "
        f"($KAGGLE_CONFIG_DIR) (chmod 600), or put an API token in KAGGLE_API_TOKEN or "
        f"{tmp_path / 'empty-home' / '.kaggle' / 'access_token'}"]
    assert "Authentication required" not in proc.stdout  # kaggle's import-time help never ran
    assert fake.requests == []
    assert ledger_rows(workdir)[0]["status"].startswith("failed: no Kaggle credentials")


def test_end_to_end_cli_through_the_high_level_client(workdir, tmp_path, fake):
    env = subprocess_env(fake.client_env(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "submit", "-m", "e2e", "--wait", "--poll-interval",
                           "0.01"], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert fake.received_sha256() == [sha256(workdir / "submissions" / "predictions.csv")]
    assert "/api/v1/competitions.CompetitionApiService/CreateSubmission" in [r.path for r in fake.requests]
    assert "public score: 0.93750" in proc.stdout
    assert_no_secret(fake, proc.stdout, proc.stderr, (workdir / "submissions" / "ledger.csv").read_text())
    assert ledger_rows(workdir)[0]["status"] == "complete"


def _rewrite_meta(workdir, **changes):
    import json
    path = workdir / "data" / "tiny" / "meta.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_limited_data_is_refused_for_a_real_upload_but_not_a_rehearsal(workdir, client, capsys):
    _rewrite_meta(workdir, limit=30)
    code, out, err = run_cli(["submit", "--dry-run"], capsys)
    assert code == 0 and "a real submit would refuse" in out and "--limit 30" in out
    code, out, err = run_cli(["submit"], capsys)
    assert_one_line_error(code, err, "prepared with --limit 30", "--allow-subset", "nothing uploaded")
    assert client.received_sha256() == [] and ledger_rows(workdir)[-1]["status"].startswith("refused: ")
    code, out, err = run_cli(["submit", "--allow-subset"], capsys)
    assert code == 0 and len(client.received_sha256()) == 1


def test_local_data_has_no_kaggle_competition_until_one_is_named(workdir, client, capsys):
    _rewrite_meta(workdir, source={"format": "kaggle", "location": "/somewhere/tiny.zip"})
    code, out, err = run_cli(["submit"], capsys)
    assert_one_line_error(code, err, "came from /somewhere/tiny.zip", "pass --competition SLUG")
    assert client.received_sha256() == []
    code, out, err = run_cli(["submit", "--competition", SLUG], capsys)
    assert code == 0 and len(client.received_sha256()) == 1


def test_dry_run_on_a_file_that_is_not_utf8_still_writes_its_ledger_row(workdir, tmp_path, monkeypatch, capsys):
    isolate_kaggle(monkeypatch, tmp_path / "nohome")
    predictions = workdir / "submissions" / "predictions.csv"
    predictions.write_bytes(predictions.read_bytes().replace(b"\n", b"\n\xff", 1))
    code, out, err = run_cli(["submit", "--dry-run"], capsys)
    assert_one_line_error(code, err, "predictions.csv: not UTF-8 text (byte")
    [row] = ledger_rows(workdir)  # every try is a row, dry runs that fail on encoding included
    assert row["status"].startswith("failed: ") and "not UTF-8" in row["status"]
    assert row["file_sha256"] == sha256(predictions)


@pytest.mark.parametrize("classes, shown", [(None, "null"), ("cat", '"cat"'), ([], "[]"), ([["a"]], '[["a"]]')])
def test_hand_edited_meta_classes_is_a_one_line_error_in_validate_and_submit(workdir, capsys, classes, shown):
    _rewrite_meta(workdir, classes=classes)
    code, out, err = run_cli(["validate", "submissions/predictions.csv", "--data", "data/tiny"], capsys)
    assert_one_line_error(code, err, f"meta.json: 'classes' is {shown}, expected a list of class names",
                          "python -m pipeline data")
    code, out, err = run_cli(["submit", "--dry-run"], capsys)
    assert_one_line_error(code, err, f"meta.json: 'classes' is {shown}")
    assert ledger_rows(workdir)[-1]["status"].startswith("failed: ")
