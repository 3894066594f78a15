"""Shared fixtures: tiny seeded simulated sessions written once per test session."""

from __future__ import annotations

import dataclasses

import pytest

from rtdecode.simulator import DesignConfig, preset, simulate


def tiny_config(seed: int = 0, tr: float = 2.0, n_subjects: int = 1, train_clips: int = 24,
                **noise):
    """A simulation that takes well under a second: 1 subject, a few hundred voxels."""
    cfg = preset("small", seed=seed, n_subjects=n_subjects, tr=tr)
    cfg = dataclasses.replace(cfg, voxel_counts=(300, 380, 250),
                              design=DesignConfig(n_train_runs=1, train_clips_per_run=train_clips,
                                                  n_test_segments=1, test_clips_per_segment=10,
                                                  test_repeats=2))
    if noise:
        cfg = dataclasses.replace(cfg, noise=dataclasses.replace(cfg.noise, **noise))
    return cfg


@pytest.fixture(scope="session")
def small_cfg():
    return preset("small", seed=0)


@pytest.fixture(scope="session")
def small_session(tmp_path_factory, small_cfg):
    """The `small` preset (3 subjects), simulated once for the whole test run."""
    out = tmp_path_factory.mktemp("small")
    simulate(out, small_cfg, progress=False)
    return out
