"""`pipeline lab`: presets parse and expand to the report's experiments; a quick lab on tiny data
writes results.md / report.html with ours vs the report, trend lines and figures; a killed lab resumes."""
from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.lab import results
from pipeline.lab import store
from pipeline.lab.run import LabRun, lab_folder, prepare_data, run_lab
from pipeline.lab.spec import Experiment, list_labs, load_lab, parse_lab

PRESETS = ["cmpe597-cnn3", "cs535-cnn4", "cs5787-lenet5-fmnist", "ece590-lenet5", "ece590-vgg19-elu",
           "ece661-resnet20", "ece661-simplenn"]


@pytest.fixture
def labs_dir(repo_root):
    return repo_root / "configs" / "labs"


# -- presets ---------------------------------------------------------------------------------------

def test_all_presets_ship_and_parse(labs_dir):
    assert list_labs(labs_dir) == PRESETS
    for name in PRESETS:
        spec = load_lab(name, labs_dir)
        for scale in ("quick", "full"):
            assert spec.unique_points(scale), (name, scale)
        assert all(v.report is None or 0 < v.report <= 1 for e in spec.experiments for v in e.variants)


def test_ece661_simplenn_expands_to_the_reports_experiments(labs_dir):
    spec = load_lab("ece661-simplenn", labs_dir)
    assert [e.name for e in spec.experiments] == ["augmentation", "batchnorm", "lr-without-bn", "lr-with-bn", "lr",
                                                  "l2", "l1-vs-l2", "activation", "lr-decay"]
    # 2+2+3+3+6+5+2+2+3 = 28 variants; shared: the BN baseline (in batchnorm, lr, l2, l1-vs-l2, activation),
    # no-BN crop+flip (augmentation, batchnorm), no-aug no-BN (augmentation, lr-decay), lr 0.05/0.1 with BN
    # (lr-with-bn, lr): 3 + 3 (lr no BN) + 3 (lr BN) + 3 (0.001, 0.005, 1) + 4 (L2) + L1 + Swish + 2 decays = 20
    points = spec.points("quick")
    assert len(points) == 28 and len(spec.unique_points("quick")) == 20
    assert points[("batchnorm", "BN")] == points[("l2", "L2 1e-4")] == points[("activation", "ReLU")]
    assert points[("augmentation", "no augmentation")] == points[("lr-decay", "none")]
    swish = points[("activation", "Swish")].settings
    assert swish["model_opts.act"] == "swish" and swish["model_opts.bn"] is True and swish["lr"] == 0.01
    assert points[("lr", "lr 1")].settings["lr"] == 1.0
    # quick caps the epochs, full keeps the report's 30
    assert points[("lr", "lr 1")].settings["epochs"] == 2
    assert spec.points("full")[("lr", "lr 1")].settings["epochs"] == 30
    reports = {v.label: v.report for v in spec.experiments[4].variants}
    assert reports == {"lr 0.001": 0.6830, "lr 0.005": 0.7288, "lr 0.01": 0.7400, "lr 0.05": 0.7314,
                       "lr 0.1": 0.7012, "lr 1": 0.1054}
    assert spec.experiments[6].figures == ("curves", "weights")


def test_percent_presets_and_last_epoch_metric(labs_dir):
    spec = load_lab("ece590-lenet5", labs_dir)
    assert spec.ours == "last"  # the report quotes accuracy at epoch 29
    base = spec.points("full")[("augmentation", "lab policy")].settings
    assert (base["model"], base["augment"], base["nesterov"], base["step_epochs"], base["gamma"]) == \
        ("lenet5", "lab", True, 2, 0.96)
    aug = spec.experiments[0]
    assert [v.report for v in aug.variants] == [pytest.approx(0.6404), pytest.approx(0.6770)]
    cmpe = load_lab("cmpe597-cnn3", labs_dir)
    assert {v.label: round(v.report, 4) for v in cmpe.experiments[0].variants} == \
        {"Adam": 0.83, "SGD momentum 0.9": 0.8003, "Adagrad": 0.7192, "RMSprop": 0.8206}
    assert cmpe.base["early_stop_patience"] == 5 and cmpe.experiments[-1].figures == ("curves", "tsne")


def preset(**changes) -> dict:
    data = {
        "title": "t", "source": "s", "metric": "val accuracy",
        "base": {"model": "simplenn", "epochs": 1, "schedule": "constant"},
        "scales": {"quick": {"data": {"competition": "digits"}}, "full": {"data": {"competition": "digits"}}},
        "experiments": [{"name": "e", "variants": [{"label": "a", "set": {}, "report": 0.5}]}],
    }
    data.update(changes)
    return data


@pytest.mark.parametrize("changes, message", [
    ({"colour": 1}, r"lab\.yaml: unknown key colour"),
    ({"unit": "permille"}, r"unit 'permille' must be one of fraction, percent"),
    ({"base": {"model": "simplenn", "lr": "fast"}}, r"config key 'lr' expects a number, got 'fast'"),
    ({"base": {"model": "simplenn", "model_opts": {"width": 2}}}, r"model 'simplenn' has no option width"),
    ({"base": {"model": "simplenn", "run": "x"}}, r"run is set by the lab itself"),
    ({"experiments": [{"name": "e", "claim": "c", "variants": [{"label": "a"}]}]},
     r"experiments\[0\] \(e\): a claim compares two variants, this experiment has 1"),
    ({"experiments": [{"name": "e", "figures": ["pie"], "variants": [{"label": "a"}]}]},
     r"figure pie must be one of curves, weights, tsne"),
    ({"experiments": [{"name": "e", "variants": [{"label": "a", "report": "high"}]}]},
     r"variants\[0\]: report must be a number or null"),
    ({"scales": {"quick": {"data": {"competition": "digits"}}}}, r"missing scale full"),
])
def test_preset_errors_are_one_line_naming_the_file(tmp_path, changes, message):
    with pytest.raises(PipelineError, match=message):
        parse_lab("lab", tmp_path / "lab.yaml", preset(**changes))


def test_unknown_lab_lists_the_presets(labs_dir):
    with pytest.raises(PipelineError, match=r"no such lab; labs: cmpe597-cnn3, cs535-cnn4"):
        load_lab("ece999", labs_dir)


# -- trend lines -----------------------------------------------------------------------------------

def outcome(label, report, accs):
    return results.Outcome(label, report, "p", accs=list(accs))


def test_trend_line_of_a_claim():
    exp = Experiment("aug", "Aug", [], claim="augmentation raised val accuracy")
    agree = [outcome("none", 0.657, [0.50, 0.52]), outcome("crop+flip", 0.7286, [0.60, 0.61])]
    assert results.trend(exp, agree) == "augmentation raised val accuracy: report yes, ours yes (agree)"
    disagree = [outcome("none", 0.657, [0.60]), outcome("crop+flip", 0.7286, [0.55])]
    assert results.trend(exp, disagree) == "augmentation raised val accuracy: report yes, ours no (disagree)"
    noisy = [outcome("none", 0.657, [0.50, 0.60]), outcome("crop+flip", 0.7286, [0.56, 0.57])]
    assert results.trend(exp, noisy).endswith("(agree); our difference is within the seed spread")
    tie = [outcome("none", 0.657, [0.44]), outcome("crop+flip", 0.7286, [0.44])]
    assert results.trend(exp, tie) == "augmentation raised val accuracy: report yes, ours tie"
    pending = [outcome("none", 0.657, []), outcome("crop+flip", 0.7286, [0.6])]
    assert results.trend(exp, pending) == "augmentation raised val accuracy: report yes, ours -"
    # the agreement count: a claim counts once it is measured either way, a tie or a pending side not at all
    assert [results.claims(exp, o) for o in (agree, disagree, noisy, tie, pending)] == \
        [(1, 1), (0, 1), (1, 1), (0, 0), (0, 0)]


def test_trend_line_of_an_ordering():
    exp = Experiment("lr", "lr", [])
    rows = [outcome("lr 0.001", 0.683, [0.4]), outcome("lr 0.01", 0.74, [0.6]), outcome("lr 1", 0.1054, [0.5])]
    # pairs: (0.001, 0.01) agree, (0.001, 1) report 0.683 > 0.1054 but ours 0.4 < 0.5, (0.01, 1) agree
    assert results.trend(exp, rows) == "best: report lr 0.01; ours lr 0.01; pairwise order agrees on 2/3 pairs"
    assert results.trend(exp, rows[1:2]) == "report 74.00, ours 60.00"  # one variant: the two numbers
    assert results.claims(exp, rows) == (2, 3) and results.claims(exp, rows[1:2]) == (0, 0)
    # a disagreement by less than a seed's spread, on one seed, is a close call; by 10 points it is not
    assert results.close_calls(exp, rows) == []
    near = [outcome("lr 0.01", 0.74, [0.600]), outcome("lr 0.05", 0.7314, [0.605])]
    assert results.close_calls(exp, near) == ["lr: lr 0.01 vs lr 0.05 (0.50 points apart)"]
    near[0].accs.append(0.598)
    near[1].accs.append(0.607)
    assert results.close_calls(exp, near) == []  # two seeds each: the ordering stands as measured
    no_report = [outcome("a", None, [0.4]), outcome("b", None, [0.6])]
    assert results.trend(exp, no_report) == "best ours b; the report gives no numbers here"


def test_ours_cell_shows_mean_spread_and_divergence():
    o = results.Outcome("x", 0.5, "p", accs=[0.60, 0.64, 0.1], diverged=1)
    assert results.ours_cell(o) == "44.67 ± 27.00 (n=3, 1 diverged)"
    assert results.ours_cell(results.Outcome("y", 0.5, "p", pending=2)) == "pending"


# -- running a lab on tiny data -------------------------------------------------------------------

TINY = {
    "title": "Tiny lab", "source": "a test", "metric": "val accuracy", "unit": "percent",
    "base": {"model": "lenet5", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
             "batch_size": 64, "epochs": 30, "schedule": "constant", "augment": "none", "workers": 0,
             "save_every": 1, "log_every": 5},
    "scales": {"quick": {"data": {"competition": "digits", "limit": 300}, "cap": {"epochs": 2}, "seeds": 2},
               "full": {"data": {"competition": "digits"}, "seeds": 1}},
    "experiments": [
        {"name": "bn", "title": "BatchNorm", "claim": "BN raised val accuracy", "variants": [
            {"label": "no BN", "set": {}, "report": 60.0}, {"label": "BN", "set": {"model_opts": {"bn": True}},
                                                             "report": 70.0}]},
        {"name": "l1-vs-l2", "figures": ["curves", "weights"], "variants": [
            {"label": "L2", "set": {}}, {"label": "L1", "set": {"weight_decay": 0.0, "l1": 1e-3}}]},
        {"name": "tsne", "figures": ["tsne"], "variants": [{"label": "no BN", "set": {}, "report": 60.0}]},
    ],
}


@pytest.fixture
def tiny_lab(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the data stage writes data/digits here
    labs = tmp_path / "labs"
    labs.mkdir()
    (labs / "tiny.yaml").write_text(yaml.safe_dump(TINY), encoding="utf-8")
    return labs


def test_quick_lab_writes_ours_vs_report_with_trends_and_figures(tiny_lab, tmp_path, capsys):
    main(["lab", "tiny", "--scale", "quick", "--labs-dir", str(tiny_lab), "--sweeps-dir", "sweeps"])
    folder = tmp_path / "sweeps" / "lab-tiny-quick"
    md = (folder / "results.md").read_text()
    assert "| variant | report | ours | ours - report | epochs | seconds | runs |" in md
    # 3 distinct configurations (no BN is shared by bn, l1-vs-l2's L2 and tsne), 2 seeds each
    assert len(list((folder / "runs").iterdir())) == 6
    bn_row = next(line for line in md.splitlines() if line.startswith("| no BN |"))
    assert re.match(r"\| no BN \| 60\.00 \| \d+\.\d\d ± \d+\.\d\d \(n=2\) \| [+-]\d+\.\d\d \| 2/2 \|", bn_row)
    assert re.search(r"Trend: BN raised val accuracy: report yes, ours (yes|no) \((agree|disagree)\)", md)
    assert "Trend: best ours L" in md and "the report gives no numbers here" in md
    assert "Machine: " in md and "cores" in md
    # bn's claim (l1-vs-l2 has no report numbers, tsne one variant); a tie at 200 val images counts nothing
    assert re.search(r"\*\*Agreement: ([01] of 1 claims agree with the report|no claim measured yet)", md)
    page = (folder / "report.html").read_text()
    for figure in ("bn-curves.png", "l1-vs-l2-curves.png", "l1-vs-l2-weights.png", "tsne-tsne-no-bn.png"):
        assert f"lab-tiny-quick/{figure}" in page, figure
    assert page.count("data:image/png;base64,") == 4
    assert "Trend:</b> BN raised val accuracy: report yes" in page
    csv_text = (folder / "results.csv").read_text().splitlines()
    assert csv_text[0].startswith("experiment,variant,report,ours_mean,ours_spread,n")
    assert csv_text[1].startswith("bn,no BN,0.6000,")
    assert (folder / "manifest.json").is_file() and (folder / "lab.yaml").is_file()
    assert "results.md" in capsys.readouterr().out


def quick_lab(spec) -> LabRun:
    """The tiny lab at quick scale in the current folder: sweeps/ for work, results/ for results."""
    return LabRun(spec, "quick", lab_folder(spec.name, "quick", "sweeps"), prepare_data(spec, "quick", None), {},
                  spec.scale("quick").seeds, Path("results"))


def test_killed_lab_resumes_where_it_stopped(tiny_lab, tmp_path):
    from pipeline.train.engine import run_training

    spec = load_lab("tiny", tiny_lab)
    calls = []

    def killed_after_one_epoch(cfg, on_epoch_end=None):
        calls.append((cfg.run, cfg.resume))

        def hook(epoch, row):
            if len(calls) == 1 and epoch == 1:
                raise KeyboardInterrupt
        return run_training(cfg, on_epoch_end=hook)

    lab = quick_lab(spec)
    with pytest.raises(KeyboardInterrupt):
        run_lab(lab, train_fn=killed_after_one_epoch)
    first = calls[0][0]
    assert run_lab(lab, train_fn=killed_after_one_epoch) == 6
    # the interrupted unit continues from last.pt; nothing finished is trained again
    assert calls[1] == (first, True)
    assert len(calls) == 1 + 6 and len({run for run, _ in calls}) == 6
    metrics = (lab.runs_dir / first / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in metrics[1:]] == ["1", "2"]
    collected = results.collect(lab)
    assert all(len(o.accs) == 2 and o.pending == 0 for outs in collected.values() for o in outs)


def test_results_outlive_the_working_folder(tiny_lab, tmp_path):
    """A clean checkout holds the committed result files and no sweeps/: nothing retrains, the tables
    and figures come back from the result files alone; another seed count trains only the new seeds."""
    import shutil

    spec = load_lab("tiny", tiny_lab)
    main(["lab", "tiny", "--scale", "quick", "--labs-dir", str(tiny_lab), "--results-dir", "results"])
    before = (tmp_path / "sweeps" / "lab-tiny-quick" / "results.md").read_text()
    files = sorted((tmp_path / "results" / "tiny-quick").glob("u-*.json"))
    assert len(files) == 6  # 3 configurations x 2 seeds
    record = json.loads(files[0].read_text())
    assert record["state"] == "complete" and record["settings_hash"] in record["unit"]
    assert [r["epoch"] for r in record["epochs"]] == [1, 2] and record["git_sha"] and record["machine"]
    assert record["data"]["competition"] == "digits" and "data" not in record["settings"]
    shutil.rmtree(tmp_path / "sweeps")
    calls = []

    def counted(cfg, on_epoch_end=None):
        from pipeline.train.engine import run_training

        calls.append(cfg.seed)
        return run_training(cfg, on_epoch_end=on_epoch_end)

    assert run_lab(quick_lab(spec), train_fn=counted) == 0 and calls == []
    main(["lab", "tiny", "--scale", "quick", "--labs-dir", str(tiny_lab), "--results-dir", "results"])
    folder = tmp_path / "sweeps" / "lab-tiny-quick"
    assert not (folder / "runs").exists()  # nothing trained, yet the whole page is back
    assert (folder / "results.md").read_text() == before
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # curves x2, weights, t-SNE from the JSONs
    lab3 = quick_lab(spec)
    lab3.seeds = 3
    assert run_lab(lab3, train_fn=counted) == 3 and calls == [2, 2, 2]
    closer = quick_lab(spec)  # a fourth seed for one variant only
    closer.seeds, closer.only = 4, ("bn:BN",)
    assert run_lab(closer, train_fn=counted) == 1 and calls[3:] == [3]
    table = {o.label: o for o in results.collect(quick_lab(spec))["bn"]}  # the preset's 2 seeds + what exists
    assert (len(table["BN"].accs), len(table["no BN"].accs), table["BN"].pending) == (4, 3, 0)
    closer.only = ("bn:batch 512",)
    with pytest.raises(PipelineError, match=r"--only bn:batch 512: not an experiment \(or EXPERIMENT:variant\)"):
        closer.check_only()


def test_a_machine_setting_keeps_the_result_an_epoch_count_does_not(tiny_lab):
    spec = load_lab("tiny", tiny_lab)
    point = spec.unique_points("quick")[0]
    data = {"competition": "digits", "counts": {}, "classes": list("0123456789")}

    def name(overrides):
        return store.Unit(point, 0, store.unit_settings(point, overrides), data).name

    assert name({}) == name({"device": "cuda", "workers": 4, "precision": "bf16"})
    assert name({}) != name({"epochs": 1})
    assert name({}) != store.Unit(point, 0, store.unit_settings(point, {}), {**data, "competition": "x"}).name


def test_diverged_runs_count_as_chance(tiny_lab, tmp_path):
    from pipeline.train.epoch import NonFiniteLoss

    spec = load_lab("tiny", tiny_lab)

    def diverges(cfg, on_epoch_end=None):
        if cfg.model_opts.get("bn"):
            raise NonFiniteLoss(1, 3, float("nan"))
        return {"best_val_acc": 0.5, "best_epoch": 1}

    lab = quick_lab(spec)
    run_lab(lab, train_fn=diverges)
    bn = {o.label: o for o in results.collect(lab)["bn"]}["BN"]
    assert bn.accs == [0.1, 0.1] and bn.diverged == 2  # digits: 10 classes
    assert results.ours_cell(bn) == "10.00 ± 0.00 (n=2, 2 diverged)"


def test_a_run_that_really_diverges_is_a_result_at_chance(tiny_lab, tmp_path):
    """Through the real engine (which adds what it kept and what to try to the error): a diverged
    unit is written as a result, not retried as a failure."""
    spec = load_lab("tiny", tiny_lab)
    lab = quick_lab(spec)
    lab.seeds, lab.only, lab.overrides = 1, ("bn:no BN",), {"lr": 1e6, "momentum": 0.99}
    assert run_lab(lab) == 1
    (result,) = store.load_results(lab.results).values()
    assert result.state == store.DIVERGED and result.record["error"].startswith("loss became")
    assert "stopped (no checkpoint was written)" in result.record["error"]
    assert {o.label: o for o in results.collect(lab)["bn"]}["no BN"].accs == [0.1]


def test_a_failed_unit_is_shown_and_tried_again(tiny_lab, tmp_path):
    spec = load_lab("tiny", tiny_lab)

    def breaks(cfg, on_epoch_end=None):
        raise RuntimeError("out of memory")

    lab = quick_lab(spec)
    run_lab(lab, train_fn=breaks)
    no_bn = results.collect(lab)["bn"][0]
    assert no_bn.accs == [] and no_bn.failed == ["RuntimeError: out of memory"] * 2
    assert "Errors:" in results.results_markdown(lab, results.collect(lab), "m")
    trained = []

    def works(cfg, on_epoch_end=None):
        trained.append(cfg.run)
        return {"best_val_acc": 0.5, "best_epoch": 1}

    assert run_lab(lab, train_fn=works) == 6 and len(set(trained)) == 6  # the same queue, its failures requeued
    no_bn = results.collect(lab)["bn"][0]
    assert no_bn.accs == [0.5, 0.5] and no_bn.failed == []


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits-data")
    main(["data", "--competition", "digits", "--limit", "200", "--data-root", str(root)])
    return root / "digits"


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_runs_end_to_end_on_tiny_data(name, labs_dir, tiny_digits, tmp_path):
    """The first configuration of each preset, one epoch on 180 digits: models, optimizers, policies all build."""
    main(["lab", name, "--scale", "quick", "--data", str(tiny_digits), "--labs-dir", str(labs_dir),
          "--sweeps-dir", str(tmp_path), "--results-dir", str(tmp_path / "results"), "--set", "epochs=1",
          "--set", "workers=0", "--max-units", "1", "--seeds", "1", "--no-figures"])
    rows = (tmp_path / f"lab-{name}-quick" / "results.csv").read_text().splitlines()[1:]
    finished = [r for r in rows if r.split(",")[5] == "1"]  # column n: finished seeds
    assert finished, rows


def test_readme_lab_tables_match_the_committed_results(repo_root, labs_dir, monkeypatch, tmp_path):
    """Each lab's README table is what its committed result files give (no data, no retraining);
    a lab still running here adds untracked files, which do not count until committed."""
    import shutil
    import subprocess

    from pipeline.lab.run import data_folder

    monkeypatch.chdir(repo_root)
    tracked = subprocess.run(["git", "ls-files", "results/labs"], capture_output=True, text=True, cwd=repo_root)
    committed = tmp_path / "labs"
    for rel in tracked.stdout.split() if tracked.returncode == 0 else []:
        (committed / Path(rel).parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(repo_root / rel, committed / Path(rel).parent.name)
    if tracked.returncode != 0:  # not a git checkout: the files as they are
        committed = repo_root / "results" / "labs"
    text = (repo_root / "README.md").read_text(encoding="utf-8")
    shown = [name for name in PRESETS if f"<!-- lab:{name}:start -->" in text]
    assert shown, "no lab table in README.md"
    for name in shown:
        spec = load_lab(name, labs_dir)
        lab = LabRun(spec, "full", tmp_path / f"lab-{name}", str(data_folder(spec, "full")[0]), {},
                     spec.scale("full").seeds, committed)
        if not lab.results.is_dir():
            assert f"<!-- lab:{name}:start -->\n<!-- lab:{name}:end -->" in text, f"{name}: a table but no results"
            continue
        block = results.readme_block(lab, results.collect(lab))
        assert results.replace_block(text, name, block, "README.md") == text, \
            f"README.md's {name} table is stale: make lab LAB={name} SCALE=full LAB_ARGS='--report-only --readme README.md'"


# -- Fashion-MNIST from local idx files (no download on this machine) ---------------------------------

def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_preset_runs_on_local_idx_files(repo_root, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    raw = tmp_path / "fmnist-raw"
    raw.mkdir()
    for prefix, n in (("train", 200), ("t10k", 40)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 28, 28)) + labels[:, None, None] * 20  # brightness tells the class
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx_bytes(images, 0x0803))
        (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx_bytes(labels, 0x0801))
    monkeypatch.chdir(tmp_path)
    main(["data", "--competition", "fashion-mnist", "--source", str(raw)])
    main(["lab", "cs5787-lenet5-fmnist", "--scale", "full", "--data", "data/fashion-mnist",
          "--labs-dir", str(repo_root / "configs" / "labs"), "--set", "epochs=1", "--set", "workers=0",
          "--max-units", "2", "--no-figures"])
    md = (tmp_path / "sweeps" / "lab-cs5787-lenet5-fmnist" / "results.md").read_text()
    baseline = next(line for line in md.splitlines() if line.startswith("| baseline |"))
    assert re.match(r"\| baseline \| 89\.21 \| \d+\.\d\d ± \d+\.\d\d \(n=2\) \|", baseline)
    assert "| BN | 90.24 | pending (2 pending) |" not in md and "| BN | 90.24 | pending |" in md
    assert "data/fashion-mnist" in md


# -- make lab --------------------------------------------------------------------------------------

def test_make_lab_runs_the_lab_command(repo_root, tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    (tmp_path / "stamp").touch()  # stands in for the installed venv
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def make(*args):
        return subprocess.run(["make", "--no-print-directory", "-C", str(repo_root), *args, f"PY={sys.executable}",
                               f"VENV_STAMP={tmp_path}/stamp", f"LOCAL_MK={tmp_path}/local.mk"],
                              capture_output=True, text=True, env=env)

    dry = make("-n", "lab", "LAB=ece661-simplenn", "SCALE=full")
    assert dry.returncode == 0 and "-m pipeline lab ece661-simplenn --scale full" in dry.stdout
    assert "--scale quick" in make("-n", "lab", "LAB=ece661-simplenn").stdout  # quick by default
    assert "--scale full --jobs 2" in make("-n", "lab", "LAB=ece661-simplenn", "SCALE=full", "JOBS=2").stdout
    listed = make("lab", "LAB_ARGS=--list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split(":")[0] for line in listed.stdout.splitlines() if line and not line.startswith(
        ("make", sys.executable, " "))][-len(PRESETS):] == PRESETS
    missing = make("lab")
    assert missing.returncode != 0 and "give LAB=<name> (cmpe597-cnn3 cs535-cnn4" in missing.stderr
