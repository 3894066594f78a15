"""MAD, the Motion Alignment Decoder (SemVideo), in one file with its config.

fMRI window ``(batch, n_voxels_s)`` of subject *s*, plus SAD's decoded motion semantics
``(batch, n_tokens, token_dim)`` →

1. a subject-specific projection to ``hidden`` (optionally low-rank, ``proj_rank``);
2. the **motion embedder**: an MLP whose output is split into per-frame tokens — a spatial
   grid of ``patches`` tokens per frame (the latent cut into ``patch``×``patch`` squares), built
   as a per-patch part plus a per-frame part plus learned frame/patch positions;
3. ``blocks`` **tri-path attention** blocks: spatial self-attention among a frame's patches,
   temporal self-attention along the frames of each patch, and cross-attention from every
   token to the decoded motion semantics (keys/values); combined as
   ``ê = λ_spat·e_spat + λ_temp·e_temp + e_cross``, added residually, then an MLP;
4. a linear head per token back to the latent patch → per-frame VAE latents
   ``(batch, frames, C, h, w)``.

Loss: L1 to the target latents + ``lambda_contrast`` × a bidirectional contrastive loss
between the flattened decoded and target clip latents (InfoNCE, both directions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .sad import subject_projection


@dataclass(frozen=True)
class MADConfig:
    subjects: dict[str, int] = field(default_factory=dict)  # label -> voxel count
    hidden: int = 256
    proj_rank: int | None = 64    # low-rank subject projection (None: full n_voxels x hidden)
    embed_layers: int = 2
    dropout: float = 0.15
    n_frames: int = 8
    latent_shape: tuple[int, int, int] = (4, 16, 16)  # (C, h, w) of the VAE
    patch: int = 4
    width: int = 64               # token width
    heads: int = 4
    blocks: int = 2
    motion_tokens: int = 16       # SAD's motion semantics: (motion_tokens, token_dim)
    token_dim: int = 128
    lambda_spat: float = 1.0
    lambda_temp: float = 1.0
    lambda_contrast: float = 0.1
    contrast_temperature: float = 0.1
    use_cross: bool = True        # False: the ablation without decoded motion semantics

    def __post_init__(self) -> None:
        c, h, w = self.latent_shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"MAD: latent {h}x{w} is not divisible by patch {self.patch}")

    @property
    def n_patches(self) -> int:
        return (self.latent_shape[1] // self.patch) * (self.latent_shape[2] // self.patch)

    @property
    def patch_dim(self) -> int:
        return self.latent_shape[0] * self.patch * self.patch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MADConfig:
        d = dict(d)
        d["latent_shape"] = tuple(d["latent_shape"])
        return cls(**d)


class TriPathBlock(nn.Module):
    def __init__(self, cfg: MADConfig):
        super().__init__()
        w, h = cfg.width, cfg.heads
        self.cfg = cfg
        self.norm_s, self.norm_t, self.norm_c = nn.LayerNorm(w), nn.LayerNorm(w), nn.LayerNorm(w)
        self.spat = nn.MultiheadAttention(w, h, batch_first=True)
        self.temp = nn.MultiheadAttention(w, h, batch_first=True)
        self.cross = nn.MultiheadAttention(w, h, batch_first=True) if cfg.use_cross else None
        self.norm_m = nn.LayerNorm(w)
        self.mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.GELU(), nn.Linear(4 * w, w))

    def forward(self, x: torch.Tensor, motion: torch.Tensor | None) -> torch.Tensor:
        """``x``: (B, F, P, W) tokens; ``motion``: (B, M, W) projected motion semantics."""
        B, Fr, P, W = x.shape
        s = self.norm_s(x).reshape(B * Fr, P, W)
        e_spat = self.spat(s, s, s, need_weights=False)[0].reshape(B, Fr, P, W)
        t = self.norm_t(x).transpose(1, 2).reshape(B * P, Fr, W)
        e_temp = self.temp(t, t, t, need_weights=False)[0].reshape(B, P, Fr, W).transpose(1, 2)
        e = self.cfg.lambda_spat * e_spat + self.cfg.lambda_temp * e_temp
        if self.cross is not None and motion is not None:
            q = self.norm_c(x).reshape(B, Fr * P, W)
            e = e + self.cross(q, motion, motion, need_weights=False)[0].reshape(B, Fr, P, W)
        x = x + e
        return x + self.mlp(self.norm_m(x))


class MAD(nn.Module):
    def __init__(self, cfg: MADConfig):
        super().__init__()
        if not cfg.subjects:
            raise ValueError("MADConfig.subjects is empty: give every subject's voxel count")
        self.cfg = cfg
        self.proj = nn.ModuleDict({s: subject_projection(n, cfg.hidden, cfg.proj_rank)
                                   for s, n in cfg.subjects.items()})
        layers: list[nn.Module] = []
        for _ in range(cfg.embed_layers):
            layers += [nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
                       nn.Dropout(cfg.dropout)]
        self.embedder = nn.Sequential(*layers)
        P, Fr, W = cfg.n_patches, cfg.n_frames, cfg.width
        self.to_patch = nn.Linear(cfg.hidden, P * W)
        self.to_frame = nn.Linear(cfg.hidden, Fr * W)
        self.pos_frame = nn.Parameter(torch.zeros(Fr, 1, W))
        self.pos_patch = nn.Parameter(torch.zeros(1, P, W))
        nn.init.normal_(self.pos_frame, std=0.02)
        nn.init.normal_(self.pos_patch, std=0.02)
        self.motion_in = nn.Linear(cfg.token_dim, W) if cfg.use_cross else None
        self.blocks = nn.ModuleList(TriPathBlock(cfg) for _ in range(cfg.blocks))
        self.norm_out = nn.LayerNorm(W)
        self.head = nn.Linear(W, cfg.patch_dim)

    def add_subject(self, label: str, n_voxels: int) -> None:
        self.proj[label] = subject_projection(n_voxels, self.cfg.hidden, self.cfg.proj_rank)

    def _tokens(self, x: torch.Tensor, subject: str) -> torch.Tensor:
        if subject not in self.proj:
            raise KeyError(f"subject {subject!r} has no projection (have {list(self.proj)})")
        c = self.cfg
        h = self.embedder(self.proj[subject](x))
        B = h.shape[0]  # not len(h): len() is an int and would freeze an exported batch
        return (self.to_patch(h).view(B, 1, c.n_patches, c.width)
                + self.to_frame(h).view(B, c.n_frames, 1, c.width)
                + self.pos_frame[None] + self.pos_patch[None])

    def _unpatchify(self, tok: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        C, H, W = c.latent_shape
        p = c.patch
        B, Fr = tok.shape[:2]
        z = tok.view(B, Fr, H // p, W // p, C, p, p)
        return z.permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Fr, C, H, W)

    def decode(self, x: torch.Tensor, subject: str,
               motion: torch.Tensor | None = None) -> torch.Tensor:
        """(B, voxels), motion semantics (B, M, token_dim) → latents (B, frames, C, h, w)."""
        tok = self._tokens(x, subject)
        m = self.motion_in(motion) if (self.motion_in is not None and motion is not None) \
            else None
        for block in self.blocks:
            tok = block(tok, m)
        return self._unpatchify(self.head(self.norm_out(tok)))

    def forward(self, x: torch.Tensor, subject: str,
                motion: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(x, subject, motion)

    def losses(self, x: torch.Tensor, subject: str, target: dict) -> dict:
        """``target``: {"latents": (B, F, C, h, w), "motion": (B, M, D)}."""
        pred = self.decode(x, subject, target.get("motion"))
        z = target["latents"]
        l1 = (pred - z).abs().mean()
        l_con = contrastive(pred.flatten(1), z.flatten(1), self.cfg.contrast_temperature)
        return {"loss": l1 + self.cfg.lambda_contrast * l_con, "l1": l1.detach(),
                "contrast": l_con.detach()}

    @torch.no_grad()
    def val_error(self, x: torch.Tensor, subject: str, target: dict) -> float:
        return float(F.mse_loss(self.decode(x, subject, target.get("motion")),
                                target["latents"]))


class MADGraph(nn.Module):
    """One subject's MAD decode as a pure function of its inputs — what is exported to ONNX.

    ``forward(x, motion)``: ``x`` (B, voxels) float32, ``motion`` (B, motion_tokens,
    token_dim) SAD's decoded motion semantics (its ``motion`` level); returns the per-frame
    scaled VAE latents (B, frames, C, h, w). A MAD trained without cross-attention
    (``use_cross=False``, the ablation) ignores motion, and its graph takes ``x`` alone.
    ``MAD.forward(x, subject, None)`` on a cross-attending MAD (cross-attention skipped) is
    not a graph: nothing feeds it, the render worker requires SAD's motion level.
    """

    def __init__(self, model: MAD, subject: str):
        super().__init__()
        if subject not in model.proj:
            raise KeyError(f"subject {subject!r} has no projection (have {list(model.proj)})")
        self.model, self.subject = model, subject

    @property
    def uses_motion(self) -> bool:
        return self.model.motion_in is not None

    def forward(self, x: torch.Tensor, motion: torch.Tensor | None = None) -> torch.Tensor:
        if self.uses_motion and motion is None:
            raise ValueError("MADGraph of a cross-attending MAD needs the motion input")
        return self.model.decode(x, self.subject, motion if self.uses_motion else None)


def contrastive(pred: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Bidirectional InfoNCE between rows of ``pred`` and ``target`` (matching rows pair)."""
    p = F.normalize(pred, dim=-1)
    t = F.normalize(target, dim=-1)
    logits = p @ t.T / temperature
    labels = torch.arange(len(p), device=p.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
