"""Wire protocol v1: encode and decode the multipart messages rtdecode sends and receives.

Pure functions over lists of frames (``bytes``, ``memoryview`` or anything with the buffer
protocol, such as a ``zmq.Frame``); no sockets here, see :mod:`rtdecode.transport.zmq`.

Input (one per TR)::

    [b"volume", header, data]

``header`` is UTF-8 JSON with ``v`` (=1), ``session`` (str), ``tr_index`` (int >= 0),
``t_acq`` (float seconds, sender clock), ``dtype`` (one of :data:`VOLUME_DTYPES`), ``shape``
(``[x, y, z]`` or ``[n_voxels]``), optional ``affine`` (4x4 list) and ``tr`` (seconds).
``data`` is the raw C-ordered array, little-endian. Unknown header keys are ignored; a missing
or malformed required key rejects the message with :class:`~rtdecode.messages.InvalidMessage`.

Output (daemon PUB)::

    [topic, header, *buffers]     topic in b"caption", b"semantics", b"video", b"status"

Every output header carries ``v``, ``session``, ``tr_index`` (``status`` may omit it) and
``t_emit``; caption and video headers add the keys checked in :func:`validate_output_header`.

Extension of v1 (optional for senders): an end-of-stream marker ``[b"eos", {"v": 1,
"session": ...}]`` tells a receiver that this sender has no more volumes. Receivers that do
not know it ignore it as an unknown topic; senders need not send it.

Nothing is ever pickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .messages import CLIP_LEVELS, InvalidMessage, Volume

PROTOCOL_VERSION = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

VOLUME_TOPIC = b"volume"
EOS_TOPIC = b"eos"
OUTPUT_TOPICS = ("caption", "semantics", "video", "status")
VOLUME_DTYPES = ("float32", "float64", "int16", "uint16", "int32")
VIDEO_DTYPE = "uint8"

Frame = Any  # bytes, memoryview, zmq.Frame: anything exposing the buffer protocol


# --------------------------------------------------------------------------- helpers


def _view(frame: Frame) -> memoryview:
    """A flat byte view of one frame, without copying."""
    try:
        mv = memoryview(frame)
    except TypeError as exc:
        raise InvalidMessage(f"frame of type {type(frame).__name__} has no buffer") from exc
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _parse_header(frame: Frame) -> dict:
    try:
        text = bytes(_view(frame)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"header: not valid UTF-8 ({exc.reason} at byte {exc.start})") \
            from exc
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidMessage(f"header: not valid JSON ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(header, dict):
        raise InvalidMessage(f"header: expected a JSON object, got {type(header).__name__}")
    return header


def _check_version(header: dict) -> None:
    if "v" not in header:
        raise InvalidMessage("v: missing protocol version (expected v=1)")
    v = header["v"]
    if not _is_int(v):
        raise InvalidMessage(f"v: expected an integer protocol version, got {v!r}")
    if v != PROTOCOL_VERSION:
        raise InvalidMessage(
            f"v: unsupported protocol version v={v} (this decoder speaks v={PROTOCOL_VERSION})")


def _require(header: dict, key: str) -> Any:
    if key not in header:
        raise InvalidMessage(f"{key}: missing required header key")
    return header[key]


def _check_str(header: dict, key: str) -> str:
    val = _require(header, key)
    if not isinstance(val, str):
        raise InvalidMessage(f"{key}: expected a string, got {val!r}")
    return val


def _check_index(header: dict, key: str) -> int:
    val = _require(header, key)
    if not _is_int(val) or val < 0:
        raise InvalidMessage(f"{key}: expected an integer >= 0, got {val!r}")
    return val


def _check_finite(header: dict, key: str, *, positive: bool = False,
                  nonnegative: bool = False) -> float:
    val = _require(header, key)
    if not _is_number(val) or not math.isfinite(val):
        raise InvalidMessage(f"{key}: expected a finite number, got {val!r}")
    if positive and not val > 0:
        raise InvalidMessage(f"{key}: must be > 0, got {val!r}")
    if nonnegative and val < 0:
        raise InvalidMessage(f"{key}: must be >= 0, got {val!r}")
    return float(val)


def _check_shape(header: dict, key: str, ndims: Sequence[int]) -> tuple[int, ...]:
    val = _require(header, key)
    if (not isinstance(val, list) or len(val) not in ndims
            or not all(_is_int(n) and n > 0 for n in val)):
        want = " or ".join(str(n) for n in ndims)
        raise InvalidMessage(f"{key}: expected a list of {want} positive integers, got {val!r}")
    return tuple(val)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# Built once: json.dumps with options builds an encoder on every call (a header per message).
_ENCODER = json.JSONEncoder(allow_nan=False, default=_json_default, separators=(",", ":"))


def _dumps(header: dict) -> bytes:
    """JSON-encode a header; numpy scalars and arrays become plain JSON, NaN is refused."""
    try:
        return _ENCODER.encode(header).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f"header: cannot encode as JSON ({exc})") from exc


def _check_total(frames: Sequence[memoryview], max_bytes: int) -> None:
    total = sum(f.nbytes for f in frames)
    if total > max_bytes:
        raise InvalidMessage(f"message size {total} bytes exceeds max_bytes={max_bytes}")


# --------------------------------------------------------------------------- volumes


@dataclass(frozen=True)
class VolumeHeader:
    """The validated header of one volume message."""

    session: str
    tr_index: int
    t_acq: float
    dtype: str
    shape: tuple[int, ...]
    affine: list | None = None
    tr: float | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def parse_volume_header(header: dict) -> VolumeHeader:
    """Validate a decoded volume header; raises :class:`InvalidMessage` naming the bad key."""
    _check_version(header)
    session = _check_str(header, "session")
    tr_index = _check_index(header, "tr_index")
    t_acq = _check_finite(header, "t_acq")
    dtype = _require(header, "dtype")
    if dtype not in VOLUME_DTYPES:
        raise InvalidMessage(f"dtype: {dtype!r} not supported; expected one of "
                             f"{list(VOLUME_DTYPES)}")
    shape = _check_shape(header, "shape", (1, 3))
    affine = header.get("affine")
    if affine is not None:
        if (not isinstance(affine, list) or len(affine) != 4
                or not all(isinstance(row, list) and len(row) == 4 for row in affine)
                or not all(_is_number(x) and math.isfinite(x) for row in affine for x in row)):
            raise InvalidMessage(f"affine: expected a 4x4 list of finite numbers, got {affine!r}")
    tr = None
    if header.get("tr") is not None:
        tr = _check_finite(header, "tr", positive=True)
    return VolumeHeader(session=session, tr_index=tr_index, t_acq=t_acq, dtype=dtype,
                        shape=shape, affine=affine, tr=tr)


def encode_array(data: np.ndarray, *, tr_index: int, t_acq: float, session: str,
                 affine: np.ndarray | None = None, tr: float | None = None,
                 extra: dict | None = None) -> list[bytes | memoryview]:
    """Encode a raw array of any :data:`VOLUME_DTYPES` (e.g. int16 from a scanner bridge).

    The data frame is a zero-copy view when ``data`` is C-contiguous and little-endian.
    ``extra`` adds keys to the header (receivers ignore keys they do not know).
    """
    data = np.asarray(data)
    if data.dtype.name not in VOLUME_DTYPES:
        raise InvalidMessage(f"dtype: {data.dtype} not supported; expected one of "
                             f"{list(VOLUME_DTYPES)}")
    data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    header: dict[str, Any] = dict(extra or {})
    header.update(v=PROTOCOL_VERSION, session=session, tr_index=tr_index, t_acq=t_acq,
                  dtype=data.dtype.name, shape=list(data.shape))
    if affine is not None:
        header["affine"] = np.asarray(affine, dtype=np.float64).tolist()
    if tr is not None:
        header["tr"] = float(tr)
    raw = _dumps(header)
    # Refuse to send what a receiver would reject: a header of plain JSON types is checked
    # as it is; others (numpy scalars) as they came out of the encoder.
    try:
        parse_volume_header(header)
    except InvalidMessage:
        parse_volume_header(json.loads(raw))
    return [VOLUME_TOPIC, raw, memoryview(data.reshape(-1)).cast("B")]


def encode_volume(vol: Volume, session: str | None = None, *,
                  tr: float | None = None) -> list[bytes | memoryview]:
    """Encode a :class:`Volume` as ``[b"volume", header, data]`` (float32, zero-copy).

    ``session`` defaults to ``vol.session``; ``tr`` (seconds) is sent when given.
    """
    return encode_array(vol.data, tr_index=vol.tr_index, t_acq=vol.t_acq,
                        session=vol.session if session is None else session,
                        affine=vol.affine, tr=tr)


def decode_volume_ex(frames: Sequence[Frame], max_bytes: int = DEFAULT_MAX_BYTES,
                     source: str = "") -> tuple[Volume, VolumeHeader]:
    """Like :func:`decode_volume`, also returning the validated header (for ``tr``)."""
    if len(frames) != 3:
        raise InvalidMessage(f"frames: expected 3 (topic, header, data), got {len(frames)}")
    views = [_view(f) for f in frames]
    _check_total(views, max_bytes)
    topic, raw_header, data = views
    if topic != VOLUME_TOPIC:
        raise InvalidMessage(f"topic: expected {VOLUME_TOPIC!r}, got {bytes(topic[:32])!r}")
    hdr = parse_volume_header(_parse_header(raw_header))
    if data.nbytes != hdr.nbytes:
        raise InvalidMessage(
            f"data: {data.nbytes} bytes, but shape {list(hdr.shape)} of {hdr.dtype} needs "
            f"{hdr.nbytes}")
    arr = np.frombuffer(data, dtype=np.dtype(hdr.dtype).newbyteorder("<")).reshape(hdr.shape)
    if arr.dtype != np.float32:  # a no-op for little-endian float32: no copy
        arr = arr.astype(np.float32)
    affine = None if hdr.affine is None else np.asarray(hdr.affine, dtype=np.float64)
    vol = Volume(tr_index=hdr.tr_index, t_acq=hdr.t_acq, data=arr, affine=affine,
                 source=source, session=hdr.session)
    return vol, hdr


def decode_volume(frames: Sequence[Frame], max_bytes: int = DEFAULT_MAX_BYTES,
                  source: str = "") -> Volume:
    """Decode and strictly validate ``[b"volume", header, data]`` into a float32 Volume.

    Raises :class:`InvalidMessage` naming the bad frame, key or value.
    """
    return decode_volume_ex(frames, max_bytes, source)[0]


# --------------------------------------------------------------------------- end of stream


def encode_eos(session: str) -> list[bytes]:
    """The optional end-of-stream marker ``[b"eos", {"v": 1, "session": ...}]``."""
    return [EOS_TOPIC, _dumps({"v": PROTOCOL_VERSION, "session": session})]


def decode_eos(frames: Sequence[Frame]) -> str:
    """Validate an end-of-stream marker and return its session."""
    if len(frames) != 2:
        raise InvalidMessage(f"frames: eos expects 2 (topic, header), got {len(frames)}")
    views = [_view(f) for f in frames]
    if views[0] != EOS_TOPIC:
        raise InvalidMessage(f"topic: expected {EOS_TOPIC!r}, got {bytes(views[0][:32])!r}")
    _check_total(views, 64 * 1024)
    header = _parse_header(views[1])
    _check_version(header)
    return _check_str(header, "session")


# --------------------------------------------------------------------------- outputs


def validate_output_header(topic: str, header: dict) -> None:
    """Check an output header for ``topic``; raises :class:`InvalidMessage` naming the key."""
    if topic not in OUTPUT_TOPICS:
        raise InvalidMessage(f"topic: {topic!r} is not one of {list(OUTPUT_TOPICS)}")
    _check_version(header)
    _check_str(header, "session")
    if topic != "status" or "tr_index" in header:
        _check_index(header, "tr_index")
    _check_finite(header, "t_emit")
    if topic == "caption":
        final = _require(header, "final")
        if not isinstance(final, bool):
            raise InvalidMessage(f"final: expected a boolean, got {final!r}")
        text = _require(header, "text")
        if not isinstance(text, dict):
            raise InvalidMessage(f"text: expected an object with {list(CLIP_LEVELS)}, "
                                 f"got {text!r}")
        missing = [k for k in CLIP_LEVELS if k not in text]
        if missing:
            raise InvalidMessage(f"text: missing level(s) {missing}")
        bad = [k for k in CLIP_LEVELS if not isinstance(text[k], str)]
        if bad:
            raise InvalidMessage(f"text: level(s) {bad} are not strings")
        _check_finite(header, "score")
        _check_finite(header, "latency_ms", nonnegative=True)
    elif topic == "video":
        _check_index(header, "clip_id")
        _check_index(header, "chain_id")
        _check_finite(header, "fps", positive=True)
        shape = _check_shape(header, "shape", (4,))
        if shape[-1] != 3:
            raise InvalidMessage(f"shape: video frames must be [T, H, W, 3], got {list(shape)}")
        dtype = _require(header, "dtype")
        if dtype != VIDEO_DTYPE:
            raise InvalidMessage(f"dtype: video frames must be {VIDEO_DTYPE!r}, got {dtype!r}")


def _check_video_buffers(header: dict, buffers: Sequence[memoryview]) -> None:
    if len(buffers) != 1:
        raise InvalidMessage(f"frames: video expects 1 frame buffer, got {len(buffers)}")
    need = math.prod(header["shape"])
    if buffers[0].nbytes != need:
        raise InvalidMessage(f"data: {buffers[0].nbytes} bytes, but video shape "
                             f"{header['shape']} of uint8 needs {need}")


def encode_output(topic: str, header: dict, *buffers: Any) -> list[bytes | memoryview]:
    """Encode ``[topic, header, *buffers]`` for the daemon's PUB socket.

    Adds ``v`` and validates the header for its topic (what is validated is exactly what goes
    on the wire). Buffers are sent as zero-copy views; arrays must be C-contiguous.
    """
    if not isinstance(header, dict):
        raise InvalidMessage(f"header: expected a dict, got {type(header).__name__}")
    if header.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise InvalidMessage(f"v: header says v={header['v']!r}, this encoder writes "
                             f"v={PROTOCOL_VERSION}")
    parsed = {**header, "v": PROTOCOL_VERSION}
    raw = _dumps(parsed)
    try:
        # A header of plain JSON types (the daemon's) is exactly what the wire carries, so it
        # is validated as it is, without parsing the encoded bytes back.
        validate_output_header(topic, parsed)
    except InvalidMessage:
        # Others (numpy scalars, tuples) are judged by what they became on the wire.
        parsed = json.loads(raw)
        validate_output_header(topic, parsed)
    views = []
    for b in buffers:
        if isinstance(b, np.ndarray) and not b.flags.c_contiguous:
            raise InvalidMessage("buffers: arrays must be C-contiguous")
        views.append(_view(b))
    if topic == "video":
        _check_video_buffers(parsed, views)
    return [topic.encode("ascii"), raw, *views]


def decode_output(frames: Sequence[Frame], max_bytes: int = DEFAULT_MAX_BYTES
                  ) -> tuple[str, dict, list[memoryview]]:
    """Decode and validate ``[topic, header, *buffers]``; buffers come back as memoryviews."""
    if len(frames) < 2:
        raise InvalidMessage(f"frames: expected at least 2 (topic, header), got {len(frames)}")
    views = [_view(f) for f in frames]
    _check_total(views, max_bytes)
    try:
        topic = bytes(views[0]).decode("ascii")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"topic: not ASCII: {bytes(views[0][:32])!r}") from exc
    if topic not in OUTPUT_TOPICS:
        raise InvalidMessage(f"topic: {topic!r} is not one of {list(OUTPUT_TOPICS)}")
    header = _parse_header(views[1])
    validate_output_header(topic, header)
    buffers = views[2:]
    if topic == "video":
        _check_video_buffers(header, buffers)
    return topic, header, buffers


def video_frames(header: dict, buffers: Sequence[memoryview]) -> np.ndarray:
    """The uint8 ``(T, H, W, 3)`` frames of a decoded video message (zero-copy, read-only)."""
    return np.frombuffer(buffers[0], dtype=np.uint8).reshape(header["shape"])
