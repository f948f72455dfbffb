"""The model: losses (Eq. 1 + Eq. 2), gradients, every task's generate, candidates per prompt, generation defaults,
negative prompts, batching and the vocabulary layout."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor, GenerationConfig, LogitsProcessor

from conversion.build_c3llm import build_tiny
from processing_c3llm import TASKS


AUDIO_TASKS = [name for name, task in TASKS.items() if task.output == "audio"]
TEXT_TASKS = [name for name, task in TASKS.items() if task.output == "text"]


def sharp_tiny():
    """A tiny model with large LLM and NAR weights, so that each greedy choice depends on the whole context."""
    model, processor = build_tiny(seed=2)
    with torch.no_grad():
        for module in (model.language_model, model.nar_head):
            for weight in module.parameters():
                if weight.ndim == 2:
                    weight.normal_(0.0, 0.5)
    return model, processor


@pytest.fixture(scope="module")
def sharp():
    return sharp_tiny()


class ScoresRecorder(LogitsProcessor):
    """Keeps each step's scores as the processors before it left them."""

    def __init__(self):
        self.scores = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.scores.append(scores.clone())
        return scores


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


def test_a_zero_nar_loss_weight_reports_the_nar_loss_without_a_graph_through_the_nar_head(tiny, media):
    """Stage 1 (nar_loss_weight 0): the loss is the LLM's alone; the NAR loss is reported as the frozen head gives it
    at inference (eval mode: its value at weight 1 without dropout), and nothing is backpropagated through it."""
    model, processor = tiny
    batch = training_batch(processor, media, np.random.default_rng(0))
    layers = {layer: layer.dropout for layer in model.nar_head.modules() if hasattr(layer, "dropout")}
    for layer in layers:
        layer.dropout = 0.3  # the tiny model's NAR head has none
    model.train()
    try:
        weighted = model(**batch)
        model.nar_head.eval()
        reference = model(**batch).nar_loss
        model.train()
        model.config.nar_loss_weight = 0.0
        seen = []
        handle = model.nar_head.register_full_backward_hook(lambda *args: seen.append(1))
        out = model(**batch)
        out.loss.backward()
        handle.remove()
        assert model.nar_head.training  # its mode is restored
    finally:
        model.config.nar_loss_weight = 1.0
        model.zero_grad(set_to_none=True)
        model.eval()
        for layer, dropout in layers.items():
            layer.dropout = dropout
    torch.testing.assert_close(out.loss, out.lm_loss)
    torch.testing.assert_close(out.nar_loss, reference.detach())
    assert not torch.allclose(weighted.nar_loss, reference)  # in training mode the head's dropout is on
    assert layers and out.nar_loss.grad_fn is None and weighted.nar_loss.grad_fn is not None and not seen


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
    prompt = inputs.get("audio_prompt_codes")  # a continuation's prompt ends with <Audio> and its audio prompt
    known = [] if prompt is None else (prompt[0, 0] + model.config.acoustic_token_offset).tolist()
    assert inputs["input_ids"][0, -len(known) - 1 :].tolist() == [model.config.audio_start_token_id, *known]
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


def test_negative_prompts_are_built_like_the_prompt_of_the_task_with_their_text(tiny):
    """Text tasks swap their text for the negative one; tasks without text take their text-bearing variant's prompt
    (same media); `None` is the unconditional prompt."""
    _, processor = tiny
    video = [np.ones((3, 64)), np.ones((5, 64))]

    def rows(ids, mask):
        return [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]

    def negative_rows(batch):
        return rows(batch["negative_prompt_ids"], batch["negative_prompt_attention_mask"])

    texts = processor(text=["a dog barks", "rain"], negative_prompt="static noise")
    assert negative_rows(texts) == processor(text=["static noise"] * 2)["input_ids"].tolist()
    for task in ("video-to-audio", "video-text-to-audio"):
        text = ["a drum", "a bell"] if task == "video-text-to-audio" else None
        batch = processor(video_features=video, text=text, task=task, negative_prompt=["static noise", None])
        variant = processor(video_features=video, text=["static noise"] * 2, task="video-text-to-audio")
        assert negative_rows(batch) == [rows(variant["input_ids"], variant["attention_mask"])[0],
                                        processor.unconditional_prompt()]
    with pytest.raises(ValueError, match="negative_prompt applies to audio-output tasks only"):
        processor(video_features=video[0], task="video-to-caption", negative_prompt="noise")
    with pytest.raises(ValueError, match="negative_prompt is for generation"):
        processor(text="a dog", negative_prompt="noise", drop_condition=True)
    with pytest.raises(ValueError, match="Got 3 negative prompts for a batch of 2"):
        processor(text=["a", "b"], negative_prompt=["x", "y", "z"])


@pytest.mark.parametrize("task", ["text-to-audio", "video-to-audio"])
def test_negative_prompts_guide_as_neg_plus_scale_times_cond_minus_neg_by_hand(sharp, task):
    """Each step's guided log-probabilities are `neg + scale * (cond - neg)`, `neg` after the caller's negative prompt
    (its media included; a `None` row: the unconditional prompt), for left-padded batches."""
    model, processor = sharp
    rng = np.random.default_rng(0)
    example = (
        {"text": ["a dog barks loudly at night", "rain"]}
        if task == "text-to-audio"
        else {"video_features": [rng.normal(size=(n, 64)) for n in (4, 7)]}
    )
    inputs = processor(**example, task=task, negative_prompt=["static noise and hiss", None])
    media = {k: inputs[k] for k in ("video_features", "video_frames_mask") if k in inputs}
    negative_media = {k: v[:1] for k, v in media.items()}  # the second negative prompt is unconditional
    steps, scale = 4, 3.0
    recorder = ScoresRecorder()
    out = model.generate(**inputs, audio_length_in_s=steps / model.config.frame_rate, do_sample=False,
                         guidance_scale=scale, logits_processor=[recorder])
    assert len(recorder.scores) == steps
    allowed = model._vocabulary_mask(audio=True)
    allowed[model.config.audio_end_token_id] = False  # an exact length: </Audio> cannot come before the end
    prompt = inputs["input_ids"].shape[1]
    unconditional = torch.tensor([processor.unconditional_prompt()] * 2)
    with torch.no_grad():
        for t in range(steps):
            new = out.sequences[:, prompt : prompt + t]
            ones = torch.ones_like(new)
            cond = model(input_ids=out.sequences[:, : prompt + t],
                         attention_mask=torch.cat([inputs["attention_mask"], ones], 1), **media).logits[:, -1]
            cond = cond.masked_fill(~allowed, float("-inf")).log_softmax(-1)
            neg = model(input_ids=torch.cat([inputs["negative_prompt_ids"], new], 1),
                        attention_mask=torch.cat([inputs["negative_prompt_attention_mask"], ones], 1),
                        **negative_media).logits[:, -1].log_softmax(-1)
            guided = neg + scale * (cond - neg)
            torch.testing.assert_close(recorder.scores[t][:, allowed], guided[:, allowed], atol=1e-3, rtol=1e-5)
            uncond = model(input_ids=torch.cat([unconditional, new], 1)).logits[:, -1].log_softmax(-1)
            default = uncond + scale * (cond - uncond)
            assert (guided[0, allowed] - default[0, allowed]).abs().max() > 0.1, "the negative prompt must matter"
            torch.testing.assert_close(guided[1, allowed], default[1, allowed], atol=1e-3, rtol=1e-5)


def test_negative_prompt_ids_need_guidance_of_audio_outputs(tiny):
    model, processor = tiny
    inputs = processor(text="a dog", negative_prompt="noise")
    with pytest.raises(ValueError, match="negative_prompt_ids act through guidance"):
        model.generate(**inputs, audio_length_in_s=0.1, guidance_scale=1.0)
    caption = processor(video_features=np.zeros((3, 64)), task="video-to-caption")
    with pytest.raises(ValueError, match="negative_prompt_ids act through guidance"):
        model.generate(**caption, negative_prompt_ids=inputs["negative_prompt_ids"])


@pytest.mark.parametrize("guidance_scale", [None, 3.0])
def test_num_return_sequences_gives_candidates_per_prompt_for_audio(sharp, guidance_scale):
    """N candidates per prompt, each prompt's together: sampled ones differ; top-1 sampling gives N copies of the
    prompt's greedy output (the NAR condition and the guidance inputs follow their prompt)."""
    model, processor = sharp
    inputs = processor(text=["a dog barks loudly at night", "rain"])
    frames, n = 5, 2
    kwargs = {"audio_length_in_s": frames / model.config.frame_rate, "guidance_scale": guidance_scale}
    torch.manual_seed(0)
    sampled = model.generate(**inputs, num_return_sequences=n, **kwargs)
    samples = round(kwargs["audio_length_in_s"] * model.config.sampling_rate)
    assert sampled.audio.shape == (2 * n, 1, samples) and sampled.audio_lengths.tolist() == [samples] * 2 * n
    assert sampled.audio_codes.shape == (2 * n, 2, frames)
    prompt = inputs["input_ids"].shape[1]
    assert sampled.sequences.shape == (2 * n, prompt + frames)
    assert torch.equal(sampled.sequences[:, :prompt], inputs["input_ids"].repeat_interleave(n, dim=0))
    assert len({tuple(row) for row in sampled.audio_codes[:, 0].tolist()}) == 2 * n

    copies = model.generate(**inputs, num_return_sequences=n, do_sample=True, top_k=1, **kwargs)
    alone = model.generate(**inputs, do_sample=False, **kwargs)
    assert not torch.equal(alone.audio_codes[0], alone.audio_codes[1]), "misaligned copies must be able to fail"
    assert torch.equal(copies.audio_codes, alone.audio_codes.repeat_interleave(n, dim=0))
    torch.testing.assert_close(copies.audio, alone.audio.repeat_interleave(n, dim=0), atol=1e-5, rtol=1e-4)


def test_num_return_sequences_gives_candidates_per_prompt_for_text(sharp):
    model, processor = sharp
    rng = np.random.default_rng(0)
    inputs = processor(video_features=[rng.normal(size=(n, 64)) for n in (4, 9)], task="video-to-caption")
    length, n = {"max_new_tokens": 6, "min_new_tokens": 6}, 3
    prompt = inputs["input_ids"].shape[1]
    torch.manual_seed(0)
    sampled = model.generate(**inputs, do_sample=True, num_return_sequences=n, **length)
    assert sampled.shape == (2 * n, prompt + 6)
    assert torch.equal(sampled[:, :prompt], inputs["input_ids"].repeat_interleave(n, dim=0))
    assert len({tuple(row) for row in sampled[:, prompt:].tolist()}) == 2 * n
    copies = model.generate(**inputs, do_sample=True, top_k=1, num_return_sequences=n, **length)
    alone = model.generate(**inputs, **length)  # greedy: the text default
    assert not torch.equal(alone[0, prompt:], alone[1, prompt:]), "misaligned copies must be able to fail"
    assert torch.equal(copies, alone.repeat_interleave(n, dim=0))


def test_generation_config_defaults_round_trip_and_yield_to_keywords(tiny_folder, tmp_path):
    """Audio: top-k sampling, at most `max_audio_seconds`, guidance once set; text: greedy, 32 tokens. They save and
    load with the model; keywords win; a folder saved with token ids only keeps greedy audio."""
    saved = json.loads((tiny_folder / "generation_config.json").read_text())
    assert {k: v for k, v in saved.items() if k != "transformers_version"} == {
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "do_sample": True, "top_k": 250,
        "max_new_tokens": 150, "text_defaults": {"do_sample": False, "max_new_tokens": 32},
        "decoding": "autoregressive", "decoding_steps": 16,
    }  # fmt: skip
    model = AutoModel.from_pretrained(tiny_folder).eval()
    model.generation_config.guidance_scale = 3.0
    model.save_pretrained(tmp_path / "guided")
    reloaded = AutoModel.from_pretrained(tmp_path / "guided").eval()
    assert reloaded.generation_config.to_diff_dict() == model.generation_config.to_diff_dict()
    assert reloaded.generation_config.guidance_scale == 3.0

    (tmp_path / "old").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_folder / name, tmp_path / "old" / name)
    GenerationConfig(bos_token_id=2, eos_token_id=1, pad_token_id=0).save_pretrained(tmp_path / "old")
    old = AutoModel.from_pretrained(tmp_path / "old").eval()

    processor = AutoProcessor.from_pretrained(tiny_folder)
    inputs = processor(text="a dog barks")
    runs = {}
    for name, m, kwargs in (
        ("default", reloaded, {}),
        ("explicit", reloaded, {"do_sample": True, "top_k": 250, "guidance_scale": 3.0}),
        ("unguided", reloaded, {"guidance_scale": 1.0}),
        ("greedy", reloaded, {"do_sample": False, "guidance_scale": 1.0}),
        ("old", old, {}),
    ):
        torch.manual_seed(0)
        runs[name] = m.generate(**inputs, audio_length_in_s=0.05, **kwargs).audio_codes
    assert torch.equal(runs["default"], runs["explicit"])
    assert not torch.equal(runs["default"], runs["unguided"]) and not torch.equal(runs["unguided"], runs["greedy"])
    assert torch.equal(runs["old"], runs["greedy"])

    caption = processor(video_features=np.random.default_rng(0).normal(size=(3, 64)), task="video-to-caption")
    prompt = caption["input_ids"].shape[1]
    reloaded.generation_config.text_defaults["max_new_tokens"] = 4
    assert torch.equal(reloaded.generate(**caption), reloaded.generate(**caption, do_sample=False, max_new_tokens=4))
    assert reloaded.generate(**caption, max_new_tokens=3, min_new_tokens=3).shape[1] == prompt + 3
    assert reloaded.generate(**caption, max_length=prompt + 2, min_new_tokens=2).shape[1] == prompt + 2

    model.generation_config.max_new_tokens = 4  # the longest audio by default (it ends at </Audio> or there)
    assert model.generate(**inputs).sequences.shape[1] <= inputs["input_ids"].shape[1] + 4
    old.config.max_audio_seconds = 3 / old.config.frame_rate  # folders without max_new_tokens: max_audio_seconds
    assert old.generate(**inputs).sequences.shape[1] <= inputs["input_ids"].shape[1] + 3

    model.generation_config.audio_length_in_s = 0.1  # an exact length by default, as the demo's model ships it
    out = model.generate(**inputs)
    assert out.audio.shape[-1] == int(0.1 * model.config.sampling_rate) and out.audio_codes.shape[-1] == 8
    assert model.generate(**inputs, audio_length_in_s=0.05).audio.shape[-1] == int(0.05 * model.config.sampling_rate)
    assert model.generate(**inputs, max_new_tokens=2).sequences.shape[1] <= inputs["input_ids"].shape[1] + 2
    model.save_pretrained(tmp_path / "sized")
    assert AutoModel.from_pretrained(tmp_path / "sized").generation_config.audio_length_in_s == 0.1


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
