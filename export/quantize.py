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
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    model = onnx.load(str(src))
    # The dynamo exporter records value_info for weights too; the quantizer transposes Gemm
    # weights and its shape inference then trips over the stale entries. They are optional.
    del model.graph.value_info[:]
    n_fixed = pretranspose_gemm_weights(model)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's generic "consider pre-processing" advice
    try:
        quantize_dynamic(model, str(dst), weight_type=QuantType.QInt8,
                         use_external_data_format=True)
    finally:
        root.setLevel(level)
    del model
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
            "gemm_weights_pretransposed": n_fixed,
            "onnxruntime": onnxruntime.__version__,
            "seconds": round(time.perf_counter() - t0, 2)}


def pretranspose_gemm_weights(model) -> int:
    """Rewrite ``Gemm(transB=1)`` on a weight initializer to use a transposed copy with
    ``transB=0``; returns how many nodes changed.

    The quantizer turns Gemm into MatMul + Add and transposes ``B`` in place *per node*:
    a weight shared by several Gemm nodes (SAD's unrolled Refineformer steps reuse theirs)
    is then transposed once per use, and a square one ends up the wrong way round — the
    int8 graph silently computes something else (measured: pooled correlation 0.5 with a
    quantization that changed nothing). One transposed copy per weight avoids it.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    transposed: dict[str, str] = {}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "transB" not in attrs or attrs["transB"].i != 1:
            continue
        name = node.input[1]
        if name not in transposed:
            w = numpy_helper.to_array(inits[name])
            new = numpy_helper.from_array(np.ascontiguousarray(w.T), f"{name}__T")
            model.graph.initializer.append(new)
            transposed[name] = new.name
        node.input[1] = transposed[name]
        attrs["transB"].i = 0
        changed += 1
    # drop weights no node reads any more
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
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
