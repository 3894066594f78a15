"""LSL transport over loopback: volumes and caption markers, malformed input, clear errors."""

from __future__ import annotations

import threading
import time
from itertools import islice
from uuid import uuid4

import numpy as np
import pylsl
import pytest

from rtdecode.messages import InvalidMessage, Volume
from rtdecode.sources import Source, VolumeSink
from rtdecode.transport.lsl import (
    LslCaptionInlet,
    LslCaptionOutlet,
    LslVolumeSink,
    LslVolumeSource,
)

pytestmark = pytest.mark.timeout(30)


def unique(prefix: str) -> str:
    return f"rtdecode-test-{prefix}-{uuid4().hex[:8]}"


def connect(sink, name: str, **kw) -> LslVolumeSource:
    source = LslVolumeSource(name, resolve_timeout_s=5.0, recv_timeout_s=2.0, **kw)
    assert sink.wait_for_consumers(5.0)
    return source


def raw_outlet(name: str, n_voxels: int, shape: str | None = None) -> pylsl.StreamOutlet:
    """An outlet written by hand, as another program would, to send what our sink refuses."""
    info = pylsl.StreamInfo(name, "fMRI", n_voxels + 1, 0.5, pylsl.cf_float32, name)
    info.desc().append_child_value("protocol_version", "1")
    info.desc().append_child_value("shape", shape or str(n_voxels))
    info.desc().append_child_value("tr", "2.0")
    return pylsl.StreamOutlet(info)


def test_vector_run_arrives_in_order_with_metadata():
    name = unique("vec")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((12, 257)).astype(np.float32)
    sink = LslVolumeSink(name, 257, tr=2.0, session="sub-01_run-1")
    source = connect(sink, name)
    assert isinstance(sink, VolumeSink) and isinstance(source, Source)
    assert source.shape == (257,) and source.n_voxels == 257
    assert source.tr == 2.0 and source.affine is None and source.session == "sub-01_run-1"
    for k in range(len(data)):
        sink.send(Volume(tr_index=k, t_acq=2.0 * k, data=data[k]))
    got = list(islice(source, len(data)))
    assert [v.tr_index for v in got] == list(range(len(data)))
    for k, v in enumerate(got):
        np.testing.assert_array_equal(v.data, data[k])
        assert v.source == f"lsl:{name}" and v.session == "sub-01_run-1"
    assert source.counters == {"received": 12, "malformed": 0, "gaps": 0}
    stamps = [v.t_acq for v in got]
    assert stamps == sorted(stamps) and abs(pylsl.local_clock() - stamps[-1]) < 1.0
    source.close()
    sink.close()


def test_3d_volumes_and_affine_through_desc():
    name = unique("3d")
    shape = (4, 5, 6)
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-90.5, -126.0, -72.25]
    vols = np.arange(3 * 120, dtype=np.float32).reshape(3, *shape) / 7
    sink = LslVolumeSink(name, 120, tr=1.0, shape=shape, affine=affine, session="s")
    source = connect(sink, name, session="override", clock_sync=False)
    assert source.shape == shape and source.tr == 1.0 and source.session == "override"
    np.testing.assert_array_equal(source.affine, affine)
    for k in range(3):
        sink.send(Volume(tr_index=k + 5, t_acq=float(k), data=vols[k], affine=affine))
    got = list(islice(source, 3))
    assert [v.tr_index for v in got] == [5, 6, 7]
    for k, v in enumerate(got):
        assert v.shape == shape  # C order survives the flattening
        np.testing.assert_array_equal(v.data, vols[k])
        np.testing.assert_array_equal(v.affine, affine)
    source.close()
    sink.close()


def test_acquisition_times_keep_their_spacing():
    name = unique("clock")
    sink = LslVolumeSink(name, 3, tr=2.0)  # clock="map": sender clock offset fixed at TR 0
    source = connect(sink, name, clock_sync=False)
    ones = np.ones(3, np.float32)
    sink.send(Volume(tr_index=0, t_acq=1000.0, data=ones))
    time.sleep(0.3)
    sink.send(Volume(tr_index=1, t_acq=1000.2, data=ones))  # acquired 0.1 s before sending
    a, b = islice(source, 2)
    assert b.t_acq - a.t_acq == pytest.approx(0.2, abs=1e-6)
    source.close()
    sink.close()

    name = unique("lslclock")
    sink = LslVolumeSink(name, 3, tr=2.0, clock="lsl")
    source = connect(sink, name, clock_sync=False)
    t = pylsl.local_clock() - 0.5
    sink.send(Volume(tr_index=0, t_acq=t, data=ones))
    (v,) = islice(source, 1)
    assert v.t_acq == pytest.approx(t, abs=1e-6)
    source.close()
    sink.close()


def test_malformed_samples_are_counted_and_skipped():
    name = unique("bad")
    outlet = raw_outlet(name, 4)
    source = LslVolumeSource(name, recv_timeout_s=0.5, clock_sync=False)
    assert outlet.wait_for_consumers(5.0)
    good = [0.5, 1.5, 2.5, 3.5]
    rows = [[0, *good], [1, np.nan, 1, 1, 1], [-1, *good], [2.5, *good], [2, *good],
            [3, *good]]
    for row in rows:
        outlet.push_chunk(np.array([row], np.float32))
    t0 = time.monotonic()
    got = list(source)  # ends 0.5 s after the last sample
    assert 0.5 <= time.monotonic() - t0 < 3.0
    assert [v.tr_index for v in got] == [0, 2, 3]
    np.testing.assert_array_equal(got[-1].data, np.array(good, np.float32))
    assert source.counters == {"received": 3, "malformed": 3, "gaps": 1}
    assert "tr_index" in source.last_error and "2.5" in source.last_error
    source.close()


def test_strict_source_raises_on_malformed_sample():
    name = unique("strict")
    outlet = raw_outlet(name, 2)
    source = LslVolumeSource(name, recv_timeout_s=2.0, clock_sync=False, strict=True)
    assert outlet.wait_for_consumers(5.0)
    outlet.push_chunk(np.array([[0, np.inf, 1]], np.float32))
    with pytest.raises(InvalidMessage, match="non-finite"):
        next(iter(source))
    assert source.counters["malformed"] == 1
    source.close()


def test_desc_shape_contradicting_channel_count_is_refused():
    name = unique("desc")
    _outlet = raw_outlet(name, 10, shape="2 2 2")
    with pytest.raises(ValueError, match=r"shape \(2, 2, 2\) does not hold .* 10 voxel"):
        LslVolumeSource(name, clock_sync=False)


def test_no_stream_is_a_clear_error():
    name = unique("absent")
    with pytest.raises(TimeoutError, match=name):
        LslVolumeSource(name, resolve_timeout_s=0.3)


def test_sink_refuses_what_the_stream_cannot_carry():
    sink = LslVolumeSink(unique("refuse"), 10, tr=2.0, shape=(1, 2, 5))
    with pytest.raises(ValueError, match="expected 10 voxels per volume, got 12"):
        sink.send(Volume(tr_index=0, t_acq=0.0, data=np.zeros(12, np.float32)))
    with pytest.raises(ValueError, match=r"expected volume shape \(1, 2, 5\), got \(5, 2, 1\)"):
        sink.send(Volume(tr_index=0, t_acq=0.0, data=np.zeros((5, 2, 1), np.float32)))
    with pytest.raises(ValueError, match=r"2\*\*24"):
        sink.send(Volume(tr_index=2**24, t_acq=0.0, data=np.zeros(10, np.float32)))
    sink.close()
    with pytest.raises(RuntimeError, match="closed"):
        sink.send(Volume(tr_index=0, t_acq=0.0, data=np.zeros(10, np.float32)))
    with pytest.raises(ValueError, match="shape"):
        LslVolumeSink(unique("refuse"), 10, tr=2.0, shape=(3, 3))
    with pytest.raises(ValueError, match="tr must be"):
        LslVolumeSink(unique("refuse"), 10, tr=0.0)


def test_close_ends_iteration_from_another_thread():
    name = unique("close")
    sink = LslVolumeSink(name, 2, tr=2.0)
    source = LslVolumeSource(name, clock_sync=False)  # recv_timeout_s=None: waits forever
    got: list[Volume] = []
    reader = threading.Thread(target=lambda: got.extend(source))
    reader.start()
    assert sink.wait_for_consumers(5.0)
    sink.send(Volume(tr_index=0, t_acq=0.0, data=np.zeros(2, np.float32)))
    deadline = time.monotonic() + 5.0
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    source.close()
    reader.join(2.0)
    assert not reader.is_alive() and [v.tr_index for v in got] == [0]
    sink.close()


def test_close_disconnects_even_with_a_suspended_iterator():
    name = unique("suspended")
    sink = LslVolumeSink(name, 2, tr=2.0)
    source = connect(sink, name, clock_sync=False)
    sink.send(Volume(tr_index=0, t_acq=0.0, data=np.zeros(2, np.float32)))
    it = iter(source)
    assert next(it).tr_index == 0  # the caller stops reading here, iterator kept alive
    source.close()
    deadline = time.monotonic() + 5.0
    while sink.have_consumers() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not sink.have_consumers()
    assert list(it) == []
    sink.close()


def test_caption_markers_round_trip():
    name = unique("captions")
    outlet = LslCaptionOutlet(name, session="s1")
    inlet = LslCaptionInlet(name, recv_timeout_s=2.0, clock_sync=False)
    assert outlet.wait_for_consumers(5.0)
    headers = [{"v": 1, "session": "s1", "tr_index": k, "t_emit": 10.0 + k, "final": k == 2,
                "text": {"anchor": f"a red square {k}", "motion": "moves left",
                         "holistic": "a red square moves left — ünïcode"},
                "score": 0.5 + k / 10, "latency_ms": 12.5} for k in range(3)]
    for h in headers:
        outlet.push(h)
    got = list(islice(inlet, 3))
    assert [h for h, _ in got] == headers
    assert all(abs(pylsl.local_clock() - t) < 5.0 for _, t in got)
    assert inlet.counters == {"received": 3, "malformed": 0}
    with pytest.raises(ValueError):
        outlet.push({"score": float("nan")})  # not valid JSON; refused at the edge
    inlet.close()
    outlet.close()
