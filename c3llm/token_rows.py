"""A faster forward for PEFT's `trainable_token_indices` (the new acoustic and special token rows of stage 1).

PEFT's `TrainableTokensLayer` rebuilds the whole weight with `W.index_copy(rows, deltas)` on every forward. For the
(tied) output layer that makes autograd compute the gradient of the full `vocab x hidden` matrix only to keep the
trained rows of it: with Gemma's 256k vocabulary that is the largest matmul of a LoRA step. `EfficientTrainableTokens`
computes the same outputs from the frozen weight and the trained rows separately, so the backward pass computes the
gradient of the trained rows only. Parameters, state dict, adapter files and merging are PEFT's own.

PEFT offers no supported way to put another class in place of `TrainableTokensLayer` (`TrainableTokensWrapper` and
`TrainableTokensModel` construct it directly; LoRA's custom-module registry covers LoRA layers only), so
`use_efficient_trainable_tokens` swaps the class of the layers PEFT built. The subclass adds no state and reads only
the layer's public attributes (`token_indices`, `trainable_tokens_delta`, `merged`, `disable_adapters`,
`get_base_layer()`); every other case (adapters disabled, merged or several active) runs PEFT's own forward. That
contract is tested against the peft releases in setup.py's pin (`peft>=0.18.1,<0.22`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer


class EfficientTrainableTokens(TrainableTokensLayer):
    """`TrainableTokensLayer` with a forward whose gradient costs `len(token_indices)` rows, not the vocabulary."""

    def forward_adapters(self, x: torch.Tensor, active_adapters, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters or self.merged or len(active_adapters) != 1:
            return super().forward_adapters(x, active_adapters, *args, **kwargs)
        adapter = active_adapters[0]  # one active adapter and nothing merged: PEFT's overlap check has nothing to do
        base = self.get_base_layer()
        weight = base.weight
        rows = torch.as_tensor(self.token_indices[adapter], device=weight.device)
        deltas = self.trainable_tokens_delta[adapter].to(weight)
        if isinstance(base, torch.nn.Embedding):
            # Row position of every vocabulary id among the trained rows, -1 for the frozen ones.
            position = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
            position[rows] = torch.arange(len(rows), device=weight.device)
            slot = position[x]
            frozen = F.embedding(x, weight, padding_idx=base.padding_idx)
            trained = F.embedding(slot.clamp(min=0), deltas)
            result = torch.where((slot >= 0).unsqueeze(-1), trained, frozen)
            # Gemma's embedding multiplies by sqrt(hidden) in its own forward (`embed_scale`, a tensor or a number).
            scale = getattr(base, "embed_scale", None)
            if scale is None:
                return result
            return result * torch.as_tensor(scale, dtype=result.dtype, device=result.device)
        if isinstance(base, torch.nn.Linear):  # an lm_head, tied to the embedding or not
            indices = list(self.token_indices[adapter])
            start, stop = indices[0], indices[0] + len(indices)
            if indices == list(range(start, stop)):  # contiguous (C3LLM: the vocabulary's end): each logit once
                return torch.cat([F.linear(x, weight[:start]), F.linear(x, deltas), F.linear(x, weight[stop:])], -1)
            return F.linear(x, weight).index_copy(-1, rows, F.linear(x, deltas))
        return super().forward_adapters(x, active_adapters, *args, **kwargs)


def use_efficient_trainable_tokens(model: torch.nn.Module) -> int:
    """Gives every PEFT `TrainableTokensLayer` in `model` the faster forward (in place); returns how many it changed."""
    changed = 0
    for module in model.modules():
        if type(module) is TrainableTokensLayer:
            module.__class__ = EfficientTrainableTokens
            changed += 1
    return changed


__all__ = ["EfficientTrainableTokens", "use_efficient_trainable_tokens"]
