"""Semantic targets from the toy CLIP, and caption identification of decoded semantics.

Targets: for each clip, the toy CLIP text transformer's per-token hidden states of its
anchor, motion and holistic captions, the first ``n_tokens`` tokens — ``(levels, tokens,
dim)``, what SAD regresses (the paper's 3 x 77 x 768 with real CLIP).

Caption identification (``caption_2way``, ``caption_50way``): a decoded clip's pooled
semantics (mean over tokens, the three levels concatenated) must correlate more with its own
clip's target than with N-1 random other test clips' (100 trials per decoded clip; ``pm`` =
sqrt(p(1-p)/n)). Single-trial: each test repeat decoded on its own; averaged: the windows of
a clip's repeats averaged first.
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
        tok = clip_model.encode_text_tokens(texts)[:, :n_tokens]
        self.array = tok.reshape(len(self.ids), len(levels), n_tokens, -1).astype(np.float32)
        self._row = {int(c): i for i, c in enumerate(self.ids)}

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


def identification(pred_pooled: np.ndarray, clip_ids: np.ndarray,
                   targets: Callable[[np.ndarray], np.ndarray], trials: int = 100,
                   seed: int = 0) -> dict:
    bank_ids = np.unique(clip_ids)
    bank = pooled(targets(bank_ids))
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
                     trials: int = 100) -> dict:
    """Caption identification on the test runs for each trained model (``{"sad": ...,
    "mlp": ...}``, those that know this subject) and for a ridge fitted on the same (pooled)
    targets; single-trial and repeat-averaged."""
    from sklearn.linear_model import RidgeCV

    train = subject_windows(session, cfg, "train")
    test = subject_windows(session, cfg, "test")
    avg = average_repeats(test)
    ridge = RidgeCV(alphas=np.asarray(cfg.ridge.alphas)).fit(train.X,
                                                             pooled(targets(train.clip_ids)))
    out: dict = {"single_trial": {}, "averaged": {}}
    for cond, d in (("single_trial", test), ("averaged", avg)):
        out[cond]["ridge"] = identification(ridge.predict(d.X), d.clip_ids, targets, trials)
        for name, model in (models or {}).items():
            if session.subject in model.cfg.subjects:
                out[cond][name] = identification(pooled(decode_sad(model, d, steps)),
                                                 d.clip_ids, targets, trials)
    return out
