"""The layout sketch: CVR's motion latents drawn from decoded scene attributes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdecode.render.layout import LayoutSketch, sketch_clip
from rtdecode.simulator.stimuli import BACKGROUNDS, COLOURS, POSITIONS, position_name
from rtdecode.zoo.vae import ToyVAE, ToyVAEConfig, build_vae

ATTRS = {"background": "black", "texture": "plain", "shape": "square", "colour": "red",
         "motion": "static", "position": "centre", "size": "large", "n_objects": "one"}


def _object_mask(frame: np.ndarray, colour: str) -> np.ndarray:
    return np.all(frame == np.array(COLOURS[colour], np.uint8), axis=-1)


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("position", POSITIONS)
def test_the_object_sits_in_its_decoded_cell_in_its_colour(position):
    frames = sketch_clip({**ATTRS, "position": position, "size": "small"})
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    mask = _object_mask(frames[0], "red")
    assert mask.sum() > 50  # a small object: radius 8
    assert position_name(*_centroid(mask), 64) == position
    # the rest is the decoded background, plain
    assert np.all(frames[0][~mask] == np.array(BACKGROUNDS["black"], np.uint8))


def test_motion_size_and_texture_follow_the_attributes():
    right = sketch_clip({**ATTRS, "motion": "right", "position": "left", "shape": "circle"})
    x0, y0 = _centroid(_object_mask(right[0], "red"))
    x1, y1 = _centroid(_object_mask(right[-1], "red"))
    assert x1 - x0 == pytest.approx(18.0, abs=1.0) and y1 == pytest.approx(y0, abs=0.5)
    grow = sketch_clip({**ATTRS, "motion": "grow"})
    assert _object_mask(grow[-1], "red").sum() > 2 * _object_mask(grow[0], "red").sum()
    small = _object_mask(sketch_clip({**ATTRS, "size": "small"})[0], "red").sum()
    assert _object_mask(sketch_clip(ATTRS)[0], "red").sum() > 2 * small
    static = sketch_clip(ATTRS)
    assert all(np.array_equal(static[0], f) for f in static[1:])
    striped = sketch_clip({**ATTRS, "texture": "stripes"})
    assert not np.array_equal(striped, static)
    assert np.array_equal(sketch_clip({**ATTRS, "texture": "stripes"}, texture=False), static)
    # another frame size and length: the layout scales with it
    small_frames = sketch_clip({**ATTRS, "position": "top left"}, size=16, frames=4)
    assert small_frames.shape == (4, 16, 16, 3)
    assert position_name(*_centroid(_object_mask(small_frames[0], "red")), 16) == "top left"


def test_bad_attributes_are_named():
    with pytest.raises(ValueError, match="colour 'teal'"):
        sketch_clip({**ATTRS, "colour": "teal"})
    with pytest.raises(ValueError, match=r"lack \['motion'\]"):
        sketch_clip({k: v for k, v in ATTRS.items() if k != "motion"})


def test_layout_sketch_encodes_its_frames_with_the_vae():
    torch.manual_seed(0)
    vae = ToyVAE(build_vae(ToyVAEConfig(image_size=16, block_out_channels=(8, 8),
                                        norm_num_groups=4)), 1.0)
    sk = LayoutSketch(vae, frames=4)
    attrs = [ATTRS, {**ATTRS, "colour": "blue", "motion": "up", "position": "bottom"}]
    z = sk(attrs)
    assert z.shape == (2, 4, *vae.latent_shape) and z.dtype == np.float32
    assert np.allclose(z, vae.encode(sk.sketch(attrs)))
    assert not np.allclose(z[0], z[1])
