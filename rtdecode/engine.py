"""Decoding engines and the caption bank, behind one small interface the daemon calls.

An :class:`Engine` maps a batch of windowed, preprocessed voxel vectors to decoded target
vectors. The ridge engine (numpy only) is the first; torch, ONNX Runtime and TensorRT
engines plug in behind the same interface. A :class:`CaptionBank` turns decoded vectors into
text: the nearest bank entry (Pearson correlation) gives the anchor / motion / holistic
captions and the score.

A trained model is a directory: ``model.safetensors`` (weights), ``config.json`` (what it
is and what it was trained on) and ``captions.jsonl`` (the caption bank). Loading it against
a session that does not match (voxel count, mask, lag, preprocessing, simulator version) is
an error that lists what differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from safetensors.numpy import load_file, save_file

from .messages import CLIP_LEVELS

MODEL_FILE, CONFIG_FILE, BANK_FILE = "model.safetensors", "config.json", "captions.jsonl"


class ModelMismatch(ValueError):
    """A checkpoint loaded against data it was not trained for; the message lists the diffs."""


@runtime_checkable
class Engine(Protocol):
    """Decodes windowed voxel vectors ``(batch, n_inputs)`` into targets ``(batch, dim)``."""

    name: str
    n_inputs: int

    def decode(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class RidgeEngine:
    """A linear decoder: ``x[:, voxels] @ coef.T + intercept`` (numpy, no torch)."""

    coef: np.ndarray             # (dim, n_inputs)
    intercept: np.ndarray        # (dim,)
    name: str = "ridge"

    @property
    def n_inputs(self) -> int:
        return int(self.coef.shape[1])

    def decode(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"ridge engine expects (batch, {self.n_inputs}) inputs, "
                             f"got {x.shape}")
        return (x @ self.coef.T + self.intercept).astype(np.float32)


@dataclass
class CaptionBank:
    """Captions with the target vectors they were decoded to; nearest-neighbour retrieval."""

    targets: np.ndarray          # (n, dim)
    captions: list[dict]         # n dicts with anchor / motion / holistic (+ basic, clip_id)
    #: Centre decoded and bank vectors on the bank's mean first (the mean training caption:
    #: CLIP token states share one large caption-template direction; see models/evaluate).
    center: bool = False

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.targets):
            raise ValueError(f"caption bank has {len(self.captions)} captions but "
                             f"{len(self.targets)} target vectors")
        t = self.targets.astype(np.float32)
        self._center = t.mean(axis=0) if self.center and len(t) else np.zeros(t.shape[1:],
                                                                              np.float32)
        t = t - self._center
        t = t - t.mean(axis=1, keepdims=True)
        self._unit = t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-12)

    def nearest(self, pred: np.ndarray, k: int = 1) -> list[list[tuple[dict, float]]]:
        """Top-``k`` (caption, correlation) per decoded row of ``pred`` ``(batch, dim)``."""
        p = pred - self._center
        p = p - p.mean(axis=1, keepdims=True)
        p = p / (np.linalg.norm(p, axis=1, keepdims=True) + 1e-12)
        sims = p @ self._unit.T
        if k == 1:
            top = sims.argmax(axis=1)[:, None]
        else:
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return [[(self.captions[j], float(sims[i, j])) for j in row] for i, row in enumerate(top)]


def mask_hash(mask: np.ndarray | None, n_voxels: int) -> str:
    """A short hash identifying a voxel space (the mask's shape and voxels)."""
    h = hashlib.sha256()
    if mask is None:
        h.update(f"vector:{n_voxels}".encode())
    else:
        h.update(str(mask.shape).encode())
        h.update(np.packbits(mask.astype(bool).ravel()).tobytes())
    return h.hexdigest()[:16]


@dataclass
class DecoderModel:
    """A trained decoder with its caption bank and provenance."""

    engine: Engine               # RidgeEngine, or a neural backend (rtdecode.backends)
    bank: CaptionBank
    voxels: np.ndarray | None    # indices into the session's masked voxels (None = all)
    meta: dict

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if not isinstance(self.engine, RidgeEngine):
            raise TypeError(f"only ridge models are saved this way, not {self.engine.name!r} "
                            "(neural decoders live in checkpoints and the engine store)")
        tensors = {"coef": np.ascontiguousarray(self.engine.coef, np.float32),
                   "intercept": np.ascontiguousarray(self.engine.intercept, np.float32),
                   "bank_targets": np.ascontiguousarray(self.bank.targets, np.float32)}
        if self.voxels is not None:
            tensors["voxels"] = np.ascontiguousarray(self.voxels, np.int64)
        save_file(tensors, str(out / MODEL_FILE))
        (out / CONFIG_FILE).write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        (out / BANK_FILE).write_text(
            "\n".join(json.dumps(c, sort_keys=True) for c in self.bank.captions) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> DecoderModel:
        path = Path(path)
        for name in (MODEL_FILE, CONFIG_FILE, BANK_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name}: missing (is {path} a trained model "
                                        "directory?)")
        t = load_file(str(path / MODEL_FILE))
        meta = json.loads((path / CONFIG_FILE).read_text())
        caps = [json.loads(line) for line in (path / BANK_FILE).read_text().splitlines()
                if line.strip()]
        engine = RidgeEngine(t["coef"], t["intercept"], name=meta.get("kind", "ridge"))
        return cls(engine, CaptionBank(t["bank_targets"], caps), t.get("voxels"), meta)

    def check_compatible(self, provenance: dict) -> None:
        """Raise :class:`ModelMismatch` listing every key where ``provenance`` differs."""
        diffs = [f"{k}: model {self.meta['trained_on'].get(k)!r} vs data {v!r}"
                 for k, v in provenance.items()
                 if k in self.meta.get("trained_on", {}) and self.meta["trained_on"][k] != v]
        if diffs:
            raise ModelMismatch("model does not match the data it is used on: "
                                + "; ".join(diffs))


def caption_text(caption: dict) -> dict[str, str]:
    return {k: caption[k] for k in CLIP_LEVELS}


def provenance(session, cfg) -> dict:
    """What a model trained on ``session`` with ``cfg`` depends on (checked at load time)."""
    import dataclasses

    sim = {}
    desc = Path(session.root) / "dataset_description.json"
    if desc.is_file():
        d = json.loads(desc.read_text())
        sim = {"simulator_version": d.get("SimulatorVersion"), "seed": d.get("Seed")}
    return {**sim, "subject": session.subject, "n_voxels": session.n_voxels,
            "mask_hash": mask_hash(session.mask, session.n_voxels), "tr": session.tr,
            "lag_trs": cfg.window.lag_trs, "width_trs": cfg.window.width_trs,
            "reduce": cfg.window.reduce, "voxel_selection": cfg.data.voxel_selection,
            "preprocess": dataclasses.asdict(cfg.preprocess)}


def check_provenance(meta: dict, subject: str, prov: dict) -> None:
    """A checkpoint used on data it was not trained on is an error naming what differs
    (``prov``: :func:`provenance` of the data; ``meta``: the checkpoint's config)."""
    trained = meta.get("trained_on", {}).get(subject)
    if trained is None:
        return
    diffs = [f"{k}: checkpoint {trained[k]!r} vs data {v!r}" for k, v in prov.items()
             if k in trained and trained[k] != v]
    if diffs:
        raise ModelMismatch(f"checkpoint trained on other data for {subject}: "
                            + "; ".join(diffs))
