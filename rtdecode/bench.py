"""``rtdecode bench latency``: will this machine keep up with my TR?

For each transport (ZeroMQ, LSL) and voxel count (15k, 100k) it runs the real pipeline on
loopback — the daemon's threads in this process, the scanner (sender) and a subscriber in a
child process, as at a real scanner — with a toy decoder (random ridge weights, 46 targets,
a 512-entry caption bank) and measures

- **latency**: volume sent → first caption it triggers received by the subscriber, p50/p99,
  paced at 1x (the real TR) and at maximum speed;
- **floor**: the same sockets without the daemon — each received volume immediately answered
  by a caption-sized message — the transport's own cost, measured in the same run;
- **overhead**: per TR, latency − floor p50 − the decode time the daemon reports (model
  compute), p99: what the runtime itself adds;
- **throughput** (TR/s, ZeroMQ, 15k voxels, max speed, lossless back-pressure) and **RSS
  growth** over 3600 TRs (after a 200-TR warm-up).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import numpy as np

from .config import Config
from .daemon import Daemon
from .engine import CaptionBank, DecoderModel, RidgeEngine
from .messages import Volume

N_TARGETS = 46


def toy_model(n_voxels: int, tr: float, seed: int = 0) -> DecoderModel:
    rng = np.random.default_rng(seed)
    coef = (rng.standard_normal((N_TARGETS, n_voxels)) / np.sqrt(n_voxels)).astype(np.float32)
    bank = CaptionBank(rng.standard_normal((512, N_TARGETS)).astype(np.float32),
                       [{"anchor": f"a{i}", "motion": f"m{i}", "holistic": f"h{i}",
                         "basic": f"b{i}"} for i in range(512)])
    meta = {"kind": "ridge", "trained_on": {"n_voxels": n_voxels, "tr": tr}}
    return DecoderModel(RidgeEngine(coef, np.zeros(N_TARGETS, np.float32)), bank, None, meta)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


def _pct(a, q) -> float:
    return round(float(np.percentile(np.asarray(a), q)), 3) if len(a) else float("nan")


def _scanner_and_subscriber(conn, kind: str, address: str, pub_endpoint: str, n_voxels: int,
                            n_trs: int, tr: float, speed: float | None, expected: int) -> None:
    """Child process: a scanner sending volumes and a subscriber timing the captions.

    Both stamp ``time.perf_counter()`` (CLOCK_MONOTONIC: comparable across processes).
    """
    from .transport.zmq import ZmqSubscriber, ZmqVolumeSink

    sub = ZmqSubscriber(pub_endpoint, topics=("caption",), recv_timeout_s=10.0)
    if kind == "zmq":
        sink = ZmqVolumeSink(address, session="bench")
    else:
        from .transport.lsl import LslVolumeSink

        sink = LslVolumeSink(address, n_voxels, tr=tr, session="bench", clock="send")
    conn.send("ready")
    if conn.recv() != "go":
        return
    if kind == "lsl":
        sink.wait_for_consumers(10.0)
    received: dict[int, tuple[float, float]] = {}

    def collect():
        for _, header, _ in sub:
            trig = header.get("trigger_tr", header["tr_index"])
            received.setdefault(trig, (time.perf_counter(), header.get("decode_ms", 0.0)))
            if len(received) >= expected:
                return

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    data = np.random.default_rng(1).normal(0, 1, (32, n_voxels)).astype(np.float32) + 1000
    sent: dict[int, float] = {}
    t0 = time.perf_counter()
    for k in range(n_trs):
        if speed is not None:
            delay = t0 + k * tr / speed - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sent[k] = time.perf_counter()
        sink.send(Volume(k, k * tr, data[k % len(data)], session="bench"))
    collector.join(60)
    elapsed = time.perf_counter() - t0
    sink.close()
    sub.close()
    conn.send({"sent": sent, "received": received, "elapsed_s": elapsed})


def measure(kind: str, n_voxels: int, n_trs: int, tr: float, speed: float | None,
            floor: bool, cfg: Config | None = None, rss_at: int | None = None) -> dict:
    """One pipeline run; the scanner and the subscriber live in a child process."""
    import multiprocessing as mp

    from .transport.zmq import ZmqPublisher, ZmqVolumeSource

    cfg = cfg or Config()
    pub = ZmqPublisher("tcp://127.0.0.1:*")
    if kind == "zmq":
        source = ZmqVolumeSource("tcp://127.0.0.1:*", recv_timeout_s=10.0)
        address = source.endpoint
    else:
        address = f"rtdecode-bench-{uuid.uuid4().hex[:8]}"
    expected = n_trs if floor else n_trs - cfg.window.lag_trs
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_scanner_and_subscriber,
                       args=(child, kind, address, pub.endpoint, n_voxels, n_trs, tr, speed,
                             expected), daemon=True)
    proc.start()
    if not parent.poll(60) or parent.recv() != "ready":
        raise RuntimeError("benchmark child did not start")
    if kind == "lsl":
        from .transport.lsl import LslVolumeSource

        source = LslVolumeSource(address, resolve_timeout_s=10.0, recv_timeout_s=10.0,
                                 poll_s=0.005)
    if not pub.wait_for_subscribers(1, 10.0):
        raise RuntimeError("benchmark subscriber did not connect")
    rss: dict[str, float] = {}
    stages: dict = {}
    done = threading.Event()
    if floor:
        def work():
            for vol in source:
                pub.publish("caption", {"session": "bench", "tr_index": vol.tr_index,
                                        "t_emit": time.time(), "final": False,
                                        "text": {"anchor": "", "motion": "", "holistic": ""},
                                        "score": 0.0, "latency_ms": 0.0})
                if vol.tr_index >= n_trs - 1 or done.is_set():
                    return
    else:
        daemon = Daemon(cfg, toy_model(n_voxels, tr), source, pub, session="bench")

        def work():
            daemon.start()
            while daemon.counters["decoded"] < n_trs and not done.is_set():
                if rss_at is not None and not rss and daemon.counters["decoded"] >= rss_at:
                    rss["start"] = rss_mb()
                time.sleep(0.005)
            rss["end"] = rss_mb()
            time.sleep(0.2)  # let the last captions go out
            stages.update(daemon.shutdown()["latency"])
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    parent.send("go")
    result = parent.recv() if parent.poll(300) else {"sent": {}, "received": {},
                                                     "elapsed_s": float("nan")}
    done.set()
    worker.join(30)
    proc.join(10)
    source.close()
    pub.close()
    lat, dec = [], []
    for k, (t_rx, d_ms) in result["received"].items():
        if k in result["sent"]:
            lat.append((t_rx - result["sent"][k]) * 1e3)
            dec.append(d_ms)
    return {"latency_ms": lat, "decode_ms": dec, "elapsed_s": result["elapsed_s"],
            "n": len(lat), "rss": rss, "stages": stages}


def bench_latency(voxels=(15_000, 100_000), transports=("zmq", "lsl"), trs_1x: int = 10,
                  tr: float = 2.0, trs_max: int = 600, trs_soak: int = 3600,
                  progress=print) -> dict:
    out: dict = {}
    for kind in transports:
        out[kind] = {}
        for v in voxels:
            key = f"{v // 1000}k"
            progress(f"{kind} {key}: floor and pipeline at 1x ({trs_1x} TRs of {tr:g} s) ...")
            floor = measure(kind, v, trs_1x, tr, 1.0, floor=True)
            full = measure(kind, v, trs_1x, tr, 1.0, floor=False)
            progress(f"{kind} {key}: pipeline at max speed ({trs_max} TRs) ...")
            fast = measure(kind, v, trs_max, tr, None, floor=False,
                           cfg=_blocking(Config()))
            floor_p50 = float(np.median(floor["latency_ms"]))
            overhead = np.asarray(full["latency_ms"]) - floor_p50 - np.asarray(full["decode_ms"])
            out[kind][key] = {
                "p50_ms": _pct(full["latency_ms"], 50), "p99_ms": _pct(full["latency_ms"], 99),
                "floor_p50_ms": round(floor_p50, 3), "floor_p99_ms": _pct(floor["latency_ms"], 99),
                "decode_p99_ms": _pct(full["decode_ms"], 99),
                "overhead_p99_ms": _pct(overhead, 99),
                "ratio_p99_to_floor": round(_pct(full["latency_ms"], 99)
                                            / max(_pct(floor["latency_ms"], 99), 1e-9), 2),
                "max_speed_p50_ms": _pct(fast["latency_ms"], 50),
                "max_speed_p99_ms": _pct(fast["latency_ms"], 99),
                "max_speed_tr_per_s": round(fast["n"] / fast["elapsed_s"], 1),
                "n_trs_1x": full["n"],
            }
    progress(f"soak: zmq 15k, {trs_soak} TRs at max speed ...")
    soak = measure("zmq", 15_000, trs_soak, tr, None, floor=False, cfg=_blocking(Config()),
                   rss_at=200)
    out["throughput_tr_per_s"] = round(soak["n"] / soak["elapsed_s"], 1)
    out["rss_growth_mb"] = round(soak["rss"].get("end", float("nan"))
                                 - soak["rss"].get("start", float("nan")), 1)
    out["soak_trs"] = soak["n"]
    out["config"] = {"tr_s": tr, "trs_1x": trs_1x, "trs_max": trs_max, "lag_trs":
                     Config().window.lag_trs, "decoder": f"toy ridge, {N_TARGETS} targets"}
    return out


def _blocking(cfg: Config) -> Config:
    return dataclasses.replace(cfg, stream=dataclasses.replace(cfg.stream, on_full="block"))
