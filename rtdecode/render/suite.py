"""The anchors' video metric suite on reconstructions of held-out test clips
(``rtdecode eval --render``, ``rtdecode report``).

For the first ``n_clips`` distinct test clips (in stream order: the first test run's clips
first) every method's inputs go through the same renderer (:class:`~rtdecode.render.cvr.CVR`,
same settings, clip ``i`` sampled with seed ``i`` for every method), and
:func:`rtdecode.metrics.summarize` scores the rendered clips against the true ones:

- ``sad`` (ours): SAD's decoded token states, MAD's latents (MAD cross-attending to SAD's
  decoded motion level) → CVR;
- ``attributes`` (ours, the live default): captions composed from the scene attributes the
  zoo's ``attributes/`` ridge reads from the window
  (:class:`~rtdecode.render.captioner.AttributeCaptioner`) and the latents of the layout
  sketch drawn from those attributes (:class:`~rtdecode.render.layout.LayoutSketch`) → CVR;
- ``mlp``: the MLP baseline's token states, MAD's latents (fed the MLP's motion level) → CVR;
- ``ridge``: a ridge regression fitted at evaluation time on the training windows, one to the
  flattened caption token states and one to the flattened VAE latents of the clip's frames
  (:class:`~rtdecode.ridge.DualRidge`, alpha per target by leave-one-out) → CVR;
- ``ceiling``: the true caption token states and the true frames' latents → CVR: the
  renderer's own ceiling (the same for both conditions: it sees no brain data).

Single-trial: each clip's first test repeat; averaged: the windows of all its repeats
averaged. The classifier of the N-way metrics is the toy CLIP zero-shot over
:func:`class_prompts`. Every metric carries ``_pm``: the N-way ones their binomial standard
error, the others the standard error across clips (:func:`clip_spread`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..models.train import SubjectData
from ..simulator.stimuli import BACKGROUNDS, COLOURS, SHAPES
from .cvr import CVR, CVRSettings
from .evaluate import RenderInputs, captioned_inputs, decoded_inputs, render_clips, truth_inputs

METHODS = ("sad", "attributes", "mlp", "ridge", "ceiling")
CONDITIONS = ("single_trial", "averaged")


def class_prompts() -> list[str]:
    """The classifier's vocabulary: every (colour, shape, background) of the toy world,
    worded like its anchor captions — 8 x 6 x 6 = 288 classes.

    Colour x shape alone gives 48 classes, too few for 50-way with top-3 ground-truth
    classes (that needs at least 52); the background is the scene's other large visual
    attribute, and the one the renderer gets most right, so it belongs in the label as
    ImageNet's classes carry their context. Texture, size, position and motion stay out:
    the toy CLIP's zero-shot accuracy on them is low, and motion is scored by EPE.
    """
    return [f"a {colour} {shape} on a {bg} background"
            for colour in COLOURS for shape in SHAPES for bg in BACKGROUNDS]


def clip_spread(gt: np.ndarray, rec: np.ndarray, clip_model) -> dict[str, float | None]:
    """``{metric}_pm`` for the continuous metrics (SSIM, PSNR, Hue-PCC, VIFI, CLIP-PCC,
    EPE): the standard error across clips (sd / sqrt(n)) of each clip's own value, as the
    N-way metrics carry theirs; None with a single clip."""
    from .. import metrics

    n, t = gt.shape[:2]
    emb_g = clip_model.encode_image(gt.reshape(n * t, *gt.shape[2:])).reshape(n, t, -1)
    emb_r = clip_model.encode_image(rec.reshape(n * t, *rec.shape[2:])).reshape(n, t, -1)
    per: dict[str, list[float]] = {k: [] for k in ("ssim", "psnr", "hue_pcc", "vifi",
                                                   "clip_pcc", "epe")}
    for g, r, eg, er in zip(gt, rec, emb_g, emb_r):
        v = metrics.vifi(eg.mean(axis=0), er.mean(axis=0))
        per["ssim"].append(metrics.ssim(g, r))
        per["psnr"].append(metrics.psnr(g, r))
        per["hue_pcc"].append(metrics.hue_pcc(g, r))
        per["vifi"].append(v)
        per["clip_pcc"].append(metrics.clip_pcc(er, v))
        per["epe"].append(metrics.epe(g, r))
    return {f"{k}_pm": (round(float(np.std(v, ddof=1) / np.sqrt(n)), 4) if n > 1 else None)
            for k, v in per.items()}


def first_clips(clip_ids: np.ndarray, n: int) -> np.ndarray:
    """Row indices of the first ``n`` distinct clips, in stream order (first occurrences)."""
    if n < 1:
        raise ValueError(f"n_clips {n}: want >= 1")
    _, first = np.unique(clip_ids, return_index=True)
    return np.sort(first)[:n]


def subset(d: SubjectData, rows: np.ndarray) -> SubjectData:
    return SubjectData(d.label, d.X[rows], d.clip_ids[rows], d.val[rows])


def pick_windows(windows: dict, n_clips: int) -> dict[str, SubjectData]:
    """Per condition, the windows of the same first ``n_clips`` distinct test clips, in the
    single-trial stream order."""
    single = windows["single_trial"]
    rows = first_clips(single.clip_ids, n_clips)
    ids = single.clip_ids[rows]
    avg = windows["averaged"]
    pos = {int(c): i for i, c in enumerate(avg.clip_ids)}
    return {"single_trial": subset(single, rows),
            "averaged": subset(avg, np.array([pos[int(c)] for c in ids], dtype=np.int64))}


def ridge_inputs(ridge, picks: dict[str, SubjectData], tokens: np.ndarray,
                 latents: np.ndarray) -> dict[str, RenderInputs]:
    """Ridge predictions of token states and latents for each condition's windows.

    ``ridge`` is a :class:`~rtdecode.ridge.DualRidge` of the training windows; ``tokens``
    ``(n_train, levels, tokens, width)`` and ``latents`` ``(n_train, frames, C, h, w)`` are
    their targets, row by row.
    """
    a_tok, a_lat = ridge.select_alpha(tokens), ridge.select_alpha(latents)
    conds = list(picks)
    X = np.concatenate([picks[c].X for c in conds])
    splits = np.cumsum([len(picks[c].X) for c in conds])[:-1]
    tok = np.split(ridge.predict(X, tokens, a_tok), splits)
    lat = np.split(ridge.predict(X, latents, a_lat), splits)
    return {c: RenderInputs(picks[c].clip_ids, t, z,
                            f"ridge/{c} (alpha: tokens {a_tok:g}, latents {a_lat:g})")
            for c, t, z in zip(conds, tok, lat)}


@dataclass
class VideoSuite:
    """Renderer inputs, rendered clips and their metrics, per condition and method."""

    clip_ids: np.ndarray                                   # (n,) rendered clips, in order
    truth: np.ndarray                                      # (n, T, H, W, 3) the true clips
    inputs: dict[str, dict[str, RenderInputs]] = field(default_factory=dict)
    clips: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # render wall time per method


def method_inputs(se, cvr: CVR, vae, frames: np.ndarray, picks: dict[str, SubjectData],
                  methods: tuple[str, ...] = METHODS, ridge=None
                  ) -> dict[str, dict[str, RenderInputs]]:
    """method -> condition -> renderer inputs, for those of ``methods`` this zoo can run
    (``ridge``: a :class:`~rtdecode.ridge.DualRidge` of the training windows, else built
    here)."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"methods {bad}: want some of {METHODS}")
    zoo, ids = se.zoo, picks["single_trial"].clip_ids
    out: dict[str, dict[str, RenderInputs]] = {}
    for name, model in (("sad", zoo.sad), ("mlp", zoo.mlp)):
        if name in methods and se.knows(model):
            _check_layout(name, model, cvr)
            mad = zoo.mad if se.knows(zoo.mad) else None
            out[name] = {c: decoded_inputs(model, mad, d) for c, d in picks.items()}
    if "attributes" in methods and se.knows(zoo.sad) and (zoo.path / "attributes").is_dir():
        from .worker import load_captioner, load_sketch

        captioner = load_captioner(zoo.path, cvr, "attributes", zoo.clip)
        captioner.model.check_compatible(se.provenance)
        sketch = load_sketch(cvr, captioner, "sketch", frames.shape[1])
        out["attributes"] = {c: captioned_inputs(captioner, d, None, sketch)
                             for c, d in picks.items()}
    if "ridge" in methods:
        out["ridge"] = _ridge_method(se, cvr, vae, frames, picks, ridge)
    if "ceiling" in methods:
        truth = truth_inputs(ids, se.session.clips, frames, zoo.clip, vae, cvr)
        out["ceiling"] = {c: truth for c in picks}
    return out


def _ridge_method(se, cvr: CVR, vae, frames: np.ndarray, picks: dict[str, SubjectData],
                  ridge=None) -> dict[str, RenderInputs]:
    """The ridge's inputs: its targets are the training clips' caption token states and
    VAE latents (encoding every training clip's frames: the slowest step of the suite)."""
    from ..models.evaluate import CaptionTargets
    from ..ridge import DualRidge

    train = se.windows["train"]
    if ridge is None:
        ridge = DualRidge(train.X, tuple(se.cfg.ridge.alphas))
    uniq, inverse = np.unique(train.clip_ids, return_inverse=True)
    tok = CaptionTargets({int(c): se.session.clips[int(c)] for c in uniq}, se.zoo.clip,
                         cvr.n_tokens, cvr.levels).array
    lat = vae.encode(np.asarray(frames[uniq]))
    return ridge_inputs(ridge, picks, tok[inverse], lat[inverse])


def _check_layout(name: str, model, cvr: CVR) -> None:
    c = model.cfg
    if tuple(c.levels) != tuple(cvr.levels) or c.n_tokens != cvr.n_tokens:
        raise ValueError(f"--render: {name} decodes levels {tuple(c.levels)} x {c.n_tokens} "
                         f"tokens, the renderer takes {tuple(cvr.levels)} x {cvr.n_tokens}")


def video_suite(se, cvr: CVR, n_clips: int = 50, trials: int = 100,
                settings: CVRSettings | None = None, progress: bool = False,
                methods: tuple[str, ...] = METHODS, ridge=None) -> VideoSuite:
    """Render the first ``n_clips`` test clips for each of ``methods`` (those the zoo can
    run) and condition and score them with the anchors' metric suite (``se``: a
    :class:`~rtdecode.models.zoo_eval.SubjectEval`; ``ridge``: its training windows'
    :class:`~rtdecode.ridge.DualRidge`, if already built)."""
    from .. import metrics
    from ..zoo.clip import load_stimuli

    frames, _ = load_stimuli(se.root)
    vae = cvr.vae
    picks = pick_windows(se.windows, n_clips)
    ids = picks["single_trial"].clip_ids
    suite = VideoSuite(ids, np.asarray(frames[ids]))
    prompts = class_prompts()
    for method, by_cond in method_inputs(se, cvr, vae, frames, picks, methods,
                                         ridge).items():
        t0 = time.perf_counter()
        done: dict[int, np.ndarray] = {}     # the ceiling's inputs are the same per condition
        for cond in CONDITIONS:
            inp = by_cond[cond]
            if id(inp) not in done:
                done[id(inp)] = render_clips(cvr, inp, settings, progress=progress,
                                             desc=f"{method} {cond}").clips
            clips = done[id(inp)]
            suite.inputs.setdefault(cond, {})[method] = inp
            suite.clips.setdefault(cond, {})[method] = clips
            scores = metrics.summarize(suite.truth, clips, se.zoo.clip, prompts,
                                       trials=trials)
            scores = {k: round(float(v), 4) for k, v in scores.items()}
            scores.update(clip_spread(suite.truth, clips, se.zoo.clip))
            suite.metrics.setdefault(cond, {})[method] = scores
        suite.seconds[method] = round(time.perf_counter() - t0, 2)
    return suite
