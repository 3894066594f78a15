"""The render worker (SAD → MAD → CVR → fusion) and its daemon integration, from tiny seeded
components (no shipped weights)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from rtdecode.config import Config
from rtdecode.daemon import Daemon
from rtdecode.data import load_session
from rtdecode.messages import Clip, Semantics
from rtdecode.models.mad import MAD, MADConfig
from rtdecode.models.sad import SAD, SADConfig
from rtdecode.render.cvr import CVR, CVRSettings
from rtdecode.render.fusion import Fusion
from rtdecode.render.worker import RenderWorker
from rtdecode.ridge import train_model
from rtdecode.sources import RunSource
from rtdecode.zoo.unet import SCHEDULE, ToyUNetConfig, build_motion_adapter, build_unet
from rtdecode.zoo.vae import ToyVAE, ToyVAEConfig, build_vae

SUBJECT = "sub-01"
TOKENS, WIDTH, FRAMES = 4, 16, 4
LEVELS = ("anchor", "motion", "holistic")


def tiny_sad(n_voxels: int, **kw) -> SAD:
    torch.manual_seed(0)
    cfg = dict(subjects={SUBJECT: n_voxels}, hidden=32, mlp_layers=1, n_tokens=TOKENS,
               token_dim=WIDTH, refine_width=16, refine_layers=1, refine_heads=2,
               diffusion_steps=20, sample_steps=2)
    return SAD(SADConfig(**{**cfg, **kw})).eval()


def tiny_mad(n_voxels: int, **kw) -> MAD:
    torch.manual_seed(1)
    cfg = dict(subjects={SUBJECT: n_voxels}, hidden=32, proj_rank=16, n_frames=FRAMES,
               latent_shape=(4, 8, 8), patch=4, width=16, heads=2, blocks=1,
               motion_tokens=TOKENS, token_dim=WIDTH)
    return MAD(MADConfig(**{**cfg, **kw})).eval()


@pytest.fixture(scope="module")
def cvr() -> CVR:
    """16×16 frames, 4×8×8 latents, a two-block UNet with a motion module; 2 steps."""
    torch.manual_seed(2)
    vae = ToyVAE(build_vae(ToyVAEConfig(image_size=16, block_out_channels=(8, 8),
                                        norm_num_groups=4)), 1.0)
    ucfg = ToyUNetConfig(block_out_channels=(16, 16), norm_num_groups=8, attention_head_dim=2,
                         n_tokens=TOKENS, motion_heads=2)
    unet = build_unet(ucfg, latent_channels=4, latent_size=8, token_width=WIDTH)
    adapter = build_motion_adapter(ucfg, max_frames=8)
    return CVR(vae, unet, adapter, schedule=SCHEDULE, levels=LEVELS, n_tokens=TOKENS,
               settings=CVRSettings(steps=2), threads=1)


def _sem(k: int, session: str = "s", dim: int = 8) -> Semantics:
    p = np.zeros(dim, np.float32)
    return Semantics(k, p, p, p, session=session)


def _window(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def test_worker_renders_a_reproducible_clip(cvr):
    w = RenderWorker(tiny_sad(50), cvr, SUBJECT, mad=tiny_mad(50), fps=4.0)
    clip = w(_sem(3), _window(50))
    assert isinstance(clip, Clip)
    assert clip.frames.shape == (FRAMES, 16, 16, 3) and clip.frames.dtype == np.uint8
    assert (clip.clip_id, clip.tr_index, clip.chain_id, clip.fps, clip.session) == \
        (3, 3, 0, 4.0, "s")
    assert clip.meta["chained"] is False and clip.meta["seed"] == 3
    assert {"sad", "mad", "motion", "anchor", "video", "total"} <= set(clip.meta["stage_seconds"])
    # A fixed seed per clip: the same window renders the same clip, another window another.
    again = RenderWorker(tiny_sad(50), cvr, SUBJECT, mad=tiny_mad(50))(_sem(3), _window(50))
    assert np.array_equal(again.frames, clip.frames)
    assert not np.array_equal(w(_sem(4), _window(50, 1)).frames, clip.frames)
    # Without MAD: the clip is rendered from the keyframe alone, `frames` long.
    solo = RenderWorker(tiny_sad(50), cvr, SUBJECT, frames=3)(_sem(0), _window(50))
    assert solo.frames.shape == (3, 16, 16, 3) and solo.chain_id == 0
    with pytest.raises(ValueError, match=r"window \(49,\)"):
        w(_sem(5), _window(49))


def test_fusion_chains_alike_keyframes_and_splits_others(cvr):
    same = Fusion(lambda f: np.ones((len(f), 2)) / np.sqrt(2), threshold=0.8)
    w = RenderWorker(tiny_sad(50), cvr, SUBJECT, mad=tiny_mad(50), fusion=same)
    a, b = w(_sem(0), _window(50)), w(_sem(1), _window(50, 1))
    assert b.meta["chained"] and b.chain_id == a.chain_id == 0
    assert b.meta["similarity"] == pytest.approx(1.0)
    assert np.array_equal(b.frames[0], a.frames[-1])  # the tail frame opens the next clip
    # A new session starts afresh: chain 0, not chained.
    c = w(_sem(2, session="t"), _window(50, 2))
    assert (c.chain_id, c.meta["chained"], c.meta["similarity"]) == (0, False, None)

    flip = iter([[1.0, 0.0], [0.0, 1.0]])
    other = Fusion(lambda f: np.array([next(flip)]), threshold=0.8)
    w = RenderWorker(tiny_sad(50), cvr, SUBJECT, mad=tiny_mad(50), fusion=other)
    a, b = w(_sem(0), _window(50)), w(_sem(1), _window(50, 1))
    assert (a.chain_id, b.chain_id) == (0, 1) and not b.meta["chained"]
    assert b.meta["similarity"] == pytest.approx(0.0)


def test_mismatched_components_raise_at_construction(cvr):
    with pytest.raises(ValueError, match="n_tokens 5 != CVR n_tokens 4"):
        RenderWorker(tiny_sad(50, n_tokens=5), cvr, SUBJECT)
    with pytest.raises(ValueError, match="token_dim 8 != the UNet's cross_attention_dim 16"):
        RenderWorker(tiny_sad(50, token_dim=8), cvr, SUBJECT)
    with pytest.raises(ValueError, match="SAD levels"):
        RenderWorker(tiny_sad(50, levels=("anchor", "holistic")), cvr, SUBJECT)
    with pytest.raises(ValueError, match="MAD latent_shape"):
        RenderWorker(tiny_sad(50), cvr, SUBJECT, mad=tiny_mad(50, latent_shape=(4, 16, 16)))
    with pytest.raises(ValueError, match="'sub-09' unknown to SAD"):
        RenderWorker(tiny_sad(50), cvr, "sub-09")


def tiny_captioner(n_inputs: int):
    """An attribute captioner on a random linear decoder of ``n_inputs`` and a tiny CLIP."""
    import dataclasses

    from rtdecode.engine import CaptionBank, DecoderModel, RidgeEngine
    from rtdecode.render.captioner import AttributeCaptioner
    from rtdecode.zoo.clip import ToyClip, ToyClipConfig, build_model

    torch.manual_seed(3)
    ccfg = dataclasses.replace(ToyClipConfig(), embed_dim=16, vision_width=16, text_width=16,
                               vision_head_width=16, text_layers=1, vision_layers=(1,),
                               text_heads=2)
    from rtdecode.simulator.stimuli import ATTRIBUTE_GROUPS

    dim = sum(len(v) for v in ATTRIBUTE_GROUPS.values())
    coef = np.random.default_rng(4).standard_normal((dim, n_inputs)).astype(np.float32)
    model = DecoderModel(RidgeEngine(coef, np.zeros(dim, np.float32)),
                         CaptionBank(coef[:, :1].T, [{"clip_id": 0}]), None,
                         {"kind": "ridge", "targets": "attributes"})
    return AttributeCaptioner(model, ToyClip(build_model(ccfg), ccfg), LEVELS, TOKENS)


def test_worker_renders_from_composed_captions(cvr):
    plain = RenderWorker(tiny_sad(50), cvr, SUBJECT, mad=tiny_mad(50))
    w = RenderWorker(tiny_sad(50), cvr, SUBJECT, mad=tiny_mad(50),
                     captioner=tiny_captioner(50))
    clip = w(_sem(2), _window(50, seed=5))
    attrs = clip.meta["attributes"]
    assert set(attrs) == {"background", "texture", "shape", "colour", "motion", "position",
                          "size", "n_objects"}
    assert f"{attrs['colour']} {attrs['shape']}" in clip.meta["caption"]
    assert "captioner" in clip.meta["stage_seconds"]
    # same window and seed: only the conditioning differs, and the clip with it
    assert not np.array_equal(clip.frames, plain(_sem(2), _window(50, seed=5)).frames)
    assert "caption" not in plain(_sem(2), _window(50, seed=5)).meta


def test_worker_renders_from_the_layout_sketch(cvr):
    from rtdecode.render.layout import LayoutSketch

    cap = tiny_captioner(50)
    with_mad = RenderWorker(tiny_sad(50), cvr, SUBJECT, mad=tiny_mad(50), captioner=cap)
    w = RenderWorker(tiny_sad(50), cvr, SUBJECT, mad=tiny_mad(50), captioner=cap,
                     sketch=LayoutSketch(cvr.vae, FRAMES))
    clip = w(_sem(2), _window(50, seed=5))
    assert clip.frames.shape == (FRAMES, 16, 16, 3)
    assert clip.meta["latents"] == "sketch"
    stages = clip.meta["stage_seconds"]
    # captions and sketch: SAD's states and MAD's latents are not needed, nor decoded
    assert "sketch" in stages and "mad" not in stages and "sad" not in stages
    other = with_mad(_sem(2), _window(50, seed=5))
    assert other.meta["latents"] == "mad" and {"sad", "mad"} <= set(other.meta["stage_seconds"])
    # same captions, same seed: only the latents differ, and the clip with them
    assert other.meta["caption"] == clip.meta["caption"]
    assert not np.array_equal(clip.frames, other.frames)
    assert RenderWorker(tiny_sad(50), cvr, SUBJECT, frames=FRAMES)(
        _sem(0), _window(50)).meta["latents"] == "none"
    with pytest.raises(ValueError, match="layout sketch draws .* give a captioner"):
        RenderWorker(tiny_sad(50), cvr, SUBJECT, sketch=LayoutSketch(cvr.vae, FRAMES))
    with pytest.raises(ValueError, match="sketch frames 8 != the clips' 4"):
        RenderWorker(tiny_sad(50), cvr, SUBJECT, mad=tiny_mad(50), captioner=cap,
                     sketch=LayoutSketch(cvr.vae, 8))


def test_load_sketch_by_latents(cvr):
    from rtdecode.render.worker import load_sketch

    cap = tiny_captioner(50)
    assert load_sketch(cvr, cap, "mad") is None
    assert load_sketch(cvr, None, "auto") is None  # SAD's semantics: MAD's latents
    assert load_sketch(cvr, cap, "auto", FRAMES).frames == FRAMES
    assert load_sketch(cvr, cap, "sketch").vae is cvr.vae
    with pytest.raises(ValueError, match="needs the attribute captioner"):
        load_sketch(cvr, None, "sketch")
    with pytest.raises(ValueError, match="latents 'blobs'"):
        load_sketch(cvr, cap, "blobs")


def test_worker_refuses_a_captioner_of_another_input(cvr):
    with pytest.raises(ValueError, match="attribute captioner takes 40 inputs, SAD 50"):
        RenderWorker(tiny_sad(50), cvr, SUBJECT, captioner=tiny_captioner(40))


def test_load_captioner_by_semantics(cvr, tmp_path):
    from rtdecode.render.worker import load_captioner

    assert load_captioner(tmp_path, cvr, "sad") is None
    assert load_captioner(tmp_path, cvr, "auto") is None  # no attributes/ in this zoo
    with pytest.raises(FileNotFoundError, match="no attributes/.*rtdecode train ridge"):
        load_captioner(tmp_path, cvr, "attributes")
    with pytest.raises(ValueError, match="semantics 'words'"):
        load_captioner(tmp_path, cvr, "words")


@pytest.fixture(scope="module")
def model_and_run(small_session):
    sess = load_session(small_session, SUBJECT)
    return train_model(sess, Config()), sess.runs_of("test")[0]


class ListPublisher:
    def __init__(self):
        self.items = []

    def publish(self, topic, header, *buffers):
        self.items.append((topic, header, buffers))

    def topic(self, name):
        return [(h, b) for t, h, b in self.items if t == name]


def test_daemon_publishes_rendered_clips(model_and_run, cvr):
    model, run = model_and_run
    n = model.engine.n_inputs
    worker = RenderWorker(tiny_sad(n), cvr, SUBJECT, mad=tiny_mad(n),
                          fusion=Fusion(lambda f: np.ones((len(f), 2)), 0.5))
    pub = ListPublisher()
    status = Daemon(Config(), model, RunSource(run, speed=20.0), pub, session="s",
                    renderer=worker, strict=True).run(timeout=60)
    c = status["counters"]
    assert c["decoded"] == run.n_trs and c["render_errors"] == 0 and c["renders"] >= 1
    videos = pub.topic("video")
    assert len(videos) == c["renders"]
    for h, (buf,) in videos:
        assert {"clip_id", "chain_id", "render_ms", "fps", "chained", "stage_seconds"} <= set(h)
        assert h["clip_id"] == h["tr_index"] and h["render_ms"] > 0
        assert h["shape"] == [FRAMES, 16, 16, 3] and len(buf) == FRAMES * 16 * 16 * 3
    assert all(h["chain_id"] == 0 for h, _ in videos)  # every keyframe alike: one chain
    finals = [h["tr_index"] for h, _ in pub.topic("caption") if h["final"]]
    assert videos[-1][0]["tr_index"] == finals[-1]  # the run's last clip is not lost
    assert "render" in status["queues"] and "renders_dropped" in c


def test_slow_window_renderer_drops_renders_never_volumes(model_and_run):
    model, run = model_and_run
    got = []

    class Slow:
        takes_window = True

        def __call__(self, sem, window):
            time.sleep(0.2)  # 4 TRs' worth
            got.append((sem, window))
            return Clip(clip_id=sem.tr_index, chain_id=0, tr_index=sem.tr_index,
                        frames=np.zeros((2, 8, 8, 3), np.uint8), fps=4.0,
                        meta={"note": "slow", "skip": object(), "clip_id": -1})

    pub = ListPublisher()
    status = Daemon(Config(), model, RunSource(run, speed=40.0), pub, session="s",
                    renderer=Slow()).run(timeout=60)
    c = status["counters"]
    assert c["decoded"] == run.n_trs and c["dropped"] == 0
    assert c["renders"] >= 3 and c["renders_dropped"] > 0
    finals = [h["tr_index"] for h, _ in pub.topic("caption") if h["final"]]
    assert finals == list(range(run.n_trs - 3))  # every TR's final caption still arrives
    # The window is the engine's input: decoding it again gives the semantics it was sent.
    sem, window = got[0]
    assert window.dtype == np.float32 and window.shape == (model.engine.n_inputs,)
    np.testing.assert_allclose(model.engine.decode(window[None])[0], sem.anchor, rtol=1e-5,
                               atol=1e-5)
    h = pub.topic("video")[0][0]
    assert h["note"] == "slow" and "skip" not in h and h["clip_id"] == h["tr_index"]


def test_from_zoo_and_serve_render_checks(cvr, tmp_path):
    """A tiny zoo on disk in the shipped layout: the worker loads and renders from it; `serve
    --render` names the missing UNet and a voxel-space mismatch clearly."""
    import dataclasses

    from typer.testing import CliRunner

    from rtdecode.cli import _render_worker, app
    from rtdecode.models.train import save_checkpoint
    from rtdecode.zoo.clip import ToyClipConfig, build_model, save_toy_clip
    from rtdecode.zoo.unet import save_render_model
    from rtdecode.zoo.vae import save_toy_vae

    zoo = tmp_path / "zoo"
    r = CliRunner().invoke(app, ["serve", "--render", "--zoo", str(zoo)])
    assert r.exit_code == 2 and "rtdecode train unet" in r.output and "make zoo" in r.output

    save_checkpoint(tiny_sad(50), zoo / "sad", {})
    save_checkpoint(tiny_mad(50), zoo / "mad", {})
    vcfg = ToyVAEConfig(image_size=16, block_out_channels=(8, 8), norm_num_groups=4)
    save_toy_vae(cvr.vae.model, vcfg, zoo / "vae", scaling_factor=1.0)
    ucfg = ToyUNetConfig(block_out_channels=(16, 16), norm_num_groups=8, attention_head_dim=2,
                         n_tokens=TOKENS, motion_heads=2)
    save_render_model("unet", cvr.unet, ucfg, zoo / "unet", cond_shape=(3 * TOKENS, WIDTH),
                      latent_shape=(4, 8, 8))
    ccfg = dataclasses.replace(ToyClipConfig(), embed_dim=16, image_size=16, patch_size=8,
                               vision_width=16, text_width=16, vision_head_width=16,
                               text_layers=1, vision_layers=(1,), text_heads=2)
    save_toy_clip(build_model(ccfg), ccfg, zoo / "clip")

    w = RenderWorker.from_zoo(zoo, SUBJECT, settings=CVRSettings(steps=1), threads=1)
    assert w.mad is not None and w.fusion is not None and w.cvr.video_unet is None
    a, b = w(_sem(0), _window(50)), w(_sem(1), _window(50))
    assert a.frames.shape == (FRAMES, 16, 16, 3) and b.meta["similarity"] is not None
    assert _render_worker(zoo, SUBJECT, 1, 0.8, 50).n_voxels == 50
    with pytest.raises(ValueError, match="decoder takes 900 inputs"):
        _render_worker(zoo, SUBJECT, 1, 0.8, 900)
    # --semantics: this zoo has no attributes/ decoder
    assert _render_worker(zoo, SUBJECT, 1, 0.8, 50, "auto").captioner is None
    with pytest.raises(FileNotFoundError, match="no attributes/"):
        _render_worker(zoo, SUBJECT, 1, 0.8, 50, "attributes")
    with pytest.raises(ValueError, match="--semantics 'words'"):
        _render_worker(zoo, SUBJECT, 1, 0.8, 50, "words")
    # --latents: the sketch draws the captioner's attributes, which this zoo has not
    assert _render_worker(zoo, SUBJECT, 1, 0.8, 50, "auto", "auto").sketch is None
    with pytest.raises(ValueError, match="--latents 'blobs'"):
        _render_worker(zoo, SUBJECT, 1, 0.8, 50, "auto", "blobs")
    with pytest.raises(ValueError, match="does not go with --semantics sad"):
        _render_worker(zoo, SUBJECT, 1, 0.8, 50, "sad", "sketch")
    with pytest.raises(ValueError, match="needs the attribute captioner"):
        _render_worker(zoo, SUBJECT, 1, 0.8, 50, "auto", "sketch")


def test_save_clip_writes_mp4_and_raw_frames(tmp_path):
    from rtdecode.render.video import read_video, save_clip

    frames = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    raw, mp4 = save_clip(tmp_path, "sub-01 run/1", 12, 3, frames, 4.0)
    assert raw.name == "sub-01_run_1_clip-000012_chain-0003.npy"
    assert mp4.name == "sub-01_run_1_clip-000012_chain-0003.mp4"
    assert np.array_equal(np.load(raw), frames)
    assert read_video(mp4).shape == (4, 16, 16, 3)
