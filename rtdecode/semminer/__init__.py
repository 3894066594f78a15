"""SemMiner, the training-time captioner: per stimulus clip, a <= 20-word basic summary (the
"rein"), then anchor / motion / holistic descriptions conditioned on it.

Backends: :class:`GroundTruthCaptioner` (the simulator's captions), :class:`AnnotationCaptioner`
(a CC2017-SE-style annotation file) and :class:`MLLMCaptioner` (a local transformers
multimodal LLM; real weights untested here). :func:`mine` runs the flow and writes
``captions.jsonl``.
"""

from .backends import AnnotationCaptioner, GroundTruthCaptioner
from .core import (
    BASIC_MAX_WORDS,
    CAPTIONS_FILE,
    LEVELS,
    Captioner,
    CaptionRecord,
    ClipId,
    MineResult,
    SemMinerError,
    enforce_basic,
    mine,
    mine_clip,
    read_captions,
    session_clips,
)
from .mllm import BASIC_PROMPT, LEVEL_PROMPTS, MLLMCaptioner, MLLMConfig

__all__ = ["BASIC_MAX_WORDS", "BASIC_PROMPT", "CAPTIONS_FILE", "LEVELS", "LEVEL_PROMPTS",
           "AnnotationCaptioner", "CaptionRecord", "Captioner", "ClipId", "GroundTruthCaptioner",
           "MLLMCaptioner", "MLLMConfig", "MineResult", "SemMinerError", "enforce_basic", "mine",
           "mine_clip", "read_captions", "session_clips"]
