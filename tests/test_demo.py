"""`rtdecode demo` end to end on a tiny zoo, and the partial simulation it starts from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SUBJECT, tiny_config
from typer.testing import CliRunner

from rtdecode.cli import app
from rtdecode.data import load_session
from rtdecode.demo import NO_RENDERER
from rtdecode.simulator import simulate
from rtdecode.simulator.session import parse_run_selection

SUMMARY_KEYS = {"session", "decoder", "captions", "accuracy", "latency", "daemon", "renders",
                "video", "timings_s"}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_partial_simulation_is_the_full_one_restricted(tmp_path):
    """Only test run 2: every file written is byte-identical to the full simulation's."""
    cfg = tiny_config(seed=3)
    simulate(tmp_path / "full", cfg, progress=False)
    simulate(tmp_path / "part", cfg, progress=False, runs=[("test", 2)])
    full, part = _files(tmp_path / "full"), _files(tmp_path / "part")
    assert "sub-01/func/sub-01_task-test_run-02_bold.nii" in part
    assert not any("task-train" in f or "run-01" in f or "run-03" in f for f in part
                   if "/func/" in f)
    for name, data in part.items():
        if name in ("simulation.json", "sub-01/sub-01_scans.tsv"):
            continue
        assert data == full[name], name
    meta = json.loads((tmp_path / "part" / "simulation.json").read_text())
    assert meta["runs"] == ["task-test_run-02"]
    assert "runs" not in json.loads((tmp_path / "full" / "simulation.json").read_text())
    assert len(load_session(tmp_path / "part", "sub-01").runs) == 1


def test_run_selection_errors(tmp_path):
    assert parse_run_selection("test:1,train") == [("test", 1), ("train", None)]
    for bad in ("rest", "test:x", ""):
        with pytest.raises(ValueError):
            parse_run_selection(bad)
    with pytest.raises(ValueError, match="test runs 1..2"):
        simulate(tmp_path / "never-written", tiny_config(), progress=False,
                 runs=[("test", 9)])
    assert not (tmp_path / "never-written").exists()


def _demo(*args: str):
    return CliRunner().invoke(app, ["demo", "--subject", SUBJECT, "--json", *args])


def test_demo_live_captions_video_and_summary(small_session, tiny_zoo, tmp_path):
    out = tmp_path / "demo"
    # 20x real time: 38 volumes in ~4 s, faster than the renderer; 3 s to render dropped
    # clips afterwards, the rest marked
    r = _demo("--data", str(small_session), "--zoo", str(tiny_zoo), "--out", str(out),
              "--speed", "20", "--fill-budget", "3")
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(s)
    run = load_session(small_session, SUBJECT).runs_of("test")[0]
    # a final caption for every TR whose HRF window the run completes
    assert s["captions"]["finals"] == s["captions"]["expected"] == run.n_trs - 2 - 2 + 1
    assert s["captions"]["with_ground_truth"] == len(run.clip_ids)
    assert "shown (ground truth)" in r.output
    # the tiny zoo has an attributes/ decoder: the renderer draws the layout sketch
    assert "CVR on captions from decoded attributes and the layout sketch" in r.output
    assert s["daemon"]["received"] == run.n_trs and s["daemon"]["malformed"] == 0
    lat = s["latency"]["volume_to_caption"]
    assert lat["p50_ms"] > 0 and lat["p99_ms"] >= lat["p50_ms"]
    acc = s["accuracy"]
    assert 0 <= acc["attributes"]["mean"] <= 1 and 0 < acc["attributes"]["chance_mean"] < 1
    assert acc["identification"]["n_decoded"] == len(run.clip_ids)
    rd, v = s["renders"], s["video"]
    assert rd["done"] >= 1 and rd["errors"] == 0 and rd["received"] == rd["done"]
    # every clip of the run is in the video: rendered live, afterwards, or marked dropped
    assert v["clips"] == len(run.clip_ids) and v["after"] >= 1
    assert v["live"] + v["after"] + v["dropped"] == len(run.clip_ids)
    assert v["live"] == sum(k in s["renders"]["live_clips"] for k in run.stim_trs.tolist())
    # the tiny zoo has an attributes/ decoder: live clips carry the attributes they were
    # rendered from, scored against the shown clip
    # ... and the daemon words captions from the same decoder's attributes, for every final
    ca = acc["composed_attributes"]
    assert ca["n"] == s["captions"]["with_ground_truth"] and 0 <= ca["mean"] <= 1
    from rtdecode.cli import _format_demo_summary

    assert f"the captions' `composed`, {ca['n']} clips" in _format_demo_summary(
        s, out, out / "journal.jsonl")
    ra = acc["rendered_attributes"]
    if v["live"]:
        assert ra["n"] == v["live"] and 0 <= ra["mean"] <= 1
        assert {"background", "colour", "shape", "position", "motion"} <= set(ra["groups"])
        from rtdecode.cli import _format_demo_summary

        text = _format_demo_summary(s, out, out / "journal.jsonl")
        assert f"rendered from captions of decoded attributes ({ra['n']} live" in text
    else:
        assert ra is None
    from rtdecode.render.video import read_video

    frames = read_video(Path(v["path"]))
    assert frames.shape[0] == v["frames"] == 8 * len(run.clip_ids)
    assert (out / "journal.jsonl").is_file()


def test_demo_without_renderer_gives_captions_only(small_session, tiny_zoo, tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("clip", "sad", "mad", "vae"):  # no unet/: the zoo as shipped today
        (zoo / name).symlink_to(tiny_zoo / name)
    out = tmp_path / "demo"
    r = _demo("--data", str(small_session), "--zoo", str(zoo), "--out", str(out),
              "--max-speed")
    assert r.exit_code == 0, r.output
    assert NO_RENDERER in r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["video"] is None and s["renders"]["done"] == 0
    assert s["captions"]["finals"] == s["captions"]["expected"]
    assert not (out / "demo.mp4").exists()


def test_demo_refuses_foreign_data_and_mismatched_zoo(small_session, tiny_zoo, tmp_path):
    (tmp_path / "notes.txt").write_text("lab notes")
    r = CliRunner().invoke(app, ["demo", "--data", str(tmp_path), "--zoo", str(tiny_zoo)])
    assert r.exit_code == 2 and "never overwrites" in r.output
    assert (tmp_path / "notes.txt").read_text() == "lab notes"
    # sub-01 of the same session: the zoo was trained on sub-03 only
    r = CliRunner().invoke(app, ["demo", "--data", str(small_session), "--zoo", str(tiny_zoo),
                                 "--subject", "sub-01", "--max-speed"])
    assert r.exit_code == 2 and "sub-01" in r.output
