"""Loading sessions: our BIDS-like simulations, a generic BIDS func run, and CC2017.

Everything loads into the same shape: a :class:`Session` of :class:`Run` s, each run able to
produce its masked data ``(n_trs, n_voxels)`` as float32 and, for the live path, a stream of
:class:`~rtdecode.messages.Volume` s. Loaders fail with a :class:`DataError` that names the
file and the field at fault.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .messages import Volume


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the field."""


# --------------------------------------------------------------------------------------------
# Low-level readers


def read_sidecar(bold_path: Path) -> dict:
    """The JSON sidecar of a BIDS bold file; ``RepetitionTime`` is required and checked."""
    name = bold_path.name
    for ext in (".nii.gz", ".nii", ".dtseries.nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    side = bold_path.with_name(name + ".json")
    if not side.is_file():
        raise DataError(f"{side}: sidecar JSON not found (needed for RepetitionTime)")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{side}: not valid JSON: {exc}") from None
    if "RepetitionTime" not in meta:
        raise DataError(f"{side}: missing required field 'RepetitionTime'")
    tr = meta["RepetitionTime"]
    if isinstance(tr, bool) or not isinstance(tr, (int, float)) or not 0 < tr <= 60:
        raise DataError(f"{side}: field 'RepetitionTime' = {tr!r} is not a time in seconds")
    meta["RepetitionTime"] = float(tr)
    return meta


def load_nifti(path: Path, ndim: int) -> nib.Nifti1Image:
    """Load a NIfTI image and check its dimensionality (4 for runs, 3 for masks)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise DataError(f"{path}: not a readable NIfTI file ({exc})") from None
    if len(img.shape) != ndim:
        what = "4-D (x, y, z, t) run" if ndim == 4 else "3-D (x, y, z) image"
        raise DataError(f"{path}: expected a {what}, got shape {img.shape}")
    return img


def read_events(path: Path, tr: float) -> tuple[np.ndarray, np.ndarray]:
    """(stim_tr, clip_id) of every event in a BIDS events.tsv.

    ``onset`` is required; ``stim_tr`` defaults to round(onset / TR) and ``clip_id`` to the
    event's row number when absent.
    """
    if not path.is_file():
        raise DataError(f"{path}: events file not found")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if rows and "onset" not in rows[0]:
        raise DataError(f"{path}: missing required column 'onset'")
    stim, ids = [], []
    for i, row in enumerate(rows):
        try:
            onset = float(row["onset"])
            stim.append(int(row["stim_tr"]) if row.get("stim_tr") not in (None, "", "n/a")
                        else int(round(onset / tr)))
            ids.append(int(row["clip_id"]) if row.get("clip_id") not in (None, "", "n/a")
                       else i)
        except ValueError as exc:
            raise DataError(f"{path}: row {i + 1}: bad value ({exc})") from None
    return np.asarray(stim, np.int64), np.asarray(ids, np.int64)


# --------------------------------------------------------------------------------------------
# Runs and sessions


@dataclass
class Run:
    """One functional run.

    ``stim_trs[i]`` is the TR at which clip ``clip_ids[i]`` started. ``mask`` selects the
    voxels of a 4-D NIfTI run; CIFTI and array runs are already voxel vectors.
    """

    path: Path
    task: str
    run: int
    tr: float
    n_trs: int
    stim_trs: np.ndarray
    clip_ids: np.ndarray
    segment: int = 1
    repeat: int = 1
    spike_trs: tuple[int, ...] = ()
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    trim: tuple[int, int] = (0, 0)  # volumes dropped at (start, end), CC2017 style
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def data(self) -> np.ndarray:
        """Masked run data, float32 ``(n_trs, n_voxels)``."""
        if self.path.name.endswith(".dtseries.nii"):
            arr = np.asarray(nib.load(str(self.path)).get_fdata(dtype=np.float32))
            arr = arr[:, : self.meta.get("n_grayordinates", arr.shape[1])]
        else:
            img = load_nifti(self.path, 4)
            raw = np.asanyarray(img.dataobj)
            if self.mask is None:
                arr = raw.reshape(-1, raw.shape[-1]).T
            else:
                if raw.shape[:3] != self.mask.shape:
                    raise DataError(f"{self.path}: volume shape {raw.shape[:3]} does not match "
                                    f"the mask's {self.mask.shape}")
                arr = raw[self.mask].T
            slope, inter = img.header.get_slope_inter()
            arr = arr.astype(np.float32)
            if slope is not None and slope not in (0, 1):
                arr = arr * np.float32(slope)
            if inter:
                arr = arr + np.float32(inter)
        start, end = self.trim
        arr = arr[start: arr.shape[0] - end] if (start or end) else arr
        return np.ascontiguousarray(arr, dtype=np.float32)

    def noise_free(self) -> np.ndarray:
        """The simulator's noise-free BOLD for this run (toy world only)."""
        p = self.path.with_name(self.path.name.replace("_bold.nii", "_desc-noisefree_bold.npy"))
        if not p.is_file():
            raise DataError(f"{p}: no noise-free BOLD (only simulated sessions have one)")
        return np.load(p)

    def volumes(self, session: str = "") -> Iterator[Volume]:
        """The run as the live path sees it: one masked Volume per TR."""
        data = self.data()
        for k in range(data.shape[0]):
            yield Volume(tr_index=k, t_acq=k * self.tr, data=data[k], source=self.name,
                         session=session or self.path.stem)


@dataclass
class Session:
    """One subject's runs plus what is known about the stimuli."""

    root: Path
    subject: str
    runs: list[Run]
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    roi: np.ndarray | None = None          # per-voxel ROI labels (toy world)
    roi_names: dict[int, str] = field(default_factory=dict)
    clips: dict[int, dict] = field(default_factory=dict)  # clip_id -> captions.jsonl record

    def runs_of(self, task: str) -> list[Run]:
        return [r for r in self.runs if r.task == task]

    @property
    def tr(self) -> float:
        trs = {r.tr for r in self.runs}
        if len(trs) != 1:
            raise DataError(f"{self.root}: runs have different TRs {sorted(trs)}")
        return trs.pop()

    @property
    def n_voxels(self) -> int:
        if self.mask is not None:
            return int(self.mask.sum())
        return int(self.runs[0].data().shape[1])


def list_subjects(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: session directory not found")
    return sorted(p.name for p in root.glob("sub-*") if p.is_dir())


def read_clips(root: Path) -> dict[int, dict]:
    path = root / "stimuli" / "captions.jsonl"
    if not path.is_file():
        return {}
    clips = {}
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            clips[int(rec["clip_id"])] = rec
        except (json.JSONDecodeError, KeyError, ValueError) as exc:
            raise DataError(f"{path}: line {i + 1}: bad record ({exc})") from None
    return clips


def _run_entities(name: str) -> dict[str, str]:
    return dict(re.findall(r"([a-zA-Z]+)-([a-zA-Z0-9]+)", name))


def load_bids_run(bold_path: str | Path, events_path: str | Path | None = None,
                  mask: np.ndarray | None = None) -> Run:
    """A generic BIDS functional run: 4-D NIfTI + JSON sidecar (+ events.tsv if present)."""
    bold_path = Path(bold_path)
    img = load_nifti(bold_path, 4)
    meta = read_sidecar(bold_path)
    tr = meta["RepetitionTime"]
    if mask is not None and img.shape[:3] != mask.shape:
        raise DataError(f"{bold_path}: volume shape {img.shape[:3]} does not match the mask's "
                        f"{mask.shape}")
    if events_path is None:
        guess = bold_path.with_name(bold_path.name.split("_bold")[0] + "_events.tsv")
        events_path = guess if guess.is_file() else None
    if events_path is not None:
        stim, ids = read_events(Path(events_path), tr)
    else:
        stim, ids = np.zeros(0, np.int64), np.zeros(0, np.int64)
    ent = _run_entities(bold_path.name)
    return Run(path=bold_path, task=ent.get("task", meta.get("TaskName", "")),
               run=int(ent.get("run", 1)), tr=tr, n_trs=int(img.shape[3]), stim_trs=stim,
               clip_ids=ids, segment=int(meta.get("Segment", 1)),
               repeat=int(meta.get("Repeat", 1)),
               spike_trs=tuple(int(s) for s in meta.get("SpikeTRs", ())), mask=mask,
               affine=img.affine, meta=meta)


def load_session(root: str | Path, subject: str | None = None) -> Session:
    """Load one subject of a BIDS-like session (ours: see rtdecode.simulator.session).

    The brain mask ``anat/<sub>_desc-brain_mask.nii`` is required; every run must match it.
    """
    root = Path(root)
    subjects = list_subjects(root)
    if not subjects:
        raise DataError(f"{root}: no sub-* directories (is this a session directory?)")
    subject = subject or subjects[0]
    if subject not in subjects:
        raise DataError(f"{root}: subject {subject!r} not found (have {subjects})")
    sdir = root / subject
    mask_path = sdir / "anat" / f"{subject}_desc-brain_mask.nii"
    mask_img = load_nifti(mask_path, 3)
    mask = np.asanyarray(mask_img.dataobj) > 0
    if not mask.any():
        raise DataError(f"{mask_path}: mask selects no voxels")
    roi, names = None, {}
    roi_path = sdir / "anat" / f"{subject}_desc-roi_dseg.nii"
    if roi_path.is_file():
        roi_img = load_nifti(roi_path, 3)
        if roi_img.shape != mask.shape:
            raise DataError(f"{roi_path}: shape {roi_img.shape} does not match the mask's "
                            f"{mask.shape}")
        roi = np.asanyarray(roi_img.dataobj)[mask].astype(np.uint8)
        tsv = roi_path.with_suffix(".tsv")
        if tsv.is_file():
            with tsv.open(newline="") as fh:
                names = {int(r["index"]): r["name"] for r in csv.DictReader(fh, delimiter="\t")}
    bolds = sorted((sdir / "func").glob(f"{subject}_*_bold.nii")) + \
        sorted((sdir / "func").glob(f"{subject}_*_bold.nii.gz"))
    if not bolds:
        raise DataError(f"{sdir / 'func'}: no *_bold.nii runs")
    runs = [load_bids_run(b, mask=mask) for b in bolds]
    runs.sort(key=lambda r: (r.task != "train", r.run))
    return Session(root=root, subject=subject, runs=runs, mask=mask, affine=mask_img.affine,
                   roi=roi, roi_names=names, clips=read_clips(root))


# --------------------------------------------------------------------------------------------
# CC2017 (Wen et al. 2017, "video_fmri_dataset")

CC2017_TR = 2.0
CC2017_CORTEX = 59412       # the first 59,412 grayordinates are cortical surface vertices
CC2017_KEEP = 240           # volumes per segment after trimming (8 min at TR 2 s)
CC2017_DROP_END = 4


def load_cc2017(root: str | Path, subject: int | str = 1) -> Session:
    """Load CC2017 in its published layout::

        ROOT/subject1/fmri/seg{1..18}/cifti/seg{k}_{rep}_Atlas.dtseries.nii    (training)
        ROOT/subject1/fmri/test{1..5}/cifti/test{k}_{rep}_Atlas.dtseries.nii   (testing)

    Each run keeps the 240 volumes that end 4 volumes before the run's end (the published
    runs have 245 or 246 volumes: the first 1 or 2 and the last 4 are dropped), and the
    cortical grayordinates. Clip ``j`` of a segment is the movie's 2-s chunk at TR ``j``;
    clip ids are ``segment_index * 240 + j`` with test segments after the 18 training ones.
    """
    root = Path(root)
    label = subject if isinstance(subject, str) else f"subject{subject}"
    fdir = root / label / "fmri"
    if not fdir.is_dir():
        raise DataError(f"{fdir}: CC2017 subject directory not found")
    pat = re.compile(r"^(seg|test)(\d+)_(\d+)_Atlas\.dtseries\.nii$")
    found = []
    for p in sorted(fdir.glob("*/cifti/*_Atlas.dtseries.nii")):
        m = pat.match(p.name)
        if m:
            found.append((m.group(1), int(m.group(2)), int(m.group(3)), p))
    if not found:
        raise DataError(f"{fdir}: no seg*/cifti/seg*_*_Atlas.dtseries.nii runs found")
    n_train_segments = max([k for kind, k, _, _ in found if kind == "seg"], default=0)
    runs, counters = [], {"train": 0, "test": 0}
    for kind, k, rep, p in sorted(found, key=lambda f: (f[0] != "seg", f[1], f[2])):
        try:
            img = nib.load(str(p))
        except Exception as exc:
            raise DataError(f"{p}: not a readable CIFTI file ({exc})") from None
        if len(img.shape) != 2:
            raise DataError(f"{p}: expected a 2-D (time, grayordinate) dtseries, "
                            f"got shape {img.shape}")
        n, g = img.shape
        if g < CC2017_CORTEX:
            raise DataError(f"{p}: {g} grayordinates, expected at least {CC2017_CORTEX}")
        if n < CC2017_KEEP + CC2017_DROP_END:
            raise DataError(f"{p}: {n} volumes, expected at least "
                            f"{CC2017_KEEP + CC2017_DROP_END}")
        step = _cifti_tr(img)
        if step is not None and abs(step - CC2017_TR) > 1e-3:
            raise DataError(f"{p}: series step {step} s, expected TR {CC2017_TR} s")
        task = "train" if kind == "seg" else "test"
        counters[task] += 1
        seg_index = (k - 1) if task == "train" else (n_train_segments + k - 1)
        start = n - CC2017_DROP_END - CC2017_KEEP
        runs.append(Run(path=p, task=task, run=counters[task], tr=CC2017_TR, n_trs=CC2017_KEEP,
                        stim_trs=np.arange(CC2017_KEEP),
                        clip_ids=seg_index * CC2017_KEEP + np.arange(CC2017_KEEP),
                        segment=k, repeat=rep, trim=(start, CC2017_DROP_END),
                        meta={"n_grayordinates": CC2017_CORTEX}))
    return Session(root=root, subject=label, runs=runs)


def _cifti_tr(img) -> float | None:
    try:
        axis = img.header.get_axis(0)
    except Exception:
        return None
    return float(getattr(axis, "step", None)) if hasattr(axis, "step") else None
