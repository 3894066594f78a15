"""Causal, online preprocessing and the HRF-lag window.

The live daemon and the training data path both run volumes through
:class:`OnlinePreprocessor`, one TR at a time, so features online and offline are identical
(no train/serve skew). Per voxel and per run:

1. drift removal: subtract an exponential moving average with time constant ``highpass_s``
   (seeded by the plain mean of the first ``baseline_trs`` volumes);
2. running z-score (Welford's algorithm) over everything seen so far in the run;
3. clipping to +/- ``clip_z`` (motion spikes).

The first ``baseline_trs`` outputs are marked not ready: their statistics are still forming.
:func:`offline_preprocess` is the anchors' whole-run alternative (polynomial detrend and
z-score over the complete run), which a live system cannot do; it exists to measure what
causality costs.

:func:`clip_windows` is the one windowing function: the clip shown at TR ``k`` is decoded
from volumes ``k + lag .. k + lag + width - 1``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .config import Config, PreprocessConfig, WindowConfig
from .data import DataError, Session


class OnlinePreprocessor:
    """Per-voxel causal preprocessing for one run; call :meth:`reset` between runs."""

    def __init__(self, n_voxels: int, tr: float, cfg: PreprocessConfig | None = None):
        if n_voxels < 1:
            raise ValueError(f"n_voxels must be >= 1, got {n_voxels}")
        if not tr > 0:
            raise ValueError(f"tr must be > 0, got {tr}")
        self.cfg = cfg or PreprocessConfig()
        self.n_voxels = n_voxels
        self.tr = tr
        self.alpha = np.float32(1.0 - np.exp(-tr / self.cfg.highpass_s))
        self.reset()

    def reset(self) -> None:
        V = self.n_voxels
        self.t = 0
        # float32 state and preallocated work buffers: this runs once per TR per voxel.
        self._level = np.zeros(V, np.float32)   # drift estimate
        self._mean = np.zeros(V, np.float32)    # Welford running mean of the residual
        self._m2 = np.zeros(V, np.float32)      # Welford running sum of squares
        self._resid = np.empty(V, np.float32)
        self._delta = np.empty(V, np.float32)
        self._tmp = np.empty(V, np.float32)
        self._varied = np.empty(V, bool)        # voxels whose std is > 0 yet

    @property
    def ready(self) -> bool:
        """True once the baseline is complete (outputs before that are provisional)."""
        return self.t >= self.cfg.baseline_trs

    def update(self, x: np.ndarray) -> np.ndarray:
        """Take one volume's voxel vector; return its preprocessed float32 vector."""
        if x.shape != (self.n_voxels,):
            raise ValueError(f"volume has shape {x.shape}, expected ({self.n_voxels},)")
        resid, delta, tmp = self._resid, self._delta, self._tmp
        if self.t < self.cfg.baseline_trs:
            # Seed the drift estimate with the plain running mean of the baseline.
            np.subtract(x, self._level, out=tmp)
            tmp *= np.float32(1.0 / (self.t + 1))
            self._level += tmp
            np.subtract(x, self._level, out=resid)
        else:
            np.subtract(x, self._level, out=resid)
            np.multiply(resid, self.alpha, out=tmp)
            self._level += tmp
        self.t += 1
        if not self.cfg.zscore:
            return resid.copy()
        np.subtract(resid, self._mean, out=delta)
        np.multiply(delta, np.float32(1.0 / self.t), out=tmp)
        self._mean += tmp
        if self.t < 2:
            z = np.zeros(self.n_voxels, np.float32)
            np.subtract(resid, self._mean, out=tmp)   # resid - new mean
            tmp *= delta
            self._m2 += tmp
            return z
        # z starts as resid - new mean: the same vector feeds the Welford update and the
        # output, so it is computed once.
        z = np.subtract(resid, self._mean)
        np.multiply(z, delta, out=tmp)
        self._m2 += tmp
        # z = (resid - mean) / sqrt(m2 / (t - 1)), 0 where the voxel has not varied yet.
        np.multiply(self._m2, np.float32(1.0 / (self.t - 1)), out=tmp)
        np.sqrt(tmp, out=tmp)
        varied = np.greater(tmp, 1e-6, out=self._varied)
        if varied.all():  # the usual case once every voxel has varied: no masked divide
            np.divide(z, tmp, out=z)
        else:
            np.divide(z, tmp, out=z, where=varied)
            z[tmp <= 1e-6] = 0.0
        np.clip(z, -self.cfg.clip_z, self.cfg.clip_z, out=z)
        return z


def preprocess_run(volumes: np.ndarray | Iterable[np.ndarray], tr: float,
                   cfg: PreprocessConfig | None = None) -> np.ndarray:
    """Run a whole run's volumes (``(T, V)`` or an iterable of ``(V,)``) through the online
    preprocessor, exactly as the live path does; returns float32 ``(T, V)``."""
    rows = volumes if isinstance(volumes, np.ndarray) else list(volumes)
    if len(rows) == 0:
        raise ValueError("preprocess_run: no volumes")
    pre = OnlinePreprocessor(int(np.asarray(rows[0]).shape[0]), tr, cfg)
    return np.stack([pre.update(np.asarray(v)) for v in rows])


def offline_preprocess(data: np.ndarray, degree: int = 3, clip_z: float = 8.0) -> np.ndarray:
    """Whole-run (non-causal) polynomial detrend and z-score, as the offline anchors do."""
    T = data.shape[0]
    x = np.linspace(-1, 1, T)
    basis = np.polynomial.legendre.legvander(x, degree)
    coef, *_ = np.linalg.lstsq(basis, data.astype(np.float64), rcond=None)
    resid = data - basis @ coef
    std = resid.std(axis=0)
    z = np.divide(resid, std, out=np.zeros_like(resid), where=std > 1e-8)
    return np.clip(z, -clip_z, clip_z).astype(np.float32)


def clip_windows(stim_trs: np.ndarray, n_trs: int, cfg: WindowConfig | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Volume indices of each clip's HRF window and which windows are complete.

    Returns ``(idx, complete)``: ``idx`` int ``(n_clips, width)`` with
    ``idx[i] = stim_trs[i] + lag + arange(width)``; ``complete[i]`` is True when every index
    is a volume of the run (``< n_trs``).
    """
    cfg = cfg or WindowConfig()
    stim = np.asarray(stim_trs, np.int64)
    idx = stim[:, None] + cfg.lag_trs + np.arange(cfg.width_trs)[None, :]
    complete = (idx < n_trs).all(axis=1) & (stim >= 0)
    return idx, complete


def reduce_window(vols: np.ndarray, cfg: WindowConfig | None = None) -> np.ndarray:
    """Combine a window's volumes ``(..., width, V)`` into one feature vector per clip."""
    cfg = cfg or WindowConfig()
    if cfg.reduce == "mean":
        return vols.mean(axis=-2)
    return vols.reshape(*vols.shape[:-2], -1)


def window_features(features: np.ndarray, stim_trs: np.ndarray,
                    cfg: WindowConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip decoder inputs from a preprocessed run ``(T, V)``.

    Returns ``(X, complete)``; ``X`` has one row per *complete* window, in clip order.
    """
    idx, complete = clip_windows(stim_trs, features.shape[0], cfg)
    return reduce_window(features[idx[complete]], cfg), complete


def select_voxels(session: Session, cfg: Config) -> np.ndarray | None:
    """Indices of the voxels the decoder uses (None = all of the mask).

    ``mask``: every voxel; ``roi``: voxels outside the 'noise' ROI (toy world);
    ``reliability``: the ``n_voxels`` voxels whose preprocessed responses correlate best
    between repeats of the same *training* segment (test runs are never looked at).
    """
    sel, n = cfg.data.voxel_selection, cfg.data.n_voxels
    if sel == "mask":
        return None
    if sel == "roi":
        if session.roi is None:
            raise DataError(f"{session.root}: voxel_selection 'roi' needs an ROI image")
        noise = [k for k, v in session.roi_names.items() if v == "noise"]
        return np.flatnonzero(~np.isin(session.roi, noise))
    if sel == "reliability":
        by_segment: dict[int, list] = {}
        for run in session.runs_of("train"):
            by_segment.setdefault(run.segment, []).append(run)
        pairs = [runs[:2] for runs in by_segment.values() if len(runs) >= 2]
        if not pairs:
            raise DataError(f"{session.root}: voxel_selection 'reliability' needs training "
                            "segments shown at least twice; this session has none")
        score = 0.0
        for a, b in pairs:
            za = preprocess_run(a.data(), a.tr, cfg.preprocess)
            zb = preprocess_run(b.data(), b.tr, cfg.preprocess)
            t = min(len(za), len(zb))
            za, zb = za[:t] - za[:t].mean(0), zb[:t] - zb[:t].mean(0)
            den = np.sqrt((za**2).sum(0) * (zb**2).sum(0)) + 1e-12
            score = score + (za * zb).sum(0) / den
        order = np.argsort(-np.asarray(score) / len(pairs), kind="stable")
        return np.sort(order[: n if n > 0 else order.size])
    raise DataError(f"voxel_selection {sel!r}: unknown")  # pragma: no cover - config checks
