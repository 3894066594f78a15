"""The renderer's commands on a tiny zoo: bench render (ours vs NeuroClips' settings), the
offline side-by-side render of a test run, render fidelity, fusion calibration."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rtdecode.cli import app
from rtdecode.config import DEFAULT_CONFIG
from rtdecode.render.video import read_video


def run(*args: str) -> dict | list:
    res = CliRunner().invoke(app, [*args, "--config", str(DEFAULT_CONFIG), "--threads", "1",
                                   "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_bench_render_json_shape(small_session, tiny_zoo):
    out = run("bench", "render", "--zoo", str(tiny_zoo), "--data", str(small_session),
              "--clips", "2")
    for name in ("ours", "neuroclips"):
        r = out[name]
        assert {"seconds_per_clip", "steps", "ssim", "clip_pcc"} <= set(r)
        assert r["seconds_per_clip"] > 0 and -1.0 <= r["ssim"] <= 1.0
        assert 0.0 <= r["clip_pcc"] <= 1.0
    assert out["ours"]["steps"] == 4 and out["neuroclips"]["steps"] == 25
    assert out["neuroclips"]["guidance"] == 8.5
    # 25 DDIM steps (strengths 0.8 / 0.6) run many more UNet passes than our 4 (0.125 /
    # 0.125 on the layout sketch's latents: one step per stage)
    assert out["neuroclips"]["strengths"] == [0.8, 0.6]
    assert out["ours"]["strengths"] == [0.125, 0.125]
    assert out["neuroclips"]["unet_evals_per_clip"] > 5 * out["ours"]["unet_evals_per_clip"]
    # the tiny zoo has an attributes/ decoder: by default the renderer reads its captions
    # and draws the layout sketch of its attributes
    assert out["inputs"] == "decoded+attributes+sketch/single_trial" and out["clips"] == 2
    assert out["interleaved"] and out["speedup_p50"] > 0
    assert out["ours"]["motion_module_fraction"] == 0.3
    assert out["neuroclips"]["motion_module_fraction"] == 1.0
    # taking turns clip by clip renders the same clips as one setting after the other
    seq = run("bench", "render", "--zoo", str(tiny_zoo), "--data", str(small_session),
              "--clips", "2", "--sequential")
    assert not seq["interleaved"]
    for name in ("ours", "neuroclips"):
        for k in ("ssim", "clip_pcc", "vifi", "unet_evals_per_clip"):
            assert seq[name][k] == out[name][k]
    # our guidance, in the video stage alone: the same passes, each a doubled batch
    g = run("bench", "render", "--zoo", str(tiny_zoo), "--data", str(small_session),
            "--clips", "1", "--guidance", "3", "--anchor-guidance", "1")
    assert (g["ours"]["guidance"], g["ours"]["anchor_guidance"]) == (3.0, 1.0)
    assert out["ours"]["anchor_guidance"] == 1.0 and out["neuroclips"]["anchor_guidance"] == 8.5
    assert g["ours"]["unet_evals_per_clip"] == out["ours"]["unet_evals_per_clip"]


def test_render_writes_the_side_by_side_video(small_session, tiny_zoo, tmp_path):
    path = tmp_path / "run.mp4"
    out = run("render", "--zoo", str(tiny_zoo), "--data", str(small_session), "--clips", "3",
              "--out", str(path))
    assert out["video"] == str(path) and len(out["clips"]) == 3
    video = read_video(path)
    assert video.shape[0] == 3 * 8 and video.shape[-1] == 3
    assert video.shape[2] >= 2 * 64 * 4  # ground truth | reconstruction, upscaled 4x
    chains = [r["chain_id"] for r in out["clips"]]
    assert chains[0] == 0 and all(b >= a for a, b in zip(chains, chains[1:]))
    assert all(r["decoded"] and r["truth"] for r in out["clips"])


def test_fidelity_conditions(small_session, tiny_zoo):
    conds = ("true_frames", "blurred", "vae", "truth", "text_only", "motion_frames",
             "decoded", "decoded_captions", "decoded_latents", "decoded_text")
    out = run("fidelity", "--zoo", str(tiny_zoo), "--data", str(small_session), "--clips",
              "4", "--conditions", ",".join(conds))
    assert set(out) == {*conds, "clips", "semantics"}
    assert out["semantics"] == "decoded+attributes+sketch/single_trial"
    for cond in conds:
        probe = out[cond]["probe"]
        assert set(probe) == {"background", "colour", "shape", "position", "motion"}
        assert all(0.0 <= v <= 1.0 for v in probe.values())
        assert set(out[cond]["clip_zero_shot"]) == {"background", "colour", "shape",
                                                    "position"}
        by = out[cond]["probe_by_shape"]
        assert sum(v["clips"] for v in by.values()) <= 4
        assert all(0.0 <= v["accuracy"] <= 1.0 for v in by.values())
    assert out["clips"] == 4
    # --probe names the probe folder: the zoo's own, named, scores the same
    again = run("fidelity", "--zoo", str(tiny_zoo), "--data", str(small_session), "--clips",
                "4", "--conditions", "true_frames", "--probe", str(tiny_zoo / "probe"))
    assert again["true_frames"] == out["true_frames"]
    # --semantics sad: SAD's token states instead; the renders (not the truth) change
    sad = run("fidelity", "--zoo", str(tiny_zoo), "--data", str(small_session), "--clips",
              "4", "--conditions", "truth,decoded_text", "--semantics", "sad")
    assert sad["semantics"] == "decoded/single_trial" and sad["truth"] == out["truth"]
    # --latents mad: the captions with MAD's latents
    mad = run("fidelity", "--zoo", str(tiny_zoo), "--data", str(small_session), "--clips",
              "4", "--conditions", "motion_frames", "--latents", "mad")
    assert mad["semantics"] == "decoded+attributes/single_trial"


def test_fusion_calibration_separates_scenes(small_session, tiny_zoo, tmp_path):
    res = CliRunner().invoke(app, ["train", "fusion", "--data", str(small_session), "--clip",
                                   str(tiny_zoo / "clip"), "--out", str(tmp_path / "f.json")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "f.json").read_text())
    assert -1.0 <= r["threshold"] <= 1.0 and r["pairs"] > 0
    assert set(r["train_metrics"]) >= {"precision", "recall", "f1"}


def test_bad_inputs_are_clear_errors(small_session, tiny_zoo):
    res = CliRunner().invoke(app, ["bench", "render", "--zoo", str(tiny_zoo), "--data",
                                   str(small_session), "--inputs", "dreams", "--config",
                                   str(DEFAULT_CONFIG)])
    assert res.exit_code != 0 and "dreams" in res.output
    res = CliRunner().invoke(app, ["fidelity", "--zoo", str(tiny_zoo / "nowhere"), "--data",
                                   str(small_session), "--config", str(DEFAULT_CONFIG)])
    assert res.exit_code != 0 and "probe" in res.output
    res = CliRunner().invoke(app, ["fidelity", "--zoo", str(tiny_zoo), "--data",
                                   str(small_session), "--config", str(DEFAULT_CONFIG),
                                   "--probe", str(tiny_zoo / "no_probe_here")])
    assert res.exit_code != 0 and "no_probe_here" in res.output
    res = CliRunner().invoke(app, ["fidelity", "--zoo", str(tiny_zoo), "--data",
                                   str(small_session), "--config", str(DEFAULT_CONFIG),
                                   "--anchor-strength", "1.5"])
    assert res.exit_code != 0 and "1.5" in res.output
    res = CliRunner().invoke(app, ["fidelity", "--zoo", str(tiny_zoo), "--data",
                                   str(small_session), "--config", str(DEFAULT_CONFIG),
                                   "--conditions", "truth", "--semantics", "words"])
    assert res.exit_code != 0 and "--semantics 'words'" in res.output
    res = CliRunner().invoke(app, ["fidelity", "--zoo", str(tiny_zoo), "--data",
                                   str(small_session), "--config", str(DEFAULT_CONFIG),
                                   "--conditions", "decoded", "--latents", "sketch",
                                   "--semantics", "sad"])
    assert res.exit_code != 0 and "does not go with --semantics sad" in res.output
    for flag, value in (("--channels", "96,wide"), ("--channels", "90,180"),
                        ("--layers-per-block", "0")):
        res = CliRunner().invoke(app, ["train", "unet", "--data", str(small_session),
                                       "--out", str(tiny_zoo / "never"), flag, value])
        assert res.exit_code != 0 and value.split(",")[-1] in res.output, res.output
        assert not (tiny_zoo / "never").exists()
    for flag, value, named in (("--channels", "16,30", "30"),
                               ("--channels", "8,8,8,8,8,8,8,8", "7 downsamples"),
                               ("--latent-channels", "0", "latent_channels 0")):
        res = CliRunner().invoke(app, ["train", "vae", "--data", str(small_session),
                                       "--out", str(tiny_zoo / "never"), flag, value])
        assert res.exit_code != 0 and named in res.output, res.output
        assert not (tiny_zoo / "never").exists()


def test_fidelity_curve_of_a_unet_of_another_shape(small_session, tiny_zoo, tmp_path):
    """`fidelity --curve` scores every snapshot; the zoo's motion module joins only a UNet
    of its own shape (a wider UNet's curve renders stage 3 with the image UNet alone)."""
    import shutil

    import torch

    from rtdecode.zoo.unet import ToyUNetConfig, build_unet, save_render_model

    meta = json.loads((tiny_zoo / "unet" / "config.json").read_text())
    for name, chans in (("same", (16, 32)), ("wide", (32, 32))):
        torch.manual_seed(0)
        ucfg = ToyUNetConfig(block_out_channels=chans, norm_num_groups=4,
                             attention_head_dim=2, n_tokens=4)
        run_dir = tmp_path / name
        save_render_model("unet", build_unet(ucfg, 4, 32, 16), ucfg, run_dir,
                          cond_shape=tuple(meta["cond"]["shape"]),
                          latent_shape=tuple(meta["latent_shape"]))
        (run_dir / "snapshots").mkdir()
        for step in (1, 2):
            shutil.copy(run_dir / "unet.safetensors",
                        run_dir / "snapshots" / f"step_{step:06d}.safetensors")
        rows = run("fidelity", "--zoo", str(tiny_zoo), "--data", str(small_session),
                   "--clips", "2", "--curve", str(run_dir))
        assert [r["step"] for r in rows] == [1, 2]
        assert all(r["motion_module"] is (name == "same") for r in rows)
        assert all(0.0 <= r["truth_shape"] <= 1.0 for r in rows)
        assert (run_dir / "curve.csv").is_file() and (run_dir / "curve.png").is_file()
