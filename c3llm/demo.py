"""`c3llm demo`: generate SynthFoley, train a small C3LLM on every task, evaluate every task strictly on held-out
clips, and leave the trained model as a push-ready folder with its results in the card.

Runs offline on a CPU in minutes. The codec is the small EnCodec trained on SynthFoley that ships in
`c3llm/synthfoley/codec`, so the decoded audio is real sound, and a DSP event detector measures what was learnt
(`c3llm.synthfoley.scoring`: exact class sequences, onsets matched one to one, the mismatched-video chance level).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoProcessor, EncodecModel, GenerationConfig

from c3llm.data import datasets as data
from c3llm.data.collator import with_tasks
from c3llm.plots import plot_loss, plot_spectrograms
from c3llm.synthfoley.synthfoley import CLIP_SECONDS, write_synthfoley, write_vggsound
from conversion.build_c3llm import build_tiny, save_folder
from conversion.model_card import update_model_index
from modeling_c3llm.generation_c3llm import DEFAULT_WINDOW_CONTEXT
from processing_c3llm.media_c3llm import atomic_path, load_audio, write_text
from processing_c3llm.processing_c3llm import TASKS

from .data.registry import DATASETS
from .evaluation import EvalSettings, markdown_tables, model_index_results, run_eval
from .training import C3LLMTrainingArguments, DataArguments, ModelArguments, run_training

CODEC_DIR = Path(__file__).resolve().parent / "synthfoley" / "codec"
# Share of its layout's training clips each task uses (see `DATASETS["synthfoley"].parts` for the layouts).
TASK_SHARES = {
    "text-to-audio": 1.0, "audio-to-text": 0.3, "video-to-audio": 0.6, "video-to-caption": 0.25,
    "image-to-audio": 0.3, "image-text-to-audio": 0.3, "video-text-to-audio": 1.0,
    "audio-continuation": 0.5, "video-text-audio-to-audio": 1.0,
}  # fmt: skip
CAPTION_WORDS = ("a", "high", "low", "beep", "chirp", "noise", "burst", "click", "train", "hum", "then", "repeats",
                 "twice", "three", "times", "describe", "the", "audio", "what", "you", "would", "hear")
AUDIO_TASKS = tuple(task for task, row in TASKS.items() if row.output == "audio" and task in TASK_SHARES)
MIN_CLIPS = {"train_clips": 4, "video_clips": 2, "neutral_clips": 2, "test_clips": 2}


@dataclass
class DemoSettings:
    """Sizes and budgets of the demo (the defaults fit in 8 minutes on two CPU cores)."""

    train_clips: int = 2000
    video_clips: int = 1000
    neutral_clips: int = 500
    test_clips: int = 40
    clip_seconds: float = 2.0
    max_steps: int = 620  # (700 before the audio-prompt tasks, whose data and evaluation took 1.2 min of the budget)
    batch_size: int = 16
    learning_rate: float = 3e-3
    condition_dropout: float = 0.1
    guidance_scale: float = 2.0
    top_k: int = 20  # audio sampling
    caption_tokens: int = 24  # the longest caption (greedy)
    # The model: a 4-layer Gemma of width 128 with an MLP of 256 and a two-layer NAR head. Training is compute-bound
    # on two cores: this step is 1.3x faster than with an MLP of 512, and 700 steps at learning rate 3e-3 fit the
    # budget (550 steps of the wider model did not learn to caption: 25-30% exact class sequences against 65%).
    hidden_size: int = 128
    layers: int = 4
    intermediate_size: int = 256
    nar_layers: int = 2
    # Frames each NAR frame attends to on either side: its codes then depend on 2 * 6 frames (0.16 s) around it, within
    # the streamer's lookahead, so streamed audio gets the same codes as unstreamed (with all frames: about half).
    nar_attention_window: int | None = 6
    # The masked decoder (`decoding="masked"`): the LLM's width, heads and MLP and half its layers
    # (`benchmarks/bench_generate.py` keeps this size ratio), trained after the rest as `c3llm train --stage 3` does,
    # on the frozen model, for `masked_train_steps` steps; its audio is evaluated beside the autoregressive audio at
    # each of `masked_steps` decoding steps. (Trained jointly in stage 0 instead, even a 1-layer decoder made every
    # step 40% slower, past the 8 minutes, and learnt nothing usable in 700 steps.)
    masked_layers: int = 2
    masked_train_steps: int = 200
    masked_steps: tuple[int, ...] = (16,)
    masked_tasks: tuple[str, ...] = ("text-to-audio", "video-to-audio")  # (the quality measures)
    # Long-form generation's later windows: crops of longer videos whose start continues an audio prompt, as
    # `generate` continues the audio so far; without them the model only knows windows that start a clip. Off by
    # default: 500 of them cost 1.4 min of the 8 (data and preprocessing, longer training steps).
    long_clips: int = 0
    long_clip_seconds: float = 4.0
    seed: int = 0
    workers: int = 2  # processes writing and preprocessing the data
    codec_dir: str = str(CODEC_DIR)

    def check(self) -> None:
        """Raises ValueError naming the setting that cannot work."""
        for name, least in MIN_CLIPS.items():
            if getattr(self, name) < least:
                why = " (the mismatched-video measure pairs each clip with another)" if name == "test_clips" else ""
                raise ValueError(f"--{name.replace('_', '-')} must be at least {least}{why}, got {getattr(self, name)}.")
        if not set(self.masked_tasks) <= set(AUDIO_TASKS) or not self.masked_tasks:
            raise ValueError(f"--masked-tasks must name audio tasks among {', '.join(AUDIO_TASKS)}.")
        if not self.masked_steps or min(self.masked_steps) < 1 or self.masked_layers < 1 or self.masked_train_steps < 1:
            raise ValueError("--masked-steps must list positive step counts; --masked-layers and --masked-train-steps "
                             "must be positive.")  # fmt: skip
        for name in ("max_steps", "batch_size", "workers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-').replace('max-', '')} must be positive.")
        if self.video_clips > self.train_clips or self.neutral_clips > self.train_clips:
            raise ValueError("--video-clips and --neutral-clips must be at most --train-clips (they are the first "
                             "training clips).")  # fmt: skip
        if self.long_clips < 0 or (self.long_clips and not self.long_clip_seconds > self.clip_seconds):
            raise ValueError(f"--long-clips must not be negative, and --long-clip-seconds must exceed the clips' "
                             f"{self.clip_seconds} s.")  # fmt: skip
        if not 0 <= self.condition_dropout < 1:
            raise ValueError("--condition-dropout must be in [0, 1).")
        if not self.guidance_scale > 0:
            raise ValueError("--guidance-scale must be positive.")


def demo_model(settings: DemoSettings):
    """A small C3LLM (`build_tiny`, wider) whose codec is the SynthFoley EnCodec and whose tokenizer knows
    SynthFoley's caption words."""
    if not (Path(settings.codec_dir) / "config.json").is_file():
        raise FileNotFoundError(f"No codec checkpoint in {settings.codec_dir}; train one with c3llm/synthfoley/train_codec.py.")
    codec = EncodecModel.from_pretrained(settings.codec_dir)
    model, processor = build_tiny(
        seed=settings.seed, num_codebooks=min(2, codec.config.num_quantizers), words=CAPTION_WORDS,
        hidden_size=settings.hidden_size, num_layers=settings.layers, num_heads=4,
        intermediate_size=settings.intermediate_size, nar_num_layers=settings.nar_layers,
        nar_attention_window=settings.nar_attention_window,
        max_position_embeddings=512,
        codec_config=codec.config.to_dict(),
        video_fps=10.0, video_num_frames=round(10 * settings.clip_seconds), max_audio_seconds=settings.clip_seconds,
    )  # fmt: skip
    model.codec.load_state_dict(codec.state_dict())
    return model, processor


def write_demo_data(root: Path, settings: DemoSettings) -> None:
    """Writes the demo's SynthFoley under `root`, unless `root` already holds the clips of the same settings
    (recorded in `root/synthfoley.json`, written last); anything else there (other settings, an interrupted run) is
    replaced."""

    wanted = {"train": settings.train_clips, "video_train": settings.video_clips,
              "neutral_train": settings.neutral_clips, "test": settings.test_clips, "seed": settings.seed,
              "layouts": sorted(part.folder for part in DATASETS["synthfoley"].parts),
              "long_clips": settings.long_clips, "long_clip_seconds": settings.long_clip_seconds}  # fmt: skip
    record = root / "synthfoley.json"
    if record.is_file() and json.loads(record.read_text()) == wanted:
        return
    shutil.rmtree(root, ignore_errors=True)
    write_synthfoley(root, train=settings.train_clips, test=settings.test_clips, seed=settings.seed,
                     video_train=settings.video_clips, neutral_train=settings.neutral_clips, workers=settings.workers)
    if settings.long_clips:
        write_vggsound(root / "long", settings.long_clips, "train", settings.seed, duration=settings.long_clip_seconds)
    write_text(record, json.dumps(wanted, indent=1) + "\n")


def prepare_data(root: Path, model, processor, settings: DemoSettings):
    """SynthFoley's training clips read back by the real loaders, preprocessed (codec codes, video features), one row
    per (clip, task): each task takes its `TASK_SHARES` of its layout's clips."""
    from datasets import concatenate_datasets

    layouts = {part.folder: part for part in DATASETS["synthfoley"].layouts(TASK_SHARES)}
    loaded = {folder: part.load(root, "train")[0] for folder, part in layouts.items()}
    for folder, part in layouts.items():  # a layout of one task: only the clips it uses are preprocessed
        if len(part.tasks) == 1 and TASK_SHARES[part.tasks[0]] < 1:
            count = max(1, round(TASK_SHARES[part.tasks[0]] * len(loaded[folder])))
            loaded[folder] = loaded[folder].shuffle(seed=settings.seed).select(range(count))
    audio = loaded.pop("audiocaps")
    audio, _ = data.add_audio_codes(audio, model, processor, num_proc=settings.workers)
    codes = dict(zip(audio["id"], audio["audio_codes"]))
    for folder, clips in loaded.items():
        if "prompt_seconds" in clips.column_names:  # clips of their own: codes split into the prompt and the target
            clips, _ = data.add_audio_codes(clips, model, processor, num_proc=settings.workers)
        else:  # the videos show clips of the audio layout: their targets are the codes of the same (lossless) audio
            video_codes = [codes[video_id.rsplit("_", 1)[0]] for video_id in clips["id"]]  # ids: {youtube_id}_{start}
            clips = clips.add_column("audio_codes", video_codes, feature=audio.features["audio_codes"])
        if layouts[folder].reader == "vggsound":
            clips, _ = data.add_video_features(clips, model, processor, num_proc=settings.workers)
        loaded[folder] = clips
    loaded["audiocaps"] = audio
    columns = ["id", "task", "caption", "label", "audio_path", "video_path", "image_path", "audio_codes",
               "video_features", "audio_prompt_codes", "prompt_seconds"]
    pieces = []
    for folder, part in layouts.items():
        dataset = loaded[folder]
        for column in columns:
            if column not in dataset.column_names:
                dataset = dataset.add_column(column, [None] * len(dataset))
        for index, task in enumerate(part.tasks):
            count = len(dataset) if len(part.tasks) == 1 else max(1, round(TASK_SHARES[task] * len(dataset)))
            clips = dataset.shuffle(seed=settings.seed + index).select(range(count))
            pieces.append(with_tasks(clips, [task]).select_columns(columns))
    if settings.long_clips:
        long, _ = data.load_vggsound(root / "long", "train")
        long, _ = data.add_audio_codes(long, model, processor, num_proc=settings.workers)
        long, _ = data.add_video_features(long, model, processor, num_proc=settings.workers)
        context = model.config.max_audio_seconds * DEFAULT_WINDOW_CONTEXT
        long = data.long_form_windows(long, model.config, context, seed=settings.seed)
        for column in columns:
            if column not in long.column_names:
                long = long.add_column(column, [None] * len(long))
        pieces.append(long.select_columns(columns))
    return concatenate_datasets(pieces).shuffle(seed=settings.seed)


def train(model_dir: Path, dataset, out: Path, settings: DemoSettings, stage: int = 0) -> dict[str, Any]:
    """One training run: stage 0 (the tiny backbone starts random, so all of it trains) for `max_steps`, or stage 3
    (a masked decoder added to the trained model and trained alone) for `masked_train_steps`."""

    steps = settings.max_steps if stage == 0 else settings.masked_train_steps
    args = C3LLMTrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, lr_scheduler_type="cosine", warmup_steps=steps // 20,
        weight_decay=0.0, logging_steps=10, save_strategy="no", report_to=[], seed=settings.seed,
        dataloader_num_workers=0, use_cpu=True, disable_tqdm=False,
    )  # fmt: skip
    data_args = DataArguments(condition_dropout=settings.condition_dropout)  # unconditional examples for guidance
    model_args = ModelArguments(model_name_or_path=str(model_dir), stage=stage,
                                masked_decoder_layers=settings.masked_layers)  # fmt: skip
    return run_training(model_args, data_args, args, train_dataset=dataset)


def ship_generation_defaults(folder: Path, settings: DemoSettings) -> None:
    """Writes the demo's tuned sampling into the trained model's `generation_config.json`, so that
    `generate(**inputs)` (and `c3llm generate`/`c3llm eval`) on it, with no arguments, samples as the demo did."""

    config = GenerationConfig.from_pretrained(folder)
    tuned = {"do_sample": True, "top_k": settings.top_k, "guidance_scale": settings.guidance_scale,
             "audio_length_in_s": settings.clip_seconds,
             "text_defaults": {"do_sample": False, "max_new_tokens": settings.caption_tokens}}
    for name, value in tuned.items():  # (`update` would skip the fields GenerationConfig does not define)
        setattr(config, name, value)
    with atomic_path(folder / "generation_config.json") as tmp_path:
        config.to_json_file(tmp_path)


def evaluate(model, processor, data_dir: Path, audio_dir: Path | None, settings: DemoSettings,
             split: str = "test", masked_steps: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Every task the demo trains (`TASK_SHARES`) on the held-out clips through `c3llm eval` (`run_eval`), with the
    sampling the model ships; with `masked_steps`, the `masked_tasks` only, their audio decoded by the masked decoder
    in that many steps."""
    masked = {"tasks": tuple(TASK_SHARES)} if masked_steps is None else {
        "decoding": "masked", "decoding_steps": masked_steps, "tasks": settings.masked_tasks}  # fmt: skip
    eval_settings = EvalSettings(dataset="synthfoley", data_dir=str(data_dir), split=split, batch_size=20,
                                 seed=settings.seed, audio_dir=None if audio_dir is None else str(audio_dir),
                                 **masked)  # fmt: skip
    return run_eval(model, processor, eval_settings)


def _task_figures(results: dict[str, Any]) -> dict[str, Any]:
    return {task: {"clips": e["clips"], "scores": e["scores"], "intervals": e.get("intervals", {})}
            for task, e in results["tasks"].items()}  # fmt: skip


def write_report(results: dict[str, Any], masked: dict[int, dict[str, Any]], train_metrics: dict[str, Any], out: Path,
                 sampling_rate: int, timing: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """Writes `out/report`: metrics.json (every measure with its 95% interval, for autoregressive and, under
    `masked_decoding`, masked decoding at each step count; phase times, losses), details.json (per-clip records),
    results.md, captions.txt, loss_curve.png and spectrograms.png; returns the metrics."""
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    state = json.loads((out / "training" / "trainer_state.json").read_text())
    plot_loss(state["log_history"], report / "loss_curve.png")
    tasks = results["tasks"]
    lines = [f"{task}\t{r['id']}\treference: {r['reference']}\tgenerated: {r['generated']}\n"
             for task, entry in tasks.items() if TASKS[task].output == "text" for r in entry["records"]]  # fmt: skip
    write_text(report / "captions.txt", "".join(lines))
    samples = []
    for task in ("text-to-audio", "video-to-audio", "image-to-audio"):
        for r in tasks[task]["records"][:2]:
            timing_note = f", visual onsets {r['visual_onsets']}" if "visual_onsets" in r else ""
            samples.append((f"{task}: {' '.join(r['reference_classes'])}{timing_note} -> detected "
                            f"{', '.join(r['detected_classes']) or 'nothing'}", load_audio(r["wav"], sampling_rate)))
    plot_spectrograms(samples, sampling_rate, report / "spectrograms.png")
    metrics = {
        "tasks": _task_figures(results),
        "masked_decoding": {str(steps): {"decoding_steps": steps, "tasks": _task_figures(r)} for steps, r in masked.items()},
        "test_clips": min(e["clips"] for e in tasks.values()),
        "timing_s": timing,
        **{key: train_metrics.get(key) for key in ("train_loss", "train_lm_loss", "train_nar_loss", "train_masked_loss")},
    }  # fmt: skip
    write_text(report / "metrics.json", json.dumps(metrics, indent=2))
    details = {task: e["records"] for task, e in tasks.items()}
    details.update({f"{task} (masked, {steps} steps)": e["records"]
                    for steps, r in masked.items() for task, e in r["tasks"].items()})  # fmt: skip
    write_text(report / "details.json", json.dumps(details, indent=2))
    tables = [markdown_tables(results, label="c3llm demo, autoregressive")]
    tables += [markdown_tables(r, label=f"c3llm demo, masked decoding in {steps} steps") for steps, r in masked.items()]
    write_text(report / "results.md", "\n".join(tables))
    return metrics


@contextmanager
def phase(name: str, timing: dict[str, float]):
    """Records the wall time of the enclosed block in `timing[name]` (seconds)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[name] = round(time.perf_counter() - start, 1)


def check_writable(out: Path) -> None:
    """Creates `out` and checks a file can be written there, or raises ValueError naming the folder."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"cannot write to {out} ({e.strerror or e}); choose another --out.") from e


def _figure(entry: dict[str, Any], key: str, interval: bool = True) -> str:
    """One measure of a task as the summary prints it: a percentage or an F1, with its 95% interval."""
    if key not in entry["scores"]:
        return "-"
    value, low_high = entry["scores"][key], entry["intervals"].get(key) if interval else None
    form = "{:.2f}" if "f1" in key else "{:.0%}"
    text = form.format(value)
    return text + (f" [{form.format(low_high[0])}-{form.format(low_high[1])}]" if low_high else "")


# The audio-prompt tasks' measures: each against its mismatched control (`c3llm.synthfoley.scoring`).
PROMPT_MEASURES = {"continuation_in_prompt_classes": "only the prompt's classes", "prompt_class_present":
                   "prompt's class", "text_class_present": "text's class", "onset_f1": "onset F1"}  # fmt: skip


def _summary_rows(tasks: dict[str, Any]) -> list[str]:
    lines = []
    for task, entry in tasks.items():
        if "audio_prompt" in TASKS[task].inputs:
            figures = [f"{name} {_figure(entry, key)} (mismatched {_figure(entry, f'{key}_mismatched', False)})"
                       for key, name in PROMPT_MEASURES.items() if key in entry["scores"]]  # fmt: skip
            lines.append(f"  {task:<20} " + "; ".join(figures))
            continue
        lenient = "lenient_class_set" if TASKS[task].output == "text" else "lenient_classes_present"
        lines.append(f"  {task:<20} {_figure(entry, 'class_sequence_exact'):<22} "
                     f"{_figure(entry, 'class_set_same', False):<9} {_figure(entry, 'onset_f1'):<18} "
                     f"{_figure(entry, 'onset_f1_mismatched', False):<11} {_figure(entry, lenient, False)}")
    return lines


def summary(metrics: dict[str, Any], results: dict[str, Any], out: Path) -> str:
    """The lines printed at the end of the demo: phase times, each task's strict figures (autoregressive, then masked
    decoding at each step count), the commands to try."""
    timing = metrics["timing_s"]
    phases = ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in timing.items() if name != "total")
    lines = [f"\nC3LLM demo finished in {timing['total'] / 60:.1f} min ({phases} min); load average "
             f"{os.getloadavg()[1]:.1f} over the last 5 min",
             f"{metrics['test_clips']} held-out clips per task, strict measures with 95% intervals:",
             f"  {'task':<20} {'exact class sequence':<22} {'same set':<9} {'onset F1':<18} {'mismatched':<11} lenient"]
    lines += _summary_rows(results["tasks"])
    for steps, entry in metrics["masked_decoding"].items():
        lines += [f"  with masked decoding in {steps} steps:", *_summary_rows(entry["tasks"])]
    model = out / "model"
    lines += ["  (onset F1: onsets matched one to one within 0.1 s; mismatched: the same audio against another clip's "
              "video; lenient: the first, looser measure, i.e. the same class set for captions, the requested classes "
              "among the detected for audio; details in report/metrics.json and report/details.json)",
              f"The trained model is {model} (its card holds these results). Try it:",
              f'  c3llm generate --model {model} --task text-to-audio --text "a chirp, then a low beep" --out chirp.wav',
              f'  c3llm generate --model {model} --task text-to-audio --text "a chirp, then a low beep" --decoding masked '
              f"--decoding-steps 16 --out chirp-masked.wav",
              f"  c3llm eval --model {model} --dataset synthfoley --data-dir {out / 'data'} --out {out / 'eval'}",
              f"  c3llm push {model} your-name/c3llm-synthfoley --dry-run"]  # fmt: skip
    return "\n".join(lines)


def run_demo(out: str | os.PathLike, settings: DemoSettings | None = None) -> dict[str, Any]:
    """The whole demo; returns the metrics also written to `out/report/metrics.json`. `out/model` ends as the trained
    model; an earlier run's model, training and report folders are replaced (its data is reused when it is complete
    and was written with the same settings)."""
    settings = settings or DemoSettings()
    settings.check()
    out = Path(out)
    check_writable(out)
    timing: dict[str, float] = {}
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    for folder in ("model", "training", "report"):
        shutil.rmtree(out / folder, ignore_errors=True)
    with phase("data", timing):
        write_demo_data(out / "data", settings)
    with phase("preprocessing", timing):
        model, processor = demo_model(settings)
        save_folder(model, processor, out / "training" / "initial")
        dataset = prepare_data(out / "data", model, processor, settings)
    with phase("training", timing):
        train_metrics = train(out / "training" / "initial", dataset, out / "training", settings)
    with phase("masked training", timing):
        masked_metrics = train(Path(train_metrics["merged_path"]), dataset, out / "training" / "masked", settings,
                               stage=3)  # fmt: skip
        train_metrics["train_masked_loss"] = masked_metrics.get("train_masked_loss")
        shutil.rmtree(train_metrics["merged_path"])  # the same model without the masked decoder
    trained_dir = Path(masked_metrics["merged_path"])
    with phase("evaluation", timing):
        ship_generation_defaults(trained_dir, settings)
        trained = AutoModel.from_pretrained(trained_dir).eval()
        processor = AutoProcessor.from_pretrained(trained_dir)
        results = evaluate(trained, processor, out / "data", out / "report" / "audio", settings)
    with phase("masked evaluation", timing):
        masked = {steps: evaluate(trained, processor, out / "data", out / "report" / f"audio_masked_{steps}", settings,
                                  masked_steps=steps) for steps in settings.masked_steps}  # fmt: skip
    with phase("report", timing):
        update_model_index(trained_dir / "README.md", model_index_results(results))
        os.replace(trained_dir, out / "model")  # one rename: the folder is complete or absent
        timing["total"] = round(time.perf_counter() - started, 1)
        metrics = write_report(results, masked, train_metrics, out, trained.config.sampling_rate, timing)
    metrics["timing_s"]["total"] = timing["total"] = round(time.perf_counter() - started, 1)
    write_text(out / "report" / "metrics.json", json.dumps({**metrics, "settings": asdict(settings)}, indent=2))
    print(summary(metrics, results, out))
    return metrics


DEMO_EPILOG = """examples:
  c3llm demo --out outputs/demo
  c3llm demo --out outputs/demo --steps 200 --train-clips 120 --video-clips 60 --neutral-clips 30   # quicker, weaker
  c3llm demo --out outputs/demo --masked-steps 16 8 32      # masked decoding evaluated at three step counts

Layout: DIR/data (SynthFoley: audiocaps/, vggsound/ with images, neutral/), DIR/model (the trained model: a complete,
push-ready folder whose card holds the demo's results), DIR/training (the initial model and the Trainer's state),
DIR/report (audio/{task}/*.wav, audio_masked_{steps}/{task}/*.wav, spectrograms.png, loss_curve.png, captions.txt, results.md, metrics.json,
details.json). Running it again reuses DIR/data when it is complete and was written with the same clip counts and
seed (else it is written anew) and replaces the rest.
"""


def add_demo_parser(commands, formatter_class) -> None:
    """Adds `c3llm demo` to the command line's sub-commands."""
    defaults = DemoSettings()
    demo = commands.add_parser(
        "demo",
        help="generate SynthFoley, train a small C3LLM on every task, evaluate, report (offline, ~8 min on 2 cores)",
        description="The main offline job: write SynthFoley clips, train a small C3LLM on every task, evaluate\n"
        "every task on held-out clips with the SynthFoley event detector, write a report and the trained model.",
        epilog=DEMO_EPILOG,
        formatter_class=formatter_class,
    )
    demo.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for data/, model/, training/, report/")
    demo.add_argument("--train-clips", type=int, default=defaults.train_clips, metavar="N",
                      help="SynthFoley training clips (AudioCaps layout: text-to-audio, audio-to-text)")
    demo.add_argument("--video-clips", type=int, default=defaults.video_clips, metavar="N",
                      help="how many of the training clips are also written as videos of class shapes with a picture "
                      "(VGGSound layout: video-to-audio, video-to-caption, image-to-audio, image-text-to-audio); at most "
                      "--train-clips")
    demo.add_argument("--neutral-clips", type=int, default=defaults.neutral_clips, metavar="N",
                      help="how many of the training clips are also written as videos of class-neutral shapes "
                      "(video-text-to-audio: the text gives the classes, the video the timing); at most --train-clips")
    demo.add_argument("--test-clips", type=int, default=defaults.test_clips, metavar="N",
                      help="held-out clips, evaluated on every task")
    demo.add_argument("--steps", type=int, default=defaults.max_steps, metavar="N", help="optimizer steps")
    demo.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N", help="examples per step")
    demo.add_argument("--learning-rate", type=float, default=defaults.learning_rate, metavar="F", help="peak learning rate")
    demo.add_argument("--condition-dropout", type=float, default=defaults.condition_dropout, metavar="P",
                      help="probability that a training example with an audio output loses its condition (what "
                      "classifier-free guidance needs)")
    demo.add_argument("--guidance-scale", type=float, default=defaults.guidance_scale, metavar="F",
                      help="classifier-free guidance of the evaluated audio generation (1: none); shipped in the "
                      "model's generation_config.json")
    demo.add_argument("--masked-layers", type=int, default=defaults.masked_layers, metavar="N",
                      help="layers of the masked decoder (`decoding=\"masked\"`), trained with the rest")
    demo.add_argument("--masked-train-steps", type=int, default=defaults.masked_train_steps, metavar="N",
                      help="optimizer steps of the masked decoder, trained after the rest on the frozen model (stage 3; "
                      "about 0.2 s each: more than the default exceeds the 8 minutes, the report times the phase)")
    demo.add_argument("--masked-steps", type=int, nargs="+", default=list(defaults.masked_steps), metavar="N",
                      help="evaluate the audio tasks with masked decoding at each of these step counts too (each adds "
                      "about 15 s to the run; the report times the phase)")
    demo.add_argument("--masked-tasks", nargs="+", default=list(defaults.masked_tasks), choices=AUDIO_TASKS,
                      metavar="TASK", help="the audio tasks evaluated with masked decoding too (each adds about 8 s per "
                      f"step count); among {', '.join(AUDIO_TASKS)}")
    demo.add_argument("--long-clips", type=int, default=defaults.long_clips, metavar="N",
                      help="videos of --long-clip-seconds whose random crops, each continuing an audio prompt, train the "
                      "later windows of long-form video-to-audio (0: none)")
    demo.add_argument("--long-clip-seconds", type=float, default=defaults.long_clip_seconds, metavar="S",
                      help="length of those videos: a multiple of the 2 s clips, longer than them")
    demo.add_argument("--workers", type=int, default=defaults.workers, metavar="N",
                      help="processes that write and preprocess the data")
    demo.add_argument("--seed", type=int, default=defaults.seed, help="seed of the data, the weights and the sampling")
    demo.add_argument("--codec", default=defaults.codec_dir, metavar="DIR",
                      help="EnCodec folder; the default is the SynthFoley codec shipped in c3llm/synthfoley/codec")
    demo.set_defaults(handler=cmd_demo, subparser=demo)


SYNTHFOLEY_EPILOG = """examples:
  c3llm synthfoley --out outputs/sf-test --test 200 --seed 1     # held-out clips of another seed, nothing to train on
  c3llm eval --model outputs/demo/model --dataset synthfoley --data-dir outputs/sf-test --out outputs/eval-200
  c3llm synthfoley --out data/sf --train 2000 --test 100          # data for `c3llm train --dataset synthfoley`
  c3llm synthfoley --out outputs/sf-30s --test 50 --duration 30   # long-form test clips: 15 two-second segments each

Writes DIR/audiocaps (WAV + captions), DIR/vggsound (MP4 of class shapes + a PNG picture of the events per clip) and
DIR/neutral (MP4 of class-neutral shapes), each with synthfoley_{split}.json holding the clips' true events, and the
audio-prompt clips (always 2 s, their first 0.8 s the prompt): DIR/continuation (WAV + captions, for
audio-continuation) and DIR/multicondition (MP4 of class-neutral shapes + a text, for video-text-audio-to-audio).
"""


def add_synthfoley_parser(commands, formatter_class) -> None:
    """Adds `c3llm synthfoley` (write a SynthFoley dataset) to the command line's sub-commands."""
    sf = commands.add_parser(
        "synthfoley", help="write a SynthFoley dataset (train and test splits in every layout)",
        description="Write SynthFoley clips (procedural sound events with captions, videos and pictures) in the\n"
        "AudioCaps and VGGSound layouts that `c3llm train` and `c3llm eval --dataset synthfoley` read.",
        epilog=SYNTHFOLEY_EPILOG, formatter_class=formatter_class,
    )  # fmt: skip
    sf.add_argument("--out", required=True, type=Path, metavar="DIR", help="new or empty folder")
    sf.add_argument("--train", type=int, default=0, metavar="N", help="training clips (audio layout)")
    sf.add_argument("--test", type=int, default=200, metavar="N", help="test clips (in every layout)")
    sf.add_argument("--video-train", type=int, metavar="N", help="training clips also written as class videos with "
                    "pictures (default: all)")
    sf.add_argument("--neutral-train", type=int, metavar="N", help="training clips also written as class-neutral "
                    "videos (default: --video-train)")
    sf.add_argument("--seed", type=int, default=1, help="seed of the clips (the demo trains and tests on seed 0)")
    sf.add_argument("--duration", type=float, default=CLIP_SECONDS, metavar="S",
                    help=f"seconds per clip of audiocaps/, vggsound/ and neutral/: {CLIP_SECONDS:g} (the training "
                    f"clips) or a multiple of it (long-form test clips: independent {CLIP_SECONDS:g} s segments, each "
                    "drawn like a training clip, with videos at the same 10 fps throughout)")
    sf.add_argument("--workers", type=int, default=2, metavar="N", help="processes writing the clips")
    sf.set_defaults(handler=cmd_synthfoley, subparser=sf)


def cmd_synthfoley(args, parser) -> int:
    if args.train < 0 or args.test < 0 or args.train + args.test == 0:
        parser.error("--train and --test must not be negative, and not both 0")
    segments = args.duration / CLIP_SECONDS
    if args.duration <= 0 or (args.duration > CLIP_SECONDS and abs(segments - round(segments)) > 1e-6):
        parser.error(f"--duration must be positive, and a multiple of {CLIP_SECONDS:g} above {CLIP_SECONDS:g}")
    if args.out.exists() and any(args.out.iterdir()):
        raise ValueError(f"--out {args.out} is not empty; choose a new folder.")
    check_writable(args.out)
    folders = write_synthfoley(args.out, train=args.train, test=args.test, seed=args.seed, video_train=args.video_train,
                               neutral_train=args.neutral_train, workers=args.workers, duration=args.duration)  # fmt: skip
    print(f"wrote {args.train} training and {args.test} test clips ({args.duration:g} s, seed {args.seed}) into "
          f"{', '.join(str(folder) for folder in folders.values())}")
    return 0


def cmd_demo(args, parser) -> int:
    settings = DemoSettings(
        train_clips=args.train_clips, video_clips=args.video_clips, neutral_clips=args.neutral_clips,
        test_clips=args.test_clips, max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        condition_dropout=args.condition_dropout, guidance_scale=args.guidance_scale, workers=args.workers,
        seed=args.seed, codec_dir=args.codec, masked_layers=args.masked_layers, masked_steps=tuple(args.masked_steps),
        masked_train_steps=args.masked_train_steps, masked_tasks=tuple(args.masked_tasks), long_clips=args.long_clips,
        long_clip_seconds=args.long_clip_seconds,
    )  # fmt: skip
    try:
        settings.check()
    except ValueError as e:
        parser.error(str(e))
    run_demo(args.out, settings)  # an unwritable --out: ValueError, printed by the CLI as one line
    return 0
