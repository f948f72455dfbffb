"""Throughput of `c3llm eval` on SynthFoley with the tiny model, single process: clips per second and the share of
time spent generating vs scoring (FAD/KL/IS with tiny random VGGish and CNN14, onset metrics, caption metrics).

    python benchmarks/bench_eval.py --clips 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from conversion.build_c3llm import build_tiny
from c3llm.evaluation import EvalSettings, run_eval
from c3llm.metrics.audio_models import Cnn14, VGGish, save_audio_model
from c3llm.synthfoley.synthfoley import write_synthfoley


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8, help="SynthFoley test clips (each is used by three tasks)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per generate call")
    parser.add_argument("--seconds", type=float, default=2.0, help="generated audio length")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tiny(root / "tiny", seed=0)
        write_synthfoley(root / "sf", train=0, test=args.clips, seed=0)
        torch.manual_seed(0)
        vggish = save_audio_model(VGGish(), root / "vggish")  # full-size architecture, random weights
        cnn14 = save_audio_model(Cnn14(), root / "cnn14")
        from transformers import AutoModel, AutoProcessor

        model, processor = AutoModel.from_pretrained(root / "tiny").eval(), AutoProcessor.from_pretrained(root / "tiny")
        settings = EvalSettings(dataset="synthfoley", data_dir=str(root / "sf"), batch_size=args.batch_size,
                                seconds=args.seconds, embedding_model=str(vggish), classifier=str(cnn14),
                                caption_metrics=("bleu_4", "meteor", "rouge_l", "cider_d"))  # fmt: skip
        timing = run_eval(model, processor, settings)["timing"]
    total = timing["generation_s"] + timing["metrics_s"]
    print(f"c3llm eval, SynthFoley, tiny model: {timing['clips']} clip-tasks in {total:.1f} s = "
          f"{timing['clips_per_s']:.2f} clips/s; generation {timing['generation_s'] / total:.0%}, "
          f"metrics {timing['metrics_s'] / total:.0%}")
    print(json.dumps({"benchmark": "eval", **timing, "generation_share": timing["generation_s"] / total,
                      "metrics_share": timing["metrics_s"] / total, "args": vars(args)}))  # fmt: skip


if __name__ == "__main__":
    main()
