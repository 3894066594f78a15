"""A simulated subject: voxel grid, brain mask, ROIs, encoding model and haemodynamics.

ROIs (labels in the ROI image):
1 retinotopic: population receptive fields (Gaussian over a 16x16 visual-field grid) on
  luminance contrast and colour-opponent maps, laid out as a smooth retinotopic map;
2 motion: direction-tuned (von Mises over left/right/up/down) plus grow/shrink/rotate;
3 semantic: linear in scene-attribute indicators (sparse random weights);
4 noise-only: no stimulus drive at all.

The evoked BOLD of voxel v is ``amplitude_v * (HRF_v * drive_v)(t)`` where ``drive`` is the
clip features times the voxel's encoding weights, held for the clip's 2 s. Each voxel's HRF is
the canonical double gamma shifted by a per-voxel delay (jitter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.special import gammaln

from . import stimuli

ROI_LABELS = {1: "retinotopic", 2: "motion", 3: "semantic", 4: "noise"}


# --------------------------------------------------------------------------------------------
# Haemodynamics


def double_gamma_hrf(t: np.ndarray, delay: float = 0.0, peak_shape: float = 6.0,
                     under_shape: float = 16.0, under_ratio: float = 1.0 / 6.0) -> np.ndarray:
    """Canonical double-gamma HRF (SPM-like; peak ~5 s), shifted by ``delay`` seconds.

    Normalised to a unit maximum. ``t`` in seconds; zero for ``t - delay <= 0``.
    """
    tt = np.asarray(t, dtype=np.float64) - delay
    out = np.zeros_like(tt)
    pos = tt > 0
    x = tt[pos]
    g1 = np.exp((peak_shape - 1) * np.log(x) - x - gammaln(peak_shape))
    g2 = np.exp((under_shape - 1) * np.log(x) - x - gammaln(under_shape))
    out[pos] = g1 - under_ratio * g2
    peak = np.max(double_gamma_hrf_reference())
    return out / peak


def double_gamma_hrf_reference() -> np.ndarray:
    x = np.arange(1, 400) * 0.05
    return np.exp(5 * np.log(x) - x - gammaln(6.0)) - np.exp(15 * np.log(x) - x - gammaln(16.0)) / 6


def hrf_peak_time(delay: float = 0.0, dt: float = 0.01) -> float:
    t = np.arange(0, 32, dt)
    return float(t[np.argmax(double_gamma_hrf(t, delay))])


def boxcar_response(tau: np.ndarray, duration: float, delay: float, dt: float = 0.05) -> np.ndarray:
    """HRF convolved with a boxcar of ``duration`` s that starts at 0, evaluated at ``tau``."""
    grid = np.arange(0.0, 40.0 + duration, dt)
    h = double_gamma_hrf(grid, delay)
    box = np.ones(max(1, int(round(duration / dt))))
    resp = np.convolve(h, box)[: grid.size] * dt
    return np.interp(tau, grid, resp, left=0.0, right=0.0)


def design_matrix(sample_times: np.ndarray, onsets: np.ndarray, duration: float,
                  delay: float) -> sparse.csr_matrix:
    """Sparse (n_samples x n_events) matrix of each event's BOLD response at each sample."""
    tau = sample_times[:, None] - onsets[None, :]
    live = (tau > 0) & (tau < 40.0 + duration)
    rows, cols = np.nonzero(live)
    vals = boxcar_response(tau[rows, cols], duration, delay)
    return sparse.csr_matrix((vals, (rows, cols)), shape=tau.shape)


# --------------------------------------------------------------------------------------------
# Subject


@dataclass(frozen=True)
class SubjectConfig:
    n_voxels: int
    roi_fractions: tuple[float, float, float, float] = (0.3, 0.12, 0.2, 0.38)
    voxel_mm: float = 2.5
    hrf_jitter_s: float = 0.75
    hrf_delay_bins: int = 7
    signal_change_pct: tuple[float, float] = (0.2, 0.9)
    semantic_density: float = 0.3
    motion_kappa: float = 2.0


@dataclass
class Subject:
    """Anatomy and encoding parameters of one simulated subject (the oracle's knowledge)."""

    label: str
    grid_shape: tuple[int, int, int]
    affine: np.ndarray
    voxel_ijk: np.ndarray       # (V, 3) int, grid coordinates of masked voxels (C order)
    roi: np.ndarray             # (V,) uint8 labels, see ROI_LABELS
    prf_x: np.ndarray           # (V,) pRF centre, in retino-grid units (nan if not retinotopic)
    prf_y: np.ndarray
    prf_sigma: np.ndarray
    channel_gain: np.ndarray    # (V, 3) contrast, R-G, B-Y gains
    motion_pref: np.ndarray     # (V,) preferred direction (rad; nan if not motion)
    motion_extra: np.ndarray    # (V, 3) grow, shrink, rotate weights
    semantic_w: np.ndarray      # (V, n_semantic) weights (zero rows for non-semantic)
    hrf_delay: np.ndarray       # (V,) seconds
    signal_change_pct: np.ndarray  # (V,) target evoked std, % of baseline (0 for noise ROI)
    motion_kappa: float = 2.0

    @property
    def n_voxels(self) -> int:
        return int(self.roi.size)

    def mask(self) -> np.ndarray:
        m = np.zeros(self.grid_shape, dtype=bool)
        m[tuple(self.voxel_ijk.T)] = True
        return m

    def roi_volume(self) -> np.ndarray:
        v = np.zeros(self.grid_shape, dtype=np.uint8)
        v[tuple(self.voxel_ijk.T)] = self.roi
        return v

    def encoding_matrix(self) -> np.ndarray:
        """Dense (n_features x V) weights mapping clip features to each voxel's drive."""
        g = stimuli.RETINO_GRID
        sl = stimuli.feature_slices()
        W = np.zeros((stimuli.n_features(), self.n_voxels), np.float32)
        ret = np.flatnonzero(self.roi == 1)
        if ret.size:
            yy, xx = np.mgrid[0:g, 0:g].astype(np.float32)
            dx = xx.ravel()[None, :] - self.prf_x[ret, None]
            dy = yy.ravel()[None, :] - self.prf_y[ret, None]
            G = np.exp(-(dx**2 + dy**2) / (2 * self.prf_sigma[ret, None] ** 2))
            G /= G.sum(axis=1, keepdims=True)
            for c in range(3):
                W[sl["retino"].start + c * g * g: sl["retino"].start + (c + 1) * g * g, ret] = \
                    (G * self.channel_gain[ret, c:c + 1]).T
        mot = np.flatnonzero(self.roi == 2)
        if mot.size:
            dirs = np.array([np.pi, 0.0, np.pi / 2, 3 * np.pi / 2])  # left, right, up, down
            cos = np.cos(dirs[None, :] - self.motion_pref[mot, None])
            tune = np.exp(self.motion_kappa * (cos - 1))
            W[sl["motion"].start: sl["motion"].start + 4, mot] = tune.T
            W[sl["motion"].start + 4: sl["motion"].stop, mot] = self.motion_extra[mot].T
        W[sl["semantic"], :] = self.semantic_w.T
        return W

    def hrf_bins(self) -> list[tuple[float, np.ndarray]]:
        """Voxels grouped by (already quantised) HRF delay: [(delay, voxel indices)]."""
        delays = np.unique(self.hrf_delay)
        return [(float(d), np.flatnonzero(self.hrf_delay == d)) for d in delays]


def _grid_for(n_voxels: int) -> tuple[int, int, int]:
    # An ellipsoid with semi-axes s*(1, 1.2, 0.9) holds ~4/3*pi*s^3*1.08 voxels.
    s = (n_voxels * 1.15 / (4.0 / 3.0 * np.pi * 1.08)) ** (1 / 3)
    return (int(2 * s) + 4, int(2 * 1.2 * s) + 4, int(2 * 0.9 * s) + 4)


def make_subject(label: str, cfg: SubjectConfig, rng: np.random.Generator) -> Subject:
    """Build a subject with exactly ``cfg.n_voxels`` brain voxels and its encoding model."""
    shape = _grid_for(cfg.n_voxels)
    centre = (np.array(shape) - 1) / 2.0
    semi = np.array([1.0, 1.2, 0.9]) * (np.array(shape[0]) - 4) / 2.0
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    dist = np.sqrt((((ijk - centre) / semi) ** 2).sum(axis=1))
    dist = dist + 0.08 * rng.standard_normal(dist.size)  # irregular surface
    order = np.argsort(dist, kind="stable")[: cfg.n_voxels]
    ijk = ijk[np.sort(order)]  # C order within the grid
    V = ijk.shape[0]
    affine = np.diag([cfg.voxel_mm, cfg.voxel_mm, cfg.voxel_mm, 1.0])
    affine[:3, 3] = -centre * cfg.voxel_mm

    # ROIs: posterior (low j) to anterior: retinotopic, motion, semantic, noise-only.
    rank_key = ijk[:, 1] + 1.5 * rng.standard_normal(V)
    rank = np.empty(V)
    rank[np.argsort(rank_key, kind="stable")] = np.arange(V) / V
    bounds = np.cumsum(cfg.roi_fractions)
    roi = (1 + np.searchsorted(bounds[:-1], rank, side="right")).astype(np.uint8)

    g = stimuli.RETINO_GRID
    nan = np.full(V, np.nan, np.float32)
    prf_x, prf_y, prf_sigma = nan.copy(), nan.copy(), nan.copy()
    ret = np.flatnonzero(roi == 1)
    if ret.size:
        rel = ijk[ret].astype(np.float64) - centre
        polar = np.arctan2(rel[:, 2], rel[:, 0]) + 0.3 * rng.standard_normal(ret.size)
        ecc_rank = np.argsort(np.argsort(ijk[ret, 1] + rng.standard_normal(ret.size)))
        # Posterior voxels are foveal, and more cortex serves the fovea (magnification).
        ecc = 0.5 + 8.0 * (ecc_rank / max(1, ret.size - 1)) ** 1.5
        prf_x[ret] = np.clip((g - 1) / 2 + ecc * np.cos(polar), 0, g - 1)
        prf_y[ret] = np.clip((g - 1) / 2 + ecc * np.sin(polar), 0, g - 1)
        prf_sigma[ret] = 0.7 + 0.2 * ecc + 0.2 * rng.random(ret.size)
    gains = np.zeros((V, 3), np.float32)
    gains[ret, 0] = rng.uniform(0.6, 1.0, ret.size)
    gains[ret, 1:] = rng.normal(0.0, 0.3, (ret.size, 2))

    mot = np.flatnonzero(roi == 2)
    motion_pref = nan.copy()
    motion_pref[mot] = rng.uniform(0, 2 * np.pi, mot.size)
    motion_extra = np.zeros((V, 3), np.float32)
    motion_extra[mot] = rng.uniform(0.0, 1.0, (mot.size, 3))

    n_sem = stimuli.n_semantic_features()
    sem = np.flatnonzero(roi == 3)
    semantic_w = np.zeros((V, n_sem), np.float32)
    dense = rng.standard_normal((sem.size, n_sem)).astype(np.float32)
    keep = rng.random((sem.size, n_sem)) < cfg.semantic_density
    semantic_w[sem] = dense * keep

    bins = np.linspace(-cfg.hrf_jitter_s, cfg.hrf_jitter_s, cfg.hrf_delay_bins) \
        if cfg.hrf_delay_bins > 1 else np.zeros(1)
    hrf_delay = bins[rng.integers(0, bins.size, V)].astype(np.float32)

    lo, hi = cfg.signal_change_pct
    psc = np.exp(rng.uniform(np.log(lo), np.log(hi), V)).astype(np.float32)
    psc[roi == 4] = 0.0

    return Subject(label, shape, affine, ijk.astype(np.int32), roi, prf_x, prf_y, prf_sigma,
                   gains, motion_pref, motion_extra, semantic_w, hrf_delay, psc,
                   cfg.motion_kappa)


def evoked_bold(subject: Subject, drive: np.ndarray, sample_times: np.ndarray,
                onsets: np.ndarray, duration: float) -> np.ndarray:
    """Unscaled evoked BOLD ``(n_samples, V)`` from per-event voxel drive ``(n_events, V)``."""
    out = np.zeros((sample_times.size, subject.n_voxels), np.float32)
    if onsets.size == 0:
        return out
    for delay, idx in subject.hrf_bins():
        D = design_matrix(sample_times, onsets, duration, delay)
        out[:, idx] = D @ drive[:, idx]
    return out


SUBJECT_ARRAYS = ("voxel_ijk", "roi", "prf_x", "prf_y", "prf_sigma", "channel_gain",
                  "motion_pref", "motion_extra", "semantic_w", "hrf_delay", "signal_change_pct")
