"""Every bad input gets a clear error naming the problem, at each public entry point (one test per case)."""

import numpy as np
import pytest
import torch

from processing_c3llm import MediaError


def sine(rate, seconds=0.5):
    return np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate).astype(np.float32)


# ---- processor -------------------------------------------------------------------------------------------------
def test_audio_array_without_sampling_rate(tiny):
    with pytest.raises(ValueError, match="sampling_rate"):
        tiny[1](audio=sine(16000))


def test_audio_array_with_mismatching_sampling_rate(tiny):
    with pytest.raises(ValueError, match="resample to 16000"):
        tiny[1](audio=sine(44100), sampling_rate=44100)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_audio_with_nan_or_inf(tiny, bad):
    audio = sine(16000)
    audio[10] = bad
    with pytest.raises(ValueError, match="NaN|inf"):
        tiny[1](audio=audio, sampling_rate=16000)


def test_empty_audio(tiny):
    with pytest.raises(ValueError, match="empty"):
        tiny[1](audio=np.zeros(0, dtype=np.float32), sampling_rate=16000)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text(tiny, text):
    with pytest.raises(ValueError, match="empty"):
        tiny[1](text=text, task="text-to-audio")


def test_empty_caption_target(tiny, media):
    with pytest.raises(ValueError, match="text_target is empty"):
        tiny[1](audio=str(media / "stereo_44k.wav"), text_target="")


def test_video_with_no_frames(tiny):
    with pytest.raises(ValueError, match="no frames"):
        tiny[1](videos=np.zeros((0, 32, 32, 3), dtype=np.uint8))


def test_video_features_of_the_wrong_width(tiny):
    with pytest.raises(ValueError, match=r"video_features must have shape \(frames>0, 64\)"):
        tiny[1](video_features=np.zeros((4, 63), dtype=np.float32))


def test_video_features_with_nan(tiny):
    with pytest.raises(ValueError, match="NaN"):
        tiny[1](video_features=np.full((4, 64), np.nan, dtype=np.float32))


def test_unknown_task(tiny):
    with pytest.raises(ValueError, match="Unknown task 'text-to-video'"):
        tiny[1](text="a dog", task="text-to-video")


def test_task_missing_its_input(tiny):
    with pytest.raises(ValueError, match="needs `videos`"):
        tiny[1](text="a dog", task="video-to-audio")


@pytest.mark.parametrize("name,kwarg", [("corrupt.wav", "audio"), ("corrupt.mp4", "videos"), ("corrupt.wav", "images")])
def test_corrupt_files(tiny, media, name, kwarg):
    with pytest.raises(MediaError, match="corrupt|unreadable|cannot|could not"):
        tiny[1](**{kwarg: str(media / name)})


def test_missing_file(tiny, tmp_path):
    with pytest.raises(MediaError, match="not found|does not exist|No such"):
        tiny[1](audio=str(tmp_path / "nothing.wav"))


def test_prompt_longer_than_the_context(tiny):
    with pytest.raises(ValueError, match="longer than the model's context of 1024"):
        tiny[1](text="word " * 400)


@pytest.mark.parametrize(
    "codes,match",
    [(np.zeros((3, 5), dtype=np.int64), r"shape \(2, frames>0\)"), (np.full((2, 5), 1024), r"integers in \[0, 1024\)")],
)
def test_bad_audio_codes(tiny, codes, match):
    with pytest.raises(ValueError, match=match):
        tiny[1](text="a dog", audio_codes=codes)


def test_wrong_target_kind(tiny):
    with pytest.raises(ValueError, match="produces audio; give `audio_codes`"):
        tiny[1](text="a dog", text_target="a caption")


def test_partial_targets_in_a_training_batch(tiny):
    with pytest.raises(ValueError, match="for every example"):
        tiny[1](text=["a", "b"], audio_codes=[np.zeros((2, 3), dtype=np.int64), None])


def test_audio_target_at_the_wrong_rate(tiny):
    with pytest.raises(ValueError, match="resample to 24000"):
        tiny[1].prepare_audio_target(sine(16000), sampling_rate=16000)


def test_no_inputs_at_all(tiny):
    with pytest.raises(ValueError, match="at least one of"):
        tiny[1]()


# ---- model -----------------------------------------------------------------------------------------------------
def test_generate_rejects_a_prompt_that_overflows_the_context(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="exceeds the model's context of 1024"):  # one window (2 s) does not fit
        model.generate(**processor(text="word " * 180), audio_length_in_s=10.0)


def test_generate_rejects_right_padding(tiny):
    model, processor = tiny
    inputs = processor(text=["a long prompt here", "a"])
    ids, mask = inputs["input_ids"].flip(-1), inputs["attention_mask"].flip(-1)
    with pytest.raises(ValueError, match="left padding"):
        model.generate(input_ids=ids, attention_mask=mask)


def test_generate_rejects_mixed_output_batches(tiny, media):
    model, processor = tiny
    inputs = processor(text=["a dog", None], images=[None, str(media / "image.png")],
                       task=["text-to-audio", "image-to-audio"])
    inputs["input_ids"][1, -1] = processor.tokenizer.convert_tokens_to_ids("a")
    with pytest.raises(ValueError, match="all audio-output tasks or all text-output"):
        model.generate(**inputs)


def test_generate_rejects_audio_length_for_text_tasks(tiny, media):
    model, processor = tiny
    with pytest.raises(ValueError, match="only applies to audio-output tasks"):
        model.generate(**processor(audio=str(media / "stereo_44k.wav")), audio_length_in_s=1.0)


@pytest.mark.parametrize("seconds", [0.0, -1.0, 1e6])
def test_generate_rejects_bad_audio_lengths(tiny, seconds):
    model, processor = tiny
    with pytest.raises(ValueError, match="audio_length_in_s must be in"):
        model.generate(**processor(text="a dog"), audio_length_in_s=seconds)


def test_forward_rejects_missing_features_for_placeholders(tiny, media):
    model, processor = tiny
    inputs = processor(images=str(media / "image.png"))
    del inputs["pixel_values"]
    with pytest.raises(ValueError, match="17 image placeholder tokens but 0|image placeholder"):
        model(**inputs)


def test_model_rejects_video_features_of_the_wrong_width(tiny):
    model, processor = tiny
    inputs = processor(video_features=np.zeros((3, 64), dtype=np.float32))
    inputs["video_features"] = torch.zeros(1, 3, 65)
    with pytest.raises(ValueError, match="width 65, but this model expects 64"):
        model(**inputs)


def test_model_rejects_out_of_range_ids(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="input_ids must lie in"):
        model(input_ids=torch.tensor([[model.config.text_config.vocab_size]]))


def test_audio_codes_without_labels(tiny):
    model, processor = tiny
    inputs = processor(text="a dog", audio_codes=np.zeros((2, 4), dtype=np.int64))
    del inputs["labels"]
    with pytest.raises(ValueError, match="needs `labels`"):
        model(**inputs)
