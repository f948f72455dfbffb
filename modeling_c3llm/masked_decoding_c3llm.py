"""Masked iterative parallel decoding for C3LLM (VATT's, after MaskGIT, SoundStorm and MAGNeT): the cosine masking
schedule, sampling among the top-k/top-p candidates, and `masked_decode`, which fills unknown codes with the masked
decoder."""

import math

import torch


DEFAULT_DECODING_STEPS = 16  # iterations of masked decoding over codebook 1


def cosine_mask_ratio(progress: torch.Tensor | float) -> torch.Tensor:
    """MaskGIT's cosine schedule: the share of a clip's codes still masked at `progress` in [0, 1]."""
    return torch.cos(0.5 * math.pi * torch.as_tensor(progress, dtype=torch.float64))


def sample_codes(
    scores: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> tuple[torch.LongTensor, torch.Tensor]:
    r"""
    Samples one code per frame from log-probabilities `scores` `(batch, frames, codebook_size)` at `temperature`,
    among the `top_k` most likely codes and then the smallest set holding `top_p` of their probability (the same
    distribution as transformers' temperature, top-k and top-p warpers in that order), drawing only among those
    candidates. Returns the codes and their probabilities under that distribution, both `(batch, frames)`.
    """
    size = scores.shape[-1]
    restrict_p = top_p is not None and top_p < 1
    if top_k or restrict_p:
        scores, candidates = scores.topk(min(top_k or size, size), dim=-1)  # sorted, most likely first
    probs = (scores / temperature).softmax(-1)
    if restrict_p:
        kept = (probs.cumsum(-1) - probs) < top_p  # the mass before a candidate is still short of top_p
        probs = probs * kept
        probs = probs / probs.sum(-1, keepdim=True)
    drawn = torch.multinomial(probs.flatten(0, 1), 1).view(probs.shape[:-1] + (1,))
    confidence = probs.gather(-1, drawn)[..., 0]
    chosen = candidates.gather(-1, drawn)[..., 0] if top_k or restrict_p else drawn[..., 0]
    return chosen, confidence


class C3LLMMaskedDecodingMixin:
    """`masked_decode` of [`C3LLMForConditionalGeneration`] (needs its `masked_decoder`)."""

    @torch.no_grad()
    def masked_decode(
        self,
        condition_states: torch.Tensor,
        condition_mask: torch.BoolTensor,
        codes: torch.LongTensor,
        frames_mask: torch.BoolTensor | None = None,
        decoding_steps: int = DEFAULT_DECODING_STEPS,
        do_sample: bool = True,
        temperature: float | None = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        negative_states: torch.Tensor | None = None,
        negative_mask: torch.BoolTensor | None = None,
    ) -> torch.LongTensor:
        r"""
        Fills the negative entries of `codes` with the masked decoder (MaskGIT's iterative parallel decoding, level by
        level as in SoundStorm). Codebook 1 takes `decoding_steps` iterations: each predicts every masked frame,
        keeps the most confident predictions and re-masks the others, the masked share following the cosine schedule
        `cosine_mask_ratio` down to none at the last step. Each finer codebook is then filled greedily in one pass.
        Sampling uses `top_k`/`top_p` and a temperature annealed linearly from `temperature` at the first step to
        `temperature / decoding_steps` at the last; classifier-free guidance (`negative_states`, with
        `guidance_scale`) is annealed as in MAGNeT, from `guidance_scale` while everything is masked to 1 at the end.

        Args:
            condition_states (`torch.Tensor` of shape `(batch, cond_len, llm_hidden)`): `prompt_states` of the prompts.
            condition_mask (`torch.BoolTensor` of shape `(batch, cond_len)`): which prompt positions are real.
            codes (`torch.LongTensor` of shape `(batch, num_codebooks, frames)`): known codes; `-1` to generate.
            frames_mask (`torch.BoolTensor` of shape `(batch, frames)`, *optional*): real frames (default: all).
            negative_states, negative_mask: the same for the negative prompts of guidance.

        Returns:
            `torch.LongTensor` of shape `(batch, num_codebooks, frames)`: `codes` with every real frame filled.
        """
        if decoding_steps < 1:
            raise ValueError(f"decoding_steps must be a positive integer, got {decoding_steps}.")
        decoder = self.masked_decoder
        codes = codes.clone()
        if frames_mask is None:
            frames_mask = torch.ones_like(codes[:, 0], dtype=torch.bool)
        guided = guidance_scale is not None and guidance_scale != 1
        if guided and negative_states is None:
            raise ValueError("guidance_scale needs negative_states (the prompt_states of the negative prompts).")
        for level in range(codes.shape[1]):
            unknown = (codes[:, level] < 0) & frames_mask
            total = unknown.sum(-1)
            steps = decoding_steps if level == 0 else 1
            for step in range(steps):
                if not unknown.any():
                    break
                scores = decoder(condition_states, condition_mask, codes, level, frames_mask).float().log_softmax(-1)
                if guided:
                    masked_share = float(cosine_mask_ratio(step / steps))
                    scale = 1 + (guidance_scale - 1) * masked_share
                    negative = decoder(negative_states, negative_mask, codes, level, frames_mask).float().log_softmax(-1)
                    scores = (negative + scale * (scores - negative)).log_softmax(-1)
                if do_sample and level == 0:
                    annealed = (temperature or 1.0) * (1 - step / steps)
                    chosen, confidence = sample_codes(scores, annealed, top_k, top_p)
                else:
                    confidence, chosen = scores.max(-1)
                # Keep the most confident predictions; the cosine schedule says how many frames stay masked.
                still_masked = (total * cosine_mask_ratio((step + 1) / steps)).floor().long().to(total.device)
                still_masked = torch.minimum(still_masked, unknown.sum(-1) - 1).clamp(min=0)
                order = confidence.masked_fill(~unknown, float("inf")).argsort(dim=-1, stable=True)
                rank = order.argsort(dim=-1, stable=True)
                remask = unknown & (rank < still_masked[:, None])
                codes[:, level] = torch.where(unknown & ~remask, chosen, codes[:, level])
                unknown = remask
        return codes


__all__ = ["DEFAULT_DECODING_STEPS", "C3LLMMaskedDecodingMixin", "cosine_mask_ratio", "sample_codes"]
