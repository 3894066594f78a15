"""The toy VAE and MAD: shapes, training that learns, resume, checkpoints (tiny, seeded)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from rtdecode.config import Config
from rtdecode.data import load_session
from rtdecode.models.evaluate import LatentTargets, decode_mad, latent_scores
from rtdecode.models.mad import MAD, MADConfig
from rtdecode.models.train import TrainConfig, load_checkpoint, subject_windows, train_mad
from rtdecode.zoo.clip import ToyClip, ToyClipConfig, build_model, load_stimuli
from rtdecode.zoo.vae import (
    ToyVAE,
    ToyVAEConfig,
    build_vae,
    finetune_decoder,
    load_toy_vae,
    train_vae,
)

TINY_VAE = ToyVAEConfig(block_out_channels=(16, 16), norm_num_groups=8, batch_size=4, steps=4,
                        warmup_steps=1, checkpoint_every=2, val_frames=4)


def tiny_mad_cfg(n_voxels: int, **kw) -> MADConfig:
    return MADConfig(subjects={"sub-01": n_voxels}, hidden=32, proj_rank=16, n_frames=8,
                     latent_shape=(4, 32, 32), patch=8, width=16, heads=2, blocks=1,
                     motion_tokens=4, token_dim=16, **kw)


def test_mad_shapes_and_tri_path_ablation():
    torch.manual_seed(0)
    x = torch.randn(3, 50)
    motion = torch.randn(3, 4, 16)
    for use_cross in (True, False):
        m = MAD(tiny_mad_cfg(50, use_cross=use_cross)).eval()
        z = m(x, "sub-01", motion)
        assert z.shape == (3, 8, 4, 32, 32)
        assert torch.isfinite(z).all()
    # The cross path is live: other motion semantics give other latents.
    m = MAD(tiny_mad_cfg(50)).eval()
    assert not torch.allclose(m(x, "sub-01", motion), m(x, "sub-01", motion + 1.0))
    with pytest.raises(KeyError, match="sub-09"):
        m(x, "sub-09", motion)
    with pytest.raises(ValueError, match="divisible"):
        MADConfig(subjects={"a": 5}, latent_shape=(4, 10, 10), patch=4)


def test_mad_unpatchify_inverts_patching():
    m = MAD(tiny_mad_cfg(10))
    c = m.cfg
    z = torch.randn(2, c.n_frames, *c.latent_shape)
    C, H, W = c.latent_shape
    p = c.patch
    tok = z.view(2, c.n_frames, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4, 6)
    assert torch.equal(m._unpatchify(tok.reshape(2, c.n_frames, -1, c.patch_dim)), z)


def test_toy_vae_trains_resumes_and_round_trips(small_session, tmp_path):
    # 4 steps straight equal 2 steps + resume to 4 (batches are a function of seed and step).
    a = train_vae(small_session, tmp_path / "a", TINY_VAE, progress=False, threads=1)
    half = dataclasses.replace(TINY_VAE)
    train_vae(small_session, tmp_path / "b", half, progress=False, threads=1,
              max_minutes=0.0)  # stops after the first step, with a checkpoint
    b = train_vae(small_session, tmp_path / "b", TINY_VAE, progress=False, threads=1)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    frames, _ = load_stimuli(small_session)
    z = a.encode(np.asarray(frames[:2]))
    assert z.shape == (2, 8, 4, 32, 32) and z.dtype == np.float32
    rec = a.decode(z)
    assert rec.shape == (2, 8, 64, 64, 3) and rec.dtype == np.uint8
    loaded = load_toy_vae(tmp_path / "a")
    assert np.array_equal(loaded.encode(np.asarray(frames[:2])), z)
    assert loaded.scaling_factor == pytest.approx(a.scaling_factor)
    rows = (tmp_path / "a" / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 5
    with pytest.raises(FileNotFoundError, match="train vae"):
        load_toy_vae(tmp_path / "nothing")


def test_decoder_finetune_keeps_the_latent_space(small_session, tmp_path):
    """`train vae-decoder`: the decoder (fine-tuned, or new and wider) changes, the encoder and
    scaling factor do not, so every latent MAD and the UNet learnt means the same."""
    base = train_vae(small_session, tmp_path / "vae", TINY_VAE, progress=False, threads=1)
    frames, _ = load_stimuli(small_session)
    clip = np.asarray(frames[:1])
    z = base.encode(clip)
    for name, chans in (("tuned", None), ("wide", (8, 16))):
        out = finetune_decoder(small_session, tmp_path / "vae", tmp_path / name, steps=2,
                               lr=1e-2, object_weight=4.0, progress=False, threads=1,
                               decoder_channels=chans, warmup_steps=1 if chans else 0)
        loaded = load_toy_vae(tmp_path / name)
        assert np.array_equal(loaded.encode(clip), z)
        assert loaded.scaling_factor == base.scaling_factor
        dec = {k: v for k, v in loaded.model.state_dict().items() if k.startswith("decoder.")}
        old = {k: v for k, v in base.model.state_dict().items() if k.startswith("decoder.")}
        if chans is None:
            assert dec.keys() == old.keys()
            assert any(not torch.equal(dec[k], old[k]) for k in dec)
        else:
            assert loaded.model.decoder.conv_in.out_channels == 16  # the deepest level's
            meta = json.loads((tmp_path / name / "config.json").read_text())
            assert ToyVAEConfig.from_dict(meta["train"]).decoder_channels == (8, 16)
        rec = out.decode(z)
        assert rec.shape == clip.shape and rec.dtype == np.uint8
        np.testing.assert_array_equal(loaded.decode(z), rec)
    with pytest.raises(ValueError, match=r"decoder_channels \(8,\)"):
        dataclasses.replace(TINY_VAE, decoder_channels=(8,))


def test_mad_learns_and_checkpoint_round_trip(small_session, tmp_path):
    torch.manual_seed(0)
    sess = load_session(small_session, "sub-01")
    ccfg = dataclasses.replace(ToyClipConfig(), embed_dim=16, vision_width=16, text_width=16,
                               vision_head_width=16,
                               text_layers=1, vision_layers=(1,), text_heads=2)
    clip = ToyClip(build_model(ccfg), ccfg)
    vae = ToyVAE(build_vae(TINY_VAE), 1.0)
    frames, _ = load_stimuli(small_session)
    data = [subject_windows(sess, Config(), "train", 0.25)]
    test = subject_windows(sess, Config(), "test")
    used = np.union1d(data[0].clip_ids, test.clip_ids)
    targets = LatentTargets(frames, sess.clips, vae, clip, n_tokens=4, ids=used)
    cfg = tiny_mad_cfg(sess.n_voxels)
    summary = train_mad(data, targets, cfg, TrainConfig(epochs=4, batch_size=32, lr=3e-3,
                                                          threads=1),
                        tmp_path / "mad", progress=False)
    rows = (tmp_path / "mad" / "loss.csv").read_text().splitlines()
    first = dict(zip(rows[0].split(","), rows[1].split(",")))
    assert summary["best_val_error"] < float(first["val_error"])
    model, meta = load_checkpoint(tmp_path / "mad")
    assert isinstance(model, MAD) and meta["mad"]["latent_shape"] == [4, 32, 32]
    motion = targets(test.clip_ids)["motion"]
    pred = decode_mad(model, test, motion)
    assert pred.shape == (len(test.X), 8, 4, 32, 32)
    scores = latent_scores(pred, test.clip_ids, targets, trials=10)
    assert set(scores) == {"latent_mse", "latent_cosine", "frame_2way", "frame_50way"}
    assert 0.0 <= scores["frame_2way"] <= 1.0
    # Exact round trip: the saved weights decode exactly what the trained model decodes.
    again, _ = load_checkpoint(tmp_path / "mad")
    assert np.array_equal(decode_mad(again, test, motion), pred)
