from __future__ import annotations

import json

from typer.testing import CliRunner

from rtdecode.cli import app

runner = CliRunner()


def test_version_and_help():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and "rtdecode" in r.output
    r = runner.invoke(app, ["--help"])
    for cmd in ("simulate", "ridge", "demo", "config", "info"):
        assert cmd in r.output


def test_simulate_then_ridge_json(tmp_path):
    out = tmp_path / "sess"
    r = runner.invoke(app, ["simulate", str(out), "--subjects", "1", "--seed", "4", "-q"])
    assert r.exit_code == 0, r.output
    assert "sub-01 (900 voxels)" in r.output
    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0 and "900 voxels" in r.output and "TR 2 s" in r.output
    r = runner.invoke(app, ["ridge", "--data", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["subject"] == "sub-01" and rep["single_trial"]["2way"] > 0.55


def test_bad_preset_and_config_are_clear_errors(tmp_path):
    r = runner.invoke(app, ["simulate", str(tmp_path / "x"), "--preset", "huge"])
    assert r.exit_code == 2 and "huge" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[window]\nlag = 2\n")
    r = runner.invoke(app, ["config", str(bad)])
    assert r.exit_code == 2 and "lag" in r.output and "bad.toml" in r.output
    r = runner.invoke(app, ["ridge", "--data", str(tmp_path / "none")])
    assert r.exit_code == 2 and "not found" in r.output


def test_simulate_refuses_foreign_nonempty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("lab notes")
    r = runner.invoke(app, ["simulate", str(tmp_path), "-q"])
    assert r.exit_code == 2 and "not empty" in r.output
    assert (tmp_path / "notes.txt").read_text() == "lab notes"


def test_journal_show_and_replay(tmp_path):
    import socket
    import threading

    from rtdecode.journal import Journal
    from rtdecode.transport.zmq import ZmqSubscriber

    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.volume("s", 0, 0.0, 1.0, "ok")
        j.volume("s", 1, 2.0, 3.0, "malformed", "bad")
        for k in range(3):
            j.output("caption", {"v": 1, "session": "s", "tr_index": k, "t_emit": 10.0 + k,
                                 "final": True, "text": {"anchor": "a", "motion": "m",
                                                         "holistic": "h"},
                                 "score": 0.5, "latency_ms": 1.0})
    r = runner.invoke(app, ["journal", "show", str(path)])
    assert r.exit_code == 0 and "ok 1, malformed 1" in r.output and "caption 3" in r.output
    assert "closed cleanly" in r.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = []
    sub = ZmqSubscriber(f"tcp://127.0.0.1:{port}", topics=("caption",), recv_timeout_s=10.0)

    def collect():
        for _, h, _ in sub:
            got.append(h["tr_index"])
            if len(got) == 3:
                return

    t = threading.Thread(target=collect)
    t.start()
    r = runner.invoke(app, ["journal", "replay", str(path), "--publish",
                            f"tcp://127.0.0.1:{port}", "--speed", "20"])
    t.join(15)  # the last message may still be in flight when the command returns
    sub.close()
    assert r.exit_code == 0, r.output
    assert got == [0, 1, 2]
