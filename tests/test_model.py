"""The model: losses (Eq. 1 + Eq. 2), gradients, every task's generate, batching and the vocabulary layout."""

import numpy as np
import pytest
import torch

from conversion.build_c3llm import build_tiny
from processing_c3llm import TASKS


AUDIO_TASKS = [task for task, (_, output) in TASKS.items() if output == "audio"]
TEXT_TASKS = [task for task, (_, output) in TASKS.items() if output == "text"]


def sharp_tiny():
    """A tiny model with large LLM and NAR weights, so that each greedy choice depends on the whole context."""
    model, processor = build_tiny(seed=2)
    with torch.no_grad():
        for module in (model.language_model, model.nar_head):
            for weight in module.parameters():
                if weight.ndim == 2:
                    weight.normal_(0.0, 0.5)
    return model, processor


def training_batch(processor, media, rng):
    codes = [rng.integers(0, 1024, size=(2, n)) for n in (7, 5, 6)]
    return processor(
        text=["a dog barks", None, None, None],
        audio=[None, str(media / "stereo_44k.wav"), None, None],
        videos=[None, None, str(media / "clip.mp4"), None],
        images=[None, None, None, str(media / "image.png")],
        task=["text-to-audio", "audio-to-text", "video-to-audio", "image-to-audio"],
        text_target=[None, "a tone", None, None],
        audio_codes=[codes[0], None, codes[1], codes[2]],
    )


def test_loss_is_eq1_plus_eq2_by_hand(tiny, media):
    model, processor = tiny
    batch = training_batch(processor, media, np.random.default_rng(0))
    with torch.no_grad():
        out = model(**batch)
        embeds = model.get_multimodal_embeddings(
            batch["input_ids"],
            **{k: batch[k] for k in ("input_features", "is_longer", "pixel_values", "pixel_values_videos",
                                      "flow_values_videos", "video_frames_mask")},
        )
        mask = batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits

    labels = batch["labels"]
    terms = []
    for row in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[row, t + 1])
            if target != -100:
                terms.append(-torch.log_softmax(logits[row, t].double(), -1)[target])
    lm_loss = torch.stack(terms).mean()
    # Targets: 7+1 and 5+1 and 6+1 audio tokens (codes + </Audio>) and the caption plus <eos>.
    caption = len(processor.tokenizer("a tone", add_special_tokens=False)["input_ids"]) + 1
    assert len(terms) == 8 + 6 + 7 + caption

    codes = batch["audio_codes"]
    nar_terms = []
    for row in (0, 2, 3):
        frames = int((codes[row, 0] >= 0).sum())
        condition = (mask[row] == 1) & (labels[row] == -100)
        with torch.no_grad():
            nar_logits = model.nar_head(
                embeds[row : row + 1], condition[None], codes[row : row + 1, :1, :frames], torch.ones(1, frames, dtype=torch.bool)
            )[0]
        for t in range(frames):
            nar_terms.append(-torch.log_softmax(nar_logits[t].double(), -1)[codes[row, 1, t]])
    nar_loss = torch.stack(nar_terms).mean()

    torch.testing.assert_close(out.lm_loss.double(), lm_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.nar_loss.double(), nar_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss.double(), lm_loss + nar_loss, atol=1e-5, rtol=1e-5)


def test_gradients_reach_trainable_parts_only(tiny_folder, media):
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(tiny_folder).train()
    processor = AutoProcessor.from_pretrained(tiny_folder)
    batch = training_batch(processor, media, np.random.default_rng(1))
    model(**batch).loss.backward()

    def grad_norm(module):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        return sum(float(g.abs().sum()) for g in grads) if grads else 0.0

    for trained in ("audio_projector", "video_projector", "image_projector", "nar_head", "language_model"):
        assert grad_norm(getattr(model, trained)) > 0, trained
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.language_model.model.layers[-1].parameters())
    for frozen in ("codec", "audio_encoder", "vision_encoder"):
        module = getattr(model, frozen)
        assert not module.training, f"{frozen} must stay in eval mode"
        assert all(not p.requires_grad and p.grad is None for p in module.parameters()), frozen


@pytest.mark.parametrize("task", AUDIO_TASKS)
def test_audio_tasks_generate_waveforms_of_requested_length(tiny, task_inputs, task):
    model, processor = tiny
    inputs = processor(**task_inputs(task), task=task)
    assert inputs["input_ids"][0, -1] == model.config.audio_start_token_id
    torch.manual_seed(0)
    out = model.generate(**inputs, audio_length_in_s=0.4, do_sample=True, top_k=50)
    assert out.sampling_rate == 24000 == model.config.codec_config.sampling_rate
    assert out.audio.shape == (1, 1, round(0.4 * 24000))
    assert torch.isfinite(out.audio).all() and out.audio.abs().sum() > 0
    assert out.audio_codes.shape == (1, 2, 30)
    assert ((out.audio_codes >= 0) & (out.audio_codes < 1024)).all()
    (wave,) = processor.decode_audio(out)
    assert wave.shape == (1, 9600)


@pytest.mark.parametrize("task", TEXT_TASKS)
def test_text_tasks_generate_decodable_ids(tiny, task_inputs, task):
    model, processor = tiny
    inputs = processor(**task_inputs(task), task=task)
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new = ids[:, inputs["input_ids"].shape[1] :]
    assert new.shape == (1, 6)
    assert (new < model.config.acoustic_token_offset).all(), "text tasks must not emit acoustic tokens"
    text = processor.batch_decode(new, skip_special_tokens=True)[0]
    assert isinstance(text, str)
    assert processor.tokenizer(text, add_special_tokens=False)["input_ids"] or new.eq(processor.tokenizer.eos_token_id).any()


@pytest.mark.parametrize("seconds", [0.3, 0.01, 1.0])
def test_audio_length_is_exact_for_any_duration(tiny, seconds):
    model, processor = tiny
    out = model.generate(**processor(text="a bell"), audio_length_in_s=seconds, do_sample=False)
    assert out.audio.shape[-1] == round(seconds * 24000) == int(out.audio_lengths[0])


@pytest.mark.parametrize("frames", [[9], [4, 9]])
def test_cached_generation_equals_full_recomputation(frames):
    """KV-cached decoding (unpadded and left-padded prompts) matches recomputing the whole sequence each step."""
    model, processor = sharp_tiny()
    rng = np.random.default_rng(0)
    inputs = processor(video_features=[rng.normal(size=(n, 64)) for n in frames], task="video-to-caption")
    steps = 8
    generated = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    allowed = model._vocabulary_mask(audio=False)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    extra = {k: inputs[k] for k in ("video_features", "video_frames_mask")}
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, attention_mask=mask, **extra).logits[:, -1]
            logits[:, processor.tokenizer.eos_token_id] = float("-inf")  # min_new_tokens
            next_ids = logits.masked_fill(~allowed, float("-inf")).argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, next_ids], 1), torch.cat([mask, torch.ones_like(next_ids)], 1)
    assert len(set(ids[0, -steps:].tolist())) > 1, "the check needs varied tokens to be able to fail"
    assert torch.equal(generated, ids)


def test_classifier_free_guidance_equals_the_guided_log_probabilities_by_hand():
    """guidance_scale mixes each step's log-probabilities with those after the unconditional prompt `<bos><Audio>`
    (MusicGen's rule), for left-padded batches too; 1 turns it off; text outputs refuse it."""
    model, processor = sharp_tiny()
    inputs = processor(text=["a dog barks loudly at night", "rain"], task="text-to-audio")
    steps, scale = 6, 3.0
    guided = model.generate(**inputs, audio_length_in_s=steps / model.config.frame_rate, do_sample=False,
                            guidance_scale=scale).sequences
    unconditional = torch.tensor([processor.unconditional_prompt()] * 2)
    assert unconditional[0].tolist() == [processor.tokenizer.bos_token_id, model.config.audio_start_token_id]
    allowed = model._vocabulary_mask(audio=True)
    allowed[model.config.audio_end_token_id] = False  # an exact length: </Audio> cannot come before the end
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        for _ in range(steps):
            cond = model(input_ids=ids, attention_mask=mask).logits[:, -1].log_softmax(-1)
            uncond = model(input_ids=unconditional).logits[:, -1].log_softmax(-1)
            scores = uncond + scale * (cond - uncond)
            next_ids = scores.masked_fill(~allowed, float("-inf")).argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, next_ids], 1), torch.cat([mask, torch.ones_like(next_ids)], 1)
            unconditional = torch.cat([unconditional, next_ids], 1)
    assert torch.equal(guided, ids)
    plain = model.generate(**inputs, audio_length_in_s=steps / model.config.frame_rate, do_sample=False).sequences
    assert not torch.equal(plain, guided), "the check needs guidance to change the choice to be able to fail"
    off = model.generate(**inputs, audio_length_in_s=steps / model.config.frame_rate, do_sample=False,
                         guidance_scale=1.0).sequences
    assert torch.equal(off, plain)
    with pytest.raises(ValueError, match="guidance_scale only applies to audio-output tasks"):
        model.generate(**processor(video_features=np.zeros((3, 64)), task="video-to-caption"), guidance_scale=3.0)
    with pytest.raises(ValueError, match="guidance_scale must be a positive number"):
        model.generate(**inputs, audio_length_in_s=0.1, guidance_scale=-2.0)


def test_audio_generation_computes_only_the_audio_logits(tiny):
    """Audio steps compute the acoustic and </Audio> logits only (equal to the full head's), the rest is -inf; the
    full head never runs during audio generation, and does for text."""
    model, processor = tiny
    inputs = processor(text=["a dog barks loudly", "rain"], task="text-to-audio")
    allowed = model._vocabulary_mask(audio=True)
    with torch.no_grad():
        full = model(**inputs).logits
        for keep in (0, 1):
            only = model(**inputs, audio_logits_only=True, logits_to_keep=keep).logits
            assert only.shape == full[:, -only.shape[1] :].shape
            torch.testing.assert_close(only[..., allowed], full[:, -only.shape[1] :, allowed], atol=1e-5, rtol=1e-5)
            assert torch.isneginf(only[..., ~allowed]).all()
    with pytest.raises(ValueError, match="audio_logits_only is for generation"):
        model(**inputs, labels=inputs["input_ids"], audio_logits_only=True)
    calls = []
    hook = model.language_model.register_forward_hook(lambda *args: calls.append(1))
    try:
        model.generate(**inputs, audio_length_in_s=0.1, do_sample=False)
        assert calls == []  # the decoder and the acoustic rows only
        rng = np.random.default_rng(0)
        text = processor(video_features=rng.normal(size=(3, 64)), task="video-to-caption")
        model.generate(**text, max_new_tokens=3, do_sample=False)
        assert calls
    finally:
        hook.remove()


def test_generation_is_reproducible_under_a_seed(tiny):
    model, processor = tiny
    inputs = processor(text="rain on a roof")
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(model.generate(**inputs, audio_length_in_s=0.2, do_sample=True).audio_codes)
    assert torch.equal(runs[0], runs[1])


def test_stops_at_audio_end_without_a_length(tiny):
    model, processor = tiny
    out = model.generate(**processor(text="a bird"), do_sample=True, max_new_tokens=12)
    frames = int(out.audio_lengths[0]) // model.config.hop_length
    assert 0 <= frames <= 12
    assert out.audio.shape[-1] >= out.audio_lengths[0]
    assert (out.audio[0, :, out.audio_lengths[0] :] == 0).all()


@pytest.mark.parametrize("task", ["text-to-audio", "image-text-to-audio", "video-to-caption"])
def test_batched_greedy_equals_one_by_one(media, task):
    model, processor = sharp_tiny()
    if task == "video-to-caption":
        rng = np.random.default_rng(0)
        examples = [{"video_features": rng.normal(size=(n, model.config.video_feature_size))} for n in (3, 7)]
    else:
        texts = ["a dog barks loudly at night", "rain"]
        examples = [{"text": t} for t in texts]
        if task.startswith("image"):
            examples = [{**e, "images": str(media / "image.png")} for e in examples]
    kwargs = {"max_new_tokens": 5} if task == "video-to-caption" else {"audio_length_in_s": 0.2}
    batched = processor(**{k: [e[k] for e in examples] for k in examples[0]}, task=task)
    assert batched["attention_mask"][:, 0].tolist() != [1, 1], "prompts of different lengths must be padded"
    together = model.generate(**batched, do_sample=False, **kwargs)
    for i, example in enumerate(examples):
        alone = model.generate(**processor(**example, task=task), do_sample=False, **kwargs)
        if task == "video-to-caption":
            prompt = batched["input_ids"].shape[1]
            assert torch.equal(together[i, prompt:], alone[0, alone.shape[1] - together.shape[1] + prompt :])
        else:
            assert len(set(alone.audio_codes[0, 0].tolist())) > 1, "the check needs varied codes to be able to fail"
            assert torch.equal(together.audio_codes[i], alone.audio_codes[0])
            torch.testing.assert_close(together.audio[i], alone.audio[0], atol=1e-5, rtol=1e-4)


def test_vocabulary_layout_and_new_rows(tiny):
    model, processor = tiny
    config = model.config
    tokenizer = processor.tokenizer
    assert len(tokenizer) == config.text_config.vocab_size == config.acoustic_token_offset + 1024 + 9
    assert tokenizer.convert_tokens_to_ids("<|a_0|>") == config.acoustic_token_offset
    assert tokenizer.convert_tokens_to_ids("<Audio>") == config.audio_start_token_id
    assert tokenizer.convert_tokens_to_ids("</Audio>") == config.audio_end_token_id
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_new_token_rows_start_near_the_mean_of_text_rows():
    model, _ = build_tiny(seed=1)
    weight = model.get_input_embeddings().weight.detach()
    offset = model.config.acoustic_token_offset
    text_rows, new_rows = weight[:offset], weight[offset:]
    deviation = (new_rows - text_rows.mean(0)) / text_rows.std(0)
    assert deviation.abs().max() < 1.0  # within one std of the mean, dimension by dimension
    assert 0.05 < float(deviation.std()) < 0.2  # the small noise that breaks ties
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_more_codebooks_are_a_config_choice(task_inputs):
    model, processor = build_tiny(num_codebooks=4)
    assert len(model.nar_head.heads) == 3
    out = model.generate(**processor(text="a bell"), audio_length_in_s=0.2, do_sample=False)
    assert out.audio_codes.shape == (1, 4, 15)
    codes = torch.randint(0, 1024, (4, 9))
    batch = processor(text="a bell", audio_codes=codes)
    loss = model(**batch)
    assert torch.isfinite(loss.nar_loss) and loss.nar_loss > 0


def test_num_audio_tokens_matches_the_clap_encoder(tiny, media):
    model, processor = tiny
    inputs = processor(audio=str(media / "stereo_44k.wav"))
    features = model.get_audio_features(inputs["input_features"], inputs["is_longer"])
    assert features.shape == (1, model.config.num_audio_tokens, model.config.text_config.hidden_size)
    assert int((inputs["input_ids"] == model.config.audio_feature_token_id).sum()) == model.config.num_audio_tokens


def test_encode_decode_audio_round_trip_shapes(tiny):
    model, processor = tiny
    wave = np.sin(2 * np.pi * 220 * np.arange(24000) / 24000).astype(np.float32)
    codes = model.encode_audio(**processor.prepare_audio_target(wave, sampling_rate=24000))
    assert codes.shape == (1, 2, 75) and codes.min() >= 0 and codes.max() < 1024
    audio = model.decode_audio(codes)
    assert audio.shape == (1, 1, 24000) and torch.isfinite(audio).all()


def test_projector_standardization_fits_encoder_features_and_round_trips(tiny_folder, media, tmp_path):
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(tiny_folder).eval()
    processor = AutoProcessor.from_pretrained(tiny_folder)
    batch = training_batch(processor, media, np.random.default_rng(0))
    assert not any(p.is_standardized for p in (model.audio_projector, model.video_projector, model.image_projector))
    with torch.no_grad():
        before = model(**batch).logits
    counts = model.fit_projector_standardization([batch])
    frames = int(batch["video_frames_mask"].sum())
    assert counts == {"audio": model.config.num_audio_tokens, "video": frames, "image": model.config.num_image_tokens}

    raw = {
        "audio": model.encode_audio_features(batch["input_features"], batch["is_longer"]).flatten(0, 1),
        "video": model.encode_video_frames(batch["pixel_values_videos"], batch["flow_values_videos"])[
            batch["video_frames_mask"].bool()
        ],
        "image": model.encode_image_patches(batch["pixel_values"]).flatten(0, 1),
    }
    for name, features in raw.items():
        projector = getattr(model, f"{name}_projector")
        standardized = (features - projector.feature_bias) * projector.feature_scale
        varying = features.std(0) > 1e-2
        assert standardized.mean(0).abs().max() < 1e-4, name
        assert torch.allclose(standardized.std(0, unbiased=False)[varying], torch.ones(int(varying.sum())), atol=2e-3)
        expected = projector.linear_2(projector.act(projector.linear_1(standardized)))
        assert torch.allclose(projector(features), expected, atol=1e-6)

    with torch.no_grad():
        after = model(**batch).logits
    assert not torch.allclose(before, after)  # the standardization reaches the LLM's inputs
    model.save_pretrained(tmp_path / "standardized")
    reloaded = AutoModel.from_pretrained(tmp_path / "standardized").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, after)

    scale = reloaded.audio_projector.feature_scale.clone()
    other = training_batch(processor, media, np.random.default_rng(1))
    other["input_features"] = other["input_features"] * 0.5
    reloaded.fit_projector_standardization([other], refit=False)
    assert torch.equal(reloaded.audio_projector.feature_scale, scale)  # kept: already standardized
    reloaded.fit_projector_standardization([other])
    assert not torch.equal(reloaded.audio_projector.feature_scale, scale)
