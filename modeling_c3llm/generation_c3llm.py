"""Generation for C3LLM: one `generate` for audio and text outputs, classifier-free guidance with negative prompts,
the NAR codebooks and the per-output-kind generation defaults."""

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    UnbatchedClassifierFreeGuidanceLogitsProcessor,
)
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateOutput
from transformers.utils import ModelOutput

from .configuration_c3llm import C3LLMConfig
from .masked_decoding_c3llm import DEFAULT_DECODING_STEPS, C3LLMMaskedDecodingMixin, sample_codes
from .streaming_c3llm import (
    DEFAULT_LOOKAHEAD_SECONDS,
    MIN_CHUNK_SECONDS,
    AudioTimeline,
    C3LLMAudioStreamer,
    Window,
    plan_windows,
    slice_media,
    window_grid,
)


# How `generate` produces audio: the LLM's codes one frame per step (the paper's), or the masked decoder filling every
# frame in a few parallel steps (VATT's; needs a model with a masked decoder).
DECODINGS = ("autoregressive", "masked")
DEFAULT_WINDOW_CONTEXT = 0.25  # long-form: the share of a window that is the previous window's end
# The generation parameters masked decoding reads; other keywords are for the autoregressive loop only.
MASKED_DECODING_PARAMETERS = ("do_sample", "temperature", "top_k", "top_p", "num_return_sequences", "max_new_tokens")

# The model inputs of each modality, by the config property that names the placeholder token they fill in a prompt.
MODALITY_INPUTS = {
    "audio_feature_token_id": ("input_features", "is_longer"),
    "video_frame_token_id": ("pixel_values_videos", "flow_values_videos", "video_features", "video_frames_mask"),
    "image_patch_token_id": ("pixel_values",),
}


class AllowedTokensLogitsProcessor(LogitsProcessor):
    r"""
    Keeps only the logits of a fixed set of token ids (all others become `-inf`).

    For audio outputs the allowed set is the acoustic vocabulary plus `</Audio>`, so the LLM can only emit codes of
    codebook 1 or end the clip; for text outputs it is the text vocabulary.

    Args:
        allowed (`torch.BoolTensor` of shape `(vocab_size,)`): `True` for the ids that may be generated.
    """

    def __init__(self, allowed: torch.BoolTensor):
        self.disallowed = ~allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        disallowed = self.disallowed.to(scores.device)
        if disallowed.shape[0] < scores.shape[-1]:  # the lm head may be padded beyond the vocabulary
            disallowed = torch.nn.functional.pad(disallowed, (0, scores.shape[-1] - disallowed.shape[0]), value=True)
        return scores.masked_fill(disallowed[: scores.shape[-1]], float("-inf"))


class AudioSamplingLogitsProcessor(LogitsProcessor):
    r"""
    Samples each step's audio token itself, among the vocabulary span that holds the acoustic codes and `</Audio>`,
    with `sample_codes` (temperature, top-k, top-p: the distribution of transformers' warpers), and leaves only the
    drawn token finite, so that `generate` runs greedy and its argmax takes it. Sampling over the full vocabulary
    (the text tokens too, all `-inf` for audio) costs time in proportion to its size at every step: 33k ids in the
    benchmark, 256k for Gemma.

    Args:
        start (`int`), stop (`int`): the span `[start, stop)` of ids to sample from.
        temperature (`float`), top_k (`int`, *optional*), top_p (`float`, *optional*): as in `GenerationConfig`.
    """

    def __init__(self, start: int, stop: int, temperature: float, top_k: int | None, top_p: float | None):
        self.start, self.stop = start, stop
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        span = scores[:, None, self.start : self.stop].float()
        chosen, _ = sample_codes(span, self.temperature, self.top_k, self.top_p)
        drawn = torch.full_like(scores, float("-inf"))
        return drawn.scatter_(1, chosen + self.start, 0.0)


class NegativePromptGuidanceLogitsProcessor(UnbatchedClassifierFreeGuidanceLogitsProcessor):
    r"""
    [`UnbatchedClassifierFreeGuidanceLogitsProcessor`] whose negative prompts may hold audio, video or image
    placeholders: the passes over a whole negative prompt (the first one, or every one without a cache) get
    `negative_inputs`, the modality inputs of those placeholders.

    Args:
        guidance_scale (`float`): Each step's log-probabilities become `neg + guidance_scale * (cond - neg)`.
        model (`C3LLMGenerationMixin`): The model that computes `neg` from the negative prompts.
        negative_prompt_ids (`torch.LongTensor` of shape `(batch_size, negative_length)`): Left-padded prompts.
        negative_prompt_attention_mask (`torch.LongTensor` of shape `(batch_size, negative_length)`): Their mask.
        negative_inputs (`dict[str, torch.Tensor]`): Their modality inputs (`video_features`, ...; see `forward`).
    """

    def __init__(
        self,
        guidance_scale: float,
        model: "C3LLMGenerationMixin",
        negative_prompt_ids: torch.LongTensor,
        negative_prompt_attention_mask: torch.LongTensor,
        negative_inputs: dict[str, torch.Tensor],
    ):
        super().__init__(guidance_scale, self._negative_forward, negative_prompt_ids, negative_prompt_attention_mask)
        self.negative_model = model
        self.negative_inputs = negative_inputs

    def _negative_forward(self, input_ids: torch.LongTensor, past_key_values=None, **kwargs) -> ModelOutput:
        inputs = self.negative_inputs if past_key_values is None else {}
        return self.negative_model(input_ids, past_key_values=past_key_values, **inputs, **kwargs)


@dataclass
class C3LLMAudioGenerationOutput(ModelOutput):
    r"""
    Output of [`C3LLMForConditionalGeneration.generate`] for the audio tasks; `num_return_sequences` candidates per
    prompt make `batch_size` the number of prompts times that, each prompt's candidates next to each other.

    audio (`torch.FloatTensor` of shape `(batch_size, channels, samples)`):
        Decoded waveforms, zero-padded after each clip's `audio_lengths`.
    audio_codes (`torch.LongTensor` of shape `(batch_size, num_codebooks, frames)`):
        EnCodec codes; `-1` after each clip's last frame.
    audio_lengths (`torch.LongTensor` of shape `(batch_size,)`):
        Valid samples per clip.
    sampling_rate (`int`):
        Sampling rate of `audio`.
    sequences (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
        The prompt and the tokens the LLM generated.
    """

    audio: torch.FloatTensor | None = None
    audio_codes: torch.LongTensor | None = None
    audio_lengths: torch.LongTensor | None = None
    sampling_rate: int | None = None
    sequences: torch.LongTensor | None = None


def _caller_sets(kwargs: dict[str, Any], name: str) -> bool:
    """Whether the caller of `generate` set a generation parameter: a keyword, or a field of their
    `generation_config`."""
    return name in kwargs or getattr(kwargs.get("generation_config"), name, None) is not None


@dataclass
class AudioRequest:
    """The arguments of one `generate` call for audio outputs (see `generate`)."""

    input_ids: torch.LongTensor
    attention_mask: torch.Tensor
    features: dict[str, torch.Tensor]
    audio_prompt_codes: torch.LongTensor | None
    audio_length_in_s: float | None
    guidance_scale: float | None
    negative_prompt_ids: torch.LongTensor | None
    negative_prompt_attention_mask: torch.Tensor | None
    logits_processor: LogitsProcessorList | None
    decoding: str
    decoding_steps: int
    window_context_in_s: float | None
    streamer: BaseStreamer | None


class CoarseCodesStream(BaseStreamer):
    r"""
    The token streamer of one autoregressive window when a [`C3LLMAudioStreamer`] listens: it collects the LLM's
    coarse codes and, every `chunk_length_in_s` of them, has the NAR head predict the finer codebooks of the window so
    far, and marks final the frames older than the streamer's lookahead, which the timeline decodes and hands out.
    """

    def __init__(self, model: "C3LLMGenerationMixin", timeline: AudioTimeline, span: Window, known: torch.LongTensor,
                 condition: tuple[torch.Tensor, torch.BoolTensor]):  # fmt: skip
        self.model, self.timeline, self.span, self.known, self.condition = model, timeline, span, known, condition
        rate, seconds = model.config.frame_rate, timeline.streamer.lookahead_in_s
        field = model.config.nar_config.receptive_field if model.nar_head is not None else None
        if seconds is None:
            self.lookahead = field if field is not None else round(DEFAULT_LOOKAHEAD_SECONDS * rate)
        else:
            self.lookahead = round(seconds * rate)
        self.every = timeline.frames_per_chunk
        self.tokens: list[torch.Tensor] = []
        self.final = 0  # new frames whose codes are final
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt
            self.prompt_seen = True
            return
        self.tokens.append(value.view(-1))
        ready = len(self.tokens) - self.lookahead
        if ready - self.final < self.every or len(self.tokens) >= self.span.new:
            return  # (the window's last frames are finished by `_autoregressive_window`)
        config = self.model.config
        coarse = torch.stack(self.tokens, 1).to(self.known.device) - config.acoustic_token_offset
        coarse = coarse.clamp(0, config.codebook_size - 1)
        codes = self.model._fine_codes(self.known, coarse, torch.ones_like(coarse, dtype=torch.bool), self.condition)
        self.final = ready
        self.timeline.write(self.span.start, codes, final=self.span.start + self.span.context + ready)

    def end(self) -> None:
        pass


class C3LLMGenerationMixin(C3LLMMaskedDecodingMixin, GenerationMixin):
    r"""
    C3LLM's `generate`: a prompt ending with `<Audio>` asks for audio (coarse codes from the LLM, finer codebooks from
    the NAR head, a waveform from EnCodec), any other prompt for text.

    `generation_config` holds the defaults of both output kinds; the caller's keywords (or `generation_config`) win:

    - its ordinary fields are the audio defaults: `do_sample=True` with `top_k` (MusicGen's 250, at most the codebook
      size), `max_new_tokens` = `config.max_audio_seconds` of frames (audio runs until `</Audio>` or that), and
      `guidance_scale` (unset by default: classifier-free guidance only helps a model trained with condition dropout;
      set it, e.g. to 3.0 as MusicGen, on such a model before saving it), and `audio_length_in_s` (unset by default:
      an exact length for every clip, as a trained model whose clips all have one length may set);
    - `text_defaults`, a dict, replaces some of them for text outputs: `{"do_sample": False, "max_new_tokens": 32}`
      (greedy unless the caller asks for sampling, which then uses the fields above). `guidance_scale` never applies
      to text.

    Folders saved without these (a `generation_config.json` with token ids only) keep their behaviour: greedy audio
    of at most `config.max_audio_seconds`, and text like any causal LM.
    """

    @staticmethod
    def default_generation_config(config: C3LLMConfig) -> GenerationConfig:
        """The generation defaults of a new model (see the class docstring)."""
        text = config.text_config
        return GenerationConfig(
            bos_token_id=text.bos_token_id,
            eos_token_id=text.eos_token_id,
            pad_token_id=text.pad_token_id,
            do_sample=True,
            top_k=min(250, config.codebook_size),
            max_new_tokens=int(config.max_audio_seconds * config.frame_rate),
            text_defaults={"do_sample": False, "max_new_tokens": 32},
            decoding="autoregressive",
            decoding_steps=DEFAULT_DECODING_STEPS,
        )

    def _vocabulary_mask(self, audio: bool) -> torch.BoolTensor:
        """The ids an output kind may generate: acoustic codes and `</Audio>`, or the text vocabulary."""
        config = self.config
        ids = torch.arange(config.text_config.vocab_size)
        if audio:
            start = config.acoustic_token_offset
            return ((ids >= start) & (ids < start + config.codebook_size)) | (ids == config.audio_end_token_id)
        return ids < config.acoustic_token_offset

    def _output_audio(self, input_ids: torch.LongTensor) -> bool:
        """Whether the prompts `(batch, length)` ask for audio: they all end with `<Audio>` or an audio prompt's
        acoustic tokens; none does for text."""
        last = input_ids[:, -1:]
        audio_rows = ((last == self.config.audio_start_token_id) | self._is_acoustic(last))[:, 0]
        if audio_rows.any() and not audio_rows.all():
            raise ValueError("A batch must be all audio-output tasks or all text-output tasks; split it in two.")
        return bool(audio_rows.all())

    @staticmethod
    def _prompt_mask(ids: torch.LongTensor, attention_mask: torch.Tensor | None, name: str) -> torch.Tensor:
        """Checks left-padded prompts `(batch, length>0)` and returns their attention mask (all ones if `None`)."""
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"{name} must have shape (batch, length>0), got {tuple(ids.shape)}.")
        if attention_mask is None:
            attention_mask = torch.ones_like(ids)
        if not bool(attention_mask[:, -1].all()):
            raise ValueError(f"The {name} are right-padded; batch them with left padding (C3LLMProcessor does).")
        return attention_mask

    def _generation_setting(self, kwargs: dict[str, Any], name: str) -> Any:
        """A generation parameter's value in this call: the caller's (`_caller_sets`), else `generation_config`'s."""
        if name in kwargs:
            return kwargs[name]
        value = getattr(kwargs.get("generation_config"), name, None)
        return value if value is not None else getattr(self.generation_config, name, None)

    def _negative_prompts(
        self,
        guidance_scale: float,
        input_ids: torch.LongTensor,
        negative_prompt_ids: torch.LongTensor | None,
        negative_prompt_attention_mask: torch.Tensor | None,
        features: dict[str, torch.Tensor],
    ) -> tuple[torch.LongTensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The negative prompts of guidance (default: the unconditional prompt `<bos><Audio>`), checked, their mask
        and the media of the placeholders they hold."""
        if not math.isfinite(guidance_scale) or guidance_scale <= 0:
            raise ValueError(f"guidance_scale must be a positive number, got {guidance_scale}.")
        config = self.config
        if negative_prompt_ids is None:
            bos = config.text_config.bos_token_id
            unconditional = [config.audio_start_token_id] if bos is None else [bos, config.audio_start_token_id]
            negative_prompt_ids = input_ids.new_tensor(unconditional).expand(input_ids.shape[0], -1)
        negative_prompt_attention_mask = self._prompt_mask(
            negative_prompt_ids, negative_prompt_attention_mask, "negative_prompt_ids"
        )
        if negative_prompt_ids.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"Got {negative_prompt_ids.shape[0]} negative prompts for {input_ids.shape[0]} prompts; give one each."
            )
        negative_inputs = {}
        for token, names in MODALITY_INPUTS.items():
            token_id = getattr(config, token)
            # One media per example that has the modality: keep those of the examples whose negative prompt holds it.
            keep = (negative_prompt_ids == token_id).any(-1)[(input_ids == token_id).any(-1)]
            if keep.any():
                negative_inputs.update({name: features[name][keep] for name in names if name in features})
        return negative_prompt_ids, negative_prompt_attention_mask, negative_inputs

    def _get_logits_processor(
        self,
        generation_config: GenerationConfig,
        *args,
        logits_processor: LogitsProcessorList | None = None,
        **kwargs,
    ) -> LogitsProcessorList:
        """GenerationMixin's processors, with the guidance that `generate` built (if any) in place of its own: first,
        before the penalties, `min_new_tokens` and the sampling warpers."""
        generation_config.guidance_scale = None  # (this call's copy) the guidance is the processor `generate` built
        custom = list(logits_processor or [])
        guidance = [p for p in custom if isinstance(p, NegativePromptGuidanceLogitsProcessor)]
        others = LogitsProcessorList(p for p in custom if p not in guidance)
        processors = super()._get_logits_processor(generation_config, *args, logits_processor=others, **kwargs)
        return LogitsProcessorList([*guidance, *processors])

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_length_in_s: float | None = None,
        guidance_scale: float | None = None,
        negative_prompt_ids: torch.LongTensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        logits_processor: LogitsProcessorList | None = None,
        decoding: str | None = None,
        decoding_steps: int | None = None,
        audio_prompt_codes: torch.LongTensor | None = None,
        window_context_in_s: float | None = None,
        streamer: BaseStreamer | None = None,
        **kwargs,
    ) -> C3LLMAudioGenerationOutput | GenerateOutput | torch.LongTensor:
        r"""
        Generates for every task. A prompt ending with `<Audio>` (or with an audio prompt's codes after it) asks for
        audio: the LLM samples coarse codes (restricted to the acoustic vocabulary and `</Audio>`), the NAR head fills
        codebooks 2..K and EnCodec decodes; a [`C3LLMAudioGenerationOutput`] is returned. Any other prompt generates text
        ids like a causal LM. Defaults come from `generation_config` per output kind (see [`C3LLMGenerationMixin`]);
        keywords override them.

        audio_length_in_s (`float`, *optional*):
            Exact length of the generated audio (default: `generation_config.audio_length_in_s`, unless the caller sets
            `max_new_tokens`; for a video longer than the model's window, the video's length). Without one, audio runs
            until `</Audio>` or `max_new_tokens` frames. Beyond `config.max_audio_seconds` (the training clips' length)
            the audio is generated in windows of that length, each continuing the end of the one before (see
            `window_context_in_s`) and, for a video, seeing the frames of its own time span; at most
            `config.max_generation_seconds`.
        guidance_scale (`float`, *optional*):
            Classifier-free guidance for audio outputs, as in MusicGen: each step's log-probabilities become
            `neg + guidance_scale * (cond - neg)`, `neg` after the negative prompt. 1: off.
        negative_prompt_ids (`torch.LongTensor` of shape `(batch_size, negative_length)`, *optional*):
            The negative prompts of guidance (`C3LLMProcessor(negative_prompt=...)`), left-padded and ending with
            `<Audio>` (an audio prompt is appended to them); they may hold the same media placeholders as the prompts.
            Default: the unconditional prompt `<bos><Audio>` (`C3LLMProcessor.unconditional_prompt`), which a model
            trained with `condition_dropout` knows.
        negative_prompt_attention_mask (`torch.LongTensor` of shape `(batch_size, negative_length)`, *optional*):
            Attention mask of `negative_prompt_ids`.
        decoding (`str`, *optional*):
            `"autoregressive"` (the paper's; default: `generation_config.decoding`) or `"masked"`: after one LLM prefill
            of the prompt, the masked decoder fills every frame of codebook 1 in `decoding_steps` parallel steps, then
            each finer codebook in one (see [`~C3LLMGenerationMixin.masked_decode`]). Masked decoding needs a length
            (`audio_length_in_s`, else `max_new_tokens` frames) and reads `do_sample`, `temperature`, `top_k`, `top_p`,
            `num_return_sequences` and `guidance_scale`.
        decoding_steps (`int`, *optional*):
            Iterations of masked decoding over codebook 1 (default: `generation_config.decoding_steps`, 16).
        audio_prompt_codes (`torch.LongTensor` of shape `(batch_size, num_codebooks, prompt_frames)`, *optional*):
            The codes of the audio prompts whose first codebook ends `input_ids` (the processor's output for
            `audio-continuation`): the output is the audio after them, decoded in one piece with them.
        window_context_in_s (`float`, *optional*):
            Long-form generation: how much of the audio generated so far each new window sees as its prompt (default:
            `generation_config.window_context_in_s`, else a quarter of `config.max_audio_seconds`); rounded up so
            that windows start on a video frame.
        streamer (`BaseStreamer`, *optional*):
            A [`C3LLMAudioStreamer`] receives the audio in chunks while it is generated (the output's `audio` is those
            chunks end to end); another streamer receives the token ids, as in transformers.
        kwargs:
            The processor's modality inputs (`input_features`, `pixel_values`, `video_features`, ...; see `forward`)
            and generation parameters (`do_sample`, `top_k`, `max_new_tokens`, `num_return_sequences`, ...). With
            `num_return_sequences=N` every output has `batch_size * N` rows, each prompt's candidates together.
        """
        features = {name: kwargs.pop(name) for names in MODALITY_INPUTS.values() for name in names if name in kwargs}
        if input_ids is None:
            raise ValueError("generate needs `input_ids`; build them with C3LLMProcessor.")
        attention_mask = self._prompt_mask(input_ids, attention_mask, "input_ids")
        output_audio = self._output_audio(input_ids)

        decoding, decoding_steps = self._decoding(decoding, decoding_steps, output_audio, kwargs)
        if output_audio:
            request = AudioRequest(
                input_ids, attention_mask, features, audio_prompt_codes, audio_length_in_s, guidance_scale,
                negative_prompt_ids, negative_prompt_attention_mask, logits_processor, decoding, decoding_steps,
                window_context_in_s, streamer,
            )  # fmt: skip
            return self._generate_audio(request, kwargs)

        for name, value in (("audio_length_in_s", audio_length_in_s), ("audio_prompt_codes", audio_prompt_codes),
                            ("window_context_in_s", window_context_in_s)):  # fmt: skip
            if value is not None:
                raise ValueError(f"{name} only applies to audio-output tasks (prompts ending with <Audio>).")
        if guidance_scale is not None and guidance_scale != 1:
            raise ValueError("guidance_scale only applies to audio-output tasks (prompts ending with <Audio>).")
        if negative_prompt_ids is not None:
            raise ValueError("negative_prompt_ids act through guidance: pass guidance_scale (!= 1) with audio prompts.")
        if isinstance(streamer, C3LLMAudioStreamer):
            raise ValueError("C3LLMAudioStreamer streams audio; pass a text streamer (TextStreamer) for text outputs.")
        if _caller_sets(kwargs, "max_length") and not _caller_sets(kwargs, "max_new_tokens"):
            kwargs["max_new_tokens"] = None  # the caller's max_length bounds the output, not a default max_new_tokens
        for name, value in getattr(self.generation_config, "text_defaults", {}).items():
            if not _caller_sets(kwargs, name):
                kwargs[name] = value
        self._check_context(input_ids.shape[1], self._generation_setting(kwargs, "max_new_tokens") or 20)
        processors = LogitsProcessorList(logits_processor or [])
        processors.append(AllowedTokensLogitsProcessor(self._vocabulary_mask(False)))
        return super().generate(
            input_ids=input_ids, inputs_embeds=self.get_multimodal_embeddings(input_ids, **features),
            attention_mask=attention_mask, logits_processor=processors, streamer=streamer, **kwargs,
        )  # fmt: skip

    def generate_stream(
        self, *args, chunk_length_in_s: float = MIN_CHUNK_SECONDS, lookahead_in_s: float | None = None, **kwargs
    ) -> Iterator[torch.Tensor]:
        r"""
        Generates audio like `generate(*args, **kwargs)` and yields it in chunks `(batch_size, channels, samples)` of
        at least `chunk_length_in_s` seconds while it is generated (see [`C3LLMAudioStreamer`]); `generate` runs in
        a thread. The generator's return value (`StopIteration.value`) is `generate`'s output.
        """
        streamer = C3LLMAudioStreamer(chunk_length_in_s, lookahead_in_s)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["output"] = self.generate(*args, streamer=streamer, **kwargs)
            except BaseException as error:  # handed to the caller's thread by the iterator
                streamer.end(error)

        thread = threading.Thread(target=run, name="c3llm-generate", daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            thread.join()
        return result.get("output")

    def _check_context(self, prompt_length: int, new_tokens: int) -> None:
        context = getattr(self.config.text_config, "max_position_embeddings", None)
        if context is not None and prompt_length + new_tokens > context:
            raise ValueError(
                f"The prompt ({prompt_length} tokens) plus {new_tokens} new tokens exceeds the model's context of "
                f"{context} tokens; shorten the prompt (text, video frames, audio prompt) or ask for less output."
            )

    def _audio_defaults(
        self, audio_length_in_s: float | None, guidance_scale: float | None, kwargs: dict[str, Any]
    ) -> tuple[float | None, float | None]:
        """The audio length and guidance of this call: the caller's, else `generation_config`'s (no default length
        when the caller bounds the output with `max_new_tokens`)."""
        if audio_length_in_s is None and not _caller_sets(kwargs, "max_new_tokens"):
            audio_length_in_s = self._generation_setting(kwargs, "audio_length_in_s")
        if guidance_scale is None:
            guidance_scale = self._generation_setting(kwargs, "guidance_scale")
        return audio_length_in_s, guidance_scale

    def _audio_sampler(self, kwargs: dict[str, Any]) -> AudioSamplingLogitsProcessor | None:
        """For sampled audio with only temperature, top-k and top-p: the processor that samples over the audio span (and
        `kwargs` switched to greedy so that generate takes its token); else `None`, and generate samples over the
        whole vocabulary."""
        if not self._generation_setting(kwargs, "do_sample"):
            return None
        others = ("min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "num_return_sequences", "num_beams")
        if any((self._generation_setting(kwargs, name) or 1) not in (1, 1.0) for name in others):
            return None
        if self._generation_setting(kwargs, "output_scores"):
            return None  # the scores generate returns stay the warped distribution
        config = self.config
        sampler = AudioSamplingLogitsProcessor(
            config.acoustic_token_offset, config.audio_end_token_id + 1,
            self._generation_setting(kwargs, "temperature") or 1.0, self._generation_setting(kwargs, "top_k"),
            self._generation_setting(kwargs, "top_p"),
        )  # fmt: skip
        kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        return sampler

    def _decoding(
        self, decoding: str | None, decoding_steps: int | None, output_audio: bool, kwargs: dict[str, Any]
    ) -> tuple[str, int]:
        """This call's decoding mode and masked-decoding steps, checked against the task and the model."""
        steps_given = decoding_steps is not None
        decoding = decoding if decoding is not None else self._generation_setting(kwargs, "decoding") or DECODINGS[0]
        if decoding_steps is None:
            decoding_steps = self._generation_setting(kwargs, "decoding_steps") or DEFAULT_DECODING_STEPS
        if decoding not in DECODINGS:
            raise ValueError(f"Unknown decoding {decoding!r}; choose one of {', '.join(DECODINGS)}.")
        if isinstance(decoding_steps, bool) or not isinstance(decoding_steps, int) or decoding_steps < 1:
            raise ValueError(f"decoding_steps must be a positive integer, got {decoding_steps!r}.")
        if decoding == "masked":
            if not output_audio:
                raise ValueError(
                    "decoding='masked' generates audio; text-output tasks (prompts not ending with <Audio>) decode "
                    "autoregressively."
                )
            if getattr(self, "masked_decoder", None) is None:
                raise ValueError(
                    "This model has no masked decoder, so decoding='masked' cannot run. Train one with "
                    "`c3llm train --stage 3` (or `model.add_masked_decoder()` and the masked loss), or decode "
                    "autoregressively."
                )
        elif steps_given:
            raise ValueError("decoding_steps applies to decoding='masked'; pass decoding='masked' with it.")
        return decoding, decoding_steps

    # ---- audio: one or more windows ----------------------------------------------------------------------------
    def _audio_prompt(self, input_ids: torch.LongTensor, audio_prompt_codes: torch.LongTensor | None) -> torch.LongTensor:
        """The audio prompts' codes `(batch, num_codebooks, frames)` (no frames without one), checked against the
        acoustic tokens that end `input_ids`."""
        config = self.config
        if audio_prompt_codes is None:
            return input_ids.new_zeros((input_ids.shape[0], config.num_codebooks, 0))
        codes = torch.as_tensor(audio_prompt_codes, device=input_ids.device)
        if codes.ndim != 3 or codes.shape[0] != input_ids.shape[0] or codes.shape[1] != config.num_codebooks:
            raise ValueError(f"audio_prompt_codes must have shape ({input_ids.shape[0]}, {config.num_codebooks}, "
                             f"frames), got {tuple(codes.shape)}; build them with C3LLMProcessor.")  # fmt: skip
        if bool((codes < 0).any()):
            raise ValueError("The audio prompts of a batch must have the same length; trim them to one length or "
                             "generate them separately.")  # fmt: skip
        frames = codes.shape[-1]
        if frames >= input_ids.shape[1] or not torch.equal(input_ids[:, -frames:], codes[:, 0] + config.acoustic_token_offset):
            raise ValueError("input_ids must end with the first codebook of audio_prompt_codes; build both with "
                             "C3LLMProcessor(audio_prompt_codes=...).")  # fmt: skip
        return codes

    def _video_seconds(self, features: dict[str, torch.Tensor], input_ids: torch.LongTensor) -> torch.Tensor | None:
        """Each prompt's video length in seconds `(batch,)`, or `None` without videos."""
        frames = features.get("video_features", features.get("pixel_values_videos"))
        if frames is None:
            return None
        mask = features.get("video_frames_mask")
        counts = mask.long().sum(-1) if mask is not None else torch.full((frames.shape[0],), frames.shape[1])
        with_video = (input_ids == self.config.video_frame_token_id).any(-1)
        seconds = torch.full((input_ids.shape[0],), float("inf"))
        seconds[with_video.cpu()] = counts.cpu().float() / self.config.video_fps
        return seconds

    def _generate_audio(self, request: "AudioRequest", kwargs: dict[str, Any]) -> C3LLMAudioGenerationOutput:
        """Audio for prompts ending with `<Audio>` (and an audio prompt): one window, or windows of
        `config.max_audio_seconds` that continue each other (long-form), generated autoregressively or by the masked
        decoder; the output covers the new audio only."""
        config, r = self.config, request
        masked = r.decoding == "masked"
        if masked:
            unsupported = sorted(set(kwargs) - {*MASKED_DECODING_PARAMETERS, "generation_config"})
            if unsupported or r.logits_processor:
                raise ValueError(f"decoding='masked' does not take {unsupported or ['logits_processor']}; they apply "
                                 "to autoregressive decoding.")  # fmt: skip
        audio_streamer = r.streamer if isinstance(r.streamer, C3LLMAudioStreamer) else None
        if r.streamer is not None and audio_streamer is None:
            if masked:
                raise ValueError("decoding='masked' streams audio only: pass a C3LLMAudioStreamer.")
            kwargs["streamer"] = r.streamer  # token ids, as transformers streams them
        copies = self._generation_setting(kwargs, "num_return_sequences") or 1
        if audio_streamer is not None and r.audio_length_in_s is None and not masked and (
            _caller_sets(kwargs, "max_new_tokens") or self._generation_setting(kwargs, "audio_length_in_s") is None
        ):
            raise ValueError("Streaming needs an exact length: pass audio_length_in_s (or set it in generation_config).")
        if audio_streamer is not None and copies > 1:
            raise ValueError("A streamer takes one candidate per prompt; drop num_return_sequences or the streamer.")
        if _caller_sets(kwargs, "max_length") and not _caller_sets(kwargs, "max_new_tokens"):
            # The caller's max_length bounds the output, not a default max_new_tokens.
            kwargs["max_new_tokens"] = self._generation_setting(kwargs, "max_length") - r.input_ids.shape[1]
            kwargs.pop("max_length", None)

        prefix = self._audio_prompt(r.input_ids, r.audio_prompt_codes)
        cond_ids = r.input_ids[:, : r.input_ids.shape[1] - prefix.shape[-1]]
        cond_mask = r.attention_mask[:, : cond_ids.shape[1]]
        video_seconds = self._video_seconds(r.features, cond_ids)
        audio_length_in_s = r.audio_length_in_s
        longest_video = None if video_seconds is None else float(video_seconds[video_seconds.isfinite()].min())
        if audio_length_in_s is None and not _caller_sets(kwargs, "max_new_tokens") and longest_video is not None:
            if longest_video > config.max_audio_seconds + 1e-6:  # a long video asks for audio as long as itself
                audio_length_in_s = longest_video
        audio_length_in_s, guidance_scale = self._audio_defaults(audio_length_in_s, r.guidance_scale, kwargs)
        guided = guidance_scale is not None and guidance_scale != 1
        if r.negative_prompt_ids is not None and not guided:
            raise ValueError("negative_prompt_ids act through guidance: pass guidance_scale (!= 1) with audio prompts.")

        window = round(config.max_audio_seconds * config.frame_rate)
        exact = audio_length_in_s is not None or masked
        if audio_length_in_s is not None:
            new = self._audio_frames(audio_length_in_s)
        else:
            new = self._generation_setting(kwargs, "max_new_tokens") or window
        if not exact:  # one window up to </Audio> or max_new_tokens, however long (as before long-form existed)
            window = max(window, prefix.shape[-1] + new)
        context = self._window_context(r.window_context_in_s, kwargs)
        grid = window_grid(config.frame_rate, config.video_fps if video_seconds is not None else None)
        windows = plan_windows(prefix.shape[-1], prefix.shape[-1] + new, window, context, grid)
        if len(windows) > 1 and longest_video is not None:
            shortest = float(video_seconds.min())
            asked = (prefix.shape[-1] + new) / config.frame_rate
            if shortest < asked - 1 / config.video_fps:
                raise ValueError(
                    f"A video is {shortest:.2f} s long but {asked:.2f} s of audio were asked: long-form audio follows "
                    "the video window by window, so it cannot outlast it. Ask for at most the video's length "
                    "(audio_length_in_s), or trim the other videos of the batch to one length."
                )

        negative = None
        if guided:
            negative = self._negative_prompts(
                guidance_scale, cond_ids, r.negative_prompt_ids, r.negative_prompt_attention_mask, r.features
            )
        if copies > 1:  # every candidate is a row of its own from here on
            cond_ids, cond_mask, prefix = (t.repeat_interleave(copies, 0) for t in (cond_ids, cond_mask, prefix))
            features = {name: value.repeat_interleave(copies, 0) for name, value in r.features.items()}
            if negative is not None:
                negative = tuple(
                    {k: v.repeat_interleave(copies, 0) for k, v in part.items()} if isinstance(part, dict)
                    else part.repeat_interleave(copies, 0) for part in negative
                )  # fmt: skip
            kwargs["num_return_sequences"] = 1
        else:
            features = r.features
        if masked:
            settings = {name: self._generation_setting(kwargs, name) for name in MASKED_DECODING_PARAMETERS}
        else:
            kwargs["eos_token_id"] = config.audio_end_token_id
            kwargs["audio_logits_only"] = True
            settings = {"sampler": self._audio_sampler(kwargs)}
        if "video_features" not in features and "pixel_values_videos" in features and len(windows) > 1:
            features = self._encoded_video(features)  # encode every frame once, not once per window
        if negative is not None and "video_features" not in negative[2] and "pixel_values_videos" in negative[2]:
            negative = (*negative[:2], self._encoded_video(negative[2]))

        samples = None if audio_length_in_s is None else round(audio_length_in_s * config.sampling_rate)
        timeline = AudioTimeline(self, prefix, prefix.shape[-1] + new, audio_streamer, samples)
        sequences = None
        for index, span in enumerate(windows):
            known = timeline.codes[..., span.start : span.start + span.context]
            prompt = self._window_prompt(cond_ids, cond_mask, features, span, known, whole=len(windows) == 1)
            negative_prompt = None if negative is None else self._window_prompt(
                negative[0], negative[1], negative[2], span, known, whole=len(windows) == 1
            )  # fmt: skip
            self._check_context(prompt[0].shape[1], span.new + (0 if exact else 1))
            if masked:
                self._masked_window(timeline, span, prompt, negative_prompt, guidance_scale, r.decoding_steps, settings)
            else:
                generated = self._autoregressive_window(
                    timeline, span, prompt, negative_prompt, guidance_scale, exact, r.logits_processor, settings, kwargs
                )  # fmt: skip
                if len(windows) == 1:
                    sequences = generated
        codes, frames_mask = timeline.new_codes()
        if sequences is None:
            prompt_ids = r.input_ids.repeat_interleave(copies, 0)
            sequences = torch.cat([prompt_ids, codes[:, 0].clamp(min=0) + config.acoustic_token_offset], 1)
        audio = timeline.audio()
        lengths = frames_mask.long().sum(-1) * config.hop_length
        if audio_length_in_s is not None:
            target = round(audio_length_in_s * config.sampling_rate)
            audio, lengths = audio[..., :target], lengths.clamp(max=target)
        return C3LLMAudioGenerationOutput(
            audio=audio, audio_codes=codes.masked_fill(~frames_mask[:, None, :], -1), audio_lengths=lengths,
            sampling_rate=config.sampling_rate, sequences=sequences,
        )  # fmt: skip

    def _audio_frames(self, audio_length_in_s: float) -> int:
        """Frames of an exact audio length, checked against `config.max_generation_seconds`."""
        cap = getattr(self.config, "max_generation_seconds", 600.0)
        if isinstance(audio_length_in_s, bool) or not 0 < audio_length_in_s <= cap:
            raise ValueError(f"audio_length_in_s must be in (0, {cap:g}] seconds (config.max_generation_seconds), "
                             f"got {audio_length_in_s!r}.")  # fmt: skip
        return max(1, math.ceil(audio_length_in_s * self.config.frame_rate - 1e-6))  # trimmed to the exact length

    def _window_context(self, window_context_in_s: float | None, kwargs: dict[str, Any]) -> int:
        """Frames of generated audio each later window of long-form generation sees as its prompt."""
        config = self.config
        if window_context_in_s is None:
            window_context_in_s = self._generation_setting(kwargs, "window_context_in_s")
        if window_context_in_s is None:
            window_context_in_s = config.max_audio_seconds * DEFAULT_WINDOW_CONTEXT
        if not 0 < window_context_in_s < config.max_audio_seconds:
            raise ValueError(f"window_context_in_s must be in (0, {config.max_audio_seconds:g}) seconds (the model's "
                             f"window, config.max_audio_seconds), got {window_context_in_s!r}.")  # fmt: skip
        return max(1, round(window_context_in_s * config.frame_rate))

    def _encoded_video(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`features` with the videos' frames replaced by their encoder features (`video_features`)."""
        out = {k: v for k, v in features.items() if k not in ("pixel_values_videos", "flow_values_videos")}
        out["video_features"] = self._video_inputs(features["pixel_values_videos"], features["flow_values_videos"], None)
        return out

    def _window_prompt(
        self,
        ids: torch.LongTensor,
        mask: torch.Tensor,
        features: dict[str, torch.Tensor],
        span: Window,
        known: torch.LongTensor,
        whole: bool,
    ) -> tuple[torch.LongTensor, torch.Tensor, dict[str, torch.Tensor]]:
        """A window's prompt: `ids` (ending with `<Audio>`) with the video frames of the window's time span in place of
        the whole video (unless `whole`: one window and a video no longer than `config.video_num_frames`), followed
        by the first codebook of the `known` frames that start the window."""
        config = self.config
        frame = config.video_frame_token_id
        tokens = known[:, 0] + config.acoustic_token_offset
        name = "video_features" if "video_features" in features else "pixel_values_videos"
        has_video = name in features and bool((ids == frame).any())
        if has_video and not (whole and (ids == frame).sum(-1).max() <= config.video_num_frames):
            first = round(span.start / config.frame_rate * config.video_fps)
            count = config.video_num_frames
            video_mask = features.get("video_frames_mask")
            lengths = (video_mask.long().sum(-1) if video_mask is not None
                       else torch.full((features[name].shape[0],), features[name].shape[1]))  # fmt: skip
            shown = (lengths - first).clamp(min=1, max=count).tolist()
            rows, media = [], 0
            for row in range(ids.shape[0]):
                row_ids = ids[row][mask[row].bool()].tolist()
                if frame in row_ids:
                    at = row_ids.index(frame)
                    row_ids = row_ids[:at] + [frame] * shown[media] + row_ids[at + row_ids.count(frame) :]
                    media += 1
                rows.append(row_ids)
            width = max(len(row_ids) for row_ids in rows)
            pad = config.text_config.pad_token_id if config.text_config.pad_token_id is not None else 0
            ids = ids.new_full((len(rows), width), pad)
            mask = torch.zeros_like(ids)
            for row, row_ids in enumerate(rows):
                ids[row, width - len(row_ids) :] = ids.new_tensor(row_ids)
                mask[row, width - len(row_ids) :] = 1
            stop = first + max(shown)
            features = slice_media(features, first, stop)
            video_mask = torch.arange(stop - first)[None] < torch.tensor(shown)[:, None]
            features["video_frames_mask"] = video_mask.to(ids.device)
        if tokens.shape[1]:
            ids = torch.cat([ids, tokens], 1)
            mask = torch.cat([mask, torch.ones_like(tokens, dtype=mask.dtype)], 1)
        return ids, mask, features

    def _condition_mask(self, ids: torch.LongTensor, mask: torch.Tensor) -> torch.BoolTensor:
        """The positions the NAR head and the masked decoder are conditioned on: the prompt without acoustic tokens
        (the audio they continue is among their frames instead)."""
        return mask.bool() & ~self._is_acoustic(ids)

    def _is_acoustic(self, ids: torch.LongTensor) -> torch.BoolTensor:
        """Which ids are acoustic tokens (codes of codebook 1)."""
        codes = ids - self.config.acoustic_token_offset
        return (codes >= 0) & (codes < self.config.codebook_size)

    def _autoregressive_window(
        self,
        timeline: AudioTimeline,
        span: Window,
        prompt: tuple,
        negative_prompt: tuple | None,
        guidance_scale: float | None,
        exact: bool,
        logits_processor: LogitsProcessorList | None,
        settings: dict[str, Any],
        kwargs: dict[str, Any],
    ) -> torch.LongTensor:
        """One window of autoregressive decoding: the LLM's coarse codes after the prompt, the NAR head's finer ones
        over the whole window (its known start kept), into `timeline`. Returns the LLM's sequences."""
        ids, mask, features = prompt
        inputs_embeds = self.get_multimodal_embeddings(ids, **features)
        processors = LogitsProcessorList(logits_processor or [])
        if negative_prompt is not None:
            processors.append(NegativePromptGuidanceLogitsProcessor(guidance_scale, self, *negative_prompt))
        processors.append(AllowedTokensLogitsProcessor(self._vocabulary_mask(True)))
        if settings["sampler"] is not None:
            processors.append(settings["sampler"])  # last: it draws the token that generate's greedy step then takes
        window_kwargs = dict(kwargs, max_new_tokens=span.new)
        if exact:
            window_kwargs["min_new_tokens"] = span.new
        known = timeline.codes[..., span.start : span.start + span.context]
        condition = (inputs_embeds, self._condition_mask(ids, mask))
        if timeline.streamer is not None:
            window_kwargs["streamer"] = CoarseCodesStream(self, timeline, span, known, condition)
        generated = super().generate(
            input_ids=ids, inputs_embeds=inputs_embeds, attention_mask=mask, logits_processor=processors,
            **window_kwargs,
        )  # fmt: skip
        sequences = generated if isinstance(generated, torch.Tensor) else generated.sequences
        coarse, frames_mask = self._tokens_to_codes(sequences[:, ids.shape[1] :])
        if not exact:
            timeline.end_early(torch.cat([timeline.frames_mask[:, : span.context], frames_mask], 1))
        codes = self._fine_codes(known, coarse, frames_mask, condition)
        timeline.write(span.start, codes, final=span.start + span.context + coarse.shape[1])
        return sequences

    def _fine_codes(
        self, known: torch.LongTensor, coarse: torch.LongTensor, frames_mask: torch.BoolTensor, condition: tuple
    ) -> torch.LongTensor:
        """The codes of a window whose `known` first frames are followed by new coarse codes."""
        ones = torch.ones_like(known[:, 0], dtype=torch.bool)
        return self.generate_fine_codes(
            torch.cat([known[:, 0], coarse], 1), torch.cat([ones, frames_mask], 1), *condition, known=known
        )

    def _masked_window(
        self,
        timeline: AudioTimeline,
        span: Window,
        prompt: tuple,
        negative_prompt: tuple | None,
        guidance_scale: float | None,
        decoding_steps: int,
        settings: dict[str, Any],
    ) -> None:
        """One window of masked decoding: one LLM prefill of the prompt, then the masked decoder fills the window's
        new frames after its known ones, into `timeline`."""
        ids, mask, features = prompt
        states = self.prompt_states(self.get_multimodal_embeddings(ids, **features), mask)
        negative_states = negative_mask = None
        if negative_prompt is not None:
            negative_ids, negative_attention, negative_inputs = negative_prompt
            negative_states = self.prompt_states(
                self.get_multimodal_embeddings(negative_ids, **negative_inputs), negative_attention
            )
            negative_mask = self._condition_mask(negative_ids, negative_attention)
        codes = timeline.codes[..., span.start : span.end].clone()
        codes = self.masked_decode(
            states, self._condition_mask(ids, mask), codes, decoding_steps=decoding_steps,
            do_sample=bool(settings["do_sample"]), temperature=settings["temperature"], top_k=settings["top_k"],
            top_p=settings["top_p"], guidance_scale=guidance_scale, negative_states=negative_states,
            negative_mask=negative_mask,
        )  # fmt: skip
        timeline.write(span.start, codes, final=span.end)

    def _tokens_to_codes(self, tokens: torch.LongTensor) -> tuple[torch.LongTensor, torch.BoolTensor]:
        """Generated ids -> codebook-1 codes `(batch, frames)` up to the first non-acoustic token, and the frame mask."""
        codes = tokens - self.config.acoustic_token_offset
        frames_mask = self._is_acoustic(tokens).long().cumprod(dim=-1).bool()
        frames = max(int(frames_mask.sum(-1).max()), 1)
        return codes[:, :frames].masked_fill(~frames_mask[:, :frames], 0), frames_mask[:, :frames]

    def generate_fine_codes(
        self,
        coarse_codes: torch.LongTensor,
        frames_mask: torch.BoolTensor,
        condition_embeds: torch.Tensor,
        condition_mask: torch.BoolTensor,
        known: torch.LongTensor | None = None,
    ) -> torch.LongTensor:
        r"""
        Runs the NAR head level by level (greedy, as in VALL-E); the `known` codes of the first frames (an audio prompt
        or the start of a long-form window) stay as they are at every level.

        Args:
            coarse_codes (`torch.LongTensor` of shape `(batch, frames)`): codebook-1 codes.
            frames_mask (`torch.BoolTensor` of shape `(batch, frames)`): which frames are real.
            condition_embeds (`torch.Tensor` of shape `(batch, cond_len, hidden)`): the prompts' input embeddings.
            condition_mask (`torch.BoolTensor` of shape `(batch, cond_len)`): which prompt positions to attend to.
            known (`torch.LongTensor` of shape `(batch, num_codebooks, known_frames)`, *optional*): codes of the first
                frames.

        Returns:
            `torch.LongTensor` of shape `(batch, num_codebooks, frames)`.
        """
        codes = coarse_codes[:, None, :]
        for level in range(1, self.config.num_codebooks):
            predicted = self.nar_head(condition_embeds, condition_mask, codes, frames_mask).argmax(-1)
            if known is not None:
                predicted[:, : known.shape[-1]] = known[:, level]
            codes = torch.cat([codes, predicted[:, None, :]], dim=1)
        return codes


__all__ = [
    "AllowedTokensLogitsProcessor",
    "AudioSamplingLogitsProcessor",
    "C3LLMAudioGenerationOutput",
    "C3LLMGenerationMixin",
    "NegativePromptGuidanceLogitsProcessor",
]
