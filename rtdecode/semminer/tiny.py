"""A tiny, randomly initialised Qwen2.5-VL checkpoint built offline, for tests and dry runs.

Everything is made locally: a word-level tokenizer (``tokenizers``) whose vocabulary is the
SemMiner prompts, the toy world's words and the Qwen2.5-VL special tokens; the real
``Qwen2VLImageProcessor`` / ``Qwen2VLVideoProcessor`` (patch 14, merge 2, temporal patch 2,
pixel budget lowered so 64x64 frames stay 56x56); a minimal chat template written here; and a
``Qwen2_5_VLForConditionalGeneration`` with one text layer and one vision block of width 32.
The directory it writes loads with :class:`~rtdecode.semminer.mllm.MLLMCaptioner` exactly as a
real checkpoint would. Its output is gibberish drawn from the vocabulary.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..simulator import stimuli
from .mllm import BASIC_PROMPT, LEVEL_PROMPTS

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
UNK = "[UNK]"

# Written for this project: user turn with the clip's video/images, then the text.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _vocabulary() -> list[str]:
    text = " ".join([BASIC_PROMPT, *LEVEL_PROMPTS.values(), "user assistant system",
                     *stimuli.SHAPES, *stimuli.COLOURS, *stimuli.BACKGROUNDS, *stimuli.TEXTURES,
                     *stimuli.MOTIONS, *stimuli.SIZES, *stimuli.POSITIONS,
                     "moves rotates grows shrinks still background scene object objects",
                     '" ". . , :'])
    return sorted(set(re.findall(r"\w+|[^\w\s]+", text.lower() + " " + text)))


def build_tiny_qwen2_5_vl(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random Qwen2.5-VL (model, tokenizer, processor, chat template) to ``path``.

    Returns the directory. Takes well under a second on a CPU.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    path = Path(path)
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, UNK, *_vocabulary()])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=UNK, eos_token="<|im_end|>",
        pad_token="<|endoftext|>", additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    pixels = {"min_pixels": 56 * 56, "max_pixels": 64 * 64}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels, cap_pixels_per_frame=True),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    ids = {t: vocab[t] for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 1024,
            # head_dim 16 -> 8 rotary frequencies split over (time, height, width)
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                "rope_theta": 10000.0},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": 32, "fullatt_block_indexes": [0],
                       "window_size": 112},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def special_token_ids(path: str | os.PathLike) -> list[int]:
    """Ids of the tiny tokenizer's special tokens (e.g. to suppress them when generating)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return [tok.convert_tokens_to_ids(t) for t in (*SPECIAL_TOKENS, UNK)]
