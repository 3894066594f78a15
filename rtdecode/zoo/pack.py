"""Packing trained checkpoints into the shipped toy zoo: float16 weights, configs and loss
curves; optimizer states are left behind.

A zoo folder holds ``clip/``, ``vae/`` and any of ``sad/``, ``mlp/``, ``noise_free/``,
``mad/`` (SAD/MAD checkpoint folders, see :mod:`rtdecode.models.train`), the renderer's
``unet/``, ``motion/`` and the guidance-distilled ``unet_guided/`` (:mod:`rtdecode.zoo.unet`),
the fidelity ``probe/``, the fusion threshold ``fusion.json`` and the attribute captioner's
decoder ``attributes/`` (a ridge model folder, copied as it is: float32, 3 MB).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

DECODERS = ("sad", "mlp", "noise_free", "mad")
#: Small side files copied beside the weights.
SIDE_FILES = ("loss.csv", "loss.png", "metrics.json", "curve.csv", "curve.png")
#: the renderer's folders and the kind of model each holds
RENDER = {"unet": "unet", "unet_guided": "unet", "motion": "motion"}


def pack_zoo(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Write float16 copies of ``src``'s checkpoints into ``dst``; returns bytes per model."""
    from ..models.train import load_checkpoint, save_checkpoint
    from .clip import load_toy_clip, save_toy_clip
    from .vae import export_fp16

    src, dst = Path(src), Path(dst)
    sizes: dict[str, int] = {}
    if not (src / "clip").is_dir():
        raise FileNotFoundError(f"{src}: no clip/ checkpoint (train one with "
                                "`rtdecode train clip`)")
    clip = load_toy_clip(src / "clip")
    save_toy_clip(clip.model, clip.cfg, dst / "clip", fp16=True)
    if (src / "vae").is_dir():
        export_fp16(src / "vae", dst / "vae")
    for name in DECODERS:
        if (src / name).is_dir():
            model, meta = load_checkpoint(src / name)
            save_checkpoint(model, dst / name, meta, fp16=True)
    from .unet import export_fp16 as render_fp16

    for name, kind in RENDER.items():
        if (src / name).is_dir():
            render_fp16(src / name, dst / name, kind)
    if (src / "probe").is_dir():  # already float16
        (dst / "probe").mkdir(parents=True, exist_ok=True)
        for f in ("probe.safetensors", "config.json"):
            shutil.copy2(src / "probe" / f, dst / "probe" / f)
    if (src / "fusion.json").is_file():
        shutil.copy2(src / "fusion.json", dst / "fusion.json")
    if (src / "attributes").is_dir():
        from ..engine import DecoderModel

        DecoderModel.load(src / "attributes").save(dst / "attributes")
    for name in ("clip", "vae", *DECODERS, *RENDER, "probe", "attributes"):
        if not (dst / name).is_dir():
            continue
        for side in SIDE_FILES:
            if (src / name / side).is_file():
                shutil.copy2(src / name / side, dst / name / side)
        sizes[name] = sum(p.stat().st_size for p in (dst / name).iterdir())
    (dst / "sizes.json").write_text(json.dumps(sizes, indent=2) + "\n")
    return sizes
