"""The ``rtdecode`` command line: thin wrappers that parse, build a config and call the library."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .config import ConfigError, load_config, to_dict
from .data import DataError

app = typer.Typer(
    help="rtdecode: real-time decoding of captions and video from fMRI, TR by TR.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

#: The shipped toy zoo: fp16 checkpoints trained on ``configs/study.toml``'s session.
ZOO_DIR = Path(__file__).resolve().parent / "zoo" / "weights"
STUDY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "study.toml"
#: The demo's config: the study session, SAD on torch eager (no export step needed).
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="TOML config (default: configs/toy.toml).")]
SemanticsOpt = Annotated[str, typer.Option(
    help="What conditions the renderer on decoded input: sad (SAD's token states), "
         "attributes (captions composed from the zoo's attributes/ decoder) or auto "
         "(attributes when the zoo has it).")]
LatentsOpt = Annotated[str, typer.Option(
    help="CVR's motion latents on decoded input: mad (MAD's decoded latents), sketch (a "
         "layout sketch of the attributes the attribute captioner decodes; needs it) or "
         "auto (the sketch with the captioner, else MAD's).")]


def _check_semantics(semantics: str, latents: str = "auto") -> None:
    from .render.layout import LATENTS
    from .render.worker import SEMANTICS

    if semantics not in SEMANTICS:
        raise ValueError(f"--semantics {semantics!r}: want one of {', '.join(SEMANTICS)}")
    if latents not in LATENTS:
        raise ValueError(f"--latents {latents!r}: want one of {', '.join(LATENTS)}")
    if latents == "sketch" and semantics == "sad":
        raise ValueError("--latents sketch draws the attributes the attribute captioner "
                         "decodes: it does not go with --semantics sad")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rtdecode {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False
         ) -> None:
    """rtdecode: real-time decoding of captions and video from fMRI, TR by TR."""


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Directory to write the session into.")],
    preset: Annotated[str, typer.Option(help="Size preset: 'small' (seconds, for tests) or "
                                             "'study' (CC2017-sized).")] = "small",
    subjects: Annotated[int, typer.Option(help="Number of simulated subjects.")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same files.")] = 0,
    tr: Annotated[float, typer.Option(help="Repetition time: 2.0 (CC2017-like) or 1.0 "
                                           "(HCP-like).")] = 2.0,
    only: Annotated[str | None, typer.Option(help="Write only these runs of every subject: "
                                                  "TASK or TASK:RUN, comma-separated (e.g. "
                                                  "test:1). Each file is identical to the "
                                                  "full simulation's.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Simulate a toy-world fMRI study (stimuli, subjects, runs) in a BIDS-like layout."""
    from .simulator import preset as make_preset
    from .simulator import simulate as run_simulation
    from .simulator.session import parse_run_selection

    try:
        cfg = make_preset(preset, seed=seed, n_subjects=subjects, tr=tr)
        runs = parse_run_selection(only) if only is not None else None
    except ValueError as exc:
        _fail(str(exc))
    _check_output_dir(out)
    t0 = time.perf_counter()
    try:
        summary = run_simulation(out, cfg, progress=not quiet, runs=runs)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out}: {summary.n_clips} clips, {summary.n_runs} runs per subject, "
               f"{summary.trs_per_subject} TRs per subject, subjects "
               + ", ".join(f"{k} ({v} voxels)" for k, v in summary.subjects.items())
               + f" in {time.perf_counter() - t0:.1f} s")


def _check_output_dir(out: Path) -> None:
    """Refuse to write into a non-empty directory that is not a simulated session."""
    if out.exists() and not out.is_dir():
        _fail(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "simulation.json").is_file():
        _fail(f"{out}: directory is not empty and holds no simulated session; "
              "choose another directory")


@app.command()
def ridge(
    data: Annotated[Path | None, typer.Option(help="Session directory (default: the "
                                                   "config's data.root).")] = None,
    config: ConfigOpt = None,
    subject: Annotated[str | None, typer.Option(help="Subject label, e.g. sub-01 (default: "
                                                     "every subject).")] = None,
    shuffle: Annotated[bool, typer.Option(help="Control: fit on shuffled training "
                                               "labels.")] = False,
    offline: Annotated[bool, typer.Option(help="Whole-run detrend/z-score instead of the "
                                               "causal online preprocessing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Fit the ridge baseline on training runs and report accuracy on test runs."""
    from .data import list_subjects, load_session
    from .ridge import run_ridge

    try:
        cfg = load_config(config)
        root = data or Path(cfg.data.root)
        labels = [subject] if subject else (list(cfg.data.subjects) or list_subjects(root))
        reports = [run_ridge(load_session(root, s), cfg, shuffle=shuffle, online=not offline)
                   for s in labels]
    except (ConfigError, DataError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    else:
        typer.echo(format_ridge_table(reports))


def format_ridge_table(reports: list[dict]) -> str:
    lines = [f"{'subject':8} {'voxels':>6} {'condition':12} {'2-way':>13} {'50-way':>13} "
             f"{'attr. mean':>10}"]
    for r in reports:
        for cond in ("single_trial", "averaged"):
            s = r[cond]
            two = f"{s['2way']:.3f}±{s['2way_pm']:.3f}" if s["2way"] is not None else "n/a"
            fifty = f"{s['50way']:.3f}±{s['50way_pm']:.3f}" if s["50way"] is not None else "n/a"
            lines.append(f"{r['subject']:8} {r['n_voxels']:>6} {cond:12} {two:>13} {fifty:>13} "
                         f"{s['attribute_mean']:>10.3f}")
    ch = reports[0]["chance"]
    lines.append(f"{'chance':8} {'':>6} {'':12} {ch['2way']:>13.3f} {ch['50way']:>13.3f} "
                 f"{ch['attribute_mean']:>10.3f}")
    return "\n".join(lines)


@app.command()
def demo(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="TOML config (default: configs/demo.toml: the study session "
                               "the shipped zoo was trained on, SAD on the torch backend).")
                      ] = None,
    data: Annotated[Path | None, typer.Option(help="Session directory (default: the "
                                                   "config's data.root; simulated there, only "
                                                   "the replayed run, if absent).")] = None,
    zoo: Annotated[Path, typer.Option(help="Model zoo: clip/, sad/ (+ mad/, vae/, unet/, "
                                           "motion/ for video).")] = ZOO_DIR,
    subject: Annotated[str, typer.Option(help="Subject to decode.")] = "sub-01",
    run: Annotated[int, typer.Option(help="Test run to replay.")] = 1,
    speed: Annotated[float, typer.Option(help="Replay at this multiple of real time (TR 2 s "
                                              "at 5x: a volume every 0.4 s).")] = 5.0,
    max_speed: Annotated[bool, typer.Option("--max-speed", help="Replay as fast as "
                                                                "possible.")] = False,
    out: Annotated[Path, typer.Option(help="Where the video, journal and summary go.")
                   ] = Path("runs/demo"),
    render_steps: Annotated[int, typer.Option(help="Sampling steps of the renderer.")] = 4,
    semantics: SemanticsOpt = "auto",
    latents: LatentsOpt = "auto",
    fill_budget: Annotated[float, typer.Option(help="Seconds to spend, after the run, "
                                                    "rendering clips the live renderer "
                                                    "dropped (the rest are marked in the "
                                                    "video).")] = 45.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON at the "
                                                         "end.")] = False,
) -> None:
    """The main job: the shipped toy zoo decodes a simulated scan live. Simulates (or
    reuses) a test run of the study subject the zoo was trained on, replays it TR by TR over
    ZeroMQ into the streaming daemon, prints the final captions beside what was shown as
    they arrive, writes the ground truth | reconstruction | caption video (when the zoo has
    a renderer) and a summary: caption accuracy, latency, renders."""
    import logging
    import threading

    from . import demo as d
    from .backends import BackendUnavailable
    from .data import load_session
    from .journal import Journal

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("diffusers").setLevel(logging.ERROR)  # its load-time advice, not ours
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    say = typer.echo
    try:
        for name, value, ok in (("--speed", speed, speed > 0), ("--run", run, run >= 1),
                                ("--render-steps", render_steps, render_steps >= 1),
                                ("--fill-budget", fill_budget, fill_budget >= 0)):
            if not ok:
                raise ValueError(f"{name} {value:g}: must be "
                                 + ("> 0" if name == "--speed" else ">= 0"
                                    if name == "--fill-budget" else ">= 1"))
        _check_semantics(semantics, latents)
        cfg = load_config(config if config is not None else DEMO_CONFIG)
        root = data or Path(cfg.data.root)
        t0 = time.perf_counter()
        d.ensure_session(cfg, root, subject, run, progress=sys.stderr.isatty(), echo=say)
        timings["session"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        session = load_session(root, subject)
        the_run = next((r for r in session.runs_of("test") if r.run == run), None)
        if the_run is None:
            raise DataError(f"{root}: {subject} has no test run {run}")
        decoding = d.load_decoder(cfg, zoo, session, the_run)
        say(f"decoder: {decoding.describe}")
        renderer, render_note = d.load_renderer(zoo, subject, steps=render_steps,
                                                semantics=semantics, latents=latents)
        say(render_note if renderer is None else f"renderer: {render_note}")
        attributes = d.load_attribute_decoder(zoo, renderer)
        timings["load"] = time.perf_counter() - t0
    except (ConfigError, DataError, ValueError, FileNotFoundError, BackendUnavailable) as exc:
        _fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "journal.jsonl"
    jpath.unlink(missing_ok=True)
    pace = None if max_speed else speed
    every = "as fast as possible" if pace is None else \
        f"at {pace:g}x real time (a volume every {the_run.tr / pace:.2f} s)"
    say(f"\nlive: {session.subject} test run {run} ({the_run.n_trs} volumes, TR "
        f"{the_run.tr:g} s) replayed {every} -> ZeroMQ -> daemon -> ZeroMQ -> subscriber, "
        "on loopback")
    say(f"{'TR':>4}  {'shown (ground truth)':<46}  {'decoded (final caption)':<46} attrs "
        "latency")
    lock = threading.Lock()

    def on_final(h: dict, truth: dict | None) -> None:
        got = session.clips.get(int(h.get("match_clip_id") or -1), {}).get("attributes", {})
        if truth is None:
            shown, match = "(fixation: no clip)", "   "
        else:
            want = truth.get("attributes", {})
            shown = truth.get("basic", "")
            match = f"{sum(got.get(a) == v for a, v in want.items())}/{len(want)}"
        with lock:
            say(f"{h['tr_index']:4d}  {shown[:46]:<46}  {h.get('basic', '')[:46]:<46} "
                f"{match:>5} {h.get('latency_ms', 0):5.0f} ms")

    t0 = time.perf_counter()
    live = d.live_replay(session, the_run, decoding.model, cfg, pace, renderer=renderer,
                         journal=Journal(jpath), on_final=on_final, attributes=attributes)
    timings["live"] = time.perf_counter() - t0
    video = None
    if renderer is not None:
        t0 = time.perf_counter()
        video = d.write_demo_video(out / "demo.mp4", live, the_run, session, cfg,
                                   decoding.model, renderer, fill_budget_s=fill_budget,
                                   echo=say)
        timings["video"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    summary = d.summarize(live, session, decoding, renderer_note=render_note, video=video,
                          timings=timings, speed=pace)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        say(json.dumps(summary, indent=2))
    else:
        say(_format_demo_summary(summary, out, jpath))


def _format_demo_summary(s: dict, out: Path, journal: Path) -> str:
    """The one-screen summary printed at the end of ``rtdecode demo``."""

    def ms(v) -> str:
        return "n/a" if v is None else f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"

    cap, acc, lat = s["captions"], s["accuracy"], s["latency"]
    lines = ["", "summary"]
    ses = s["session"]
    lines.append(f"  run         {ses['run']} from {ses['root']}: {ses['volumes']} volumes, "
                 + ("as fast as possible" if ses["speed"] is None else
                    f"{ses['speed']:g}x real time"))
    lines.append(f"  decoder     {s['decoder']}")
    lines.append(f"  captions    {cap['finals']} final (of {cap['expected']} expected), "
                 f"{cap['with_ground_truth']} of them while a clip was shown")
    a = acc["attributes"]
    if a is not None:
        lines.append(f"  accuracy    retrieved caption's clip vs the shown clip: attributes "
                     f"right {a['mean']:.2f} (chance {a['chance_mean']:.2f}), all "
                     f"{len(a['groups'])} right {a['all']:.2f}")
        lines.append("              " + ", ".join(f"{g} {v:.2f}"
                                                  for g, v in a["groups"].items()))
    r = acc.get("composed_attributes")
    if r is not None:
        lines.append(f"              composed from decoded attributes (the captions' `composed`, "
                     f"{r['n']} clips): attributes right {r['mean']:.2f}")
        lines.append("              " + ", ".join(f"{g} {v:.2f}" for g, v in r["groups"].items()))
    r = acc.get("rendered_attributes")
    if r is not None:
        lines.append(f"              rendered from captions of decoded attributes ({r['n']} live "
                     f"clips): attributes right {r['mean']:.2f}")
        lines.append("              " + ", ".join(f"{g} {v:.2f}" for g, v in r["groups"].items()))
    i = acc["identification"]
    if i is not None and i.get("caption_2way") is not None:
        fifty = i.get("caption_50way")
        lines.append(f"              caption identification (distractors: the {i['pool']} test "
                     f"clips): 2-way {i['caption_2way']:.2f}, 50-way "
                     + ("n/a" if fifty is None else f"{fifty:.2f}")
                     + " (chance 0.50 / 0.02)")
    e2e, dec = lat["volume_to_caption"], lat["decode"]
    lines.append(f"  latency     volume in -> caption out p50 {ms(e2e['p50_ms'])}, p99 "
                 f"{ms(e2e['p99_ms'])} (decode p50 {ms(dec['p50_ms'])}, p99 "
                 f"{ms(dec['p99_ms'])}; {e2e['n']} captions)")
    dm = s["daemon"]
    lines.append(f"  daemon      {dm['received']} volumes received, {dm['decoded']} decoded, "
                 f"{dm['dropped']} dropped, {dm['malformed']} malformed, {dm['missing']} "
                 f"missing; {dm['outputs_dropped']} outputs dropped")
    r, v = s["renders"], s["video"]
    if v is None:
        lines.append(f"  video       {r['renderer']}")
    else:
        rl = lat["render"]
        lines.append(f"  renders     {r['done']} done live, {r['dropped']} dropped (renderer "
                     f"behind), {r['errors']} errors; render p50 {ms(rl['p50_ms'])}")
        lines.append(f"  video       {v['path']}: {v['clips']} clips, {v['frames']} frames at "
                     f"{v['fps']:g} fps ({v['live']} rendered live, {v['after']} after the "
                     f"run, {v['dropped']} marked dropped)")
    t = s["timings_s"]
    lines.append(f"  wall        {t['total']:.0f} s: session {t['session']:.0f} s, models "
                 f"{t['load']:.0f} s, live {t['live']:.0f} s"
                 + (f", video {t['video']:.0f} s" if "video" in t else ""))
    lines.append(f"  files       {out / 'summary.json'}, {journal}"
                 + (f", {v['path']}" if v is not None else ""))
    return "\n".join(lines)




train_app = typer.Typer(help="Train decoders on a session.", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("ridge")
def train_ridge(
    data: Annotated[Path | None, typer.Option(help="Session directory (default: the "
                                                   "config's data.root).")] = None,
    subject: Annotated[str, typer.Option(help="Subject label.")] = "sub-01",
    out: Annotated[Path | None, typer.Option(help="Model directory (default: "
                                                  "runs/models/ridge-SUBJECT).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Fit the ridge decoder with its caption bank on the training runs and save it."""
    from .data import load_session
    from .ridge import train_model

    try:
        cfg = load_config(config)
        model = train_model(load_session(data or Path(cfg.data.root), subject), cfg)
    except (ConfigError, DataError) as exc:
        _fail(str(exc))
    path = model.save(out or Path("runs") / "models" / f"ridge-{subject}")
    typer.echo(f"saved {path} (alpha {model.meta['alpha']:g}, "
               f"{model.meta['n_train_clips']} training clips, {model.engine.n_inputs} voxels)")


def _load_or_train_model(cfg, model_dir: Path | None, subject: str):
    """A trained model: ``model_dir`` if given, else the default for ``subject``, trained on
    the config's session (and saved under runs/models) the first time."""
    from .data import load_session
    from .engine import DecoderModel
    from .ridge import train_model

    if model_dir is not None:
        return DecoderModel.load(model_dir)
    path = Path("runs") / "models" / f"ridge-{subject}"
    session = load_session(Path(cfg.data.root), subject)
    if path.is_dir():
        model = DecoderModel.load(path)
        try:
            from .engine import provenance

            model.check_compatible(provenance(session, cfg))
            return model
        except ValueError as exc:
            typer.echo(f"retraining {path}: {exc}", err=True)
    typer.echo(f"training the ridge decoder for {subject} on {cfg.data.root} ...", err=True)
    model = train_model(session, cfg)
    model.save(path)
    return model


def _load_decoder(cfg, model_dir: Path | None, subject: str):
    """``--model``: a SAD checkpoint or an engine folder (run by ``[engine] backend``), or a
    ridge model directory (numpy); none: the default ridge model of ``subject``."""
    if model_dir is not None:
        from .backends import is_neural_model_dir, load_neural_decoder

        if is_neural_model_dir(model_dir):
            return load_neural_decoder(model_dir, cfg.engine, subject)
    return _load_or_train_model(cfg, model_dir, subject)


@app.command()
def serve(
    config: ConfigOpt = None,
    source: Annotated[str | None, typer.Option(help="Input: zmq://HOST:PORT (bind PULL), "
                                                    "zmq+sub://HOST:PORT or lsl:NAME "
                                                    "(default: the config's stream.source).")
                      ] = None,
    publish: Annotated[str | None, typer.Option(help="Where to bind the output PUB socket "
                                                     "(default: stream.publish).")] = None,
    model: Annotated[Path | None, typer.Option(help="Trained model directory: a ridge model, "
                                                    "a SAD checkpoint or an engine folder "
                                                    "(SAD runs on [engine] backend; build its "
                                                    "engine with `rtdecode export`). Default: "
                                                    "the ridge model of --subject, trained on "
                                                    "first use.")] = None,
    subject: Annotated[str, typer.Option(help="Subject whose default model to use.")] = "sub-01",
    session: Annotated[str, typer.Option(help="Session label for volumes that carry "
                                              "none.")] = "",
    journal: Annotated[Path | None, typer.Option(help="Journal file (default: "
                                                      "stream.journal_dir/<time>.jsonl).")
                       ] = None,
    once: Annotated[bool, typer.Option(help="Exit at the sender's end-of-stream marker "
                                            "(ZeroMQ) or when no volume arrives for "
                                            "--idle-exit seconds.")] = False,
    idle_exit: Annotated[float | None, typer.Option(help="Exit after this many seconds "
                                                         "without a volume.")] = None,
    lsl_captions: Annotated[bool | None, typer.Option(help="Also publish captions as an LSL "
                                                           "marker stream (default: "
                                                           "stream.lsl_captions).")] = None,
    mask: Annotated[Path | None, typer.Option(help="Brain mask NIfTI: lets the daemon take "
                                                   "3-D volumes (x, y, z) and mask them.")
                    ] = None,
    wait_subscribers: Annotated[int, typer.Option(help="Before decoding, wait (up to 30 s) "
                                                       "until this many subscribers are "
                                                       "connected, so they miss nothing.")
                                ] = 0,
    render: Annotated[bool, typer.Option("--render/--no-render",
                                         help="Also render video clips (decoded semantics "
                                              "and latents → CVR → fusion, from --zoo; "
                                              "needs torch) and publish "
                                              "them on the `video` topic. A renderer that "
                                              "falls behind skips clips, never volumes.")
                      ] = False,
    render_steps: Annotated[int, typer.Option(help="Sampling steps of the renderer.")] = 4,
    semantics: SemanticsOpt = "auto",
    latents: LatentsOpt = "auto",
    zoo: Annotated[Path, typer.Option(help="Model zoo for --render: sad/, mad/, vae/, unet/, "
                                           "motion/, clip/ (default: the shipped toy zoo).")
                   ] = ZOO_DIR,
    fusion_threshold: Annotated[float | None, typer.Option(
        help="--render: chain a clip to the previous one when their keyframes' cosine "
             "similarity is at least this (default: the zoo's calibrated fusion.json, else "
             "0.9).")] = None,
    attributes: Annotated[Path | None, typer.Option(
        help="Attribute decoder (a `rtdecode train ridge` model, e.g. the zoo's "
             "attributes/) on the same windows: caption headers also carry the decoded "
             "`attributes` and the `composed` captions worded from them. Default: the "
             "render worker's, with --render and a zoo that has one; else off.")] = None,
) -> None:
    """Run the scanner-side daemon: decode volumes as they arrive and publish captions (and,
    with --render, video clips)."""
    import logging
    import signal

    from .daemon import Daemon
    from .endpoints import check_publish, open_source, parse_endpoint
    from .journal import Journal
    from .transport.zmq import ZmqPublisher

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if render:
            _check_render_zoo(zoo)  # before anything slow
        cfg = load_config(config)
        ep = parse_endpoint(source or cfg.stream.source)
        pub_uri = check_publish(publish or cfg.stream.publish)
        dec = _load_decoder(cfg, model, subject)
        mask_arr = None
        if mask is not None:
            import numpy as np

            from .data import load_nifti
            from .engine import ModelMismatch, mask_hash

            mask_arr = np.asanyarray(load_nifti(mask, 3).dataobj) > 0
            want = dec.meta.get("trained_on", {}).get("mask_hash")
            got = mask_hash(mask_arr, int(mask_arr.sum()))
            if want is not None and want != got:
                raise ModelMismatch(f"{mask}: mask hash {got} differs from the model's {want} "
                                    "(the model was trained on another voxel space)")
        worker = _render_worker(zoo, subject, render_steps, fusion_threshold,
                                dec.engine.n_inputs, semantics, latents) if render else None
        if attributes is not None:
            from .engine import DecoderModel
            from .render.captioner import check_attribute_decoder

            attr_model = DecoderModel.load(attributes)
            try:
                check_attribute_decoder(attr_model, dec.engine.n_inputs)
            except ValueError as exc:
                raise ValueError(f"--attributes {attributes}: {exc}") from exc
        else:
            attr_model = getattr(getattr(worker, "captioner", None), "model", None)
        src = open_source(ep, recv_timeout_s=idle_exit, stop_on_eos=once,
                          max_bytes=int(cfg.stream.max_message_mb * 2**20))
    except (ConfigError, DataError, ValueError, FileNotFoundError, TimeoutError,
            RuntimeError) as exc:
        _fail(str(exc))
    if dec.meta.get("kind") == "sad":
        typer.echo(f"decoder: SAD {dec.meta['subject']} ({dec.meta['steps']} steps) via "
                   f"{dec.meta['backend']}, engine {dec.meta['engine_key'][:12]} "
                   f"({dec.meta['engine_path']})", err=True)
    jpath = journal or Path(cfg.stream.journal_dir) / time.strftime("%Y%m%d-%H%M%S.jsonl")
    publisher = ZmqPublisher(pub_uri)
    outlet = None
    if cfg.stream.lsl_captions if lsl_captions is None else lsl_captions:
        from .transport.lsl import LslCaptionOutlet

        outlet = LslCaptionOutlet(session=session)
    daemon = Daemon(cfg, dec, src, publisher, journal=Journal(jpath), caption_outlet=outlet,
                    session=session, mask=mask_arr, renderer=worker, attributes=attr_model)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: daemon.stop())
    if wait_subscribers and not publisher.wait_for_subscribers(wait_subscribers, 30.0):
        typer.echo(f"warning: fewer than {wait_subscribers} subscriber(s) after 30 s; "
                   "starting anyway", err=True)
    typer.echo(f"serving: volumes from {ep}, outputs on {pub_uri}, journal {jpath}", err=True)
    status = daemon.run()
    publisher.close()
    if outlet is not None:
        outlet.close()
    c = status["counters"]
    typer.echo(f"stopped: {c['received']} volumes received, {c['decoded']} decoded, "
               f"{c['finals']} final captions; malformed {c['malformed']}, dropped "
               f"{c['dropped']}, late {c['late']}, duplicates {c['duplicates']}, missing "
               f"{c['missing']}", err=True)
    if worker is not None:
        typer.echo(f"rendered {c['renders']} clips; {c['renders_dropped']} skipped (renderer "
                   f"behind), {c['render_errors']} failed", err=True)


def _check_render_zoo(zoo: Path) -> None:
    if not (zoo / "unet").is_dir():
        raise FileNotFoundError(f"--render: {zoo} has no unet/ (the renderer's UNet): train it "
                                "with `rtdecode train unet` (and `rtdecode train motion`) or "
                                "`make zoo`, or pass --zoo")


def _render_worker(zoo: Path, subject: str, steps: int, fusion_threshold: float | None,
                   n_inputs: int, semantics: str = "auto", latents: str = "auto"):
    """``serve --render``'s worker from the zoo, checked against the decoder's input."""
    _check_render_zoo(zoo)
    try:
        from .render.cvr import CVRSettings
        from .render.session import fusion_threshold as calibrated
        from .render.worker import RenderWorker
    except ImportError as exc:
        raise RuntimeError(f"--render needs torch and diffusers: {exc}") from exc
    if fusion_threshold is None:
        fusion_threshold = calibrated(zoo)
    _check_semantics(semantics, latents)
    worker = RenderWorker.from_zoo(zoo, subject, settings=CVRSettings(steps=steps),
                                   fusion_threshold=fusion_threshold, semantics=semantics,
                                   latents=latents)
    if worker.n_voxels != n_inputs:
        raise ValueError(f"--render: the decoder takes {n_inputs} inputs per window, the "
                         f"zoo's SAD ({zoo / 'sad'}) takes {worker.n_voxels} for {subject!r}; "
                         "serve a decoder of the same voxel space and window (e.g. --model "
                         f"{zoo / 'sad'})")
    typer.echo(f"renderer: {zoo} ({steps} steps, MAD {'on' if worker.mad else 'off'}, "
               f"conditioned on {'decoded attributes' if worker.captioner else 'SAD'}, "
               f"fusion threshold {fusion_threshold:g})", err=True)
    return worker


@app.command()
def replay(
    data: Annotated[Path, typer.Argument(help="Session directory (BIDS-like).")],
    to: Annotated[str, typer.Option(help="zmq://HOST:PORT (connect PUSH to a serving daemon) "
                                         "or lsl:NAME (create an fMRI outlet).")
                  ] = "zmq://127.0.0.1:5555",
    subject: Annotated[str, typer.Option(help="Subject to replay.")] = "sub-01",
    task: Annotated[str, typer.Option(help="Task of the runs to replay.")] = "test",
    run: Annotated[int | None, typer.Option(help="Run number (default: the first; "
                                                 "--all for every run of the task).")] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Replay every run of the task, "
                                                         "one session each.")] = False,
    speed: Annotated[float, typer.Option(help="Pace at this multiple of real time.")] = 1.0,
    max_speed: Annotated[bool, typer.Option("--max-speed", help="Send as fast as "
                                                                "possible.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the receiving daemon "
                                             "(ZeroMQ) or an LSL consumer.")] = 10.0,
) -> None:
    """Replay recorded runs TR by TR, as a scanner would send them (paced by target
    timestamps with drift correction, not sleep(TR))."""
    import numpy as np

    from .data import load_session
    from .endpoints import open_sink, parse_endpoint
    from .sources import RunSource

    try:
        ep = parse_endpoint(to)
        sess = load_session(data, subject)
        runs = sess.runs_of(task)
        if not runs:
            raise DataError(f"{data}: {subject} has no {task!r} runs")
        if not all_runs:
            runs = [next((r for r in runs if r.run == run), None) if run else runs[0]]
            if runs[0] is None:
                raise DataError(f"{data}: {subject} has no {task!r} run {run}")
        if ep.kind == "lsl" and len(runs) > 1:
            raise ValueError("an LSL stream carries one run; choose one with --run")
    except (DataError, ValueError) as exc:
        _fail(str(exc))
    total, lateness = 0, []
    for r in runs:
        label = f"{subject}_task-{r.task}_run-{r.run:02d}"
        sink = open_sink(ep, n_voxels=sess.n_voxels, tr=r.tr, session=label, wait_s=wait)
        if ep.kind == "lsl" and not sink.wait_for_consumers(wait):
            _fail(f"no consumer connected to LSL stream {ep.address!r} within {wait:g} s")
        src = RunSource(r, speed=None if max_speed else speed, session=label)
        try:
            for vol in src:
                sink.send(vol)
                total += 1
        except TimeoutError:
            _fail(f"no daemon took volumes at {ep} within {wait:g} s (is `rtdecode serve` "
                  "running there?)")
        lateness += src.pacer.lateness
        if ep.kind == "zmq":
            sink.close(send_eos=r is runs[-1])
        else:
            sink.close()
        typer.echo(f"sent {label}: {r.n_trs} TRs", err=True)
    if ep.kind == "zmq":
        import zmq

        zmq.Context.instance().term()  # returns once queued volumes are delivered (linger)
    msg = f"replayed {total} volumes of {len(runs)} run(s) to {ep}"
    if lateness:
        ms = np.asarray(lateness) * 1e3
        msg += f"; pacing lateness p50 {np.percentile(ms, 50):.2f} ms, p99 " \
               f"{np.percentile(ms, 99):.2f} ms"
    typer.echo(msg)


@app.command()
def subscribe(
    uri: Annotated[str, typer.Argument(help="The daemon's PUB endpoint.")
                   ] = "tcp://127.0.0.1:5556",
    topics: Annotated[str, typer.Option(help="Comma-separated topics: caption, semantics, "
                                             "video, status.")] = "caption",
    final_only: Annotated[bool, typer.Option(help="Print final captions only.")] = False,
    save: Annotated[Path | None, typer.Option(help="Save received captions (captions.jsonl) "
                                                   "and video clips here: each as "
                                                   "SESSION_clip-ID_chain-ID.mp4 and .npy "
                                                   "(raw frames), headers in clips.jsonl.")
                    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON header per "
                                                         "line.")] = False,
    count: Annotated[int | None, typer.Option(help="Exit after this many final captions.")
                     ] = None,
    timeout: Annotated[float | None, typer.Option(help="Exit after this many seconds without "
                                                       "a message.")] = None,
) -> None:
    """Print decoded captions live (and save them, and clips)."""
    from .transport.zmq import ZmqSubscriber
    from .wire import OUTPUT_TOPICS, video_frames

    wanted = [t.strip() for t in topics.split(",") if t.strip()]
    bad = [t for t in wanted if t not in OUTPUT_TOPICS]
    if bad:
        _fail(f"unknown topic(s) {bad}; choose from {list(OUTPUT_TOPICS)}")
    fh = vh = None
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        fh = (save / "captions.jsonl").open("a", encoding="utf-8", buffering=1)
        if "video" in wanted:
            vh = (save / "clips.jsonl").open("a", encoding="utf-8", buffering=1)
    finals = 0
    sub = ZmqSubscriber(uri, topics=tuple(wanted), recv_timeout_s=timeout)
    try:
        for topic, header, buffers in sub:
            if topic == "caption":
                if fh is not None:
                    fh.write(json.dumps(header) + "\n")
                finals += bool(header.get("final"))
                if final_only and not header.get("final"):
                    continue
            elif topic == "video" and save is not None:
                from .render.video import save_clip

                save_clip(save, header.get("session", ""), header["clip_id"],
                          header["chain_id"], video_frames(header, buffers), header["fps"])
                vh.write(json.dumps(header) + "\n")
            if as_json:
                typer.echo(json.dumps({"topic": topic, **header}))
            elif topic == "caption":
                t = header["text"]
                kind = "final" if header["final"] else "prov."
                typer.echo(f"TR {header['tr_index']:4d} {kind} {header['score']:+.2f} "
                           f"{header.get('latency_ms', 0):6.1f} ms | {t['anchor']} | "
                           f"{t['motion']}")
                c = header.get("composed")
                if isinstance(c, dict):  # the daemon's attribute decoder: an extension key
                    typer.echo(f"{'':31}composed | {c.get('anchor', '')} | "
                               f"{c.get('motion', '')}")
            else:
                typer.echo(f"[{topic}] " + json.dumps(header)[:200])
            if count is not None and finals >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
        for h in (fh, vh):
            if h is not None:
                h.close()


zoo_app = typer.Typer(help="The toy model zoo.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("pack")
def zoo_pack(
    src: Annotated[Path, typer.Argument(help="Folder of trained checkpoints (clip/, vae/, "
                                             "sad/, mlp/, noise_free/, mad/).")
                   ] = Path("runs/zoo"),
    dst: Annotated[Path, typer.Argument(help="Where the float16 copies go.")] = ZOO_DIR,
) -> None:
    """Pack trained checkpoints as the shipped zoo: float16 weights, configs, loss curves."""
    from .zoo.pack import pack_zoo

    try:
        sizes = pack_zoo(src, dst)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    for name, n in sizes.items():
        typer.echo(f"{name:12} {n / 1e6:7.2f} MB")
    typer.echo(f"{'total':12} {sum(sizes.values()) / 1e6:7.2f} MB -> {dst}")


bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("latency")
def bench_latency_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    tr: Annotated[float, typer.Option(help="TR used for the 1x runs (seconds).")] = 2.0,
    trs: Annotated[int, typer.Option(help="TRs per 1x run.")] = 10,
    trs_max: Annotated[int, typer.Option(help="TRs per max-speed run.")] = 600,
    soak: Annotated[int, typer.Option(help="TRs of the throughput / RSS soak.")] = 3600,
    transports: Annotated[str, typer.Option(help="Comma-separated: zmq, lsl.")] = "zmq,lsl",
    voxels: Annotated[str, typer.Option(help="Comma-separated voxel counts.")
                      ] = "15000,100000",
) -> None:
    """Volume-in -> caption-out latency (1x and max speed) over ZeroMQ and LSL for 15k and
    100k voxels, with the transport's own floor, throughput and RSS growth."""
    import logging

    from .bench import bench_latency

    logging.getLogger("rtdecode").setLevel(logging.ERROR)
    say = (lambda m: typer.echo(m, err=True)) if as_json else typer.echo
    try:
        kinds = tuple(t.strip() for t in transports.split(",") if t.strip())
        vox = tuple(int(v) for v in voxels.split(","))
        if set(kinds) - {"zmq", "lsl"} or not kinds:
            raise ValueError(f"transports {transports!r}: choose from zmq, lsl")
    except ValueError as exc:
        _fail(str(exc))
    result = bench_latency(vox, kinds, trs_1x=trs, tr=tr, trs_max=trs_max, trs_soak=soak,
                           progress=say)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"{'':10} {'p50 ms':>8} {'p99 ms':>8} {'floor p99':>10} {'decode p99':>10} "
               f"{'overhead p99':>12} {'max-speed p99':>13} {'TR/s':>8}")
    for kind in kinds:
        for key, r in result[kind].items():
            typer.echo(f"{kind + ' ' + key:10} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                       f"{r['floor_p99_ms']:10.2f} {r['decode_p99_ms']:10.2f} "
                       f"{r['overhead_p99_ms']:12.2f} {r['max_speed_p99_ms']:13.2f} "
                       f"{r['max_speed_tr_per_s']:8.1f}")
    typer.echo(f"throughput (zmq 15k, max speed): {result['throughput_tr_per_s']} TR/s; "
               f"RSS growth over {result['soak_trs']} TRs: {result['rss_growth_mb']} MB")


@bench_app.command("decode")
def bench_decode_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    model: Annotated[Path | None, typer.Option(help="Trained toy SAD checkpoint (default: a "
                                                    "random toy SAD).")] = None,
    presets: Annotated[str, typer.Option(help="Comma-separated: toy, paper.")] = "toy,paper",
    iters: Annotated[int, typer.Option(help="Timed decodes, toy preset.")] = 200,
    paper_iters: Annotated[int, typer.Option(help="Timed decodes, paper preset.")] = 20,
    batch: Annotated[int, typer.Option(help="Windows per decode (the daemon decodes "
                                            "width_trs windows per TR: 2).")] = 2,
    threads: Annotated[int, typer.Option(help="Threads for every backend (1: fair on a "
                                              "2-core machine that runs other jobs).")] = 1,
    voxels: Annotated[int, typer.Option(help="Voxels of the random models.")] = 13447,
    steps: Annotated[int | None, typer.Option(help="Refineformer sampling steps in every "
                                                   "graph (default: each model's own).")
                     ] = None,
) -> None:
    """Per-TR decode latency p50/p99: torch eager vs onnxruntime fp32 and int8, toy and paper
    SAD presets, with ratios and int8 accuracy."""
    import logging

    from export.bench_decode import bench_decode, format_table

    logging.getLogger("rtdecode").setLevel(logging.ERROR)
    say = (lambda m: typer.echo(m, err=True)) if as_json else typer.echo
    names = tuple(p.strip() for p in presets.split(",") if p.strip())
    if not names or set(names) - {"toy", "paper"}:
        _fail(f"presets {presets!r}: choose from toy, paper")
    if model is not None and not (model / "sad.safetensors").is_file():
        _fail(f"{model}: not a SAD checkpoint (no sad.safetensors)")
    if batch < 1 or threads < 1 or iters < 1 or paper_iters < 1:
        _fail("batch, threads, iters and paper-iters must be >= 1")
    if steps is not None and not 0 <= steps <= 64:
        _fail(f"steps {steps}: want 0..64")
    result = bench_decode(names, checkpoint=model, iters={"toy": iters, "paper": paper_iters},
                          batch=batch, threads=threads, voxels=voxels, steps=steps, say=say)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(format_table(result))


@bench_app.command("render")
def bench_render_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    zoo: Annotated[Path, typer.Option(help="Weights: clip/, vae/, unet/ (motion/, sad/, mad/ "
                                           "for decoded inputs).")] = ZOO_DIR,
    data: Annotated[Path | None, typer.Option(help="Session (default: the study config's, "
                                                   "simulated if absent).")] = None,
    clips: Annotated[int, typer.Option(help="Test clips rendered per setting.")] = 8,
    inputs: Annotated[str, typer.Option(help="decoded (SAD + MAD on single-trial test "
                                             "windows) or truth (true captions and "
                                             "latents).")] = "decoded",
    steps: Annotated[int, typer.Option(help="Our scheduler steps.")] = 4,
    guidance: Annotated[float, typer.Option(help="Our classifier-free guidance (1 = off).")
                        ] = 1.0,
    anchor_guidance: Annotated[float, typer.Option(help="Our stage 2's own guidance (0 = "
                                                        "--guidance's; 1 with --guidance 3: "
                                                        "the video stage guided alone).")
                               ] = 0.0,
    distilled: Annotated[bool, typer.Option(
        "--distilled/--no-distilled", help="Our stage 3 on the zoo's guidance-distilled UNet "
                                           "(unet_guided/), when it has one.")] = True,
    anchor_strength: Annotated[float | None, typer.Option(
        help="Our stage 2 strength (0-1; default: by the latents, 0.125 for the layout "
             "sketch's or true ones, 0.8 for MAD's).")] = None,
    video_strength: Annotated[float | None, typer.Option(
        help="Our stage 3 strength (0-1; default: by the latents, as --anchor-strength)."
    )] = None,
    motion_module_fraction: Annotated[float, typer.Option(
        help="Our stage 3: share of its steps that run the motion module.")] = 0.3,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    sequential: Annotated[bool, typer.Option(
        "--sequential", help="Time all of ours, then all of NeuroClips' (default: they take "
                             "turns clip by clip, so load from other work hits both alike)."
    )] = False,
    config: Annotated[Path | None, typer.Option(help="Config (default: configs/study.toml).")
                      ] = None,
    semantics: SemanticsOpt = "auto",
    latents: LatentsOpt = "auto",
) -> None:
    """Seconds per 2-s clip (8 frames, 64x64) and quality (SSIM, CLIP-PCC, VIFI against the
    true clips): our few-step settings vs NeuroClips' (25 DDIM steps, CFG 8.5), same weights
    and inputs, in one run."""
    from .render.bench import bench_render
    from .render.cvr import CVRSettings

    say = (lambda m: typer.echo(m, err=True)) if as_json else typer.echo
    try:
        if clips < 1 or threads < 1:
            raise ValueError("clips and threads must be >= 1")
        cfg = load_config(config if config is not None else STUDY_CONFIG)
        root = data or Path(cfg.data.root)
        if data is None:
            _ensure_session(cfg, root)
        _check_semantics(semantics, latents)
        result = bench_render(zoo, root, cfg, n_clips=clips, inputs=inputs, threads=threads,
                              settings=CVRSettings(steps=steps, guidance=guidance,
                                                   anchor_guidance=anchor_guidance or None,
                                                   distilled_video=distilled,
                                                   anchor_strength=anchor_strength,
                                                   video_strength=video_strength,
                                                   motion_module_fraction=motion_module_fraction
                                                   ),
                              progress=not as_json,
                              interleave=not sequential, semantics=semantics,
                              latents=latents)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    say(f"{result['clips']} clips x {result['frames_per_clip']} frames, inputs "
        f"{result['inputs']}, motion module {'on' if result['motion_module'] else 'off'}, "
        f"{result['threads']} threads; our video stage on the "
        f"{'guidance-distilled' if result['ours']['distilled_video'] else 'plain'} UNet")
    say(f"{'settings':11} {'steps':>5} {'s/clip':>7} {'SSIM':>6} {'CLIP-PCC':>8} {'VIFI':>6}")
    for name in ("ours", "neuroclips"):
        r = result[name]
        say(f"{name:11} {r['steps']:5d} {r['seconds_per_clip']:7.3f} {r['ssim']:6.3f} "
            f"{r['clip_pcc']:8.3f} {r['vifi']:6.3f}")
    say(f"speed-up: {result['speedup']}x (medians: {result['speedup_p50']}x; "
        f"{'interleaved' if result['interleaved'] else 'sequential'})")


def _int_list(flag: str, text: str, example: str) -> tuple[int, ...]:
    """A comma-separated integer flag's value, or a ValueError naming the flag and value."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} {text!r}: want integers separated by commas, e.g. "
                         f"{example}") from None


def _parse_batch(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ValueError(f"--batch {text!r}: give min,opt,max, e.g. 1,4,32")
    return parts


@app.command("export")
def export_cmd(
    model: Annotated[Path, typer.Option(help="Trained checkpoint directory: SAD "
                                             "(sad.safetensors), MAD (mad.safetensors) or "
                                             "the toy VAE (vae.safetensors: its decoder).")],
    subject: Annotated[str | None, typer.Option(help="Subject whose graph to export (one "
                                                     "graph per subject; default: the only "
                                                     "one).")] = None,
    steps: Annotated[int | None, typer.Option(help="SAD: Refineformer steps baked into the "
                                                   "graph (default: the checkpoint's).")
                     ] = None,
    data: Annotated[Path | None, typer.Option(help="SAD: session for the caption bank "
                                                   "(training clips) and real inputs for the "
                                                   "parity check and int8 accuracy.")] = None,
    clip: Annotated[Path | None, typer.Option(help="SAD: toy CLIP the bank is encoded with "
                                                   "(default: the checkpoint's).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="SAD: also build the int8 (dynamic "
                                                      "quantization) engine.")] = False,
    tensorrt: Annotated[bool, typer.Option("--tensorrt", help="Also build a TensorRT plan "
                                                              "(needs TensorRT and a GPU).")
                        ] = False,
    precision: Annotated[str, typer.Option(help="TensorRT plan precision: fp16 or fp32.")
                         ] = "fp16",
    batch: Annotated[str, typer.Option(help="Batch min,opt,max (the optimization profile).")
                     ] = "1,4,32",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    store: Annotated[Path | None, typer.Option(help="Engine store (default: [engine] "
                                                    "store).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the key exists.")
                     ] = False,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifests.")] = False,
) -> None:
    """Export a checkpoint to ONNX (checked; parity against torch), optionally int8 and a
    TensorRT plan, into the engine store; reuses an engine whose key already exists."""
    try:
        cfg = load_config(config)
        if precision not in ("fp16", "fp32"):
            raise ValueError(f"--precision {precision!r}: fp16 or fp32")
        from export import ExportRequest, export_checkpoint

        req = ExportRequest(model, store=store or Path(cfg.engine.store), subject=subject,
                            steps=steps, batch=_parse_batch(batch), opset=opset, int8=int8,
                            tensorrt=tensorrt, precision=precision, data=data, clip=clip,
                            config=config, force=force)
        outcomes = export_checkpoint(req, progress=not as_json)
    except (ConfigError, DataError, ValueError, KeyError, FileNotFoundError,
            RuntimeError, MemoryError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps([o.record.manifest for o in outcomes], indent=2))
        return
    for o in outcomes:
        m = o.record.manifest
        line = f"{o.status:6} {m['artifact']:9} {o.record.path}"
        par = m.get("checks", {}).get("parity")
        if par:
            line += (f"  parity max abs {par['max_abs']:.2e}, max rel {par['max_rel']:.2e} "
                     f"(atol {par['atol']:g}, rtol {par['rtol']:g}; sets "
                     f"{', '.join(par['sets'])}); exporter {m['export']['exporter']}")
        acc = m.get("accuracy")
        if acc:
            line += f"  int8 vs fp32 pooled corr {acc['pooled_corr_mean']:.4f}"
            if acc.get("caption_50way_fp32") is not None:
                line += (f", caption 50-way {acc['caption_50way_fp32']:.3f} -> "
                         f"{acc['caption_50way_int8']:.3f}")
            elif acc.get("caption_top1_agreement") is not None:
                line += f", caption top-1 agreement {acc['caption_top1_agreement']:.3f}"
        typer.echo(line)


engines_app = typer.Typer(help="The engine store: list and re-check built engines.",
                          no_args_is_help=True)
app.add_typer(engines_app, name="engines")
StoreOpt = Annotated[Path | None, typer.Option(help="Engine store (default: [engine] store).")]


@engines_app.command("list")
def engines_list(store: StoreOpt = None, config: ConfigOpt = None,
                 as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
                 ) -> None:
    """Show the built engines: key, model, subject, artifact, steps, parity, size."""
    from .backends import list_engines

    try:
        root = store or Path(load_config(config).engine.store)
    except ConfigError as exc:
        _fail(str(exc))
    recs = list_engines(root)
    if as_json:
        typer.echo(json.dumps([{"path": str(r.path), **r.manifest} for r in recs], indent=2))
        return
    if not recs:
        typer.echo(f"{root}: no engines (build one with `rtdecode export --model DIR`)")
        return
    typer.echo(f"{'key':12} {'kind':11} {'subject':10} {'artifact':9} {'steps':>5} "
               f"{'batch':>9} {'parity abs':>10} {'MB':>8}  created")
    for r in recs:
        m = r.manifest
        par = m.get("checks", {}).get("parity", {}).get("max_abs")
        batch = "{min}-{max}".format(**r.spec["batch"])
        parity = "-" if par is None else f"{par:.1e}"
        mb = sum(f["bytes"] for f in m.get("files", {}).values()) / 2**20
        typer.echo(f"{r.key[:12]} {m['kind']:11} {r.spec['subject']:10} {m['artifact']:9} "
                   f"{r.spec['options'].get('steps', '-')!s:>5} {batch:>9} {parity:>10} "
                   f"{mb:8.1f}  {m['created']}")


@engines_app.command("verify")
def engines_verify(
    keys: Annotated[list[str] | None, typer.Argument(help="Key prefixes (default: all).")
                    ] = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    no_parity: Annotated[bool, typer.Option("--no-parity", help="Skip re-running the "
                                                                "parity check.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-check engines: file hashes, the ONNX checker, whether the checkpoint changed since
    (stale), and parity against torch. Exit status 1 if any is not ok."""
    from .backends import list_engines

    try:
        root = store or Path(load_config(config).engine.store)
    except ConfigError as exc:
        _fail(str(exc))
    from export.store import verify

    recs = [r for r in list_engines(root) if not keys or any(r.key.startswith(k)
                                                             for k in keys)]
    if not recs:
        _fail(f"{root}: no engines{' match ' + ', '.join(keys) if keys else ''}")
    reports = [verify(r, rerun_parity=not no_parity) for r in recs]
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
    else:
        for rep in reports:
            typer.echo(f"{rep['status']:7} {rep['key'][:12]} {rep['path']}")
            for c in rep["checks"]:
                typer.echo(f"        {c}")
    if any(r["status"] != "ok" for r in reports):
        raise typer.Exit(1)


journal_app = typer.Typer(help="Inspect and replay session journals.", no_args_is_help=True)
app.add_typer(journal_app, name="journal")


@journal_app.command("show")
def journal_show(path: Annotated[Path, typer.Argument(help="Journal file (.jsonl).")]) -> None:
    """Summarise a journal: volumes by status, outputs by topic, the final status."""
    from collections import Counter

    from .journal import read_journal

    if not path.is_file():
        _fail(f"{path}: journal not found")
    records, torn = read_journal(path)
    vols = Counter(r.get("status") for r in records if r.get("kind") == "volume")
    outs = Counter(r.get("topic") for r in records if r.get("kind") == "output")
    sessions = sorted({str(r.get("session")) for r in records if r.get("kind") == "volume"})
    closed = any(r.get("kind") == "close" for r in records)
    typer.echo(f"{path}: {len(records)} records{f', {torn} torn line(s)' if torn else ''}; "
               f"{'closed cleanly' if closed else 'NOT closed (the daemon stopped abruptly)'}")
    typer.echo(f"sessions: {', '.join(sessions) or '-'}")
    typer.echo("volumes: " + (", ".join(f"{k} {v}" for k, v in vols.items()) or "none"))
    typer.echo("outputs: " + (", ".join(f"{k} {v}" for k, v in outs.items()) or "none"))


@journal_app.command("replay")
def journal_replay(
    path: Annotated[Path, typer.Argument(help="Journal file (.jsonl).")],
    publish: Annotated[str, typer.Option(help="Where to bind the PUB socket.")
                       ] = "tcp://127.0.0.1:5556",
    speed: Annotated[float, typer.Option(help="Multiple of the original timing.")] = 1.0,
    max_speed: Annotated[bool, typer.Option("--max-speed", help="No pacing.")] = False,
    wait_subscribers: Annotated[int, typer.Option(help="Wait (up to 30 s) for this many "
                                                       "subscribers first.")] = 1,
) -> None:
    """Re-publish a journal's outputs (captions, status, ...) with their original timing, so
    a recorded session can be watched again by the same subscribers."""
    from .journal import iter_outputs, read_journal
    from .sources import Pacer
    from .transport.zmq import ZmqPublisher

    if not path.is_file():
        _fail(f"{path}: journal not found")
    records, _ = read_journal(path)
    outs = list(iter_outputs(records))
    if not outs:
        _fail(f"{path}: no outputs to replay")
    pub = ZmqPublisher(publish)
    if wait_subscribers and not pub.wait_for_subscribers(wait_subscribers, 30.0):
        typer.echo("warning: no subscriber after 30 s; publishing anyway", err=True)
    t0 = outs[0]["header"].get("t_emit", 0.0)
    pacer = Pacer(1.0, None if max_speed else speed)
    n = 0
    for rec in outs:
        h = rec["header"]
        pacer.wait(h.get("t_emit", t0) - t0)  # index in seconds: period 1 s
        try:
            pub.publish(rec["topic"], h)
            n += 1
        except ValueError as exc:  # e.g. a video header whose frames were not journaled
            typer.echo(f"skipped a {rec['topic']} record: {exc}", err=True)
    pub.close()
    typer.echo(f"re-published {n} outputs from {path}")


@train_app.command("clip")
def train_clip_cmd(
    data: Annotated[Path, typer.Option(help="Simulated session (its stimuli are used).")],
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/zoo/clip"),
    steps: Annotated[int, typer.Option(help="Training steps.")] = 600,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after "
                                                           "this long.")] = None,
    fp16: Annotated[bool, typer.Option(help="Store the final weights as float16.")] = True,
) -> None:
    """Train the toy CLIP (open_clip, custom small config) on the session's training clips;
    resumable."""
    import dataclasses

    from .zoo.clip import TOY_RECIPE, train_clip

    cfg = dataclasses.replace(TOY_RECIPE, steps=steps)
    try:
        train_clip(data, out, cfg, max_minutes=max_minutes, save_fp16=fp16)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"saved {out}")


@train_app.command("vae")
def train_vae_cmd(
    data: Annotated[Path, typer.Option(help="Simulated session (its stimuli are used).")],
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/zoo/vae"),
    steps: Annotated[int, typer.Option(help="Training steps.")] = 1200,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after "
                                                           "this long.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    object_weight: Annotated[float, typer.Option(help="Extra L1 weight on the objects' "
                                                      "pixels (0: plain L1, as the shipped "
                                                      "VAE was trained).")] = 0.0,
    channels: Annotated[str | None, typer.Option(
        help="Encoder (and decoder) width per level; n levels downsample n - 1 times, so "
             "16,32 gives 32x32 latents (default 16,32,64).")] = None,
    latent_channels: Annotated[int, typer.Option(help="Channels of the latent.")] = 4,
) -> None:
    """Train the toy VAE (diffusers AutoencoderKL, 64x64 -> 4x16x16 by default) on the
    session's training-clip frames; resumable (run the same command again to continue)."""
    import dataclasses

    from .zoo.vae import ToyVAEConfig, train_vae

    try:
        arch = {} if channels is None else {
            "block_out_channels": _int_list("--channels", channels, "16,32,64")}
        cfg = dataclasses.replace(ToyVAEConfig(), **arch, steps=steps,
                                  object_weight=object_weight, latent_channels=latent_channels)
        vae = train_vae(data, out, cfg, max_minutes=max_minutes, threads=threads)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    m = json.loads((out / "config.json").read_text())["metrics"]
    typer.echo(f"saved {out}: held-out PSNR {m['val_psnr_db']} dB at step {m['step']}, "
               f"latents {vae.latent_shape}")


@train_app.command("vae-decoder")
def train_vae_decoder_cmd(
    data: Annotated[Path, typer.Option(help="Simulated session (its stimuli are used).")],
    vae: Annotated[Path, typer.Option(help="The trained toy VAE.")] = Path("runs/zoo/vae"),
    out: Annotated[Path | None, typer.Option(help="Output directory (default: in place).")
                   ] = None,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 500,
    object_weight: Annotated[float, typer.Option(help="Extra loss weight on the objects' "
                                                      "pixels.")] = 8.0,
    decoder_channels: Annotated[str | None, typer.Option(
        help="Train a new, wider decoder from scratch on the frozen encoder's latents, e.g. "
             "32,64,128 (one width per level; default: fine-tune the VAE's own decoder).")
                                ] = None,
    lr: Annotated[float | None, typer.Option(
        help="Peak learning rate (default 3e-4; 1e-3 with a 50-step warm-up for a new "
             "decoder).")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (and save) after this "
                                                           "long.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
) -> None:
    """Fine-tune the toy VAE's decoder only, with the objects' pixels weighted up (the
    encoder and so the latent space stay exactly the same: MAD and the UNet are unaffected).
    A decoder already fine-tuned is left as it is, unless ``--decoder-channels`` asks for a new
    one."""
    from .zoo.vae import CONFIG_FILE, finetune_decoder

    try:
        chans = None if decoder_channels is None else _int_list(
            "--decoder-channels", decoder_channels, "32,64,128")
        meta = json.loads((vae / CONFIG_FILE).read_text())
        if chans is None and "decoder_finetune" in meta.get("metrics", {}):
            typer.echo(f"{vae}: decoder already fine-tuned "
                       f"({meta['metrics']['decoder_finetune']}); nothing to do")
            return
        dst = out or vae
        finetune_decoder(data, vae, dst, steps=steps, object_weight=object_weight,
                         threads=threads, decoder_channels=chans, max_minutes=max_minutes,
                         lr=lr if lr is not None else 1e-3 if chans else 3e-4,
                         warmup_steps=50 if chans else 0)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    m = json.loads((dst / CONFIG_FILE).read_text())["metrics"]
    before = m["decoder_finetune"]["val_psnr_before_db"]
    typer.echo(f"saved {dst}: held-out PSNR {'new decoder' if before is None else before} -> "
               f"{m['val_psnr_db']} dB")


@train_app.command("unet")
def train_unet_cmd(
    data: Annotated[Path, typer.Option(help="Simulated session (its stimuli are used).")],
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/zoo/unet"),
    clip: Annotated[Path, typer.Option(help="Toy CLIP: the conditioning space.")
                    ] = ZOO_DIR / "clip",
    vae: Annotated[Path, typer.Option(help="Toy VAE: the latent space.")] = ZOO_DIR / "vae",
    steps: Annotated[int, typer.Option(help="Training steps.")] = 5000,
    schedule: Annotated[str, typer.Option(help="Noise schedule: sd15 (epsilon) or zero_snr "
                                               "(zero terminal SNR, v-prediction).")
                        ] = "sd15",
    init: Annotated[Path | None, typer.Option(help="Start from this UNet checkpoint's weights "
                                                   "(fine-tune) instead of from scratch.")
                    ] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 3e-4).")
                  ] = None,
    object_weight: Annotated[float, typer.Option(help="Extra training-loss weight on the "
                                                      "latent cells the objects cover.")
                             ] = 0.0,
    low_t_fraction: Annotated[float, typer.Option(
        help="Share of each batch trained at low noise (timesteps below --low-t-max) instead "
             "of over the whole range: the steps that draw the objects' final outlines.")
                              ] = 0.0,
    low_t_max: Annotated[int, typer.Option(help="The low-noise timesteps' bound.")] = 300,
    distill_guidance: Annotated[float, typer.Option(
        help="Guidance distillation: fine-tune the --init UNet to predict in one pass what it "
             "predicts with classifier-free guidance of this scale (0: off).")] = 0.0,
    channels: Annotated[str | None, typer.Option(
        help="The UNet's channels per level, comma-separated, e.g. 96,192,192 (default "
             "64,128,128; with --init, the init UNet's).")] = None,
    layers_per_block: Annotated[int | None, typer.Option(
        help="ResNet (and attention) layers per level (default 1; with --init, the init "
             "UNet's).")] = None,
    plain_levels: Annotated[int | None, typer.Option(
        help="The first (finest) levels without attention, e.g. 1 for a VAE with 32x32 "
             "latents (default 0; with --init, the init UNet's).")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after "
                                                           "this long.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
) -> None:
    """Train the toy text-conditioned UNet (diffusers UNet2DConditionModel on the toy VAE's
    latents, cross-attending to the toy CLIP's caption token states); resumable. With
    ``--init`` a trained UNet is fine-tuned, e.g. to ``--schedule zero_snr``."""
    import dataclasses

    from .zoo.unet import ToyUNetConfig, unet_arch

    try:
        arch = unet_arch(init) if init is not None else {}
        if channels is not None:
            arch["block_out_channels"] = _int_list("--channels", channels, "96,192,192")
        if layers_per_block is not None:
            arch["layers_per_block"] = layers_per_block
        if plain_levels is not None:
            arch["plain_levels"] = plain_levels
        cfg = dataclasses.replace(ToyUNetConfig(), **arch, steps=steps, schedule=schedule,
                                  object_weight=object_weight,
                                  low_t_fraction=low_t_fraction, low_t_max=low_t_max,
                                  distill_guidance=distill_guidance,
                                  **({"lr": lr} if lr is not None else {}))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    _train_render("unet", data, clip, vae, out, cfg, max_minutes=max_minutes, threads=threads,
                  init_dir=init)


def _train_render(kind: str, data: Path, clip: Path, vae: Path, out: Path, cfg, **kw) -> None:
    """`train unet` / `train motion`: encode the session once (cached), train, report."""
    from .zoo.unet import prepare_data, train_render_model

    try:
        rd = prepare_data(data, clip, vae, cfg, cache_dir=out.parent / "render_cache")
        train_render_model(kind, rd, out, cfg, **kw)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    m = json.loads((out / "config.json").read_text())["metrics"]
    typer.echo(f"saved {out}: validation loss {m['val_loss']} at step {m['step']}")


@train_app.command("motion")
def train_motion_cmd(
    data: Annotated[Path, typer.Option(help="Simulated session (its stimuli are used).")],
    unet: Annotated[Path, typer.Option(help="The trained toy UNet (kept frozen).")
                    ] = Path("runs/zoo/unet"),
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/zoo/motion"),
    clip: Annotated[Path, typer.Option(help="Toy CLIP: the conditioning space.")
                    ] = ZOO_DIR / "clip",
    vae: Annotated[Path, typer.Option(help="Toy VAE: the latent space.")] = ZOO_DIR / "vae",
    steps: Annotated[int, typer.Option(help="Training steps.")] = 1500,
    batch_size: Annotated[int, typer.Option(help="Clips (of 8 frames) per step.")] = 4,
    object_weight: Annotated[float, typer.Option(help="Extra training-loss weight on the "
                                                      "latent cells the objects cover.")
                             ] = 0.0,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after "
                                                           "this long.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
) -> None:
    """Train the toy motion module (diffusers MotionAdapter, AnimateDiff-style) on 8-frame
    clips with the toy UNet frozen; resumable."""
    import dataclasses

    from .zoo.unet import ToyUNetConfig

    try:
        cfg = dataclasses.replace(ToyUNetConfig(), steps=steps, batch_size=batch_size,
                                  checkpoint_every=100, snapshot_every=500, lr=1e-3,
                                  object_weight=object_weight)
    except ValueError as exc:
        _fail(str(exc))
    _train_render("motion", data, clip, vae, out, cfg, unet_dir=unet, max_minutes=max_minutes,
                  threads=threads)


@train_app.command("probe")
def train_probe_cmd(
    data: Annotated[Path, typer.Option(help="Simulated session (its stimuli are used).")],
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/zoo/probe"),
    steps: Annotated[int, typer.Option(help="Training steps (the shipped probe: 4000).")
                     ] = 4000,
    width: Annotated[int, typer.Option(help="Channels of the probe's first layer (the "
                                            "shipped probe: 32).")] = 32,
    what_depth: Annotated[int, typer.Option(
        help="Conv layers of the stack that reads shape, colour and background: 5, or 6 "
             "(one more strided layer: a view of 43 px instead of 27, so a large diamond's "
             "two diagonals fit in it; the shipped probe).")] = 6,
    max_blur: Annotated[float, typer.Option(
        help="Blur every training example by a Gaussian of sigma ~ U(0, this) pixels, so "
             "soft edges and rounded corners are not read as other shapes (0: crisp frames "
             "only; the shipped probe).")] = 0.0,
    max_noise: Annotated[float, typer.Option(
        help="Add pixel noise of std ~ U(0, this) (frames in [-1, 1]).")] = 0.0,
    through_vae: Annotated[Path | None, typer.Option(
        help="Toy VAE: show the shape/colour/background stack a share of its frames "
             "through this VAE (the renderer's output domain), labelled with the true "
             "attributes.")] = None,
    vae_fraction: Annotated[float, typer.Option(
        help="With --through-vae: the share of frames sent through it.")] = 0.5,
    latent_noise: Annotated[float, typer.Option(
        help="With --through-vae: latent noise of std ~ U(0, this) (scaled latents).")
                            ] = 0.0,
    fresh: Annotated[float, typer.Option(
        help="Share of each batch drawn anew by the simulator every step, with the "
             "session's stimulus config (0: the session's training clips only; the shipped "
             "probe: 1, so it never sees a clip twice).")] = 1.0,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
) -> None:
    """Train the attribute probe (two small CNNs on a clip's true frames) that
    measures render fidelity: background, colour, shape, position, motion."""
    import numpy as np
    import torch

    from .render.fidelity import probe_accuracy, train_probe
    from .simulator.session import stimulus_config
    from .zoo.clip import load_stimuli
    from .zoo.vae import load_toy_vae

    torch.set_num_threads(threads)
    try:
        frames, records = load_stimuli(data)
        vae = load_toy_vae(through_vae) if through_vae is not None else None
        stimulus = stimulus_config(data) if fresh > 0 else None
        probe = train_probe(frames, records, out, steps=steps, width=width,
                            what_depth=what_depth, max_blur=max_blur, max_noise=max_noise, vae=vae,
                            vae_fraction=vae_fraction, latent_noise=latent_noise,
                            fresh=fresh, stimulus=stimulus)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    test = [r for r in records if r["split"] == "test"]
    acc = probe_accuracy(probe, np.asarray(frames[[r["clip_id"] for r in test]]), test)
    typer.echo(f"saved {out}: accuracy on the true test clips "
               + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))


@train_app.command("fusion")
def train_fusion_cmd(
    data: Annotated[Path, typer.Option(help="Simulated session (its training clips are "
                                            "used).")],
    clip: Annotated[Path, typer.Option(help="Toy CLIP (keyframe embeddings).")
                    ] = ZOO_DIR / "clip",
    out: Annotated[Path, typer.Option(help="Where fusion.json goes.")
                   ] = Path("runs/zoo/fusion.json"),
) -> None:
    """Calibrate the multi-fMRI fusion threshold on the training clips (adjacent keyframe
    similarity vs same scene, F1-optimal)."""
    from .render.session import calibrate_fusion
    from .zoo.clip import load_toy_clip

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        r = calibrate_fusion(data, load_toy_clip(clip), out)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    m = r["train_metrics"]
    typer.echo(f"saved {out}: threshold {r['threshold']} (training pairs: precision "
               f"{m['precision']}, recall {m['recall']}, f1 {m['f1']})")


@train_app.command("sad")
def train_sad_cmd(
    data: Annotated[Path | None, typer.Option(help="Session directory (default: the "
                                                   "config's data.root).")] = None,
    clip: Annotated[Path, typer.Option(help="Trained toy CLIP (the target space).")
                    ] = Path("runs/zoo/clip"),
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/zoo/sad"),
    preset: Annotated[str, typer.Option(help="Size preset: toy or paper; or 'mlp' for the "
                                             "Mind-Animator-style MLP baseline.")] = "toy",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 60,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this long.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads (2 cores: 2, or 1 each for two "
                                              "trainings side by side).")] = 2,
    subjects: Annotated[str | None, typer.Option(help="Comma-separated subjects (default: "
                                                      "all).")] = None,
    levels: Annotated[str, typer.Option(help="Target levels, comma-separated (drop one for "
                                             "the SemVideo ablations).")
                      ] = "anchor,motion,holistic",
    noise_free: Annotated[bool, typer.Option("--noise-free", help="Train on the simulator's "
                                             "noise-free BOLD (the noise_free ceiling).")
                          ] = False,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    config: ConfigOpt = None,
) -> None:
    """Train SAD on every subject of a session (one model, per-subject projections);
    the checkpoint is chosen on a validation split of the training runs; resumable."""
    from .data import list_subjects, load_session
    from .engine import provenance
    from .models.evaluate import CaptionTargets
    from .models.sad import LEVELS, mlp_baseline, sad_preset
    from .models.train import TrainConfig, subject_windows, train_sad
    from .zoo.clip import load_toy_clip

    try:
        cfg = load_config(config)
        root = data or Path(cfg.data.root)
        labels = subjects.split(",") if subjects else list_subjects(root)
        sessions = [load_session(root, s) for s in labels]
        clip_model = load_toy_clip(clip)
        voxels = {s.subject: s.n_voxels for s in sessions}
        lv = tuple(v.strip() for v in levels.split(",") if v.strip())
        bad = [v for v in lv if v not in LEVELS]
        if bad or not lv:
            raise ValueError(f"--levels {levels!r}: each must be one of {list(LEVELS)}")
        sad_cfg = mlp_baseline(voxels, token_dim=clip_model.token_width, levels=lv) \
            if preset == "mlp" else sad_preset(preset, voxels, token_dim=clip_model.token_width,
                                               levels=lv)
        targets = CaptionTargets(sessions[0].clips, clip_model, sad_cfg.n_tokens, lv)
        tcfg = TrainConfig(epochs=epochs, max_minutes=max_minutes, threads=threads, seed=seed)
        windows = [subject_windows(s, cfg, "train", tcfg.val_fraction, noise_free=noise_free)
                   for s in sessions]
    except (ConfigError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    meta = {"clip": str(clip), "bold": "noise_free" if noise_free else "scan",
            "trained_on": {s.subject: provenance(s, cfg) for s in sessions}}
    summary = train_sad(windows, targets, sad_cfg, tcfg, out, meta)
    typer.echo(f"saved {out}: best validation error (1 - 50-way caption identification, "
               f"+ mse / 1000) {summary['best_val_error']:.4f} after "
               f"{summary['epochs']} epochs, {summary['minutes']} min")


@train_app.command("mad")
def train_mad_cmd(
    data: Annotated[Path | None, typer.Option(help="Session directory (default: the "
                                                   "config's data.root).")] = None,
    clip: Annotated[Path, typer.Option(help="Trained toy CLIP (motion-semantics space).")
                    ] = Path("runs/zoo/clip"),
    vae: Annotated[Path, typer.Option(help="Trained toy VAE (the latent space).")
                   ] = Path("runs/zoo/vae"),
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/zoo/mad"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 12,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this long.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    no_cross: Annotated[bool, typer.Option("--no-cross", help="Ablation: no cross-attention "
                                           "to the motion semantics.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Train MAD (fMRI + motion semantics -> per-frame VAE latents) on every subject of a
    session; trained with the true motion-caption tokens as the cross-attention input
    (SAD's decoded ones at evaluation); checkpoint chosen on a validation split; resumable."""
    from .data import list_subjects, load_session
    from .engine import provenance
    from .models.evaluate import LatentTargets
    from .models.mad import MADConfig
    from .models.train import TrainConfig, subject_windows, train_mad
    from .zoo.clip import load_stimuli, load_toy_clip
    from .zoo.vae import load_toy_vae

    try:
        cfg = load_config(config)
        root = data or Path(cfg.data.root)
        sessions = [load_session(root, s) for s in list_subjects(root)]
        clip_model, vae_model = load_toy_clip(clip), load_toy_vae(vae)
        frames, _ = load_stimuli(root)
        typer.echo(f"encoding {len(frames)} clips' frames with the toy VAE ...")
        targets = LatentTargets(frames, sessions[0].clips, vae_model, clip_model, 16)
        mad_cfg = MADConfig(subjects={s.subject: s.n_voxels for s in sessions},
                            n_frames=int(frames.shape[1]), latent_shape=vae_model.latent_shape,
                            token_dim=clip_model.token_width, use_cross=not no_cross)
        tcfg = TrainConfig(epochs=epochs, max_minutes=max_minutes, threads=threads)
        windows = [subject_windows(s, cfg, "train", tcfg.val_fraction) for s in sessions]
    except (ConfigError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    meta = {"clip": str(clip), "vae": str(vae),
            "trained_on": {s.subject: provenance(s, cfg) for s in sessions}}
    summary = train_mad(windows, targets, mad_cfg, tcfg, out, meta)
    typer.echo(f"saved {out}: best validation latent mse {summary['best_val_error']:.4f} "
               f"after {summary['epochs']} epochs, {summary['minutes']} min")


def _ensure_session(cfg, root: Path) -> None:
    """Simulate the config's session into ``root`` unless it is already there."""
    from .simulator import preset as make_preset
    from .simulator import simulate as run_simulation

    if (root / "dataset_description.json").is_file() and (root / "simulation.json").is_file():
        runs = json.loads((root / "simulation.json").read_text()).get("runs")
        if runs is not None:  # `simulate --only` (the demo's): not enough to evaluate on
            raise DataError(f"{root}: a partial simulation (only {', '.join(runs)}); this "
                            "command needs the full session: simulate it into another "
                            "directory and pass --data, or remove this one")
        return  # a session is there (the checkpoints check it matches, by provenance)
    sim = make_preset(cfg.simulate.preset, seed=cfg.simulate.seed,
                      n_subjects=cfg.simulate.n_subjects, tr=cfg.simulate.tr)
    _check_output_dir(root)
    typer.echo(f"simulating {root} (preset {sim.preset}, seed {sim.seed}, "
               f"{sim.n_subjects} subject(s)) ...", err=True)
    run_simulation(root, sim, progress=sys.stderr.isatty())


@app.command("eval")
def eval_cmd(
    data: Annotated[Path | None, typer.Option(help="Session directory (default: the "
                                                   "config's data.root, simulated if "
                                                   "absent).")] = None,
    zoo: Annotated[Path, typer.Option(help="Checkpoints: a folder with clip/, sad/, mlp/, "
                                           "noise_free/, vae/, mad/ (those present are "
                                           "evaluated).")] = ZOO_DIR,
    steps: Annotated[int | None, typer.Option(help="Refineformer sampling steps (default: "
                                                   "the checkpoint's).")] = None,
    trials: Annotated[int, typer.Option(help="N-way trials per decoded clip.")] = 100,
    oracle: Annotated[bool, typer.Option(help="Also the oracle ceiling (simulated data "
                                              "only).")] = True,
    ablations: Annotated[Path | None, typer.Option(help="A folder of SAD ablation "
                                                        "checkpoints (one sub-folder each): "
                                                        "per-level caption identification.")
                         ] = None,
    steps_sweep: Annotated[str | None, typer.Option(help="Comma-separated Refineformer "
                                                         "steps: accuracy and latency each.")
                           ] = None,
    render: Annotated[bool, typer.Option("--render/--no-render",
                                         help="Also render held-out test clips (sad, mlp, "
                                              "ridge, and the renderer's ceiling from true "
                                              "inputs; needs unet/ and vae/ in --zoo) and "
                                              "score them with the anchors' video metrics. "
                                              "Slow: off by default.")] = False,
    render_clips: Annotated[int, typer.Option(help="--render: test clips rendered per method "
                                                   "and condition.")] = 50,
    render_steps: Annotated[int, typer.Option(help="--render: scheduler steps.")] = 4,
    threads: Annotated[int, typer.Option(help="--render: torch threads.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: Annotated[Path | None, typer.Option(help="Config (default: configs/study.toml, "
                                                     "what the shipped zoo was trained on).")
                      ] = None,
) -> None:
    """Caption identification (2-way, 50-way) of held-out test clips for SAD, ridge, the MLP
    baseline and two ceilings (oracle, noise_free), single-trial and repeat-averaged; MAD's
    latent error and per-frame retrieval; with --render the video metrics (N-way image and
    video identification, SSIM, PSNR, Hue-PCC, VIFI, CLIP-PCC, EPE) of rendered test clips.
    With no arguments: the shipped toy zoo on the default study session (simulated
    deterministically if absent, ~1 min)."""
    from .models.zoo_eval import SubjectEval, Zoo, aggregate, subject_report

    try:
        if render_clips < 1 or threads < 1:
            raise ValueError(f"--render-clips {render_clips}, --threads {threads}: want >= 1")
        cfg = load_config(config if config is not None else STUDY_CONFIG)
        root = data or Path(cfg.data.root)
        if data is None:
            _ensure_session(cfg, root)
        cvr = _eval_renderer(zoo, render_steps, threads) if render else None
        models = Zoo.load(zoo)
        sweep = [int(v) for v in steps_sweep.split(",")] if steps_sweep else []
        per: dict = {}
        for s in models.subjects(root):
            se = SubjectEval.build(root, s, cfg, models)
            per[s] = subject_report(se, steps=steps, trials=trials, oracle=oracle,
                                    ablations=ablations, sweep=sweep,
                                    say=lambda m: typer.echo(m, err=True))
            if cvr is not None:
                _merge_video(per[s], se, cvr, render_clips, trials, progress=not as_json)
    except (ConfigError, DataError, ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    out = aggregate(per)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(format_eval_table(out))


def _eval_renderer(zoo: Path, steps: int, threads: int):
    """The CVR of ``eval --render``: the zoo's renderer, checked before anything slow."""
    import torch

    from .render.cvr import CVR, CVRSettings

    _check_render_zoo(zoo)
    torch.set_num_threads(threads)
    return CVR.from_zoo(zoo, settings=CVRSettings(steps=steps))


def _merge_video(report: dict, se, cvr, n_clips: int, trials: int, progress: bool) -> None:
    """Render and score one subject's test clips; metrics merged into ``report[cond]``."""
    from .render.suite import video_suite

    suite = video_suite(se, cvr, n_clips, trials, progress=progress)
    for cond, by_method in suite.metrics.items():
        for method, scores in by_method.items():
            report[cond].setdefault(method, {}).update(scores)


VIDEO_COLUMNS = ("video_2way", "video_50way", "ssim", "psnr", "hue_pcc", "vifi", "clip_pcc",
                 "epe")


def format_eval_table(out: dict) -> str:
    """``rtdecode eval``'s text output: caption identification, other figures, and (after
    ``--render``) the video metrics."""
    lines = [f"{'condition':12} {'decoder':10} {'2-way':>7} {'50-way':>7}"]
    video = []
    for cond in ("single_trial", "averaged"):
        for dec, r in out[cond].items():
            if "caption_2way" in r:
                lines.append(f"{cond:12} {dec:10} {r['caption_2way']:7.3f} "
                             f"{r['caption_50way']:7.3f}")
            elif "ssim" not in r:
                lines.append(f"{cond:12} {dec:10} " + "  ".join(f"{k} {v:.3f}"
                                                                for k, v in r.items()))
            if "ssim" in r:
                video.append(f"{cond:12} {dec:10} " + "".join(f"{r[k]:>12.3f}"
                                                             for k in VIDEO_COLUMNS))
    lines.append(f"{'chance':23} {0.5:7.3f} {0.02:7.3f}")
    if video:
        lines += ["", f"{'condition':12} {'method':10} " + "".join(f"{k:>12}"
                                                                 for k in VIDEO_COLUMNS)]
        lines += video
    return "\n".join(lines)


@app.command("render")
def render_cmd(
    out: Annotated[Path, typer.Option(help="Video to write (.mp4 or .gif).")
                   ] = Path("runs/render/test_run.mp4"),
    zoo: Annotated[Path, typer.Option(help="Weights: clip/, vae/, unet/, motion/, sad/, "
                                           "mad/.")] = ZOO_DIR,
    data: Annotated[Path | None, typer.Option(help="Session (default: the study config's, "
                                                   "simulated if absent).")] = None,
    clips: Annotated[int, typer.Option(help="Clips of the first test run to render.")] = 30,
    inputs: Annotated[str, typer.Option(help="decoded (SAD + MAD, single trial) or "
                                             "truth.")] = "decoded",
    steps: Annotated[int, typer.Option(help="Scheduler steps.")] = 4,
    fusion: Annotated[bool, typer.Option(help="Multi-fMRI fusion: chain clips of one "
                                              "scene.")] = True,
    threshold: Annotated[float | None, typer.Option(help="Fusion similarity threshold "
                                                         "(default: the zoo's calibrated "
                                                         "one).")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: Annotated[Path | None, typer.Option(help="Config (default: configs/study.toml).")
                      ] = None,
    semantics: SemanticsOpt = "auto",
    latents: LatentsOpt = "auto",
) -> None:
    """Reconstruct a test run offline: decode each clip's single-trial window (SAD, MAD),
    render it (CVR, with fusion) and write a side-by-side ground truth | reconstruction video
    with the decoded and true captions."""
    from .render.cvr import CVRSettings
    from .render.session import render_run

    try:
        cfg = load_config(config if config is not None else STUDY_CONFIG)
        root = data or Path(cfg.data.root)
        if data is None:
            _ensure_session(cfg, root)
        out.parent.mkdir(parents=True, exist_ok=True)
        _check_semantics(semantics, latents)
        result = render_run(zoo, root, cfg, out, n_clips=clips, inputs=inputs,
                            settings=CVRSettings(steps=steps), fusion=fusion,
                            threshold=threshold, threads=threads, progress=not as_json,
                            semantics=semantics, latents=latents)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for r in result["clips"]:
        typer.echo(f"clip {r['clip_id']:5d} chain {r['chain_id']!s:>4} scene {r['scene_id']!s:>4}"
                   f"  {r['decoded']}  |  truth: {r['truth']}")
    typer.echo(f"wrote {result['video']} ({len(result['clips'])} clips, "
               f"{result['seconds_per_clip']} s per clip)")


@app.command("fidelity")
def fidelity_cmd(
    zoo: Annotated[Path, typer.Option(help="Weights: clip/, vae/, unet/, motion/, sad/, mad/, "
                                           "probe/.")] = ZOO_DIR,
    data: Annotated[Path | None, typer.Option(help="Session (default: the study config's, "
                                                   "simulated if absent).")] = None,
    clips: Annotated[int, typer.Option(help="Test clips per condition.")] = 60,
    conditions: Annotated[str, typer.Option(help="Comma-separated: true_frames, blurred "
                                                 "(true frames, Gaussian blur of 1 px), vae, "
                                                 "truth, text_only, motion_frames "
                                                 "(the decoded latents through the VAE), "
                                                 "decoded, decoded_captions (decoded "
                                                 "semantics + true latents), "
                                                 "decoded_latents (true captions + the "
                                                 "decoded latents: MAD's or the sketch's), "
                                                 "decoded_text (decoded semantics "
                                                 "alone).")
                          ] = "true_frames,vae,truth,text_only,motion_frames,decoded",
    curve: Annotated[Path | None, typer.Option(help="A UNet training folder with snapshots/: "
                                                    "fidelity per snapshot instead (writes "
                                                    "curve.csv and curve.png there).")] = None,
    steps: Annotated[int, typer.Option(help="Scheduler steps.")] = 4,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance (1 = off).")] = 1.0,
    anchor_guidance: Annotated[float | None, typer.Option(
        help="Stage 2's own guidance (default: --guidance).")] = None,
    anchor_strength: Annotated[float | None, typer.Option(
        help="Stage 2: how far the first motion frame is re-noised (0-1; default: by the "
             "latents, 0.125 for the layout sketch's or true ones, 0.8 for MAD's).")] = None,
    video_strength: Annotated[float | None, typer.Option(
        help="Stage 3: how far the motion latents are re-noised (0-1; default: by the "
             "latents, as --anchor-strength).")] = None,
    motion_module_fraction: Annotated[float, typer.Option(
        help="Stage 3: share of its steps (the first ones) that run the motion module "
             "(1 = every step).")] = 0.3,
    probe: Annotated[Path | None, typer.Option(help="Attribute probe folder (default: "
                                                    "ZOO/probe).")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: Annotated[Path | None, typer.Option(help="Config (default: configs/study.toml).")
                      ] = None,
    semantics: SemanticsOpt = "auto",
    latents: LatentsOpt = "auto",
) -> None:
    """Render fidelity: background, colour, shape, position and motion accuracy of rendered
    test clips (attribute probe; toy CLIP zero-shot beside it), from true and from decoded
    semantics, with the classifiers' ceiling on the true frames."""
    import torch

    from .render.cvr import CVRSettings
    from .render.evaluate import fidelity_curve, fidelity_report
    from .render.fidelity import load_probe

    torch.set_num_threads(threads)
    try:
        cfg = load_config(config if config is not None else STUDY_CONFIG)
        root = data or Path(cfg.data.root)
        if data is None:
            _ensure_session(cfg, root)
        classifier = load_probe(probe if probe is not None else zoo / "probe")
        if curve is not None:
            rows = fidelity_curve(curve, zoo, root, cfg, classifier, curve, n_clips=clips)
            typer.echo(json.dumps(rows, indent=2) if as_json else
                       f"wrote {curve / 'curve.csv'} and {curve / 'curve.png'} "
                       f"({len(rows)} snapshots)")
            return
        conds = tuple(c.strip() for c in conditions.split(",") if c.strip())
        settings = CVRSettings(steps=steps, guidance=guidance, anchor_guidance=anchor_guidance,
                               anchor_strength=anchor_strength, video_strength=video_strength,
                               motion_module_fraction=motion_module_fraction)
        _check_semantics(semantics, latents)
        result = fidelity_report(zoo, root, cfg, classifier, n_clips=clips, conditions=conds,
                                 settings=settings, progress=not as_json,
                                 semantics=semantics, latents=latents)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from .render.fidelity import ATTRIBUTES
    from .simulator.stimuli import ATTRIBUTE_GROUPS

    typer.echo(f"{result['clips']} test clips; attribute accuracy, probe (toy CLIP zero-shot)"
               + (f"; decoded inputs: {result['semantics']}" if "semantics" in result else ""))
    typer.echo(f"{'condition':14}" + "".join(f"{a:>18}" for a in ATTRIBUTES))
    for cond in conds:
        r = result[cond]
        cells = [f"{r['probe'][a]:.2f}" + (f" ({r['clip_zero_shot'][a]:.2f})"
                                           if a in r.get("clip_zero_shot", {}) else "")
                 for a in ATTRIBUTES]
        typer.echo(f"{cond:14}" + "".join(f"{c:>18}" for c in cells))
    shapes = [v for v in ATTRIBUTE_GROUPS["shape"]
              if any(v in result[c]["probe_by_shape"] for c in conds)]
    typer.echo("\nshape accuracy per shape, single-object clips (clips)")
    typer.echo(f"{'condition':14}" + "".join(f"{v:>12}" for v in shapes))
    for cond in conds:
        by = result[cond]["probe_by_shape"]
        cells = [f"{by[v]['accuracy']:.2f} ({by[v]['clips']})" if v in by else "-"
                 for v in shapes]
        typer.echo(f"{cond:14}" + "".join(f"{c:>12}" for c in cells))


@app.command("report")
def report_cmd(
    out: Annotated[Path, typer.Option(help="Folder for REPORT.md, report.json and the "
                                           "PNGs.")] = Path("docs/report"),
    data: Annotated[Path | None, typer.Option(help="Session (default: the study config's, "
                                                   "simulated if absent).")] = None,
    zoo: Annotated[Path, typer.Option(help="Weights: clip/, vae/, unet/, motion/, sad/, mlp/, "
                                           "noise_free/, mad/ (fusion.json if "
                                           "calibrated).")] = ZOO_DIR,
    ablations: Annotated[Path | None, typer.Option(help="Folder of SAD ablation checkpoints "
                                                        "(default: ZOO/ablations if there).")
                         ] = None,
    render_clips: Annotated[int | None, typer.Option(help="Test clips rendered per method "
                                                          "and condition (default 50; "
                                                          "--quick 2).")] = None,
    neuroclips_clips: Annotated[int | None, typer.Option(help="Clips per setting, few-step "
                                                              "vs NeuroClips (default 8; "
                                                              "--quick 1).")] = None,
    trials: Annotated[int | None, typer.Option(help="N-way trials (default 100; --quick "
                                                    "10).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Few clips and trials, short sweeps, "
                                                        "no ridge video: every section in "
                                                        "under a minute on a tiny zoo (for "
                                                        "tests).")] = False,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    config: Annotated[Path | None, typer.Option(help="Config (default: configs/study.toml).")
                      ] = None,
) -> None:
    """Run the comparisons on one session and zoo and write REPORT.md (Markdown tables: ridge,
    MLP, SAD/MAD + CVR and ceilings with caption and video metrics; online vs offline
    preprocessing; SemVideo ablations; fused vs unfused video; few-step vs NeuroClips
    sampling) and PNG plots (accuracy vs HRF lag, provisional vs final, accuracy vs
    Refineformer steps, latency per stage, render time vs steps). Full run: 10-20 min on 2
    cores."""
    from .report import ReportOptions, build_report, write_report

    say = (lambda m: None) if quiet else (lambda m: typer.echo(m, err=True))
    try:
        given = {k: v for k, v in (("render_clips", render_clips),
                                   ("neuroclips_clips", neuroclips_clips),
                                   ("trials", trials)) if v is not None}
        if ablations is None and (zoo / "ablations").is_dir():
            ablations = zoo / "ablations"
        if ablations is not None and not ablations.is_dir():
            raise FileNotFoundError(f"--ablations {ablations}: not a folder")
        given.update(threads=threads, ablations=ablations)
        opts = ReportOptions.quick_options(**given) if quick else ReportOptions(**given)
        cfg = load_config(config if config is not None else STUDY_CONFIG)
        root = data or Path(cfg.data.root)
        if data is None:
            _ensure_session(cfg, root)
        result = build_report(root, zoo, cfg, opts, progress=not quiet, say=say)
        path = write_report(result, out)
    except (ConfigError, DataError, ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path} and its figures in {result['seconds']['total']:.0f} s")


@app.command("config")
def show_config(path: Annotated[Path | None, typer.Argument(help="Config file (default: "
                                                                 "configs/toy.toml).")] = None
                ) -> None:
    """Validate a config file and print its effective values as JSON."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(to_dict(cfg), indent=2))


@app.command()
def info(data: Annotated[Path, typer.Argument(help="Session directory.")]) -> None:
    """Summarise a session: subjects, voxels, runs, TR."""
    from .data import list_subjects, load_session

    try:
        for s in list_subjects(data):
            sess = load_session(data, s)
            tasks = {}
            for r in sess.runs:
                tasks.setdefault(r.task, []).append(r.n_trs)
            desc = ", ".join(f"{t}: {len(v)} runs / {sum(v)} TRs" for t, v in tasks.items())
            typer.echo(f"{s}: {sess.n_voxels} voxels, TR {sess.tr:g} s, {desc}")
    except DataError as exc:
        _fail(str(exc))


if __name__ == "__main__":  # pragma: no cover
    app()
