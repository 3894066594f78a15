"""``rtdecode bench decode``: per-TR decode latency, torch eager vs onnxruntime fp32 / int8.

For each preset it builds SAD (toy: the given checkpoint, else a random toy SAD; paper: a
randomly initialised paper-size SAD — hidden 4096, 3 x 77 x 768 targets — as weights do
not change latency), exports it through the real toolchain into a temporary store (so the
parity check and the int8 quantization run as in ``rtdecode export``), and times
``engine.decode(x)`` of each backend on the same input: one TR's batch (the daemon decodes
the ``width_trs`` windows a volume belongs to in one call; 2 by default), the sampling
noise drawn inside, the same threads for every backend. Latency is wall time per call,
after warm-up; p50 / p99 over the timed calls.
"""

from __future__ import annotations

import dataclasses
import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: voxel count of the benchmarked subject: CC2017 subject 1 after NeuroClips' masking (the
#: study simulation's sub-01); the paper-like ~60k cortical vertices did not fit the time.
BENCH_VOXELS = 13447
TARGETS = {"onnxruntime_vs_torch": 0.8, "toy_p99_ms": 10.0, "paper_p99_ms": 80.0}


def _pct(a, q) -> float:
    return round(float(np.percentile(np.asarray(a) * 1e3, q)), 3)


def time_engine(engine, x: np.ndarray, iters: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        engine.decode(x)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        engine.decode(x)
        ts.append(time.perf_counter() - t0)
    return {"p50_ms": _pct(ts, 50), "p99_ms": _pct(ts, 99),
            "mean_ms": round(float(np.mean(ts) * 1e3), 3), "n": iters}


def _release_memory() -> float:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them
    otherwise); returns the process RSS in MB."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    from rtdecode.bench import rss_mb

    return round(rss_mb(), 1)


def _model(preset: str, checkpoint: Path | None, voxels: int, seed: int):
    import torch

    from rtdecode.models.sad import SAD, sad_preset
    from rtdecode.models.train import load_checkpoint

    if preset == "toy" and checkpoint is not None:
        model, _ = load_checkpoint(checkpoint)
        subject = next(iter(model.cfg.subjects))
        return model, subject, f"trained checkpoint {checkpoint}"
    torch.manual_seed(seed)
    model = SAD(sad_preset(preset, {"bench": voxels})).eval()
    return model, "bench", f"random init (seed {seed})"


def bench_decode(presets: tuple[str, ...] = ("toy", "paper"), *,
                 checkpoint: Path | None = None, iters: dict[str, int] | None = None,
                 batch: int = 2, threads: int = 1, voxels: int = BENCH_VOXELS, seed: int = 0,
                 steps: int | None = None, say: Callable[[str], None] = print) -> dict:
    """``steps``: Refineformer sampling steps baked into every graph (None: each model's
    ``sample_steps``)."""
    import torch

    from rtdecode.backends import OnnxRuntimeEngine, TorchEngine
    from rtdecode.models.sad import in_features

    from .specs import Built, sad_graph
    from .store import ExportRequest, export_built

    iters = {"toy": 200, "paper": 20, **(iters or {})}
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    result: dict = {}
    for preset in presets:
        model, subject, origin = _model(preset, checkpoint, voxels, seed)
        n_vox = in_features(model.proj[subject])  # a Linear, or low-rank: two of them
        graph, spec = sad_graph(model, subject,
                                model.cfg.sample_steps if steps is None else steps,
                                (1, batch, 32))
        n_params = int(sum(p.numel() for p in model.parameters()))
        say(f"[{preset}] SAD {origin}: {n_params / 1e6:.1f} M parameters, {n_vox} voxels, "
            f"{graph.steps} Refineformer steps; exporting ...")
        x = rng.standard_normal((batch, n_vox)).astype(np.float32)
        source = {"weights_sha256": f"bench-{preset}-{origin}-torch{torch.__version__}",
                  "checkpoint": None, "trained_on": {}}
        with tempfile.TemporaryDirectory(prefix="rtdecode-bench-") as tmp:
            req = ExportRequest(Path("."), store=Path(tmp))
            t0 = time.perf_counter()
            fp32 = export_built(Built(graph, spec, source), req, progress=False)[0].record
            export_s = round(time.perf_counter() - t0, 1)
            parity = fp32.manifest["checks"]["parity"]
            say(f"[{preset}] exported in {export_s} s; parity max abs "
                f"{parity['max_abs']:.2e}, max rel {parity['max_rel']:.2e}; timing torch ...")
            r = {"batch": batch, "threads": threads, "voxels": n_vox, "steps": graph.steps,
                 "parameters": n_params, "weights": origin, "export_s": export_s,
                 "parity_max_abs": parity["max_abs"], "parity_max_rel": parity["max_rel"]}
            r["torch"] = time_engine(TorchEngine(graph, seed=seed), x, iters[preset])
            say(f"[{preset}] torch p50 {r['torch']['p50_ms']} ms; int8 quantization ...")
            # torch's copy of the weights goes before quantizing (its peak is ~5x them).
            # Emptied in place: torch.export keeps the traced graph, and through it these
            # parameters, alive after the export (torch 2.14), so `del` alone frees nothing.
            with torch.no_grad():
                for t in list(model.parameters()) + list(model.buffers()):
                    t.data = torch.empty(0)
            del graph, model
            r["rss_mb_before_int8"] = _release_memory()
            t0 = time.perf_counter()
            try:
                out = export_built(Built(None, spec, source),
                                   dataclasses.replace(req, int8=True), progress=False)
                int8 = out[1].record
            except MemoryError as exc:
                int8 = None
                r["int8_skipped"] = str(exc)
                say(f"[{preset}] int8 skipped: {exc}")
            r["int8_build_s"] = round(time.perf_counter() - t0, 1)
            say(f"[{preset}] timing onnxruntime ...")
            eng = OnnxRuntimeEngine(fp32.file, threads=threads, seed=seed)
            r["onnxruntime"] = time_engine(eng, x, iters[preset])
            del eng
            _release_memory()
            if int8 is not None:
                eng = OnnxRuntimeEngine(int8.file, threads=threads, seed=seed)
                r["onnxruntime_int8"] = time_engine(eng, x, iters[preset])
                del eng
                gc.collect()
                acc = int8.manifest["accuracy"]
                r["int8_accuracy"] = {k: acc[k] for k in (
                    "pooled_corr_mean", "pooled_corr_min", "pooled_rel_mse", "inputs", "n")}
        t = r["torch"]
        for k in ("onnxruntime", "onnxruntime_int8"):
            if k in r:
                r[f"{k}_vs_torch"] = {q: round(r[k][q] / t[q], 3) for q in ("p50_ms", "p99_ms")}
        say(f"[{preset}] onnxruntime p50 {r['onnxruntime']['p50_ms']} ms, int8 "
            f"{r.get('onnxruntime_int8', {}).get('p50_ms', 'skipped')} ms")
        result[preset] = r
    result["targets"] = TARGETS
    result["met"] = {
        f"{p}_onnxruntime_le_0.8x_torch": result[p]["onnxruntime_vs_torch"]["p99_ms"]
        <= TARGETS["onnxruntime_vs_torch"] for p in presets}
    for p in presets:
        if f"{p}_p99_ms" in TARGETS:
            best = min(result[p][k]["p99_ms"] for k in ("onnxruntime", "onnxruntime_int8")
                       if k in result[p])
            result["met"][f"{p}_p99_le_{TARGETS[f'{p}_p99_ms']:g}ms"] = best <= TARGETS[
                f"{p}_p99_ms"]
    return result


def format_table(result: dict) -> str:
    lines = [f"{'preset':7} {'backend':18} {'p50 ms':>9} {'p99 ms':>9} {'x torch p50':>11} "
             f"{'x torch p99':>11}"]
    for p, r in result.items():
        if p in ("targets", "met"):
            continue
        for k in ("torch", "onnxruntime", "onnxruntime_int8"):
            if k not in r:
                lines.append(f"{p:7} {k:18} skipped: {r.get('int8_skipped', '')}")
                continue
            ratio = r.get(f"{k}_vs_torch", {"p50_ms": 1.0, "p99_ms": 1.0})
            lines.append(f"{p:7} {k:18} {r[k]['p50_ms']:9.2f} {r[k]['p99_ms']:9.2f} "
                         f"{ratio['p50_ms']:11.2f} {ratio['p99_ms']:11.2f}")
        a = r.get("int8_accuracy")
        if a is None:
            continue
        lines.append(f"{p:7} batch {r['batch']}, {r['threads']} threads, {r['voxels']} voxels, "
                     f"{r['steps']} steps; int8 vs fp32: pooled corr {a['pooled_corr_mean']:.4f}"
                     f" (min {a['pooled_corr_min']:.4f}), rel MSE {a['pooled_rel_mse']:.2e} "
                     f"({a['inputs']}); parity max abs {r['parity_max_abs']:.1e}")
    lines.append("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                                         for k, v in result["met"].items()))
    return "\n".join(lines)
