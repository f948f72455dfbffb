#!/usr/bin/env python
"""C3LLM at full size against the bare backbone: loading, generation and one LoRA training step.

What is compared
----------------
Both sides come from the same random stand-ins of the real checkpoints (`c3llm standins --size full`: Gemma-2B with
a 256,000-token tokenizer, EnCodec 24 kHz, CLAP HTSAT-unfused, CLIP ViT-B/32; built once into a cache, about 6.3 GB):

* ours: the folder `c3llm build` assembles from them (`--dtype bfloat16`; the default NAR head, 1024 wide and 12
  layers; 2 codebooks), loaded with `from_pretrained`;
* bare: `GemmaForCausalLM.from_pretrained` of the Gemma stand-in itself (256,000 tokens, bf16).

1. Loading: `from_pretrained(..., dtype=bfloat16)` in a fresh process per load (ours through `AutoModel` and the
   folder's remote code, as a user loads it), `--repeats` loads per side, interleaved; median time and peak RSS
   growth during the load, and until every page of the weights has been read (safetensors maps the files, so the
   weights become resident only when used). With the files in the page cache (warm), and, where allowed (root),
   with the page cache emptied before each load (cold: the files come from disk).
2. Generation at batch 1, bf16, after one warm-up each, `--repeats` timed calls per side, interleaved:
   * ours text-to-audio: `generate` for `--audio-seconds` of audio (75 coarse tokens per second), sampling top-k 50,
     no guidance: prompt embedding, the LLM's steps (whose output layer computes only the acoustic rows), the NAR
     head's pass and EnCodec decoding. Per token = the whole call / coarse tokens;
   * bare: `generate` of the same number of new tokens after a prompt of the same length (`<Audio>`, which it does
     not know, replaced by a text token), sampling top-k 50 over its 256,000-token head. Per token = call / tokens;
   * masked: ours with a masked decoder added (`add_masked_decoder(--masked-layers)`, the NAR head's width; random
     and bf16), `generate(decoding="masked", decoding_steps=--decoding-steps)` for the same clip. Per frame.
   The H100 projection per token is bandwidth bound: the bf16 bytes each step reads (the weights it uses, the KV
   cache at its length; ours also its NAR and codec passes spread over the clip's tokens) / 3.35 TB/s.
3. One stage-1 LoRA training step (forward, backward, AdamW step) at batch 1 x `--train-seq-len` tokens, bf16
   frozen weights (PEFT keeps the LoRA weights in fp32), with and without activation checkpointing, each in a fresh
   process: ours = `prepare_model(ModelArguments(stage=1))` (LoRA r=16 on the LLM's projections, the new token rows,
   the projectors; the NAR head runs frozen on the codes) on a text-to-audio row; bare = the same `LoraConfig` on
   the same tokens (acoustic ids mapped into its vocabulary). `--train-processes` processes per side, alternating
   sides; in each, one warm-up step, then `--train-steps` timed ones: the median over all of them; peak RSS over the
   steps (VmHWM, reset after loading; mapped weights count once read) and its growth above the loaded model.

Prints a table and a final JSON line starting with `{"benchmark": "scale"`. Goals (issue 15): load time and peak
memory <= 1.2x bare, generation per token <= 1.0x bare, a LoRA step <= 1.2x bare in time and memory.

    python benchmarks/bench_scale.py                 # full size: ~6 GB of stand-ins + ~5.6 GB assembled, 24 GB RAM
    python benchmarks/bench_scale.py --size tiny     # the same on the tests' tiny stand-ins, in a minute
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (str(HERE), str(HERE.parent)):
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads

import torch  # noqa: E402
from transformers import GemmaForCausalLM  # noqa: E402

from bench_generate import current_rss_kib, make_prompt, peak_rss_kib, reset_peak_rss, run_bare, run_ours  # noqa: E402
from bench_load import load_once  # noqa: E402
from bench_train import make_batch, train_step  # noqa: E402
from common import emit, environment, load_average  # noqa: E402

from c3llm.standins import folder_bytes, standin_cache  # noqa: E402
from modeling_c3llm import C3LLMForConditionalGeneration  # noqa: E402

TINY_NAR = '{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}'
GOALS = {"load_time": 1.2, "load_memory": 1.2, "per_token": 1.0, "train_time": 1.2, "train_memory": 1.2}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["full", "tiny"], default="full",
                        help="full: the real configurations; tiny: the tests' stand-ins (to try the script)")
    parser.add_argument("--cache", metavar="DIR", help="stand-in cache (default: `c3llm standins`' cache)")
    parser.add_argument("--parts", nargs="+", choices=["load", "generate", "train"],
                        default=["load", "generate", "train"], help="which measurements to run")
    parser.add_argument("--repeats", type=int, default=2, help="fresh-process loads, and timed generate calls, per side")
    parser.add_argument("--audio-seconds", type=float, default=1.0, help="length of the generated clip")
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt length of both sides")
    parser.add_argument("--decoding-steps", type=int, default=8, help="masked decoding: parallel passes over the clip")
    parser.add_argument("--masked-layers", type=int, default=None,
                        help="masked decoder layers (default: the NAR head's)")
    parser.add_argument("--train-seq-len", type=int, default=256,
                        help="tokens of the training row (prompt, coarse codes, </Audio>); 256 = 3.2 s of audio")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps after one warm-up step")
    parser.add_argument("--train-processes", type=int, default=2,
                        help="fresh processes per side and setting (their timed steps are pooled)")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (stage1.yaml's)")
    parser.add_argument("--bandwidth-tbs", type=float, default=3.35, help="H100 SXM HBM3 bandwidth, TB/s")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts, codes and sampling")
    parser.add_argument("--json-out", type=Path, help="also write the final JSON line to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one fresh-process training measurement
    return parser.parse_args(argv)


# ---- the folders ----------------------------------------------------------------------------------------------------
def folders(args) -> tuple[dict[str, Path], Path, float]:
    """The stand-in parts (built once) and the C3LLM folder `c3llm build` assembles from them (built once)."""
    start = time.perf_counter()
    parts = standin_cache(args.size, args.cache, seed=0)
    # Named after the code that builds and loads it, so a change to that code assembles anew (older ones are removed).
    sources = sorted([*(HERE.parent / "modeling_c3llm").glob("*.py"), *(HERE.parent / "processing_c3llm").glob("*.py"),
                      HERE.parent / "conversion" / "build_c3llm.py"])  # fmt: skip
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:12]
    prefix = f"{parts['llm'].parent.name}-c3llm-bf16-"
    assembled = parts["llm"].parent.parent / f"{prefix}{digest}"
    if not assembled.is_dir():
        for old in parts["llm"].parent.parent.glob(f"{prefix}*"):
            shutil.rmtree(old)
        command = [sys.executable, "-m", "c3llm.cli", "build", "--dtype", "bfloat16", "--out", str(assembled)]
        for name in ("llm", "codec", "audio_encoder", "vision_encoder"):
            command += [f"--{name.replace('_', '-')}", str(parts[name])]
        if args.size == "tiny":
            command += ["--nar-config", TINY_NAR]
        print("assembling:", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=HERE.parent)
    return parts, assembled, time.perf_counter() - start


# ---- 1. loading -----------------------------------------------------------------------------------------------------
def drop_page_cache() -> bool:
    """Empties the OS page cache (Linux, as root), so the next load reads its files from disk; False if not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("1")
        return True
    except OSError:
        return False


def measure_load(parts, assembled, args, cold: bool) -> dict:
    """Fresh-process loads, interleaved; `cold`: the page cache is emptied before each (the files come from disk)."""
    runs = {"bare": [], "ours": []}
    for repeat in range(args.repeats):
        order = ("bare", "ours") if repeat % 2 == 0 else ("ours", "bare")
        for side in order:
            folder, kind = (parts["llm"], "backbone") if side == "bare" else (assembled, "assembled")
            if cold:
                drop_page_cache()
            runs[side].append(load_once(folder, kind, dtype="bfloat16"))
    result = {"page_cache": "emptied before each load (files read from disk)" if cold else
              "warm (the files were read by an earlier load)"}  # fmt: skip
    for side, rows in runs.items():
        result[side] = {"seconds": statistics.median(r["seconds"] for r in rows),
                        "peak_growth_gb": statistics.median(r["peak_growth"] for r in rows) / 1e9,
                        "ready_seconds": statistics.median(r["ready_seconds"] for r in rows),
                        "ready_peak_growth_gb": statistics.median(r["ready_peak_growth"] for r in rows) / 1e9,
                        "weights_gb": rows[0]["weights"] / 1e9, "raw_s": [r["seconds"] for r in rows]}  # fmt: skip
    result["time_ratio"] = result["ours"]["seconds"] / result["bare"]["seconds"]
    result["memory_ratio"] = result["ours"]["peak_growth_gb"] / result["bare"]["peak_growth_gb"]
    result["ready_time_ratio"] = result["ours"]["ready_seconds"] / result["bare"]["ready_seconds"]
    result["ready_memory_ratio"] = result["ours"]["ready_peak_growth_gb"] / result["bare"]["ready_peak_growth_gb"]
    result["weights_ratio"] = result["ours"]["weights_gb"] / result["bare"]["weights_gb"]
    return result


# ---- 2. generation --------------------------------------------------------------------------------------------------
def _bytes(module: torch.nn.Module | None) -> int:
    """bf16 bytes of a module's floating-point weights (tied weights once)."""
    if module is None:
        return 0
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()}
    return 2 * sum(t.numel() for t in tensors.values())


def h100_per_token(ours, bare, prompt: int, tokens: int, bandwidth_tbs: float) -> dict:
    """Bandwidth-bound time per coarse token on one H100: bytes read per step / bandwidth (batch 1 reads every
    weight it uses once per step; its FLOPs take microseconds)."""
    text = bare.config
    kv_per_position = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * 2  # K and V, bf16
    kv = kv_per_position * (prompt + tokens / 2)  # the cache read at the mean step's length
    embedding = bare.get_input_embeddings().weight
    hidden = embedding.shape[1]
    bare_step = _bytes(bare) + kv  # tied head: the whole 256,000-row matrix; the input side gathers one row
    config = ours.config
    rows = config.audio_end_token_id + 1 - config.acoustic_token_offset
    ours_step = _bytes(ours.language_model) - 2 * ours.language_model.get_input_embeddings().weight.numel()
    ours_step += 2 * rows * hidden + kv  # the head computes the acoustic span only
    clip = (config.num_codebooks - 1) * _bytes(ours.nar_head) + _bytes(ours.codec)  # once per clip
    ours_token = ours_step + clip / tokens
    return {"bandwidth_tb_per_s": bandwidth_tbs, "bare_bytes_per_token": bare_step, "ours_bytes_per_token": ours_token,
            "bare_ms_per_token": 1000 * bare_step / (bandwidth_tbs * 1e12),
            "ours_ms_per_token": 1000 * ours_token / (bandwidth_tbs * 1e12),
            "ratio": ours_token / bare_step, "head_rows": {"ours": rows, "bare": embedding.shape[0]}}  # fmt: skip


def measure_generate(parts, assembled, args) -> dict:
    ours = C3LLMForConditionalGeneration.from_pretrained(assembled, dtype=torch.bfloat16).eval()
    bare = GemmaForCausalLM.from_pretrained(parts["llm"], dtype=torch.bfloat16).eval()
    config = ours.config
    tokens = round(args.audio_seconds * config.frame_rate)
    ids, mask = make_prompt(config, 1, args.prompt_tokens, args.seed)
    bare_ids = ids.clone()
    bare_ids[:, -1] = 3  # `<Audio>` is beyond the bare vocabulary; any text token keeps the length
    run_ours(ours, ids, mask, 8, config.frame_rate, args.seed)  # warm-ups
    run_bare(bare, bare_ids, mask, 8, args.seed)
    times = {"ours": [], "bare": []}
    for repeat in range(args.repeats):
        for side in (("ours", "bare") if repeat % 2 == 0 else ("bare", "ours")):
            if side == "ours":
                times[side].append(run_ours(ours, ids, mask, tokens, config.frame_rate, args.seed)[0])
            else:
                times[side].append(run_bare(bare, bare_ids, mask, tokens, args.seed))
    projection = h100_per_token(ours, bare, args.prompt_tokens, tokens, args.bandwidth_tbs)

    ours.add_masked_decoder(args.masked_layers).to(torch.bfloat16).eval()
    masked = []
    for _ in range(1 + args.repeats):  # the first is the warm-up
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        out = ours.generate(input_ids=ids, attention_mask=mask, audio_length_in_s=args.audio_seconds,
                            decoding="masked", decoding_steps=args.decoding_steps, do_sample=True, top_k=50)  # fmt: skip
        masked.append(time.perf_counter() - start)
        if out.audio_codes.shape[-1] != tokens:
            raise RuntimeError(f"masked decoding made {out.audio_codes.shape[-1]} frames, expected {tokens}")
    per_token = {side: statistics.median(values) / tokens for side, values in times.items()}
    return {
        "tokens": tokens, "audio_seconds": args.audio_seconds, "prompt_tokens": args.prompt_tokens,
        "ours_ms_per_token": 1000 * per_token["ours"], "bare_ms_per_token": 1000 * per_token["bare"],
        "ratio": per_token["ours"] / per_token["bare"],
        "masked_ms_per_frame": 1000 * statistics.median(masked[1:]) / tokens,
        "masked_over_bare_per_token": statistics.median(masked[1:]) / tokens / per_token["bare"],
        "decoding_steps": args.decoding_steps, "masked_layers": config.masked_decoder_config.num_hidden_layers,
        "h100_projection": projection, "raw_s": {**times, "masked": masked[1:]},
    }  # fmt: skip


# ---- 3. one LoRA training step (fresh process per side and setting) ---------------------------------------------------
def bare_batch(batch: dict, offset: int) -> dict:
    """The same row for the bare model: ids from the acoustic vocabulary on are mapped into its text vocabulary."""
    ids = batch["input_ids"]
    mapped = torch.where(ids >= offset, 3 + (ids - offset) % (offset - 3), ids)
    labels = torch.where(batch["labels"] == -100, batch["labels"], mapped)
    return {"input_ids": mapped, "attention_mask": batch["attention_mask"], "labels": labels}


def train_child(args) -> None:
    from peft import LoraConfig, get_peft_model

    from c3llm.training import ModelArguments, prepare_model

    side, checkpointing = args.child.split(":")
    parts, assembled, _ = folders(args)
    rss_start = current_rss_kib()
    ours = C3LLMForConditionalGeneration.from_pretrained(assembled, dtype=torch.bfloat16)
    config = ours.config
    batch = make_batch(config, 1, args.train_seq_len, args.prompt_tokens, args.seed)
    model_args = ModelArguments(stage=1, lora_r=args.lora_r)
    if side == "ours":
        model = prepare_model(ours, model_args)
    else:
        del ours
        model = GemmaForCausalLM.from_pretrained(parts["llm"], dtype=torch.bfloat16)
        model.requires_grad_(False)
        model = get_peft_model(model, LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                                                 lora_dropout=model_args.lora_dropout,
                                                 target_modules=list(model_args.lora_target_modules)))  # fmt: skip
        batch = bare_batch(batch, config.acoustic_token_offset)
    if checkpointing == "1":
        model.activation_checkpointing_enable()  # as the Trainer does for `activation_checkpointing: true`
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loaded = current_rss_kib()
    reset_peak_rss()
    seconds, losses = [], []
    for _ in range(1 + args.train_steps):
        elapsed, loss, _ = train_step(model, optimizer, batch)
        seconds.append(elapsed)
        losses.append(loss)
    peak = peak_rss_kib()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("RESULT " + json.dumps({"seconds": statistics.median(seconds[1:]), "raw_s": seconds, "losses": losses,
                                  "peak_rss_gb": peak * 1024 / 1e9, "loaded_rss_gb": loaded * 1024 / 1e9,
                                  "step_growth_gb": (peak - loaded) * 1024 / 1e9,
                                  "start_rss_gb": rss_start * 1024 / 1e9, "trainable": trainable}), flush=True)  # fmt: skip


def measure_train(args) -> dict:
    result = {"seq_len": args.train_seq_len, "batch": 1, "lora_r": args.lora_r}
    same = ["--size", args.size, "--train-seq-len", str(args.train_seq_len), "--train-steps", str(args.train_steps),
            "--lora-r", str(args.lora_r), "--prompt-tokens", str(args.prompt_tokens), "--seed", str(args.seed)]
    same += ["--cache", args.cache] if args.cache else []
    for checkpointing in ("0", "1"):
        runs = {"bare": [], "ours": []}
        for process in range(args.train_processes):  # bare, ours, ours, bare, ...: neither side always runs first
            for side in (("bare", "ours") if process % 2 == 0 else ("ours", "bare")):
                command = [sys.executable, str(Path(__file__).resolve()), *same, "--child", f"{side}:{checkpointing}"]
                run = subprocess.run(command, capture_output=True, text=True, check=False)
                if run.returncode != 0:
                    raise RuntimeError(f"training step ({side}, checkpointing {checkpointing}) failed:\n"
                                       f"{run.stderr[-3000:]}")  # fmt: skip
                line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
                runs[side].append(json.loads(line[7:]))
        for side, rows in runs.items():  # the median timed step over all processes; the median process's memory
            result[f"{side}_checkpointing_{checkpointing}"] = {
                "seconds": statistics.median(s for r in rows for s in r["raw_s"][1:]),
                **{key: statistics.median(r[key] for r in rows) for key in
                   ("peak_rss_gb", "loaded_rss_gb", "step_growth_gb", "start_rss_gb")},
                "trainable": rows[0]["trainable"], "processes": rows,
            }  # fmt: skip
    for checkpointing in ("0", "1"):
        ours, bare = result[f"ours_checkpointing_{checkpointing}"], result[f"bare_checkpointing_{checkpointing}"]
        result[f"time_ratio_checkpointing_{checkpointing}"] = ours["seconds"] / bare["seconds"]
        result[f"memory_ratio_checkpointing_{checkpointing}"] = ours["peak_rss_gb"] / bare["peak_rss_gb"]
        result[f"step_growth_ratio_checkpointing_{checkpointing}"] = ours["step_growth_gb"] / bare["step_growth_gb"]
    for side in ("ours", "bare"):
        result[f"{side}_checkpointing_saves_gb"] = (result[f"{side}_checkpointing_0"]["step_growth_gb"]
                                                    - result[f"{side}_checkpointing_1"]["step_growth_gb"])  # fmt: skip
    return result


# ---- report ---------------------------------------------------------------------------------------------------------
def print_report(summary: dict) -> None:
    rows = []

    def row(name, ours, bare, unit, ratio, goal):
        mark = "" if goal is None else ("meets" if ratio <= goal else "MISSES")
        rows.append(f"{name:<52} {ours:>10.3g} {bare:>10.3g} {unit:<6} {ratio:>6.2f}x {mark} "
                    f"{'' if goal is None else f'(goal <= {goal}x)'}")  # fmt: skip

    for key, cache in (("load", "warm cache"), ("load_cold", "cold cache")):
        if key not in summary:
            continue
        load = summary[key]
        row(f"from_pretrained time (bf16, {cache})", load["ours"]["seconds"], load["bare"]["seconds"], "s",
            load["time_ratio"], GOALS["load_time"])
        row(f"from_pretrained peak RSS growth ({cache})", load["ours"]["peak_growth_gb"],
            load["bare"]["peak_growth_gb"], "GB", load["memory_ratio"], GOALS["load_memory"])
        row(f"loaded, every weight page read: time ({cache})", load["ours"]["ready_seconds"],
            load["bare"]["ready_seconds"], "s", load["ready_time_ratio"], GOALS["load_time"])
        row(f"loaded, every weight page read: peak RSS ({cache})", load["ours"]["ready_peak_growth_gb"],
            load["bare"]["ready_peak_growth_gb"], "GB", load["ready_memory_ratio"], GOALS["load_memory"])
    if "load" in summary:
        load = summary["load"]
        row("weights (bf16)", load["ours"]["weights_gb"], load["bare"]["weights_gb"], "GB", load["weights_ratio"], None)
    if "generate" in summary:
        gen = summary["generate"]
        row(f"text-to-audio per token ({gen['tokens']} tokens)", gen["ours_ms_per_token"], gen["bare_ms_per_token"],
            "ms", gen["ratio"], GOALS["per_token"])
        row(f"masked per frame ({gen['decoding_steps']} steps) vs bare", gen["masked_ms_per_frame"],
            gen["bare_ms_per_token"], "ms", gen["masked_over_bare_per_token"], None)
        h100 = gen["h100_projection"]
        row("H100 projection per token (bandwidth)", h100["ours_ms_per_token"], h100["bare_ms_per_token"], "ms",
            h100["ratio"], GOALS["per_token"])
    if "train" in summary:
        train = summary["train"]
        for c, name in (("0", "LoRA step"), ("1", "LoRA step, activation checkpointing")):
            ours, bare = train[f"ours_checkpointing_{c}"], train[f"bare_checkpointing_{c}"]
            row(f"{name}: time", ours["seconds"], bare["seconds"], "s", train[f"time_ratio_checkpointing_{c}"],
                GOALS["train_time"])
            row(f"{name}: peak RSS", ours["peak_rss_gb"], bare["peak_rss_gb"], "GB",
                train[f"memory_ratio_checkpointing_{c}"], GOALS["train_memory"])
            row(f"{name}: RSS growth in the step", ours["step_growth_gb"], bare["step_growth_gb"], "GB",
                train[f"step_growth_ratio_checkpointing_{c}"], None)
    print(f"\n{'measure':<52} {'ours':>10} {'bare':>10} {'unit':<6} {'ratio':>7}")
    print("\n".join(rows))
    if "train" in summary:
        train = summary["train"]
        print(f"activation checkpointing saves {train['ours_checkpointing_saves_gb']:.2f} GB in ours' step "
              f"({train['bare_checkpointing_saves_gb']:.2f} GB in bare's) at {train['seq_len']} tokens")


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        train_child(args)
        return None
    parts, assembled, build_seconds = folders(args)
    summary = {"benchmark": "scale", "size": args.size, "standins_gb": folder_bytes(parts["llm"].parent) / 1e9,
               "assembled_gb": folder_bytes(assembled) / 1e9, "folders_seconds": build_seconds,
               "dtype": "bfloat16"}  # fmt: skip
    before = load_average()
    if "load" in args.parts:
        load_once(parts["llm"], "backbone", dtype="bfloat16")  # both folders in the page cache for the warm loads
        load_once(assembled, "assembled", dtype="bfloat16")
        summary["load"] = measure_load(parts, assembled, args, cold=False)
        if drop_page_cache():
            summary["load_cold"] = measure_load(parts, assembled, args, cold=True)
        else:
            print("(cold loads skipped: emptying the page cache needs root)")
    if "generate" in args.parts:
        with torch.no_grad():
            summary["generate"] = measure_generate(parts, assembled, args)
    if "train" in args.parts:
        summary["train"] = measure_train(args)
    summary["goals"] = GOALS
    summary["environment"] = environment("sdpa", before, load_average())
    print_report(summary)
    emit(summary, args.json_out)
    return summary


if __name__ == "__main__":
    main()
