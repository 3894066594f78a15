"""MLLM backend: a transformers multimodal LLM (Qwen2.5-VL class) loaded from a local directory.

Stage 1 prompts for a summary of at most 20 words; stage 2 runs one prompt per level (anchor,
motion, holistic), each containing the basic summary. Frames go in as one video (default) or
as a list of images, through the model's own processor and chat template; decoding is greedy
with a ``max_new_tokens`` limit. Nothing is downloaded: the path must be a local directory and
every load uses ``local_files_only=True``.

.. warning::
   Real weights (e.g. Qwen2.5-VL-7B-Instruct) are **untested here**: this project has no
   network or model hub. The tests exercise the full code path (loading with
   ``AutoProcessor`` / ``AutoModelForImageTextToText``, chat template, video preprocessing,
   ``generate`` with the video, decoding, the rein, stage-2 prompts) on a tiny randomly
   initialised Qwen2.5-VL built by :func:`rtdecode.semminer.tiny.build_tiny_qwen2_5_vl`,
   whose output is gibberish. Prompt wording and token limits are untuned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .core import BASIC_MAX_WORDS, LEVELS, ClipId, SemMinerError

BASIC_PROMPT = (
    f"Summarize this video in at most {BASIC_MAX_WORDS} words. Say which objects appear, "
    "their colours, what they do, and the background. Answer with one sentence."
)
LEVEL_PROMPTS: dict[str, str] = {
    "anchor": (
        'A short summary of this video is: "{basic}". Keeping to that summary and to what you '
        "can see, describe the first frame only: each object, its colour, size and position, "
        "and the background. Do not describe any movement."
    ),
    "motion": (
        'A short summary of this video is: "{basic}". Keeping to that summary and to what you '
        "can see, describe the movement in the video: what moves, in which direction or how "
        "it changes, and what stays still."
    ),
    "holistic": (
        'A short summary of this video is: "{basic}". Keeping to that summary and to what you '
        "can see, describe the whole video in one or two sentences: the scene, the objects and "
        "what happens over time."
    ),
}


@dataclass(frozen=True)
class MLLMConfig:
    """How :class:`MLLMCaptioner` prompts and decodes.

    ``fps`` is the frame rate of the frames given (the toy world's 8 frames per 2-s clip is
    4 fps); it is passed to video processors as metadata so temporal positions are right.
    """

    max_new_tokens_basic: int = 48
    max_new_tokens_level: int = 128
    visual: Literal["video", "images"] = "video"
    fps: float | None = 4.0
    device: str = "cpu"
    dtype: str = "auto"  # "auto" (the checkpoint's), "float32", "bfloat16", "float16"
    basic_prompt: str = BASIC_PROMPT
    level_prompts: dict[str, str] = field(default_factory=lambda: dict(LEVEL_PROMPTS))

    def __post_init__(self) -> None:
        if self.max_new_tokens_basic < 1 or self.max_new_tokens_level < 1:
            raise SemMinerError("max_new_tokens_basic and max_new_tokens_level must be >= 1, "
                                f"got {self.max_new_tokens_basic}, {self.max_new_tokens_level}")
        if self.visual not in ("video", "images"):
            raise SemMinerError(f"visual must be 'video' or 'images', got {self.visual!r}")
        if self.fps is not None and self.fps <= 0:
            raise SemMinerError(f"fps must be > 0, got {self.fps}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise SemMinerError(f"dtype must be auto, float32, bfloat16 or float16, "
                                f"got {self.dtype!r}")
        if set(self.level_prompts) != set(LEVELS):
            raise SemMinerError(f"level_prompts must have exactly {', '.join(LEVELS)}, "
                                f"got {sorted(self.level_prompts)}")
        for level, prompt in self.level_prompts.items():
            if "{basic}" not in prompt:
                raise SemMinerError(f"level_prompts['{level}'] must contain '{{basic}}' so "
                                    "stage 2 sees the basic summary")


class MLLMCaptioner:
    """SemMiner backend over a local transformers image/video-text-to-text model.

    Parameters
    ----------
    model_path
        A local directory with the model, processor and chat template (``save_pretrained``
        layout). Hub ids are refused: nothing is downloaded.
    config
        Prompts, decoding limits, device, dtype.
    generate_kwargs
        Extra ``model.generate`` arguments (e.g. ``repetition_penalty``). Sampling arguments
        are refused: SemMiner decodes greedily.
    """

    def __init__(self, model_path: str | os.PathLike, config: MLLMConfig | None = None, *,
                 generate_kwargs: dict[str, Any] | None = None) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.config = config or MLLMConfig()
        self.model_path = Path(model_path)
        if not self.model_path.is_dir():
            raise SemMinerError(f"{model_path}: model directory not found (SemMiner loads MLLMs "
                                "from a local directory only; nothing is downloaded)")
        self.generate_kwargs = dict(generate_kwargs or {})
        bad = sorted({"do_sample", "temperature", "top_p", "top_k", "num_beams",
                      "max_new_tokens"} & set(self.generate_kwargs))
        if bad:
            raise SemMinerError(f"generate_kwargs: {bad} are fixed by SemMiner (greedy; token "
                                "limits come from MLLMConfig)")
        self.processor = AutoProcessor.from_pretrained(self.model_path, local_files_only=True)
        if getattr(self.processor, "chat_template", None) is None:
            raise SemMinerError(f"{model_path}: the processor has no chat template")
        dtype = "auto" if self.config.dtype == "auto" else getattr(torch, self.config.dtype)
        self.model = AutoModelForImageTextToText.from_pretrained(
            self.model_path, local_files_only=True, dtype=dtype).to(self.config.device).eval()
        self.name = f"mllm:{self.model_path.name}"

    # -- prompts --------------------------------------------------------------------------

    def prompt_text(self, instruction: str, n_frames: int) -> str:
        """The chat-templated prompt: the clip (video or images) then the instruction."""
        if self.config.visual == "video":
            visual = [{"type": "video"}]
        else:
            visual = [{"type": "image"} for _ in range(n_frames)]
        messages = [{"role": "user", "content": [*visual, {"type": "text", "text": instruction}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)

    def _inputs(self, frames: np.ndarray, instruction: str) -> Any:
        text = self.prompt_text(instruction, len(frames))
        # Memory-mapped session frames are read-only; torch wants a writable buffer.
        frames = np.array(frames, dtype=np.uint8, order="C", copy=True)
        if self.config.visual == "video":
            kwargs: dict[str, Any] = {"videos": [frames]}
            if self.config.fps is not None:
                kwargs["video_metadata"] = [{"fps": self.config.fps,
                                             "total_num_frames": len(frames),
                                             "duration": len(frames) / self.config.fps}]
        else:
            kwargs = {"images": list(frames)}
        return self.processor(text=[text], return_tensors="pt", **kwargs).to(self.model.device)

    def generate(self, frames: np.ndarray | None, instruction: str, max_new_tokens: int) -> str:
        """Greedy-decode the model's answer to ``instruction`` about ``frames``."""
        import torch

        if frames is None:
            raise SemMinerError(f"{self.name}: needs the clip's frames, got None")
        inputs = self._inputs(frames, instruction)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, num_beams=1,
                                      max_new_tokens=max_new_tokens, **self.generate_kwargs)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()

    # -- Captioner ------------------------------------------------------------------------

    def summarize(self, frames: np.ndarray | None, *, clip_id: ClipId) -> str:
        return self.generate(frames, self.config.basic_prompt, self.config.max_new_tokens_basic)

    def describe(self, frames: np.ndarray | None, basic: str, *,
                 clip_id: ClipId) -> dict[str, str]:
        prompts = {level: self.config.level_prompts[level].replace("{basic}", basic)
                   for level in LEVELS}
        return {level: self.generate(frames, prompts[level], self.config.max_new_tokens_level)
                for level in LEVELS}
