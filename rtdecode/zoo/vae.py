"""The toy world's VAE: the latent space MAD decodes into and the renderer's first stage.

A small diffusers ``AutoencoderKL`` (no pretrained weights; 64×64 RGB → 4×16×16 latents, the
SD1.5 VAE's layout at a quarter of its downsampling) trained on the simulator's training-clip
frames with an L1 reconstruction loss, an L1 loss on image gradients (keeps the shapes' edges,
which a plain pixel loss smears) and a small KL term. The real config points at the SD1.5 VAE
on local disk (``AutoencoderKL.from_pretrained``); the same :class:`ToyVAE` wrapper serves
both.

Files in a checkpoint folder::

    vae.safetensors    weights (float32, or float16 for the shipped copy)
    config.json        {"diffusers": AutoencoderKL config, "train": ToyVAEConfig,
                        "scaling_factor": latent scale, "metrics": held-out PSNR}
    train_state.pt     optimizer state and step, for resume
    loss.csv           step, loss, l1, grad, kl, lr
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import check_widths

WEIGHTS_FILE = "vae.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"
LOSS_FILE = "loss.csv"
FORMAT = "rtdecode-toy-vae/1"


@dataclass(frozen=True)
class ToyVAEConfig:
    """Architecture and training hyper-parameters of the toy VAE."""

    image_size: int = 64
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # 3 blocks: two downsamples, 64 → 16
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 4       # small groups: 1-channel groups (instance norm) lose colour
    # training
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    steps: int = 2000
    kl_weight: float = 1e-6
    grad_weight: float = 1.0
    object_weight: float = 0.0    # extra L1 weight on object pixels (see object_weights)
    # a decoder of its own width (None: block_out_channels), trained on the frozen encoder's
    # latents by `train vae-decoder --decoder-channels`: sharper outlines, same latent space
    decoder_channels: tuple[int, ...] | None = None
    seed: int = 0
    checkpoint_every: int = 100
    val_fraction: float = 0.05
    val_frames: int = 256         # held-out frames scored (PSNR) at every checkpoint

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToyVAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"toy VAE config: unknown keys {sorted(unknown)}")
        d = dict(d)
        d["block_out_channels"] = tuple(d.get("block_out_channels", cls.block_out_channels))
        if d.get("decoder_channels") is not None:
            d["decoder_channels"] = tuple(d["decoder_channels"])
        return cls(**d)

    def __post_init__(self) -> None:
        chans = tuple(self.block_out_channels)
        check_widths("block_out_channels", chans, self.norm_num_groups)
        if self.image_size % 2 ** (len(chans) - 1):
            raise ValueError(f"block_out_channels {chans!r}: {len(chans) - 1} downsamples do "
                             f"not tile frames of {self.image_size} px")
        if int(self.latent_channels) != self.latent_channels or self.latent_channels < 1:
            raise ValueError(f"latent_channels {self.latent_channels!r}: want an integer >= 1")
        dec = self.decoder_channels
        if dec is not None and (len(dec) != len(self.block_out_channels) or any(
                int(c) != c or c <= 0 or c % self.norm_num_groups for c in dec)):
            raise ValueError(f"decoder_channels {tuple(dec)!r}: want "
                             f"{len(self.block_out_channels)} positive multiples of "
                             f"norm_num_groups ({self.norm_num_groups}), one per level of the "
                             f"encoder's {tuple(self.block_out_channels)}")

    def diffusers_config(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                    up_block_types=("UpDecoderBlock2D",) * n,
                    block_out_channels=self.block_out_channels,
                    layers_per_block=self.layers_per_block,
                    latent_channels=self.latent_channels,
                    norm_num_groups=self.norm_num_groups, sample_size=self.image_size)

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.block_out_channels) - 1)


def build_vae(cfg: ToyVAEConfig):
    """The diffusers ``AutoencoderKL``; with ``cfg.decoder_channels``, its decoder swapped for
    a diffusers ``Decoder`` of that width (``decode`` calls it the same way)."""
    from diffusers import AutoencoderKL

    model = AutoencoderKL(**cfg.diffusers_config())
    if cfg.decoder_channels is not None:
        model.decoder = _decoder(cfg)
    return model


def _decoder(cfg: ToyVAEConfig):
    from diffusers.models.autoencoders.vae import Decoder

    chans = tuple(cfg.decoder_channels or cfg.block_out_channels)
    return Decoder(in_channels=cfg.latent_channels, out_channels=3,
                   up_block_types=("UpDecoderBlock2D",) * len(chans), block_out_channels=chans,
                   layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
                   act_fn="silu")


def frames_to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` → float ``(N, 3, H, W)`` in [-1, 1] (the diffusers range)."""
    x = torch.from_numpy(np.array(frames, copy=True)).reshape(-1, *frames.shape[-3:])
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def pixels_to_frames(x: torch.Tensor) -> np.ndarray:
    """float ``(N, 3, H, W)`` in [-1, 1] → uint8 ``(N, H, W, 3)``."""
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).numpy()


class VAEDecoderGraph(torch.nn.Module):
    """The VAE's decoder as a pure function — what is exported to ONNX and what
    :meth:`ToyVAE.decode` runs, so the two compute the same thing.

    ``forward(latents)``: scaled latents (B, C, h, w), one frame of MAD's output; the
    division by ``scaling_factor`` is part of the graph. Returns pixels (B, 3, H, W) float
    in [-1, 1] (the diffusers range, clamped; :func:`pixels_to_frames` makes uint8).
    """

    def __init__(self, model, scaling_factor: float):
        super().__init__()
        self.model, self.scaling_factor = model, float(scaling_factor)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents / self.scaling_factor).sample.clamp(-1.0, 1.0)


class ToyVAE:
    """Inference wrapper: frames ↔ scaled latents (``latent = mean · scaling_factor``)."""

    def __init__(self, model, scaling_factor: float = 1.0, *, batch_size: int = 256):
        self.model = model.eval()
        self.scaling_factor = float(scaling_factor)
        self.batch_size = batch_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.model.config
        f = 2 ** (len(c.block_out_channels) - 1)
        return (c.latent_channels, c.sample_size // f, c.sample_size // f)

    def decoder_graph(self) -> VAEDecoderGraph:
        """The decoder as an exportable module (scaled latents → pixels in [-1, 1])."""
        return VAEDecoderGraph(self.model, self.scaling_factor)

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames ``(..., H, W, 3)`` → latents ``(..., C, h, w)`` float32."""
        lead = frames.shape[:-3]
        flat = frames.reshape(-1, *frames.shape[-3:])
        out = [self.model.encode(frames_to_pixels(flat[i: i + self.batch_size])).latent_dist.mean
               for i in range(0, len(flat), self.batch_size)]
        z = torch.cat(out) * self.scaling_factor if out else torch.zeros(0, *self.latent_shape)
        return z.numpy().astype(np.float32).reshape(*lead, *self.latent_shape)

    @torch.no_grad()
    def decode(self, latents: np.ndarray | torch.Tensor) -> np.ndarray:
        """Latents ``(..., C, h, w)`` → uint8 frames ``(..., H, W, 3)``."""
        z = torch.as_tensor(np.asarray(latents, np.float32))
        lead = z.shape[:-3]
        flat = z.reshape(-1, *z.shape[-3:])
        graph = self.decoder_graph()
        out = [pixels_to_frames(graph(flat[i: i + self.batch_size]))
               for i in range(0, len(flat), self.batch_size)]
        size = self.model.config.sample_size
        frames = np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)
        return frames.reshape(*lead, *frames.shape[1:])


# --------------------------------------------------------------------------------------------
# Saving and loading


def save_toy_vae(model, cfg: ToyVAEConfig, out_dir: str | Path, *, scaling_factor: float,
                 metrics: dict | None = None, fp16: bool = False) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).detach().contiguous()
             for k, v in model.state_dict().items()}
    path = out / WEIGHTS_FILE
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT,
                                         "dtype": "float16" if fp16 else "float32"})
    tmp.replace(path)
    (out / CONFIG_FILE).write_text(json.dumps(
        {"format": FORMAT, "train": cfg.to_dict(), "scaling_factor": scaling_factor,
         "metrics": metrics or {}}, indent=2) + "\n")
    return path


def load_toy_vae(path: str | Path) -> ToyVAE:
    """Load a :class:`ToyVAE` from a checkpoint folder, in float32."""
    folder = Path(path)
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder}: want {WEIGHTS_FILE} and {CONFIG_FILE} there "
                                "(train one with `rtdecode train vae`)")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    cfg = ToyVAEConfig.from_dict(meta["train"])
    model = build_vae(cfg)
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in load_file(str(folder / WEIGHTS_FILE)).items()}
    model.load_state_dict(state)
    return ToyVAE(model, meta.get("scaling_factor", 1.0))


# --------------------------------------------------------------------------------------------
# Training


def _lr_at(step: int, cfg: ToyVAEConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _grad_l1(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical finite differences of two images (edges)."""
    return ((y[..., 1:, :] - y[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs().mean() \
        + ((y[..., 1:] - y[..., :-1]) - (x[..., 1:] - x[..., :-1])).abs().mean()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def split_frames(frames: np.ndarray, records: list[dict], cfg: ToyVAEConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Training-clip ids for training and validation (a seeded fraction of the training clips;
    the test clips are never used)."""
    train = np.array([r["clip_id"] for r in records if r["split"] == "train"])
    if len(train) < 2:
        raise ValueError(f"need >= 2 training clips, found {len(train)}")
    perm = np.random.default_rng([cfg.seed, 7]).permutation(train)
    n_val = max(1, int(round(cfg.val_fraction * len(train))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def train_vae(data_dir: str | Path, out_dir: str | Path, cfg: ToyVAEConfig, *,
              progress: bool = True, resume: bool = True, max_minutes: float | None = None,
              threads: int | None = None) -> ToyVAE:
    """Train the toy VAE on a session's training-clip frames (resumable; batches are a pure
    function of (seed, step), so a resumed run equals an uninterrupted one). Training settings
    (``steps`` etc.) may change on resume; the schedule then follows them from the current
    step."""
    from .clip import load_stimuli

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames, records = load_stimuli(data_dir)
    if frames.shape[2:4] != (cfg.image_size, cfg.image_size):
        raise ValueError(f"frames {frames.shape[2:4]}: config image_size is {cfg.image_size}")
    train_ids, val_ids = split_frames(frames, records, cfg)
    n_frames = frames.shape[1]
    val_rng = np.random.default_rng([cfg.seed, 8])
    nv = cfg.val_frames
    val_idx = (val_ids[val_rng.integers(0, len(val_ids), nv)], val_rng.integers(0, n_frames, nv))
    val_frames = np.asarray(frames[val_idx[0], val_idx[1]])

    torch.manual_seed(cfg.seed)
    model = build_vae(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    step, elapsed, rows, metrics = 0, 0.0, [], {}
    state_path = out / STATE_FILE
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        arch = ("image_size", "block_out_channels", "layers_per_block", "latent_channels",
                "norm_num_groups", "seed")
        diff = [k for k in arch if tuple(np.atleast_1d(state["config"].get(k)))
                != tuple(np.atleast_1d(cfg.to_dict()[k]))]
        if diff:
            raise ValueError(f"{state_path}: saved model differs from this config in {diff}; "
                             "pass resume=False or another out_dir")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        rows = [r for r in _read_rows(out / LOSS_FILE) if int(r[0]) <= step]

    def evaluate() -> dict:
        vae = ToyVAE(model, 1.0)
        z = vae.encode(val_frames)
        rec = vae.decode(z)
        model.train()
        return {"val_psnr_db": round(psnr(rec, val_frames), 2), "step": step,
                "latent_std": float(z.std()), "train_seconds": round(elapsed, 1)}

    def checkpoint() -> None:
        nonlocal metrics
        metrics = evaluate()
        scale = 1.0 / max(metrics["latent_std"], 1e-6)
        save_toy_vae(model, cfg, out, scaling_factor=scale, metrics=metrics, fp16=False)
        if rows:
            rows[-1][-1] = metrics["val_psnr_db"]
        torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "elapsed_s": elapsed, "config": cfg.to_dict()}, state_path)
        with open(out / LOSS_FILE, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "l1", "grad", "kl", "lr", "val_psnr_db"])
            w.writerows(rows)

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="toy vae", unit="step")
    t_start = time.monotonic()
    while step < cfg.steps:
        t0 = time.monotonic()
        rng = np.random.default_rng([cfg.seed, 1, step])
        clips = train_ids[rng.integers(0, len(train_ids), cfg.batch_size)]
        fidx = rng.integers(0, n_frames, len(clips))
        x = frames_to_pixels(np.asarray(frames[clips, fidx]))
        lr = _lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        post = model.encode(x).latent_dist
        noise = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        y = model.decode(post.sample(generator=noise)).sample
        if cfg.object_weight > 0:
            w = object_weights([records[int(c)] for c in clips],
                               fidx, cfg.image_size,
                               n_frames, cfg.object_weight)
            l1 = ((y - x).abs() * w).mean() / w.mean()
        else:
            l1 = (y - x).abs().mean()
        lg = _grad_l1(y, x)
        kl = post.kl().mean() / x[0].numel()
        loss = l1 + cfg.grad_weight * lg + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        elapsed += time.monotonic() - t0
        rows.append([step, f"{loss.item():.5f}", f"{l1.item():.5f}", f"{lg.item():.5f}",
                     f"{kl.item():.3f}", f"{lr:.6g}", ""])
        bar.update(1)
        bar.set_postfix(l1=f"{l1.item():.4f}")
        out_of_time = max_minutes is not None and time.monotonic() - t_start >= 60 * max_minutes
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            checkpoint()
            bar.set_postfix(l1=f"{l1.item():.4f}", psnr=metrics["val_psnr_db"])
        if out_of_time:
            if progress and step < cfg.steps:
                tqdm.write(f"toy vae: stopped at step {step}/{cfg.steps} (max_minutes); "
                           "run again to resume")
            break
    bar.close()
    return load_toy_vae(out)


def _read_rows(path: Path) -> list[list[Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in list(csv.reader(f))[1:] if row]


def export_fp16(src: str | Path, dst: str | Path) -> Path:
    """Copy a trained VAE's weights and config as float16 (the shipped form)."""
    vae = load_toy_vae(src)
    meta = json.loads((Path(src) / CONFIG_FILE).read_text())
    return save_toy_vae(vae.model, ToyVAEConfig.from_dict(meta["train"]), dst,
                        scaling_factor=meta["scaling_factor"], metrics=meta.get("metrics"),
                        fp16=True)


# --------------------------------------------------------------------------------------------
# Decoder fine-tuning (keeps the latent space)


def object_weights(records: list[dict], frame_idx: np.ndarray, size: int, n_frames: int,
                   weight: float, translate: float = 18.0, scale: float = 1.5) -> torch.Tensor:
    """``(B, 1, H, W)`` loss weights: ``1 + weight`` on a disk around every object at that
    frame (its position and size interpolated over the clip from the caption record's start
    state and motion), 1 elsewhere. Objects cover a small part of a frame, so an unweighted
    pixel loss lets a small decoder paint them as faint blobs."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.ones((len(records), 1, size, size), np.float32)
    moves = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for i, (r, f) in enumerate(zip(records, frame_idx)):
        t = float(f) / max(1, n_frames - 1)
        for o in r.get("objects", []):
            dx, dy = moves.get(o["motion"], (0, 0))
            x, y = o["x"] + dx * translate * t, o["y"] + dy * translate * t
            rad = o["r"] * (scale if o["motion"] == "grow" else 1.0)
            out[i, 0][(xx - x) ** 2 + (yy - y) ** 2 <= (1.3 * rad + 1) ** 2] += weight
    return torch.from_numpy(out)


def finetune_decoder(data_dir: str | Path, vae_dir: str | Path, out_dir: str | Path, *,
                     steps: int = 600, batch_size: int = 32, lr: float = 3e-4,
                     object_weight: float = 8.0, seed: int = 0, progress: bool = True,
                     max_minutes: float | None = None, threads: int | None = None,
                     decoder_channels: tuple[int, ...] | None = None,
                     warmup_steps: int = 0) -> ToyVAE:
    """Fine-tune only the decoder (and ``post_quant_conv``) of a trained toy VAE with an
    object-weighted L1 + gradient loss. The encoder and the scaling factor are unchanged, so
    the latent space — MAD's targets and the UNet's training data — stays exactly the same;
    only what latents decode to improves. ``decoder_channels``: train a new decoder of this
    width from scratch instead (on the same frozen latents). Writes a VAE checkpoint folder to
    ``out_dir``."""
    from .clip import load_stimuli

    if threads:
        torch.set_num_threads(threads)
    meta = json.loads((Path(vae_dir) / CONFIG_FILE).read_text())
    cfg = ToyVAEConfig.from_dict(meta["train"])
    vae = load_toy_vae(vae_dir)
    model = vae.model
    fresh = decoder_channels is not None
    if fresh:
        cfg = dataclasses.replace(cfg, decoder_channels=tuple(decoder_channels))
        torch.manual_seed(seed)
        model.decoder = _decoder(cfg)
    frames, records = load_stimuli(data_dir)
    train_ids, val_ids = split_frames(frames, records, cfg)
    n_frames, size = frames.shape[1], frames.shape[2]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [*model.decoder.parameters(), *model.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    vrng = np.random.default_rng([seed, 8])
    vidx = (val_ids[vrng.integers(0, len(val_ids), 256)], vrng.integers(0, n_frames, 256))
    val = np.asarray(frames[vidx[0], vidx[1]])
    before = None if fresh else psnr(vae.decode(vae.encode(val)), val)
    torch.manual_seed(seed)
    t_start = time.monotonic()
    bar = tqdm(range(steps), disable=not progress, desc="vae decoder", unit="step")
    for step in bar:
        rng = np.random.default_rng([seed, 3, step])
        clips = train_ids[rng.integers(0, len(train_ids), batch_size)]
        fidx = rng.integers(0, n_frames, len(clips))
        x = frames_to_pixels(np.asarray(frames[clips, fidx]))
        w = object_weights([records[int(c)] for c in clips], fidx, size, n_frames,
                           object_weight)
        with torch.no_grad():
            z = model.encode(x).latent_dist.mean
        model.decoder.train()
        y = model.decode(z).sample
        loss = ((y - x).abs() * w).mean() / w.mean() + cfg.grad_weight * _grad_l1(y, x)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / max(1, warmup_steps)) * 0.5 * (
                1 + math.cos(math.pi * step / steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if max_minutes is not None and time.monotonic() - t_start >= 60 * max_minutes:
            break
    model.eval()
    after = psnr(vae.decode(vae.encode(val)), val)
    metrics = {**meta.get("metrics", {}), "val_psnr_db": round(after, 2),
               "decoder_finetune": {"steps": step + 1, "object_weight": object_weight,
                                    "val_psnr_before_db": None if before is None
                                    else round(before, 2),
                                    "decoder_channels": cfg.decoder_channels, "lr": lr,
                                    "seconds": round(time.monotonic() - t_start, 1)}}
    save_toy_vae(model, cfg, out_dir, scaling_factor=meta["scaling_factor"], metrics=metrics)
    return load_toy_vae(out_dir)
