"""Competition download through the real kaggle client and the fake server, alone and via `data --kaggle`."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from fake_kaggle import FakeKaggle
from helpers_data import kaggle_files
from helpers_predict import run_cli
from pipeline import kaggle_api
from pipeline.data.dataset import load_prepared
from pipeline.errors import PipelineError

SLUG = "tiny-comp"


def zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def competition():
    return kaggle_files()


@pytest.fixture
def fake(competition, tmp_path, monkeypatch):
    with FakeKaggle(files={SLUG: zipped(competition[0])}) as server:
        server.serve_in_process(monkeypatch, tmp_path / "home")
        yield server


def test_download_competition_keeps_the_zip_as_sent(fake, tmp_path):
    dest = tmp_path / "raw"
    paths = kaggle_api.download_competition(SLUG, dest)
    assert paths == [dest / f"{SLUG}.zip"]
    assert paths[0].read_bytes() == fake.files[SLUG]
    assert sorted(p.name for p in dest.iterdir()) == [f"{SLUG}.zip"]  # no temp folder left behind
    [call] = fake.calls("DownloadDataFiles")
    assert call.json == {"competitionName": SLUG}
    assert [r.path for r in fake.requests if r.method == "GET"] == [f"/files/{SLUG}.zip"]  # the 302 followed


def test_download_errors_are_one_line(fake, tmp_path, monkeypatch):
    with pytest.raises(PipelineError, match="competition 'nope' not found on Kaggle \\(404\\)"):
        kaggle_api.download_competition("nope", tmp_path / "raw")
    fake.fail("DownloadDataFiles", 403, "You must accept this competition's rules before downloading.")
    with pytest.raises(PipelineError, match="accept its rules at https://www.kaggle.com/competitions/tiny-comp/rules"):
        kaggle_api.download_competition(SLUG, tmp_path / "raw")
    assert [p.name for p in (tmp_path / "raw").iterdir()] == []
    monkeypatch.delenv("KAGGLE_KEY")
    with pytest.raises(PipelineError, match="^no Kaggle KAGGLE_KEY: set KAGGLE_USERNAME and KAGGLE_KEY"):
        kaggle_api.download_competition(SLUG, tmp_path / "raw")


def test_kaggle_json_credentials_are_found(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    config = tmp_path / "home" / ".kaggle"
    config.mkdir(parents=True)
    (config / "kaggle.json").write_text(f'{{"username": "{fake.username}", "key": "{fake.key}"}}')
    (config / "kaggle.json").chmod(0o600)
    assert kaggle_api.check_credentials() == "kaggle.json"
    assert kaggle_api.submission_limits(SLUG).num_allowed_now == 5


def test_missing_credentials_name_the_paths_the_client_reads(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr("sys.platform", "linux")

    def message() -> str:
        with pytest.raises(PipelineError) as error:
            kaggle_api.check_credentials()
        return str(error.value)

    # No ~/.kaggle on Linux: the client reads ~/.config/kaggle, yet ~/.kaggle/kaggle.json works too
    # (saving it there creates ~/.kaggle, which the client then prefers).
    assert (f"as {home / '.config' / 'kaggle' / 'kaggle.json'} (or {home / '.kaggle' / 'kaggle.json'}: "
            "the client reads ~/.config/kaggle only while ~/.kaggle does not exist)") in message()
    assert message().endswith(f"API token in KAGGLE_API_TOKEN or {home / '.kaggle' / 'access_token'}")
    (home / ".kaggle").mkdir()
    assert f"as {home / '.kaggle' / 'kaggle.json'} (chmod 600)" in message()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    assert f"as {tmp_path / 'cfg' / 'kaggle.json'} ($KAGGLE_CONFIG_DIR) (chmod 600)" in message()


def test_data_stage_with_kaggle_slug_end_to_end(fake, competition, tmp_path, capsys):
    files, made = competition
    code, out, err = run_cli(["data", "--kaggle", SLUG, "--competition", "tiny", "--data-root",
                              str(tmp_path / "data")], capsys)
    assert code == 0, err
    data = load_prepared(tmp_path / "data" / "tiny")
    assert (tmp_path / "data" / "tiny" / "raw" / f"{SLUG}.zip").read_bytes() == fake.files[SLUG]
    assert data.meta["source"]["kaggle"] == SLUG and data.classes == ["cat", "dog", "frog"]
    # Test ids in the sample submission's order, each with its own image.
    assert data.test_ids.tolist() == [str(i) for i in made["test_order"]]
    for ident, image in zip(data.test_ids, data.test_images):
        np.testing.assert_array_equal(image, made["test"][int(ident) - 1])
    assert data.sample_submission.read_bytes() == files["sampleSubmission.csv"]
    assert fake.key not in out + err
