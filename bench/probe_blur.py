"""How the attribute probes read blurred true frames: accuracy per attribute against the
Gaussian blur's sigma (pixels), for one or more probe folders, on the same test clips.

A probe that scores a renderer should not take soft edges for other shapes (a blur of 1 px
leaves every shape plain to the eye), and should fail once the shapes are gone (3 px and
more: a probe that still reads them there reads something the eye cannot).

    python bench/probe_blur.py --probe rtdecode/zoo/weights/probe --probe runs/zoo/probe \
        [--data data/study] [--clips 300] [--sigmas 0,0.5,1,1.5,2,3,4] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from rtdecode.render.fidelity import (
    ATTRIBUTES,
    accuracy_by_value,
    blur_frames,
    load_probe,
    probe_accuracy,
    probe_predictions,
)
from rtdecode.zoo.clip import load_stimuli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", type=Path, action="append", required=True,
                    help="A probe folder (repeat to compare several).")
    ap.add_argument("--data", type=Path, default=Path("data/study"))
    ap.add_argument("--clips", type=int, default=300, help="First N test clips.")
    ap.add_argument("--sigmas", default="0,0.5,1,1.5,2,3,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]
    frames, records = load_stimuli(args.data)
    test = [r for r in records if r["split"] == "test"][:args.clips]
    if not test:
        raise SystemExit(f"{args.data}: no test clips")
    clips = np.asarray(frames[[r["clip_id"] for r in test]])
    out: dict[str, dict[str, dict]] = {}
    for folder in args.probe:
        probe = load_probe(folder)
        rows = {}
        for sigma in sigmas:
            x = blur_frames(clips, sigma)
            preds = probe_predictions(probe, x)
            rows[str(sigma)] = {"probe": probe_accuracy(probe, x, test, preds),
                                "by_shape": accuracy_by_value(preds["shape"], test, "shape")}
        out[str(folder)] = rows
    if args.json:
        print(json.dumps({"clips": len(test), "probes": out}, indent=2))
        return
    print(f"{len(test)} true test clips, Gaussian blur of sigma pixels")
    for folder, rows in out.items():
        print(f"\n{folder}")
        print(f"{'sigma':>6}" + "".join(f"{a:>12}" for a in ATTRIBUTES)
              + "   shape per shape (single-object clips)")
        for sigma, r in rows.items():
            per = " ".join(f"{k} {v['accuracy']:.2f}" for k, v in r["by_shape"].items())
            print(f"{sigma:>6}" + "".join(f"{r['probe'][a]:12.2f}" for a in ATTRIBUTES)
                  + f"   {per}")


if __name__ == "__main__":
    main()
