"""Strict TOML configuration.

Every section of a config file maps onto a frozen dataclass. Loading is strict: an unknown
key, a value of the wrong type, or a value outside its documented range is a
:class:`ConfigError` that names the file, the key and the bad value. Nothing is silently
defaulted or coerced (an ``int`` is accepted where a ``float`` is expected, nothing else).

Range limits live beside each field as metadata (``ge``, ``gt``, ``le``, ``lt``, ``choices``),
so the dataclass is the single description of a section.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomllib

T = TypeVar("T")

PACKAGE_ROOT = Path(__file__).resolve().parent
#: Where the shipped configs live in a source checkout (``configs/`` beside the package).
CONFIG_DIR = PACKAGE_ROOT.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "toy.toml"


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names file, key and value."""


def _range(*, ge=None, gt=None, le=None, lt=None, choices=None, doc: str = "") -> dict:
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices).items()
            if v is not None}
    if doc:
        meta["doc"] = doc
    return meta


def param(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
          **limits: Any) -> Any:
    """A dataclass field with range metadata checked on load and on construction."""
    kwargs: dict[str, Any] = {"metadata": _range(**limits)}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return field(**kwargs)


# --------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class DataConfig:
    """Where a session lives and how its voxels are chosen."""

    root: str = param("data/toy", doc="session directory, relative to the working directory")
    tr: float = param(2.0, gt=0.0, le=10.0, doc="repetition time in seconds")
    subjects: tuple[str, ...] = param(default_factory=tuple,
                                      doc="subject labels to use; empty = all in the session")
    voxel_selection: str = param("mask", choices=("mask", "roi", "reliability"),
                                 doc="which voxels feed the decoder")
    n_voxels: int = param(0, ge=0, doc="voxels kept by 'reliability' (0 = all)")


@dataclass(frozen=True)
class PreprocessConfig:
    """Causal, online preprocessing (the same code offline and live)."""

    baseline_trs: int = param(4, ge=1, le=1000, doc="TRs used to seed the running z-score")
    highpass_s: float = param(64.0, gt=0.0, doc="time constant of the causal drift removal (s)")
    zscore: bool = param(True, doc="running (Welford) z-score per voxel")
    clip_z: float = param(8.0, gt=0.0, doc="clip z-scores to +/- this (motion spikes)")


@dataclass(frozen=True)
class WindowConfig:
    """HRF-lag window: the clip shown at TR k is decoded from volumes k+lag .. k+lag+width-1."""

    lag_trs: int = param(2, ge=0, le=30)
    width_trs: int = param(2, ge=1, le=30)
    reduce: str = param("mean", choices=("mean", "concat"))


@dataclass(frozen=True)
class RidgeConfig:
    """Ridge baseline: voxels -> scene-attribute targets."""

    alphas: tuple[float, ...] = param((1e1, 1e2, 1e3, 1e4, 1e5, 1e6))
    n_way_trials: int = param(100, ge=1)


@dataclass(frozen=True)
class SimulateConfig:
    """Overrides of the simulator preset (see rtdecode.simulator.presets)."""

    preset: str = param("small", choices=("small", "study"))
    seed: int = param(0, ge=0)
    n_subjects: int = param(3, ge=1, le=16)
    tr: float = param(2.0, choices=(1.0, 2.0))


@dataclass(frozen=True)
class StreamConfig:
    """The streaming daemon (``rtdecode serve``)."""

    source: str = param("zmq://127.0.0.1:5555",
                        doc="zmq://HOST:PORT (bind PULL) or lsl:NAME (resolve an fMRI stream)")
    publish: str = param("tcp://127.0.0.1:5556", doc="where the PUB socket binds")
    clip_stride_trs: int = param(1, ge=1, le=30,
                                 doc="a stimulus clip starts every N TRs (2-s clips, TR 2 s: 1)")
    ingest_queue: int = param(256, ge=1, doc="volumes buffered between ingest and decode")
    on_full: str = param("drop", choices=("drop", "block"),
                         doc="ingest queue full: drop the volume (live: never fall behind the "
                             "scanner) or block the sender (lossless max-speed replay)")
    publish_queue: int = param(1024, ge=1, doc="outputs buffered before publishing")
    status_interval_s: float = param(1.0, gt=0.0)
    journal_dir: str = param("runs/journal", doc="session journals, relative to the cwd")
    max_message_mb: float = param(64.0, gt=0.0, doc="largest accepted input message")
    lsl_captions: bool = param(True, doc="also publish captions as an LSL marker stream")
    blas_threads: int = param(1, ge=0, le=256,
                              doc="BLAS threads while the daemon runs (0 = leave as is); one "
                                  "keeps per-TR latency steady after idle gaps")
    switch_interval_ms: float = param(
        0.5, ge=0.0, le=100.0,
        doc="Python's thread switch interval while the daemon runs (0 = leave as is); the "
            "default 5 ms lets a busy stage hold back a caption that is ready to publish")


BACKENDS = ("torch", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class EngineConfig:
    """How a neural decoder (SAD) is run: the backend, its engine store, and options.

    The ridge decoder is numpy and ignores this section. An unavailable backend is an error
    naming what is missing; ``fallback`` lists backends to try next, in order, each switch
    logged as a warning (never a silent fallback).
    """

    backend: str = param("onnxruntime", choices=BACKENDS,
                         doc="torch (eager), onnxruntime or tensorrt (native TensorRT plan)")
    fallback: tuple[str, ...] = param(default_factory=tuple, choices=BACKENDS,
                                      doc="backends to try, in order, when `backend` is "
                                          "unavailable (each switch is logged)")
    int8: bool = param(False, doc="onnxruntime: the int8 dynamically quantized engine")
    store: str = param("engines", doc="the engine store, relative to the working directory")
    providers: tuple[str, ...] = param(
        default_factory=tuple,
        choices=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        doc="onnxruntime execution providers in priority order (empty = CPU); asking for one "
            "this onnxruntime lacks is an error")
    threads: int = param(0, ge=0, le=256,
                         doc="intra-op threads of the torch / onnxruntime engine (0 = their "
                             "default)")
    steps: int = param(-1, ge=-1, le=1000,
                       doc="Refineformer sampling steps of the engine to use (-1 = the "
                           "checkpoint's sample_steps); baked into an engine at export")
    seed: int = param(0, ge=0, doc="seed of the sampling-noise generator")
    precision: str = param("fp16", choices=("fp16", "fp32"),
                           doc="tensorrt: which built plan to use")


@dataclass(frozen=True)
class RenderConfig:
    """The video renderer (CVR): which weights, and how clips are sampled.

    ``weights = "toy"`` loads the toy zoo (``zoo``; empty = the shipped one). ``"sd15"`` loads
    real weights from local folders: an SD1.5 checkpoint in diffusers layout (``sd15``) and
    an AnimateDiff / AnimateLCM ``MotionAdapter`` (``motion_adapter``); SAD must then decode
    77x768 CLIP ViT-L/14 token states (its ``paper`` preset). That path is written against
    the documented diffusers API and has not been run (no weights or GPU here).
    """

    weights: str = param("toy", choices=("toy", "sd15"), doc="toy zoo or real SD1.5 weights")
    zoo: str = param("", doc="toy zoo folder ('' = the shipped rtdecode/zoo/weights)")
    sd15: str = param("", doc="local SD1.5 folder in diffusers layout (weights = sd15)")
    motion_adapter: str = param("", doc="local AnimateDiff/AnimateLCM MotionAdapter folder")
    steps: int = param(4, ge=1, le=1000, doc="scheduler steps")
    scheduler: str = param("dpm", choices=("dpm", "ddim", "euler"),
                           doc="DPM-Solver++, DDIM or Euler")
    guidance: float = param(1.0, ge=1.0, le=30.0, doc="classifier-free guidance (1 = off)")
    anchor_guidance: float = param(0.0, ge=0.0, le=30.0,
                                   doc="stage 2's own guidance (0 = guidance's): on the toy "
                                       "zoo 4 lifts decoded colour, costs some position")
    anchor_strength: float = param(0.0, ge=0.0, le=1.0,
                                   doc="stage 2 img2img strength (0 = by the latents: "
                                       "0.125 for the layout sketch's or true ones, 0.8 for "
                                       "MAD's)")
    video_strength: float = param(0.0, ge=0.0, le=1.0,
                                  doc="stage 3 video-to-video strength (0 = by the latents, "
                                      "as anchor_strength)")
    motion_module_fraction: float = param(0.3, gt=0.0, le=1.0,
                                          doc="stage 3: share of its steps (the first ones) "
                                              "that run the motion module (1 = every step)")
    distilled_video: bool = param(True, doc="stage 3 on the zoo's guidance-distilled UNet "
                                            "(unet_guided/) when it has one")
    fusion: bool = param(True, doc="multi-fMRI fusion: chain clips of one scene")
    fusion_threshold: float = param(-1.0, ge=-1.0, le=1.0,
                                    doc="keyframe similarity to chain (-1 = the zoo's "
                                        "calibrated fusion.json)")
    threads: int = param(2, ge=0, le=256, doc="torch threads of the renderer (0 = default)")


@dataclass(frozen=True)
class Config:
    """A whole rtdecode config file."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    ridge: RidgeConfig = field(default_factory=RidgeConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    #: Free text naming what the file describes; shown by `rtdecode config`.
    description: str = ""


# --------------------------------------------------------------------------------------------
# Strict loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in args:
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, arm, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} = {value!r}: must be one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} = {value!r}: expected a list")
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: expected a string")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def check_limits(obj: Any, where: str = "") -> None:
    """Check every field of a dataclass instance against its range metadata."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check_limits(value, key)
            continue
        meta = f.metadata
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if "choices" in meta and v not in meta["choices"]:
                raise ConfigError(f"{key} = {v!r}: must be one of {list(meta['choices'])}")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if "ge" in meta and not v >= meta["ge"]:
                    raise ConfigError(f"{key} = {v!r}: must be >= {meta['ge']}")
                if "gt" in meta and not v > meta["gt"]:
                    raise ConfigError(f"{key} = {v!r}: must be > {meta['gt']}")
                if "le" in meta and not v <= meta["le"]:
                    raise ConfigError(f"{key} = {v!r}: must be <= {meta['le']}")
                if "lt" in meta and not v < meta["lt"]:
                    raise ConfigError(f"{key} = {v!r}: must be < {meta['lt']}")


def _build(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"[{where}] " if where else ""
        raise ConfigError(f"{prefix}unknown key {unknown[0]!r} (known keys: {sorted(known)})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(value, hints[name], key)
    obj = cls(**kwargs)
    check_limits(obj, where)
    return obj


def from_dict(cls: type[T], data: dict, source: str = "<dict>") -> T:
    """Build dataclass ``cls`` from a plain dict, strictly; errors name ``source``."""
    try:
        return _build(cls, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | Path | None = None) -> Config:
    """Load a TOML config file (default: the toy world's ``configs/toy.toml``)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(Config, data, str(path))


def to_dict(obj: Any) -> Any:
    """A dataclass as plain TOML/JSON-friendly values (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj
