"""SemMiner's two-stage "rein-then-expand" flow, independent of the captioning backend.

Stage 1 asks a :class:`Captioner` for a basic summary of a clip (the *rein*). The rein is
enforced here, whatever the backend: a summary of more than ``max_basic_words`` (20) words is
cut to its first 20 words, the clip is counted in :attr:`MineResult.truncated` and a warning is
logged; the record carries ``basic_truncated: true``. Truncating (rather than failing) is the
choice because a long-winded MLLM answer is an expected, recoverable event over thousands of
clips, yet it is never passed on silently. ``strict=True`` raises instead.

Stage 2 asks the same captioner for the anchor / motion / holistic descriptions, conditioned on
the frames and on the *enforced* basic summary. Each level must be a non-empty string; anything
else raises :class:`SemMinerError` naming the clip and the level.

Records are written to ``captions.jsonl`` with the simulator's caption schema (``clip_id``,
``basic``, ``anchor``, ``motion``, ``holistic``) plus ``source`` (the backend) and
``basic_truncated``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger("rtdecode.semminer")

ClipId = int | str
LEVELS = ("anchor", "motion", "holistic")
BASIC_MAX_WORDS = 20
CAPTIONS_FILE = "captions.jsonl"


class SemMinerError(ValueError):
    """A clip, captioner output or annotation that SemMiner cannot use; the message says why."""


@runtime_checkable
class Captioner(Protocol):
    """A SemMiner backend.

    ``frames`` is a uint8 ``(n_frames, height, width, 3)`` array, or ``None`` for backends that
    look clips up by id and need no pixels. ``clip_id`` is always given (lookup backends need
    it; an MLLM ignores it).
    """

    name: str

    def summarize(self, frames: np.ndarray | None, *, clip_id: ClipId) -> str:
        """Stage 1: a basic summary of the clip (the rein; SemMiner enforces <= 20 words)."""
        ...

    def describe(self, frames: np.ndarray | None, basic: str, *,
                 clip_id: ClipId) -> dict[str, str]:
        """Stage 2: ``{"anchor", "motion", "holistic"}`` conditioned on frames and ``basic``."""
        ...


@dataclass(frozen=True)
class CaptionRecord:
    """One line of ``captions.jsonl``."""

    clip_id: ClipId
    basic: str
    anchor: str
    motion: str
    holistic: str
    source: str
    basic_truncated: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)


@dataclass
class MineResult:
    """What :func:`mine` produced: the records, the clips whose rein was cut, the file."""

    records: list[CaptionRecord]
    truncated: list[ClipId] = field(default_factory=list)
    path: Path | None = None

    @property
    def n_truncated(self) -> int:
        return len(self.truncated)


def enforce_basic(text: str, max_words: int = BASIC_MAX_WORDS) -> tuple[str, bool]:
    """Whitespace-normalise ``text`` and keep at most ``max_words`` words.

    Returns the summary and whether it was truncated. Words are whitespace-separated tokens.
    """
    words = text.split()
    return " ".join(words[:max_words]), len(words) > max_words


def _check_frames(frames: np.ndarray | None, clip_id: ClipId) -> None:
    if frames is None:
        return
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 \
            or frames.dtype != np.uint8 or frames.shape[0] == 0:
        desc = (f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray)
                else type(frames).__name__)
        raise SemMinerError(f"clip {clip_id}: frames must be uint8 (n_frames, height, width, 3), "
                            f"got {desc}")


def _check_levels(out: object, clip_id: ClipId, source: str) -> dict[str, str]:
    if not isinstance(out, Mapping):
        raise SemMinerError(f"clip {clip_id}: stage 2 ({source}) returned "
                            f"{type(out).__name__}, expected a dict with {', '.join(LEVELS)}")
    for level in LEVELS:
        if level not in out:
            raise SemMinerError(f"clip {clip_id}: stage 2 ({source}) returned no '{level}' level")
        value = out[level]
        if not isinstance(value, str) or not value.strip():
            raise SemMinerError(f"clip {clip_id}: stage 2 ({source}) returned an empty or "
                                f"non-string '{level}' level ({value!r})")
    extra = sorted(set(out) - set(LEVELS))
    if extra:
        raise SemMinerError(f"clip {clip_id}: stage 2 ({source}) returned unexpected keys "
                            f"{extra}; expected only {', '.join(LEVELS)}")
    return {level: " ".join(out[level].split()) for level in LEVELS}


def mine_clip(captioner: Captioner, clip_id: ClipId, frames: np.ndarray | None, *,
              max_basic_words: int = BASIC_MAX_WORDS, strict: bool = False) -> CaptionRecord:
    """Rein-then-expand for one clip; see the module docstring for the rules."""
    source = captioner.name
    _check_frames(frames, clip_id)
    raw = captioner.summarize(frames, clip_id=clip_id)
    if not isinstance(raw, str) or not raw.strip():
        raise SemMinerError(f"clip {clip_id}: stage 1 ({source}) returned an empty or "
                            f"non-string basic summary ({raw!r})")
    basic, cut = enforce_basic(raw, max_basic_words)
    if cut:
        n = len(raw.split())
        if strict:
            raise SemMinerError(f"clip {clip_id}: stage 1 ({source}) basic summary has {n} words "
                                f"(limit {max_basic_words})")
        log.warning("clip %s: basic summary from %s had %d words; truncated to %d",
                    clip_id, source, n, max_basic_words)
    levels = _check_levels(captioner.describe(frames, basic, clip_id=clip_id), clip_id, source)
    return CaptionRecord(clip_id=clip_id, basic=basic, source=source, basic_truncated=cut,
                         **levels)


def _output_path(out: str | os.PathLike) -> Path:
    path = Path(out)
    if path.is_dir() or path.suffix != ".jsonl":
        path = path / CAPTIONS_FILE
    return path


def mine(captioner: Captioner, clips: Iterable[tuple[ClipId, np.ndarray | None]],
         out: str | os.PathLike | None = None, *, max_basic_words: int = BASIC_MAX_WORDS,
         strict: bool = False, progress: bool = True, total: int | None = None) -> MineResult:
    """Caption every clip with ``captioner`` (stage 1, rein, stage 2) and write the records.

    Parameters
    ----------
    clips
        ``(clip_id, frames)`` pairs; ``frames`` may be ``None`` for lookup backends.
        :func:`session_clips` gives them for a simulated session.
    out
        A ``.jsonl`` file, or a directory to hold ``captions.jsonl``; ``None`` writes nothing.
        Lines are streamed to ``<file>.partial`` (kept on failure, so finished clips are not
        lost) and renamed to the final name once every clip has succeeded.
    max_basic_words
        The rein's word limit (20 in SemVideo).
    strict
        Raise on an over-long basic summary instead of truncating and counting it.
    """
    if max_basic_words < 1:
        raise SemMinerError(f"max_basic_words must be >= 1, got {max_basic_words}")
    result = MineResult(records=[])
    seen: set[str] = set()
    fh = None
    if out is not None:
        result.path = _output_path(out)
        result.path.parent.mkdir(parents=True, exist_ok=True)
        partial = result.path.with_name(result.path.name + ".partial")
        fh = partial.open("w", encoding="utf-8")
    try:
        bar = tqdm(clips, total=total, desc=f"semminer ({captioner.name})", unit="clip",
                   disable=not progress)
        for clip_id, frames in bar:
            if str(clip_id) in seen:
                raise SemMinerError(f"clip {clip_id}: given twice")
            seen.add(str(clip_id))
            rec = mine_clip(captioner, clip_id, frames, max_basic_words=max_basic_words,
                            strict=strict)
            if rec.basic_truncated:
                result.truncated.append(clip_id)
            result.records.append(rec)
            if fh is not None:
                fh.write(rec.to_json() + "\n")
                fh.flush()
    finally:
        if fh is not None:
            fh.close()
    if result.path is not None:
        os.replace(partial, result.path)
    if result.truncated:
        log.warning("%d of %d basic summaries from %s exceeded %d words and were truncated",
                    result.n_truncated, len(result.records), captioner.name, max_basic_words)
    return result


def read_captions(path: str | os.PathLike) -> list[dict]:
    """Read a ``captions.jsonl`` file (simulator's or SemMiner's) as a list of dicts."""
    path = Path(path)
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SemMinerError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
    return records


def session_clips(session_dir: str | os.PathLike,
                  split: str | None = None) -> list[tuple[int, np.ndarray]]:
    """``(clip_id, frames)`` for a simulated session's ``stimuli/``, optionally one split.

    Frames are read lazily (memory-mapped), so this is cheap for large sessions.
    """
    sdir = Path(session_dir) / "stimuli"
    frames_path, caps_path = sdir / "frames.npy", sdir / CAPTIONS_FILE
    for p in (frames_path, caps_path):
        if not p.is_file():
            raise SemMinerError(f"{p}: not found (is {session_dir} a simulated session?)")
    frames = np.load(frames_path, mmap_mode="r")
    out = []
    for rec in read_captions(caps_path):
        cid = int(rec["clip_id"])
        if split is not None and rec.get("split") != split:
            continue
        if not 0 <= cid < len(frames):
            raise SemMinerError(f"{caps_path}: clip {cid} has no frames in {frames_path} "
                                f"({len(frames)} clips)")
        out.append((cid, frames[cid]))
    return out
