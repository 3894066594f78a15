"""Start-up time and memory of `rtdecode serve`'s decoder: onnxruntime (lean) vs torch.

Each run is a fresh interpreter that does what `rtdecode serve --model CKPT` does before the
first volume arrives — import the CLI, load the config, load the decoder through the chosen
backend (the engine and caption bank from the store) — then decodes one TR's batch. It
reports the seconds to import, to load, to the first decode, the total wall time of the
process start to ready, peak and current RSS, and whether torch was imported.

    python bench/serve_startup.py --model runs/zoo/sad --store engines [--repeats 3]

The engine must exist: `rtdecode export --model runs/zoo/sad --data DATA --clip CLIP`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CHILD = """
import time, json, sys
t0 = time.perf_counter()
from pathlib import Path
import numpy as np
from rtdecode import cli
from rtdecode.config import Config, EngineConfig
t1 = time.perf_counter()
cfg = Config(engine=EngineConfig(backend={backend!r}, store={store!r}, threads=1))
dec = cli._load_decoder(cfg, Path({model!r}), {subject!r})
t2 = time.perf_counter()
x = np.zeros((2, dec.engine.n_inputs), np.float32)
dec.bank.nearest(dec.engine.decode(x))
t3 = time.perf_counter()
status = {{}}
for line in open("/proc/self/status"):
    k, _, v = line.partition(":")
    if k in ("VmRSS", "VmHWM"):
        status[k] = int(v.split()[0]) / 1024
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "first_decode_s": t3 - t2,
                  "rss_mb": status["VmRSS"], "peak_rss_mb": status["VmHWM"],
                  "torch_imported": "torch" in sys.modules}}))
"""


def run_once(backend: str, model: str, store: str, subject: str) -> dict:
    code = CHILD.format(backend=backend, model=model, store=store, subject=subject)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{backend}: the child failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = wall
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/zoo/sad", help="SAD checkpoint directory")
    ap.add_argument("--store", default="engines", help="engine store")
    ap.add_argument("--subject", default="sub-01")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()
    result = {}
    for backend in ("onnxruntime", "torch"):
        runs = [run_once(backend, args.model, args.store, args.subject)
                for _ in range(args.repeats)]
        result[backend] = {k: round(statistics.median(r[k] for r in runs), 3)
                           for k in runs[0] if k != "torch_imported"}
        result[backend]["torch_imported"] = any(r["torch_imported"] for r in runs)
    ort, tch = result["onnxruntime"], result["torch"]
    result["ratio_onnxruntime_vs_torch"] = {
        k: round(ort[k] / tch[k], 3) for k in ("process_s", "peak_rss_mb", "rss_mb")}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'backend':12} {'import s':>9} {'load s':>7} {'1st decode s':>12} "
          f"{'process s':>9} {'RSS MB':>7} {'peak RSS MB':>11} torch imported")
    for b, r in (("onnxruntime", ort), ("torch", tch)):
        print(f"{b:12} {r['import_s']:9.2f} {r['load_s']:7.2f} {r['first_decode_s']:12.3f} "
              f"{r['process_s']:9.2f} {r['rss_mb']:7.0f} {r['peak_rss_mb']:11.0f} "
              f"{r['torch_imported']}")
    ratio = result["ratio_onnxruntime_vs_torch"]
    print(f"onnxruntime / torch: start-up {ratio['process_s']:.2f}x, peak RSS "
          f"{ratio['peak_rss_mb']:.2f}x (median of {args.repeats} fresh processes each)")


if __name__ == "__main__":
    main()
