"""SemMiner: the rein, stage-2 conditioning, the lookup backends and the MLLM code path."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import tiny_config

from rtdecode.semminer import (
    LEVELS,
    AnnotationCaptioner,
    Captioner,
    GroundTruthCaptioner,
    MLLMCaptioner,
    MLLMConfig,
    SemMinerError,
    enforce_basic,
    mine,
    read_captions,
    session_clips,
)
from rtdecode.simulator import simulate

SCHEMA = {"clip_id", "basic", "anchor", "motion", "holistic", "source", "basic_truncated"}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("semminer_session")
    simulate(out, tiny_config(seed=11, train_clips=6), progress=False)
    return out


@pytest.fixture(scope="module")
def truth(session) -> dict[int, dict]:
    return {r["clip_id"]: r for r in read_captions(session / "stimuli" / "captions.jsonl")}


class FakeCaptioner:
    """Records every call; stage 1 says ``n_words`` words (clip id first), stage 2 echoes."""

    name = "fake"

    def __init__(self, n_words: dict[int, int] | None = None,
                 levels: dict[str, str] | None = None) -> None:
        self.n_words = n_words or {}
        self.levels = levels
        self.calls: list[tuple] = []

    def summarize(self, frames, *, clip_id):
        self.calls.append(("summarize", clip_id, frames))
        n = self.n_words.get(clip_id, 5)
        return f"clip{clip_id} " + " ".join(f"w{i}" for i in range(1, n))

    def describe(self, frames, basic, *, clip_id):
        self.calls.append(("describe", clip_id, frames, basic))
        if self.levels is not None:
            return self.levels
        return {level: f"{level} of [{basic}]" for level in LEVELS}


def _clips(n: int = 3) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(i, rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)) for i in range(n)]


def test_enforce_basic():
    assert enforce_basic("  a  b\nc ") == ("a b c", False)
    text = " ".join(f"w{i}" for i in range(25))
    short, cut = enforce_basic(text)
    assert cut and short.split() == text.split()[:20]
    assert enforce_basic(" ".join(["x"] * 20)) == (" ".join(["x"] * 20), False)


def test_rein_truncated_counted_logged_and_passed_to_stage2(tmp_path, caplog):
    fake = FakeCaptioner(n_words={1: 25, 2: 21})
    assert isinstance(fake, Captioner)
    clips = _clips(3)
    with caplog.at_level(logging.WARNING, logger="rtdecode.semminer"):
        res = mine(fake, clips, tmp_path, progress=False)
    assert res.n_truncated == 2 and res.truncated == [1, 2]
    assert [r.basic_truncated for r in res.records] == [False, True, True]
    assert all(len(r.basic.split()) <= 20 for r in res.records)
    assert res.records[1].basic.split() == ["clip1"] + [f"w{i}" for i in range(1, 20)]
    assert "clip 1" in caplog.text and "25 words" in caplog.text
    assert "2 of 3 basic summaries" in caplog.text
    # Stage 2 got the same frames and the *enforced* basic summary, after stage 1.
    stage2 = [c for c in fake.calls if c[0] == "describe"]
    assert [c[1] for c in fake.calls] == [0, 0, 1, 1, 2, 2]
    for (cid, frames), call, rec in zip(clips, stage2, res.records):
        assert call[1] == cid and call[2] is frames and call[3] == rec.basic
        assert rec.motion == f"motion of [{rec.basic}]"
    with pytest.raises(SemMinerError, match="clip 1: .* 25 words"):
        mine(FakeCaptioner(n_words={1: 25}), _clips(2), strict=True, progress=False)


def test_writes_captions_jsonl_in_schema(tmp_path):
    res = mine(FakeCaptioner(), _clips(2), tmp_path / "out", progress=False)
    assert res.path == tmp_path / "out" / "captions.jsonl"
    assert not (tmp_path / "out" / "captions.jsonl.partial").exists()
    lines = res.path.read_text().splitlines()
    assert len(lines) == 2
    for line, rec in zip(lines, res.records):
        d = json.loads(line)
        assert set(d) == SCHEMA and d["source"] == "fake" and d["clip_id"] == rec.clip_id
        assert all(isinstance(d[k], str) and d[k] for k in ("basic", *LEVELS))
    named = mine(FakeCaptioner(), _clips(1), tmp_path / "x.jsonl", progress=False)
    assert named.path == tmp_path / "x.jsonl" and named.path.is_file()


@pytest.mark.parametrize("levels, match", [
    ({"anchor": "a", "holistic": "h"}, "clip 0: stage 2 \\(fake\\) returned no 'motion' level"),
    ({"anchor": "a", "motion": "  ", "holistic": "h"}, "clip 0: .*empty.*'motion'"),
    ({"anchor": "a", "motion": "m", "holistic": 3}, "clip 0: .*'holistic'"),
    ({"anchor": "a", "motion": "m", "holistic": "h", "x": "y"}, "clip 0: .*unexpected keys"),
])
def test_stage2_output_validated(tmp_path, levels, match):
    with pytest.raises(SemMinerError, match=match):
        mine(FakeCaptioner(levels=levels), _clips(1), tmp_path, progress=False)
    # Finished clips are kept in the partial file, never presented as complete.
    assert not (tmp_path / "captions.jsonl").exists()
    assert (tmp_path / "captions.jsonl.partial").exists()


def test_bad_inputs_rejected():
    fake = FakeCaptioner(n_words={0: 0})
    fake.summarize = lambda frames, *, clip_id: "   "
    with pytest.raises(SemMinerError, match="clip 0: stage 1 .*empty"):
        mine(fake, _clips(1), progress=False)
    with pytest.raises(SemMinerError, match="clip 7: frames must be uint8"):
        mine(FakeCaptioner(), [(7, np.zeros((8, 64, 64, 3), np.float32))], progress=False)
    with pytest.raises(SemMinerError, match="clip 0: given twice"):
        mine(FakeCaptioner(), _clips(1) * 2, progress=False)


def test_ground_truth_round_trip(session, truth, tmp_path):
    clips = session_clips(session)
    assert [c for c, _ in clips] == sorted(truth)
    frames = np.load(session / "stimuli" / "frames.npy")
    assert np.array_equal(clips[3][1], frames[3])
    train = session_clips(session, split="train")
    assert 0 < len(train) < len(clips)
    res = mine(GroundTruthCaptioner(session), clips, tmp_path, progress=False)
    assert res.n_truncated == 0
    for d in read_captions(res.path):
        t = truth[d["clip_id"]]
        assert d["source"] == "ground-truth"
        assert {k: d[k] for k in ("basic", *LEVELS)} == {k: t[k] for k in ("basic", *LEVELS)}
    with pytest.raises(SemMinerError, match="clip 9999: not in .*captions.jsonl"):
        mine(GroundTruthCaptioner(session), [(9999, None)], progress=False)
    with pytest.raises(SemMinerError, match="not found"):
        GroundTruthCaptioner(tmp_path / "nowhere")


def _write_table(path, sep, rows, header):
    lines = [sep.join(header)] + [sep.join(str(r[h]) for h in header) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def test_annotation_round_trip(truth, tmp_path):
    rows = [{"video_id": f"seg1_{cid:03d}", **{k: t[k] for k in ("basic", *LEVELS)}}
            for cid, t in truth.items()]
    jsonl = tmp_path / "ann.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tsv = tmp_path / "ann.tsv"
    _write_table(tsv, "\t", rows, ["video_id", "basic", "anchor", "motion", "holistic"])
    csv_path = tmp_path / "ann.csv"
    # Commas inside captions are quoted; extra columns are ignored.
    csv_lines = ["clip,basic,anchor,motion,holistic,notes"] + [
        ",".join([r["video_id"], *(f'"{r[k]}, indeed"' for k in ("basic", *LEVELS)), "x"])
        for r in rows]
    csv_path.write_text("\n".join(csv_lines) + "\n")
    ids = [(r["video_id"], None) for r in rows]
    for path, suffix in ((jsonl, ""), (tsv, ""), (csv_path, ", indeed")):
        ann = AnnotationCaptioner(path)
        assert len(ann) == len(rows) and ann.name == f"annotation:{path.name}"
        res = mine(ann, ids, tmp_path / path.stem, progress=False)
        for rec, row in zip(res.records, rows):
            assert rec.clip_id == row["video_id"] and rec.source == ann.name
            for level in LEVELS:
                assert getattr(rec, level) == row[level] + suffix
            assert rec.basic == " ".join((row["basic"] + suffix).split()[:20])
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(json.dumps({"id": 5, "gist": "a b", "anchor": "a", "motion": "m",
                                   "holistic": "h"}) + "\n")
    ann = AnnotationCaptioner(renamed, columns={"basic": "gist"})
    assert ann.summarize(None, clip_id=5) == "a b"


GOOD = {"clip_id": 1, "basic": "b", "anchor": "a", "motion": "m", "holistic": "h"}


@pytest.mark.parametrize("lines, line, field", [
    ([GOOD, {**GOOD, "clip_id": 2, "motion": ""}], 2, "motion"),
    ([GOOD, {k: v for k, v in GOOD.items() if k != "anchor"} | {"clip_id": 2}], 2, "anchor"),
    ([{**GOOD, "holistic": 4}], 1, "holistic"),
    ([GOOD, GOOD], 2, "clip_id"),
    ([{k: v for k, v in GOOD.items() if k != "clip_id"}], 1, "clip_id"),
])
def test_annotation_jsonl_errors_name_file_line_field(tmp_path, lines, line, field):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(SemMinerError, match=f"bad.jsonl:{line}: field '{field}'"):
        AnnotationCaptioner(path)


def test_annotation_other_errors(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(SemMinerError, match="bad.jsonl:2: not valid JSON"):
        AnnotationCaptioner(bad_json)
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("clip_id,basic,anchor,motion,holistic\n1,b,a,m,h\n2,b,a,,h\n")
    with pytest.raises(SemMinerError, match="bad.csv:3: field 'motion': empty"):
        AnnotationCaptioner(csv_path)
    no_col = tmp_path / "nocol.tsv"
    no_col.write_text("clip_id\tbasic\tanchor\tmotion\n1\tb\ta\tm\n")
    with pytest.raises(SemMinerError, match="nocol.tsv:1: field 'holistic': no such column"):
        AnnotationCaptioner(no_col)
    short = tmp_path / "short.csv"
    short.write_text("clip_id,basic,anchor,motion,holistic\n1,b,a,m\n")
    with pytest.raises(SemMinerError, match="short.csv:2: field 'holistic': missing"):
        AnnotationCaptioner(short)
    with pytest.raises(SemMinerError, match="unknown annotation format"):
        (tmp_path / "a.xml").write_text("<a/>")
        AnnotationCaptioner(tmp_path / "a.xml")


# -- MLLM backend on a tiny random Qwen2.5-VL (real weights are not available here) ----------


class _SpyProcessor:
    """Delegates to the real processor, recording what each call was given."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.inner(**kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def tiny_mllm(tmp_path_factory):
    pytest.importorskip("transformers")
    from rtdecode.semminer.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen"), seed=0)


def test_mllm_flow_on_tiny_random_qwen2_5_vl(tiny_mllm, session, tmp_path):
    from rtdecode.semminer.tiny import special_token_ids

    cfg = MLLMConfig(max_new_tokens_basic=30, max_new_tokens_level=6)
    # The random model never chooses to stop early: suppress specials so every answer is
    # exactly max_new_tokens vocabulary words, i.e. stage 1 always overruns the rein.
    cap = MLLMCaptioner(tiny_mllm, cfg, generate_kwargs={
        "min_new_tokens": 6, "suppress_tokens": special_token_ids(tiny_mllm)})
    assert cap.name == f"mllm:{tiny_mllm.name}" and type(cap.model).__name__.startswith("Qwen2_5")
    cap.processor = _SpyProcessor(cap.processor)
    gen_calls = []
    real_generate = cap.model.generate

    def spy_generate(**kwargs):
        gen_calls.append(kwargs)
        return real_generate(**kwargs)

    cap.model.generate = spy_generate
    clips = session_clips(session)[:2]
    res = mine(cap, clips, tmp_path, progress=False)

    assert len(cap.processor.calls) == len(gen_calls) == 4 * len(clips)
    assert res.n_truncated == len(clips)
    for i, ((_cid, frames), rec) in enumerate(zip(clips, res.records)):
        calls = cap.processor.calls[4 * i: 4 * i + 4]
        texts = [c["text"][0] for c in calls]
        assert "at most 20 words" in texts[0] and "<|video_pad|>" in texts[0]
        assert texts[0].endswith("<|im_start|>assistant\n")
        assert len(rec.basic.split()) == 20 and rec.basic_truncated
        for level, text in zip(LEVELS, texts[1:]):
            assert f'"{rec.basic}"' in text  # stage 2 sees the enforced rein
            assert text.count("<|video_pad|>") == 1
            assert len(getattr(rec, level).split()) == 6
        for c in calls:
            assert np.array_equal(c["videos"][0], frames)
            assert c["video_metadata"][0]["fps"] == 4.0
        for g, n in zip(gen_calls[4 * i: 4 * i + 4], (30, 6, 6, 6)):
            assert g["do_sample"] is False and g["max_new_tokens"] == n
            assert g["pixel_values_videos"].shape[0] > 0
            assert (g["input_ids"] == cap.model.config.video_token_id).sum() > 0
    on_disk = read_captions(res.path)
    assert [d["clip_id"] for d in on_disk] == [c for c, _ in clips]
    assert all(set(d) == SCHEMA and d["source"] == cap.name for d in on_disk)


def test_mllm_images_mode_and_config_checks(tiny_mllm, tmp_path):
    cap = MLLMCaptioner(tiny_mllm, MLLMConfig(visual="images", max_new_tokens_basic=4))
    cap.processor = _SpyProcessor(cap.processor)
    frames = _clips(1)[0][1]
    assert isinstance(cap.summarize(frames, clip_id=0), str)
    call = cap.processor.calls[0]
    assert len(call["images"]) == 8 and call["text"][0].count("<|image_pad|>") == 8
    with pytest.raises(SemMinerError, match="needs the clip's frames"):
        cap.summarize(None, clip_id=0)
    with pytest.raises(SemMinerError, match="must contain '\\{basic\\}'"):
        MLLMConfig(level_prompts={"anchor": "x", "motion": "{basic}", "holistic": "{basic}"})
    with pytest.raises(SemMinerError, match="local directory only"):
        MLLMCaptioner("Qwen/Qwen2.5-VL-7B-Instruct")
    with pytest.raises(SemMinerError, match="fixed by SemMiner"):
        MLLMCaptioner(tiny_mllm, generate_kwargs={"do_sample": True})
