"""The live part of ``rtdecode demo``: replay → serve → subscribe over real ZeroMQ sockets.

A test run is replayed TR by TR (paced, or as fast as possible) into the daemon, which decodes
it with a trained model and publishes captions; a subscriber collects the final captions and
they are printed beside the ground truth of the clip shown at that TR.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .config import Config
from .daemon import Daemon
from .data import Run, Session
from .engine import DecoderModel
from .sources import RunSource
from .transport.zmq import ZmqPublisher, ZmqSubscriber, ZmqVolumeSink, ZmqVolumeSource


@dataclass
class LiveResult:
    finals: dict[int, dict]      # tr_index -> final caption header
    status: dict                 # the daemon's final status
    truth: dict[int, dict]       # tr_index -> captions.jsonl record of the clip shown
    wall_s: float
    latency_samples: dict[str, list[float]] = field(default_factory=dict)  # stage -> ms

    def attribute_accuracy(self, session: Session) -> float | None:
        """How often the retrieved caption's clip has the shown clip's attributes (mean over
        attribute groups), over clips with ground truth."""
        hits = []
        for k, h in self.finals.items():
            if k not in self.truth or h.get("match_clip_id") is None:
                continue
            got = session.clips.get(int(h["match_clip_id"]), {}).get("attributes")
            want = self.truth[k].get("attributes")
            if got and want:
                hits.append(np.mean([got[a] == want[a] for a in want]))
        return float(np.mean(hits)) if hits else None


def live_replay(session: Session, run: Run, model: DecoderModel, cfg: Config,
                speed: float | None = None, renderer=None) -> LiveResult:
    """Replay ``run`` through a daemon over loopback ZeroMQ; collect the final captions
    (and the daemon's per-stage latency samples). ``renderer``: the daemon's optional
    render stage (e.g. a :class:`~rtdecode.render.worker.RenderWorker`)."""
    source = ZmqVolumeSource("tcp://127.0.0.1:*", recv_timeout_s=30.0)
    pub = ZmqPublisher("tcp://127.0.0.1:*")
    sub = ZmqSubscriber(pub.endpoint, topics=("caption",), recv_timeout_s=5.0)
    if not pub.wait_for_subscribers(1, 10.0):
        raise RuntimeError("the demo's subscriber did not connect")
    finals: dict[int, dict] = {}
    n_expected = run.n_trs - cfg.window.lag_trs - cfg.window.width_trs + 1

    def collect():
        for _, header, _ in sub:
            if header["final"]:
                finals[header["tr_index"]] = header
                if len(finals) >= n_expected:
                    return

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    daemon = Daemon(cfg, model, source, pub, session="demo", renderer=renderer)
    t0 = time.perf_counter()
    daemon.start()
    label = f"{session.subject}_task-{run.task}_run-{run.run:02d}"
    sink = ZmqVolumeSink(source.endpoint, session=label)
    for vol in RunSource(run, speed=speed, session=label):
        sink.send(vol)
    sink.close()  # end of stream: the daemon's source finishes
    daemon.join(60)
    collector.join(10)
    status = daemon.shutdown()
    wall = time.perf_counter() - t0
    sub.close()
    pub.close()
    truth = {int(k): session.clips[int(c)] for k, c in zip(run.stim_trs, run.clip_ids)
             if int(c) in session.clips}
    return LiveResult(finals, status, truth, wall, daemon.latency.samples())
