"""Simulator configuration and its presets (``small`` for tests, ``study`` ~ CC2017 size)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .brain import SubjectConfig
from .noise import NoiseConfig
from .stimuli import StimulusConfig

#: Version of the simulator's generative model; recorded in every session and checkpoint.
SIMULATOR_VERSION = "1"


@dataclass(frozen=True)
class DesignConfig:
    """Run structure. Training clips are unique; test segments are shown ``test_repeats`` times."""

    n_train_runs: int
    train_clips_per_run: int
    n_test_segments: int
    test_clips_per_segment: int
    test_repeats: int
    rest_s: float = 8.0  # fixation before and after the clips of every run


@dataclass(frozen=True)
class SimulatorConfig:
    preset: str
    seed: int
    tr: float
    voxel_counts: tuple[int, ...]
    n_subjects: int
    design: DesignConfig
    stimulus: StimulusConfig = field(default_factory=StimulusConfig)
    subject: SubjectConfig = field(default_factory=lambda: SubjectConfig(n_voxels=1000))
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    def voxel_count(self, i: int) -> int:
        """Voxel count of subject ``i`` (cycled from the list, grown 7 % per cycle)."""
        base = self.voxel_counts[i % len(self.voxel_counts)]
        return int(round(base * (1.07 ** (i // len(self.voxel_counts)))))

    def subject_config(self, i: int) -> SubjectConfig:
        return dataclasses.replace(self.subject, n_voxels=self.voxel_count(i))


PRESETS = ("small", "study")


def preset(name: str, *, seed: int = 0, n_subjects: int = 3, tr: float = 2.0) -> SimulatorConfig:
    """The named preset. ``tr`` 2.0 is CC2017-like, 1.0 HCP-like (AR(1) rho scaled to match)."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r}: must be one of {list(PRESETS)}")
    if tr not in (1.0, 2.0):
        raise ValueError(f"tr {tr!r}: must be 1.0 or 2.0 seconds")
    if n_subjects < 1:
        raise ValueError(f"n_subjects {n_subjects!r}: must be >= 1")
    if seed < 0:
        raise ValueError(f"seed {seed!r}: must be >= 0")
    # AR(1) as a continuous process: rho(TR) = exp(-TR / tau), tau ~ 1.9 s.
    noise = NoiseConfig(rho=0.35 if tr == 2.0 else 0.59)
    if name == "small":
        design = DesignConfig(n_train_runs=4, train_clips_per_run=60, n_test_segments=2,
                              test_clips_per_segment=30, test_repeats=4)
        counts: tuple[int, ...] = (900, 1200, 700)
    else:
        # ~4000 training TRs; 5 test segments x 10 repeats (segments of 60 clips, shorter
        # than CC2017's 8 min, to keep 10 repeats affordable on 2 cores).
        design = DesignConfig(n_train_runs=16, train_clips_per_run=240, n_test_segments=5,
                              test_clips_per_segment=60, test_repeats=10)
        counts = (13447, 14828, 9114)  # NeuroClips' per-subject voxel counts on CC2017
    return SimulatorConfig(preset=name, seed=seed, tr=tr, voxel_counts=counts,
                           n_subjects=n_subjects, design=design, noise=noise)
