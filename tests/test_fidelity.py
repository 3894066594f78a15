"""The attribute probe that scores render fidelity: label mirroring, shapes, format, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtdecode.render.fidelity import (
    ATTRIBUTES,
    AttributeProbe,
    accuracy_by_value,
    blur,
    blur_frames,
    flip_permutation,
    fresh_clips,
    label_sets,
    load_probe,
    probe_accuracy,
    train_probe,
)
from rtdecode.simulator.stimuli import ATTRIBUTE_GROUPS, MOTIONS, POSITIONS, position_name
from rtdecode.zoo.clip import load_stimuli


@pytest.mark.parametrize("horizontal", [True, False])
def test_flip_permutation_matches_mirrored_positions(horizontal):
    size = 64
    perm = flip_permutation("position", horizontal)
    for x in np.linspace(2, 62, 13):
        for y in np.linspace(2, 62, 13):
            before = POSITIONS.index(position_name(x, y, size))
            mx, my = (size - x, y) if horizontal else (x, size - y)
            after = POSITIONS.index(position_name(mx, my, size))
            onehot = np.eye(len(POSITIONS))[before]
            assert onehot[perm].argmax() == after     # labels[:, perm] are the mirror's labels


def test_flip_permutation_motion_and_invariant_groups():
    h, v = flip_permutation("motion", True), flip_permutation("motion", False)
    name = {m: MOTIONS.index(m) for m in MOTIONS}
    assert MOTIONS[h[name["left"]]] == "right" and MOTIONS[h[name["up"]]] == "up"
    assert MOTIONS[v[name["up"]]] == "down" and MOTIONS[v[name["left"]]] == "left"
    assert MOTIONS[h[name["rotate"]]] == "rotate"
    for a in ("background", "colour", "shape"):
        assert list(flip_permutation(a, True)) == list(range(len(ATTRIBUTE_GROUPS[a])))


def test_mirrored_clip_has_mirrored_labels(small_session):
    """A clip mirrored left-right is the clip whose objects sit and move mirrored."""
    frames, records = load_stimuli(small_session)
    size = frames.shape[2]
    perm = flip_permutation("motion", True)
    for r in records[:40]:
        o = r["objects"][0]
        mirrored = dict(r, objects=[dict(o, x=size - o["x"])], attributes=dict(r["attributes"]))
        got = label_sets([mirrored], size)["position"][0]
        want = label_sets([dict(r, objects=[o])], size)["position"][0][
            flip_permutation("position", True)]
        assert (got == want).all()
        m = MOTIONS.index(o["motion"])
        assert MOTIONS[perm[m]] == {"left": "right", "right": "left"}.get(o["motion"],
                                                                          o["motion"])


def test_probe_shapes_and_frame_check():
    probe = AttributeProbe(width=4, image_size=32, frames=4).eval()
    x = torch.zeros(3, 4, 3, 32, 32)
    out = probe(x)
    assert set(out) == set(ATTRIBUTES)
    for a in ATTRIBUTES:
        assert out[a].shape == (3, len(ATTRIBUTE_GROUPS[a]))
    with pytest.raises(ValueError, match="clips of 5 frames"):
        probe(torch.zeros(1, 5, 3, 32, 32))


def test_probe_learns_background_and_roundtrips(small_session, tmp_path):
    frames, records = load_stimuli(small_session)
    probe = train_probe(frames, records, tmp_path / "probe", steps=60, batch_size=16, width=8,
                        progress=False)
    train = [r for r in records if r["split"] == "train"][:64]
    clips = np.asarray(frames[[r["clip_id"] for r in train]])
    acc = probe_accuracy(probe, clips, train)
    assert acc["background"] >= 0.6           # chance is 1/6
    again = probe_accuracy(load_probe(tmp_path / "probe"), clips, train)
    assert abs(again["background"] - acc["background"]) <= 2 / len(train)   # fp16 weights


def test_load_probe_rejects_other_format(tmp_path, small_session):
    frames, records = load_stimuli(small_session)
    train_probe(frames, records, tmp_path, steps=1, batch_size=4, width=4, progress=False)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["format"] = "rtdecode-attribute-probe/1"
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="retrain"):
        load_probe(tmp_path)


def test_accuracy_by_value_counts_single_object_clips():
    shapes = ATTRIBUTE_GROUPS["shape"]
    a, b = shapes[0], shapes[1]
    one = [{"objects": [{"shape": a}]}, {"objects": [{"shape": a}]}, {"objects": [{"shape": b}]},
           {"objects": [{"shape": a}, {"shape": b}]}]          # two objects: not counted
    preds = np.array([shapes.index(a), shapes.index(b), shapes.index(b), shapes.index(a)])
    got = accuracy_by_value(preds, one, "shape")
    assert got == {a: {"clips": 2, "accuracy": 0.5}, b: {"clips": 1, "accuracy": 1.0}}
    with pytest.raises(ValueError, match="position"):
        accuracy_by_value(preds, one, "position")


def test_blur_spreads_a_point_and_keeps_its_mass():
    x = torch.zeros(1, 3, 21, 21)
    x[0, :, 10, 10] = 1.0
    assert torch.equal(blur(x, 0.0), x)
    y = blur(x, 1.0)
    assert y.shape == x.shape
    assert y[0, 0, 10, 10] < 0.25 and y[0, 0, 10, 11] > 0.05     # spread to the neighbours
    assert torch.allclose(y.sum(dim=(2, 3)), torch.ones(1, 3), atol=1e-4)
    assert blur(x, 2.0)[0, 0, 10, 10] < y[0, 0, 10, 10]           # wider, flatter
    with pytest.raises(ValueError, match="-1"):
        blur(x, -1.0)


def test_blur_frames_is_uint8_in_uint8_out():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    out = blur_frames(frames, 1.0)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    assert out.std() < frames.std()                               # smoother
    assert np.array_equal(blur_frames(frames, 0.0), frames)
    with pytest.raises(ValueError, match="float"):
        blur_frames(frames.astype(np.float32), 1.0)


def test_probe_augmentation_is_recorded_and_changes_training(small_session, tmp_path):
    frames, records = load_stimuli(small_session)
    kw = dict(steps=3, batch_size=4, width=4, progress=False)
    plain = train_probe(frames, records, tmp_path / "a", **kw)
    again = train_probe(frames, records, tmp_path / "b", **kw)
    aug = train_probe(frames, records, tmp_path / "c", max_blur=1.5, max_noise=0.05, **kw)
    same = [torch.equal(p, q) for p, q in zip(plain.parameters(), again.parameters())]
    assert all(same)                                              # deterministic per seed
    assert not all(torch.equal(p, q) for p, q in zip(plain.parameters(), aug.parameters()))
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    assert meta["augment"] == {"max_blur": 1.5, "max_noise": 0.05, "fresh": 0.0}
    load_probe(tmp_path / "c")                                    # same format, loads
    with pytest.raises(ValueError, match="max_blur"):
        train_probe(frames, records, tmp_path / "d", max_blur=float("nan"), **kw)


def test_probe_through_the_vae(small_session, tmp_path):
    """`train probe --through-vae`: the chosen share of single frames is replaced by its
    VAE round trip (exactly that, without latent noise); the VAE is recorded; bad shares are
    refused."""
    from rtdecode.render.fidelity import _through_vae
    from rtdecode.zoo.vae import ToyVAE, ToyVAEConfig, build_vae

    torch.manual_seed(0)
    vae = ToyVAE(build_vae(ToyVAEConfig(block_out_channels=(8, 8), norm_num_groups=4)), 0.5)
    frames, records = load_stimuli(small_session)
    x = torch.from_numpy(np.array(frames[:3, 0])).permute(0, 3, 1, 2).float() / 127.5 - 1
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    assert torch.equal(_through_vae(x, vae, rng(), 0.0, 0.5), x)
    with torch.no_grad():
        trip = vae.decoder_graph()(vae.model.encode(x).latent_dist.mean * 0.5)
    assert torch.allclose(_through_vae(x, vae, rng(), 1.0, 0.0), trip, atol=1e-6)
    noisy = _through_vae(x, vae, rng(), 1.0, 0.5)
    assert noisy.shape == x.shape and not torch.allclose(noisy, trip, atol=1e-3)

    kw = dict(steps=3, batch_size=4, width=4, progress=False)
    plain = train_probe(frames, records, tmp_path / "a", **kw)
    seen = train_probe(frames, records, tmp_path / "b", vae=vae, vae_fraction=1.0, **kw)
    assert not all(torch.equal(p, q) for p, q in zip(plain.parameters(), seen.parameters()))
    meta = json.loads((tmp_path / "b" / "config.json").read_text())["augment"]
    assert meta["vae_fraction"] == 1.0 and meta["vae"]["latent_shape"] == [4, 32, 32]
    with pytest.raises(ValueError, match="vae_fraction 1.5"):
        train_probe(frames, records, tmp_path / "c", vae=vae, vae_fraction=1.5, **kw)


def test_fresh_clips_are_labelled_as_the_session_labels_its_own(small_session):
    """Clips drawn anew carry the records a session writes for the same specs: re-drawing
    the session's own film with its seed gives its frames and labels back."""
    from rtdecode.simulator.session import stimulus_config
    from rtdecode.simulator.stimuli import StimulusConfig, generate_clips, render_clip

    cfg = stimulus_config(small_session)
    assert isinstance(cfg, StimulusConfig) and isinstance(cfg.scene_clips, tuple)
    frames, recs = fresh_clips(12, np.random.default_rng(5), cfg)
    assert frames.dtype == np.uint8 and frames.shape == (12, cfg.frames_per_clip, cfg.size,
                                                         cfg.size, 3)
    specs = generate_clips(12, np.random.default_rng(5), cfg)
    for f, r, spec in zip(frames, recs, specs):
        assert np.array_equal(f, render_clip(spec, cfg))
        assert r["attributes"] == spec.attributes()
        assert [o["shape"] for o in r["objects"]] == [o.shape for o in spec.objects]
        assert [o["motion"] for o in r["objects"]] == spec.motions
    sets = label_sets(recs, cfg.size)
    assert all(m.shape[0] == 12 and (m.sum(axis=1) >= 1).all() for m in sets.values())
    _, session_records = load_stimuli(small_session)
    assert set(session_records[0]["objects"][0]) == set(recs[0]["objects"][0])


def test_probe_on_fresh_clips(small_session, tmp_path):
    """`train probe --fresh F`: that share of every batch is drawn anew (training differs,
    the share is recorded); bad shares and a stimulus config of other frames are refused."""
    from rtdecode.simulator.session import stimulus_config
    from rtdecode.simulator.stimuli import StimulusConfig

    frames, records = load_stimuli(small_session)
    cfg = stimulus_config(small_session)
    kw = dict(steps=3, batch_size=4, width=4, progress=False)
    plain = train_probe(frames, records, tmp_path / "a", **kw)
    half = train_probe(frames, records, tmp_path / "b", fresh=0.5, stimulus=cfg, **kw)
    again = train_probe(frames, records, tmp_path / "c", fresh=0.5, stimulus=cfg, **kw)
    assert not all(torch.equal(p, q) for p, q in zip(plain.parameters(), half.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(half.parameters(), again.parameters()))
    assert json.loads((tmp_path / "b" / "config.json").read_text())["augment"]["fresh"] == 0.5
    # only fresh clips: the session's training clips are not needed
    train_probe(frames, [r for r in records if r["split"] == "test"], tmp_path / "d",
                fresh=1.0, stimulus=cfg, **kw)
    with pytest.raises(ValueError, match="fresh 1.5"):
        train_probe(frames, records, tmp_path / "e", fresh=1.5, **kw)
    with pytest.raises(ValueError, match="draws 4 frames"):
        train_probe(frames, records, tmp_path / "f", fresh=0.5,
                    stimulus=StimulusConfig(frames_per_clip=4), **kw)


def test_stimulus_config_names_a_missing_session(tmp_path):
    from rtdecode.simulator.session import stimulus_config

    with pytest.raises(FileNotFoundError, match="simulation.json"):
        stimulus_config(tmp_path)
    (tmp_path / "simulation.json").write_text(json.dumps({"config": {"stimulus": {
        "size": 64, "fps": 3}}}))
    with pytest.raises(ValueError, match="fps"):
        stimulus_config(tmp_path)


def test_deeper_what_stack_sees_wider_and_round_trips(small_session, tmp_path):
    """`--what-depth 6`: one more strided layer in the shape/colour/background stack; the
    depth is saved and loaded back; probes saved without it load as depth 5."""
    deep, plain = AttributeProbe(4, 32, 4, what_depth=6), AttributeProbe(4, 32, 4)
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in p.what_body) for p in (deep, plain)]
    assert convs == [6, 5]
    assert deep(torch.zeros(2, 4, 3, 32, 32))["shape"].shape == (2, len(ATTRIBUTE_GROUPS["shape"]))
    with pytest.raises(ValueError, match="what_depth 7"):
        AttributeProbe(4, 32, 4, what_depth=7)
    frames, records = load_stimuli(small_session)
    kw = dict(steps=2, batch_size=4, width=4, progress=False)
    trained = train_probe(frames, records, tmp_path / "d", what_depth=6, **kw)
    meta = json.loads((tmp_path / "d" / "config.json").read_text())
    assert meta["what_depth"] == 6
    loaded = load_probe(tmp_path / "d")
    assert loaded.what_depth == 6
    x = torch.from_numpy(np.array(frames[:2])).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.allclose(loaded(x)["shape"], trained.eval()(x)["shape"], atol=0.05)
    train_probe(frames, records, tmp_path / "p", **kw)
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    del meta["what_depth"]                          # as probes saved before the option
    (tmp_path / "p" / "config.json").write_text(json.dumps(meta))
    assert load_probe(tmp_path / "p").what_depth == 5


def test_train_probe_command_records_the_recipe(small_session, tmp_path):
    """`rtdecode train probe`: the defaults' fresh clips and deeper stack, recorded; a bad
    share is one clear line."""
    from typer.testing import CliRunner

    from rtdecode.cli import app

    out = tmp_path / "probe"
    r = CliRunner().invoke(app, ["train", "probe", "--data", str(small_session), "--out",
                                 str(out), "--steps", "2", "--width", "4", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "accuracy on the true test clips" in r.output
    meta = json.loads((out / "config.json").read_text())
    assert meta["what_depth"] == 6 and meta["augment"]["fresh"] == 1.0
    r = CliRunner().invoke(app, ["train", "probe", "--data", str(small_session), "--out",
                                 str(tmp_path / "bad"), "--steps", "2", "--fresh", "2"])
    assert r.exit_code == 2 and "fresh 2" in r.output
