"""The daemon's render worker: one decoded window → semantics and latents → CVR (→ fusion)
→ a Clip.

:class:`RenderWorker` is the ``renderer`` the :class:`~rtdecode.daemon.Daemon` calls on its
render thread, behind the latest-wins hand-off (a worker that falls behind skips clips, never
volumes). It has ``takes_window = True``, so the daemon calls it as ``worker(semantics,
window)`` with the float32 voxel window its engine decoded, and it runs the neural decoders
itself:

1. SAD decodes the window to token states ``(levels, tokens, dim)``; with an attribute
   captioner, the renderer is conditioned on the captions composed from the window's
   decoded attributes instead (and with the sketch too, SAD is not run: nothing reads its
   states);
2. the motion latents: with a layout sketch (the toy zoo's default), the VAE latents of a
   sketch of those decoded attributes; else MAD's (optional) per-frame VAE latents,
   cross-attending to SAD's motion level;
3. CVR renders the keyframe (stages 1 and 2);
4. fusion (optional) compares the keyframe with the previous clip's and chains the clip to it
   (the previous tail frame becomes frame 0) or opens a new chain;
5. CVR renders the video (stage 3), and fusion remembers its tail.

Each clip is sampled with seed ``seed + tr_index``, so a render is reproducible. Fusion state
is per session: a clip of another session than the last one starts afresh at chain 0.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from ..messages import Clip, Semantics
from ..models.mad import MAD
from ..models.sad import SAD, in_features
from .cvr import CVR, CVRSettings
from .fusion import Fusion


class RenderWorker:
    """Render a :class:`~rtdecode.messages.Clip` from a decoded window.

    Parameters
    ----------
    sad:
        The semantic decoder; its ``levels``, ``n_tokens`` and ``token_dim`` must match the
        CVR's conditioning (levels, tokens per level, the UNet's ``cross_attention_dim``).
    cvr:
        The renderer.
    subject:
        The subject label whose projections decode the window (SAD's and MAD's).
    mad:
        The motion decoder, or None (the CVR then renders from the keyframe alone).
    fusion:
        Multi-fMRI fusion, or None (every clip opens its own chain).
    fps:
        Frame rate of the clips (the toy stimuli: 8 frames in 2 s).
    frames:
        Frames per clip; with a MAD it must equal MAD's ``n_frames`` (None: MAD's, or 8).
    sad_steps:
        Refineformer sampling steps (None: SAD's ``sample_steps``).
    seed:
        Clip at TR *k* is sampled with seed ``seed + k``.
    threads:
        torch threads for a render (None: leave torch's setting).
    captioner:
        An :class:`~rtdecode.render.captioner.AttributeCaptioner`, or None (CVR takes SAD's
        token states). With one, each clip's header carries the composed ``caption``
        (holistic level) and the decoded ``attributes``.
    sketch:
        A :class:`~rtdecode.render.layout.LayoutSketch` (needs the ``captioner``), or None.
        With one, CVR's motion latents are the sketch of the decoded attributes, and MAD is
        not run; without, they are MAD's (or none). Each clip's header says which
        (``latents``: ``"sketch"``, ``"mad"`` or ``"none"``).
    """

    takes_window = True

    def __init__(self, sad: SAD, cvr: CVR, subject: str, *, mad: MAD | None = None,
                 fusion: Fusion | None = None, fps: float = 4.0, frames: int | None = None,
                 sad_steps: int | None = None, seed: int = 0, threads: int | None = None,
                 captioner=None, sketch=None):
        c = sad.cfg
        width = int(cvr.unet.config.cross_attention_dim)
        errors = []
        if tuple(c.levels) != tuple(cvr.levels):
            errors.append(f"SAD levels {tuple(c.levels)} != CVR levels {tuple(cvr.levels)}")
        if c.n_tokens != cvr.n_tokens:
            errors.append(f"SAD n_tokens {c.n_tokens} != CVR n_tokens {cvr.n_tokens}")
        if c.token_dim != width:
            errors.append(f"SAD token_dim {c.token_dim} != the UNet's cross_attention_dim "
                          f"{width}")
        if subject not in sad.proj:
            errors.append(f"subject {subject!r} unknown to SAD (has {list(sad.proj)})")
        if mad is not None:
            m = mad.cfg
            if subject not in mad.proj:
                errors.append(f"subject {subject!r} unknown to MAD (has {list(mad.proj)})")
            elif subject in sad.proj and in_features(mad.proj[subject]) != in_features(
                    sad.proj[subject]):
                errors.append(f"MAD takes {in_features(mad.proj[subject])} voxels for "
                              f"{subject!r}, SAD {in_features(sad.proj[subject])}")
            if tuple(m.latent_shape) != tuple(cvr.vae.latent_shape):
                errors.append(f"MAD latent_shape {tuple(m.latent_shape)} != the VAE's "
                              f"{tuple(cvr.vae.latent_shape)}")
            if m.use_cross and "motion" not in c.levels:
                errors.append(f"MAD cross-attends to SAD's motion level, SAD has {c.levels}")
            if m.use_cross and m.token_dim != c.token_dim:
                errors.append(f"MAD token_dim {m.token_dim} != SAD token_dim {c.token_dim}")
            if frames is not None and frames != m.n_frames:
                errors.append(f"frames {frames} != MAD n_frames {m.n_frames}")
        if captioner is not None:
            if tuple(captioner.levels) != tuple(cvr.levels) or captioner.n_tokens != \
                    cvr.n_tokens:
                errors.append(f"captioner layout {tuple(captioner.levels)} x "
                              f"{captioner.n_tokens} tokens != CVR's {tuple(cvr.levels)} x "
                              f"{cvr.n_tokens}")
            if subject in sad.proj and captioner.n_inputs != in_features(sad.proj[subject]):
                errors.append(f"the attribute captioner takes {captioner.n_inputs} inputs, "
                              f"SAD {in_features(sad.proj[subject])} for {subject!r}")
        if sketch is not None:
            if captioner is None:
                errors.append("a layout sketch draws the attribute captioner's attributes: "
                              "give a captioner too")
            want = mad.cfg.n_frames if mad is not None else (frames or 8)
            if sketch.frames != want:
                errors.append(f"sketch frames {sketch.frames} != the clips' {want}")
        if not (isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0):
            errors.append(f"fps {fps!r}: want a number > 0")
        if frames is not None and frames < 1:
            errors.append(f"frames {frames}: want >= 1")
        if errors:
            raise ValueError("RenderWorker: " + "; ".join(errors))
        self.sad, self.mad, self.cvr, self.fusion = sad.eval(), mad, cvr, fusion
        if mad is not None:
            mad.eval()
        self.subject = subject
        self.n_voxels = in_features(sad.proj[subject])
        self.fps = float(fps)
        self.frames = mad.cfg.n_frames if mad is not None else (frames or 8)
        self.sad_steps, self.seed, self.threads = sad_steps, int(seed), threads
        self.captioner, self.sketch = captioner, sketch
        self._session: str | None = None
        self._next_chain = 0

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_zoo(cls, zoo_dir: str | Path, subject: str, *,
                 settings: CVRSettings | None = None, fusion_threshold: float | None = 0.8,
                 threads: int | None = None, semantics: str = "auto", latents: str = "auto",
                 **kw) -> RenderWorker:
        """The toy zoo's worker: ``sad/``, ``mad/`` (optional), the renderer's ``vae/``,
        ``unet/``, ``motion/`` (optional) and, for fusion (``fusion_threshold`` not None), the
        toy CLIP ``clip/`` as keyframe embedder. ``semantics``: what conditions the renderer,
        ``"sad"`` (SAD's token states), ``"attributes"`` (captions composed from the zoo's
        ``attributes/`` decoder) or ``"auto"`` (attributes when the zoo has the decoder).
        ``latents``: CVR's motion latents, ``"mad"`` (MAD's, when the zoo has ``mad/``),
        ``"sketch"`` (the layout sketch of the decoded attributes; needs the captioner) or
        ``"auto"`` (the sketch with the captioner, else MAD's). ``kw`` go to the
        constructor."""
        from ..models.train import load_checkpoint
        from ..zoo.clip import load_toy_clip

        zoo = Path(zoo_dir)
        for name, how in (("sad", "rtdecode train sad"), ("vae", "rtdecode train vae"),
                          ("unet", "rtdecode train unet")):
            if not (zoo / name).is_dir():
                raise FileNotFoundError(f"{zoo}: no {name}/ checkpoint; rendering needs it: "
                                        f"train it with `{how}` (or `make zoo`)")
        sad, _ = load_checkpoint(zoo / "sad")
        if not isinstance(sad, SAD):
            raise ValueError(f"{zoo / 'sad'}: holds a {type(sad).__name__}, not a SAD")
        mad = None
        if (zoo / "mad").is_dir():
            mad, _ = load_checkpoint(zoo / "mad")
            if not isinstance(mad, MAD):
                raise ValueError(f"{zoo / 'mad'}: holds a {type(mad).__name__}, not a MAD")
        cvr = CVR.from_zoo(zoo, settings=settings or CVRSettings(), threads=threads)
        captioner = load_captioner(zoo, cvr, semantics)
        sketch = load_sketch(cvr, captioner, latents, mad.cfg.n_frames if mad else 8)
        if sketch is not None:
            mad = None  # not run: the sketch gives the latents
        fusion = None
        if fusion_threshold is not None:  # the toy CLIP once, shared with the captioner
            clip = captioner.clip_model if captioner else load_toy_clip(zoo / "clip")
            fusion = Fusion(clip.encode_image, fusion_threshold)
        return cls(sad, cvr, subject, mad=mad, fusion=fusion, threads=threads,
                   captioner=captioner, sketch=sketch, **kw)

    # ------------------------------------------------------------------ rendering
    def _check_window(self, window: np.ndarray) -> np.ndarray:
        x = np.asarray(window)
        if x.shape != (self.n_voxels,):
            raise ValueError(f"window {x.shape}: SAD's projection of {self.subject!r} takes "
                             f"({self.n_voxels},)")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise ValueError("window: contains NaN or inf")
        return x

    def __call__(self, sem: Semantics, window: np.ndarray) -> Clip:
        """Render the clip of ``sem.tr_index`` from its decoder input ``window``
        ``(n_voxels,)``; ``sem`` gives the clip's TR and session (its semantics are the
        daemon engine's pooled output; the worker decodes the token states itself)."""
        x = self._check_window(window)
        if sem.session != self._session:
            self._session, self._next_chain = sem.session, 0
            if self.fusion is not None:
                self.fusion.reset()
        clip_id = int(sem.tr_index)
        seed = self.seed + clip_id
        settings = dataclasses.replace(self.cvr.settings, seed=seed).for_latents(
            "regressed" if self.sketch is None else "drawn")
        prev = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        secs: dict[str, float] = {}
        try:
            with torch.no_grad():
                t0 = time.perf_counter()
                xt = torch.from_numpy(x[None])
                tokens = sem_tokens = None
                if self.captioner is None or self.sketch is None:
                    # SAD's token states condition CVR (no captioner) or steer MAD; with the
                    # captioner and the sketch nothing reads them
                    g = torch.Generator().manual_seed(seed)
                    tokens = self.sad(xt, self.subject, steps=self.sad_steps, generator=g)[0]
                    sem_tokens = tokens.numpy()
                    secs["sad"] = time.perf_counter() - t0
                t1 = time.perf_counter()
                caption = None
                if self.captioner is not None:
                    toks, caps = self.captioner(x[None], [seed])
                    sem_tokens, caption = toks[0], caps[0]
                    secs["captioner"] = time.perf_counter() - t1
                latents, source = None, "none"
                t3 = time.perf_counter()
                if self.sketch is not None:
                    latents, source = self.sketch([caption["attributes"]])[0], "sketch"
                    secs["sketch"] = time.perf_counter() - t3
                elif self.mad is not None:
                    lv = self.sad.cfg.levels
                    motion = tokens[lv.index("motion")][None] if "motion" in lv else None
                    latents, source = self.mad(xt, self.subject, motion)[0].numpy(), "mad"
                    secs["mad"] = time.perf_counter() - t3
                chained, similarity = False, None
                if self.fusion is None:
                    out = self.cvr(sem_tokens, latents, frames=self.frames, settings=settings)
                    chain_id = self._next_chain
                    self._next_chain += 1
                else:
                    anchor = self.cvr.anchor(sem_tokens, latents, settings=settings)
                    t2 = time.perf_counter()
                    decision = self.fusion.decide(clip_id, anchor.frame)
                    secs["fusion"] = time.perf_counter() - t2
                    out = self.cvr(sem_tokens, frames=self.frames, settings=settings,
                                   anchor=anchor, first_frame=decision.first_frame)
                    self.fusion.commit(clip_id, out.frames)
                    chain_id, chained = decision.chain_id, decision.chained
                    similarity = None if decision.similarity is None \
                        else round(float(decision.similarity), 4)
        finally:
            torch.set_num_threads(prev)
        stage = {k: round(v, 4) for k, v in secs.items()}
        stage.update({k: v for k, v in out.seconds.items() if k != "total"})
        stage["total"] = round(sum(stage.values()), 4)
        meta = {"chained": chained, "similarity": similarity, "stage_seconds": stage,
                "unet_evals": out.unet_evals, "seed": seed, "latents": source}
        if caption is not None:
            meta.update(caption=caption["holistic"], attributes=caption["attributes"])
        return Clip(clip_id=clip_id, chain_id=chain_id, tr_index=clip_id, frames=out.frames,
                    fps=self.fps, session=sem.session, meta=meta)


#: what may condition the renderer (``RenderWorker.from_zoo``'s ``semantics``)
SEMANTICS = ("auto", "sad", "attributes")


def load_captioner(zoo: str | Path, cvr: CVR, semantics: str = "auto", clip_model=None):
    """The zoo's :class:`~rtdecode.render.captioner.AttributeCaptioner` for ``semantics``
    ``"attributes"`` (an error without ``attributes/``) or ``"auto"`` (None without it);
    None for ``"sad"``. ``clip_model``: the zoo's toy CLIP, if already loaded."""
    from .captioner import ZOO_NAME, AttributeCaptioner

    if semantics not in SEMANTICS:
        raise ValueError(f"semantics {semantics!r}: want one of {', '.join(SEMANTICS)}")
    have = (Path(zoo) / ZOO_NAME).is_dir()
    if semantics == "sad" or (semantics == "auto" and not have):
        return None
    if not have:
        raise FileNotFoundError(f"{zoo}: no {ZOO_NAME}/ decoder for semantics 'attributes': "
                                f"train it with `rtdecode train ridge --out "
                                f"{Path(zoo) / ZOO_NAME}`")
    return AttributeCaptioner.from_zoo(zoo, cvr.levels, cvr.n_tokens, clip_model)


def load_sketch(cvr: CVR, captioner, latents: str = "auto", frames: int = 8):
    """The :class:`~rtdecode.render.layout.LayoutSketch` for ``latents``: ``"sketch"`` (an
    error without a ``captioner``) or ``"auto"`` (the sketch when there is a captioner);
    None for ``"mad"``."""
    from .layout import LATENTS, LayoutSketch

    if latents not in LATENTS:
        raise ValueError(f"latents {latents!r}: want one of {', '.join(LATENTS)}")
    if latents == "mad" or (latents == "auto" and captioner is None):
        return None
    if captioner is None:
        raise ValueError("latents 'sketch' draws the decoded attributes: it needs the "
                         "attribute captioner (semantics 'attributes' or 'auto', and the "
                         "zoo's attributes/ decoder)")
    return LayoutSketch(cvr.vae, frames)
