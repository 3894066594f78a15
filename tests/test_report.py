"""`rtdecode eval --render` and `rtdecode report --quick` on the tiny zoo: the anchors' video
metrics for every method and condition in valid ranges; the report's Markdown (every
section), JSON and figures. Plus the dual ridge against scikit-learn's."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from rtdecode.cli import app
from rtdecode.config import DEFAULT_CONFIG
from rtdecode.render.suite import class_prompts

N_WAY = ("image_2way", "image_50way", "video_2way", "video_50way")
BOUNDS = {"ssim": (-1.0, 1.0), "psnr": (0.0, 100.0), "hue_pcc": (0.0, 1.0),
          "vifi": (-1.0, 1.0), "clip_pcc": (0.0, 1.0), "epe": (0.0, 64.0)}


def test_eval_render_has_the_video_metrics(small_session, tiny_zoo):
    res = CliRunner().invoke(app, ["eval", "--data", str(small_session), "--zoo",
                                   str(tiny_zoo), "--config", str(DEFAULT_CONFIG), "--trials",
                                   "10", "--no-oracle", "--render", "--render-clips", "3",
                                   "--render-steps", "1", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for cond in ("single_trial", "averaged"):
        # attributes: the live default, captions composed from the zoo's attributes/ decoder
        for method in ("sad", "attributes", "mlp", "ridge", "ceiling"):
            r = out[cond][method]
            for k in N_WAY:
                assert 0.0 <= r[k] <= 1.0 and 0.0 <= r[f"{k}_pm"] <= 0.5, (cond, method, k)
            for k, (lo, hi) in BOUNDS.items():
                assert lo <= r[k] <= hi and r[f"{k}_pm"] >= 0.0, (cond, method, k, r[k])
        for method in ("sad", "mlp", "ridge"):  # the caption contract is untouched
            assert 0.0 <= out[cond][method]["caption_50way"] <= 1.0
    # the renderer's ceiling sees no brain data: both conditions are the same renders
    assert out["single_trial"]["ceiling"] == out["averaged"]["ceiling"]


def test_report_quick_writes_every_section(small_session, tiny_zoo, tmp_path):
    from rtdecode.report.markdown import SECTIONS

    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["report", "--quick", "--out", str(out), "--data",
                                   str(small_session), "--zoo", str(tiny_zoo), "--config",
                                   str(DEFAULT_CONFIG), "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    md = (out / "REPORT.md").read_text()
    for title in SECTIONS:
        assert f"## {title}" in md, title
    for name in ("hrf_lag", "provisional", "refine_steps", "latency", "render_time"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name}.png)" in md
    r = json.loads((out / "report.json").read_text())
    assert {"sad", "mlp", "ceiling", "oracle"} <= set(r["evaluation"]["averaged"])
    assert "ssim" in r["evaluation"]["averaged"]["sad"]  # --quick renders no ridge video
    assert set(r["evaluation"]["subjects"]["sub-03"]["levels"]) == {"sad", "without_motion"}
    assert [x["lag_trs"] for x in r["hrf_lag"]] == [0, 1, 2, 3, 4]
    assert set(r["provisional"]) >= {"ridge", "sad"}
    assert 0.0 <= r["fusion"]["fused"]["precision"] <= 1.0
    assert r["sampling"]["neuroclips"]["steps"] == 25
    assert [x["steps"] for x in r["render_time"]] == [1, 2]
    assert r["latency"]["samples"]["decode"] and r["latency"]["render"]


def test_dual_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge, RidgeCV

    from rtdecode.ridge import DualRidge

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 200))
    Y = X @ rng.standard_normal((200, 300)) * 0.1 + rng.standard_normal((60, 300)) + 3.0
    X_new = rng.standard_normal((5, 200))
    alphas = (1.0, 10.0, 100.0, 1000.0, 10000.0)
    ridge = DualRidge(X, alphas)
    np.testing.assert_allclose(ridge.predict(X_new, Y, 100.0),
                               Ridge(alpha=100.0).fit(X, Y).predict(X_new), atol=1e-4)
    assert ridge.select_alpha(Y, probe_dims=300) == RidgeCV(alphas=alphas).fit(X, Y).alpha_
    assert ridge.predict(X_new, Y.reshape(60, 3, 100)).shape == (5, 3, 100)


def test_class_prompts_allow_50_way_with_top_3():
    prompts = class_prompts()
    assert len(prompts) == len(set(prompts)) >= 50 - 1 + 3


def test_render_needs_a_renderer_and_sane_counts(small_session, tiny_zoo, tmp_path):
    no_unet = tmp_path / "zoo"
    no_unet.mkdir()
    (no_unet / "clip").symlink_to(tiny_zoo / "clip")
    common = ["--data", str(small_session), "--config", str(DEFAULT_CONFIG)]
    for args in (["eval", "--render", "--zoo", str(no_unet), *common],
                 ["report", "--quick", "--zoo", str(no_unet), "--out", str(tmp_path / "r"),
                  *common]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "unet" in res.output, res.output
    res = CliRunner().invoke(app, ["eval", "--render", "--render-clips", "0", "--zoo",
                                   str(tiny_zoo), *common])
    assert res.exit_code == 2 and "--render-clips 0" in res.output
