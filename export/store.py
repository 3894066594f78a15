"""The engine store (``engines/``): keys, manifests, build-or-reuse, and verification.

One folder per built engine — ``{kind}-{subject}-{artifact}-{key[:12]}/`` holding the
artifact (``model.onnx`` + ``model.onnx.data``, ``model.int8.onnx`` (+ data), or
``model.plan``), the caption bank (``bank.safetensors``, ``captions.jsonl``) and
``manifest.json``. The **key** is the SHA-256 of a canonical JSON of everything that shapes
the engine (``manifest["key_inputs"]``): the weights' hash, the export spec (names, shapes,
batch min/opt/max, subject, steps), the artifact and dtype, the opset, the exporter's
versions (torch, onnx, onnxscript), the backend's versions (onnxruntime for int8; TensorRT,
GPU name and compute capability for a plan), the caption bank's sources, and the store
format. A changed checkpoint or shape therefore yields a new key and a new folder; an
engine is never reused for inputs it was not built from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rtdecode.backends import (
    BANK_TENSORS,
    ENGINE_FORMAT,
    MANIFEST_FILE,
    EngineRecord,
    file_sha256,
    list_engines,
    read_manifest,
)
from rtdecode.engine import BANK_FILE

from .onnx_export import (
    ATOL,
    DEFAULT_OPSET,
    RTOL,
    check_onnx,
    export_onnx,
    ort_session,
    parity,
    parity_inputs,
)
from .specs import BuildOptions, Built, ExportSpec, detect_kind

log = logging.getLogger("export.store")
# onnx_ir logs every deduplicated initializer at INFO; keep the CLI readable
logging.getLogger("onnx_ir").setLevel(logging.WARNING)
# ...and onnxscript warns for every constant Split it leaves unfolded (MAD's attention
# in-projections): the graph is correct, the split just runs at inference
logging.getLogger("onnxscript.optimizer._constant_folding").setLevel(logging.ERROR)

ONNX_FILE, INT8_FILE, PLAN_FILE = "model.onnx", "model.int8.onnx", "model.plan"
TIMING_CACHE = ".timing-cache"
#: Bump when this toolchain changes what it writes for the same inputs (part of every key).
TOOLCHAIN_REVISION = 1


def exporter_versions() -> dict:
    import onnx
    import torch

    v = {"torch": torch.__version__, "onnx": onnx.__version__,
         "preference": "dynamo, else torchscript"}
    try:
        import onnxscript

        v["onnxscript"] = onnxscript.__version__
    except ImportError:
        v["onnxscript"] = None
    return v


def engine_key(key_inputs: dict) -> str:
    blob = json.dumps(key_inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def key_inputs(spec: ExportSpec, weights_sha256: str, artifact: str, *, opset: int,
               bank: dict | None, backend: dict | None = None) -> dict:
    """Everything that shapes one engine (hashed into its key)."""
    dtype = {"onnx": "float32", "onnx-int8": "int8"}.get(artifact)
    if artifact == "tensorrt":
        dtype = (backend or {}).get("precision")
    return {"format": ENGINE_FORMAT, "toolchain": TOOLCHAIN_REVISION, "artifact": artifact,
            "dtype": dtype,
            "weights_sha256": weights_sha256, "spec": spec.to_dict(), "opset": opset,
            "exporter": exporter_versions(), "backend": backend or {},
            "bank": None if bank is None else {k: bank[k] for k in ("captions_sha256",
                                                                     "clip_sha256")}}


def folder_name(spec: ExportSpec, artifact: str, key: str) -> str:
    return f"{spec.kind}-{spec.subject}-{artifact}-{key[:12]}"


@dataclass(frozen=True)
class ExportRequest:
    """``rtdecode export``'s arguments."""

    checkpoint: Path
    store: Path = Path("engines")
    subject: str | None = None
    steps: int | None = None
    batch: tuple[int, int, int] = (1, 4, 32)
    opset: int = DEFAULT_OPSET
    int8: bool = False
    tensorrt: bool = False
    precision: str = "fp16"
    data: Path | None = None           # session: caption bank + real parity inputs
    clip: Path | None = None           # toy CLIP: the bank's target space
    config: Path | None = None         # preprocessing of the real inputs
    force: bool = False
    atol: float = ATOL
    rtol: float = RTOL


@dataclass
class Outcome:
    record: EngineRecord
    status: str                        # "built" or "reused"


class EngineStore:
    def __init__(self, root: str | Path = "engines"):
        self.root = Path(root)

    def list(self) -> list[EngineRecord]:
        return list_engines(self.root)

    def get(self, spec: ExportSpec, artifact: str, key: str) -> EngineRecord | None:
        """The engine with ``key`` if its folder is complete (files present, sizes equal)."""
        folder = self.root / folder_name(spec, artifact, key)
        if not (folder / MANIFEST_FILE).is_file():
            return None
        try:
            rec = read_manifest(folder)
        except ValueError:
            return None
        if rec.key != key:
            return None
        for name, meta in rec.manifest.get("files", {}).items():
            p = folder / name
            if not p.is_file() or p.stat().st_size != meta["bytes"]:
                log.warning("%s: %s missing or resized; rebuilding", folder, name)
                return None
        return rec

    def begin(self, spec: ExportSpec, artifact: str, key: str) -> Path:
        """A fresh temporary folder to build into (renamed into place by :meth:`commit`)."""
        tmp = self.root / f".tmp-{folder_name(spec, artifact, key)}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, manifest: dict) -> EngineRecord:
        manifest["files"] = {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
                             for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        final = self.root / tmp.name.removeprefix(".tmp-")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return read_manifest(final)


def _manifest(built: Built, artifact: str, file: str, kin: dict, key: str, **extra) -> dict:
    return {"format": ENGINE_FORMAT, "key": key, "kind": built.spec.kind,
            "artifact": artifact, "file": file, "spec": built.spec.to_dict(),
            "source": built.source, "key_inputs": kin,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


def export_checkpoint(req: ExportRequest, progress: bool = True) -> list[Outcome]:
    """Build (or reuse) the fp32 ONNX engine of ``req.checkpoint``, then the int8 and the
    TensorRT engines when asked. Each is checked before it enters the store."""
    entry = detect_kind(req.checkpoint)
    built = entry.build(Path(req.checkpoint), BuildOptions(req.subject, req.steps, req.batch))
    return export_built(built, req, progress=progress)


def export_built(built: Built, req: ExportRequest, progress: bool = True) -> list[Outcome]:
    """:func:`export_checkpoint` for an already loaded model (e.g. a random one to bench)."""
    from .bank import bank_source

    store = EngineStore(req.store)
    spec = built.spec
    _check_request(req, spec)
    wsha = built.source["weights_sha256"]
    bsrc = None
    if req.data is not None:
        if req.clip is None:
            clip = built.source.get("clip")
            if not clip:
                raise ValueError("--data needs --clip (the toy CLIP the caption bank is "
                                 "encoded with)")
            req = replace(req, clip=Path(clip))
        bsrc = bank_source(req.data, req.clip)
    stages = 1 + int(req.int8) + int(req.tensorrt)
    bar = tqdm(total=stages, desc=f"export {spec.kind} {spec.subject}", unit="engine",
               disable=not progress)
    outcomes: list[Outcome] = []
    cache: dict = {}

    # fp32 ONNX ---------------------------------------------------------------------------
    kin = key_inputs(spec, wsha, "onnx", opset=req.opset, bank=bsrc)
    key = engine_key(kin)
    rec = None if req.force else store.get(spec, "onnx", key)
    if rec is None and built.module is None:
        raise ValueError(f"no fp32 engine with key {key[:12]} in {store.root} and no module "
                         "to export it from")
    if rec is None:
        bar.set_postfix_str("onnx export + parity")
        tmp = store.begin(spec, "onnx", key)
        record = export_onnx(built.module, spec, tmp / ONNX_FILE, opset=req.opset)
        real = _real(req, spec, cache)
        sess = ort_session(tmp / ONNX_FILE)
        rep = parity(built.module, tmp / ONNX_FILE, spec,
                     parity_inputs(spec, None if real is None else real[0]),
                     atol=req.atol, rtol=req.rtol, session=sess)
        bank_meta = _bank(req, spec, bsrc, tmp, cache)
        rec = store.commit(tmp, _manifest(built, "onnx", ONNX_FILE, kin, key, export=record,
                                          checks={"onnx_checker": "passed", "parity": rep},
                                          bank=bank_meta, precision="fp32"))
        outcomes.append(Outcome(rec, "built"))
    else:
        outcomes.append(Outcome(rec, "reused"))
    fp32 = rec
    bar.update(1)

    # int8 ONNX ---------------------------------------------------------------------------
    if req.int8:
        import onnxruntime

        from .quantize import int8_accuracy, quantize_int8

        backend = {"onnxruntime": onnxruntime.__version__, "quantization": "dynamic QInt8",
                   "parent": fp32.key}
        kin = key_inputs(spec, wsha, "onnx-int8", opset=req.opset, bank=bsrc, backend=backend)
        key = engine_key(kin)
        rec = None if req.force else store.get(spec, "onnx-int8", key)
        if rec is None:
            bar.set_postfix_str("int8 quantization")
            tmp = store.begin(spec, "onnx-int8", key)
            qrec = quantize_int8(fp32.file, tmp / INT8_FILE)
            check_onnx(tmp / INT8_FILE, spec)
            acc = _int8_accuracy(req, spec, fp32, tmp / INT8_FILE, cache, int8_accuracy)
            _copy_bank(fp32.path, tmp)
            rec = store.commit(tmp, _manifest(built, "onnx-int8", INT8_FILE, kin, key,
                                              export=fp32.manifest.get("export"),
                                              quantization=qrec, accuracy=acc,
                                              checks={"onnx_checker": "passed"},
                                              bank=fp32.manifest.get("bank"), precision="int8",
                                              parent=fp32.key))
            outcomes.append(Outcome(rec, "built"))
        else:
            outcomes.append(Outcome(rec, "reused"))
        bar.update(1)

    # TensorRT plan -----------------------------------------------------------------------
    if req.tensorrt:
        from .tensorrt_build import build_plan, gpu_identity, tensorrt_status

        ok, reason = tensorrt_status()
        if not ok:
            bar.close()
            raise RuntimeError(f"--tensorrt: {reason}")
        backend = {**gpu_identity(), "precision": req.precision, "parent": fp32.key}
        kin = key_inputs(spec, wsha, "tensorrt", opset=req.opset, bank=bsrc, backend=backend)
        key = engine_key(kin)
        rec = None if req.force else store.get(spec, "tensorrt", key)
        if rec is None:
            bar.set_postfix_str("tensorrt build")
            tmp = store.begin(spec, "tensorrt", key)
            cache_file = store.root / TIMING_CACHE / (
                f"{backend['gpu'].replace(' ', '_')}-trt{backend['tensorrt']}.bin")
            trec = build_plan(fp32.file, spec, tmp / PLAN_FILE, fp16=req.precision == "fp16",
                              timing_cache=cache_file)
            _copy_bank(fp32.path, tmp)
            rec = store.commit(tmp, _manifest(built, "tensorrt", PLAN_FILE, kin, key,
                                              backend=trec, bank=fp32.manifest.get("bank"),
                                              precision=req.precision, parent=fp32.key))
            outcomes.append(Outcome(rec, "built"))
        else:
            outcomes.append(Outcome(rec, "reused"))
        bar.update(1)
    bar.close()
    return outcomes


def _check_request(req: ExportRequest, spec: ExportSpec) -> None:
    """The caption bank, the real parity windows and the int8 accuracy report are built on
    SAD's interface (voxels in, ``pooled`` semantics out): refuse them for another kind
    rather than ignore them."""
    if "pooled" in spec.output_names:
        return
    given = [flag for flag, v in (("--data", req.data), ("--clip", req.clip),
                                  ("--int8", req.int8)) if v]
    if given:
        raise ValueError(f"{', '.join(given)}: SAD-only (caption bank, real parity windows, "
                         f"int8 accuracy on the pooled semantics); a {spec.kind} export takes "
                         "none of them")


def _real(req: ExportRequest, spec: ExportSpec, cache: dict):
    """Real windows (X, clip_ids) from the session, once per export (None without data)."""
    if req.data is None:
        return None
    if "real" not in cache:
        from .bank import real_windows

        cache["real"] = real_windows(req.data, spec.subject, req.config)
    return cache["real"]


def _bank_data(req: ExportRequest, spec: ExportSpec, cache: dict):
    if "bank" not in cache:
        from .bank import build_bank

        o = spec.options
        cache["bank"] = build_bank(req.data, req.clip, o["n_tokens"], tuple(o["levels"]),
                                   o["token_dim"])
    return cache["bank"]


def _bank(req: ExportRequest, spec: ExportSpec, bsrc: dict | None, folder: Path,
          cache: dict) -> dict | None:
    if bsrc is None:
        return None
    from .bank import write_bank

    bd = _bank_data(req, spec, cache)
    write_bank(folder, bd.bank, bd.captions)
    return {**bsrc, "n": int(len(bd.bank)), "dim": int(bd.bank.shape[1]),
            "clips": "training clips (split == 'train')"}


def _copy_bank(src: Path, dst: Path) -> None:
    for name in (BANK_TENSORS, BANK_FILE):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _int8_accuracy(req, spec, fp32: EngineRecord, int8_path: Path, cache, measure) -> dict:
    """int8 vs fp32 on real windows when a session is given, else on random inputs."""
    real = _real(req, spec, cache)
    if real is not None:
        X, ids = real
        inputs = spec.sample_inputs(len(X), seed=7)
        inputs[spec.input_names[0]] = X
        bd = _bank_data(req, spec, cache)
        rep = measure(ort_session(fp32.file, threads=0), ort_session(int8_path, threads=0),
                      spec, inputs, bank=bd.bank, clip_ids=ids, targets=bd.targets)
        rep["inputs"] = "real test windows"
    else:
        inputs = spec.sample_inputs(16, seed=7)
        rep = measure(ort_session(fp32.file, threads=0), ort_session(int8_path, threads=0),
                      spec, inputs)
        rep["inputs"] = "random (no --data)"
    return rep


# ----------------------------------------------------------------------------- verify


def verify(rec: EngineRecord, *, rerun_parity: bool = True) -> dict:
    """Re-check one engine: manifest key, file hashes, ONNX checker, the checkpoint it came
    from (a changed checkpoint makes the engine *stale*), and parity against torch again.
    Returns ``{"status": "ok" | "stale" | "corrupt" | "failed", "checks": [...]}``."""
    checks: list[str] = []
    status = "ok"

    def bad(kind: str, msg: str) -> None:
        nonlocal status
        checks.append(f"{kind}: {msg}")
        order = ["ok", "stale", "failed", "corrupt"]
        if order.index(kind) > order.index(status):
            status = kind

    m = rec.manifest
    if engine_key(m.get("key_inputs", {})) != rec.key:
        bad("corrupt", "manifest key does not match its key_inputs")
    for name, meta in m.get("files", {}).items():
        p = rec.path / name
        if not p.is_file():
            bad("corrupt", f"{name} missing")
        elif file_sha256(p) != meta["sha256"]:
            bad("corrupt", f"{name} sha256 differs from the manifest")
    if status == "ok":
        checks.append("files: sha256 match the manifest")
    spec = _spec_from_dict(rec.spec)
    if rec.artifact in ("onnx", "onnx-int8") and status == "ok":
        try:
            check_onnx(rec.file, spec)
            checks.append("onnx checker: passed; batch axis dynamic")
        except Exception as exc:  # report, do not crash the listing
            bad("corrupt", f"onnx checker: {exc}")
    src = m["source"]
    ckpt = Path(src.get("checkpoint_resolved") or src.get("checkpoint", ""))
    weights = ckpt / src.get("weights_file", "sad.safetensors")
    if not src.get("checkpoint") or not weights.is_file():
        checks.append("checkpoint not on disk: cannot check staleness or re-run parity")
    elif file_sha256(weights) != src["weights_sha256"]:
        bad("stale", f"{weights} changed since export (a re-export gets a new key)")
    else:
        checks.append("checkpoint: weights unchanged")
        if rerun_parity and rec.artifact == "onnx" and status == "ok":
            try:
                entry = detect_kind(ckpt)
                b = spec.batch
                built = entry.build(ckpt, BuildOptions(spec.subject, spec.options.get("steps"),
                                                       b))
                rep = parity(built.module, rec.file, spec, parity_inputs(spec, seed=11),
                             atol=m["checks"]["parity"]["atol"],
                             rtol=m["checks"]["parity"]["rtol"], raise_on_fail=False)
                if rep["ok"]:
                    checks.append(f"parity vs torch: ok (max abs {rep['max_abs']:.2e}, max rel "
                                  f"{rep['max_rel']:.2e})")
                else:
                    bad("failed", f"parity vs torch out of tolerance: max abs "
                                  f"{rep['max_abs']:.2e}")
            except Exception as exc:
                bad("failed", f"parity re-run: {type(exc).__name__}: {exc}")
    if rec.artifact == "onnx-int8" and status == "ok":
        sess = ort_session(rec.file)
        out = sess.run(["pooled"], spec.sample_inputs(2, seed=3))[0]
        if np.isfinite(out).all():
            checks.append("int8 graph runs (batch 2), outputs finite")
        else:
            bad("failed", "int8 graph gives non-finite outputs")
    if rec.artifact == "tensorrt":
        from .tensorrt_build import tensorrt_status

        ok, reason = tensorrt_status()
        checks.append("tensorrt: plan present" + ("" if ok else f"; not loadable here ({reason})"))
    return {"key": rec.key, "path": str(rec.path), "status": status, "checks": checks}


def _spec_from_dict(d: dict) -> ExportSpec:
    from .specs import TensorSpec

    def t(x):
        return TensorSpec(x["name"], tuple(x["shape"]), x.get("dtype", "float32"))

    b = d["batch"]
    return ExportSpec(d["kind"], d["subject"], tuple(t(x) for x in d["inputs"]),
                      tuple(t(x) for x in d["outputs"]), (b["min"], b["opt"], b["max"]),
                      dict(d.get("options", {})))
