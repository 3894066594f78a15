"""Procedural stimulus clips for the toy world, with ground-truth captions and features.

A *scene* is a background (colour + texture) with one or two objects (shape, colour, size).
A scene persists for several 2-s clips, its objects carrying on from where the last clip left
them, and then cuts to a new scene, as in a film. In each clip every object does one motion
(left, right, up, down, grow, shrink, rotate or static).

For every clip the module gives
- frames: uint8 ``(frames_per_clip, size, size, 3)``;
- captions at the SemMiner levels (basic summary of at most 20 words, anchor, motion,
  holistic), worded with seeded paraphrase variety;
- attributes (the scene's class labels) and encoding features (retinotopic contrast and
  colour maps, motion energy, semantic indicators) that drive the simulated brain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 235),
    "yellow": (235, 220, 40), "magenta": (225, 50, 210), "cyan": (40, 215, 225),
    "orange": (245, 140, 30), "white": (240, 240, 240),
}
BACKGROUNDS = {
    "black": (12, 12, 12), "grey": (110, 110, 110), "navy": (20, 28, 90),
    "forest": (22, 75, 35), "maroon": (95, 22, 28), "purple": (70, 30, 95),
}
TEXTURES = ("plain", "stripes", "checker", "dots", "gradient")
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "rotate", "static")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "centre", "right",
             "bottom left", "bottom", "bottom right")
BLANK_GREY = (128, 128, 128)

#: Attribute groups used as class labels (and as ridge targets): name -> vocabulary.
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "background": tuple(BACKGROUNDS),
    "texture": TEXTURES,
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "motion": MOTIONS,
    "position": POSITIONS,
    "size": SIZES,
    "n_objects": ("one", "two"),
}

#: Retinotopic feature maps are computed on this grid (size // RETINO_GRID pixel blocks).
RETINO_GRID = 16
N_MOTION_FEATURES = 7  # left, right, up, down, grow, shrink, rotate energy
SEMANTIC_GROUPS = ("background", "texture", "shape", "colour", "motion", "n_objects")


def n_semantic_features() -> int:
    return sum(len(ATTRIBUTE_GROUPS[g]) for g in SEMANTIC_GROUPS)


def n_features() -> int:
    return 3 * RETINO_GRID**2 + N_MOTION_FEATURES + n_semantic_features()


def feature_slices() -> dict[str, slice]:
    """Where each feature block sits in the feature vector."""
    r = 3 * RETINO_GRID**2
    return {"retino": slice(0, r), "motion": slice(r, r + N_MOTION_FEATURES),
            "semantic": slice(r + N_MOTION_FEATURES, n_features())}


@dataclass(frozen=True)
class StimulusConfig:
    size: int = 64
    frames_per_clip: int = 8
    clip_seconds: float = 2.0
    scene_clips: tuple[int, int] = (2, 6)  # inclusive range of clips per scene
    p_two_objects: float = 0.35
    translate_px: float = 18.0
    scale_factor: float = 1.5
    rotate_deg: float = 50.0  # not a symmetry angle of any shape, so rotation is visible


@dataclass
class ObjectState:
    shape: str
    colour: str
    x: float
    y: float
    r: float
    angle: float = 0.0
    size_class: str = "small"


@dataclass
class ClipSpec:
    """Everything needed to render one clip and describe it."""

    clip_id: int
    scene_id: int
    cut: bool
    background: str
    texture: str
    objects: list[ObjectState]
    motions: list[str]
    captions: dict[str, str] = field(default_factory=dict)
    frame_size: int = 64

    def object_records(self) -> list[dict]:
        """Each object's shape, colour, start position and radius, and motion, as the
        session's ``captions.jsonl`` records them."""
        return [{"shape": o.shape, "colour": o.colour, "x": round(o.x, 3), "y": round(o.y, 3),
                 "r": round(o.r, 3), "motion": m} for o, m in zip(self.objects, self.motions)]

    def attributes(self) -> dict[str, str]:
        o = self.objects[0]
        return {
            "background": self.background,
            "texture": self.texture,
            "shape": o.shape,
            "colour": o.colour,
            "motion": self.motions[0],
            "position": position_name(o.x, o.y, self.frame_size),
            "size": o.size_class,
            "n_objects": "one" if len(self.objects) == 1 else "two",
        }


def position_name(x: float, y: float, size: float) -> str:
    col = min(2, max(0, int(3 * x / size)))
    row = min(2, max(0, int(3 * y / size)))
    return POSITIONS[3 * row + col]


# --------------------------------------------------------------------------------------------
# Scene generation


def _feasible_motions(o: ObjectState, cfg: StimulusConfig) -> list[str]:
    s, d, m = cfg.size, cfg.translate_px, 2.0
    out = ["static"]
    if o.x - d - o.r >= m:
        out.append("left")
    if o.x + d + o.r <= s - m:
        out.append("right")
    if o.y - d - o.r >= m:
        out.append("up")
    if o.y + d + o.r <= s - m:
        out.append("down")
    big = o.r * cfg.scale_factor
    if big <= 19 and o.x - big >= m and o.x + big <= s - m and o.y - big >= m \
            and o.y + big <= s - m:
        out.append("grow")
    if o.r / cfg.scale_factor >= 5:
        out.append("shrink")
    if o.shape != "circle":
        out.append("rotate")
    return out


def _end_state(o: ObjectState, motion: str, cfg: StimulusConfig) -> ObjectState:
    """Where an object ends up after a clip of ``motion``."""
    x, y, r, a = o.x, o.y, o.r, o.angle
    d = cfg.translate_px
    if motion == "left":
        x -= d
    elif motion == "right":
        x += d
    elif motion == "up":
        y -= d
    elif motion == "down":
        y += d
    elif motion == "grow":
        r *= cfg.scale_factor
    elif motion == "shrink":
        r /= cfg.scale_factor
    elif motion == "rotate":
        a += cfg.rotate_deg
    return ObjectState(o.shape, o.colour, x, y, r, a, "large" if r >= 9.5 else "small")


def _new_object(rng: np.random.Generator, cfg: StimulusConfig, taken: set[str]) -> ObjectState:
    shapes = [s for s in SHAPES if s not in taken] or list(SHAPES)
    shape = str(rng.choice(shapes))
    colour = str(rng.choice(list(COLOURS)))
    r = float(rng.uniform(7.0, 9.0)) if rng.random() < 0.5 else float(rng.uniform(10.5, 14.0))
    x = float(rng.uniform(r + 3, cfg.size - r - 3))
    y = float(rng.uniform(r + 3, cfg.size - r - 3))
    return ObjectState(shape, colour, x, y, r, float(rng.uniform(0, 90)),
                       "large" if r >= 9.5 else "small")


def generate_clips(n_clips: int, rng: np.random.Generator, cfg: StimulusConfig,
                   first_clip_id: int = 0, first_scene_id: int = 0) -> list[ClipSpec]:
    """A film of ``n_clips`` clips: scenes that persist several clips, then cut."""
    clips: list[ClipSpec] = []
    scene_id = first_scene_id - 1
    remaining = 0
    objects: list[ObjectState] = []
    background = texture = ""
    for i in range(n_clips):
        cut = remaining == 0
        if cut:
            scene_id += 1
            remaining = int(rng.integers(cfg.scene_clips[0], cfg.scene_clips[1] + 1))
            background = str(rng.choice(list(BACKGROUNDS)))
            texture = str(rng.choice(TEXTURES))
            n_obj = 2 if rng.random() < cfg.p_two_objects else 1
            objects = []
            for _ in range(n_obj):
                objects.append(_new_object(rng, cfg, {o.shape for o in objects}))
        motions = [str(rng.choice(_feasible_motions(o, cfg))) for o in objects]
        spec = ClipSpec(first_clip_id + i, scene_id, cut, background, texture,
                        [ObjectState(**vars(o)) for o in objects], motions,
                        frame_size=cfg.size)
        spec.captions = describe(spec, rng)
        clips.append(spec)
        objects = [_end_state(o, m, cfg) for o, m in zip(objects, motions)]
        remaining -= 1
    return clips


# --------------------------------------------------------------------------------------------
# Captions


_MOTION_WORDS = {
    "left": ("moves to the left", "slides left", "drifts leftward", "travels to the left"),
    "right": ("moves to the right", "slides right", "drifts rightward", "travels to the right"),
    "up": ("moves up", "rises", "drifts upward", "climbs toward the top"),
    "down": ("moves down", "sinks", "drifts downward", "falls toward the bottom"),
    "grow": ("grows", "expands", "gets bigger", "swells in size"),
    "shrink": ("shrinks", "contracts", "gets smaller", "dwindles in size"),
    "rotate": ("rotates", "spins", "turns around", "revolves in place"),
    "static": ("stays still", "does not move", "remains in place", "holds its position"),
}
_TEXTURE_WORDS = {
    "plain": ("plain", "uniform", "flat"),
    "stripes": ("striped", "stripy", "banded"),
    "checker": ("checkered", "chequered", "checkerboard"),
    "dots": ("dotted", "polka-dot", "spotted"),
    "gradient": ("gradient", "shaded", "fading"),
}
_BACKDROP = ("background", "backdrop", "backdrop")
_SIZE_WORDS = {"small": ("small", "little", "small"), "large": ("large", "big", "large")}
_POSITION_WORDS = {p: (f"in the {p}" if p != "centre" else "in the centre",) for p in POSITIONS}
_POSITION_WORDS.update({"top": ("at the top",), "bottom": ("at the bottom",),
                        "left": ("on the left",), "right": ("on the right",),
                        "centre": ("in the centre", "in the middle")})


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" and not word.startswith("uni") else "a"


def describe(spec: ClipSpec, rng: np.random.Generator) -> dict[str, str]:
    """Captions at the SemMiner levels for one clip (basic summary is at most 20 words)."""
    bg = f"{_pick(rng, _TEXTURE_WORDS[spec.texture])} {spec.background}"
    bd = _pick(rng, _BACKDROP)
    nouns = []
    for o in spec.objects:
        size = _pick(rng, _SIZE_WORDS[o.size_class])
        pos = _pick(rng, _POSITION_WORDS[position_name(o.x, o.y, spec.frame_size)])
        noun = f"{size} {o.colour} {o.shape}"
        nouns.append((f"{_article(noun)} {noun}", f"{o.colour} {o.shape}", pos))
    things = " and ".join(f"{n} {p}" for n, _, p in nouns)
    anchor_templates = (
        f"{things} on {_article(bg)} {bg} {bd}",
        f"{_article(bg)} {bg} {bd} with {things}",
        f"{things}, set against {_article(bg)} {bg} {bd}",
    )
    anchor = _pick(rng, anchor_templates)
    moves = [f"the {short} {_pick(rng, _MOTION_WORDS[m])}"
             for (_, short, _), m in zip(nouns, spec.motions)]
    motion = moves[0] if len(moves) == 1 else f"{moves[0]} while {moves[1]}"
    lead = ("a new scene opens: " if spec.cut else
            _pick(rng, ("the scene continues: ", "still in the same scene, ", "")))
    holistic = _pick(rng, (
        f"{lead}{motion}, {things} over {_article(bg)} {bg} {bd}",
        f"{lead}on {_article(bg)} {bg} {bd}, {motion}",
        f"{lead}{anchor}; {motion}",
    ))
    basic_motions = " and ".join(f"{short} {m if m != 'static' else 'still'}"
                                 for (_, short, _), m in zip(nouns, spec.motions))
    basic = f"{basic_motions} on {spec.background} {spec.texture} background"
    words = basic.split()
    if len(words) > 20:  # cannot happen with <= 2 objects, but the limit is a contract
        basic = " ".join(words[:20])
    return {"basic": basic, "anchor": anchor, "motion": motion, "holistic": holistic}


def caption_attributes(attrs: dict[str, str], rng: np.random.Generator,
                       frame_size: int = 64) -> dict[str, str]:
    """Captions at the SemMiner levels for a scene given only by its attributes (one
    object: the attribute groups describe the first), as :func:`describe` words them.

    The captioner of decoded attributes: ``attrs`` needs every :data:`ATTRIBUTE_GROUPS` name
    but ``n_objects`` (ignored), each with a value from its vocabulary.
    """
    bad = [f"{k}={attrs.get(k)!r}" for k in ATTRIBUTE_GROUPS
           if k != "n_objects" and attrs.get(k) not in ATTRIBUTE_GROUPS[k]]
    if bad:
        raise ValueError("caption_attributes: unknown or missing attribute values: "
                         + ", ".join(bad))
    k = POSITIONS.index(attrs["position"])
    cell = frame_size / 3
    obj = ObjectState(attrs["shape"], attrs["colour"], (k % 3 + 0.5) * cell,
                      (k // 3 + 0.5) * cell, 12.0 if attrs["size"] == "large" else 8.0,
                      size_class=attrs["size"])
    spec = ClipSpec(0, 0, False, attrs["background"], attrs["texture"], [obj],
                    [attrs["motion"]], frame_size=frame_size)
    return describe(spec, rng)


# --------------------------------------------------------------------------------------------
# Rendering


def _texture(background: str, texture: str, size: int) -> np.ndarray:
    base = np.array(BACKGROUNDS[background], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if texture == "plain":
        mod = np.zeros((size, size), np.float32)
    elif texture == "stripes":
        mod = np.where((xx // 6) % 2 == 0, 1.0, -1.0).astype(np.float32)
    elif texture == "checker":
        mod = np.where(((xx // 8) + (yy // 8)) % 2 == 0, 1.0, -1.0).astype(np.float32)
    elif texture == "dots":
        mod = (((xx % 10) - 5) ** 2 + ((yy % 10) - 5) ** 2 < 5).astype(np.float32) * 2.0 - 0.3
    elif texture == "gradient":
        mod = (yy / (size - 1)) * 2.0 - 1.0
    else:  # pragma: no cover - vocabulary is closed
        raise ValueError(f"unknown texture {texture!r}")
    img = base[None, None, :] + 28.0 * mod[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(shape: str, x: float, y: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(math.radians(45 + 90 * k)), math.sin(math.radians(45 + 90 * k)))
               for k in range(4)]
    elif shape == "diamond":
        pts = [(math.cos(math.radians(90 * k)) * (0.75 if k % 2 == 0 else 1.0),
                math.sin(math.radians(90 * k)) * (0.75 if k % 2 == 0 else 1.0)) for k in range(4)]
    elif shape == "triangle":
        pts = [(math.cos(math.radians(-90 + 120 * k)), math.sin(math.radians(-90 + 120 * k)))
               for k in range(3)]
    elif shape == "star":
        pts = [((1.0 if k % 2 == 0 else 0.45) * math.cos(math.radians(-90 + 36 * k)),
                (1.0 if k % 2 == 0 else 0.45) * math.sin(math.radians(-90 + 36 * k)))
               for k in range(10)]
    elif shape == "cross":
        w = 0.35
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
               (-1, w), (-1, -w), (-w, -w)]
    else:  # pragma: no cover
        raise ValueError(f"no polygon for {shape!r}")
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(x + r * (px * c - py * s), y + r * (px * s + py * c)) for px, py in pts]


def render_clip(spec: ClipSpec, cfg: StimulusConfig) -> np.ndarray:
    """Frames of one clip: uint8 ``(frames_per_clip, size, size, 3)``."""
    n = cfg.frames_per_clip
    bg = Image.fromarray(_texture(spec.background, spec.texture, cfg.size))
    ends = [_end_state(o, m, cfg) for o, m in zip(spec.objects, spec.motions)]
    out = np.empty((n, cfg.size, cfg.size, 3), np.uint8)
    for f in range(n):
        t = f / (n - 1) if n > 1 else 0.0
        img = bg.copy()
        draw = ImageDraw.Draw(img)
        for o, e in zip(spec.objects, ends):
            x, y = o.x + t * (e.x - o.x), o.y + t * (e.y - o.y)
            r = o.r * (e.r / o.r) ** t
            a = o.angle + t * (e.angle - o.angle)
            colour = COLOURS[o.colour]
            if o.shape == "circle":
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
            else:
                draw.polygon(_polygon(o.shape, x, y, r, a), fill=colour)
        out[f] = np.asarray(img)
    return out


# --------------------------------------------------------------------------------------------
# Labels and encoding features


def attribute_onehot(attrs: dict[str, str]) -> np.ndarray:
    """Concatenated one-hot vector over ATTRIBUTE_GROUPS."""
    parts = []
    for name, vocab in ATTRIBUTE_GROUPS.items():
        v = np.zeros(len(vocab), np.float32)
        v[vocab.index(attrs[name])] = 1.0
        parts.append(v)
    return np.concatenate(parts)


def attribute_slices() -> dict[str, slice]:
    out, start = {}, 0
    for name, vocab in ATTRIBUTE_GROUPS.items():
        out[name] = slice(start, start + len(vocab))
        start += len(vocab)
    return out


def clip_features(spec: ClipSpec, frames: np.ndarray) -> np.ndarray:
    """Encoding features of one clip (what the simulated voxels respond to).

    retino, per 4x4-pixel block averaged over frames: (1) contrast energy: the deviation of
    luminance and chroma from the frame's background (its median) plus local luminance
    variation (texture edges); (2) R-G and (3) B-Y colour-opponent means. motion: energy in
    left/right/up/down/grow/shrink/rotate, weighted by object area. semantic: indicators of
    the scene attributes present.
    """
    g = RETINO_GRID
    f = frames.astype(np.float32) / 255.0
    n, h, w, _ = f.shape
    b = h // g
    lum = f @ np.array([0.299, 0.587, 0.114], np.float32)
    rg = f[..., 0] - f[..., 1]
    by = f[..., 2] - 0.5 * (f[..., 0] + f[..., 1])
    med = lambda a: np.median(a.reshape(n, -1), axis=1)[:, None, None]  # noqa: E731
    energy = np.abs(lum - med(lum)) + 0.5 * np.hypot(rg - med(rg), by - med(by))
    block = lambda a: a.reshape(n, g, b, g, b)  # noqa: E731
    contrast = block(energy).mean(axis=(2, 4)) + block(lum).std(axis=(2, 4))
    retino = np.concatenate([2.0 * contrast.mean(axis=0).ravel(),
                             block(rg).mean(axis=(0, 2, 4)).ravel(),
                             block(by).mean(axis=(0, 2, 4)).ravel()])

    motion = np.zeros(N_MOTION_FEATURES, np.float32)
    for o, m in zip(spec.objects, spec.motions):
        if m != "static":
            motion[MOTIONS.index(m)] += (o.r / 10.0) ** 2

    sem = []
    for name in SEMANTIC_GROUPS:
        vocab = ATTRIBUTE_GROUPS[name]
        v = np.zeros(len(vocab), np.float32)
        if name == "background":
            v[vocab.index(spec.background)] = 1
        elif name == "texture":
            v[vocab.index(spec.texture)] = 1
        elif name == "shape":
            for o in spec.objects:
                v[vocab.index(o.shape)] = 1
        elif name == "colour":
            for o in spec.objects:
                v[vocab.index(o.colour)] = 1
        elif name == "motion":
            for m in spec.motions:
                v[vocab.index(m)] = 1
        elif name == "n_objects":
            v[len(spec.objects) - 1] = 1
        sem.append(v)
    return np.concatenate([retino, motion, np.concatenate(sem)]).astype(np.float32)
