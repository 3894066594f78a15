"""Renderer evaluation: inputs for CVR (true or decoded), batch rendering, fidelity.

- :func:`truth_inputs`: ground-truth semantics (the toy CLIP's token states of the true captions)
  and true motion latents (the toy VAE's latents of the true frames) — the renderer alone.
- :func:`decoded_inputs`: what the live pipeline feeds CVR — SAD's decoded token states and
  MAD's decoded latents from the test windows (single-trial or repeat-averaged).
- :func:`render_clips`: render many clips with one settings object, optionally with
  multi-fMRI fusion, and time them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cvr import CVR, CVRSettings


@dataclass
class RenderInputs:
    clip_ids: np.ndarray            # (n,) the clips to render, in order
    semantics: np.ndarray           # (n, levels, tokens, width)
    latents: np.ndarray | None      # (n, frames, C, h, w) or None (text only)
    source: str                     # "truth" | "decoded/single_trial" | ...


@dataclass
class Rendered:
    clips: np.ndarray               # (n, T, H, W, 3) uint8
    anchors: np.ndarray             # (n, H, W, 3) uint8
    seconds: list[float]            # wall time per clip
    chain_ids: list[int] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # mean per stage
    unet_evals: int = 0


def truth_inputs(clip_ids: np.ndarray, records: dict[int, dict], frames: np.ndarray,
                 clip_model, vae, cvr: CVR, *, latents: bool = True) -> RenderInputs:
    """True caption token states (SAD's layout) and true frame latents for ``clip_ids``."""
    from ..zoo.unet import encode_conditions

    ids = np.asarray(clip_ids, dtype=np.int64)
    cond = encode_conditions(clip_model, [records[int(c)] for c in ids], cvr.n_tokens,
                             cvr.levels)
    sem = cond.reshape(len(ids), len(cvr.levels), cvr.n_tokens, -1)
    z = vae.encode(np.asarray(frames[ids])) if latents else None
    return RenderInputs(ids, sem, z, "truth" if latents else "truth/text_only")


def decoded_inputs(sad, mad, windows, subject_steps: int | None = None) -> RenderInputs:
    """SAD tokens and MAD latents decoded from one condition's windows (``SubjectData``)."""
    from ..models.evaluate import decode_mad, decode_sad

    sem = decode_sad(sad, windows, subject_steps)
    lat = None
    if mad is not None:
        motion = sem[:, list(sad.cfg.levels).index("motion")] if "motion" in sad.cfg.levels \
            else None
        lat = decode_mad(mad, windows, motion)
    return RenderInputs(np.asarray(windows.clip_ids), sem, lat, "decoded")


def render_clips(cvr: CVR, inputs: RenderInputs, settings: CVRSettings | None = None, *,
                 fusion=None, progress: bool = False) -> Rendered:
    """Render every clip of ``inputs`` in order (with ``fusion``: chained clips start from
    the previous clip's tail frame)."""
    from tqdm.auto import tqdm

    settings = settings or cvr.settings
    clips, anchors, secs, chains = [], [], [], []
    stages: dict[str, list[float]] = {}
    evals = 0
    for i in tqdm(range(len(inputs.clip_ids)), disable=not progress, desc="render",
                  unit="clip"):
        z = None if inputs.latents is None else inputs.latents[i]
        t0 = time.perf_counter()
        s = CVRSettings(**{**settings.__dict__, "seed": settings.seed + i})
        out = cvr(inputs.semantics[i], z, settings=s)
        if fusion is not None:
            d = fusion.decide(int(inputs.clip_ids[i]), out.anchor_frame)
            if d.chained:
                out = cvr(inputs.semantics[i], z, first_frame=d.first_frame, settings=s)
            fusion.commit(int(inputs.clip_ids[i]), out.frames)
            chains.append(d.chain_id)
        secs.append(time.perf_counter() - t0)
        clips.append(out.frames)
        anchors.append(out.anchor_frame)
        evals += out.unet_evals
        for k, v in out.seconds.items():
            stages.setdefault(k, []).append(v)
    return Rendered(np.stack(clips), np.stack(anchors), secs, chains,
                    {k: round(float(np.mean(v)), 4) for k, v in stages.items()}, evals)


def fidelity(rendered: np.ndarray, records: list[dict[str, Any]], probe, clip_model=None
             ) -> dict[str, Any]:
    """Attribute accuracy of rendered clips: the probe's (all five attributes) and, with a
    ``clip_model``, the toy CLIP's zero-shot (background, colour, shape, position)."""
    from .fidelity import clip_zero_shot, probe_accuracy

    out: dict[str, Any] = {"probe": probe_accuracy(probe, rendered, records)}
    if clip_model is not None:
        out["clip_zero_shot"] = clip_zero_shot(clip_model, rendered, records)
    return out
