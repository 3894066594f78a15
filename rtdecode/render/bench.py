"""``rtdecode bench render``: seconds per 2-s clip and quality, our few-step settings against
NeuroClips' (25 DDIM steps, CFG 8.5), same weights, same inputs, one run.

Inputs are what the live pipeline renders — SAD's decoded semantics and MAD's decoded latents
for the first ``n_clips`` single-trial test windows (``inputs="decoded"``) — or the ground
truth (true caption token states and true frame latents, ``inputs="truth"``). Quality is
measured against the true clips: SSIM (scikit-image) and CLIP-PCC with the VIFI gate (the toy
CLIP), as ANCHORS.md defines them, plus VIFI itself.

By default the two settings take turns clip by clip (ours on clip *i*, then NeuroClips' on
clip *i*): on a shared machine a burst of other work then slows both alike, where timing all of
ours first (a few seconds) and then all of NeuroClips' (a minute) let one burst swing the
ratio. Each clip gets the same seed either way, so the clips are the same.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from .cvr import CVR, NEUROCLIPS, CVRSettings
from .evaluate import Rendered, RenderInputs, decoded_inputs, render_clips, truth_inputs


def quality(rendered: np.ndarray, truth: np.ndarray, clip_model) -> dict[str, float]:
    """SSIM, VIFI and gated CLIP-PCC of rendered clips against the true clips (means)."""
    from .. import metrics

    n, t = rendered.shape[:2]
    emb = clip_model.encode_image(rendered.reshape(n * t, *rendered.shape[2:])).reshape(n, t, -1)
    gt_video = clip_model.encode_video(truth)
    rec_video = clip_model.encode_video(rendered)
    vifis = [metrics.vifi(g, r) for g, r in zip(gt_video, rec_video)]
    pcc = [metrics.clip_pcc(e, v) for e, v in zip(emb, vifis)]
    return {"ssim": round(metrics.ssim(truth, rendered), 4),
            "clip_pcc": round(float(np.mean(pcc)), 4),
            "vifi": round(float(np.mean(vifis)), 4)}


def load_inputs(kind: str, root: Path, cfg, zoo: Path, cvr: CVR, clip_model, n_clips: int,
                condition: str = "single_trial", semantics: str = "auto", latents: str = "auto"
                ) -> tuple[RenderInputs, np.ndarray, list[dict]]:
    """(inputs, true clips (n, T, H, W, 3), caption records) for the first ``n_clips`` test
    windows of the session's first subject. ``semantics`` and ``latents`` (decoded inputs):
    ``"sad"`` / ``"attributes"`` / ``"auto"`` and ``"mad"`` / ``"sketch"`` / ``"auto"``, as
    :meth:`RenderWorker.from_zoo` takes them."""
    from ..data import load_session
    from ..engine import check_provenance, provenance
    from ..models.evaluate import eval_windows
    from ..models.train import SubjectData, load_checkpoint
    from ..zoo.clip import load_stimuli
    from ..zoo.vae import load_toy_vae

    if kind not in ("decoded", "truth"):
        raise ValueError(f"inputs {kind!r}: want 'decoded' or 'truth'")
    subject = _subject(root, zoo)
    session = load_session(root, subject)
    frames, _ = load_stimuli(root)
    w = eval_windows(session, cfg, train=False)[condition]
    d = SubjectData(w.label, w.X[:n_clips], w.clip_ids[:n_clips], w.val[:n_clips])
    if kind == "decoded":
        sad, sad_meta = load_checkpoint(zoo / "sad")
        mad, mad_meta = load_checkpoint(zoo / "mad") if (zoo / "mad").is_dir() else (None, {})
        prov = provenance(session, cfg)
        for meta in (sad_meta, mad_meta):
            check_provenance(meta, subject, prov)
        from .worker import load_captioner, load_sketch

        captioner = load_captioner(zoo, cvr, semantics, clip_model)
        if captioner is not None:
            captioner.model.check_compatible(prov)
        sketch = load_sketch(cvr, captioner, latents, mad.cfg.n_frames if mad else 8)
        inp = decoded_inputs(sad, mad, d, captioner=captioner, sketch=sketch)
        inp.source = f"{inp.source}/{condition}"
    else:
        inp = truth_inputs(d.clip_ids, session.clips, frames, clip_model, load_toy_vae(zoo / "vae"),
                           cvr)
    records = [session.clips[int(c)] for c in inp.clip_ids]
    return inp, np.asarray(frames[inp.clip_ids]), records


def _subject(root: Path, zoo: Path) -> str:
    """The session's first subject the zoo's SAD knows (any subject without a SAD)."""
    import json

    from ..data import DataError, list_subjects

    have = list_subjects(root)
    if not have:
        raise DataError(f"{root}: no subjects")
    cfg_path = Path(zoo) / "sad" / "config.json"
    if not cfg_path.is_file():
        return have[0]
    known = json.loads(cfg_path.read_text()).get("sad", {}).get("subjects", {})
    for s in have:
        if s in known:
            return s
    raise DataError(f"{root}: none of its subjects {have} is known to {zoo / 'sad'} "
                    f"(trained on {sorted(known)})")


def _interleaved(cvr: CVR, inp: RenderInputs, named: dict[str, CVRSettings], progress: bool
                 ) -> dict[str, Rendered]:
    """Every setting on clip 0, then every setting on clip 1, ... (the seeds
    :func:`render_clips` gives: ``seed + i`` for clip ``i``)."""
    from tqdm.auto import tqdm

    parts: dict[str, list[Rendered]] = {name: [] for name in named}
    for i in tqdm(range(len(inp.clip_ids)), disable=not progress, desc="ours | neuroclips",
                  unit="clip"):
        one = inp.take(slice(i, i + 1))
        for name, s in named.items():
            parts[name].append(render_clips(cvr, one, dataclasses.replace(s, seed=s.seed + i)))
    out = {}
    for name, rs in parts.items():
        stages = {k: round(float(np.mean([r.stage_seconds[k] for r in rs])), 4)
                  for k in rs[0].stage_seconds}
        out[name] = Rendered(np.concatenate([r.clips for r in rs]),
                             np.concatenate([r.anchors for r in rs]),
                             [x for r in rs for x in r.seconds], [], stages,
                             sum(r.unet_evals for r in rs))
    return out


def bench_render(zoo: Path, root: Path, cfg, *, n_clips: int = 8, inputs: str = "decoded",
                 threads: int | None = 2, settings: CVRSettings | None = None,
                 progress: bool = True, warmup: bool = True, cvr: CVR | None = None,
                 interleave: bool = True, semantics: str = "auto", latents: str = "auto"
                 ) -> dict[str, Any]:
    """Both settings on the same clips; JSON-ready figures and their ratios. ``warmup``:
    one untimed render per setting first (first-call allocations); ``cvr``: a loaded
    renderer of ``zoo`` to use (its settings are replaced by ``settings``); ``interleave``:
    the settings take turns clip by clip (else all of ours, then all of NeuroClips')."""
    import torch

    from ..zoo.clip import load_toy_clip

    if threads:
        torch.set_num_threads(threads)
    if cvr is None:
        cvr = CVR.from_zoo(zoo, settings=settings or CVRSettings())
    elif settings is not None:
        cvr.settings = settings
    clip_model = load_toy_clip(zoo / "clip")
    inp, truth, _ = load_inputs(inputs, root, cfg, zoo, cvr, clip_model, n_clips,
                                semantics=semantics, latents=latents)
    named = {"ours": cvr.settings, "neuroclips": NEUROCLIPS}
    if warmup:
        for s in named.values():
            cvr(inp.semantics[0], None if inp.latents is None else inp.latents[0],
                settings=s)  # first-call allocations, not timed
    if interleave:
        rendered = _interleaved(cvr, inp, named, progress)
    else:
        rendered = {name: render_clips(cvr, inp, s, progress=progress, desc=name)
                    for name, s in named.items()}
    out: dict[str, Any] = {}
    for name, s in named.items():
        r = rendered[name]
        secs = np.asarray(r.seconds)
        out[name] = {"seconds_per_clip": round(float(secs.mean()), 4),
                     "seconds_p50": round(float(np.median(secs)), 4),
                     "seconds_max": round(float(secs.max()), 4),
                     "steps": s.steps, "scheduler": s.scheduler, "guidance": s.guidance,
                     "strengths": list(s.strengths(inp.latents_kind)),
                     "anchor_guidance": s.stage2_guidance,
                     # stage 3 on the guidance-distilled UNet (CVR.guided_unet)?
                     "distilled_video": bool(s.distilled_video and cvr.guided_unet is not None),
                     "motion_module_fraction": s.motion_module_fraction,
                     "unet_evals_per_clip": r.unet_evals / len(secs),
                     "stage_seconds": r.stage_seconds,
                     **quality(r.clips, truth, clip_model)}
    out["speedup"] = round(out["neuroclips"]["seconds_per_clip"]
                           / max(out["ours"]["seconds_per_clip"], 1e-9), 2)
    out["speedup_p50"] = round(out["neuroclips"]["seconds_p50"]
                               / max(out["ours"]["seconds_p50"], 1e-9), 2)
    out["clips"] = len(inp.clip_ids)
    out["frames_per_clip"] = int(truth.shape[1])
    out["inputs"] = inp.source
    out["motion_module"] = cvr.video_unet is not None
    out["threads"] = threads or torch.get_num_threads()
    out["warmup"] = warmup
    out["interleaved"] = interleave
    return out
