"""Render a replayed test run offline: decode its windows, render every clip with fusion, and
write the side-by-side ground truth | reconstruction | caption video (``rtdecode render``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .cvr import CVR, CVRSettings
from .evaluate import render_clips


def caption_bank(session, clip_model, n_tokens: int, levels: tuple[str, ...]):
    """The training clips' captions with their pooled token targets (centred retrieval), the
    bank the daemon's SAD engines use."""
    from ..models.evaluate import CaptionTargets
    from ..models.evaluate import caption_bank as bank_from_targets

    train = {c: r for c, r in session.clips.items() if r.get("split") == "train"}
    return bank_from_targets(CaptionTargets(train, clip_model, n_tokens, levels), train)


def fusion_threshold(zoo: Path, default: float = 0.9) -> float:
    """The zoo's calibrated fusion threshold (``fusion.json``, written by
    ``rtdecode train fusion``), else ``default``."""
    import json

    path = Path(zoo) / "fusion.json"
    return float(json.loads(path.read_text())["threshold"]) if path.is_file() else default


def render_run(zoo: Path, root: Path, cfg, out: Path, *, n_clips: int = 30,
               inputs: str = "decoded", settings: CVRSettings | None = None,
               fusion: bool = True, threshold: float | None = None, scale: int = 4,
               threads: int | None = 2, progress: bool = True, semantics: str = "auto",
               latents: str = "auto") -> dict[str, Any]:
    """Render the first ``n_clips`` clips of the first test run and write ``out`` (MP4 or GIF)
    as a mosaic. Returns per-clip captions, chain ids and timings. ``semantics`` and
    ``latents``: as
    :func:`~rtdecode.render.bench.load_inputs` takes it (the decoded caption shown is then
    the composed one, else the caption bank's nearest to SAD's semantics)."""
    import torch

    from ..data import load_session
    from ..models.evaluate import pooled
    from ..zoo.clip import load_toy_clip
    from .bench import _subject, load_inputs
    from .fusion import Fusion
    from .video import concat_clips, mosaic, write_video

    if threads:
        torch.set_num_threads(threads)
    cvr = CVR.from_zoo(zoo, settings=settings or CVRSettings())
    clip_model = load_toy_clip(zoo / "clip")
    inp, truth, records = load_inputs(inputs, root, cfg, zoo, cvr, clip_model, n_clips,
                                      semantics=semantics, latents=latents)
    if threshold is None:
        threshold = fusion_threshold(zoo)
    fuse = Fusion(clip_model.encode_image, threshold) if fusion else None
    r = render_clips(cvr, inp, fusion=fuse, progress=progress)

    if inp.captions is not None:  # the attribute captioner's own captions
        best = [[(c, None)] for c in inp.captions]
    else:  # the caption bank's nearest to the decoded semantics
        session = load_session(root, _subject(root, zoo))
        bank = caption_bank(session, clip_model, cvr.n_tokens, cvr.levels)
        best = bank.nearest(pooled(inp.semantics))
    panels, rows = [], []
    for i, rec in enumerate(records):
        cap, score = best[i][0]
        decoded = cap.get("basic") or cap.get("anchor", "")
        panels.append(mosaic(truth[i], r.clips[i], decoded, truth_caption=rec.get("basic"),
                             scale=scale))
        rows.append({"clip_id": int(inp.clip_ids[i]), "decoded": decoded,
                     "truth": rec.get("basic"), "score": None if score is None else round(score, 4),
                     "chain_id": r.chain_ids[i] if r.chain_ids else None,
                     "scene_id": rec.get("scene_id"), "seconds": round(r.seconds[i], 3)})
    fps = truth.shape[1] / 2.0  # 8 frames per 2-s clip
    path = write_video(out, concat_clips(_same_height(panels)), fps)
    return {"video": str(path), "clips": rows, "inputs": inp.source,
            "seconds_per_clip": round(float(np.mean(r.seconds)), 4),
            "fusion_threshold": threshold if fusion else None}


def _same_height(panels: list[np.ndarray]) -> list[np.ndarray]:
    """Pad mosaics (whose caption strips wrap to different heights) to the tallest, with
    the colour of their caption strip's corner."""
    h = max(p.shape[1] for p in panels)
    return [p if p.shape[1] == h else np.concatenate(
        [p, np.broadcast_to(p[:, -1:, :1], (p.shape[0], h - p.shape[1], p.shape[2], 3))],
        axis=1) for p in panels]


def calibrate_fusion(root: Path, clip_model, out: Path | None = None) -> dict[str, Any]:
    """Pick the fusion threshold on the training clips: the cosine of adjacent clips' first
    frames (toy CLIP image embeddings) against whether they belong to one scene, F1-optimal
    (:func:`~rtdecode.render.fusion.select_threshold`). Writes ``out`` (``fusion.json``)."""
    import json

    from ..zoo.clip import load_stimuli
    from .fusion import chain_metrics, select_threshold

    frames, records = load_stimuli(root)
    train = [r for r in records if r["split"] == "train"]
    ids = np.array([r["clip_id"] for r in train])
    emb = clip_model.encode_image(np.ascontiguousarray(np.asarray(frames[ids, 0])))
    adjacent = np.diff(ids) == 1                         # pairs inside one run's film
    sims = (emb[1:] * emb[:-1]).sum(axis=1)[adjacent]
    scenes = np.array([r["scene_id"] for r in train])
    same = (scenes[1:] == scenes[:-1])[adjacent]
    thr = select_threshold(sims, same)
    chained = sims >= thr
    chains = np.concatenate([[0], np.cumsum(~chained)])
    truth = np.concatenate([[0], np.cumsum(~same)])
    result = {"threshold": round(float(thr), 4), "calibrated_on": "training clips' true first "
              "frames", "pairs": int(len(sims)),
              "train_metrics": {k: (round(v, 4) if isinstance(v, float) else v)
                                for k, v in chain_metrics(chains, truth).items()}}
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
