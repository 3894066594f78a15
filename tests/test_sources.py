from __future__ import annotations

import numpy as np
import pytest

from rtdecode.data import load_session
from rtdecode.messages import Volume
from rtdecode.sources import ArraySource, Pacer, RunSource, Source, pump


class FakeClock:
    """A monotonic clock that sleeping advances; ``jitter`` adds lateness per sleep."""

    def __init__(self, jitter: float = 0.0):
        self.t, self.jitter, self.sleeps = 100.0, jitter, []

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.sleeps.append(dt)
        self.t += dt + self.jitter


def test_pacer_targets_absolute_times_and_corrects_drift():
    clock = FakeClock(jitter=0.05)  # every sleep overshoots by 50 ms
    p = Pacer(2.0, speed=1.0, clock=clock, sleep=clock.sleep)
    for k in range(10):
        p.wait(k)
    # Overshoot is not carried over: each wait is shortened to hit the next target.
    assert clock.sleeps[0] == pytest.approx(2.0)
    assert all(s == pytest.approx(1.95) for s in clock.sleeps[1:])
    assert clock.t == pytest.approx(100.0 + 9 * 2.0 + 0.05)
    assert max(p.lateness) == pytest.approx(0.05)


def test_pacer_speed_and_max_speed():
    clock = FakeClock()
    p = Pacer(2.0, speed=4.0, clock=clock, sleep=clock.sleep)
    for k in range(5):
        p.wait(k)
    assert clock.t == pytest.approx(100.0 + 4 * 0.5)
    fast = Pacer(2.0, speed=None, clock=clock, sleep=clock.sleep)
    before = len(clock.sleeps)
    for k in range(5):
        fast.wait(k)
    assert len(clock.sleeps) == before
    with pytest.raises(ValueError, match="speed"):
        Pacer(2.0, speed=0)


def test_run_source_replays_a_run(small_session):
    run = load_session(small_session, "sub-03").runs_of("test")[0]
    src = RunSource(run, speed=None, session="s1")
    assert isinstance(src, Source)
    vols = list(src)
    assert [v.tr_index for v in vols] == list(range(run.n_trs))
    np.testing.assert_array_equal(np.stack([v.data for v in vols]), run.data())
    assert vols[5].t_acq == 5 * run.tr and vols[0].session == "s1"


def test_array_source_and_pump():
    data = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    got = []

    class ListSink:
        def send(self, v: Volume) -> None:
            got.append(v)

        def close(self) -> None:
            pass

    assert pump(ArraySource(data, tr=1.0), ListSink()) == 6
    np.testing.assert_array_equal(np.stack([v.data for v in got]), data)
    src = ArraySource(data, tr=1.0)
    it = iter(src)
    next(it)
    src.close()
    assert list(it) == []
