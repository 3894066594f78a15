"""ZeroMQ transport over loopback TCP: ordered exact delivery, malformed input survived,
PUB/SUB without slow-joiner loss, the end-of-stream marker, CURVE.

Every test binds ``tcp://127.0.0.1:*`` (a free port chosen by the OS) and has a timeout.
"""

from __future__ import annotations

import itertools
import json
import threading

import numpy as np
import pytest
import zmq

from rtdecode.messages import InvalidMessage, Volume
from rtdecode.sources import Source, VolumeSink
from rtdecode.transport.zmq import ZmqPublisher, ZmqSubscriber, ZmqVolumeSink, ZmqVolumeSource
from rtdecode.wire import encode_array, encode_eos, encode_volume

ANY_PORT = "tcp://127.0.0.1:*"
pytestmark = pytest.mark.timeout(20)


def _volumes(n: int, shape=(50,), session: str = "s") -> list[Volume]:
    rng = np.random.default_rng(42)
    return [Volume(tr_index=k, t_acq=2.0 * k, data=rng.standard_normal(shape).astype(np.float32),
                   session=session) for k in range(n)]


def _push(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(endpoint)
    return sock


def test_protocols_satisfied():
    src = ZmqVolumeSource(ANY_PORT, recv_timeout_s=0.1)
    sink = ZmqVolumeSink(src.endpoint, "s")
    try:
        assert isinstance(src, Source) and isinstance(sink, VolumeSink)
        assert src.endpoint.startswith("tcp://127.0.0.1:") and not src.endpoint.endswith("*")
    finally:
        sink.close(send_eos=False)
        src.close()


def test_sink_to_source_in_order_exact_then_eos():
    vols = _volumes(60) + _volumes(3, shape=(4, 5, 6))[:1]
    src = ZmqVolumeSource(ANY_PORT, recv_timeout_s=5.0)
    with ZmqVolumeSink(src.endpoint, "sess-1", tr=2.0) as sink:
        for v in vols:
            sink.send(v)
    # the sink has closed (eos sent); the source still gets everything, then stops at eos
    got = list(src)
    src.close()
    assert [v.tr_index for v in got] == [v.tr_index for v in vols]
    for a, b in zip(got, vols):
        np.testing.assert_array_equal(a.data, b.data)
        assert a.t_acq == b.t_acq and a.session == "sess-1"
        assert a.source.startswith("zmq+pull://tcp://127.0.0.1:")
    assert src.eos_received and src.counters["eos"] == 1
    assert src.counters["volumes"] == len(vols) and src.counters["malformed"] == 0
    assert src.counters["timeouts"] == 0
    assert src.tr == 2.0


def test_garbage_mid_stream_is_counted_and_skipped():
    vols = _volumes(10)
    src = ZmqVolumeSource(ANY_PORT, recv_timeout_s=5.0)
    push = _push(src.endpoint)
    bad_header = json.dumps({"v": 1, "session": "s", "tr_index": 99, "t_acq": 0.0,
                             "dtype": "float32", "shape": [50]}).encode()
    try:
        for v in vols[:4]:
            push.send_multipart(encode_volume(v))
        push.send_multipart([b"volume", b"not json", b"\0" * 8])  # garbage
        push.send_multipart([b"volume", bad_header, b"\0" * 7])  # length mismatch
        push.send(b"a single frame")  # wrong frame count
        push.send_multipart([b"volume", bad_header.replace(b'"v":', b'"v": 2, "x":')])
        for v in vols[4:]:
            push.send_multipart(encode_volume(v))
        push.send_multipart(encode_eos("s"))
        got = list(src)
    finally:
        push.close()
        src.close()
    assert [v.tr_index for v in got] == list(range(10))
    for a, b in zip(got, vols):
        np.testing.assert_array_equal(a.data, b.data)
    assert src.counters["malformed"] == 4
    assert src.counters["received"] == 15
    assert src.last_error == "frames: expected 3 (topic, header, data), got 2"


def test_strict_source_raises():
    src = ZmqVolumeSource(ANY_PORT, recv_timeout_s=5.0, strict=True)
    push = _push(src.endpoint)
    try:
        push.send_multipart([b"volume", b'{"v": 7}', b""])
        with pytest.raises(InvalidMessage, match="unsupported protocol version v=7"):
            next(iter(src))
    finally:
        push.close()
        src.close()


def test_int16_sender():
    data = (np.arange(60, dtype=np.int16) - 30).reshape(3, 4, 5)
    src = ZmqVolumeSource(ANY_PORT, recv_timeout_s=5.0)
    with ZmqVolumeSink(src.endpoint, "s") as sink:
        sink.send_frames(encode_array(data, tr_index=0, t_acq=0.0, session="s"))
    got = list(src)
    src.close()
    assert len(got) == 1 and got[0].data.dtype == np.float32
    np.testing.assert_array_equal(got[0].data, data.astype(np.float32))


def test_session_filter():
    src = ZmqVolumeSource(ANY_PORT, recv_timeout_s=5.0, session="mine")
    push = _push(src.endpoint)
    try:
        for v in _volumes(2, session="other") + _volumes(3, session="mine"):
            push.send_multipart(encode_volume(v))
        push.send_multipart(encode_eos("other"))  # someone else's eos does not stop us
        push.send_multipart(encode_eos("mine"))
        got = list(src)
    finally:
        push.close()
        src.close()
    assert [v.tr_index for v in got] == [0, 1, 2] and {v.session for v in got} == {"mine"}
    assert src.counters["other_session"] == 3


def test_recv_timeout_ends_iteration():
    src = ZmqVolumeSource(ANY_PORT, recv_timeout_s=0.2)
    assert list(src) == []
    assert src.counters["timeouts"] == 1
    src.close()


def test_close_from_another_thread_stops_iteration():
    src = ZmqVolumeSource(ANY_PORT)  # no timeout: only close() can stop it
    got: list = []
    t = threading.Thread(target=lambda: got.extend(src))
    t.start()
    with ZmqVolumeSink(src.endpoint, "s") as sink:
        sink.send(_volumes(1)[0])
        sink.close(send_eos=False)
    # wait until the volume has arrived, then close from here
    for _ in range(200):
        if got:
            break
        threading.Event().wait(0.01)
    src.close()
    t.join(5)
    assert not t.is_alive() and len(got) == 1 and src.closed


def test_oversize_message_is_dropped_and_the_source_goes_on():
    big = Volume(tr_index=1, t_acq=2.0, data=np.zeros(10_000, np.float32))
    small = _volumes(1)[0]
    src = ZmqVolumeSource(ANY_PORT, recv_timeout_s=5.0, max_bytes=4096)
    push = _push(src.endpoint)
    try:
        push.send_multipart(encode_volume(big))  # 40 kB frame > MAXMSGSIZE: peer dropped
        with ZmqVolumeSink(src.endpoint, "s") as sink:  # another sender carries on
            sink.send(small)
        got = list(src)
    finally:
        push.close(linger=0)
        src.close()
    assert [v.tr_index for v in got] == [0] and src.eos_received
    assert src.counters["malformed"] == 0  # libzmq dropped it before the decoder saw it
    np.testing.assert_array_equal(got[0].data, small.data)


def test_sub_mode_source_with_xpub_handshake():
    pub = zmq.Context.instance().socket(zmq.XPUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    src = ZmqVolumeSource(f"tcp://127.0.0.1:{port}", mode="sub", recv_timeout_s=5.0)
    try:
        subs = {pub.recv(), pub.recv()}  # both subscriptions in place: nothing will be lost
        assert subs == {b"\x01volume", b"\x01eos"}
        vols = _volumes(20)
        for v in vols:
            pub.send_multipart(encode_volume(v, "pub"))
        pub.send_multipart(encode_eos("pub"))
        got = list(src)
    finally:
        src.close()
        pub.close(linger=0)
    assert [v.tr_index for v in got] == list(range(20))
    np.testing.assert_array_equal(got[-1].data, vols[-1].data)


def _caption(k: int) -> dict:
    return {"session": "s", "tr_index": k, "t_emit": float(k), "final": k % 2 == 1,
            "text": {"anchor": f"a{k}", "motion": f"m{k}", "holistic": f"h{k}"},
            "score": 0.5, "latency_ms": 3.0}


def test_pub_sub_with_wait_for_subscribers_loses_nothing():
    pub = ZmqPublisher(ANY_PORT)
    sub = ZmqSubscriber(pub.endpoint, topics=["caption", "video"], recv_timeout_s=5.0)
    try:
        assert pub.wait_for_subscribers(1, timeout_s=5.0, topic="caption")
        assert pub.wait_for_subscribers(1, timeout_s=5.0, topic="video")
        assert pub.n_subscribers("status") == 0
        frames = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
        for k in range(200):
            pub.publish("caption", _caption(k))
            pub.publish("status", {"session": "s", "t_emit": 0.0})  # not subscribed
        pub.publish("video", {"session": "s", "tr_index": 0, "t_emit": 1.0, "clip_id": 0,
                              "chain_id": 0, "fps": 4.0, "shape": [2, 4, 4, 3],
                              "dtype": "uint8"}, frames)
        got = list(itertools.islice(sub, 201))
    finally:
        sub.close()
        pub.close()
    assert [h["tr_index"] for t, h, _ in got[:200]] == list(range(200))
    assert all(t == "caption" for t, _, _ in got[:200])
    assert got[3][1]["text"]["motion"] == "m3" and got[3][1]["final"] is True
    topic, header, bufs = got[200]
    assert topic == "video"
    np.testing.assert_array_equal(np.frombuffer(bufs[0], np.uint8).reshape(header["shape"]),
                                  frames)
    assert sub.counters["caption"] == 200 and sub.counters["malformed"] == 0


def test_wait_for_subscribers_times_out_without_one():
    with ZmqPublisher(ANY_PORT) as pub:
        assert pub.wait_for_subscribers(1, timeout_s=0.2) is False


def test_subscriber_counts_malformed_output():
    pub = zmq.Context.instance().socket(zmq.XPUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = ZmqSubscriber(f"tcp://127.0.0.1:{port}", topics=["status"], recv_timeout_s=5.0)
    try:
        assert pub.recv() == b"\x01status"
        pub.send_multipart([b"status", b'{"v": 1}'])
        pub.send_multipart([b"status", b'{"v": 1, "session": "s", "t_emit": 2.0}'])
        topic, header, _ = next(iter(sub))
    finally:
        sub.close()
        pub.close(linger=0)
    assert header["t_emit"] == 2.0
    assert sub.counters["malformed"] == 1 and sub.last_error == "session: missing required " \
        "header key"


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_curve_encrypted_delivery_and_refusal_without_key():
    server_public, server_secret = zmq.curve_keypair()
    src = ZmqVolumeSource(ANY_PORT, recv_timeout_s=2.0, curve_secret_key=server_secret)
    assert src.curve
    vols = _volumes(3)
    # a client without CURVE cannot talk to a CURVE server: nothing arrives from it
    plain = _push(src.endpoint)
    plain.send_multipart(encode_volume(_volumes(1, session="intruder")[0]))
    with ZmqVolumeSink(src.endpoint, "s", curve_server_key=server_public) as sink:
        for v in vols:
            sink.send(v)
    got = list(src)
    plain.close(linger=0)
    src.close()
    assert [v.session for v in got] == ["s", "s", "s"]
    np.testing.assert_array_equal(got[2].data, vols[2].data)
    with pytest.raises(ValueError, match="curve_server_key"):
        ZmqVolumeSink(src.endpoint, "s", curve_secret_key=server_secret)
