"""Lookup backends: captions that already exist, found by clip id (frames are not looked at).

- :class:`GroundTruthCaptioner`: the simulator's ground truth (``stimuli/captions.jsonl``).
- :class:`AnnotationCaptioner`: a human or offline annotation file in the CC2017-SE style,
  JSONL or CSV/TSV with a clip id column and ``basic``, ``anchor``, ``motion``, ``holistic``.

Both ignore the ``basic`` summary passed to stage 2: their levels were written beforehand. The
basic summary they return still goes through SemMiner's rein, so an annotation with a 30-word
basic summary is truncated and counted like any other backend's.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from .core import CAPTIONS_FILE, LEVELS, ClipId, SemMinerError

FIELDS = ("basic", *LEVELS)
#: Accepted names of the clip id column / key, first match wins.
ID_FIELDS = ("clip_id", "video_id", "clip", "video", "id")


class _Lookup:
    """Captions by clip id (compared as strings, so ``3`` and ``"3"`` are the same clip)."""

    name = "lookup"

    def __init__(self, captions: dict[str, dict[str, str]], origin: str) -> None:
        self._captions = captions
        self._origin = origin

    def __len__(self) -> int:
        return len(self._captions)

    @property
    def clip_ids(self) -> list[str]:
        return list(self._captions)

    def _get(self, clip_id: ClipId) -> dict[str, str]:
        try:
            return self._captions[str(clip_id)]
        except KeyError:
            raise SemMinerError(f"clip {clip_id}: not in {self._origin}") from None

    def summarize(self, frames: np.ndarray | None, *, clip_id: ClipId) -> str:
        return self._get(clip_id)["basic"]

    def describe(self, frames: np.ndarray | None, basic: str, *,
                 clip_id: ClipId) -> dict[str, str]:
        rec = self._get(clip_id)
        return {level: rec[level] for level in LEVELS}


class GroundTruthCaptioner(_Lookup):
    """The simulator's ground-truth captions for a session directory."""

    name = "ground-truth"

    def __init__(self, session_dir: str | os.PathLike) -> None:
        path = Path(session_dir) / "stimuli" / CAPTIONS_FILE
        if not path.is_file():
            raise SemMinerError(f"{path}: not found (is {session_dir} a simulated session?)")
        super().__init__(_read_jsonl(path, id_key="clip_id"), str(path))


class AnnotationCaptioner(_Lookup):
    """Captions from an annotation file: ``.jsonl``, ``.csv`` or ``.tsv``.

    Each record needs a clip id (one of ``clip_id``, ``video_id``, ``clip``, ``video``, ``id``)
    and non-empty ``basic``, ``anchor``, ``motion`` and ``holistic`` text; other fields are
    ignored. ``columns`` renames fields, e.g. ``{"holistic": "summary"}``. Errors name the
    file, line and field.
    """

    name = "annotation"

    def __init__(self, path: str | os.PathLike, columns: dict[str, str] | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise SemMinerError(f"{path}: annotation file not found")
        columns = dict(columns or {})
        unknown = sorted(set(columns) - {*FIELDS, "clip_id"})
        if unknown:
            raise SemMinerError(f"columns: unknown field(s) {unknown}; "
                                f"known: clip_id, {', '.join(FIELDS)}")
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            caps = _read_jsonl(path, columns.get("clip_id"), columns)
        elif suffix in (".csv", ".tsv", ".tab"):
            caps = _read_table(path, "," if suffix == ".csv" else "\t", columns)
        else:
            raise SemMinerError(f"{path}: unknown annotation format '{suffix}' "
                                "(use .jsonl, .csv or .tsv)")
        if not caps:
            raise SemMinerError(f"{path}: no annotations")
        super().__init__(caps, str(path))
        self.name = f"annotation:{path.name}"


def _record(raw: dict, where: str, id_key: str, columns: dict[str, str],
            seen: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Validate one raw record; ``where`` is ``file:line`` for messages."""
    cid = raw.get(id_key)
    if cid is None or (isinstance(cid, str) and not cid.strip()) or isinstance(cid, bool) \
            or not isinstance(cid, (str, int)):
        raise SemMinerError(f"{where}: field '{id_key}': missing or not a string/integer id "
                            f"({cid!r})")
    cid = str(cid).strip()
    if cid in seen:
        raise SemMinerError(f"{where}: field '{id_key}': clip {cid} already given at {seen[cid]}")
    seen[cid] = where
    out = {}
    for name in FIELDS:
        key = columns.get(name, name)
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            what = "missing" if value is None else f"empty or not text ({value!r})"
            raise SemMinerError(f"{where}: field '{key}': {what}")
        out[name] = " ".join(value.split())
    return cid, out


def _find_id_key(keys: list[str] | set[str], where: str) -> str:
    for k in ID_FIELDS:
        if k in keys:
            return k
    raise SemMinerError(f"{where}: field 'clip_id': no clip id field (expected one of "
                        f"{', '.join(ID_FIELDS)})")


def _read_jsonl(path: Path, id_key: str | None = None,
                columns: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    columns = columns or {}
    caps: dict[str, dict[str, str]] = {}
    seen: dict[str, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SemMinerError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise SemMinerError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        key = id_key or _find_id_key(set(raw), where)
        cid, rec = _record(raw, where, key, columns, seen)
        caps[cid] = rec
    return caps


def _read_table(path: Path, delimiter: str,
                columns: dict[str, str]) -> dict[str, dict[str, str]]:
    caps: dict[str, dict[str, str]] = {}
    seen: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        id_key = columns.get("clip_id") or _find_id_key(header, f"{path}:1")
        for name in (*FIELDS, "clip_id"):
            key = columns.get(name, name) if name != "clip_id" else id_key
            if key not in header:
                raise SemMinerError(f"{path}:1: field '{key}': no such column (header: "
                                    f"{', '.join(header)})")
        for raw in reader:
            where = f"{path}:{reader.line_num}"
            if None in raw:
                raise SemMinerError(f"{where}: more cells than header columns")
            cid, rec = _record(raw, where, id_key, columns, seen)
            caps[cid] = rec
    return caps
