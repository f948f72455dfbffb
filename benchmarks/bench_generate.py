#!/usr/bin/env python
"""Benchmark C3LLM text-to-audio generation, autoregressive and masked, against a bare Gemma and MusicGen.

What is compared
----------------
Part 1, autoregressive decoding (the paper's), at ``--tokens`` coarse tokens (2 s of audio by default):

* ours: ``C3LLMForConditionalGeneration.generate`` on a text-to-audio prompt (ends with ``<Audio>``), asking for
  ``--tokens`` coarse acoustic tokens (``audio_length_in_s = tokens / frame_rate``), sampling with top-k 50. The call
  includes the LLM stage (prompt embedding, constrained sampling of the coarse codes) and the NAR + codec stage
  (finer codebooks, EnCodec decoding).
* ours NAR + codec: ``generate_fine_codes`` + ``decode_audio`` timed on their own, on codes of the same length, so
  that the LLM stage can be isolated: ``LLM stage = full - NAR/codec``.
* bare: ``GemmaForCausalLM.generate`` with exactly the same text config (same extended vocabulary, so the logits
  have the same width) and the same weights (the C3LLM's ``language_model`` state dict), forced to produce the same
  number of new tokens.
* musicgen: transformers' ``MusicgenForConditionalGeneration`` at equal size: its decoder has the backbone's hidden
  size, layers, heads and MLP width and ours' number of codebooks (1024 codes each, one head per codebook, delay
  pattern), a 2-layer T5 text encoder and ours' EnCodec as audio encoder; text prompt of the same length, no
  classifier-free guidance, the same number of audio frames (``--tokens``), decoded to a waveform. The ratio says what
  one LLM with an extended text vocabulary (C3LLM) costs against a dedicated audio decoder with small per-codebook
  heads.

Part 2, masked decoding (``generate(decoding="masked", decoding_steps=N)``), for each of ``--audio-seconds`` (2 and
10 s), ``--decoding-steps`` (8, 16, 32) and ``--batch-sizes`` (1, 4): one LLM prefill of the prompt, N parallel
passes of the masked decoder over codebook 1 of every frame (75 frames per second of audio), one pass per finer
codebook, EnCodec decoding.

* The masked decoder is sized as in our demo: the LLM's hidden size, heads and MLP width and half its layers
  (the demo: 2 layers beside a 4-layer LLM; ``--masked-layers``; with the default backbone 512 wide, 4 layers,
  8 heads, MLP 2048).
* musicgen (masked size): a second MusicGen whose decoder has the masked decoder's own layers, width, heads and MLP
  width (the same T5, codebooks and EnCodec config as above). Real MusicGen runs at 50 frames per second (32 kHz
  EnCodec), so for S seconds of audio it generates ``50 * S`` frames (``--musicgen-frame-rate``), its real workload;
  our codec config (hop 320) turns them into ``50 * S * 320`` samples, which the sanity check expects.
  ``ratio_masked_over_musicgen_per_audio_second`` = (masked seconds per audio second) / (MusicGen seconds per audio
  second). Both sides sample with ``do_sample=True, top_k=50`` and no guidance (MusicGen ``guidance_scale=1.0``).
* AR/bare rows stay at ``--tokens`` (2 s): at 10 s and batch 4 the autoregressive rows alone would take several more
  minutes on 2 cores; the masked rows at the same length and batch also give masked/AR.

Also measured: parameter counts of every side; multiply-adds per second of audio of each mode at batch 1, counted
with ``torch.utils.flop_counter.FlopCounterMode`` on one call (MACs = FLOPs / 2; the CPU flash-attention and
mkldnn LSTM kernels are added to its registry); where the masked mode's time goes at the longest length, batch 1,
``--profile-steps`` steps (prefill, codebook-1 decoder passes, their sampling and re-masking, the finer-codebook
pass, EnCodec decoding, timed around ``prompt_states``/``masked_decoder``/``decode_audio``; and the top operators of
a ``torch.profiler`` run); and a projection onto one H100 SXM (989 TFLOP/s dense bf16, 3.35 TB/s) from the FLOPs,
bytes and kernels recorded per pass (see ``project_h100``; the counting is in ``pass_costs.py``).

Runs are interleaved (ours, NAR/codec, bare, then bare, ours, NAR/codec, ...; masked at each step count and
MusicGen, order reversed every other repeat) in one process after one warm-up each; the median over ``--repeats`` is
reported. Peak memory (peak RSS, ``ru_maxrss``) is measured in fresh subprocesses, one per side, because tracemalloc
does not see the allocations torch makes in C++.

Run from anywhere: ``python benchmarks/bench_generate.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from transformers import (  # noqa: E402
    EncodecConfig,
    GemmaForCausalLM,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)

from modeling_c3llm import C3LLMConfig, C3LLMForConditionalGeneration, C3LLMMaskedDecoderConfig  # noqa: E402

from common import (  # noqa: E402
    add_backbone_arguments,
    backbone_summary,
    build_config,
    build_ours,
    emit,
    environment,
    load_average,
)
from pass_costs import (  # noqa: E402
    flop_counter_mode,
    forward_pre_hook,
    group_passes,
    instance_wrapper,
    masked_openers,
    musicgen_openers,
    operator_category,
    project_h100,
    record_passes,
)


try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is optional: fall back to a plain iterator
    def tqdm(iterable, **_kwargs):
        return iterable


MEMORY_SIDES = ("imports", "ours", "bare")


# ---- argument parsing -------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Times C3LLM text-to-audio generation (full call, NAR+codec stage, LLM stage) against a bare "
            "GemmaForCausalLM of the same size and weights and against transformers' MusicGen at equal decoder size; "
            "times masked decoding (decoding='masked') at each --decoding-steps, --audio-seconds and batch size "
            "against a MusicGen of the masked decoder's size generating 50 frames per audio second; counts "
            "parameters and multiply-adds per audio second, profiles the masked mode, projects both onto one H100; "
            "measures the peak RSS of each AR side in a fresh subprocess. Prints tables and a final JSON line "
            "starting with {\"benchmark\": \"generate\"."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_backbone_arguments(parser)
    run = parser.add_argument_group("workload and measurement")
    run.add_argument(
        "--tokens",
        type=int,
        default=150,
        help="Coarse acoustic tokens to generate (new tokens for the bare model too); 75 tokens = 1 s of audio.",
    )
    run.add_argument(
        "--prompt-tokens",
        type=int,
        default=16,
        help="Prompt length: <bos>, random text ids below acoustic_token_offset, then <Audio>.",
    )
    run.add_argument(
        "--batch-sizes",
        type=str,
        default="1,4",
        help="Comma-separated batch sizes; one table row each (the same prompt length in every row, no padding).",
    )
    run.add_argument("--repeats", type=int, default=3, help="Timed repeats per side and batch size (median reported).")
    run.add_argument("--threads", type=int, default=2, help="torch.set_num_threads value (also used by the memory subprocesses).")
    run.add_argument("--seed", type=int, default=0, help="Seed for the weights, the prompt and the sampling.")
    run.add_argument(
        "--no-memory", action="store_true", help="Skip the peak-RSS subprocesses (timings and parameter counts only)."
    )
    masked = parser.add_argument_group("masked decoding (part 2) and its MusicGen at the masked decoder's size")
    masked.add_argument(
        "--audio-seconds",
        type=str,
        default="2,10",
        help="Comma-separated audio lengths in seconds for the masked and masked-size MusicGen rows; the longest is "
        "also the length of the profile and of the H100 projection.",
    )
    masked.add_argument(
        "--decoding-steps",
        type=str,
        default="8,16,32",
        help="Comma-separated decoding_steps (passes over codebook 1) of the masked rows.",
    )
    masked.add_argument(
        "--masked-layers",
        type=int,
        default=None,
        help="Layers of the masked decoder (default: half of --layers, at least 1, the demo's rule); it always has "
        "the backbone's hidden size, heads and MLP width, and so has the masked-size MusicGen's decoder.",
    )
    masked.add_argument(
        "--musicgen-frame-rate",
        type=int,
        default=50,
        help="Frames the masked-size MusicGen generates per second of audio (real MusicGen: 50; ours: 75).",
    )
    masked.add_argument(
        "--profile-steps",
        type=int,
        default=16,
        help="decoding_steps of the masked profile (batch 1, longest --audio-seconds).",
    )
    masked.add_argument(
        "--profile-top", type=int, default=12, help="Operators listed in the profile's top-operator table."
    )
    h100 = parser.add_argument_group("H100 projection (from FLOPs and bytes per pass; nothing runs on a GPU)")
    h100.add_argument("--peak-tflops", type=float, default=989.0, help="Dense bf16 peak of one H100 SXM in TFLOP/s.")
    h100.add_argument("--bandwidth-tbs", type=float, default=3.35, help="HBM bandwidth of one H100 SXM in TB/s.")
    h100.add_argument(
        "--flops-utilization",
        type=float,
        default=0.5,
        help="Share of --peak-tflops the matmuls reach in the 'realistic' projection (the 'roofline' one uses 1).",
    )
    h100.add_argument(
        "--bandwidth-utilization",
        type=float,
        default=0.8,
        help="Share of --bandwidth-tbs reached in the 'realistic' projection (the 'roofline' one uses 1).",
    )
    h100.add_argument(
        "--launch-us",
        type=float,
        default=5.0,
        help="Per-kernel launch overhead in microseconds added in the 'realistic' projection (no CUDA graphs, no "
        "overlap; the 'roofline' one adds none).",
    )
    run.add_argument(
        "--json-out",
        type=Path,
        default=None,
        help="Also write the final JSON object to this path (atomically: temp file + rename).",
    )
    # Internal: run one side in this (fresh) process and print its peak RSS as JSON.
    parser.add_argument("--memory-child", choices=MEMORY_SIDES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
        args.decoding_steps = [int(n) for n in str(args.decoding_steps).split(",") if n.strip()]
    except ValueError:
        parser.error("--batch-sizes and --decoding-steps must be comma-separated integers")
    try:
        args.audio_seconds = [float(x) for x in str(args.audio_seconds).split(",") if x.strip()]
    except ValueError:
        parser.error(f"--audio-seconds must be comma-separated numbers, got {args.audio_seconds!r}")
    if args.masked_layers is None:
        args.masked_layers = max(1, args.layers // 2)
    for name in ("hidden_size", "layers", "heads", "kv_heads", "head_dim", "intermediate", "text_vocab", "tokens",
                 "repeats", "threads", "masked_layers", "musicgen_frame_rate", "profile_steps", "profile_top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.decoding_steps or min(args.decoding_steps) < 1:
        parser.error("--decoding-steps must list positive integers")
    if not args.audio_seconds or min(args.audio_seconds) <= 0:
        parser.error("--audio-seconds must list positive lengths")
    if args.hidden_size % args.heads:
        parser.error("--hidden-size must be a multiple of --heads (the masked decoder has the backbone's heads)")
    for name in ("peak_tflops", "bandwidth_tbs", "flops_utilization", "bandwidth_utilization"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if args.launch_us < 0:
        parser.error("--launch-us must be >= 0")
    if args.prompt_tokens < 2:
        parser.error("--prompt-tokens must be >= 2 (<bos> and <Audio>)")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must list positive integers")
    if args.heads % args.kv_heads:
        parser.error("--heads must be a multiple of --kv-heads")
    return args


# ---- model building ---------------------------------------------------------------------------------------------
def build_bare(config: C3LLMConfig, seed: int, weights_from: C3LLMForConditionalGeneration | None = None):
    """GemmaForCausalLM with the C3LLM's (extended) text config; same weights when `weights_from` is given."""
    torch.manual_seed(seed)
    bare = GemmaForCausalLM(config.text_config)
    if weights_from is not None:
        bare.load_state_dict(weights_from.language_model.state_dict(), strict=True)
    else:
        with torch.no_grad():  # mimic init_new_token_rows so that both sides have identical structure
            weight = bare.get_input_embeddings().weight
            weight[config.acoustic_token_offset :] = weight[: config.acoustic_token_offset].mean(0, keepdim=True)
    return bare.eval()


def build_musicgen(
    config: C3LLMConfig, seed: int, sizes: C3LLMMaskedDecoderConfig | None = None, max_frames: int = 0
) -> MusicgenForConditionalGeneration:
    """MusicGen whose decoder has the backbone's size (or `sizes`' hidden size, layers, heads and MLP width) and
    ours' codebooks, with a small T5 and ours' EnCodec config; room for `max_frames` frames."""
    text = config.text_config
    if sizes is None:
        hidden, layers, heads, ffn = (text.hidden_size, text.num_hidden_layers, text.num_attention_heads,
                                      text.intermediate_size)  # fmt: skip
    else:
        hidden, layers, heads, ffn = (sizes.hidden_size, sizes.num_hidden_layers, sizes.num_attention_heads,
                                      sizes.intermediate_size)  # fmt: skip
    torch.manual_seed(seed)
    decoder = MusicgenDecoderConfig(
        vocab_size=config.codebook_size, num_codebooks=config.num_codebooks, hidden_size=hidden,
        num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn,
        max_position_embeddings=max(2048, max_frames + config.num_codebooks + 8), pad_token_id=config.codebook_size,
        bos_token_id=config.codebook_size, dropout=0.0,
    )  # fmt: skip
    encoder = T5Config(vocab_size=text.vocab_size, d_model=256, d_kv=32, d_ff=1024, num_layers=2, num_heads=8)
    audio = EncodecConfig(**config.codec_config.to_dict())
    musicgen = MusicgenConfig(text_encoder=encoder, audio_encoder=audio, decoder=decoder)
    return MusicgenForConditionalGeneration(musicgen).eval()


def bench_config(args: argparse.Namespace) -> C3LLMConfig:
    """`build_config` with the masked decoder (`--masked-layers`) and room for the longest AR and masked runs."""
    frame_rate = build_config(args, args.prompt_tokens + args.tokens + 8).frame_rate
    longest = max(args.tokens, math.ceil(max(args.audio_seconds) * frame_rate))
    return build_config(args, args.prompt_tokens + longest + 8, masked_layers=args.masked_layers)


def make_prompt(config: C3LLMConfig, batch: int, length: int, seed: int):
    """`<bos>`, random text ids in [3, acoustic_token_offset), `<Audio>`; no padding."""
    generator = torch.Generator().manual_seed(seed)
    bos = torch.full((batch, 1), config.text_config.bos_token_id, dtype=torch.long)
    text = torch.randint(3, config.acoustic_token_offset, (batch, length - 2), generator=generator)
    audio = torch.full((batch, 1), config.audio_start_token_id, dtype=torch.long)
    input_ids = torch.cat([bos, text, audio], dim=1)
    return input_ids, torch.ones_like(input_ids)


def count_params(module: torch.nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters())  # parameters() de-duplicates tied weights


def parameter_counts(
    model: C3LLMForConditionalGeneration,
    bare: torch.nn.Module,
    musicgen: MusicgenForConditionalGeneration,
    musicgen_small: MusicgenForConditionalGeneration,
) -> dict:
    """Parameters of every side; MusicGen's decoder counts its codebook embeddings and heads."""
    lm = model.language_model
    counts = {
        "ours_total": count_params(model),
        "ours_language_model": count_params(lm),
        "ours_language_model_embeddings": lm.get_input_embeddings().weight.numel(),
        "ours_codec": count_params(model.codec),
        "ours_audio_encoder": count_params(model.audio_encoder),
        "ours_vision_encoder": count_params(model.vision_encoder),
        "ours_projectors": sum(
            count_params(getattr(model, n)) for n in ("audio_projector", "video_projector", "image_projector")
        ),
        "ours_nar_head": count_params(model.nar_head),
        "ours_masked_decoder": count_params(model.masked_decoder),
        "bare_total": count_params(bare),
    }
    counts["ours_extra_over_bare"] = counts["ours_total"] - counts["bare_total"]
    counts["ours_extra_over_bare_without_masked_decoder"] = counts["ours_extra_over_bare"] - counts["ours_masked_decoder"]
    counts["tied_word_embeddings"] = bool(lm.get_output_embeddings().weight is lm.get_input_embeddings().weight)
    for name, side in (("musicgen", musicgen), ("musicgen_small", musicgen_small)):
        counts[f"{name}_total"] = count_params(side)
        counts[f"{name}_decoder"] = count_params(side.decoder)
        counts[f"{name}_text_encoder"] = count_params(side.text_encoder) + count_params(getattr(side, "enc_to_dec_proj", None))
        counts[f"{name}_codec"] = count_params(side.audio_encoder)
    return counts


# ---- timed calls --------------------------------------------------------------------------------------------------
def run_ours(model, input_ids, attention_mask, tokens: int, frame_rate: int, seed: int):
    torch.manual_seed(seed)
    start = time.perf_counter()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        audio_length_in_s=tokens / frame_rate,
        do_sample=True,
        top_k=50,
    )
    elapsed = time.perf_counter() - start
    new = out.sequences.shape[1] - input_ids.shape[1]
    if new != tokens:
        raise RuntimeError(f"ours generated {new} tokens, expected {tokens}")
    return elapsed, out


def run_nar_codec(model, out, input_ids, attention_mask):
    """The part of ours.generate after the LLM: NAR head (finer codebooks) + EnCodec decoding, on the same codes."""
    coarse = out.audio_codes[:, 0]
    frames_mask = coarse >= 0
    condition = model.get_multimodal_embeddings(input_ids)  # computed before the LLM in generate; not timed here
    start = time.perf_counter()
    with torch.no_grad():
        codes = model.generate_fine_codes(coarse.clamp(min=0), frames_mask, condition, attention_mask.bool())
        audio = model.decode_audio(codes, frames_mask)
    elapsed = time.perf_counter() - start
    del audio
    return elapsed


def run_bare(bare, input_ids, attention_mask, tokens: int, seed: int):
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        sequences = bare.generate(
            input_ids,
            attention_mask=attention_mask,
            min_new_tokens=tokens,
            max_new_tokens=tokens,
            do_sample=True,
            top_k=50,
        )
    elapsed = time.perf_counter() - start
    new = sequences.shape[1] - input_ids.shape[1]
    if new != tokens:
        raise RuntimeError(f"bare generated {new} tokens, expected {tokens}")
    return elapsed


def run_musicgen(musicgen, input_ids, attention_mask, frames: int, seed: int):
    """MusicGen text-to-audio for `frames` audio frames (its delay pattern takes num_codebooks - 1 more steps)."""
    torch.manual_seed(seed)
    steps = frames + musicgen.decoder.num_codebooks - 1
    start = time.perf_counter()
    with torch.no_grad():
        audio = musicgen.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True, top_k=50,
                                  guidance_scale=1.0, min_new_tokens=steps, max_new_tokens=steps)
    elapsed = time.perf_counter() - start
    expected = frames * musicgen.audio_encoder.config.hop_length
    if audio.shape[-1] != expected:
        raise RuntimeError(f"musicgen generated {audio.shape[-1]} samples, expected {expected}")
    return elapsed


def time_batch(model, bare, musicgen, config, args, batch: int) -> dict:
    input_ids, attention_mask = make_prompt(config, batch, args.prompt_tokens, args.seed)
    frame_rate = config.frame_rate
    # Warm-up (one call each): first-call allocations, lazy inits, kernel selection.
    _, out = run_ours(model, input_ids, attention_mask, args.tokens, frame_rate, args.seed)
    run_nar_codec(model, out, input_ids, attention_mask)
    run_bare(bare, input_ids, attention_mask, args.tokens, args.seed)
    text_ids = input_ids.clamp(max=config.acoustic_token_offset - 1)  # the same prompt length for MusicGen's T5
    run_musicgen(musicgen, text_ids, attention_mask, args.tokens, args.seed)

    full, nar, llm, plain, music = [], [], [], [], []
    for r in tqdm(range(args.repeats), desc=f"batch {batch}", unit="repeat", file=sys.stderr, leave=False):
        seed = args.seed + 1 + r
        if r % 2 == 1:  # alternate which side goes first, so that neither always runs right after the other
            t_bare = run_bare(bare, input_ids, attention_mask, args.tokens, seed)
        t_full, out = run_ours(model, input_ids, attention_mask, args.tokens, frame_rate, seed)
        t_nar = run_nar_codec(model, out, input_ids, attention_mask)
        if r % 2 == 0:
            t_bare = run_bare(bare, input_ids, attention_mask, args.tokens, seed)
        music.append(run_musicgen(musicgen, text_ids, attention_mask, args.tokens, seed))
        full.append(t_full)
        nar.append(t_nar)
        llm.append(t_full - t_nar)
        plain.append(t_bare)

    tokens = args.tokens
    med = statistics.median
    row = {
        "batch_size": batch,
        "prompt_tokens": int(input_ids.shape[1]),
        "new_tokens": tokens,
        "audio_seconds": tokens / frame_rate,
        "ours_full_s": med(full),
        "ours_nar_codec_s": med(nar),
        "ours_llm_stage_s": med(llm),
        "bare_s": med(plain),
        "ours_full_ms_per_token": 1000 * med(full) / tokens,
        "ours_llm_stage_ms_per_token": 1000 * med(llm) / tokens,
        "bare_ms_per_token": 1000 * med(plain) / tokens,
        "ratio_llm_stage_over_bare": med(llm) / med(plain),
        "ratio_full_over_bare": med(full) / med(plain),
        "musicgen_s": med(music),
        "musicgen_ms_per_frame": 1000 * med(music) / tokens,
        "ratio_full_over_musicgen": med(full) / med(music),
        "raw_s": {"ours_full": full, "ours_nar_codec": nar, "ours_llm_stage": llm, "bare": plain, "musicgen": music},
    }
    return row


# ---- masked decoding (part 2) -----------------------------------------------------------------------------------
def run_masked(model, input_ids, attention_mask, seconds: float, steps: int, seed: int):
    """`generate(decoding="masked")` of `seconds` of audio in `steps` passes over codebook 1; checks the output."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, decoding="masked", decoding_steps=steps,
        audio_length_in_s=seconds, do_sample=True, top_k=50,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    config = model.config
    frames = math.ceil(seconds * config.frame_rate - 1e-6)
    expected = (input_ids.shape[0], config.num_codebooks, frames)
    if tuple(out.audio_codes.shape) != expected or bool((out.audio_codes < 0).any()):
        raise RuntimeError(f"masked decoding returned codes {tuple(out.audio_codes.shape)}, expected {expected} filled")
    if out.audio.shape[-1] != round(seconds * config.sampling_rate):
        raise RuntimeError(f"masked decoding returned {out.audio.shape[-1]} samples for {seconds} s")
    return elapsed, out


def musicgen_frames(args, seconds: float) -> int:
    """MusicGen's real workload for `seconds` of audio: `--musicgen-frame-rate` (50) frames per second."""
    return max(1, round(seconds * args.musicgen_frame_rate))


def time_masked(model, musicgen_small, config, args, batch: int, seconds: float, ar_rows: list[dict]) -> list[dict]:
    """Masked decoding at each of `--decoding-steps` and the masked-size MusicGen for `seconds` of audio, interleaved
    after one warm-up each; one row per step count."""
    input_ids, attention_mask = make_prompt(config, batch, args.prompt_tokens, args.seed)
    text_ids = input_ids.clamp(max=config.acoustic_token_offset - 1)
    frames = musicgen_frames(args, seconds)
    run_masked(model, input_ids, attention_mask, seconds, min(args.decoding_steps), args.seed)  # warm-up
    run_musicgen(musicgen_small, text_ids, attention_mask, frames, args.seed)
    masked = {steps: [] for steps in args.decoding_steps}
    music = []
    sides = [*args.decoding_steps, "musicgen"]
    for r in tqdm(range(args.repeats), desc=f"masked {seconds:g}s batch {batch}", unit="repeat", file=sys.stderr,
                  leave=False):  # fmt: skip
        seed = args.seed + 1 + r
        for side in sides if r % 2 == 0 else sides[::-1]:  # reverse the order every other repeat
            if side == "musicgen":
                music.append(run_musicgen(musicgen_small, text_ids, attention_mask, frames, seed))
            else:
                masked[side].append(run_masked(model, input_ids, attention_mask, seconds, side, seed)[0])
    med = statistics.median
    ar = next(
        (row for row in ar_rows if row["batch_size"] == batch and abs(row["audio_seconds"] - seconds) < 1e-9), None
    )
    rows = []
    for steps, times in masked.items():
        row = {
            "audio_seconds": seconds,
            "batch_size": batch,
            "decoding_steps": steps,
            "frames": math.ceil(seconds * config.frame_rate - 1e-6),
            "masked_s": med(times),
            "masked_s_per_audio_second": med(times) / seconds,
            "musicgen_frames": frames,
            "musicgen_s": med(music),
            "musicgen_s_per_audio_second": med(music) / seconds,
            "ratio_masked_over_musicgen_per_audio_second": (med(times) / seconds) / (med(music) / seconds),
            # masked vs ours autoregressive (full call) where part 1 ran the same length and batch
            "ratio_masked_over_autoregressive_per_audio_second": None if ar is None else med(times) / ar["ours_full_s"],
            "raw_s": {"masked": times, "musicgen": music},
        }
        rows.append(row)
    return rows


def measure_macs(model, musicgen, musicgen_small, config, args) -> dict:
    """MACs (FLOPs / 2, FlopCounterMode) per second of audio of each mode on one call at batch 1, and the passes of
    the masked and masked-size MusicGen calls (batch 1 and every batch size at the longest length) for the H100
    projection."""
    input_ids, attention_mask = make_prompt(config, 1, args.prompt_tokens, args.seed)
    text_ids = input_ids.clamp(max=config.acoustic_token_offset - 1)
    ar_seconds = args.tokens / config.frame_rate
    modes = []

    def add(mode: str, seconds: float, flops: int, batch: int = 1, passes: list[dict] | None = None, **extra) -> None:
        entry = {"mode": mode, "audio_seconds": seconds, "batch_size": batch, **extra, "macs": flops // 2,
                 "macs_per_audio_second": flops / 2 / seconds / batch}  # fmt: skip
        if passes is not None:
            entry["passes"] = {name: {**g, "macs": g.pop("flops") // 2} for name, g in group_passes(passes).items()}
        modes.append(entry)

    with flop_counter_mode() as counter:
        run_ours(model, input_ids, attention_mask, args.tokens, config.frame_rate, args.seed)
    add("autoregressive", ar_seconds, counter.get_total_flops(), frames=args.tokens)
    frames = musicgen_frames(args, ar_seconds)
    with flop_counter_mode() as counter:
        run_musicgen(musicgen, text_ids, attention_mask, frames, args.seed)
    add("musicgen (LLM size)", ar_seconds, counter.get_total_flops(), frames=frames)
    raw = []  # (mode, seconds, batch, steps, passes) of the masked and masked-size MusicGen calls
    longest = max(args.audio_seconds)
    for seconds in args.audio_seconds:
        for batch in sorted({1, *(args.batch_sizes if seconds == longest else ())}):
            ids, mask = make_prompt(config, batch, args.prompt_tokens, args.seed)
            # Batch 1: every step count; larger batches (projection only): the fewest, the rest from its passes.
            for steps in args.decoding_steps if batch == 1 else [min(args.decoding_steps)]:
                flops, passes = record_passes(
                    lambda ids=ids, mask=mask, seconds=seconds, steps=steps: run_masked(
                        model, ids, mask, seconds, steps, args.seed
                    ),
                    [model], masked_openers(model),
                )  # fmt: skip
                add("masked", seconds, flops, batch, passes, decoding_steps=steps,
                    frames=math.ceil(seconds * config.frame_rate - 1e-6))  # fmt: skip
                raw.append(("masked", seconds, batch, steps, passes))
            frames = musicgen_frames(args, seconds)
            text_ids = ids.clamp(max=config.acoustic_token_offset - 1)
            flops, passes = record_passes(
                lambda text_ids=text_ids, mask=mask, frames=frames: run_musicgen(
                    musicgen_small, text_ids, mask, frames, args.seed
                ),
                [musicgen_small], musicgen_openers(musicgen_small),
            )  # fmt: skip
            add("musicgen (masked size)", seconds, flops, batch, passes, frames=frames)
            raw.append(("musicgen", seconds, batch, None, passes))
    return {"modes": modes, "raw_passes": raw}


# ---- profile of the masked mode -----------------------------------------------------------------------------------
def profile_masked(model, config, args) -> dict:
    """Where the masked mode's time goes at the longest length, batch 1, `--profile-steps` steps: the pieces timed
    around one generate call (median over --repeats), then the top operators of a torch.profiler run."""
    seconds, steps = max(args.audio_seconds), args.profile_steps
    input_ids, attention_mask = make_prompt(config, 1, args.prompt_tokens, args.seed)
    run_masked(model, input_ids, attention_mask, seconds, steps, args.seed)  # warm-up
    marks: list[tuple[str, float]] = []

    def mark(name: str):
        return lambda *_: marks.append((name, time.perf_counter()))

    pieces = []
    for r in range(args.repeats):
        marks.clear()
        with contextlib.ExitStack() as stack:
            stack.enter_context(instance_wrapper(model, "get_multimodal_embeddings", mark("prefill")))
            stack.enter_context(instance_wrapper(model, "masked_decode", mark("masked_decode")))
            stack.enter_context(instance_wrapper(model, "decode_audio", mark("codec")))
            decoder = model.masked_decoder
            stack.enter_context(forward_pre_hook(decoder, lambda _m, a: marks.append((f"level {int(a[3])}",
                                                                                      time.perf_counter()))))
            handle = decoder.register_forward_hook(lambda *_: marks.append(("decoder end", time.perf_counter())))
            stack.callback(handle.remove)
            start = time.perf_counter()
            run_masked(model, input_ids, attention_mask, seconds, steps, args.seed + 1 + r)
            end = time.perf_counter()
        times = dict.fromkeys(("prefill", "codebook-1 decoder passes", "codebook-1 sampling + re-masking",
                               "finer-codebook passes", "EnCodec decode"), 0.0)  # fmt: skip
        by_name = {}
        for name, t in marks:
            by_name.setdefault(name, t)
        times["prefill"] = by_name["masked_decode"] - by_name["prefill"]
        level0 = [(t, marks[i + 1][1]) for i, (name, t) in enumerate(marks) if name == "level 0"]
        times["codebook-1 decoder passes"] = sum(b - a for a, b in level0)
        first_finer = next((t for name, t in marks if name.startswith("level ") and name != "level 0"),
                           by_name["codec"])  # fmt: skip
        times["codebook-1 sampling + re-masking"] = first_finer - by_name["level 0"] - times["codebook-1 decoder passes"]
        times["finer-codebook passes"] = by_name["codec"] - first_finer
        times["EnCodec decode"] = end - by_name["codec"]  # decode_audio and the trim/output of generate
        times["other (generate's setup)"] = by_name["prefill"] - start
        times["total"] = end - start
        pieces.append(times)
    med = {key: statistics.median(p[key] for p in pieces) for key in pieces[0]}

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run_masked(model, input_ids, attention_mask, seconds, steps, args.seed)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    top = [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1000,
            "share": e.self_cpu_time_total / total_us} for e in events[: args.profile_top]]  # fmt: skip
    categories: dict[str, float] = {}
    for e in events:
        cat = operator_category(e.key)
        categories[cat] = categories.get(cat, 0.0) + e.self_cpu_time_total
    return {
        "audio_seconds": seconds,
        "batch_size": 1,
        "decoding_steps": steps,
        "pieces_s": med,
        "pieces_share": {k: v / med["total"] for k, v in med.items() if k != "total"},
        "profiler_total_self_ms": total_us / 1000,
        "top_operators": top,
        "categories": {
            k: {"self_ms": v / 1000, "share": v / total_us}
            for k, v in sorted(categories.items(), key=lambda kv: -kv[1])
        },
    }


# ---- peak memory (fresh subprocesses) -----------------------------------------------------------------------------
def ru_maxrss_kib() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # bytes on macOS, KiB on Linux


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kib() -> int:
    """Peak RSS of this process's own address space.

    On Linux this is VmHWM, not ru_maxrss: a child started with fork+exec (subprocess, multiprocessing "spawn")
    inherits the parent's RSS at fork time into ru_maxrss (a trivial child of a 600 MiB parent reports 600 MiB),
    while VmHWM only covers the child's own memory after exec.
    """
    hwm = _proc_status_kib("VmHWM")
    return hwm if hwm is not None else ru_maxrss_kib()


def current_rss_kib() -> int | None:
    return _proc_status_kib("VmRSS")


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0, writing 5 to clear_refs); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_child(args) -> None:
    """Runs in a fresh process: build one side, generate once per batch size, print its RSS figures as one JSON line."""
    torch.set_num_threads(args.threads)
    config = bench_config(args)
    result = {
        "side": args.memory_child,
        "peak_rss_imports_kib": peak_rss_kib(),
        "rss_after_imports_kib": current_rss_kib(),
    }
    # From here on the high-water mark covers building + generating only (when the kernel supports the reset).
    result["peak_reset"] = reset_peak_rss()
    if args.memory_child != "imports":
        if args.memory_child == "ours":
            model = build_ours(config, args.seed).eval()
        else:
            model = build_bare(config, args.seed)
        result["peak_rss_after_build_kib"] = peak_rss_kib()
        for batch in args.batch_sizes:
            input_ids, attention_mask = make_prompt(config, batch, args.prompt_tokens, args.seed)
            if args.memory_child == "ours":
                run_ours(model, input_ids, attention_mask, args.tokens, config.frame_rate, args.seed)
            else:
                run_bare(model, input_ids, attention_mask, args.tokens, args.seed)
        result["peak_rss_after_generate_kib"] = peak_rss_kib()
    result["peak_rss_process_kib"] = max(result["peak_rss_imports_kib"], peak_rss_kib())
    result["ru_maxrss_kib"] = ru_maxrss_kib()  # for reference only: inflated by the parent's RSS, see peak_rss_kib
    print("MEMORY_RESULT " + json.dumps(result), flush=True)


def measure_memory(args) -> dict:
    results = {}
    for side in MEMORY_SIDES:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--memory-child", side,
            "--hidden-size", str(args.hidden_size),
            "--layers", str(args.layers),
            "--heads", str(args.heads),
            "--kv-heads", str(args.kv_heads),
            "--head-dim", str(args.head_dim),
            "--intermediate", str(args.intermediate),
            "--text-vocab", str(args.text_vocab),
            "--tokens", str(args.tokens),
            "--prompt-tokens", str(args.prompt_tokens),
            "--batch-sizes", ",".join(map(str, args.batch_sizes)),
            "--audio-seconds", ",".join(map(str, args.audio_seconds)),
            "--masked-layers", str(args.masked_layers),
            "--threads", str(args.threads),
            "--seed", str(args.seed),
        ]
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("MEMORY_RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory subprocess for {side!r} failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
        results[side] = json.loads(lines[-1][len("MEMORY_RESULT "):])
    mib = lambda kib: None if kib is None else kib / 1024  # noqa: E731
    ours, bare = results["ours"], results["bare"]
    summary = {
        "method": (
            "peak RSS in a fresh subprocess per side (Linux VmHWM; ru_maxrss of a subprocess inherits the parent's "
            "RSS, so it is only listed for reference); tracemalloc is not used because it misses torch's C++ "
            "allocations. 'process' = whole child lifetime incl. imports; 'build+generate' = high-water mark "
            "after a reset at the end of the imports (when peak_reset is true) minus the RSS after imports."
        ),
        "peak_reset": bool(ours["peak_reset"] and bare["peak_reset"]),
        "imports_only_peak_rss_mib": mib(results["imports"]["peak_rss_imports_kib"]),
        "imports_only_rss_mib": mib(results["imports"]["rss_after_imports_kib"]),
        "ours_peak_rss_after_build_mib": mib(ours["peak_rss_after_build_kib"]),
        "ours_peak_rss_mib": mib(ours["peak_rss_process_kib"]),
        "bare_peak_rss_after_build_mib": mib(bare["peak_rss_after_build_kib"]),
        "bare_peak_rss_mib": mib(bare["peak_rss_process_kib"]),
        "ratio_ours_over_bare": ours["peak_rss_process_kib"] / bare["peak_rss_process_kib"],
        "ru_maxrss_mib_reference": {side: mib(r["ru_maxrss_kib"]) for side, r in results.items()},
    }
    if ours["rss_after_imports_kib"] is not None and bare["rss_after_imports_kib"] is not None:
        ours_net = ours["peak_rss_after_generate_kib"] - ours["rss_after_imports_kib"]
        bare_net = bare["peak_rss_after_generate_kib"] - bare["rss_after_imports_kib"]
        summary["ours_build_generate_mib"] = ours_net / 1024
        summary["bare_build_generate_mib"] = bare_net / 1024
        summary["ratio_ours_over_bare_build_generate"] = ours_net / bare_net if bare_net > 0 else None
    return summary


# ---- reporting ----------------------------------------------------------------------------------------------------
def print_report(summary: dict) -> None:
    cfg = summary["config"]
    params = summary["parameters"]
    print()
    print(
        f"C3LLM generate benchmark  |  Gemma hidden={cfg['hidden_size']} layers={cfg['layers']} heads={cfg['heads']} "
        f"kv_heads={cfg['kv_heads']} head_dim={cfg['head_dim']} intermediate={cfg['intermediate']} "
        f"vocab={cfg['vocab_size']} (text {cfg['acoustic_token_offset']} + acoustic/special "
        f"{cfg['vocab_size'] - cfg['acoustic_token_offset']})"
    )
    env = summary["environment"]
    print(
        f"torch {env['torch']}, transformers {env['transformers']}, threads={env['threads']}, "
        f"cpus={env['cpu_count']}, load(1m) {env['loadavg_1m_before']} -> {env['loadavg_1m_after']}, "
        f"attn={env['attn_implementation']['ours']}/{env['attn_implementation']['bare']}, repeats={cfg['repeats']} (median), "
        f"{cfg['tokens']} coarse tokens = {cfg['tokens'] / cfg['frame_rate']:.2f} s audio, top_k=50 sampling"
    )
    loads = [v for v in (env["loadavg_1m_before"], env["loadavg_1m_after"], env.get("loadavg_1m_after_autoregressive"),
                         env.get("loadavg_1m_after_masked")) if v is not None]  # fmt: skip
    if loads and max(loads) > env["threads"] + 0.5:
        print(
            f"warning: the 1-minute load average reached {max(loads):.2f} with {env['threads']} threads requested: other "
            "processes shared the CPUs, so absolute times are inflated and noisy (runs are interleaved, so the ratios "
            "are less affected)."
        )
    print()
    header = (
        f"{'batch':>5} | {'ours full':>10} | {'ours NAR+codec':>14} | {'ours LLM stage':>14} | {'bare':>10} | "
        f"{'LLM/bare':>8} | {'full/bare':>9} | {'musicgen':>10} | {'full/musicgen':>13}"
    )
    print("per-token times in ms (total seconds in parentheses)")
    print(header)
    print("-" * len(header))
    for row in summary["timings"]:
        print(
            f"{row['batch_size']:>5} | {row['ours_full_ms_per_token']:>10.2f} | "
            f"{1000 * row['ours_nar_codec_s'] / row['new_tokens']:>14.2f} | "
            f"{row['ours_llm_stage_ms_per_token']:>14.2f} | {row['bare_ms_per_token']:>10.2f} | "
            f"{row['ratio_llm_stage_over_bare']:>8.3f} | {row['ratio_full_over_bare']:>9.3f} | "
            f"{row['musicgen_ms_per_frame']:>10.2f} | {row['ratio_full_over_musicgen']:>13.3f}"
        )
        print(
            f"{'':>5} | {'(' + format(row['ours_full_s'], '.3f') + ' s)':>10} | "
            f"{'(' + format(row['ours_nar_codec_s'], '.3f') + ' s)':>14} | "
            f"{'(' + format(row['ours_llm_stage_s'], '.3f') + ' s)':>14} | "
            f"{'(' + format(row['bare_s'], '.3f') + ' s)':>10} | {'':>8} | {'':>9} | "
            f"{'(' + format(row['musicgen_s'], '.3f') + ' s)':>10} |"
        )
    print(
        f"  (autoregressive rows at --tokens = {cfg['autoregressive_rows_audio_seconds']:g} s of audio only: at 10 s "
        "and batch 4 they alone would take several more minutes on 2 cores)"
    )
    print_masked(summary)
    print()
    print("parameters")
    for key in ("ours_total", "ours_language_model", "ours_language_model_embeddings", "ours_codec",
                "ours_audio_encoder", "ours_vision_encoder", "ours_projectors", "ours_nar_head",
                "ours_masked_decoder", "bare_total", "ours_extra_over_bare",
                "ours_extra_over_bare_without_masked_decoder", "musicgen_total", "musicgen_decoder",
                "musicgen_text_encoder", "musicgen_codec", "musicgen_small_total", "musicgen_small_decoder"):
        print(f"  {key:<44} {params[key]:>14,d}  ({params[key] * 4 / 2**20:8.2f} MiB fp32)")
    print(f"  tied word embeddings: {params['tied_word_embeddings']}")
    nar = cfg["nar"]
    print(
        f"  NAR head is deliberately tiny here (hidden={nar['hidden_size']}, layers={nar['num_hidden_layers']}, "
        f"heads={nar['num_attention_heads']}, intermediate={nar['intermediate_size']}); the paper-size NAR (config "
        "defaults 1024/12/16/4096) would make the NAR+codec column much larger."
    )
    memory = summary.get("memory")
    if memory:
        print()
        print("peak memory (peak RSS = VmHWM, fresh subprocess per side)")
        print(f"  imports only (peak)              {memory['imports_only_peak_rss_mib']:9.1f} MiB")
        print(f"  ours  peak after build           {memory['ours_peak_rss_after_build_mib']:9.1f} MiB")
        print(f"  ours  peak, whole process        {memory['ours_peak_rss_mib']:9.1f} MiB")
        print(f"  bare  peak after build           {memory['bare_peak_rss_after_build_mib']:9.1f} MiB")
        print(f"  bare  peak, whole process        {memory['bare_peak_rss_mib']:9.1f} MiB")
        print(f"  ratio ours/bare (whole process)  {memory['ratio_ours_over_bare']:9.3f}")
        if memory.get("ours_build_generate_mib") is not None:
            net = memory["ratio_ours_over_bare_build_generate"]
            print(
                f"  build+generate only (peak - RSS after imports): ours {memory['ours_build_generate_mib']:.1f} MiB, "
                f"bare {memory['bare_build_generate_mib']:.1f} MiB, ratio "
                + (f"{net:.3f}" if net is not None else "n/a")
                + ("" if memory["peak_reset"] else "  (peak reset unsupported: includes the import peak)")
            )
        print(
            "  note: ours includes the frozen CLAP/vision encoders, the EnCodec codec, the projectors and the NAR "
            "head (all tiny here) on top of the same language model; tracemalloc is not adequate for torch "
            "(C++ allocations), hence RSS."
        )
    print()


def print_masked(summary: dict) -> None:
    """The masked rows, the MACs per audio second, the profile and the H100 projection."""
    cfg = summary["config"]
    sizes = cfg["masked_decoder"]
    print()
    print(
        f"masked decoding vs MusicGen at the masked decoder's size (hidden={sizes['hidden_size']} "
        f"layers={sizes['num_hidden_layers']} heads={sizes['num_attention_heads']} "
        f"intermediate={sizes['intermediate_size']}); ours 75 frames/s, MusicGen {cfg['musicgen_frame_rate']} frames/s; "
        f"{cfg['sampling']}; load(1m) after the masked rows {summary['environment']['loadavg_1m_after_masked']}"
    )
    header = (
        f"{'audio s':>7} | {'batch':>5} | {'steps':>5} | {'masked s':>9} | {'masked s/aud s':>14} | "
        f"{'musicgen s':>10} | {'frames':>6} | {'mg s/aud s':>10} | {'masked/musicgen':>15} | {'masked/AR':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in summary["settings"]:
        ar = row["ratio_masked_over_autoregressive_per_audio_second"]
        print(
            f"{row['audio_seconds']:>7g} | {row['batch_size']:>5} | {row['decoding_steps']:>5} | "
            f"{row['masked_s']:>9.3f} | {row['masked_s_per_audio_second']:>14.4f} | {row['musicgen_s']:>10.3f} | "
            f"{row['musicgen_frames']:>6} | {row['musicgen_s_per_audio_second']:>10.4f} | "
            f"{row['ratio_masked_over_musicgen_per_audio_second']:>15.3f} | "
            + (f"{ar:>9.3f}" if ar is not None else f"{'':>9}")
        )
    print()
    print("multiply-adds per second of audio (FlopCounterMode on one call at batch 1; MACs = FLOPs / 2)")
    for mode in summary["macs_per_audio_second"]:
        if mode["batch_size"] != 1:
            continue
        steps = f", {mode['decoding_steps']} steps" if "decoding_steps" in mode else ""
        line = f"  {mode['mode'] + steps:<30} {mode['audio_seconds']:>5g} s, {mode['frames']:>4} frames: " \
               f"{mode['macs_per_audio_second'] / 1e9:9.2f} GMAC per audio s"
        if "passes" in mode:
            parts = ", ".join(f"{name} {g['macs'] / mode['audio_seconds'] / 1e9:.2f}" for name, g in mode["passes"].items()
                              if g["macs"])  # fmt: skip
            line += f"  ({parts})"
        print(line)
    profile = summary["profile"]
    print()
    print(
        f"masked profile: {profile['audio_seconds']:g} s, batch 1, {profile['decoding_steps']} steps "
        f"(pieces: median of --repeats calls; operators: one torch.profiler call, self CPU time)"
    )
    for name, value in profile["pieces_s"].items():
        share = profile["pieces_share"].get(name)
        print(f"  {name:<36} {value:8.3f} s" + (f"  {100 * share:5.1f}%" if share is not None else ""))
    print(f"  {'operator':<52} {'calls':>6} {'self ms':>9} {'share':>6}")
    for op in profile["top_operators"]:
        print(f"  {op['op']:<52} {op['calls']:>6} {op['self_ms']:>9.1f} {100 * op['share']:>5.1f}%")
    print("  by kind: " + ", ".join(f"{k} {100 * v['share']:.1f}%" for k, v in profile["categories"].items()))
    projection = summary["h100_projection"]
    print()
    print(f"projected on one {projection['device']}")
    for key, text in projection["assumptions"].items():
        print(f"  {key}: {text}")
    header = (
        f"{'audio s':>7} | {'batch':>5} | {'steps':>5} | {'masked ms':>9} | {'musicgen ms':>11} | {'ratio':>6} || "
        f"{'masked ms':>9} | {'musicgen ms':>11} | {'ratio':>6}"
    )
    print(f"  {'':>21}   {'roofline':^32} || {'realistic':^32}")
    print("  " + header)
    for row in projection["settings"]:
        print(
            f"  {row['audio_seconds']:>7g} | {row['batch_size']:>5} | {row['decoding_steps']:>5} | "
            f"{row['masked_ms_roofline']:>9.3f} | {row['musicgen_ms_roofline']:>11.3f} | "
            f"{row['ratio_masked_over_musicgen_per_audio_second_roofline']:>6.3f} || "
            f"{row['masked_ms_realistic']:>9.3f} | {row['musicgen_ms_realistic']:>11.3f} | "
            f"{row['ratio_masked_over_musicgen_per_audio_second_realistic']:>6.3f}"
        )
    for check in projection["extrapolation_check"]:
        print(
            f"  check: batch {check['batch_size']}, {check['decoding_steps']} steps: FLOPs extrapolated from the "
            f"fewest steps {check['extrapolated_flops'] / 1e9:.3f} G vs measured {check['measured_flops'] / 1e9:.3f} G "
            f"({100 * check['relative_error']:+.2f}%)"
        )
    for batch, detail in projection["per_pass"].items():
        for name in ("masked_codebook1_pass", "musicgen_step"):
            d = detail[name]
            print(
                f"  batch {batch} {name:<22} {d['flops'] / 1e9:8.3f} GFLOP, weights {d['weight_bytes'] / 2**20:7.2f} MiB, "
                f"activations {d['activation_bytes'] / 2**20:7.2f} MiB, {d['kernels']:6.1f} kernels, "
                f"{d['flops_per_byte']:6.1f} FLOP/B -> {d['us_roofline']:7.2f} us roofline, "
                f"{d['us_realistic']:7.2f} us realistic"
            )


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.memory_child is not None:
        memory_child(args)
        return None

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = load_average()
    config = bench_config(args)
    model = build_ours(config, args.seed).eval()
    bare = build_bare(config, args.seed, weights_from=model)
    musicgen = build_musicgen(config, args.seed, max_frames=args.tokens)
    longest_frames = musicgen_frames(args, max(args.audio_seconds))
    musicgen_small = build_musicgen(config, args.seed, config.masked_decoder_config, max_frames=longest_frames)
    params = parameter_counts(model, bare, musicgen, musicgen_small)
    attn = {"ours": model.language_model.config._attn_implementation, "bare": bare.config._attn_implementation}

    timings = [time_batch(model, bare, musicgen, config, args, batch) for batch in args.batch_sizes]
    del bare
    load_after_ar = load_average()
    masked_rows = [
        row
        for seconds in args.audio_seconds
        for batch in args.batch_sizes
        for row in time_masked(model, musicgen_small, config, args, batch, seconds, timings)
    ]
    load_after_masked = load_average()
    profile = profile_masked(model, config, args)
    macs = measure_macs(model, musicgen, musicgen_small, config, args)
    projection = project_h100(macs.pop("raw_passes"), args)
    del model, musicgen, musicgen_small
    load_after_timing = load_average()
    memory = None if args.no_memory else measure_memory(args)

    sizes = config.masked_decoder_config
    summary = {
        "benchmark": "generate",
        "config": {
            **backbone_summary(args, config),
            "tokens": args.tokens,
            "prompt_tokens": args.prompt_tokens,
            "frame_rate": config.frame_rate,
            "repeats": args.repeats,
            "sampling": "do_sample=True, top_k=50, no guidance (MusicGen guidance_scale=1.0), on every side",
            "masked_decoder": {
                "hidden_size": sizes.hidden_size,
                "num_hidden_layers": sizes.num_hidden_layers,
                "num_attention_heads": sizes.num_attention_heads,
                "intermediate_size": sizes.intermediate_size,
                "rule": "the LLM's hidden size, heads and MLP width, half its layers (the demo's), unless --masked-layers",
            },
            "musicgen_small_decoder": "the masked decoder's hidden size, layers, heads and MLP width",
            "musicgen_frame_rate": args.musicgen_frame_rate,
            "audio_seconds": args.audio_seconds,
            "decoding_steps": args.decoding_steps,
            "autoregressive_rows_audio_seconds": args.tokens / config.frame_rate,
        },
        "environment": {
            **environment(attn, load_before, load_after_timing),
            "loadavg_1m_after_autoregressive": load_after_ar,
            "loadavg_1m_after_masked": load_after_masked,
        },
        "parameters": params,
        "timings": timings,
        "settings": masked_rows,
        "macs_per_audio_second": macs["modes"],
        "profile": profile,
        "h100_projection": projection,
        "memory": memory,
        "wall_s": time.perf_counter() - started,
    }
    print_report(summary)
    emit(summary, args.json_out)
    return summary


if __name__ == "__main__":
    main()
