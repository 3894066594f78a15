"""Ridge baseline: windowed, causally preprocessed voxels -> scene-attribute targets.

The first real decoder and the floor every later decoder must beat. Targets are the
concatenated one-hot scene attributes of each clip (background, texture, shape, colour,
motion, position, size, number of objects). Evaluated on held-out test runs by

- attribute accuracy: argmax within each attribute group against the truth;
- N-way identification (2-way, 50-way): the decoded vector's correlation with the true clip's
  target must beat N-1 randomly drawn other test clips (with different targets); 100 trials
  per decoded clip; ``pm`` is ``sqrt(p (1 - p) / n_decoded_clips)``.

Both single-trial (each test repeat decoded on its own, as live) and repeat-averaged (the
windows of all repeats of a clip averaged first, as the offline anchors report).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import RidgeCV

from .config import Config
from .data import DataError, Session
from .preprocess import offline_preprocess, preprocess_run, select_voxels, window_features
from .simulator.stimuli import ATTRIBUTE_GROUPS, attribute_onehot, attribute_slices


@dataclass
class WindowSet:
    """Decoder inputs of one split: one row per complete clip window."""

    X: np.ndarray          # (n, D) float32
    clip_ids: np.ndarray   # (n,)
    repeats: np.ndarray    # (n,) presentation number of the clip's segment
    runs: np.ndarray | None = None  # (n,) index of the window's run within the split


def build_windows(session: Session, task: str, cfg: Config, *, online: bool = True,
                  voxels: np.ndarray | None = None, noise_free: bool = False) -> WindowSet:
    """Preprocess every run of ``task`` and cut its clip windows (``noise_free``: from the
    simulator's noise-free BOLD instead of the scan)."""
    xs, ids, reps, idx = [], [], [], []
    runs = session.runs_of(task)
    if not runs:
        raise DataError(f"{session.root}: subject {session.subject} has no {task!r} runs")
    for i, run in enumerate(runs):
        data = run.noise_free() if noise_free else run.data()
        if voxels is not None:
            data = data[:, voxels]
        feats = preprocess_run(data, run.tr, cfg.preprocess) if online \
            else offline_preprocess(data, clip_z=cfg.preprocess.clip_z)
        X, complete = window_features(feats, run.stim_trs, cfg.window)
        xs.append(X)
        ids.append(run.clip_ids[complete])
        reps.append(np.full(int(complete.sum()), run.repeat))
        idx.append(np.full(int(complete.sum()), i))
    return WindowSet(np.concatenate(xs).astype(np.float32), np.concatenate(ids),
                     np.concatenate(reps), np.concatenate(idx))


def targets(session: Session, clip_ids: np.ndarray) -> np.ndarray:
    if not session.clips:
        raise DataError(f"{session.root}: no stimuli/captions.jsonl with clip attributes; "
                        "the ridge baseline needs them as targets")
    try:
        return np.stack([attribute_onehot(session.clips[int(c)]["attributes"])
                         for c in clip_ids])
    except KeyError as exc:
        raise DataError(f"{session.root}: clip {exc} missing from stimuli/captions.jsonl") \
            from None


def average_repeats(ws: WindowSet) -> WindowSet:
    """Average the windows of every clip over its repeats."""
    uniq = np.unique(ws.clip_ids)
    X = np.stack([ws.X[ws.clip_ids == c].mean(axis=0) for c in uniq])
    return WindowSet(X, uniq, np.ones(uniq.size, np.int64))


def _corr_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
    return a @ b.T


def n_way_identification(pred: np.ndarray, pred_clip: np.ndarray, bank: np.ndarray,
                         bank_clip: np.ndarray, n_way: int, trials: int,
                         rng: np.random.Generator) -> tuple[float, float] | None:
    """N-way top-1 identification of decoded vectors against a bank of true targets.

    Returns ``(accuracy, pm)`` or None when the bank has fewer than ``n_way`` distinct
    candidates for some clip.
    """
    S = _corr_matrix(pred.astype(np.float64), bank.astype(np.float64))
    return n_way_from_scores(S, pred_clip, bank, bank_clip, n_way, trials, rng)


def n_way_from_scores(S: np.ndarray, pred_clip: np.ndarray, bank: np.ndarray,
                      bank_clip: np.ndarray, n_way: int, trials: int,
                      rng: np.random.Generator) -> tuple[float, float] | None:
    """The N-way trial protocol on a ready score matrix (higher = more like that clip).

    ``S[i, j]`` scores bank clip ``bank_clip[j]`` for decoded sample ``i`` whose true clip is
    ``pred_clip[i]``. ``bank`` rows only define the distractors: bank clips whose row differs
    from the true clip's. Each trial draws ``n_way - 1`` distinct distractors; a hit is a true
    score strictly above all of theirs. Returns ``(accuracy, pm)`` or None when some clip has
    fewer than ``n_way - 1`` distractors.
    """
    pos = {int(c): i for i, c in enumerate(bank_clip)}
    hits = np.zeros(len(pred_clip))
    for i, c in enumerate(pred_clip):
        t = pos[int(c)]
        cand = np.flatnonzero(np.any(bank != bank[t], axis=1))
        if cand.size < n_way - 1:
            return None
        keys = rng.random((trials, cand.size))
        draws = cand[np.argpartition(keys, n_way - 2, axis=1)[:, : n_way - 1]]
        hits[i] = np.mean(S[i, t] > S[i, draws].max(axis=1))
    p = float(hits.mean())
    return p, float(np.sqrt(p * (1 - p) / len(pred_clip)))


def group_accuracy(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {name: float(np.mean(pred[:, sl].argmax(1) == true[:, sl].argmax(1)))
            for name, sl in attribute_slices().items()}


def score(pred: np.ndarray, clip_ids: np.ndarray, session: Session, cfg: Config,
          seed: int = 0) -> dict:
    """Identification and attribute accuracy of decoded target vectors."""
    true = targets(session, clip_ids)
    bank_ids = np.unique(clip_ids)
    bank = targets(session, bank_ids)
    rng = np.random.default_rng(seed)
    out: dict = {"n_decoded": int(len(pred))}
    for n in (2, 50):
        r = n_way_identification(pred, clip_ids, bank, bank_ids, n, cfg.ridge.n_way_trials, rng)
        out[f"{n}way"] = None if r is None else round(r[0], 4)
        out[f"{n}way_pm"] = None if r is None else round(r[1], 4)
    groups = group_accuracy(pred, true)
    out["attributes"] = {k: round(v, 4) for k, v in groups.items()}
    out["attribute_mean"] = round(float(np.mean(list(groups.values()))), 4)
    return out


def chance_levels() -> dict:
    groups = {k: round(1.0 / len(v), 4) for k, v in ATTRIBUTE_GROUPS.items()}
    return {"2way": 0.5, "50way": 0.02, "attributes": groups,
            "attribute_mean": round(float(np.mean(list(groups.values()))), 4)}


@dataclass
class RidgeDecoder:
    model: RidgeCV
    voxels: np.ndarray | None

    @property
    def alpha(self) -> float:
        return float(self.model.alpha_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(X).astype(np.float32)


def fit(train: WindowSet, Y: np.ndarray, cfg: Config, voxels: np.ndarray | None = None
        ) -> RidgeDecoder:
    model = RidgeCV(alphas=np.asarray(cfg.ridge.alphas), alpha_per_target=False)
    model.fit(train.X, Y)
    return RidgeDecoder(model, voxels)


def run_ridge(session: Session, cfg: Config, *, shuffle: bool = False, online: bool = True,
              seed: int = 0) -> dict:
    """Fit on the training runs, evaluate on the test runs; a JSON-ready report.

    ``shuffle`` permutes the training targets across clips (a control: it must land at
    chance, proving the signal is real and the split does not leak).
    """
    voxels = select_voxels(session, cfg)
    train = build_windows(session, "train", cfg, online=online, voxels=voxels)
    test = build_windows(session, "test", cfg, online=online, voxels=voxels)
    overlap = np.intersect1d(train.clip_ids, test.clip_ids)
    if overlap.size:
        raise DataError(f"{session.root}: {overlap.size} clip(s) are in both the training "
                        "and the test runs; the split leaks")
    Y = targets(session, train.clip_ids)
    if shuffle:
        Y = Y[np.random.default_rng(seed).permutation(len(Y))]
    dec = fit(train, Y, cfg, voxels)
    avg = average_repeats(test)
    return {
        "subject": session.subject,
        "n_voxels": int(train.X.shape[1] if cfg.window.reduce == "mean"
                        else train.X.shape[1] // cfg.window.width_trs),
        "n_train_clips": int(len(train.X)),
        "n_test_clips": int(np.unique(test.clip_ids).size),
        "test_repeats": int(test.repeats.max()),
        "preprocessing": "online" if online else "offline",
        "shuffled_labels": shuffle,
        "alpha": dec.alpha,
        "single_trial": score(dec.predict(test.X), test.clip_ids, session, cfg, seed),
        "averaged": score(dec.predict(avg.X), avg.clip_ids, session, cfg, seed),
        "chance": chance_levels(),
    }


def train_model(session: Session, cfg: Config, *, split: str = "train"):
    """Fit ridge on ``split`` runs and package it with its caption bank and provenance."""
    from .engine import CaptionBank, DecoderModel, RidgeEngine, provenance

    voxels = select_voxels(session, cfg)
    train = build_windows(session, split, cfg, voxels=voxels)
    Y = targets(session, train.clip_ids)
    dec = fit(train, Y, cfg, voxels)
    ids = np.unique(train.clip_ids)
    bank = CaptionBank(targets(session, ids),
                       [{"clip_id": int(c), **{k: session.clips[int(c)][k] for k in
                                               ("basic", "anchor", "motion", "holistic")}}
                        for c in ids])
    engine = RidgeEngine(dec.model.coef_.astype(np.float32),
                         np.atleast_1d(dec.model.intercept_).astype(np.float32))
    meta = {"kind": "ridge", "targets": "attributes", "alpha": dec.alpha,
            "n_train_clips": int(len(train.X)), "trained_on": provenance(session, cfg)}
    return DecoderModel(engine, bank, voxels, meta)


class DualRidge:
    """Ridge regression solved in its dual form, for many windows' worth of wide inputs and
    any number of targets: the ``n x n`` Gram matrix of the centred training inputs
    (float32 products, float64 eigendecomposition) is decomposed once, then each target
    set picks its own ``alpha`` from ``alphas`` by the exact leave-one-out error, as
    :class:`~sklearn.linear_model.RidgeCV` does (targets wider than ``probe_dims`` are
    scored on a seeded Gaussian random projection, so the choice costs the same for 8,000
    targets as for 64).

    Two ways to use a fit: :meth:`fit` returns the primal linear map (``features x
    targets``; for narrow targets such as pooled caption states), :meth:`predict` predicts a
    few rows without forming it (``m x n x targets``; for wide targets such as token states
    or frame latents). Inputs and targets are centred on their training means (the
    intercept); the leave-one-out error ignores that the mean moves when a row is left out.
    """

    def __init__(self, X: np.ndarray, alphas: tuple[float, ...] | list[float]):
        if X.ndim != 2 or len(X) < 2:
            raise ValueError(f"DualRidge: X {X.shape}, want (n >= 2, features)")
        if len(alphas) == 0 or min(alphas) <= 0:
            raise ValueError(f"DualRidge: alphas {list(alphas)}, want positive values")
        self.alphas = tuple(float(a) for a in alphas)
        self.x_mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        self._Xc = np.asarray(X, np.float32) - self.x_mean
        gram = (self._Xc @ self._Xc.T).astype(np.float64)
        self.eigvals, self.Q = np.linalg.eigh((gram + gram.T) / 2)
        self.eigvals = np.maximum(self.eigvals, 0.0)
        # Centring put the constant vector in the Gram matrix's null space; it is the
        # intercept's direction and must not count in the leave-one-out diagonal (sklearn
        # drops it the same way).
        self._intercept = int(np.argmax(np.abs(self.Q.sum(axis=0))))

    def _centred(self, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(Y) != len(self._Xc):
            raise ValueError(f"DualRidge: Y has {len(Y)} rows, the inputs {len(self._Xc)}")
        flat = np.asarray(Y, np.float64).reshape(len(Y), -1)
        mean = flat.mean(axis=0)
        return flat - mean, mean

    def _w(self, alpha: float) -> np.ndarray:
        w = 1.0 / (self.eigvals + alpha)
        w[self._intercept] = 0.0
        return w

    def select_alpha(self, Y: np.ndarray, probe_dims: int = 512, seed: int = 0) -> float:
        """The alpha of ``alphas`` with the least leave-one-out squared error on ``Y``."""
        Yc, _ = self._centred(Y)
        if Yc.shape[1] > probe_dims:
            R = np.random.default_rng(seed).standard_normal((Yc.shape[1], probe_dims))
            Yc = Yc @ R
        qty = self.Q.T @ Yc
        errors = []
        for a in self.alphas:
            w = self._w(a)
            c = self.Q @ (w[:, None] * qty)            # dual coefficients (K + a I)^-1 Y
            g_diag = (self.Q ** 2) @ w                 # diag of (K + a I)^-1
            errors.append(float(np.sum((c / g_diag[:, None]) ** 2)))
        return self.alphas[int(np.argmin(errors))]

    def fit(self, Y: np.ndarray, alpha: float | None = None) -> LinearMap:
        """The primal ridge map to ``Y`` ``(n, targets)``; ``alpha`` None: selected."""
        a = self.select_alpha(Y) if alpha is None else float(alpha)
        Yc, mean = self._centred(Y)
        dual = self.Q @ (self._w(a)[:, None] * (self.Q.T @ Yc))          # (n, targets)
        coef = self._Xc.T @ dual.astype(np.float32)                      # (features, targets)
        intercept = mean - self.x_mean.astype(np.float64) @ coef
        return LinearMap(coef, intercept.astype(np.float32), a)

    def predict(self, X_new: np.ndarray, Y: np.ndarray, alpha: float | None = None
                ) -> np.ndarray:
        """Predictions ``(m, *Y.shape[1:])`` for rows ``X_new`` of a ridge fitted to ``Y``
        (``n`` rows matching the training inputs); ``alpha`` None: :meth:`select_alpha`."""
        a = self.select_alpha(Y) if alpha is None else float(alpha)
        Yc, mean = self._centred(Y)
        k = ((np.asarray(X_new, np.float32) - self.x_mean) @ self._Xc.T).astype(np.float64)
        weights = ((k @ self.Q) * self._w(a)) @ self.Q.T                   # (m, n)
        pred = weights @ Yc + mean
        return pred.reshape(len(X_new), *np.shape(Y)[1:]).astype(np.float32)


@dataclass
class LinearMap:
    """A fitted linear decoder ``X @ coef + intercept`` (:meth:`DualRidge.fit`)."""

    coef: np.ndarray        # (features, targets) float32
    intercept: np.ndarray   # (targets,) float32
    alpha: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, np.float32) @ self.coef + self.intercept
