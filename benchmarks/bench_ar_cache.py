#!/usr/bin/env python
"""Autoregressive C3LLM generation on CPU: the default dynamic KV cache against a static cache and torch.compile.

What is compared
----------------
``C3LLMForConditionalGeneration.generate`` on a text-to-audio prompt (ends with ``<Audio>``) asking for ``--tokens``
coarse acoustic tokens (``audio_length_in_s = tokens / frame_rate``), sampling with ``do_sample=True, top_k=50`` (the
setting of ``bench_generate.py``), at each of ``--batch-sizes``, with the backbone of ``bench_generate.py`` (Gemma
512 wide, 8 layers by default). The variants (``--variants``):

* dynamic: the default (transformers' ``DynamicCache``, eager PyTorch).
* static: ``generate(..., cache_implementation="static")`` (transformers' ``StaticCache``, preallocated to the
  prompt plus ``--tokens``), eager.
* compiled-dynamic: the default cache, with the Gemma trunk the audio path runs every step
  (``model.language_model.model.forward``) replaced by ``torch.compile(..., dynamic=True)`` (inductor).
* compiled-static: the static cache and the same compiled trunk (``torch.compile`` with static shapes: one graph for
  the prefill, one for the decoding steps, per batch size).
* hf-compile-static: the static cache and transformers' own compilation of the decoding steps
  (``compile_config=CompileConfig(mode="default")`` with ``_compile_all_devices=True``, which it otherwise skips on
  CPU): it compiles the whole ``C3LLMForConditionalGeneration.__call__``.

Each variant runs once per batch size as a warm-up first (its seconds, minus its own median, are reported as the
compile time); then the variants run interleaved (the order reversed every other repeat), and the
median over ``--repeats`` is reported as milliseconds per generated token of the whole call (prompt embedding,
prefill, the decoding steps, the NAR head and EnCodec decoding, which are the same in every variant). Correctness:
every variant generates greedily (``do_sample=False``) from the same prompt and seed, and its codes are compared with
the dynamic variant's. A variant that raises is reported with its exact error and left out of the timings.

Run from anywhere: ``python benchmarks/bench_ar_cache.py --help``. Prints a table and a final JSON line starting with
``{"benchmark": "ar_cache"``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from transformers import CompileConfig  # noqa: E402

from common import (  # noqa: E402
    add_backbone_arguments,
    backbone_summary,
    build_config,
    build_ours,
    emit,
    environment,
    load_average,
)


VARIANTS = ("dynamic", "static", "compiled-dynamic", "compiled-static", "hf-compile-static")


# ---- argument parsing -------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Times C3LLM's autoregressive text-to-audio generate on CPU with the default dynamic KV cache, "
            "transformers' static cache and torch.compile (inductor), checks that greedy decoding gives the same "
            "codes, and prints a table and a final JSON line starting with {\"benchmark\": \"ar_cache\"."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_backbone_arguments(parser)
    run = parser.add_argument_group("workload and measurement")
    run.add_argument("--tokens", type=int, default=150, help="Coarse acoustic tokens per call; 75 = 1 s of audio.")
    run.add_argument(
        "--prompt-tokens", type=int, default=16, help="Prompt length: <bos>, random text ids, then <Audio>."
    )
    run.add_argument("--batch-sizes", type=str, default="1,4", help="Comma-separated batch sizes; one row each.")
    run.add_argument(
        "--variants",
        type=str,
        default=",".join(VARIANTS),
        help=f"Comma-separated variants to run, among {', '.join(VARIANTS)} (dynamic always runs: the reference).",
    )
    run.add_argument("--repeats", type=int, default=3, help="Timed calls per variant and batch size (median reported).")
    run.add_argument("--threads", type=int, default=2, help="torch.set_num_threads value.")
    run.add_argument("--seed", type=int, default=0, help="Seed for the weights, the prompt and the sampling.")
    run.add_argument("--no-check", action="store_true", help="Skip the greedy same-codes check.")
    run.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="Use inductor's on-disk cache as it is (compile times then depend on earlier runs); by default the "
        "compiled variants start from an empty temporary cache, so compile_s is a cold compile.",
    )
    run.add_argument(
        "--recompile-limit",
        type=int,
        default=64,
        help="torch._dynamo recompile_limit: the compiled variants share the trunk's code object, and the prefill, "
        "the first steps, each batch size and the greedy check each add a graph; at dynamo's default (8) the later "
        "ones would silently run eager.",
    )
    run.add_argument(
        "--json-out", type=Path, default=None, help="Also write the final JSON object to this path (atomically)."
    )
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    args.variants = ["dynamic"] + [v.strip() for v in str(args.variants).split(",") if v.strip() and v.strip() != "dynamic"]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown --variants {unknown}; choose among {', '.join(VARIANTS)}")
    for name in ("hidden_size", "layers", "heads", "kv_heads", "head_dim", "intermediate", "text_vocab", "tokens",
                 "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.prompt_tokens < 2:
        parser.error("--prompt-tokens must be >= 2 (<bos> and <Audio>)")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must list positive integers")
    return args


# ---- the variants -------------------------------------------------------------------------------------------------
class Variants:
    """Switches one model between the variants: the generate keywords of each, and the compiled trunk installed as an
    instance attribute (`language_model.model.forward`) only while a compiled variant runs."""

    def __init__(self, model):
        self.model = model
        self.trunk = model.language_model.model
        self.compiled = {}

    def _compiled_trunk(self, dynamic: bool):
        if dynamic not in self.compiled:
            forward = type(self.trunk).forward.__get__(self.trunk)
            self.compiled[dynamic] = torch.compile(forward, dynamic=dynamic or None, backend="inductor")
        return self.compiled[dynamic]

    def generate_kwargs(self, variant: str) -> dict:
        if variant in ("static", "compiled-static", "hf-compile-static"):
            kwargs = {"cache_implementation": "static"}
        else:
            kwargs = {}
        if variant == "hf-compile-static":
            config = CompileConfig(mode="default", fullgraph=False)
            config._compile_all_devices = True  # transformers compiles only on GPUs unless told to
            kwargs["compile_config"] = config
        else:
            kwargs["disable_compile"] = True
        return kwargs

    def install(self, variant: str) -> None:
        self.trunk.__dict__.pop("forward", None)
        if variant == "compiled-dynamic":
            self.trunk.forward = self._compiled_trunk(dynamic=True)
        elif variant == "compiled-static":
            self.trunk.forward = self._compiled_trunk(dynamic=False)

    def uninstall(self) -> None:
        self.trunk.__dict__.pop("forward", None)


def _graphs() -> int:
    """Graphs dynamo has compiled so far in this process."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def make_prompt(config, batch: int, length: int, seed: int):
    """`<bos>`, random text ids in [3, acoustic_token_offset), `<Audio>`; no padding."""
    generator = torch.Generator().manual_seed(seed)
    bos = torch.full((batch, 1), config.text_config.bos_token_id, dtype=torch.long)
    text = torch.randint(3, config.acoustic_token_offset, (batch, length - 2), generator=generator)
    audio = torch.full((batch, 1), config.audio_start_token_id, dtype=torch.long)
    input_ids = torch.cat([bos, text, audio], dim=1)
    return input_ids, torch.ones_like(input_ids)


def run(variants: Variants, variant: str, input_ids, attention_mask, tokens: int, seed: int, sample: bool = True):
    """One generate call of `variant`: (seconds, codes)."""
    model = variants.model
    variants.install(variant)
    try:
        torch.manual_seed(seed)
        start = time.perf_counter()
        out = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, audio_length_in_s=tokens / model.config.frame_rate,
            do_sample=sample, top_k=50 if sample else None, **variants.generate_kwargs(variant),
        )  # fmt: skip
        elapsed = time.perf_counter() - start
    finally:
        variants.uninstall()
    new = out.sequences.shape[1] - input_ids.shape[1]
    if new != tokens:
        raise RuntimeError(f"{variant} generated {new} tokens, expected {tokens}")
    return elapsed, out.audio_codes


def time_batch(variants: Variants, config, args, batch: int, failures: dict) -> dict:
    input_ids, attention_mask = make_prompt(config, batch, args.prompt_tokens, args.seed)
    first, graphs = {}, {}
    active = []
    for variant in args.variants:  # warm-up: the first call (compilation for the compiled variants)
        if variant in failures:
            continue
        try:
            graphs_before = _graphs()
            first[variant] = run(variants, variant, input_ids, attention_mask, args.tokens, args.seed)[0]
            graphs[variant] = _graphs() - graphs_before
            active.append(variant)
        except Exception as error:  # noqa: BLE001 - reported, not hidden
            failures[variant] = {"batch_size": batch, "error": f"{type(error).__name__}: {error}",
                                 "traceback": traceback.format_exc(limit=6)}  # fmt: skip
            print(f"{variant} failed at batch {batch}: {type(error).__name__}: {error}", file=sys.stderr)
    graphs_after_warmup = _graphs()
    times = {variant: [] for variant in active}
    for r in range(args.repeats):
        seed = args.seed + 1 + r
        for variant in active if r % 2 == 0 else active[::-1]:
            times[variant].append(run(variants, variant, input_ids, attention_mask, args.tokens, seed)[0])
    graphs_timed = _graphs() - graphs_after_warmup  # must be 0: no compilation inside the timed calls
    med = {variant: statistics.median(values) for variant, values in times.items()}
    check = {}
    if not args.no_check:
        reference = run(variants, "dynamic", input_ids, attention_mask, args.tokens, args.seed, sample=False)[1]
        for variant in active[1:]:
            try:
                codes = run(variants, variant, input_ids, attention_mask, args.tokens, args.seed, sample=False)[1]
            except Exception as error:  # noqa: BLE001 - reported, not hidden
                check[variant] = {"same_codes": False, "error": f"{type(error).__name__}: {error}"}
                continue
            same = codes == reference
            check[variant] = {"same_codes": bool(same.all()), "share_equal": float(same.float().mean()),
                              "first_difference_frame": None if bool(same.all())
                              else int((~same).any(0).any(0).nonzero()[0])}  # fmt: skip
    reference_s = med["dynamic"]
    return {
        "batch_size": batch,
        "tokens": args.tokens,
        "ms_per_token": {variant: 1000 * value / args.tokens for variant, value in med.items()},
        "ratio_over_dynamic": {variant: value / reference_s for variant, value in med.items()},
        "first_call_s": first,
        "compile_s": {variant: first[variant] - med[variant] for variant in active if "compile" in variant},
        "graphs_compiled_in_first_call": {variant: graphs[variant] for variant in active if "compile" in variant},
        "graphs_compiled_in_timed_calls": graphs_timed,
        "greedy_check": check,
        "raw_s": times,
    }


# ---- reporting ----------------------------------------------------------------------------------------------------
def print_report(summary: dict) -> None:
    cfg, env = summary["config"], summary["environment"]
    print()
    print(
        f"C3LLM autoregressive generate, KV cache and torch.compile  |  Gemma hidden={cfg['hidden_size']} "
        f"layers={cfg['layers']} heads={cfg['heads']} kv_heads={cfg['kv_heads']} intermediate={cfg['intermediate']}, "
        f"{cfg['tokens']} tokens, do_sample top_k=50, repeats={cfg['repeats']} (median)"
    )
    print(
        f"torch {env['torch']}, transformers {env['transformers']}, threads={env['threads']}, cpus={env['cpu_count']}, "
        f"load(1m) {env['loadavg_1m_before']} -> {env['loadavg_1m_after']}"
    )
    loads = [v for v in (env["loadavg_1m_before"], env["loadavg_1m_after"]) if v is not None]
    if loads and max(loads) > env["threads"] + 0.5:
        print(f"warning: the 1-minute load average reached {max(loads):.2f}: other processes shared the CPUs.")
    variants = summary["config"]["variants"]
    header = f"{'batch':>5} | " + " | ".join(f"{v:>17}" for v in variants)
    print()
    print("ms per token (ratio over dynamic; first call incl. compilation in seconds)")
    print(header)
    print("-" * len(header))
    for row in summary["timings"]:
        cells = []
        for v in variants:
            cells.append(f"{row['ms_per_token'][v]:>8.2f} ({row['ratio_over_dynamic'][v]:.3f})" if v in row["ms_per_token"]
                         else f"{'failed':>17}")  # fmt: skip
        print(f"{row['batch_size']:>5} | " + " | ".join(f"{c:>17}" for c in cells))
        cells = [f"first {row['first_call_s'][v]:.1f} s" if v in row["first_call_s"] else "" for v in variants]
        print(f"{'':>5} | " + " | ".join(f"{c:>17}" for c in cells))
        for v, check in row["greedy_check"].items():
            if "error" in check:
                print(f"      greedy check of {v} failed: {check['error']}")
                continue
            print(f"      greedy codes of {v} vs dynamic: {'identical' if check['same_codes'] else 'DIFFER'} "
                  f"({100 * check['share_equal']:.1f}% equal)")  # fmt: skip
        print(f"      graphs compiled in the first calls {row['graphs_compiled_in_first_call']}, in the timed calls "
              f"{row['graphs_compiled_in_timed_calls']}")
    for variant, failure in summary["failures"].items():
        print(f"{variant} failed (batch {failure['batch_size']}): {failure['error']}")
    print()


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = args.recompile_limit
    torch._dynamo.config.accumulated_recompile_limit = max(args.recompile_limit * 4,
                                                           torch._dynamo.config.accumulated_recompile_limit)  # fmt: skip
    cache = None
    if not args.warm_compile_cache:  # a cold compile: inductor and its FX-graph cache write into an empty folder
        cache = tempfile.TemporaryDirectory(prefix="bench_ar_cache_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    load_before = load_average()
    config = build_config(args, args.prompt_tokens + args.tokens + 8)
    model = build_ours(config, args.seed).eval()
    variants = Variants(model)
    failures: dict = {}
    timings = [time_batch(variants, config, args, batch, failures) for batch in args.batch_sizes]
    load_after = load_average()
    attn = {"ours": model.language_model.config._attn_implementation}
    summary = {
        "benchmark": "ar_cache",
        "config": {
            **backbone_summary(args, config),
            "tokens": args.tokens,
            "prompt_tokens": args.prompt_tokens,
            "repeats": args.repeats,
            "variants": args.variants,
            "sampling": "do_sample=True, top_k=50 (timings); do_sample=False (same-codes check)",
            "compile_cache": "warm (as found on disk)" if args.warm_compile_cache else "cold (empty temporary folder)",
        },
        "environment": environment(attn, load_before, load_after),
        "timings": timings,
        "failures": failures,
    }
    if cache is not None:
        cache.cleanup()
    print_report(summary)
    emit(summary, args.json_out)
    return summary


if __name__ == "__main__":
    main()
