"""Lab Streaming Layer transport: volumes in as an ``"fMRI"`` stream, captions out as markers.

Wire protocol v1, LSL input: stream type ``"fMRI"``, ``float32``, one sample per TR, nominal
rate 1/TR; channel 0 carries ``tr_index`` (exact in float32 below 2**24), channels 1..N the
voxel values in C order. The stream's ``desc`` holds::

    <protocol_version>1</protocol_version>
    <channel0>tr_index</channel0>
    <shape>64 64 30</shape>          (whitespace-separated ints; [n_voxels] for a vector)
    <affine>m00 m01 ... m33</affine> (16 numbers, row-major; omitted when unknown)
    <tr>2.0</tr>                     (seconds)
    <session>sub-01_run-1</session>

Output: a ``"Markers"`` string stream (default name ``rtdecode-captions``) carrying one JSON
caption header per sample, so LabRecorder/XDF records captions beside physiology.

Timestamps. The sink stamps each sample with the volume's acquisition time on the LSL clock
(``pylsl.local_clock()``), see :class:`LslVolumeSink`. The source opens its inlet with
``proc_clocksync``, so received timestamps are already on the *receiver's* LSL clock and
``local_clock() - volume.t_acq`` is the end-to-end latency even across machines. It does not
use ``proc_dejitter``: dejittering fits a regular sampling grid to the timestamps, which would
hide real acquisition jitter and bend around dropped TRs — the opposite of what a latency budget
needs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pylsl

from ..messages import InvalidMessage, Volume

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
STREAM_TYPE = "fMRI"
CAPTION_STREAM = "rtdecode-captions"
CAPTION_TYPE = "Markers"
MAX_TR_INDEX = 2**24  # largest count float32 holds exactly (exclusive bound)

ClockMode = Literal["map", "lsl", "send"]


def _check_name(name: str) -> str:
    # The name goes into an XPath predicate for resolving; a quote would break it.
    if not isinstance(name, str) or not name or "'" in name:
        raise ValueError(f"LSL stream name must be a non-empty string without quotes, "
                         f"got {name!r}")
    return name


def _resolve(name: str, stream_type: str, timeout_s: float) -> pylsl.StreamInfo:
    """The newest stream called ``name`` of ``stream_type``; a clear error if none appears."""
    _check_name(name)
    found = pylsl.resolve_bypred(f"name='{name}' and type='{stream_type}'", 1, timeout_s)
    if not found:
        raise TimeoutError(f"no LSL stream named {name!r} of type {stream_type!r} found "
                           f"within {timeout_s:g} s (is the sender running and on this network?)")
    if len(found) > 1:
        log.warning("%d LSL streams named %r of type %r; using the newest", len(found), name,
                    stream_type)
    return max(found, key=lambda s: s.created_at())


#: Samples an inlet can hold before LSL drops the oldest. liblsl sizes the buffer in
#: *seconds* of the nominal rate (360 s = 180 TRs at TR 2 s), which a max-speed replay
#: overruns; we size it in samples instead.
BUFFER_SAMPLES = 8192


def _open_inlet(info: pylsl.StreamInfo, timeout_s: float, clock_sync: bool,
                buffer_samples: int = BUFFER_SAMPLES,
                ) -> tuple[pylsl.StreamInlet, pylsl.StreamInfo]:
    """Connect an inlet, fetch the full info (with ``desc``) and open the data feed.

    Opening before returning is our handshake: samples pushed after this returns are
    delivered, none are lost to a late join.
    """
    flags = pylsl.proc_clocksync if clock_sync else pylsl.proc_none
    rate = info.nominal_srate()
    # max_buflen: seconds at a nominal rate, hundreds of samples without one.
    buflen = int(np.ceil(buffer_samples / rate)) if rate > 0 else int(np.ceil(buffer_samples / 100))
    inlet = pylsl.StreamInlet(info, max_buflen=max(buflen, 1), max_chunklen=1,
                              processing_flags=flags)
    full = inlet.info(timeout_s)  # resolve results carry no desc; the inlet's info does
    inlet.open_stream(timeout_s)
    if clock_sync:
        # The first clock offset estimate takes ~0.6 s; pay it now, not on the first TR.
        try:
            inlet.time_correction(timeout_s)
        except TimeoutError:
            log.warning("LSL stream %r: no clock offset estimate within %g s; timestamps "
                        "may be uncorrected at first", info.name(), timeout_s)
    return inlet, full


def _desc_text(info: pylsl.StreamInfo, key: str) -> str:
    return info.desc().child_value(key).strip()


class LslVolumeSink:
    """Sends volumes as an LSL ``"fMRI"`` stream (wire protocol v1); a :class:`VolumeSink`.

    Parameters
    ----------
    name:
        LSL stream name receivers resolve.
    n_voxels:
        Values per volume; the stream has ``n_voxels + 1`` channels (channel 0: ``tr_index``).
    tr:
        Repetition time in seconds; the nominal rate is ``1 / tr``.
    shape:
        ``(x, y, z)`` or ``(n_voxels,)``; default ``(n_voxels,)``.
    affine:
        Optional 4x4 voxel-to-world matrix, written to ``desc`` as 16 numbers.
    session:
        Session label written to ``desc``.
    source_id:
        LSL source id (lets inlets recover after a restart); default ``"rtdecode:<name>"``.
    clock:
        How a volume's ``t_acq`` becomes its LSL timestamp. ``"map"`` (default): ``t_acq`` is
        on some sender clock (scanner time, seconds from run start); the offset to
        ``local_clock()`` is fixed at the first volume (and again whenever ``t_acq`` goes
        back, i.e. a new run), so the spacing of acquisitions is kept, and the stamp is capped
        at "now" (a replay faster than real time degrades to send time instead of stamping the
        future). ``"lsl"``: ``t_acq`` already is ``pylsl.local_clock()`` time. ``"send"``:
        stamp with the time of sending.
    """

    def __init__(self, name: str, n_voxels: int, *, tr: float,
                 shape: Sequence[int] | None = None, affine: Any = None, session: str = "",
                 source_id: str | None = None, clock: ClockMode = "map"):
        _check_name(name)
        if isinstance(n_voxels, bool) or not isinstance(n_voxels, (int, np.integer)) \
                or n_voxels < 1:
            raise ValueError(f"n_voxels must be a positive integer, got {n_voxels!r}")
        if not (isinstance(tr, (int, float)) and math.isfinite(tr) and tr > 0):
            raise ValueError(f"tr must be a finite number of seconds > 0, got {tr!r}")
        shape = (int(n_voxels),) if shape is None else tuple(int(s) for s in shape)
        if len(shape) not in (1, 3) or math.prod(shape) != n_voxels:
            raise ValueError(f"shape {shape} must be (x, y, z) or (n_voxels,) with "
                             f"{n_voxels} values in all")
        if affine is not None:
            affine = np.asarray(affine, dtype=np.float64)
            if affine.shape != (4, 4) or not np.isfinite(affine).all():
                raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
        if clock not in ("map", "lsl", "send"):
            raise ValueError(f"clock must be 'map', 'lsl' or 'send', got {clock!r}")
        self.name, self.n_voxels, self.tr, self.shape = name, int(n_voxels), float(tr), shape
        self.affine, self.session, self.clock = affine, session, clock
        info = pylsl.StreamInfo(name, STREAM_TYPE, self.n_voxels + 1, 1.0 / self.tr,
                                pylsl.cf_float32, source_id or f"rtdecode:{name}")
        desc = info.desc()
        desc.append_child_value("protocol_version", str(PROTOCOL_VERSION))
        desc.append_child_value("channel0", "tr_index")
        desc.append_child_value("shape", " ".join(str(s) for s in shape))
        if affine is not None:
            desc.append_child_value("affine", " ".join(repr(float(v)) for v in affine.ravel()))
        desc.append_child_value("tr", repr(self.tr))
        desc.append_child_value("session", session)
        # max_buffered is in seconds of the nominal rate: size it in samples (see
        # BUFFER_SAMPLES) so a max-speed replay is not cut short at the sender.
        self._outlet: pylsl.StreamOutlet | None = pylsl.StreamOutlet(
            info, chunk_size=1, max_buffered=int(np.ceil(BUFFER_SAMPLES * self.tr)))
        self._buf = np.zeros((1, self.n_voxels + 1), dtype=np.float32)  # reused per send
        self._offset: float | None = None
        self._last_t_acq = -math.inf

    def wait_for_consumers(self, timeout_s: float) -> bool:
        """Block until an inlet is connected (or ``timeout_s`` passes); True if one is."""
        return bool(self._outlet is not None and self._outlet.wait_for_consumers(timeout_s))

    def have_consumers(self) -> bool:
        """Whether any inlet is connected now."""
        return bool(self._outlet is not None and self._outlet.have_consumers())

    def _timestamp(self, t_acq: float) -> float:
        now = pylsl.local_clock()
        if self.clock == "send":
            return now
        if self.clock == "lsl":
            return t_acq
        if self._offset is None or t_acq < self._last_t_acq:
            self._offset = now - t_acq
        self._last_t_acq = t_acq
        return min(t_acq + self._offset, now)

    def send(self, volume: Volume) -> None:
        """Push one volume as one sample; raises ``ValueError`` if it does not fit the stream."""
        if self._outlet is None:
            raise RuntimeError(f"LSL sink {self.name!r} is closed")
        data = volume.data
        if data.size != self.n_voxels:
            raise ValueError(f"LSL sink {self.name!r}: expected {self.n_voxels} voxels per "
                             f"volume, got {data.size} (shape {tuple(data.shape)})")
        if data.ndim == 3 and len(self.shape) == 3 and tuple(data.shape) != self.shape:
            raise ValueError(f"LSL sink {self.name!r}: expected volume shape {self.shape}, "
                             f"got {tuple(data.shape)}")
        if volume.tr_index >= MAX_TR_INDEX:
            raise ValueError(f"tr_index {volume.tr_index} >= 2**24 cannot be sent exactly in "
                             f"a float32 channel; start a new run (tr_index from 0)")
        self._buf[0, 0] = volume.tr_index
        self._buf[0, 1:] = data.reshape(-1)  # C order
        # push_chunk hands liblsl the whole buffer; push_sample copies element by element.
        self._outlet.push_chunk(self._buf, self._timestamp(volume.t_acq))

    def close(self) -> None:
        """Destroy the outlet; connected inlets stop receiving."""
        self._outlet = None  # liblsl destroys the outlet when pylsl's object is collected


class LslVolumeSource:
    """Receives volumes from an LSL ``"fMRI"`` stream (wire protocol v1); a :class:`Source`.

    Resolving and connecting happen in the constructor (errors there are loud: no stream,
    wrong format, a ``desc`` that contradicts the channel count). While iterating, a sample
    that does not make a valid :class:`Volume` (NaN voxels, a bad ``tr_index``) is counted in
    ``counters["malformed"]``, its reason kept in ``last_error``, logged and skipped;
    ``strict=True`` raises instead. ``counters["gaps"]`` counts TRs missing between received
    ones.

    Iteration ends when :meth:`close` is called (from any thread; noticed within ``poll_s``)
    or after ``recv_timeout_s`` without a sample (``None``: wait forever).
    ``volume.t_acq`` is the sample's LSL timestamp, on this machine's ``pylsl.local_clock()``
    when ``clock_sync`` is on. ``session=None`` takes the label from the stream's ``desc``.
    """

    def __init__(self, name: str, *, resolve_timeout_s: float = 5.0,
                 recv_timeout_s: float | None = None, session: str | None = None,
                 clock_sync: bool = True, strict: bool = False, poll_s: float = 0.1):
        self.name = _check_name(name)
        self.recv_timeout_s, self.strict, self.poll_s = recv_timeout_s, strict, poll_s
        self.counters = {"received": 0, "malformed": 0, "gaps": 0}
        self.last_error: str | None = None
        info = _resolve(name, STREAM_TYPE, resolve_timeout_s)
        if info.channel_format() != pylsl.cf_float32:
            raise ValueError(f"LSL stream {name!r}: channel format must be float32 "
                             f"(wire protocol v1), got format code {info.channel_format()}")
        if info.channel_count() < 2:
            raise ValueError(f"LSL stream {name!r}: need tr_index + voxel channels, got "
                             f"{info.channel_count()} channel(s)")
        inlet, full = _open_inlet(info, resolve_timeout_s, clock_sync)
        self.n_voxels = full.channel_count() - 1
        self._read_desc(full)
        self.session = session if session is not None else _desc_text(full, "session")
        self._inlet: pylsl.StreamInlet | None = inlet
        self._buf = np.zeros((1, full.channel_count()), dtype=np.float32)
        self._closed = False
        self._iterating = False
        self._last_index: int | None = None

    def _read_desc(self, info: pylsl.StreamInfo) -> None:
        where = f"LSL stream {self.name!r} desc"
        version = _desc_text(info, "protocol_version")
        if version and version != str(PROTOCOL_VERSION):
            raise ValueError(f"{where}: protocol_version {version!r}, this reader speaks "
                             f"{PROTOCOL_VERSION}")
        try:
            shape_s = _desc_text(info, "shape")
            shape = tuple(int(s) for s in shape_s.split()) if shape_s else (self.n_voxels,)
            affine_s = _desc_text(info, "affine")
            affine = (np.array([float(v) for v in affine_s.split()]).reshape(4, 4)
                      if affine_s else None)
            tr_s = _desc_text(info, "tr")
            tr = float(tr_s) if tr_s else None
        except ValueError as exc:
            raise ValueError(f"{where}: unreadable metadata ({exc})") from exc
        if affine is not None and not np.isfinite(affine).all():
            raise ValueError(f"{where}: affine has non-finite values")
        if len(shape) not in (1, 3) or math.prod(shape) != self.n_voxels:
            raise ValueError(f"{where}: shape {shape} does not hold the stream's "
                             f"{self.n_voxels} voxel channels")
        self.shape: tuple[int, ...] = shape
        self.affine: np.ndarray | None = affine
        self.tr: float | None = tr

    def _volume(self, timestamp: float) -> Volume:
        idx = float(self._buf[0, 0])
        if not (math.isfinite(idx) and 0 <= idx < MAX_TR_INDEX and idx == int(idx)):
            raise InvalidMessage(f"tr_index channel: expected an integer in [0, 2**24), "
                                 f"got {idx!r}")
        data = self._buf[0, 1:].reshape(self.shape)
        volume = Volume(tr_index=int(idx), t_acq=timestamp, data=data, affine=self.affine,
                        source=f"lsl:{self.name}", session=self.session)
        # The volume keeps this sample's buffer (no copy of its voxels); the next sample is
        # pulled into a fresh one.
        self._buf = np.empty_like(self._buf)
        return volume

    def __iter__(self) -> Iterator[Volume]:
        if self._iterating:
            raise RuntimeError(f"LSL source {self.name!r} is already being iterated")
        self._iterating = True
        last_rx = time.monotonic()
        try:
            while not self._closed:
                wait = self.poll_s
                if self.recv_timeout_s is not None:
                    left = self.recv_timeout_s - (time.monotonic() - last_rx)
                    if left <= 0:
                        return
                    wait = min(wait, left)
                stamps = self._pull(wait)
                if not stamps:
                    continue
                last_rx = time.monotonic()
                try:
                    volume = self._volume(stamps[0])
                except InvalidMessage as exc:
                    self.counters["malformed"] += 1
                    self.last_error = str(exc)
                    log.warning("LSL stream %r: skipped a malformed sample: %s", self.name, exc)
                    if self.strict:
                        raise
                    continue
                self.counters["received"] += 1
                if self._last_index is not None and volume.tr_index > self._last_index + 1:
                    self.counters["gaps"] += volume.tr_index - self._last_index - 1
                self._last_index = volume.tr_index
                yield volume
        finally:
            self._iterating = False

    def _pull(self, timeout_s: float) -> list[float]:
        # The inlet is only referenced for the call, never across a ``yield``, so close()
        # disconnects even while a caller holds a suspended iterator.
        inlet = self._inlet
        if inlet is None:
            return []
        return inlet.pull_chunk(timeout=timeout_s, max_samples=1, dest_obj=self._buf)[1]

    def close(self) -> None:
        """Stop iterating (within ``poll_s``) and disconnect."""
        self._closed = True
        self._inlet = None  # liblsl disconnects when the last reference goes


class LslCaptionOutlet:
    """Publishes caption headers as JSON strings on an LSL ``"Markers"`` stream."""

    def __init__(self, name: str = CAPTION_STREAM, source_id: str | None = None,
                 session: str = ""):
        _check_name(name)
        self.name = name
        info = pylsl.StreamInfo(name, CAPTION_TYPE, 1, pylsl.IRREGULAR_RATE, pylsl.cf_string,
                                source_id or f"rtdecode:{name}")
        desc = info.desc()
        desc.append_child_value("protocol_version", str(PROTOCOL_VERSION))
        desc.append_child_value("content", "caption header, JSON")
        desc.append_child_value("session", session)
        self._outlet: pylsl.StreamOutlet | None = pylsl.StreamOutlet(info)

    def wait_for_consumers(self, timeout_s: float) -> bool:
        """Block until an inlet is connected (or ``timeout_s`` passes); True if one is."""
        return bool(self._outlet is not None and self._outlet.wait_for_consumers(timeout_s))

    def push(self, caption_header: dict, timestamp: float | None = None) -> str:
        """Send one caption header as one marker; returns the JSON sent.

        ``timestamp`` is on the LSL clock (default: now).
        """
        if self._outlet is None:
            raise RuntimeError(f"LSL caption outlet {self.name!r} is closed")
        if not isinstance(caption_header, dict):
            raise TypeError(f"caption header must be a dict, got "
                            f"{type(caption_header).__name__}")
        text = json.dumps(caption_header, separators=(",", ":"), allow_nan=False)
        self._outlet.push_sample([text], pylsl.local_clock() if timestamp is None else timestamp)
        return text

    def close(self) -> None:
        self._outlet = None


class LslCaptionInlet:
    """Reads caption headers from a ``"Markers"`` stream (tests, ``rtdecode subscribe``).

    Iterating yields ``(header, timestamp)`` until :meth:`close` or ``recv_timeout_s`` without
    a marker; markers that are not a JSON object are counted in ``counters["malformed"]`` and
    skipped.
    """

    def __init__(self, name: str = CAPTION_STREAM, *, resolve_timeout_s: float = 5.0,
                 recv_timeout_s: float | None = None, clock_sync: bool = True,
                 poll_s: float = 0.1):
        self.name = _check_name(name)
        self.recv_timeout_s, self.poll_s = recv_timeout_s, poll_s
        self.counters = {"received": 0, "malformed": 0}
        self.last_error: str | None = None
        info = _resolve(name, CAPTION_TYPE, resolve_timeout_s)
        if info.channel_format() != pylsl.cf_string or info.channel_count() != 1:
            raise ValueError(f"LSL stream {name!r}: expected 1 string channel, got "
                             f"{info.channel_count()} channel(s) of format code "
                             f"{info.channel_format()}")
        self._inlet: pylsl.StreamInlet | None = _open_inlet(info, resolve_timeout_s,
                                                            clock_sync)[0]
        self._closed = False

    def pull(self, timeout_s: float = 0.0) -> tuple[dict, float] | None:
        """The next caption header and its timestamp, or None if none came within timeout."""
        inlet = self._inlet
        if inlet is None:
            return None
        sample, stamp = inlet.pull_sample(timeout=timeout_s)
        if sample is None:
            return None
        try:
            header = json.loads(sample[0])
            if not isinstance(header, dict):
                raise ValueError(f"expected a JSON object, got {type(header).__name__}")
        except ValueError as exc:
            self.counters["malformed"] += 1
            self.last_error = f"caption marker: {exc}"
            log.warning("LSL stream %r: skipped a malformed caption marker: %s", self.name, exc)
            return None
        self.counters["received"] += 1
        return header, stamp

    def __iter__(self) -> Iterator[tuple[dict, float]]:
        last_rx = time.monotonic()
        while not self._closed:
            wait = self.poll_s
            if self.recv_timeout_s is not None:
                left = self.recv_timeout_s - (time.monotonic() - last_rx)
                if left <= 0:
                    return
                wait = min(wait, left)
            before = self.counters["malformed"]
            item = self.pull(wait)
            if item is not None or self.counters["malformed"] != before:
                last_rx = time.monotonic()
            if item is not None:
                yield item

    def close(self) -> None:
        self._closed = True
        self._inlet = None
