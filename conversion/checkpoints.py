"""Reading foreign checkpoints safely and mapping their weights onto transformers models, shared by the converters."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from .build_c3llm import atomic_folder


def load_foreign_checkpoint(path: str | os.PathLike, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Reads a `.th`/`.pt` checkpoint with `weights_only=True` (no arbitrary code) and returns its flat state dict.

    Training checkpoints wrap the weights (`{"epoch": ..., "state_dict": {...}}`) and DistributedDataParallel adds a
    `module.` prefix to every name; both are undone here.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Checkpoint {path} does not exist or is not a file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (and others) for non-weights content or a corrupt file
        raise ValueError(
            f"Could not read {path} as a weights-only PyTorch checkpoint ({type(e).__name__}: {str(e)[:300]}). "
            "Only tensors and plain containers are accepted; re-save the state dict with torch.save(model.state_dict())."
        ) from e
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not checkpoint or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()
    ):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    if all(name.startswith(prefix) for name in checkpoint):
        checkpoint = {name[len(prefix) :]: value for name, value in checkpoint.items()}
    return checkpoint


def rename(name: str, rules: Iterable[tuple[str, str]]) -> str:
    """Applies every `(pattern, replacement)` regex rule in order."""
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


@torch.no_grad()
def load_converted(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Loads converted weights strictly: every model tensor must be given, with its shape, and nothing else."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"The weights converted from {source} do not fit {type(model).__name__}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}, wrong shapes {wrong_shape[:8]}. Is it the right kind of checkpoint?"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model


def save_converted(model, feature_extractor, out_dir: str | os.PathLike) -> None:
    """Saves a converted model with its feature extractor into a new folder, atomically."""

    with atomic_folder(out_dir) as staging:
        model.save_pretrained(staging)
        feature_extractor.save_pretrained(staging)
