"""Training SAD and MAD on windowed fMRI: multi-subject, seeded, resumable, validated.

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
from ..ridge import DualRidge, build_windows
from .mad import MAD, MADConfig
from .sad import SAD, SADConfig

#: Maps clip ids to targets: an array (n, ...) or a dict of such arrays (MAD).
TargetFn = Callable[[np.ndarray], "np.ndarray | dict[str, np.ndarray]"]
#: Checkpoint kinds: weights file ``{kind}.safetensors``, config under ``config.json[kind]``.
KINDS = {"sad": (SAD, SADConfig), "mad": (MAD, MADConfig)}


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
    runs: np.ndarray | None = None  # (n,) run of each window (ridge_init's folds)


def subject_windows(session: Session, cfg: Config, task: str = "train",
                    val_fraction: float = 0.0, noise_free: bool = False) -> SubjectData:
    """Windows of every ``task`` run (:func:`rtdecode.ridge.build_windows`); the last runs
    (whole runs, at least one when there are several) are marked as validation.
    ``noise_free``: the simulator's noise-free BOLD instead of the scan (the ceiling)."""
    ws = build_windows(session, task, cfg, voxels=select_voxels(session, cfg),
                       noise_free=noise_free)
    n_runs = int(ws.runs.max()) + 1
    n_val = max(1, int(round(n_runs * val_fraction))) if val_fraction > 0 and n_runs > 1 else 0
    return SubjectData(session.subject, ws.X, ws.clip_ids, ws.runs >= n_runs - n_val, ws.runs)


def _kind(model) -> str:
    for kind, (cls, _) in KINDS.items():
        if isinstance(model, cls):
            return kind
    raise TypeError(f"no checkpoint kind for {type(model).__name__}")


def save_checkpoint(model: SAD | MAD, out: Path, meta: dict, fp16: bool = False) -> None:
    """``{kind}.safetensors`` (weights) + ``config.json``: ``meta`` plus ``{kind: config}``
    (the model's own config wins over a stale one in ``meta``)."""
    kind = _kind(model)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(out / f"{kind}.safetensors"))
    (out / "config.json").write_text(json.dumps({**meta, kind: model.cfg.to_dict()},
                                                indent=2, sort_keys=True) + "\n")


def load_checkpoint(path: str | Path) -> tuple[SAD | MAD, dict]:
    """Load a SAD or MAD checkpoint folder (float32, eval mode)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (is it a trained checkpoint folder?)")
    meta = json.loads((path / "config.json").read_text())
    kind = next((k for k in KINDS if k in meta and (path / f"{k}.safetensors").is_file()),
                None)
    if kind is None:
        raise FileNotFoundError(f"{path}: want sad.safetensors or mad.safetensors with its "
                                "config.json")
    cls, cfg_cls = KINDS[kind]
    c = dict(meta[kind])
    if "levels" in c:
        c["levels"] = tuple(c["levels"])
    if "latent_shape" in c:
        c["latent_shape"] = tuple(c["latent_shape"])
    model = cls(cfg_cls(**c))
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in load_file(str(path / f"{kind}.safetensors")).items()}
    model.load_state_dict(state)
    model.eval()
    return model, meta


def train_sad(data: list[SubjectData], targets: TargetFn, sad_cfg: SADConfig,
              tcfg: TrainConfig, out: str | Path, meta: dict | None = None,
              progress: bool = True, resume: bool = True) -> dict:
    """Train SAD, keep the checkpoint with the best validation loss; returns a summary."""
    return train_decoder(lambda: SAD(sad_cfg), data, targets, tcfg, out, meta, progress,
                         resume)


def train_mad(data: list[SubjectData], targets: TargetFn, mad_cfg: MADConfig,
              tcfg: TrainConfig, out: str | Path, meta: dict | None = None,
              progress: bool = True, resume: bool = True) -> dict:
    """Train MAD (targets: {"latents", "motion"}); as :func:`train_sad`."""
    return train_decoder(lambda: MAD(mad_cfg), data, targets, tcfg, out, meta, progress,
                         resume)


def _index(y, idx: torch.Tensor):
    return {k: v[idx] for k, v in y.items()} if isinstance(y, dict) else y[idx]


def _as_tensor(y):
    if isinstance(y, dict):
        return {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in y.items()}
    return torch.from_numpy(np.ascontiguousarray(y, np.float32))


def train_decoder(build: Callable[[], SAD | MAD], data: list[SubjectData], targets: TargetFn,
                  tcfg: TrainConfig, out: str | Path, meta: dict | None = None,
                  progress: bool = True, resume: bool = True) -> dict:
    """The training loop shared by SAD and MAD: AdamW, warm-up + cosine LR, gradient
    clipping; validation error after every epoch picks the checkpoint; resumable."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    model = build()
    kind = _kind(model)
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
    Y = {d.label: _as_tensor(targets(d.clip_ids)) for d in data}
    if hasattr(model, "set_target_stats"):  # from the training windows only
        model.set_target_stats(torch.cat([Y[s][torch.from_numpy(ix)] for s, ix in tr.items()]))
    projected = getattr(model, "ridge_rank", None) is not None
    if projected:  # deterministic, so a resumed run recomputes the same inputs
        Xt = ridge_init(model, data, Y, progress=progress)
    else:
        Xt = {d.label: torch.from_numpy(d.X) for d in data}
    kw = {"projected": True} if projected else {}
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
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc=f"train {kind}",
               unit="step", disable=not progress)
    for epoch in range(start_epoch, tcfg.epochs):
        model.train()
        batches = [(s, idx[i: i + tcfg.batch_size]) for s, idx in
                   ((s, rng.permutation(ix)) for s, ix in tr.items())
                   for i in range(0, len(idx), tcfg.batch_size)]
        rng.shuffle(batches)
        sums: dict[str, float] = {}
        for s, idx in batches:
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            step += 1
            ti = torch.from_numpy(idx)
            terms = model.losses(Xt[s][ti], s, _index(Y[s], ti), **kw)
            opt.zero_grad()
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(batches)
            bar.update(1)
        val = evaluate_loss(model, Xt, Y, va, **kw)
        row = {"epoch": epoch + 1, **{f"train_{k}": round(v, 6) for k, v in sums.items()},
               "val_error": round(val, 6), "lr": opt.param_groups[0]["lr"],
               "minutes": round((time.perf_counter() - t0) / 60, 2)}
        history.append(row)
        bar.set_postfix(train=f"{sums['loss']:.4f}", val=f"{val:.4f}")
        if val < best or (math.isnan(val) and epoch + 1 == tcfg.epochs):  # no val: keep last
            best = val
            save_checkpoint(model, out, {**(meta or {}), "train": asdict(tcfg),
                                         "best_epoch": epoch + 1, "val_error": val})
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "epoch": epoch + 1, "best": best,
                    "history": history}, state_path)
        _write_curve(out, history)
        if tcfg.max_minutes and (time.perf_counter() - t0) / 60 > tcfg.max_minutes:
            break
    bar.close()
    return {"best_val_error": best, "epochs": len(history),
            "minutes": round((time.perf_counter() - t0) / 60, 2)}


def crossfit_ridge(X: np.ndarray, Y: np.ndarray, groups: np.ndarray, alpha: float
                   ) -> np.ndarray:
    """Each group's rows predicted by a ridge (intercept, ``alpha``) fitted on the other
    groups' rows: out-of-sample predictions for every row, from one Gram matrix."""
    K = (X @ X.T).astype(np.float64)
    out = np.empty((len(X), Y.shape[1]), np.float64)
    for g in np.unique(groups):
        e, t = groups == g, groups != g
        Ktt, Ket = K[np.ix_(t, t)], K[np.ix_(e, t)]
        col, mean = Ktt.mean(axis=0), Ktt.mean()
        # Inner products of inputs centred on the fitting rows' mean.
        Kc = Ktt - col[:, None] - col[None, :] + mean
        Kec = Ket - Ket.mean(axis=1, keepdims=True) - col[None, :] + mean
        y_mean = Y[t].mean(axis=0)
        Kc[np.diag_indices_from(Kc)] += alpha
        out[e] = Kec @ np.linalg.solve(Kc, Y[t] - y_mean) + y_mean
    return out.astype(np.float32)


@torch.no_grad()
def ridge_init(model: SAD, data: list[SubjectData], Y: dict, folds: int = 5,
               progress: bool = True) -> dict[str, torch.Tensor]:
    """Fit SAD's ridge layer (``proj_init="ridge"``) on the training windows and return the
    inputs training feeds it instead of voxels: the ridge outputs of every window, the
    training windows' *cross-fitted* (a ridge that did not see the window's run), the rest
    from the fitted layer.

    Per subject, a ridge from voxels to the standardised targets (alpha by leave-one-out
    from ``cfg.ridge_alphas``); the rank-``r`` principal directions ``V`` of its in-sample
    predictions, pooled over subjects (shared, so the backbone sees one space); layer 0 of
    the subject's projection = the ridge map onto ``V``, scaled to unit cross-fitted
    variance; the head's ridge columns = ``V`` times that scale, its backbone columns and
    bias zero: the untrained model is the reduced-rank ridge decoder. Folds are whole runs
    when ``data`` has them (else ``folds`` contiguous blocks)."""
    c, r = model.cfg, model.ridge_rank
    fits, zin = {}, []
    for d in tqdm(data, desc="ridge init", disable=not progress):
        ix = np.flatnonzero(~d.val)
        X = d.X[ix]
        Z = model.standardize(Y[d.label][torch.from_numpy(ix)]).flatten(1).numpy()
        dr = DualRidge(X, c.ridge_alphas)
        alpha = dr.select_alpha(Z)
        fits[d.label] = (ix, X, Z, dr, alpha)
        pred = dr.predict(X, Z, alpha)
        zin.append(pred - pred.mean(axis=0))
    _, _, vt = np.linalg.svd(np.concatenate(zin), full_matrices=False)
    V = np.zeros((zin[0].shape[1], r), np.float32)
    V[:, :min(r, len(vt))] = vt[:r].T
    cross, maps = {}, {}
    for d in data:
        ix, X, Z, dr, alpha = fits[d.label]
        groups = d.runs[ix] if d.runs is not None else np.arange(len(ix)) * folds // len(ix)
        cross[d.label] = crossfit_ridge(X, Z @ V, groups, alpha) if len(np.unique(groups)) > 1 \
            else dr.predict(X, Z @ V, alpha)
        maps[d.label] = dr.fit(Z @ V, alpha)
    scale = np.concatenate(list(cross.values())).std(axis=0) + 1e-6
    out = {}
    for d in data:
        first = model.proj[d.label][0]
        first.weight.copy_(torch.from_numpy((maps[d.label].coef / scale).T))
        first.bias.copy_(torch.from_numpy(maps[d.label].intercept / scale))
        first.requires_grad_(False)
        feats = first(torch.from_numpy(d.X))
        ix = fits[d.label][0]
        feats[torch.from_numpy(ix)] = torch.from_numpy(cross[d.label] / scale)
        out[d.label] = feats.contiguous()
    w = model.head.weight
    w[:, :c.hidden] = 0.0
    w[:, c.hidden:] = torch.from_numpy(V * scale)
    model.head.bias.zero_()
    return out


@torch.no_grad()
def evaluate_loss(model: SAD | MAD, Xt: dict, Y: dict, idx: dict, **kw) -> float:
    """Validation error (the model's ``val_error``: MAD's latent MSE, SAD's 1 − caption
    identification), window-weighted over subjects."""
    model.eval()
    errs, n = 0.0, 0
    for s, ix in idx.items():
        if len(ix) == 0:
            continue
        ti = torch.from_numpy(ix)
        errs += model.val_error(Xt[s][ti], s, _index(Y[s], ti), **kw) * len(ix)
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
    key = "train_mse" if "train_mse" in history[0] else "train_l1"
    ax.plot(ep, [h[key] for h in history], label=key.replace("_", " "))
    ax.plot(ep, [h["val_error"] for h in history], label="val error")
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
