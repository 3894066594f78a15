"""What a linear readout names of each scene attribute from the single-trial test windows,
under variants of the attribute decoder (README, "What bounds decoded position and motion").

Rows: the shipped setting (one alpha for every target, chosen by RidgeCV's leave-one-out
error; the zoo's ``attributes/``), an alpha per target chosen the same way, fixed alphas,
wider windows of concatenated volumes (``lag/width``), and the same readout on the
simulator's noise-free BOLD (what the brain model carries with no scanner noise). Scores
are the fraction of test windows whose best-scoring value per attribute group is the
shown clip's (first object's), as ``rtdecode ridge`` reports them.

Run: ``.venv/bin/python bench/attribute_readout.py [--data data/study] [--json]``
(about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import Ridge, RidgeCV

from rtdecode.config import load_config
from rtdecode.data import load_session
from rtdecode.ridge import build_windows, group_accuracy, select_voxels, targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/study"))
    ap.add_argument("--config", type=Path, default=Path("configs/study.toml"))
    ap.add_argument("--subject", default="sub-01")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = load_config(args.config)
    session = load_session(args.data, args.subject)
    voxels = select_voxels(session, cfg)
    alphas = np.asarray(cfg.ridge.alphas)
    rows: dict[str, dict] = {}

    def windows(c, noise_free=False):
        tr = build_windows(session, "train", c, voxels=voxels, noise_free=noise_free)
        te = build_windows(session, "test", c, voxels=voxels, noise_free=noise_free)
        return tr, te, targets(session, tr.clip_ids), targets(session, te.clip_ids)

    def add(name, model, te, yt, t0):
        acc = group_accuracy(model.predict(te.X), yt)
        alpha = np.atleast_1d(model.alpha_ if hasattr(model, "alpha_") else model.alpha)
        rows[name] = {"attributes": {k: round(v, 3) for k, v in acc.items()},
                      "alphas": sorted({float(a) for a in alpha}),
                      "seconds": round(time.perf_counter() - t0, 1)}
        if not args.json:
            print(f"{name:<34} " + " ".join(f"{k} {v:.3f}" for k, v in acc.items()),
                  flush=True)

    tr, te, y, yt = windows(cfg)
    for name, per in (("one alpha, RidgeCV (shipped)", False),
                      ("alpha per target, RidgeCV", True)):
        t0 = time.perf_counter()
        add(name, RidgeCV(alphas=alphas, alpha_per_target=per).fit(tr.X, y), te, yt, t0)
    for a in (3e3, 3e4, 1e5):
        t0 = time.perf_counter()
        add(f"alpha {a:g}", Ridge(alpha=a).fit(tr.X, y), te, yt, t0)
    for lag, width in ((1, 4), (2, 3)):
        c = dataclasses.replace(cfg, window=dataclasses.replace(
            cfg.window, lag_trs=lag, width_trs=width, reduce="concat"))
        t0 = time.perf_counter()
        wtr, wte, wy, wyt = windows(c)
        add(f"window {lag}/{width} concat, RidgeCV", RidgeCV(alphas=alphas).fit(wtr.X, wy), wte,
            wyt, t0)
    t0 = time.perf_counter()
    ntr, nte, ny, nyt = windows(cfg, noise_free=True)
    add("noise-free BOLD, RidgeCV", RidgeCV(alphas=alphas).fit(ntr.X, ny), nte, nyt, t0)
    if args.json:
        print(json.dumps({"subject": args.subject, "test_windows": int(len(te.X)),
                          "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
