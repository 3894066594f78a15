"""Attribute captioner: the renderer's conditioning from decoded scene attributes.

A linear decoder (the ridge of ``rtdecode train ridge``, fitted to the scene attributes)
reads each attribute group from a decoded window: background, texture, shape, colour,
motion, position, size. The captioner takes each group's best-scoring value and words the
scene as captions at the SemMiner levels, the way the simulator words its own clips
(:func:`~rtdecode.simulator.stimuli.caption_attributes`). The toy CLIP then encodes them
into token states of SAD's layout ``(levels, tokens, width)``, which CVR takes in place of
SAD's decoded token states.

Why: SAD regresses the captions' token states. A regression lands between captions, and the
UNet reads colour from such states less surely than from a caption. On the same single-trial
windows, the ridge names the colour of 82 % of the test clips. Rendered from SAD's
semantics alone, colour comes out right for about half of them. Captions composed from the
ridge's attributes keep it (README, "Rendering from decoded attributes").

This needs a closed attribute vocabulary, which the toy world has. For real data, the
analogue is a decoder of SemMiner keywords; that path is not built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import DecoderModel
from ..simulator.stimuli import ATTRIBUTE_GROUPS, attribute_slices, caption_attributes

#: the zoo folder holding the attribute decoder (a ridge model directory)
ZOO_NAME = "attributes"


def check_attribute_decoder(model: DecoderModel, n_inputs: int | None = None) -> None:
    """Refuse a decoder that does not score the scene attributes (a model of
    ``rtdecode train ridge``), naming its targets and width, or (``n_inputs``) one that
    reads windows of another width than the decoder beside it."""
    kind = model.meta.get("targets")
    dim = sum(len(v) for v in ATTRIBUTE_GROUPS.values())
    width = int(model.engine.coef.shape[0]) if hasattr(model.engine, "coef") else None
    if kind != "attributes" or width != dim:
        raise ValueError(f"attribute decoder: the model has targets {kind!r} of width "
                         f"{width}; want 'attributes' of width {dim} (a model of "
                         "`rtdecode train ridge`)")
    if n_inputs is not None and model.engine.n_inputs != n_inputs:
        raise ValueError(f"attribute decoder takes {model.engine.n_inputs} inputs per window, "
                         f"the decoder {n_inputs}: it must read the same windows (train both "
                         "on one session and voxel selection)")


def decode_attributes(model: DecoderModel, x: np.ndarray) -> list[dict[str, str]]:
    """Each window's best-scoring value per attribute group (``x``: ``(batch, n_inputs)``)."""
    scores = model.engine.decode(np.asarray(x, np.float32))
    return [{name: ATTRIBUTE_GROUPS[name][int(row[sl].argmax())]
             for name, sl in attribute_slices().items()} for row in scores]


def compose_captions(attrs: list[dict[str, str]], seeds) -> list[dict]:
    """Captions at the SemMiner levels (``basic``, ``anchor``, ``motion``, ``holistic``) and
    the ``attributes`` they word, one per attribute set; ``seeds`` pick the wording."""
    if len(seeds) != len(attrs):
        raise ValueError(f"captions: {len(attrs)} windows but {len(seeds)} seeds")
    return [{**caption_attributes(a, np.random.default_rng(int(s))), "attributes": a}
            for a, s in zip(attrs, seeds)]


@dataclass
class AttributeCaptioner:
    """Windows ``(batch, n_inputs)`` → captions → token states ``(batch, levels, tokens, w)``.

    ``model``: a ridge :class:`~rtdecode.engine.DecoderModel` with attribute targets;
    ``clip_model``: the toy CLIP the UNet was trained with; ``levels`` and ``n_tokens``:
    the renderer's conditioning layout.
    """

    model: DecoderModel
    clip_model: object
    levels: tuple[str, ...]
    n_tokens: int

    def __post_init__(self) -> None:
        check_attribute_decoder(self.model)
        self.levels = tuple(self.levels)

    @classmethod
    def from_zoo(cls, zoo: str | Path, levels, n_tokens: int, clip_model=None
                 ) -> AttributeCaptioner:
        """The zoo's ``attributes/`` decoder with its ``clip/`` text encoder (``clip_model``:
        that encoder, already loaded)."""
        from ..zoo.clip import load_toy_clip

        zoo = Path(zoo)
        if clip_model is None:
            clip_model = load_toy_clip(zoo / "clip")
        return cls(DecoderModel.load(zoo / ZOO_NAME), clip_model, tuple(levels),
                   int(n_tokens))

    @property
    def n_inputs(self) -> int:
        return self.model.engine.n_inputs

    def attributes(self, x: np.ndarray) -> list[dict[str, str]]:
        """Each window's best-scoring value per attribute group."""
        return decode_attributes(self.model, x)

    def captions(self, x: np.ndarray, seeds) -> list[dict[str, str]]:
        """Captions at the SemMiner levels (``basic``, ``anchor``, ``motion``, ``holistic``)
        and the attributes they word, one per window; ``seeds`` pick the wording."""
        return compose_captions(self.attributes(x), seeds)

    def encode(self, captions: list[dict]) -> np.ndarray:
        """Caption records → token states ``(n, levels, n_tokens, width)``."""
        from ..zoo.unet import encode_conditions

        tok = encode_conditions(self.clip_model, captions, self.n_tokens, self.levels)
        return tok.reshape(len(captions), len(self.levels), self.n_tokens, -1)

    def __call__(self, x: np.ndarray, seeds) -> tuple[np.ndarray, list[dict]]:
        """(token states, caption records) of the windows ``x``."""
        caps = self.captions(x, seeds)
        return self.encode(caps), caps
