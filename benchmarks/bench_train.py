#!/usr/bin/env python
"""Benchmark C3LLM training steps against a bare Gemma causal LM of the same size, and EnCodec preprocessing.

What is compared
----------------
Part 1, one training step (forward + backward + ``torch.optim.AdamW`` step + ``zero_grad``) on the same batch of
``--batch-size`` x ``--seq-len`` tokens. Every row is a text-to-audio example as ``C3LLMProcessor`` builds it: a
``--prompt-tokens`` prompt (``<bos>``, random text ids, ``<Audio>``; labels ``-100``), then ``seq_len - prompt - 1``
acoustic tokens and ``</Audio>`` (the labels), and ``audio_codes`` ``(batch, num_codebooks, frames)`` for the NAR loss.

* stage 0: ours = ``prepare_model(..., ModelArguments(stage=0))``: everything but the frozen encoders and codec
  trains (LLM loss + NAR loss, Eq. 1 + Eq. 2); bare = ``GemmaForCausalLM`` with the same (extended) text config and
  the same weights, every parameter trained.
* stage 1: ours = ``prepare_model(..., ModelArguments(stage=1, lora_r=R))``: PEFT LoRA on the LLM's attention and
  MLP projections, the new token rows (``trainable_token_indices``) and the projectors; NAR loss weight 0, but the NAR
  head still runs on ``audio_codes`` as in real stage-1 training. bare = the same ``LoraConfig`` (r, alpha, dropout,
  target modules) on the bare model, LoRA only (it has no new token rows to train).
* ours LM only: the same model and optimizer as ours, stepped without ``audio_codes`` (no NAR head); the NAR head's
  share of ours' step is ``1 - ours_lm_only / ours``.

Steps are interleaved (ours, ours LM only, bare; then the reverse order), after ``--warmup`` steps each; the median
over ``--steps`` is reported. Before any optimizer step, the bare loss must equal ours' ``lm_loss`` (same weights,
same tokens); this is checked.

Part 2, EnCodec tokenization with ``c3llm.data.datasets.add_audio_codes``: ``--prep-clips`` SynthFoley
clips of ``--prep-seconds`` (``write_audiocaps``), each run loaded with ``load_audiocaps`` into a fresh cache folder
and tokenized with ``load_from_cache_file=False`` (never a cache hit), with ``num_proc=None`` and ``num_proc=2``;
reported as seconds of audio per second. With the tiny model's codec (``conversion.build_c3llm.build_tiny``) and,
when ``--synthfoley-codec/config.json`` exists, with the SynthFoley codec (the demo's model,
``c3llm.demo.demo_model``).

Run from anywhere: ``python benchmarks/bench_train.py --help``. Prints a table and a final JSON line starting with
``{"benchmark": "train"``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from transformers import GemmaForCausalLM  # noqa: E402

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
from c3llm.training import ModelArguments, prepare_model, trainable_parameter_counts  # noqa: E402


SIDES = ("ours", "ours_lm_only", "bare")
DEFAULT_CODEC = REPO_ROOT / "conversion" / "synthfoley_codec"


# ---- argument parsing -------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Times C3LLM training steps (stage 0: full training, stage 1: LoRA) against a bare GemmaForCausalLM of "
            "the same size and weights trained the same way, and the throughput of EnCodec tokenization "
            "(add_audio_codes) with one and two processes. Prints a table and a final JSON line starting with "
            "{\"benchmark\": \"train\"."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_backbone_arguments(parser)
    step = parser.add_argument_group("training steps")
    step.add_argument("--batch-size", type=int, default=4, help="Examples per training batch.")
    step.add_argument("--seq-len", type=int, default=256, help="Tokens per example (prompt + acoustic + </Audio>).")
    step.add_argument(
        "--prompt-tokens", type=int, default=16, help="Prompt length: <bos>, random text ids, then <Audio>."
    )
    step.add_argument("--stages", type=str, default="0,1", help="Comma-separated stages to time (0 and/or 1).")
    step.add_argument("--lora-r", type=int, default=16, help="LoRA rank of stage 1 (alpha and dropout: defaults).")
    step.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate.")
    step.add_argument("--steps", type=int, default=5, help="Timed steps per side and stage (median reported).")
    step.add_argument("--warmup", type=int, default=1, help="Untimed steps per side and stage before timing.")
    prep = parser.add_argument_group("EnCodec preprocessing (add_audio_codes)")
    prep.add_argument("--prep-clips", type=int, default=40, help="SynthFoley clips to tokenize per run.")
    prep.add_argument("--prep-seconds", type=float, default=2.0, help="Duration of each clip in seconds.")
    prep.add_argument("--prep-repeats", type=int, default=3, help="Timed runs per codec and num_proc (median).")
    prep.add_argument(
        "--synthfoley-codec",
        type=Path,
        default=DEFAULT_CODEC,
        help="EnCodec folder of the SynthFoley codec; skipped when it has no config.json.",
    )
    prep.add_argument("--no-prep", action="store_true", help="Skip the preprocessing part.")
    run = parser.add_argument_group("measurement")
    run.add_argument("--threads", type=int, default=2, help="torch.set_num_threads value.")
    run.add_argument("--seed", type=int, default=0, help="Seed for the weights, the batch and the clips.")
    run.add_argument(
        "--json-out",
        type=Path,
        default=None,
        help="Also write the final JSON object to this path (atomically: temp file + rename).",
    )
    args = parser.parse_args(argv)
    try:
        args.stages = sorted({int(s) for s in str(args.stages).split(",") if s.strip()})
    except ValueError:
        parser.error(f"--stages must be comma-separated integers, got {args.stages!r}")
    if not set(args.stages) <= {0, 1}:
        parser.error("--stages may only list 0 and 1")
    for name in ("hidden_size", "layers", "heads", "kv_heads", "head_dim", "intermediate", "text_vocab", "batch_size",
                 "lora_r", "steps", "prep_clips", "prep_repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.prompt_tokens < 2:
        parser.error("--prompt-tokens must be >= 2 (<bos> and <Audio>)")
    if args.seq_len < args.prompt_tokens + 2:
        parser.error("--seq-len must leave room for at least one acoustic token and </Audio> after the prompt")
    if args.heads % args.kv_heads:
        parser.error("--heads must be a multiple of --kv-heads")
    if args.prep_seconds <= 0:
        parser.error("--prep-seconds must be > 0")
    return args


# ---- models and batch -------------------------------------------------------------------------------------------
def build_bare(config: C3LLMConfig, ours: C3LLMForConditionalGeneration) -> GemmaForCausalLM:
    """GemmaForCausalLM with the C3LLM's (extended) text config and its language model's weights."""
    bare = GemmaForCausalLM(config.text_config)
    bare.load_state_dict(ours.language_model.state_dict(), strict=True)
    return bare


def prepare(ours, bare, stage: int, lora_r: int):
    """Sets up what trains on each side, as `c3llm train --stage {stage}` does for ours."""
    model_args = ModelArguments(stage=stage, lora_r=lora_r)
    with contextlib.redirect_stdout(sys.stderr):  # prepare_model prints its parameter counts
        ours = prepare_model(ours, model_args)
    if stage == 1:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                          target_modules=list(model_args.lora_target_modules))
        bare = get_peft_model(bare, lora)
    else:
        bare.requires_grad_(True)
    return ours.train(), bare.train()


def make_batch(config: C3LLMConfig, batch: int, seq_len: int, prompt_tokens: int, seed: int) -> dict:
    """Text-to-audio rows as C3LLMProcessor builds them: prompt (labels -100), acoustic tokens of codebook 1 and
    `</Audio>` (labels), with `audio_codes` of every codebook for the NAR loss. No padding."""
    generator = torch.Generator().manual_seed(seed)
    frames = seq_len - prompt_tokens - 1
    bos = torch.full((batch, 1), config.text_config.bos_token_id, dtype=torch.long)
    text = torch.randint(3, config.acoustic_token_offset, (batch, prompt_tokens - 2), generator=generator)
    start = torch.full((batch, 1), config.audio_start_token_id, dtype=torch.long)
    codes = torch.randint(0, config.codebook_size, (batch, config.num_codebooks, frames), generator=generator)
    end = torch.full((batch, 1), config.audio_end_token_id, dtype=torch.long)
    input_ids = torch.cat([bos, text, start, codes[:, 0] + config.acoustic_token_offset, end], dim=1)
    labels = input_ids.clone()
    labels[:, :prompt_tokens] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "audio_codes": codes}


def count_trainable(model: torch.nn.Module) -> tuple[int, int]:
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


# ---- timed steps --------------------------------------------------------------------------------------------------
def train_step(model, optimizer, batch: dict) -> tuple[float, float, float | None]:
    """One optimizer step; returns (seconds, loss, lm_loss where the output has one)."""
    start = time.perf_counter()
    output = model(**batch, use_cache=False)
    output.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - start
    lm_loss = getattr(output, "lm_loss", None)
    return elapsed, float(output.loss.detach()), None if lm_loss is None else float(lm_loss.detach())


def time_stage(config: C3LLMConfig, base: C3LLMForConditionalGeneration, args, stage: int) -> dict:
    ours = copy.deepcopy(base)
    bare = build_bare(config, ours)
    ours, bare = prepare(ours, bare, stage, args.lora_r)
    counts = trainable_parameter_counts(ours)
    bare_trainable, bare_total = count_trainable(bare)
    optimizers = {
        "ours": torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=args.lr),
        "bare": torch.optim.AdamW([p for p in bare.parameters() if p.requires_grad], lr=args.lr),
    }
    optimizers["ours_lm_only"] = optimizers["ours"]  # the same model and optimizer, stepped without audio_codes
    batch = make_batch(config, args.batch_size, args.seq_len, args.prompt_tokens, args.seed)
    batches = {"ours": batch, "ours_lm_only": {k: v for k, v in batch.items() if k != "audio_codes"},
               "bare": {k: v for k, v in batch.items() if k != "audio_codes"}}
    models = {"ours": ours, "ours_lm_only": ours, "bare": bare}

    def step(side: str):
        return train_step(models[side], optimizers[side], batches[side])

    # The first steps, before any optimizer step: same weights and tokens, so bare's loss is ours' LLM loss.
    first = {side: step(side) for side in ("ours", "bare")}
    lm_loss_difference = abs(first["ours"][2] - first["bare"][1])
    if lm_loss_difference > 1e-3:
        raise RuntimeError(f"stage {stage}: bare loss {first['bare'][1]} != ours lm_loss {first['ours'][2]}")
    step("ours_lm_only")
    for _ in range(args.warmup - 1):
        for side in SIDES:
            step(side)

    times = {side: [] for side in SIDES}
    losses = {side: [] for side in SIDES}
    for r in range(args.steps):
        order = SIDES if r % 2 == 0 else tuple(reversed(SIDES))  # neither side always runs right after the other
        for side in order:
            elapsed, loss, _ = step(side)
            times[side].append(elapsed)
            losses[side].append(loss)

    med = {side: statistics.median(values) for side, values in times.items()}
    tokens = args.batch_size * args.seq_len
    row = {
        "stage": stage,
        "training": "full (AdamW on every trainable parameter)" if stage == 0 else f"LoRA r={args.lora_r}",
        "tokens_per_step": tokens,
        "ours_ms": 1000 * med["ours"],
        "ours_lm_only_ms": 1000 * med["ours_lm_only"],
        "bare_ms": 1000 * med["bare"],
        "ratio_ours_over_bare": med["ours"] / med["bare"],
        "ratio_ours_lm_only_over_bare": med["ours_lm_only"] / med["bare"],
        "nar_share_of_ours": 1 - med["ours_lm_only"] / med["ours"],
        "ours_tokens_per_s": tokens / med["ours"],
        "bare_tokens_per_s": tokens / med["bare"],
        "first_step_lm_loss": {"ours": first["ours"][2], "bare": first["bare"][1], "abs_diff": lm_loss_difference},
        "last_loss": {side: values[-1] for side, values in losses.items()},
        "ours_trainable": counts["trainable"],
        "ours_trainable_groups": {k: v for k, v in counts.items() if k not in ("trainable", "total")},
        "ours_total": counts["total"],
        "bare_trainable": bare_trainable,
        "bare_total": bare_total,
        "raw_s": times,
    }
    return row


# ---- preprocessing throughput ---------------------------------------------------------------------------------------
def codec_models(args) -> list[tuple[str, object, object]]:
    """(name, model, processor) for the tiny model's codec and, if present, the SynthFoley codec."""
    from conversion.build_c3llm import build_tiny

    model, processor = build_tiny(seed=args.seed)
    models = [("tiny", model.eval(), processor)]
    if (Path(args.synthfoley_codec) / "config.json").is_file():
        from c3llm.demo import DemoSettings, demo_model

        with contextlib.redirect_stdout(sys.stderr):
            model, processor = demo_model(DemoSettings(codec_dir=str(args.synthfoley_codec), seed=args.seed))
        models.append(("synthfoley", model.eval(), processor))
    return models


def time_preprocessing(args, workdir: Path) -> dict:
    from c3llm.data.datasets import add_audio_codes, load_audiocaps
    from c3llm.synthfoley.synthfoley import write_audiocaps

    data = workdir / "audiocaps"
    write_audiocaps(data, args.prep_clips, "train", seed=args.seed, duration=args.prep_seconds)
    audio_seconds = args.prep_clips * args.prep_seconds
    runs = 0

    def run(model, processor, num_proc) -> float:
        nonlocal runs
        runs += 1
        dataset, report = load_audiocaps(data, "train", cache_dir=str(workdir / f"cache{runs}"))  # a fresh cache
        if report.kept != args.prep_clips:
            raise RuntimeError(report.summary())
        start = time.perf_counter()
        coded, report = add_audio_codes(dataset, model, processor, num_proc=num_proc, load_from_cache_file=False)
        elapsed = time.perf_counter() - start
        if report.kept != args.prep_clips or len(coded) != args.prep_clips:
            raise RuntimeError(report.summary())
        return elapsed

    procs = (None, 2)
    rows = []
    codecs = codec_models(args)
    for name, model, processor in codecs:
        for num_proc in procs:  # warm-up: first-call allocations, imports in the workers' parent
            run(model, processor, num_proc)
        times = {num_proc: [] for num_proc in procs}
        for r in range(args.prep_repeats):
            for num_proc in procs if r % 2 == 0 else tuple(reversed(procs)):
                times[num_proc].append(run(model, processor, num_proc))
        codec = model.codec.config
        for num_proc in procs:
            seconds = statistics.median(times[num_proc])
            rows.append({
                "codec": name,
                "codec_parameters": sum(p.numel() for p in model.codec.parameters()),
                "codec_sampling_rate": codec.sampling_rate,
                "num_codebooks": model.config.num_codebooks,
                "num_proc": num_proc,
                "seconds": seconds,
                "audio_seconds_per_second": audio_seconds / seconds,
                "raw_s": times[num_proc],
            })
    return {
        "clips": args.prep_clips,
        "clip_seconds": args.prep_seconds,
        "audio_seconds": audio_seconds,
        "repeats": args.prep_repeats,
        "synthfoley_codec": str(args.synthfoley_codec),
        "synthfoley_codec_found": any(name == "synthfoley" for name, _, _ in codecs),
        "rows": rows,
    }


# ---- reporting ----------------------------------------------------------------------------------------------------
def print_report(summary: dict) -> None:
    cfg, env = summary["config"], summary["environment"]
    print()
    print(
        f"C3LLM training benchmark  |  Gemma hidden={cfg['hidden_size']} layers={cfg['layers']} heads={cfg['heads']} "
        f"kv_heads={cfg['kv_heads']} head_dim={cfg['head_dim']} intermediate={cfg['intermediate']} "
        f"vocab={cfg['vocab_size']} (text {cfg['acoustic_token_offset']} + acoustic/special "
        f"{cfg['vocab_size'] - cfg['acoustic_token_offset']}), NAR hidden={cfg['nar']['hidden_size']} "
        f"layers={cfg['nar']['num_hidden_layers']}, {cfg['num_codebooks']} codebooks"
    )
    print(
        f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, threads={env['threads']}, "
        f"cpus={env['cpu_count']}, load(1m) {env['loadavg_1m_before']} -> {env['loadavg_1m_after']}, "
        f"attn={env['attn_implementation']}"
    )
    loads = [v for v in (env["loadavg_1m_before"], env["loadavg_1m_after"]) if v is not None]
    if loads and max(loads) > env["threads"] + 0.5:
        print(
            f"warning: the 1-minute load average reached {max(loads):.2f} with {env['threads']} threads: other "
            "processes shared the CPUs, so absolute times are inflated and noisy."
        )
    if summary["train_step"]:
        print()
        print(
            f"training step = forward + backward + AdamW step, batch {cfg['batch_size']} x {cfg['seq_len']} tokens "
            f"(prompt {cfg['prompt_tokens']} + {cfg['seq_len'] - cfg['prompt_tokens'] - 1} acoustic + </Audio>), "
            f"median of {cfg['steps']} steps after {cfg['warmup']} warm-up, ms"
        )
        header = (f"{'stage':<16} | {'ours':>9} | {'ours LM only':>12} | {'bare':>9} | {'ours/bare':>9} | "
                  f"{'LM only/bare':>12} | {'NAR share':>9}")
        print(header)
        print("-" * len(header))
        for row in summary["train_step"]:
            label = "0 full" if row["stage"] == 0 else f"1 LoRA r={cfg['lora_r']}"
            print(
                f"{label:<16} | {row['ours_ms']:>9.1f} | {row['ours_lm_only_ms']:>12.1f} | {row['bare_ms']:>9.1f} | "
                f"{row['ratio_ours_over_bare']:>9.3f} | {row['ratio_ours_lm_only_over_bare']:>12.3f} | "
                f"{100 * row['nar_share_of_ours']:>8.1f}%"
            )
        goal = summary["goal_ratio"]
        for row in summary["train_step"]:
            verdict = "met" if row["ratio_ours_over_bare"] <= goal else "NOT met"
            groups = ", ".join(f"{k} {v:,}" for k, v in row["ours_trainable_groups"].items() if v)
            print(
                f"  stage {row['stage']}: ours/bare {row['ratio_ours_over_bare']:.3f} (goal <= {goal}: {verdict}); "
                f"trainable ours {row['ours_trainable']:,} ({groups}) vs bare {row['bare_trainable']:,}; first-step "
                f"LM loss ours {row['first_step_lm_loss']['ours']:.4f} = bare {row['first_step_lm_loss']['bare']:.4f}"
            )
    prep = summary.get("preprocessing")
    if prep:
        print()
        print(
            f"EnCodec tokenization (add_audio_codes, load_from_cache_file=False, fresh cache): {prep['clips']} "
            f"SynthFoley clips x {prep['clip_seconds']:g} s = {prep['audio_seconds']:g} s of audio, median of "
            f"{prep['repeats']} runs"
        )
        header = f"{'codec':<11} | {'params':>9} | {'num_proc':>8} | {'seconds':>8} | {'audio s / s':>11}"
        print(header)
        print("-" * len(header))
        for row in prep["rows"]:
            print(
                f"{row['codec']:<11} | {row['codec_parameters']:>9,d} | {row['num_proc']!s:>8} | "
                f"{row['seconds']:>8.2f} | {row['audio_seconds_per_second']:>11.1f}"
            )
        if not prep["synthfoley_codec_found"]:
            print(f"  SynthFoley codec: no {prep['synthfoley_codec']}/config.json, so only the tiny codec was timed.")
    print()


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = load_average()
    import peft

    config = build_config(args, args.seq_len)
    base = build_ours(config, args.seed)
    attn = base.language_model.config._attn_implementation
    train_rows = [time_stage(config, base, args, stage) for stage in args.stages]
    del base
    gc.collect()  # the models and optimizer states of part 1 before forking workers in part 2

    preprocessing = None
    if not args.no_prep:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        with tempfile.TemporaryDirectory(prefix="bench_train_") as workdir:
            preprocessing = time_preprocessing(args, Path(workdir))
    load_after = load_average()

    summary = {
        "benchmark": "train",
        "config": {
            **backbone_summary(args, config),
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "prompt_tokens": args.prompt_tokens,
            "lora_r": args.lora_r,
            "lr": args.lr,
            "steps": args.steps,
            "warmup": args.warmup,
        },
        "environment": environment(attn, load_before, load_after, peft=peft.__version__),
        "goal_ratio": 1.2,
        "train_step": train_rows,
        "preprocessing": preprocessing,
    }
    print_report(summary)
    emit(summary, args.json_out)
    return summary


if __name__ == "__main__":
    main()
