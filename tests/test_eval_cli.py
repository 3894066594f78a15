"""`rtdecode eval --json` on a tiny zoo: every decoder and ceiling, the documented shape, and
a checkpoint used on data it was not trained on is refused, naming what differs."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rtdecode.cli import app
from rtdecode.config import DEFAULT_CONFIG

SUBJECT = "sub-03"  # the subject the tiny_zoo fixture (conftest) is trained on

def test_eval_json_has_every_decoder_and_ceiling(small_session, tiny_zoo):
    res = CliRunner().invoke(app, ["eval", "--data", str(small_session), "--zoo",
                                   str(tiny_zoo), "--config", str(DEFAULT_CONFIG), "--trials",
                                   "10", "--ablations", str(tiny_zoo / "ablations"),
                                   "--steps-sweep", "0,2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for cond in ("single_trial", "averaged"):
        assert set(out[cond]) == {"sad", "ridge", "mlp", "oracle", "noise_free", "mad"}
        for dec in ("sad", "ridge", "mlp", "oracle", "noise_free"):
            r = out[cond][dec]
            assert 0.0 <= r["caption_2way"] <= 1.0 and 0.0 <= r["caption_50way"] <= 1.0
        assert set(out[cond]["mad"]) >= {"latent_mse", "latent_cosine", "frame_2way",
                                         "frame_50way"}
    # Only the subject the checkpoints know is evaluated.
    assert list(out["subjects"]) == [SUBJECT]
    levels = out["subjects"][SUBJECT]["levels"]
    assert set(levels) == {"sad", "without_motion"}
    assert set(levels["without_motion"]["single_trial"]) == {"anchor", "holistic", "all"}
    sweep = out["subjects"][SUBJECT]["steps_sweep"]
    assert [r["steps"] for r in sweep] == [0, 2] and sweep[1]["ms_per_tr_p50"] > 0
    # The oracle (likelihood under the simulator's own model) beats a barely trained SAD.
    assert out["single_trial"]["oracle"]["caption_50way"] > \
        out["single_trial"]["sad"]["caption_50way"]


def test_eval_refuses_a_checkpoint_from_other_data(small_session, tiny_zoo, tmp_path):
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, zoo)
    meta = json.loads((zoo / "sad" / "config.json").read_text())
    meta["trained_on"][SUBJECT]["lag_trs"] = 3
    (zoo / "sad" / "config.json").write_text(json.dumps(meta))
    res = CliRunner().invoke(app, ["eval", "--data", str(small_session), "--zoo", str(zoo),
                                   "--config", str(DEFAULT_CONFIG), "--no-oracle"])
    assert res.exit_code != 0
    assert "lag_trs" in res.output and "3" in res.output
