"""How much of what the single-trial BOLD carries reaches the rendered video?

Prototype measurement (not part of the package): fits the ridge attribute decoder on the
study session's training runs, retrieves for each of the first N single-trial test windows
the training caption whose attribute vector correlates best with the decoded one (the
ridge engine's caption bank), and renders it with the shipped zoo in several ways, scoring
each with the fidelity probe beside the shipped ``decoded`` path:

- ``ridge_attributes``: the ridge's argmax per attribute (no rendering: what the BOLD gives
  a linear readout);
- ``retrieved_text``: the retrieved caption's token states alone;
- ``retrieved_mad``: the retrieved caption with MAD's decoded latents;
- ``retrieved_latents``: the retrieved caption with the retrieved training clip's own VAE
  latents (a retrieval prior: the training clip whose attributes best match);
- ``sad_text``: SAD's decoded semantics alone.

Run: ``.venv/bin/python bench/retrieval_render.py --clips 120``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from rtdecode.config import load_config
from rtdecode.data import load_session
from rtdecode.engine import CaptionBank
from rtdecode.preprocess import select_voxels
from rtdecode.render.bench import load_inputs
from rtdecode.render.cvr import CVR, CVRSettings
from rtdecode.render.evaluate import RenderInputs, fidelity, render_clips, truth_inputs
from rtdecode.render.fidelity import load_probe
from rtdecode.ridge import build_windows, fit, targets
from rtdecode.simulator.stimuli import (
    ATTRIBUTE_GROUPS,
    POSITIONS,
    ClipSpec,
    ObjectState,
    attribute_slices,
    describe,
)
from rtdecode.zoo.clip import load_stimuli, load_toy_clip


def compose(pred: np.ndarray, seed: int) -> dict:
    """A caption record (anchor / motion / holistic) from per-attribute argmax scores."""
    a = {name: ATTRIBUTE_GROUPS[name][int(pred[sl].argmax())]
         for name, sl in attribute_slices().items()}
    k = POSITIONS.index(a["position"])
    r = 12.0 if a["size"] == "large" else 8.0
    obj = ObjectState(a["shape"], a["colour"], (k % 3 + 0.5) * 64 / 3, (k // 3 + 0.5) * 64 / 3,
                      r, 0.0, a["size"])
    spec = ClipSpec(0, 0, False, a["background"], a["texture"], [obj], [a["motion"]])
    return {**describe(spec, np.random.default_rng(seed)), "attributes": a}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", type=Path, default=Path("rtdecode/zoo/weights"))
    ap.add_argument("--data", type=Path, default=Path("data/study"))
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--conditions", default="ridge_attributes,retrieved_text,retrieved_mad,"
                                             "retrieved_latents,sad_text,decoded")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(Path("configs/study.toml"))
    cvr = CVR.from_zoo(args.zoo, settings=CVRSettings())
    clip_model = load_toy_clip(args.zoo / "clip")
    probe = load_probe(args.zoo / "probe")
    truth, _, records = load_inputs("truth", args.data, cfg, args.zoo, cvr, clip_model,
                                    args.clips)
    decoded, _, _ = load_inputs("decoded", args.data, cfg, args.zoo, cvr, clip_model,
                                args.clips)
    session = load_session(args.data, "sub-01")
    voxels = select_voxels(session, cfg)
    train = build_windows(session, "train", cfg, voxels=voxels)
    test = build_windows(session, "test", cfg, voxels=voxels)
    dec = fit(train, targets(session, train.clip_ids), cfg, voxels)
    # the same windows as load_inputs: the first test windows in order
    assert np.array_equal(test.clip_ids[: args.clips], truth.clip_ids)
    pred = dec.predict(test.X[: args.clips])
    ids = np.unique(train.clip_ids)
    bank = CaptionBank(targets(session, ids), [{"clip_id": int(c)} for c in ids])
    got = np.array([row[0][0]["clip_id"] for row in bank.nearest(pred)])
    true_t = targets(session, truth.clip_ids)
    out: dict = {"clips": len(records)}
    for name, sl in attribute_slices().items():
        out.setdefault("ridge_attributes", {})[name] = float(
            np.mean(pred[:, sl].argmax(1) == true_t[:, sl].argmax(1)))
        out.setdefault("retrieved_caption_attributes", {})[name] = float(
            np.mean(targets(session, got)[:, sl].argmax(1) == true_t[:, sl].argmax(1)))
    print(json.dumps({k: out[k] for k in ("ridge_attributes", "retrieved_caption_attributes")},
                     indent=1), flush=True)
    frames, _ = load_stimuli(args.data)
    ret = truth_inputs(got, session.clips, frames, clip_model, cvr.vae, cvr)
    comp = [compose(p, i) for i, p in enumerate(pred)]
    from rtdecode.zoo.unet import encode_conditions
    csem = encode_conditions(clip_model, comp, cvr.n_tokens, cvr.levels).reshape(
        len(comp), len(cvr.levels), cvr.n_tokens, -1)
    conds = {
        "composed_text": RenderInputs(truth.clip_ids, csem, None, "c text"),
        "composed_mad": RenderInputs(truth.clip_ids, csem, decoded.latents, "c mad"),
        "retrieved_text": RenderInputs(truth.clip_ids, ret.semantics, None, "r text"),
        "retrieved_mad": RenderInputs(truth.clip_ids, ret.semantics, decoded.latents, "r mad"),
        "retrieved_latents": RenderInputs(truth.clip_ids, ret.semantics, ret.latents, "r lat"),
        "sad_text": RenderInputs(truth.clip_ids, decoded.semantics, None, "sad text"),
        "decoded": decoded,
    }
    settings = {"composed_mad_a1": CVRSettings(anchor_strength=1.0),
                "composed_mad_a1v8": CVRSettings(anchor_strength=1.0, video_strength=0.8),
                "composed_mad_a75v75": CVRSettings(anchor_strength=0.75, video_strength=0.75),
                "composed_mad_a1v8g3": CVRSettings(anchor_strength=1.0, video_strength=0.8,
                                                   anchor_guidance=3.0),
                "composed_mad_a1v8g2": CVRSettings(anchor_strength=1.0, video_strength=0.8,
                                                   guidance=2.0)}
    for k in settings:
        conds[k] = conds["composed_mad"]
    for name in args.conditions.split(","):
        if name not in conds:
            continue
        clips = render_clips(cvr, conds[name], settings.get(name), progress=True,
                             desc=name).clips
        out[name] = fidelity(clips, records, probe)["probe"]
        print(name, {k: round(v, 3) for k, v in out[name].items()}, flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
