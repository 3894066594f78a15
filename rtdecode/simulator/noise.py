"""Scanner and physiological noise for simulated runs.

Per voxel, the noise (everything that is not the evoked response) is the sum of
- thermal: white Gaussian;
- AR(1): temporally correlated Gaussian with lag-1 autocorrelation ``rho``;
- physiological: cardiac and respiratory oscillations (aliased at the TR), spatially smooth;
- slow drift: Legendre polynomials up to degree 3 over the run (removed by a cubic detrend);
- motion spikes: occasional TRs where a spatial intensity gradient jumps the whole brain.

The variance of thermal + AR(1) + physiological is ``(S0 / tSNR)^2``, split by
``thermal_fraction`` / ``ar_fraction`` / ``physio_fraction``. tSNR is defined, as is common
practice, on the time series after cubic detrending and with spike TRs censored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.polynomial import legendre
from scipy.signal import lfilter


@dataclass(frozen=True)
class NoiseConfig:
    tsnr: tuple[float, float] = (40.0, 100.0)
    baseline: tuple[float, float] = (700.0, 1100.0)
    rho: float = 0.35
    thermal_fraction: float = 0.55
    ar_fraction: float = 0.35
    physio_fraction: float = 0.10
    drift_pct: float = 1.0          # peak drift, % of baseline
    spike_rate: float = 0.01        # motion spikes per TR
    spike_pct: tuple[float, float] = (1.0, 3.0)
    cardiac_hz: float = 1.1
    respiratory_hz: float = 0.28

    def __post_init__(self) -> None:
        total = self.thermal_fraction + self.ar_fraction + self.physio_fraction
        if not np.isclose(total, 1.0):
            raise ValueError(f"noise fractions must sum to 1, got {total}")
        if not -1.0 < self.rho < 1.0:
            raise ValueError(f"rho must be in (-1, 1), got {self.rho}")


@dataclass
class VoxelNoise:
    """Per-voxel noise parameters of one subject (part of the oracle's knowledge)."""

    baseline: np.ndarray     # (V,) S0
    tsnr: np.ndarray         # (V,)
    physio_maps: np.ndarray  # (2, V) weights of the cardiac / respiratory components

    @property
    def sigma(self) -> np.ndarray:
        return self.baseline / self.tsnr


def smooth_field(ijk: np.ndarray, rng: np.random.Generator, n_waves: int = 6) -> np.ndarray:
    """A smooth random spatial field over voxel coordinates, scaled to [0, 1]."""
    x = ijk.astype(np.float64)
    scale = max(1.0, float(np.ptp(x, axis=0).max()))
    f = np.zeros(x.shape[0])
    for _ in range(n_waves):
        k = rng.normal(0, 2.0 * np.pi / scale, 3)
        f += np.cos(x @ k + rng.uniform(0, 2 * np.pi))
    f -= f.min()
    return f / max(f.max(), 1e-9)


def make_voxel_noise(ijk: np.ndarray, cfg: NoiseConfig, rng: np.random.Generator) -> VoxelNoise:
    V = ijk.shape[0]
    lo, hi = cfg.baseline
    base = lo + (hi - lo) * (0.6 * smooth_field(ijk, rng) + 0.4 * rng.random(V))
    tlo, thi = cfg.tsnr
    tsnr = np.exp(rng.uniform(np.log(tlo), np.log(thi), V))
    maps = np.stack([0.5 + smooth_field(ijk, rng), 0.5 + smooth_field(ijk, rng)])
    maps /= np.sqrt((maps**2).sum(axis=0, keepdims=True))  # unit norm per voxel
    return VoxelNoise(base.astype(np.float32), tsnr.astype(np.float32), maps.astype(np.float32))


def ar1(n: int, V: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) noise with unit variance, ``(n, V)``."""
    innov = rng.standard_normal((n, V), dtype=np.float32) * np.float32(np.sqrt(1 - rho**2))
    innov[0] /= np.float32(np.sqrt(1 - rho**2))  # start in the stationary distribution
    return lfilter([1.0], [1.0, -rho], innov, axis=0).astype(np.float32)


@dataclass
class RunNoise:
    noise: np.ndarray        # (T, V) float32, everything but the evoked response and S0
    spike_trs: list[int]


def run_noise(n_trs: int, tr: float, vn: VoxelNoise, ijk: np.ndarray, cfg: NoiseConfig,
              rng: np.random.Generator) -> RunNoise:
    V = vn.baseline.size
    sigma = vn.sigma.astype(np.float32)
    noise = rng.standard_normal((n_trs, V), dtype=np.float32)
    noise *= np.float32(np.sqrt(cfg.thermal_fraction))
    noise += np.float32(np.sqrt(cfg.ar_fraction)) * ar1(n_trs, V, cfg.rho, rng)

    # Physiology: cardiac and respiratory oscillations with slowly wandering phase.
    t = np.arange(n_trs) * tr
    comps = []
    for hz in (cfg.cardiac_hz, cfg.respiratory_hz):
        f = hz * rng.uniform(0.9, 1.1)
        phase = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.15, n_trs))
        comps.append(np.sqrt(2.0) * np.sin(2 * np.pi * f * t + phase))
    physio = np.stack(comps, axis=1).astype(np.float32) @ vn.physio_maps
    noise += np.float32(np.sqrt(cfg.physio_fraction)) * physio
    noise *= sigma

    # Slow drift: Legendre polynomials (degree 1..3) with random per-voxel coefficients.
    x = np.linspace(-1, 1, n_trs)
    basis = np.stack([legendre.legval(x, np.eye(4)[d]) for d in (1, 2, 3)], axis=1)
    coef = rng.normal(0, 1, (3, V)) * np.array([[1.0], [0.5], [0.25]])
    drift = (basis @ coef).astype(np.float32)
    peak = max(1e-9, float(np.abs(basis).sum(1).max()))
    drift *= np.float32(cfg.drift_pct / 100.0) * vn.baseline / peak
    noise += drift

    # Motion spikes: a brain-wide intensity gradient for one TR, echoing faintly in the next.
    spikes = np.flatnonzero(rng.random(n_trs) < cfg.spike_rate).tolist()
    if spikes:
        centred = ijk - ijk.mean(axis=0)
        span = np.abs(centred).max(axis=0) + 1e-9
        for s in spikes:
            direction = rng.normal(0, 1, 3)
            grad = (centred / span) @ direction
            grad = grad / max(1e-9, np.abs(grad).max())
            amp = rng.uniform(*cfg.spike_pct) / 100.0 * rng.choice([-1.0, 1.0])
            pattern = (amp * (0.5 + 0.5 * grad) * vn.baseline).astype(np.float32)
            noise[s] += pattern
            if s + 1 < n_trs:
                noise[s + 1] += 0.3 * pattern
    return RunNoise(noise, spikes)
