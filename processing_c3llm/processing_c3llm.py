"""Processor for C3LLM: builds each task's prompt with modality markers and decodes text and audio."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .media_c3llm import (
    DeferredImageProcessor,
    MediaError,
    flow_to_image,
    load_audio,
    load_image,
    load_video,
    optical_flow,
    optional_import,
    sample_frames,
    validate_video,
    validate_waveform,
)


logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Task:
    """One task, declared once: the inputs its prompt takes (kinds of `INPUT_ARGUMENTS`), its output ("audio" or
    "text"), a one-line description, for a text output the instruction that ends its prompt, and the inputs it may
    take besides (`optional`). Everything else (the processor's checks, the CLI's flags, training, evaluation, the
    model card) reads these rows, so a task over existing inputs is one new row."""

    name: str
    inputs: tuple[str, ...]
    output: str
    description: str = ""
    prompt: str | None = None
    optional: tuple[str, ...] = ()


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("text-to-audio", ("text",), "audio", "Text in, audio out (C3LLM)."),
        Task("audio-to-text", ("audio",), "text", "Audio captioning (C3LLM).", "Describe the audio."),
        Task("video-to-audio", ("video",), "audio", "A silent video in, its soundtrack out (C3LLM).",
             optional=("audio_prompt",)),  # (long-form generation's later windows continue the audio so far)
        Task("video-to-caption", ("video",), "text", "Tell what you hear from what you see (VATT).",
             "Describe what you would hear."),
        Task("video-text-to-audio", ("video", "text"), "audio",
             "A video plus a text prompt that steers the sound (VATT)."),
        Task("image-to-audio", ("image",), "audio", "An image in, a matching sound out (EGMI)."),
        Task("image-text-to-audio", ("image", "text"), "audio", "An image plus a text prompt (EGMI)."),
        Task("audio-continuation", ("audio_prompt",), "audio",
             "Continue an audio prompt, optionally steered by a text (MusicGen-style continuation).",
             optional=("text",)),
        Task("video-text-audio-to-audio", ("video", "text", "audio_prompt"), "audio",
             "Several conditions at once: continue an audio prompt in sync with a video, steered by a text."),
    )
}  # fmt: skip
# Each input kind -> the processor arguments that can carry it (one per example): `video_features` replaces `videos`.
# `audio_prompt_codes` are the EnCodec codes `(num_codebooks, frames)` of an audio prompt that the output continues.
INPUT_ARGUMENTS = {"text": ("text",), "audio": ("audio",), "video": ("videos", "video_features"), "image": ("images",),
                   "audio_prompt": ("audio_prompt_codes",)}
DEFAULT_TASK_PROMPTS = {task.name: task.prompt for task in TASKS.values() if task.prompt}
ACOUSTIC_TOKEN = "<|a_{}|>"
# The strings of the C3LLM special tokens, declared here only. The model knows them by role, never by string: its config
# (`modeling_c3llm.configuration_c3llm.SPECIAL_TOKEN_ROLES`) lists the roles in vocabulary order and computes their
# ids. This file cannot import the config (it is remote code of its own, and the processor does not import the model),
# so `conversion.build_c3llm.extend_tokenizer` adds these strings in the config's order and checks the ids agree.
SPECIAL_TOKENS = {
    "audio_start": "<Audio>",
    "audio_end": "</Audio>",
    "video_start": "<Video>",
    "video_end": "</Video>",
    "image_start": "<Image>",
    "image_end": "</Image>",
    "audio_feature": "<|audio_feature|>",
    "video_frame": "<|video_frame|>",
    "image_patch": "<|image_patch|>",
}


def _quoted(names) -> str:
    return " or ".join(f"`{name}`" for name in names)


def check_task_inputs(task: str, given) -> Task:
    """Checks that an example of `task` has exactly the inputs the task takes and returns the task's row. `given`
    names the processor arguments that have a value (`text`, `audio`, `videos`, `video_features`, `images`)."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(TASKS)}.")
    row, given = TASKS[task], set(given)
    present = {kind: [name for name in names if name in given] for kind, names in INPUT_ARGUMENTS.items()}
    for names in present.values():
        if len(names) > 1:
            raise ValueError(f"Pass either {_quoted(names)} for an example, not both.")
    for kind in row.inputs:
        if not present[kind]:
            raise ValueError(f"Task {task!r} needs {_quoted(INPUT_ARGUMENTS[kind])}.")
    for kind, names in present.items():
        if names and kind not in row.inputs + row.optional:
            variants = [t.name for t in TASKS.values() if t.output == row.output and set(t.inputs) == {*row.inputs, kind}]
            hint = f" (use {' or '.join(map(repr, variants))} for that)" if variants else ""
            raise ValueError(f"Task {task!r} does not take {_quoted(names)}{hint}; it takes "
                             f"{', '.join(_quoted(INPUT_ARGUMENTS[k]) for k in row.inputs)}.")  # fmt: skip
    return row


def _given(example: dict[str, Any]) -> set[str]:
    """The processor arguments with a value in one example of `__call__` (which names `videos` and `images` in the
    singular)."""
    singular = {"video": "videos", "image": "images"}
    names = {"text", "audio", "video", "video_features", "image", "audio_prompt_codes"}
    return {singular.get(name, name) for name, value in example.items() if name in names and value is not None}


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _as_batch(value: Any, single: tuple[type, ...]) -> list | None:
    """`None`, one item or a list of items -> `None` or a list."""
    if value is None:
        return None
    if isinstance(value, single) or _is_path(value):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


class C3LLMProcessor(ProcessorMixin):
    r"""
    Wraps the LLM tokenizer (with the acoustic vocabulary), CLAP's feature extractor for source audio, EnCodec's
    feature extractor for audio targets and the vision encoder's image processor for video frames and images.

    `processor(text=..., audio=..., videos=..., images=..., task=...)` builds the prompt of a task
    (see `TASKS`); with `text_target` (captions) or `audio_codes` (EnCodec codes) it also builds training labels.
    Audio-output prompts end with `<Audio>`, which is how `generate` knows to produce audio.

    Args:
        tokenizer: The LLM tokenizer, extended with `<|a_0|>`... and the C3LLM special tokens.
        feature_extractor (`ClapFeatureExtractor`): Log-mel features for the CLAP audio encoder.
        codec_feature_extractor (`EncodecFeatureExtractor`): Waveform preparation for EnCodec targets.
        image_processor: Image processor of the vision encoder.
        num_audio_tokens (`int`): CLAP feature frames per audio clip (placeholders per audio).
        num_image_tokens (`int`): Vision-encoder tokens per image.
        video_fps (`float`): Rate at which video frames are sampled.
        video_num_frames (`int`): Frames per clip: the frames of a text-output or training prompt, and of each window
            of long-form audio (`generate` windows a longer video).
        max_video_seconds (`float`): The longest video an audio-output prompt keeps for long-form generation.
        video_feature_size (`int`): Width of precomputed per-frame video features.
        num_codebooks (`int`): Codebooks of an audio target.
        codebook_size (`int`): Codes per codebook.
        task_prompts (`dict`, *optional*): Instruction text appended for the text-output tasks.
    """

    def __init__(
        self,
        tokenizer=None,
        feature_extractor=None,
        codec_feature_extractor=None,
        image_processor=None,
        num_audio_tokens: int = 32,
        num_image_tokens: int = 50,
        video_fps: float = 5.0,
        video_num_frames: int = 50,
        video_feature_size: int = 1536,
        max_video_seconds: float = 600.0,  # (the config's `max_generation_seconds`, which `c3llm build` passes)
        num_codebooks: int = 2,
        codebook_size: int = 1024,
        task_prompts: dict[str, str] | None = None,
        chat_template=None,
    ):
        self.num_audio_tokens = num_audio_tokens
        self.num_image_tokens = num_image_tokens
        self.video_fps = float(video_fps)
        self.video_num_frames = video_num_frames
        self.max_video_seconds = float(max_video_seconds)
        self.video_feature_size = video_feature_size
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.task_prompts = {**DEFAULT_TASK_PROMPTS, **(task_prompts or {})}
        super().__init__(tokenizer, feature_extractor, codec_feature_extractor, image_processor, chat_template=chat_template)
        ids = tokenizer.convert_tokens_to_ids
        self.token_ids = {name: ids(token) for name, token in SPECIAL_TOKENS.items()}
        self.acoustic_token_offset = ids(ACOUSTIC_TOKEN.format(0))
        unknown = [name for name, i in self.token_ids.items() if i is None or i == tokenizer.unk_token_id]
        if unknown or ids(ACOUSTIC_TOKEN.format(codebook_size - 1)) != self.acoustic_token_offset + codebook_size - 1:
            raise ValueError(
                f"The tokenizer lacks the C3LLM acoustic or special tokens ({unknown or 'acoustic tokens'}); "
                "build the processor with `c3llm build`, which extends the tokenizer."
            )

    # ---- inputs ------------------------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | list[str] | None = None,
        audio: Any = None,
        videos: Any = None,
        images: Any = None,
        task: str | list[str] | None = None,
        sampling_rate: int | None = None,
        video_fps: float | None = None,
        video_features: Any = None,
        text_target: str | list[str] | None = None,
        audio_codes: Any = None,
        audio_prompt_codes: Any = None,
        drop_condition: bool | list[bool] | None = None,
        negative_prompt: str | list[str | None] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        r"""
        Builds model inputs for one task (or one task per example).

        Args:
            text: Prompt text (text-to-audio, video/image + text) per example.
            audio: Source audio for audio-to-text: file paths (any rate, any channels: resampled/downmixed) or
                arrays at `sampling_rate`, which must equal the CLAP feature extractor's rate.
            videos: Video file paths, or frame arrays `(frames, height, width, 3)` recorded at `video_fps`.
            images: Image file paths, PIL images or arrays.
            task: One of `TASKS`, or one per example; inferred from the inputs when omitted (video alone means
                video-to-audio).
            video_features: Precomputed per-frame features `(frames, video_feature_size)`, instead of `videos`.
            text_target: Captions to learn (text-output tasks).
            audio_codes: EnCodec codes `(num_codebooks, frames)` to learn (audio-output tasks), e.g. from
                `C3LLMForConditionalGeneration.encode_audio`.
            audio_prompt_codes: EnCodec codes `(num_codebooks, frames)` of an audio prompt to continue
                (`audio-continuation`, `video-text-audio-to-audio`): its first codebook follows `<Audio>` as acoustic
                tokens, and the output (and `audio_codes`, when training) is the audio after it. Without targets the
                output holds `audio_prompt_codes` `(batch, num_codebooks, frames)`, left-padded with -1, for
                `generate`, which decodes the new audio in one piece with the prompt.
            drop_condition: For audio-output examples: `True` replaces the prompt by `unconditional_prompt()` (the
                condition dropout that classifier-free guidance trains with); one flag, or one per example.
            negative_prompt: Text that classifier-free guidance steers audio away from (`generate(guidance_scale=...)`),
                one for all examples or one per example (`None`: the unconditional prompt). Adds
                `negative_prompt_ids` and `negative_prompt_attention_mask`; see `_negative_prompt`.
        """
        if kwargs:
            logger.debug("C3LLMProcessor ignores %s", sorted(kwargs))
        inputs = {
            "text": _as_batch(text, (str,)),
            "audio": _as_batch(audio, (np.ndarray, torch.Tensor)),
            "video": _as_batch(videos, (np.ndarray, torch.Tensor)),
            "video_features": _as_batch(video_features, (np.ndarray, torch.Tensor)),
            "image": _as_batch(images, (np.ndarray, torch.Tensor)),
            "text_target": _as_batch(text_target, (str,)),
            "audio_codes": _as_batch(audio_codes, (np.ndarray, torch.Tensor)),
            "audio_prompt_codes": _as_batch(audio_prompt_codes, (np.ndarray, torch.Tensor)),
        }
        sizes = {name: len(value) for name, value in inputs.items() if value is not None}
        if not sizes:
            raise ValueError("C3LLMProcessor needs at least one of text, audio, videos, video_features or images.")
        batch_size = max(sizes.values())
        if task is None:
            tasks = [self._infer_task(inputs, i) for i in range(batch_size)] if len(set(sizes.values())) == 1 else None
            if tasks is None:
                raise ValueError(f"Inputs have different batch sizes {sizes}; pass `task` per example and pad with None.")
        else:
            tasks = [task] * batch_size if isinstance(task, str) else list(task)
        if len(tasks) != batch_size:
            raise ValueError(f"Got {len(tasks)} tasks for a batch of {batch_size}.")
        for name, value in inputs.items():
            if value is not None and len(value) != batch_size:
                raise ValueError(f"`{name}` has {len(value)} entries but the batch has {batch_size}; use None for gaps.")
            if value is None:
                inputs[name] = [None] * batch_size

        drop = [bool(drop_condition)] * batch_size if not isinstance(drop_condition, (list, tuple)) else drop_condition
        if len(drop) != batch_size:
            raise ValueError(f"Got {len(drop)} drop_condition flags for a batch of {batch_size}.")
        negatives = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else negative_prompt
        if negatives is not None and len(negatives) != batch_size:
            raise ValueError(f"Got {len(negatives)} negative prompts for a batch of {batch_size}.")
        if negatives is not None and any(drop):
            raise ValueError("negative_prompt is for generation and drop_condition for training; pass one of them.")
        negative_sequences: list[list[int]] = []

        features: dict[str, list] = {"audio": [], "video": [], "video_features": [], "image": []}
        sequences, labels, codes, prompt_codes = [], [], [], []
        for i, example_task in enumerate(tasks):
            example = {name: value[i] for name, value in inputs.items()}
            row = check_task_inputs(example_task, _given(example))
            if drop[i] and row.output != "audio":
                raise ValueError(f"drop_condition applies to audio-output tasks only, not to {example_task!r}.")
            # Condition dropout keeps the audio prompt: the unconditional prompt continues it, as guidance does.
            # A video stays whole (up to max_video_seconds) in a prompt for audio, which `generate` windows.
            long_video = row.output == "audio" and example["audio_codes"] is None
            prompt = self.unconditional_prompt() if drop[i] else self._prompt(
                row, example, features, sampling_rate, video_fps, long_video
            )
            known = self._codes(example["audio_prompt_codes"], "audio_prompt_codes")
            known_tokens = [] if known is None else (known[0] + self.acoustic_token_offset).tolist()
            target, example_codes = self._target(row, inputs["text_target"][i], inputs["audio_codes"][i])
            if known is not None and example_codes is not None:  # the NAR and masked losses see the whole clip
                example_codes = np.concatenate([known, example_codes], axis=1)
            sequences.append(prompt + known_tokens + target)
            labels.append([-100] * (len(prompt) + len(known_tokens)) + target)
            codes.append(example_codes)
            prompt_codes.append(known)
            if negatives is not None:
                negative_sequences.append(self._negative_prompt(row, prompt, example["text"], negatives[i]))

        has_targets = [bool(label_row) and any(t != -100 for t in label_row) for label_row in labels]
        if any(has_targets) and not all(has_targets):
            raise ValueError("Give a target (text_target or audio_codes) for every example of a training batch, or none.")
        data = self._pad(sequences, labels if any(has_targets) else None, codes)
        data.update(self._encode_features(features))
        if not any(has_targets) and any(known is not None for known in prompt_codes):
            frames = max(len(known[0]) for known in prompt_codes if known is not None)
            data["audio_prompt_codes"] = np.full((batch_size, self.num_codebooks, frames), -1, dtype=np.int64)
            for i, known in enumerate(prompt_codes):
                if known is not None:
                    data["audio_prompt_codes"][i, :, frames - known.shape[1] :] = known
        if negatives is not None:
            negative = self._pad(negative_sequences, None, [None] * batch_size)
            data["negative_prompt_ids"] = negative["input_ids"]
            data["negative_prompt_attention_mask"] = negative["attention_mask"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def unconditional_prompt(self) -> list[int]:
        """The prompt of an audio output without any condition, `<bos><Audio>`: what classifier-free guidance
        contrasts the conditioned prompt with (`C3LLMForConditionalGeneration.generate(guidance_scale=...)`)."""
        return self._bos() + [self.token_ids["audio_start"]]

    def _negative_prompt(self, row: Task, prompt: list[int], text: str | None, negative: str | None) -> list[int]:
        """The negative prompt of an audio-output example: its `prompt` with the `negative` text in place of its text,
        which for a task without text is the prompt of its text-bearing variant (video-to-audio: video-text-to-audio)
        with the same media. `None`: the unconditional prompt, as guidance uses without negative prompts."""
        if row.output != "audio":
            raise ValueError(f"negative_prompt applies to audio-output tasks only, not to {row.name!r}.")
        if negative is None:
            return self.unconditional_prompt()
        # An audio task's prompt ends with its text, when it takes one, and <Audio>.
        text_length = len(self._text_ids(text, "text prompt")) if text is not None else 0
        kept = prompt[: len(prompt) - 1 - text_length]
        return kept + self._text_ids(negative, "negative prompt") + [self.token_ids["audio_start"]]

    def _bos(self) -> list[int]:
        return [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []

    def _infer_task(self, inputs: dict[str, list | None], i: int) -> str:
        """The first task of `TASKS` that takes exactly the example's inputs (video alone: video-to-audio)."""
        given = _given({name: value[i] for name, value in inputs.items() if value is not None})
        kinds = {kind for kind, names in INPUT_ARGUMENTS.items() if given & set(names)}
        if not kinds:
            raise ValueError(f"Example {i} has no input to condition on; pass text, audio, videos or images.")
        for task in TASKS.values():
            if set(task.inputs) == kinds:
                return task.name
        for task in TASKS.values():
            if set(task.inputs) <= kinds <= {*task.inputs, *task.optional}:
                return task.name
        raise ValueError(f"No task takes the inputs {sorted(given)} of example {i} together; pass `task`.")

    def _text_ids(self, text: Any, what: str) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"The {what} is empty or not a string ({text!r}); give non-empty text.")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prompt(
        self, row: Task, example: dict[str, Any], features: dict[str, list], sampling_rate: int | None,
        fps: float | None, long_video: bool = False,
    ) -> list[int]:  # fmt: skip
        """The prompt of an example whose inputs `check_task_inputs` accepted for its task `row`."""
        given = _given(example)
        optional = [kind for kind in row.optional if given & set(INPUT_ARGUMENTS[kind])]
        task, needs, output = row.name, (*row.inputs, *optional), row.output
        ids = self.token_ids
        prompt = self._bos()
        if "audio" in needs:
            features["audio"].append(self._load_audio(example["audio"], sampling_rate))
            prompt += [ids["audio_start"]] + [ids["audio_feature"]] * self.num_audio_tokens + [ids["audio_end"]]
        if "video" in needs:
            limit = round(self.max_video_seconds * self.video_fps) if long_video else self.video_num_frames
            frames = self._add_video(example, features, fps, limit)
            prompt += [ids["video_start"]] + [ids["video_frame"]] * frames + [ids["video_end"]]
        if "image" in needs:
            features["image"].append(load_image(example["image"]))
            prompt += [ids["image_start"]] + [ids["image_patch"]] * self.num_image_tokens + [ids["image_end"]]
        if "text" in needs:
            prompt += self._text_ids(example["text"], f"text prompt of a {task} example")
        if output == "audio":
            prompt.append(ids["audio_start"])
        else:
            prompt += self._text_ids(self.task_prompts.get(task, row.prompt), f"task prompt of {task}")
        return prompt

    def _add_video(self, example: dict[str, Any], features: dict[str, list], fps: float | None, limit: int) -> int:
        """Adds an example's video (frames sampled at `video_fps`, or its features), at most `limit` frames; returns
        how many."""
        if example["video_features"] is not None:
            array = example["video_features"]
            array = np.asarray(array.detach().cpu().float() if hasattr(array, "detach") else array, dtype=np.float32)
            if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != self.video_feature_size:
                raise ValueError(
                    f"video_features must have shape (frames>0, {self.video_feature_size}), got {array.shape}; "
                    "compute them with the model's vision encoder (RGB and flow features concatenated)."
                )
            if not np.isfinite(array).all():
                raise ValueError("video_features contain NaN or inf values.")
            features["video_features"].append(array[:limit])
            return min(len(array), limit)
        video = example["video"]
        if _is_path(video):
            frames, source_fps = load_video(video)
        else:
            frames, source_fps = validate_video(video), fps or self.video_fps
        frames = sample_frames(frames, source_fps, self.video_fps, limit)
        features["video"].append(frames)
        return len(frames)

    def _load_audio(self, audio: Any, sampling_rate: int | None) -> np.ndarray:
        rate = self.feature_extractor.sampling_rate
        waveform = load_audio(audio, rate) if _is_path(audio) else validate_waveform(audio, sampling_rate, rate)
        # Deterministic head crop: CLAP's own truncation picks a random window.
        return waveform[: self.feature_extractor.nb_max_samples]

    def _target(self, row: Task, text_target: Any, audio_codes: Any) -> tuple[list[int], np.ndarray | None]:
        task, output = row.name, row.output
        if output == "text":
            if audio_codes is not None:
                raise ValueError(f"Task {task!r} produces text; give `text_target`, not `audio_codes`.")
            if text_target is None:
                return [], None
            return self._text_ids(text_target, "text_target") + [self.tokenizer.eos_token_id], None
        if text_target is not None:
            raise ValueError(f"Task {task!r} produces audio; give `audio_codes`, not `text_target`.")
        codes = self._codes(audio_codes, "audio_codes")
        if codes is None:
            return [], None
        return (codes[0] + self.acoustic_token_offset).tolist() + [self.token_ids["audio_end"]], codes

    def _codes(self, codes: Any, name: str) -> np.ndarray | None:
        """Checks EnCodec codes `(num_codebooks, frames>0)` of the model's codebooks; int64 or `None`."""
        if codes is None:
            return None
        codes = codes.detach().cpu().numpy() if hasattr(codes, "detach") else np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks or codes.shape[1] == 0:
            raise ValueError(f"{name} must have shape ({self.num_codebooks}, frames>0), got {codes.shape}.")
        if not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"{name} must be integers in [0, {self.codebook_size}); encode audio with the model's "
                             "`encode_audio`.")  # fmt: skip
        return codes.astype(np.int64)

    def _pad(self, sequences: list[list[int]], labels: list[list[int]] | None, codes: list) -> dict[str, np.ndarray]:
        """Left padding for every row, so prompts end at the same position for generation."""
        limit = self.tokenizer.model_max_length
        frame_id = self.token_ids["video_frame"]
        for row in sequences:
            # `generate` gives each window of a long video's audio `video_num_frames` of its frames.
            if len(row) - max(0, row.count(frame_id) - self.video_num_frames) > limit:
                raise ValueError(
                    f"A prompt has {len(row)} tokens, longer than the model's context of {limit}; shorten the text, "
                    "the video (fewer frames) or the target."
                )
        length = max(len(row) for row in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        input_ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(sequences), length), dtype=np.int64)
        for i, row in enumerate(sequences):
            input_ids[i, length - len(row) :] = row
            attention_mask[i, length - len(row) :] = 1
        data = {"input_ids": input_ids, "attention_mask": attention_mask}
        if labels is not None:
            data["labels"] = np.full_like(input_ids, -100)
            for i, row in enumerate(labels):
                data["labels"][i, length - len(row) :] = row
        if any(c is not None for c in codes):
            frames = max(c.shape[1] for c in codes if c is not None)
            data["audio_codes"] = np.full((len(codes), self.num_codebooks, frames), -100, dtype=np.int64)
            for i, c in enumerate(codes):
                if c is not None:
                    data["audio_codes"][i, :, : c.shape[1]] = c
        return data

    def _encode_features(self, features: dict[str, list]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if features["audio"]:
            clap = self.feature_extractor(
                features["audio"], sampling_rate=self.feature_extractor.sampling_rate, return_tensors="np"
            )
            data["input_features"], data["is_longer"] = clap["input_features"], clap["is_longer"]
        if features["image"]:
            data["pixel_values"] = self._pixels(features["image"])
        if features["video"] and features["video_features"]:
            raise ValueError("A batch must give all videos as frames or all as video_features.")
        clips = features["video"] or features["video_features"]
        if clips:
            frames = max(len(clip) for clip in clips)
            data["video_frames_mask"] = np.array([[f < len(clip) for f in range(frames)] for clip in clips])
        if features["video"]:
            rgb, flow = [], []
            for clip in features["video"]:
                clip = self._resize_for_flow(clip)
                rgb.append(self._pixels(list(clip)))
                flow.append(self._pixels(list(flow_to_image(optical_flow(clip)))))
            data["pixel_values_videos"] = self._pad_frames(rgb, frames)
            data["flow_values_videos"] = self._pad_frames(flow, frames)
        elif features["video_features"]:
            data["video_features"] = self._pad_frames(features["video_features"], frames)
        return data

    def _pixels(self, images: list[np.ndarray]) -> np.ndarray:
        return np.asarray(self.image_processor(images, return_tensors="np")["pixel_values"], dtype=np.float32)

    def _resize_for_flow(self, clip: np.ndarray) -> np.ndarray:
        """Shrinks frames so that their short side matches the encoder's input before computing optical flow."""
        size = self.image_processor.crop_size
        target = min(size["height"], size["width"]) if not isinstance(size, int) else size
        height, width = clip.shape[1:3]
        scale = target / min(height, width)
        if scale >= 1:
            return clip
        shape = (max(1, round(width * scale)), max(1, round(height * scale)))
        cv2 = optional_import("cv2", "opencv-python-headless", "Resizing video frames for optical flow")
        return np.stack([cv2.resize(frame, shape, interpolation=cv2.INTER_AREA) for frame in clip])

    @staticmethod
    def _pad_frames(clips: list[np.ndarray], frames: int) -> np.ndarray:
        out = np.zeros((len(clips), frames) + clips[0].shape[1:], dtype=np.float32)
        for i, clip in enumerate(clips):
            out[i, : len(clip)] = clip
        return out

    def prepare_audio_target(self, audio: Any, sampling_rate: int | None = None) -> BatchFeature:
        """Waveforms (paths or arrays) -> EnCodec inputs for `C3LLMForConditionalGeneration.encode_audio`."""
        rate = self.codec_feature_extractor.sampling_rate
        waveforms = [
            load_audio(a, rate) if _is_path(a) else validate_waveform(a, sampling_rate, rate, name="audio target")
            for a in _as_batch(audio, (np.ndarray, torch.Tensor))
        ]
        return self.codec_feature_extractor(waveforms, sampling_rate=rate, return_tensors="pt")

    # ---- outputs -----------------------------------------------------------------------------------------------
    def batch_decode(self, *args, **kwargs) -> list[str]:
        """Decodes generated token ids with the tokenizer (`skip_special_tokens=True` drops markers and padding)."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def decode_audio(self, outputs: Any) -> list[np.ndarray]:
        """Audio generation output -> one float32 `(channels, samples)` array per clip, padding removed."""
        audio, lengths = outputs["audio"], outputs["audio_lengths"]
        return [audio[i, :, : int(lengths[i])].float().cpu().numpy() for i in range(audio.shape[0])]

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids",
            "attention_mask",
            "input_features",
            "is_longer",
            "pixel_values",
            "pixel_values_videos",
            "flow_values_videos",
            "video_features",
            "video_frames_mask",
            "audio_prompt_codes",
        ]

    # ---- loading: the image processor waits for the first image or video -------------------------------------------
    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Loads the sub-processors as transformers does, except the image processor: a saved one becomes a
        `DeferredImageProcessor` that loads it when an image or video comes, because transformers' image processors
        need Pillow or torchvision, which text and audio inputs do not."""
        config = (processor_dict or {}).get("image_processor")
        if not isinstance(config, dict):  # not saved in processor_config.json: transformers finds and loads it now
            return super()._get_arguments_from_pretrained(pretrained_model_name_or_path, processor_dict, **kwargs)
        names = cls.get_attributes()
        others = [name for name in names if name != "image_processor"]
        # transformers' loader reads the sub-processors to load from `get_attributes`; a subclass that leaves out the
        # image processor lets it load all the others exactly as usual.
        without_image = type(cls.__name__, (cls,), {"get_attributes": classmethod(lambda _: others)})
        args = super(C3LLMProcessor, without_image)._get_arguments_from_pretrained(
            pretrained_model_name_or_path, processor_dict, **kwargs
        )
        deferred = DeferredImageProcessor(config, pretrained_model_name_or_path, kwargs)
        args.insert(names.index("image_processor"), deferred)
        return args

    def check_argument_for_proper_class(self, argument_name, argument):
        # Without Pillow, transformers' top-level `ImageProcessingMixin` (what it checks against) is a placeholder.
        if argument_name == "image_processor" and isinstance(argument, DeferredImageProcessor):
            return DeferredImageProcessor
        return super().check_argument_for_proper_class(argument_name, argument)


__all__ = ["C3LLMProcessor", "INPUT_ARGUMENTS", "TASKS", "MediaError", "SPECIAL_TOKENS", "Task", "check_task_inputs"]
