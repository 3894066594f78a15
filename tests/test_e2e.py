"""Loopback end to end: replay -> serve -> subscribe over real ZeroMQ and LSL sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import zmq

from rtdecode.config import Config
from rtdecode.daemon import Daemon
from rtdecode.data import load_session
from rtdecode.messages import Volume
from rtdecode.ridge import train_model
from rtdecode.sources import RunSource
from rtdecode.transport.zmq import ZmqPublisher, ZmqSubscriber, ZmqVolumeSink, ZmqVolumeSource
from rtdecode.wire import encode_volume

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def setup(small_session):
    sess = load_session(small_session, "sub-02")
    return train_model(sess, Config()), sess.runs_of("test")[0]


def expected_finals(run):
    w = Config().window
    return list(range(run.n_trs - w.lag_trs - w.width_trs + 1))


class Collector(threading.Thread):
    """Subscribes and collects (topic, header) until told to stop or idle."""

    def __init__(self, endpoint, topics=("caption", "status")):
        super().__init__(daemon=True)
        self.sub = ZmqSubscriber(endpoint, topics=topics, recv_timeout_s=3.0)
        self.items = []

    def run(self):
        for topic, header, _ in self.sub:
            self.items.append((topic, header))

    def finals(self):
        return [h["tr_index"] for t, h in self.items if t == "caption" and h["final"]]


def start_daemon(model, source, publisher, **kw):
    d = Daemon(Config(), model, source, publisher, **kw)
    t = threading.Thread(target=lambda: setattr(d, "result", d.run()), daemon=True)
    t.start()
    return d, t


def test_zmq_replay_serve_subscribe(setup):
    model, run = setup
    source = ZmqVolumeSource("tcp://127.0.0.1:*")
    pub = ZmqPublisher("tcp://127.0.0.1:*")
    col = Collector(pub.endpoint)
    assert pub.wait_for_subscribers(1, 5.0)
    col.start()
    d, t = start_daemon(model, source, pub)
    sink = ZmqVolumeSink(source.endpoint, session="run1")
    for vol in RunSource(run, speed=None):
        sink.send(vol)
    sink.close()  # end-of-stream marker ends the daemon's source
    t.join(30)
    col.join(10)
    pub.close()
    assert col.finals() == expected_finals(run)  # every final once, in order
    assert d.result["counters"]["decoded"] == run.n_trs


def test_zmq_publisher_restart_garbage_and_vanishing_subscriber(setup):
    model, run = setup
    source = ZmqVolumeSource("tcp://127.0.0.1:*")
    pub = ZmqPublisher("tcp://127.0.0.1:*")
    col = Collector(pub.endpoint)
    quitter = ZmqSubscriber(pub.endpoint, topics=("caption",))
    assert pub.wait_for_subscribers(2, 5.0)
    col.start()
    d, t = start_daemon(model, source, pub)
    vols = list(RunSource(run, speed=None, session="r"))
    first = ZmqVolumeSink(source.endpoint, session="r")
    for v in vols[:10]:
        first.send(v)
    first.close(send_eos=False)  # the scanner bridge dies without saying goodbye
    quitter.close()  # a subscriber vanishes mid-session
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.connect(source.endpoint)
    raw.send_multipart([b"volume", b"{not json", b"xx"])  # garbage
    nan = Volume(10, 20.0, vols[10].data.copy())
    frames = encode_volume(nan, "r")
    bad = np.frombuffer(bytes(frames[2]), np.float32).copy()
    bad[3] = np.nan
    raw.send_multipart([frames[0], frames[1], bad.tobytes()])  # NaN voxel
    raw.close(linger=1000)
    deadline = time.monotonic() + 10
    while (d.counters["received"] < 10 or source.counters["malformed"] < 2) \
            and time.monotonic() < deadline:
        time.sleep(0.01)  # the old bridge's volumes are in before the new one starts
    second = ZmqVolumeSink(source.endpoint, session="r")  # the bridge restarts
    for v in vols[10:]:
        second.send(v)
    second.close()
    t.join(30)
    col.join(10)
    pub.close()
    c = d.result["counters"]
    assert c["malformed"] == 2 and c["decoded"] == run.n_trs
    assert col.finals() == expected_finals(run)


def test_lsl_replay_serve_subscribe_and_caption_markers(setup):
    from rtdecode.transport.lsl import (
        LslCaptionInlet,
        LslCaptionOutlet,
        LslVolumeSink,
        LslVolumeSource,
    )

    model, run = setup
    name = f"rtdecode-test-{uuid.uuid4().hex[:8]}"
    sink = LslVolumeSink(name, int(model.meta["trained_on"]["n_voxels"]), tr=run.tr,
                         session="lsl-run")
    source = LslVolumeSource(name, resolve_timeout_s=10.0, recv_timeout_s=2.0)
    markers = LslCaptionOutlet(f"{name}-captions")
    inlet = LslCaptionInlet(f"{name}-captions", resolve_timeout_s=10.0, recv_timeout_s=3.0)
    pub = ZmqPublisher("tcp://127.0.0.1:*")
    col = Collector(pub.endpoint)
    assert pub.wait_for_subscribers(1, 5.0)
    col.start()
    got_markers = []
    reader = threading.Thread(target=lambda: got_markers.extend(h for h, _ in inlet),
                              daemon=True)
    reader.start()
    assert sink.wait_for_consumers(10.0)
    d, t = start_daemon(model, source, pub, caption_outlet=markers)
    for vol in RunSource(run, speed=None):
        sink.send(vol)
    t.join(30)
    col.join(10)
    reader.join(10)
    pub.close()
    sink.close()
    assert col.finals() == expected_finals(run)
    assert [h["tr_index"] for h in got_markers if h["final"]] == expected_finals(run)
    assert all({"anchor", "motion", "holistic"} <= h["text"].keys() for h in got_markers)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_replay_serve_subscribe(small_session, tmp_path):
    """The commands a lab types, as separate processes over real sockets."""
    pin, pout = _free_port(), _free_port()
    rt = [sys.executable, "-m", "rtdecode.cli"]
    model_dir = tmp_path / "model"
    subprocess.run(rt + ["train", "ridge", "--data", str(small_session), "--out",
                         str(model_dir)], check=True, capture_output=True, timeout=60)
    serve = subprocess.Popen(rt + ["serve", "--model", str(model_dir), "--source",
                                   f"zmq://127.0.0.1:{pin}", "--publish",
                                   f"tcp://127.0.0.1:{pout}", "--once", "--wait-subscribers",
                                   "1", "--no-lsl-captions", "--journal",
                                   str(tmp_path / "j.jsonl"), "--attributes", str(model_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = load_session(small_session, "sub-01").runs_of("test")[0]
    n_final = len(expected_finals(run))
    sub = subprocess.Popen(rt + ["subscribe", f"tcp://127.0.0.1:{pout}", "--json",
                                 "--final-only", "--count", str(n_final), "--timeout", "20",
                                 "--save",
                                 str(tmp_path / "out")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        rep = subprocess.run(rt + ["replay", str(small_session), "--to",
                                   f"zmq://127.0.0.1:{pin}", "--max-speed"],
                             capture_output=True, text=True, timeout=60)
        assert rep.returncode == 0, rep.stderr
        try:
            _, serr = serve.communicate(timeout=30)
            sout, suberr = sub.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            sub.kill()
            raise AssertionError(f"serve: {serve.communicate()}; sub: {sub.communicate()}; "
                                 f"replay: {rep.stdout} {rep.stderr}") from None
    finally:
        serve.kill()
        sub.kill()
    assert serve.returncode == 0, serr
    import json
    got = [json.loads(line) for line in sout.splitlines()]
    assert [h["tr_index"] for h in got] == expected_finals(run)
    # --attributes (the ridge's targets are the scene attributes): captions composed from them
    assert all(set(h["composed"]) == {"anchor", "motion", "holistic"} and h["attributes"]
               for h in got)
    assert (tmp_path / "out" / "captions.jsonl").is_file()
    assert "malformed 0" in serr


def test_stalled_subscriber_never_blocks_the_publisher():
    """A subscriber that connects and never reads: PUB drops for it past its high-water
    mark and the socket buffers; publishing stays fast (never waits for the reader)."""
    pub = ZmqPublisher("tcp://127.0.0.1:*", sndhwm=50)
    stalled = zmq.Context.instance().socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 50)
    stalled.setsockopt(zmq.SUBSCRIBE, b"video")
    stalled.connect(pub.endpoint)
    assert pub.wait_for_subscribers(1, 5.0)
    frames = np.zeros((1, 128, 128, 3), np.uint8)  # 48 KiB per message: ~140 MiB in all,
    header = {"session": "s", "t_emit": 0.0, "clip_id": 0, "chain_id": 0, "fps": 4.0,
              "shape": [1, 128, 128, 3], "dtype": "uint8"}  # far beyond socket buffers
    n = 3000
    t0 = time.perf_counter()
    for k in range(n):
        pub.publish("video", {**header, "tr_index": k}, frames.tobytes())
    assert time.perf_counter() - t0 < 20.0  # never blocked on the stalled reader
    received = 0
    while stalled.poll(300):
        stalled.recv_multipart()
        received += 1
    assert received < n // 2, received  # the stalled reader lost messages; no waiting
    stalled.close(linger=0)
    pub.close()


def test_serve_refuses_an_attribute_decoder_of_other_windows(small_session, tmp_path):
    """`serve --attributes` with a ridge of another subject (another voxel count): a clear
    error naming both widths, before any socket is opened."""
    from typer.testing import CliRunner

    from rtdecode.cli import app
    from rtdecode.config import Config
    from rtdecode.ridge import train_model

    a = train_model(load_session(small_session, "sub-01"), Config()).save(tmp_path / "a")
    b = train_model(load_session(small_session, "sub-03"), Config()).save(tmp_path / "b")
    r = CliRunner().invoke(app, ["serve", "--model", str(a), "--attributes", str(b),
                                 "--source", f"zmq://127.0.0.1:{_free_port()}", "--publish",
                                 f"tcp://127.0.0.1:{_free_port()}", "--no-lsl-captions"])
    assert r.exit_code == 2, r.output
    assert f"--attributes {b}" in r.output and "inputs per window, the decoder" in r.output
