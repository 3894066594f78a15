"""SAD's size presets on this CPU: parameter count, one forward+backward pass, and per-sample
decode latency (batch 1) at 0 and 4 Refineformer steps. Randomly initialised weights: latency
does not depend on training.

    python bench/sad_presets.py [--voxels 13447] [--threads 2] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rtdecode.models.sad import SAD, count_parameters, sad_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=13447)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"voxels {args.voxels}, torch threads {args.threads}")
    for name in ("toy", "paper"):
        model = SAD(sad_preset(name, {"s": args.voxels}))
        c = model.cfg
        x = torch.randn(2, args.voxels)
        y = torch.randn(2, len(c.levels), c.n_tokens, c.token_dim)
        t0 = time.perf_counter()
        loss = model.losses(x, "s", y)["loss"]
        loss.backward()
        train_s = time.perf_counter() - t0
        model.eval()
        row = [f"{name:6} params {count_parameters(model) / 1e6:8.2f} M",
               f"fwd+bwd (batch 2) {train_s:6.2f} s"]
        for steps in (0, 4):
            with torch.no_grad():
                model(x[:1], "s", steps=steps)  # warm-up
                ts = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    model(x[:1], "s", steps=steps)
                    ts.append((time.perf_counter() - t) * 1e3)
            row.append(f"steps {steps}: p50 {np.percentile(ts, 50):7.1f} ms")
        print("  ".join(row))


if __name__ == "__main__":
    main()
