"""The toy world's CLIP: the semantic space SAD targets and the evaluation's classifier.

A small open_clip ``CLIP`` (no pretrained weights) trained contrastively on the simulator's
training clips: one frame of a clip against one of its four captions (basic, anchor, motion,
holistic), so that every SemMiner level shares one space. ``ToyClip`` wraps a trained model for
inference; ``train_clip`` trains (resumably) and ``load_toy_clip`` loads.

Files in a checkpoint folder::

    clip.safetensors   model weights (float32, or float16 with ``save_fp16``); token rows never
                       seen in training are all zero and stored sparsely
    config.json        ToyClipConfig
    train_state.pt     optimizer state and step, for resume
    loss.csv           step, loss, lr
    metrics.json       held-out retrieval and zero-shot attribute accuracy, per epoch
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..simulator.stimuli import ATTRIBUTE_GROUPS

WEIGHTS_FILE = "clip.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"
LOSS_FILE = "loss.csv"
METRICS_FILE = "metrics.json"
FORMAT = "rtdecode-toy-clip/1"

CAPTION_LEVELS = ("basic", "anchor", "motion", "holistic")
#: Attribute groups scored zero-shot (motion needs frame order, n_objects a second object).
ZERO_SHOT_GROUPS = ("shape", "colour", "background", "texture", "size", "position")
_PIXEL_MEAN, _PIXEL_STD = 0.5, 0.25
_TOKEN_KEY = "token_embedding.weight"


@dataclass(frozen=True)
class ToyClipConfig:
    """Architecture and training hyper-parameters of the toy CLIP."""

    embed_dim: int = 128
    image_size: int = 64
    vision: str = "vit"  # "vit" (open_clip VisionTransformer) or "resnet" (ModifiedResNet)
    vision_layers: tuple[int, ...] = (4,)  # vit: (depth,); resnet: 4 stage depths
    vision_width: int = 128
    vision_head_width: int = 32
    patch_size: int = 8  # vit only
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 128
    text_heads: int = 4
    text_layers: int = 4
    # training
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    steps: int = 2000
    seed: int = 0
    checkpoint_every: int = 200
    bf16: bool = False  # bf16 autocast for forward passes (faster on AMX CPUs)

    def __post_init__(self) -> None:
        if self.vision not in ("vit", "resnet"):
            raise ValueError(f"vision {self.vision!r}: must be 'vit' or 'resnet'")
        want = 1 if self.vision == "vit" else 4
        if len(self.vision_layers) != want or min(self.vision_layers) < 1:
            raise ValueError(f"vision_layers {self.vision_layers!r}: {self.vision} needs {want} "
                             "positive depth(s)")
        if self.vision == "vit" and self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size}: must divide image_size "
                             f"{self.image_size}")
        if self.vision == "resnet" and self.image_size % 32:
            raise ValueError(f"image_size {self.image_size}: resnet needs a multiple of 32")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_heads {self.text_heads}: must divide text_width "
                             f"{self.text_width}")
        for name in ("embed_dim", "vision_width", "text_layers", "batch_size", "steps",
                     "checkpoint_every", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)!r}: must be >= 1")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.warmup_steps >= 0):
            raise ValueError(f"lr {self.lr!r}, weight_decay {self.weight_decay!r}, warmup_steps "
                             f"{self.warmup_steps!r}: must be > 0, >= 0, >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["vision_layers"] = list(self.vision_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToyClipConfig:
        """Strict: unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ToyClipConfig keys: {unknown}")
        d = dict(d)
        if "vision_layers" in d:
            d["vision_layers"] = tuple(int(v) for v in d["vision_layers"])
        return cls(**d)

    def vision_cfg(self) -> open_clip.CLIPVisionCfg:
        layers: int | tuple[int, ...] = (self.vision_layers[0] if self.vision == "vit"
                                         else tuple(self.vision_layers))
        return open_clip.CLIPVisionCfg(layers=layers, width=self.vision_width,
                                       head_width=self.vision_head_width,
                                       patch_size=self.patch_size, image_size=self.image_size)

    def text_cfg(self) -> open_clip.CLIPTextCfg:
        return open_clip.CLIPTextCfg(context_length=self.context_length,
                                     vocab_size=self.vocab_size, width=self.text_width,
                                     heads=self.text_heads, layers=self.text_layers)


def build_model(cfg: ToyClipConfig) -> open_clip.CLIP:
    """A freshly initialised model, seeded by ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    return open_clip.CLIP(cfg.embed_dim, vision_cfg=cfg.vision_cfg(), text_cfg=cfg.text_cfg())


@functools.lru_cache(maxsize=4)
def make_tokenizer(context_length: int = 77) -> open_clip.SimpleTokenizer:
    """open_clip's bundled BPE tokenizer (its vocabulary ships in the wheel: works offline).

    Shared per context length: building one reads the vocabulary (~0.7 s).
    """
    return open_clip.SimpleTokenizer(context_length=context_length)


def frames_to_tensor(frames: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 ``(n, H, W, 3)`` -> normalised float32 ``(n, 3, H, W)``."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames {frames.dtype} {frames.shape}: want uint8 (n, H, W, 3)")
    if frames.shape[1:3] != (image_size, image_size):
        raise ValueError(f"frames {frames.shape[1:3]}: want {image_size}x{image_size}")
    x = torch.from_numpy(np.array(frames, copy=True)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - _PIXEL_MEAN) / _PIXEL_STD


def _text_forward(model: open_clip.CLIP, tokens: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token hidden states after ln_final, unnormalised pooled embedding).

    ``tokens`` may be cut to the first L positions: under the causal mask positions < L do not
    see later ones, so the result equals the full-context one there (training uses this).
    """
    n = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    hidden = model.ln_final(x)
    pooled = hidden[torch.arange(hidden.shape[0]), tokens.argmax(dim=-1)]
    proj = model.text_projection
    pooled = proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj
    return hidden, pooled


def _cut_padding(tokens: torch.Tensor) -> torch.Tensor:
    """Drop the columns after the last end-of-text token (exact for pooled outputs)."""
    return tokens[:, :int(tokens.argmax(dim=-1).max()) + 1] if len(tokens) else tokens


class ToyClip:
    """Inference wrapper: eval mode, no grad, batched, float32 numpy out."""

    def __init__(self, model: open_clip.CLIP, cfg: ToyClipConfig, *, batch_size: int = 256):
        self.model = model.float().eval()
        self.cfg = cfg
        self.batch_size = batch_size
        self.tokenizer = make_tokenizer(cfg.context_length)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def token_width(self) -> int:
        return self.cfg.text_width

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("texts: pass a sequence of strings, not one string")
        return self.tokenizer(list(texts))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised pooled text embeddings ``(n, embed_dim)``."""
        self.model.eval()
        out = [F.normalize(_text_forward(self.model, _cut_padding(t))[1], dim=-1)
               for t in self.tokenize(texts).split(self.batch_size)]
        return _cat(out, (0, self.embed_dim))

    @torch.no_grad()
    def encode_text_tokens(self, texts: Sequence[str], n_tokens: int | None = None
                           ) -> np.ndarray:
        """Final per-token hidden states ``(n, n_tokens, text_width)`` (SAD's targets);
        ``n_tokens`` None: all ``context_length``. Only the first ``n_tokens`` positions are
        run (under the causal mask they do not see later ones): 16 of 77 is ~8x faster."""
        length = self.cfg.context_length if n_tokens is None else int(n_tokens)
        if not 1 <= length <= self.cfg.context_length:
            raise ValueError(f"n_tokens {n_tokens}: want 1..{self.cfg.context_length}")
        self.model.eval()
        out = [_text_forward(self.model, t[:, :length])[0]
               for t in self.tokenize(texts).split(self.batch_size)]
        return _cat(out, (0, length, self.token_width))

    @torch.no_grad()
    def encode_image(self, frames: np.ndarray) -> np.ndarray:
        """Normalised image embeddings ``(n, embed_dim)`` of uint8 ``(n, H, W, 3)`` frames."""
        self.model.eval()
        x = frames_to_tensor(frames, self.cfg.image_size)
        out = [self.model.encode_image(b, normalize=True) for b in x.split(self.batch_size)]
        return _cat(out, (0, self.embed_dim))

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> np.ndarray:
        """Mean of frame embeddings, renormalised: ``(n, T, H, W, 3)`` -> ``(n, embed_dim)``."""
        if frames.ndim != 5:
            raise ValueError(f"frames {frames.shape}: want (n, T, H, W, 3)")
        n, t = frames.shape[:2]
        emb = self.encode_image(frames.reshape(n * t, *frames.shape[2:]))
        mean = emb.reshape(n, t, -1).mean(axis=1)
        return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def _cat(chunks: list[torch.Tensor], empty_shape: tuple[int, ...]) -> np.ndarray:
    if not chunks:
        return np.zeros(empty_shape, np.float32)
    return torch.cat(chunks).float().numpy()


# --------------------------------------------------------------------------------------------
# Saving and loading


def save_toy_clip(model: open_clip.CLIP, cfg: ToyClipConfig, out_dir: str | Path, *,
                  fp16: bool = False) -> Path:
    """Write ``clip.safetensors`` and ``config.json``; returns the weights path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if fp16 and v.is_floating_point():
            v = v.half()
        state[k] = v.contiguous()
    emb = state.pop(_TOKEN_KEY)
    used = torch.nonzero(emb.abs().sum(dim=1) > 0).flatten()
    if len(used) < emb.shape[0]:  # untrained rows are exactly zero: store the others only
        state[_TOKEN_KEY + ".ids"] = used.to(torch.int64)
        state[_TOKEN_KEY + ".rows"] = emb[used].contiguous()
    else:
        state[_TOKEN_KEY] = emb
    meta = {"format": FORMAT, "dtype": "float16" if fp16 else "float32",
            "vocab_size": str(emb.shape[0])}
    path = out / WEIGHTS_FILE
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    (out / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return path


def _load_state(path: Path, vocab_size: int) -> dict[str, torch.Tensor]:
    state = load_file(str(path))
    if _TOKEN_KEY + ".ids" in state:
        ids, rows = state.pop(_TOKEN_KEY + ".ids"), state.pop(_TOKEN_KEY + ".rows")
        emb = torch.zeros(vocab_size, rows.shape[1], dtype=rows.dtype)
        emb[ids] = rows
        state[_TOKEN_KEY] = emb
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_toy_clip(path: str | Path) -> ToyClip:
    """Load a ``ToyClip`` from a checkpoint folder (or its ``clip.safetensors``), in float32."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    weights = folder / WEIGHTS_FILE if p.is_dir() else p
    if not weights.exists() or not (folder / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path}: want {WEIGHTS_FILE} and {CONFIG_FILE} there")
    cfg = ToyClipConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    model = open_clip.CLIP(cfg.embed_dim, vision_cfg=cfg.vision_cfg(), text_cfg=cfg.text_cfg())
    model.load_state_dict(_load_state(weights, cfg.vocab_size))
    return ToyClip(model, cfg)


# --------------------------------------------------------------------------------------------
# Data and evaluation


def load_stimuli(data_dir: str | Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(memory-mapped uint8 frames ``(n_clips, T, H, W, 3)``, caption records by clip id)."""
    stim = Path(data_dir) / "stimuli"
    frames = np.load(stim / "frames.npy", mmap_mode="r")
    with open(stim / "captions.jsonl") as f:
        records = [json.loads(line) for line in f if line.strip()]
    records.sort(key=lambda r: r["clip_id"])
    if [r["clip_id"] for r in records] != list(range(len(frames))):
        raise ValueError(f"{stim}: captions.jsonl clip ids do not match frames.npy "
                         f"({len(records)} records, {len(frames)} clips)")
    return frames, records


def zero_shot_prompts(n: int = 480, seed: int = 0) -> tuple[list[str], list[dict[str, str]]]:
    """Prompts over random attribute combinations, worded like the captions, and their labels.

    A class embedding of a value is the mean over the prompts that carry it, which marginalises
    the other attributes.
    """
    rng = np.random.default_rng(seed)
    prompts, labels = [], []
    for _ in range(n):
        a = {g: str(rng.choice(ATTRIBUTE_GROUPS[g])) for g in ZERO_SHOT_GROUPS}
        prompts.append(f"a {a['size']} {a['colour']} {a['shape']} {_where(a['position'])} "
                       f"on a {a['background']} {a['texture']} background")
        labels.append(a)
    return prompts, labels


def _where(position: str) -> str:
    """A position as the captions word it ("at the top", "on the left", "in the top left")."""
    if position in ("top", "bottom"):
        return f"at the {position}"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"in the {position}"


def evaluate_clip(clip: ToyClip, frames: np.ndarray, records: list[dict[str, Any]]
                  ) -> dict[str, Any]:
    """Held-out metrics on the test clips' middle frames.

    Text-to-image retrieval of each clip's anchor caption among all test clips (top-1/top-5,
    chance 1/n and 5/n), image-to-text top-1, and zero-shot attribute accuracy per group.
    """
    test = [r for r in records if r["split"] == "test"]
    if not test:
        raise ValueError("no test clips to evaluate on")
    ids = np.array([r["clip_id"] for r in test])
    img = clip.encode_image(np.asarray(frames[ids, frames.shape[1] // 2]))
    txt = clip.encode_text([r["anchor"] for r in test])
    sim = txt @ img.T
    rank = (sim > np.diag(sim)[:, None]).sum(axis=1)  # 0 = the clip's own frame ranks first
    rank_i2t = (sim.T > np.diag(sim)[:, None]).sum(axis=1)
    out: dict[str, Any] = {"n_test": len(test), "t2i_top1": float(np.mean(rank < 1)),
                           "t2i_top5": float(np.mean(rank < 5)),
                           "i2t_top1": float(np.mean(rank_i2t < 1))}
    prompts, labels = zero_shot_prompts()
    pemb = clip.encode_text(prompts)
    acc = {}
    for g in ZERO_SHOT_GROUPS:
        vocab = ATTRIBUTE_GROUPS[g]
        cls = np.stack([pemb[[lab[g] == v for lab in labels]].mean(axis=0) for v in vocab])
        pred = (img @ cls.T).argmax(axis=1)
        truth = np.array([vocab.index(r["attributes"][g]) for r in test])
        acc[g] = float(np.mean(pred == truth))
    out["zero_shot"] = acc
    out["zero_shot_chance"] = {g: 1.0 / len(ATTRIBUTE_GROUPS[g]) for g in ZERO_SHOT_GROUPS}
    return out


# --------------------------------------------------------------------------------------------
# Training


def _lr_at(step: int, cfg: ToyClipConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No decay on gains, biases, embeddings (keeps untrained token rows exactly zero) or scale.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = (p.ndim < 2 or "embedding" in name or name.endswith("class_embedding")
                or name == "logit_scale")
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _batch(step: int, cfg: ToyClipConfig, n_train: int, n_frames: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clip rows, frame indices, caption levels) of a step: a pure function of (seed, step)."""
    per_epoch = max(1, n_train // cfg.batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([cfg.seed, 0, epoch]).permutation(n_train)
    rows = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]
    rng = np.random.default_rng([cfg.seed, 1, step])
    return rows, rng.integers(0, n_frames, len(rows)), rng.integers(0, 4, len(rows))


def train_clip(data_dir: str | Path, out_dir: str | Path, cfg: ToyClipConfig, *,
               progress: bool = True, resume: bool = True, max_minutes: float | None = None,
               save_fp16: bool = False) -> ToyClip:
    """Train the toy CLIP on a simulated session's training clips; returns the trained model.

    Checkpoints every ``cfg.checkpoint_every`` steps (and when ``max_minutes`` runs out); with
    ``resume`` an existing ``train_state.pt`` in ``out_dir`` with the same config is continued.
    Batches are a pure function of (seed, step), so a resumed run equals an uninterrupted one.
    ``save_fp16`` stores the final weights as float16 (resume then continues from those).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames, records = load_stimuli(data_dir)
    if frames.shape[2:4] != (cfg.image_size, cfg.image_size):
        raise ValueError(f"frames {frames.shape[2:4]}: config image_size is {cfg.image_size}")
    train_ids = np.array([r["clip_id"] for r in records if r["split"] == "train"])
    if len(train_ids) < 2:
        raise ValueError(f"{data_dir}: need >= 2 training clips, found {len(train_ids)}")
    tokenizer = make_tokenizer(cfg.context_length)
    tokens = tokenizer([records[i][lv] for i in train_ids for lv in CAPTION_LEVELS])
    tokens = tokens.reshape(len(train_ids), len(CAPTION_LEVELS), cfg.context_length)

    model = build_model(cfg)
    with torch.no_grad():  # token rows the captions never use carry no meaning: make them zero
        used = torch.zeros(cfg.vocab_size, dtype=torch.bool)
        used[tokens.unique()] = True
        model.token_embedding.weight[~used] = 0.0
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                            betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()
    step, elapsed, history = 0, 0.0, []
    state_path = out / STATE_FILE
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["config"] != cfg.to_dict():
            raise ValueError(f"{state_path}: saved config differs from this one; pass "
                             "resume=False or another out_dir")
        model.load_state_dict(_load_state(out / WEIGHTS_FILE, cfg.vocab_size))
        opt.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        if (out / METRICS_FILE).exists():
            history = [h for h in json.loads((out / METRICS_FILE).read_text())["history"]
                       if h["step"] <= step]
    loss_rows = _read_loss_rows(out / LOSS_FILE, step) if step else []

    def checkpoint(final: bool = False) -> None:
        save_toy_clip(model, cfg, out, fp16=save_fp16 and final)
        torch.save({"step": step, "optimizer": opt.state_dict(), "elapsed_s": elapsed,
                    "config": cfg.to_dict()}, state_path)
        with open(out / LOSS_FILE, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "lr"])
            w.writerows(loss_rows)

    def evaluate() -> None:
        clip = ToyClip(model, cfg)
        m = evaluate_clip(clip, frames, records)
        model.train()
        m.update(step=step, epoch=step / max(1, len(train_ids) // cfg.batch_size),
                 elapsed_s=round(elapsed, 1))
        history.append(m)
        summary = {"final": m, "history": history, "n_train": len(train_ids),
                   "train_seconds": round(elapsed, 1), "steps": cfg.steps}
        (out / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")

    per_epoch = max(1, len(train_ids) // cfg.batch_size)
    n_frames = frames.shape[1]
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="toy clip",
               unit="step")
    t_start = time.monotonic()
    stopped = False
    while step < cfg.steps:
        t0 = time.monotonic()
        rows, fidx, lvl = _batch(step, cfg, len(train_ids), n_frames)
        images = frames_to_tensor(np.asarray(frames[train_ids[rows], fidx]), cfg.image_size)
        text = tokens[torch.from_numpy(rows), torch.from_numpy(lvl)]
        text = _cut_padding(text)
        lr = _lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            img_f = model.encode_image(images)
            txt_f = _text_forward(model, text)[1]
        loss = loss_fn(F.normalize(img_f.float(), dim=-1), F.normalize(txt_f.float(), dim=-1),
                       model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))
        step += 1
        elapsed += time.monotonic() - t0
        loss_rows.append([step, f"{loss.item():.5f}", f"{lr:.6g}"])
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        out_of_time = (max_minutes is not None
                       and time.monotonic() - t_start >= 60.0 * max_minutes)
        if step % per_epoch == 0 or step == cfg.steps or out_of_time:
            evaluate()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            checkpoint(final=step == cfg.steps)
        if out_of_time:
            stopped = step < cfg.steps
            break
    bar.close()
    if step >= cfg.steps and not history:
        evaluate()
    if stopped and progress:
        tqdm.write(f"toy clip: stopped at step {step}/{cfg.steps} (max_minutes); resume later")
    return ToyClip(model, cfg)


def _read_loss_rows(path: Path, upto: int) -> list[list[Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in list(csv.reader(f))[1:] if row and int(row[0]) <= upto]


#: The recipe the shipped toy CLIP was trained with (`rtdecode train clip`): a small
#: ModifiedResNet trains ~4x faster per step than a ViT at 64x64 on 2 CPU cores.
TOY_RECIPE = ToyClipConfig(vision="resnet", vision_layers=(1, 1, 1, 1), vision_width=16,
                           vision_head_width=32, warmup_steps=40, steps=600,
                           checkpoint_every=100)
