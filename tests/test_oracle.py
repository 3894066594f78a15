"""The oracle ceiling: near-perfect when noise is low, chance when noise swamps the signal or
when it is told the wrong stimuli, and a clear error where there is no oracle file."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from conftest import tiny_config

from rtdecode.config import Config
from rtdecode.data import DataError, load_session
from rtdecode.models.oracle import (
    NoiseModel,
    break_ties,
    expected_bold,
    oracle_identification,
    oracle_scores,
    run_events,
)
from rtdecode.ridge import _corr_matrix, n_way_from_scores, n_way_identification, run_ridge
from rtdecode.simulator import DesignConfig, simulate
from rtdecode.simulator.session import load_oracle


def _simulate(tmp_path_factory, name: str, n_train_runs: int = 2, **noise):
    """One subject, 300 voxels, 60 test clips shown twice (50-way needs 50 clips)."""
    cfg = tiny_config(seed=1, **noise)
    cfg = dataclasses.replace(cfg, design=DesignConfig(
        n_train_runs=n_train_runs, train_clips_per_run=60, n_test_segments=1,
        test_clips_per_segment=60, test_repeats=2))
    out = tmp_path_factory.mktemp(name)
    simulate(out, cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def default_noise(tmp_path_factory):
    return _simulate(tmp_path_factory, "oracle-default")


@pytest.fixture(scope="module")
def low_noise(tmp_path_factory):
    return _simulate(tmp_path_factory, "oracle-low", tsnr=(1000.0, 2000.0))


def test_oracle_model_is_the_simulators(default_noise):
    """The oracle's predicted BOLD is the simulator's noise-free BOLD, and its noise model
    whitens the residual to unit variance per degree of freedom."""
    sess = load_session(default_noise, "sub-01")
    oracle = load_oracle(default_noise, "sub-01")
    feats = np.load(default_noise / "stimuli" / "features.npy")
    W = oracle.subject.encoding_matrix()
    for run in sess.runs_of("test")[:1] + sess.runs_of("train")[:1]:
        onsets, duration = run_events(run)
        pred = expected_bold(oracle, feats[run.clip_ids] @ W, run, onsets, duration)
        np.testing.assert_allclose(pred, run.noise_free(), rtol=0, atol=1e-2)
    rep = oracle_identification(sess, cfg=Config())
    assert 0.97 < rep["noise_check"] < 1.03
    assert rep["n_voxels"] == 300 and rep["test_repeats"] == 2


def test_scores_are_the_brute_force_log_likelihood_ratio(default_noise):
    """f(c) - f(t) equals the restricted Gaussian log-likelihood ratio computed the long way:
    build the whole run's prediction with clip c in place of t, take the residual, project
    out the physio maps, the drift and the spike TRs, and weigh it by the noise precision."""
    sess = load_session(default_noise, "sub-01")
    sc = oracle_scores(sess, Config())
    oracle = load_oracle(default_noise, "sub-01")
    noise = NoiseModel.from_session(default_noise)
    feats = np.load(default_noise / "stimuli" / "features.npy")
    W = oracle.subject.encoding_matrix()
    rounding = 1.0 / 12.0 / (noise.thermal_fraction + noise.ar_fraction)
    sigma = np.sqrt(oracle.noise.sigma.astype(np.float64) ** 2 + rounding)
    maps = oracle.noise.physio_maps * (oracle.noise.sigma / sigma)
    spatial = np.eye(sigma.size) - maps.T @ np.linalg.solve(maps @ maps.T, maps)
    run = sess.runs_of("test")[0]  # its clips are the first rows of sc.single, in order
    P, _ = noise.precision(run.n_trs, tuple(run.spike_trs))
    onsets, duration = run_events(run)
    y = run.data().astype(np.float64)

    def loglik(ids):
        e = ((y - expected_bold(oracle, feats[ids] @ W, run, onsets, duration)) / sigma)
        e = e @ spatial
        return -0.5 * float(np.sum(e * (P @ e)))

    rng = np.random.default_rng(0)
    for k in (0, 17, 59):
        t = int(run.clip_ids[k])
        assert sc.single_ids[k] == t
        base = loglik(run.clip_ids)
        f = sc.single[k]
        for c in rng.choice(sc.bank_ids, 4, replace=False):
            ids = run.clip_ids.copy()
            ids[k] = c
            want = loglik(ids) - base
            got = f[np.searchsorted(sc.bank_ids, c)] - f[np.searchsorted(sc.bank_ids, t)]
            assert got == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_oracle_ceiling_on_low_noise_and_above_ridge(low_noise, default_noise):
    for root in (low_noise, default_noise):
        sess = load_session(root, "sub-01")
        rep = oracle_identification(sess, cfg=Config())
        ridge = run_ridge(sess, Config())
        for cond in ("single_trial", "averaged"):
            assert rep[cond]["caption_2way"] >= ridge[cond]["2way"]
            assert rep[cond]["caption_50way"] >= ridge[cond]["50way"] + 0.2
    st, avg = rep["single_trial"], rep["averaged"]  # default noise: far above chance
    assert st["n_decoded"] == 120 and avg["n_decoded"] == 60
    assert st["caption_50way"] > 0.02 + 8 * st["caption_50way_pm"]
    assert avg["caption_50way"] > st["caption_50way"]  # two repeats carry more than one

    rep = oracle_identification(low_noise, "sub-01", Config())
    assert rep["single_trial"]["caption_2way"] > 0.98
    assert rep["single_trial"]["caption_50way"] > 0.9
    # The only clips the oracle confuses at low noise are physically indistinguishable:
    # clips whose stimuli are identical to another test clip's.
    sc = oracle_scores(load_session(low_noise, "sub-01"), Config())
    feats = np.load(low_noise / "stimuli" / "features.npy")[sc.bank_ids]
    _, inverse, counts = np.unique(feats, axis=0, return_inverse=True, return_counts=True)
    twin = counts[inverse.ravel()] > 1
    miss = sc.bank_ids[sc.single.argmax(axis=1)] != sc.single_ids
    assert not np.any(miss & ~twin[np.searchsorted(sc.bank_ids, sc.single_ids)])


def test_oracle_at_chance_when_noise_swamps_signal(tmp_path_factory):
    root = _simulate(tmp_path_factory, "oracle-huge", n_train_runs=1, tsnr=(0.5, 1.0))
    rep = oracle_identification(root, "sub-01", Config())
    for cond in ("single_trial", "averaged"):
        r = rep[cond]
        assert abs(r["caption_2way"] - 0.5) < 3 * r["caption_2way_pm"]
        assert r["caption_50way"] < 0.02 + 3 * max(r["caption_50way_pm"], 0.0099)
    assert 0.97 < rep["noise_check"] < 1.03


def test_oracle_told_wrong_stimuli_is_at_chance(low_noise):
    """Shuffling which clip was shown (for the prediction and the label) must destroy the
    ceiling: the oracle cannot lean on knowing the true clip."""
    rep = oracle_identification(low_noise, "sub-01", Config(), shuffle=True)
    assert rep["shuffled"] and rep["noise_check"] > 2  # the prediction no longer fits
    for cond in ("single_trial", "averaged"):
        r = rep[cond]
        assert abs(r["caption_2way"] - 0.5) < 3 * r["caption_2way_pm"] + 0.02
        assert r["caption_50way"] < 0.02 + 3 * r["caption_50way_pm"] + 0.01


def test_missing_oracle_file_is_a_clear_error(default_noise, tmp_path):
    root = tmp_path / "real"
    shutil.copytree(default_noise, root,
                    ignore=shutil.ignore_patterns("frames.npy", "*_oracle.safetensors"))
    with pytest.raises(DataError, match="no oracle file.*simulated sessions"):
        oracle_identification(root, "sub-01", Config())


def test_protocol_is_the_decoders_and_ties_are_broken():
    """n_way_from_scores on correlations is n_way_identification, draw for draw; exact ties
    (identical stimuli) become guesses rather than certain misses."""
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(60, 8))
    ids = np.arange(100, 160)
    pred = bank[ids - 100] + rng.normal(size=(60, 8))
    a = n_way_identification(pred, ids, bank, ids, 50, 30, np.random.default_rng(7))
    b = n_way_from_scores(_corr_matrix(pred, bank), ids, bank, ids, 50, 30,
                          np.random.default_rng(7))
    assert a == b
    S = np.zeros((60, 60))  # every candidate ties with the truth
    assert n_way_from_scores(S, ids, bank, ids, 2, 100, rng)[0] == 0.0
    acc = n_way_from_scores(break_ties(S), ids, bank, ids, 2, 100, rng)[0]
    assert 0.4 < acc < 0.6
