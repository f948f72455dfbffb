"""The data collator mixes tasks in one batch with correct masking and padding."""

import datasets
import numpy as np
import pytest
import torch

from c3llm.data.collator import C3LLMDataCollator, example_to_inputs, with_tasks


def test_mixed_task_batch_masks_and_pads(tiny, media):
    model, processor = tiny
    codes = np.arange(2 * 5).reshape(2, 5) % 1024
    examples = [
        {"id": "a", "task": "text-to-audio", "caption": "a high beep", "audio_codes": codes.tolist()},
        {"id": "b", "task": "audio-to-text", "caption": "a chirp", "audio_path": str(media / "stereo_44k.wav")},
        {"id": "c", "task": "video-to-audio", "video_features": np.ones((3, 64)).tolist(), "audio_codes": codes[:, :3]},
        {"id": "d", "task": "video-to-caption", "video_features": np.zeros((4, 64)).tolist(), "caption": "a hum"},
    ]
    batch = C3LLMDataCollator(processor)(examples)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape and ids.shape[0] == 4
    assert (labels[mask == 0] == -100).all(), "padding is never a target"
    assert (mask[:, -1] == 1).all(), "left padding"
    offset = model.config.acoustic_token_offset
    # text-to-audio target: 5 acoustic tokens and </Audio>; the prompt before them is masked.
    targets = labels[0][labels[0] != -100]
    assert targets.tolist() == [offset + c for c in codes[0]] + [model.config.audio_end_token_id]
    # audio-to-text target: the caption then <eos>.
    caption = processor.tokenizer("a chirp", add_special_tokens=False)["input_ids"]
    assert labels[1][labels[1] != -100].tolist() == caption + [processor.tokenizer.eos_token_id]
    assert batch["audio_codes"].shape == (4, 2, 5)
    assert (batch["audio_codes"][1] == -100).all() and (batch["audio_codes"][2, :, 3:] == -100).all()
    assert batch["input_features"].shape[0] == 1
    assert batch["video_features"].shape == (2, 4, 64)
    assert batch["video_frames_mask"].tolist() == [[True] * 3 + [False], [True] * 4]
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.lm_loss is not None and out.nar_loss is not None


def test_condition_dropout_makes_audio_outputs_unconditional(tiny):
    """Dropped audio-output examples keep their target after `<bos><Audio>` and bring no features; text outputs are
    never dropped; the draws repeat under the same seed."""
    model, processor = tiny
    rng = np.random.default_rng(0)
    examples = []
    for i in range(24):
        codes = rng.integers(0, 1024, (2, 4)).tolist()
        examples.append({"id": f"t{i}", "task": "text-to-audio", "caption": "a high beep", "audio_codes": codes})
        examples.append({"id": f"v{i}", "task": "video-to-audio", "video_features": np.ones((3, 64)).tolist(),
                         "audio_codes": codes})
        examples.append({"id": f"c{i}", "task": "video-to-caption", "video_features": np.ones((3, 64)).tolist(),
                         "caption": "a hum"})
    def prompts(batch):
        rows = zip(batch["input_ids"], batch["labels"], batch["attention_mask"])
        return [ids[(mask == 1) & (labels == -100)].tolist() for ids, labels, mask in rows]

    batch = C3LLMDataCollator(processor, condition_dropout=0.5, seed=3)(examples)
    again = C3LLMDataCollator(processor, condition_dropout=0.5, seed=3)(examples)
    assert torch.equal(batch["input_ids"], again["input_ids"])
    unconditional = processor.unconditional_prompt()
    offset = model.config.acoustic_token_offset
    for example, labels in zip(examples, batch["labels"]):
        if example["task"] != "video-to-caption":  # every audio target is kept, dropped condition or not
            expected = [offset + c for c in example["audio_codes"][0]] + [model.config.audio_end_token_id]
            assert labels[labels != -100].tolist() == expected
    dropped = [example["task"] for example, prompt in zip(examples, prompts(batch)) if prompt == unconditional]
    assert "video-to-caption" not in dropped
    assert 6 <= dropped.count("text-to-audio") <= 18 and 6 <= dropped.count("video-to-audio") <= 18
    videos = sum(example["task"] != "text-to-audio" for example in examples)
    assert batch["video_features"].shape[0] == videos - dropped.count("video-to-audio")  # dropped videos are not fed
    assert unconditional not in prompts(C3LLMDataCollator(processor)(examples))
    for value in (-0.1, 1.0):
        with pytest.raises(ValueError, match="condition_dropout must be in"):
            C3LLMDataCollator(processor, condition_dropout=value)
    with pytest.raises(ValueError, match="drop_condition applies to audio-output tasks only"):
        processor(video_features=np.ones((3, 64)), task="video-to-caption", drop_condition=True)


def test_frames_and_features_cannot_share_a_batch(tiny, media):
    examples = [
        {"id": "c", "task": "video-to-caption", "video_features": np.ones((3, 64)), "caption": "a hum"},
        {"id": "d", "task": "video-to-caption", "video_path": str(media / "clip.mp4"), "caption": "a hum"},
    ]
    with pytest.raises(ValueError, match="all videos as frames or all as video_features"):
        C3LLMDataCollator(tiny[1])(examples)


def test_audio_target_without_codes_is_an_error():
    with pytest.raises(ValueError, match="no `audio_codes`"):
        example_to_inputs({"id": "x", "task": "text-to-audio", "caption": "a beep"})


def test_unknown_task_in_an_example():
    with pytest.raises(ValueError, match="unknown task 'sing'"):
        example_to_inputs({"id": "x", "task": "sing"})


def test_with_tasks_repeats_examples_per_task():
    dataset = datasets.Dataset.from_dict({"id": ["a", "b"], "caption": ["x", "y"], "task": ["t", "t"]})
    mixed = with_tasks(dataset, ["text-to-audio", "audio-to-text"])
    assert mixed["id"] == ["a", "a", "b", "b"]
    assert mixed["task"] == ["text-to-audio", "audio-to-text"] * 2
    with pytest.raises(ValueError, match="Unknown tasks"):
        with_tasks(dataset, ["nope"])
