"""Streaming figures: time to the first audio chunk, real-time factor, and how far streamed audio is from the same
generation without a streamer.

For each model (the tiny random model built in-process, and a trained folder given with ``--model``, e.g. the demo's
``outputs/demo/model``) and each decoding, it generates ``--seconds`` of text-to-audio twice with the same seed: once
whole (``generate``) and once streamed (``generate_stream``), interleaved over ``--repeats`` rounds, and reports

* ``first_chunk_s``: seconds from the call to the first chunk; ``first_chunk_share``: that over the whole
  (unstreamed) generation time (the goal: under 25% for 10 s of audio, autoregressive);
* ``rtf``: streamed generation time over the audio's duration (below 1: faster than real time);
* ``coarse_equal``: the streamed coarse codes equal the unstreamed ones; ``fine_equal``: the share of equal finer
  codes (the NAR head predicts each chunk before the rest of its window exists); ``snr_db``: the waveform SNR of the
  streamed audio against the unstreamed one (chunk joins and those codes together);
* ``chunks`` and the shortest chunk in seconds.

    python benchmarks/bench_streaming.py --seconds 10
    python benchmarks/bench_streaming.py --model outputs/demo/model --seconds 10 --json-out streaming.json

Prints a table and one JSON line (``--json-out`` writes it to a file as well).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from transformers import AutoModel, AutoProcessor  # noqa: E402

from benchmarks.common import emit, environment, load_average  # noqa: E402
from conversion.build_c3llm import build_tiny  # noqa: E402

PROMPT = "a chirp, then a low beep"


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    noise = (other - reference).pow(2).sum().clamp(min=1e-30)
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


def measure(model, processor, decoding: str, seconds: float, chunk: float, repeats: int, seed: int) -> dict:
    """Whole and streamed generation of the same seed, interleaved `repeats` times; medians of the times."""
    inputs = processor(text=PROMPT, task="text-to-audio")
    kwargs = {"audio_length_in_s": seconds}  # and the sampling (and guidance) the model ships
    if decoding == "masked":
        kwargs.update(decoding="masked", decoding_steps=16)
    whole_times, stream_times, first_times, rows = [], [], [], []
    for _ in range(repeats):
        torch.manual_seed(seed)
        start = time.perf_counter()
        whole = model.generate(**inputs, **kwargs)
        whole_times.append(time.perf_counter() - start)

        torch.manual_seed(seed)
        chunks, first = [], None
        start = time.perf_counter()
        stream = model.generate_stream(**inputs, chunk_length_in_s=chunk, **kwargs)
        while True:
            try:
                chunks.append(next(stream))
            except StopIteration as stop:
                streamed = stop.value
                break
            first = first if first is not None else time.perf_counter() - start
        stream_times.append(time.perf_counter() - start)
        first_times.append(first)
        rows.append((whole, streamed, chunks))
    whole, streamed, chunks = rows[-1]
    rate = streamed.sampling_rate
    return {
        "decoding": decoding,
        "seconds": seconds,
        "whole_s": statistics.median(whole_times),
        "stream_s": statistics.median(stream_times),
        "first_chunk_s": statistics.median(first_times),
        "first_chunk_share": statistics.median(f / w for f, w in zip(first_times, whole_times)),
        "rtf": statistics.median(stream_times) / seconds,
        "coarse_equal": bool(torch.equal(streamed.audio_codes[:, 0], whole.audio_codes[:, 0])),
        "fine_equal": float((streamed.audio_codes[:, 1:] == whole.audio_codes[:, 1:]).float().mean()),
        "snr_db": snr_db(whole.audio, streamed.audio),
        "chunks": len(chunks),
        "shortest_chunk_s": min(c.shape[-1] for c in chunks) / rate,
        "streamed_equals_chunks": bool(torch.equal(torch.cat(chunks, -1), streamed.audio)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="a trained model folder to measure besides the tiny random one (repeatable)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10.0, help="audio to generate per call")
    parser.add_argument("--chunk", type=float, default=0.5, help="chunk_length_in_s of the streamer")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; times are medians")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON line here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tiny, tiny_processor = build_tiny(seed=args.seed, masked_num_layers=1)
    models = [("tiny (random)", tiny.eval(), tiny_processor)]
    for folder in args.model:
        model = AutoModel.from_pretrained(folder).eval()
        models.append((str(folder), model, AutoProcessor.from_pretrained(folder)))
    load_before = load_average()
    results = []
    for name, model, processor in models:
        decodings = ["autoregressive"] + (["masked"] if model.masked_decoder is not None else [])
        for decoding in decodings:
            row = {"model": name, **measure(model, processor, decoding, args.seconds, args.chunk, args.repeats,
                                            args.seed)}  # fmt: skip
            results.append(row)
            print(f"{name:<28} {decoding:<14} first chunk {row['first_chunk_s']:.2f} s "
                  f"({row['first_chunk_share']:.0%} of {row['whole_s']:.2f} s unstreamed), RTF {row['rtf']:.2f}, "
                  f"coarse equal {row['coarse_equal']}, fine equal {row['fine_equal']:.1%}, SNR {row['snr_db']:.1f} dB, "
                  f"{row['chunks']} chunks (shortest {row['shortest_chunk_s']:.2f} s)", flush=True)  # fmt: skip
    summary = {"benchmark": "streaming", "seconds": args.seconds, "chunk_length_in_s": args.chunk,
               "repeats": args.repeats, "results": results,
               "environment": environment(None, load_before, load_average())}  # fmt: skip
    emit(summary, args.json_out)


if __name__ == "__main__":
    main()
