"""What an engine folder carries besides the graph: the caption bank, and real inputs.

The caption bank of a SAD engine is the pooled toy-CLIP targets of the session's training
clips (:class:`rtdecode.models.evaluate.CaptionTargets`, pooled as
:func:`rtdecode.models.evaluate.pooled`) with their captions, computed here once at export
time and stored in the engine folder (``bank.safetensors`` + ``captions.jsonl``), so the
runtime needs neither torch nor the CLIP.

Real inputs (for the parity check and the int8 accuracy) are causally preprocessed HRF-lag
windows of the session's first test runs, cut exactly as the live daemon and training cut
them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtdecode.backends import BANK_TENSORS, file_sha256
from rtdecode.engine import BANK_FILE

CAPTION_KEYS = ("basic", "anchor", "motion", "holistic")


def bank_source(data: Path, clip: Path) -> dict:
    """The bank's inputs, hashed into the engine key (cheap: no CLIP forward)."""
    captions = Path(data) / "stimuli" / "captions.jsonl"
    weights = Path(clip) / "clip.safetensors"
    for p in (captions, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing (need a session with stimuli/captions.jsonl "
                                    "and a toy CLIP checkpoint for the caption bank)")
    return {"captions_sha256": file_sha256(captions), "clip_sha256": file_sha256(weights),
            "data": str(data), "clip": str(clip)}


@dataclass
class BankData:
    """Pooled targets of every clip (for identification) and the training-clip bank."""

    targets: object                # CaptionTargets over every clip of the session
    bank: np.ndarray               # (n_train_clips, levels * dim)
    captions: list[dict]


def build_bank(data: Path, clip: Path, n_tokens: int, levels: tuple[str, ...],
               token_dim: int) -> BankData:
    from rtdecode.data import read_clips
    from rtdecode.models.evaluate import CaptionTargets, pooled
    from rtdecode.zoo.clip import load_toy_clip

    clips = read_clips(Path(data))
    if not clips:
        raise FileNotFoundError(f"{data}: no clips in stimuli/captions.jsonl")
    model = load_toy_clip(clip)
    if model.token_width != token_dim:
        raise ValueError(f"{clip}: CLIP token width {model.token_width}, the decoder outputs "
                         f"{token_dim} (trained against another CLIP?)")
    targets = CaptionTargets(clips, model, n_tokens, tuple(levels))
    train = [i for i, c in enumerate(targets.ids) if clips[int(c)].get("split") == "train"]
    if not train:
        raise ValueError(f"{data}: no training clips (split == 'train') for the caption bank")
    caps = [{"clip_id": int(targets.ids[i]), **{k: clips[int(targets.ids[i])][k]
                                                for k in CAPTION_KEYS}} for i in train]
    return BankData(targets, pooled(targets.array[train]).astype(np.float32), caps)


def write_bank(folder: Path, bank: np.ndarray, captions: list[dict]) -> None:
    from safetensors.numpy import save_file

    save_file({"targets": np.ascontiguousarray(bank, np.float32)},
              str(folder / BANK_TENSORS))
    (folder / BANK_FILE).write_text("\n".join(json.dumps(c, sort_keys=True)
                                              for c in captions) + "\n")


def real_windows(data: Path, subject: str, config: Path | None = None, max_runs: int = 2
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``(n, voxels)`` and their clip ids from the first ``max_runs`` test runs."""
    from rtdecode.config import load_config
    from rtdecode.data import load_session
    from rtdecode.preprocess import preprocess_run, select_voxels, window_features

    cfg = load_config(config)
    session = load_session(Path(data), subject)
    runs = session.runs_of("test")[:max_runs] or session.runs_of("train")[:max_runs]
    voxels = select_voxels(session, cfg)
    xs, ids = [], []
    for run in runs:
        d = run.data()
        if voxels is not None:
            d = d[:, voxels]
        X, complete = window_features(preprocess_run(d, run.tr, cfg.preprocess), run.stim_trs,
                                      cfg.window)
        xs.append(X)
        ids.append(run.clip_ids[complete])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ids)
