"""Assemble a C3LLM model folder: extend the tokenizer, build the model and processor, save them atomically.

`build_tiny` makes a small random model offline (for trying things out and for tests). `assemble` takes any backbone
tokenizer, config and sub-processors, so building from pretrained parts plugs in here.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (
    ClapAudioConfig,
    ClapFeatureExtractor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    EncodecConfig,
    EncodecFeatureExtractor,
    GemmaConfig,
    GemmaTokenizer,
)

from modeling_c3llm import (
    SPECIAL_TOKEN_ROLES,
    C3LLMConfig,
    C3LLMForConditionalGeneration,
    C3LLMMaskedDecoderConfig,
    C3LLMNARConfig,
)
from processing_c3llm import C3LLMProcessor
from processing_c3llm.processing_c3llm import ACOUSTIC_TOKEN, SPECIAL_TOKENS

from .model_card import render_model_card


def extend_tokenizer(tokenizer, config: C3LLMConfig):
    """Adds one token per code of codebook 1 and the C3LLM special tokens, at the ids the config expects.

    The special tokens' strings come from the processor (`SPECIAL_TOKENS`, by role) and their order from the config
    (`SPECIAL_TOKEN_ROLES`): each is declared once, and this is where the two meet."""
    if set(SPECIAL_TOKENS) != set(SPECIAL_TOKEN_ROLES):
        raise ValueError(
            f"The processor's special tokens {sorted(SPECIAL_TOKENS)} and the config's roles "
            f"{sorted(SPECIAL_TOKEN_ROLES)} differ; the model and processor code do not belong together."
        )
    tokens = [ACOUSTIC_TOKEN.format(i) for i in range(config.codebook_size)]
    tokens += [SPECIAL_TOKENS[role] for role in SPECIAL_TOKEN_ROLES]
    tokenizer.add_tokens(tokens, special_tokens=True)
    first, last = tokenizer.convert_tokens_to_ids([tokens[0], tokens[-1]])
    if first != config.acoustic_token_offset or last != config.acoustic_token_offset + len(tokens) - 1:
        raise ValueError(
            f"The tokenizer placed the acoustic tokens at {first}..{last}, but the config expects them from "
            f"{config.acoustic_token_offset}; the backbone's vocab_size must equal the tokenizer's length."
        )
    tokenizer.model_max_length = config.text_config.max_position_embeddings
    tokenizer.padding_side = "left"
    return tokenizer


def make_processor(config: C3LLMConfig, tokenizer, feature_extractor, codec_feature_extractor, image_processor):
    """A processor whose placeholder counts and sizes match `config`."""
    return C3LLMProcessor(
        tokenizer,
        feature_extractor,
        codec_feature_extractor,
        image_processor,
        num_audio_tokens=config.num_audio_tokens,
        num_image_tokens=config.num_image_tokens,
        video_fps=config.video_fps,
        video_num_frames=config.video_num_frames,
        max_video_seconds=config.max_generation_seconds,
        video_feature_size=config.video_feature_size,
        num_codebooks=config.num_codebooks,
        codebook_size=config.codebook_size,
    )


@contextmanager
def atomic_folder(out_dir: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """The one writer of folders (files: `processing_c3llm.media_c3llm.atomic_path`). Yields a sibling temp folder
    to write into; on success it becomes `out_dir` in one rename, on any error it is removed, so readers never see a
    half-written folder. A non-empty `out_dir` is an error, unless `replace`: then the old folder is swapped out in the
    same way and removed (and put back if the swap fails)."""
    out_dir = Path(out_dir)
    if not replace and out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder or remove it first.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    old = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes the folder private; the result should be an ordinary folder
        yield staging
        if replace and out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent)) / out_dir.name
            os.replace(out_dir, old)
        elif out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not out_dir.exists():
            os.replace(old, out_dir)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)


def save_folder(
    model: C3LLMForConditionalGeneration,
    processor: C3LLMProcessor,
    out_dir: str | os.PathLike,
    max_shard_size: str | int = "5GB",
) -> Path:
    """Saves model (safetensors, sharded above `max_shard_size`), processor and model card into `out_dir` atomically."""

    with atomic_folder(out_dir) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        processor.save_pretrained(staging)
        render_model_card(model.config).save(staging / "README.md")
    return Path(out_dir)


# The parts the paper uses, as the Hub serves them.
DEFAULT_PARTS = {
    "llm": "google/gemma-2b",
    "codec": "facebook/encodec_24khz",
    "audio_encoder": "laion/clap-htsat-unfused",
    "vision_encoder": "openai/clip-vit-base-patch32",
}
# Modules C3LLM adds on top of the pretrained parts; initialised fresh.
NEW_MODULES = ("audio_projector", "video_projector", "image_projector", "nar_head")


def pad_tokenizer_to(tokenizer, vocab_size: int):
    """Fills the gap when a backbone's embedding matrix is larger than its tokenizer (rows kept for alignment)."""
    missing = vocab_size - len(tokenizer)
    if missing < 0:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the LLM's vocab_size is {vocab_size}; they must come "
            "from the same checkpoint."
        )
    if missing:
        tokenizer.add_tokens([f"<|c3llm_unused_{i}|>" for i in range(missing)], special_tokens=True)
    return tokenizer


def _load_part(module_type, source: str, config, dtype, name: str):
    try:
        return module_type.from_pretrained(source, config=config, dtype=dtype)
    except OSError as e:
        raise ValueError(
            f"Could not load the {name} from {source!r}: {e}. Give a Hub id (with network access, or cached) or a "
            "folder holding config.json and safetensors weights."
        ) from e


def assemble_pretrained(
    llm: str = DEFAULT_PARTS["llm"],
    codec: str = DEFAULT_PARTS["codec"],
    audio_encoder: str = DEFAULT_PARTS["audio_encoder"],
    vision_encoder: str = DEFAULT_PARTS["vision_encoder"],
    dtype: torch.dtype | None = None,
    seed: int = 0,
    **config_kwargs,
) -> tuple[C3LLMForConditionalGeneration, C3LLMProcessor]:
    """Builds C3LLM from pretrained parts (Hub ids or local folders).

    The LLM's tokenizer is extended with the acoustic and marker tokens and its embeddings resized; the new rows, the
    projectors and the NAR head are initialised fresh (as in `assemble`), everything else keeps its pretrained weights.
    Each part is loaded once into the final model (the rest of the skeleton lives on the meta device), so assembling
    never holds two copies of the weights. `config_kwargs` go to `C3LLMConfig` (e.g. `num_codebooks`, `nar_config`).
    """
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoImageProcessor,
        AutoTokenizer,
        ClapAudioConfig,
        CLIPVisionConfig,
    )

    def load(factory, source, name):
        try:
            return factory.from_pretrained(source)
        except OSError as e:
            raise ValueError(f"Could not load the {name} from {source!r}: {e}") from e

    tokenizer = load(AutoTokenizer, llm, "LLM tokenizer")
    text_config = load(AutoConfig, llm, "LLM config")
    pad_tokenizer_to(tokenizer, text_config.vocab_size)
    audio_config = load(ClapAudioConfig, audio_encoder, "audio encoder config")  # the audio side of a ClapConfig too
    vision_config = load(CLIPVisionConfig, vision_encoder, "vision encoder config")  # the vision side of a CLIPConfig
    config = C3LLMConfig(
        text_config=text_config,
        codec_config=load(AutoConfig, codec, "codec config"),
        audio_config=audio_config,
        vision_config=vision_config,
        **config_kwargs,
    )
    tokenizer = extend_tokenizer(tokenizer, config)

    with torch.device("meta"):
        model = C3LLMForConditionalGeneration(config)
    language_model = _load_part(type(model.language_model), llm, None, dtype, "LLM")  # its own, unextended config
    language_model.resize_token_embeddings(config.text_config.vocab_size, mean_resizing=False)
    model.language_model = language_model
    model.config.text_config = language_model.config
    for name, source in (("codec", codec), ("audio_encoder", audio_encoder), ("vision_encoder", vision_encoder)):
        part = getattr(model, name)
        setattr(model, name, _load_part(type(part), source, part.config, dtype, name.replace("_", " ")))
    torch.manual_seed(seed)
    parameter_dtype = dtype or language_model.dtype
    for name in NEW_MODULES:
        module = getattr(model, name)
        if module is None:
            continue
        module.to_empty(device="cpu")
        for sub in module.modules():
            model._init_weights(sub)
        module.to(parameter_dtype)
    model.freeze_encoders()
    init_new_token_rows(model)
    processor = make_processor(
        config,
        tokenizer,
        load(AutoFeatureExtractor, audio_encoder, "audio feature extractor"),
        load(AutoFeatureExtractor, codec, "codec feature extractor"),
        load(AutoImageProcessor, vision_encoder, "image processor"),
    )
    return model.eval(), processor


def assemble(config: C3LLMConfig, tokenizer, feature_extractor, codec_feature_extractor, image_processor, seed: int = 0):
    """Builds a randomly initialised model (new embedding rows: near the mean of the text rows) and its processor."""
    tokenizer = extend_tokenizer(tokenizer, config)
    torch.manual_seed(seed)
    model = C3LLMForConditionalGeneration(config)
    init_new_token_rows(model)
    init_codebooks(model.codec, seed)
    processor = make_processor(config, tokenizer, feature_extractor, codec_feature_extractor, image_processor)
    return model.eval(), processor


@torch.no_grad()
def init_codebooks(codec, seed: int = 0) -> None:
    """Draws a random codec's codebook entries from a unit normal. transformers initialises EnCodec's codebooks to
    zeros, so a random codec would decode every code to the same audio; with these, the random model's audio depends
    on its codes (and sampling seed) as a trained codec's does. Its own generator leaves torch's global one as the
    rest of the build left it."""
    from transformers.models.encodec.modeling_encodec import EncodecEuclideanCodebook

    generator = torch.Generator().manual_seed(seed)
    for module in codec.modules():
        if isinstance(module, EncodecEuclideanCodebook):
            module.embed.copy_(torch.randn(module.embed.shape, generator=generator))
            module.embed_avg.copy_(module.embed)


@torch.no_grad()
def init_new_token_rows(model: C3LLMForConditionalGeneration, noise: float = 0.1) -> None:
    """Initialises the acoustic and special token rows at the mean of the text rows, plus a little noise.

    The noise (`noise` times the per-dimension std of the text rows) keeps the new tokens distinguishable, so the
    LLM's first predictions are not exact ties, while every new row stays close to the mean.
    """
    offset = model.config.acoustic_token_offset
    for embeddings in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
        text_rows = embeddings.weight[:offset]
        new_rows = embeddings.weight[offset:]
        new_rows.copy_(text_rows.mean(0) + noise * text_rows.std(0) * torch.randn_like(new_rows))


def tiny_tokenizer(words: tuple[str, ...] = (), vocab_size: int | None = None) -> GemmaTokenizer:
    """A Gemma BPE tokenizer built in-process (no download): characters, plus whole-word tokens for `words`.

    With `vocab_size` (e.g. Gemma's 256,000), it is filled up with word-start pieces ("▁a", "▁ab", "▁abc", ...,
    shortest first), each reached by one merge, so text splits into a few long tokens as with a real vocabulary."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    chars = ["▁"] + list(string.ascii_lowercase + string.ascii_uppercase + string.digits + ".,!?'-:;")
    vocab = {token: i for i, token in enumerate(specials + chars)}
    merges = []

    def add(piece: str, char: str) -> None:
        if piece + char not in vocab:
            vocab[piece + char] = len(vocab)
            merges.append((piece, char))

    for word in words:  # "▁high" is reached by merging "▁"+"h", "▁h"+"i", ...
        piece = "▁"
        for char in word:
            add(piece, char)
            piece += char
    if vocab_size is not None:
        if vocab_size < len(vocab):
            raise ValueError(f"vocab_size {vocab_size} is below the {len(vocab)} characters and words' tokens.")
        pieces = ["▁"]  # breadth first: every piece's prefix exists before it
        for piece in pieces:
            for char in string.ascii_lowercase:
                if len(vocab) == vocab_size:
                    return GemmaTokenizer(vocab=vocab, merges=merges)
                add(piece, char)
                pieces.append(piece + char)
    return GemmaTokenizer(vocab=vocab, merges=merges)


def tiny_config(
    text_vocab_size: int, num_codebooks: int = 2, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
    intermediate_size: int | None = None, max_position_embeddings: int = 1024,
    codec_config: EncodecConfig | dict | None = None, video_fps: float = 5.0, video_num_frames: int = 10,
    max_audio_seconds: float = 2.0, nar_num_layers: int = 2, masked_num_layers: int | None = None,
    nar_attention_window: int | None = None,
) -> C3LLMConfig:  # fmt: skip
    """A small but complete configuration: every part is real, only narrow and shallow. The defaults are the tiny
    random model of `c3llm build --tiny`; the demo widens the LLM and plugs in its trained codec. The NAR head has
    the LLM's width and heads and `nar_num_layers` layers, and so has the masked decoder of `decoding="masked"` with
    `masked_num_layers` layers (none by default); the LLM's MLP is `intermediate_size` wide (default twice the
    width)."""
    text = GemmaConfig(
        vocab_size=text_vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=1,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    if codec_config is None:
        codec_config = EncodecConfig(hidden_size=16, num_filters=4, num_lstm_layers=1, codebook_size=1024, codebook_dim=16)
    audio = ClapAudioConfig(
        hidden_size=32,
        patch_embeds_hidden_size=16,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        window_size=4,
        spec_size=64,
        patch_size=4,
        patch_stride=[4, 4],
        num_mel_bins=16,
        projection_dim=16,
        projection_hidden_size=32,
        enable_fusion=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    sizes = {"hidden_size": hidden_size, "num_attention_heads": num_heads, "intermediate_size": 2 * hidden_size,
             "dropout": 0.0}  # fmt: skip
    nar = C3LLMNARConfig(num_hidden_layers=nar_num_layers, attention_window=nar_attention_window, **sizes)
    masked = None if masked_num_layers is None else C3LLMMaskedDecoderConfig(num_hidden_layers=masked_num_layers, **sizes)
    return C3LLMConfig(
        text_config=text, codec_config=codec_config, audio_config=audio, vision_config=vision, nar_config=nar,
        masked_decoder_config=masked, num_codebooks=num_codebooks, video_fps=video_fps, video_num_frames=video_num_frames,
        max_audio_seconds=max_audio_seconds,
    )  # fmt: skip


def tiny_processor_parts(config: C3LLMConfig) -> tuple[ClapFeatureExtractor, EncodecFeatureExtractor, CLIPImageProcessorPil]:
    """The CLAP feature extractor, codec feature extractor and image processor that fit `tiny_config`."""
    feature_extractor = ClapFeatureExtractor(
        feature_size=16,
        sampling_rate=16000,
        hop_length=160,
        max_length_s=2,
        fft_window_size=400,
        frequency_min=50,
        frequency_max=8000,
        truncation="rand_trunc",
    )
    codec_feature_extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=config.sampling_rate)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return feature_extractor, codec_feature_extractor, image_processor


def build_tiny(
    out_dir: str | os.PathLike | None = None, seed: int = 0, num_codebooks: int = 2, words: tuple[str, ...] = (),
    **config_kwargs,
):  # fmt: skip
    """Builds a tiny random model and processor (`tiny_config(..., **config_kwargs)`, a tokenizer with whole-word
    tokens for `words`); saves them to `out_dir` when given."""
    tokenizer = tiny_tokenizer(words)
    config = tiny_config(len(tokenizer), num_codebooks=num_codebooks, **config_kwargs)
    model, processor = assemble(config, tokenizer, *tiny_processor_parts(config), seed=seed)
    if out_dir is not None:
        save_folder(model, processor, out_dir)
    return model, processor
