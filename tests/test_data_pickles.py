"""CIFAR pickles are read by a restricted unpickler: real formats load, anything else is refused."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers_data import (CIFAR_CLASSES, EvilPickle, cifar_batch, cifar_images, course_test_pickle, nhwc_to_rows,
                          py2_pickle)

from pipeline.data import pickles
from pipeline.errors import PipelineError


def test_python2_batch_reads_like_the_real_files():
    images = cifar_images(4, seed=0)
    data = cifar_batch(images, [3, 1, 4, 1], "training batch 1 of 5")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in data  # the global the real batches name
    got, labels = pickles.read_batch(data, "data_batch_1")
    np.testing.assert_array_equal(got, images)  # rows were CHW planes; back to HWC exactly
    assert labels.dtype == np.int64 and labels.tolist() == [3, 1, 4, 1]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_pickles_of_every_protocol(protocol):
    images = cifar_images(2, seed=1)
    batch = {b"batch_label": b"x", b"labels": [0, 9], b"data": nhwc_to_rows(images), b"filenames": [b"a", b"b"]}
    got, labels = pickles.read_batch(pickle.dumps(batch, protocol=protocol), "b")
    np.testing.assert_array_equal(got, images)
    assert labels.tolist() == [0, 9]


def test_meta_gives_class_names():
    data = py2_pickle({"label_names": CIFAR_CLASSES, "num_cases_per_batch": 10000, "num_vis": 3072})
    assert pickles.read_meta(data, "batches.meta") == CIFAR_CLASSES


def test_malicious_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": EvilPickle(marker), b"labels": []}, protocol=2)
    with pytest.raises(PipelineError, match=r"^data_batch_1: refused to unpickle: it asks for '(posix|os)\.system'"):
        pickles.read_batch(payload, "data_batch_1")
    assert not marker.exists()
    # The same payload through plain pickle would have run the command: the test can fail.
    pickle.loads(payload)
    assert marker.exists()


@pytest.mark.parametrize(
    "payload, problem",
    [
        (pickle.dumps(np.array([1, "a"], dtype=object), protocol=2), "not a plain number/bytes type"),
        (pickle.dumps({b"data": np.zeros(2, [("a", "u1"), ("b", "f4")])}, protocol=2), "plain"),
        (pickle.dumps(np.ma.masked_array([1, 2]), protocol=2), "refused to unpickle"),
        (pickle.dumps(dict, protocol=2), r"refused to unpickle: it asks for '(builtins|__builtin__)\.dict'"),
        (b"\x80\x02}q\x00(U\x04data", "not a readable CIFAR pickle"),
    ],
    ids=["object-dtype", "structured-dtype", "subclass", "a-class", "truncated"],
)
def test_anything_but_plain_arrays_is_refused(payload, problem):
    with pytest.raises(PipelineError, match=problem):
        pickles.restricted_loads(payload, "x.pkl")


def test_unknown_dict_shape_is_a_one_line_error():
    other = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [1]}, protocol=2)
    with pytest.raises(PipelineError, match=r"^data_batch_2: not a CIFAR batch \(keys \['data', 'fine_labels'\]"):
        pickles.read_batch(other, "data_batch_2")
    bad = pickle.dumps({b"batch_label": b"", b"labels": [1], b"data": np.zeros((1, 100), np.uint8),
                        b"filenames": [b"a"]}, protocol=2)
    with pytest.raises(PipelineError, match="'data' is not a uint8 N x 3072 array"):
        pickles.read_batch(bad, "data_batch_3")
    with pytest.raises(PipelineError, match="not a CIFAR pickle .*got list"):
        pickles.read_batch(pickle.dumps([1, 2]), "data_batch_4")


@pytest.mark.parametrize("hwc", [False, True], ids=["Nx3072-CHW", "Nx32x32x3-HWC"])
def test_course_test_pickles_in_both_shapes(hwc):
    images = cifar_images(5, seed=3)
    data = course_test_pickle(images, [10, 11, 12, 13, 14], hwc)
    got, ids = pickles.read_test_pickle(data, "cifar_test_nolabels.pkl")
    np.testing.assert_array_equal(got, images)
    assert ids.tolist() == ["10", "11", "12", "13", "14"]


def test_course_test_pickle_problems_are_named():
    images = cifar_images(2, seed=3)
    dup = course_test_pickle(images, [1, 1], hwc=True)
    with pytest.raises(PipelineError, match="^t.pkl: 'ids' has duplicates"):
        pickles.read_test_pickle(dup, "t.pkl")
    odd = pickle.dumps({b"data": np.zeros((2, 32, 32), np.uint8), b"ids": [1, 2]})
    with pytest.raises(PipelineError, match=r"'data' has shape \(2, 32, 32\)"):
        pickles.read_test_pickle(odd, "t.pkl")
