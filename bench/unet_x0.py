"""Where a renderer loses shapes: the UNet's one-step prediction of the clean latent (x0) from
the true first-frame latents noised to timestep t, decoded by the VAE and read by the
attribute probe's single-frame head — against the VAE alone, the noisy latent decoded without
denoising, and random perturbations of the latents of a similar size.

    python bench/unet_x0.py [--zoo rtdecode/zoo/weights] [--unet DIR] [--data data/study]
        [--clips 120] [--timesteps 30,62,124,249,499]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from rtdecode.config import load_config
from rtdecode.render.bench import load_inputs
from rtdecode.render.cvr import CVR
from rtdecode.render.fidelity import accuracy_by_value, label_sets, load_probe
from rtdecode.zoo.clip import load_toy_clip
from rtdecode.zoo.unet import load_unet, noise_scheduler, render_meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=Path("rtdecode/zoo/weights"))
    ap.add_argument("--unet", type=Path, default=None, help="UNet folder (default: ZOO/unet)")
    ap.add_argument("--data", type=Path, default=Path("data/study"))
    ap.add_argument("--config", type=Path, default=Path("configs/study.toml"))
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--timesteps", default="30,62,124,249,499")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unet_dir = args.unet or args.zoo / "unet"
    cvr = CVR.from_zoo(args.zoo, motion=False)
    truth, _, records = load_inputs("truth", args.data, load_config(args.config), args.zoo, cvr,
                                    load_toy_clip(args.zoo / "clip"), args.clips)
    unet = load_unet(unet_dir).eval()
    probe = load_probe(args.zoo / "probe")
    sched = noise_scheduler("zero_snr" if render_meta(unet_dir, "unet")["scheduler"].get(
        "rescale_betas_zero_snr") else "sd15")
    z0 = torch.from_numpy(truth.latents[:, 0])
    cond = torch.from_numpy(truth.semantics.reshape(len(z0), -1, truth.semantics.shape[-1]))
    labels = label_sets(records)["shape"]

    def shape(latents: torch.Tensor) -> str:
        x = torch.from_numpy(cvr.vae.decode(latents.numpy())).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            pred = probe.what(x / 127.5 - 1)["shape"].argmax(1).numpy()
        acc = float(np.mean(labels[np.arange(len(pred)), pred] > 0))
        per = accuracy_by_value(pred, records, "shape")
        return f"shape {acc:.3f}  " + " ".join(f"{k} {v['accuracy']:.2f}"
                                               for k, v in per.items())

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(z0.shape, generator=gen)
    print(f"{len(z0)} test clips, frame 0; UNet {unet_dir}")
    print(f"{'through the VAE':34} {shape(z0)}")
    for t in (int(v) for v in args.timesteps.split(",")):
        tt = torch.full((len(z0),), t)
        zt = sched.add_noise(z0, noise, tt)
        with torch.no_grad():
            out = torch.cat([unet(zt[i:i + 40], tt[i:i + 40],
                                  encoder_hidden_states=cond[i:i + 40]).sample
                             for i in range(0, len(zt), 40)])
        a = sched.alphas_cumprod[t]
        if sched.config.prediction_type == "v_prediction":
            x0 = a.sqrt() * zt - (1 - a).sqrt() * out
        else:
            x0 = (zt - (1 - a).sqrt() * out) / a.sqrt()
        mse = float(((x0 - z0) ** 2).mean())
        print(f"t {t:4d} x0 (mse {mse:.4f})".ljust(34), shape(x0))
        print(f"t {t:4d} noisy latent, not denoised".ljust(34), shape(zt / a.sqrt()))
    for std in (0.03, 0.06, 0.1):
        print(f"random perturbation (mse {std * std:.4f})".ljust(34),
              shape(z0 + std * torch.randn(z0.shape, generator=gen)))


if __name__ == "__main__":
    main()
