#!/usr/bin/env python
"""Benchmark C3LLM text-to-audio generation against a bare Gemma causal LM of the same size.

What is compared
----------------
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
  classifier-free guidance, the same number of audio frames, decoded to a waveform. The ratio says what one LLM with
  an extended text vocabulary (C3LLM) costs against a dedicated audio decoder with small per-codebook heads.

Runs are interleaved (ours, NAR/codec, bare, then bare, ours, NAR/codec, ...) in one process after one warm-up each; the median over
``--repeats`` is reported. Peak memory (peak RSS, ``ru_maxrss``) is measured in fresh subprocesses, one per side,
because tracemalloc does not see the allocations torch makes in C++.

Run from anywhere: ``python benchmarks/bench_generate.py --help``.
"""

from __future__ import annotations

import argparse
import json
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

from modeling_c3llm import C3LLMConfig, C3LLMForConditionalGeneration  # noqa: E402

from common import (  # noqa: E402
    add_backbone_arguments,
    backbone_summary,
    build_config,
    build_ours,
    emit,
    environment,
    load_average,
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
            "GemmaForCausalLM of the same size and weights and against transformers' MusicGen at equal decoder size, "
            "and measures the peak RSS of each side in a fresh "
            "subprocess. Prints a table and a final JSON line starting with {\"benchmark\": \"generate\"."
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
    except ValueError:
        parser.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    for name in ("hidden_size", "layers", "heads", "kv_heads", "head_dim", "intermediate", "text_vocab", "tokens",
                 "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
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


def build_musicgen(config: C3LLMConfig, seed: int) -> MusicgenForConditionalGeneration:
    """MusicGen whose decoder has the backbone's size and ours' codebooks, with a small T5 and ours' EnCodec."""
    text = config.text_config
    torch.manual_seed(seed)
    decoder = MusicgenDecoderConfig(
        vocab_size=config.codebook_size, num_codebooks=config.num_codebooks, hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
        ffn_dim=text.intermediate_size, max_position_embeddings=2048, pad_token_id=config.codebook_size,
        bos_token_id=config.codebook_size, dropout=0.0,
    )
    encoder = T5Config(vocab_size=text.vocab_size, d_model=256, d_kv=32, d_ff=1024, num_layers=2, num_heads=8)
    audio = EncodecConfig(**config.codec_config.to_dict())
    musicgen = MusicgenConfig(text_encoder=encoder, audio_encoder=audio, decoder=decoder)
    return MusicgenForConditionalGeneration(musicgen).eval()


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


def parameter_counts(model: C3LLMForConditionalGeneration, bare: torch.nn.Module) -> dict:
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
        "bare_total": count_params(bare),
    }
    counts["ours_extra_over_bare"] = counts["ours_total"] - counts["bare_total"]
    counts["tied_word_embeddings"] = bool(lm.get_output_embeddings().weight is lm.get_input_embeddings().weight)
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
    config = build_config(args, args.prompt_tokens + args.tokens + 8)
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
    loads = [v for v in (env["loadavg_1m_before"], env["loadavg_1m_after"]) if v is not None]
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
    print()
    print("parameters")
    for key in ("ours_total", "ours_language_model", "ours_language_model_embeddings", "ours_codec",
                "ours_audio_encoder", "ours_vision_encoder", "ours_projectors", "ours_nar_head", "bare_total",
                "ours_extra_over_bare"):
        print(f"  {key:<32} {params[key]:>14,d}  ({params[key] * 4 / 2**20:8.2f} MiB fp32)")
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


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.memory_child is not None:
        memory_child(args)
        return None

    torch.set_num_threads(args.threads)
    load_before = load_average()
    config = build_config(args, args.prompt_tokens + args.tokens + 8)
    model = build_ours(config, args.seed).eval()
    bare = build_bare(config, args.seed, weights_from=model)
    params = parameter_counts(model, bare)
    attn = {"ours": model.language_model.config._attn_implementation, "bare": bare.config._attn_implementation}

    musicgen = build_musicgen(config, args.seed)
    timings = [time_batch(model, bare, musicgen, config, args, batch) for batch in args.batch_sizes]
    del model, bare, musicgen
    load_after_timing = load_average()
    memory = None if args.no_memory else measure_memory(args)

    summary = {
        "benchmark": "generate",
        "config": {
            **backbone_summary(args, config),
            "tokens": args.tokens,
            "prompt_tokens": args.prompt_tokens,
            "frame_rate": config.frame_rate,
            "repeats": args.repeats,
        },
        "environment": environment(attn, load_before, load_after_timing),
        "parameters": params,
        "timings": timings,
        "memory": memory,
    }
    print_report(summary)
    emit(summary, args.json_out)
    return summary


if __name__ == "__main__":
    main()
