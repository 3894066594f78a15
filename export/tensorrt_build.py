"""TensorRT plan from an exported ONNX graph — TensorRT's documented Python API, kept thin.

``trt.Builder`` → network (explicit batch) → ``trt.OnnxParser.parse_from_file`` (finds the
external weights beside the ``.onnx``) → ``IBuilderConfig`` with a workspace limit, FP16 when
asked (``set_flag(trt.BuilderFlag.FP16)``), one optimization profile from the spec's
min / opt / max shapes, and a timing cache kept in the store (reused across builds on the
same GPU and TensorRT) → ``build_serialized_network`` → ``model.plan``. The runtime side is
:class:`rtdecode.backends.TensorRTEngine` (``execute_async_v3``).

Not runnable on our machines (no GPU; TensorRT's wheel cannot be installed): its tests skip
with the reason :func:`tensorrt_status` gives.
"""

from __future__ import annotations

import time
from pathlib import Path

from .specs import ExportSpec


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message names which."""


def tensorrt_status() -> tuple[bool, str]:
    """``(usable, reason)``: TensorRT importable and a CUDA GPU visible."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, f"tensorrt is not installed ({exc}); it needs an NVIDIA GPU and CUDA"
    try:
        import torch
    except ImportError:
        return False, "torch is missing (used to query the GPU)"
    if not torch.cuda.is_available():
        return False, f"tensorrt {trt.__version__} is installed but no CUDA GPU is visible"
    return True, f"tensorrt {trt.__version__} on {torch.cuda.get_device_name(0)}"


def gpu_identity() -> dict:
    """What a plan is specific to: TensorRT version, GPU name and compute capability."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}", "cuda": torch.version.cuda}


def build_plan(onnx_path: str | Path, spec: ExportSpec, out: str | Path, *,
               fp16: bool = True, timing_cache: str | Path | None = None,
               workspace_gib: float = 4.0) -> dict:
    """Build and write a serialized TensorRT engine; returns a record for the manifest."""
    ok, reason = tensorrt_status()
    if not ok:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if fp16:
        if not builder.platform_has_fast_fp16:
            raise TensorRTUnavailable("this GPU has no fast FP16; build with --precision fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in spec.profile().items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    blob = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see its log)")
    out = Path(out)
    out.write_bytes(bytes(plan))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {**gpu_identity(), "precision": "fp16" if fp16 else "fp32",
            "profile": {k: [list(s) for s in v] for k, v in spec.profile().items()},
            "timing_cache": str(cache_path) if cache_path else None,
            "seconds": round(time.perf_counter() - t0, 2)}
