"""Export → parity → run, the engine store, and the runtime backends, on a tiny seeded SAD;
export → parity → run of a tiny seeded MAD and toy-VAE decoder.

One SAD export (fp32 + int8, with a caption bank from a tiny simulated session and a random
tiny CLIP) is built per module and shared; the other tests reuse it or compute keys only.
Likewise one MAD and one VAE-decoder export (no session needed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_config
from typer.testing import CliRunner

from export import REGISTRY, BuildOptions, Built, ExportRequest, ModelEntry, register
from export.onnx_export import ParityError, parity, parity_inputs
from export.specs import ExportSpec, TensorSpec, detect_kind, file_sha256
from export.store import EngineStore, engine_key, export_checkpoint, key_inputs, verify
from export.tensorrt_build import tensorrt_status
from rtdecode.backends import (
    BackendUnavailable,
    EngineNotFound,
    OnnxRuntimeEngine,
    TorchEngine,
    load_neural_decoder,
)
from rtdecode.cli import app
from rtdecode.config import Config, ConfigError, EngineConfig, from_dict
from rtdecode.data import load_session
from rtdecode.engine import provenance
from rtdecode.models.mad import MAD, MADConfig
from rtdecode.models.sad import SAD, SADGraph, sad_preset
from rtdecode.models.train import load_checkpoint, save_checkpoint
from rtdecode.simulator import simulate
from rtdecode.zoo.clip import ToyClipConfig, build_model, save_toy_clip
from rtdecode.zoo.vae import (
    ToyVAEConfig,
    build_vae,
    load_toy_vae,
    pixels_to_frames,
    save_toy_vae,
)

SUBJECT = "sub-01"
TINY_SAD = dict(hidden=32, mlp_layers=1, n_tokens=4, token_dim=32, refine_width=16,
                refine_layers=1, refine_heads=2, sample_steps=2, dropout=0.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny session, a random tiny CLIP, a tiny SAD checkpoint and its exported engines."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    simulate(data, tiny_config(seed=3), progress=False)
    session = load_session(data, SUBJECT)
    ccfg = dataclasses.replace(ToyClipConfig(), embed_dim=32, vision_width=32, text_width=32,
                               text_layers=1, vision_layers=(1,), text_heads=2)
    save_toy_clip(build_model(ccfg), ccfg, root / "clip")
    torch.manual_seed(0)
    model = SAD(sad_preset("toy", {SUBJECT: session.n_voxels}, **TINY_SAD)).eval()
    ckpt = root / "sad"
    save_checkpoint(model, ckpt, {"clip": str(root / "clip"),
                                  "trained_on": {SUBJECT: provenance(session, Config())}})
    store = root / "engines"
    req = ExportRequest(ckpt, store=store, int8=True, data=data, clip=root / "clip",
                        batch=(1, 2, 8))
    outcomes = export_checkpoint(req, progress=False)
    return {"root": root, "data": data, "ckpt": ckpt, "store": store, "req": req,
            "session": session, "fp32": outcomes[0], "int8": outcomes[1]}


def engine_cfg(world, **kw) -> EngineConfig:
    return EngineConfig(store=str(world["store"]), **kw)


# ----------------------------------------------------------------------------- export


def test_export_checks_parity_and_writes_manifest(world):
    rec = world["fp32"].record
    m = rec.manifest
    assert world["fp32"].status == "built"
    assert m["export"]["exporter"] == "dynamo" and m["checks"]["onnx_checker"] == "passed"
    par = m["checks"]["parity"]
    assert par["ok"] and set(par["sets"]) == {"random_b1", "random_b3", "real"}
    assert par["max_abs"] < 1e-4 and par["atol"] > 0 and par["rtol"] > 0
    assert par["sets"]["real"]["batch"] == 8
    # the spec: one graph per subject, steps unrolled, noise an input, batch dynamic
    spec = m["spec"]
    assert spec["subject"] == SUBJECT and spec["options"]["steps"] == 2
    assert spec["options"]["sampling"] == "unrolled" and spec["options"]["noise"] == "input"
    assert [t["name"] for t in spec["inputs"]] == ["x", "noise"]
    assert spec["batch"] == {"min": 1, "opt": 2, "max": 8}
    g = onnx.load(str(rec.file), load_external_data=False).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(g.input) + list(g.output)}
    assert isinstance(dims["x"][0], str) and dims["x"][1] == world["session"].n_voxels
    assert isinstance(dims["pooled"][0], str) and dims["pooled"][1] == 3 * 32
    # every file hashed; the caption bank = the session's training clips
    assert set(m["files"]) >= {"model.onnx", "model.onnx.data", "bank.safetensors",
                               "captions.jsonl"}
    assert m["bank"]["n"] == sum(c["split"] == "train" for c in world["session"].clips.values())
    assert m["source"]["weights_sha256"] == file_sha256(world["ckpt"] / "sad.safetensors")


def test_one_export_runs_batch_1_and_more_and_matches_torch(world):
    rec = world["fp32"].record
    ort_engine = OnnxRuntimeEngine(rec.file, threads=1, seed=5)
    torch_engine = TorchEngine.from_checkpoint(world["ckpt"], SUBJECT, 2, seed=5)
    n = world["session"].n_voxels
    rng = np.random.default_rng(0)
    for batch in (1, 2, 5, 11):  # 11 > the spec's max batch: still fine on onnxruntime
        x = rng.standard_normal((batch, n)).astype(np.float32)
        tok_o, pooled_o = ort_engine.decode_tokens(x)
        tok_t, pooled_t = torch_engine.decode_tokens(x)
        assert tok_o.shape == (batch, 3, 4, 32) and pooled_o.shape == (batch, 96)
        np.testing.assert_allclose(pooled_o, pooled_t, atol=1e-4, rtol=1e-3)
        np.testing.assert_allclose(pooled_o, tok_o.mean(axis=2).reshape(batch, -1), atol=1e-5)
    # SADGraph with given noise is exactly what SAD.forward samples
    model, _ = load_checkpoint(world["ckpt"])
    x = torch.from_numpy(rng.standard_normal((3, n)).astype(np.float32))
    g = torch.Generator().manual_seed(1)
    want = model(x, SUBJECT, steps=2, generator=g)
    noise = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    got, _ = SADGraph(model, SUBJECT, 2)(x, noise)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=f"expects \\(batch, {n}\\)"):
        ort_engine.decode(np.zeros((1, n + 1), np.float32))


def test_parity_check_fails_loudly_on_a_mismatch(world):
    rec = world["fp32"].record
    entry = detect_kind(world["ckpt"])
    built = entry.build(world["ckpt"], BuildOptions(SUBJECT, 2, (1, 2, 8)))
    with torch.no_grad():
        built.module.model.head.bias.add_(0.5)  # torch now differs from the saved graph
    with pytest.raises(ParityError, match="max_abs"):
        parity(built.module, rec.file, built.spec, parity_inputs(built.spec))


def test_int8_engine_runs_and_reports_accuracy(world):
    out = world["int8"]
    m = out.record.manifest
    assert out.status == "built" and m["artifact"] == "onnx-int8" and m["parent"] == \
        world["fp32"].record.key
    acc = m["accuracy"]
    assert acc["inputs"] == "real test windows" and acc["pooled_corr_mean"] > 0.95
    for k in ("pooled_rel_mse", "caption_top1_agreement", "caption_50way_fp32",
              "caption_50way_int8"):
        assert k in acc
    eng = OnnxRuntimeEngine(out.record.file, threads=1)
    assert eng.decode(np.zeros((3, eng.n_inputs), np.float32)).shape == (3, 96)


def test_sad_spec_with_a_low_rank_projection():
    """The shipped SAD's subject projection is low-rank (two linears): its voxel count is
    the first one's input width."""
    from export.specs import sad_graph

    model = SAD(sad_preset("toy", {SUBJECT: 50}, **dict(TINY_SAD, proj_rank=8))).eval()
    _, spec = sad_graph(model, SUBJECT, 2)
    assert spec.inputs[0].shape == ("batch", 50) and spec.options["n_voxels"] == 50


# ----------------------------------------------------------------------------- the store


def test_reexport_reuses_and_changes_make_new_keys(world, tmp_path):
    again = export_checkpoint(world["req"], progress=False)
    assert [o.status for o in again] == ["reused", "reused"]
    assert again[0].record.key == world["fp32"].record.key
    entry = detect_kind(world["ckpt"])
    base = entry.build(world["ckpt"], BuildOptions(SUBJECT, 2, (1, 2, 8)))

    def key(built):
        return engine_key(key_inputs(built.spec, built.source["weights_sha256"], "onnx",
                                     opset=18, bank=None))
    k0 = key(base)
    # shapes / baked options: batch profile, steps
    assert key(entry.build(world["ckpt"], BuildOptions(SUBJECT, 2, (1, 2, 16)))) != k0
    assert key(entry.build(world["ckpt"], BuildOptions(SUBJECT, 1, (1, 2, 8)))) != k0
    assert engine_key(key_inputs(base.spec, base.source["weights_sha256"], "onnx", opset=17,
                                 bank=None)) != k0
    # a voxel count change (the subject's projection) and a weight change
    changed = tmp_path / "sad2"
    model, meta = load_checkpoint(world["ckpt"])
    torch.manual_seed(0)
    wider = SAD(dataclasses.replace(model.cfg, subjects={SUBJECT: model.cfg.subjects[SUBJECT]
                                                          + 7})).eval()
    save_checkpoint(wider, changed, {k: v for k, v in meta.items() if k != "sad"})
    assert key(entry.build(changed, BuildOptions(SUBJECT, 2, (1, 2, 8)))) != k0
    model, meta = load_checkpoint(world["ckpt"])
    with torch.no_grad():
        model.head.weight[0, 0] += 1e-3
    save_checkpoint(model, changed, meta)
    assert key(entry.build(changed, BuildOptions(SUBJECT, 2, (1, 2, 8)))) != k0
    # ...and the runtime finds no engine for the changed weights (never a stale one)
    with pytest.raises(EngineNotFound, match="rtdecode export"):
        load_neural_decoder(changed, engine_cfg(world), SUBJECT)
    store = EngineStore(world["store"])
    assert store.get(base.spec, "onnx", again[0].record.key) is not None  # still there


def test_engines_list_and_verify_cli(world, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["engines", "list", "--store", str(world["store"])])
    assert res.exit_code == 0, res.output
    assert world["fp32"].record.key[:12] in res.output and "onnx-int8" in res.output
    res = runner.invoke(app, ["engines", "verify", "--store", str(world["store"])])
    assert res.exit_code == 0, res.output
    assert res.output.count("ok ") >= 2 and "parity vs torch: ok" in res.output
    res = runner.invoke(app, ["export", "--model", str(world["ckpt"]), "--store",
                              str(world["store"]), "--data", str(world["data"]), "--clip",
                              str(world["root"] / "clip"), "--int8", "--batch", "1,2,8"])
    assert res.exit_code == 0, res.output
    assert res.output.count("reused") == 2
    # a corrupted copy, and a copy whose checkpoint changed since export
    bad = tmp_path / "store"
    shutil.copytree(world["store"], bad)
    fp32 = bad / world["fp32"].record.path.name
    with open(fp32 / "model.onnx.data", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff\xff\xff\xff")
    res = runner.invoke(app, ["engines", "verify", "--store", str(bad), "--no-parity"])
    assert res.exit_code == 1 and "corrupt" in res.output and "sha256 differs" in res.output
    ckpt = tmp_path / "sad"
    shutil.copytree(world["ckpt"], ckpt)
    int8 = bad / world["int8"].record.path.name
    m = json.loads((int8 / "manifest.json").read_text())
    m["source"]["checkpoint_resolved"] = str(ckpt)
    (int8 / "manifest.json").write_text(json.dumps(m))
    model, meta = load_checkpoint(ckpt)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    save_checkpoint(model, ckpt, meta)
    rep = verify(next(r for r in EngineStore(bad).list() if r.path == int8))
    assert rep["status"] == "stale" and any("changed since export" in c for c in rep["checks"])


# ----------------------------------------------------------------------------- backends


def test_backends_by_config_with_errors_and_explicit_fallback(world, caplog):
    dec = load_neural_decoder(world["ckpt"], engine_cfg(world), SUBJECT)
    assert dec.meta["backend"] == "onnxruntime" and dec.meta["kind"] == "sad"
    assert dec.meta["trained_on"]["n_voxels"] == world["session"].n_voxels
    assert len(dec.bank.captions) == len(dec.bank.targets) > 0
    x = np.random.default_rng(1).standard_normal((2, dec.engine.n_inputs)).astype(np.float32)
    via_ort = dec.engine.decode(x)
    via_torch = load_neural_decoder(world["ckpt"], engine_cfg(world, backend="torch"),
                                    SUBJECT).engine.decode(x)
    np.testing.assert_allclose(via_ort, via_torch, atol=1e-4, rtol=1e-3)  # same seed, noise
    int8 = load_neural_decoder(world["ckpt"], engine_cfg(world, int8=True), SUBJECT)
    assert int8.meta["engine_key"] == world["int8"].record.key
    # an engine folder serves by itself
    alone = load_neural_decoder(world["int8"].record.path, engine_cfg(world), None)
    assert alone.meta["engine_key"] == world["int8"].record.key
    # unavailable backends name what is missing; no silent fallback
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        load_neural_decoder(world["ckpt"], engine_cfg(world, backend="tensorrt"), SUBJECT)
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        load_neural_decoder(world["ckpt"], engine_cfg(
            world, providers=("CUDAExecutionProvider",)), SUBJECT)
    with caplog.at_level(logging.WARNING, logger="rtdecode.backends"):
        dec = load_neural_decoder(world["ckpt"], engine_cfg(
            world, backend="tensorrt", fallback=("onnxruntime",)), SUBJECT)
    assert dec.meta["backend"] == "onnxruntime"
    assert "falling back to onnxruntime" in caplog.text and "tensorrt" in caplog.text
    with pytest.raises(ValueError, match="unknown to this SAD"):
        load_neural_decoder(world["ckpt"], engine_cfg(world), "sub-09")


def test_engine_config_is_strict():
    cfg = from_dict(Config, {"engine": {"backend": "torch", "fallback": ["onnxruntime"]}})
    assert cfg.engine.backend == "torch" and cfg.engine.fallback == ("onnxruntime",)
    with pytest.raises(ConfigError, match="engine.backend = 'tensorflow'"):
        from_dict(Config, {"engine": {"backend": "tensorflow"}})
    with pytest.raises(ConfigError, match="engine.fallback = 'cpu'"):
        from_dict(Config, {"engine": {"fallback": ["cpu"]}})
    with pytest.raises(ConfigError, match="backnd"):
        from_dict(Config, {"engine": {"backnd": "torch"}})


def test_onnxruntime_serve_path_does_not_import_torch(world):
    """The lean scanner-side path: config → engine from the store → daemon → captions,
    in a fresh interpreter, without torch ever being imported."""
    code = textwrap.dedent(f"""
        import json, sys
        from rtdecode import cli  # the CLI module `rtdecode serve` runs in
        from rtdecode.backends import load_neural_decoder
        from rtdecode.config import from_dict, Config
        from rtdecode.daemon import Daemon
        from rtdecode.data import load_session
        from rtdecode.sources import RunSource

        cfg = from_dict(Config, {{"engine": {{"store": {str(world["store"])!r}}},
                                  "stream": {{"on_full": "block"}}}})
        dec = cli._load_decoder(cfg, __import__("pathlib").Path({str(world["ckpt"])!r}),
                                {SUBJECT!r})
        run = load_session({str(world["data"])!r}, {SUBJECT!r}).runs_of("test")[0]
        status = Daemon(cfg, dec, RunSource(run, speed=None), session="t",
                        strict=True).run(timeout=60)
        print(json.dumps({{"torch": "torch" in sys.modules, "backend": dec.meta["backend"],
                          "finals": status["counters"]["finals"],
                          "decoded": status["counters"]["decoded"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"torch": False, "backend": "onnxruntime", "finals": res["finals"],
                   "decoded": res["decoded"]}
    assert res["decoded"] > 0 and res["finals"] > 0


# ----------------------------------------------------------------------------- MAD, VAE

# low-rank projection (proj_rank < hidden), 3 frames of 4x8x8 latents, 5 motion tokens
TINY_MAD = dict(hidden=16, proj_rank=8, embed_layers=1, dropout=0.0, n_frames=3,
                latent_shape=(4, 8, 8), patch=4, width=16, heads=2, blocks=1, motion_tokens=5,
                token_dim=12)
TINY_VAE = ToyVAEConfig(image_size=16, block_out_channels=(8, 8), norm_num_groups=4)
MAD_VOXELS = 40


def _save_tiny_vae(folder: Path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    # fp16 as shipped; a scaling factor != 1 checks the graph takes MAD's scaled latents
    save_toy_vae(build_vae(TINY_VAE), TINY_VAE, folder, scaling_factor=0.5, fp16=True)


@pytest.fixture(scope="module")
def mad_vae(tmp_path_factory):
    """A tiny seeded MAD and toy-VAE checkpoint (fp16, as shipped), exported into one store
    without --data."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mad_vae")
    torch.manual_seed(0)
    mad = MAD(MADConfig(subjects={SUBJECT: MAD_VOXELS}, **TINY_MAD)).eval()
    save_checkpoint(mad, root / "mad", {"trained_on": {SUBJECT: {"n_voxels": MAD_VOXELS}}},
                    fp16=True)
    _save_tiny_vae(root / "vae")
    store = root / "engines"
    out = {k: export_checkpoint(ExportRequest(root / k, store=store, batch=(1, 2, 8)),
                                progress=False)[0] for k in ("mad", "vae")}
    return {"root": root, "store": store, **out}


def _graph_dims(path: Path) -> dict[str, list]:
    g = onnx.load(str(path), load_external_data=False).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(g.input) + list(g.output)}


def test_mad_exports_with_motion_input_and_runs_batch_1_and_more(mad_vae):
    import onnxruntime as ort

    rec = mad_vae["mad"].record
    m = rec.manifest
    assert mad_vae["mad"].status == "built" and m["kind"] == "mad"
    assert m["export"]["exporter"] == "dynamo" and m["checks"]["onnx_checker"] == "passed"
    par = m["checks"]["parity"]
    assert par["ok"] and set(par["sets"]) == {"random_b1", "random_b3"}
    spec = m["spec"]
    assert spec["subject"] == SUBJECT and spec["options"]["motion"] == "input"
    assert [(t["name"], t["shape"]) for t in spec["inputs"]] == [
        ("x", ["batch", MAD_VOXELS]), ("motion", ["batch", 5, 12])]
    assert [(t["name"], t["shape"]) for t in spec["outputs"]] == [
        ("latents", ["batch", 3, 4, 8, 8])]
    dims = _graph_dims(rec.file)
    assert isinstance(dims["x"][0], str) and isinstance(dims["latents"][0], str)
    assert m["source"]["weights_sha256"] == file_sha256(mad_vae["root"] / "mad" /
                                                        "mad.safetensors")
    # one export, batch 1 and more, against the model's own forward (not the wrapper)
    sess = ort.InferenceSession(str(rec.file), providers=["CPUExecutionProvider"])
    model, _ = load_checkpoint(mad_vae["root"] / "mad")
    rng = np.random.default_rng(0)
    for batch in (1, 2, 5):
        x = rng.standard_normal((batch, MAD_VOXELS)).astype(np.float32)
        motion = rng.standard_normal((batch, 5, 12)).astype(np.float32)
        got = sess.run(["latents"], {"x": x, "motion": motion})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x), SUBJECT, torch.from_numpy(motion)).numpy()
        assert got.shape == (batch, 3, 4, 8, 8)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    # the ablation without cross-attention takes no motion input
    from export.specs import mad_graph

    plain = MAD(MADConfig(subjects={SUBJECT: MAD_VOXELS}, **TINY_MAD, use_cross=False))
    graph, spec = mad_graph(plain.eval(), SUBJECT)
    assert spec.input_names == ["x"] and spec.options["motion"] == "none"
    assert graph(torch.zeros(2, MAD_VOXELS)).shape == (2, 3, 4, 8, 8)


def test_vae_decoder_exports_and_decodes_like_toy_vae(mad_vae):
    import onnxruntime as ort

    rec = mad_vae["vae"].record
    m = rec.manifest
    assert mad_vae["vae"].status == "built" and m["kind"] == "vae-decoder"
    assert m["checks"]["parity"]["ok"] and m["export"]["exporter"] == "dynamo"
    spec = m["spec"]
    assert spec["subject"] == "any" and spec["options"]["scaling_factor"] == 0.5
    assert [(t["name"], t["shape"]) for t in spec["inputs"]] == [("latents", ["batch", 4, 8, 8])]
    assert [(t["name"], t["shape"]) for t in spec["outputs"]] == [
        ("frames", ["batch", 3, 16, 16])]
    assert isinstance(_graph_dims(rec.file)["latents"][0], str)
    sess = ort.InferenceSession(str(rec.file), providers=["CPUExecutionProvider"])
    vae = load_toy_vae(mad_vae["root"] / "vae")
    rng = np.random.default_rng(1)
    for batch in (1, 4):
        z = (3 * rng.standard_normal((batch, 4, 8, 8))).astype(np.float32)  # some clamp
        pixels = sess.run(["frames"], {"latents": z})[0]
        assert pixels.shape == (batch, 3, 16, 16)
        assert pixels.min() >= -1 and pixels.max() <= 1
        with torch.no_grad():
            want = vae.decoder_graph()(torch.from_numpy(z)).numpy()
        np.testing.assert_allclose(pixels, want, atol=1e-4, rtol=1e-3)
        # the scaled latents in, what ToyVAE.decode makes of them out (uint8, +-1 rounding)
        frames = pixels_to_frames(torch.from_numpy(pixels))
        diff = np.abs(frames.astype(int) - vae.decode(z).astype(int))
        assert diff.max() <= 1


def test_mad_and_vae_keys_change_with_weights(mad_vae, tmp_path):
    def key(built):
        return engine_key(key_inputs(built.spec, built.source["weights_sha256"], "onnx",
                                     opset=18, bank=None))
    again = export_checkpoint(ExportRequest(mad_vae["root"] / "vae", store=mad_vae["store"],
                                            batch=(1, 2, 8)), progress=False)[0]
    assert again.status == "reused" and again.record.key == mad_vae["vae"].record.key
    for kind, edit in (("mad", "head.bias"), ("vae", "decoder.conv_out.bias")):
        src = mad_vae["root"] / kind
        entry = detect_kind(src)
        base = entry.build(src, BuildOptions(batch=(1, 2, 8)))
        assert key(base) == mad_vae[kind].record.key
        assert key(entry.build(src, BuildOptions(batch=(1, 2, 16)))) != key(base)
        changed = tmp_path / kind
        if kind == "mad":
            model, meta = load_checkpoint(src)
            with torch.no_grad():
                model.get_parameter(edit).add_(1e-2)
            save_checkpoint(model, changed, meta, fp16=True)
        else:
            vae = load_toy_vae(src)
            with torch.no_grad():
                vae.model.get_parameter(edit).add_(1e-2)
            save_toy_vae(vae.model, TINY_VAE, changed, scaling_factor=0.5, fp16=True)
        assert key(entry.build(changed, BuildOptions(batch=(1, 2, 8)))) != key(base)


def test_mad_and_vae_cli_export_list_verify_and_sad_only_options(mad_vae):
    runner = CliRunner()
    store = str(mad_vae["store"])
    for kind in ("mad", "vae"):
        res = runner.invoke(app, ["export", "--model", str(mad_vae["root"] / kind),
                                  "--store", store, "--batch", "1,2,8"])
        assert res.exit_code == 0, res.output
        assert "reused" in res.output
    res = runner.invoke(app, ["engines", "list", "--store", store])
    assert res.exit_code == 0 and "vae-decoder" in res.output and "mad" in res.output
    res = runner.invoke(app, ["engines", "verify", "--store", store])
    assert res.exit_code == 0, res.output
    assert res.output.count("parity vs torch: ok") == 2
    # SAD-only options are refused, not ignored
    for args, msg in ((["--steps", "2"], "--steps is SAD's"),
                      (["--data", store], "SAD-only"),
                      (["--int8"], "SAD-only"),
                      (["--subject", SUBJECT], "one graph for every subject")):
        res = runner.invoke(app, ["export", "--model", str(mad_vae["root"] / "vae"),
                                  "--store", store, *args])
        assert res.exit_code != 0 and msg in res.output, (args, res.output)
    res = runner.invoke(app, ["export", "--model", str(mad_vae["root"] / "mad"), "--store",
                              store, "--subject", "sub-09"])
    assert res.exit_code != 0 and "unknown to this MAD" in res.output
    # not decoders for `serve`: said so, not a KeyError on SAD's options
    with pytest.raises(ValueError, match="a mad engine"):
        load_neural_decoder(mad_vae["mad"].record.path, EngineConfig(store=store), None)


# ----------------------------------------------------------------------------- registry


class _Linear(torch.nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.fc = torch.nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.fc(x), torch.tanh(self.fc(x))


def _build_linear(path: Path, opts: BuildOptions) -> Built:
    from safetensors.torch import load_file

    state = load_file(str(path / "lin.safetensors"))
    n_out, n_in = state["fc.weight"].shape
    module = _Linear(n_in, n_out)
    module.load_state_dict(state)
    spec = ExportSpec("lin", opts.subject or "any", (TensorSpec("x", ("batch", n_in)),),
                      (TensorSpec("tokens", ("batch", n_out)),
                       TensorSpec("pooled", ("batch", n_out))), opts.batch)
    return Built(module.eval(), spec, {"weights_sha256": file_sha256(path / "lin.safetensors"),
                                       "checkpoint": str(path)})


@pytest.fixture
def linear_kind(tmp_path):
    from safetensors.torch import save_file

    entry = register(ModelEntry("lin", "lin.safetensors", _build_linear, "test kind"))
    torch.manual_seed(0)
    ckpt = tmp_path / "lin"
    ckpt.mkdir()
    save_file(_Linear(6, 3).state_dict(), str(ckpt / "lin.safetensors"))
    yield entry, ckpt
    REGISTRY.pop("lin")


def test_a_new_model_kind_plugs_in_with_one_registry_entry(linear_kind, tmp_path):
    _, ckpt = linear_kind
    with pytest.raises(ValueError, match="already registered"):
        register(ModelEntry("lin", "x", _build_linear))
    out = export_checkpoint(ExportRequest(ckpt, store=tmp_path / "store"), progress=False)
    rec = out[0].record
    assert rec.manifest["kind"] == "lin" and rec.manifest["checks"]["parity"]["ok"]
    eng = OnnxRuntimeEngine(rec.file, threads=1)  # no noise input: a plain graph
    assert eng.noise_shape is None and eng.decode(np.ones((4, 6), np.float32)).shape == (4, 3)
    with pytest.raises(ValueError, match="not a checkpoint of a known kind"):
        detect_kind(tmp_path)


def test_dynamo_failure_falls_back_to_torchscript_and_says_so(linear_kind, tmp_path,
                                                              monkeypatch, caplog):
    import export.onnx_export as ox

    def broken(*a, **k):
        raise RuntimeError("simulated dynamo failure")
    monkeypatch.setattr(ox, "_export_dynamo", broken)
    _, ckpt = linear_kind
    with caplog.at_level(logging.WARNING, logger="export.onnx"):
        rec = export_checkpoint(ExportRequest(ckpt, store=tmp_path / "s"), progress=False)[0]
    m = rec.record.manifest
    assert m["export"]["exporter"] == "torchscript"
    assert "simulated dynamo failure" in m["export"]["dynamo_error"]
    assert m["checks"]["parity"]["ok"] and "falling back" in caplog.text


# ----------------------------------------------------------------------------- bench


def test_bench_decode_json_shape(monkeypatch):
    import export.bench_decode as bd
    from rtdecode.models import sad

    # a low-rank subject projection, as the shipped SAD has; steps overridden to 0
    monkeypatch.setitem(sad.PRESETS, "toy", dict(TINY_SAD, sample_steps=1, proj_rank=8))
    res = bd.bench_decode(("toy",), iters={"toy": 5}, voxels=40, steps=0, say=lambda m: None)
    assert res["toy"]["steps"] == 0 and res["toy"]["voxels"] == 40
    for k in ("torch", "onnxruntime", "onnxruntime_int8"):
        assert res["toy"][k]["p50_ms"] > 0 and res["toy"][k]["p99_ms"] >= res["toy"][k][
            "p50_ms"]
    assert set(res["toy"]["onnxruntime_vs_torch"]) == {"p50_ms", "p99_ms"}
    assert "pooled_corr_mean" in res["toy"]["int8_accuracy"]
    assert "toy_p99_le_10ms" in res["met"]
    assert "onnxruntime_int8" in bd.format_table(res)


# ----------------------------------------------------------------------------- TensorRT


def test_tensorrt_plan_builds_and_runs(world, tmp_path):
    ok, reason = tensorrt_status()
    if not ok:
        pytest.skip(f"TensorRT path untestable here: {reason}")
    req = dataclasses.replace(world["req"], int8=False, tensorrt=True, store=tmp_path / "s",
                              precision="fp32")
    out = export_checkpoint(req, progress=False)
    plan = out[-1].record
    assert plan.artifact == "tensorrt" and plan.file.stat().st_size > 0
    dec = load_neural_decoder(world["ckpt"], EngineConfig(store=str(tmp_path / "s"),
                                                          backend="tensorrt",
                                                          precision="fp32"), SUBJECT)
    x = np.random.default_rng(0).standard_normal((3, dec.engine.n_inputs)).astype(np.float32)
    ref = OnnxRuntimeEngine(out[0].record.file, seed=0).decode(x)
    np.testing.assert_allclose(dec.engine.decode(x), ref, atol=1e-3, rtol=1e-2)


def test_onnxruntime_tensorrt_and_cuda_providers(world):
    import onnxruntime as ort

    have = ort.get_available_providers()
    if "CUDAExecutionProvider" not in have and "TensorrtExecutionProvider" not in have:
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDA/TensorRT execution provider "
                    f"(has {have}); they need onnxruntime-gpu and a GPU")
    for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
        if p in have:
            dec = load_neural_decoder(world["ckpt"], engine_cfg(world, providers=(p,)),
                                      SUBJECT)
            assert dec.engine.providers[0] == p
            x = np.zeros((2, dec.engine.n_inputs), np.float32)
            assert np.isfinite(dec.engine.decode(x)).all()


def test_caption_bank_centring_is_retrieval_around_the_bank_mean():
    """``center=True`` retrieves as if decoded and bank vectors were both shifted by the
    bank's mean (the mean training caption), and it changes which caption wins."""
    from rtdecode.engine import CaptionBank

    rng = np.random.default_rng(0)
    bank = rng.normal(size=(30, 16)) + rng.normal(size=16) * 5
    caps = [{"anchor": str(i), "motion": "", "holistic": ""} for i in range(30)]
    pred = rng.normal(size=(50, 16))
    mean = bank.mean(axis=0)
    got = CaptionBank(bank, caps, center=True).nearest(pred, k=3)
    want = CaptionBank(bank - mean, caps).nearest(pred - mean, k=3)
    assert [[c["anchor"] for c, _ in r] for r in got] == \
        [[c["anchor"] for c, _ in r] for r in want]
    np.testing.assert_allclose([[v for _, v in r] for r in got],
                               [[v for _, v in r] for r in want], rtol=1e-5)
    raw = CaptionBank(bank, caps).nearest(pred)
    assert [r[0][0]["anchor"] for r in raw] != [r[0][0]["anchor"] for r in got]
