"""Random stand-ins for the pretrained parts, saved as local folders in exactly the files the Hub serves.

`c3llm build --llm DIR --codec DIR ...` then runs the same `from_pretrained` code paths as with `google/gemma-2b`,
`facebook/encodec_24khz`, `laion/clap-htsat-unfused` and a CLIP checkpoint, offline. Used by the tests (tiny sizes)
and the loading benchmark (a larger backbone).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    EncodecFeatureExtractor,
    EncodecModel,
    GemmaConfig,
    GemmaForCausalLM,
)

from conversion.build_c3llm import tiny_config, tiny_tokenizer


def save_standin_parts(
    root: str | os.PathLike, seed: int = 0, llm_overrides: dict | None = None
) -> dict[str, Path]:
    """Saves random Gemma (+ tokenizer), EnCodec, full CLAP and full CLIP checkpoints under `root`.

    Returns the folders by part name (`llm`, `codec`, `audio_encoder`, `vision_encoder`). `llm_overrides` changes the
    Gemma config (e.g. a wider, deeper backbone for benchmarks).
    """
    root = Path(root)
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    sizes = tiny_config(len(tokenizer))
    text = sizes.text_config.to_dict()
    text.update({"vocab_size": len(tokenizer), **(llm_overrides or {})})
    for key in ("model_type", "transformers_version", "architectures", "dtype"):
        text.pop(key, None)
    parts = {name: root / name for name in ("llm", "codec", "audio_encoder", "vision_encoder")}

    GemmaForCausalLM(GemmaConfig(**text)).save_pretrained(parts["llm"])
    tokenizer.save_pretrained(parts["llm"])

    codec = sizes.codec_config
    EncodecModel(codec).save_pretrained(parts["codec"])
    EncodecFeatureExtractor(feature_size=codec.audio_channels, sampling_rate=codec.sampling_rate).save_pretrained(
        parts["codec"]
    )

    # The Hub's laion/clap-htsat-unfused is a whole ClapModel (text side included) with a ClapFeatureExtractor.
    audio = sizes.audio_config.to_dict()
    clap_text = ClapTextConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, projection_dim=audio["projection_dim"])
    ClapModel(ClapConfig(text_config=clap_text.to_dict(), audio_config=audio,
                         projection_dim=audio["projection_dim"])).save_pretrained(parts["audio_encoder"])
    ClapFeatureExtractor(feature_size=audio["num_mel_bins"], sampling_rate=16000, hop_length=160, max_length_s=2,
                         fft_window_size=400, frequency_min=50, frequency_max=8000,
                         truncation="rand_trunc").save_pretrained(parts["audio_encoder"])

    # CLIP checkpoints on the Hub are whole CLIPModels with a CLIPImageProcessor.
    vision = sizes.vision_config.to_dict()
    clip_text = CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, max_position_embeddings=16,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2)
    CLIPModel(CLIPConfig(text_config=clip_text.to_dict(), vision_config=vision, projection_dim=16)).save_pretrained(
        parts["vision_encoder"]
    )
    size = vision["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        parts["vision_encoder"]
    )
    return parts
