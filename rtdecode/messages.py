"""Typed messages that flow through the pipeline: one frozen dataclass per thing.

``Volume`` is one TR of fMRI data, the same whether it came live over the network, from a
file, or from the simulator. ``Semantics`` is a decoder's output for one stimulus clip,
``Caption`` its text, ``Clip`` a rendered video clip.

Construction validates: a wrong dtype, shape or non-finite value raises
:class:`InvalidMessage` (a ``ValueError``) with the reason, so a bad message is rejected at
the edge and counted, never passed on. Arrays are stored read-only so a message cannot be
changed after it is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CLIP_LEVELS = ("anchor", "motion", "holistic")


class InvalidMessage(ValueError):
    """A message whose content cannot be used; ``str(exc)`` says what is wrong."""


def _frozen_array(a: np.ndarray) -> np.ndarray:
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _check_finite(name: str, a: np.ndarray) -> None:
    if not np.isfinite(a).all():
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise InvalidMessage(f"{name}: {bad} non-finite value(s) (NaN or inf) of {a.size}")


@dataclass(frozen=True, eq=False)
class Volume:
    """One TR of fMRI data.

    Parameters
    ----------
    tr_index:
        0-based index of the TR within its run.
    t_acq:
        Acquisition time in seconds on the sender's clock.
    data:
        float32, either a 3-D volume ``(x, y, z)`` or a masked voxel vector ``(n_voxels,)``.
    affine:
        Optional 4x4 voxel-to-world matrix (only meaningful for 3-D data).
    source:
        Free-form id of where the volume came from (e.g. ``"zmq://..."``, a file name).
    session:
        Session / run label used to group volumes.
    """

    tr_index: int
    t_acq: float
    data: np.ndarray
    affine: np.ndarray | None = None
    source: str = ""
    session: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.tr_index, bool) or not isinstance(self.tr_index, (int, np.integer)):
            raise InvalidMessage(f"tr_index: expected an integer, got {self.tr_index!r}")
        if self.tr_index < 0:
            raise InvalidMessage(f"tr_index: must be >= 0, got {self.tr_index}")
        object.__setattr__(self, "tr_index", int(self.tr_index))
        if not isinstance(self.t_acq, (int, float, np.floating)) or not np.isfinite(self.t_acq):
            raise InvalidMessage(f"t_acq: expected a finite number, got {self.t_acq!r}")
        object.__setattr__(self, "t_acq", float(self.t_acq))
        data = self.data
        if not isinstance(data, np.ndarray):
            raise InvalidMessage(f"data: expected a numpy array, got {type(data).__name__}")
        if data.dtype != np.float32:
            raise InvalidMessage(f"data: dtype must be float32, got {data.dtype}")
        if data.ndim not in (1, 3):
            raise InvalidMessage(
                f"data: shape must be (x, y, z) or (n_voxels,), got {tuple(data.shape)}")
        if data.size == 0:
            raise InvalidMessage(f"data: empty array of shape {tuple(data.shape)}")
        _check_finite("data", data)
        object.__setattr__(self, "data", _frozen_array(data))
        if self.affine is not None:
            aff = np.asarray(self.affine, dtype=np.float64)
            if aff.shape != (4, 4):
                raise InvalidMessage(f"affine: shape must be (4, 4), got {aff.shape}")
            _check_finite("affine", aff)
            object.__setattr__(self, "affine", _frozen_array(aff))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def n_values(self) -> int:
        return int(self.data.size)


@dataclass(frozen=True, eq=False)
class Semantics:
    """Decoded semantics of one stimulus clip, in the target text-embedding space.

    ``anchor``, ``motion`` and ``holistic`` are float32 arrays of equal shape: ``(dim,)`` or
    ``(tokens, dim)``. ``n_volumes`` says how many of the HRF window's volumes went in;
    ``final`` is true once the window is complete.
    """

    tr_index: int
    anchor: np.ndarray
    motion: np.ndarray
    holistic: np.ndarray
    n_volumes: int = 1
    final: bool = True
    session: str = ""

    def __post_init__(self) -> None:
        if self.tr_index < 0:
            raise InvalidMessage(f"tr_index: must be >= 0, got {self.tr_index}")
        shape = None
        for name in CLIP_LEVELS:
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != np.float32:
                raise InvalidMessage(f"{name}: expected a float32 array, got "
                                     f"{getattr(a, 'dtype', type(a).__name__)}")
            if a.ndim not in (1, 2):
                raise InvalidMessage(f"{name}: shape must be (dim,) or (tokens, dim), "
                                     f"got {a.shape}")
            if shape is not None and a.shape != shape:
                raise InvalidMessage(f"{name}: shape {a.shape} differs from anchor's {shape}")
            shape = a.shape
            _check_finite(name, a)
            object.__setattr__(self, name, _frozen_array(a))
        if self.n_volumes < 1:
            raise InvalidMessage(f"n_volumes: must be >= 1, got {self.n_volumes}")


@dataclass(frozen=True)
class Caption:
    """Text for one stimulus clip at the three SemMiner levels, provisional or final."""

    tr_index: int
    text: dict[str, str]
    score: float
    final: bool
    latency_ms: float = 0.0
    t_emit: float = 0.0
    session: str = ""

    def __post_init__(self) -> None:
        if self.tr_index < 0:
            raise InvalidMessage(f"tr_index: must be >= 0, got {self.tr_index}")
        missing = [k for k in CLIP_LEVELS if k not in self.text]
        if missing:
            raise InvalidMessage(f"text: missing level(s) {missing}; need {list(CLIP_LEVELS)}")
        bad = [k for k, v in self.text.items() if not isinstance(v, str)]
        if bad:
            raise InvalidMessage(f"text: level(s) {bad} are not strings")
        if not np.isfinite(self.score):
            raise InvalidMessage(f"score: must be finite, got {self.score!r}")


@dataclass(frozen=True, eq=False)
class Clip:
    """A rendered video clip: uint8 frames ``(T, H, W, 3)``."""

    clip_id: int
    chain_id: int
    tr_index: int
    frames: np.ndarray
    fps: float
    session: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = self.frames
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8:
            raise InvalidMessage(f"frames: expected a uint8 array, got "
                                 f"{getattr(f, 'dtype', type(f).__name__)}")
        if f.ndim != 4 or f.shape[-1] != 3 or f.shape[0] < 1:
            raise InvalidMessage(f"frames: shape must be (T, H, W, 3), got {f.shape}")
        if not self.fps > 0:
            raise InvalidMessage(f"fps: must be > 0, got {self.fps!r}")
        object.__setattr__(self, "frames", _frozen_array(f))
