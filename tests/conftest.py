"""Shared fixtures: tiny seeded simulated sessions written once per test session."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rtdecode.config import DEFAULT_CONFIG, load_config
from rtdecode.data import load_session
from rtdecode.engine import provenance
from rtdecode.models.evaluate import CaptionTargets, LatentTargets
from rtdecode.models.mad import MADConfig
from rtdecode.models.sad import mlp_baseline, sad_preset
from rtdecode.models.train import TrainConfig, subject_windows, train_mad, train_sad
from rtdecode.simulator import DesignConfig, preset, simulate
from rtdecode.zoo.clip import ToyClip, ToyClipConfig, build_model, load_stimuli, save_toy_clip
from rtdecode.zoo.vae import ToyVAE, ToyVAEConfig, build_vae, save_toy_vae


def tiny_config(seed: int = 0, tr: float = 2.0, n_subjects: int = 1, train_clips: int = 24,
                **noise):
    """A simulation that takes well under a second: 1 subject, a few hundred voxels."""
    cfg = preset("small", seed=seed, n_subjects=n_subjects, tr=tr)
    cfg = dataclasses.replace(cfg, voxel_counts=(300, 380, 250),
                              design=DesignConfig(n_train_runs=1, train_clips_per_run=train_clips,
                                                  n_test_segments=1, test_clips_per_segment=10,
                                                  test_repeats=2))
    if noise:
        cfg = dataclasses.replace(cfg, noise=dataclasses.replace(cfg.noise, **noise))
    return cfg


@pytest.fixture(scope="session")
def small_cfg():
    return preset("small", seed=0)


@pytest.fixture(scope="session")
def small_session(tmp_path_factory, small_cfg):
    """The `small` preset (3 subjects), simulated once for the whole test run."""
    out = tmp_path_factory.mktemp("small")
    simulate(out, small_cfg, progress=False)
    return out


SUBJECT = "sub-03"




@pytest.fixture(scope="session")
def tiny_zoo(small_session, tmp_path_factory):
    """A tiny seeded zoo trained on the small session's sub-03: every model rtdecode ships."""
    torch.manual_seed(0)
    zoo = tmp_path_factory.mktemp("zoo")
    ccfg = dataclasses.replace(ToyClipConfig(), embed_dim=16, vision_width=16, text_width=16,
                               vision_head_width=16, text_layers=1, vision_layers=(1,),
                               text_heads=2)
    model = build_model(ccfg)
    save_toy_clip(model, ccfg, zoo / "clip")
    clip = ToyClip(model, ccfg)
    vcfg = ToyVAEConfig(block_out_channels=(16, 16), norm_num_groups=8)
    vae_model = build_vae(vcfg)
    save_toy_vae(vae_model, vcfg, zoo / "vae", scaling_factor=1.0)
    cfg = load_config(DEFAULT_CONFIG)
    sess = load_session(small_session, SUBJECT)
    meta = {"trained_on": {SUBJECT: provenance(sess, cfg)}}
    targets = CaptionTargets(sess.clips, clip, n_tokens=4)
    tcfg = TrainConfig(epochs=1, threads=1)
    small = dict(hidden=32, proj_rank=16, n_tokens=4, token_dim=16)
    vox = {SUBJECT: sess.n_voxels}
    data = [subject_windows(sess, cfg, "train", 0.25)]
    sad = sad_preset("toy", vox, refine_width=16, refine_layers=1, refine_heads=2, **small)
    train_sad(data, targets, sad, tcfg, zoo / "sad", meta, progress=False)
    train_sad(data, targets, mlp_baseline(vox, **small), tcfg, zoo / "mlp", meta,
              progress=False)
    nf = [subject_windows(sess, cfg, "train", 0.25, noise_free=True)]
    train_sad(nf, targets, sad, tcfg, zoo / "noise_free", meta, progress=False)
    frames, records = load_stimuli(small_session)
    test = subject_windows(sess, cfg, "test")
    used = np.union1d(data[0].clip_ids, test.clip_ids)
    lt = LatentTargets(frames, sess.clips, ToyVAE(vae_model), clip, 4, ids=used)
    mad = MADConfig(subjects=vox, hidden=32, proj_rank=16, latent_shape=(4, 32, 32), patch=8,
                    width=16, heads=2, blocks=1, motion_tokens=4, token_dim=16)
    train_mad(data, lt, mad, tcfg, zoo / "mad", meta, progress=False)
    # the attribute captioner's decoder: the ridge on the scene attributes
    from rtdecode.ridge import train_model

    train_model(sess, cfg).save(zoo / "attributes")
    sad_levels = sad_preset("toy", vox, refine_width=16, refine_layers=1, refine_heads=2,
                            levels=("anchor", "holistic"), **small)
    train_sad(data, CaptionTargets(sess.clips, clip, 4, ("anchor", "holistic")), sad_levels,
              tcfg, zoo / "ablations" / "without_motion", meta, progress=False)
    # the renderer's half: UNet and motion module on the VAE's latents, the SAD token layout
    from rtdecode.render.fidelity import train_probe
    from rtdecode.zoo.unet import ToyUNetConfig, build_motion_adapter, build_unet, save_render_model

    ucfg = ToyUNetConfig(block_out_channels=(16, 32), norm_num_groups=4, attention_head_dim=2,
                         n_tokens=4)
    lat = (4, 32, 32)
    save_render_model("unet", build_unet(ucfg, 4, 32, 16), ucfg, zoo / "unet",
                      cond_shape=(12, 16), latent_shape=lat)
    save_render_model("motion", build_motion_adapter(ucfg), ucfg, zoo / "motion",
                      cond_shape=(12, 16), latent_shape=lat)
    train_probe(frames, records, zoo / "probe", steps=2,
                batch_size=4, width=4, progress=False)
    return zoo
