"""ONNX export with the current (dynamo) exporter, the ONNX checker, and the parity check.

:func:`export_onnx` traces the module with ``torch.onnx.export(..., dynamo=True)`` at a
batch >= 2 with ``dynamic_shapes`` (a batch-1 example silently freezes the batch; DESIGN,
"Facts already measured"), then checks that the batch axis really is dynamic in the saved
graph. If the dynamo exporter fails, it falls back — explicitly, logged and recorded — to
the TorchScript exporter with ``dynamic_axes``. Weights go to an external data file beside
the ``.onnx`` (the paper preset is over ONNX's 2 GB protobuf limit).

:func:`parity` runs the same inputs through torch and onnxruntime (CPU) and compares every
output with ``atol`` and ``rtol`` together (``|onnx - torch| <= atol + rtol * |torch|``, as
``np.testing.assert_allclose``), reporting the max absolute and max relative errors.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from .specs import DYNAMIC_BATCH, ExportSpec

log = logging.getLogger("export.onnx")

DEFAULT_OPSET = 18
#: fp32 parity tolerances (the graph reorders float sums; errors seen are ~1e-6).
ATOL, RTOL = 1e-4, 1e-3


class ExportError(RuntimeError):
    """Export failed, the checker rejected the graph, or its batch is not dynamic."""


class ParityError(AssertionError):
    """ONNX outputs differ from torch beyond tolerance; the message has the figures."""


def _torch_inputs(spec: ExportSpec, arrays: dict[str, np.ndarray]):
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in spec.input_names)


def export_onnx(module, spec: ExportSpec, out: str | Path, *, opset: int = DEFAULT_OPSET,
                exporter: str = "dynamo") -> dict:
    """Export ``module`` (forward(*spec inputs) -> spec outputs) to ``out``; returns a record
    (exporter used, opset, seconds, fallback reason) for the manifest."""
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    example = _torch_inputs(spec, spec.sample_inputs(spec.export_batch(), seed=0))
    record: dict = {"opset": opset, "torch": torch.__version__}
    t0 = time.perf_counter()
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"exporter {exporter!r}: choose dynamo or torchscript")
    if exporter == "dynamo":
        try:
            _export_dynamo(module, spec, example, out, opset)
            record["exporter"] = "dynamo"
        except Exception as exc:  # any exporter failure: fall back, loudly
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("dynamo exporter failed (%s); falling back to the TorchScript "
                        "exporter", reason)
            record["dynamo_error"] = reason[:500]
            exporter = "torchscript"
    if exporter == "torchscript":
        _export_torchscript(module, spec, example, out, opset)
        record["exporter"] = "torchscript"
    record["seconds"] = round(time.perf_counter() - t0, 2)
    try:
        import onnxscript

        record["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    check_onnx(out, spec)
    record["onnx_checker"] = "passed"
    return record


def _export_dynamo(module, spec: ExportSpec, example, out: Path, opset: int) -> None:
    import torch

    batch = torch.export.Dim(DYNAMIC_BATCH, min=1, max=max(spec.batch[2], 2))
    arg_names = _forward_arg_names(module, len(spec.inputs))
    dynamic = {a: {i: batch for i, d in enumerate(t.shape) if d == DYNAMIC_BATCH}
               for a, t in zip(arg_names, spec.inputs)}
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        torch.onnx.export(module, example, str(out), dynamo=True, opset_version=opset,
                          input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_shapes=dynamic, external_data=True, optimize=True)
    log.debug("dynamo exporter: %s", buf.getvalue())


def _export_torchscript(module, spec: ExportSpec, example, out: Path, opset: int) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(module, example, str(out), dynamo=False, opset_version=opset,
                          input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes(), do_constant_folding=True)


def _forward_arg_names(module, n: int) -> list[str]:
    import inspect

    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) < n:
        raise ExportError(f"{type(module).__name__}.forward takes {len(params)} inputs, the "
                          f"spec has {n}")
    return [p.name for p in params[:n]]


def check_onnx(path: str | Path, spec: ExportSpec | None = None) -> None:
    """``onnx.checker.check_model`` (by path: works past 2 GB), then the interface against
    ``spec``: names in order, static dims equal, the batch axis symbolic (not frozen)."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: ONNX checker failed: {exc}") from None
    if spec is None:
        return
    model = onnx.load(str(path), load_external_data=False)
    for what, got, want in (("inputs", model.graph.input, spec.inputs),
                            ("outputs", model.graph.output, spec.outputs)):
        names = [v.name for v in got]
        if names != [t.name for t in want]:
            raise ExportError(f"{path}: graph {what} {names}, spec says "
                              f"{[t.name for t in want]}")
        for v, t in zip(got, want):
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            if len(dims) != len(t.shape):
                raise ExportError(f"{path}: {t.name} has rank {len(dims)}, spec {t.shape}")
            for i, (d, s) in enumerate(zip(dims, t.shape)):
                if isinstance(s, str) and not isinstance(d, str):
                    raise ExportError(f"{path}: axis {i} of {t.name} is fixed at {d} in the "
                                      f"graph; the spec makes it dynamic ({s!r})")
                if not isinstance(s, str) and d != s:
                    raise ExportError(f"{path}: axis {i} of {t.name} is {d}, spec {s}")


def ort_session(path: str | Path, threads: int = 1, providers=("CPUExecutionProvider",),
                lean: bool = True):
    """A CPU session for checks; ``lean`` skips weight pre-packing (a second copy of every
    MatMul weight: speed we do not need here, memory the paper preset does not have)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if lean:
        so.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=list(providers))


def compare(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> dict:
    """Max abs / max rel error and the worst ratio to the allowed error (<= 1 passes)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return {"shape": list(got.shape), "want_shape": list(want.shape), "ok": False}
    err = np.abs(got - want)
    nz = np.abs(want) > 0
    rel = float((err[nz] / np.abs(want[nz])).max()) if nz.any() else 0.0
    ratio = float((err / (atol + rtol * np.abs(want))).max()) if err.size else 0.0
    finite = bool(np.isfinite(got).all())
    return {"max_abs": float(err.max()) if err.size else 0.0, "max_rel": rel,
            "worst_vs_tol": ratio, "ok": finite and ratio <= 1.0}


def parity(module, onnx_path: str | Path, spec: ExportSpec,
           input_sets: dict[str, dict[str, np.ndarray]], *, atol: float = ATOL,
           rtol: float = RTOL, session=None, raise_on_fail: bool = True) -> dict:
    """Run every input set through torch and onnxruntime; compare all outputs.

    Returns ``{"atol", "rtol", "max_abs", "max_rel", "ok", "sets": {name: {"batch",
    output: {max_abs, max_rel, worst_vs_tol, ok}}}}``; raises :class:`ParityError` when
    an output is out of tolerance (unless ``raise_on_fail`` is false).
    """
    import torch

    sess = session or ort_session(onnx_path)
    report: dict = {"atol": atol, "rtol": rtol, "sets": {}}
    for name, arrays in input_sets.items():
        with torch.inference_mode():
            ref = module(*_torch_inputs(spec, arrays))
        ref = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
        got = sess.run(spec.output_names, {n: arrays[n] for n in spec.input_names})
        batch = int(arrays[spec.input_names[0]].shape[0])
        report["sets"][name] = {"batch": batch, **{o: compare(g, r, atol, rtol) for o, g, r
                                                   in zip(spec.output_names, got, ref)}}
    outs = [v for s in report["sets"].values() for k, v in s.items() if k != "batch"]
    report["max_abs"] = max((o.get("max_abs", np.inf) for o in outs), default=0.0)
    report["max_rel"] = max((o.get("max_rel", np.inf) for o in outs), default=0.0)
    report["ok"] = all(o["ok"] for o in outs)
    if not report["ok"] and raise_on_fail:
        bad = [f"{s}/{k}: {v}" for s, d in report["sets"].items() for k, v in d.items()
               if k != "batch" and not v["ok"]]
        raise ParityError(f"{onnx_path}: ONNX vs torch out of tolerance (atol {atol}, rtol "
                          f"{rtol}): " + "; ".join(bad))
    return report


def parity_inputs(spec: ExportSpec, real_x: np.ndarray | None = None, seed: int = 0,
                  batches: tuple[int, ...] = (1, 3)) -> dict[str, dict[str, np.ndarray]]:
    """Random inputs at each of ``batches`` (1, and an odd size unlike the export example:
    proves the batch axis is dynamic), and ``real`` rows of ``real_x`` (with random noise)."""
    sets = {f"random_b{b}": spec.sample_inputs(b, seed + b) for b in batches
            if b <= spec.batch[2]}
    if real_x is not None and len(real_x):
        rows = np.ascontiguousarray(real_x[: min(len(real_x), spec.batch[2], 8)], np.float32)
        arrays = spec.sample_inputs(len(rows), seed + 100)
        arrays[spec.input_names[0]] = rows
        sets["real"] = arrays
    return sets
