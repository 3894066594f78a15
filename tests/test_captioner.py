"""The attribute captioner: decoded scene attributes worded as captions at the SemMiner
levels and encoded into the renderer's conditioning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rtdecode.engine import CaptionBank, DecoderModel, RidgeEngine
from rtdecode.render.captioner import AttributeCaptioner
from rtdecode.simulator.stimuli import (
    ATTRIBUTE_GROUPS,
    attribute_onehot,
    attribute_slices,
    caption_attributes,
)
from rtdecode.zoo.clip import ToyClip, ToyClipConfig, build_model

ATTRS = {"background": "navy", "texture": "stripes", "shape": "star", "colour": "orange",
         "motion": "left", "position": "top right", "size": "large", "n_objects": "one"}
LEVELS = ("anchor", "motion", "holistic")


@pytest.fixture(scope="module")
def clip():
    cfg = dataclasses.replace(ToyClipConfig(), embed_dim=16, vision_width=16, text_width=16,
                              vision_head_width=16, text_layers=1, vision_layers=(1,),
                              text_heads=2)
    return ToyClip(build_model(cfg), cfg)


def identity_decoder(targets: str = "attributes") -> DecoderModel:
    """A ridge model whose scores are its inputs: one input per attribute value."""
    dim = sum(len(v) for v in ATTRIBUTE_GROUPS.values())
    engine = RidgeEngine(np.eye(dim, dtype=np.float32), np.zeros(dim, np.float32))
    bank = CaptionBank(np.eye(dim, dtype=np.float32)[:2], [{"clip_id": 0}, {"clip_id": 1}])
    return DecoderModel(engine, bank, None, {"kind": "ridge", "targets": targets})


def test_caption_attributes_words_every_attribute():
    caps = caption_attributes(ATTRS, np.random.default_rng(0))
    assert set(caps) == {"basic", "anchor", "motion", "holistic"}
    assert caps["basic"] == "orange star left on navy stripes background"
    for level in ("anchor", "holistic"):
        assert "orange star" in caps[level] and "navy" in caps[level]
    assert "top right" in caps["anchor"]
    assert "the orange star" in caps["motion"]
    # the wording varies with the seed; the scene it names does not
    other = [caption_attributes(ATTRS, np.random.default_rng(s))["anchor"] for s in range(8)]
    assert len(set(other)) > 1 and all("orange star" in a for a in other)


def test_caption_attributes_names_bad_values():
    with pytest.raises(ValueError, match=r"colour='teal'.*position=None"):
        caption_attributes({**{k: v for k, v in ATTRS.items() if k != "position"},
                            "colour": "teal"}, np.random.default_rng(0))


def test_captioner_reads_words_and_encodes_the_attributes(clip):
    cap = AttributeCaptioner(identity_decoder(), clip, LEVELS, 4)
    other = {**ATTRS, "colour": "cyan", "shape": "circle", "background": "maroon"}
    x = np.stack([attribute_onehot(ATTRS), attribute_onehot(other)])
    x[:, attribute_slices()["colour"]] *= 3.0  # scores, not one-hots: argmax per group
    assert cap.attributes(x) == [ATTRS, other]
    tok, caps = cap(x, [0, 1])
    assert tok.shape == (2, 3, 4, 16) and tok.dtype == np.float32
    assert caps[0]["attributes"] == ATTRS and "cyan circle" in caps[1]["anchor"]
    # the token states are the toy CLIP's of the composed captions, level by level
    from rtdecode.zoo.unet import encode_conditions

    want = encode_conditions(clip, caps, 4, LEVELS).reshape(2, 3, 4, 16)
    np.testing.assert_allclose(tok, want)
    assert not np.allclose(tok[0], tok[1])
    with pytest.raises(ValueError, match="2 windows but 1 seeds"):
        cap.captions(x, [0])


def test_captioner_refuses_a_decoder_of_other_targets(clip):
    with pytest.raises(ValueError, match="targets 'captions'.*want 'attributes'"):
        AttributeCaptioner(identity_decoder("captions"), clip, LEVELS, 4)


def test_zoo_decoder_reads_the_attributes_and_packs(tiny_zoo, small_session, tmp_path):
    """The tiny zoo's attributes/ (the ridge on the scene attributes): the captioner loads it
    beside the zoo's CLIP, names the training clips' attributes above chance, and `zoo pack`
    carries it over unchanged."""
    from rtdecode.config import DEFAULT_CONFIG, load_config
    from rtdecode.data import load_session
    from rtdecode.models.train import subject_windows
    from rtdecode.zoo.pack import pack_zoo

    cap = AttributeCaptioner.from_zoo(tiny_zoo, LEVELS, 4)
    sess = load_session(small_session, "sub-03")
    w = subject_windows(sess, load_config(DEFAULT_CONFIG), "train")
    got = cap.attributes(w.X)
    truth = [sess.clips[int(c)]["attributes"] for c in w.clip_ids]
    bg = np.mean([g["background"] == t["background"] for g, t in zip(got, truth)])
    assert bg > 0.5  # chance 1/6; fitted on these windows
    sizes = pack_zoo(tiny_zoo, tmp_path / "packed")
    assert sizes["attributes"] > 0
    packed = AttributeCaptioner.from_zoo(tmp_path / "packed", LEVELS, 4)
    assert packed.attributes(w.X) == got
