"""Training the renderer's toy models: the motion module's trained weights are what is saved,
and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rtdecode.zoo.unet import (
    SCHEDULES,
    RenderData,
    ToyUNetConfig,
    _batch,
    build_motion_adapter,
    build_unet,
    guided_prediction,
    latent_object_weights,
    load_motion_adapter,
    load_unet,
    noise_scheduler,
    render_meta,
    save_render_model,
    train_render_model,
    unet_arch,
    video_unet,
)

CFG = ToyUNetConfig(block_out_channels=(16, 32), norm_num_groups=4, attention_head_dim=2,
                    n_tokens=4, batch_size=2, lr=1e-2, warmup_steps=1, steps=4,
                    checkpoint_every=2, snapshot_every=100, val_size=16)


@pytest.fixture(scope="module")
def render_data():
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((12, 8, 4, 8, 8)).astype(np.float32)
    cond = rng.standard_normal((12, 12, 16)).astype(np.float32)
    return RenderData(latents, cond, np.arange(10), np.arange(10, 12))


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("unet")
    save_render_model("unet", build_unet(CFG, 4, 8, 16), CFG, out, cond_shape=(12, 16),
                      latent_shape=(4, 8, 8))
    return out


def _weights(folder):
    return load_file(str(folder / "motion.safetensors"))


def test_motion_training_saves_the_trained_weights(render_data, unet_dir, tmp_path):
    """The saved adapter, joined to the UNet again, scores the validation loss the training
    recorded for its trained model (an untrained adapter would not)."""
    out = train_render_model("motion", render_data, tmp_path / "m", CFG, unet_dir=unet_dir,
                             progress=False, threads=1)
    recorded = render_meta(out, "motion")["metrics"]["val_loss"]
    model = video_unet(load_unet(unet_dir), load_motion_adapter(out)).eval()
    val_cfg = dataclasses.replace(CFG, batch_size=CFG.val_size // 8, cond_dropout=0.0)
    zt, t, cond, noise, _ = _batch(render_data, render_data.val_ids, val_cfg,
                                np.random.default_rng([CFG.seed, 9]), True, noise_scheduler())
    with torch.no_grad():
        pred = model(zt, t, encoder_hidden_states=cond.repeat_interleave(zt.shape[2], 0)).sample
    assert float(torch.mean((pred - noise) ** 2)) == pytest.approx(recorded, abs=2e-5)
    fresh = video_unet(load_unet(unet_dir), build_motion_adapter(CFG)).eval()
    with torch.no_grad():
        other = fresh(zt, t, encoder_hidden_states=cond.repeat_interleave(zt.shape[2], 0)).sample
    assert float(torch.mean((other - noise) ** 2)) != pytest.approx(recorded, abs=1e-3)


def test_motion_training_resumes_exactly(render_data, unet_dir, tmp_path):
    train_render_model("motion", render_data, tmp_path / "whole", CFG, unet_dir=unet_dir,
                       progress=False, threads=1)
    half = dataclasses.replace(CFG, steps=2)
    train_render_model("motion", render_data, tmp_path / "resumed", half, unet_dir=unet_dir,
                       progress=False, threads=1)
    first = _weights(tmp_path / "resumed")
    train_render_model("motion", render_data, tmp_path / "resumed", CFG, unet_dir=unet_dir,
                       progress=False, threads=1)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    assert any(not torch.equal(first[k], b[k]) for k in b)     # the resumed run moved on
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_zero_snr_finetune_and_its_motion_module(render_data, unet_dir, tmp_path):
    zcfg = dataclasses.replace(CFG, schedule="zero_snr", steps=2, lr=1e-4)
    out = train_render_model("unet", render_data, tmp_path / "z", zcfg, init_dir=unet_dir,
                             progress=False, threads=1)
    meta = render_meta(out, "unet")
    assert meta["scheduler"] == SCHEDULES["zero_snr"]
    assert meta["scheduler"]["prediction_type"] == "v_prediction"
    assert meta["metrics"]["init"]["from"] == str(unet_dir)
    # started from the given weights: two small steps stay close to them, a fresh net does not
    start, tuned = load_unet(unet_dir).state_dict(), load_unet(out).state_dict()
    fresh = build_unet(CFG, 4, 8, 16).state_dict()
    gap = sum(float((tuned[k] - start[k]).abs().sum()) for k in start)
    assert gap < sum(float((fresh[k] - start[k]).abs().sum()) for k in start) / 10
    # the motion module follows its UNet's schedule (the config's says sd15)
    m = train_render_model("motion", render_data, tmp_path / "zm", CFG, unet_dir=out,
                           progress=False, threads=1)
    assert render_meta(m, "motion")["scheduler"] == SCHEDULES["zero_snr"]
    # a checkpoint cannot be resumed under another schedule
    with pytest.raises(ValueError, match="schedule"):
        train_render_model("unet", render_data, tmp_path / "z", CFG, progress=False,
                           threads=1)


def test_unet_architecture_is_checked():
    with pytest.raises(ValueError, match=r"block_out_channels \(30, 60\)"):
        ToyUNetConfig(block_out_channels=(30, 60))
    with pytest.raises(ValueError, match="block_out_channels"):
        ToyUNetConfig(block_out_channels=())
    with pytest.raises(ValueError, match="layers_per_block 0"):
        ToyUNetConfig(layers_per_block=0)
    with pytest.raises(ValueError, match=r"plain_levels 3: want 0..2"):
        ToyUNetConfig(plain_levels=3)


def test_motion_module_takes_its_unets_shape(render_data, tmp_path):
    """A UNet of other channels and depth than the config's default: its fine-tunes and its
    motion module are built in its shape (diffusers needs one temporal layer per layer)."""
    wide = dataclasses.replace(CFG, block_out_channels=(8, 16), layers_per_block=2)
    torch.manual_seed(0)
    udir = tmp_path / "u"
    save_render_model("unet", build_unet(wide, 4, 8, 16), wide, udir, cond_shape=(12, 16),
                      latent_shape=(4, 8, 8))
    arch = unet_arch(udir)
    assert arch["block_out_channels"] == (8, 16)
    assert arch["layers_per_block"] == arch["motion_layers_per_block"] == 2
    m = train_render_model("motion", render_data, tmp_path / "m", CFG, unet_dir=udir,
                           progress=False, threads=1)
    adapter = load_motion_adapter(m)
    assert tuple(adapter.config.block_out_channels) == (8, 16)
    assert adapter.config.motion_layers_per_block == 2
    # the default config's shape cannot take this UNet's weights: a clear error
    with pytest.raises(ValueError, match=r"\(8, 16\)"):
        train_render_model("unet", render_data, tmp_path / "f", CFG, init_dir=udir,
                           progress=False, threads=1)


def test_plain_levels_drop_attention_where_asked(render_data, tmp_path):
    """`--plain-levels 1`: the finest level has no attention (down and up), the rest as
    before; fine-tunes keep it, and a motion module is built for such a UNet."""
    plain = dataclasses.replace(CFG, block_out_channels=(8, 16, 16), plain_levels=1,
                                layers_per_block=1)
    conf = plain.unet_config(4, 8, 16)
    assert conf["down_block_types"] == ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert conf["up_block_types"] == ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    assert CFG.unet_config(4, 8, 16)["down_block_types"] == ("CrossAttnDownBlock2D",
                                                             "DownBlock2D")
    torch.manual_seed(0)
    udir = tmp_path / "u"
    save_render_model("unet", build_unet(plain, 4, 8, 16), plain, udir, cond_shape=(12, 16),
                      latent_shape=(4, 8, 8))
    assert unet_arch(udir)["plain_levels"] == 1
    tuned = dataclasses.replace(CFG, **unet_arch(udir), steps=1)
    train_render_model("unet", render_data, tmp_path / "f", tuned, init_dir=udir,
                       progress=False, threads=1)
    assert load_unet(tmp_path / "f").config.down_block_types[0] == "DownBlock2D"
    m = train_render_model("motion", render_data, tmp_path / "m", CFG, unet_dir=udir,
                           progress=False, threads=1)
    video = video_unet(load_unet(udir), load_motion_adapter(m))
    # one condition per frame, as the renderer passes them
    out = video(torch.zeros(1, 4, 8, 8, 8), 10, encoder_hidden_states=torch.zeros(8, 12, 16))
    assert out.sample.shape == (1, 4, 8, 8, 8)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="schedule 'cosine'"):
        ToyUNetConfig(schedule="cosine")


def test_latent_object_weights_cover_the_object():
    rec = {"objects": [{"x": 12.0, "y": 40.0, "r": 4.0, "motion": "right"}]}
    w = latent_object_weights([rec, {"objects": []}], n_frames=8, size=64, latent_size=16,
                              weight=8.0)
    assert w.shape == (2, 8, 1, 16, 16)
    assert np.all(w[1] == 1.0)                       # no object: plain MSE
    assert w[0, 0, 0, 10, 3] > 5 and w[0, 0, 0, 10, 12] == 1.0   # cell (y 40, x 12) vs far
    assert w[0, 7, 0, 10, 7] > 5 and w[0, 7, 0, 10, 3] == 1.0    # moved right by 18 px
    with pytest.raises(ValueError, match="tile"):
        latent_object_weights([rec], 8, 64, 12, 8.0)


def test_object_weighted_loss(render_data, tmp_path):
    """Uniform weights train exactly as plain MSE (the loss is normalised by the mean weight);
    weights that favour some cells train differently; bad weights are refused."""
    cfg = dataclasses.replace(CFG, steps=2)

    def train(name, weights):
        data = dataclasses.replace(render_data, weights=weights)
        out = train_render_model("unet", data, tmp_path / name, cfg, progress=False,
                                 threads=1, resume=False)
        return load_unet(out).state_dict()

    plain = train("plain", None)
    uniform = train("uniform", np.full((12, 8, 1, 8, 8), 3.0, np.float32))
    hot = np.ones((12, 8, 1, 8, 8), np.float32)
    hot[..., 2:4, 2:4] = 9.0
    weighted = train("hot", hot)
    for k in plain:
        torch.testing.assert_close(plain[k], uniform[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(plain[k], weighted[k], atol=1e-5) for k in plain)
    with pytest.raises(ValueError, match="object_weight -1"):
        ToyUNetConfig(object_weight=-1.0)


def test_low_timestep_share(render_data):
    """``low_t_fraction`` draws that share of a batch's timesteps below ``low_t_max``; at 0 the
    batch is exactly the uniform one (no extra draws), and bad values are refused."""
    sched = noise_scheduler(CFG.schedule)
    big = dataclasses.replace(CFG, batch_size=400)

    def timesteps(cfg):
        return _batch(render_data, render_data.train_ids, cfg, np.random.default_rng(5), False,
                      sched)[1].numpy()

    uniform = timesteps(big)
    assert np.array_equal(timesteps(dataclasses.replace(big, low_t_max=10)), uniform)
    assert (uniform < 100).mean() < 0.25
    assert timesteps(dataclasses.replace(big, low_t_fraction=1.0, low_t_max=100)).max() < 100
    half = timesteps(dataclasses.replace(big, low_t_fraction=0.5, low_t_max=100))
    assert 0.45 < (half < 100).mean() < 0.65          # half low, plus the uniform draws' 10 %
    assert half.max() >= 500                          # the rest still spans the range
    with pytest.raises(ValueError, match="low_t_fraction 1.5"):
        ToyUNetConfig(low_t_fraction=1.5)
    with pytest.raises(ValueError, match="low_t_max 0"):
        ToyUNetConfig(low_t_max=0)


def test_guidance_distillation_trains_on_the_guided_teacher(render_data, unet_dir, tmp_path):
    """The distilled UNet's first training loss is its (the teacher's) single pass against the
    teacher's guided prediction on that step's batch; the target is CFG as CVR samples it; a
    teacher is required and the scale must be > 1."""
    cfg = dataclasses.replace(CFG, steps=1, distill_guidance=4.0, cond_dropout=0.0)
    out = train_render_model("unet", render_data, tmp_path / "d", cfg, init_dir=unet_dir,
                             progress=False, threads=1, resume=False)
    teacher = load_unet(unet_dir)
    sched = noise_scheduler(cfg.schedule)
    zt, t, cond, _, _ = _batch(render_data, render_data.train_ids, cfg,
                               np.random.default_rng([cfg.seed, 1, 0]), False, sched)
    target = guided_prediction(teacher, zt, t, cond, 4.0)
    with torch.no_grad():
        c = teacher(zt, t, encoder_hidden_states=cond).sample
        u = teacher(zt, t, encoder_hidden_states=torch.zeros_like(cond)).sample
    torch.testing.assert_close(target, u + 4.0 * (c - u), rtol=1e-4, atol=1e-5)
    first_loss = float((out / "loss.csv").read_text().splitlines()[1].split(",")[1])
    assert first_loss == pytest.approx(float(((c - target) ** 2).mean()), rel=1e-3)
    assert render_meta(out, "unet")["metrics"]["distilled_guidance"] == 4.0
    with pytest.raises(ValueError, match="teacher"):
        train_render_model("unet", render_data, tmp_path / "e", cfg, progress=False,
                           resume=False)
    with pytest.raises(ValueError, match="distill_guidance 0.5"):
        ToyUNetConfig(distill_guidance=0.5)
