"""Long-form generation in windows, streamed audio, audio continuation and the multi-condition task, on the tiny
model (windows of 2 s: `config.max_audio_seconds`)."""

import numpy as np
import pytest
import torch

from modeling_c3llm import C3LLMAudioStreamer
from modeling_c3llm.streaming_c3llm import plan_windows, window_grid
from processing_c3llm import C3LLMProcessor


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (other - reference).pow(2).sum().clamp(min=1e-30)))


@pytest.fixture(scope="module")
def masked_tiny():
    from conversion.build_c3llm import build_tiny

    model, processor = build_tiny(seed=0, masked_num_layers=1)
    return model.eval(), processor


def test_windows_cover_the_timeline_and_start_on_video_frames():
    for prefix, total, window, context, grid in ((0, 750, 150, 37, 1), (20, 2250, 150, 37, 15), (0, 151, 150, 10, 15)):
        windows = plan_windows(prefix, total, window, context, grid)
        assert windows[0].start == 0 and windows[0].context == prefix and windows[-1].end == total
        for before, after in zip(windows, windows[1:]):
            assert after.start + after.context == before.end  # each continues exactly where the last ended
            assert after.context >= context and after.start % grid == 0
        assert all(w.context + w.new <= window and w.new > 0 for w in windows)
    assert window_grid(75, 10.0) == 15 and window_grid(75, 5.0) == 15 and window_grid(75, None) == 1
    with pytest.raises(ValueError, match="shorter than the model's window"):
        plan_windows(150, 300, 150, 37)


def test_long_form_audio_is_one_continuous_decode_of_contiguous_windows(tiny):
    model, processor = tiny
    inputs = processor(text="a dog barks", task="text-to-audio")
    torch.manual_seed(0)
    out = model.generate(**inputs, audio_length_in_s=5.0, do_sample=True, window_context_in_s=0.5)
    frames = 5 * model.config.frame_rate
    assert out.audio.shape == (1, 1, 5 * 24000) and out.audio_codes.shape == (1, 2, frames)
    assert (out.audio_codes >= 0).all() and out.sequences.shape[1] == inputs["input_ids"].shape[1] + frames
    # No joins to hear: the output is the codec's decode of all the windows' codes at once.
    assert torch.allclose(out.audio, model.decode_audio(out.audio_codes), atol=1e-6)
    # The first window is what a 2 s generation gives with the same seed; later windows continue it.
    torch.manual_seed(0)
    first = model.generate(**inputs, audio_length_in_s=2.0, do_sample=True)
    assert torch.equal(out.audio_codes[..., : 2 * model.config.frame_rate], first.audio_codes)


def test_streamed_audio_matches_the_unstreamed_generation(tiny):
    model, processor = tiny
    inputs = processor(text=["a dog barks", "rain on a roof"], task="text-to-audio")
    torch.manual_seed(1)
    whole = model.generate(**inputs, audio_length_in_s=4.5, do_sample=True)
    torch.manual_seed(1)
    chunks = model.generate_stream(**inputs, audio_length_in_s=4.5, do_sample=True, chunk_length_in_s=0.5)
    received = []
    while True:
        try:
            received.append(next(chunks))
        except StopIteration as stop:
            streamed = stop.value
            break
    sizes = [chunk.shape[-1] for chunk in received]
    assert len(received) >= 6 and min(sizes) >= 0.5 * 24000 and sum(sizes) == 4.5 * 24000
    assert all(chunk.shape[:2] == (2, 1) for chunk in received)
    assert torch.equal(torch.cat(received, -1), streamed.audio)
    assert torch.equal(streamed.audio_codes[:, 0], whole.audio_codes[:, 0])  # the coarse codes are the same
    fine_equal = (streamed.audio_codes[:, 1:] == whole.audio_codes[:, 1:]).float().mean()
    assert fine_equal >= 0.95
    assert snr_db(whole.audio, streamed.audio) > 30  # chunk joins: codec context and a crossfade


def test_a_streamer_in_another_thread_gets_every_chunk(tiny):
    import threading

    model, processor = tiny
    inputs = processor(text="a bell", task="text-to-audio")
    streamer = C3LLMAudioStreamer(chunk_length_in_s=1.0, timeout=120)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=model.generate(
        **inputs, audio_length_in_s=2.6, streamer=streamer, do_sample=False)))  # fmt: skip
    thread.start()
    chunks = list(streamer)
    thread.join()
    assert streamer.sampling_rate == 24000
    sizes = [c.shape[-1] for c in chunks]
    assert len(sizes) == 2 and min(sizes) >= 24000 and sum(sizes) == 2.6 * 24000
    assert torch.equal(torch.cat(chunks, -1), result["out"].audio)


def test_masked_decoding_streams_one_window_at_a_time(masked_tiny):
    model, processor = masked_tiny
    inputs = processor(text="a dog barks", task="text-to-audio")
    torch.manual_seed(0)
    whole = model.generate(**inputs, audio_length_in_s=5.0, decoding="masked", decoding_steps=4)
    torch.manual_seed(0)
    chunks = list(model.generate_stream(**inputs, audio_length_in_s=5.0, decoding="masked", decoding_steps=4))
    assert (whole.audio_codes >= 0).all() and whole.audio.shape[-1] == 5 * 24000
    windows = plan_windows(0, 375, 150, 38)  # 5 s in windows of 2 s, each seeing the last 0.5 s of the one before
    assert sum(c.shape[-1] for c in chunks) == 5 * 24000 and len(chunks) == len(windows) == 4
    assert snr_db(whole.audio, torch.cat(chunks, -1)) > 30


def test_each_window_of_a_long_video_sees_the_frames_of_its_time_span(tiny):
    model, processor = tiny
    config = model.config
    fps, frames = config.video_fps, 40  # 8 s at 5 fps; windows of 2 s (10 frames)
    features = np.tile(np.arange(frames, dtype=np.float32)[:, None], (1, config.video_feature_size))
    inputs = processor(video_features=features, task="video-to-audio")
    assert inputs["video_features"].shape[1] == frames  # the processor keeps the whole video for audio
    seen = []
    hook = model.video_projector.register_forward_hook(lambda module, args, out: seen.append(args[0][0, :, 0].tolist()))
    try:
        out = model.generate(**inputs, do_sample=True)  # a long video: its length by default
    finally:
        hook.remove()
    assert out.audio.shape[-1] == 8 * 24000
    windows = plan_windows(0, 8 * config.frame_rate, 2 * config.frame_rate, config.frame_rate // 2,
                           window_grid(config.frame_rate, fps))  # fmt: skip
    assert len(seen) == len(windows) > 1
    for window, shown in zip(windows, seen):
        first = window.start * fps / config.frame_rate
        assert shown == [first + i for i in range(len(shown))] and len(shown) == min(10, frames - first)


def test_continuation_prompts_labels_and_new_audio_only(tiny):
    model, processor = tiny
    config = model.config
    rng = np.random.default_rng(0)
    clip = rng.integers(0, config.codebook_size, size=(2, 40))
    prompt, target = clip[:, :15], clip[:, 15:]
    train = processor(text="more rain", audio_prompt_codes=prompt, audio_codes=target, task="audio-continuation")
    ids, labels = train["input_ids"][0], train["labels"][0]
    offset = config.acoustic_token_offset
    start = ids.tolist().index(config.audio_start_token_id)
    assert ids[start + 1 : start + 16].tolist() == (prompt[0] + offset).tolist()
    assert (labels[: start + 16] == -100).all() and labels[start + 16 :].tolist() == [*(target[0] + offset), config.audio_end_token_id]
    assert train["audio_codes"][0].tolist() == clip.tolist()  # the NAR and masked losses see the whole clip
    # The NAR head is conditioned on the prompt without its audio: the same loss as the whole clip after the text.
    whole = processor(text="more rain", audio_codes=clip, task="text-to-audio")
    with torch.no_grad():
        assert torch.allclose(model(**train).nar_loss, model(**whole).nar_loss)

    inputs = processor(text="more rain", audio_prompt_codes=prompt, task="audio-continuation")
    assert inputs["audio_prompt_codes"].tolist() == [prompt.tolist()]
    torch.manual_seed(0)
    out = model.generate(**inputs, audio_length_in_s=1.0, do_sample=True)
    assert out.audio.shape[-1] == 24000 and out.audio_codes.shape == (1, 2, config.frame_rate)
    # The new audio is decoded in one piece with the prompt, so it joins the prompt without a click.
    joined = model.decode_audio(torch.cat([torch.as_tensor(prompt)[None], out.audio_codes], -1))
    assert torch.allclose(out.audio, joined[..., 15 * config.hop_length :], atol=1e-6)
    # Long continuations are windowed too, in both decodings.
    assert model.generate(**inputs, audio_length_in_s=3.0).audio.shape[-1] == 3 * 24000


def test_the_multi_condition_prompt_round_trips(tiny, task_inputs, tmp_path):
    model, processor = tiny
    example = task_inputs("video-text-audio-to-audio")
    inputs = processor(**example, task="video-text-audio-to-audio")
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    video = tokens.index("<Video>")
    assert tokens[video + 1 : tokens.index("</Video>")] == ["<|video_frame|>"] * inputs["pixel_values_videos"].shape[1]
    text = processor.tokenizer.convert_tokens_to_string(tokens[tokens.index("</Video>") + 1 : tokens.index("<Audio>")])
    assert text.strip() == "a drum"
    prompt = example["audio_prompt_codes"]
    assert tokens[tokens.index("<Audio>") + 1 :] == [f"<|a_{code}|>" for code in prompt[0]]
    processor.save_pretrained(tmp_path)
    again = C3LLMProcessor.from_pretrained(tmp_path)(**example, task="video-text-audio-to-audio")
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    assert processor._infer_task({"audio_prompt_codes": [prompt], "text": ["x"]}, 0) == "audio-continuation"
    out = model.generate(**inputs, audio_length_in_s=0.5, guidance_scale=2.0)
    assert out.audio.shape[-1] == 12000


def test_long_form_and_streaming_reject_what_cannot_work(tiny):
    model, processor = tiny
    inputs = processor(text="a dog barks", task="text-to-audio")
    for length in (0, -1.0, 601.0):
        with pytest.raises(ValueError, match=r"audio_length_in_s must be in \(0, 600\]"):
            model.generate(**inputs, audio_length_in_s=length)
    with pytest.raises(ValueError, match="Streaming needs an exact length"):
        model.generate(**inputs, max_new_tokens=30, streamer=C3LLMAudioStreamer())
    with pytest.raises(ValueError, match="one candidate per prompt"):
        model.generate(**inputs, audio_length_in_s=1.0, num_return_sequences=2, streamer=C3LLMAudioStreamer())
    with pytest.raises(ValueError, match="at least 0.5 s"):
        C3LLMAudioStreamer(chunk_length_in_s=0.2)
    with pytest.raises(ValueError, match="window_context_in_s must be in"):
        model.generate(**inputs, audio_length_in_s=5.0, window_context_in_s=2.0)
    video = processor(video_features=np.ones((20, model.config.video_feature_size), np.float32), task="video-to-audio")
    with pytest.raises(ValueError, match="A video is 4.00 s long but 6.00 s of audio were asked"):
        model.generate(**video, audio_length_in_s=6.0)
    long_prompt = np.zeros((2, 2 * model.config.frame_rate), dtype=np.int64)
    with pytest.raises(ValueError, match="must be shorter than the model's window"):
        model.generate(**processor(audio_prompt_codes=long_prompt, task="audio-continuation"), audio_length_in_s=1.0)
    continuation = processor(audio_prompt_codes=long_prompt[:, :10], task="audio-continuation")
    with pytest.raises(ValueError, match="must end with the first codebook of audio_prompt_codes"):
        model.generate(**dict(continuation, audio_prompt_codes=continuation["audio_prompt_codes"] + 1), audio_length_in_s=1.0)
    # Several candidates per prompt work in long-form without a streamer.
    out = model.generate(**inputs, audio_length_in_s=2.5, num_return_sequences=2, do_sample=True)
    assert out.audio_codes.shape == (2, 2, round(2.5 * model.config.frame_rate))


def test_a_long_video_with_audio_within_one_window_sees_its_first_frames(tiny, tmp_path):
    from tests.conftest import write_mp4

    model, processor = tiny
    write_mp4(tmp_path / "long.mp4", frames=36, fps=12)  # 3 s: 15 frames at 5 fps, the window takes 10
    inputs = processor(videos=str(tmp_path / "long.mp4"), task="video-to-audio")
    assert inputs["pixel_values_videos"].shape[1] == 15
    torch.manual_seed(0)
    out = model.generate(**inputs, audio_length_in_s=1.0, do_sample=True)
    assert out.audio.shape[-1] == 24000
    # The same as a prompt that holds the first 10 frames only.
    encoded = model._video_inputs(inputs["pixel_values_videos"], inputs["flow_values_videos"], None)
    first = processor(video_features=encoded[0, :10].numpy(), task="video-to-audio")
    torch.manual_seed(0)
    assert torch.equal(model.generate(**first, audio_length_in_s=1.0, do_sample=True).audio_codes, out.audio_codes)


def test_long_form_windows_are_later_windows_of_longer_videos(tiny):
    from datasets import Dataset

    from c3llm.data.collator import example_to_inputs
    from c3llm.data.datasets import long_form_windows

    config = tiny[0].config  # 75 Hz codes, 5 fps video: windows of 150 frames and 10 video frames, on a 15-frame grid
    codes = np.stack([np.arange(600), np.arange(600) % 7])  # 8 s; codebook 1 holds each frame's index
    features = np.repeat(np.arange(40, dtype=np.float32)[:, None], config.video_feature_size, 1)
    clips = Dataset.from_list([{"id": str(i), "audio_codes": codes.tolist(), "video_features": features.tolist()}
                               for i in range(30)])  # fmt: skip
    starts = set()
    for row in long_form_windows(clips, config, context_seconds=0.5, seed=0):
        prompt, target = np.array(row["audio_prompt_codes"]), np.array(row["audio_codes"])
        start = int(prompt[0, 0])
        starts.add(start)
        assert start % 15 == 0 and 15 <= start <= 450
        assert 38 <= prompt.shape[1] < 38 + 15 and prompt.shape[1] + target.shape[1] == 150
        assert np.array_equal(np.concatenate([prompt, target], 1), codes[:, start : start + 150])
        assert np.array(row["video_features"])[:, 0].tolist() == list(range(start // 15, start // 15 + 10))
        inputs = example_to_inputs(row)  # the optional audio prompt of video-to-audio comes from its own column
        assert inputs["task"] == "video-to-audio" and np.array_equal(inputs["audio_prompt_codes"], prompt)
    assert len(starts) > 5


def test_a_local_nar_head_streams_exactly_the_unstreamed_codes():
    from conversion.build_c3llm import build_tiny

    model, processor = build_tiny(seed=1, nar_attention_window=3)  # receptive field 2 layers * 3 = 6 frames
    model.eval()
    assert model.config.nar_config.receptive_field == 6
    inputs = processor(text="a bell", task="text-to-audio")
    codes = torch.randint(0, 1024, (1, 1, 60))
    frames_mask = torch.ones(1, 60, dtype=torch.bool)
    condition = model.get_multimodal_embeddings(inputs["input_ids"]), inputs["attention_mask"].bool()
    whole = model.nar_head(*condition, codes, frames_mask)
    part = model.nar_head(*condition, codes[..., :40], frames_mask[:, :40])
    assert torch.allclose(whole[:, :34], part[:, :34], atol=1e-5)  # frames 6 or more before the end: unchanged
    assert not torch.allclose(whole[:, 34:40], part[:, 34:40], atol=1e-5)
    torch.manual_seed(0)
    unstreamed = model.generate(**inputs, audio_length_in_s=3.0, do_sample=True)
    torch.manual_seed(0)
    streamed = model.generate(**inputs, audio_length_in_s=3.0, do_sample=True, streamer=C3LLMAudioStreamer())
    assert torch.equal(streamed.audio_codes, unstreamed.audio_codes)  # the default lookahead is the receptive field
