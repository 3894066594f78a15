"""CPU time per TR of each daemon stage, one stage at a time (robust to a loaded machine).

The wall-clock figures of ``rtdecode bench latency`` swing with the load of a shared 2-core
machine; CPU time does not (much). This script runs the daemon's own stage loops one after
the other on the main thread — ingest (ZeroMQ receive, wire decode and validation, journal),
decode (checks, preprocessing, windowing, the toy ridge decode and caption lookup, headers)
and publish (JSON encoding and validation, XPUB send, LSL caption marker, journal) — over
volumes a sender thread queued beforehand, and prints the CPU microseconds per TR of each
(``time.thread_time``), with the model compute (ridge decode + caption lookup) shown apart.
Thread hand-offs are not in it: ``rtdecode bench latency`` measures the threaded whole.

    python bench/daemon_cpu.py [--voxels 15000] [--trs 600] [--no-journal] [--no-lsl]
                               [--profile STAGE]

``--profile ingest|decode|publish`` prints that stage's cProfile table (top functions by own
time). For counts that a busy machine does not disturb, run it under valgrind's callgrind
with ``--stop-after send|ingest|decode|publish`` at two TR counts: the difference in
instructions between the two, per extra TR, is each stage's cost (fix ``PYTHONHASHSEED``, and
use ``--no-lsl``, whose discovery threads vary run to run).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from rtdecode.bench import toy_model
from rtdecode.config import Config
from rtdecode.daemon import Daemon
from rtdecode.journal import Journal
from rtdecode.messages import Volume
from rtdecode.transport.zmq import ZmqPublisher, ZmqSubscriber, ZmqVolumeSink, ZmqVolumeSource


class _TimedEngine:
    """Wraps the toy engine and bank to add up the model compute (CPU s) apart."""

    def __init__(self, model):
        self.model, self.cpu = model, 0.0
        engine, bank = model.engine, model.bank
        decode, nearest = engine.decode, bank.nearest

        def timed_decode(x):
            t = time.thread_time()
            try:
                return decode(x)
            finally:
                self.cpu += time.thread_time() - t

        def timed_nearest(p, k=1):
            t = time.thread_time()
            try:
                return nearest(p, k)
            finally:
                self.cpu += time.thread_time() - t

        engine.decode, bank.nearest = timed_decode, timed_nearest


def run(n_voxels: int, n_trs: int, journal: bool, lsl: bool, profile: str | None,
        stop_after: str = "publish") -> dict:
    big = n_trs * 8 + 64  # queues never drop: every stage sees every item
    cfg = Config()
    cfg = dataclasses.replace(cfg, stream=dataclasses.replace(
        cfg.stream, ingest_queue=big, publish_queue=big, on_full="block"))
    model = toy_model(n_voxels, 2.0)
    timed = _TimedEngine(model)
    source = ZmqVolumeSource("tcp://127.0.0.1:*", recv_timeout_s=5.0, rcvhwm=n_trs + 10)
    pub = ZmqPublisher("tcp://127.0.0.1:*", sndhwm=big)
    sub = ZmqSubscriber(pub.endpoint, topics=("caption", "semantics"), rcvhwm=big)
    if not pub.wait_for_subscribers(2, 10.0):
        raise RuntimeError("subscriber did not connect")
    outlet = None
    if lsl:
        from rtdecode.transport.lsl import LslCaptionOutlet

        outlet = LslCaptionOutlet(f"rtdecode-cpu-{time.monotonic_ns()}")
    tmp = tempfile.TemporaryDirectory()
    jr = Journal(Path(tmp.name) / "j.jsonl") if journal else None
    daemon = Daemon(cfg, model, source, pub, journal=jr, caption_outlet=outlet,
                    session="bench")
    data = np.random.default_rng(1).normal(0, 1, (32, n_voxels)).astype(np.float32) + 1000

    def send():
        sink = ZmqVolumeSink(source.endpoint, session="bench", sndhwm=n_trs + 10)
        for k in range(n_trs):
            sink.send(Volume(k, k * 2.0, data[k % len(data)], session="bench"))
        sink.close()

    sender = threading.Thread(target=send)
    sender.start()
    sender.join()
    time.sleep(0.5)  # everything is in the receiver's queue before we time it
    out = {}
    prof = cProfile.Profile() if profile else None
    stages = [("ingest", daemon._ingest), ("decode", daemon._decode_loop),
              ("publish", daemon._publish_loop)]
    names = [name for name, _ in stages]
    stages = stages[:names.index(stop_after) + 1] if stop_after in names else []
    for name, fn in stages:
        t = time.thread_time()
        model_before = timed.cpu
        if prof is not None and profile == name:
            prof.enable()
        fn()
        if prof is not None and profile == name:
            prof.disable()
        out[name] = (time.thread_time() - t) / n_trs * 1e6
        if name == "decode":
            out["model"] = (timed.cpu - model_before) / n_trs * 1e6
    if len(stages) == 3:
        counters = daemon.status()["counters"]
        if counters["decoded"] != n_trs or counters["outputs_dropped"]:
            raise RuntimeError(f"not every TR went through: {counters}")
        out["decode_runtime"] = out["decode"] - out["model"]
        out["runtime_total"] = out["ingest"] + out["decode_runtime"] + out["publish"]
    if jr is not None:
        jr.close()
    sub.close()
    pub.close()
    source.close()
    tmp.cleanup()
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=15_000)
    ap.add_argument("--trs", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-journal", action="store_true")
    ap.add_argument("--no-lsl", action="store_true")
    ap.add_argument("--profile", choices=("ingest", "decode", "publish"))
    ap.add_argument("--stop-after", choices=("send", "ingest", "decode", "publish"),
                    default="publish", help="run the stages up to this one (for differential "
                    "instruction counts under valgrind --tool=callgrind)")
    args = ap.parse_args()
    rows = [run(args.voxels, args.trs, not args.no_journal, not args.no_lsl, args.profile,
                args.stop_after) for _ in range(args.repeats)]
    if not rows[0]:
        return
    print(f"CPU us per TR, {args.voxels} voxels, {args.trs} TRs, journal "
          f"{'off' if args.no_journal else 'on'}, LSL captions {'off' if args.no_lsl else 'on'}"
          f" (min of {args.repeats}):")
    for key in rows[0]:
        print(f"  {key:15s} {min(r[key] for r in rows):8.1f}")


if __name__ == "__main__":
    main()
