"""Where volumes come from and where a scanner side sends them.

One :class:`Source` protocol — a closable iterator of :class:`~rtdecode.messages.Volume` —
for every origin: the ZeroMQ and LSL transports (``rtdecode.transport``), file replay and the
live simulator (here). ``rtdecode replay`` is a source feeding a sink (or the daemon), not a
second program.

:class:`Pacer` paces a stream by target timestamps with drift correction: volume *k* is due
at ``start + k * TR / speed`` on the monotonic clock; each wait is computed from that target,
never as ``sleep(TR)``, so lateness does not accumulate.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

from .data import Run
from .messages import Volume


@runtime_checkable
class Source(Protocol):
    """A stream of volumes; iterate to receive, ``close()`` to release resources."""

    def __iter__(self) -> Iterator[Volume]: ...

    def close(self) -> None: ...


@runtime_checkable
class VolumeSink(Protocol):
    """Sends volumes on, as a scanner would (ZeroMQ PUSH, LSL outlet, ...)."""

    def send(self, volume: Volume) -> None: ...

    def close(self) -> None: ...


class Pacer:
    """Waits until each item's target time: ``start + index * period / speed``.

    ``speed=None`` means as fast as possible. ``lateness`` records how late each item was
    released (seconds, >= 0) so replays can report their timing accuracy.
    """

    def __init__(self, period: float, speed: float | None = 1.0,
                 clock=time.monotonic, sleep=time.sleep):
        if not period > 0:
            raise ValueError(f"period must be > 0 s, got {period!r}")
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self.period, self.speed = period, speed
        self._clock, self._sleep = clock, sleep
        self._start: float | None = None
        self.lateness: list[float] = []

    def wait(self, index: int) -> None:
        if self.speed is None:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        target = self._start + index * self.period / self.speed
        if target > now:
            self._sleep(target - now)
            now = self._clock()
        self.lateness.append(max(0.0, now - target))


class RunSource:
    """Replays one run of a session as volumes (masked voxel vectors), optionally paced."""

    def __init__(self, run: Run, speed: float | None = None, session: str = ""):
        self.run, self.speed, self.session = run, speed, session
        self.pacer = Pacer(run.tr, speed)
        self._closed = False

    def __iter__(self) -> Iterator[Volume]:
        for vol in self.run.volumes(session=self.session):
            if self._closed:
                return
            self.pacer.wait(vol.tr_index)
            yield vol

    def close(self) -> None:
        self._closed = True


class ArraySource:
    """Volumes from an in-memory array ``(T, V)`` (the live simulator, tests)."""

    def __init__(self, data, tr: float, speed: float | None = None, session: str = "",
                 source: str = "array"):
        self.data, self.tr, self.session, self.source = data, tr, session, source
        self.pacer = Pacer(tr, speed)
        self._closed = False

    def __iter__(self) -> Iterator[Volume]:
        for k in range(len(self.data)):
            if self._closed:
                return
            self.pacer.wait(k)
            yield Volume(tr_index=k, t_acq=k * self.tr, data=self.data[k],
                         source=self.source, session=self.session)

    def close(self) -> None:
        self._closed = True


def pump(source: Iterable[Volume], sink: VolumeSink) -> int:
    """Send every volume of ``source`` to ``sink``; returns how many were sent."""
    n = 0
    for vol in source:
        sink.send(vol)
        n += 1
    return n
