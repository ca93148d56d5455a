"""Ensemble maths on hand-made logits, greedy selection, refusals, and the CSV it writes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.artifacts import sha256_file
from pipeline.ensemble import EnsembleConfig, combine, greedy_select, run_ensemble
from pipeline.errors import PipelineError
from pipeline.predict import PredictConfig, run_predict
from pipeline.submission import sidecar_path
from helpers_predict import make_data, make_run, read_csv, run_cli, write_predictions_of

# Logits chosen as log-probabilities, so softmax gives the probabilities back exactly.
A = np.log([[0.80, 0.15, 0.05]])
B = np.log([[0.01, 0.34, 0.65]])


def test_prob_and_logit_means_disagree_as_computed_by_hand():
    # prob: arithmetic mean of probabilities
    #   class 0 (0.80 + 0.01) / 2 = 0.405, class 1 (0.15 + 0.34) / 2 = 0.245, class 2 (0.05 + 0.65) / 2 = 0.35
    #   -> class 0
    # logit: mean of log-probabilities = log of the geometric mean, renormalised by the softmax
    #   class 0 sqrt(0.80 * 0.01) = 0.08944, class 1 sqrt(0.15 * 0.34) = 0.22583, class 2 sqrt(0.05 * 0.65) = 0.18028
    #   sum 0.49555 -> 0.18049, 0.45572, 0.36380 -> class 1
    prob = combine("prob", [A, B], [1, 1])
    logit = combine("logit", [A, B], [1, 1])
    np.testing.assert_allclose(prob, [[0.405, 0.245, 0.35]], atol=1e-9)
    np.testing.assert_allclose(logit, [[0.18049, 0.45572, 0.36380]], atol=1e-4)
    assert prob.argmax(1).tolist() == [0] and logit.argmax(1).tolist() == [1]
    # weights 3:1 (prob): class 0 (3 * 0.80 + 0.01) / 4 = 0.6025, class 1 (0.45 + 0.34) / 4 = 0.1975, class 2 0.2
    np.testing.assert_allclose(combine("prob", [A, B], [3, 1]), [[0.6025, 0.1975, 0.2]], atol=1e-9)
    with pytest.raises(PipelineError, match="non-negative"):
        combine("prob", [A, B], [1, -1])


def one_hot_logits(predicted, confidence):
    """Logit `confidence` on the predicted class, 0 elsewhere (3 classes)."""
    out = np.zeros((len(predicted), 3))
    out[np.arange(len(predicted)), predicted] = confidence
    return out


LABELS = np.array([0, 1, 2, 0])


def test_greedy_picks_the_complementary_member_and_never_the_bad_one():
    good = one_hot_logits([0, 1, 1, 0], 3.0)             # 3/4 right, wrong on sample 2
    good[2] = [0.0, 0.5, 0.0]                              # ... and only weakly wrong there
    fixer = one_hot_logits([1, 0, 2, 1], 0.5)              # 1/4 right, weakly wrong elsewhere
    fixer[2] = [0.0, 0.0, 3.0]                             # confidently right on sample 2
    bad = one_hot_logits((LABELS + 1) % 3, 3.0)            # confidently wrong everywhere
    members = [bad, fixer, good]
    # Round 1 takes the best single member (good, 3/4); round 2 the one that fixes sample 2.
    assert greedy_select(members, LABELS, "prob", rounds=1).tolist() == [0, 0, 1]
    assert greedy_select(members, LABELS, "prob", rounds=2).tolist() == [0, 1, 1]
    counts = greedy_select(members, LABELS, "prob", rounds=20)
    assert counts[0] == 0 and counts[1] >= 1 and counts[2] >= 1
    assert (combine("prob", members, counts).argmax(1) == LABELS).all()


def test_greedy_stops_when_nothing_improves():
    perfect = one_hot_logits(LABELS, 3.0)
    noise = one_hot_logits([1, 2, 0, 1], 1.0)
    # Adding perfect again changes nothing; adding noise lowers p(true class): neither improves.
    assert greedy_select([noise, perfect], LABELS, "logit", rounds=20).tolist() == [0, 1]


@pytest.fixture
def two_runs(tmp_path):
    data = make_data(tmp_path / "data")
    runs = tmp_path / "runs"
    rng = np.random.default_rng(1)
    write_predictions_of(runs, "a", data, rng.normal(size=(12, 3)), rng.normal(size=(11, 3)))
    write_predictions_of(runs, "b", data, rng.normal(size=(12, 3)), rng.normal(size=(11, 3)))
    return runs, data


def test_ensemble_writes_the_sample_order_and_prints_accuracies(two_runs, capsys):
    runs, data = two_runs
    # Make test sample k's prediction hand-checkable: both members put A/B on every test row,
    # so prob mean -> "cat" (class 0) and logit mean -> "dog" (class 1) on every row.
    for run, logits in (("a", A), ("b", B)):
        val = np.load(runs / run / "val_logits.npy")
        write_predictions_of(runs, run, data, val, np.repeat(logits, 11, axis=0))
    out = runs.parent / "sub" / "predictions.csv"
    code, printed, err = run_cli(["ensemble", "a", "b", "--runs-dir", str(runs), "--out", str(out)], capsys)
    assert code == 0, err
    sample = read_csv(data / "sample_submission.csv")
    rows = read_csv(out)
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == [r[0] for r in sample[1:]]
    assert {r[1] for r in rows[1:]} == {"cat"}
    assert out.read_bytes().count(b"\r") == 0 and len(rows) == 12
    assert "ensemble" in printed and printed.count("val acc") == 1 and "a " in printed and "b " in printed

    code, _, err = run_cli(["ensemble", "a", "b", "--runs-dir", str(runs), "--out", str(out),
                            "--method", "logit"], capsys)
    assert code == 0, err
    assert {r[1] for r in read_csv(out)[1:]} == {"dog"}
    info = json.loads(sidecar_path(out).read_text())
    assert info["method"] == "logit" and info["weights"] == [1.0, 1.0] and info["runs"] == ["a", "b"]
    assert info["predictions"]["sha256"] == sha256_file(out)
    assert info["data"]["root"] == str(data) and info["data"]["competition"] == "tiny"
    labels = np.load(runs / "a" / "val_labels.npy")
    val = [np.load(runs / r / "val_logits.npy") for r in ("a", "b")]
    expected = (combine("logit", val, [1, 1]).argmax(1) == labels).mean()
    assert info["val_accuracy"] == pytest.approx(expected)
    assert [m["val_accuracy"] for m in info["members"]] == pytest.approx([(v.argmax(1) == labels).mean() for v in val])


def test_index_label_form_writes_integers(tmp_path):
    data = make_data(tmp_path / "data", label_form="index")
    runs = tmp_path / "runs"
    test_logits = np.tile([[0.0, 0.0, 5.0]], (11, 1))  # class 2 everywhere
    test_logits[3] = [0.0, 5.0, 0.0]                    # class 1 on the 4th test id of test_ids.npy
    write_predictions_of(runs, "a", data, np.zeros((12, 3)), test_logits)
    out = tmp_path / "predictions.csv"
    run_ensemble(EnsembleConfig(runs=["a"], runs_dir=str(runs), out=str(out)))
    test_ids = np.load(data / "test_ids.npy").tolist()
    expected = "ID,Labels\n" + "".join(f"{i},{1 if i == test_ids[3] else 2}\n" for i in test_ids)
    assert out.read_text() == expected  # the sample's header and (unsorted) id order, integer labels


def test_sample_order_wins_over_test_ids_order(two_runs):
    runs, data = two_runs
    # A run whose test ids are stored in another order still yields the sample's row order.
    test_ids = np.load(data / "test_ids.npy")
    order = np.argsort(test_ids)
    logits = np.eye(3)[np.arange(11) % 3] * 4
    write_predictions_of(runs, "c", data, np.zeros((12, 3)), logits[order], test_ids=test_ids[order])
    out = runs / "p.csv"
    run_ensemble(EnsembleConfig(runs=["c"], runs_dir=str(runs), out=str(out)))
    names = ["cat", "dog", "frog"]
    assert read_csv(out)[1:] == [[i, names[k % 3]] for k, i in enumerate(test_ids.tolist())]


def test_refuses_mismatched_val_split_or_test_ids(two_runs, capsys):
    runs, data = two_runs
    val_ids = np.load(runs / "a" / "val_ids.npy").copy()
    val_ids[0] = "someone-else"
    write_predictions_of(runs, "other-split", data, np.zeros((12, 3)), np.zeros((11, 3)), val_ids=val_ids)
    code, _, err = run_cli(["ensemble", "a", "other-split", "--runs-dir", str(runs)], capsys)
    assert code == 2 and "runs 'a' and 'other-split' differ in val split" in err
    test_ids = np.load(data / "test_ids.npy").copy()
    test_ids[[0, 1]] = test_ids[[1, 0]]
    write_predictions_of(runs, "other-test", data, np.zeros((12, 3)), np.zeros((11, 3)), test_ids=test_ids)
    with pytest.raises(PipelineError, match="runs 'a' and 'other-test' differ in test ids"):
        run_ensemble(EnsembleConfig(runs=["a", "other-test"], runs_dir=str(runs), out=str(runs / "x.csv")))
    assert not (runs / "x.csv").exists()


def test_refuses_stale_or_missing_predictions_and_bad_options(two_runs):
    runs, _ = two_runs
    out = str(runs / "x.csv")
    with pytest.raises(PipelineError, match="predict.json: not found"):
        run_ensemble(EnsembleConfig(runs=["a", "missing"], runs_dir=str(runs), out=out))
    with pytest.raises(PipelineError, match="--weights has 1 values for 2 runs"):
        run_ensemble(EnsembleConfig(runs=["a", "b"], runs_dir=str(runs), weights=[1.0], out=out))
    with pytest.raises(PipelineError, match="either --weights or --select"):
        run_ensemble(EnsembleConfig(runs=["a", "b"], runs_dir=str(runs), weights=[1, 2], select="greedy", out=out))
    np.save(runs / "b" / "test_logits.npy", np.ones((11, 3), np.float32))  # not what predict.json recorded
    with pytest.raises(PipelineError, match="does not match its sha256"):
        run_ensemble(EnsembleConfig(runs=["a", "b"], runs_dir=str(runs), out=out))


def test_greedy_cli_records_counts_as_weights(two_runs, capsys):
    runs, data = two_runs
    labels = np.load(runs / "a" / "val_labels.npy")
    perfect = np.eye(3)[labels] * 5
    write_predictions_of(runs, "oracle", data, perfect, np.zeros((11, 3)))
    out = runs / "g.csv"
    code, printed, err = run_cli(["ensemble", "a", "oracle", "b", "--runs-dir", str(runs), "--select", "greedy",
                                  "--rounds", "5", "--out", str(out)], capsys)
    assert code == 0, err
    info = json.loads(sidecar_path(out).read_text())
    assert info["weights"] == [0.0, 1.0, 0.0] and info["runs"] == ["oracle"] and info["val_accuracy"] == 1.0


def test_predict_then_ensemble_end_to_end(tmp_path):
    data = make_data(tmp_path / "data")
    runs = tmp_path / "runs"
    for seed, run in enumerate(("m1", "m2")):
        make_run(runs, run, data, seed=seed)
        run_predict(PredictConfig(run=run, runs_dir=str(runs), tta=["flip"], precision="fp32"))
    out = tmp_path / "predictions.csv"
    result = run_ensemble(EnsembleConfig(runs=["m1", "m2"], runs_dir=str(runs), out=str(out)))
    val = [np.load(runs / r / "val_logits.npy") for r in ("m1", "m2")]
    labels = np.load(runs / "m1" / "val_labels.npy")
    assert result["val_accuracy"] == pytest.approx((combine("prob", val, [1, 1]).argmax(1) == labels).mean())
    assert len(read_csv(out)) == 12


def test_crossfit_exposes_a_greedy_blend_that_only_fits_val():
    from pipeline.ensemble import crossfit_greedy_accuracy

    # Member A is right (margin 2) on the even rows and wrong (margin 1) on the odd ones; B the reverse.
    labels = np.zeros(8, dtype=np.int64)
    even = np.arange(8) % 2 == 0
    a = np.where(even[:, None], [[2.0, 0.0]], [[0.0, 1.0]])
    b = np.where(even[:, None], [[0.0, 1.0]], [[2.0, 0.0]])
    counts = greedy_select([a, b], labels, "prob", rounds=5)
    assert (combine("prob", [a, b], counts).argmax(1) == labels).mean() == 1.0  # A + B fits all of val
    # Fitted on the even rows greedy keeps A alone, which is wrong on every odd row; and vice versa.
    assert crossfit_greedy_accuracy([a, b], labels, "prob", rounds=5) == 0.0


def test_ensemble_cli_is_generated_from_its_config_and_reads_a_config_file(two_runs, capsys, tmp_path):
    runs, data = two_runs
    out = tmp_path / "p.csv"
    config = tmp_path / "blend.yaml"
    config.write_text(f"method: logit\nweights: [3, 1]\nout: {out}\nruns_dir: {runs}\n")
    code, _, err = run_cli(["ensemble", "a", "b", "--config", str(config)], capsys)
    assert code == 0, err
    info = json.loads(sidecar_path(out).read_text())
    assert info["method"] == "logit" and info["weights"] == [3.0, 1.0]
    code, _, err = run_cli(["ensemble", "a", "b", "--config", str(config), "--weights", "1,1"], capsys)
    assert code == 0 and json.loads(sidecar_path(out).read_text())["weights"] == [1.0, 1.0]  # flags win
    config.write_text("rounds: many\n")
    code, _, err = run_cli(["ensemble", "a", "b", "--config", str(config)], capsys)
    assert code == 2 and err.strip().splitlines() == [f"error: {config}: config key 'rounds' expects an integer, "
                                                      "got 'many'"]
    code, _, err = run_cli(["ensemble", "a", "--method", "median"], capsys)
    assert code == 2 and "'median' is not one of 'logit', 'prob'" in err
    code, out_text, _ = run_cli(["ensemble", "--help"], capsys)
    assert "--rounds INTEGER" in out_text and "[default: 20]" in out_text and "--config FILE" in out_text
