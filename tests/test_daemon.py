"""The daemon in-process: incremental captions, online == offline, faults counted, journal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rtdecode.config import Config
from rtdecode.daemon import Daemon
from rtdecode.data import load_session
from rtdecode.engine import DecoderModel
from rtdecode.journal import Journal, read_journal
from rtdecode.messages import Volume
from rtdecode.preprocess import preprocess_run, window_features
from rtdecode.ridge import train_model
from rtdecode.sources import RunSource


class ListPublisher:
    def __init__(self, delay: float = 0.0):
        self.items, self.delay = [], delay

    def publish(self, topic, header, *buffers):
        if self.delay:
            time.sleep(self.delay)
        self.items.append((topic, header, buffers))

    def topic(self, name):
        return [(h, b) for t, h, b in self.items if t == name]


class ListSource:
    """A source over a fixed list of volumes."""

    def __init__(self, vols):
        self.vols, self.closed = vols, False

    def __iter__(self):
        for v in self.vols:
            if self.closed:
                return
            yield v

    def close(self):
        self.closed = True


@pytest.fixture(scope="module")
def model_and_run(small_session, tmp_path_factory):
    sess = load_session(small_session, "sub-01")
    model = train_model(sess, Config())
    path = model.save(tmp_path_factory.mktemp("model"))
    return DecoderModel.load(path), sess.runs_of("test")[0], sess


def test_every_final_caption_once_in_order_and_provisional_first(model_and_run):
    model, run, _ = model_and_run
    pub = ListPublisher()
    status = Daemon(Config(), model, RunSource(run), pub, session="s").run(timeout=60)
    caps = [h for h, _ in pub.topic("caption")]
    finals = [c["tr_index"] for c in caps if c["final"]]
    n = run.n_trs - 2 - 2 + 1  # clips whose window (lag 2, width 2) lies inside the run
    assert finals == list(range(n))
    first_seen = {}
    for i, c in enumerate(caps):
        first_seen.setdefault(c["tr_index"], (i, c["final"]))
    assert all(not final for _, final in first_seen.values())  # provisional comes first
    assert all(c["n_volumes"] == (2 if c["final"] else 1) for c in caps)
    assert {"anchor", "motion", "holistic"} == set(caps[0]["text"])
    assert status["counters"]["decoded"] == run.n_trs
    assert status["counters"]["malformed"] == 0
    assert "end_to_end" in status["latency"]


def test_online_semantics_equal_offline_training_features(model_and_run):
    """Replaying a run through the daemon gives the features the training path computes."""
    model, run, _ = model_and_run
    pub = ListPublisher()
    Daemon(Config(), model, RunSource(run), pub, session="s").run(timeout=60)
    online = {h["tr_index"]: np.frombuffer(b[0], np.float32)
              for h, b in pub.topic("semantics") if h["final"]}
    feats = preprocess_run(run.data(), run.tr, Config().preprocess)
    stim = np.arange(run.n_trs)
    X, complete = window_features(feats, stim, Config().window)
    offline = model.engine.decode(X)
    got = np.stack([online[k] for k in stim[complete]])
    np.testing.assert_allclose(got, offline, rtol=1e-5, atol=1e-5)


def _vols(run, n=None, session="s"):
    data = run.data()[:n]
    return [Volume(k, k * run.tr, data[k], session=session) for k in range(len(data))]


def test_faults_are_counted_and_the_session_goes_on(model_and_run, tmp_path):
    model, run, _ = model_and_run
    vols = _vols(run, 30)
    bad = [
        vols[0], vols[1], vols[2],
        Volume(3, 6.0, np.zeros(17, np.float32), session="s"),  # wrong voxel count
        vols[3], vols[3],                                        # duplicate
        vols[4], vols[6], vols[5],                               # out of order: 5 is late
        *vols[9:30],                                             # TRs 7, 8 missing
    ]
    pub = ListPublisher()
    journal = Journal(tmp_path / "j.jsonl")
    status = Daemon(Config(), model, ListSource(bad), pub, journal=journal,
                    session="s").run(timeout=60)
    c = status["counters"]
    assert (c["malformed"], c["duplicates"], c["late"], c["missing"]) == (1, 1, 1, 3)
    assert c["decoded"] == 30 - 3
    finals = [h["tr_index"] for h, _ in pub.topic("caption") if h["final"]]
    assert finals == sorted(finals) and len(finals) == len(set(finals))
    assert finals[-1] == 29 - 3  # the session went on to the end
    bridged = [h for h, _ in pub.topic("caption") if h["bridged"]]
    assert bridged and all(h["n_volumes"] == 1 for h in bridged)
    records, torn = read_journal(tmp_path / "j.jsonl")
    assert torn == 0
    reasons = [r.get("reason", "") for r in records if r["kind"] == "volume"]
    assert any("17 voxels" in r for r in reasons) and any("duplicate" in r for r in reasons)
    assert records[-1]["kind"] == "close"


def test_new_session_label_resets_preprocessing(model_and_run):
    model, run, _ = model_and_run
    vols = _vols(run, 12, "a") + _vols(run, 12, "b")
    pub = ListPublisher()
    status = Daemon(Config(), model, ListSource(vols), pub).run(timeout=60)
    assert status["counters"]["duplicates"] == 0 and status["counters"]["late"] == 0
    a = {h["tr_index"]: b for h, b in pub.topic("semantics") if h["session"] == "a"}
    b = {h["tr_index"]: b for h, b in pub.topic("semantics") if h["session"] == "b"}
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_slow_publisher_drops_outputs_never_volumes(model_and_run):
    model, run, _ = model_and_run
    cfg = Config()
    import dataclasses
    cfg = dataclasses.replace(cfg, stream=dataclasses.replace(cfg.stream, publish_queue=4))
    pub = ListPublisher(delay=0.02)
    status = Daemon(cfg, model, RunSource(run), pub, session="s").run(timeout=60)
    c = status["counters"]
    assert c["decoded"] == run.n_trs and c["dropped"] == 0
    assert c["outputs_dropped"] > 0


def test_status_heartbeat_is_published(model_and_run):
    model, run, _ = model_and_run
    import dataclasses
    cfg = Config()
    cfg = dataclasses.replace(cfg, stream=dataclasses.replace(cfg.stream, status_interval_s=0.05))
    pub = ListPublisher()
    Daemon(cfg, model, RunSource(run, speed=20.0), pub, session="s").run(timeout=60)
    beats = [h for h, _ in pub.topic("status")]
    assert beats and {"received", "decoded", "malformed", "dropped", "late",
                      "duplicates"} <= beats[-1]["counters"].keys()
    assert "ingest" in beats[-1]["queues"]


@pytest.mark.timeout(60)
def test_kill_9_leaves_a_journal_with_every_tr_before_the_one_in_flight(model_and_run,
                                                                        tmp_path):
    model, run, _ = model_and_run
    model_dir = tmp_path / "model"
    model.save(model_dir)
    np.save(tmp_path / "data.npy", run.data())
    script = textwrap.dedent(f"""
        import numpy as np
        from rtdecode.config import Config
        from rtdecode.daemon import Daemon
        from rtdecode.engine import DecoderModel
        from rtdecode.journal import Journal
        from rtdecode.sources import ArraySource
        data = np.load({str(tmp_path / 'data.npy')!r})
        model = DecoderModel.load({str(model_dir)!r})
        src = ArraySource(np.concatenate([data] * 20), tr=2.0, speed=100.0, session="k")
        d = Daemon(Config(), model, src, None, journal=Journal({str(tmp_path / 'j.jsonl')!r}))
        print("started", flush=True)
        d.run()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    records, torn = read_journal(tmp_path / "j.jsonl")
    assert torn <= 1
    trs = [r["tr_index"] for r in records if r["kind"] == "volume"]
    assert len(trs) > 10
    assert trs == list(range(len(trs)))  # contiguous: nothing before the in-flight TR lost
    assert records[-1]["kind"] != "close"  # it really died mid-session


def test_slow_renderer_drops_renders_never_volumes(model_and_run):
    """A deliberately slow renderer behind the latest-wins hand-off."""
    from rtdecode.messages import Clip

    model, run, _ = model_and_run
    rendered = []

    def slow_renderer(sem):
        time.sleep(0.2)  # 4 TRs' worth
        rendered.append(sem.tr_index)
        return Clip(clip_id=sem.tr_index, chain_id=0, tr_index=sem.tr_index,
                    frames=np.zeros((4, 8, 8, 3), np.uint8), fps=4.0)

    pub = ListPublisher()
    src = RunSource(run, speed=40.0)  # a TR every 50 ms: the renderer cannot keep up
    status = Daemon(Config(), model, src, pub, session="s", renderer=slow_renderer
                    ).run(timeout=60)
    c = status["counters"]
    assert c["decoded"] == run.n_trs and c["dropped"] == 0
    assert c["renders"] >= 3 and c["renders_dropped"] > 0
    assert c["renders"] + c["renders_dropped"] <= c["finals"]
    videos = [h for h, _ in pub.topic("video")]
    assert [h["tr_index"] for h in videos] == rendered[: len(videos)]
    assert videos[0]["shape"] == [4, 8, 8, 3] and videos[0]["dtype"] == "uint8"
    finals = [h["tr_index"] for h, _ in pub.topic("caption") if h["final"]]
    assert finals == list(range(run.n_trs - 3))  # captions unaffected by the renderer


def test_failing_renderer_is_counted(model_and_run):
    model, run, _ = model_and_run

    def broken(sem):
        raise RuntimeError("GPU fell off")

    status = Daemon(Config(), model, RunSource(run, speed=40.0), ListPublisher(),
                    renderer=broken).run(timeout=60)
    assert status["counters"]["render_errors"] > 0
    assert status["counters"]["decoded"] == run.n_trs


def test_3d_volumes_are_masked(model_and_run):
    model, run, sess = model_and_run
    data = run.data()[:12]
    vols = []
    for k, x in enumerate(data):
        grid = np.zeros(sess.mask.shape, np.float32)
        grid[sess.mask] = x
        vols.append(Volume(k, k * 2.0, grid, session="g"))
    pub3, pubv = ListPublisher(), ListPublisher()
    s3 = Daemon(Config(), model, ListSource(vols), pub3, mask=sess.mask).run(timeout=60)
    Daemon(Config(), model, ListSource(_vols(run, 12, "g")), pubv).run(timeout=60)
    assert s3["counters"]["malformed"] == 0
    assert [h["text"] for h, _ in pub3.topic("caption")] == \
        [h["text"] for h, _ in pubv.topic("caption")]
    no_mask = Daemon(Config(), model, ListSource(vols[:3]), ListPublisher()).run(timeout=60)
    assert no_mask["counters"]["malformed"] == 3


def test_latency_log_keeps_the_last_samples_in_order():
    from rtdecode.daemon import LatencyLog

    log = LatencyLog(maxlen=5)
    assert log.percentiles() == {} and log.samples()["decode"] == []
    for v in range(1, 4):
        log.add("decode", float(v))
    assert log.samples()["decode"] == [1.0, 2.0, 3.0]
    for v in range(4, 13):
        log.add("decode", float(v))
    assert log.samples()["decode"] == [8.0, 9.0, 10.0, 11.0, 12.0]
    p = log.percentiles()["decode"]
    kept = np.array([8.0, 9.0, 10.0, 11.0, 12.0])
    assert p == {"p50_ms": round(float(np.percentile(kept, 50)), 3),
                 "p99_ms": round(float(np.percentile(kept, 99)), 3), "n": 5}


def test_output_queue_is_bounded_and_keeps_order():
    import queue

    from rtdecode.daemon import OutputQueue

    q = OutputQueue(2)
    q.put_nowait("a")
    q.put_nowait("b")
    with pytest.raises(queue.Full):
        q.put_nowait("c")
    q.put("end")  # the end-of-stream marker is never refused
    assert q.qsize() == 3
    assert [q.get() for _ in range(3)] == ["a", "b", "end"]


def test_attribute_decoder_adds_composed_captions(model_and_run):
    """With an attribute decoder every caption also carries the attributes it decodes from
    the same window and the captions worded from them (seeded by the clip's TR, as the render
    worker words its caption); the protocol's own keys are unchanged."""
    from rtdecode.simulator.stimuli import ATTRIBUTE_GROUPS, attribute_slices, caption_attributes

    model, run, _ = model_and_run            # the ridge's targets are the scene attributes
    pub = ListPublisher()
    Daemon(Config(), model, RunSource(run), pub, session="s", attributes=model).run(timeout=60)
    caps = [h for h, _ in pub.topic("caption")]
    sems = {(h["tr_index"], h["final"]): np.frombuffer(b[0], np.float32)
            for h, b in pub.topic("semantics")}
    assert caps and all({"text", "score", "final", "composed", "attributes"} <= set(c)
                        for c in caps)
    for c in caps:
        # the decoder here is the attribute ridge: its semantics are the attribute scores
        scores = sems[(c["tr_index"], c["final"])]
        want = {g: ATTRIBUTE_GROUPS[g][int(scores[sl].argmax())]
                for g, sl in attribute_slices().items()}
        assert c["attributes"] == want and set(want) == set(ATTRIBUTE_GROUPS)
        worded = caption_attributes(want, np.random.default_rng(c["tr_index"]))
        assert c["composed"] == {k: worded[k] for k in ("anchor", "motion", "holistic")}
    plain = ListPublisher()
    Daemon(Config(), model, RunSource(run), plain, session="s").run(timeout=60)
    assert not any({"composed", "attributes"} & set(h) for h, _ in plain.topic("caption"))


def test_attribute_decoder_of_other_windows_or_targets_is_refused(model_and_run):
    from rtdecode.engine import CaptionBank, RidgeEngine

    model, run, _ = model_and_run
    n, dim = model.engine.n_inputs, model.engine.coef.shape[0]
    narrow = DecoderModel(RidgeEngine(np.zeros((dim, n - 1), np.float32),
                                      np.zeros(dim, np.float32)), model.bank, None,
                          dict(model.meta))
    with pytest.raises(ValueError, match=f"takes {n - 1} inputs per window, the decoder {n}"):
        Daemon(Config(), model, RunSource(run), ListPublisher(), attributes=narrow)
    other = DecoderModel(RidgeEngine(np.zeros((3, n), np.float32), np.zeros(3, np.float32)),
                         CaptionBank(np.zeros((1, 3), np.float32), [model.bank.captions[0]]),
                         None, {**model.meta, "targets": "captions"})
    with pytest.raises(ValueError, match="targets 'captions' of width 3"):
        Daemon(Config(), model, RunSource(run), ListPublisher(), attributes=other)
