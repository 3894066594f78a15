"""Render fidelity: does a rendered clip show the right background, colour, shape, position and
motion?

Two classifiers:

- **the toy CLIP, zero-shot** (as the issue asks): a clip's first frame against class
  embeddings averaged over caption-worded prompts (:func:`~rtdecode.zoo.clip.zero_shot_prompts`).
  Its ceiling is low for some groups — on the *true* test frames it names the shape only ~37 %
  and the position ~15 % of the time — so it cannot show ≥ 90 % for those whatever we render;
  the toy CLIP has no motion readout at all (a mean of frame embeddings has no direction).
- **an attribute probe** trained by us on the training clips' true frames
  (:class:`AttributeProbe`): one conv stack reads single frames for what is shown
  (background, colour, shape; averaged over the clip's frames), another reads the whole clip
  for where things are and where they go (position, motion). On the true test frames it is
  close to perfect, so on rendered frames it measures the renderer, not itself.

Both report the fraction of clips whose attribute is classified as the simulator's ground truth.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..simulator.stimuli import (
    ATTRIBUTE_GROUPS,
    POSITIONS,
    StimulusConfig,
    generate_clips,
    render_clip,
)

ATTRIBUTES = ("background", "colour", "shape", "position", "motion")
PROBE_FILE = "probe.safetensors"
FORMAT = "rtdecode-attribute-probe/2"


class AttributeProbe(nn.Module):
    """A clip's frames ``(n, T, 3, H, W)`` → logits per attribute, from two conv stacks.

    - **what** (background, colour, shape): one frame at a time, pooled (mean and max over
      the map: what things are, wherever they are); a clip's logits are the mean over its
      frames. Trained on single frames under the eight flips and quarter turns, which leave
      these labels unchanged — every frame of every training clip is an example.
    - **where** (position, motion): the clip's frames stacked as channels, the map flattened
      (where things are, and where they go). Trained under horizontal and vertical flips,
      with the position and motion labels flipped to match.

    ``what_depth`` 6 adds a sixth, strided layer to the *what* stack (receptive field 43
    pixels instead of 27): a square turned 45 degrees and a diamond differ only in the ratio
    of their diagonals (1 against 0.75), and a large object's diagonals (24 to 38 pixels)
    did not fit in the five-layer stack's view."""

    WHAT = ("background", "colour", "shape")
    WHERE = ("position", "motion")

    def __init__(self, width: int = 16, image_size: int = 64, frames: int = 8,
                 what_depth: int = 5):
        super().__init__()
        if what_depth not in (5, 6):
            raise ValueError(f"what_depth {what_depth!r}: want 5 or 6")
        w = width

        def stack(cin: int, depth: int = 5) -> nn.Sequential:
            layers: list[nn.Module] = []
            spec = [(cin, w, 2), (w, 2 * w, 1), (2 * w, 2 * w, 2), (2 * w, 4 * w, 1),
                    (4 * w, 4 * w, 2)]                                       # to (4w, s/8, s/8)
            for a, b, stride in spec + [(4 * w, 4 * w, 2)] * (depth - 5):
                layers += [nn.Conv2d(a, b, 3, stride=stride, padding=1), nn.BatchNorm2d(b),
                           nn.GELU()]
            return nn.Sequential(*layers)

        self.what_body = stack(3, what_depth)
        self.what_neck = nn.Sequential(nn.Linear(8 * w, 256), nn.GELU())
        self.where_body = stack(3 * frames)
        self.where_neck = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * (image_size // 8) ** 2,
                                                                256), nn.GELU())
        self.heads = nn.ModuleDict({a: nn.Linear(256, len(ATTRIBUTE_GROUPS[a]))
                                    for a in ATTRIBUTES})
        self.width, self.image_size, self.frames = width, image_size, frames
        self.what_depth = what_depth

    def what(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Single frames ``(m, 3, H, W)`` → background, colour and shape logits."""
        h = self.what_body(x)
        h = self.what_neck(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))
        return {a: self.heads[a](h) for a in self.WHAT}

    def where(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Clips ``(n, T, 3, H, W)`` → position and motion logits."""
        h = self.where_neck(self.where_body(x.flatten(1, 2)))
        return {a: self.heads[a](h) for a in self.WHERE}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, t = x.shape[:2]
        if t != self.frames:
            raise ValueError(f"clips of {t} frames: this probe reads {self.frames}")
        what = {a: v.reshape(n, t, -1).mean(dim=1) for a, v in self.what(x.flatten(0, 1)).items()}
        return {**what, **self.where(x)}


def _inputs(clips: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, T, H, W, 3)`` → ``(n, T, 3, H, W)`` in [-1, 1]."""
    clips = np.asarray(clips)
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"clips {clips.dtype} {clips.shape}: want uint8 (n, T, H, W, 3)")
    return torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float().div_(127.5).sub_(1.0)


def flip_permutation(attribute: str, horizontal: bool) -> np.ndarray:
    """Class permutation of ``attribute`` under a left-right (or top-bottom) mirror of the
    frames: ``labels[:, perm]`` are the mirrored clip's labels. Identity for the attributes a
    mirror leaves alone (background, colour, shape)."""
    vocab = ATTRIBUTE_GROUPS[attribute]
    if attribute == "position":
        def mirror(name: str) -> str:
            i = POSITIONS.index(name)
            r, c = divmod(i, 3)
            return POSITIONS[3 * r + (2 - c)] if horizontal else POSITIONS[3 * (2 - r) + c]
    elif attribute == "motion":
        swap = {"left": "right", "right": "left"} if horizontal else {"up": "down", "down": "up"}

        def mirror(name: str) -> str:
            return swap.get(name, name)
    else:
        return np.arange(len(vocab))
    return np.array([vocab.index(mirror(v)) for v in vocab])


def labels_of(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Ground-truth class indices per attribute for caption records (the first object's)."""
    return {a: np.array([ATTRIBUTE_GROUPS[a].index(r["attributes"][a]) for r in records])
            for a in ATTRIBUTES}


def label_sets(records: list[dict[str, Any]], frame_size: int = 64) -> dict[str, np.ndarray]:
    """Per attribute, a ``(n, classes)`` 0/1 matrix of the values any object of the clip has.

    With two objects, "the" shape (colour, position, motion) is either object's: which one
    the captions call first is arbitrary, so a classifier is right if it names either."""
    from ..simulator.stimuli import position_name

    out = {a: np.zeros((len(records), len(ATTRIBUTE_GROUPS[a])), np.float32)
           for a in ATTRIBUTES}
    for i, r in enumerate(records):
        out["background"][i, ATTRIBUTE_GROUPS["background"].index(
            r["attributes"]["background"])] = 1
        objects = r.get("objects") or [{"shape": r["attributes"]["shape"],
                                        "colour": r["attributes"]["colour"],
                                        "motion": r["attributes"]["motion"]}]
        for o in objects:
            for a in ("shape", "colour", "motion"):
                out[a][i, ATTRIBUTE_GROUPS[a].index(o[a])] = 1
            pos = (position_name(o["x"], o["y"], frame_size) if "x" in o
                   else r["attributes"]["position"])
            out["position"][i, ATTRIBUTE_GROUPS["position"].index(pos)] = 1
    return out


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of images ``(..., C, H, W)`` with standard deviation ``sigma`` pixels
    (torchvision's; the kernel spans ±3 sigma). ``sigma`` <= 0.05 returns ``x`` unchanged."""
    from torchvision.transforms.functional import gaussian_blur

    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma {sigma!r}: want a finite value >= 0")
    if sigma <= 0.05:
        return x
    k = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(x, [k, k], [sigma, sigma])


def blur_frames(frames: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 frames ``(..., H, W, 3)`` blurred by :func:`blur` (``sigma`` pixels)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames {frames.dtype} {frames.shape}: want uint8 (..., H, W, 3)")
    x = torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3).float()
    y = blur(x.reshape(-1, *x.shape[-3:]), sigma).reshape(x.shape)
    return y.round().clamp(0, 255).to(torch.uint8).movedim(-3, -1).numpy()


def _degrade(x: torch.Tensor, rng: np.random.Generator, max_blur: float, max_noise: float
             ) -> torch.Tensor:
    """Each example of ``x`` ``(B, ..., 3, H, W)`` in [-1, 1] blurred by a sigma drawn from
    U(0, max_blur) and given pixel noise of a std drawn from U(0, max_noise): the losses of a
    rendered frame (soft edges, rounded corners, grain) that leave what it shows unchanged."""
    if max_blur <= 0 and max_noise <= 0:
        return x
    out = torch.empty_like(x)
    sigmas = rng.uniform(0, max_blur, len(x)) if max_blur > 0 else np.zeros(len(x))
    stds = rng.uniform(0, max_noise, len(x)) if max_noise > 0 else np.zeros(len(x))
    noise = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))
    for i in range(len(x)):
        out[i] = blur(x[i], float(sigmas[i])) + float(stds[i]) * noise[i]
    return out


@torch.no_grad()
def _through_vae(x: torch.Tensor, vae, rng: np.random.Generator, fraction: float,
                 latent_noise: float) -> torch.Tensor:
    """A ``fraction`` of the frames ``x`` ``(B, 3, H, W)`` in [-1, 1] replaced by their
    round trip through the toy VAE, the scaled latents given noise of std ~ U(0,
    latent_noise) on the way."""
    pick = np.flatnonzero(rng.random(len(x)) < fraction)
    if not len(pick):
        return x
    z = vae.model.encode(x[pick]).latent_dist.mean * vae.scaling_factor
    stds = torch.from_numpy(rng.uniform(0, latent_noise, len(pick)).astype(np.float32))
    z = z + stds.view(-1, 1, 1, 1) * torch.from_numpy(
        rng.standard_normal(tuple(z.shape), dtype=np.float32))
    out = x.clone()
    out[pick] = vae.decoder_graph()(z)
    return out


def fresh_clips(n: int, rng: np.random.Generator, cfg: StimulusConfig
                ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``n`` clips drawn anew by the simulator's film generator (scenes that persist a few
    clips, then cut, as in a session) and rendered: uint8 frames ``(n, T, H, W, 3)`` and
    records with the ``attributes`` and ``objects`` a session's ``captions.jsonl`` has."""
    specs = generate_clips(n, rng, cfg)
    frames = np.stack([render_clip(s, cfg) for s in specs])
    return frames, [{"attributes": s.attributes(), "objects": s.object_records()}
                    for s in specs]


def train_probe(frames: np.ndarray, records: list[dict[str, Any]], out_dir: str | Path, *,
                steps: int = 3000, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                width: int = 16, what_depth: int = 5, max_blur: float = 0.0,
                max_noise: float = 0.0,
                vae=None, vae_fraction: float = 0.5, latent_noise: float = 0.0,
                fresh: float = 0.0, stimulus: StimulusConfig | None = None,
                progress: bool = True) -> AttributeProbe:
    """Train the probe on the training clips' true frames (the test clips are never seen).

    With ``fresh`` > 0 that share of each batch is instead clips the simulator draws anew
    every step (:func:`fresh_clips`, with the session's ``stimulus`` config), so the probe
    never sees a clip twice. Trained on the session's 3,840 clips alone, the probe learns
    them by heart: it names every square and diamond of the training clips right and only
    0.6 of the test clips' (a square turned 45 degrees differs from a diamond only in the
    diamond's 0.75 aspect ratio), which held its shape score on the true test frames below
    0.9.

    Each step: the *what* stack on one random frame per clip, under one of the eight flips and
    quarter turns; the *where* stack on whole clips, mirrored left-right and top-bottom at
    random with the position and motion labels mirrored to match. With ``max_blur`` /
    ``max_noise`` > 0 every example is also blurred (sigma ~ U(0, max_blur) pixels) and given
    pixel noise (std ~ U(0, max_noise), frames in [-1, 1]): a probe trained on crisp frames
    alone reads a slightly rounded triangle as a square, so it would score a renderer's
    soft edges as wrong shapes.

    With a toy ``vae`` (:class:`~rtdecode.zoo.vae.ToyVAE`), a ``vae_fraction`` of each step's
    single frames go through it (encoded, given latent noise of a std drawn from
    U(0, ``latent_noise``), decoded) before the *what* stack reads them: the renderer's own
    output domain, whose outlines are the VAE decoder's (rounded corners, thinner points),
    labelled with the true clip's attributes."""
    for name, v in (("max_blur", max_blur), ("max_noise", max_noise),
                    ("latent_noise", latent_noise)):
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{name} {v!r}: want a finite value >= 0")
    if not 0.0 <= vae_fraction <= 1.0:
        raise ValueError(f"vae_fraction {vae_fraction!r}: want 0..1")
    if not 0.0 <= fresh <= 1.0:
        raise ValueError(f"fresh {fresh!r}: want 0..1 (the share of each batch drawn anew)")
    n_fresh = int(round(fresh * batch_size))
    if stimulus is None:
        stimulus = StimulusConfig(size=frames.shape[2], frames_per_clip=frames.shape[1])
    if n_fresh and (stimulus.size, stimulus.frames_per_clip) != (frames.shape[2],
                                                                  frames.shape[1]):
        raise ValueError(f"stimulus config draws {stimulus.frames_per_clip} frames of "
                         f"{stimulus.size} px; the session's clips have {frames.shape[1]} of "
                         f"{frames.shape[2]}")
    torch.manual_seed(seed)
    train = np.array([r["clip_id"] for r in records if r["split"] == "train"], np.int64)
    if len(train) < 2 and n_fresh < batch_size:
        raise ValueError(f"need >= 2 training clips, found {len(train)}")

    def soft(sets: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {a: torch.from_numpy(m / m.sum(axis=1, keepdims=True)) for a, m in sets.items()}

    y = soft(label_sets(records, frames.shape[2]))
    flips = {h: {a: torch.from_numpy(flip_permutation(a, h)) for a in AttributeProbe.WHERE}
             for h in (True, False)}
    model = AttributeProbe(width, image_size=frames.shape[2], frames=frames.shape[1],
                           what_depth=what_depth)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    ce = nn.CrossEntropyLoss()
    for step in tqdm(range(steps), disable=not progress, desc="attribute probe", unit="step"):
        rng = np.random.default_rng([seed, step])
        ids = (train[rng.integers(0, len(train), batch_size - n_fresh)]
               if n_fresh < batch_size else train[:0])
        batch = np.asarray(frames[ids])
        target = {a: y[a][ids] for a in ATTRIBUTES}
        if n_fresh:
            new, recs = fresh_clips(n_fresh, np.random.default_rng([seed, step, 1]), stimulus)
            batch = np.concatenate([batch, new])
            drawn = soft(label_sets(recs, frames.shape[2]))
            target = {a: torch.cat([target[a], drawn[a]]) for a in ATTRIBUTES}
        x = _inputs(batch)                                             # (B, T, 3, H, W)
        one = x[torch.arange(len(x)), torch.from_numpy(rng.integers(0, x.shape[1], len(x)))]
        one = torch.rot90(one, int(rng.integers(4)), dims=(2, 3))
        if rng.random() < 0.5:
            one = one.flip(3)
        if vae is not None:
            one = _through_vae(one, vae, rng, vae_fraction, latent_noise)
        one, x = _degrade(one, rng, max_blur, max_noise), _degrade(x, rng, max_blur, max_noise)
        for horizontal, dim in ((True, 4), (False, 3)):
            if rng.random() < 0.5:
                x = x.flip(dim)
                for a, perm in flips[horizontal].items():
                    target[a] = target[a][:, perm]
        out = {**model.what(one), **model.where(x)}
        loss = sum(ce(out[a], target[a]) for a in ATTRIBUTES)  # soft: either object
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    augment = {"max_blur": max_blur, "max_noise": max_noise, "fresh": fresh}
    if vae is not None:
        augment.update(vae={"latent_shape": list(vae.latent_shape),
                            "scaling_factor": vae.scaling_factor},
                       vae_fraction=vae_fraction, latent_noise=latent_noise)
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()},
              str(out_path / PROBE_FILE), metadata={"format": FORMAT})
    (out_path / "config.json").write_text(json.dumps(
        {"format": FORMAT, "width": model.width, "what_depth": model.what_depth,
         "image_size": model.image_size,
         "frames": model.frames, "attributes": list(ATTRIBUTES), "steps": steps, "seed": seed,
         "augment": augment},
        indent=2) + "\n")
    return model


def load_probe(path: str | Path) -> AttributeProbe:
    folder = Path(path)
    if not (folder / PROBE_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no {PROBE_FILE} (train one with "
                                "`rtdecode train probe`)")
    meta = json.loads((folder / "config.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder}: probe format {meta.get('format')!r}, this rtdecode reads "
                         f"{FORMAT!r} (retrain with `rtdecode train probe`)")
    model = AttributeProbe(meta["width"], meta["image_size"], meta["frames"],
                           meta.get("what_depth", 5))
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / PROBE_FILE)).items()})
    return model.eval()


@torch.no_grad()
def probe_predictions(probe: AttributeProbe, clips: np.ndarray) -> dict[str, np.ndarray]:
    """The probe's class index per clip, per attribute."""
    preds: dict[str, list[np.ndarray]] = {a: [] for a in ATTRIBUTES}
    probe.eval()
    for i in range(0, len(clips), 128):
        out = probe(_inputs(clips[i:i + 128]))
        for a in ATTRIBUTES:
            preds[a].append(out[a].argmax(dim=1).numpy())
    return {a: np.concatenate(p) for a, p in preds.items()}


def probe_accuracy(probe: AttributeProbe, clips: np.ndarray, records: list[dict[str, Any]],
                   preds: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Fraction of clips whose attribute the probe names as one the clip's objects have
    (``preds``: :func:`probe_predictions` of these clips, if already computed)."""
    if len(clips) != len(records):
        raise ValueError(f"{len(clips)} clips but {len(records)} records")
    y = label_sets(records)
    preds = probe_predictions(probe, clips) if preds is None else preds
    return {a: float(np.mean(y[a][np.arange(len(records)), preds[a]] > 0))
            for a in ATTRIBUTES}


def accuracy_by_value(preds: np.ndarray, records: list[dict[str, Any]], attribute: str
                      ) -> dict[str, dict[str, float]]:
    """Per value of an object attribute (shape, colour, motion), over the single-object clips
    that have it: ``{value: {"clips": n, "accuracy": fraction named right}}`` — which values
    a condition loses (e.g. the shapes the VAE's latents drop)."""
    if attribute not in ("shape", "colour", "motion"):
        raise ValueError(f"attribute {attribute!r}: want shape, colour or motion")
    vocab = ATTRIBUTE_GROUPS[attribute]
    hits: dict[str, list[bool]] = {}
    for p, r in zip(preds, records):
        objects = r.get("objects") or []
        if len(objects) == 1:
            value = objects[0][attribute]
            hits.setdefault(value, []).append(vocab[int(p)] == value)
    return {v: {"clips": len(hits[v]), "accuracy": round(float(np.mean(hits[v])), 4)}
            for v in vocab if v in hits}


def clip_zero_shot(clip, clips: np.ndarray, records: list[dict[str, Any]]
                   ) -> dict[str, float]:
    """The toy CLIP's zero-shot accuracy on each clip's first frame (no motion readout); right
    if it names a value any of the clip's objects has, as :func:`probe_accuracy`."""
    from ..zoo.clip import zero_shot_prompts

    groups = ("background", "colour", "shape", "position")
    img = clip.encode_image(np.ascontiguousarray(np.asarray(clips)[:, 0]))
    prompts, labels = zero_shot_prompts()
    pemb = clip.encode_text(prompts)
    truth = label_sets(records, np.asarray(clips).shape[2])
    acc = {}
    for g in groups:
        vocab = ATTRIBUTE_GROUPS[g]
        cls = np.stack([pemb[[lab[g] == v for lab in labels]].mean(axis=0) for v in vocab])
        pred = (img @ cls.T).argmax(axis=1)
        acc[g] = float(np.mean(truth[g][np.arange(len(records)), pred] > 0))
    return acc
