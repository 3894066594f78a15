"""Layout-sketch variants against MAD's latents, at several strengths (README, "The layout
sketch").

For the first N single-trial test windows, the attribute captioner's captions condition
every run; the motion latents are MAD's (``mad``) or a sketch of the captioner's decoded
attributes: ``disk`` (a disk for every shape, plain background), ``glyph`` (the decoded
shape, plain background) or ``full`` (the decoded shape and background texture: what
:class:`rtdecode.render.layout.LayoutSketch` draws). ``NAME_vae`` scores a sketch through
the VAE alone (no UNet). Strengths are ``anchor/video[/steps]``. Prints the probe's five
attributes and, with ``--quality``, SSIM / CLIP-PCC / VIFI against the true clips.

Run: ``.venv/bin/python bench/layout_variants.py --clips 120 --quality``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from rtdecode.config import load_config
from rtdecode.render.bench import load_inputs, quality
from rtdecode.render.cvr import CVR, CVRSettings
from rtdecode.render.evaluate import RenderInputs, fidelity, render_clips
from rtdecode.render.fidelity import load_probe
from rtdecode.render.layout import sketch_clip
from rtdecode.zoo.clip import load_toy_clip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", type=Path, default=Path("rtdecode/zoo/weights"))
    ap.add_argument("--data", type=Path, default=Path("data/study"))
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--runs", default="mad,disk,glyph,full,full_vae")
    ap.add_argument("--strengths", default="0.8/0.8,0.3/0.3")
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(Path("configs/study.toml"))
    cvr = CVR.from_zoo(args.zoo, settings=CVRSettings())
    clip_model = load_toy_clip(args.zoo / "clip")
    probe = load_probe(args.zoo / "probe")
    _, truth_clips, records = load_inputs("truth", args.data, cfg, args.zoo, cvr, clip_model,
                                          args.clips)
    decoded, _, _ = load_inputs("decoded", args.data, cfg, args.zoo, cvr, clip_model,
                                args.clips, semantics="attributes", latents="mad")
    attrs = [c["attributes"] for c in decoded.captions]
    lat = {}
    for name, glyph, tex in (("disk", False, False), ("glyph", True, False),
                             ("full", True, True)):
        frames = np.stack([sketch_clip(a if glyph else {**a, "shape": "circle"}, texture=tex)
                           for a in attrs])
        lat[name] = cvr.vae.encode(frames)
    out = {}
    for st in args.strengths.split(","):
        a_s, v_s, *n = (float(v) for v in st.split("/"))
        s = CVRSettings(anchor_strength=a_s, video_strength=v_s, steps=int(n[0]) if n else 4)
        for run in args.runs.split(","):
            if run.endswith("_vae"):  # the sketch through the VAE alone, no UNet
                z = lat[run[:-4]]
                clips = cvr.vae.decode(z.reshape(-1, *z.shape[2:])).reshape(
                    *z.shape[:2], 64, 64, 3)
            else:
                inp = decoded if run == "mad" else RenderInputs(
                    decoded.clip_ids, decoded.semantics, lat[run], run, decoded.captions)
                clips = render_clips(cvr, inp, s, progress=False).clips
            f = fidelity(clips, records, probe)["probe"]
            if args.quality:
                f.update(quality(clips, truth_clips, clip_model))
            key = f"{run}@{st}"
            out[key] = f
            print(key, " ".join(f"{k} {v:.2f}" for k, v in f.items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
