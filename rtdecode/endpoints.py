"""Endpoint URIs used on the command line, mapped onto transports.

Input (where ``serve`` reads volumes, where ``replay`` sends them):

- ``zmq://HOST:PORT`` — ZeroMQ: ``serve`` binds a PULL socket, ``replay`` connects PUSH
  (protocol v1, lossless and queued; the default, on loopback);
- ``zmq+sub://HOST:PORT`` — ``serve`` subscribes (SUB) to an existing volume publisher;
- ``lsl:NAME`` — Lab Streaming Layer: ``replay`` creates an ``fMRI`` outlet named NAME,
  ``serve`` resolves it.

Output (where ``serve`` publishes and ``subscribe`` listens): ``tcp://HOST:PORT``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_URI = re.compile(r"^(?P<scheme>zmq|zmq\+sub)://(?P<host>[^:/]+):(?P<port>\d+|\*)$")


@dataclass(frozen=True)
class Endpoint:
    kind: str      # "zmq", "zmq+sub" or "lsl"
    address: str   # tcp://HOST:PORT for ZeroMQ, the stream name for LSL

    def __str__(self) -> str:
        if self.kind == "lsl":
            return f"lsl:{self.address}"
        return self.address.replace("tcp://", f"{self.kind}://", 1)


def parse_endpoint(uri: str) -> Endpoint:
    """Parse an input endpoint URI; a bad one is a ValueError naming it and the forms."""
    if uri.startswith("lsl:"):
        name = uri[4:]
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"endpoint {uri!r}: LSL stream name must be non-empty, no spaces")
        return Endpoint("lsl", name)
    m = _URI.match(uri)
    if not m:
        raise ValueError(f"endpoint {uri!r}: expected zmq://HOST:PORT, zmq+sub://HOST:PORT "
                         "or lsl:NAME")
    return Endpoint(m["scheme"], f"tcp://{m['host']}:{m['port']}")


def check_publish(uri: str) -> str:
    if not re.match(r"^(tcp://[^:/]+:(\d+|\*)|ipc://.+|inproc://.+)$", uri):
        raise ValueError(f"publish endpoint {uri!r}: expected tcp://HOST:PORT")
    return uri


def open_source(ep: Endpoint, *, session: str | None = None, recv_timeout_s: float | None = None,
                stop_on_eos: bool = False, max_bytes: int | None = None):
    """The Source for an input endpoint (server side)."""
    if ep.kind == "lsl":
        from .transport.lsl import LslVolumeSource

        return LslVolumeSource(ep.address, session=session, recv_timeout_s=recv_timeout_s)
    from .transport.zmq import ZmqVolumeSource

    kwargs = {"max_bytes": max_bytes} if max_bytes else {}
    return ZmqVolumeSource(ep.address, mode="sub" if ep.kind == "zmq+sub" else "pull",
                           session=session, recv_timeout_s=recv_timeout_s,
                           stop_on_eos=stop_on_eos, **kwargs)


def open_sink(ep: Endpoint, *, n_voxels: int, tr: float, session: str = "",
              shape: tuple[int, ...] | None = None, wait_s: float | None = None):
    """The VolumeSink for an input endpoint (sender side, as a scanner would)."""
    if ep.kind == "lsl":
        from .transport.lsl import LslVolumeSink

        return LslVolumeSink(ep.address, n_voxels, tr=tr, shape=shape, session=session)
    if ep.kind != "zmq":
        raise ValueError(f"endpoint {ep}: replay sends with zmq://HOST:PORT (PUSH) or lsl:NAME")
    from .transport.zmq import ZmqVolumeSink

    # immediate + a send timeout: the first send waits (up to wait_s) for a daemon to be
    # connected, instead of queueing volumes that nobody may ever take.
    return ZmqVolumeSink(ep.address, session=session or None, tr=tr, immediate=True,
                         send_timeout_s=wait_s)
