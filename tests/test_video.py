"""Video output: MP4/GIF round trips, mosaics, concatenation."""

from __future__ import annotations

import numpy as np
import pytest

from rtdecode.render.video import concat_clips, mosaic, read_video, write_video


def coloured_clip(t: int = 6, size: int = 32) -> np.ndarray:
    """Frames of distinct solid colours (GIF merges identical consecutive frames)."""
    colours = [(200, 40, 90), (30, 180, 60), (40, 60, 210), (230, 220, 40)]
    return np.stack([np.full((size, size, 3), colours[i % 4], np.uint8) for i in range(t)])


def test_mp4_round_trip(tmp_path):
    clip = coloured_clip()
    path = write_video(tmp_path / "clip.mp4", clip, fps=8, scale=2)
    back = read_video(path)
    assert back.shape == (6, 64, 64, 3) and back.dtype == np.uint8
    err = np.abs(back.astype(int) - clip.repeat(2, 1).repeat(2, 2).astype(int))
    assert err.mean() < 6  # H.264 is lossy


def test_mp4_pads_to_macroblock(tmp_path):
    back = read_video(write_video(tmp_path / "odd.mp4", coloured_clip(t=3, size=21), fps=4))
    assert back.shape == (3, 32, 32, 3)


def test_gif_round_trip(tmp_path):
    clip = coloured_clip(t=5, size=16)
    back = read_video(write_video(tmp_path / "clip.gif", clip, fps=10))
    assert back.shape == clip.shape
    assert np.abs(back.astype(int) - clip.astype(int)).max() <= 8  # 256-colour palette


def test_bad_inputs_raise(tmp_path):
    clip = coloured_clip(t=2)
    with pytest.raises(ValueError, match=r"\.avi"):
        write_video(tmp_path / "clip.avi", clip, fps=8)
    with pytest.raises(ValueError, match="frames"):
        write_video(tmp_path / "clip.mp4", clip[0], fps=8)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "clip.gif", clip, fps=0)
    with pytest.raises(ValueError, match="scale"):
        write_video(tmp_path / "clip.gif", clip, fps=8, scale=0)


def test_mosaic_layout():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    rec = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    long = "a red circle moves left across a blue textured background " * 3
    out = mosaic(gt, rec, long, truth_caption="a red circle moves right", scale=4)
    t, h, w, c = out.shape
    assert (t, w, c) == (3, 128, 3) and out.dtype == np.uint8
    up = gt.repeat(4, 1).repeat(4, 2)
    rows = [r for r in range(h - 63) if np.array_equal(out[:, r:r + 64, :64], up)]
    assert len(rows) == 1
    top = rows[0]
    np.testing.assert_array_equal(out[:, top:top + 64, 64:], rec.repeat(4, 1).repeat(4, 2))
    assert out[:, :top].any() and out[:, top + 64:].any()  # labels above, caption below
    short = mosaic(gt, rec, "short", scale=4)
    assert short.shape[1] < h  # the long caption wrapped onto more lines
    with pytest.raises(ValueError, match="rec"):
        mosaic(gt, rec[:, :8], "x")


def test_concat_clips():
    a, b = coloured_clip(t=2), coloured_clip(t=3)
    out = concat_clips([a, b])
    assert out.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(out[2:], b)
    with pytest.raises(ValueError, match="clips"):
        concat_clips([a, coloured_clip(t=2, size=16)])
    with pytest.raises(ValueError, match="clips"):
        concat_clips([])
