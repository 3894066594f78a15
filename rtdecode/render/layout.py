"""Layout sketch: CVR's motion latents drawn from the decoded scene attributes.

MAD regresses a clip's per-frame VAE latents from the window. A regression lands between
clips: its latents keep the background and blur the object away (its motion frames name the
object's position for about a fifth of the test clips and its motion for a tenth, where the
attribute decoder reads them from the same windows about half the time). The sketch takes
the attribute captioner's decoded values instead and draws them: the object's decoded shape
and colour, at the centre of its decoded position cell, small or large, moving the decoded
way, on the decoded background. The toy VAE encodes the sketch, and CVR re-noises and
redraws it (img2img / video-to-video), as it does MAD's latents.

The sketch is the toy world's layout, drawn by the simulator's own renderer
(:func:`~rtdecode.simulator.stimuli.render_clip`) from a one-object :class:`ClipSpec`: a
closed vocabulary of shapes, colours and moves. Real data has no such vocabulary. The
analogue there is a decoded layout, such as object boxes and their tracks, or colour and
depth maps (as DREAM conditions a T2I adapter); that path is not built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..simulator.stimuli import (
    ATTRIBUTE_GROUPS,
    POSITIONS,
    ClipSpec,
    ObjectState,
    StimulusConfig,
    render_clip,
)

#: radius (pixels of a 64-pixel frame) of a small and a large sketched object: about the
#: middle of the simulator's ranges (7–9 and 10.5–14)
RADIUS = {"small": 8.0, "large": 12.0}

#: what may give CVR its motion latents (``RenderWorker.from_zoo``'s ``latents``)
LATENTS = ("auto", "mad", "sketch")

_KEYS = ("background", "texture", "shape", "colour", "motion", "position", "size")


def sketch_clip(attrs: dict[str, str], *, size: int = 64, frames: int = 8,
                texture: bool = True) -> np.ndarray:
    """The sketch of one clip's attributes: uint8 frames ``(frames, size, size, 3)``.
    ``texture``: draw the decoded background texture (else a plain background)."""
    missing = [k for k in _KEYS if k not in attrs]
    if missing:
        raise ValueError(f"sketch: attributes lack {missing}")
    for k in _KEYS:
        if attrs[k] not in ATTRIBUTE_GROUPS[k]:
            raise ValueError(f"sketch: {k} {attrs[k]!r}: want one of {ATTRIBUTE_GROUPS[k]}")
    k = POSITIONS.index(attrs["position"])
    scale = size / 64.0
    cell = size / 3.0
    x, y = (k % 3 + 0.5) * cell, (k // 3 + 0.5) * cell
    obj = ObjectState(attrs["shape"], attrs["colour"], x, y, RADIUS[attrs["size"]] * scale,
                      0.0, attrs["size"])
    spec = ClipSpec(0, 0, False, attrs["background"],
                    attrs["texture"] if texture else "plain", [obj], [attrs["motion"]],
                    frame_size=size)
    cfg = StimulusConfig(size=size, frames_per_clip=frames,
                         translate_px=StimulusConfig.translate_px * scale)
    return render_clip(spec, cfg)


@dataclass
class LayoutSketch:
    """Decoded attributes → sketch frames → the toy VAE's latents ``(n, frames, C, h, w)``.

    ``vae``: the renderer's VAE (:class:`~rtdecode.zoo.vae.ToyVAE`); ``frames``: frames per
    clip; ``texture``: draw the background texture."""

    vae: object
    frames: int = 8
    texture: bool = True

    @property
    def size(self) -> int:
        return int(self.vae.model.config.sample_size)

    def sketch(self, attrs: list[dict[str, str]]) -> np.ndarray:
        """uint8 frames ``(n, frames, size, size, 3)``."""
        return np.stack([sketch_clip(a, size=self.size, frames=self.frames,
                                     texture=self.texture) for a in attrs])

    def __call__(self, attrs: list[dict[str, str]]) -> np.ndarray:
        """The sketches' latents ``(n, frames, C, h, w)`` float32."""
        return self.vae.encode(self.sketch(attrs))
