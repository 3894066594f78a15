"""Benchmark: simulate the `study` preset for one subject; report wall time and peak memory.

Run with `make bench-simulate` or `python bench/simulate_study.py [--subjects N] [--keep DIR]`.
Target (issue #2): <= 2 min per subject on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from rtdecode.simulator import preset, simulate


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subjects", type=int, default=1)
    ap.add_argument("--tr", type=float, default=2.0)
    ap.add_argument("--keep", type=Path, default=None, help="write here and keep the output")
    args = ap.parse_args()
    out = args.keep or Path(tempfile.mkdtemp(prefix="rtdecode-bench-"))
    cfg = preset("study", n_subjects=args.subjects, tr=args.tr)
    t0 = time.perf_counter()
    summary = simulate(out, cfg, progress=False)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "preset": "study", "subjects": args.subjects, "tr": args.tr,
        "voxels": summary.subjects, "trs_per_subject": summary.trs_per_subject,
        "clips": summary.n_clips, "wall_s": round(wall, 1),
        "wall_s_per_subject": round(wall / args.subjects, 1),
        "peak_rss_mb": round(peak_mb), "disk_mb": round(dir_size(out) / 2**20),
    }
    print(json.dumps(result, indent=2))
    if args.keep is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
