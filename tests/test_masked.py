"""Masked iterative parallel decoding (VATT, MaskGIT): the decoder's steps, schedule, guidance and loss, batching,
seeds, saving and loading, and the errors of bad requests."""

import math

import numpy as np
import pytest
import torch
from transformers import AutoModel

from conversion.build_c3llm import build_tiny, save_folder
from modeling_c3llm.masked_decoding_c3llm import cosine_mask_ratio


def sharp_masked(seed: int = 3):
    """A tiny model with a masked decoder whose larger weights make every choice depend on the whole context (but not
    so large that the frames' positions are drowned)."""
    model, processor = build_tiny(seed=seed, masked_num_layers=2)
    with torch.no_grad():
        for module, std in ((model.language_model, 0.5), (model.masked_decoder, 0.1)):
            for weight in module.parameters():
                if weight.ndim == 2:
                    weight.normal_(0.0, std)
    return model.eval(), processor


@pytest.fixture(scope="module")
def sharp():
    return sharp_masked()


def condition(model, processor, texts):
    inputs = processor(text=texts, task="text-to-audio")
    embeds = model.get_multimodal_embeddings(inputs["input_ids"])
    return model.prompt_states(embeds, inputs["attention_mask"]), inputs["attention_mask"].bool()


def test_one_unknown_code_is_the_decoders_argmax(sharp):
    model, processor = sharp
    states, mask = condition(model, processor, ["a dog barks"])
    codes = torch.randint(0, model.config.codebook_size, (1, model.config.num_codebooks, 12),
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    frames = torch.ones(1, 12, dtype=torch.bool)
    for level, frame in ((0, 5), (1, 0), (0, 11)):
        partial = codes.clone()
        partial[0, level, frame] = -1
        filled = model.masked_decode(states, mask, partial, decoding_steps=4, do_sample=False)
        expected = model.masked_decoder(states, mask, partial, level, frames)[0, frame].argmax()
        assert int(filled[0, level, frame]) == int(expected)
        unchanged = torch.ones_like(codes, dtype=torch.bool)
        unchanged[0, level, frame] = False
        assert torch.equal(filled[unchanged], codes[unchanged]), "known codes must stay as given"


def test_one_step_fills_codebook_one_with_the_argmax_then_each_finer_codebook(sharp):
    model, processor = sharp
    states, mask = condition(model, processor, ["rain on a roof"])
    empty = torch.full((1, model.config.num_codebooks, 9), -1)
    frames = torch.ones(1, 9, dtype=torch.bool)
    filled = model.masked_decode(states, mask, empty, decoding_steps=1, do_sample=False)
    first = model.masked_decoder(states, mask, empty, 0, frames)[0].argmax(-1)
    assert torch.equal(filled[0, 0], first)
    second_input = empty.clone()
    second_input[:, 0] = first
    assert torch.equal(filled[0, 1], model.masked_decoder(states, mask, second_input, 1, frames)[0].argmax(-1))
    assert len(set(first.tolist())) > 1, "the check needs varied codes to be able to fail"


def test_each_step_keeps_the_most_confident_and_follows_the_cosine_schedule(sharp):
    model, processor = sharp
    states, mask = condition(model, processor, ["a bell"])
    frames, steps = 20, 4
    empty = torch.full((1, model.config.num_codebooks, frames), -1)
    # Run the first step alone: decoding_steps=4 of which only step 0 happens, by giving the schedule's step-1 count.
    scores = model.masked_decoder(states, mask, empty, 0, torch.ones(1, frames, dtype=torch.bool))[0].log_softmax(-1)
    confidence, chosen = scores.max(-1)
    still = math.floor(frames * math.cos(math.pi / 2 * 1 / steps))
    assert 0 < still < frames
    kept = confidence.argsort(descending=True)[: frames - still]
    # After the whole decoding, the frames decided at the first step keep their first choice.
    final = model.masked_decode(states, mask, empty, decoding_steps=steps, do_sample=False)
    assert torch.equal(final[0, 0, kept], chosen[kept])
    assert float(cosine_mask_ratio(0.0)) == 1.0 and abs(float(cosine_mask_ratio(1.0))) < 1e-12


@pytest.mark.parametrize("steps", [1, 3, 500])
def test_any_step_count_fills_every_frame(sharp, steps):
    model, processor = sharp
    inputs = processor(text=["a click"], task="text-to-audio")
    torch.manual_seed(0)
    out = model.generate(**inputs, decoding="masked", decoding_steps=steps, audio_length_in_s=0.2, top_k=50)
    frames = math.ceil(0.2 * model.config.frame_rate)
    assert out.audio_codes.shape == (1, model.config.num_codebooks, frames)
    assert int(out.audio_codes.min()) >= 0 and int(out.audio_codes.max()) < model.config.codebook_size
    assert out.audio.shape[-1] == round(0.2 * model.config.sampling_rate) == int(out.audio_lengths[0])
    assert torch.equal(out.sequences[0, inputs["input_ids"].shape[1] :] - model.config.acoustic_token_offset,
                       out.audio_codes[0, 0])  # fmt: skip


@pytest.mark.parametrize("task", ["text-to-audio", "video-to-audio"])
def test_batched_equals_one_by_one(sharp, task):
    model, processor = sharp
    if task == "text-to-audio":
        examples = [{"text": t} for t in ("a dog barks loudly at night", "rain")]
    else:
        rng = np.random.default_rng(0)
        examples = [{"video_features": rng.normal(size=(n, model.config.video_feature_size))} for n in (3, 7)]
    batched = processor(**{k: [e[k] for e in examples] for k in examples[0]}, task=task)
    assert batched["attention_mask"][:, 0].tolist() != [1, 1], "prompts of different lengths must be padded"
    kwargs = {"decoding": "masked", "decoding_steps": 6, "do_sample": False, "audio_length_in_s": 0.2}
    together = model.generate(**batched, **kwargs)
    for i, example in enumerate(examples):
        alone = model.generate(**processor(**example, task=task), **kwargs)
        assert len(set(alone.audio_codes[0, 0].tolist())) > 1, "the check needs varied codes to be able to fail"
        assert torch.equal(together.audio_codes[i], alone.audio_codes[0])
        torch.testing.assert_close(together.audio[i], alone.audio[0], atol=1e-5, rtol=1e-4)


def test_the_same_seed_gives_the_same_codes(sharp):
    model, processor = sharp
    inputs = processor(text=["a chirp", "two beeps"], task="text-to-audio")
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(model.generate(**inputs, decoding="masked", decoding_steps=5, audio_length_in_s=0.3,
                                   top_k=100, top_p=0.95).audio_codes)  # fmt: skip
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_guidance_scale_one_is_no_guidance_and_guidance_follows_the_formula(sharp):
    model, processor = sharp
    inputs = processor(text=["a low hum"], task="text-to-audio")
    kwargs = {"decoding": "masked", "decoding_steps": 4, "audio_length_in_s": 0.2, "top_k": 50}
    torch.manual_seed(1)
    plain = model.generate(**inputs, **kwargs).audio_codes
    torch.manual_seed(1)
    scale_one = model.generate(**inputs, guidance_scale=1.0, **kwargs).audio_codes
    assert torch.equal(plain, scale_one)

    # One greedy step with guidance 3 (the whole clip masked: the full scale) is the argmax of neg + 3 (cond - neg).
    guided = model.generate(**inputs, decoding="masked", decoding_steps=1, do_sample=False, audio_length_in_s=0.2,
                            guidance_scale=3.0).audio_codes  # fmt: skip
    states, mask = condition(model, processor, ["a low hum"])
    unconditional = torch.tensor([processor.unconditional_prompt()])
    negative = model.prompt_states(model.get_multimodal_embeddings(unconditional), torch.ones_like(unconditional))
    empty = torch.full_like(guided, -1)
    frames = torch.ones(1, guided.shape[-1], dtype=torch.bool)
    cond = model.masked_decoder(states, mask, empty, 0, frames).log_softmax(-1)
    neg = model.masked_decoder(negative, torch.ones_like(unconditional, dtype=torch.bool), empty, 0, frames)
    neg = neg.log_softmax(-1)
    assert torch.equal(guided[0, 0], (neg + 3.0 * (cond - neg))[0].argmax(-1))
    unguided = model.generate(**inputs, decoding="masked", decoding_steps=1, do_sample=False,
                              audio_length_in_s=0.2).audio_codes  # fmt: skip
    assert not torch.equal(guided[0, 0], unguided[0, 0]), "the check needs guidance to change the codes"


def test_masked_loss_by_hand(sharp):
    model, processor = sharp
    states, mask = condition(model, processor, ["a dog barks", "rain"])
    codes = torch.randint(0, model.config.codebook_size, (2, 2, 6), generator=torch.Generator().manual_seed(1))
    codes[1, :, 4:] = -100  # the second clip has 4 frames
    level = torch.tensor([0, 1])
    token_mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 1, 0, 0, 1, 1]], dtype=torch.bool)
    loss = model.compute_masked_loss(states, mask, codes, level, token_mask)

    terms = []
    for row in range(2):
        frames = int((codes[row, 0] >= 0).sum())
        inputs = codes[row : row + 1, :, :frames].clone()
        chosen = int(level[row])
        masked = token_mask[row, :frames]
        inputs[0, chosen, masked] = -1
        inputs[0, chosen + 1 :] = -1
        logits = model.masked_decoder(states[row : row + 1], mask[row : row + 1], inputs, chosen,
                                      torch.ones(1, frames, dtype=torch.bool))[0]  # fmt: skip
        for t in torch.nonzero(masked).flatten().tolist():
            terms.append(-torch.log_softmax(logits[t].double(), -1)[codes[row, chosen, t]])
    assert len(terms) == 3 + 1  # row 1's masked frames 4 and 5 are padding
    torch.testing.assert_close(loss.double(), torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)


def test_forward_adds_the_masked_loss_with_sampled_masking(sharp):
    model, processor = sharp
    codes = [np.random.default_rng(i).integers(0, 1024, size=(2, n)) for i, n in enumerate((7, 5))]
    batch = processor(text=["a dog barks", "rain"], task="text-to-audio", audio_codes=codes)
    torch.manual_seed(5)
    out = model(**batch)
    torch.manual_seed(5)
    frames_mask = batch["audio_codes"][:, 0] >= 0
    level, token_mask = model.sample_masking(frames_mask)
    states = model.language_model(
        inputs_embeds=model.get_multimodal_embeddings(batch["input_ids"]), attention_mask=batch["attention_mask"],
        position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0), output_hidden_states=True,
    ).hidden_states[-1]  # fmt: skip
    prompt = batch["attention_mask"].bool() & (batch["labels"] == -100)
    expected = model.compute_masked_loss(states, prompt, batch["audio_codes"], level, token_mask)
    torch.testing.assert_close(out.masked_loss, expected)
    torch.testing.assert_close(out.loss, out.lm_loss + out.nar_loss + out.masked_loss)


def test_sample_masking_follows_the_cosine_schedule():
    model, _ = build_tiny(seed=0, masked_num_layers=1)
    frames_mask = torch.ones(4000, 40, dtype=torch.bool)
    frames_mask[::2, 30:] = False
    level, token_mask = model.sample_masking(frames_mask, torch.Generator().manual_seed(0))
    assert not (token_mask & ~frames_mask).any(), "only real frames are masked"
    assert int(token_mask.sum(-1).min()) >= 1
    assert set(level.tolist()) == {0, 1}
    share = token_mask.sum(-1) / frames_mask.sum(-1)
    assert abs(float(share.mean()) - 2 / math.pi) < 0.02  # E[cos(pi u / 2)] = 2 / pi, plus the ceiling's bias


def test_masked_decoder_saves_and_loads(tmp_path):
    model, processor = build_tiny(seed=4, masked_num_layers=1)
    save_folder(model, processor, tmp_path / "m")
    loaded = AutoModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.masked_decoder_config.num_hidden_layers == 1
    for name, value in model.masked_decoder.state_dict().items():
        assert torch.equal(loaded.masked_decoder.state_dict()[name], value), name
    inputs = processor(text=["a beep"], task="text-to-audio")
    torch.manual_seed(0)
    a = model.eval().generate(**inputs, decoding="masked", audio_length_in_s=0.1).audio_codes
    torch.manual_seed(0)
    b = loaded.generate(**inputs, decoding="masked", audio_length_in_s=0.1).audio_codes
    assert torch.equal(a, b)


def test_add_masked_decoder_gives_a_model_one(tiny):
    model, processor = build_tiny(seed=0)
    assert model.masked_decoder is None
    decoder = model.add_masked_decoder()
    assert model.config.masked_decoder_config.num_hidden_layers == model.config.nar_config.num_hidden_layers
    assert sum(p.numel() for p in decoder.parameters()) > 0
    with pytest.raises(ValueError, match="already has"):
        model.add_masked_decoder()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decoding": "masked", "decoding_steps": 0}, "positive integer"),
        ({"decoding": "masked", "decoding_steps": -3}, "positive integer"),
        ({"decoding": "masked", "decoding_steps": 2.5}, "positive integer"),
        ({"decoding": "parallel"}, "Unknown decoding 'parallel'"),
        ({"decoding_steps": 8}, "applies to decoding='masked'"),
        ({"decoding": "masked", "num_beams": 2}, "does not take"),
    ],
)
def test_bad_decoding_requests_are_clear_errors(sharp, kwargs, message):
    model, processor = sharp
    with pytest.raises(ValueError, match=message):
        model.generate(**processor(text=["a beep"], task="text-to-audio"), **kwargs)


def test_masked_decoding_of_a_text_task_or_without_a_decoder_is_an_error(sharp, tiny, media):
    model, processor = sharp
    with pytest.raises(ValueError, match="text-output tasks"):
        model.generate(**processor(audio=str(media / "stereo_44k.wav"), task="audio-to-text"), decoding="masked")
    plain, plain_processor = tiny
    with pytest.raises(ValueError, match="c3llm train --stage 3"):
        plain.generate(**plain_processor(text=["a beep"], task="text-to-audio"), decoding="masked")


def test_model_card_documents_masked_decoding_and_its_example_runs():
    import re

    from conversion.model_card import render_model_card

    model, processor = build_tiny(seed=0, masked_num_layers=1)
    card = render_model_card(model.config).text
    block = next(b for b in re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL) if 'decoding="masked"' in b)
    scope = {"model": model.eval(), "processor": processor}
    exec(block.replace("audio_length_in_s=2.0", "audio_length_in_s=0.2"), scope)
    assert scope["out"].audio_codes.shape == (1, model.config.num_codebooks, math.ceil(0.2 * model.config.frame_rate))
    assert "This model has a masked decoder (1 transformer layers)" in card
    assert "c3llm train --stage 3" in render_model_card(build_tiny(seed=0)[0].config).text


@pytest.mark.parametrize(("top_k", "top_p"), [(None, None), (5, None), (None, 0.7), (5, 0.8)])
def test_sample_codes_draws_from_the_warped_distribution(top_k, top_p):
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from modeling_c3llm.masked_decoding_c3llm import sample_codes

    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]).log_softmax(-1)
    warped = TemperatureLogitsWarper(0.7)(None, logits[None].clone())
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p:
        warped = TopPLogitsWarper(top_p)(None, warped)
    expected = warped[0].softmax(-1)
    torch.manual_seed(0)
    chosen, confidence = sample_codes(logits.expand(1, 40000, -1), 0.7, top_k, top_p)
    frequencies = torch.bincount(chosen.flatten(), minlength=8) / chosen.numel()
    torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)
    torch.testing.assert_close(confidence[0], expected[chosen[0]])


def test_autoregressive_audio_sampling_over_the_audio_span_keeps_the_distribution():
    """generate draws each audio token over the acoustic span (AudioSamplingLogitsProcessor, then a greedy step):
    the first token's frequencies match transformers' warpers over the full vocabulary."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper

    model, processor = build_tiny(seed=5)
    model.eval()
    inputs = processor(text=["a dog barks"] * 400, task="text-to-audio")
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=True, top_k=8, temperature=0.5)
    drawn = out.sequences[:, -1] - model.config.acoustic_token_offset
    logits = model(**processor(text=["a dog barks"], task="text-to-audio"), audio_logits_only=True).logits[:, -1]
    logits[:, model.config.audio_end_token_id] = float("-inf")  # min_new_tokens=1
    expected = TopKLogitsWarper(8)(None, TemperatureLogitsWarper(0.5)(None, logits)).softmax(-1)[0]
    expected = expected[model.config.acoustic_token_offset : model.config.acoustic_token_offset + 1024]
    support = expected.nonzero().flatten()
    assert len(support) == 8 and set(drawn.tolist()) <= set(support.tolist())
    frequencies = torch.bincount(drawn, minlength=1024)[support] / len(drawn)
    torch.testing.assert_close(frequencies, expected[support], atol=0.06, rtol=0)


def test_masked_loss_only_equals_the_full_forwards_masked_loss(sharp):
    model, processor = sharp
    codes = [np.random.default_rng(i).integers(0, 1024, size=(2, n)) for i, n in enumerate((7, 5, 6))]
    batch = processor(text=["a dog barks loudly", "rain", "a chirp then a hum"], task="text-to-audio",
                      audio_codes=codes)  # prompts and targets of different lengths: padded
    torch.manual_seed(3)
    full = model(**batch)
    torch.manual_seed(3)
    only = model(**batch, masked_loss_only=True)
    torch.testing.assert_close(only.masked_loss, full.masked_loss)
    assert only.loss is only.masked_loss and only.lm_loss is None and only.logits is None
