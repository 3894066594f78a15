"""Video output: MP4 and GIF files, side-by-side mosaics with captions, clip concatenation.

Encoding goes through maintained libraries: MP4 through imageio's FFMPEG plugin (the ffmpeg
binary that the imageio-ffmpeg wheel bundles; H.264 ``libx264``, pixel format ``yuv420p`` so
that every player opens it), GIF through imageio's pillow plugin. All frames are uint8
``(T, H, W, 3)`` RGB.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as iio
import imageio.v3 as iio3
import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: MP4 frame sides are padded to a multiple of this (the H.264 macroblock).
MACRO_BLOCK = 16
_BACKGROUND = 0  # text-strip colour (black)
_TEXT = (255, 255, 255)
_TRUTH_TEXT = (160, 220, 160)


def write_video(path: str | Path, frames: np.ndarray, fps: float, *, scale: int = 1) -> Path:
    """Write uint8 frames ``(T, H, W, 3)`` to ``path`` (``.mp4`` or ``.gif``); returns the path.

    ``scale`` upscales each frame by nearest neighbour first (toy frames are 64x64: tiny in a
    player). For ``.mp4`` the frame is then padded at the bottom and right, by repeating the
    edge pixels, to a multiple of :data:`MACRO_BLOCK` (16) on each side: yuv420p needs even
    sides and many decoders want whole macroblocks. Padding, unlike imageio's default of
    rescaling to the next multiple (``macro_block_size``), keeps pixels sharp and unmoved;
    64x64 toy frames at any integer scale need none. H.264 is lossy: colours come back close,
    not exact. For ``.gif`` each frame lasts ``1000 / fps`` ms (GIF stores hundredths of a
    second) and the animation loops forever; pillow merges identical consecutive frames into
    one longer frame, so a reader may count fewer frames than were written.
    """
    path = Path(path)
    _check_video("frames", frames)
    if not isinstance(fps, (int, float, np.floating)) or not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps: expected a finite number > 0, got {fps!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale: expected an integer >= 1, got {scale!r}")
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"path: unknown video suffix {path.suffix!r} in {str(path)!r}; "
                         f"use .mp4 or .gif")
    frames = upscale(frames, int(scale))
    if suffix == ".mp4":
        frames = _pad_to_multiple(frames, MACRO_BLOCK)
        with iio.get_writer(path, format="FFMPEG", mode="I", fps=float(fps), codec="libx264",
                            pixelformat="yuv420p", quality=8, macro_block_size=MACRO_BLOCK,
                            ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(frame)
    else:
        iio3.imwrite(path, frames, plugin="pillow", extension=".gif",
                     duration=1000.0 / float(fps), loop=0)
    return path


def clip_name(session: str, clip_id: int, chain_id: int) -> str:
    """File stem of a received clip: ``SESSION_clip-000012_chain-0003`` (the session label
    with characters other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``)."""
    label = re.sub(r"[^A-Za-z0-9._-]", "_", session) or "session"
    return f"{label}_clip-{int(clip_id):06d}_chain-{int(chain_id):04d}"


def save_clip(folder: str | Path, session: str, clip_id: int, chain_id: int,
              frames: np.ndarray, fps: float, *, scale: int = 1) -> tuple[Path, Path]:
    """Save a clip as raw frames (``.npy``, exact) and as an MP4 (:func:`write_video`) in
    ``folder``, named by :func:`clip_name`; returns both paths."""
    stem = Path(folder) / clip_name(session, clip_id, chain_id)
    raw = stem.with_suffix(".npy")
    np.save(raw, frames)
    return raw, write_video(stem.with_suffix(".mp4"), frames, fps, scale=scale)


def read_video(path: str | Path) -> np.ndarray:
    """Read an ``.mp4`` or ``.gif`` back as uint8 frames ``(T, H, W, 3)``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        with iio.get_reader(path, format="FFMPEG") as reader:
            frames = np.stack([np.asarray(f) for f in reader])
    elif suffix == ".gif":
        frames = iio3.imread(path, plugin="pillow", index=None, mode="RGB")
    else:
        raise ValueError(f"path: unknown video suffix {path.suffix!r} in {str(path)!r}; "
                         f"use .mp4 or .gif")
    if frames.ndim == 3:  # a single-frame GIF reads as one image
        frames = frames[None]
    return np.ascontiguousarray(frames[..., :3], dtype=np.uint8)


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``(T, H, W, C)`` frames by an integer ``scale``."""
    if scale == 1:
        return frames
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def concat_clips(clips: Sequence[np.ndarray]) -> np.ndarray:
    """Clips ``(T_i, H, W, 3)`` one after another: ``(sum T_i, H, W, 3)``."""
    if len(clips) == 0:
        raise ValueError("clips: need at least one clip")
    for i, c in enumerate(clips):
        _check_video(f"clips[{i}]", c)
    sizes = {c.shape[1:] for c in clips}
    if len(sizes) > 1:
        raise ValueError(f"clips: frame sizes differ: {sorted(sizes)}")
    return np.concatenate(clips, axis=0)


def mosaic(gt: np.ndarray, rec: np.ndarray, caption: str, *, truth_caption: str | None = None,
           scale: int = 4) -> np.ndarray:
    """Ground truth | reconstruction side by side, labelled, with the caption(s) below.

    ``gt`` and ``rec`` are uint8 ``(T, H, W, 3)`` of one shape; each is upscaled by nearest
    neighbour by ``scale``. Layout, top to bottom: a label strip ("ground truth",
    "reconstruction"), the two panels (columns ``[0, W*scale)`` hold ground truth exactly,
    ``[W*scale, 2*W*scale)`` the reconstruction), and a text strip with the decoded
    caption and, if given, the true one, word-wrapped to the mosaic's width. Returns
    ``(T, H', 2*W*scale, 3)`` uint8.
    """
    _check_video("gt", gt)
    _check_video("rec", rec)
    if gt.shape != rec.shape:
        raise ValueError(f"rec: shape {rec.shape} differs from gt's {gt.shape}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale: expected an integer >= 1, got {scale!r}")
    panels = np.concatenate([upscale(gt, int(scale)), upscale(rec, int(scale))], axis=2)
    t, _, width, _ = panels.shape
    font = _font(size=8 + 2 * int(scale))
    half = width // 2
    top = _label_strip(width, [("ground truth", 0), ("reconstruction", half)], font, half)
    lines = [(f"decoded: {caption}", _TEXT)]
    if truth_caption is not None:
        lines.append((f"truth: {truth_caption}", _TRUTH_TEXT))
    bottom = _caption_strip(width, lines, font)
    strips = [np.broadcast_to(top, (t, *top.shape)), panels,
              np.broadcast_to(bottom, (t, *bottom.shape))]
    return np.ascontiguousarray(np.concatenate(strips, axis=1))


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled default font; sized when FreeType is available, else the bitmap one."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, TypeError):  # no FreeType, or Pillow < 10.1 (no size argument)
        return ImageFont.load_default()


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    return int(font.getbbox("Ag")[3]) + 3


def _label_strip(width: int, labels: list[tuple[str, int]],
                 font: ImageFont.FreeTypeFont | ImageFont.ImageFont, cell: int) -> np.ndarray:
    """One line of labels, each drawn at its x offset and clipped to ``cell`` pixels."""
    height = _line_height(font) + 2
    img = Image.new("RGB", (width, height), (_BACKGROUND,) * 3)
    for text, x in labels:
        label = Image.new("RGB", (cell, height), (_BACKGROUND,) * 3)
        ImageDraw.Draw(label).text((2, 1), text, fill=_TEXT, font=font)
        img.paste(label, (x, 0))
    return np.asarray(img)


def _caption_strip(width: int, lines: list[tuple[str, tuple[int, int, int]]],
                   font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> np.ndarray:
    """Word-wrapped caption lines on a black strip ``width`` pixels wide."""
    wrapped: list[tuple[str, tuple[int, int, int]]] = []
    for text, colour in lines:
        wrapped += [(line, colour) for line in _wrap(text, font, width - 4)]
    lh = _line_height(font)
    img = Image.new("RGB", (width, lh * len(wrapped) + 4), (_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(img)
    for i, (line, colour) in enumerate(wrapped):
        draw.text((2, 2 + i * lh), line, fill=colour, font=font)
    return np.asarray(img)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
          width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a word longer than a line is broken by chars."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width and len(word) > 1:
                cut = len(word) - 1
                while cut > 1 and font.getlength(word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _pad_to_multiple(frames: np.ndarray, m: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    ph, pw = -h % m, -w % m
    if ph == 0 and pw == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")


def _check_video(name: str, a: np.ndarray) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 array (T, H, W, 3), got "
                         f"{getattr(a, 'dtype', type(a).__name__)}")
    if a.ndim != 4 or a.shape[-1] != 3 or 0 in a.shape:
        raise ValueError(f"{name}: shape must be (T, H, W, 3), got {a.shape}")
