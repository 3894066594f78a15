"""SAD, the Semantic Alignment Decoder (SemVideo), in one file with its config.

fMRI window ``(batch, n_voxels_s)`` of subject *s* →

1. a subject-specific linear projection to ``hidden`` (voxel counts differ per subject);
2. a shared residual MLP (``mlp_layers`` blocks) — the *backbone*;
3. a linear head giving a first estimate of the three target token sequences (anchor,
   motion, holistic; each ``(n_tokens, token_dim)`` in the text-embedding space);
4. the **Refineformer**: a causal transformer denoiser trained with a diffusion objective
   (predict the clean tokens from noised ones, conditioned on the backbone), sampled in a
   configurable small number of DDIM-style steps starting from the backbone estimate plus
   noise.

Loss: ``lambda_refine * L_refine + lambda_softclip * L_SoftCLIP + L_MSE`` — the denoiser's
reconstruction error, a soft-label contrastive loss between the pooled decoded and target
tokens (soft labels from target–target similarity, so near-identical captions are not
pushed apart), and the backbone estimate's mean squared error.

With ``proj_init="ridge"`` (the toy preset) the projection's first layer is a reduced-rank
ridge map, fitted in closed form before training (:func:`rtdecode.models.train.ridge_init`)
and then kept fixed: its ``rank`` outputs are the ridge decoder's prediction in the leading
principal directions of the targets. The head reads them beside the backbone's features,
starting as exactly that ridge prediction, and the network learns the nonlinear correction
on *cross-fitted* ridge outputs (each training run's from a ridge that did not see it), so
it learns on inputs as noisy as the test's. A 13,447 × 128 projection trained end to end
on 3,360 windows overfits; ridge's shrinkage is the right estimator for that matrix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LEVELS = ("anchor", "motion", "holistic")


@dataclass(frozen=True)
class SADConfig:
    subjects: dict[str, int] = field(default_factory=dict)  # label -> voxel count
    hidden: int = 512
    proj_rank: int | None = None  # low-rank subject projection (sets the checkpoint size)
    mlp_layers: int = 4
    dropout: float = 0.15
    n_tokens: int = 16          # target tokens per level (77 for real CLIP)
    token_dim: int = 64         # target width (768 for CLIP ViT-L/14)
    levels: tuple[str, ...] = LEVELS
    refine_width: int = 128
    refine_layers: int = 2
    refine_heads: int = 4
    diffusion_steps: int = 100  # training timesteps of the Refineformer's noise schedule
    sample_steps: int = 4       # few-step sampling at inference
    lambda_refine: float = 1.0
    refine_skip: bool = False   # Refineformer output preconditioned: sqrt(ab) x_t + sqrt(1-ab) F
    lambda_softclip: float = 0.1
    softclip_temperature: float = 0.05
    use_refiner: bool = True    # False: the Mind-Animator-style MLP baseline
    hard_contrastive: bool = False  # InfoNCE with one-hot labels instead of SoftCLIP
    proj_init: str = "random"   # "ridge": a fixed reduced-rank ridge first layer (see above)
    ridge_alphas: tuple[float, ...] = (1e2, 1e3, 1e4, 1e5, 1e6)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # Small enough to ship (fp16, a few MB): a rank-64 ridge layer into 256 wide (rank 128
    # decoded as well single-trial on the study session, 2.5 MB larger). Decodes with the
    # backbone estimate (0 Refineformer steps): every step count measured lower (`rtdecode
    # eval --steps-sweep`); the Refineformer still trains, its loss shaping the backbone.
    "toy": dict(hidden=256, proj_rank=64, mlp_layers=4, n_tokens=16, token_dim=64,
                refine_width=128, refine_layers=2, refine_heads=4, proj_init="ridge",
                refine_skip=True, sample_steps=0),
    # The paper's sizes: 3 x 77 x 768 targets, a wide backbone. Runs on CPU, slowly.
    "paper": dict(hidden=4096, mlp_layers=4, n_tokens=77, token_dim=768, refine_width=768,
                  refine_layers=4, refine_heads=8),
}


def mlp_baseline(subjects: dict[str, int], **overrides) -> SADConfig:
    """Mind-Animator-style baseline: subject projection + MLP → tokens, MSE + InfoNCE, no
    Refineformer (the same backbone as the toy SAD, so the comparison isolates SAD's parts)."""
    return SADConfig(subjects=dict(subjects), **{**PRESETS["toy"], "use_refiner": False,
                                                  "hard_contrastive": True,
                                                  "proj_init": "random",
                                                  "lambda_refine": 0.0, **overrides})


def sad_preset(name: str, subjects: dict[str, int], **overrides) -> SADConfig:
    if name not in PRESETS:
        raise ValueError(f"SAD preset {name!r}: must be one of {list(PRESETS)}")
    return SADConfig(subjects=dict(subjects), **{**PRESETS[name], **overrides})


PROJ_INITS = ("random", "ridge")


def subject_projection(n_voxels: int, hidden: int, rank: int | None) -> nn.Module:
    """Voxels → hidden; low-rank (two linears, the first without bias) when ``rank`` is set —
    the bulk of a decoder's weights is this matrix, so the rank sets the checkpoint size."""
    if rank is None or rank >= hidden:
        return nn.Linear(n_voxels, hidden)
    return nn.Sequential(nn.Linear(n_voxels, rank, bias=False), nn.Linear(rank, hidden))


def in_features(projection: nn.Module) -> int:
    first = projection[0] if isinstance(projection, nn.Sequential) else projection
    return int(first.in_features)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(F.gelu(self.fc(self.norm(x))))


def alpha_bar_schedule(steps: int) -> torch.Tensor:
    """The Refineformer's noise schedule: cumulative alpha of linear betas 1e-4 .. 0.02."""
    betas = torch.linspace(1e-4, 0.02, steps, device="cpu")
    return torch.cumprod(1 - betas, 0)


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class Refineformer(nn.Module):
    """Causal transformer denoiser over one level's token sequence."""

    def __init__(self, cfg: SADConfig, cond_width: int):
        super().__init__()
        w = cfg.refine_width
        self.inp = nn.Linear(cfg.token_dim, w)
        self.cond = nn.Linear(cond_width, w)
        self.time = nn.Sequential(nn.Linear(w, w), nn.GELU(), nn.Linear(w, w))
        self.level = nn.Embedding(len(cfg.levels), w)
        self.pos = nn.Parameter(torch.zeros(cfg.n_tokens, w))
        layer = nn.TransformerEncoderLayer(w, cfg.refine_heads, 4 * w, dropout=0.0,
                                           batch_first=True, norm_first=True,
                                           activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, cfg.refine_layers,
                                            enable_nested_tensor=False)
        self.out = nn.Linear(w, cfg.token_dim)
        mask = torch.triu(torch.full((cfg.n_tokens, cfg.n_tokens), float("-inf")), 1)
        self.register_buffer("causal", mask, persistent=False)
        self.width = w
        self.skip = cfg.refine_skip
        if self.skip:  # the schedule's alpha_bar, to precondition the output
            self.register_buffer("alpha_bar", alpha_bar_schedule(cfg.diffusion_steps),
                                 persistent=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                level: torch.Tensor) -> torch.Tensor:
        """Predict clean tokens from noised ``x_t`` (B, T, D) at timestep ``t`` (B,)."""
        h = self.inp(x_t) + self.pos[None]
        g = self.cond(cond) + self.time(_timestep_embedding(t, self.width)) + self.level(level)
        h = h + g[:, None, :]
        out = self.out(self.blocks(h, mask=self.causal, is_causal=True))
        if not self.skip:
            return out
        # EDM-style preconditioning for unit-variance targets: at low noise the prediction
        # is the input itself and the network only corrects it.
        ab = self.alpha_bar[t][:, None, None]
        return ab.sqrt() * x_t + (1 - ab).sqrt() * out


class SAD(nn.Module):
    def __init__(self, cfg: SADConfig):
        super().__init__()
        if not cfg.subjects:
            raise ValueError("SADConfig.subjects is empty: give every subject's voxel count")
        if cfg.proj_init not in PROJ_INITS:
            raise ValueError(f"SADConfig.proj_init {cfg.proj_init!r}: must be one of "
                             f"{list(PROJ_INITS)}")
        self.cfg = cfg
        n_out = len(cfg.levels) * cfg.n_tokens * cfg.token_dim
        #: Width of the fixed ridge layer (None: an ordinary learned projection).
        self.ridge_rank = (min(cfg.proj_rank or cfg.hidden, n_out)
                           if cfg.proj_init == "ridge" else None)
        self.proj = nn.ModuleDict({s: self._projection(n) for s, n in cfg.subjects.items()})
        self.backbone = nn.Sequential(
            *[ResidualBlock(cfg.hidden, cfg.dropout) for _ in range(cfg.mlp_layers)],
            nn.LayerNorm(cfg.hidden))
        # The head reads the backbone's features and, with the ridge layer, its outputs too.
        self.head = nn.Linear(cfg.hidden + (self.ridge_rank or 0), n_out)
        self.refiner = Refineformer(cfg, self.head.in_features) if cfg.use_refiner else None
        # Targets are learned standardised per (level, token, dim) with the training targets'
        # statistics (set by the trainer, saved with the weights): the shared caption
        # template dominates raw CLIP token states, the clip-specific part is small.
        shape = (len(cfg.levels), cfg.n_tokens, cfg.token_dim)
        self.register_buffer("target_mean", torch.zeros(shape))
        self.register_buffer("target_std", torch.ones(shape))
        # python floats for sampling (any device, even meta)
        self._ab = alpha_bar_schedule(cfg.diffusion_steps).tolist()
        self.register_buffer("alpha_bar", torch.tensor(self._ab), persistent=False)

    # ------------------------------------------------------------------ pieces

    def _projection(self, n_voxels: int) -> nn.Module:
        if self.ridge_rank is None:
            return subject_projection(n_voxels, self.cfg.hidden, self.cfg.proj_rank)
        # [0]: voxels -> ridge outputs (set by ridge_init, then fixed); [1]: -> hidden.
        return nn.Sequential(nn.Linear(n_voxels, self.ridge_rank),
                             nn.Linear(self.ridge_rank, self.cfg.hidden))

    def add_subject(self, label: str, n_voxels: int) -> None:
        """A new subject's projection (for adaptation: train only this)."""
        self.proj[label] = self._projection(n_voxels)

    def encode(self, x: torch.Tensor, subject: str, projected: bool = False) -> torch.Tensor:
        """The head's input: the backbone's features (and, with the ridge layer, the ridge
        outputs after them). ``projected``: ``x`` is already the ridge layer's output
        (training feeds cross-fitted ridge outputs that way)."""
        if subject not in self.proj:
            raise KeyError(f"subject {subject!r} has no projection (have {list(self.proj)})")
        proj = self.proj[subject]
        if projected and self.ridge_rank is None:
            raise ValueError("projected inputs need proj_init='ridge'")
        n = self.ridge_rank if projected else in_features(proj)
        if x.shape[-1] != n:
            what = "ridge outputs" if projected else "voxels"
            raise ValueError(f"subject {subject!r}: {x.shape[-1]} {what}, the projection "
                             f"expects {n}")
        if self.ridge_rank is None:
            return self.backbone(proj(x))
        f = x if projected else proj[0](x)
        return torch.cat([self.backbone(proj[1](f)), f], dim=-1)

    def estimate(self, h: torch.Tensor) -> torch.Tensor:
        """Backbone estimate of the *standardised* targets: (B, levels, tokens, dim)."""
        c = self.cfg
        return self.head(h).view(-1, len(c.levels), c.n_tokens, c.token_dim)

    @torch.no_grad()
    def set_target_stats(self, targets: torch.Tensor) -> None:
        """Standardisation from training targets (n, levels, tokens, dim); a floor of a tenth
        of the median keeps near-constant positions (padding) from being blown up."""
        mean, std = targets.mean(0), targets.std(0)
        self.target_mean.copy_(mean)
        self.target_std.copy_(std.clamp_min(0.1 * float(std.median()) + 1e-8))

    def standardize(self, target: torch.Tensor) -> torch.Tensor:
        return (target - self.target_mean) / self.target_std

    def unstandardize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.target_std + self.target_mean

    # ------------------------------------------------------------------ training

    def losses(self, x: torch.Tensor, subject: str, target: torch.Tensor,
               projected: bool = False) -> dict:
        """``target``: (B, levels, tokens, dim). Returns the loss terms and their total."""
        c = self.cfg
        target = self.standardize(target)
        h = self.encode(x, subject, projected)
        est = self.estimate(h)
        l_mse = F.mse_loss(est, target)
        B, L = target.shape[:2]
        l_refine = torch.zeros((), device=x.device)
        if self.refiner is not None:
            # Refineformer: denoise the target at a random timestep, per level.
            flat = target.reshape(B * L, c.n_tokens, c.token_dim)
            t = torch.randint(0, c.diffusion_steps, (B * L,), device=x.device)
            ab = self.alpha_bar[t][:, None, None]
            noisy = ab.sqrt() * flat + (1 - ab).sqrt() * torch.randn_like(flat)
            level = torch.arange(L, device=x.device).repeat(B)
            cond = h.repeat_interleave(L, dim=0)
            x0 = self.refiner(noisy, t, cond, level)
            l_refine = F.mse_loss(x0, flat)
        # SoftCLIP (or hard InfoNCE) on pooled tokens of the backbone estimate.
        l_soft = soft_clip_loss(est.mean(dim=2).reshape(B, -1),
                                target.mean(dim=2).reshape(B, -1), c.softclip_temperature,
                                hard=c.hard_contrastive)
        total = c.lambda_refine * l_refine + c.lambda_softclip * l_soft + l_mse
        return {"loss": total, "mse": l_mse.detach(), "refine": l_refine.detach(),
                "softclip": l_soft.detach()}

    @torch.no_grad()
    def val_error(self, x: torch.Tensor, subject: str, target: torch.Tensor,
                  projected: bool = False) -> float:
        """What picks the checkpoint: 1 − caption identification of the backbone estimate
        among the validation windows (50-way, or N-way with fewer distinct clips; pooled and
        centred as :mod:`rtdecode.models.evaluate` scores; seeded trials), plus a thousandth
        of its MSE to break ties (a small validation set identified perfectly). Its MSE
        alone stays flat while identification peaks and declines."""
        from ..ridge import n_way_identification

        est = self.estimate(self.encode(x, subject, projected))
        mse = float(F.mse_loss(est, self.standardize(target)))
        center = self.target_mean.mean(dim=1).flatten()
        pred = (self.unstandardize(est).mean(dim=2).flatten(1) - center).numpy()
        true = (target.mean(dim=2).flatten(1) - center).numpy()
        bank, ids = np.unique(true, axis=0, return_inverse=True)
        if len(bank) < 2:
            return mse
        r = n_way_identification(pred, ids.reshape(-1), bank, np.arange(len(bank)),
                                 min(50, len(bank)), 20, np.random.default_rng(0))
        return mse if r is None else (1.0 - r[0]) + 1e-3 * mse

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def forward(self, x: torch.Tensor, subject: str, steps: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode: (B, voxels) -> (B, levels, tokens, dim). ``steps`` = 0 returns the
        backbone estimate; otherwise DDIM-style refinement from a partly noised estimate."""
        c = self.cfg
        steps = c.sample_steps if steps is None else steps
        h = self.encode(x, subject)
        est = self.estimate(h)
        if steps <= 0 or self.refiner is None:
            return self.unstandardize(est)
        noise = torch.randn(est.shape, generator=generator, device=x.device)
        return self.unstandardize(self.refine(est, h, noise, steps))

    def refine(self, est: torch.Tensor, h: torch.Tensor, noise: torch.Tensor,
               steps: int) -> torch.Tensor:
        """The few-step Refineformer sampling, deterministic given ``noise`` (B, levels,
        tokens, dim): start at half the schedule from the backbone estimate ``est``
        (SDEdit-style) and step down in ``steps`` DDIM steps. A plain Python loop over
        constant timesteps, so tracing it (ONNX export) unrolls it. Works in the
        standardised target space (see :meth:`set_target_stats`)."""
        c = self.cfg
        B, L = est.shape[:2]
        cond = h.repeat_interleave(L, dim=0)
        level = torch.arange(L, device=est.device).repeat(B)
        x0 = est.reshape(-1, c.n_tokens, c.token_dim)
        ts = [round(c.diffusion_steps // 2 * (1 - i / steps)) for i in range(steps + 1)]
        ab = self._ab[ts[0]]
        xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise.reshape(x0.shape)
        for t, t_next in zip(ts[:-1], ts[1:]):
            x0 = self.refiner(xt, torch.full((x0.shape[0],), t, device=est.device), cond,
                              level)
            ab, ab_next = self._ab[t], self._ab[t_next]
            eps = (xt - math.sqrt(ab) * x0) / max(math.sqrt(1 - ab), 1e-6)
            xt = math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next) * eps
        return x0.reshape(-1, L, c.n_tokens, c.token_dim)


class SADGraph(nn.Module):
    """One subject's decode as a pure function of its inputs — what is exported to ONNX and
    what the torch eager backend runs, so the two compute the same thing.

    ``forward(x, noise)``: ``x`` (B, voxels) float32, ``noise`` (B, levels, tokens, dim)
    standard normal (the sampling noise is an *input*, so the graph is deterministic and
    parity with torch is exact); returns ``tokens`` (B, levels, tokens, dim) and ``pooled``
    (B, levels * dim): the mean over tokens, levels concatenated
    (:func:`rtdecode.models.evaluate.pooled`), what the caption bank compares. With
    ``steps`` = 0 (or no Refineformer) it is the backbone estimate and takes no noise.
    """

    def __init__(self, model: SAD, subject: str, steps: int):
        super().__init__()
        if subject not in model.proj:
            raise KeyError(f"subject {subject!r} has no projection (have {list(model.proj)})")
        if steps < 0:
            raise ValueError(f"steps {steps}: must be >= 0")
        self.model, self.subject = model, subject
        self.steps = steps if model.refiner is not None else 0

    @property
    def uses_noise(self) -> bool:
        return self.steps > 0

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        h = m.encode(x, self.subject)
        tokens = m.estimate(h)
        if self.steps > 0:
            if noise is None:
                raise ValueError(f"SADGraph with {self.steps} steps needs a noise input")
            tokens = m.refine(tokens, h, noise, self.steps)
        tokens = m.unstandardize(tokens)
        return tokens, tokens.mean(dim=2).flatten(1)


def soft_clip_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float,
                   hard: bool = False) -> torch.Tensor:
    """Contrastive loss with soft labels from target–target similarity (both directions);
    ``hard`` uses one-hot labels (plain InfoNCE)."""
    p = F.normalize(pred, dim=-1)
    t = F.normalize(target, dim=-1)
    logits = p @ t.T / temperature
    soft = torch.eye(len(t), device=t.device) if hard else F.softmax(t @ t.T / temperature, -1)
    return 0.5 * (-(soft * F.log_softmax(logits, -1)).sum(-1).mean()
                  - (soft * F.log_softmax(logits.T, -1)).sum(-1).mean())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def adapt_subject(model: SAD, label: str, X, Y, *, epochs: int = 30, lr: float = 1e-3,
                  batch_size: int = 64, seed: int = 0) -> list[float]:
    """New-subject adaptation: add ``label``'s projection and train only it (everything
    shared stays frozen) on ``X`` (n, voxels) → ``Y`` (n, levels, tokens, dim)."""
    torch.manual_seed(seed)
    model.add_subject(label, int(X.shape[1]))
    for p in model.parameters():
        p.requires_grad_(False)
    proj = model.proj[label]
    for p in proj.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(proj.parameters(), lr=lr, weight_decay=0.0)
    Xt, Yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(Y, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    model.eval()  # no dropout in the frozen backbone
    losses = []
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(Xt)))
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i: i + batch_size]
            est = model.estimate(model.encode(Xt[idx], label))
            loss = F.mse_loss(est, model.standardize(Yt[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(Xt))
    for p in model.parameters():
        p.requires_grad_(True)
    return losses
