"""Semantic targets from the toy CLIP, and caption identification of decoded semantics.

Targets: for each clip, the toy CLIP text transformer's per-token hidden states of its
anchor, motion and holistic captions, the first ``n_tokens`` tokens — ``(levels, tokens,
dim)``, what SAD regresses (the paper's 3 x 77 x 768 with real CLIP).

Caption identification (``caption_2way``, ``caption_50way``): a decoded clip's pooled
semantics (mean over tokens, the three levels concatenated) must correlate more with its own
clip's target than with N-1 random other test clips' (100 trials per decoded clip; ``pm`` =
sqrt(p(1-p)/n)). Decoded and true vectors are first centred on the mean *training* caption
(fixed before any test clip is seen): raw CLIP token states share one large caption-template
direction that otherwise dominates every correlation (ridge's 50-way rose from 0.27 to 0.39
with it on the study session). Single-trial: each test repeat decoded on its own; averaged:
the windows of a clip's repeats averaged first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..config import Config
from ..data import Session
from ..ridge import n_way_identification
from .sad import LEVELS, SAD
from .train import SubjectData, subject_windows


class CaptionTargets:
    """Clip id → target tokens, encoded once for every clip of a session."""

    def __init__(self, clips: dict[int, dict], clip_model, n_tokens: int,
                 levels: tuple[str, ...] = LEVELS):
        self.ids = np.array(sorted(clips), dtype=np.int64)
        texts = [clips[int(c)][lvl] for c in self.ids for lvl in levels]
        tok = clip_model.encode_text_tokens(texts, n_tokens)
        self.array = tok.reshape(len(self.ids), len(levels), n_tokens, -1).astype(np.float32)
        self._row = {int(c): i for i, c in enumerate(self.ids)}
        train = [i for i, c in enumerate(self.ids) if clips[int(c)].get("split") == "train"]
        #: Mean pooled training target: the origin identification correlates around.
        self.center = pooled(self.array[train or slice(None)]).mean(axis=0)
        self.levels = tuple(levels)

    def __call__(self, clip_ids: np.ndarray) -> np.ndarray:
        try:
            return self.array[[self._row[int(c)] for c in clip_ids]]
        except KeyError as exc:
            raise KeyError(f"clip {exc} has no caption target") from None

    @property
    def dim(self) -> int:
        return int(self.array.shape[-1])


def pooled(tokens: np.ndarray) -> np.ndarray:
    """(n, levels, tokens, dim) → (n, levels * dim): mean over tokens, levels concatenated."""
    return tokens.mean(axis=2).reshape(len(tokens), -1)


def caption_bank(targets: CaptionTargets, clips: dict[int, dict]):
    """The training clips' captions (``clips`` records with ``split == "train"``) with their
    pooled targets from ``targets``, centred retrieval: the bank SAD engines answer from."""
    from ..engine import CaptionBank

    rows = [i for i, c in enumerate(targets.ids) if clips[int(c)].get("split") == "train"]
    if not rows:
        raise ValueError("caption bank: no training clips (split == 'train') among the targets")
    return CaptionBank(pooled(targets.array[rows]), [clips[int(targets.ids[i])] for i in rows],
                       center=True)


def identification(pred_pooled: np.ndarray, clip_ids: np.ndarray,
                   targets: Callable[[np.ndarray], np.ndarray], trials: int = 100,
                   seed: int = 0, center: np.ndarray | None = None) -> dict:
    """N-way caption identification; ``center`` defaults to ``targets.center``."""
    bank_ids = np.unique(clip_ids)
    bank = pooled(targets(bank_ids))
    if center is None:
        center = getattr(targets, "center", None)
    if center is not None:
        pred_pooled, bank = pred_pooled - center, bank - center
    rng = np.random.default_rng(seed)
    out = {"n_decoded": int(len(pred_pooled))}
    for n in (2, 50):
        r = n_way_identification(pred_pooled, clip_ids, bank, bank_ids, n, trials, rng)
        out[f"caption_{n}way"] = None if r is None else round(r[0], 4)
        out[f"caption_{n}way_pm"] = None if r is None else round(r[1], 4)
    return out


def average_repeats(d: SubjectData) -> SubjectData:
    """The windows of each clip averaged over its repeats (the offline anchors' condition)."""
    from ..ridge import WindowSet
    from ..ridge import average_repeats as average

    avg = average(WindowSet(d.X, d.clip_ids, np.ones(len(d.X), np.int64)))
    return SubjectData(d.label, avg.X.astype(np.float32), avg.clip_ids,
                       np.zeros(len(avg.X), bool))


@torch.no_grad()
def decode_sad(model: SAD, d: SubjectData, steps: int | None = None, seed: int = 0,
               batch: int = 256) -> np.ndarray:
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out = [model(torch.from_numpy(d.X[i: i + batch]), d.label, steps=steps, generator=g)
           for i in range(0, len(d.X), batch)]
    return torch.cat(out).numpy()


def evaluate_subject(session: Session, cfg: Config, targets: CaptionTargets,
                     models: dict[str, SAD] | None = None, steps: int | None = None,
                     trials: int = 100, windows: dict | None = None, ridge=None) -> dict:
    """Caption identification on the test runs for each trained model (``{"sad": ...,
    "mlp": ...}``, those that know this subject) and for a ridge fitted on the same (pooled)
    targets; single-trial and repeat-averaged. ``windows``: precomputed
    :func:`eval_windows`; ``ridge``: that ridge already fitted (anything with
    ``predict``), else a :class:`~sklearn.linear_model.RidgeCV` is fitted here."""
    from sklearn.linear_model import RidgeCV

    w = windows or eval_windows(session, cfg)
    if ridge is None:
        ridge = RidgeCV(alphas=np.asarray(cfg.ridge.alphas)).fit(
            w["train"].X, pooled(targets(w["train"].clip_ids)))
    out: dict = {"single_trial": {}, "averaged": {}}
    for cond in out:
        d = w[cond]
        out[cond]["ridge"] = identification(ridge.predict(d.X), d.clip_ids, targets, trials)
        for name, model in (models or {}).items():
            if session.subject in model.cfg.subjects:
                out[cond][name] = identification(pooled(decode_sad(model, d, steps)),
                                                 d.clip_ids, targets, trials)
    return out


def eval_windows(session: Session, cfg: Config, train: bool = True,
                 noise_free: bool = False) -> dict[str, SubjectData]:
    """The windows an evaluation needs, built once: ``train`` (for the ridge fitted at
    evaluation time), ``single_trial`` (every test repeat) and ``averaged`` (repeats
    averaged); from the noise-free BOLD with ``noise_free``."""
    test = subject_windows(session, cfg, "test", noise_free=noise_free)
    out = {"single_trial": test, "averaged": average_repeats(test)}
    if train:
        out["train"] = subject_windows(session, cfg, "train", noise_free=noise_free)
    return out


def evaluate_levels(model: SAD, windows: dict, targets: CaptionTargets,
                    steps: int | None = None, trials: int = 100) -> dict:
    """Caption identification per target level (and over the model's levels together), for
    the SemVideo ablations: ``targets`` must cover every level, the model any subset."""
    out: dict = {}
    for cond in ("single_trial", "averaged"):
        d = windows[cond]
        tok = decode_sad(model, d, steps)
        rows: dict = {}
        for i, lvl in enumerate(model.cfg.levels):
            j = targets.levels.index(lvl)
            rows[lvl] = _level_id(tok[:, i: i + 1], d.clip_ids, targets, [j], trials)
        idx = [targets.levels.index(lvl) for lvl in model.cfg.levels]
        rows["all"] = _level_id(tok, d.clip_ids, targets, idx, trials)
        out[cond] = rows
    return out


def _level_id(tok: np.ndarray, clip_ids: np.ndarray, targets: CaptionTargets,
              level_idx: list[int], trials: int) -> dict:
    def sub(ids: np.ndarray) -> np.ndarray:
        return targets(ids)[:, level_idx]
    d = targets.dim
    center = np.concatenate([targets.center[j * d:(j + 1) * d] for j in level_idx])
    r = identification(pooled(tok), clip_ids, sub, trials, center=center)
    return {k: r[k] for k in ("caption_2way", "caption_50way")}


def steps_sweep(model: SAD, windows: dict, targets: CaptionTargets, steps: list[int],
                trials: int = 100, timing_trs: int = 50) -> list[dict]:
    """Accuracy and per-TR latency (batch 1, this process's torch threads) against the
    Refineformer's sampling steps."""
    import time

    out = []
    d = windows["single_trial"]
    x = torch.from_numpy(d.X[:timing_trs])
    for k in steps:
        r = {"steps": k}
        for cond in ("single_trial", "averaged"):
            ident = identification(pooled(decode_sad(model, windows[cond], k)),
                                   windows[cond].clip_ids, targets, trials)
            r[cond] = {m: ident[m] for m in ("caption_2way", "caption_50way")}
        times = []
        with torch.no_grad():
            for i in range(len(x)):
                t0 = time.perf_counter()
                model(x[i: i + 1], d.label, steps=k)
                times.append((time.perf_counter() - t0) * 1e3)
        r["ms_per_tr_p50"] = round(float(np.percentile(times, 50)), 3)
        r["ms_per_tr_p99"] = round(float(np.percentile(times, 99)), 3)
        out.append(r)
    return out


def evaluate_mad(mad, sad: SAD | None, windows: dict, targets: LatentTargets,
                 trials: int = 100) -> dict:
    """MAD on the test windows, its cross-attention fed SAD's *decoded* motion semantics
    (as live); without a SAD, the true motion tokens (an upper bound, labelled so)."""
    out: dict = {}
    for cond in ("single_trial", "averaged"):
        d = windows[cond]
        if sad is not None and "motion" in sad.cfg.levels:
            motion = decode_sad(sad, d)[:, sad.cfg.levels.index("motion")]
            src = "sad"
        else:
            motion, src = targets(d.clip_ids)["motion"], "true_motion_tokens"
        out[cond] = {**latent_scores(decode_mad(mad, d, motion), d.clip_ids, targets, trials),
                     "motion_semantics": src}
    return out


class LatentTargets:
    """Clip id → MAD's targets: the toy VAE's per-frame latents and the clip's motion-caption
    tokens (SAD's motion level, what MAD cross-attends to)."""

    def __init__(self, frames: np.ndarray, clips: dict[int, dict], vae, clip_model,
                 n_tokens: int, ids: np.ndarray | None = None):
        self.ids = np.array(sorted(clips) if ids is None else sorted(ids), dtype=np.int64)
        self.latents = vae.encode(np.asarray(frames[self.ids]))
        self.motion = CaptionTargets({int(c): clips[int(c)] for c in self.ids}, clip_model,
                                     n_tokens, ("motion",)).array[:, 0]
        self._row = {int(c): i for i, c in enumerate(self.ids)}

    def rows(self, clip_ids: np.ndarray) -> list[int]:
        try:
            return [self._row[int(c)] for c in clip_ids]
        except KeyError as exc:
            raise KeyError(f"clip {exc} has no latent target") from None

    def __call__(self, clip_ids: np.ndarray) -> dict[str, np.ndarray]:
        r = self.rows(clip_ids)
        return {"latents": self.latents[r], "motion": self.motion[r]}


@torch.no_grad()
def decode_mad(model, d: SubjectData, motion: np.ndarray | None, batch: int = 256) -> np.ndarray:
    """Latents ``(n, frames, C, h, w)`` decoded from windows and motion semantics."""
    model.eval()
    out = []
    for i in range(0, len(d.X), batch):
        m = None if motion is None else torch.from_numpy(motion[i: i + batch])
        out.append(model(torch.from_numpy(d.X[i: i + batch]), d.label, m))
    return torch.cat(out).numpy()


def latent_scores(pred: np.ndarray, clip_ids: np.ndarray, targets: LatentTargets,
                  trials: int = 100, seed: int = 0) -> dict:
    """MAD's figures: latent MSE and cosine to the true clip's latents, and per-frame
    retrieval (each decoded frame's latent against the same frame of the true clip and N-1
    other test clips; 2-way and 50-way, averaged over frames)."""
    true = targets(clip_ids)["latents"]
    p, t = pred.reshape(len(pred), pred.shape[1], -1), true.reshape(len(true), true.shape[1], -1)
    cos = (p * t).sum(-1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1) + 1e-12)
    out = {"latent_mse": round(float(((p - t) ** 2).mean()), 4),
           "latent_cosine": round(float(cos.mean()), 4)}
    bank_ids = np.unique(clip_ids)
    bank = targets(bank_ids)["latents"]
    bank = bank.reshape(len(bank), bank.shape[1], -1)
    for n in (2, 50):
        accs = []
        for f in range(p.shape[1]):
            r = n_way_identification(p[:, f], clip_ids, bank[:, f], bank_ids, n, trials,
                                     np.random.default_rng([seed, f]))
            if r is not None:
                accs.append(r[0])
        out[f"frame_{n}way"] = round(float(np.mean(accs)), 4) if accs else None
    return out
