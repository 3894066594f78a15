"""The anchors' video-reconstruction metrics (ANCHORS.md, "Metrics"), on numpy arrays.

Videos are uint8 ``(T, H, W, 3)`` RGB clips or ``(n, T, H, W, 3)`` batches of clips.
Pixel metrics use maintained implementations: SSIM and PSNR from scikit-image, HSV from
``skimage.color.rgb2hsv``, optical flow from OpenCV's Farneback with the anchors' parameters.

Semantic metrics need a CLIP-like model, duck-typed: ``encode_image(frames (n, H, W, 3)
uint8) -> (n, D)`` and ``encode_text(list[str]) -> (n, D)``, both L2-normalised (the toy
zoo's :class:`rtdecode.zoo.clip` model fits). In the toy world that model is also the
classifier: softmax over ``100 * cosine`` to the class prompts' text embeddings stands in for
ViT-B/16 (image N-way), the mean of a clip's frame probabilities for VideoMAE (video N-way),
and the renormalised mean of frame embeddings for the ViFi-CLIP video embedding (VIFI).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from skimage.color import rgb2hsv
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

#: PSNR reported for a frame identical to its ground truth (PSNR is infinite there).
PSNR_CAP = 100.0
#: The anchors' Farneback parameters: pyr_scale, levels, winsize, iterations, poly_n,
#: poly_sigma, flags.
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)
#: CLIP-PCC counts only where VIFI is above this (a static, wrong video cannot score).
VIFI_GATE = 0.6
LOGIT_SCALE = 100.0
_EPS = 1e-12


def _clips(name: str, video: np.ndarray) -> np.ndarray:
    """Check one video input; return it as ``(n, T, H, W, 3)``."""
    if not isinstance(video, np.ndarray) or video.dtype != np.uint8:
        raise ValueError(f"{name}: want a uint8 numpy array (T, H, W, 3) or (n, T, H, W, 3), "
                         f"got {type(video).__name__} dtype "
                         f"{getattr(video, 'dtype', None)} shape {getattr(video, 'shape', None)}")
    if video.ndim not in (4, 5) or video.shape[-1] != 3 or 0 in video.shape:
        raise ValueError(f"{name}: shape {video.shape}, want (T, H, W, 3) or (n, T, H, W, 3)")
    return video if video.ndim == 5 else video[None]


def _pair(gt: np.ndarray, rec: np.ndarray, min_side: int = 1,
          min_frames: int = 1) -> tuple[np.ndarray, np.ndarray]:
    g, r = _clips("gt", gt), _clips("rec", rec)
    if gt.shape != rec.shape:
        raise ValueError(f"gt shape {gt.shape} != rec shape {rec.shape}")
    if min(g.shape[2:4]) < min_side:
        raise ValueError(f"frames {g.shape[2:4]}: want both sides >= {min_side}")
    if g.shape[1] < min_frames:
        raise ValueError(f"shape {gt.shape}: want at least {min_frames} frames per clip")
    return g, r


def _frames(video: np.ndarray) -> np.ndarray:
    """``(n, T, H, W, 3)`` -> ``(n * T, H, W, 3)``."""
    return video.reshape(-1, *video.shape[2:])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of ``(..., D)`` arrays; 0 where either row is all zeros."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(den, _EPS)


def ssim(gt: np.ndarray, rec: np.ndarray) -> float:
    """Mean per-frame SSIM on RGB (skimage, ``channel_axis=-1``, ``data_range=255``).

    Frames need both sides >= 7 (skimage's default 7 x 7 window).
    """
    g, r = _pair(gt, rec, min_side=7)
    return float(np.mean([structural_similarity(a, b, channel_axis=-1, data_range=255)
                          for a, b in zip(_frames(g), _frames(r))]))


def psnr(gt: np.ndarray, rec: np.ndarray, cap: float = PSNR_CAP) -> float:
    """Mean per-frame PSNR in dB (skimage, ``data_range=255``).

    A frame identical to its ground truth scores ``cap`` (default 100 dB) instead of inf,
    and no frame scores above ``cap``, so one perfect frame cannot make the mean infinite.
    """
    g, r = _pair(gt, rec)
    # Skip skimage on identical frames: it would warn about dividing by zero.
    vals = [cap if np.array_equal(a, b) else peak_signal_noise_ratio(a, b, data_range=255)
            for a, b in zip(_frames(g), _frames(r))]
    return float(np.mean(np.minimum(vals, cap)))


def hue_pcc(gt: np.ndarray, rec: np.ndarray) -> float:
    """Mean per-frame cosine similarity of the flattened HSV hue channels (hue in [0, 1]).

    As the anchors compute it: hue is treated as linear (red near 0 and near 1 differ), and a
    frame whose hue is zero everywhere (grey) has cosine 0 with anything.
    """
    g, r = _pair(gt, rec)
    n = g.shape[0] * g.shape[1]
    hg = rgb2hsv(_frames(g))[..., 0].reshape(n, -1)
    hr = rgb2hsv(_frames(r))[..., 0].reshape(n, -1)
    return float(np.mean(_cos(hg, hr)))


def _flow(clip: np.ndarray) -> np.ndarray:
    """Farneback flow between consecutive grayscale frames: ``(T - 1, H, W, 2)``."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip]
    return np.stack([cv2.calcOpticalFlowFarneback(a, b, None, *FARNEBACK)
                     for a, b in zip(gray[:-1], gray[1:])])


def epe(gt: np.ndarray, rec: np.ndarray) -> float:
    """End-point error: mean ``||flow_gt - flow_rec||_2`` over pixels and frame pairs (px).

    Flow is OpenCV Farneback ``(0.5, 3, 15, 3, 5, 1.2, 0)`` between consecutive grayscale
    frames of each clip; clips need at least 2 frames. Identical videos score 0.
    """
    g, r = _pair(gt, rec, min_frames=2)
    return float(np.mean([np.linalg.norm(_flow(a) - _flow(b), axis=-1).mean()
                          for a, b in zip(g, r)]))


def vifi(gt_video_emb: np.ndarray, rec_video_emb: np.ndarray) -> float:
    """Cosine of two ``(D,)`` video embeddings (toy analogue of ViFi-CLIP's)."""
    a, b = np.asarray(gt_video_emb), np.asarray(rec_video_emb)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"video embeddings {a.shape} and {b.shape}: want two equal (D,)")
    return float(_cos(a, b))


def clip_pcc(frame_emb: np.ndarray, vifi: float, gate: float = VIFI_GATE) -> float:
    """Mean cosine of consecutive reconstructed-frame embeddings ``(T, D)``; 0 if vifi <= gate."""
    e = np.asarray(frame_emb)
    if e.ndim != 2 or e.shape[0] < 2:
        raise ValueError(f"frame_emb shape {e.shape}: want (T, D) with T >= 2")
    if vifi <= gate:
        return 0.0
    return float(np.mean(_cos(e[:-1], e[1:])))


def n_way_top1(rec_probs: np.ndarray, gt_top: np.ndarray, n_way: int, trials: int = 100,
               seed: int = 0) -> tuple[float, float]:
    """N-way top-1 accuracy of reconstructions against ground-truth top-k classes.

    Sample ``i`` has class probabilities ``rec_probs[i]`` (K,) on its reconstruction and the
    ground-truth classifier's top-k classes ``gt_top[i]`` (k,). Trial ``j`` takes the gt
    class ``gt_top[i, j % k]`` (cycling through the k, so each is used equally) and draws
    ``n_way - 1`` distinct distractors uniformly from the K - k classes outside
    ``gt_top[i]``; it is correct if that gt class's probability is strictly above every
    distractor's (a tie is a miss).

    Returns ``(p, pm)``: ``p`` the fraction of the ``n * trials`` trials that are correct,
    ``pm = sqrt(p (1 - p) / (n * trials))``, the binomial standard error treating every trial
    as independent (trials of one sample share its probabilities, so this understates the
    spread across samples; ``sqrt(p (1 - p) / n)`` is the per-sample bound).
    """
    probs, top = np.asarray(rec_probs), np.asarray(gt_top)
    if probs.ndim != 2 or top.ndim != 2 or len(probs) != len(top) or len(probs) == 0:
        raise ValueError(f"rec_probs {probs.shape} and gt_top {top.shape}: want (n, K), (n, k)")
    if not np.issubdtype(top.dtype, np.integer):
        raise ValueError(f"gt_top dtype {top.dtype}: want integer class indices")
    (n, n_cls), k = probs.shape, top.shape[1]
    if top.min() < 0 or top.max() >= n_cls:
        raise ValueError(f"gt_top holds classes outside [0, {n_cls}) for rec_probs {probs.shape}")
    if np.any(np.diff(np.sort(top, axis=1), axis=1) == 0):
        raise ValueError("gt_top: each row's classes must be distinct")
    if n_way < 2 or trials < 1:
        raise ValueError(f"n_way={n_way}, trials={trials}: want n_way >= 2, trials >= 1")
    if n_cls - k < n_way - 1:
        raise ValueError(f"{n_way}-way with top-{k} needs at least {n_way - 1 + k} classes, "
                         f"rec_probs has {n_cls}")
    rng = np.random.default_rng(seed)
    rows = np.arange(n)[:, None]
    hits = 0
    chunk = max(1, 2**22 // (trials * n_cls))  # bounds the (chunk, trials, K) draw keys
    for lo in range(0, n, chunk):
        p, t = probs[lo:lo + chunk], top[lo:lo + chunk]
        r = rows[: len(p)]
        keys = rng.random((len(p), trials, n_cls))
        keys[r, :, t] = np.inf  # gt classes are never drawn as distractors
        draws = np.argpartition(keys, n_way - 2, axis=-1)[..., : n_way - 1]
        best = p[r[..., None], draws].max(axis=-1)  # (chunk, trials)
        target = p[r, t[:, np.arange(trials) % k]]
        hits += int(np.sum(target > best))
    acc = hits / (n * trials)
    return acc, float(np.sqrt(acc * (1 - acc) / (n * trials)))


def _softmax_probs(img_emb: np.ndarray, txt_emb: np.ndarray) -> np.ndarray:
    logits = LOGIT_SCALE * (img_emb.astype(np.float64) @ txt_emb.astype(np.float64).T)
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def classify_frames(clip_model, frames: np.ndarray, class_prompts: Sequence[str]) -> np.ndarray:
    """Class probabilities ``(n, K)`` of uint8 frames ``(n, H, W, 3)``.

    Softmax over ``100 * cosine`` between each frame's image embedding and the K class
    prompts' text embeddings (zero-shot CLIP classification).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames dtype {frames.dtype} shape {frames.shape}: "
                         "want uint8 (n, H, W, 3)")
    txt = np.asarray(clip_model.encode_text(list(class_prompts)))
    return _softmax_probs(np.asarray(clip_model.encode_image(frames)), txt)


def _top(probs: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-probs, axis=-1, kind="stable")[:, :k]


def summarize(gt: np.ndarray, rec: np.ndarray, clip_model, class_prompts: Sequence[str],
              ways: tuple[int, ...] = (2, 50), top_k: int = 3, trials: int = 100,
              seed: int = 0) -> dict[str, float]:
    """Every metric for reconstructions ``rec`` of ground-truth clips ``gt`` (n, T, H, W, 3).

    Keys: ``image_{N}way`` and ``video_{N}way`` with ``*_pm`` for each N in ``ways``; then
    ``ssim, psnr, hue_pcc, epe`` (over all frames), and ``vifi, clip_pcc`` (per clip, then
    averaged; a clip's CLIP-PCC is gated by its own VIFI). Image N-way: per frame, the gt
    labels are the classifier's top-``top_k`` classes on the gt frame. Video N-way: the same
    on each clip's mean-of-frames probabilities. Pass e.g. ``ways=(2, 10)`` when there are
    fewer than ``50 - 1 + top_k`` class prompts.
    """
    g, r = _pair(gt, rec, min_side=7, min_frames=2)
    n, t = g.shape[:2]
    txt = np.asarray(clip_model.encode_text(list(class_prompts)))
    emb_g = np.asarray(clip_model.encode_image(_frames(g)))
    emb_r = np.asarray(clip_model.encode_image(_frames(r)))
    prob_g, prob_r = _softmax_probs(emb_g, txt), _softmax_probs(emb_r, txt)
    vid_g = prob_g.reshape(n, t, -1).mean(axis=1)
    vid_r = prob_r.reshape(n, t, -1).mean(axis=1)
    out: dict[str, float] = {}
    for kind, pg, pr in (("image", prob_g, prob_r), ("video", vid_g, vid_r)):
        for w in ways:
            acc, pm = n_way_top1(pr, _top(pg, top_k), w, trials, seed)
            out[f"{kind}_{w}way"], out[f"{kind}_{w}way_pm"] = acc, pm
    out.update(ssim=ssim(g, r), psnr=psnr(g, r), hue_pcc=hue_pcc(g, r))
    e_g, e_r = emb_g.reshape(n, t, -1), emb_r.reshape(n, t, -1)
    vifis = [vifi(a.mean(axis=0), b.mean(axis=0)) for a, b in zip(e_g, e_r)]
    out["vifi"] = float(np.mean(vifis))
    out["clip_pcc"] = float(np.mean([clip_pcc(b, v) for b, v in zip(e_r, vifis)]))
    out["epe"] = epe(g, r)
    return out
