"""Loading cost of an assembled C3LLM folder vs its bare backbone folder, at the same backbone size.

Builds random stand-ins of the pretrained parts (a Gemma backbone of the requested size, tiny EnCodec/CLAP/CLIP) as
Hub-style folders, assembles them with `c3llm build`'s code into a C3LLM folder, then loads each folder in a fresh
subprocess per repeat: `AutoModel.from_pretrained(folder, trust_remote_code=True)` vs
`AutoModelForCausalLM.from_pretrained(backbone)`. Reports the median load time and the peak RSS growth during the
load (Linux VmHWM after minus VmRSS before), their ratios (goal: at most 1.2x), and peak growth / weight bytes
(about 1.0 means one copy of the weights; 2.0 would mean a second copy was held).

    python benchmarks/bench_load.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import add_backbone_arguments

LOADER = r"""
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
for name in ("modeling_c3llm", "processing_c3llm", "conversion"):
    sys.modules[name] = None  # the assembled folder loads through its own code
import torch
from transformers import AutoModel, AutoModelForCausalLM

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

folder, kind, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
dtype = dtype if dtype == "auto" else getattr(torch, dtype)
torch.set_num_threads(1)
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
start = time.perf_counter()
if kind == "assembled":
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=dtype)
else:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
seconds = time.perf_counter() - start
peak = status("VmHWM")
# Safetensors weights may still be mapped from the files, not read: touching every page of each (as the first forward
# does) gives the time and resident memory until the model is ready to run.
tensors = {t.untyped_storage().data_ptr(): t for t in model.state_dict().values()}  # tied weights once
for tensor in tensors.values():
    tensor.detach().reshape(-1).view(torch.uint8)[::4096].sum()  # one byte per 4 KiB page
ready = time.perf_counter() - start
weights = sum(t.numel() * t.element_size() for t in tensors.values())
print("LOAD " + json.dumps({"seconds": seconds, "peak_growth": peak - before, "ready_seconds": ready,
                            "ready_peak_growth": status("VmHWM") - before, "weights": weights}))
"""


def load_once(folder: Path, kind: str, dtype: str = "auto") -> dict:
    """One `from_pretrained` of `folder` (`kind`: assembled or backbone) in a fresh process, in `dtype` (a torch
    dtype's name or "auto": the saved one)."""
    result = subprocess.run([sys.executable, "-c", LOADER, str(folder), kind, dtype], capture_output=True, text=True,
                            check=False, env={**os.environ, "PYTHONPATH": ""}, cwd=tempfile.gettempdir())
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    line = next(line for line in result.stdout.splitlines() if line.startswith("LOAD "))
    return json.loads(line[5:])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process loads per side (median reported)")
    parser.add_argument("--max-shard-size", default="5GB", help="shard size of the assembled folder")
    args = parser.parse_args(argv)

    os.environ["HF_HUB_OFFLINE"] = "1"
    import modeling_c3llm  # noqa: F401
    import processing_c3llm  # noqa: F401
    from conversion.build_c3llm import assemble_pretrained, save_folder
    from c3llm.standins import save_standin_parts

    with tempfile.TemporaryDirectory() as tmp:
        llm = {"hidden_size": args.hidden_size, "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
               "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "head_dim": args.head_dim,
               "vocab_size": args.text_vocab}
        parts = save_standin_parts(Path(tmp) / "parts", llm_overrides=llm)
        # The NAR head at the benchmarks' tiny size (benchmarks/common.py), so the backbone dominates both folders.
        from conversion.build_c3llm import tiny_config

        nar = tiny_config(8).nar_config.to_dict()
        model, processor = assemble_pretrained(**{name: str(path) for name, path in parts.items()}, nar_config=nar)
        save_folder(model, processor, Path(tmp) / "assembled", max_shard_size=args.max_shard_size)
        del model
        runs = {"backbone": [], "assembled": []}
        for _ in range(args.repeats):  # interleaved, so both sides see the same machine load
            runs["backbone"].append(load_once(parts["llm"], "backbone"))
            runs["assembled"].append(load_once(Path(tmp) / "assembled", "assembled"))

    summary = {"benchmark": "load", "repeats": args.repeats}
    for side, rows in runs.items():
        summary[side] = {
            "seconds": statistics.median(r["seconds"] for r in rows),
            "peak_growth_mb": statistics.median(r["peak_growth"] for r in rows) / 2**20,
            "weights_mb": rows[0]["weights"] / 2**20,
        }
        summary[side]["peak_over_weights"] = summary[side]["peak_growth_mb"] / summary[side]["weights_mb"]
    summary["time_ratio"] = summary["assembled"]["seconds"] / summary["backbone"]["seconds"]
    summary["peak_ratio"] = summary["assembled"]["peak_growth_mb"] / summary["backbone"]["peak_growth_mb"]
    summary["weights_ratio"] = summary["assembled"]["weights_mb"] / summary["backbone"]["weights_mb"]

    print(f"{'folder':<10} {'load s':>8} {'peak +MB':>9} {'weights MB':>11} {'peak/weights':>13}")
    for side in ("backbone", "assembled"):
        s = summary[side]
        print(f"{side:<10} {s['seconds']:>8.2f} {s['peak_growth_mb']:>9.0f} {s['weights_mb']:>11.0f} "
              f"{s['peak_over_weights']:>13.2f}")
    print(f"assembled / backbone: time {summary['time_ratio']:.2f}x, peak memory {summary['peak_ratio']:.2f}x "
          f"(weights {summary['weights_ratio']:.2f}x); goal <= 1.2x")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
