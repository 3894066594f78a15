"""The streaming daemon: ingest → preprocess → decode → captions → publish, on threads.

Stages run on their own threads joined by bounded queues, so ingestion is never blocked by a
slow stage or a slow subscriber:

- **ingest** iterates the :class:`~rtdecode.sources.Source`, journals every volume's
  metadata and queues it (a full queue drops the volume, counts it and journals it);
- **decode** checks each volume (voxel count, duplicate, late, gap), runs the causal
  preprocessing, and for every clip whose HRF window the volume belongs to decodes the window
  so far: a *provisional* caption when the first volume of a clip's window arrives, refined
  as it fills, *final* when complete (a window whose last volume never came is finalised,
  bridged, when a later volume shows the gap);
- **publish** sends outputs (``caption``, ``semantics``, ``video``, ``status``) to the
  publisher, the optional LSL caption outlet and the journal; a publisher that cannot keep up
  drops outputs (counted), never volumes;
- **render** (optional, with a ``renderer``) takes the newest final clip from a latest-wins
  slot and queues the rendered ``video``; a renderer that cannot keep up drops renders
  (``renders_dropped``), never volumes; at the end of the stream the newest clip is still
  rendered and published;
- **status** puts a heartbeat with counters, queue depths and per-stage latency percentiles
  on the publish queue every ``status_interval_s``.

Bad input is counted and skipped; the session goes on (``strict=True`` re-raises, for tests).
A volume from a new ``session`` label starts a new run: the preprocessing state is reset.
"""

from __future__ import annotations

import gc
import json
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .config import Config
from .engine import DecoderModel, caption_text
from .journal import Journal
from .messages import Clip, Semantics, Volume
from .preprocess import OnlinePreprocessor, reduce_window
from .sources import Source

log = logging.getLogger("rtdecode.daemon")

COUNTERS = ("received", "decoded", "malformed", "dropped", "late", "duplicates", "missing",
            "captions", "finals", "outputs_dropped", "renders", "renders_dropped",
            "render_errors")
STAGES = ("queue_wait", "preprocess", "decode", "publish", "end_to_end", "render")
_STOP = object()


@dataclass
class _RunState:
    """Per-session (per-run) state of the decode stage."""

    pre: OnlinePreprocessor
    next_tr: int = 0
    buffer: dict[int, np.ndarray] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)


def _json_items(meta: dict, exclude: dict) -> dict:
    """The items of ``meta`` that JSON can carry, but not the keys of ``exclude`` (a
    renderer's extras never override the protocol's header keys)."""
    out = {}
    for k, v in meta.items():
        if not isinstance(k, str) or k in exclude or k == "v" or k == "t_emit":
            continue
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            log.debug("video header: left out meta[%r] (not JSON)", k)
            continue
        out[k] = v
    return out


class LatencyLog:
    """Bounded per-stage latency samples (ms) with percentiles.

    Each stage keeps its last ``maxlen`` samples in a preallocated ring buffer, so adding is
    one store and the status heartbeat's percentiles work on arrays already in place (no
    conversion of thousands of Python floats while holding the GIL).
    """

    def __init__(self, maxlen: int = 4096):
        self.maxlen = maxlen
        self._buf = {s: np.empty(maxlen, np.float64) for s in STAGES}
        self._n = dict.fromkeys(STAGES, 0)  # samples ever added per stage

    def add(self, stage: str, ms: float) -> None:
        n = self._n[stage]
        self._buf[stage][n % self.maxlen] = ms
        self._n[stage] = n + 1

    def _ordered(self, stage: str) -> np.ndarray:
        n, buf = self._n[stage], self._buf[stage]
        if n <= self.maxlen:
            return buf[:n].copy()
        i = n % self.maxlen
        return np.concatenate((buf[i:], buf[:i]))

    def samples(self) -> dict[str, list[float]]:
        """The raw samples (ms) kept per stage, oldest first (the last ``maxlen``)."""
        return {s: self._ordered(s).tolist() for s in STAGES}

    def percentiles(self) -> dict[str, dict[str, float]]:
        out = {}
        for s in STAGES:
            n = min(self._n[s], self.maxlen)
            if n:
                p50, p99 = np.percentile(self._buf[s][:n], (50, 99))
                out[s] = {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
                          "n": n}
        return out


class OutputQueue:
    """The bounded hand-off to the publish stage (several producers, one consumer).

    Behaves as ``queue.Queue(maxsize)`` does here — ``put_nowait`` refuses an item when
    ``maxsize`` are waiting (the daemon counts it as dropped), ``get`` blocks — but on
    :class:`queue.SimpleQueue` (C) with a plain lock for the bound: a TR queues several
    outputs, and ``queue.Queue``'s Python-level conditions cost microseconds per item on
    each side. ``put`` (end of stream) never refuses: it queues its item after the others.
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # producers check the bound and put as one step

    def put_nowait(self, item) -> None:
        with self._lock:
            if self._q.qsize() >= self.maxsize:
                raise queue.Full
            self._q.put(item)

    def put(self, item) -> None:
        with self._lock:
            self._q.put(item)

    def get(self):
        return self._q.get()

    def qsize(self) -> int:
        return self._q.qsize()


class LatestWins:
    """A one-slot hand-off: ``put`` replaces what is waiting (counting it as dropped), ``get``
    blocks for the newest item. A renderer that falls behind skips clips, never volumes.
    After :meth:`close`, ``get`` still returns the waiting item, then ``_STOP``."""

    def __init__(self):
        self._item = None
        self._has = False
        self._closed = False
        self._cond = threading.Condition()
        self.replaced = 0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def put(self, item) -> None:
        with self._cond:
            if self._has:
                self.replaced += 1
            self._item, self._has = item, True
            self._cond.notify()

    def get(self, timeout: float | None = None):
        with self._cond:
            if not self._cond.wait_for(lambda: self._has or self._closed, timeout):
                raise queue.Empty
            if not self._has:
                return _STOP
            item, self._item, self._has = self._item, None, False
            return item

    def pending(self) -> int:
        return int(self._has)


class Daemon:
    """Decode a stream of volumes into published captions; see the module docstring.

    ``renderer``, when given, is called on its own thread as ``renderer(semantics)`` with the
    newest final :class:`~rtdecode.messages.Semantics` — or, if it has a truthy
    ``takes_window`` attribute (e.g. :class:`~rtdecode.render.worker.RenderWorker`), as
    ``renderer(semantics, window)`` with the float32 voxel window the engine decoded — and
    returns a :class:`~rtdecode.messages.Clip`, published on the ``video`` topic with its
    ``render_ms`` and the JSON-serialisable items of ``Clip.meta``; the hand-off is
    latest-wins, so a slow renderer drops renders (``renders_dropped``), never volumes.

    ``caption_outlet`` (e.g. :class:`~rtdecode.transport.lsl.LslCaptionOutlet`) gets every
    caption header through ``push(header)``; when that returns the JSON text it sent, the
    journal writes that text instead of encoding the header again.

    ``attributes``, when given, is an attribute decoder (a ridge of ``rtdecode train ridge``,
    e.g. the zoo's ``attributes/``) on the same windows: every caption header then also
    carries the scene ``attributes`` it decodes and the ``composed`` captions worded from
    them (anchor / motion / holistic, the wording seeded by the clip's TR, as the render
    worker words the caption it renders from) — protocol v1 extension keys; ``text`` stays
    the caption bank's nearest caption.
    """

    def __init__(self, cfg: Config, model: DecoderModel, source: Source, publisher=None, *,
                 journal: Journal | None = None, caption_outlet=None,
                 mask: np.ndarray | None = None, session: str = "", strict: bool = False,
                 renderer=None, attributes: DecoderModel | None = None):
        self.attributes, self._compose = attributes, None
        if attributes is not None:
            from .render.captioner import (
                check_attribute_decoder,
                compose_captions,
                decode_attributes,
            )

            check_attribute_decoder(attributes, model.engine.n_inputs)
            self._compose = (decode_attributes, compose_captions)
        self.cfg, self.model, self.source = cfg, model, source
        self.publisher, self.journal, self.caption_outlet = publisher, journal, caption_outlet
        self.mask, self.default_session, self.strict = mask, session, strict
        self.renderer = renderer
        self._render_slot = LatestWins()
        self.n_voxels = int(model.meta["trained_on"]["n_voxels"])
        self.lag, self.width = cfg.window.lag_trs, cfg.window.width_trs
        self.stride = cfg.stream.clip_stride_trs
        self.tr = float(model.meta["trained_on"].get("tr", cfg.data.tr))
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.latency = LatencyLog()
        self._in: queue.Queue = queue.Queue(maxsize=cfg.stream.ingest_queue)
        self._out = OutputQueue(cfg.stream.publish_queue)
        self._runs: dict[str, _RunState] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self.t_start = time.time()
        self._old_switch: float | None = None
        self._blas_limit = None
        self._gc_frozen = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Daemon:
        # Process-wide settings: the daemon is the process's job. Restored at shutdown.
        if self.cfg.stream.switch_interval_ms > 0:
            self._old_switch = sys.getswitchinterval()
            sys.setswitchinterval(self.cfg.stream.switch_interval_ms / 1000.0)
        if self.cfg.stream.blas_threads > 0:
            from threadpoolctl import threadpool_limits

            self._blas_limit = threadpool_limits(self.cfg.stream.blas_threads, user_api="blas")
        # What exists before the session (modules, the model, the caption bank) is frozen out
        # of the cyclic GC, so a collection during the session walks only the session's own
        # young objects: no multi-millisecond pause on a TR's path.
        gc.collect()
        gc.freeze()
        self._gc_frozen = True
        stages = [("ingest", self._ingest), ("decode", self._decode_loop),
                  ("publish", self._publish_loop), ("status", self._status_loop)]
        if self.renderer is not None:
            stages.append(("render", self._render_loop))
        for name, fn in stages:
            t = threading.Thread(target=self._guard(fn), name=f"rtdecode-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def run(self, timeout: float | None = None) -> dict:
        """Start, wait until the source is exhausted (or :meth:`stop`), shut down cleanly."""
        self.start()
        self.join(timeout)
        return self.shutdown()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads[:3]:  # ingest, decode, publish finish in that order
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Ask every stage to finish (e.g. on SIGINT/SIGTERM)."""
        self._stop.set()
        try:
            self.source.close()
        except Exception:  # closing a source that already ended
            log.debug("source close failed", exc_info=True)

    def shutdown(self) -> dict:
        self.stop()
        for t in self._threads:
            t.join(5.0)
        status = self.status()
        if self._old_switch is not None:
            sys.setswitchinterval(self._old_switch)
            self._old_switch = None
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None
        if self._gc_frozen:
            gc.unfreeze()
            self._gc_frozen = False
        if self.journal is not None:
            self.journal.write({"kind": "summary", **status})
            self.journal.close()
        if self._errors and self.strict:
            raise self._errors[0]
        return status

    def _guard(self, fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # a stage crash must not pass silently
                log.exception("stage %s failed", fn.__name__)
                self._errors.append(exc)
                self._stop.set()
                self._render_slot.close()
                for q in (self._in, self._out):
                    try:
                        q.put_nowait(_STOP)
                    except queue.Full:
                        pass
        return run

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    # ------------------------------------------------------------------ ingest

    def _ingest(self) -> None:
        for vol in self.source:
            t_recv = time.perf_counter()
            self._count("received")
            session = vol.session or self.default_session
            try:
                if self.cfg.stream.on_full == "block":
                    self._in.put((vol, t_recv))
                else:
                    self._in.put_nowait((vol, t_recv))
                status = "ok"
            except queue.Full:
                self._count("dropped")
                status = "dropped"
                log.warning("decode stage behind: dropped TR %d of %s", vol.tr_index, session)
            if self.journal is not None:
                self.journal.volume(session, vol.tr_index, vol.t_acq, time.time(), status,
                                    shape=list(vol.shape))
            if self._stop.is_set():
                break
        self._in.put(_STOP)

    # ------------------------------------------------------------------ decode

    def _reject(self, vol: Volume, counter: str, reason: str) -> None:
        self._count(counter)
        log.warning("TR %d: %s", vol.tr_index, reason)
        if self.journal is not None:
            self.journal.volume(vol.session or self.default_session, vol.tr_index, vol.t_acq,
                                time.time(), counter, reason)
        if self.strict and counter == "malformed":
            raise ValueError(reason)

    def _voxels(self, vol: Volume) -> np.ndarray | None:
        data = vol.data
        if data.ndim == 3:
            if self.mask is None:
                self._reject(vol, "malformed", f"3-D volume {data.shape} but no brain mask "
                             "is configured")
                return None
            if data.shape != self.mask.shape:
                self._reject(vol, "malformed", f"volume shape {data.shape} does not match the "
                             f"mask's {self.mask.shape}")
                return None
            data = data[self.mask]
        if data.shape[0] != self.n_voxels:
            self._reject(vol, "malformed", f"{data.shape[0]} voxels, the model expects "
                         f"{self.n_voxels}")
            return None
        return data

    def _decode_loop(self) -> None:
        tr = self.tr
        while True:
            item = self._in.get()
            if item is _STOP:
                break
            vol, t_recv = item
            t0 = time.perf_counter()
            self.latency.add("queue_wait", (t0 - t_recv) * 1e3)
            x = self._voxels(vol)
            if x is None:
                continue
            session = vol.session or self.default_session
            st = self._runs.get(session)
            if st is None:
                st = self._runs[session] = _RunState(
                    OnlinePreprocessor(self.n_voxels, tr, self.cfg.preprocess))
            k = vol.tr_index
            if k in st.seen:
                self._reject(vol, "duplicates", f"duplicate TR {k} of session {session!r}")
                continue
            if k < st.next_tr:
                self._reject(vol, "late", f"TR {k} arrived after TR {st.next_tr - 1}; "
                             "dropped (preprocessing is causal)")
                continue
            if k > st.next_tr:
                gap = k - st.next_tr
                self._count("missing", gap)
                log.warning("session %r: %d TR(s) missing before TR %d", session, gap, k)
                # Windows whose last volume was lost: finalise them, bridged, now.
                self._emit_clips(session, st, [(end - self.lag - self.width + 1, True)
                                               for end in range(st.next_tr, k)], t_recv, k)
            st.seen.add(k)
            st.next_tr = k + 1
            z = st.pre.update(x)
            st.buffer[k] = z
            t1 = time.perf_counter()
            self.latency.add("preprocess", (t1 - t0) * 1e3)
            self._count("decoded")
            # Every clip whose window holds TR k: provisional until its window is complete.
            self._emit_clips(session, st, [(k - self.lag - w, w == self.width - 1)
                                           for w in range(self.width)], t_recv, k)
            for old in [i for i in st.buffer if i < k - self.lag - 2 * self.width]:
                del st.buffer[old]
        if self.renderer is not None:
            self._render_slot.close()  # the render stage finishes its clip, then ends output
        else:
            self._out.put(_STOP)

    def _window_trs(self, st: _RunState, clip_tr: int) -> list[int]:
        """The volumes of a clip's window received so far (none for a TR that starts no
        clip)."""
        if clip_tr < 0 or clip_tr % self.stride:
            return []
        start = clip_tr + self.lag
        return [i for i in range(start, start + self.width) if i in st.buffer]

    def _windows(self, st: _RunState, found: list[tuple[int, bool, list[int]]]) -> np.ndarray:
        """The decoder inputs of ``found`` [(clip TR, final, window TRs)], one row each,
        written straight into one fresh batch (its rows are handed on to the renderer)."""
        buf = st.buffer
        if self.cfg.window.reduce == "mean":
            batch = np.empty((len(found), self.n_voxels), np.float32)
            for row, (_, _, have) in zip(batch, found):
                np.copyto(row, buf[have[0]])
                for i in have[1:]:
                    row += buf[i]
                if len(have) > 1:
                    row *= np.float32(1.0 / len(have))
        else:  # concat: volumes still to come count as zeros (the z-scored mean)
            batch = np.zeros((len(found), self.width, self.n_voxels), np.float32)
            for rows, (clip_tr, _, have) in zip(batch, found):
                for i in have:
                    rows[i - clip_tr - self.lag] = buf[i]
            batch = reduce_window(batch, self.cfg.window)
        if self.model.voxels is not None:
            batch = batch[:, self.model.voxels]
        return batch

    def _emit_clips(self, session: str, st: _RunState, clips: list[tuple[int, bool]],
                    t_recv: float, trigger: int) -> None:
        """Decode the windows of ``clips`` [(clip TR, final)] in one batch and queue the
        captions (then their semantics)."""
        t0 = time.perf_counter()
        found = []
        for clip_tr, final in clips:
            have = self._window_trs(st, clip_tr)
            if have:
                found.append((clip_tr, final, have))
        if not found:
            return
        batch = self._windows(st, found)
        pred = self.model.engine.decode(batch)
        best = self.model.bank.nearest(pred)
        extras: list[dict] = [{}] * len(found)
        if self._compose is not None:
            decode_attributes, compose_captions = self._compose
            caps = compose_captions(decode_attributes(self.attributes, batch),
                                    [clip_tr for clip_tr, _, _ in found])
            extras = [{"composed": caption_text(c), "attributes": c["attributes"]}
                      for c in caps]
        t1 = time.perf_counter()
        ms = (t1 - t0) * 1e3
        self.latency.add("decode", ms)
        tr = self.tr
        with self._lock:
            self.counters["captions"] += len(found)
            self.counters["finals"] += sum(1 for _, final, _ in found if final)
        for (clip_tr, final, have), ((cap, score),), extra in zip(found, best, extras):
            n = len(have)
            self._queue_out("caption", {
                "session": session, "tr_index": int(clip_tr), "final": bool(final),
                "t_clip": round(clip_tr * tr, 3), "text": caption_text(cap),
                "basic": cap.get("basic", ""), "match_clip_id": cap.get("clip_id"),
                "score": round(score, 4), "n_volumes": n,
                "bridged": bool(final and n < self.width), "trigger_tr": int(trigger),
                "decode_ms": round(ms, 3), "latency_ms": round((t1 - t_recv) * 1e3, 3),
                **extra}, t_recv=t_recv)
        for (clip_tr, final, have), p, x in zip(found, pred, batch):
            n = len(have)
            if final and self.renderer is not None:
                # Single-target engines (ridge) carry the same vector at all three levels.
                self._render_slot.put((Semantics(clip_tr, p, p, p, n_volumes=n, final=True,
                                                 session=session),
                                       np.asarray(x, np.float32), t_recv))
            self._queue_out("semantics", {
                "session": session, "tr_index": int(clip_tr), "final": bool(final),
                "n_volumes": n, "dtype": "float32", "shape": [int(p.shape[0])]},
                p.astype(np.float32, copy=False).tobytes())

    def _queue_out(self, topic: str, header: dict, *buffers, t_recv: float | None = None):
        try:
            self._out.put_nowait((topic, header, buffers, t_recv))
        except queue.Full:
            self._count("outputs_dropped")

    # ------------------------------------------------------------------ publish

    def _publish_loop(self) -> None:
        while True:
            item = self._out.get()
            if item is _STOP:
                break
            topic, header, buffers, t_recv = item
            t0 = time.perf_counter()
            header = {"v": 1, **header, "t_emit": time.time()}
            if self.publisher is not None and self._wanted(topic):
                self.publisher.publish(topic, header, *buffers)
            sent = None  # the caption's JSON as the LSL outlet sent it: the journal reuses it
            if topic == "caption" and self.caption_outlet is not None:
                sent = self.caption_outlet.push(header)
            if self.journal is not None and topic != "semantics":
                self.journal.output(topic, header,
                                    sent if isinstance(sent, str) else None)
            t1 = time.perf_counter()
            self.latency.add("publish", (t1 - t0) * 1e3)
            if t_recv is not None:
                self.latency.add("end_to_end", (t1 - t_recv) * 1e3)

    def _render_loop(self) -> None:
        takes_window = bool(getattr(self.renderer, "takes_window", False))
        while True:
            try:
                item = self._render_slot.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _STOP:  # decoding ended: the newest clip was rendered, output ends
                break
            sem, window, t_recv = item
            t0 = time.perf_counter()
            try:
                clip = self.renderer(sem, window) if takes_window else self.renderer(sem)
                if not isinstance(clip, Clip):
                    raise TypeError(f"renderer returned {type(clip).__name__}, not a Clip")
            except Exception as exc:  # a failed render loses that clip, nothing else
                self._count("render_errors")
                log.warning("render of TR %d failed: %s", sem.tr_index, exc)
                if self.strict:
                    raise
                continue
            ms = (time.perf_counter() - t0) * 1e3
            self.latency.add("render", ms)
            self._count("renders")
            f = clip.frames
            header = {
                "session": sem.session, "tr_index": int(sem.tr_index),
                "clip_id": int(clip.clip_id), "chain_id": int(clip.chain_id),
                "fps": float(clip.fps), "shape": list(f.shape), "dtype": "uint8",
                "render_ms": round(ms, 3)}
            self._queue_out("video", {**_json_items(clip.meta, exclude=header), **header},
                            np.ascontiguousarray(f).tobytes(), t_recv=None)
        self._out.put(_STOP)

    def _wanted(self, topic: str) -> bool:
        """Skip encoding a topic nobody subscribes to (PUB would drop it anyway)."""
        count = getattr(self.publisher, "n_subscribers", None)
        return count is None or count(topic) > 0

    # ------------------------------------------------------------------ status

    def status(self) -> dict:
        with self._lock:
            counters = dict(self.counters)
        # Messages the transport rejected (garbage, NaN data, bad headers) count as malformed.
        counters["renders_dropped"] = self._render_slot.replaced
        transport = dict(getattr(self.source, "counters", {}) or {})
        counters["malformed"] += int(transport.get("malformed", 0))
        return {"session": self.default_session,
                "uptime_s": round(time.time() - self.t_start, 3),
                "counters": counters, "transport": transport,
                "queues": {"ingest": self._in.qsize(), "publish": self._out.qsize(),
                           "render": self._render_slot.pending()},
                "latency": self.latency.percentiles()}

    def _status_loop(self) -> None:
        while not self._stop.wait(self.cfg.stream.status_interval_s):
            if not any(t.is_alive() for t in self._threads[:3]):
                return
            self._queue_out("status", self.status())
