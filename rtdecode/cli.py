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

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="TOML config (default: configs/toy.toml).")]


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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Simulate a toy-world fMRI study (stimuli, subjects, runs) in a BIDS-like layout."""
    from .simulator import preset as make_preset
    from .simulator import simulate as run_simulation

    try:
        cfg = make_preset(preset, seed=seed, n_subjects=subjects, tr=tr)
    except ValueError as exc:
        _fail(str(exc))
    _check_output_dir(out)
    t0 = time.perf_counter()
    summary = run_simulation(out, cfg, progress=not quiet)
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
    config: ConfigOpt = None,
    data: Annotated[Path | None, typer.Option(help="Where the demo session lives (default: "
                                                   "the config's data.root).")] = None,
) -> None:
    """The main job on the embedded default: simulate the toy world (if needed), then decode
    it with the ridge baseline and print accuracy against chance and a shuffled control."""
    from .data import list_subjects, load_session
    from .ridge import run_ridge
    from .simulator import preset as make_preset
    from .simulator import simulate as run_simulation

    try:
        cfg = load_config(config)
        root = data or Path(cfg.data.root)
        sim = make_preset(cfg.simulate.preset, seed=cfg.simulate.seed,
                          n_subjects=cfg.simulate.n_subjects, tr=cfg.simulate.tr)
        if _session_matches(root, sim):
            typer.echo(f"reusing simulated session {root}")
        else:
            _check_output_dir(root)
            typer.echo(f"simulating the toy world into {root} (preset {sim.preset}, "
                       f"seed {sim.seed}) ...")
            run_simulation(root, sim, progress=sys.stderr.isatty())
        reports, controls = [], []
        for s in list(cfg.data.subjects) or list_subjects(root):
            session = load_session(root, s)
            reports.append(run_ridge(session, cfg))
            controls.append(run_ridge(session, cfg, shuffle=True))
    except (ConfigError, DataError, ValueError) as exc:
        _fail(str(exc))
    typer.echo("\nridge baseline, decoded on held-out test runs (causal online preprocessing):")
    typer.echo(format_ridge_table(reports))
    typer.echo("\ncontrol, the same decoder fitted on shuffled training labels:")
    typer.echo(format_ridge_table(controls))


def _session_matches(root: Path, sim) -> bool:
    from .simulator.session import config_dict

    meta = root / "simulation.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("config") == config_dict(sim)
    except json.JSONDecodeError:
        return False


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
