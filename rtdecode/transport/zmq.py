"""ZeroMQ transport: volumes in (PULL, or SUB), decoder outputs out (XPUB), wire protocol v1.

Message formats are in :mod:`rtdecode.wire`; this module only moves frames.

Input. :class:`ZmqVolumeSource` binds a PULL socket by default and senders
(:class:`ZmqVolumeSink`, a scanner bridge, ``rtdecode replay``) connect PUSH: lossless and
queued, with no slow-joiner loss, because a connecting PUSH queues messages until the peer is
there. ``mode="sub"`` instead connects a SUB socket to an existing PUB (lossy before the
subscription is in place; that is the publisher's problem to handshake).

End of stream (an extension of protocol v1, optional for senders): a message
``[b"eos", {"v": 1, "session": ...}]`` ends a source's iteration cleanly.
:meth:`ZmqVolumeSink.close` sends it by default. A source that expects several senders can
set ``stop_on_eos=False``; a source with a ``session`` filter ignores other sessions' eos.

Output. :class:`ZmqPublisher` binds an XPUB socket so that it sees subscriptions arrive;
:meth:`ZmqPublisher.wait_for_subscribers` blocks until they have, which solves PUB/SUB's
slow-joiner problem (everything published before a subscription is in place is dropped):
construct the subscriber, wait on the publisher, then publish. :class:`ZmqSubscriber`
connects SUB and yields decoded ``(topic, header, buffers)``.

Security. Endpoints default to loopback (``tcp://127.0.0.1``); binding any other address
without CURVE logs a warning. CURVE encryption is optional: the binding side is the CURVE
server (``curve_secret_key``: its Z85 secret key), connecting sides are clients
(``curve_server_key``: the server's Z85 public key, plus an optional own key pair). Keys come
from :func:`zmq.curve_keypair`. TODO: without a ZAP authenticator, a CURVE server accepts any
client that knows its public key (traffic is encrypted and the server authenticated, the
clients are not); an allow-list of client keys via ``zmq.auth`` is not implemented yet.

Robustness (STYLE 9): a malformed message never escapes a source's or subscriber's iterator;
it is counted in ``counters["malformed"]``, its reason kept in ``last_error`` and logged, and
the stream goes on. ``strict=True`` re-raises instead (tests). Message size is bounded twice:
``zmq.MAXMSGSIZE`` (libzmq drops a peer that sends a larger frame) and the decoder's
``max_bytes`` on the whole message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlsplit

import zmq

from ..messages import InvalidMessage, Volume
from ..wire import (
    DEFAULT_MAX_BYTES,
    EOS_TOPIC,
    OUTPUT_TOPICS,
    VOLUME_TOPIC,
    decode_eos,
    decode_output,
    decode_volume_ex,
    encode_eos,
    encode_output,
    encode_volume,
)

log = logging.getLogger(__name__)

DEFAULT_INPUT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_OUTPUT_ENDPOINT = "tcp://127.0.0.1:5556"
_POLL_SLICE_MS = 50  # how often a blocked receiver checks close() and its timeout
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _is_local(endpoint: str) -> bool:
    """True for inproc/ipc and for tcp endpoints on a loopback address."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("inproc", "ipc"):
        return True
    host = parts.netloc.rsplit(":", 1)[0]
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def _setup_curve(sock: zmq.Socket, *, server_role: bool, curve_secret_key: bytes | None,
                 curve_public_key: bytes | None, curve_server_key: bytes | None) -> bool:
    """Configure CURVE on ``sock``; returns whether CURVE is on."""
    if server_role:
        if curve_server_key is not None:
            raise ValueError("curve_server_key is for connecting sides; a binding side is the "
                             "CURVE server and takes curve_secret_key")
        if curve_secret_key is None:
            return False
        if not zmq.has("curve"):
            raise RuntimeError("this libzmq was built without CURVE support")
        sock.curve_server = True
        sock.curve_secretkey = curve_secret_key
        return True
    if curve_server_key is None:
        if curve_secret_key is not None or curve_public_key is not None:
            raise ValueError("a connecting side needs curve_server_key (the server's public "
                             "key) to use CURVE")
        return False
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    if (curve_public_key is None) != (curve_secret_key is None):
        raise ValueError("give both curve_public_key and curve_secret_key, or neither "
                         "(an ephemeral client key pair is then generated)")
    if curve_public_key is None:
        curve_public_key, curve_secret_key = zmq.curve_keypair()
    sock.curve_serverkey = curve_server_key
    sock.curve_publickey = curve_public_key
    sock.curve_secretkey = curve_secret_key
    return True


def _attach(sock: zmq.Socket, endpoint: str, bind: bool, curve: bool) -> str:
    """Bind or connect; returns the actual endpoint (a ``*`` port resolved)."""
    if bind:
        if not _is_local(endpoint) and not curve:
            log.warning("binding %s without CURVE: anyone who can reach it can send or read "
                        "(use a loopback address or CURVE keys)", endpoint)
        sock.bind(endpoint)
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.connect(endpoint)
    return endpoint


def _open_socket(ctx: zmq.Context, kind: int, options: list[tuple[int, int | bytes]],
                 endpoint: str, bind: bool, curve_secret_key: bytes | None,
                 curve_public_key: bytes | None, curve_server_key: bytes | None
                 ) -> tuple[zmq.Socket, str, bool]:
    """A socket with ``options`` set in order, CURVE (optional) and bound or connected;
    closed again if any step fails. Returns (socket, actual endpoint, curve on)."""
    sock = ctx.socket(kind)
    try:
        for opt, value in options:
            sock.setsockopt(opt, value)
        curve = _setup_curve(sock, server_role=bind, curve_secret_key=curve_secret_key,
                             curve_public_key=curve_public_key,
                             curve_server_key=curve_server_key)
        return sock, _attach(sock, endpoint, bind, curve), curve
    except BaseException:
        sock.close(linger=0)
        raise


class _Receiver:
    """Shared receive loop: poll in slices, honour close() and recv_timeout_s, count errors."""

    def __init__(self, sock: zmq.Socket, recv_timeout_s: float | None, strict: bool):
        if recv_timeout_s is not None and not recv_timeout_s > 0:
            raise ValueError(f"recv_timeout_s must be > 0 s or None, got {recv_timeout_s!r}")
        self._sock = sock
        self.recv_timeout_s = recv_timeout_s
        self.strict = strict
        self.counters: Counter[str] = Counter()
        self.last_error: str | None = None
        self._closed = False
        self._iterating = False
        self._lock = threading.Lock()

    def _frames(self) -> Iterator[list[zmq.Frame]]:
        """Yield raw multipart messages until close() or the receive timeout."""
        with self._lock:
            if self._closed:
                return
            self._iterating = True
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        last = time.monotonic()
        try:
            while not self._closed:
                slice_ms = _POLL_SLICE_MS
                if self.recv_timeout_s is not None:
                    left = last + self.recv_timeout_s - time.monotonic()
                    if left <= 0:
                        self.counters["timeouts"] += 1
                        return
                    slice_ms = max(1, min(slice_ms, int(left * 1000) + 1))
                if not poller.poll(slice_ms):
                    continue
                frames = self._sock.recv_multipart(copy=False)
                last = time.monotonic()
                self.counters["received"] += 1
                yield frames
        finally:
            with self._lock:
                self._iterating = False
                if self._closed:
                    self._sock.close(linger=0)

    def _malformed(self, exc: InvalidMessage) -> None:
        self.counters["malformed"] += 1
        self.last_error = str(exc)
        log.warning("%s: dropped a malformed message: %s", type(self).__name__, exc)
        if self.strict:
            raise exc

    def close(self) -> None:
        """Stop iterating; safe to call from another thread (the iterator then closes)."""
        with self._lock:
            self._closed = True
            if not self._iterating:
                self._sock.close(linger=0)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ZmqVolumeSource(_Receiver):
    """Volumes received over ZeroMQ: a :class:`~rtdecode.sources.Source`.

    Parameters
    ----------
    endpoint:
        Where to bind (default PULL) or connect. Defaults to loopback; a ``*`` port
        (``tcp://127.0.0.1:*``) binds a free port, see ``self.endpoint``.
    bind:
        Bind (default for ``mode="pull"``) or connect (default for ``mode="sub"``).
    mode:
        ``"pull"`` (lossless, senders PUSH) or ``"sub"`` (subscribe to an existing PUB).
    max_bytes:
        Largest message accepted, header and data together.
    recv_timeout_s:
        Stop iterating after this long without any message; ``None`` waits until
        :meth:`close` or an end-of-stream marker.
    session:
        Accept only volumes (and eos) of this session; others are counted in
        ``counters["other_session"]`` and skipped.
    strict:
        Raise :class:`~rtdecode.messages.InvalidMessage` out of the iterator instead of
        counting and skipping malformed messages.
    stop_on_eos:
        End iteration at an end-of-stream marker.
    rcvhwm:
        Receive queue bound (messages); PUSH senders block when it and theirs are full.
    curve_secret_key, curve_public_key, curve_server_key:
        Optional CURVE keys (Z85); see the module docstring.
    """

    def __init__(self, endpoint: str = DEFAULT_INPUT_ENDPOINT, *, bind: bool | None = None,
                 mode: str = "pull", max_bytes: int = DEFAULT_MAX_BYTES,
                 recv_timeout_s: float | None = None, session: str | None = None,
                 strict: bool = False, stop_on_eos: bool = True, rcvhwm: int = 1000,
                 curve_secret_key: bytes | None = None, curve_public_key: bytes | None = None,
                 curve_server_key: bytes | None = None,
                 context: zmq.Context | None = None):
        if mode not in ("pull", "sub"):
            raise ValueError(f"mode must be 'pull' or 'sub', got {mode!r}")
        if not max_bytes > 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes!r}")
        bind = (mode == "pull") if bind is None else bind
        ctx = context or zmq.Context.instance()
        options: list[tuple[int, int | bytes]] = [
            (zmq.MAXMSGSIZE, int(max_bytes)), (zmq.RCVHWM, int(rcvhwm)), (zmq.LINGER, 0)]
        if mode == "sub":
            options += [(zmq.SUBSCRIBE, VOLUME_TOPIC), (zmq.SUBSCRIBE, EOS_TOPIC)]
        sock, self.endpoint, curve = _open_socket(
            ctx, zmq.PULL if mode == "pull" else zmq.SUB, options, endpoint, bind,
            curve_secret_key, curve_public_key, curve_server_key)
        super().__init__(sock, recv_timeout_s, strict)
        self.mode, self.max_bytes, self.session = mode, int(max_bytes), session
        self.stop_on_eos = stop_on_eos
        self.curve = curve
        self.tr: float | None = None  # the last ``tr`` a sender announced, if any
        self.eos_received = False

    def __iter__(self) -> Iterator[Volume]:
        source = f"zmq+{self.mode}://{self.endpoint}"
        for frames in self._frames():
            try:
                if frames and frames[0].bytes == EOS_TOPIC:
                    session = decode_eos(frames)
                    if self.session is not None and session != self.session:
                        self.counters["other_session"] += 1
                        continue
                    self.counters["eos"] += 1
                    if self.stop_on_eos:
                        self.eos_received = True
                        return
                    continue
                vol, hdr = decode_volume_ex(frames, self.max_bytes, source)
            except InvalidMessage as exc:
                self._malformed(exc)
                continue
            if self.session is not None and vol.session != self.session:
                self.counters["other_session"] += 1
                continue
            if hdr.tr is not None:
                self.tr = hdr.tr
            self.counters["volumes"] += 1
            yield vol


class ZmqVolumeSink:
    """Sends volumes over ZeroMQ PUSH (connects by default): a
    :class:`~rtdecode.sources.VolumeSink`.

    ``session`` labels every message (``None``: each volume's own ``session``); ``tr`` is
    announced in each header when given. ``immediate=True`` queues only to connected
    receivers, so with ``send_timeout_s`` a missing receiver is a :class:`TimeoutError`
    rather than volumes queued into the void. ``send`` blocks while the queues are full (lossless),
    at most ``send_timeout_s`` if set, then raises :class:`TimeoutError`. ``close`` sends the
    end-of-stream marker and lingers up to ``linger_s`` so queued volumes are delivered.
    """

    def __init__(self, endpoint: str = DEFAULT_INPUT_ENDPOINT, session: str | None = None, *,
                 bind: bool = False, tr: float | None = None,
                 send_timeout_s: float | None = None, linger_s: float = 5.0,
                 sndhwm: int = 1000, curve_server_key: bytes | None = None,
                 curve_public_key: bytes | None = None, curve_secret_key: bytes | None = None,
                 context: zmq.Context | None = None, immediate: bool = False):
        ctx = context or zmq.Context.instance()
        options: list[tuple[int, int | bytes]] = [(zmq.SNDHWM, int(sndhwm))]
        if immediate:  # queue only to completed connections: send waits for a receiver
            options.append((zmq.IMMEDIATE, 1))
        if send_timeout_s is not None:
            options.append((zmq.SNDTIMEO, max(0, int(send_timeout_s * 1000))))
        sock, self.endpoint, curve = _open_socket(ctx, zmq.PUSH, options, endpoint, bind,
                                                  curve_secret_key, curve_public_key,
                                                  curve_server_key)
        self._sock = sock
        self.session, self.tr, self.linger_s = session, tr, linger_s
        self.curve = curve
        self.sent = 0
        self._closed = False

    def _send(self, frames: list) -> None:
        if self._closed:
            raise RuntimeError("ZmqVolumeSink is closed")
        try:
            self._sock.send_multipart(frames, copy=False)
        except zmq.Again as exc:
            raise TimeoutError(f"send to {self.endpoint} timed out (no receiver, or its "
                               "queue is full)") from exc

    def send(self, volume: Volume) -> None:
        """Send one volume (zero-copy: the frozen array's buffer goes on the wire)."""
        self._send(encode_volume(volume, self.session, tr=self.tr))
        self.sent += 1

    def send_frames(self, frames: list) -> None:
        """Send pre-encoded frames as they are (e.g. :func:`rtdecode.wire.encode_array`)."""
        self._send(frames)

    def close(self, send_eos: bool = True) -> None:
        """Send the end-of-stream marker (optional) and close, lingering for delivery."""
        if self._closed:
            return
        try:
            if send_eos:
                self._send(encode_eos(self.session or ""))
        finally:
            self._closed = True
            self._sock.close(linger=int(self.linger_s * 1000))

    def __enter__(self) -> ZmqVolumeSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ZmqPublisher:
    """Publishes decoder outputs on an XPUB socket (binds by default).

    XPUB, rather than PUB, lets :meth:`wait_for_subscribers` see subscriptions arrive, so a
    caller can wait until subscribers are in place before publishing (no slow-joiner loss).
    A slow subscriber does not block the daemon: past ``sndhwm`` queued messages, libzmq
    drops for that subscriber.
    """

    def __init__(self, endpoint: str = DEFAULT_OUTPUT_ENDPOINT, *, bind: bool = True,
                 sndhwm: int = 1000, curve_secret_key: bytes | None = None,
                 curve_public_key: bytes | None = None, curve_server_key: bytes | None = None,
                 context: zmq.Context | None = None):
        ctx = context or zmq.Context.instance()
        options = [(zmq.SNDHWM, int(sndhwm)),
                   (zmq.XPUB_VERBOSE, 1),  # pass every subscribe up, even duplicates
                   (zmq.LINGER, 0)]
        sock, self.endpoint, curve = _open_socket(ctx, zmq.XPUB, options, endpoint, bind,
                                                  curve_secret_key, curve_public_key,
                                                  curve_server_key)
        self._sock = sock
        self.curve = curve
        self.subscriptions: Counter[bytes] = Counter()  # subscribe events per topic prefix
        self.published: Counter[str] = Counter()
        self._closed = False

    def _drain_subscriptions(self, timeout_ms: int) -> None:
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                msg = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscriptions[msg[1:]] += 1
            elif msg[:1] == b"\x00" and self.subscriptions[msg[1:]] > 0:
                self.subscriptions[msg[1:]] -= 1

    def n_subscribers(self, topic: str | None = None) -> int:
        """Subscriptions seen so far that match ``topic`` (any topic when ``None``)."""
        self._drain_subscriptions(0)
        if topic is None:
            return sum(self.subscriptions.values())
        t = topic.encode("ascii")
        return sum(n for prefix, n in self.subscriptions.items() if t.startswith(prefix))

    def wait_for_subscribers(self, n: int = 1, timeout_s: float = 5.0,
                             topic: str | None = None) -> bool:
        """Block until ``n`` subscriptions matching ``topic`` have arrived, or the timeout.

        Returns whether they did. Once this returns True, messages published on ``topic``
        reach those subscribers.
        """
        deadline = time.monotonic() + timeout_s
        while self.n_subscribers(topic) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._drain_subscriptions(max(1, int(left * 1000)))
        return True

    def publish(self, topic: str, header: dict, *buffers) -> None:
        """Validate, encode (:func:`rtdecode.wire.encode_output`) and publish one message."""
        if self._closed:
            raise RuntimeError("ZmqPublisher is closed")
        self._sock.send_multipart(encode_output(topic, header, *buffers), copy=False)
        self.published[topic] += 1

    def close(self, linger_s: float = 1.0) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close(linger=int(linger_s * 1000))

    def __enter__(self) -> ZmqPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ZmqSubscriber(_Receiver):
    """Subscribes to decoder outputs; iterating yields ``(topic, header, buffers)``.

    ``topics`` picks among ``caption``, ``semantics``, ``video``, ``status`` (all by default).
    Malformed messages are counted and skipped (``strict=True`` raises), as in
    :class:`ZmqVolumeSource`.
    """

    def __init__(self, endpoint: str = DEFAULT_OUTPUT_ENDPOINT,
                 topics: tuple[str, ...] | list[str] = OUTPUT_TOPICS, *, bind: bool = False,
                 recv_timeout_s: float | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 strict: bool = False, rcvhwm: int = 1000,
                 curve_server_key: bytes | None = None, curve_public_key: bytes | None = None,
                 curve_secret_key: bytes | None = None, context: zmq.Context | None = None):
        bad = [t for t in topics if t not in OUTPUT_TOPICS]
        if bad or not topics:
            raise ValueError(f"topics: {bad or 'none given'}; choose from {list(OUTPUT_TOPICS)}")
        ctx = context or zmq.Context.instance()
        options: list[tuple[int, int | bytes]] = [
            (zmq.MAXMSGSIZE, int(max_bytes)), (zmq.RCVHWM, int(rcvhwm)), (zmq.LINGER, 0)]
        options += [(zmq.SUBSCRIBE, t.encode("ascii")) for t in topics]
        sock, self.endpoint, curve = _open_socket(ctx, zmq.SUB, options, endpoint, bind,
                                                  curve_secret_key, curve_public_key,
                                                  curve_server_key)
        super().__init__(sock, recv_timeout_s, strict)
        self.topics, self.max_bytes, self.curve = tuple(topics), int(max_bytes), curve

    def __iter__(self) -> Iterator[tuple[str, dict, list[memoryview]]]:
        for frames in self._frames():
            try:
                out = decode_output(frames, self.max_bytes)
            except InvalidMessage as exc:
                self._malformed(exc)
                continue
            self.counters[out[0]] += 1
            yield out
