"""The simulator's realism, asserted on the data it writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from rtdecode.data import load_session
from rtdecode.simulator import plan_runs, preset, simulate
from rtdecode.simulator.brain import double_gamma_hrf, evoked_bold, hrf_peak_time
from rtdecode.simulator.noise import ar1
from rtdecode.simulator.session import load_oracle
from rtdecode.simulator.stimuli import MOTIONS, StimulusConfig, generate_clips, render_clip


def _legendre_resid(x: np.ndarray, degree: int = 3) -> np.ndarray:
    B = np.polynomial.legendre.legvander(np.linspace(-1, 1, len(x)), degree)
    return x - B @ np.linalg.lstsq(B, x, rcond=None)[0]


# ------------------------------------------------------------------------------ haemodynamics

def test_hrf_peaks_between_4_and_6_s_for_every_delay(small_cfg):
    j = small_cfg.subject.hrf_jitter_s
    for delay in np.linspace(-j, j, 7):
        assert 4.0 <= hrf_peak_time(delay) <= 6.0
    t = np.arange(0, 32, 0.1)
    h = double_gamma_hrf(t)
    assert h.min() < 0 and t[np.argmin(h)] > 10  # undershoot after the peak


def test_simulated_voxels_impulse_response_peaks_4_to_6_s(small_session):
    oracle = load_oracle(small_session, "sub-01")
    times = np.arange(0, 30, 0.1)
    drive = np.ones((1, oracle.subject.n_voxels), np.float32)
    resp = evoked_bold(oracle.subject, drive, times, np.array([0.0]), duration=0.1)
    peaks = times[np.argmax(resp, axis=0)]
    assert (peaks >= 4.0).all() and (peaks <= 6.0).all()
    assert np.unique(np.round(peaks, 1)).size > 3  # per-voxel delay jitter


def test_noise_free_bold_lags_the_stimulus_by_the_hrf(small_session):
    """In the written data, the stimulus drive best predicts the BOLD 2-3 TRs (4-6 s) later."""
    sess = load_session(small_session, "sub-01")
    oracle = load_oracle(small_session, "sub-01")
    feats = np.load(small_session / "stimuli" / "features.npy")
    drive = feats @ oracle.subject.encoding_matrix()
    sem = np.flatnonzero(oracle.subject.roi == 3)
    best = []
    for run in sess.runs_of("train"):
        nf = run.noise_free()[:, sem]
        d = np.zeros_like(nf)
        d[run.stim_trs] = drive[run.clip_ids][:, sem]
        corr = [np.mean([np.corrcoef(d[: len(d) - lag, v], nf[lag:, v])[0, 1]
                         for v in range(0, sem.size, 7)]) for lag in range(6)]
        best.append(int(np.argmax(corr)))
    assert set(best) <= {2, 3}


# ------------------------------------------------------------------------------ noise

def test_tsnr_and_signal_change_in_configured_ranges(small_session, small_cfg):
    sess = load_session(small_session, "sub-01")
    oracle = load_oracle(small_session, "sub-01")
    tsnr, psc = [], []
    for run in sess.runs_of("test"):  # not the runs the amplitude was calibrated on
        y, clean = run.data(), run.noise_free()
        keep = np.ones(len(y), bool)
        for s in run.spike_trs:
            keep[s: s + 2] = False
        noise = _legendre_resid(y - clean)[keep]
        tsnr.append(y.mean(0) / noise.std(0))
        psc.append(100 * clean.std(0) / clean.mean(0))
    tsnr, psc = np.mean(tsnr, 0), np.mean(psc, 0)
    lo, hi = small_cfg.noise.tsnr
    assert lo <= np.median(tsnr) <= hi
    assert np.mean((tsnr > 0.85 * lo) & (tsnr < 1.15 * hi)) > 0.9
    responsive = oracle.subject.roi != 4
    plo, phi = small_cfg.subject.signal_change_pct
    assert plo <= np.median(psc[responsive]) <= phi
    assert np.mean((psc[responsive] > 0.6 * plo) & (psc[responsive] < 1.4 * phi)) > 0.9
    assert np.all(psc[~responsive] < 1e-3)  # noise-only voxels carry no stimulus signal


def test_ar1_generator_has_configured_autocorrelation():
    x = ar1(4000, 50, 0.4, np.random.default_rng(0))
    acf = np.mean([np.corrcoef(x[:-1, v], x[1:, v])[0, 1] for v in range(50)])
    assert abs(acf - 0.4) < 0.03
    assert abs(x.std() - 1.0) < 0.05


@pytest.mark.parametrize("thermal,ar", [(0.0, 1.0), (0.5, 0.5)])
def test_written_noise_autocorrelation_matches_config(tmp_path, thermal, ar):
    cfg = tiny_config(seed=3, train_clips=400, thermal_fraction=thermal, ar_fraction=ar,
                      physio_fraction=0.0,
                      drift_pct=0.0, spike_rate=0.0)
    simulate(tmp_path, cfg, progress=False)
    sess = load_session(tmp_path, "sub-01")
    acfs = []
    for run in sess.runs_of("train"):  # one long run: little small-sample bias
        n = run.data() - run.noise_free()
        n = n - n.mean(0)
        acfs.append((n[:-1] * n[1:]).sum(0) / (n * n).sum(0))
    expected = cfg.noise.rho * ar / (ar + thermal)
    assert abs(np.mean(acfs) - expected) < 0.03


# ------------------------------------------------------------------------------ encoding

def test_retinotopic_voxels_prefer_stimuli_inside_their_receptive_field(small_session):
    sess = load_session(small_session, "sub-01")
    o = load_oracle(small_session, "sub-01").subject
    resp = {}
    for run in sess.runs_of("train"):
        nf = run.noise_free()
        nf = nf - nf.mean(0)
        for k, cid in zip(run.stim_trs, run.clip_ids):
            if k + 3 < len(nf):
                resp[int(cid)] = nf[k + 2: k + 4].mean(0)
    ids = sorted(resp)
    R = np.stack([resp[i] for i in ids])
    wins = total = 0
    for v in np.flatnonzero(o.roi == 1):
        cx, cy = (o.prf_x[v] + 0.5) * 4, (o.prf_y[v] + 0.5) * 4  # 16-grid -> pixels
        inside = np.array([any(np.hypot(ob["x"] - cx, ob["y"] - cy) < ob["r"] + 4 * o.prf_sigma[v]
                               for ob in sess.clips[i]["objects"]) for i in ids])
        if inside.sum() >= 5 and (~inside).sum() >= 5:
            total += 1
            wins += R[inside, v].mean() > R[~inside, v].mean()
    assert total > 50 and wins / total > 0.9


def test_subjects_have_different_voxel_counts_and_rois(small_session):
    counts = [load_session(small_session, s).n_voxels for s in ("sub-01", "sub-02", "sub-03")]
    assert len(set(counts)) == 3
    sess = load_session(small_session, "sub-02")
    assert set(np.unique(sess.roi)) == {1, 2, 3, 4}
    assert sess.roi_names == {1: "retinotopic", 2: "motion", 3: "semantic", 4: "noise"}


# ------------------------------------------------------------------------------ design

def test_test_segments_repeat_with_identical_clips_and_fresh_noise(small_session, small_cfg):
    sess = load_session(small_session, "sub-01")
    test = sess.runs_of("test")
    d = small_cfg.design
    assert len(test) == d.n_test_segments * d.test_repeats
    seg1 = [r for r in test if r.segment == 1]
    assert sorted(r.repeat for r in seg1) == list(range(1, d.test_repeats + 1))
    assert all(np.array_equal(r.clip_ids, seg1[0].clip_ids) for r in seg1)
    assert np.allclose(seg1[0].noise_free(), seg1[1].noise_free())
    assert not np.allclose(seg1[0].data(), seg1[1].data())
    train_ids = np.concatenate([r.clip_ids for r in sess.runs_of("train")])
    assert np.intersect1d(train_ids, seg1[0].clip_ids).size == 0


def test_study_preset_is_cc2017_sized():
    cfg = preset("study")
    plans, n_clips = plan_runs(cfg)
    train_trs = sum(len(p.clip_ids) for p in plans if p.task == "train") * 2.0 / cfg.tr
    assert 3800 <= train_trs <= 4400
    assert (cfg.design.n_test_segments, cfg.design.test_repeats) == (5, 10)
    assert min(cfg.voxel_counts) > 5000 and len(set(cfg.voxel_counts)) == len(cfg.voxel_counts)


def test_tr_1s_hcp_like(tmp_path):
    cfg = tiny_config(tr=1.0)
    simulate(tmp_path, cfg, progress=False)
    run = load_session(tmp_path, "sub-01").runs_of("train")[0]
    assert run.tr == 1.0
    assert np.all(np.diff(run.stim_trs) == 2)  # 2-s clips span two 1-s TRs
    assert run.n_trs == int(2 * cfg.design.rest_s + 2 * len(run.clip_ids))


# ------------------------------------------------------------------------------ stimuli

def test_scenes_persist_then_cut_and_captions_vary():
    clips = generate_clips(200, np.random.default_rng(1), StimulusConfig())
    scene_lengths = np.bincount([c.scene_id for c in clips])
    assert scene_lengths.min() >= 1 and np.median(scene_lengths) >= 2
    assert sum(c.cut for c in clips) == len(scene_lengths)
    # Within a scene the objects carry on: same shapes and colours.
    for a, b in zip(clips, clips[1:]):
        if not b.cut:
            assert [(o.shape, o.colour) for o in a.objects] == \
                   [(o.shape, o.colour) for o in b.objects]
    assert {m for c in clips for m in c.motions} == set(MOTIONS)
    assert max(len(c.objects) for c in clips) == 2
    assert all(len(c.captions["basic"].split()) <= 20 for c in clips)
    # Paraphrase variety: many distinct wordings of the motion level for the same motion.
    lefts = {c.captions["motion"] for c in clips if c.motions == ["left"]}
    assert len(lefts) >= 2
    for c in clips:
        assert c.objects[0].colour in c.captions["anchor"]
        assert c.objects[0].shape in c.captions["holistic"]


def test_rendered_motion_moves_the_object():
    cfg = StimulusConfig()
    clips = generate_clips(300, np.random.default_rng(2), cfg)
    right = next(c for c in clips if c.motions == ["right"] and c.texture == "plain")
    frames = render_clip(right, cfg).astype(np.float32)
    bg = np.median(frames[0].reshape(-1, 3), axis=0)
    cols = [np.nonzero((np.abs(f - bg).sum(-1) > 60).any(0))[0].mean() for f in frames]
    assert cols[-1] - cols[0] > 0.7 * cfg.translate_px
    assert frames.shape == (cfg.frames_per_clip, cfg.size, cfg.size, 3)


# ------------------------------------------------------------------------------ files

def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    cfg = tiny_config(seed=7, n_subjects=2)
    simulate(tmp_path / "a", cfg, progress=False)
    simulate(tmp_path / "b", cfg, progress=False)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b and len(a) > 20
    simulate(tmp_path / "c", dataclasses.replace(cfg, seed=8), progress=False)
    c = _digest(tmp_path / "c")
    assert a.keys() == c.keys()
    differ = [k for k in a if a[k] != c[k]]
    assert any(k.endswith("_bold.nii") for k in differ)
    assert "stimuli/frames.npy" in differ


def test_bids_like_layout(small_session):
    root = small_session
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] and desc["Seed"] == 0
    side = json.loads((root / "sub-01/func/sub-01_task-train_run-01_bold.json").read_text())
    assert side["RepetitionTime"] == 2.0
    events = (root / "sub-01/func/sub-01_task-train_run-01_events.tsv").read_text().splitlines()
    assert events[0].split("\t")[:2] == ["onset", "duration"]
    assert (root / "sub-01/anat/sub-01_desc-brain_mask.nii").is_file()
    assert (root / "sub-01/oracle/sub-01_oracle.safetensors").is_file()
    frames = np.load(root / "stimuli/frames.npy", mmap_mode="r")
    assert frames.dtype == np.uint8 and frames.shape[1:] == (8, 64, 64, 3)
    lines = (root / "stimuli/captions.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert {"basic", "anchor", "motion", "holistic", "attributes"} <= rec.keys()
    assert len(lines) == frames.shape[0]
