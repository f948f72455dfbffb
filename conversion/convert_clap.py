"""Converts the `laion-clap` package's checkpoints (e.g. `630k-audioset-best.pt`, `630k-audioset-fusion-best.pt`)
into a transformers `ClapAudioModelWithProjection` folder: the HTSAT audio branch and the audio projection (the text
branch is not needed by C3LLM and is left out), plus a `ClapFeatureExtractor`.

    python -m conversion.convert_clap 630k-audioset-best.pt --out models/clap_audio
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import torch
from transformers import (
    ClapAudioConfig,
    ClapAudioModelWithProjection,
    ClapFeatureExtractor,
)

from .checkpoints import load_converted, load_foreign_checkpoint, rename, save_converted

AUDIO_PREFIXES = ("audio_branch.", "audio_projection.")
# Parts of the audio branch that transformers does not have: the on-the-fly STFT/log-mel (the feature extractor
# computes them), the AudioSet classification head, and the precomputed shifted-window attention masks.
DROPPED = re.compile(r"^audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\.|\.attn_mask$")
RULES = (
    (r"^audio_projection\.0\.", "audio_projection.linear1."),
    (r"^audio_projection\.2\.", "audio_projection.linear2."),
    (r"^audio_branch\.", "audio_model.audio_encoder."),
    (r"\.bn0\.", ".batch_norm."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"\.attn\.proj\.", ".attention.output.dense."),
    (r"\.attn\.relative_position_", ".attention.self.relative_position_"),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)


def clap_audio_config_for(state: dict[str, torch.Tensor]) -> ClapAudioConfig:
    """The transformers audio config matching the checkpoint's HTSAT branch (sizes read from the weights)."""
    if "audio_branch.patch_embed.proj.weight" not in state or "audio_projection.0.weight" not in state:
        raise ValueError(
            "Not a LAION-CLAP HTSAT checkpoint: audio_branch.patch_embed.proj.weight or audio_projection.0.weight "
            "is missing (PANN audio branches are not supported)."
        )
    blocks = {}
    for name in state:
        match = re.match(r"audio_branch\.layers\.(\d+)\.blocks\.(\d+)\.", name)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    depths = [len(blocks[i]) for i in sorted(blocks)]
    heads = [state[f"audio_branch.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1] for i in sorted(blocks)]
    table = state["audio_branch.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    proj = state["audio_branch.patch_embed.proj.weight"]
    return ClapAudioConfig(
        patch_embeds_hidden_size=proj.shape[0],
        patch_size=proj.shape[-1],
        depths=depths,
        num_attention_heads=heads,
        window_size=(round(table**0.5) + 1) // 2,  # the bias table has (2w-1)^2 rows
        num_mel_bins=state["audio_branch.bn0.weight"].shape[0],
        hidden_size=state["audio_branch.norm.weight"].shape[0],
        projection_dim=state["audio_projection.0.weight"].shape[0],
        enable_fusion=any(".fusion_model." in name for name in state),
    )


def convert_clap_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps the audio branch and projection onto transformers names; the fused `qkv` is split into query/key/value."""
    converted = {}
    for name, value in state.items():
        if not name.startswith(AUDIO_PREFIXES) or DROPPED.search(name):
            continue
        new = rename(name, RULES)
        if ".attn.qkv." in new:
            kind = new.rsplit(".", 1)[1]
            for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                converted[new.replace(f".attn.qkv.{kind}", f".attention.self.{part}.{kind}")] = chunk.clone()
        else:
            converted[new] = value
    return converted


def convert_clap_checkpoint(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> ClapAudioModelWithProjection:
    """Reads an original LAION-CLAP checkpoint (weights only) and returns the audio model with its projection.

    With `out_dir`, also saves it and a matching `ClapFeatureExtractor` there.
    """
    state = load_foreign_checkpoint(checkpoint)
    config = clap_audio_config_for(state)
    model = ClapAudioModelWithProjection(config).eval()
    load_converted(model, convert_clap_state_dict(state), str(checkpoint))
    if out_dir is not None:
        # The package's 48 kHz, 10 s, 64-mel front end; "fusion" clips longer than 10 s into 4 views.
        extractor = ClapFeatureExtractor(
            feature_size=config.num_mel_bins, truncation="fusion" if config.enable_fusion else "rand_trunc"
        )
        save_converted(model, extractor, out_dir)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="the laion-clap package's .pt file (HTSAT, fusion or not)")
    parser.add_argument("--out", required=True, type=Path, help="new folder for the transformers model")
    args = parser.parse_args(argv)
    model = convert_clap_checkpoint(args.checkpoint, args.out)
    print(f"converted {args.checkpoint} (fusion: {model.config.enable_fusion}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
