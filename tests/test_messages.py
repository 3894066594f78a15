from __future__ import annotations

import numpy as np
import pytest

from rtdecode.messages import Caption, Clip, InvalidMessage, Semantics, Volume


def vec(n=10):
    return np.arange(n, dtype=np.float32)


def test_volume_accepts_vector_and_volume():
    v = Volume(3, 6.0, vec())
    assert v.shape == (10,) and v.tr_index == 3
    v3 = Volume(0, 0.0, np.zeros((2, 3, 4), np.float32), affine=np.eye(4))
    assert v3.n_values == 24 and v3.affine.shape == (4, 4)


def test_volume_is_frozen_and_readonly():
    v = Volume(0, 0.0, vec())
    with pytest.raises(AttributeError):
        v.tr_index = 2
    with pytest.raises(ValueError):
        v.data[0] = 5.0


@pytest.mark.parametrize("kwargs,reason", [
    (dict(data=np.arange(10, dtype=np.float64)), "dtype must be float32"),
    (dict(data=np.zeros((2, 5), np.float32)), "shape must be"),
    (dict(data=np.zeros(0, np.float32)), "empty"),
    (dict(data=np.array([1, np.nan, np.inf], np.float32)), "2 non-finite"),
    (dict(tr_index=-1), "tr_index"),
    (dict(tr_index=1.5), "tr_index"),
    (dict(t_acq=float("nan")), "t_acq"),
    (dict(affine=np.eye(3)), "affine"),
    (dict(data=[1.0, 2.0]), "numpy array"),
])
def test_volume_rejects_with_reason(kwargs, reason):
    base = dict(tr_index=0, t_acq=0.0, data=vec())
    base.update(kwargs)
    with pytest.raises(InvalidMessage, match=reason):
        Volume(**base)


def test_semantics_checks_levels():
    a = np.zeros((4, 8), np.float32)
    s = Semantics(1, a, a.copy(), a.copy(), n_volumes=2, final=False)
    assert not s.final
    with pytest.raises(InvalidMessage, match="motion: shape"):
        Semantics(1, a, np.zeros((4, 7), np.float32), a)
    with pytest.raises(InvalidMessage, match="holistic: expected a float32"):
        Semantics(1, a, a, a.astype(np.float64))
    with pytest.raises(InvalidMessage, match="non-finite"):
        Semantics(1, a, a, np.full((4, 8), np.nan, np.float32))


def test_caption_and_clip_checks():
    text = {"anchor": "a", "motion": "b", "holistic": "c"}
    assert Caption(0, text, 0.5, final=True).final
    with pytest.raises(InvalidMessage, match="missing level"):
        Caption(0, {"anchor": "a"}, 0.5, final=True)
    frames = np.zeros((8, 16, 16, 3), np.uint8)
    assert Clip(0, 0, 3, frames, fps=4.0).frames.shape[0] == 8
    with pytest.raises(InvalidMessage, match="uint8"):
        Clip(0, 0, 3, frames.astype(np.float32), fps=4.0)
    with pytest.raises(InvalidMessage, match=r"\(T, H, W, 3\)"):
        Clip(0, 0, 3, np.zeros((8, 16, 16), np.uint8), fps=4.0)
    with pytest.raises(InvalidMessage, match="fps"):
        Clip(0, 0, 3, frames, fps=0)
