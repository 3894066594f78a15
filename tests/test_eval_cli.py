"""`rtdecode eval --json` on a tiny zoo: every decoder and ceiling, the documented shape, and
a checkpoint used on data it was not trained on is refused, naming what differs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rtdecode.cli import app
from rtdecode.config import DEFAULT_CONFIG, load_config
from rtdecode.data import load_session
from rtdecode.engine import provenance
from rtdecode.models.evaluate import CaptionTargets, LatentTargets
from rtdecode.models.mad import MADConfig
from rtdecode.models.sad import mlp_baseline, sad_preset
from rtdecode.models.train import TrainConfig, subject_windows, train_mad, train_sad
from rtdecode.zoo.clip import ToyClip, ToyClipConfig, build_model, load_stimuli, save_toy_clip
from rtdecode.zoo.vae import ToyVAE, ToyVAEConfig, build_vae, save_toy_vae

SUBJECT = "sub-03"


@pytest.fixture(scope="module")
def tiny_zoo(small_session, tmp_path_factory):
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
    frames, _ = load_stimuli(small_session)
    test = subject_windows(sess, cfg, "test")
    used = np.union1d(data[0].clip_ids, test.clip_ids)
    lt = LatentTargets(frames, sess.clips, ToyVAE(vae_model), clip, 4, ids=used)
    mad = MADConfig(subjects=vox, hidden=32, proj_rank=16, latent_shape=(4, 32, 32), patch=8,
                    width=16, heads=2, blocks=1, motion_tokens=4, token_dim=16)
    train_mad(data, lt, mad, tcfg, zoo / "mad", meta, progress=False)
    sad_levels = sad_preset("toy", vox, refine_width=16, refine_layers=1, refine_heads=2,
                            levels=("anchor", "holistic"), **small)
    train_sad(data, CaptionTargets(sess.clips, clip, 4, ("anchor", "holistic")), sad_levels,
              tcfg, zoo / "ablations" / "without_motion", meta, progress=False)
    return zoo


def test_eval_json_has_every_decoder_and_ceiling(small_session, tiny_zoo):
    res = CliRunner().invoke(app, ["eval", "--data", str(small_session), "--zoo",
                                   str(tiny_zoo), "--config", str(DEFAULT_CONFIG), "--trials",
                                   "10", "--ablations", str(tiny_zoo / "ablations"),
                                   "--steps-sweep", "0,2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for cond in ("single_trial", "averaged"):
        assert set(out[cond]) == {"sad", "ridge", "mlp", "oracle", "noise_free", "mad"}
        for dec in ("sad", "ridge", "mlp", "oracle", "noise_free"):
            r = out[cond][dec]
            assert 0.0 <= r["caption_2way"] <= 1.0 and 0.0 <= r["caption_50way"] <= 1.0
        assert set(out[cond]["mad"]) >= {"latent_mse", "latent_cosine", "frame_2way",
                                         "frame_50way"}
    # Only the subject the checkpoints know is evaluated.
    assert list(out["subjects"]) == [SUBJECT]
    levels = out["subjects"][SUBJECT]["levels"]
    assert set(levels) == {"sad", "without_motion"}
    assert set(levels["without_motion"]["single_trial"]) == {"anchor", "holistic", "all"}
    sweep = out["subjects"][SUBJECT]["steps_sweep"]
    assert [r["steps"] for r in sweep] == [0, 2] and sweep[1]["ms_per_tr_p50"] > 0
    # The oracle (likelihood under the simulator's own model) beats a barely trained SAD.
    assert out["single_trial"]["oracle"]["caption_50way"] > \
        out["single_trial"]["sad"]["caption_50way"]


def test_eval_refuses_a_checkpoint_from_other_data(small_session, tiny_zoo, tmp_path):
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, zoo)
    meta = json.loads((zoo / "sad" / "config.json").read_text())
    meta["trained_on"][SUBJECT]["lag_trs"] = 3
    (zoo / "sad" / "config.json").write_text(json.dumps(meta))
    res = CliRunner().invoke(app, ["eval", "--data", str(small_session), "--zoo", str(zoo),
                                   "--config", str(DEFAULT_CONFIG), "--no-oracle"])
    assert res.exit_code != 0
    assert "lag_trs" in res.output and "3" in res.output
