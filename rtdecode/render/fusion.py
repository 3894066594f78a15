"""Multi-fMRI fusion (NeuroClips): chain adjacent clips of one scene into a continuous video.

Each decoded clip is rendered on its own. When the keyframes of two adjacent clips are
semantically alike (cosine similarity of their image embeddings at or above a threshold), they
are taken to show one scene, and the previous clip's tail frame becomes the next clip's first
frame, so the two render as one continuous shot. Otherwise the clip opens a new chain.

Per clip, the renderer calls::

    decision = fusion.decide(clip_id, keyframe)    # before rendering: chain, first frame
    frames = render(..., first_frame=decision.first_frame)
    fusion.commit(clip_id, frames)                 # after rendering: remember the tail

The module also holds the measures of how well fusion does (:func:`chain_metrics`,
:func:`boundary_clip_pcc`) and the calibration of its threshold (:func:`select_threshold`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Maps uint8 frames ``(n, H, W, 3)`` to L2-normalised embeddings ``(n, D)``
#: (e.g. ``ToyClip.encode_image``).
Embed = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FusionDecision:
    """How one clip is rendered: in which chain, and from which first frame.

    ``similarity`` is the keyframe cosine similarity with the previous clip (``None`` for the
    first clip of a session); ``first_frame`` is the previous clip's tail frame ``(H, W, 3)``
    when ``chained``, else ``None``.
    """

    clip_id: int
    chain_id: int
    chained: bool
    similarity: float | None
    first_frame: np.ndarray | None


@dataclass(frozen=True)
class _Rendered:
    clip_id: int
    chain_id: int
    key_embedding: np.ndarray
    tail: np.ndarray


class Fusion:
    """Decide, clip by clip, whether a clip continues the previous one's chain.

    Parameters
    ----------
    embed:
        Image embedder, uint8 ``(n, H, W, 3)`` -> ``(n, D)``; pass ``clip.encode_image``.
    threshold:
        Chain when the keyframe cosine similarity is ``>= threshold``. Calibrate it with
        :func:`select_threshold` on training clips, never on test clips.

    Clips are compared with the last *committed* clip: a clip that was decided but never
    committed (its rendering failed) is skipped, and its chain id is not reused.
    """

    def __init__(self, embed: Embed, threshold: float = 0.8) -> None:
        if not callable(embed):
            raise ValueError(f"embed: expected a callable, got {type(embed).__name__}")
        if not isinstance(threshold, (int, float, np.floating)) or not np.isfinite(threshold):
            raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
        self.embed = embed
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        """Forget all clips: the next clip opens chain 0 (a new session)."""
        self._last: _Rendered | None = None
        self._pending: tuple[FusionDecision, np.ndarray] | None = None
        self._next_chain = 0

    def decide(self, clip_id: int, keyframe: np.ndarray) -> FusionDecision:
        """Chain clip ``clip_id`` to the previous clip, or open a new chain.

        ``keyframe`` is the clip's uint8 ``(H, W, 3)`` keyframe (e.g. its anchor frame).
        """
        clip_id = _check_clip_id(clip_id)
        if self._last is not None and clip_id <= self._last.clip_id:
            raise ValueError(f"clip_id: must increase; got {clip_id} after clip "
                             f"{self._last.clip_id} (reset() starts a new session)")
        _check_frames("keyframe", keyframe, ndim=3)
        emb = self._embed_one(keyframe)
        similarity = None
        chained = False
        if self._last is not None:
            similarity = _cosine(emb, self._last.key_embedding)
            chained = similarity >= self.threshold
        if chained:
            chain_id = self._last.chain_id
            first_frame = self._last.tail
        else:
            chain_id = self._next_chain
            self._next_chain += 1
            first_frame = None
        decision = FusionDecision(clip_id, chain_id, chained, similarity, first_frame)
        self._pending = (decision, emb)
        return decision

    def commit(self, clip_id: int, frames: np.ndarray) -> None:
        """Record the rendered frames ``(T, H, W, 3)`` of the clip last passed to :meth:`decide`.

        Keeps its keyframe embedding (from :meth:`decide`) and its tail frame ``frames[-1]``,
        which becomes the next clip's first frame if that clip is chained to it.
        """
        clip_id = _check_clip_id(clip_id)
        _check_frames("frames", frames, ndim=4)
        if self._pending is None or self._pending[0].clip_id != clip_id:
            want = None if self._pending is None else self._pending[0].clip_id
            raise ValueError(f"clip_id: {clip_id} was not the last clip decided (that is "
                             f"{want}); call decide() before commit()")
        decision, emb = self._pending
        tail = np.array(frames[-1], copy=True)
        tail.flags.writeable = False
        self._last = _Rendered(clip_id, decision.chain_id, emb, tail)
        self._pending = None

    def _embed_one(self, frame: np.ndarray) -> np.ndarray:
        emb = np.asarray(self.embed(frame[None]), dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != 1 or not np.isfinite(emb).all():
            raise ValueError(f"embed: expected one finite embedding (1, D), got shape {emb.shape}")
        return emb[0]


def chain_metrics(chain_ids: Sequence[int], scene_ids: Sequence[int]) -> dict:
    """How often fusion chains exactly the clips of one scene (clips in stream order).

    Each adjacent pair ``(k-1, k)`` is a binary decision: predicted "chained" when the chain
    ids are equal, true when the scene ids are equal. Returns

    - ``precision``, ``recall``, ``f1`` of those decisions (a ratio with nothing to count,
      e.g. precision when nothing was chained, is 1.0: no claim was wrong);
    - ``n_pairs``: the number of adjacent pairs;
    - ``exact_chains``: the fraction of true scenes whose clips form exactly one predicted
      chain with no other clip in it;
    - ``n_scenes``, ``n_chains``: distinct scene and chain ids.
    """
    chains = _check_ids("chain_ids", chain_ids)
    scenes = _check_ids("scene_ids", scene_ids)
    if len(chains) != len(scenes):
        raise ValueError(f"chain_ids: length {len(chains)} differs from scene_ids' "
                         f"{len(scenes)}")
    chained = chains[1:] == chains[:-1]
    same = scenes[1:] == scenes[:-1]
    tp = int(np.sum(chained & same))
    precision = _ratio(tp, int(chained.sum()))
    recall = _ratio(tp, int(same.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    scene_set = np.unique(scenes)
    exact = 0
    for s in scene_set:
        members = scenes == s
        in_chain = np.unique(chains[members])
        if len(in_chain) == 1 and np.array_equal(chains == in_chain[0], members):
            exact += 1
    return {"precision": precision, "recall": recall, "f1": f1, "n_pairs": len(chained),
            "exact_chains": exact / len(scene_set), "n_scenes": len(scene_set),
            "n_chains": len(np.unique(chains))}


def boundary_clip_pcc(videos: Sequence[np.ndarray], embed: Embed,
                      mask: Sequence[bool] | np.ndarray | None = None) -> float:
    """Continuity across clip boundaries: mean cosine of last frame k-1 and first frame k.

    ``videos`` are uint8 ``(T, H, W, 3)`` clips in stream order, all of one frame size;
    ``embed`` maps frames to embeddings (e.g. ``ToyClip.encode_image``). ``mask`` (one bool
    per boundary, ``len(videos) - 1``) picks the boundaries to average, e.g. the same-scene
    ones; by default all. Returns NaN when no boundary is selected.
    """
    if len(videos) < 1:
        raise ValueError("videos: need at least one clip")
    for i, v in enumerate(videos):
        _check_frames(f"videos[{i}]", v, ndim=4)
    sizes = {v.shape[1:3] for v in videos}
    if len(sizes) > 1:
        raise ValueError(f"videos: clips differ in frame size {sorted(sizes)}")
    n = len(videos) - 1
    keep = np.ones(n, bool) if mask is None else np.asarray(mask, dtype=bool)
    if keep.shape != (n,):
        raise ValueError(f"mask: expected {n} booleans (one per boundary), got shape "
                         f"{keep.shape}")
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return float("nan")
    tails = np.stack([videos[k][-1] for k in idx])
    heads = np.stack([videos[k + 1][0] for k in idx])
    emb = np.asarray(embed(np.concatenate([tails, heads])), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != 2 * len(idx):
        raise ValueError(f"embed: expected ({2 * len(idx)}, D) embeddings, got {emb.shape}")
    a, b = emb[: len(idx)], emb[len(idx):]
    cos = np.sum(a * b, axis=1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(cos.mean())


def select_threshold(similarities: Sequence[float] | np.ndarray,
                     same_scene: Sequence[bool] | np.ndarray) -> float:
    """The fusion threshold that maximises F1 on a calibration set (e.g. training clips).

    ``similarities`` are keyframe cosines of adjacent clip pairs, ``same_scene`` whether each
    pair truly shows one scene. Sorted sweep: with the similarities in descending order,
    chaining the top ``i`` pairs has ``tp = cumsum(same)[i-1]`` and
    ``F1 = 2 tp / (i + n_same)``; every distinct cut point ``i = 0..n`` is scored in O(n log n).
    The threshold returned lies midway between the last chained and the first unchained
    similarity (so a gap in the data is split in the middle); just above the maximum when
    chaining nothing wins, just below the minimum when chaining everything wins. On ties the
    highest threshold wins: a false chain splices a wrong first frame into a clip, which is
    worse than a missed one.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    same = np.asarray(same_scene)
    if sims.ndim != 1 or len(sims) == 0:
        raise ValueError(f"similarities: expected a non-empty 1-D sequence, got shape "
                         f"{sims.shape}")
    if not np.isfinite(sims).all():
        raise ValueError("similarities: contains NaN or inf")
    if same.shape != sims.shape:
        raise ValueError(f"same_scene: shape {same.shape} differs from similarities' "
                         f"{sims.shape}")
    same = same.astype(bool)
    order = np.argsort(-sims, kind="stable")
    s, y = sims[order], same[order]
    n_same = int(y.sum())
    tp = np.concatenate([[0], np.cumsum(y)])  # tp[i]: true pairs among the top i
    i = np.arange(len(s) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(i + n_same > 0, 2 * tp / (i + n_same), 1.0)
    # A cut is only realisable between distinct values (ties chain together).
    valid = np.ones(len(s) + 1, bool)
    valid[1:-1] = s[:-1] > s[1:]
    best = int(np.flatnonzero(valid)[np.argmax(f1[valid])])  # first max: highest threshold
    if best == 0:
        return float(np.nextafter(s[0], np.inf))
    if best == len(s):
        return float(np.nextafter(s[-1], -np.inf))
    return float((s[best - 1] + s[best]) / 2)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _ratio(num: int, den: int) -> float:
    return num / den if den else 1.0


def _check_clip_id(clip_id: int) -> int:
    if isinstance(clip_id, bool) or not isinstance(clip_id, (int, np.integer)) or clip_id < 0:
        raise ValueError(f"clip_id: expected an integer >= 0, got {clip_id!r}")
    return int(clip_id)


def _check_ids(name: str, ids: Sequence[int]) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1 or len(a) == 0 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of integers, got "
                         f"dtype {a.dtype}, shape {a.shape}")
    return a


def _check_frames(name: str, a: np.ndarray, *, ndim: int) -> None:
    want = "(H, W, 3)" if ndim == 3 else "(T, H, W, 3)"
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 array {want}, got "
                         f"{getattr(a, 'dtype', type(a).__name__)}")
    if a.ndim != ndim or a.shape[-1] != 3 or 0 in a.shape:
        raise ValueError(f"{name}: shape must be {want}, got {a.shape}")
