"""Evaluating a model zoo on a session: what ``rtdecode eval`` and ``rtdecode report`` share.

A :class:`Zoo` holds the checkpoints found in a folder (``clip/`` always; ``sad/``, ``mlp/``,
``noise_free/``, ``mad/`` when present); a :class:`SubjectEval` holds what one subject's
evaluation needs, built once (session, caption targets, test and training windows), after
checking every checkpoint was trained on this data. :func:`subject_report` gives one
subject's caption figures (the per-subject dict of ``rtdecode eval --json``),
:func:`aggregate` the means over subjects (its top level).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..data import DataError, Session
from . import evaluate as ev

CONDITIONS = ("single_trial", "averaged")
#: Checkpoint folders of a zoo that ``rtdecode eval`` evaluates, when present.
CHECKPOINTS = ("sad", "mlp", "noise_free", "mad")


@dataclass
class Zoo:
    """The checkpoints of a zoo folder (``None`` where a folder is absent)."""

    path: Path
    clip: Any
    models: dict[str, Any] = field(default_factory=dict)   # name -> SAD / MAD or None
    metas: dict[str, dict] = field(default_factory=dict)   # name -> its config.json

    @classmethod
    def load(cls, path: str | Path) -> Zoo:
        """Load ``clip/`` (required) and every checkpoint of :data:`CHECKPOINTS` present."""
        from ..zoo.clip import load_toy_clip
        from .train import load_checkpoint

        path = Path(path)
        zoo = cls(path, load_toy_clip(path / "clip"))
        for name in CHECKPOINTS:
            model, meta = load_checkpoint(path / name) if (path / name).is_dir() else (None, {})
            zoo.models[name], zoo.metas[name] = model, meta
        return zoo

    @property
    def sad(self):
        return self.models.get("sad")

    @property
    def mlp(self):
        return self.models.get("mlp")

    @property
    def noise_free(self):
        return self.models.get("noise_free")

    @property
    def mad(self):
        return self.models.get("mad")

    @property
    def decoders(self) -> list:
        """The semantic decoders present (SAD, MLP, noise-free SAD)."""
        return [m for m in (self.sad, self.mlp, self.noise_free) if m is not None]

    @property
    def n_tokens(self) -> int:
        return self.decoders[0].cfg.n_tokens if self.decoders else 16

    def subjects(self, root: Path) -> list[str]:
        """The session's subjects some decoder of the zoo knows (all without decoders)."""
        from ..data import list_subjects

        have = list_subjects(root)
        known = self.decoders
        labels = [s for s in have if not known or any(s in m.cfg.subjects for m in known)]
        if not labels:
            raise DataError(f"{root}: none of its subjects {have} is known to the checkpoints "
                            f"in {self.path}")
        return labels

    def vae(self):
        from ..zoo.vae import load_toy_vae

        return load_toy_vae(self.path / "vae")


@dataclass
class SubjectEval:
    """One subject's evaluation inputs: session, caption targets and windows (train,
    single-trial, averaged), with every checkpoint's provenance checked against the data."""

    root: Path
    session: Session
    cfg: Config
    zoo: Zoo
    targets: ev.CaptionTargets
    windows: dict[str, Any]
    provenance: dict

    @classmethod
    def build(cls, root: Path, subject: str, cfg: Config, zoo: Zoo) -> SubjectEval:
        from ..data import load_session
        from ..engine import check_provenance, provenance

        session = load_session(root, subject)
        prov = provenance(session, cfg)
        for meta in zoo.metas.values():
            check_provenance(meta, subject, prov)
        targets = ev.CaptionTargets(session.clips, zoo.clip, zoo.n_tokens)
        return cls(Path(root), session, cfg, zoo, targets, ev.eval_windows(session, cfg), prov)

    @property
    def subject(self) -> str:
        return self.session.subject

    def knows(self, model) -> bool:
        return model is not None and self.subject in model.cfg.subjects


def caption_scores(se: SubjectEval, steps: int | None, trials: int, ridge=None) -> dict:
    """Caption identification of ridge (``ridge``: already fitted to the pooled caption
    states of the training windows), SAD, MLP and the noise-free ceiling (those present)."""
    models = {k: m for k, m in (("sad", se.zoo.sad), ("mlp", se.zoo.mlp)) if m is not None}
    r = ev.evaluate_subject(se.session, se.cfg, se.targets, models, steps, trials, se.windows,
                            ridge)
    nf = se.zoo.noise_free
    if se.knows(nf):
        wn = ev.eval_windows(se.session, se.cfg, train=False, noise_free=True)
        for cond in CONDITIONS:
            r[cond]["noise_free"] = ev.identification(
                ev.pooled(ev.decode_sad(nf, wn[cond], steps)), wn[cond].clip_ids, se.targets,
                trials)
    return r


def mad_scores(se: SubjectEval, trials: int) -> dict:
    """MAD's latent figures per condition (its cross-attention fed SAD's decoded motion)."""
    from ..zoo.clip import load_stimuli

    mad = se.zoo.mad
    frames, _ = load_stimuli(se.root)
    test_ids = np.unique(se.windows["single_trial"].clip_ids)
    lt = ev.LatentTargets(frames, {int(c): se.session.clips[int(c)] for c in test_ids},
                          se.zoo.vae(), se.zoo.clip, mad.cfg.motion_tokens)
    return ev.evaluate_mad(mad, se.zoo.sad, se.windows, lt, trials)


def level_scores(se: SubjectEval, ablations: Path | None, steps: int | None, trials: int
                 ) -> dict:
    """Per-level caption identification of SAD and of every checkpoint folder in
    ``ablations`` (None: SAD's alone)."""
    from ..engine import check_provenance
    from .train import load_checkpoint

    out = {"sad": ev.evaluate_levels(se.zoo.sad, se.windows, se.targets, steps, trials)}
    folders = [] if ablations is None else sorted(p for p in Path(ablations).iterdir()
                                                  if p.is_dir())
    for d in folders:
        model, meta = load_checkpoint(d)
        check_provenance(meta, se.subject, se.provenance)
        out[d.name] = ev.evaluate_levels(model, se.windows, se.targets, steps, trials)
    return out


def subject_report(se: SubjectEval, *, steps: int | None = None, trials: int = 100,
                   oracle: bool = True, mad: bool = True, ablations: Path | None = None,
                   sweep: list[int] | None = None, ridge=None,
                   say: Callable[[str], None] = print) -> dict:
    """One subject's figures: ``{single_trial: {decoder: ...}, averaged: ..., levels?,
    steps_sweep?}`` — decoders ridge, sad, mlp, noise_free, oracle, mad (those available;
    ``mad=False`` skips MAD's latent scores, which VAE-encode every test clip).
    ``ridge``: the caption ridge already fitted; ``say`` reports what was skipped (the
    oracle on real data)."""
    r = caption_scores(se, steps, trials, ridge)
    if oracle:
        from .oracle import oracle_identification

        try:
            o = oracle_identification(se.session, cfg=se.cfg, trials=trials)
        except DataError as exc:  # real data: no simulator to ask
            say(f"oracle skipped: {exc}")
        else:
            for cond in CONDITIONS:
                r[cond]["oracle"] = o[cond]
    if mad and se.knows(se.zoo.mad):
        m = mad_scores(se, trials)
        for cond in CONDITIONS:
            r[cond]["mad"] = m[cond]
    if ablations is not None and se.zoo.sad is not None:
        r["levels"] = level_scores(se, ablations, steps, trials)
    if sweep and se.zoo.sad is not None:
        r["steps_sweep"] = ev.steps_sweep(se.zoo.sad, se.windows, se.targets, sweep, trials)
    return r


def aggregate(per: dict[str, dict]) -> dict:
    """``rtdecode eval --json``: per condition and decoder the mean over subjects of every
    numeric figure (4 decimals), ``chance``, and the per-subject reports under ``subjects``."""
    labels = list(per)
    out: dict = {}
    for cond in CONDITIONS:
        out[cond] = {}
        for dec in per[labels[0]][cond]:
            keys = [k for k, v in per[labels[0]][cond][dec].items()
                    if isinstance(v, (int, float)) and k != "n_decoded"]
            out[cond][dec] = {k: round(float(np.mean([per[s][cond][dec][k] for s in labels])),
                                       4) for k in keys}
    out["chance"] = {"caption_2way": 0.5, "caption_50way": 0.02}
    out["subjects"] = per
    return out
