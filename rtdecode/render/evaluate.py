"""Renderer evaluation: inputs for CVR (true or decoded), batch rendering, fidelity.

- :func:`truth_inputs`: ground-truth semantics (the toy CLIP's token states of the true captions)
  and true motion latents (the toy VAE's latents of the true frames) — the renderer alone.
- :func:`decoded_inputs`: what the live pipeline feeds CVR — SAD's decoded token states (or,
  with an attribute captioner, the captions it composes) and MAD's decoded latents from the
  test windows (single-trial or repeat-averaged).
- :func:`render_clips`: render many clips with one settings object, optionally with
  multi-fMRI fusion, and time them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cvr import CVR, CVRSettings

#: the ``blurred`` fidelity condition's Gaussian blur (pixels): about as soft as a render's
#: edges, every shape still plain to the eye
BLURRED_SIGMA = 1.0


@dataclass
class RenderInputs:
    clip_ids: np.ndarray            # (n,) the clips to render, in order
    semantics: np.ndarray           # (n, levels, tokens, width)
    latents: np.ndarray | None      # (n, frames, C, h, w) or None (text only)
    source: str                     # "truth" | "decoded/single_trial" | ...
    captions: list[dict] | None = None  # the composed captions (attribute captioner)
    # what the latents are, for the strengths settings leave None (cvr.STRENGTHS):
    # "regressed" (MAD's, a ridge's) or "drawn" (the true frames', the layout sketch's)
    latents_kind: str = "regressed"

    def take(self, sl: slice) -> RenderInputs:
        """The clips ``sl`` of these inputs (every field sliced alike)."""
        return RenderInputs(self.clip_ids[sl], self.semantics[sl],
                            None if self.latents is None else self.latents[sl], self.source,
                            None if self.captions is None else self.captions[sl],
                            self.latents_kind)


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
    return RenderInputs(ids, sem, z, "truth" if latents else "truth/text_only",
                        latents_kind="drawn")


def decoded_inputs(sad, mad, windows, subject_steps: int | None = None, captioner=None,
                   sketch=None) -> RenderInputs:
    """SAD tokens and MAD latents decoded from one condition's windows (``SubjectData``);
    with ``captioner`` (:class:`~rtdecode.render.captioner.AttributeCaptioner`) the
    semantics are the token states of the captions it composes (window ``i`` worded with
    seed ``i``), as the render worker does; SAD's motion level still steers MAD. With
    ``sketch`` (:class:`~rtdecode.render.layout.LayoutSketch`, needs the captioner) the
    latents are the sketches of the decoded attributes, and MAD is not run."""
    from ..models.evaluate import decode_mad, decode_sad

    if sketch is not None and captioner is None:
        raise ValueError("decoded_inputs: a layout sketch needs the attribute captioner")
    sem = decode_sad(sad, windows, subject_steps)
    lat = None
    if mad is not None and sketch is None:
        motion = sem[:, list(sad.cfg.levels).index("motion")] if "motion" in sad.cfg.levels \
            else None
        lat = decode_mad(mad, windows, motion)
    if captioner is None:
        return RenderInputs(np.asarray(windows.clip_ids), sem, lat, "decoded")
    return captioned_inputs(captioner, windows, lat, sketch)


def captioned_inputs(captioner, windows, latents: np.ndarray | None, sketch=None
                     ) -> RenderInputs:
    """The attribute captioner's token states of ``windows`` (window ``i`` worded with seed
    ``i``) with already decoded ``latents``, or, with ``sketch``, the sketches of the
    decoded attributes' latents."""
    tok, caps = captioner(windows.X, range(len(windows.X)))
    if sketch is not None:
        return RenderInputs(np.asarray(windows.clip_ids), tok,
                            sketch([c["attributes"] for c in caps]),
                            "decoded+attributes+sketch", caps, "drawn")
    return RenderInputs(np.asarray(windows.clip_ids), tok, latents, "decoded+attributes", caps)


def render_clips(cvr: CVR, inputs: RenderInputs, settings: CVRSettings | None = None, *,
                 fusion=None, progress: bool = False, desc: str = "render") -> Rendered:
    """Render every clip of ``inputs`` in order (with ``fusion``: chained clips start from
    the previous clip's tail frame); ``desc`` labels the progress bar (stderr). Strengths
    the settings leave None are those of ``inputs.latents_kind``."""
    from tqdm.auto import tqdm

    settings = (settings or cvr.settings).for_latents(inputs.latents_kind)
    clips, anchors, secs, chains = [], [], [], []
    stages: dict[str, list[float]] = {}
    evals = 0
    for i in tqdm(range(len(inputs.clip_ids)), disable=not progress, desc=desc, unit="clip"):
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
    """Attribute accuracy of rendered clips: the probe's (all five attributes; and its shape
    accuracy per shape, over single-object clips) and, with a ``clip_model``, the toy CLIP's
    zero-shot (background, colour, shape, position)."""
    from .fidelity import accuracy_by_value, clip_zero_shot, probe_accuracy, probe_predictions

    preds = probe_predictions(probe, rendered)
    out: dict[str, Any] = {"probe": probe_accuracy(probe, rendered, records, preds),
                           "probe_by_shape": accuracy_by_value(preds["shape"], records,
                                                               "shape")}
    if clip_model is not None:
        out["clip_zero_shot"] = clip_zero_shot(clip_model, rendered, records)
    return out


#: the fidelity conditions that decode the test windows
DECODED_CONDITIONS = ("motion_frames", "decoded", "decoded_captions", "decoded_latents",
                      "decoded_text")


def fidelity_report(zoo, root, cfg, probe, *, n_clips: int = 60,
                    conditions: tuple[str, ...] = ("true_frames", "vae", "truth", "text_only",
                                                   "decoded"),
                    settings: CVRSettings | None = None, unet_weights=None,
                    progress: bool = False, semantics: str = "auto", latents: str = "auto"
                    ) -> dict[str, Any]:
    """Attribute accuracy (probe and toy CLIP) of the first ``n_clips`` test clips per
    condition: ``true_frames`` (the classifiers' ceiling), ``blurred`` (the true frames under
    a Gaussian blur of :data:`BLURRED_SIGMA` pixels: whether a classifier takes soft edges for
    other shapes; the shapes stay plain to the eye), ``vae`` (true frames through the toy
    VAE), ``truth`` (rendered from true caption tokens and true latents), ``text_only`` (from
    true caption tokens alone: the UNet's own fidelity), ``motion_frames`` (MAD's decoded
    latents through the VAE decoder: CVR's stage 1 alone, no UNet), ``decoded`` (SAD + MAD
    single-trial windows through all three stages, as live), and the two halves of
    ``decoded`` swapped in one at a time, which tells which decoder bounds it:
    ``decoded_captions`` (SAD's semantics with the true latents) and ``decoded_latents`` (the
    true captions with MAD's latents), and ``decoded_text`` (the decoded semantics alone, no
    latents). ``semantics``: what the decoded semantics are — SAD's token states (``"sad"``),
    the attribute captioner's captions (``"attributes"``) or, ``"auto"``, as the render
    worker picks (attributes when the zoo has ``attributes/``); ``latents``: MAD's
    (``"mad"``), the layout sketch of the decoded attributes (``"sketch"``) or, ``"auto"``,
    as the worker picks (the sketch with the captioner) — ``motion_frames`` and
    ``decoded_latents`` then score the sketch's latents. ``unet_weights``: a snapshot
    file to load instead of the final weights (the training curve)."""
    from pathlib import Path

    from ..zoo.clip import load_toy_clip
    from ..zoo.unet import load_unet
    from .bench import load_inputs
    from .fidelity import blur_frames

    zoo = Path(zoo)
    cvr = CVR.from_zoo(zoo, settings=settings or CVRSettings())
    if unet_weights is not None:
        unet = load_unet(zoo / "unet", unet_weights)
        cvr = CVR(cvr.vae, unet, None if cvr.video_unet is None else _adapter(zoo),
                  schedule=cvr.schedule, levels=cvr.levels, n_tokens=cvr.n_tokens,
                  settings=cvr.settings)
    clip_model = load_toy_clip(zoo / "clip")
    out: dict[str, Any] = {}
    decoded = None
    truth_in, truth_clips, records = load_inputs("truth", root, cfg, zoo, cvr, clip_model,
                                                 n_clips)
    for cond in conditions:
        if cond == "true_frames":
            clips = truth_clips
        elif cond == "blurred":
            clips = blur_frames(truth_clips, BLURRED_SIGMA)
        elif cond == "vae":
            shape = truth_clips.shape
            clips = cvr.vae.decode(cvr.vae.encode(truth_clips.reshape(-1, *shape[2:])))
            clips = clips.reshape(shape)
        elif cond == "truth":
            clips = render_clips(cvr, truth_in, progress=progress).clips
        elif cond == "text_only":
            inp = RenderInputs(truth_in.clip_ids, truth_in.semantics, None, "truth/text_only")
            clips = render_clips(cvr, inp, progress=progress).clips
        elif cond in DECODED_CONDITIONS:
            if decoded is None:
                decoded, _, _ = load_inputs("decoded", root, cfg, zoo, cvr, clip_model, n_clips,
                                            semantics=semantics, latents=latents)
                out["semantics"] = decoded.source
                assert np.array_equal(decoded.clip_ids, truth_in.clip_ids)  # same windows
            if cond == "decoded":
                clips = render_clips(cvr, decoded, progress=progress).clips
            elif cond == "decoded_captions":
                inp = RenderInputs(decoded.clip_ids, decoded.semantics, truth_in.latents,
                                   "decoded captions + true latents", latents_kind="drawn")
                clips = render_clips(cvr, inp, progress=progress).clips
            elif cond == "decoded_text":
                inp = RenderInputs(decoded.clip_ids, decoded.semantics, None,
                                   "decoded semantics only")
                clips = render_clips(cvr, inp, progress=progress).clips
            elif decoded.latents is None:
                raise ValueError(f"condition {cond!r} needs MAD (mad/ in the zoo)")
            elif cond == "decoded_latents":
                inp = RenderInputs(decoded.clip_ids, truth_in.semantics, decoded.latents,
                                   "true captions + decoded latents",
                                   latents_kind=decoded.latents_kind)
                clips = render_clips(cvr, inp, progress=progress).clips
            else:  # CVR's stage 1 alone: MAD's decoded latents through the VAE decoder
                z = decoded.latents
                clips = cvr.vae.decode(z.reshape(-1, *z.shape[2:]))
                clips = clips.reshape(*z.shape[:2], *clips.shape[1:])
        else:
            raise ValueError(f"condition {cond!r}: want one of true_frames, blurred, vae, "
                             "truth, text_only, " + ", ".join(DECODED_CONDITIONS))
        out[cond] = fidelity(clips, records, probe, clip_model)
    out["clips"] = len(records)
    return out


def _adapter(zoo):
    from ..zoo.unet import load_motion_adapter

    return load_motion_adapter(zoo / "motion")


def fidelity_curve(unet_dir, zoo, root, cfg, probe, out_dir, *, n_clips: int = 60,
                   progress: bool = False) -> list[dict[str, Any]]:
    """Fidelity of every training snapshot (``unet_dir/snapshots``) rendered from true
    caption tokens alone and with true latents: ``curve.csv`` and ``curve.png`` in
    ``out_dir``."""
    import csv
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from ..zoo.unet import block_shape, render_meta

    unet_dir, out_dir = Path(unet_dir), Path(out_dir)
    snaps = sorted((unet_dir / "snapshots").glob("step_*.safetensors"))
    if not snaps:
        raise FileNotFoundError(f"{unet_dir}/snapshots: no step_*.safetensors snapshots")
    meta = json.loads((unet_dir / "config.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # a zoo view whose unet/ is the run's (its config) and the rest the given zoo's; the
        # zoo's motion module only if it was built for a UNet of this run's shape (without
        # it, stage 3 runs the image UNet alone; the rows say which)
        view = Path(tmp)
        names = ["clip", "vae", "sad", "mad"]
        with_motion = (Path(zoo) / "motion").is_dir() and (
            block_shape(render_meta(Path(zoo) / "motion", "motion")["diffusers"])
            == block_shape(meta["diffusers"]))
        if with_motion:
            names.append("motion")
        for name in names:
            if (Path(zoo) / name).is_dir():
                (view / name).symlink_to((Path(zoo) / name).resolve())
        (view / "unet").mkdir()
        shutil.copy(unet_dir / "config.json", view / "unet" / "config.json")
        shutil.copy(snaps[-1], view / "unet" / "unet.safetensors")
        for snap in snaps:
            step = int(snap.stem.split("_")[1])
            r = fidelity_report(view, root, cfg, probe, n_clips=n_clips,
                                conditions=("truth", "text_only"), unet_weights=snap,
                                progress=progress)
            row = {"step": step, "train_seconds": _seconds_at(unet_dir, step),
                   "motion_module": with_motion}
            for cond in ("text_only", "truth"):
                row.update({f"{cond}_{k}": round(v, 4) for k, v in r[cond]["probe"].items()})
            rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _plot_curve(rows, out_dir / "curve.png", meta.get("kind", "unet"))
    return rows


def _seconds_at(run_dir, step: int) -> float | None:
    import csv

    path = run_dir / "loss.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if int(row["step"]) == step:
                return float(row["seconds"])
    return None


def _plot_curve(rows: list[dict[str, Any]], path, kind: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fidelity import ATTRIBUTES

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    steps = [r["step"] for r in rows]
    for ax, cond in zip(axes, ("text_only", "truth")):
        for a in ATTRIBUTES:
            ax.plot(steps, [r[f"{cond}_{a}"] for r in rows], "o-", label=a)
        ax.axhline(0.9, color="grey", ls=":", lw=1)
        ax.set(xlabel=f"toy {kind} training step", title=f"rendered from {cond}", ylim=(0, 1.02))
    axes[0].set_ylabel("attribute accuracy (probe)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
