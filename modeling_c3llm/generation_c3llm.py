"""Generation helpers for C3LLM: vocabulary constraints and the audio output type."""

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor
from transformers.utils import ModelOutput


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


@dataclass
class C3LLMAudioGenerationOutput(ModelOutput):
    r"""
    Output of [`C3LLMForConditionalGeneration.generate`] for the audio tasks.

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


__all__ = ["AllowedTokensLogitsProcessor", "C3LLMAudioGenerationOutput"]
