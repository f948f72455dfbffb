"""Random stand-ins for the pretrained parts, saved as local folders in exactly the files the Hub serves.

`c3llm build --llm DIR --codec DIR ...` then runs the same `from_pretrained` code paths as with `google/gemma-2b`,
`facebook/encodec_24khz`, `laion/clap-htsat-unfused` and `openai/clip-vit-base-patch32`, offline. Two sizes:

* `tiny`: narrow parts for the tests;
* `full`: the real configurations (Gemma-2B: 18 layers, hidden 2048, multi-query attention, 256,000 tokens, bf16 in
  5 GB shards; EnCodec 24 kHz, CLAP HTSAT-unfused and CLIP ViT-B/32 in fp32, both sides of CLAP and CLIP as the Hub
  has them), for `benchmarks/bench_scale.py`. Built once into a cache folder (`standin_cache`) and reused:

    c3llm standins --size full          # prints the folders, their disk size and the `c3llm build` line
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import (
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    EncodecConfig,
    EncodecFeatureExtractor,
    EncodecModel,
    GemmaConfig,
    GemmaForCausalLM,
)

from conversion.build_c3llm import atomic_folder, tiny_config, tiny_tokenizer

PARTS = ("llm", "codec", "audio_encoder", "vision_encoder")
# google/gemma-2b's config.json (2.51 B parameters; its weights are bf16).
GEMMA_2B = {"vocab_size": 256000, "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
            "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}  # fmt: skip
# laion/clap-htsat-unfused's preprocessor_config.json (transformers' defaults, with random-crop truncation).
CLAP_FEATURES = {"feature_size": 64, "sampling_rate": 48000, "hop_length": 480, "max_length_s": 10,
                 "fft_window_size": 1024, "frequency_min": 50, "frequency_max": 14000, "truncation": "rand_trunc"}  # fmt: skip
CACHE_ENV = "C3LLM_STANDINS"  # where `standin_cache` keeps the built parts (default: ~/.cache/c3llm/standins)


def full_size_configs() -> dict[str, object]:
    """The Hub checkpoints' configurations. EnCodec's, CLAP's (HTSAT-unfused: audio side and RoBERTa text side) and
    CLIP's (ViT-B/32 vision side, 12-layer text side) are transformers' defaults, which were taken from them."""
    return {"llm": GemmaConfig(**GEMMA_2B), "codec": EncodecConfig(), "audio_encoder": ClapConfig(),
            "vision_encoder": CLIPConfig()}  # fmt: skip


def _tiny_configs(vocab_size: int, llm_overrides: dict | None) -> dict[str, object]:
    sizes = tiny_config(vocab_size)
    text = sizes.text_config.to_dict()
    text.update({"vocab_size": vocab_size, **(llm_overrides or {})})
    for key in ("model_type", "transformers_version", "architectures", "dtype"):
        text.pop(key, None)
    audio, vision = sizes.audio_config.to_dict(), sizes.vision_config.to_dict()
    clap_text = ClapTextConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, projection_dim=audio["projection_dim"])  # fmt: skip
    clip_text = CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                               eos_token_id=2)  # fmt: skip
    return {
        "llm": GemmaConfig(**text),
        "codec": sizes.codec_config,
        "audio_encoder": ClapConfig(text_config=clap_text.to_dict(), audio_config=audio,
                                    projection_dim=audio["projection_dim"]),
        "vision_encoder": CLIPConfig(text_config=clip_text.to_dict(), vision_config=vision, projection_dim=16),
    }


def save_standin_parts(
    root: str | os.PathLike, seed: int = 0, llm_overrides: dict | None = None, size: str = "tiny"
) -> dict[str, Path]:
    """Saves random Gemma (+ tokenizer), EnCodec, full CLAP and full CLIP checkpoints under `root`.

    Returns the folders by part name (`llm`, `codec`, `audio_encoder`, `vision_encoder`). `size` is `tiny` or
    `full` (see the module docstring); `llm_overrides` changes the tiny Gemma config (e.g. a wider backbone).
    """
    # The class the Hub's preprocessor_config.json names (imported here: without torchvision, transformers warns that it
    # falls back to the PIL processor, which is not worth a warning on every `c3llm` command).
    from transformers import CLIPImageProcessor

    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}.")
    root = Path(root)
    torch.manual_seed(seed)
    if size == "full":
        tokenizer = tiny_tokenizer(vocab_size=GEMMA_2B["vocab_size"])
        configs, llm_dtype, clap_features = full_size_configs(), torch.bfloat16, CLAP_FEATURES
    else:
        tokenizer = tiny_tokenizer()
        configs, llm_dtype = _tiny_configs(len(tokenizer), llm_overrides), torch.float32
        clap_features = {"feature_size": configs["audio_encoder"].audio_config.num_mel_bins, "sampling_rate": 16000,
                         "hop_length": 160, "max_length_s": 2, "fft_window_size": 400, "frequency_min": 50,
                         "frequency_max": 8000, "truncation": "rand_trunc"}  # fmt: skip
    image_size = configs["vision_encoder"].vision_config.image_size
    parts = {name: root / name for name in PARTS}

    # The LLM is initialised directly in its Hub dtype (Gemma-2B: bf16), so the full size never holds an fp32 copy.
    llm = GemmaForCausalLM._from_config(configs["llm"], dtype=llm_dtype)
    llm.save_pretrained(parts["llm"], max_shard_size="5GB")  # the Hub's shard size
    del llm
    tokenizer.save_pretrained(parts["llm"])

    codec = configs["codec"]
    EncodecModel(codec).save_pretrained(parts["codec"])
    EncodecFeatureExtractor(feature_size=codec.audio_channels, sampling_rate=codec.sampling_rate).save_pretrained(
        parts["codec"]
    )
    # laion/clap-htsat-unfused and the CLIP checkpoints are whole models (both sides) with their preprocessors.
    ClapModel(configs["audio_encoder"]).save_pretrained(parts["audio_encoder"])
    ClapFeatureExtractor(**clap_features).save_pretrained(parts["audio_encoder"])
    CLIPModel(configs["vision_encoder"]).save_pretrained(parts["vision_encoder"])
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(parts["vision_encoder"])
    return parts


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "c3llm" / "standins"


def folder_bytes(folder: str | os.PathLike) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def standin_cache(size: str = "full", cache_dir: str | os.PathLike | None = None, seed: int = 0) -> dict[str, Path]:
    """The stand-in parts of `size`, built once under `cache_dir` and reused.

    The folder's name carries a digest of the configurations and seed, so a change to either builds anew; it appears
    only when complete (written under a temporary name and renamed), so a build killed midway is never reused."""
    configs = full_size_configs() if size == "full" else _tiny_configs(len(tiny_tokenizer()), None)
    description = json.dumps({"size": size, "seed": seed, **{name: config.to_diff_dict()
                                                             for name, config in configs.items()}}, sort_keys=True)  # fmt: skip
    folder = Path(cache_dir or default_cache_dir()) / f"{size}-{hashlib.sha256(description.encode()).hexdigest()[:12]}"
    if not folder.is_dir():
        with atomic_folder(folder) as staging:
            save_standin_parts(staging, seed=seed, size=size)
            (staging / "standins.json").write_text(description + "\n")
    return {name: folder / name for name in PARTS}


# ---- command line ---------------------------------------------------------------------------------------------------
def cmd_standins(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import time

    start = time.perf_counter()
    parts = standin_cache(args.size, args.cache, seed=args.seed)
    seconds = time.perf_counter() - start
    for name, folder in parts.items():
        print(f"{name:<15} {folder}  ({folder_bytes(folder) / 1e9:.2f} GB)")
    root = parts["llm"].parent
    print(f"{args.size} stand-ins: {folder_bytes(root) / 1e9:.2f} GB in {root} ({seconds:.1f} s)")
    print(f"assemble: c3llm build --llm {parts['llm']} --codec {parts['codec']} --audio-encoder "
          f"{parts['audio_encoder']} --vision-encoder {parts['vision_encoder']} --dtype bfloat16 --out DIR")
    return 0


def add_standins_command(commands, formatter) -> None:
    standins = commands.add_parser(
        "standins", help="random stand-ins of the pretrained parts (offline, cached)", formatter_class=formatter,
        description="Build (once) and print random-weight stand-ins of Gemma-2B with a 256,000-token tokenizer,\n"
        "EnCodec 24 kHz, CLAP HTSAT-unfused and CLIP ViT-B/32, saved as the Hub saves them, for building and\n"
        "benchmarking C3LLM at full size without downloading anything. No weights are trained: outputs are noise.",
        epilog="examples:\n  c3llm standins --size full              (then run the `c3llm build ...` line it prints)\n"
        "  c3llm standins --size full --cache /scratch/standins",
    )
    standins.add_argument("--size", choices=["full", "tiny"], default="full",
                          help="full: the real configurations (about 6 GB on disk); tiny: the tests' narrow parts")
    standins.add_argument("--cache", metavar="DIR",
                          help=f"cache folder (default: ${CACHE_ENV}, else ~/.cache/c3llm/standins)")
    standins.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    standins.set_defaults(handler=cmd_standins, subparser=standins)
