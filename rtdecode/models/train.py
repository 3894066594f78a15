"""Training SAD on windowed fMRI: multi-subject, seeded, resumable, with a validation split.

Inputs are the same causally preprocessed HRF-lag windows the live daemon decodes
(:func:`rtdecode.ridge.build_windows`). The validation split is carved from the *training*
runs (the last ``val_fraction`` of each subject's training runs, whole runs) and selects the
checkpoint; the test runs are never looked at.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..config import Config
from ..data import Session
from ..preprocess import select_voxels
from ..ridge import build_windows
from .sad import SAD, SADConfig

#: Maps clip ids to target token arrays (n, levels, tokens, dim).
TargetFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    val_fraction: float = 0.125
    seed: int = 0
    max_minutes: float | None = None
    threads: int = 2


@dataclass
class SubjectData:
    label: str
    X: np.ndarray          # (n, voxels) float32
    clip_ids: np.ndarray
    val: np.ndarray        # bool (n,): validation windows


def subject_windows(session: Session, cfg: Config, task: str = "train",
                    val_fraction: float = 0.0) -> SubjectData:
    """Windows of every ``task`` run (:func:`rtdecode.ridge.build_windows`); the last runs
    (whole runs, at least one when there are several) are marked as validation."""
    ws = build_windows(session, task, cfg, voxels=select_voxels(session, cfg))
    n_runs = int(ws.runs.max()) + 1
    n_val = max(1, int(round(n_runs * val_fraction))) if val_fraction > 0 and n_runs > 1 else 0
    return SubjectData(session.subject, ws.X, ws.clip_ids, ws.runs >= n_runs - n_val)


def save_checkpoint(model: SAD, out: Path, meta: dict, fp16: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(out / "sad.safetensors"))
    (out / "config.json").write_text(json.dumps({"sad": model.cfg.to_dict(), **meta},
                                                indent=2, sort_keys=True) + "\n")


def load_checkpoint(path: str | Path) -> tuple[SAD, dict]:
    path = Path(path)
    meta = json.loads((path / "config.json").read_text())
    c = dict(meta["sad"])
    c["levels"] = tuple(c["levels"])
    model = SAD(SADConfig(**c))
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in load_file(str(path / "sad.safetensors")).items()}
    model.load_state_dict(state)
    model.eval()
    return model, meta


def train_sad(data: list[SubjectData], targets: TargetFn, sad_cfg: SADConfig,
              tcfg: TrainConfig, out: str | Path, meta: dict | None = None,
              progress: bool = True, resume: bool = True) -> dict:
    """Train, keep the checkpoint with the best validation loss; returns a summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    model = SAD(sad_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    tr = {d.label: np.flatnonzero(~d.val) for d in data}
    va = {d.label: np.flatnonzero(d.val) for d in data}
    steps_per_epoch = sum(math.ceil(len(i) / tcfg.batch_size) for i in tr.values())
    total = tcfg.epochs * steps_per_epoch

    def lr_at(step: int) -> float:  # warm-up then cosine; stateless, so resume-safe
        warm = max(1, int(0.1 * total))
        if step < warm:
            return tcfg.lr * (step + 1) / warm
        frac = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * tcfg.lr * (1 + math.cos(math.pi * frac))
    Y = {d.label: torch.from_numpy(targets(d.clip_ids).astype(np.float32)) for d in data}
    Xt = {d.label: torch.from_numpy(d.X) for d in data}
    state_path = out / "train_state.pt"
    start_epoch, best, history = 0, math.inf, []
    if resume and state_path.is_file():
        st = torch.load(state_path, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start_epoch, best, history = st["epoch"], st["best"], st["history"]
        rng = np.random.default_rng([tcfg.seed, start_epoch])
    step = start_epoch * steps_per_epoch
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc="train sad",
               unit="step", disable=not progress)
    for epoch in range(start_epoch, tcfg.epochs):
        model.train()
        batches = [(s, idx[i: i + tcfg.batch_size]) for s, idx in
                   ((s, rng.permutation(ix)) for s, ix in tr.items())
                   for i in range(0, len(idx), tcfg.batch_size)]
        rng.shuffle(batches)
        sums = {"loss": 0.0, "mse": 0.0, "refine": 0.0, "softclip": 0.0}
        for s, idx in batches:
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            step += 1
            ti = torch.from_numpy(idx)
            terms = model.losses(Xt[s][ti], s, Y[s][ti])
            opt.zero_grad()
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            for k in sums:
                sums[k] += float(terms[k].detach()) / len(batches)
            bar.update(1)
        val = evaluate_loss(model, Xt, Y, va)
        row = {"epoch": epoch + 1, **{f"train_{k}": round(v, 6) for k, v in sums.items()},
               "val_mse": round(val, 6), "lr": opt.param_groups[0]["lr"],
               "minutes": round((time.perf_counter() - t0) / 60, 2)}
        history.append(row)
        bar.set_postfix(train=f"{sums['loss']:.4f}", val=f"{val:.4f}")
        if val < best or (math.isnan(val) and epoch + 1 == tcfg.epochs):  # no val: keep last
            best = val
            save_checkpoint(model, out, {**(meta or {}), "train": asdict(tcfg),
                                         "best_epoch": epoch + 1, "val_mse": val})
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "epoch": epoch + 1, "best": best,
                    "history": history}, state_path)
        _write_curve(out, history)
        if tcfg.max_minutes and (time.perf_counter() - t0) / 60 > tcfg.max_minutes:
            break
    bar.close()
    return {"best_val_mse": best, "epochs": len(history),
            "minutes": round((time.perf_counter() - t0) / 60, 2)}


@torch.no_grad()
def evaluate_loss(model: SAD, Xt: dict, Y: dict, idx: dict) -> float:
    """Validation MSE of the backbone estimate (cheap, deterministic)."""
    model.eval()
    errs, n = 0.0, 0
    for s, ix in idx.items():
        if len(ix) == 0:
            continue
        ti = torch.from_numpy(ix)
        est = model.estimate(model.encode(Xt[s][ti], s))
        errs += float(((est - Y[s][ti]) ** 2).mean()) * len(ix)
        n += len(ix)
    return errs / n if n else math.nan


def _write_curve(out: Path, history: list[dict]) -> None:
    with (out / "loss.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional; the CSV is the record
        return
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(ep, [h["train_mse"] for h in history], label="train mse")
    ax.plot(ep, [h["val_mse"] for h in history], label="val mse")
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
