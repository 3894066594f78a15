"""Caption identification of SAD / MLP / ridge on the same CLIP targets (tiny, seeded)."""

from __future__ import annotations

import dataclasses

import torch

from rtdecode.config import Config
from rtdecode.data import load_session
from rtdecode.models.evaluate import CaptionTargets, evaluate_subject
from rtdecode.models.sad import mlp_baseline, sad_preset
from rtdecode.models.train import TrainConfig, load_checkpoint, subject_windows, train_sad
from rtdecode.zoo.clip import ToyClip, ToyClipConfig, build_model


def test_eval_reports_sad_mlp_and_ridge(small_session, tmp_path):
    torch.manual_seed(0)
    ccfg = dataclasses.replace(ToyClipConfig(), embed_dim=32, vision_width=32, text_width=32,
                               text_layers=1, vision_layers=(1,), text_heads=2)
    clip = ToyClip(build_model(ccfg), ccfg)  # untrained: a fixed random text encoder
    sess = load_session(small_session, "sub-03")
    cfg = Config()
    targets = CaptionTargets(sess.clips, clip, n_tokens=8)
    assert targets(sess.runs[0].clip_ids[:3]).shape == (3, 3, 8, 32)
    data = [subject_windows(sess, cfg, "train", 0.25)]
    small = dict(hidden=32, n_tokens=8, token_dim=32)
    tcfg = TrainConfig(epochs=2, batch_size=64, threads=1)
    train_sad(data, targets, sad_preset("toy", {"sub-03": sess.n_voxels}, refine_width=16,
                                        refine_layers=1, refine_heads=2, **small),
              tcfg, tmp_path / "sad", progress=False)
    train_sad(data, targets, mlp_baseline({"sub-03": sess.n_voxels}, **small), tcfg,
              tmp_path / "mlp", progress=False)
    models = {"sad": load_checkpoint(tmp_path / "sad")[0],
              "mlp": load_checkpoint(tmp_path / "mlp")[0]}
    rep = evaluate_subject(sess, cfg, targets, models, steps=2, trials=20)
    for cond in ("single_trial", "averaged"):
        assert set(rep[cond]) == {"ridge", "sad", "mlp"}
        for r in rep[cond].values():
            assert 0.0 <= r["caption_2way"] <= 1.0 and 0.0 <= r["caption_50way"] <= 1.0
    assert rep["single_trial"]["ridge"]["n_decoded"] == 240
    assert rep["averaged"]["ridge"]["n_decoded"] == 60
    # Seeded end to end: the same evaluation twice gives the same figures.
    again = evaluate_subject(sess, cfg, targets, models, steps=2, trials=20)
    assert again["averaged"]["sad"] == rep["averaged"]["sad"]
