"""Export specs: one per model kind, and the registry that maps a checkpoint to its spec.

An :class:`ExportSpec` says everything an exporter and an engine builder need about one
graph: input and output names, their shapes with the dynamic axes named (``"batch"``), the
batch range (min / opt / max, the TensorRT optimization profile), the options baked into
the graph (for SAD: subject and sampling steps) and how to make a sample input.

A :class:`ModelEntry` in :data:`REGISTRY` turns a checkpoint directory (recognised by its
weights file) into a torch module whose ``forward`` takes the spec's inputs in order and
returns its outputs in order, plus the spec. SAD is registered here; MAD and the toy VAE
decoder plug in with one :func:`register` call each, nothing else changes.

SAD's graph (:class:`rtdecode.models.sad.SADGraph`): one graph per **subject** (the voxel
count is fixed by the subject's projection). The few-step Refineformer sampling is
**unrolled** in the graph (the steps are a Python loop over constant timesteps, traced
once per step; ``steps`` is part of the spec and of the engine key). The sampling noise is
an **input** (``noise``), so the graph is deterministic and its parity with torch exact;
the runtime draws the noise from a seeded generator. With ``steps = 0`` the graph is the
backbone estimate alone and has no noise input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtdecode.backends import file_sha256

DYNAMIC_BATCH = "batch"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; a ``str`` in ``shape`` names a dynamic axis."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == DYNAMIC_BATCH else int(d) for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ExportSpec:
    """Everything that shapes one exported graph (hashed into the engine key)."""

    kind: str
    subject: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch: tuple[int, int, int] = (1, 4, 32)   # min, opt, max
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"batch (min, opt, max) = {self.batch}: need 1 <= min <= opt "
                             "<= max")
        names = [t.name for t in self.inputs + self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.kind} spec: duplicate tensor names in {names}")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{tensor: {axis: name}}`` for every dynamic axis (inputs and outputs)."""
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in self.inputs + self.outputs
                if any(isinstance(d, str) for d in t.shape)}

    def shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {t.name: t.concrete(batch) for t in self.inputs}

    def profile(self) -> dict[str, tuple[tuple[int, ...], ...]]:
        """min / opt / max shape per input (a TensorRT optimization profile)."""
        return {t.name: tuple(t.concrete(b) for b in self.batch) for t in self.inputs}

    def sample_inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of ``batch`` rows: standard normal (z-scored voxels; noise)."""
        rng = np.random.default_rng(seed)
        return {t.name: rng.standard_normal(t.concrete(batch)).astype(t.dtype)
                for t in self.inputs}

    def export_batch(self) -> int:
        """The example batch the graph is traced with: >= 2, or the exporter may freeze a
        dynamic batch of 1 (see DESIGN, "Facts already measured")."""
        return max(2, min(self.batch[1], self.batch[2]))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "subject": self.subject,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "batch": {"min": self.batch[0], "opt": self.batch[1], "max": self.batch[2]},
                "dynamic_axes": {k: {str(i): n for i, n in v.items()}
                                 for k, v in self.dynamic_axes().items()},
                "options": dict(self.options)}


@dataclass(frozen=True)
class BuildOptions:
    """What the user chose at export time (anything a spec needs beyond the checkpoint)."""

    subject: str | None = None
    steps: int | None = None          # None: the checkpoint's default
    batch: tuple[int, int, int] = (1, 4, 32)


@dataclass
class Built:
    """A checkpoint turned into an exportable module, its spec and its provenance."""

    module: Any                       # torch.nn.Module: forward(*inputs) -> outputs
    spec: ExportSpec
    source: dict                      # checkpoint path, weights sha256, trained_on, ...


@dataclass(frozen=True)
class ModelEntry:
    """A registry entry: how to recognise and load one kind of checkpoint."""

    kind: str
    weights_file: str                 # the file that identifies a checkpoint dir of this kind
    build: Callable[[Path, BuildOptions], Built]
    doc: str = ""


REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add a model kind (MAD, the VAE decoder, ...) to the registry."""
    if entry.kind in REGISTRY:
        raise ValueError(f"model kind {entry.kind!r} is already registered")
    REGISTRY[entry.kind] = entry
    return entry


def detect_kind(checkpoint: str | Path) -> ModelEntry:
    """The registry entry whose weights file ``checkpoint`` holds."""
    p = Path(checkpoint)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: checkpoint directory not found")
    found = [e for e in REGISTRY.values() if (p / e.weights_file).is_file()]
    if not found:
        want = ", ".join(f"{e.weights_file} ({e.kind})" for e in REGISTRY.values())
        raise ValueError(f"{p}: not a checkpoint of a known kind (looked for {want})")
    return found[0]


# ----------------------------------------------------------------------------- SAD


def sad_graph(model, subject: str, steps: int, batch: tuple[int, int, int] = (1, 4, 32)):
    """A SAD model (in memory) → its export module and spec for one subject."""
    from rtdecode.models.sad import SADGraph

    graph = SADGraph(model, subject, steps).eval()
    c = model.cfg
    n_levels = len(c.levels)
    tok = (DYNAMIC_BATCH, n_levels, c.n_tokens, c.token_dim)
    n_voxels = int(model.proj[subject].in_features)
    inputs = [TensorSpec("x", (DYNAMIC_BATCH, n_voxels))]
    if graph.uses_noise:
        inputs.append(TensorSpec("noise", tok))
    spec = ExportSpec(
        kind="sad", subject=subject, inputs=tuple(inputs),
        outputs=(TensorSpec("tokens", tok),
                 TensorSpec("pooled", (DYNAMIC_BATCH, n_levels * c.token_dim))),
        batch=tuple(batch),
        options={"steps": graph.steps, "sampling": "unrolled" if graph.steps else "none",
                 "noise": "input" if graph.uses_noise else "none",
                 "levels": list(c.levels), "n_tokens": c.n_tokens, "token_dim": c.token_dim,
                 "n_voxels": n_voxels, "config_sha256": _dict_sha(c.to_dict())})
    return graph, spec


def _dict_sha(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()


def _build_sad(path: Path, opts: BuildOptions) -> Built:
    from rtdecode.models.train import load_checkpoint

    model, meta = load_checkpoint(path)
    subjects = list(model.cfg.subjects)
    subject = opts.subject or (subjects[0] if len(subjects) == 1 else None)
    if subject is None:
        raise ValueError(f"{path}: SAD knows subjects {subjects}; choose one (one graph per "
                         "subject)")
    if subject not in subjects:
        raise ValueError(f"{path}: subject {subject!r} unknown to this SAD (has {subjects})")
    steps = model.cfg.sample_steps if opts.steps is None else opts.steps
    graph, spec = sad_graph(model, subject, steps, opts.batch)
    weights = path / "sad.safetensors"
    trained_on = meta.get("trained_on", {}).get(subject, {})
    return Built(graph, spec, {
        "checkpoint": str(path), "checkpoint_resolved": str(path.resolve()),
        "weights_file": weights.name, "weights_sha256": file_sha256(weights),
        "trained_on": trained_on, "clip": meta.get("clip"),
        "n_parameters": int(sum(p.numel() for p in model.parameters()))})


register(ModelEntry("sad", "sad.safetensors", _build_sad,
                    "Semantic Alignment Decoder: voxels -> 3 levels of text tokens; "
                    "Refineformer sampling unrolled, noise as an input"))
