"""The session journal: every received volume's metadata and every output, as it happens.

One JSON object per line, appended and flushed line by line, so a crash (even ``kill -9``)
loses at most the record being written. Records have a ``kind``: ``"volume"`` (session,
tr_index, t_acq, t_recv, status: ok / malformed / duplicate / late / dropped, reason) or
``"output"`` (topic and the published header). :func:`read_journal` tolerates a torn last
line and says so.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path


class Journal:
    """Append-only JSON-lines journal, safe to write from several threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8", buffering=1)  # line-buffered
        self._lock = threading.Lock()
        self.write({"kind": "open", "t": time.time()})

    def write(self, record: dict) -> None:
        self._append(_ENCODER.encode(record) + "\n")

    def _append(self, line: str) -> None:
        with self._lock:
            if self._fh.closed:
                return
            self._fh.write(line)

    def volume(self, session: str, tr_index: int | None, t_acq: float | None, t_recv: float,
               status: str, reason: str | None = None, **extra) -> None:
        rec = {"kind": "volume", "session": session, "tr_index": tr_index, "t_acq": t_acq,
               "t_recv": t_recv, "status": status, **extra}
        if reason:
            rec["reason"] = reason
        self.write(rec)

    def output(self, topic: str, header: dict, header_json: str | None = None) -> None:
        """Journal a published output. ``header_json``, when given, must be ``header`` as
        this journal encodes it (compact separators, ASCII, e.g. what
        :meth:`~rtdecode.transport.lsl.LslCaptionOutlet.push` sent): it is used as it is
        rather than encoding the header a second time."""
        if header_json is None:
            self.write({"kind": "output", "topic": topic, "header": header})
        else:
            self._append(f'{{"kind":"output","topic":{_ENCODER.encode(topic)},'
                         f'"header":{header_json}}}\n')

    def close(self) -> None:
        self.write({"kind": "close", "t": time.time()})
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _jsonable(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# Built once (json.dumps with options builds an encoder per call; a journal writes per TR).
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_jsonable)


def read_journal(path: str | Path) -> tuple[list[dict], int]:
    """All complete records of a journal and the number of torn (unparseable) lines."""
    records, torn = [], 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    return records, torn


def iter_outputs(records: list[dict], topic: str | None = None) -> Iterator[dict]:
    for r in records:
        if r.get("kind") == "output" and (topic is None or r.get("topic") == topic):
            yield r
