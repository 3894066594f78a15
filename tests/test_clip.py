"""The toy CLIP: encoders, seeding, training, save/load and resume, on a tiny model."""

from __future__ import annotations

import csv
import dataclasses
import json
import socket

import numpy as np
import pytest
import torch

from rtdecode import simulator
from rtdecode.zoo.clip import (
    ToyClip,
    ToyClipConfig,
    build_model,
    load_toy_clip,
    make_tokenizer,
    save_toy_clip,
    train_clip,
)

TEXTS = ["a small red circle in the top left on a navy plain background",
         "the blue square slides left", "a new scene opens"]
TINY = ToyClipConfig(embed_dim=32, vision="resnet", vision_layers=(1, 1, 1, 1), vision_width=8,
                     vision_head_width=16, text_width=32, text_heads=2, text_layers=1,
                     batch_size=48, lr=2e-3, warmup_steps=2, steps=8, checkpoint_every=4)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip_session")
    simulator.simulate(out, simulator.preset("small", n_subjects=1), progress=False)
    return out


@pytest.fixture(scope="module")
def trained(session, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip_run")
    return train_clip(session, out, TINY, progress=False, resume=False), out


def _frames(session) -> np.ndarray:
    return np.load(session / "stimuli" / "frames.npy", mmap_mode="r")


def test_encoder_shapes(session):
    clip = ToyClip(build_model(TINY), TINY)
    frames = np.asarray(_frames(session)[:3])
    assert clip.encode_text(TEXTS).shape == (3, 32)
    assert clip.encode_text_tokens(TEXTS).shape == (3, 77, 32)
    img = clip.encode_image(frames[:, 0])
    vid = clip.encode_video(frames)
    assert img.shape == vid.shape == (3, 32)
    for e in (img, vid, clip.encode_text(TEXTS)):
        assert e.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert clip.encode_text([]).shape == (0, 32)
    with pytest.raises(ValueError, match="uint8"):
        clip.encode_image(frames[:, 0].astype(np.float32))


def test_pooled_text_matches_open_clip():
    clip = ToyClip(build_model(TINY), TINY)
    with torch.no_grad():
        ref = clip.model.encode_text(clip.tokenize(TEXTS), normalize=True).numpy()
    np.testing.assert_allclose(clip.encode_text(TEXTS), ref, atol=1e-5)


def test_seeded_build_is_deterministic():
    a = ToyClip(build_model(TINY), TINY).encode_text(TEXTS)
    b = ToyClip(build_model(TINY), TINY).encode_text(TEXTS)
    c = ToyClip(build_model(dataclasses.replace(TINY, seed=1)), TINY).encode_text(TEXTS)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown"):
        ToyClipConfig.from_dict({**TINY.to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="vision_layers"):
        ToyClipConfig(vision="resnet", vision_layers=(2,))
    assert ToyClipConfig.from_dict(TINY.to_dict()) == TINY


def test_training_lowers_loss_and_writes_outputs(trained):
    _, out = trained
    with open(out / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, TINY.steps + 1))
    loss = np.array([float(r["loss"]) for r in rows])
    assert loss[-3:].mean() < loss[:3].mean()
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    assert final["step"] == TINY.steps and 0 <= final["t2i_top1"] <= final["t2i_top5"] <= 1
    assert {"shape", "colour", "background"} <= set(final["zero_shot"])
    assert len(metrics["history"]) == 2  # each epoch (5 steps of 48 clips) and the end


def test_save_load_round_trip(trained, session, tmp_path):
    clip, _ = trained
    frames = np.asarray(_frames(session)[:4, 3])
    for fp16, atol in ((False, 0.0), (True, 2e-2)):
        path = save_toy_clip(clip.model, clip.cfg, tmp_path / str(fp16), fp16=fp16)
        loaded = load_toy_clip(path.parent)
        assert next(loaded.model.parameters()).dtype == torch.float32
        for enc, x in ((ToyClip.encode_text, TEXTS), (ToyClip.encode_text_tokens, TEXTS),
                       (ToyClip.encode_image, frames)):
            np.testing.assert_allclose(enc(loaded, x), enc(clip, x), atol=atol, rtol=0)
    small = (tmp_path / "True" / "clip.safetensors").stat().st_size
    assert small < (tmp_path / "False" / "clip.safetensors").stat().st_size
    assert small < 1_000_000  # untrained token rows are zero and not stored


def test_resume_continues_from_saved_step(trained, session, tmp_path):
    full, _ = trained
    # max_minutes=0 stops after one step, with a checkpoint; resuming finishes the run.
    train_clip(session, tmp_path, TINY, progress=False, max_minutes=0.0)
    assert torch.load(tmp_path / "train_state.pt", weights_only=False)["step"] == 1
    resumed = train_clip(session, tmp_path, TINY, progress=False, resume=True)
    assert torch.load(tmp_path / "train_state.pt", weights_only=False)["step"] == TINY.steps
    with open(tmp_path / "loss.csv") as f:
        assert len(list(csv.DictReader(f))) == TINY.steps
    np.testing.assert_allclose(resumed.encode_text(TEXTS), full.encode_text(TEXTS), atol=1e-4)
    with pytest.raises(ValueError, match="config differs"):
        train_clip(session, tmp_path, dataclasses.replace(TINY, lr=1e-3), progress=False)


def test_tokenizer_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    make_tokenizer.cache_clear()  # build it afresh with the network off
    tok = make_tokenizer()(TEXTS)
    assert tok.shape == (3, 77) and tok.dtype == torch.long
    assert int(tok[0].argmax()) < 20  # end-of-text token well inside the context
