"""Wire protocol v1 codec: exact round trips and every rejection, with its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtdecode.messages import InvalidMessage, Volume
from rtdecode.wire import (
    DEFAULT_MAX_BYTES,
    PROTOCOL_VERSION,
    decode_eos,
    decode_output,
    decode_volume,
    decode_volume_ex,
    encode_array,
    encode_eos,
    encode_output,
    encode_volume,
    video_frames,
)

AFFINE = np.array([[2.0, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def _header(**over) -> dict:
    h = {"v": 1, "session": "s1", "tr_index": 3, "t_acq": 6.0, "dtype": "float32",
         "shape": [4]}
    h.update(over)
    return {k: v for k, v in h.items() if v is not _DROP}


_DROP = object()


def _frames(header: dict | bytes, data: bytes | None = None, topic: bytes = b"volume") -> list:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if data is None:
        data = np.arange(4, dtype=np.float32).tobytes()
    return [topic, raw, data]


def _reject(frames, match: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    with pytest.raises(InvalidMessage, match=match):
        decode_volume(frames, max_bytes)


def test_constants():
    assert PROTOCOL_VERSION == 1
    assert DEFAULT_MAX_BYTES == 64 * 1024 * 1024


@pytest.mark.parametrize("shape", [(17,), (3, 4, 5)])
def test_volume_round_trip_float32_exact(shape):
    rng = np.random.default_rng(0)
    data = rng.standard_normal(shape).astype(np.float32)
    vol = Volume(tr_index=7, t_acq=14.25, data=data, affine=AFFINE, session="run-1")
    frames = encode_volume(vol, "sess-A", tr=2.0)
    assert frames[0] == b"volume"
    header = json.loads(frames[1])
    assert header == {"v": 1, "session": "sess-A", "tr_index": 7, "t_acq": 14.25,
                      "dtype": "float32", "shape": list(shape), "affine": AFFINE.tolist(),
                      "tr": 2.0}
    assert len(frames[2]) == data.nbytes
    out, hdr = decode_volume_ex([bytes(f) for f in frames], source="test")
    assert out.data.dtype == np.float32 and out.data.shape == shape
    np.testing.assert_array_equal(out.data, data)
    np.testing.assert_array_equal(out.affine, AFFINE)
    assert (out.tr_index, out.t_acq, out.session, out.source) == (7, 14.25, "sess-A", "test")
    assert hdr.tr == 2.0


def test_encode_volume_defaults_to_volume_session_and_omits_optional_keys():
    vol = Volume(tr_index=0, t_acq=0.0, data=np.ones(3, np.float32), session="own")
    header = json.loads(encode_volume(vol)[1])
    assert header["session"] == "own"
    assert "affine" not in header and "tr" not in header


def test_encode_volume_is_zero_copy():
    data = np.arange(6, dtype=np.float32)
    vol = Volume(tr_index=0, t_acq=0.0, data=data)
    buf = encode_volume(vol, "s")[2]
    assert np.shares_memory(np.frombuffer(buf, np.float32), data)


def test_decode_float32_does_not_copy():
    raw = bytearray(np.arange(4, dtype=np.float32).tobytes())
    vol = decode_volume(_frames(_header(), bytes(raw)))
    assert not vol.data.flags.writeable
    buf = memoryview(raw)
    vol2 = decode_volume([b"volume", json.dumps(_header()).encode(), buf])
    assert np.shares_memory(vol2.data, np.frombuffer(buf, np.uint8))


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "float64"])
@pytest.mark.parametrize("shape", [(10,), (2, 3, 4)])
def test_int_and_float64_senders_are_converted_to_float32(dtype, shape):
    data = (np.arange(np.prod(shape)) * 37 - 100 * (dtype != "uint16")).astype(dtype)
    data = data.reshape(shape)
    frames = encode_array(data, tr_index=2, t_acq=4.0, session="s", affine=AFFINE)
    assert json.loads(frames[1])["dtype"] == dtype
    vol = decode_volume(frames)
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, data.astype(np.float32))
    np.testing.assert_array_equal(vol.affine, AFFINE)


def test_big_endian_input_is_sent_little_endian():
    data = np.arange(5, dtype=">i2")
    frames = encode_array(data, tr_index=0, t_acq=0.0, session="s")
    assert bytes(frames[2]) == np.arange(5, dtype="<i2").tobytes()
    np.testing.assert_array_equal(decode_volume(frames).data, np.arange(5, dtype=np.float32))


def test_unknown_keys_ignored_and_null_optionals_accepted():
    vol = decode_volume(_frames(_header(scanner="Prisma", affine=None, tr=None)))
    assert vol.affine is None and vol.tr_index == 3


def test_encode_refuses_unsupported_dtype():
    with pytest.raises(InvalidMessage, match="dtype"):
        encode_array(np.zeros(3, np.complex64), tr_index=0, t_acq=0.0, session="s")


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_reject_wrong_number_of_frames(n):
    frames = (_frames(_header()) + [b"extra"])[:n]
    _reject(frames, rf"frames: expected 3 .* got {n}")


def test_reject_wrong_topic():
    _reject(_frames(_header(), topic=b"caption"), "topic: expected b'volume', got b'caption'")


def test_reject_not_utf8():
    _reject(_frames(b'{"v": 1, "session": "\xff"}'), "header: not valid UTF-8")


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"v": 1,}'])
def test_reject_not_json(raw):
    _reject(_frames(raw), "header: not valid JSON")


@pytest.mark.parametrize("raw", [b"[1, 2]", b"42", b'"volume"', b"null"])
def test_reject_header_not_object(raw):
    _reject(_frames(raw), "header: expected a JSON object")


def test_reject_other_version_names_it():
    _reject(_frames(_header(v=2)), r"unsupported protocol version v=2 .*v=1")


@pytest.mark.parametrize("v", ["1", 1.5, True, None])
def test_reject_malformed_version(v):
    _reject(_frames(_header(v=v)), "v: expected an integer protocol version")


@pytest.mark.parametrize("key", ["v", "session", "tr_index", "t_acq", "dtype", "shape"])
def test_reject_missing_required_key(key):
    _reject(_frames(_header(**{key: _DROP})), rf"^{key}: missing")


@pytest.mark.parametrize("key,value", [
    ("session", 5), ("session", None),
    ("tr_index", -1), ("tr_index", 1.0), ("tr_index", "3"), ("tr_index", True),
    ("t_acq", "6.0"), ("t_acq", None), ("t_acq", False),
    ("shape", [0]), ("shape", [4, 1]), ("shape", [1, 1, 1, 4]), ("shape", []), ("shape", 4),
    ("shape", [4.0]), ("shape", [-4]), ("shape", [True]),
    ("affine", [[1, 0, 0], [0, 1, 0], [0, 0, 1]]), ("affine", "eye"),
    ("affine", [[1, 0, 0, 0]] * 3 + [[0, 0, 0, "1"]]),
    ("tr", 0), ("tr", -2.0), ("tr", "2"),
])
def test_reject_malformed_key_names_key(key, value):
    _reject(_frames(_header(**{key: value})), rf"^{key}: ")


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity"])
def test_reject_non_finite_t_acq(raw):
    header = json.dumps(_header(t_acq=0.0)).replace("0.0", raw.decode()).encode()
    _reject(_frames(header), "t_acq: expected a finite number")


@pytest.mark.parametrize("dtype", ["float16", "int8", "complex64", "<f4", 5, None])
def test_reject_bad_dtype(dtype):
    _reject(_frames(_header(dtype=dtype)), "dtype: .* not supported")


@pytest.mark.parametrize("nbytes", [0, 12, 15, 17, 20])
def test_reject_length_mismatch(nbytes):
    _reject(_frames(_header(), b"\0" * nbytes),
            rf"data: {nbytes} bytes, but shape \[4\] of float32 needs 16")


def test_reject_length_mismatch_int16():
    _reject(_frames(_header(dtype="int16", shape=[2, 2, 2]), b"\0" * 8),
            r"data: 8 bytes, but shape \[2, 2, 2\] of int16 needs 16")


def test_reject_oversize():
    frames = _frames(_header())
    total = sum(len(f) for f in frames)
    assert decode_volume(frames, max_bytes=total).tr_index == 3
    _reject(frames, rf"message size {total} bytes exceeds max_bytes={total - 1}",
            max_bytes=total - 1)


def test_reject_non_finite_data():
    data = np.array([0, np.nan, 1, 2], np.float32).tobytes()
    _reject(_frames(_header(), data), "data: 1 non-finite")


def test_eos_round_trip_and_rejections():
    assert decode_eos(encode_eos("s9")) == "s9"
    with pytest.raises(InvalidMessage, match="v: unsupported protocol version v=3"):
        decode_eos([b"eos", b'{"v": 3, "session": "s"}'])
    with pytest.raises(InvalidMessage, match="session: missing"):
        decode_eos([b"eos", b'{"v": 1}'])
    with pytest.raises(InvalidMessage, match="eos expects 2"):
        decode_eos([b"eos"])


# --------------------------------------------------------------------------- outputs


def _caption(**over) -> dict:
    h = {"session": "s", "tr_index": 4, "t_emit": 100.5, "final": False,
         "text": {"anchor": "a red ball", "motion": "moves left", "holistic": "a ball rolls"},
         "score": 0.8, "latency_ms": 12.5}
    h.update(over)
    return {k: v for k, v in h.items() if v is not _DROP}


def _video(**over) -> dict:
    h = {"session": "s", "tr_index": 4, "t_emit": 1.0, "clip_id": 2, "chain_id": 1,
         "fps": 4.0, "shape": [2, 3, 5, 3], "dtype": "uint8"}
    h.update(over)
    return {k: v for k, v in h.items() if v is not _DROP}


def test_caption_round_trip():
    frames = encode_output("caption", _caption(score=np.float32(0.5), tr_index=np.int64(4)))
    assert frames[0] == b"caption"
    topic, header, buffers = decode_output([bytes(f) for f in frames])
    assert topic == "caption" and buffers == []
    assert header == {**_caption(score=0.5), "v": 1}


def test_video_round_trip_exact():
    frames_in = np.random.default_rng(1).integers(0, 256, (2, 3, 5, 3), dtype=np.uint8)
    frames = encode_output("video", _video(), frames_in)
    topic, header, buffers = decode_output(frames)
    assert topic == "video" and header["clip_id"] == 2
    np.testing.assert_array_equal(video_frames(header, buffers), frames_in)


def test_semantics_and_status_round_trip():
    emb = np.ones((3, 8), np.float32)
    topic, header, buffers = decode_output(encode_output(
        "semantics", {"session": "s", "tr_index": 1, "t_emit": 2.0, "dims": [8]}, emb, emb))
    assert topic == "semantics" and header["dims"] == [8] and len(buffers) == 2
    np.testing.assert_array_equal(np.frombuffer(buffers[1], np.float32).reshape(3, 8), emb)
    # status may omit tr_index
    topic, header, _ = decode_output(encode_output("status", {"session": "s", "t_emit": 0.0,
                                                              "state": "ready"}))
    assert topic == "status" and header["state"] == "ready"


@pytest.mark.parametrize("topic,header,match", [
    ("caption", _caption(tr_index=_DROP), "tr_index: missing"),
    ("semantics", {"session": "s", "t_emit": 1.0}, "tr_index: missing"),
    ("status", {"session": "s"}, "t_emit: missing"),
    ("status", {"t_emit": 1.0}, "session: missing"),
    ("status", {"session": "s", "t_emit": 1.0, "tr_index": -1}, "tr_index: expected"),
    ("caption", _caption(final="yes"), "final: expected a boolean"),
    ("caption", _caption(text="a ball"), "text: expected an object"),
    ("caption", _caption(text={"anchor": "a", "motion": "b"}), r"text: missing .*holistic"),
    ("caption", _caption(text={"anchor": "a", "motion": "b", "holistic": 3}),
     "text: level.*holistic.* not strings"),
    ("caption", _caption(score=_DROP), "score: missing"),
    ("caption", _caption(latency_ms=-1.0), "latency_ms: must be >= 0"),
    ("caption", _caption(t_emit=float("nan")), "header: cannot encode"),
    ("video", _video(fps=0), "fps: must be > 0"),
    ("video", _video(clip_id=-1), "clip_id: expected an integer >= 0"),
    ("video", _video(chain_id=_DROP), "chain_id: missing"),
    ("video", _video(shape=[2, 3, 5, 4]), r"shape: video frames must be \[T, H, W, 3\]"),
    ("video", _video(shape=[2, 3, 5]), "shape: expected a list of 4"),
    ("video", _video(dtype="float32"), "dtype: video frames must be 'uint8'"),
    ("subtitles", _caption(), "topic: 'subtitles' is not one of"),
    ("caption", {**_caption(), "v": 2}, "v: header says v=2"),
])
def test_encode_output_rejects(topic, header, match):
    bufs = (np.zeros((2, 3, 5, 3), np.uint8),) if topic == "video" else ()
    with pytest.raises(InvalidMessage, match=match):
        encode_output(topic, header, *bufs)


def test_video_buffer_checks():
    with pytest.raises(InvalidMessage, match="video expects 1 frame buffer, got 0"):
        encode_output("video", _video())
    with pytest.raises(InvalidMessage, match=r"data: 89 bytes, but video shape"):
        encode_output("video", _video(), b"\0" * 89)
    with pytest.raises(InvalidMessage, match="C-contiguous"):
        encode_output("video", _video(), np.zeros((3, 2, 5, 3), np.uint8).transpose(1, 0, 2, 3))


@pytest.mark.parametrize("frames,match", [
    ([b"caption"], "expected at least 2"),
    ([b"volume", b"{}"], "topic: 'volume' is not one of"),
    ([b"\xff", b"{}"], "topic: not ASCII"),
    ([b"caption", b"nope"], "header: not valid JSON"),
    ([b"caption", json.dumps({**_caption(), "v": 2}).encode()], "unsupported protocol version v=2"),
    ([b"caption", json.dumps({**_caption(score="high"), "v": 1}).encode()],
     "score: expected a finite number"),
    ([b"video", json.dumps({**_video(), "v": 1}).encode(), b"\0" * 10], "data: 10 bytes"),
])
def test_decode_output_rejects(frames, match):
    with pytest.raises(InvalidMessage, match=match):
        decode_output(frames)


def test_decode_output_oversize():
    frames = encode_output("status", {"session": "s", "t_emit": 1.0})
    with pytest.raises(InvalidMessage, match="exceeds max_bytes=10"):
        decode_output(frames, max_bytes=10)
