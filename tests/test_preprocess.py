from __future__ import annotations

import numpy as np
import pytest

from rtdecode.config import PreprocessConfig, WindowConfig
from rtdecode.data import load_session
from rtdecode.preprocess import (
    OnlinePreprocessor,
    clip_windows,
    offline_preprocess,
    preprocess_run,
    window_features,
)


def test_online_is_causal():
    """The output at TR t does not change when later volumes change."""
    rng = np.random.default_rng(0)
    a = rng.normal(100, 5, (60, 20)).astype(np.float32)
    b = a.copy()
    b[40:] += rng.normal(0, 50, (20, 20)).astype(np.float32)
    za, zb = preprocess_run(a, 2.0), preprocess_run(b, 2.0)
    np.testing.assert_array_equal(za[:40], zb[:40])
    assert not np.allclose(za[40:], zb[40:])


def test_incremental_equals_batch_and_reset():
    rng = np.random.default_rng(1)
    x = rng.normal(500, 10, (30, 8)).astype(np.float32)
    pre = OnlinePreprocessor(8, 2.0)
    first = np.stack([pre.update(v) for v in x])
    assert pre.ready
    pre.reset()
    assert not pre.ready
    again = np.stack([pre.update(v) for v in x])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, preprocess_run(list(x), 2.0))


def test_stationary_noise_is_standardised_and_drift_removed():
    rng = np.random.default_rng(2)
    T = 600
    drift = np.linspace(0, 200, T)[:, None]  # a strong linear scanner drift
    x = (1000 + drift + rng.normal(0, 10, (T, 30))).astype(np.float32)
    z = preprocess_run(x, 2.0, PreprocessConfig(highpass_s=30.0))
    tail = z[100:]
    assert abs(tail.mean()) < 0.3
    assert 0.6 < tail.std() < 1.4
    # Without drift removal the drift would dominate: correlation with time is small here.
    t = np.arange(100, T)
    assert abs(np.corrcoef(t, tail.mean(1))[0, 1]) < 0.3


def test_bad_volume_shape_is_rejected():
    pre = OnlinePreprocessor(5, 2.0)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        pre.update(np.zeros(4, np.float32))


def test_offline_preprocess_is_zscored():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 3, (100, 4)) + np.linspace(0, 50, 100)[:, None]
    z = offline_preprocess(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-5)


def test_clip_windows_follow_the_lag():
    idx, complete = clip_windows(np.array([0, 1, 8, 9]), n_trs=12,
                                 cfg=WindowConfig(lag_trs=2, width_trs=2))
    np.testing.assert_array_equal(idx, [[2, 3], [3, 4], [10, 11], [11, 12]])
    np.testing.assert_array_equal(complete, [True, True, True, False])
    feats = np.arange(12 * 3, dtype=np.float32).reshape(12, 3)
    X, ok = window_features(feats, np.array([0, 9]), WindowConfig(lag_trs=2, width_trs=2))
    np.testing.assert_array_equal(X, [feats[2:4].mean(0)])
    Xc, _ = window_features(feats, np.array([0]), WindowConfig(2, 2, "concat"))
    assert Xc.shape == (1, 6)


def test_online_features_from_volume_stream_equal_training_path(small_session):
    """What the live path computes volume by volume is what training computes."""
    run = load_session(small_session, "sub-03").runs_of("test")[0]
    offline = preprocess_run(run.data(), run.tr)
    pre = OnlinePreprocessor(offline.shape[1], run.tr)
    live = np.stack([pre.update(v.data) for v in run.volumes()])
    np.testing.assert_array_equal(live, offline)
