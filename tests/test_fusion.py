"""Multi-fMRI fusion: chaining decisions, chain metrics, boundary continuity, threshold choice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtdecode.render.fusion import (
    Fusion,
    FusionDecision,
    boundary_clip_pcc,
    chain_metrics,
    select_threshold,
)

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (20, 40, 230)


def mean_colour(frames: np.ndarray) -> np.ndarray:
    """A fake image embedder: each frame's mean RGB, L2-normalised."""
    m = frames.reshape(len(frames), -1, 3).mean(axis=1)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def solid(colour, t: int = 0, size: int = 8) -> np.ndarray:
    """A solid-colour frame (t=0) or clip of t frames, whose last frame is marked."""
    if t == 0:
        return np.full((size, size, 3), colour, np.uint8)
    clip = np.full((t, size, size, 3), colour, np.uint8)
    clip[-1, 0, 0] = (255, 255, 255)  # a recognisable tail frame
    return clip


def run(fusion: Fusion, colours) -> list[FusionDecision]:
    out = []
    for k, colour in enumerate(colours):
        d = fusion.decide(k, solid(colour))
        out.append(d)
        fusion.commit(k, solid(colour, t=4))
    return out


def test_same_scene_chains_and_cut_opens_new_chain():
    fusion = Fusion(mean_colour, threshold=0.95)
    d = run(fusion, [RED, RED, RED, BLUE, BLUE, GREEN])
    assert [x.chain_id for x in d] == [0, 0, 0, 1, 1, 2]
    assert [x.chained for x in d] == [False, True, True, False, True, False]
    assert d[0].similarity is None and d[0].first_frame is None
    assert d[1].similarity == pytest.approx(1.0)
    np.testing.assert_array_equal(d[1].first_frame, solid(RED, t=4)[-1])
    np.testing.assert_array_equal(d[4].first_frame, solid(BLUE, t=4)[-1])
    assert d[3].first_frame is None and d[3].similarity < 0.95


def test_reset_starts_chain_zero_and_uncommitted_clip_is_skipped():
    fusion = Fusion(mean_colour, threshold=0.95)
    run(fusion, [RED, BLUE])
    fusion.reset()
    assert fusion.decide(0, solid(GREEN)).chain_id == 0
    fusion.commit(0, solid(GREEN, t=3))
    assert fusion.decide(1, solid(BLUE)).chain_id == 1  # rendering failed: never committed
    d = fusion.decide(2, solid(GREEN))  # compared with clip 0, the last committed one
    assert d.chained and d.chain_id == 0


def test_bad_inputs_raise():
    fusion = Fusion(mean_colour)
    with pytest.raises(ValueError, match="keyframe"):
        fusion.decide(0, solid(RED).astype(np.float32))
    with pytest.raises(ValueError, match="keyframe"):
        fusion.decide(0, solid(RED, t=2))
    with pytest.raises(ValueError, match="clip_id"):
        fusion.commit(0, solid(RED, t=2))  # no decide() first
    fusion.decide(0, solid(RED))
    with pytest.raises(ValueError, match="frames"):
        fusion.commit(0, solid(RED))
    fusion.commit(0, solid(RED, t=2))
    with pytest.raises(ValueError, match="clip_id"):
        fusion.decide(0, solid(RED))  # ids must increase
    with pytest.raises(ValueError, match="threshold"):
        Fusion(mean_colour, threshold=float("nan"))
    with pytest.raises(ValueError, match="embed"):
        Fusion(lambda f: np.ones((2, 3))).decide(0, solid(RED))


@pytest.mark.parametrize("chains, want", [
    ([0, 0, 1, 1, 1, 2], dict(precision=1.0, recall=1.0, f1=1.0, exact_chains=1.0)),
    ([0, 0, 0, 0, 0, 0], dict(precision=3 / 5, recall=1.0, f1=0.75, exact_chains=0.0)),
    ([0, 1, 2, 3, 4, 5], dict(precision=1.0, recall=0.0, f1=0.0, exact_chains=1 / 3)),
    ([0, 0, 1, 1, 2, 3], dict(precision=1.0, recall=2 / 3, f1=0.8, exact_chains=2 / 3)),
])
def test_chain_metrics(chains, want):
    scenes = [7, 7, 8, 8, 8, 9]
    m = chain_metrics(chains, scenes)
    assert m["n_pairs"] == 5 and m["n_scenes"] == 3
    for key, value in want.items():
        assert m[key] == pytest.approx(value), key


def test_chain_metrics_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="chain_ids"):
        chain_metrics([0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="scene_ids"):
        chain_metrics([0], [])


def test_select_threshold_separates_and_chains_on_calibration():
    rng = np.random.default_rng(0)
    same = rng.random(200) < 0.6
    sims = np.where(same, rng.uniform(0.85, 1.0, 200), rng.uniform(0.2, 0.7, 200))
    t = select_threshold(sims, same)
    assert sims[~same].max() < t <= sims[same].min()
    assert t == pytest.approx((sims[~same].max() + sims[same].min()) / 2)
    # all pairs one scene: chain everything; none: chain nothing
    assert select_threshold(sims, np.ones(200, bool)) <= sims.min()
    assert select_threshold(sims, np.zeros(200, bool)) > sims.max()
    with pytest.raises(ValueError, match="same_scene"):
        select_threshold(sims, same[:-1])


def test_boundary_clip_pcc():
    clips = [solid(RED, t=3), solid(RED, t=3), solid(BLUE, t=3)]
    for c in clips:
        c[-1] = c[0]  # boundary frames identical within a colour
    assert boundary_clip_pcc(clips, mean_colour, mask=[True, False]) == pytest.approx(1.0)
    both = boundary_clip_pcc(clips, mean_colour)
    cut = float(mean_colour(np.stack([solid(RED), solid(BLUE)]))[0]
                @ mean_colour(solid(BLUE)[None])[0])
    assert both == pytest.approx((1.0 + cut) / 2)
    assert math.isnan(boundary_clip_pcc(clips, mean_colour, mask=[False, False]))
    with pytest.raises(ValueError, match="mask"):
        boundary_clip_pcc(clips, mean_colour, mask=[True])
    with pytest.raises(ValueError, match=r"videos\[1\]"):
        boundary_clip_pcc([clips[0], clips[1][0]], mean_colour)
