"""Runtime backends for neural decoders (SAD) behind the :class:`~rtdecode.engine.Engine`
interface, and the engine-store lookup the daemon uses.

Three backends, chosen by ``[engine] backend`` in the config:

- ``torch`` — eager PyTorch on the checkpoint (:class:`TorchEngine`);
- ``onnxruntime`` — an exported ONNX graph, fp32 or int8 (:class:`OnnxRuntimeEngine`); CPU
  by default, or the CUDA / TensorRT execution providers when ``[engine] providers`` asks
  for them and this onnxruntime has them;
- ``tensorrt`` — a native TensorRT plan (:class:`TensorRTEngine`), written against
  TensorRT's documented Python API; untested here (no GPU, no TensorRT).

An unavailable backend raises :class:`BackendUnavailable` naming what is missing. Only an
explicit ``[engine] fallback`` list makes :func:`load_neural_decoder` try another backend,
and every switch is logged as a warning.

Every engine's ``decode(x)`` takes ``(batch, n_voxels)`` float32 and returns the **pooled**
semantics ``(batch, levels * dim)`` (mean over tokens, levels concatenated), what the
:class:`~rtdecode.engine.CaptionBank` compares; ``decode_tokens(x)`` also returns the full
``(batch, levels, tokens, dim)``. The Refineformer's sampling noise is drawn here, from a
seeded numpy generator, and fed to the graph (the exported graph takes it as an input).

This module imports neither torch nor onnxruntime at import time, and never imports the
build-time ``export`` package: it only *reads* the engine store's JSON manifests. The
onnxruntime path therefore runs without torch (the lean scanner-side install).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engine import BANK_FILE, CaptionBank, DecoderModel

log = logging.getLogger("rtdecode.backends")

MANIFEST_FILE = "manifest.json"
BANK_TENSORS = "bank.safetensors"
ENGINE_FORMAT = "rtdecode-engine/1"
SAD_WEIGHTS, SAD_CONFIG = "sad.safetensors", "config.json"
#: artifact kinds in the store: fp32 ONNX, int8 ONNX, a TensorRT plan
ARTIFACTS = ("onnx", "onnx-int8", "tensorrt")


class BackendUnavailable(RuntimeError):
    """The configured backend cannot run here; the message names what is missing."""


class EngineNotFound(FileNotFoundError):
    """No built engine in the store matches the checkpoint and settings (never a stale one)."""


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class EngineRecord:
    """One built engine in the store: its folder and manifest."""

    path: Path
    manifest: dict

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def artifact(self) -> str:
        return self.manifest["artifact"]

    @property
    def spec(self) -> dict:
        return self.manifest["spec"]

    @property
    def file(self) -> Path:
        return self.path / self.manifest["file"]

    @property
    def has_bank(self) -> bool:
        return bool(self.manifest.get("bank")) and (self.path / BANK_TENSORS).is_file()


def read_manifest(folder: str | Path) -> EngineRecord:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise EngineNotFound(f"{folder}: no {MANIFEST_FILE} (not an engine folder)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != ENGINE_FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected "
                         f"{ENGINE_FORMAT!r}")
    return EngineRecord(folder, manifest)


def list_engines(store: str | Path) -> list[EngineRecord]:
    """Every readable engine folder in ``store``, newest first (unreadable ones logged)."""
    store = Path(store)
    if not store.is_dir():
        return []
    out = []
    for d in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            out.append(read_manifest(d))
        except (EngineNotFound, ValueError) as exc:
            log.warning("skipping %s: %s", d, exc)
    return sorted(out, key=lambda r: r.manifest.get("created", ""), reverse=True)


def find_engine(store: str | Path, *, weights_sha256: str, subject: str, steps: int,
                artifact: str, precision: str | None = None, need_bank: bool = True
                ) -> EngineRecord:
    """The newest engine built from exactly these weights for ``subject`` and ``steps``.

    Matching on the weights' hash means a changed checkpoint finds nothing (an error telling
    how to export) rather than a stale engine.
    """
    if artifact not in ARTIFACTS:
        raise ValueError(f"artifact {artifact!r}: one of {ARTIFACTS}")
    found = [r for r in list_engines(store)
             if r.artifact == artifact
             and r.manifest["source"].get("weights_sha256") == weights_sha256
             and r.spec.get("subject") == subject
             and r.spec.get("options", {}).get("steps") == steps
             and (precision is None or r.manifest.get("precision") == precision)
             and (r.has_bank or not need_bank)]
    if not found:
        what = f"{artifact}{f' ({precision})' if precision else ''}"
        flags = {"onnx-int8": " --int8", "tensorrt": " --tensorrt"}.get(artifact, "")
        raise EngineNotFound(
            f"no {what} engine in {store} for these weights (sha256 {weights_sha256[:12]}…), "
            f"subject {subject!r}, {steps} steps{' with a caption bank' if need_bank else ''}; "
            f"build it: rtdecode export --model CHECKPOINT --subject {subject} --steps {steps}"
            f" --data SESSION --clip CLIP{flags}")
    return found[0]


def load_bank(record: EngineRecord) -> CaptionBank:
    from safetensors.numpy import load_file

    if not record.has_bank:
        raise EngineNotFound(f"{record.path}: engine has no caption bank; export it with "
                             "--data SESSION --clip CLIP")
    targets = load_file(str(record.path / BANK_TENSORS))["targets"]
    caps = [json.loads(line) for line in (record.path / BANK_FILE).read_text().splitlines()
            if line.strip()]
    return CaptionBank(targets, caps, center=True)


# ----------------------------------------------------------------------------- engines


class _NoisySampler:
    """Shared by the engines: seeded sampling noise, batching, pooled output."""

    name = "neural"
    noise_shape: tuple[int, ...] | None = None   # per row; None: the graph takes no noise
    max_batch: int = 1 << 30

    def _init_noise(self, noise_shape, seed: int) -> None:
        self.noise_shape = None if noise_shape is None else tuple(int(d) for d in noise_shape)
        self._rng = np.random.default_rng(seed)

    def _check(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"{self.name} engine expects (batch, {self.n_inputs}) inputs, "
                             f"got {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _noise(self, batch: int) -> np.ndarray | None:
        if self.noise_shape is None:
            return None
        return self._rng.standard_normal((batch, *self.noise_shape), dtype=np.float32)

    def decode_tokens(self, x: np.ndarray, noise: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens (B, levels, tokens, dim), pooled (B, levels * dim))``; ``noise`` as
        given, else drawn from the engine's seeded generator."""
        x = self._check(x)
        if noise is None:
            noise = self._noise(len(x))
        toks, pools = [], []
        for i in range(0, len(x), self.max_batch):  # a long gap can queue many windows
            n = None if noise is None else noise[i: i + self.max_batch]
            t, p = self._run(x[i: i + self.max_batch], n)
            toks.append(t)
            pools.append(p)
        return (toks[0], pools[0]) if len(toks) == 1 else (np.concatenate(toks),
                                                           np.concatenate(pools))

    def decode(self, x: np.ndarray) -> np.ndarray:
        return self.decode_tokens(x)[1]

    def _run(self, x, noise):  # pragma: no cover - abstract
        raise NotImplementedError


class OnnxRuntimeEngine(_NoisySampler):
    """An exported graph run by onnxruntime (``x`` [+ ``noise``] → ``tokens``, ``pooled``).

    ``providers``: execution providers in priority order; empty = CPU. One this onnxruntime
    does not have is a :class:`BackendUnavailable` naming it (onnxruntime-gpu provides CUDA
    and TensorRT; it replaces the ``onnxruntime`` package).
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, providers: tuple[str, ...] = (), threads: int = 0,
                 seed: int = 0, provider_options: dict[str, dict] | None = None,
                 spin: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime: the onnxruntime package is not "
                                     f"installed ({exc})") from None
        have = ort.get_available_providers()
        wanted = list(providers) or ["CPUExecutionProvider"]
        missing = [p for p in wanted if p not in have]
        if missing:
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__}: execution provider(s) {missing} not available "
                f"(have {have}); CUDA/TensorRT need the onnxruntime-gpu package and a GPU")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # Spinning worker threads win on an idle machine but lose badly when other threads
        # (the daemon's own, or other jobs) share the cores: measured 2 threads, 2 busy
        # cores, toy SAD batch 2: p50 30 ms spinning vs 14 ms not.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        so.log_severity_level = 3
        opts = [dict((provider_options or {}).get(p, {})) for p in wanted]
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), so, providers=wanted,
                                            provider_options=opts)
        self.providers = self.session.get_providers()
        ins = {i.name: i for i in self.session.get_inputs()}
        if "x" not in ins:
            raise ValueError(f"{path}: graph has no input 'x' (inputs {list(ins)})")
        self.n_inputs = int(ins["x"].shape[1])
        noise = ins.get("noise")
        self._init_noise(None if noise is None else noise.shape[1:], seed)

    def _run(self, x, noise):
        feed = {"x": x} if noise is None else {"x": x, "noise": noise}
        tokens, pooled = self.session.run(["tokens", "pooled"], feed)
        return tokens, pooled


class TorchEngine(_NoisySampler):
    """Eager PyTorch running the same graph as the export
    (:class:`rtdecode.models.sad.SADGraph`) with the same noise generator."""

    name = "torch"

    def __init__(self, graph, *, seed: int = 0):
        import torch

        self._torch = torch
        self.graph = graph.eval()
        model = graph.model
        from .models.sad import in_features

        # in_features: the projection is a Linear, or low-rank (a Sequential of two)
        self.n_inputs = in_features(model.proj[graph.subject])
        c = model.cfg
        self._init_noise((len(c.levels), c.n_tokens, c.token_dim) if graph.uses_noise
                         else None, seed)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, subject: str, steps: int, *,
                        threads: int = 0, seed: int = 0) -> TorchEngine:
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable(f"torch: PyTorch is not installed ({exc})") from None
        from .models.sad import SADGraph
        from .models.train import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        model, _ = load_checkpoint(checkpoint)
        return cls(SADGraph(model, subject, steps), seed=seed)

    def _run(self, x, noise):
        torch = self._torch
        with torch.inference_mode():
            args = (torch.from_numpy(x),) if noise is None else (torch.from_numpy(x),
                                                                 torch.from_numpy(noise))
            tokens, pooled = self.graph(*args)
        return tokens.numpy(), pooled.numpy()


class TensorRTEngine(_NoisySampler):
    """A serialized TensorRT plan (``trt.Runtime.deserialize_cuda_engine``), run with
    ``execute_async_v3`` on CUDA buffers (torch CUDA tensors hold them). Thin by design;
    not tested here (no GPU, TensorRT not installable)."""

    name = "tensorrt"

    def __init__(self, plan: str | Path, manifest: dict, *, seed: int = 0):
        tensorrt_ready()
        import tensorrt as trt
        import torch

        built = manifest.get("backend", {})
        gpu = torch.cuda.get_device_name(0)
        if built.get("tensorrt") != trt.__version__ or built.get("gpu") != gpu:
            raise EngineNotFound(f"{plan}: built for TensorRT {built.get('tensorrt')} on "
                                 f"{built.get('gpu')!r}, this is TensorRT {trt.__version__} on "
                                 f"{gpu!r}; rebuild it with rtdecode export --tensorrt")
        self._torch, self._trt = torch, trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self._engine is None:
            raise RuntimeError(f"{plan}: TensorRT could not deserialize the plan")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        spec = manifest["spec"]
        ins = {t["name"]: t for t in spec["inputs"]}
        self.n_inputs = int(ins["x"]["shape"][1])
        self.max_batch = int(spec["batch"]["max"])
        self._init_noise(ins["noise"]["shape"][1:] if "noise" in ins else None, seed)
        self._outputs = [t["name"] for t in spec["outputs"]]

    def _run(self, x, noise):
        torch, ctx = self._torch, self._context
        feeds = {"x": x} if noise is None else {"x": x, "noise": noise}
        keep = []
        for name, arr in feeds.items():
            t = torch.from_numpy(arr).cuda(non_blocking=True)
            keep.append(t)
            ctx.set_input_shape(name, tuple(arr.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self._outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            ctx.set_tensor_address(name, outs[name].data_ptr())
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self._stream.synchronize()
        return outs["tokens"].cpu().numpy(), outs["pooled"].cpu().numpy()


def tensorrt_ready() -> None:
    """Raise :class:`BackendUnavailable` naming what the native TensorRT backend lacks."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(f"tensorrt: the tensorrt package is not installed ({exc}); "
                                 "it needs an NVIDIA GPU and CUDA") from None
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable(f"tensorrt: torch (for CUDA buffers) is missing ({exc})"
                                 ) from None
    if not torch.cuda.is_available():
        raise BackendUnavailable("tensorrt: no CUDA GPU visible (torch.cuda.is_available() "
                                 "is False)")


def ort_tensorrt_options(record: EngineRecord, fp16: bool = True) -> dict[str, dict]:
    """onnxruntime TensorRT-provider options from the spec: the optimization profile and
    an engine / timing cache inside the engine folder (the second TensorRT route)."""
    spec = record.spec
    lo, opt, hi = spec["batch"]["min"], spec["batch"]["opt"], spec["batch"]["max"]

    def shapes(b):
        return ",".join(f"{t['name']}:" + "x".join(str(b if d == "batch" else d)
                                                   for d in t["shape"]) for t in spec["inputs"])
    cache = str(record.path / "ort-trt-cache")
    return {"TensorrtExecutionProvider": {
        "trt_fp16_enable": fp16, "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache, "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache, "trt_profile_min_shapes": shapes(lo),
        "trt_profile_opt_shapes": shapes(opt), "trt_profile_max_shapes": shapes(hi)}}


# ----------------------------------------------------------------------------- loading


def read_sad_checkpoint(path: str | Path) -> dict:
    """A SAD checkpoint's ``config.json`` (JSON only: no torch needed)."""
    path = Path(path)
    for name in (SAD_WEIGHTS, SAD_CONFIG):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name}: missing (is {path} a SAD checkpoint?)")
    return json.loads((path / SAD_CONFIG).read_text())


def is_neural_model_dir(path: str | Path) -> bool:
    """A SAD checkpoint or an engine folder (rather than a ridge model directory)."""
    p = Path(path)
    return (p / SAD_WEIGHTS).is_file() or (p / MANIFEST_FILE).is_file()


def _resolve(model_dir: Path, engine_cfg, subject: str | None) -> dict:
    """What to look for: checkpoint, weights hash, subject, steps (or a given engine)."""
    if (model_dir / MANIFEST_FILE).is_file():  # an engine folder: everything is in it
        rec = read_manifest(model_dir)
        if rec.manifest.get("kind", "sad") != "sad":  # MAD, the VAE decoder: not decoders
            raise ValueError(f"{model_dir}: a {rec.manifest['kind']} engine; serving decodes "
                             "with a SAD checkpoint or engine")
        src = rec.manifest["source"]
        if subject and subject != rec.spec["subject"]:
            raise ValueError(f"{model_dir}: engine is for subject {rec.spec['subject']!r}, "
                             f"not {subject!r}")
        where = src.get("checkpoint_resolved") or src.get("checkpoint")
        ckpt = Path(where) if where else None
        return {"engine": rec,
                "checkpoint": ckpt if ckpt and (ckpt / SAD_WEIGHTS).is_file() else None,
                "weights_sha256": src["weights_sha256"], "subject": rec.spec["subject"],
                "steps": rec.spec["options"]["steps"], "trained_on": src.get("trained_on", {})}
    meta = read_sad_checkpoint(model_dir)
    sad = meta["sad"]
    subjects = list(sad["subjects"])
    if subject is None:
        if len(subjects) != 1:
            raise ValueError(f"{model_dir}: SAD knows subjects {subjects}; choose one")
        subject = subjects[0]
    if subject not in subjects:
        raise ValueError(f"{model_dir}: subject {subject!r} unknown to this SAD (has "
                         f"{subjects})")
    steps = engine_cfg.steps if engine_cfg.steps >= 0 else int(sad["sample_steps"])
    if not sad.get("use_refiner", True):
        steps = 0
    return {"engine": None, "checkpoint": model_dir,
            "weights_sha256": file_sha256(model_dir / SAD_WEIGHTS), "subject": subject,
            "steps": steps, "trained_on": meta.get("trained_on", {}).get(subject, {}),
            "pooled_dim": len(sad["levels"]) * int(sad["token_dim"])}


def _open_backend(backend: str, want: dict, engine_cfg, have_bank: bool = False
                  ) -> tuple[object, EngineRecord | None]:
    """One backend's engine and the store record whose caption bank goes with it (None: the
    torch backend given a bank by the caller needs nothing from the store)."""
    store = Path(engine_cfg.store)
    given: EngineRecord | None = want["engine"]
    look = {"weights_sha256": want["weights_sha256"], "subject": want["subject"],
            "steps": want["steps"]}
    if backend == "onnxruntime":
        artifact = "onnx-int8" if engine_cfg.int8 else "onnx"
        if given is not None and given.artifact in ("onnx", "onnx-int8"):
            rec = given  # the engine folder named on the command line is the choice
            if given.artifact != artifact:
                log.warning("%s is an %s engine; [engine] int8 = %s is ignored", given.path,
                            given.artifact, engine_cfg.int8)
        else:
            rec = find_engine(store, artifact=artifact, **look)
        opts = ort_tensorrt_options(rec, engine_cfg.precision == "fp16") \
            if "TensorrtExecutionProvider" in engine_cfg.providers else None
        eng = OnnxRuntimeEngine(rec.file, providers=tuple(engine_cfg.providers),
                                threads=engine_cfg.threads, seed=engine_cfg.seed,
                                provider_options=opts)
        return eng, rec
    if backend == "torch":
        if want["checkpoint"] is None:
            raise BackendUnavailable(f"torch: the checkpoint this engine was exported from is "
                                     f"not on disk ({given.manifest['source'].get('checkpoint')})")
        if have_bank:
            rec = given
        else:
            rec = given if given is not None and given.has_bank else \
                find_engine(store, artifact="onnx", **look)  # for its caption bank
        eng = TorchEngine.from_checkpoint(want["checkpoint"], want["subject"], want["steps"],
                                          threads=engine_cfg.threads, seed=engine_cfg.seed)
        return eng, rec
    if backend == "tensorrt":
        tensorrt_ready()  # name what is missing before looking for a plan
        rec = given if given is not None and given.artifact == "tensorrt" else \
            find_engine(store, artifact="tensorrt", precision=engine_cfg.precision, **look)
        return TensorRTEngine(rec.file, rec.manifest, seed=engine_cfg.seed), rec
    raise ValueError(f"backend {backend!r}: one of torch, onnxruntime, tensorrt")


def load_neural_decoder(model_dir: str | Path, engine_cfg, subject: str | None = None,
                        bank: CaptionBank | None = None) -> DecoderModel:
    """A :class:`DecoderModel` for ``rtdecode serve`` from a SAD checkpoint directory or an
    engine folder, run by ``engine_cfg.backend`` (then ``engine_cfg.fallback``, each switch
    logged). Its caption bank comes from the engine store (stored at export time), so the
    onnxruntime path needs neither torch nor the CLIP — or is ``bank``, built by the caller
    (e.g. :func:`rtdecode.models.evaluate.caption_bank`): then the ``torch`` backend needs no
    engine store at all (``rtdecode demo`` on a fresh clone)."""
    model_dir = Path(model_dir)
    want = _resolve(model_dir, engine_cfg, subject)
    chain = [engine_cfg.backend, *[b for b in engine_cfg.fallback if b != engine_cfg.backend]]
    errors = []
    t0 = time.perf_counter()
    for i, backend in enumerate(chain):
        try:
            engine, rec = _open_backend(backend, want, engine_cfg, bank is not None)
        except (BackendUnavailable, EngineNotFound) as exc:
            errors.append(f"{backend}: {exc}")
            if i + 1 < len(chain):
                log.warning("backend %s unavailable (%s); falling back to %s as "
                            "[engine] fallback lists", backend, exc, chain[i + 1])
                continue
            if len(errors) == 1:
                raise
            raise BackendUnavailable("no configured backend can run: "
                                     + " | ".join(errors)) from None
        break
    if bank is None:
        bank = load_bank(rec)
    trained_on = dict(want["trained_on"])
    trained_on.setdefault("n_voxels", engine.n_inputs)
    if int(trained_on["n_voxels"]) != engine.n_inputs:
        raise ValueError(f"{model_dir}: engine takes {engine.n_inputs} voxels, the model was "
                         f"trained on {trained_on['n_voxels']}")
    width = rec.spec["outputs"][1]["shape"][1] if rec is not None else want["pooled_dim"]
    if bank.targets.shape[1] != width:
        raise ValueError(f"{rec.path if rec is not None else model_dir}: caption bank width "
                         f"{bank.targets.shape[1]} differs from the engine's pooled output "
                         f"width {width}")
    key = rec.key if rec is not None else f"torch-eager-{want['weights_sha256'][:16]}"
    meta = {"kind": "sad", "backend": engine.name, "engine_key": key,
            "engine_path": str(rec.path if rec is not None else model_dir),
            "subject": want["subject"], "steps": want["steps"],
            "providers": getattr(engine, "providers", None), "trained_on": trained_on,
            "load_s": round(time.perf_counter() - t0, 3)}
    log.info("decoder: SAD %s via %s (engine %s)", want["subject"], engine.name, key)
    return DecoderModel(engine, bank, None, meta)
