"""The oracle: clip identification by likelihood under the simulator's own generative model.

This is the ceiling for the toy world, what no decoder can beat on the same data. It knows
what only the simulator knows (``sub-XX/oracle/sub-XX_oracle.safetensors``: encoding model,
HRF delays, amplitudes, noise levels and physiological maps; ``simulation.json``: the noise
process) and, for each test run, the whole stimulus sequence except the one clip it is asked
to identify. Real data has no oracle file: :func:`oracle_identification` raises
:class:`~rtdecode.data.DataError`.

Model. In noise units (voxel ``v`` divided by its ``sigma_v = S0_v / tSNR_v``) a run is::

    y = baseline + sum_k h_{b(v)}(t - onset_k) * d_{clip_k, v} + physio + ar + white
        + drift + spikes

with ``d_{c, v} = amplitude_v * (features_c @ W)_v / sigma_v`` the clip's scaled drive and
``h_b`` the 2-s boxcar convolved with the HRF of the voxel's delay bin (the simulator's own
``design_matrix``). ``physio`` is ``comps(t) @ physio_maps``: two time courses shared by all
voxels; ``ar + white`` has the temporal covariance ``C = thermal_fraction * I +
ar_fraction * rho^|i-j|`` identical in every voxel; drift is a cubic Legendre polynomial per
voxel; a motion spike adds a pattern at its TR and 0.3 of it at the next.

Score. For the clip at position ``k`` (true clip ``t``) and a candidate ``c``, the
prediction is the expected BOLD of the known sequence with ``t``'s response replaced by
``c``'s. The score is the Gaussian log-likelihood of the observed run under that prediction,
with the nuisances (physio time courses, drift coefficients, spike patterns) profiled out,
i.e. the restricted likelihood under the temporal precision ``P`` (``C`` inverse with the
drift and spike regressors projected out) and the spatial projector that removes the two
physio maps. Because a clip's response is separable (a per-voxel scalar times one of a few
HRF time courses), the log-likelihood up to a term shared by all candidates is::

    f(c) = sum_v d_cv (<h_v, P r_v> + q_v d_tv) - 1/2 sum_v d_cv^2 q_v
           - <p_c, p_t> + 1/2 <p_c, p_c>

with ``r`` the run's residual against the known-sequence prediction, ``q_v = h_v' P h_v``
for the event's window, and ``p_c`` the small correction for the part of ``c``'s response
that lies along the physio maps (weighted by ``P`` and the maps' inverse Gram). The argmax
of ``f`` over the candidates is the maximum-likelihood choice, which is Bayes-optimal for
equally likely candidates. ``f(c) - f(t)`` is exactly the log-likelihood ratio, so the
sum of ``f`` over a clip's repeats is the joint log-likelihood of all of them.

Protocol. Identical to the decoders' caption identification
(:func:`rtdecode.models.evaluate.identification`): the decoded samples are the test clips
with complete HRF windows under ``cfg.window``, in the same order; the distractors are
other test clips whose captions differ; 100 trials per sample; the same seeded generator, so
the oracle meets the same distractors as the decoders. ``single_trial`` scores each repeat
on its own; ``averaged`` scores the joint likelihood of all repeats of a clip (what the
repeat average carries, without blurring each repeat's own drift, physio and spikes).

Approximations (all small): drift and spike patterns are free nuisances (flat prior) rather
than the simulator's Gaussian coefficients and rank-4 spike gradient, which costs three
degrees of freedom per voxel and run plus two TRs per spike; the physio time courses are
free rather than wandering sinusoids; the int16 rounding of the scanner data (variance 1/12,
under 0.2 % of the noise variance at the presets' tSNR) is added to each voxel's variance as
if it were correlated like the rest. Clips with identical stimuli tie exactly; ties are broken
at random (:func:`break_ties`), so the oracle guesses between them. The oracle uses every
brain voxel and ignores ``cfg.data.voxel_selection`` and ``cfg.preprocess``: its inputs are
the raw runs. ``noise_check`` in the report is the whitened residual variance per degree of
freedom; it is 1 when the noise model is the data's.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.polynomial import legendre

from ..config import Config
from ..data import DataError, Session, load_session
from ..preprocess import clip_windows
from ..ridge import n_way_from_scores
from ..simulator.brain import design_matrix, evoked_bold
from ..simulator.session import Oracle, load_oracle

#: Caption levels whose texts make the caption target (as ``models.sad.LEVELS``); clips
#: with identical texts are not each other's distractors, as in caption identification.
CAPTION_LEVELS = ("anchor", "motion", "holistic")
#: Legendre degrees of the simulator's slow drift (``simulator.noise.run_noise``).
DRIFT_DEGREES = (1, 2, 3)
#: TRs after a motion spike that carry its echo (``simulator.noise.run_noise``: 0.3 of it).
SPIKE_ECHO_TRS = 1


@dataclass(frozen=True)
class NoiseModel:
    """The temporal part of the simulator's noise, from ``simulation.json``."""

    rho: float
    thermal_fraction: float
    ar_fraction: float
    physio_fraction: float

    @classmethod
    def from_session(cls, root: Path) -> NoiseModel:
        path = root / "simulation.json"
        if not path.is_file():
            raise DataError(f"{path}: not found; the oracle needs the simulator's config")
        try:
            noise = json.loads(path.read_text())["config"]["noise"]
            return cls(float(noise["rho"]), float(noise["thermal_fraction"]),
                       float(noise["ar_fraction"]), float(noise["physio_fraction"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: no usable config.noise ({exc!r})") from None

    def precision(self, n_trs: int, spike_trs: tuple[int, ...]) -> tuple[np.ndarray, int]:
        """Temporal precision with drift and spike TRs projected out, and the nuisance rank.

        ``P = C^-1 - C^-1 X (X' C^-1 X)^+ X' C^-1`` for ``C`` the white + AR(1) covariance in
        units of ``sigma^2`` and ``X`` the drift polynomials and the indicators of every
        spike TR and its echo.
        """
        lag = np.abs(np.subtract.outer(np.arange(n_trs), np.arange(n_trs)))
        C = self.thermal_fraction * np.eye(n_trs) + self.ar_fraction * self.rho ** lag
        basis = legendre.legvander(np.linspace(-1.0, 1.0, n_trs), max(DRIFT_DEGREES))
        cols = [basis[:, d] for d in DRIFT_DEGREES]
        censored = sorted({s + e for s in spike_trs for e in range(SPIKE_ECHO_TRS + 1)
                           if 0 <= s + e < n_trs})
        for s in censored:
            col = np.zeros(n_trs)
            col[s] = 1.0
            cols.append(col)
        X = np.stack(cols, axis=1)
        Ci = np.linalg.inv(C)
        CiX = Ci @ X
        P = Ci - CiX @ np.linalg.pinv(X.T @ CiX) @ CiX.T
        return (P + P.T) / 2, int(np.linalg.matrix_rank(X))


@dataclass
class OracleScores:
    """Per-sample log-likelihood scores of every candidate clip.

    ``single[i, j]``: decoded sample ``i`` (one test repeat of clip ``single_ids[i]``) scored
    for clip ``bank_ids[j]``; ``averaged`` sums the rows of each clip over its repeats.
    """

    single: np.ndarray
    single_ids: np.ndarray
    averaged: np.ndarray
    averaged_ids: np.ndarray
    bank_ids: np.ndarray
    bank_rows: np.ndarray   # rows that are equal exactly for mutually excluded clips
    noise_check: float
    n_voxels: int
    n_signal_voxels: int
    n_repeats: int


def run_events(run) -> tuple[np.ndarray, float]:
    """Onsets (s) of a run's clips, in ``run.clip_ids`` order, and the clip duration."""
    path = run.path.with_name(run.path.name.split("_bold")[0] + "_events.tsv")
    if not path.is_file():
        raise DataError(f"{path}: events file not found (the oracle needs clip onsets)")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    try:
        onsets = np.array([float(r["onset"]) for r in rows])
        durations = np.array([float(r["duration"]) for r in rows])
    except (KeyError, ValueError) as exc:
        raise DataError(f"{path}: bad onset/duration column ({exc!r})") from None
    if onsets.size != run.clip_ids.size:
        raise DataError(f"{path}: {onsets.size} events but {run.clip_ids.size} clip ids")
    if durations.size and not np.allclose(durations, durations[0]):
        raise DataError(f"{path}: clips of different durations; the oracle assumes one")
    return onsets, float(durations[0]) if durations.size else 0.0


def expected_bold(oracle: Oracle, drive: np.ndarray, run, onsets: np.ndarray,
                  duration: float) -> np.ndarray:
    """The run's noise-free BOLD ``(n_trs, V)`` float32 as the oracle predicts it: baseline
    plus the amplitude-scaled evoked response to ``drive`` (one row per clip of the run,
    in order), computed as :func:`rtdecode.simulator.session.simulate_subject` does."""
    times = np.arange(run.n_trs) * run.tr
    evoked = evoked_bold(oracle.subject, drive, times, onsets, duration)
    return oracle.noise.baseline[None, :] + evoked * oracle.amplitude[None, :]


def _bank_rows(session: Session, bank_ids: np.ndarray, features: np.ndarray) -> np.ndarray:
    """One row per bank clip, equal for clips that must not be each other's distractors:
    the caption texts (as caption identification excludes identical targets), or the
    stimulus features when a clip has no caption record."""
    recs = [session.clips.get(int(c)) for c in bank_ids]
    if all(r is not None and all(k in r for k in CAPTION_LEVELS) for r in recs):
        codes: dict[tuple, int] = {}
        keys = [tuple(r[k] for k in CAPTION_LEVELS) for r in recs]
        return np.array([[codes.setdefault(k, len(codes))] for k in keys], np.int64)
    return features[bank_ids]


def _load_oracle(session: Session) -> Oracle:
    try:
        return load_oracle(session.root, session.subject)
    except FileNotFoundError as exc:
        raise DataError(f"{exc}; the oracle ceiling exists only for simulated sessions") \
            from None


def oracle_scores(session: Session, cfg: Config, *, shuffle: bool = False,
                  seed: int = 0) -> OracleScores:
    """Log-likelihood scores of every test clip for every decoded test sample.

    ``shuffle`` is a control: the oracle is told a wrong stimulus sequence (test clip ids
    permuted with ``seed``), both for the prediction and for which clip is "true"; its
    accuracy must fall to chance.
    """
    root = Path(session.root)
    oracle = _load_oracle(session)
    noise = NoiseModel.from_session(root)
    runs = session.runs_of("test")
    if not runs:
        raise DataError(f"{root}: subject {session.subject} has no 'test' runs")
    feat_path = root / "stimuli" / "features.npy"
    if not feat_path.is_file():
        raise DataError(f"{feat_path}: not found (the oracle needs the clips' features)")
    features = np.load(feat_path)
    subj = oracle.subject
    V = subj.n_voxels
    if session.n_voxels != V:
        raise DataError(f"{root}: {session.n_voxels} mask voxels but the oracle file has {V}")

    test_ids = np.unique(np.concatenate([r.clip_ids for r in runs]))
    belief = dict(zip(test_ids.tolist(), test_ids.tolist()))
    if shuffle:
        perm = np.random.default_rng(seed).permutation(test_ids)
        belief = dict(zip(test_ids.tolist(), perm.tolist()))
    col = {int(c): j for j, c in enumerate(test_ids)}

    # The scanner rounds to integers: add the rounding variance (1/12) to the correlated
    # noise's, in the proportions of C's diagonal (an approximation: rounding is white).
    rounding = 1.0 / 12.0 / (noise.thermal_fraction + noise.ar_fraction)
    sigma = np.sqrt(oracle.noise.sigma.astype(np.float64) ** 2 + rounding)
    amp = oracle.amplitude
    drive = features[test_ids] @ subj.encoding_matrix()          # (n_test, V) float32
    sig = np.flatnonzero(amp > 0)                                # voxels a clip can move
    D = (drive[:, sig] * (amp[sig] / sigma[sig])).astype(np.float64)  # noise units
    # Physio in noise units: comps(t) @ maps, each voxel's map scaled by sigma_v / sigma'_v.
    maps = oracle.noise.physio_maps * (oracle.noise.sigma / sigma)  # (2, V)
    g_inv = np.linalg.inv(maps @ maps.T)
    bins = [(d, np.flatnonzero(np.isin(sig, idx))) for d, idx in subj.hrf_bins()]
    bins = [(d, cols) for d, cols in bins if cols.size]
    # E[c, b, m]: clip c's drive in delay bin b along physio map m.
    E = np.stack([D[:, cols] @ maps[:, sig[cols]].T for _, cols in bins], axis=1)
    E = E.reshape(len(test_ids), -1)
    D2 = D**2

    rows, labels = [], []
    resid_ss, dof = 0.0, 0.0
    cache: dict[tuple, tuple[np.ndarray, int]] = {}
    for run in runs:
        onsets, duration = run_events(run)
        times = np.arange(run.n_trs) * run.tr
        seen = np.array([belief[int(c)] for c in run.clip_ids])
        expected = expected_bold(oracle, drive[[col[int(c)] for c in seen]], run, onsets,
                                 duration)
        y = run.data()
        if y.shape != expected.shape:
            raise DataError(f"{run.path}: data {y.shape} but the oracle expects "
                            f"{expected.shape}")
        r = (y - expected).astype(np.float64) / sigma
        r -= (r @ maps.T) @ g_inv @ maps                         # physio time courses out
        key = (run.n_trs, tuple(run.spike_trs))
        if key not in cache:
            cache[key] = noise.precision(*key)
        P, rank = cache[key]
        Z = P @ r
        resid_ss += float(np.sum(r * Z))
        dof += (run.n_trs - rank) * (V - maps.shape[0])

        _, complete = clip_windows(run.stim_trs, run.n_trs, cfg.window)
        k_idx = np.flatnonzero(complete)
        if k_idx.size == 0:
            continue
        # H[b, k, t]: response of event k in delay bin b (the simulator's design matrix).
        H = np.stack([design_matrix(times, onsets[k_idx], duration, d).toarray().T
                      for d, _ in bins])
        HP = H @ P
        omega = np.einsum("bkt,ckt->kbc", HP, H)                 # (n_ev, nb, nb)
        lin = np.empty((k_idx.size, sig.size))
        q = np.empty((k_idx.size, sig.size))
        for b, (_, cols) in enumerate(bins):
            lin[:, cols] = H[b] @ Z[:, sig[cols]]
            q[:, cols] = omega[:, b, b][:, None]
        t_col = np.array([col[int(c)] for c in seen[k_idx]])
        f = (lin + q * D[t_col]) @ D.T - 0.5 * (q @ D2.T)
        # Physio correction: the candidate's response along the maps is not evidence.
        W = np.einsum("kbc,mn->kbmcn", omega, g_inv).reshape(k_idx.size, E.shape[1], -1)
        f -= np.einsum("ci,kij,kj->kc", E, W, E[t_col], optimize=True)
        f += 0.5 * np.einsum("ci,kij,cj->kc", E, W, E, optimize=True)
        rows.append(f)
        labels.append(seen[k_idx])
    if not rows:
        raise DataError(f"{root}: no test clip has a complete window under cfg.window")
    single = np.concatenate(rows)
    single_ids = np.concatenate(labels).astype(np.int64)
    bank_ids = np.unique(single_ids)
    keep = np.array([col[int(c)] for c in bank_ids])
    single = single[:, keep]
    averaged = np.stack([single[single_ids == c].sum(axis=0) for c in bank_ids])
    return OracleScores(single, single_ids, averaged, bank_ids, bank_ids,
                        _bank_rows(session, bank_ids, features), resid_ss / max(dof, 1.0),
                        V, int(sig.size), int(max(r.repeat for r in runs)))


def break_ties(S: np.ndarray, seed: int = 0) -> np.ndarray:
    """``S`` plus a seeded jitter far below any meaningful likelihood difference.

    Clips with identical stimuli (a scene's static continuation clips render the same frames
    but carry different captions) have equal likelihoods; the protocol's strict ``>`` would
    count every such tie as a miss. The jitter makes the oracle guess among them instead, as
    a decoder whose outputs differ by noise effectively does.
    """
    eps = 1e-9 * max(1.0, float(np.abs(S).max(initial=0.0)))
    return S + np.random.default_rng([seed, 0x7E]).uniform(0.0, eps, S.shape)


def identification_from_scores(S: np.ndarray, clip_ids: np.ndarray, bank_ids: np.ndarray,
                               bank_rows: np.ndarray, trials: int = 100, seed: int = 0) -> dict:
    """The caption-identification dict (``models.evaluate.identification``'s keys) for a
    score matrix whose columns are ``bank_ids``; the same seeded trial protocol."""
    rng = np.random.default_rng(seed)
    out: dict = {"n_decoded": int(len(S))}
    for n in (2, 50):
        r = n_way_from_scores(S, clip_ids, bank_rows, bank_ids, n, trials, rng)
        out[f"caption_{n}way"] = None if r is None else round(r[0], 4)
        out[f"caption_{n}way_pm"] = None if r is None else round(r[1], 4)
    return out


def oracle_identification(session: Session | str | Path, subject: str | None = None,
                          cfg: Config | None = None, trials: int = 100, seed: int = 0, *,
                          shuffle: bool = False) -> dict:
    """The oracle ceiling of caption identification on a simulated session's test runs.

    ``session`` is a loaded :class:`~rtdecode.data.Session` or a session directory (then
    ``subject`` picks the subject, default the first). Returns ``{"single_trial": {...},
    "averaged": {...}}`` with the keys of :func:`rtdecode.models.evaluate.identification`
    (``n_decoded``, ``caption_2way``, ``caption_2way_pm``, ``caption_50way``,
    ``caption_50way_pm``), plus ``noise_check`` (about 1.0 when the noise model fits),
    ``n_voxels``, ``n_signal_voxels``, ``test_repeats``, ``shuffled`` and ``seconds``.
    Raises :class:`~rtdecode.data.DataError` for a session without an oracle file.
    """
    t0 = time.perf_counter()
    if not isinstance(session, Session):
        session = load_session(session, subject)
    cfg = cfg or Config()
    sc = oracle_scores(session, cfg, shuffle=shuffle, seed=seed)
    return {
        "single_trial": identification_from_scores(break_ties(sc.single, seed), sc.single_ids,
                                                   sc.bank_ids, sc.bank_rows, trials, seed),
        "averaged": identification_from_scores(break_ties(sc.averaged, seed), sc.averaged_ids,
                                               sc.bank_ids, sc.bank_rows, trials, seed),
        "noise_check": round(sc.noise_check, 4),
        "n_voxels": sc.n_voxels,
        "n_signal_voxels": sc.n_signal_voxels,
        "test_repeats": sc.n_repeats,
        "shuffled": shuffle,
        "seconds": round(time.perf_counter() - t0, 2),
    }
