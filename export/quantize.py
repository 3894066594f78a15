"""Optional int8: onnxruntime dynamic quantization, and its accuracy against fp32.

``quantize_dynamic`` stores MatMul/Gemm weights as int8 and quantizes activations on the fly
(per tensor, uint8) — no calibration data. What it costs in accuracy is measured on the
same inputs through the fp32 and int8 graphs (same sampling noise): the correlation and
MSE of the pooled semantics, the caption bank's top-1 agreement, and the 50-way caption
identification of both when the clips' targets are at hand.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np


def quantize_int8(src: str | Path, dst: str | Path) -> dict:
    """``src`` fp32 ONNX → ``dst`` int8 (weights and external data beside ``dst``)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    dst = Path(dst)
    check_memory_for_quantization(src)
    model = onnx.load(str(src))
    # The dynamo exporter records value_info for weights too; the quantizer transposes Gemm
    # weights and its shape inference then trips over the stale entries. They are optional.
    del model.graph.value_info[:]
    n_fixed = pretranspose_gemm_weights(model)
    # Hand the quantizer a file, not the proto: it copies a proto (twice the weights in
    # memory, which the paper preset cannot afford on 24 GB).
    staged = dst.with_name(dst.stem + ".staged.onnx")
    onnx.save_model(model, str(staged), save_as_external_data=True,
                    location=staged.name + ".data")
    del model
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's generic "consider pre-processing" advice
    try:
        quantize_dynamic(str(staged), str(dst), weight_type=QuantType.QInt8,
                         use_external_data_format=True)
    finally:
        root.setLevel(level)
        for p in (staged, staged.with_name(staged.name + ".data")):
            p.unlink(missing_ok=True)
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
            "gemm_weights_pretransposed": n_fixed, "onnxruntime": onnxruntime.__version__,
            "seconds": round(time.perf_counter() - t0, 2)}


#: Peak RSS of quantize_dynamic over the fp32 weights' size: it keeps the model, a deep
#: copy and a shape-inferred reload at once (measured 18.1 GB for the paper SAD's 3.5 GB).
QUANTIZE_MEMORY_FACTOR = 5.2


def check_memory_for_quantization(src: str | Path) -> None:
    """Refuse, naming the figures, rather than let the kernel's OOM killer pick a process."""
    src = Path(src)
    weights = sum(p.stat().st_size for p in (src, src.with_name(src.name + ".data"))
                  if p.is_file())
    need = QUANTIZE_MEMORY_FACTOR * weights
    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(line.split()[1]) * 1024 for line in fh
                         if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return  # not Linux: cannot tell
    if avail < need:
        raise MemoryError(f"int8 quantization of {src} ({weights / 2**30:.1f} GiB of weights) "
                          f"needs about {need / 2**30:.1f} GiB of memory; "
                          f"{avail / 2**30:.1f} GiB is available")


def pretranspose_gemm_weights(model) -> int:
    """Rewrite ``Gemm(transB=1)`` on a weight initializer to ``transB=0`` on the weight
    transposed in place; returns how many nodes changed.

    The quantizer turns Gemm into MatMul + Add and transposes ``B`` *per node*: a weight
    shared by several Gemm nodes (SAD's unrolled Refineformer steps reuse theirs) is then
    transposed once per use, and a square one ends up the wrong way round — the int8 graph
    silently computes something else (measured on the toy SAD: pooled correlation with fp32
    0.50, with a quantization that changed no node; 0.9998 after this rewrite).
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, list] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in inits:
                uses.setdefault(name, []).append((node, i))
    changed = 0
    for name, users in uses.items():
        def transposed_b(node, i):
            attrs = {a.name: a.i for a in node.attribute}
            return node.op_type == "Gemm" and i == 1 and attrs.get("transB", 0) == 1
        # only weights every user reads as a transposed Gemm B (so one transpose fits all)
        if not all(transposed_b(n, i) for n, i in users):
            continue
        init = inits[name]
        w = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w.T), name))
        del w
        for node, _ in users:
            for a in node.attribute:
                if a.name == "transB":
                    a.i = 0
            changed += 1
    return changed


def _rowcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def int8_accuracy(fp32_session, int8_session, spec, inputs: dict[str, np.ndarray], *,
                  bank: np.ndarray | None = None, clip_ids: np.ndarray | None = None,
                  targets=None, batch: int = 64) -> dict:
    """int8 vs fp32 on ``inputs`` (spec input name → array, all rows)."""
    n = len(inputs[spec.input_names[0]])
    outs = {"fp32": [], "int8": []}
    for i in range(0, n, batch):
        feed = {k: v[i: i + batch] for k, v in inputs.items()}
        outs["fp32"].append(fp32_session.run(["pooled"], feed)[0])
        outs["int8"].append(int8_session.run(["pooled"], feed)[0])
    f = np.concatenate(outs["fp32"]).astype(np.float64)
    q = np.concatenate(outs["int8"]).astype(np.float64)
    mse = float(((q - f) ** 2).mean())
    rep = {"n": int(n), "pooled_corr_mean": round(float(_rowcorr(f, q).mean()), 6),
           "pooled_corr_min": round(float(_rowcorr(f, q).min()), 6),
           "pooled_mse": mse, "pooled_rel_mse": round(mse / float(f.var() + 1e-12), 6),
           "pooled_max_abs": float(np.abs(q - f).max())}
    if bank is not None:
        from rtdecode.engine import CaptionBank

        cb = CaptionBank(bank, [{}] * len(bank))
        rep["caption_top1_agreement"] = round(float(
            (_nearest_index(cb, f) == _nearest_index(cb, q)).mean()), 4)
    if targets is not None and clip_ids is not None:
        from rtdecode.models.evaluate import identification

        for name, pred in (("fp32", f), ("int8", q)):
            r = identification(pred.astype(np.float32), clip_ids, targets)
            rep[f"caption_50way_{name}"] = r["caption_50way"]
            rep[f"caption_2way_{name}"] = r["caption_2way"]
    return rep


def _nearest_index(bank, pred: np.ndarray) -> np.ndarray:
    p = pred - pred.mean(axis=1, keepdims=True)
    p = p / (np.linalg.norm(p, axis=1, keepdims=True) + 1e-12)
    return (p @ bank._unit.T.astype(np.float64)).argmax(axis=1)
