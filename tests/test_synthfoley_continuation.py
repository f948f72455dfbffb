"""Long SynthFoley clips, the audio-prompt layouts (continuation, multi-condition), their data path (loaders,
prompt/target code split, collator) and their scoring."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from c3llm.data import datasets as dc
from c3llm.data.collator import C3LLMDataCollator, example_inputs, example_to_inputs
from c3llm.data.registry import DATASETS
from c3llm.evaluation import _reference_audio, with_prompt_codes
from c3llm.synthfoley import scoring
from c3llm.synthfoley.synthfoley import (
    CLIP_SECONDS,
    EVENT_CLASSES,
    MIN_GAP,
    NEUTRAL_VISUAL,
    PROMPT_LAYOUTS,
    PROMPT_SECONDS,
    make_clip,
    make_continuation_clip,
    make_multicondition_clip,
    write_synthfoley,
)
from processing_c3llm.media_c3llm import load_video

FPS = 10.0


def _check_spacing(events, duration):
    for first, second in zip(events, events[1:]):
        assert second.onset - (first.onset + first.duration) >= MIN_GAP - 1e-9
    assert events[0].onset >= 0.1 - 1e-9 and events[-1].onset + events[-1].duration <= duration + 1e-9


# ---- long clips ------------------------------------------------------------------------------------------------------
def test_two_second_clips_are_unchanged_for_a_seed():
    clip = make_clip(np.random.default_rng(5))
    assert [(e.label, e.onset) for e in clip.events] == [("click train", 0.3), ("high beep", 0.9), ("click train", 1.3)]
    assert float(np.abs(clip.audio).sum()) == pytest.approx(890.139404296875, rel=1e-6)
    assert int(clip.frames.sum()) == 187680 and clip.frames.shape == (20, 32, 32, 3)


@pytest.mark.parametrize("duration", [6.0, 30.0])
def test_long_clips_are_runs_of_two_second_segments(duration):
    segments = round(duration / CLIP_SECONDS)
    counts = np.zeros(segments, dtype=int)
    for seed in range(4):
        clip = make_clip(np.random.default_rng(seed), duration=duration)
        assert clip.frames.shape[0] == round(duration * FPS) and len(clip.audio) == round(duration * 24000)
        _check_spacing(clip.events, duration)
        per_segment = np.bincount([int(e.onset // CLIP_SECONDS) for e in clip.events], minlength=segments)
        assert per_segment.min() >= 1 and per_segment.max() <= 3  # 1..3 events in every 2 s segment
        # No event crosses a segment boundary: each starts at least a frame after its segment's start.
        assert all(e.onset % CLIP_SECONDS >= 0.1 - 1e-9 for e in clip.events)
        assert all((e.onset % CLIP_SECONDS) + e.duration <= CLIP_SECONDS + 1e-9 for e in clip.events)
        counts += per_segment
        assert clip.frames[round(clip.events[-1].onset * FPS)].any()  # the video shows the last event too
    assert counts[-1] >= 4  # events to the very end
    with pytest.raises(ValueError, match="multiple of 2.0 s"):
        make_clip(np.random.default_rng(0), duration=5.0)


def test_write_synthfoley_long_clips_cover_the_whole_duration(tmp_path):
    folders = write_synthfoley(tmp_path, train=0, test=1, seed=3, duration=6.0, prompt_layouts=False)
    assert set(folders) == {"audiocaps", "vggsound", "neutral"}
    entry = next(iter(json.loads((folders["audiocaps"] / "synthfoley_test.json").read_text()).values()))
    onsets = [event["onset"] for event in entry["events"]]
    assert min(onsets) < 2.0 and max(onsets) >= 4.0
    audio, rate = sf.read(folders["audiocaps"] / entry["file"])
    assert rate == 24000 and len(audio) == 6 * 24000
    for layout in ("vggsound", "neutral"):
        video = next(iter(json.loads((folders[layout] / "synthfoley_test.json").read_text()).values()))
        frames, fps = load_video(folders[layout] / video["file"])
        assert fps == pytest.approx(FPS) and len(frames) == 60
        assert video["events"] == entry["events"]


# ---- continuation and multi-condition clips ----------------------------------------------------------------------------
def test_continuation_clips_keep_to_their_palette():
    sizes = set()
    for seed in range(120):
        clip, fields = make_continuation_clip(np.random.default_rng(seed))
        palette = fields["palette"]
        assert fields["prompt_seconds"] == PROMPT_SECONDS and 1 <= len(palette) <= 2 and len(set(palette)) == len(palette)
        prompt = [e for e in clip.events if e.onset < PROMPT_SECONDS]
        rest = [e for e in clip.events if e.onset >= PROMPT_SECONDS]
        assert {e.label for e in prompt} == set(palette)  # every palette class in the prompt
        assert all(e.onset + e.duration <= PROMPT_SECONDS + 1e-9 for e in prompt)  # none crosses 0.8 s
        assert 1 <= len(rest) <= 2 and {e.label for e in rest} <= set(palette)
        _check_spacing(clip.events, CLIP_SECONDS)
        assert len(clip.audio) == 48000 and clip.frames.shape[0] == 20
        sizes.add(len(palette))
    assert sizes == {1, 2}


def test_multicondition_clips_give_each_condition_its_own_information():
    pairs = set()
    for seed in range(120):
        clip, fields = make_multicondition_clip(np.random.default_rng(seed))
        p, t = fields["prompt_class"], fields["text_class"]
        assert p != t and fields["text"] == f"a {t}" and fields["prompt_seconds"] == PROMPT_SECONDS
        prompt = [e for e in clip.events if e.onset < PROMPT_SECONDS]
        rest = [e for e in clip.events if e.onset >= PROMPT_SECONDS]
        assert 1 <= len(prompt) <= 2 and {e.label for e in prompt} == {p}
        assert all(e.onset + e.duration <= PROMPT_SECONDS + 1e-9 for e in prompt)
        assert sorted(e.label for e in rest) == sorted([p, t])
        _check_spacing(clip.events, CLIP_SECONDS)
        # Class-neutral video: grey squares only, on the frames of every event.
        colors = {tuple(c) for c in clip.frames.reshape(-1, 3)}
        assert colors <= {(0, 0, 0), NEUTRAL_VISUAL[1]} and clip.frames.shape[0] == 20
        assert all(clip.frames[round(e.onset * FPS)].any() for e in clip.events)
        pairs.add((p, t))
    assert len(pairs) == len(EVENT_CLASSES) * (len(EVENT_CLASSES) - 1)  # every ordered pair occurs (hum included)


@pytest.fixture(scope="module")
def prompt_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sf")
    folders = write_synthfoley(root, train=2, test=3, seed=0, video_train=0, neutral_train=1)
    return root, folders


def test_prompt_layouts_are_written_and_loaded(prompt_data, tmp_path):
    root, folders = prompt_data
    assert set(PROMPT_LAYOUTS) <= set(folders)
    continuation = json.loads((folders["continuation"] / "synthfoley_test.json").read_text())
    multi = json.loads((folders["multicondition"] / "synthfoley_train.json").read_text())
    assert len(continuation) == 3 and len(multi) == 1
    assert all(entry["prompt_seconds"] == PROMPT_SECONDS for entry in [*continuation.values(), *multi.values()])
    audiocaps = json.loads((folders["audiocaps"] / "synthfoley_test.json").read_text())
    assert not set(continuation) & set(audiocaps)  # clips of their own
    with open(folders["multicondition"] / "vggsound.csv", newline="") as f:
        labels = {row[0]: row[2] for row in csv.reader(f)}
    for clip_id, entry in multi.items():
        assert labels[clip_id] == entry["text"] == f"a {entry['text_class']}"

    spec = DATASETS["synthfoley"]
    assert "audio-continuation" in spec.train_tasks and "video-text-audio-to-audio" in spec.eval_tasks
    rows, _ = spec.layout("audio-continuation").load(root, "test", cache_dir=str(tmp_path / "cache"))
    assert len(rows) == 3 and set(rows["prompt_seconds"]) == {PROMPT_SECONDS}
    assert rows[0]["caption"] == continuation[rows[0]["id"]]["caption"]
    rows, _ = spec.layout("video-text-audio-to-audio").load(root, "test", cache_dir=str(tmp_path / "cache"))
    assert len(rows) == 3 and set(rows["prompt_seconds"]) == {PROMPT_SECONDS}
    assert all(row["label"].startswith("a ") and row["video_path"].endswith(".mp4") for row in rows)
    inputs = example_inputs(dict(rows[0], audio_prompt_codes=[[1, 2], [3, 4]]), "video-text-audio-to-audio")
    assert inputs["text"] == rows[0]["label"] and inputs["videos"] == rows[0]["video_path"]
    assert inputs["audio_prompt_codes"].tolist() == [[1, 2], [3, 4]]
    # Other layouts keep the plain columns.
    plain, _ = spec.layout("text-to-audio").load(root, "test", cache_dir=str(tmp_path / "cache"))
    assert "prompt_seconds" not in plain.column_names


def test_add_audio_codes_splits_prompt_and_target(prompt_data, tiny, tmp_path):
    root, _ = prompt_data
    model, processor = tiny
    rows, _ = DATASETS["synthfoley"].layout("audio-continuation").load(root, "test", cache_dir=str(tmp_path / "c"))
    coded, report = dc.add_audio_codes(rows.select(range(2)), model, processor)
    assert report.kept == 2
    head = round(PROMPT_SECONDS * model.config.frame_rate)
    assert head == 60
    for example in coded:
        prompt, target = np.array(example["audio_prompt_codes"]), np.array(example["audio_codes"])
        assert prompt.shape == (2, 60) and target.shape == (2, 150 - 60)
        whole = dc._audio_codes(dict(example), model, processor, None, "audio_codes")["audio_codes"]
        np.testing.assert_array_equal(np.concatenate([prompt, target], axis=1), whole)
    # Rows without prompt_seconds keep whole-clip codes and no prompt column.
    plain, _ = DATASETS["synthfoley"].layout("text-to-audio").load(root, "test", cache_dir=str(tmp_path / "c"))
    plain_coded, _ = dc.add_audio_codes(plain.select(range(1)), model, processor)
    assert "audio_prompt_codes" not in plain_coded.column_names
    assert np.array(plain_coded[0]["audio_codes"]).shape == (2, 150)


def test_collator_masks_the_prompt_codes(tiny):
    model, processor = tiny
    prompt = np.arange(2 * 4).reshape(2, 4) % 1024
    target = (np.arange(2 * 3).reshape(2, 3) + 100) % 1024
    examples = [
        {"id": "c", "task": "audio-continuation", "caption": "a chirp", "audio_prompt_codes": prompt.tolist(),
         "audio_codes": target.tolist(), "prompt_seconds": 0.8},
        {"id": "m", "task": "video-text-audio-to-audio", "label": "a hum", "video_features": np.ones((5, 64)).tolist(),
         "audio_prompt_codes": prompt[:, :2].tolist(), "audio_codes": target.tolist(), "prompt_seconds": 0.8},
    ]
    inputs = example_to_inputs(examples[0])
    assert set(inputs) == {"task", "audio_prompt_codes", "audio_codes"}  # the caption is not a condition here
    np.testing.assert_array_equal(inputs["audio_prompt_codes"], prompt)
    batch = C3LLMDataCollator(processor)(examples)
    offset, end = model.config.acoustic_token_offset, model.config.audio_end_token_id
    for i, known in enumerate((prompt, prompt[:, :2])):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        targets = labels[labels != -100].tolist()
        assert targets == [offset + c for c in target[0]] + [end]  # only the new audio is learned
        # The prompt's codebook-1 tokens sit right before the target, and are masked.
        start = len(ids) - len(targets) - known.shape[1]
        assert ids[start : start + known.shape[1]].tolist() == [offset + c for c in known[0]]
        assert (labels[: len(ids) - len(targets)] == -100).all()
        frames = known.shape[1] + target.shape[1]
        np.testing.assert_array_equal(batch["audio_codes"][i, :, :frames].numpy(), np.concatenate([known, target], 1))
        assert (batch["audio_codes"][i, :, frames:] == -100).all()
    text = processor.tokenizer("a hum", add_special_tokens=False)["input_ids"]
    assert set(text) <= set(batch["input_ids"][1].tolist()) and batch["video_features"].shape == (1, 5, 64)


def test_evaluation_encodes_the_prompt_of_each_clip(prompt_data, tiny, tmp_path):
    root, _ = prompt_data
    model, processor = tiny
    rows, _ = DATASETS["synthfoley"].layout("audio-continuation").load(root, "test", cache_dir=str(tmp_path / "c"))
    row = rows[0]
    [out] = with_prompt_codes(model, processor, [row])
    assert out["audio_prompt_codes"].shape == (2, 60) and out["continuation_seconds"] == pytest.approx(1.2)
    wave = dc._load_source_audio(row["audio_path"], None, 24000)
    expected = model.encode_audio(**processor.prepare_audio_target(wave[:19200], sampling_rate=24000))[0, :, :60]
    np.testing.assert_array_equal(out["audio_prompt_codes"], expected.numpy())
    assert len(_reference_audio(row, 24000)) == 48000 - 19200  # the reference is the continuation alone


# ---- scoring -------------------------------------------------------------------------------------------------------
def test_continuation_scores_and_mismatched_control():
    records = [
        {"detected_classes": ["chirp"], "prompt_classes": ["chirp", "hum"]},
        {"detected_classes": ["hum", "hum"], "prompt_classes": ["hum"]},
        {"detected_classes": [], "prompt_classes": ["low beep"]},  # nothing detected: a miss
        {"detected_classes": ["chirp", "click train"], "prompt_classes": ["chirp"]},  # an extra class: a miss
    ]
    scores, intervals = scoring.continuation_scores(records)
    assert scores["continuation_in_prompt_classes"] == 0.5
    # Against the next clip's prompt classes: chirp vs [hum], hum vs [low beep], [] vs [chirp], ... vs [chirp, hum].
    assert scores["continuation_in_prompt_classes_mismatched"] == 0.0
    low, high = intervals["continuation_in_prompt_classes"]
    assert 0 < low < 0.5 < high < 1
    assert set(scores) <= set(scoring.MEASURES)


def test_multicondition_scores_per_condition():
    records = [
        {"prompt_class": "hum", "text_class": "chirp", "detected_classes": ["hum", "chirp"],
         "generated_onsets": [0.3, 0.8], "visual_onsets": [0.3, 0.8]},
        {"prompt_class": "low beep", "text_class": "hum", "detected_classes": ["hum"],
         "generated_onsets": [0.47], "visual_onsets": [0.25, 0.6]},
        {"prompt_class": "chirp", "text_class": "click train", "detected_classes": ["chirp", "noise burst"],
         "generated_onsets": [0.35, 0.95], "visual_onsets": [0.35, 0.95]},
    ]  # fmt: skip
    scores, intervals = scoring.multicondition_scores(records)
    assert scores["prompt_class_present"] == pytest.approx(2 / 3)
    assert scores["text_class_present"] == pytest.approx(2 / 3)
    # Next clip's P: low beep, chirp, hum -> absent, absent, absent; next clip's T: hum, click train, chirp.
    assert scores["prompt_class_present_mismatched"] == 0.0
    assert scores["text_class_present_mismatched"] == pytest.approx(2 / 3)
    # Own onsets: 2 + 0 + 2 matched of 5 generated and 6 visual; against the next clip's video: 0.3~0.25, 0.35~0.3.
    assert scores["onset_f1"] == pytest.approx(2 * 4 / (5 + 6))
    assert scores["onset_f1_mismatched"] == pytest.approx(2 * 2 / (5 + 6))
    assert set(scores) <= set(scoring.MEASURES) and "text_class_present" in intervals


def test_score_multicondition_shifts_the_truth_to_the_continuation(tmp_path):
    sr = 24000
    clip, fields = make_multicondition_clip(np.random.default_rng(11))
    entry = {"file": "video/x_000000.mp4", "events": [vars(e) for e in clip.events], **fields}
    rest = clip.audio[round(PROMPT_SECONDS * sr) :]
    row = {"id": "x", "video_path": str(tmp_path / "video" / "x_000000.mp4"), "audio_path": None}
    other_clip, other_fields = make_multicondition_clip(np.random.default_rng(12))
    other = {"file": "video/y_000000.mp4", "events": [vars(e) for e in other_clip.events], **other_fields}
    rows = [row, {"id": "y", "video_path": "video/y_000000.mp4", "audio_path": None}]
    waves = [rest, other_clip.audio[round(PROMPT_SECONDS * sr) :]]
    entries = {"x_000000.mp4": entry, "y_000000.mp4": other}
    scores, _, records = scoring.score_multicondition(rows, waves, sr, entries)
    truth = [e for e in clip.events if e.onset >= PROMPT_SECONDS]
    assert records[0]["visual_onsets"] == [round(e.onset - PROMPT_SECONDS, 4) for e in truth]
    # The clip's own continuation holds both P and T at the visual onsets: every measure at 1.
    assert scores["prompt_class_present"] == scores["text_class_present"] == 1.0
    assert scores["onset_f1"] == 1.0
    cont_scores, _, cont_records = scoring.score_continuation(rows, waves, sr, entries)
    assert cont_records[0]["prompt_classes"] == [fields["prompt_class"]]
    assert cont_records[0]["holds_prompt_classes"] is False  # T is not a prompt class
