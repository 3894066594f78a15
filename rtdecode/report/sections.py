"""The report's comparisons, each a function of the loaded session and zoo returning a
JSON-ready dict. :func:`build_report` runs them in order, timing each.

All figures are on one subject (the first the zoo's SAD knows) and the held-out test runs;
ridge regressions are fitted at report time on the training runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, WindowConfig
from ..models import evaluate as ev
from ..models.train import SubjectData
from ..models.zoo_eval import (
    CONDITIONS,
    SubjectEval,
    Zoo,
    aggregate,
    level_scores,
    subject_report,
)

Say = Callable[[str], None]


@dataclass(frozen=True)
class ReportOptions:
    """How much the report renders and samples; :meth:`quick_options` for tests."""

    render_clips: int = 50            # test clips per method and condition (video metrics)
    neuroclips_clips: int = 8         # clips per setting, few-step vs NeuroClips
    trials: int = 100                 # N-way trials
    lags: tuple[int, ...] = (0, 1, 2, 3, 4)          # HRF lags (TRs), ridge refitted per lag
    refine_steps: tuple[int, ...] = (0, 1, 2, 4, 8)  # Refineformer steps swept
    render_steps: tuple[int, ...] = (1, 2, 4, 8)     # CVR steps timed
    timing_clips: int = 4             # clips rendered per CVR step count
    cvr_steps: int = 4                # the renderer's steps everywhere else
    replay_speed: float | None = 10.0  # latency replay pace (x real time; None: max speed)
    threads: int = 2                  # torch threads
    warmup: bool = True               # untimed warm-up render before timing NeuroClips
    video_methods: tuple[str, ...] = ("sad", "attributes", "mlp", "ridge",
                                      "ceiling")  # rendered methods
    ablations: Path | None = None     # folder of SAD ablation checkpoints
    quick: bool = False

    @classmethod
    def quick_options(cls, **changes) -> ReportOptions:
        """Few clips and trials, short sweeps, no ridge video (its VAE targets are the
        slowest step; ``rtdecode eval --render`` covers it): every section, in under a
        minute on a tiny zoo (figures too noisy to read)."""
        base = dict(render_clips=2, neuroclips_clips=1, trials=10, refine_steps=(0, 1),
                    render_steps=(1, 2), timing_clips=1, cvr_steps=1, replay_speed=None,
                    warmup=False, video_methods=("sad", "mlp", "ceiling"), quick=True)
        return cls(**{**base, **changes})

    def __post_init__(self) -> None:
        for name in ("render_clips", "neuroclips_clips", "trials", "timing_clips",
                     "cvr_steps", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}: want >= 1")
        if not self.lags or min(self.lags) < 0:
            raise ValueError(f"lags {self.lags}: want HRF lags >= 0")
        bad = set(self.video_methods) - {"sad", "attributes", "mlp", "ridge", "ceiling"}
        if bad or not self.video_methods:
            raise ValueError(f"video_methods {self.video_methods}: want some of sad, "
                             "attributes, mlp, ridge, ceiling")
        if self.replay_speed is not None and not self.replay_speed > 0:
            raise ValueError(f"replay_speed {self.replay_speed}: want > 0 (None: max speed)")


@dataclass
class Context:
    """What every section shares: the subject's evaluation inputs, the renderer, options."""

    se: SubjectEval
    cvr: Any
    opts: ReportOptions
    fusion_threshold: float
    progress: bool = True
    notes: list[str] = dataclasses.field(default_factory=list)   # what was skipped, and why
    _ridges: dict[str, Any] = dataclasses.field(default_factory=dict)

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    @property
    def train_ridge(self):
        """The :class:`~rtdecode.ridge.DualRidge` of the training windows (configured lag),
        decomposed once for the caption ridge and the video ridge."""
        if "train" not in self._ridges:
            from ..ridge import DualRidge

            self._ridges["train"] = DualRidge(self.se.windows["train"].X,
                                              tuple(self.cfg.ridge.alphas))
        return self._ridges["train"]

    @property
    def caption_ridge(self):
        """The caption ridge (windows → pooled caption states) at the configured lag."""
        if "caption" not in self._ridges:
            self._ridges["caption"] = self.train_ridge.fit(
                ev.pooled(self.se.targets(self.se.windows["train"].clip_ids)))
        return self._ridges["caption"]

    @property
    def cfg(self) -> Config:
        return self.se.cfg


# ------------------------------------------------------------------------------- windows


def preprocessed_runs(session, cfg: Config, task: str, online: bool = True
                      ) -> list[tuple[np.ndarray, Any]]:
    """Each ``task`` run's preprocessed features ``(T, voxels)`` (causal online, or the
    offline whole-run detrend / z-score), computed once and cut into windows of any lag or
    width by :func:`cut_windows`."""
    from ..preprocess import offline_preprocess, preprocess_run, select_voxels

    voxels = select_voxels(session, cfg)
    out = []
    for run in session.runs_of(task):
        data = run.data() if voxels is None else run.data()[:, voxels]
        feats = preprocess_run(data, run.tr, cfg.preprocess) if online \
            else offline_preprocess(data, clip_z=cfg.preprocess.clip_z)
        out.append((feats, run))
    return out


def cut_windows(runs: list[tuple[np.ndarray, Any]], wcfg: WindowConfig, label: str
                ) -> SubjectData:
    """Every complete clip window of ``runs`` under ``wcfg``, runs concatenated."""
    from ..preprocess import window_features

    xs, ids = [], []
    for feats, run in runs:
        X, complete = window_features(feats, run.stim_trs, wcfg)
        xs.append(X)
        ids.append(run.clip_ids[complete])
    X = np.concatenate(xs).astype(np.float32)
    return SubjectData(label, X, np.concatenate(ids), np.zeros(len(X), bool))


def with_average(single: SubjectData) -> dict[str, SubjectData]:
    return {"single_trial": single, "averaged": ev.average_repeats(single)}


def fit_caption_ridge(train: SubjectData, targets: ev.CaptionTargets, alphas):
    """The caption ridge of ``rtdecode eval`` (windows → pooled caption token states, alpha
    by leave-one-out as its RidgeCV), solved in the dual (:class:`~rtdecode.ridge.DualRidge`):
    the report fits it many times."""
    from ..ridge import DualRidge

    return DualRidge(train.X, alphas).fit(ev.pooled(targets(train.clip_ids)))


def identify(predict: Callable[[np.ndarray], np.ndarray], tests: dict[str, SubjectData],
             targets: ev.CaptionTargets, trials: int) -> dict[str, dict]:
    """Caption identification (2-way, 50-way) of pooled predictions, per condition."""
    return {c: ev.identification(predict(d.X), d.clip_ids, targets, trials)
            for c, d in tests.items()}


# ------------------------------------------------------------------------------- sections


def evaluation(ctx: Context) -> tuple[dict, Any]:
    """The main comparison (``rtdecode eval --render``'s figures for this subject, with the
    per-level ablations and the Refineformer sweep; MAD's latent scores are left to
    ``rtdecode eval``) and the rendered video suite."""
    from ..render.suite import video_suite

    se, o = ctx.se, ctx.opts
    r = subject_report(se, trials=o.trials, oracle=True, mad=False,
                       sweep=list(o.refine_steps), ridge=ctx.caption_ridge, say=ctx.note)
    if se.zoo.sad is not None:
        r["levels"] = level_scores(se, o.ablations, None, o.trials)
    suite = video_suite(se, ctx.cvr, o.render_clips, o.trials, progress=ctx.progress,
                        methods=o.video_methods, ridge=ctx.train_ridge)
    skipped = [m for m in ("sad", "attributes", "mlp", "ridge", "ceiling")
               if m not in o.video_methods]
    if skipped:
        ctx.note(f"video metrics not measured for {', '.join(skipped)} (options)")
    for cond, by_method in suite.metrics.items():
        for method, scores in by_method.items():
            r[cond].setdefault(method, {}).update(scores)
    out = aggregate({se.subject: r})
    out["render_seconds"] = suite.seconds
    out["ridge_video_inputs"] = {c: suite.inputs[c]["ridge"].source for c in CONDITIONS
                                 if "ridge" in suite.inputs.get(c, {})}
    return out, suite


def preprocessing(ctx: Context) -> dict:
    """Causal online preprocessing (what the daemon can do) against the offline anchors'
    whole-run detrend and z-score: the caption ridge's identification either way."""
    se, cfg = ctx.se, ctx.cfg
    offline = {task: cut_windows(preprocessed_runs(se.session, cfg, task, online=False),
                                 cfg.window, se.subject) for task in ("train", "test")}
    ridge = fit_caption_ridge(offline["train"], se.targets, cfg.ridge.alphas)
    return {"online": identify(ctx.caption_ridge.predict,
                               {c: se.windows[c] for c in CONDITIONS}, se.targets,
                               ctx.opts.trials),
            "offline": identify(ridge.predict, with_average(offline["test"]), se.targets,
                                ctx.opts.trials)}


def hrf_and_provisional(ctx: Context) -> tuple[list[dict], dict]:
    """Accuracy against the HRF lag (the caption ridge refitted per lag) and provisional
    against final captions (the configured lag; a window of its first TR only, as the
    daemon decodes when a clip's first volume arrives, against the full window)."""
    se, cfg = ctx.se, ctx.cfg
    train_runs = preprocessed_runs(se.session, cfg, "train")
    test_runs = preprocessed_runs(se.session, cfg, "test")
    lag_rows = []
    for lag in ctx.opts.lags:
        w = dataclasses.replace(cfg.window, lag_trs=lag)
        if lag == cfg.window.lag_trs:  # the configured lag: the main comparison's ridge
            ridge, tests = ctx.caption_ridge, {c: se.windows[c] for c in CONDITIONS}
        else:
            ridge = fit_caption_ridge(cut_windows(train_runs, w, se.subject), se.targets,
                                      cfg.ridge.alphas)
            tests = with_average(cut_windows(test_runs, w, se.subject))
        lag_rows.append({"lag_trs": lag, "lag_s": lag * se.session.tr,
                         **identify(ridge.predict, tests, se.targets, ctx.opts.trials)})
    first = dataclasses.replace(cfg.window, width_trs=1, reduce="mean")
    windows = {"provisional": with_average(cut_windows(test_runs, first, se.subject)),
               "final": {c: se.windows[c] for c in CONDITIONS}}
    decoders: dict[str, Callable] = {"ridge": ctx.caption_ridge.predict}
    if se.knows(se.zoo.sad):
        sad = se.zoo.sad
        decoders["sad"] = lambda X: ev.pooled(ev.decode_sad(sad, SubjectData(
            se.subject, X, np.zeros(len(X), np.int64), np.zeros(len(X), bool))))
    prov = {name: {kind: identify(f, windows[kind], se.targets, ctx.opts.trials)
                   for kind in ("provisional", "final")} for name, f in decoders.items()}
    if cfg.window.reduce != "mean":
        prov["note"] = "provisional windows are mean-reduced; the configured reduce is " \
                       f"{cfg.window.reduce!r}"
    return lag_rows, prov


def fusion(ctx: Context, suite) -> dict:
    """Fused against unfused video of the first test run's first clips, in order: chain
    precision / recall against the true scene ids and CLIP-PCC across same-scene clip
    boundaries (and across cuts, where fusion should add nothing)."""
    from .. import metrics
    from ..render.evaluate import render_clips
    from ..render.fusion import Fusion, boundary_clip_pcc, chain_metrics
    from ..render.suite import class_prompts

    se = ctx.se
    method = "sad" if "sad" in suite.inputs["single_trial"] else "ceiling"
    run0 = {int(c) for c in se.session.runs_of("test")[0].clip_ids}
    m = 0
    while m < len(suite.clip_ids) and int(suite.clip_ids[m]) in run0:
        m += 1
    if m < 2:
        return {"skipped": f"only {m} rendered clip(s) of the first test run; fusion needs 2"}
    full = suite.inputs["single_trial"][method]
    inp = full.take(slice(m))
    embed = se.zoo.clip.encode_image
    fused = render_clips(ctx.cvr, inp, fusion=Fusion(embed, ctx.fusion_threshold),
                         progress=ctx.progress, desc="fusion")
    scenes = np.array([int(se.session.clips[int(c)]["scene_id"]) for c in inp.clip_ids])
    same = scenes[1:] == scenes[:-1]
    truth = suite.truth[:m]
    out: dict[str, Any] = {"method": method, "clips": m, "threshold": ctx.fusion_threshold,
                           "same_scene_boundaries": int(same.sum()),
                           "cut_boundaries": int((~same).sum())}
    for name, clips, chains in (("unfused", suite.clips["single_trial"][method][:m],
                                 np.arange(m)),
                                ("fused", fused.clips, np.asarray(fused.chain_ids))):
        row = {k: (round(v, 4) if isinstance(v, float) else v)
               for k, v in chain_metrics(chains, scenes).items()}
        for key, mask in (("boundary_clip_pcc_same_scene", same),
                          ("boundary_clip_pcc_cut", ~same)):
            v = boundary_clip_pcc(list(clips), embed, mask)
            row[key] = None if np.isnan(v) else round(v, 4)
        scores = metrics.summarize(truth, clips, se.zoo.clip, class_prompts(),
                                   trials=ctx.opts.trials)
        row.update({k: round(float(scores[k]), 4) for k in ("ssim", "vifi", "clip_pcc",
                                                            "video_2way", "epe")})
        out[name] = row
    return out


def sampling(ctx: Context) -> dict:
    """Few-step against NeuroClips' sampling settings (``rtdecode bench render``)."""
    from ..render.bench import bench_render
    from ..render.cvr import CVRSettings

    se, o = ctx.se, ctx.opts
    return bench_render(se.zoo.path, se.root, ctx.cfg, n_clips=o.neuroclips_clips,
                        inputs="decoded" if se.zoo.sad is not None else "truth",
                        threads=o.threads, settings=CVRSettings(steps=o.cvr_steps),
                        progress=ctx.progress, warmup=o.warmup, cvr=ctx.cvr)


def render_time(ctx: Context, suite) -> list[dict]:
    """CVR seconds per clip (and quality) against the scheduler's steps, on the first
    ``timing_clips`` single-trial inputs of the main comparison."""
    from ..render.bench import quality
    from ..render.evaluate import render_clips

    method = "sad" if "sad" in suite.inputs["single_trial"] else "ceiling"
    full = suite.inputs["single_trial"][method]
    n = min(ctx.opts.timing_clips, len(full.clip_ids))
    inp = full.take(slice(n))
    rows = []
    for k in ctx.opts.render_steps:
        s = dataclasses.replace(ctx.cvr.settings, steps=k)
        r = render_clips(ctx.cvr, inp, s, progress=ctx.progress, desc=f"{k} CVR steps")
        secs = np.asarray(r.seconds)
        rows.append({"steps": k, "seconds_per_clip": round(float(secs.mean()), 4),
                     "seconds_max": round(float(secs.max()), 4),
                     "unet_evals_per_clip": r.unet_evals / n, "clips": n, "inputs": method,
                     **quality(r.clips, suite.truth[:n], ctx.se.zoo.clip)})
    return rows


def latency(ctx: Context) -> dict:
    """A replay of the first test run through the in-process daemon (SAD decoder on torch,
    and the render worker when the zoo has a renderer): per-stage latency samples."""
    from ..demo import live_replay

    se, o = ctx.se, ctx.opts
    run = se.session.runs_of("test")[0]
    model, decoder = _daemon_decoder(se)
    worker = None
    if se.knows(se.zoo.sad):
        from ..render.fusion import Fusion
        from ..render.worker import RenderWorker

        mad = se.zoo.mad if se.knows(se.zoo.mad) else None
        worker = RenderWorker(se.zoo.sad, ctx.cvr, se.subject, mad=mad,
                              fusion=Fusion(se.zoo.clip.encode_image, ctx.fusion_threshold),
                              threads=o.threads)
    res = live_replay(se.session, run, model, ctx.cfg, speed=o.replay_speed, renderer=worker)
    c = res.status["counters"]
    return {"decoder": decoder, "render": worker is not None, "run": run.name,
            "n_trs": run.n_trs, "speed": o.replay_speed, "tr_s": se.session.tr,
            "wall_s": round(res.wall_s, 2), "finals": len(res.finals),
            "counters": {k: c[k] for k in ("received", "decoded", "dropped", "finals",
                                           "renders", "renders_dropped", "render_errors")},
            "percentiles": res.status["latency"],
            "samples": {k: [round(v, 3) for v in vals]
                        for k, vals in res.latency_samples.items() if vals}}


def _daemon_decoder(se: SubjectEval):
    """The daemon's caption decoder: SAD on torch with the training caption bank, else the
    ridge baseline."""
    from ..engine import DecoderModel
    from ..preprocess import select_voxels

    sad = se.zoo.sad
    if not se.knows(sad):
        from ..ridge import train_model

        return train_model(se.session, se.cfg), "ridge (attribute targets)"
    from ..backends import TorchEngine
    from ..render.session import caption_bank

    steps = int(sad.cfg.sample_steps) if sad.cfg.use_refiner else 0
    engine = TorchEngine.from_checkpoint(se.zoo.path / "sad", se.subject, steps)
    bank = caption_bank(se.session, se.zoo.clip, sad.cfg.n_tokens, tuple(sad.cfg.levels))
    meta = {"kind": "sad", "subject": se.subject, "steps": steps,
            "trained_on": {"n_voxels": se.session.n_voxels, "tr": se.session.tr}}
    voxels = select_voxels(se.session, se.cfg)
    return DecoderModel(engine, bank, voxels, meta), f"SAD ({steps} steps, torch)"


# ------------------------------------------------------------------------------- all


def _subject(root: Path, zoo: Zoo) -> str:
    sad = zoo.sad
    for s in zoo.subjects(root):
        if sad is None or s in sad.cfg.subjects:
            return s
    raise ValueError(f"{root}: no subject known to {zoo.path / 'sad'}")  # pragma: no cover


def build_report(root: Path, zoo_path: Path, cfg: Config, opts: ReportOptions, *,
                 progress: bool = True, say: Say = print) -> dict:
    """Run every section; a JSON-ready dict (section -> figures, ``seconds`` per section)."""
    import torch

    from ..render.cvr import CVR, CVRSettings
    from ..render.session import fusion_threshold

    if not (Path(zoo_path) / "unet").is_dir():
        raise FileNotFoundError(f"{zoo_path}: no unet/ (the renderer's UNet); the report "
                                "renders video: train it with `rtdecode train unet` (and "
                                "`rtdecode train motion`) or pass --zoo")
    torch.set_num_threads(opts.threads)
    t_all = time.perf_counter()
    zoo = Zoo.load(zoo_path)
    subject = _subject(root, zoo)
    say(f"report: {subject} of {root}, zoo {zoo_path}")
    se = SubjectEval.build(root, subject, cfg, zoo)
    cvr = CVR.from_zoo(zoo_path, settings=CVRSettings(steps=opts.cvr_steps))
    ctx = Context(se, cvr, opts, fusion_threshold(zoo_path), progress)
    out: dict[str, Any] = {"meta": _meta(ctx), "seconds": {}}

    def timed(name: str, fn, *args):
        say(f"report: {name} ...")
        t0 = time.perf_counter()
        value = fn(*args)
        out["seconds"][name] = round(time.perf_counter() - t0, 1)
        return value

    out["evaluation"], suite = timed("evaluation", evaluation, ctx)
    out["preprocessing"] = timed("preprocessing", preprocessing, ctx)
    out["hrf_lag"], out["provisional"] = timed("hrf_and_provisional", hrf_and_provisional, ctx)
    out["fusion"] = timed("fusion", fusion, ctx, suite)
    out["sampling"] = timed("sampling", sampling, ctx)
    out["render_time"] = timed("render_time", render_time, ctx, suite)
    out["latency"] = timed("latency", latency, ctx)
    out["seconds"]["total"] = round(time.perf_counter() - t_all, 1)
    out["notes"] = ctx.notes
    return out


def _meta(ctx: Context) -> dict:
    from ..render.suite import class_prompts

    se, o = ctx.se, ctx.opts
    single = se.windows["single_trial"]
    _, counts = np.unique(single.clip_ids, return_counts=True)
    return {"root": str(se.root), "zoo": str(se.zoo.path), "subject": se.subject,
            "n_voxels": se.session.n_voxels, "tr_s": se.session.tr,
            "test_clips": int(len(counts)), "test_repeats": int(counts.max()),
            "train_windows": int(len(se.windows["train"].X)),
            "lag_trs": se.cfg.window.lag_trs, "width_trs": se.cfg.window.width_trs,
            "n_classes": len(class_prompts()), "fusion_threshold": ctx.fusion_threshold,
            "cvr": dataclasses.asdict(ctx.cvr.settings),
            "motion_module": ctx.cvr.video_unet is not None,
            "ablations": None if o.ablations is None else str(o.ablations),
            "options": {k: (str(v) if isinstance(v, Path) else v)
                        for k, v in dataclasses.asdict(o).items()}}
