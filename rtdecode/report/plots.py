"""The report's figures, drawn with matplotlib's object API (``Figure``, Agg canvas: no
display, no global pyplot state). Each function takes a section's dict and a PNG path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CHANCE = {"caption_2way": 0.5, "caption_50way": 0.02}
WAY = {"caption_2way": "2-way", "caption_50way": "50-way"}
COND_LABEL = {"single_trial": "single-trial", "averaged": "repeat-averaged"}


def _figure(ncols: int = 1, width: float = 5.0, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _val(r: dict, key: str) -> float:
    v = r.get(key)
    return np.nan if v is None else float(v)


def hrf_lag(rows: list[dict], configured_lag_s: float, path: Path) -> Path:
    """Caption 2-way and 50-way against the HRF lag, single-trial and averaged."""
    fig, axes = _figure(2)
    lags = [r["lag_s"] for r in rows]
    for ax, key in zip(axes, ("caption_2way", "caption_50way")):
        for cond, style in (("single_trial", "o-"), ("averaged", "s--")):
            ax.plot(lags, [_val(r[cond], key) for r in rows], style, label=COND_LABEL[cond])
        ax.axhline(CHANCE[key], color="grey", ls=":", lw=1, label="chance")
        ax.axvline(configured_lag_s, color="tab:red", ls=":", lw=1, label="configured lag")
        ax.set(xlabel="HRF lag (s)", ylabel=f"caption {WAY[key]}",
               title=f"ridge caption {WAY[key]} vs lag")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def provisional(prov: dict, path: Path) -> Path:
    """Grouped bars: provisional (first TR of the window) and final, per decoder."""
    fig, axes = _figure(2)
    decoders = [k for k, v in prov.items() if isinstance(v, dict)]
    x = np.arange(len(decoders))
    for ax, key in zip(axes, ("caption_2way", "caption_50way")):
        for j, kind in enumerate(("provisional", "final")):
            vals = [_val(prov[d][kind]["single_trial"], key) for d in decoders]
            ax.bar(x + (j - 0.5) * 0.38, vals, 0.38, label=kind)
        ax.axhline(CHANCE[key], color="grey", ls=":", lw=1)
        ax.set_xticks(x, decoders)
        ax.set(ylabel=f"single-trial caption {WAY[key]}",
               title=f"provisional vs final ({WAY[key]})")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def refine_steps(sweep: list[dict], path: Path) -> Path:
    """Single-trial caption accuracy and per-TR decode latency against Refineformer steps."""
    fig, axes = _figure(1, 6.0)
    ax = axes[0]
    steps = [r["steps"] for r in sweep]
    for key, style in (("caption_2way", "o-"), ("caption_50way", "s-")):
        ax.plot(steps, [_val(r["single_trial"], key) for r in sweep], style,
                label=f"caption {WAY[key]}")
    ax.set(xlabel="Refineformer steps", ylabel="single-trial accuracy",
           title="SAD accuracy and latency vs Refineformer steps")
    twin = ax.twinx()
    twin.plot(steps, [r["ms_per_tr_p50"] for r in sweep], "^:", color="tab:red",
              label="p50 ms per TR")
    twin.set_ylabel("decode ms per TR (batch 1)")
    ax.legend(loc="center left", fontsize=8)
    twin.legend(loc="center right", fontsize=8)
    return _save(fig, path)


def latency(lat: dict, path: Path) -> Path:
    """One histogram per daemon stage of the replay's latency samples."""
    stages = list(lat["samples"])
    ncols = min(3, max(1, len(stages)))
    nrows = int(np.ceil(len(stages) / ncols)) or 1
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, stage in zip(axes, stages):
        v = np.asarray(lat["samples"][stage])
        ax.hist(v, bins=min(40, max(5, len(v) // 4)), color="tab:blue")
        p50, p99 = np.percentile(v, [50, 99])
        ax.axvline(p50, color="k", lw=1, label=f"p50 {p50:.2f}")
        ax.axvline(p99, color="tab:red", lw=1, ls="--", label=f"p99 {p99:.2f}")
        ax.set(title=f"{stage} (n={len(v)})", xlabel="ms")
        ax.legend(fontsize=7)
    for ax in axes[len(stages):]:
        ax.set_visible(False)
    return _save(fig, path)


def render_time(rows: list[dict], sampling: dict, budget_s: float, path: Path) -> Path:
    """CVR seconds per clip against steps, NeuroClips' settings and the real-time budget."""
    fig, axes = _figure(1, 6.0)
    ax = axes[0]
    ax.plot([r["steps"] for r in rows], [r["seconds_per_clip"] for r in rows], "o-",
            label="ours (CVR, few-step)")
    nc = sampling.get("neuroclips")
    if nc:
        ax.plot([nc["steps"]], [nc["seconds_per_clip"]], "r*", ms=12,
                label=f"NeuroClips settings ({nc['steps']} {nc['scheduler']}, CFG "
                      f"{nc['guidance']:g})")
    ax.axhline(budget_s, color="grey", ls=":", label=f"real time ({budget_s:g} s per clip)")
    ax.set(xlabel="scheduler steps", ylabel="seconds per clip", title="render time vs steps")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    return _save(fig, path)


def draw_all(report: dict[str, Any], out: Path) -> dict[str, str]:
    """Every figure the report has data for; section name -> PNG file name."""
    out = Path(out)
    meta = report["meta"]
    figs: dict[str, str] = {}
    jobs = {
        "hrf_lag": lambda p: hrf_lag(report["hrf_lag"], meta["lag_trs"] * meta["tr_s"], p),
        "provisional": lambda p: provisional(report["provisional"], p),
        "refine_steps": lambda p: refine_steps(
            report["evaluation"]["subjects"][meta["subject"]].get("steps_sweep", []), p),
        "latency": lambda p: latency(report["latency"], p),
        "render_time": lambda p: render_time(report["render_time"], report["sampling"],
                                             meta["tr_s"], p),
    }
    for name, draw in jobs.items():
        draw(out / f"{name}.png")
        figs[name] = f"{name}.png"
    return figs
