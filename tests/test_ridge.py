"""The ridge baseline decodes the toy world well above chance, and a shuffled control does not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rtdecode.config import Config, DataConfig
from rtdecode.data import DataError, load_session
from rtdecode.ridge import n_way_identification, run_ridge


@pytest.fixture(scope="module")
def reports(small_session):
    sess = load_session(small_session, "sub-01")
    cfg = Config()
    return run_ridge(sess, cfg), run_ridge(sess, cfg, shuffle=True)


def test_ridge_beats_chance_clearly(reports):
    real, _ = reports
    st = real["single_trial"]
    assert st["2way"] > 0.5 + 4 * st["2way_pm"]
    assert st["50way"] > 0.02 + 3 * st["50way_pm"]
    assert st["attribute_mean"] > real["chance"]["attribute_mean"] + 0.05
    assert real["averaged"]["2way"] >= st["2way"] - 0.05


def test_shuffled_labels_decode_at_chance(reports):
    real, shuf = reports
    st = shuf["single_trial"]
    assert abs(st["2way"] - 0.5) < 3 * st["2way_pm"] + 0.02
    assert st["50way"] < 0.02 + 3 * st["50way_pm"] + 0.01
    assert st["2way"] < real["single_trial"]["2way"] - 0.1


def test_report_shape(reports):
    real, _ = reports
    assert real["n_test_clips"] == 60 and real["test_repeats"] == 4
    assert real["single_trial"]["n_decoded"] == 240 and real["averaged"]["n_decoded"] == 60
    assert set(real["single_trial"]["attributes"]) == {
        "background", "texture", "shape", "colour", "motion", "position", "size", "n_objects"}


def test_roi_selection_and_offline_preprocessing(small_session):
    sess = load_session(small_session, "sub-03")
    cfg = dataclasses.replace(Config(), data=DataConfig(voxel_selection="roi"))
    rep = run_ridge(sess, cfg, online=False)
    assert rep["n_voxels"] == int((sess.roi != 4).sum())
    assert rep["preprocessing"] == "offline"
    assert rep["single_trial"]["2way"] > 0.6


def test_reliability_selection_needs_repeated_training_segments(small_session):
    sess = load_session(small_session, "sub-03")
    cfg = dataclasses.replace(Config(), data=DataConfig(voxel_selection="reliability",
                                                         n_voxels=100))
    with pytest.raises(DataError, match="shown at least twice"):
        run_ridge(sess, cfg)


def test_leaky_split_is_refused(small_session):
    sess = load_session(small_session, "sub-03")
    sess.runs[-1].task = "train"  # a test run now also in training
    with pytest.raises(DataError, match="leaks"):
        run_ridge(sess, Config())


def test_n_way_identification_known_answers():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(60, 10))
    ids = np.arange(60)
    perfect = n_way_identification(bank, ids, bank, ids, 50, 20, rng)
    assert perfect[0] == 1.0
    noise = n_way_identification(rng.normal(size=(60, 10)), ids, bank, ids, 2, 100, rng)
    assert abs(noise[0] - 0.5) < 0.1
    assert n_way_identification(bank[:10], ids[:10], bank[:10], ids[:10], 50, 5, rng) is None
