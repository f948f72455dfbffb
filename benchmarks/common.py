"""What the benchmarks share: the backbone-size flags and the C3LLM model they build at that size."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
from transformers import GemmaConfig

from conversion.build_c3llm import init_new_token_rows, tiny_config
from modeling_c3llm import C3LLMConfig, C3LLMForConditionalGeneration, C3LLMMaskedDecoderConfig


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_argument_group("LLM backbone size (Gemma); the codec, CLAP, vision encoder and NAR stay tiny")
    size.add_argument("--hidden-size", type=int, default=512, help="Gemma hidden size.")
    size.add_argument("--layers", type=int, default=8, help="Number of Gemma decoder layers.")
    size.add_argument("--heads", type=int, default=8, help="Number of attention (query) heads.")
    size.add_argument("--kv-heads", type=int, default=1, help="Number of key/value heads (1 = multi-query attention).")
    size.add_argument("--head-dim", type=int, default=64, help="Dimension of each attention head.")
    size.add_argument("--intermediate", type=int, default=2048, help="Gemma MLP intermediate size.")
    size.add_argument(
        "--text-vocab",
        type=int,
        default=32000,
        help="Text vocabulary of the backbone before C3LLM extends it by codebook_size + 9 special tokens.",
    )


def build_config(args: argparse.Namespace, max_tokens: int, masked_layers: int | None = None) -> C3LLMConfig:
    """The tiny config of conversion.build_c3llm with the text backbone replaced by one of the requested size;
    `max_tokens` is the longest sequence (prompt and audio tokens) the benchmark runs. With `masked_layers`, the model
    also gets the masked decoder of `generate(decoding="masked")`, sized as in the demo (`tiny_config`): the
    backbone's hidden size, heads and MLP width, `masked_layers` layers (the demo's rule is half the LLM's)."""
    tiny = tiny_config(text_vocab_size=args.text_vocab)
    text = GemmaConfig(
        vocab_size=args.text_vocab,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim,
        max_position_embeddings=max(2048, max_tokens),
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return C3LLMConfig(
        text_config=text,
        codec_config=tiny.codec_config,
        audio_config=tiny.audio_config,
        vision_config=tiny.vision_config,
        nar_config=tiny.nar_config,
        masked_decoder_config=None if masked_layers is None else C3LLMMaskedDecoderConfig(
            hidden_size=args.hidden_size, num_hidden_layers=masked_layers, num_attention_heads=args.heads,
            intermediate_size=args.intermediate, dropout=0.0,
        ),
        num_codebooks=tiny.num_codebooks,
        video_fps=tiny.video_fps,
        video_num_frames=tiny.video_num_frames,
        # generate() accepts audio_length_in_s up to 10 * max_audio_seconds
        max_audio_seconds=max(tiny.max_audio_seconds, max_tokens / tiny.frame_rate),
    )


def build_ours(config: C3LLMConfig, seed: int) -> C3LLMForConditionalGeneration:
    torch.manual_seed(seed)
    model = C3LLMForConditionalGeneration(config)
    init_new_token_rows(model)  # as conversion.build_c3llm.assemble does
    return model


def load_average() -> float | None:
    """The 1-minute load average (above --threads means other work shared the CPUs), where the OS reports one."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def backbone_summary(args: argparse.Namespace, config: C3LLMConfig) -> dict:
    """The sizes every benchmark's JSON reports: the backbone flags, the extended vocabulary and the NAR head."""
    nar = config.nar_config
    return {
        "hidden_size": args.hidden_size,
        "layers": args.layers,
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "intermediate": args.intermediate,
        "vocab_size": config.text_config.vocab_size,
        "acoustic_token_offset": config.acoustic_token_offset,
        "num_codebooks": config.num_codebooks,
        "seed": args.seed,
        "nar": {
            "hidden_size": nar.hidden_size,
            "num_hidden_layers": nar.num_hidden_layers,
            "num_attention_heads": nar.num_attention_heads,
            "intermediate_size": nar.intermediate_size,
        },
    }


def environment(attn_implementation, load_before: float | None, load_after: float | None, **versions: str) -> dict:
    """Library versions, threads and the load average around the timed part."""
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        **versions,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "attn_implementation": attn_implementation,
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": load_after,
    }


def emit(summary: dict, json_out: Path | None) -> None:
    """Prints the final JSON line and, with `json_out`, writes it there atomically."""
    line = json.dumps(summary)
    if json_out is not None:
        from processing_c3llm.media_c3llm import write_text

        write_text(json_out, line + "\n")
    print(line, flush=True)
