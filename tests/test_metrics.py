"""Known-answer tests of the anchors' metric suite on tiny seeded videos and a fake CLIP."""

from __future__ import annotations

import zlib

import cv2
import numpy as np
import pytest

from rtdecode import metrics as M


class FakeClip:
    """CLIP-shaped stand-in: a seeded random projection of 4 x 4 area-downsampled pixels."""

    def __init__(self, dim: int = 32, seed: int = 0):
        self.proj = np.random.default_rng(seed).standard_normal((4 * 4 * 3, dim))

    def encode_image(self, frames: np.ndarray) -> np.ndarray:
        small = np.stack([cv2.resize(f, (4, 4), interpolation=cv2.INTER_AREA) for f in frames])
        x = (small.reshape(len(frames), -1) / 255.0 - 0.5) @ self.proj  # centred: -x ↦ -emb
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        x = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(
            self.proj.shape[1]) for t in texts])
        return x / np.linalg.norm(x, axis=-1, keepdims=True)


PROMPTS = [f"a photo of class {i}" for i in range(60)]


def colour_clips(n: int = 3, t: int = 4, side: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields drifting one pixel per frame: (n, t, side, side, 3)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        field = cv2.resize(rng.integers(0, 256, (6, 6 + t, 3), dtype=np.uint8),
                           (side + t, side), interpolation=cv2.INTER_CUBIC)
        out.append(np.stack([field[:, i:i + side] for i in range(t)]))
    return np.stack(out)


def moving_square(step: int, t: int = 5, side: int = 64, seed: int = 0) -> np.ndarray:
    """A 16-px randomly textured square on grey, moving ``step`` px/frame along x."""
    tex = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    video = np.full((t, side, side, 3), 128, np.uint8)
    for i in range(t):
        x0 = side // 2 - 8 + step * (i - t // 2)
        video[i, 24:40, x0:x0 + 16] = tex
    return video


def test_identical_videos_score_perfectly():
    v = colour_clips()
    assert M.ssim(v, v) == pytest.approx(1.0)
    assert M.psnr(v, v) == M.PSNR_CAP == 100.0
    assert M.epe(v, v) == 0.0
    assert M.hue_pcc(v, v) == pytest.approx(1.0)
    assert M.hue_pcc(v[0], v[0]) == pytest.approx(1.0)  # one 4-D clip works too


def test_pixel_metrics_drop_for_a_different_video():
    v, w = colour_clips(seed=0), colour_clips(seed=1)
    assert M.ssim(v, w) < 0.5
    assert M.psnr(v, w) < 30.0
    assert M.hue_pcc(v, w) < 0.99
    noisy = np.clip(v + np.random.default_rng(0).normal(0, 3, v.shape), 0, 255).astype(np.uint8)
    assert M.psnr(v, w) < M.psnr(v, noisy) < M.PSNR_CAP


def test_epe_opposite_motion_beats_noise():
    right, left = moving_square(+2), moving_square(-2)
    noise = np.random.default_rng(1).normal(0, 4, right.shape)
    noisy = np.clip(right + noise, 0, 255).astype(np.uint8)
    e_opposite, e_noisy = M.epe(right, left), M.epe(right, noisy)
    assert e_noisy > 0
    assert e_opposite > 2 * e_noisy


def test_static_wrong_video_is_gated():
    clip_model = FakeClip()
    gt = colour_clips(n=1)[0]
    rec = np.repeat(255 - gt[:1], len(gt), axis=0)  # static, colour-inverted first frame
    e_gt, e_rec = clip_model.encode_image(gt), clip_model.encode_image(rec)
    v = M.vifi(e_gt.mean(axis=0), e_rec.mean(axis=0))
    assert v < M.VIFI_GATE
    assert M.clip_pcc(e_rec, v) == 0.0
    assert M.clip_pcc(e_rec, v, gate=-2.0) == pytest.approx(1.0)  # ungated, static = 1
    assert M.clip_pcc(e_rec, 0.6) == 0.0 and M.clip_pcc(e_rec, 0.61) > 0  # vifi <= gate
    assert M.vifi(e_gt[0], e_gt[0]) == pytest.approx(1.0)


def random_case(n: int = 400, n_cls: int = 60, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(n_cls), size=n)
    top = np.argsort(rng.random((n, n_cls)), axis=1)[:, :k]  # k distinct classes per row
    return probs, top


@pytest.mark.parametrize("n_way", [2, 50])
def test_n_way_random_is_chance(n_way):
    probs, top = random_case()
    acc, pm = M.n_way_top1(probs, top, n_way, trials=100, seed=0)
    chance, n = 1 / n_way, len(probs)
    assert abs(acc - chance) < 3 * np.sqrt(chance * (1 - chance) / n)  # per-sample sd
    assert pm == pytest.approx(np.sqrt(acc * (1 - acc) / (n * 100)))


def test_n_way_known_answers():
    probs, top = random_case(n=50)
    rows = np.arange(len(probs))[:, None]
    best = probs.copy()
    best[rows, top] = 2.0 + np.arange(3)  # every gt class above every other class
    assert M.n_way_top1(best, top, 50) == (1.0, 0.0)
    worst = probs.copy()
    worst[rows, top] = -1.0
    assert M.n_way_top1(worst, top, 2)[0] == 0.0
    assert M.n_way_top1(np.full_like(probs, 1 / 60), top, 2)[0] == 0.0  # a tie is a miss
    one = worst.copy()
    one[:, 0] = 0.0
    one[rows[:, 0], top[:, 0]] = 2.0  # only the first gt class wins; trials cycle over the 3
    assert M.n_way_top1(one, top, 2, trials=99)[0] == pytest.approx(1 / 3)


def test_n_way_needs_enough_classes():
    probs, top = random_case(n=5, n_cls=52)
    M.n_way_top1(probs, top, 50)  # 49 distractors outside the top-3: just enough
    with pytest.raises(ValueError, match="needs at least 52 classes, rec_probs has 51"):
        M.n_way_top1(probs[:, :51], np.tile([0, 1, 2], (5, 1)), 50)
    with pytest.raises(ValueError, match="integer"):
        M.n_way_top1(probs, top.astype(float), 2)


def test_bad_inputs_name_the_shape():
    v = colour_clips(n=1)[0]
    with pytest.raises(ValueError, match=r"dtype float64 shape \(4, 32, 32, 3\)"):
        M.ssim(v.astype(np.float64), v)
    with pytest.raises(ValueError, match=r"shape \(4, 32, 32\)"):
        M.psnr(v[..., 0], v[..., 0])
    with pytest.raises(ValueError, match=r"\(4, 32, 32, 3\) != rec shape \(3, 32, 32, 3\)"):
        M.hue_pcc(v, v[:3])
    with pytest.raises(ValueError, match="at least 2 frames"):
        M.epe(v[:1], v[:1])
    with pytest.raises(ValueError, match=r"frame_emb shape \(5,\)"):
        M.clip_pcc(np.ones(5), 1.0)


def test_summarize_identical_and_noisy():
    clip_model, gt = FakeClip(), colour_clips(n=3, t=4)
    out = M.summarize(gt, gt, clip_model, PROMPTS, trials=20)
    ways = [f"{k}_{w}way" for k in ("image", "video") for w in (2, 50)]
    assert set(out) == {*ways, *(w + "_pm" for w in ways),
                        "ssim", "psnr", "hue_pcc", "vifi", "clip_pcc", "epe"}
    assert all(isinstance(v, float) for v in out.values())
    assert all(out[w] == 1.0 for w in ways)
    assert out["ssim"] == pytest.approx(1.0) and out["psnr"] == 100.0 and out["epe"] == 0.0
    assert out["vifi"] == pytest.approx(1.0) and out["clip_pcc"] > M.VIFI_GATE
    noisy = np.clip(gt + np.random.default_rng(0).normal(0, 20, gt.shape), 0, 255)
    out = M.summarize(gt, noisy.astype(np.uint8), clip_model, PROMPTS[:20], ways=(2, 10))
    assert {"image_10way", "video_10way_pm"} <= set(out) and "image_50way" not in out
    assert out["ssim"] < 1.0 and out["psnr"] < 100.0 and out["epe"] > 0.0
    with pytest.raises(ValueError, match="50-way with top-3 needs at least 52 classes"):
        M.summarize(gt, gt, clip_model, PROMPTS[:20])
