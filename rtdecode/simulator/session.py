"""Simulate a whole study and write it in a BIDS-like layout.

Layout written under ``OUT``::

    dataset_description.json      name, generator, version, seed
    simulation.json               the full simulator config used
    stimuli/frames.npy            uint8 (n_clips, frames, 64, 64, 3), shared by all subjects
    stimuli/features.npy          float32 (n_clips, n_features): what voxels respond to
    stimuli/captions.jsonl        one clip per line: ids, split, captions, attributes
    sub-XX/anat/sub-XX_desc-brain_mask.nii     uint8 brain mask on the subject's grid
    sub-XX/anat/sub-XX_desc-roi_dseg.nii(.tsv) ROI labels and their names
    sub-XX/func/sub-XX_task-T_run-N_bold.nii   int16 4-D run (x, y, z, t)
    sub-XX/func/sub-XX_task-T_run-N_bold.json  RepetitionTime, segment, repeat, spike TRs
    sub-XX/func/sub-XX_task-T_run-N_events.tsv clip onsets
    sub-XX/func/sub-XX_task-T_run-N_desc-noisefree_bold.npy  float32 (t, n_voxels)
    sub-XX/oracle/sub-XX_oracle.safetensors    encoding and noise parameters
    sub-XX/sub-XX_scans.tsv       the runs, with task, segment, repeat and length

A **partial** simulation (``simulate(..., runs=[("test", 1)])``) writes only the selected
runs, every other file as the full simulation would: the random streams are consumed in the
same order (stimuli and features of every clip, every training run's evoked response for the
amplitude calibration, the noise of every run before the last selected one), so each written
file is byte-identical to the full session's. ``simulation.json`` then lists the written
runs under ``"runs"``; a full simulation has no such key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from .. import __version__
from . import stimuli
from .brain import ROI_LABELS, SUBJECT_ARRAYS, Subject, evoked_bold, make_subject
from .noise import VoxelNoise, make_voxel_noise, run_noise
from .presets import SIMULATOR_VERSION, SimulatorConfig


@dataclass(frozen=True)
class RunPlan:
    task: str          # "train" or "test"
    run: int           # 1-based within the task
    segment: int       # 1-based stimulus segment
    repeat: int        # 1-based presentation of that segment
    clip_ids: tuple[int, ...]

    def name(self, subject: str) -> str:
        return f"{subject}_task-{self.task}_run-{self.run:02d}"


def subject_label(i: int) -> str:
    return f"sub-{i + 1:02d}"


def run_timing(plan: RunPlan, cfg: SimulatorConfig) -> tuple[int, np.ndarray, np.ndarray]:
    """(n_trs, sample times, clip onsets) of a run; volume k is acquired at k * TR."""
    clip_s = cfg.stimulus.clip_seconds
    rest = cfg.design.rest_s
    onsets = rest + clip_s * np.arange(len(plan.clip_ids))
    n_trs = int(math.ceil((2 * rest + clip_s * len(plan.clip_ids)) / cfg.tr))
    return n_trs, np.arange(n_trs) * cfg.tr, onsets


def plan_runs(cfg: SimulatorConfig) -> tuple[list[RunPlan], int]:
    """The study's runs and the number of unique clips (train clips first, then test)."""
    d = cfg.design
    plans, next_id = [], 0
    for r in range(d.n_train_runs):
        ids = tuple(range(next_id, next_id + d.train_clips_per_run))
        next_id += d.train_clips_per_run
        plans.append(RunPlan("train", r + 1, r + 1, 1, ids))
    segments = []
    for _ in range(d.n_test_segments):
        segments.append(tuple(range(next_id, next_id + d.test_clips_per_segment)))
        next_id += d.test_clips_per_segment
    run = 0
    for rep in range(d.test_repeats):
        for s, ids in enumerate(segments):
            run += 1
            plans.append(RunPlan("test", run, s + 1, rep + 1, ids))
    return plans, next_id


RunSelection = Iterable[tuple[str, int | None]]


def select_runs(plans: list[RunPlan], runs: RunSelection | None) -> list[RunPlan]:
    """The plans named by ``runs`` — ``(task, run)`` pairs, ``run`` None for every run of the
    task — in plan order; None selects all. A pair that names no planned run is an error."""
    if runs is None:
        return list(plans)
    wanted = list(runs)
    chosen = set()
    for task, run in wanted:
        hits = [i for i, p in enumerate(plans) if p.task == task and run in (None, p.run)]
        if not hits:
            n = {t: sum(p.task == t for p in plans) for t in ("train", "test")}
            raise ValueError(f"runs: no planned run {task}:{run if run is not None else '*'} "
                             f"(the design has train runs 1..{n['train']} and test runs "
                             f"1..{n['test']})")
        chosen.update(hits)
    return [p for i, p in enumerate(plans) if i in chosen]


def parse_run_selection(text: str) -> list[tuple[str, int | None]]:
    """``"test:1,train"`` → ``[("test", 1), ("train", None)]`` (the CLI's ``--only``)."""
    out: list[tuple[str, int | None]] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        task, _, run = item.partition(":")
        if task not in ("train", "test") or (run and not run.isdigit()):
            raise ValueError(f"--only {text!r}: expected TASK or TASK:RUN items, TASK train or "
                             f"test, RUN a number (got {item!r})")
        out.append((task, int(run) if run else None))
    if not out:
        raise ValueError(f"--only {text!r}: names no run")
    return out


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _nifti(data: np.ndarray, affine: np.ndarray, tr: float | None = None) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        zooms = tuple(img.header.get_zooms()[:3]) + (float(tr),)
        img.header.set_zooms(zooms)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img


def config_dict(cfg: SimulatorConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def stimulus_config(root: str | Path) -> stimuli.StimulusConfig:
    """The stimulus config a simulated session was made with (its ``simulation.json``)."""
    path = Path(root) / "simulation.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (is {root} a simulated session?)")
    from ..config import from_dict

    d = json.loads(path.read_text()).get("config", {}).get("stimulus")
    if not isinstance(d, dict):
        raise ValueError(f"{path}: no config.stimulus")
    return from_dict(stimuli.StimulusConfig, d, f"{path} config.stimulus")


@dataclass
class SimulationSummary:
    out: Path
    n_clips: int
    n_runs: int
    subjects: dict[str, int]  # label -> voxel count
    trs_per_subject: int


def write_stimuli(out: Path, cfg: SimulatorConfig, plans: list[RunPlan], n_clips: int,
                  rng: np.random.Generator, progress: bool) -> None:
    """Generate, render and describe every unique clip; write stimuli/."""
    sdir = out / "stimuli"
    sdir.mkdir(parents=True, exist_ok=True)
    specs: list[stimuli.ClipSpec] = []
    split: dict[int, str] = {}
    segment_of: dict[int, int] = {}
    scene = 0
    seen: set[tuple[int, ...]] = set()
    for plan in plans:
        if plan.clip_ids in seen:
            continue
        seen.add(plan.clip_ids)
        film = stimuli.generate_clips(len(plan.clip_ids), rng, cfg.stimulus,
                                      first_clip_id=plan.clip_ids[0], first_scene_id=scene)
        scene = film[-1].scene_id + 1
        specs.extend(film)
        for cid in plan.clip_ids:
            split[cid] = plan.task
            segment_of[cid] = plan.segment
    assert len(specs) == n_clips
    sc = cfg.stimulus
    frames = np.lib.format.open_memmap(
        sdir / "frames.npy", mode="w+", dtype=np.uint8,
        shape=(n_clips, sc.frames_per_clip, sc.size, sc.size, 3))
    feats = np.zeros((n_clips, stimuli.n_features()), np.float32)
    lines = []
    for spec in tqdm(specs, desc="render stimuli", unit="clip", disable=not progress,
                     leave=False):
        clip = stimuli.render_clip(spec, sc)
        frames[spec.clip_id] = clip
        feats[spec.clip_id] = stimuli.clip_features(spec, clip)
        lines.append(json.dumps({
            "clip_id": spec.clip_id, "split": split[spec.clip_id],
            "segment": segment_of[spec.clip_id], "scene_id": spec.scene_id, "cut": spec.cut,
            **spec.captions, "attributes": spec.attributes(),
            "objects": spec.object_records(),
        }, sort_keys=True))
    frames.flush()
    del frames
    np.save(sdir / "features.npy", feats)
    (sdir / "captions.jsonl").write_text("\n".join(lines) + "\n")


def _oracle_tensors(subject: Subject, vn: VoxelNoise, amplitude: np.ndarray) -> dict:
    t = {name: np.ascontiguousarray(getattr(subject, name)) for name in SUBJECT_ARRAYS}
    t.update(baseline=vn.baseline, tsnr=vn.tsnr, physio_maps=vn.physio_maps,
             amplitude=amplitude.astype(np.float32), affine=subject.affine.astype(np.float64),
             grid_shape=np.array(subject.grid_shape, np.int64))
    return t


def simulate_subject(out: Path, index: int, cfg: SimulatorConfig, plans: list[RunPlan],
                     features: np.ndarray, rng: np.random.Generator,
                     bar: tqdm | None = None, write: list[RunPlan] | None = None
                     ) -> tuple[str, int, int]:
    """Simulate one subject's runs and write those in ``write`` (default: all). Returns
    (label, voxels, TRs written).

    Runs are simulated in plan order from one random stream, so a run not written still
    has its noise drawn when a written run comes after it (that is what keeps a partial
    session identical to the full one); nothing is drawn after the last written run."""
    write = list(plans) if write is None else write
    label = subject_label(index)
    subject = make_subject(label, cfg.subject_config(index), rng)
    vn = make_voxel_noise(subject.voxel_ijk, cfg.noise, rng)
    drive = features @ subject.encoding_matrix()  # (n_clips, V)
    clip_s = cfg.stimulus.clip_seconds

    # Amplitude calibration on the training runs: the evoked response has the voxel's
    # configured standard deviation in % of its baseline.
    evoked = {}
    s1 = np.zeros(subject.n_voxels)
    s2 = np.zeros(subject.n_voxels)
    n = 0
    segments = {(p.task, p.segment) for p in write}
    has_train = any(p.task == "train" for p in plans)
    for plan in plans:
        n_trs, times, onsets = run_timing(plan, cfg)
        if plan.task != "train" and plan.repeat > 1:
            continue  # same stimulus, same evoked response as repeat 1
        if has_train and plan.task != "train" and (plan.task, plan.segment) not in segments:
            continue  # shown by no written run, and not part of the calibration
        e = evoked_bold(subject, drive[list(plan.clip_ids)], times, onsets, clip_s)
        evoked[(plan.task, plan.segment)] = e
        if plan.task == "train":
            s1 += e.sum(axis=0, dtype=np.float64)
            s2 += (e.astype(np.float64) ** 2).sum(axis=0)
            n += e.shape[0]
    if n == 0:  # no training runs: calibrate on whatever there is
        for e in evoked.values():
            s1 += e.sum(axis=0, dtype=np.float64)
            s2 += (e.astype(np.float64) ** 2).sum(axis=0)
            n += e.shape[0]
    std = np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0.0))
    amplitude = np.where(std > 1e-12,
                         subject.signal_change_pct / 100.0 * vn.baseline / np.maximum(std, 1e-12),
                         0.0).astype(np.float32)

    sub_dir = out / label
    (sub_dir / "anat").mkdir(parents=True, exist_ok=True)
    (sub_dir / "func").mkdir(parents=True, exist_ok=True)
    (sub_dir / "oracle").mkdir(parents=True, exist_ok=True)
    nib.save(_nifti(subject.mask().astype(np.uint8), subject.affine),
             sub_dir / "anat" / f"{label}_desc-brain_mask.nii")
    nib.save(_nifti(subject.roi_volume(), subject.affine),
             sub_dir / "anat" / f"{label}_desc-roi_dseg.nii")
    _write_tsv(sub_dir / "anat" / f"{label}_desc-roi_dseg.tsv", ["index", "name"],
               [[k, v] for k, v in ROI_LABELS.items()])
    save_file(_oracle_tensors(subject, vn, amplitude),
              str(sub_dir / "oracle" / f"{label}_oracle.safetensors"),
              # One metadata key: safetensors writes several in a random order, and the
              # same seed must give byte-identical files.
              metadata={"rtdecode": json.dumps({
                  "simulator_version": SIMULATOR_VERSION, "subject": label, "seed": cfg.seed,
                  "motion_kappa": subject.motion_kappa}, sort_keys=True)})

    mask = subject.mask()
    scans, total_trs = [], 0
    last = max((plans.index(p) for p in write), default=-1)
    for plan in plans[: last + 1]:
        n_trs, times, onsets = run_timing(plan, cfg)
        if plan not in write:
            # Draw (and drop) this run's noise: the runs after it need the stream where the
            # full simulation has it.
            run_noise(n_trs, cfg.tr, vn, subject.voxel_ijk, cfg.noise, rng)
            if bar is not None:
                bar.update(1)
            continue
        e = evoked[(plan.task, plan.segment)]
        clean = vn.baseline[None, :] + e * amplitude[None, :]
        rn = run_noise(n_trs, cfg.tr, vn, subject.voxel_ijk, cfg.noise, rng)
        noisy = np.clip(np.rint(clean + rn.noise), -32768, 32767).astype(np.int16)
        grid = np.zeros(subject.grid_shape + (n_trs,), np.int16)
        grid[mask] = noisy.T
        stem = plan.name(label)
        fdir = sub_dir / "func"
        nib.save(_nifti(grid, subject.affine, cfg.tr), fdir / f"{stem}_bold.nii")
        np.save(fdir / f"{stem}_desc-noisefree_bold.npy", clean.astype(np.float32))
        _write_json(fdir / f"{stem}_bold.json", {
            "RepetitionTime": cfg.tr, "TaskName": plan.task, "Segment": plan.segment,
            "Repeat": plan.repeat, "SpikeTRs": rn.spike_trs, "VolumeTiming": "k * TR",
            "SimulatorVersion": SIMULATOR_VERSION})
        _write_tsv(fdir / f"{stem}_events.tsv",
                   ["onset", "duration", "trial_type", "clip_id", "stim_tr"],
                   [[f"{o:.3f}", f"{clip_s:.3f}", "clip", cid, int(round(o / cfg.tr))]
                    for o, cid in zip(onsets, plan.clip_ids)])
        scans.append([f"func/{stem}_bold.nii", plan.task, plan.run, plan.segment, plan.repeat,
                      n_trs])
        total_trs += n_trs
        if bar is not None:
            bar.update(1)
    _write_tsv(sub_dir / f"{label}_scans.tsv",
               ["filename", "task", "run", "segment", "repeat", "n_trs"], scans)
    return label, subject.n_voxels, total_trs


def simulate(out: str | Path, cfg: SimulatorConfig, progress: bool = True,
             runs: RunSelection | None = None) -> SimulationSummary:
    """Simulate ``cfg`` into directory ``out`` (created; existing files are overwritten).

    ``runs``: only these runs of every subject, as ``(task, run)`` pairs (``run`` None: every
    run of that task), e.g. ``[("test", 1)]`` for the first test run; each file written is
    the one the full simulation writes (stimuli of every clip included). None: all runs."""
    out = Path(out)
    root = np.random.SeedSequence(cfg.seed)
    stim_seq, *subject_seqs = root.spawn(1 + cfg.n_subjects)
    plans, n_clips = plan_runs(cfg)
    write = select_runs(plans, runs)  # check before writing anything
    out.mkdir(parents=True, exist_ok=True)
    write_stimuli(out, cfg, plans, n_clips, np.random.default_rng(stim_seq), progress)
    features = np.load(out / "stimuli" / "features.npy")
    _write_json(out / "dataset_description.json", {
        "Name": f"rtdecode toy world ({cfg.preset})", "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "rtdecode simulate", "Version": __version__}],
        "SimulatorVersion": SIMULATOR_VERSION, "Seed": cfg.seed, "Preset": cfg.preset})
    meta = {"simulator_version": SIMULATOR_VERSION, "config": config_dict(cfg)}
    if runs is not None:
        meta["runs"] = [f"task-{p.task}_run-{p.run:02d}" for p in write]
    _write_json(out / "simulation.json", meta)
    subjects, trs = {}, 0
    last = max(plans.index(p) for p in write) if write else -1
    with tqdm(total=cfg.n_subjects * (last + 1), desc="simulate runs", unit="run",
              disable=not progress) as bar:
        for i, seq in enumerate(subject_seqs):
            label, nvox, trs = simulate_subject(out, i, cfg, plans, features,
                                                np.random.default_rng(seq), bar, write)
            subjects[label] = nvox
    return SimulationSummary(out, n_clips, len(write), subjects, trs)


@dataclass
class Oracle:
    """What the simulator knows about one subject: encoding model, noise and amplitudes."""

    subject: Subject
    noise: VoxelNoise
    amplitude: np.ndarray  # (V,) scale from unscaled evoked response to scanner units
    meta: dict


def load_oracle(root: str | Path, subject: str) -> Oracle:
    """Load ``sub-XX/oracle/sub-XX_oracle.safetensors`` written by :func:`simulate`."""
    from safetensors import safe_open

    path = Path(root) / subject / "oracle" / f"{subject}_oracle.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no oracle file (only simulated sessions have one)")
    with safe_open(str(path), framework="numpy") as fh:
        t = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads((fh.metadata() or {}).get("rtdecode", "{}"))
    subj = Subject(label=subject, grid_shape=tuple(int(v) for v in t["grid_shape"]),
                   affine=t["affine"], motion_kappa=float(meta.get("motion_kappa", 2.0)),
                   **{name: t[name] for name in SUBJECT_ARRAYS})
    vn = VoxelNoise(t["baseline"], t["tsnr"], t["physio_maps"])
    return Oracle(subj, vn, t["amplitude"], meta)
