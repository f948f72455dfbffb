"""`c3llm demo`: generate SynthFoley, train a tiny C3LLM on every task, evaluate on held-out clips, write a report.

Runs offline on a CPU in minutes. The codec is the small EnCodec trained on SynthFoley that ships in
`c3llm/synthfoley/codec`, so the decoded audio is real sound, and a DSP event detector measures what was learnt.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import EncodecModel, GenerationConfig

from c3llm.data import datasets as data
from c3llm.data.collator import with_tasks
from c3llm.synthfoley.event_detector import event_classes, onsets
from c3llm.synthfoley.synthfoley import parse_caption, write_synthfoley
from conversion.build_c3llm import build_tiny, save_folder
from processing_c3llm.media_c3llm import (
    atomic_path,
    load_audio,
    load_video,
    write_text,
    write_wav,
)
from processing_c3llm.processing_c3llm import TASKS

from .data.registry import DATASETS
from .evaluation import EvalSettings, generate_outputs, load_split
from .training import (
    C3LLMTrainingArguments,
    DataArguments,
    ModelArguments,
    run_training,
)

CODEC_DIR = Path(__file__).resolve().parent / "synthfoley" / "codec"
# The demo trains every task of `TASKS` on SynthFoley and measures these three.
MEASURED_TASKS = ("audio-to-text", "text-to-audio", "video-to-audio")
# Share of its layout's training clips a task uses (other tasks: `OTHER_TASK_SHARE`). The two measured audio outputs
# use every clip, the other tasks a different part each, so that all seven fit the time budget with clips seen a few
# times only: on 600 clips seen ten times each the model memorized the clips' token sequences and text-to-audio /
# video-to-audio fell to chance.
TASK_SHARES = {"text-to-audio": 1.0, "audio-to-text": 0.3, "video-to-audio": 1.0}
OTHER_TASK_SHARE = 0.25
CAPTION_WORDS = ("a", "high", "low", "beep", "chirp", "noise", "burst", "click", "train", "hum", "then", "repeats",
                 "twice", "three", "times", "describe", "the", "audio", "what", "you", "would", "hear")


@dataclass
class DemoSettings:
    """Sizes and budgets of the demo (defaults fit in about ten minutes on two CPU cores)."""

    train_clips: int = 2000
    video_clips: int = 1000
    test_clips: int = 40
    clip_seconds: float = 2.0
    max_steps: int = 1400
    batch_size: int = 16
    learning_rate: float = 2e-3
    condition_dropout: float = 0.1
    # Chosen on 100 validation clips of another seed, not the demo's test clips: 1.5, 2 and 2.5 gave text-to-audio
    # 70 / 70 / 78 % and video-to-audio onset precision 63 / 64 / 59 % (stronger guidance adds onsets).
    guidance_scale: float = 2.0
    top_k: int = 20  # audio sampling
    caption_tokens: int = 24  # the longest caption (greedy)
    hidden_size: int = 128
    layers: int = 4
    seed: int = 0
    codec_dir: str = str(CODEC_DIR)


def demo_model(settings: DemoSettings):
    """A small C3LLM (`build_tiny`, wider) whose codec is the SynthFoley EnCodec and whose tokenizer knows
    SynthFoley's caption words."""
    if not (Path(settings.codec_dir) / "config.json").is_file():
        raise FileNotFoundError(f"No codec checkpoint in {settings.codec_dir}; train one with c3llm/synthfoley/train_codec.py.")
    codec = EncodecModel.from_pretrained(settings.codec_dir)
    model, processor = build_tiny(
        seed=settings.seed, num_codebooks=min(2, codec.config.num_quantizers), words=CAPTION_WORDS,
        hidden_size=settings.hidden_size, num_layers=settings.layers, num_heads=4,
        intermediate_size=4 * settings.hidden_size, max_position_embeddings=512, codec_config=codec.config.to_dict(),
        video_fps=10.0, video_num_frames=round(10 * settings.clip_seconds), max_audio_seconds=settings.clip_seconds,
    )  # fmt: skip
    model.codec.load_state_dict(codec.state_dict())
    return model, processor


def key_frame(video_path: str) -> np.ndarray:
    """One picture of a clip for the image tasks: the brightest value of every pixel over the clip."""

    frames, _ = load_video(video_path)
    return frames.max(axis=0)


def add_images(dataset, folder: Path):
    """Writes a key frame PNG per video and adds its path as `image_path`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)

    def add(example):
        path = folder / f"{example['id']}.png"
        if not path.exists():
            Image.fromarray(key_frame(example["video_path"])).save(path)
        return {"image_path": str(path)}

    return dataset.map(add)


def write_demo_data(root: Path, settings: DemoSettings) -> None:
    """Writes the demo's SynthFoley under `root`, unless `root` already holds the clips of the same settings
    (recorded in `root/synthfoley.json`); data written with other settings is replaced."""

    wanted = {"train": settings.train_clips, "video_train": settings.video_clips, "test": settings.test_clips,
              "seed": settings.seed}
    record = root / "synthfoley.json"
    if record.is_file() and json.loads(record.read_text()) == wanted:
        return
    shutil.rmtree(root, ignore_errors=True)
    write_synthfoley(root, train=settings.train_clips, test=settings.test_clips, seed=settings.seed,
                     video_train=settings.video_clips)
    write_text(record, json.dumps(wanted, indent=1) + "\n")  # last: an interrupted run writes everything again


def prepare_data(root: Path, model, processor, settings: DemoSettings):
    """SynthFoley on disk, read back by the real loaders, preprocessed, one row per (clip, task)."""
    from datasets import concatenate_datasets

    write_demo_data(root, settings)
    # Every task: those without visual input on the AudioCaps layout, the others on the VGGSound layout.
    [(_, _, audio_tasks), (_, _, video_tasks)] = DATASETS["synthfoley"].layouts(TASKS)
    audiocaps, _ = data.load_audiocaps(root / "audiocaps", "train")
    vggsound, _ = data.load_vggsound(root / "vggsound", "train")
    audiocaps, _ = data.add_audio_codes(audiocaps, model, processor)
    # The videos are the first clips of the audio layout: their targets are the codes of the same (lossless) audio.
    codes = dict(zip(audiocaps["id"], audiocaps["audio_codes"]))
    video_codes = [codes[video_id.rsplit("_", 1)[0]] for video_id in vggsound["id"]]  # ids: {youtube_id}_{start}
    vggsound = vggsound.add_column("audio_codes", video_codes, feature=audiocaps.features["audio_codes"])
    vggsound, _ = data.add_video_features(vggsound, model, processor)
    vggsound = add_images(vggsound, root / "images")
    columns = ["id", "task", "caption", "label", "audio_path", "video_path", "image_path", "audio_codes",
               "video_features"]
    pieces = []
    for dataset, tasks in ((audiocaps, audio_tasks), (vggsound, video_tasks)):
        for column in columns:
            if column not in dataset.column_names:
                dataset = dataset.add_column(column, [None] * len(dataset))
        for index, task in enumerate(tasks):
            count = max(1, round(TASK_SHARES.get(task, OTHER_TASK_SHARE) * len(dataset)))
            clips = dataset.shuffle(seed=settings.seed + index).select(range(count))
            pieces.append(with_tasks(clips, [task]).select_columns(columns))
    return concatenate_datasets(pieces).shuffle(seed=settings.seed)


def train(model_dir: Path, dataset, out: Path, settings: DemoSettings) -> dict[str, Any]:
    """One full training run (the tiny backbone starts random, so all of it trains: stage 0)."""

    args = C3LLMTrainingArguments(
        output_dir=str(out), max_steps=settings.max_steps, per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, lr_scheduler_type="cosine", warmup_steps=settings.max_steps // 20,
        weight_decay=0.0, logging_steps=10, save_strategy="no", report_to=[], seed=settings.seed,
        dataloader_num_workers=0, use_cpu=True, disable_tqdm=False,
    )
    data_args = DataArguments(condition_dropout=settings.condition_dropout)  # unconditional examples for guidance
    return run_training(ModelArguments(model_name_or_path=str(model_dir), stage=0), data_args, args,
                        train_dataset=dataset)


def ship_generation_defaults(folder: Path, settings: DemoSettings) -> None:
    """Writes the demo's tuned sampling into the trained model's `generation_config.json`, so that
    `generate(**inputs)` on it, with no arguments, samples as the demo's evaluation does."""

    config = GenerationConfig.from_pretrained(folder)
    tuned = {"do_sample": True, "top_k": settings.top_k, "guidance_scale": settings.guidance_scale,
             "audio_length_in_s": settings.clip_seconds,
             "text_defaults": {"do_sample": False, "max_new_tokens": settings.caption_tokens}}
    for name, value in tuned.items():  # (`update` would skip the fields GenerationConfig does not define)
        setattr(config, name, value)
    with atomic_path(folder / "generation_config.json") as tmp_path:
        config.to_json_file(tmp_path)


def evaluate(model, processor, root: Path, report: Path, guidance_scale: float | None = None,
             batch_size: int = 8, settings: DemoSettings | None = None) -> dict[str, Any]:
    """Held-out SynthFoley, generated through `c3llm eval`'s functions: captions (greedy) name the right classes;
    generated audio (sampled with classifier-free guidance `guidance_scale`) holds the requested classes and its
    onsets sit on the visual onsets (0.1 s)."""

    demo = settings or DemoSettings()
    base = EvalSettings(dataset="synthfoley", data_dir=str(root), split="test", batch_size=batch_size,
                        seconds=demo.clip_seconds)
    settings = {
        "audio-to-text": replace(base, max_new_tokens=demo.caption_tokens, do_sample=False),
        "text-to-audio": replace(base, top_k=demo.top_k, guidance_scale=guidance_scale),
        "video-to-audio": replace(base, top_k=demo.top_k, guidance_scale=guidance_scale),
    }
    splits = {task: load_split(settings[task], task) for task in MEASURED_TASKS}
    sidecar = json.loads((root / "vggsound" / "synthfoley_test.json").read_text())
    truth = {Path(item["file"]).name: item for item in sidecar.values()}
    sr = model.config.sampling_rate
    (report / "audio").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with tqdm(total=sum(len(rows) for rows in splits.values()), desc="evaluating") as bar:
        outputs = {task: generate_outputs(model, processor, task, rows, settings[task], bar)
                   for task, rows in splits.items()}  # fmt: skip
    results: dict[str, Any] = {"captions": [], "text_to_audio": [], "video_to_audio": []}
    for row, text in zip(splits["audio-to-text"], outputs["audio-to-text"]):
        results["captions"].append({"id": row["id"], "reference": row["caption"], "generated": text})
    for row, wave in zip(splits["text-to-audio"], outputs["text-to-audio"]):
        path = report / "audio" / f"t2a_{row['id']}.wav"
        write_wav(path, wave, sr)
        results["text_to_audio"].append(
            {"id": row["id"], "caption": row["caption"], "detected": event_classes(wave, sr), "wav": str(path)}
        )
    for row, wave in zip(splits["video-to-audio"], outputs["video-to-audio"]):
        path = report / "audio" / f"v2a_{row['id']}.wav"
        write_wav(path, wave, sr)
        visual = [e["onset"] for e in truth[Path(row["video_path"]).name]["events"]]
        results["video_to_audio"].append(
            {"id": row["id"], "visual_onsets": visual, "generated_onsets": onsets(wave, sr).tolist(), "wav": str(path)}
        )

    def names_right(item):
        return set(parse_caption(item["generated"])) == set(parse_caption(item["reference"]))

    def holds_requested(item):
        return set(parse_caption(item["caption"])) <= set(item["detected"])

    generated = [t for item in results["video_to_audio"] for t in item["generated_onsets"]]
    synced = [t for item in results["video_to_audio"] for t in item["generated_onsets"]
              if any(abs(t - v) <= 0.1 for v in item["visual_onsets"])]
    results["metrics"] = {
        "audio_to_text_class_accuracy": float(np.mean([names_right(i) for i in results["captions"]])),
        "text_to_audio_class_accuracy": float(np.mean([holds_requested(i) for i in results["text_to_audio"]])),
        "video_to_audio_onset_precision": len(synced) / len(generated) if generated else 0.0,
        "video_to_audio_generated_onsets": len(generated),
        "test_clips": len(splits["text-to-audio"]),
        "guidance_scale": guidance_scale,
    }
    return results


def plot_loss(log_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "lm_loss", "nar_loss"):
        points = [(r["step"], r[key]) for r in log_history if key in r and "step" in r]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set(xlabel="step", ylabel="cross-entropy", title="C3LLM demo training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_spectrograms(items: list[tuple[str, np.ndarray]], sampling_rate: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(items), 1, figsize=(6, 1.8 * len(items)), squeeze=False)
    for ax, (title, wave) in zip(axes[:, 0], items):
        ax.specgram(wave, Fs=sampling_rate, NFFT=512, noverlap=384, cmap="magma")
        ax.set_title(title, fontsize=8)
        ax.set_ylim(0, 4000)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results: dict[str, Any], train_metrics: dict[str, Any], out: Path, sampling_rate: int) -> None:

    report = out / "report"
    state = json.loads((out / "training" / "trainer_state.json").read_text())
    plot_loss(state["log_history"], report / "loss_curve.png")
    lines = [f"{i['id']}\treference: {i['reference']}\tgenerated: {i['generated']}\n" for i in results["captions"]]
    write_text(report / "captions.txt", "".join(lines))
    samples = [(f"text-to-audio: {i['caption']} -> detected {', '.join(i['detected']) or 'nothing'}",
                load_audio(i["wav"], sampling_rate)) for i in results["text_to_audio"][:3]]
    samples += [(f"video-to-audio: visual onsets {i['visual_onsets']}", load_audio(i["wav"], sampling_rate))
                for i in results["video_to_audio"][:3]]
    plot_spectrograms(samples, sampling_rate, report / "spectrograms.png")
    metrics = {**results["metrics"], "train_loss": train_metrics.get("train_loss"),
               "train_lm_loss": train_metrics.get("train_lm_loss"), "train_nar_loss": train_metrics.get("train_nar_loss")}
    write_text(report / "metrics.json", json.dumps(metrics, indent=2))
    write_text(report / "details.json", json.dumps(results, indent=2))


def run_demo(out: str | os.PathLike, settings: DemoSettings | None = None) -> dict[str, Any]:
    """The whole demo; returns the metrics also written to `out/report/metrics.json`."""
    settings = settings or DemoSettings()
    out = Path(out)
    started = time.time()
    torch.manual_seed(settings.seed)
    model, processor = demo_model(settings)
    for folder in ("model", "training", "report"):
        shutil.rmtree(out / folder, ignore_errors=True)
    save_folder(model, processor, out / "model")
    dataset = prepare_data(out / "data", model, processor, settings)
    train_metrics = train(out / "model", dataset, out / "training", settings)

    from transformers import AutoModel, AutoProcessor

    ship_generation_defaults(Path(train_metrics["merged_path"]), settings)
    trained = AutoModel.from_pretrained(train_metrics["merged_path"]).eval()
    trained_processor = AutoProcessor.from_pretrained(train_metrics["merged_path"])
    results = evaluate(trained, trained_processor, out / "data", out / "report", settings.guidance_scale,
                       settings=settings)
    write_report(results, train_metrics, out, trained.config.sampling_rate)
    metrics = results["metrics"]
    minutes = (time.time() - started) / 60
    print(f"\nC3LLM demo finished in {minutes:.1f} min; report in {out / 'report'}")
    print(f"  audio-to-text: captions name the right event classes for {metrics['audio_to_text_class_accuracy']:.0%} of clips")
    print(f"  text-to-audio: audio holds the requested classes for {metrics['text_to_audio_class_accuracy']:.0%} of prompts")
    print(f"  video-to-audio: {metrics['video_to_audio_onset_precision']:.0%} of "
          f"{metrics['video_to_audio_generated_onsets']} generated onsets within 0.1 s of a visual onset")
    return metrics


DEMO_EPILOG = """examples:
  c3llm demo --out outputs/demo
  c3llm demo --out outputs/demo --steps 200 --train-clips 120 --video-clips 60    # a quicker, weaker run

Layout: DIR/data (SynthFoley in the AudioCaps and VGGSound layouts), DIR/model (the untrained model),
DIR/training (checkpoint state and the trained model in training/merged), DIR/report (WAVs, spectrograms.png,
loss_curve.png, captions.txt, metrics.json, details.json). Running it again reuses DIR/data when the clip counts
and seed are the same (else it is written anew) and replaces the rest.
"""


def add_demo_parser(commands, formatter_class) -> None:
    """Adds `c3llm demo` to the command line's sub-commands."""
    defaults = DemoSettings()
    demo = commands.add_parser(
        "demo",
        help="generate SynthFoley, train a small C3LLM on every task, evaluate, report (offline, ~10 min on 2 cores)",
        description="The main offline job: write SynthFoley clips, train a small C3LLM on all seven tasks, evaluate it\n"
        "on held-out clips with the SynthFoley event detector and write a report folder.",
        epilog=DEMO_EPILOG,
        formatter_class=formatter_class,
    )
    demo.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for data/, model/, training/, report/")
    demo.add_argument("--train-clips", type=int, default=defaults.train_clips, metavar="N",
                      help="SynthFoley training clips (AudioCaps layout: text-to-audio, audio-to-text)")
    demo.add_argument("--video-clips", type=int, default=defaults.video_clips, metavar="N",
                      help="how many of the training clips are also written as videos (VGGSound layout: the video and "
                      "image tasks); at most --train-clips")
    demo.add_argument("--test-clips", type=int, default=defaults.test_clips, metavar="N", help="held-out clips to evaluate")
    demo.add_argument("--steps", type=int, default=defaults.max_steps, metavar="N", help="optimizer steps")
    demo.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N", help="examples per step")
    demo.add_argument("--learning-rate", type=float, default=defaults.learning_rate, metavar="F", help="peak learning rate")
    demo.add_argument("--condition-dropout", type=float, default=defaults.condition_dropout, metavar="P",
                      help="probability that a training example with an audio output loses its condition (what "
                      "classifier-free guidance needs)")
    demo.add_argument("--guidance-scale", type=float, default=defaults.guidance_scale, metavar="F",
                      help="classifier-free guidance of the evaluated audio generation (1: none)")
    demo.add_argument("--seed", type=int, default=defaults.seed, help="seed of the data, the weights and the sampling")
    demo.add_argument("--codec", default=defaults.codec_dir, metavar="DIR",
                      help="EnCodec folder; the default is the SynthFoley codec shipped in c3llm/synthfoley/codec")
    demo.set_defaults(handler=cmd_demo, subparser=demo)


def cmd_demo(args, parser) -> int:
    settings = DemoSettings(
        train_clips=args.train_clips, video_clips=args.video_clips, test_clips=args.test_clips, max_steps=args.steps,
        batch_size=args.batch_size, learning_rate=args.learning_rate, condition_dropout=args.condition_dropout,
        guidance_scale=args.guidance_scale, seed=args.seed, codec_dir=args.codec,
    )
    for name in ("train_clips", "video_clips", "test_clips", "max_steps", "batch_size"):
        if getattr(settings, name) <= 0:
            parser.error(f"--{name.replace('_', '-').replace('max-', '')} must be positive")
    if not 0 <= settings.condition_dropout < 1:
        parser.error("--condition-dropout must be in [0, 1)")
    if not settings.guidance_scale > 0:
        parser.error("--guidance-scale must be positive")
    if settings.video_clips > settings.train_clips:
        parser.error("--video-clips must be at most --train-clips (the videos are the first training clips)")
    run_demo(args.out, settings)
    return 0
