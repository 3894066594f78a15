"""The toy world's text-conditioned UNet and motion module: the renderer's generative half.

- **UNet**: a small diffusers ``UNet2DConditionModel`` on the toy VAE's 4×16×16 latents,
  cross-attending to the toy CLIP's token states of a clip's captions. The conditioning is the
  same tensor SAD decodes: the first ``n_tokens`` token states of each caption level (anchor,
  motion, holistic) concatenated, ``(levels · n_tokens, token_width)``. It is trained on the
  first frames of the training clips (the anchor frame CVR's stage 2 renders) with the
  epsilon objective; 10 % of the conditions are zeroed so classifier-free guidance can be used.
- **Motion module**: a diffusers ``MotionAdapter`` (AnimateDiff's temporal transformers)
  trained on 8-frame clips with the UNet frozen, so ``UNetMotionModel.from_unet2d`` turns the
  pair into a video UNet (CVR's stage 3).

Both trainings are resumable and deterministic per step (batches, timesteps and noise are pure
functions of ``(seed, step)``), write ``loss.csv`` and ``loss.png``, and keep float16
snapshots every ``snapshot_every`` steps so that render fidelity can be plotted against training
time afterwards.

Files in a checkpoint folder::

    unet.safetensors | motion.safetensors   weights
    config.json       {"format", "kind", "diffusers": model config, "train": config,
                       "scheduler": noise-schedule config, "cond": conditioning layout,
                       "metrics": {...}}
    train_state.pt    optimizer state and step, for resume
    loss.csv, loss.png
    snapshots/step_NNNNNN.safetensors
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

CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"
LOSS_FILE = "loss.csv"
FORMAT = "rtdecode-toy-render/1"
LEVELS = ("anchor", "motion", "holistic")

#: SD1.5's noise schedule (epsilon prediction): the first toy UNets were trained with it.
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                beta_end=0.012, prediction_type="epsilon")
#: Noise schedules a toy render model can be trained with (``ToyUNetConfig.schedule``); a
#: checkpoint records its own, and CVR samples with it. ``zero_snr``: the same betas rescaled
#: so the last step is pure noise, with v-prediction and trailing timesteps (Lin et al., 2024,
#: "Common diffusion noise schedules and sample steps are flawed"). Under ``sd15`` the last
#: step keeps 6.8 % of the signal, so a UNet learns to take a frame's mean colour from the
#: noise and, sampled from pure noise, ignores the caption's background.
SCHEDULES = {
    "sd15": SCHEDULE,
    "zero_snr": dict(SCHEDULE, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                     timestep_spacing="trailing"),
}


@dataclass(frozen=True)
class ToyUNetConfig:
    """Architecture and training hyper-parameters of the toy UNet (and its motion module)."""

    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    # the first (finest) levels built without attention: self-attention over a 32x32 latent's
    # 1,024 cells costs more than the rest of the UNet (the coarsest level never has any)
    plain_levels: int = 0
    attention_head_dim: int = 4        # diffusers' legacy name: the number of heads
    norm_num_groups: int = 16
    # conditioning: the toy CLIP's first n_tokens token states per level, levels concatenated
    n_tokens: int = 16
    levels: tuple[str, ...] = LEVELS
    # motion module (MotionAdapter)
    motion_layers_per_block: int = 1
    motion_heads: int = 4
    # training
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 100
    steps: int = 5000
    cond_dropout: float = 0.1
    frames: tuple[int, ...] = (0, 1)   # which frames of a clip the image UNet learns
    seed: int = 0
    checkpoint_every: int = 250
    snapshot_every: int = 1000
    val_size: int = 256
    bf16: bool = False                 # bf16 autocast: 3x slower on CPUs without AMX
    schedule: str = "sd15"             # a key of SCHEDULES
    # extra training-loss weight on the latent cells the objects cover (0: plain MSE). Objects
    # fill a few percent of a frame, so plain MSE is mostly about the background; the
    # validation loss stays plain MSE, comparable across runs
    object_weight: float = 0.0
    # share of each batch whose timesteps are drawn from [0, low_t_max) instead of the whole
    # range (0: uniform). Few-step sampling ends every render with one step from t = 249 (4
    # trailing steps), so what the UNet predicts there sets the objects' final outlines
    low_t_fraction: float = 0.0
    low_t_max: int = 300
    # guidance distillation (0: off): fine-tune a UNet (``init_dir``, kept frozen as the
    # teacher) to predict in one pass what the teacher predicts with classifier-free guidance
    # of this scale, ``uncond + w (cond - uncond)``: guided frames at unguided cost
    distill_guidance: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: want one of {sorted(SCHEDULES)}")
        if not (self.object_weight >= 0 and math.isfinite(self.object_weight)):
            raise ValueError(f"object_weight {self.object_weight!r}: want a finite value >= 0")
        if not 0.0 <= self.low_t_fraction <= 1.0:
            raise ValueError(f"low_t_fraction {self.low_t_fraction!r}: want 0..1")
        if not (self.distill_guidance == 0 or (self.distill_guidance > 1
                                                 and math.isfinite(self.distill_guidance))):
            raise ValueError(f"distill_guidance {self.distill_guidance!r}: want 0 (off) or a "
                             "guidance scale > 1")
        n_train = SCHEDULES[self.schedule]["num_train_timesteps"]
        if not 1 <= self.low_t_max <= n_train:
            raise ValueError(f"low_t_max {self.low_t_max!r}: want 1..{n_train}")
        chans = tuple(self.block_out_channels)
        check_widths("block_out_channels", chans, self.norm_num_groups)
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block {self.layers_per_block!r}: want >= 1")
        if not 0 <= self.plain_levels < len(chans):
            raise ValueError(f"plain_levels {self.plain_levels!r}: want 0..{len(chans) - 1} "
                             f"for {len(chans)} levels")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToyUNetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"toy UNet config: unknown keys {sorted(unknown)}")
        d = dict(d)
        for k in ("block_out_channels", "levels", "frames"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def unet_config(self, latent_channels: int, latent_size: int, token_width: int
                    ) -> dict[str, Any]:
        n = len(self.block_out_channels)
        attn = [self.plain_levels <= i < n - 1 for i in range(n)]
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
        return dict(sample_size=latent_size, in_channels=latent_channels,
                    out_channels=latent_channels, down_block_types=down, up_block_types=up,
                    block_out_channels=self.block_out_channels,
                    layers_per_block=self.layers_per_block,
                    attention_head_dim=self.attention_head_dim,
                    norm_num_groups=self.norm_num_groups, cross_attention_dim=token_width)

    def motion_config(self, max_frames: int = 32) -> dict[str, Any]:
        return dict(block_out_channels=self.block_out_channels,
                    motion_layers_per_block=self.motion_layers_per_block,
                    motion_num_attention_heads=self.motion_heads,
                    motion_norm_num_groups=self.norm_num_groups,
                    motion_max_seq_length=max_frames, use_motion_mid_block=False)


ARCH_KEYS = ("block_out_channels", "layers_per_block", "plain_levels", "attention_head_dim",
             "norm_num_groups")


def unet_arch(unet_dir: str | Path) -> dict[str, Any]:
    """The architecture fields of the :class:`ToyUNetConfig` a saved UNet was trained with:
    what a fine-tune of it (``--init``) or a motion module for it must be built with. The
    motion module gets one temporal layer per UNet layer."""
    train = _read_meta(Path(unet_dir), "unet").get("train", {})
    arch = {k: tuple(train[k]) if isinstance(train.get(k), list) else train[k]
            for k in ARCH_KEYS if k in train}
    if "layers_per_block" in arch:
        arch["motion_layers_per_block"] = arch["layers_per_block"]
    return arch


def block_shape(config) -> tuple[tuple[int, ...], int]:
    """(channels per level, layers per level) of a diffusers UNet or MotionAdapter config: a
    motion module fits a UNet (and a guided UNet stands in for one) only if these agree."""
    layers = config.get("motion_layers_per_block", config.get("layers_per_block"))
    return tuple(config["block_out_channels"]), layers


def noise_scheduler(schedule: str = "sd15"):
    """The training-time diffusers scheduler of one of :data:`SCHEDULES`."""
    from diffusers import DDPMScheduler

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: want one of {sorted(SCHEDULES)}")
    return DDPMScheduler(**SCHEDULES[schedule], clip_sample=False)


def build_unet(cfg: ToyUNetConfig, latent_channels: int = 4, latent_size: int = 16,
               token_width: int = 128):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**cfg.unet_config(latent_channels, latent_size, token_width))


def build_motion_adapter(cfg: ToyUNetConfig, max_frames: int = 32):
    from diffusers import MotionAdapter

    return MotionAdapter(**cfg.motion_config(max_frames))


def video_unet(unet, adapter):
    """The UNet and a motion module joined into a diffusers ``UNetMotionModel``."""
    import logging

    from diffusers import UNetMotionModel

    # from_unet2d casts the new model to the UNet's own dtype, and diffusers then warns that
    # "modules ... should be kept in float32: []" (an empty list): nothing to act on, so
    # that one logger is quiet while it runs
    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return UNetMotionModel.from_unet2d(unet, adapter)
    finally:
        log.setLevel(level)


def motion_module_state(model) -> dict[str, torch.Tensor]:
    """A video UNet's motion-module weights, keyed as its ``MotionAdapter``'s."""
    return {k: v for k, v in model.state_dict().items() if "motion_modules" in k}


def _copy_motion_modules(adapter, model) -> None:
    """Load an adapter's weights into a video UNet's motion modules (in place)."""
    missing = set(motion_module_state(model)) - set(adapter.state_dict())
    if missing:
        raise ValueError(f"motion adapter lacks {len(missing)} motion-module weights, e.g. "
                         f"{sorted(missing)[0]}")
    model.load_state_dict(adapter.state_dict(), strict=False)


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class RenderData:
    """Every clip's VAE latents and caption conditioning, computed once per session."""

    latents: np.ndarray    # (n_clips, T, C, h, w) float32, scaled by the VAE's scaling factor
    cond: np.ndarray       # (n_clips, levels * n_tokens, token_width) float32
    train_ids: np.ndarray  # training clips used for fitting
    val_ids: np.ndarray    # training clips held out for validation (never the test clips)
    # (n_clips, T, 1, h, w) float32 training-loss weights (ToyUNetConfig.object_weight), or None
    weights: np.ndarray | None = None


def encode_conditions(clip_model, records: list[dict], n_tokens: int,
                      levels: tuple[str, ...] = LEVELS) -> np.ndarray:
    """Caption records → ``(n, levels · n_tokens, width)``: SAD's decoded-semantics layout."""
    texts = [r[lvl] for r in records for lvl in levels]
    tok = clip_model.encode_text_tokens(texts)[:, :n_tokens]
    return tok.reshape(len(records), len(levels) * n_tokens, -1).astype(np.float32)


def prepare_data(data_dir: str | Path, clip_path: str | Path, vae_path: str | Path,
                 cfg: ToyUNetConfig, cache_dir: str | Path | None = None,
                 progress: bool = True) -> RenderData:
    """Latents and conditions for a session's clips (cached in ``cache_dir`` if given)."""
    from ..backends import file_sha256
    from . import clip as toy_clip
    from . import vae as toy_vae
    from .clip import load_stimuli, load_toy_clip
    from .vae import load_toy_vae

    frames, records = load_stimuli(data_dir)
    cache = Path(cache_dir) / "render_cache.npz" if cache_dir else None
    z = key = None
    if cache is not None:
        # valid only for the weights and conditioning layout it was computed with
        key = json.dumps({"vae": file_sha256(Path(vae_path) / toy_vae.WEIGHTS_FILE),
                          "clip": file_sha256(Path(clip_path) / toy_clip.WEIGHTS_FILE),
                          "n_tokens": cfg.n_tokens, "levels": list(cfg.levels),
                          "clips": len(records)}, sort_keys=True)
        z = np.load(cache) if cache.exists() else None
    if z is not None and "key" in z and str(z["key"]) == key:
        latents, cond = z["latents"], z["cond"]
    else:
        if z is not None and progress:
            tqdm.write(f"{cache}: computed from other weights or captions; recomputing")
        vae = load_toy_vae(vae_path)
        clip = load_toy_clip(clip_path)
        chunks = []
        for i in tqdm(range(0, len(frames), 64), disable=not progress, desc="encode latents",
                      unit="batch"):
            chunks.append(vae.encode(np.asarray(frames[i:i + 64])))
        latents = np.concatenate(chunks).astype(np.float32)
        cond = encode_conditions(clip, records, cfg.n_tokens, cfg.levels)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, latents=latents, cond=cond, key=np.array(key))
    train = np.array([r["clip_id"] for r in records if r["split"] == "train"])
    if len(train) < 2:
        raise ValueError(f"{data_dir}: need >= 2 training clips, found {len(train)}")
    perm = np.random.default_rng([cfg.seed, 7]).permutation(train)
    n_val = max(1, len(train) // 20)
    weights = None
    if cfg.object_weight > 0:
        weights = latent_object_weights(records, frames.shape[1], frames.shape[2],
                                        latents.shape[-1], cfg.object_weight)
    return RenderData(latents, cond, np.sort(perm[n_val:]), np.sort(perm[:n_val]), weights)


def latent_object_weights(records: list[dict], n_frames: int, size: int, latent_size: int,
                          weight: float) -> np.ndarray:
    """``(n_clips, T, 1, h, w)``: the toy VAE's pixel object weights (``1 + weight`` on a disk
    around every object, 1 elsewhere) averaged over each latent cell's pixels."""
    from .vae import object_weights

    if size % latent_size:
        raise ValueError(f"frames of {size} px do not tile latents of {latent_size}")
    k = size // latent_size
    out = np.empty((len(records), n_frames, 1, latent_size, latent_size), np.float32)
    fidx = np.arange(n_frames)
    for i, r in enumerate(records):
        w = object_weights([r] * n_frames, fidx, size, n_frames, weight)
        out[i] = torch.nn.functional.avg_pool2d(w, k).numpy()
    return out


# --------------------------------------------------------------------------------------------
# Training (shared by the UNet and the motion module)


def _lr_at(step: int, cfg: ToyUNetConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def _batch(data: RenderData, ids: np.ndarray, cfg: ToyUNetConfig, rng: np.random.Generator,
           video: bool, sched) -> tuple[torch.Tensor, ...]:
    """(noised latents, timesteps, conditions, target, loss weights) for one batch, drawn from
    ``rng``; the target is the noise, or the velocity under v-prediction; the weights are
    ``None`` without ``data.weights`` (plain MSE)."""
    clips = ids[rng.integers(0, len(ids), cfg.batch_size)]
    w = None
    if video:
        z0 = torch.from_numpy(data.latents[clips])                        # (B, T, C, h, w)
        z0 = z0.permute(0, 2, 1, 3, 4)                                    # (B, C, T, h, w)
        if data.weights is not None:
            w = torch.from_numpy(data.weights[clips]).permute(0, 2, 1, 3, 4)
    else:
        frame = np.asarray(cfg.frames)[rng.integers(0, len(cfg.frames), len(clips))]
        z0 = torch.from_numpy(data.latents[clips, frame])
        if data.weights is not None:
            w = torch.from_numpy(data.weights[clips, frame])
    cond = torch.from_numpy(data.cond[clips])
    drop = torch.from_numpy(rng.random(len(clips)) < cfg.cond_dropout)
    cond = torch.where(drop[:, None, None], torch.zeros_like(cond), cond)
    t = rng.integers(0, sched.config.num_train_timesteps, len(clips))
    if cfg.low_t_fraction > 0:  # drawn only then: a uniform run's batches stay as they were
        low = rng.random(len(clips)) < cfg.low_t_fraction
        t = np.where(low, rng.integers(0, cfg.low_t_max, len(clips)), t)
    t = torch.from_numpy(t)
    noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32))
    zt = sched.add_noise(z0, noise, t)
    if sched.config.prediction_type == "v_prediction":
        return zt, t, cond, sched.get_velocity(z0, noise, t), w
    return zt, t, cond, noise, w


def _read_rows(path: Path) -> list[list[Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in list(csv.reader(f))[1:] if row]


def plot_loss(csv_path: str | Path, png_path: str | Path, title: str) -> None:
    """Training loss (smoothed) and validation loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_rows(Path(csv_path))
    if not rows:
        return
    step = np.array([int(r[0]) for r in rows])
    loss = np.array([float(r[1]) for r in rows])
    k = max(1, len(loss) // 100)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(step[k - 1:], smooth, label=f"train (mean of {k})")
    val = [(int(r[0]), float(r[-1])) for r in rows if r[-1]]
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def cfg_prediction(model, z: torch.Tensor, t, cond: torch.Tensor, scale: float
                   ) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale (cond - uncond)``, the unconditional pass on
    zeroed conditions, both in one doubled batch (``t``: a timestep, or one per row of ``z``).
    CVR samples with it; guidance distillation trains towards it."""
    if torch.is_tensor(t) and t.ndim > 0:
        t = torch.cat([t, t])
    both = model(torch.cat([z, z]), t,
                 encoder_hidden_states=torch.cat([torch.zeros_like(cond), cond])).sample
    u, v = both.chunk(2)
    return u + scale * (v - u)


@torch.no_grad()
def guided_prediction(unet, zt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                      scale: float, chunk: int = 32) -> torch.Tensor:
    """``unet``'s :func:`cfg_prediction` in chunks of ``chunk`` rows: guidance distillation's
    target."""
    return torch.cat([cfg_prediction(unet, zt[i:i + chunk], t[i:i + chunk],
                                     cond[i:i + chunk], scale)
                      for i in range(0, len(zt), chunk)])


def train_render_model(kind: str, data: RenderData, out_dir: str | Path, cfg: ToyUNetConfig, *,
                       unet_dir: str | Path | None = None, init_dir: str | Path | None = None,
                       progress: bool = True, resume: bool = True,
                       max_minutes: float | None = None, threads: int | None = None) -> Path:
    """Train the toy UNet (``kind="unet"``) or its motion module (``kind="motion"``, with the
    UNet from ``unet_dir`` frozen, and that UNet's noise schedule). ``init_dir``: start the
    UNet from another checkpoint's weights (fine-tuning, e.g. to ``cfg.schedule="zero_snr"``)
    instead of a fresh initialisation. Returns the checkpoint folder."""
    if kind not in ("unet", "motion"):
        raise ValueError(f"kind {kind!r}: want 'unet' or 'motion'")
    if init_dir is not None and kind != "unet":
        raise ValueError("init_dir: only the UNet can start from another checkpoint")
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_clips, n_frames, c, h, _ = data.latents.shape
    width = data.cond.shape[-1]
    video = kind == "motion"
    init = None
    if video:
        if unet_dir is None:
            raise ValueError("training the motion module needs the trained UNet (unet_dir)")
        # the motion module learns its UNet's objective, in its UNet's shape
        cfg = dataclasses.replace(cfg, schedule=_schedule_name(render_meta(unet_dir, "unet")),
                                  **unet_arch(unet_dir))
    elif init_dir is not None:
        init = {"from": str(init_dir), **_read_meta(Path(init_dir), "unet").get("metrics", {})}
    sched = noise_scheduler(cfg.schedule)

    torch.manual_seed(cfg.seed)
    if video:
        unet = load_unet(unet_dir)
        adapter = build_motion_adapter(cfg)
        model = video_unet(unet, adapter)
        model.freeze_unet2d_params()
        params = [p for p in model.parameters() if p.requires_grad]
        # from_unet2d *copies* the adapter's weights into the video UNet: the training updates
        # those copies, so the adapter is synced from them before every save (and they are
        # loaded from it on resume)
        trained = adapter
    else:
        model = build_unet(cfg, c, h, width)
        if init_dir is not None:
            start = load_unet(init_dir)
            if start.config.block_out_channels != model.config.block_out_channels:
                raise ValueError(f"{init_dir}: a UNet of channels "
                                 f"{start.config.block_out_channels}, this config builds "
                                 f"{model.config.block_out_channels}")
            model.load_state_dict(start.state_dict())
        params = list(model.parameters())
        trained = model
    teacher = None
    if cfg.distill_guidance > 0:
        if video or init_dir is None:
            raise ValueError("distill_guidance: distils a trained UNet (init_dir, the "
                             "teacher) into a UNet")
        teacher = load_unet(init_dir).eval().requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)

    step, elapsed, rows, metrics = 0, 0.0, [], {}
    state_path = out / STATE_FILE
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        arch = ("block_out_channels", "layers_per_block", "attention_head_dim",
                "norm_num_groups", "n_tokens", "levels", "motion_layers_per_block",
                "motion_heads", "seed")
        diff = [k for k in arch if tuple(np.atleast_1d(state["config"].get(k)))
                != tuple(np.atleast_1d(cfg.to_dict()[k]))]
        if state["config"].get("schedule", "sd15") != cfg.schedule:
            diff.append("schedule")
        if diff:
            raise ValueError(f"{state_path}: saved model differs from this config in {diff}; "
                             "pass resume=False or another out_dir")
        trained.load_state_dict(state["model"])
        if video:
            _copy_motion_modules(adapter, model)
        opt.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        rows = [r for r in _read_rows(out / LOSS_FILE) if int(r[0]) <= step]

    val_rng = np.random.default_rng([cfg.seed, 9])
    val_cfg = dataclasses.replace(cfg, batch_size=cfg.val_size if not video else cfg.val_size // 8,
                                  cond_dropout=0.0, low_t_fraction=0.0)  # uniform t: comparable
    val_batch = _batch(data, data.val_ids, val_cfg, val_rng, video, sched)

    def guided(zt, t, cond):
        return guided_prediction(teacher, zt, t, cond, cfg.distill_guidance)

    if teacher is not None:  # validation then measures the distillation
        val_batch = (*val_batch[:3], guided(*val_batch[:3]), val_batch[4])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)

    def forward(zt, t, cond):
        if video:  # UNetMotionModel wants one condition per frame: (B * frames, tokens, width)
            cond = cond.repeat_interleave(zt.shape[2], dim=0)
        with autocast:
            return model(zt, t, encoder_hidden_states=cond).sample.float()

    @torch.no_grad()
    def validate() -> float:
        model.eval()
        zt, t, cond, target, _ = val_batch  # plain MSE: comparable across object weights
        loss = sum(float(torch.mean((forward(zt[i:i + 32], t[i:i + 32], cond[i:i + 32])
                                      - target[i:i + 32]) ** 2)) * len(zt[i:i + 32])
                   for i in range(0, len(zt), 32)) / len(zt)
        model.train()
        return loss

    def checkpoint(snapshot: bool) -> None:
        nonlocal metrics
        if video:
            adapter.load_state_dict(motion_module_state(model))
        metrics = {"val_loss": round(validate(), 5), "step": step,
                   "train_seconds": round(elapsed, 1)}
        if init is not None:
            metrics["init"] = init
        if teacher is not None:
            metrics["distilled_guidance"] = cfg.distill_guidance  # val_loss: to its target
        save_render_model(kind, trained, cfg, out, cond_shape=(data.cond.shape[1], width),
                          latent_shape=(c, h, h), metrics=metrics)
        if snapshot:
            snap = out / "snapshots"
            snap.mkdir(exist_ok=True)
            save_file({k: v.detach().half().contiguous()
                       for k, v in trained.state_dict().items()},
                      str(snap / f"step_{step:06d}.safetensors"))
        if rows:
            rows[-1][-1] = metrics["val_loss"]
        torch.save({"step": step, "model": trained.state_dict(), "optimizer": opt.state_dict(),
                    "elapsed_s": elapsed, "config": cfg.to_dict()}, state_path)
        with open(out / LOSS_FILE, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "lr", "seconds", "val_loss"])
            w.writerows(rows)
        plot_loss(out / LOSS_FILE, out / "loss.png", f"toy {kind}")

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"toy {kind}",
               unit="step")
    t_start = time.monotonic()
    while step < cfg.steps:
        t0 = time.monotonic()
        rng = np.random.default_rng([cfg.seed, 2 if video else 1, step])
        zt, t, cond, target, w = _batch(data, data.train_ids, cfg, rng, video, sched)
        if teacher is not None:
            target = guided(zt, t, cond)
        lr = _lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        err = (forward(zt, t, cond) - target) ** 2
        loss = torch.mean(err) if w is None else torch.mean(w * err) / torch.mean(w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        elapsed += time.monotonic() - t0
        rows.append([step, f"{loss.item():.5f}", f"{lr:.6g}", f"{elapsed:.1f}", ""])
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        out_of_time = max_minutes is not None and time.monotonic() - t_start >= 60 * max_minutes
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            checkpoint(snapshot=step % cfg.snapshot_every == 0 or step == cfg.steps)
            bar.set_postfix(loss=f"{loss.item():.4f}", val=metrics["val_loss"])
        if out_of_time:
            if progress and step < cfg.steps:
                tqdm.write(f"toy {kind}: stopped at step {step}/{cfg.steps} (max_minutes); "
                           "run again to resume")
            break
    bar.close()
    return out


# --------------------------------------------------------------------------------------------
# Save / load


def save_render_model(kind: str, model, cfg: ToyUNetConfig, out_dir: str | Path, *,
                      cond_shape: tuple[int, int], latent_shape: tuple[int, int, int],
                      metrics: dict | None = None, fp16: bool = False) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).detach().contiguous()
             for k, v in model.state_dict().items()}
    path = out / f"{kind}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "kind": kind,
                                         "dtype": "float16" if fp16 else "float32"})
    tmp.replace(path)
    (out / CONFIG_FILE).write_text(json.dumps(
        {"format": FORMAT, "kind": kind, "diffusers": dict(model.config), "train": cfg.to_dict(),
         "scheduler": SCHEDULES[cfg.schedule],
         "cond": {"levels": list(cfg.levels), "n_tokens": cfg.n_tokens,
                  "shape": list(cond_shape)},
         "latent_shape": list(latent_shape), "metrics": metrics or {}},
        indent=2, default=list) + "\n")
    return path


def _read_meta(folder: Path, kind: str) -> dict[str, Any]:
    if not (folder / f"{kind}.safetensors").is_file() or not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder}: want {kind}.safetensors and {CONFIG_FILE} there "
                                f"(train one with `rtdecode train {kind}`)")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT or meta.get("kind") != kind:
        raise ValueError(f"{folder}: not a toy {kind} checkpoint (format "
                         f"{meta.get('format')!r}, kind {meta.get('kind')!r})")
    return meta


def _state(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}


def load_unet(path: str | Path, weights: str | Path | None = None):
    """The toy UNet from a checkpoint folder (``weights``: e.g. a snapshot), float32, eval."""
    from diffusers import UNet2DConditionModel

    folder = Path(path)
    meta = _read_meta(folder, "unet")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["diffusers"].items()
           if not k.startswith("_")}
    model = UNet2DConditionModel.from_config(cfg)
    model.load_state_dict(_state(Path(weights) if weights else folder / "unet.safetensors"))
    return model.eval()


def load_motion_adapter(path: str | Path):
    from diffusers import MotionAdapter

    folder = Path(path)
    meta = _read_meta(folder, "motion")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["diffusers"].items()
           if not k.startswith("_")}
    model = MotionAdapter.from_config(cfg)
    model.load_state_dict(_state(folder / "motion.safetensors"))
    return model.eval()


def _schedule_name(meta: dict[str, Any]) -> str:
    """Which of :data:`SCHEDULES` a checkpoint was trained with."""
    for name, sched in SCHEDULES.items():
        if meta.get("scheduler") == sched:
            return name
    raise ValueError(f"a checkpoint trained with noise schedule {meta.get('scheduler')}, "
                     f"none of {sorted(SCHEDULES)}")


def render_meta(path: str | Path, kind: str) -> dict[str, Any]:
    """A render checkpoint's config.json (conditioning layout, schedule, metrics)."""
    return _read_meta(Path(path), kind)


def export_fp16(src: str | Path, dst: str | Path, kind: str) -> Path:
    """Copy a trained UNet or motion module as float16 (the shipped form)."""
    src, dst = Path(src), Path(dst)
    meta = _read_meta(src, kind)
    dst.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v
             for k, v in load_file(str(src / f"{kind}.safetensors")).items()}
    save_file(state, str(dst / f"{kind}.safetensors"),
              metadata={"format": FORMAT, "kind": kind, "dtype": "float16"})
    (dst / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return dst
