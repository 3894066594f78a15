"""The main job, ``rtdecode demo``: the shipped toy zoo decoding a simulated scan, live.

The steps, each a function here (the CLI only parses options and prints):

1. :func:`ensure_session` — the session the zoo was trained on (``configs/demo.toml``: the
   ``study`` preset, seed 0, ``sub-01``), of which only the replayed test run is simulated
   (``simulate(..., runs=[("test", 1)])``: stimuli of every clip, the brain, and that run,
   each file identical to the full simulation's), or reused when already there;
2. :func:`load_decoder` — the zoo's SAD run by ``[engine] backend`` (torch eager in the
   demo's config: no export step on a fresh clone), answering from a caption bank of the
   training clips' captions encoded by the zoo's CLIP; checkpoints are checked against the
   session's provenance first;
3. :func:`load_renderer` — the render worker (decoded semantics and latents → CVR →
   fusion) when the zoo has a
   ``unet/``; otherwise captions only, with the reason;
4. :func:`live_replay` — the run replayed TR by TR, paced, over real ZeroMQ sockets on
   loopback: a PUSH sink → the :class:`~rtdecode.daemon.Daemon`'s PULL source → its PUB
   publisher → a SUB subscriber, each on its own thread in this process; final captions go
   to a callback as they arrive, beside what was shown;
5. :func:`write_demo_video` — ground truth | reconstruction | caption, clip after clip, as an
   MP4; clips whose render the live renderer dropped are rendered afterwards by the same
   worker (within a time budget) or marked;
6. :func:`summarize` — caption accuracy, latency, renders, where the video is.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import Config
from .daemon import Daemon
from .data import DataError, Run, Session
from .engine import DecoderModel
from .sources import RunSource
from .transport.zmq import ZmqPublisher, ZmqSubscriber, ZmqVolumeSink, ZmqVolumeSource

#: What the demo says when the zoo cannot render (the summary and the CLI print it).
NO_RENDERER = "no renderer in the zoo (unet/ missing): video off"

Echo = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# ----------------------------------------------------------------------------- 1. session


def session_has_run(root: Path, subject: str, task: str, run: int) -> bool:
    """``root`` holds the stimuli and ``subject``'s mask and ``task`` run ``run``."""
    stem = f"{subject}_task-{task}_run-{run:02d}"
    need = [root / "stimuli" / "captions.jsonl", root / "stimuli" / "frames.npy",
            root / subject / "anat" / f"{subject}_desc-brain_mask.nii",
            root / subject / "func" / f"{stem}_bold.nii",
            root / subject / "func" / f"{stem}_events.tsv"]
    return all(p.is_file() for p in need)


def ensure_session(cfg: Config, root: Path, subject: str = "sub-01", run: int = 1, *,
                   progress: bool = False, echo: Echo = _quiet) -> bool:
    """Make sure ``root`` holds ``subject``'s test run ``run``: use it if it is there (a
    session of another simulation too — the checkpoints' provenance check decides whether
    the zoo may decode it), or simulate only test run ``run`` of the config's
    ``[simulate]`` session into an empty or absent ``root``. Returns True when it simulated.
    A directory holding anything else is an error, never overwritten."""
    from .simulator import preset as make_preset
    from .simulator import simulate, subject_label
    from .simulator.session import config_dict

    sim = make_preset(cfg.simulate.preset, seed=cfg.simulate.seed,
                      n_subjects=cfg.simulate.n_subjects, tr=cfg.simulate.tr)
    if session_has_run(root, subject, "test", run):
        try:
            ours = json.loads((root / "simulation.json").read_text()).get("config") \
                == config_dict(sim)
        except (OSError, json.JSONDecodeError):
            ours = False
        echo(f"reusing {root} ({subject} test run {run}"
             + (f" of the {sim.preset} preset, seed {sim.seed})" if ours else
                "; not the config's [simulate] session)"))
        return False
    if subject not in [subject_label(i) for i in range(sim.n_subjects)]:
        raise DataError(f"subject {subject!r}: the config's simulation ([simulate] "
                        f"n_subjects = {sim.n_subjects}) has no such subject")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root}: exists but holds no {subject} test run {run}; remove it or "
                        "pass another --data (the demo never overwrites other data)")
    echo(f"simulating {subject}'s test run {run} of the {sim.preset} preset (seed {sim.seed}) "
         f"into {root}: stimuli and brain as in the full session, only this run ...")
    t0 = time.perf_counter()
    simulate(root, sim, progress=progress, runs=[("test", run)])
    echo(f"  simulated in {time.perf_counter() - t0:.1f} s")
    return True


# ----------------------------------------------------------------------------- 2. decoder


@dataclass
class Decoding:
    """The live decoder and what scoring its captions needs."""

    model: DecoderModel
    targets: object              # CaptionTargets over the training and the test clips
    bank_size: int
    describe: str


def _checkpoint_meta(path: Path) -> dict:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg}: missing (is {path} a checkpoint?)")
    return json.loads(cfg.read_text())


def load_decoder(cfg: Config, zoo: Path, session: Session, run: Run) -> Decoding:
    """The zoo's SAD for ``session.subject`` via ``cfg.engine``, with a caption bank of the
    training clips' captions (and every test clip encoded too, for identification)."""
    from .backends import load_neural_decoder
    from .engine import check_provenance, provenance
    from .models.evaluate import CaptionTargets, caption_bank
    from .zoo.clip import load_toy_clip

    meta = _checkpoint_meta(zoo / "sad")
    prov = provenance(session, cfg)
    for name in ("sad", "mad"):
        if (zoo / name).is_dir():
            check_provenance(_checkpoint_meta(zoo / name), session.subject, prov)
    sad = meta["sad"]
    if session.subject not in sad["subjects"]:
        raise ValueError(f"{zoo / 'sad'}: knows subjects {sorted(sad['subjects'])}, not "
                         f"{session.subject!r}")
    clip_model = load_toy_clip(zoo / "clip")
    if clip_model.token_width != int(sad["token_dim"]):
        raise ValueError(f"{zoo / 'clip'}: CLIP token width {clip_model.token_width}, SAD "
                         f"decodes {sad['token_dim']} (trained against another CLIP?)")
    shown = {int(c) for c in run.clip_ids}
    clips = {c: r for c, r in session.clips.items()
             if r.get("split") in ("train", "test") or c in shown}
    targets = CaptionTargets(clips, clip_model, int(sad["n_tokens"]), tuple(sad["levels"]))
    bank = caption_bank(targets, clips)
    model = load_neural_decoder(zoo / "sad", cfg.engine, session.subject, bank=bank)
    m = model.meta
    return Decoding(model, targets, len(bank.captions),
                    f"SAD {m['subject']} ({m['steps']} Refineformer steps) via {m['backend']}; "
                    f"caption bank: {len(bank.captions):,} training captions")


# ----------------------------------------------------------------------------- 3. renderer


def load_renderer(zoo: Path, subject: str, *, steps: int = 4,
                  fusion_threshold: float | None = None, threads: int | None = 1,
                  semantics: str = "auto", latents: str = "auto"):
    """``(RenderWorker, description)`` from the zoo, or ``(None, reason)`` when it cannot
    render (no ``unet/``). ``fusion_threshold`` None: the zoo's calibrated one
    (``fusion.json``), else 0.8 (``serve --render``'s default)."""
    if not (zoo / "unet").is_dir():
        return None, NO_RENDERER
    from .render.cvr import CVRSettings
    from .render.session import fusion_threshold as calibrated
    from .render.worker import RenderWorker

    thr = calibrated(zoo, 0.8) if fusion_threshold is None else fusion_threshold
    worker = RenderWorker.from_zoo(zoo, subject, settings=CVRSettings(steps=steps),
                                   fusion_threshold=thr, threads=threads, semantics=semantics,
                                   latents=latents)
    cond = "captions from decoded attributes" if worker.captioner else "SAD's semantics"
    lat = "the layout sketch" if worker.sketch else "MAD" if worker.mad else "no latents"
    first = "attribute decoder" if worker.sketch else "SAD"
    return worker, (f"render worker: {first} -> CVR on {cond} and {lat} "
                    f"({steps} steps) -> fusion (threshold {thr:g}), {worker.frames} frames "
                    "per clip")


# ----------------------------------------------------------------------------- 4. live


@dataclass
class LiveResult:
    finals: dict[int, dict]      # tr_index -> final caption header
    semantics: dict[int, np.ndarray]  # tr_index -> final decoded (pooled) semantics
    videos: dict[int, dict]      # tr_index -> {"frames": uint8 (T, H, W, 3), "header": ...}
    status: dict                 # the daemon's final status
    truth: dict[int, dict]       # tr_index -> captions.jsonl record of the clip shown
    n_expected: int              # final captions a complete run gives
    label: str                   # the session label on the wire
    wall_s: float
    pacing_late_ms: list[float] = field(default_factory=list)
    latency_samples: dict[str, list[float]] = field(default_factory=dict)  # stage -> ms


def live_replay(session: Session, run: Run, model: DecoderModel, cfg: Config,
                speed: float | None = None, *, renderer=None, journal=None,
                on_final: Callable[[dict, dict | None], None] | None = None,
                attributes: DecoderModel | None = None) -> LiveResult:
    """Replay ``run`` through a daemon over loopback ZeroMQ (PUSH → PULL → daemon → PUB →
    SUB); collect final captions, their semantics and, with ``renderer``, the video clips.
    ``attributes``: the daemon's attribute decoder (captions then carry ``composed``).

    ``speed``: multiple of real time (None: as fast as possible). ``on_final(header,
    truth)`` is called on the subscriber's thread for each final caption as it arrives
    (``truth``: the shown clip's record, None for fixation TRs)."""
    truth = {int(k): session.clips[int(c)] for k, c in zip(run.stim_trs, run.clip_ids)
             if int(c) in session.clips}
    label = f"{session.subject}_task-{run.task}_run-{run.run:02d}"
    n_expected = run.n_trs - cfg.window.lag_trs - cfg.window.width_trs + 1
    topics = ("caption", "semantics") + (("video",) if renderer is not None else ())
    source = ZmqVolumeSource("tcp://127.0.0.1:*", recv_timeout_s=60.0)
    pub = ZmqPublisher("tcp://127.0.0.1:*")
    sub = ZmqSubscriber(pub.endpoint, topics=topics)
    if not pub.wait_for_subscribers(1, 10.0):
        raise RuntimeError("the demo's subscriber did not connect")
    finals: dict[int, dict] = {}
    sems: dict[int, np.ndarray] = {}
    videos: dict[int, dict] = {}

    def collect() -> None:
        from .wire import video_frames

        for topic, header, buffers in sub:
            k = int(header["tr_index"])
            if topic == "caption" and header["final"]:
                finals[k] = header
                if on_final is not None:
                    on_final(header, truth.get(k))
            elif topic == "semantics" and header["final"]:
                sems[k] = np.frombuffer(buffers[0], np.float32).copy()
            elif topic == "video":
                videos[k] = {"frames": video_frames(header, buffers).copy(), "header": header}

    collector = threading.Thread(target=collect, name="demo-subscriber", daemon=True)
    collector.start()
    daemon = Daemon(cfg, model, source, pub, journal=journal, session=label, renderer=renderer,
                    attributes=attributes)
    replay = RunSource(run, speed=speed, session=label)
    status = None
    t0 = time.perf_counter()
    try:
        daemon.start()
        sink = ZmqVolumeSink(source.endpoint, session=label)
        for vol in replay:
            sink.send(vol)
        sink.close()  # end of stream: the daemon's source finishes, its stages drain
        daemon.join(120)
        status = daemon.shutdown()
        # Everything is published; wait until the subscriber has it (loopback: ms).
        c = status["counters"]
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and (
                len(finals) < min(n_expected, c["finals"]) or len(videos) < c["renders"]
                or len(sems) < min(n_expected, c["finals"])):
            time.sleep(0.02)
    finally:
        if status is None:  # interrupted: stop the daemon's threads, close its journal
            daemon.shutdown()
        sub.close()
        collector.join(2.0)
        pub.close()
    wall = time.perf_counter() - t0
    late = [x * 1e3 for x in replay.pacer.lateness]
    return LiveResult(finals, sems, videos, status, truth, n_expected, label, wall, late,
                      daemon.latency.samples())


# ----------------------------------------------------------------------------- 5. video


def _fit(frames: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``frames`` resampled (nearest neighbour, in time and space) to ``like``'s shape."""
    if frames.shape == like.shape:
        return frames
    t, h, w = like.shape[:3]
    ti = np.arange(t) * frames.shape[0] // t
    hi = np.arange(h) * frames.shape[1] // h
    wi = np.arange(w) * frames.shape[2] // w
    return np.ascontiguousarray(frames[ti][:, hi][:, :, wi])


def _placeholder(like: np.ndarray) -> np.ndarray:
    """Mid-grey frames with a dark cross: a clip whose render was dropped."""
    out = np.full_like(like, 96)
    n = min(like.shape[1:3])
    idx = np.arange(n)
    out[:, idx, idx] = 40
    out[:, idx, n - 1 - idx] = 40
    return out


def offline_windows(run: Run, cfg: Config, model: DecoderModel) -> dict[int, np.ndarray]:
    """Each clip's decoder input, cut exactly as the daemon cut it live (the same causal
    preprocessing, then the HRF-lag window), keyed by the clip's TR."""
    from .preprocess import clip_windows, preprocess_run, reduce_window

    z = preprocess_run(run.data(), run.tr, cfg.preprocess)
    trs = np.arange(run.n_trs)
    idx, complete = clip_windows(trs, run.n_trs, cfg.window)
    out = {}
    for k in trs[complete]:
        x = reduce_window(z[idx[k]], cfg.window)
        out[int(k)] = x if model.voxels is None else x[model.voxels]
    return out


def write_demo_video(path: Path, live: LiveResult, run: Run, session: Session, cfg: Config,
                     model: DecoderModel, renderer, *, fill_budget_s: float = 45.0,
                     scale: int = 4, echo: Echo = _quiet) -> dict:
    """Write ``path``: for every clip of the run, in order, ground truth | the clip rendered
    live (or, if the live renderer dropped it, rendered now by the same worker while
    ``fill_budget_s`` lasts, else a grey placeholder) with the decoded and true captions."""
    from .messages import Semantics
    from .render.video import concat_clips, mosaic, write_video
    from .zoo.clip import load_stimuli

    frames, _ = load_stimuli(session.root)
    shown = [(int(k), int(c)) for k, c in zip(run.stim_trs, run.clip_ids)]
    missing = [k for k, _ in shown if k not in live.videos]
    filled: dict[int, np.ndarray] = {}
    windows = offline_windows(run, cfg, model) if missing and fill_budget_s > 0 else {}
    t0 = time.perf_counter()
    for k in missing:
        if time.perf_counter() - t0 >= fill_budget_s or k not in windows:
            break
        x = np.asarray(windows[k], np.float32)
        sem = Semantics(k, np.zeros(1, np.float32), np.zeros(1, np.float32),
                        np.zeros(1, np.float32), session=live.label + "-after")
        filled[k] = renderer(sem, x).frames
    if missing:
        echo(f"rendered {len(filled)} of the {len(missing)} clips the live renderer dropped "
             f"afterwards ({time.perf_counter() - t0:.1f} s)"
             + (f"; {len(missing) - len(filled)} marked as dropped (budget "
                f"{fill_budget_s:g} s)" if len(filled) < len(missing) else ""))
    panels, sources = [], {"live": 0, "after": 0, "dropped": 0}
    for k, c in shown:
        gt = np.asarray(frames[c])
        if k in live.videos:
            rec, how = _fit(live.videos[k]["frames"], gt), "live"
        elif k in filled:
            rec, how = _fit(filled[k], gt), "after"
        else:
            rec, how = _placeholder(gt), "dropped"
        sources[how] += 1
        h = live.finals.get(k)
        decoded = (h.get("basic") or h["text"]["anchor"]) if h else "(no final caption)"
        note = {"live": "", "after": " [rendered after the run]",
                "dropped": " [render dropped]"}[how]
        panels.append(mosaic(gt, rec, decoded + note,
                             truth_caption=session.clips[c].get("basic"), scale=scale))
    # Caption strips wrap to different heights: pad every panel to the tallest (black).
    tallest = max(pn.shape[1] for pn in panels)
    panels = [np.pad(pn, ((0, 0), (0, tallest - pn.shape[1]), (0, 0), (0, 0)))
              for pn in panels]
    fps = frames.shape[1] / float(run.tr)  # a clip's frames span one TR (2 s)
    video = concat_clips(panels)
    write_video(path, video, fps)
    return {"path": str(path), "clips": len(panels), "frames": int(video.shape[0]),
            "fps": fps, **sources}


# ----------------------------------------------------------------------------- 6. summary


def attribute_scores(live: LiveResult, session: Session) -> dict | None:
    """Per attribute group, how often the retrieved caption's clip has the shown clip's
    value; ``mean`` over groups; ``all`` (every attribute right); ``chance``: the same for a
    caption drawn at random from the training bank (by the bank's attribute frequencies)."""
    pairs = []
    for k, h in live.finals.items():
        if k in live.truth and h.get("match_clip_id") is not None:
            got = session.clips.get(int(h["match_clip_id"]), {}).get("attributes")
            want = live.truth[k].get("attributes")
            if got and want:
                pairs.append((got, want))
    if not pairs:
        return None
    groups = list(pairs[0][1])
    per = {g: float(np.mean([got[g] == want[g] for got, want in pairs])) for g in groups}
    train = [r["attributes"] for r in session.clips.values()
             if r.get("split") == "train" and r.get("attributes")]
    chance = {}
    for g in groups:
        vals, counts = np.unique([a[g] for a in train], return_counts=True)
        freq = dict(zip(vals.tolist(), (counts / counts.sum()).tolist()))
        chance[g] = float(np.mean([freq.get(want[g], 0.0) for _, want in pairs]))
    return {"groups": per, "mean": float(np.mean(list(per.values()))),
            "all": float(np.mean([all(got[g] == want[g] for g in groups)
                                  for got, want in pairs])),
            "chance_mean": float(np.mean(list(chance.values()))), "n": len(pairs)}


def _header_attribute_scores(live: LiveResult, headers: dict[int, dict]) -> dict | None:
    """Per attribute group, how often the ``attributes`` of the headers ``{tr: header}``
    match the clip shown at that TR; None when no header carries them."""
    pairs = [(h["attributes"], live.truth[k]["attributes"]) for k, h in headers.items()
             if isinstance(h.get("attributes"), dict) and k in live.truth
             and live.truth[k].get("attributes")]
    if not pairs:
        return None
    groups = [g for g in pairs[0][1] if g in pairs[0][0]]
    per = {g: float(np.mean([got[g] == want[g] for got, want in pairs])) for g in groups}
    return {"groups": per, "mean": float(np.mean(list(per.values()))), "n": len(pairs)}


def render_attribute_scores(live: LiveResult) -> dict | None:
    """Per attribute group, how often the attributes a live clip was rendered from (its
    ``video`` header's ``attributes``: the attribute captioner's) match the shown clip's;
    None when no live clip carries them (SAD's semantics, or no renderer)."""
    return _header_attribute_scores(live, {k: v["header"] for k, v in live.videos.items()})


def composed_attribute_scores(live: LiveResult) -> dict | None:
    """The same for the final captions' ``attributes`` (the daemon's attribute decoder, which
    the ``composed`` captions word); None when the daemon ran without one."""
    return _header_attribute_scores(live, live.finals)


def load_attribute_decoder(zoo: Path, renderer=None) -> DecoderModel | None:
    """The attribute decoder the daemon words ``composed`` captions with: the render
    worker's (its captioner's), else the zoo's ``attributes/``, else None."""
    from .render.captioner import ZOO_NAME

    captioner = getattr(renderer, "captioner", None)
    if captioner is not None:
        return captioner.model
    return DecoderModel.load(zoo / ZOO_NAME) if (zoo / ZOO_NAME).is_dir() else None


def identification_scores(live: LiveResult, targets, session: Session,
                          trials: int = 100) -> dict | None:
    """2-way / 50-way caption identification of the live final semantics: the shown clip's
    caption against distractors drawn from every test clip of the study (as ``rtdecode
    eval`` draws them), all centred on the mean training caption."""
    from .models.evaluate import pooled
    from .ridge import n_way_identification

    ks = [k for k in sorted(live.semantics) if k in live.truth]
    encoded = set(targets.ids.tolist())
    pool = np.array(sorted(c for c, r in session.clips.items()
                           if r.get("split") == "test" and c in encoded))
    if len(ks) < 2 or len(pool) < 2:
        return None
    pred = np.stack([live.semantics[k] for k in ks]) - targets.center
    ids = np.array([int(live.truth[k]["clip_id"]) for k in ks])
    bank = pooled(targets(pool)) - targets.center
    rng = np.random.default_rng(0)
    out: dict = {"n_decoded": len(ks), "pool": int(len(pool))}
    for n in (2, 50):
        r = n_way_identification(pred, ids, bank, pool, n, trials, rng)
        out[f"caption_{n}way"] = None if r is None else round(r[0], 4)
        out[f"caption_{n}way_pm"] = None if r is None else round(r[1], 4)
    return out


def summarize(live: LiveResult, session: Session, decoding: Decoding, *, renderer_note: str,
              video: dict | None, timings: dict[str, float], speed: float | None) -> dict:
    """The demo's one-screen summary as a dict (JSON-serialisable)."""
    st = live.status
    c = st["counters"]
    lat = st["latency"]
    attrs = attribute_scores(live, session)
    ident = identification_scores(live, decoding.targets, session)

    def pct(stage: str) -> dict:
        d = lat.get(stage, {})
        return {"p50_ms": d.get("p50_ms"), "p99_ms": d.get("p99_ms"), "n": d.get("n", 0)}

    return {
        "session": {"root": str(session.root), "subject": session.subject, "run": live.label,
                    "volumes": int(c["received"]), "speed": speed,
                    "pacing_late_p99_ms": round(float(np.percentile(live.pacing_late_ms, 99)),
                                                3) if live.pacing_late_ms else None},
        "decoder": decoding.describe,
        "captions": {"finals": len(live.finals), "expected": live.n_expected,
                     "with_ground_truth": sum(k in live.truth for k in live.finals)},
        "accuracy": {"attributes": attrs, "identification": ident,
                     "rendered_attributes": render_attribute_scores(live),
                     "composed_attributes": composed_attribute_scores(live)},
        "latency": {"volume_to_caption": pct("end_to_end"), "decode": pct("decode"),
                    "render": pct("render")},
        "daemon": {k: int(c[k]) for k in ("received", "decoded", "malformed", "dropped",
                                          "missing", "finals", "outputs_dropped")},
        "renders": {"renderer": renderer_note, "done": int(c["renders"]),
                    "dropped": int(c["renders_dropped"]), "errors": int(c["render_errors"]),
                    "received": len(live.videos), "live_clips": sorted(live.videos)},
        "video": video,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
