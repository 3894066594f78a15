"""Export specs: one per model kind, and the registry that maps a checkpoint to its spec.

An :class:`ExportSpec` says everything an exporter and an engine builder need about one
graph: input and output names, their shapes with the dynamic axes named (``"batch"``), the
batch range (min / opt / max, the TensorRT optimization profile), the options baked into
the graph (for SAD: subject and sampling steps) and how to make a sample input.

A :class:`ModelEntry` in :data:`REGISTRY` turns a checkpoint directory (recognised by its
weights file) into a torch module whose ``forward`` takes the spec's inputs in order and
returns its outputs in order, plus the spec. Three kinds are registered here, one
:func:`register` call each: ``sad`` (``sad.safetensors``), ``mad`` (``mad.safetensors``)
and ``vae-decoder`` (``vae.safetensors``); another kind plugs in the same way.

SAD's graph (:class:`rtdecode.models.sad.SADGraph`): one graph per **subject** (the voxel
count is fixed by the subject's projection). The few-step Refineformer sampling is
**unrolled** in the graph (the steps are a Python loop over constant timesteps, traced
once per step; ``steps`` is part of the spec and of the engine key). The sampling noise is
an **input** (``noise``), so the graph is deterministic and its parity with torch exact;
the runtime draws the noise from a seeded generator. With ``steps = 0`` the graph is the
backbone estimate alone and has no noise input. Inputs ``x`` (batch, n_voxels) [+ ``noise``
(batch, levels, n_tokens, token_dim)]; outputs ``tokens`` (batch, levels, n_tokens,
token_dim) and ``pooled`` (batch, levels * token_dim).

MAD's graph (:class:`rtdecode.models.mad.MADGraph`): one graph per subject, a plain forward
(no sampling). Inputs ``x`` (batch, n_voxels) and ``motion`` (batch, motion_tokens,
token_dim), SAD's decoded motion semantics (the ``motion`` level of its ``tokens``); a MAD
trained without cross-attention (the ``--no-cross`` ablation) takes ``x`` alone. Output
``latents`` (batch, n_frames, C, h, w): per-frame *scaled* VAE latents.

The toy VAE decoder's graph (:class:`rtdecode.zoo.vae.VAEDecoderGraph`, what
``ToyVAE.decode`` runs): one graph for every subject (subject ``"any"``), the decoder only.
Input ``latents`` (batch, C, h, w), one frame of MAD's output as MAD produces it (the
division by the checkpoint's ``scaling_factor`` is in the graph); output ``frames``
(batch, 3, H, W), pixels in [-1, 1] (clamped in the graph).

Options that only SAD has (``--steps``) are refused by the other kinds' builders rather
than ignored; the store refuses SAD's caption bank / int8 options for them likewise.
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
    from rtdecode.models.sad import SADGraph, in_features

    graph = SADGraph(model, subject, steps).eval()
    c = model.cfg
    n_levels = len(c.levels)
    tok = (DYNAMIC_BATCH, n_levels, c.n_tokens, c.token_dim)
    n_voxels = in_features(model.proj[subject])  # a Linear, or low-rank: two of them
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


def _pick_subject(path: Path, kind: str, subjects: list[str], wanted: str | None) -> str:
    subject = wanted or (subjects[0] if len(subjects) == 1 else None)
    if subject is None:
        raise ValueError(f"{path}: {kind} knows subjects {subjects}; choose one (one graph "
                         "per subject)")
    if subject not in subjects:
        raise ValueError(f"{path}: subject {subject!r} unknown to this {kind} (has "
                         f"{subjects})")
    return subject


def _no_steps(path: Path, kind: str, opts: BuildOptions) -> None:
    if opts.steps is not None:
        raise ValueError(f"{path}: --steps is SAD's (Refineformer sampling steps); a {kind} "
                         "graph has no sampling steps")


def _dict_sha(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()


def _build_sad(path: Path, opts: BuildOptions) -> Built:
    from rtdecode.models.train import load_checkpoint

    model, meta = load_checkpoint(path)
    subject = _pick_subject(path, "SAD", list(model.cfg.subjects), opts.subject)
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


# ----------------------------------------------------------------------------- MAD


def mad_graph(model, subject: str, batch: tuple[int, int, int] = (1, 4, 32)):
    """A MAD model (in memory) → its export module and spec for one subject."""
    from rtdecode.models.mad import MADGraph
    from rtdecode.models.sad import in_features

    graph = MADGraph(model, subject).eval()
    c = model.cfg
    n_voxels = in_features(model.proj[subject])
    inputs = [TensorSpec("x", (DYNAMIC_BATCH, n_voxels))]
    if graph.uses_motion:
        inputs.append(TensorSpec("motion", (DYNAMIC_BATCH, c.motion_tokens, c.token_dim)))
    spec = ExportSpec(
        kind="mad", subject=subject, inputs=tuple(inputs),
        outputs=(TensorSpec("latents", (DYNAMIC_BATCH, c.n_frames, *c.latent_shape)),),
        batch=tuple(batch),
        options={"motion": "input" if graph.uses_motion else "none",
                 "n_frames": c.n_frames, "latent_shape": list(c.latent_shape),
                 "motion_tokens": c.motion_tokens, "token_dim": c.token_dim,
                 "n_voxels": n_voxels, "config_sha256": _dict_sha(c.to_dict())})
    return graph, spec


def _build_mad(path: Path, opts: BuildOptions) -> Built:
    from rtdecode.models.mad import MAD
    from rtdecode.models.train import load_checkpoint

    _no_steps(path, "MAD", opts)
    model, meta = load_checkpoint(path)
    if not isinstance(model, MAD):
        raise ValueError(f"{path}: holds a {type(model).__name__}, not a MAD")
    subject = _pick_subject(path, "MAD", list(model.cfg.subjects), opts.subject)
    graph, spec = mad_graph(model, subject, opts.batch)
    weights = path / "mad.safetensors"
    return Built(graph, spec, {
        "checkpoint": str(path), "checkpoint_resolved": str(path.resolve()),
        "weights_file": weights.name, "weights_sha256": file_sha256(weights),
        "trained_on": meta.get("trained_on", {}).get(subject, {}), "clip": meta.get("clip"),
        "vae": meta.get("vae"),
        "n_parameters": int(sum(p.numel() for p in model.parameters()))})


register(ModelEntry("mad", "mad.safetensors", _build_mad,
                    "Motion Alignment Decoder: voxels + SAD's motion tokens -> per-frame "
                    "scaled VAE latents"))


# ----------------------------------------------------------------------------- VAE decoder

#: The spec's subject for a graph every subject shares (the VAE decoder).
ANY_SUBJECT = "any"


def vae_decoder_graph(vae, batch: tuple[int, int, int] = (1, 4, 32)):
    """A :class:`rtdecode.zoo.vae.ToyVAE` (in memory) → its decoder's module and spec."""
    graph = vae.decoder_graph().eval()
    c = vae.model.config
    C, h, w = vae.latent_shape
    size = int(c.sample_size)
    spec = ExportSpec(
        kind="vae-decoder", subject=ANY_SUBJECT,
        inputs=(TensorSpec("latents", (DYNAMIC_BATCH, C, h, w)),),
        outputs=(TensorSpec("frames", (DYNAMIC_BATCH, int(c.out_channels), size, size)),),
        batch=tuple(batch),
        options={"scaling_factor": vae.scaling_factor, "unscale": "in graph",
                 "range": "[-1, 1] clamped", "latent_shape": [C, h, w],
                 # diffusers' private keys (an unordered list of defaults) would unsettle it
                 "config_sha256": _dict_sha({k: v for k, v in c.items()
                                             if not k.startswith("_")})})
    return graph, spec


def _build_vae_decoder(path: Path, opts: BuildOptions) -> Built:
    from rtdecode.zoo.vae import WEIGHTS_FILE, load_toy_vae

    _no_steps(path, "VAE decoder", opts)
    if opts.subject not in (None, ANY_SUBJECT):
        raise ValueError(f"{path}: --subject {opts.subject!r}: the VAE decoder is one graph "
                         "for every subject")
    vae = load_toy_vae(path)
    graph, spec = vae_decoder_graph(vae, opts.batch)
    weights = path / WEIGHTS_FILE
    # the graph holds the whole AutoencoderKL; only the decoder side is exported
    used = (graph.model.decoder, getattr(graph.model, "post_quant_conv", None))
    n_params = int(sum(p.numel() for m in used if m is not None for p in m.parameters()))
    return Built(graph, spec, {
        "checkpoint": str(path), "checkpoint_resolved": str(path.resolve()),
        "weights_file": weights.name, "weights_sha256": file_sha256(weights),
        "n_parameters": n_params})


register(ModelEntry("vae-decoder", "vae.safetensors", _build_vae_decoder,
                    "the toy VAE's decoder: one frame's scaled latents -> pixels in [-1, 1]"))
