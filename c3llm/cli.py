"""The `c3llm` command line: build a model folder, run one task from files, tour every task, train, or run the demo.

    c3llm build --tiny --out models/tiny
    c3llm generate --model models/tiny --task text-to-audio --text "a dog barks" --seconds 2 --out dog.wav
    c3llm generate --model models/tiny --text "rain" --seconds 60 --stream --out rain.wav
    c3llm generate --model models/tiny --audio-prompt dog.wav --seconds 4 --out more.wav
    c3llm tour --out outputs/tour
    c3llm train c3llm/recipes/stage1.yaml
    c3llm demo --out outputs/demo

`generate` and `tour` share one code path (`run_task`), so the tour exercises exactly what `generate` does.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from c3llm.loading import CLIError, encode_audio_prompt, load_model
from processing_c3llm.media_c3llm import atomic_path, write_text, write_wav
from modeling_c3llm.generation_c3llm import DECODINGS
from processing_c3llm.processing_c3llm import INPUT_ARGUMENTS, TASKS, check_task_inputs

PROG = "c3llm"
# The input kinds of the tasks, in order of first use, and the processor arguments that carry them. Each argument is a
# flag of `generate`: `--` and its kind (`--video-features` for the alternative to `--video`).
INPUT_KINDS = list(dict.fromkeys(kind for task in TASKS.values() for kind in task.inputs))
FLAGS = {
    argument: "--" + (kind if argument == INPUT_ARGUMENTS[kind][0] else argument).replace("_", "-")
    for kind in INPUT_KINDS
    for argument in INPUT_ARGUMENTS[kind]
}
# How the flags read in --help: metavar and help text per argument (the tasks that take it are appended); an argument
# missing here still gets its flag.
FLAG_HELP = {
    "text": ("T", "text prompt"),
    "audio": ("WAV", "source audio file; any rate and channel count, resampled and downmixed"),
    "videos": ("MP4", "video file"),
    "video_features": ("NPY", "instead of --video: .npy array of precomputed per-frame features (frames, feature_size)"),
    "images": ("IMG", "image file, e.g. PNG or JPEG"),
    "audio_prompt_codes": ("WAV", ("audio prompt to continue (any rate and channel count): encoded with the model's "
                                   "codec, it must be shorter than the model's window (max_audio_seconds); the output "
                                   "is only the new audio, --seconds long")),
}
TOUR_MARKER = ".c3llm-tour"
TOUR_TEXTS = {  # the tour's prompt per task; other tasks with a text input get the first
    "text-to-audio": "a dog barks in the rain",
    "video-text-to-audio": "footsteps on gravel",
    "image-text-to-audio": "birds singing at dawn",
    "video-text-audio-to-audio": "a drum keeps the beat",
}


def _quiet_libraries() -> None:
    """Hides the libraries' own progress bars and info logs; the CLI prints its own summary."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# ---- shared helpers -------------------------------------------------------------------------------------------------
def _number_type(convert, valid, kind: str, rule: str):
    """An argparse `type` that converts a value with `convert` and accepts it when `valid`."""

    def parse(value: str):
        try:
            number = convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {value!r}") from None
        if not valid(number):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value!r}")
        return number

    return parse


_positive_float = _number_type(float, lambda x: np.isfinite(x) and x > 0, "a number", "a positive number")
_chunk_seconds = _number_type(float, lambda x: np.isfinite(x) and x >= 0.5, "a number", "at least 0.5 (seconds)")
_positive_int = _number_type(int, lambda x: x > 0, "an integer", "a positive integer")
_non_negative_int = _number_type(int, lambda x: x >= 0, "an integer", "zero or a positive integer")


def _check_empty_dir(path: Path, flag: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CLIError(f"{flag} {path} exists and is not an empty folder; choose a new folder or remove it first.")


# ---- model loading and the one task runner shared by `generate` and `tour` ------------------------------------------
# The inputs of one task: processor argument (a key of `FLAGS`) -> the prompt text or an input file; `None` or absent
# where the task doesn't take that input.
TaskInputs = dict[str, Any]


@dataclass
class TaskResult:
    task: str
    output: Path
    seconds: float | None = None  # audio tasks
    sampling_rate: int | None = None  # audio tasks
    text: str | None = None  # text tasks
    chunks: int | None = None  # --stream: the chunks written
    first_chunk_s: float | None = None  # --stream: seconds from the start of generation to the first chunk on disk
    generation_s: float | None = None  # seconds the generation took (with --stream: until the last chunk)

    def describe(self) -> str:
        if self.seconds is None:
            return repr(self.text)
        text = f"{self.seconds:.2f} s of audio at {self.sampling_rate} Hz"
        if self.chunks is not None:
            text += (f"; streamed in {self.chunks} chunk{'s' if self.chunks != 1 else ''}, first after "
                     f"{self.first_chunk_s:.2f} s")
        if self.generation_s is not None and self.seconds > 0:
            text += f"; real-time factor {self.generation_s / self.seconds:.2f} (generation time / audio length)"
        return text


def _given(inputs: TaskInputs) -> list[str]:
    return [argument for argument, value in inputs.items() if value is not None]


def input_error(error: ValueError, inputs: TaskInputs) -> CLIError:
    """The processor's error about `inputs` as the CLI's error line: its argument names become flags, and a file
    error (`MediaError`, which names the file) starts with the flag that gave the file."""
    message = str(error)
    for argument, flag in FLAGS.items():
        message = message.replace(f"`{argument}`", flag)
    files = [FLAGS[argument] for argument, value in inputs.items()
             if argument not in INPUT_ARGUMENTS["text"] and isinstance(value, (str, os.PathLike))
             and os.fspath(value) in message]  # fmt: skip
    return CLIError(f"{files[0]}: {message}" if files else message)


def validate_inputs(task: str, inputs: TaskInputs) -> None:
    """The processor's check that `inputs` are exactly what `task` takes (`check_task_inputs`), runnable before the
    model loads; raises CLIError naming the flags. The processor checks the files themselves when it reads them."""
    try:
        check_task_inputs(task, _given(inputs))
    except ValueError as e:
        raise input_error(e, inputs) from e


def infer_task(inputs: TaskInputs) -> str:
    """The task of `inputs` when `--task` is not given, chosen as the processor does: the first task of `TASKS` that
    takes exactly the given input kinds, else the first that takes them with some of its optional inputs
    (--video alone: video-to-audio; --audio-prompt with or without --text: audio-continuation)."""
    given = set(_given(inputs))
    kinds = {kind for kind, names in INPUT_ARGUMENTS.items() if given & set(names)}
    if not kinds:
        raise CLIError(f"give the inputs of a task ({', '.join(dict.fromkeys(FLAGS.values()))}) and, to choose "
                       "among the tasks that take them, --task.")  # fmt: skip
    for matches in (lambda row: set(row.inputs) == kinds,
                    lambda row: set(row.inputs) <= kinds <= {*row.inputs, *row.optional}):  # fmt: skip
        for name, row in TASKS.items():
            if matches(row):
                return name
    flags = " + ".join(FLAGS[argument] for argument in FLAGS if argument in given)
    raise CLIError(f"no task takes {flags} together; see the task table in `c3llm generate --help`.")


def _load_video_features(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CLIError(f"--video-features file '{path}' is not a readable .npy array ({e}).") from e
    if not isinstance(array, np.ndarray):
        raise CLIError(f"--video-features file '{path}' must hold one array (frames, features), not an .npz archive.")
    return array


class StreamingWavWriter:
    """A 16-bit PCM WAV written chunk by chunk: after every chunk the header's sizes are patched (the standard `wave`
    module does that on each write) and the file is flushed, so the file on disk is always a complete WAV of the audio
    so far and a player can open it while the rest is generated. `abort` closes and removes it."""

    def __init__(self, path: str | os.PathLike, sampling_rate: int):
        self.path, self.sampling_rate = Path(path), int(sampling_rate)
        self.frames = 0
        self._file = None
        self._wav = None

    def write(self, chunk: np.ndarray) -> None:
        """Appends a float chunk `(channels, samples)` in [-1, 1] (clipped beyond)."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2:
            raise ValueError(f"expected a chunk (channels, samples), got shape {chunk.shape}")
        if not np.isfinite(chunk).all():
            raise ValueError("the generated audio holds non-finite values (NaN or inf)")
        if self._wav is None:  # the header is written with the first chunk, whose channel count it takes
            self._file = open(self.path, "wb")  # noqa: SIM115  (open across writes; closed by close/abort)
            self._wav = wave.open(self._file, "wb")  # noqa: SIM115
            self._wav.setnchannels(chunk.shape[0])
            self._wav.setsampwidth(2)
            self._wav.setframerate(self.sampling_rate)
        elif chunk.shape[0] != self._wav.getnchannels():
            raise ValueError(f"a chunk has {chunk.shape[0]} channels, the file {self._wav.getnchannels()}")
        pcm = np.round(np.clip(chunk, -1.0, 1.0) * 32767).astype("<i2")
        self._wav.writeframes(np.ascontiguousarray(pcm.T).tobytes())
        self._file.flush()
        self.frames += chunk.shape[1]

    @property
    def seconds(self) -> float:
        return self.frames / self.sampling_rate

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()  # patches the header if needed; leaves our file object open
            self._file.close()
            self._wav = self._file = None

    def abort(self) -> None:
        """Closes and removes the partial file."""
        try:
            self.close()
        finally:
            self.path.unlink(missing_ok=True)


def _stream_audio(model, batch, kwargs: dict[str, Any], out: Path, chunk_seconds: float | None,
                  total: float | None) -> tuple[StreamingWavWriter, int, float]:  # fmt: skip
    """`model.generate_stream` into `out` chunk by chunk, a progress line per chunk on stderr; returns the writer, the
    chunk count and the seconds until the first chunk was on disk. On any error the partial file is removed."""
    writer = StreamingWavWriter(out, model.config.sampling_rate)
    start, first, count = time.perf_counter(), None, 0
    try:
        stream_kwargs = {} if chunk_seconds is None else {"chunk_length_in_s": chunk_seconds}
        for chunk in model.generate_stream(**batch, **kwargs, **stream_kwargs):
            writer.write(chunk[0].float().cpu().numpy())
            count += 1
            elapsed = time.perf_counter() - start
            first = elapsed if first is None else first
            of = f" / {total:.2f}" if total else ""
            print(f"chunk {count}: {writer.seconds:.2f}{of} s of audio written to {out} ({elapsed:.1f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
        if count == 0:
            raise ValueError("generation produced no audio")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer, count, first


# The generate keywords the CLI sets, as its flags, for the model's error messages.
KEYWORD_FLAGS = {"audio_length_in_s": "--seconds", "window_context_in_s": "--window-context",
                 "decoding_steps": "--decoding-steps", "max_new_tokens": "--max-new-tokens"}


def _with_flags(message: str) -> str:
    """A model error with the generate keywords the CLI passes named as the CLI's flags."""
    for keyword, flag in KEYWORD_FLAGS.items():
        message = re.sub(rf"`?\b{keyword}\b`?", flag, message)
    return message


def run_task(
    model,
    processor,
    task: str | None,
    inputs: TaskInputs,
    out: str | os.PathLike,
    *,
    seconds: float | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    greedy: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    decoding: str | None = None,
    decoding_steps: int | None = None,
    window_context: float | None = None,
    stream: bool = False,
    chunk_seconds: float | None = None,
) -> TaskResult:
    """Runs one task from files and writes its output: a WAV for audio tasks, a UTF-8 text file for text tasks.
    `task=None` infers it from the inputs (`infer_task`). With `stream`, the WAV is written chunk by chunk while it is
    generated (`model.generate_stream`) and is a complete WAV after every chunk."""
    import torch

    task = task or infer_task(inputs)
    validate_inputs(task, inputs)
    output_kind = TASKS[task].output
    out = Path(out)
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; give a file path.")
    if output_kind == "audio" and out.suffix.lower() != ".wav":
        raise CLIError(f"task {task!r} writes audio; --out must end with .wav (got '{out}').")
    if output_kind == "audio" and max_new_tokens is not None:
        raise CLIError(f"--max-new-tokens applies to text tasks; task {task!r} makes audio, use --seconds.")
    if output_kind == "text" and seconds is not None:
        raise CLIError(f"--seconds applies to audio tasks; task {task!r} makes text, use --max-new-tokens.")
    if output_kind == "text":
        for flag, value in (("--window-context", window_context), ("--stream", stream or None),
                            ("--chunk-seconds", chunk_seconds)):  # fmt: skip
            if value is not None:
                raise CLIError(f"{flag} applies to audio tasks; task {task!r} makes text.")
    if chunk_seconds is not None and not stream:
        raise CLIError("--chunk-seconds sets the chunks of --stream; add --stream.")
    config = model.config
    if output_kind == "audio" and seconds is not None:
        # Beyond max_audio_seconds (the model's window) the model generates in windows, up to max_generation_seconds.
        limit = float(getattr(config, "max_generation_seconds", config.max_audio_seconds))
        if seconds > limit:
            raise CLIError(f"--seconds must be at most {limit:g} for this model (its max_generation_seconds; its "
                           f"window is {config.max_audio_seconds:g} s, longer audio is generated in windows), "
                           f"got {seconds:g}.")  # fmt: skip
    if window_context is not None and not window_context < config.max_audio_seconds:
        raise CLIError(f"--window-context must be shorter than the model's window of {config.max_audio_seconds:g} s "
                       f"(max_audio_seconds), got {window_context:g}.")  # fmt: skip
    if greedy and (temperature is not None or top_k is not None):
        raise CLIError("--greedy picks the most likely token; it cannot be combined with --temperature or --top-k.")
    if decoding_steps is not None and decoding != "masked":
        raise CLIError("--decoding-steps applies to --decoding masked; add --decoding masked.")
    if decoding == "masked" and output_kind == "text":
        raise CLIError(f"--decoding masked generates audio; task {task!r} makes text, which decodes autoregressively.")

    arguments = {a: os.fspath(v) if isinstance(v, os.PathLike) else v for a, v in inputs.items() if v is not None}
    if "video_features" in arguments:
        arguments["video_features"] = _load_video_features(inputs["video_features"])
    try:
        if "audio_prompt_codes" in arguments:
            arguments["audio_prompt_codes"] = encode_audio_prompt(model, processor, arguments["audio_prompt_codes"])
        batch = processor(**arguments, task=task)
    except ValueError as e:  # MediaError too
        raise input_error(e, inputs) from e
    try:
        # Only what the user set; everything else comes from the model's generation_config (per output kind).
        kwargs: dict[str, Any] = {}
        if greedy or temperature is not None or top_k is not None:
            kwargs["do_sample"] = not greedy
        if temperature is not None:
            kwargs["temperature"] = temperature
        if top_k is not None:
            kwargs["top_k"] = top_k
        if seconds is not None:
            kwargs["audio_length_in_s"] = seconds
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        if decoding is not None:
            kwargs["decoding"] = decoding
        if decoding_steps is not None:
            kwargs["decoding_steps"] = decoding_steps
        if window_context is not None:
            kwargs["window_context_in_s"] = window_context
        torch.manual_seed(seed)
        start = time.perf_counter()
        if stream:
            out.parent.mkdir(parents=True, exist_ok=True)
            total = seconds if seconds is not None else getattr(model.generation_config, "audio_length_in_s", None)
            writer, chunks, first = _stream_audio(model, batch, kwargs, out, chunk_seconds, total)
            return TaskResult(task, out, seconds=writer.seconds, sampling_rate=writer.sampling_rate, chunks=chunks,
                              first_chunk_s=first, generation_s=time.perf_counter() - start)  # fmt: skip
        generated = model.generate(**batch, **kwargs)
        generation_s = time.perf_counter() - start
    except ValueError as e:
        raise CLIError(_with_flags(str(e))) from e

    out.parent.mkdir(parents=True, exist_ok=True)
    if output_kind == "audio":
        waveform = processor.decode_audio(generated)[0]
        rate = int(generated["sampling_rate"])
        write_wav(out, waveform, rate)
        return TaskResult(task, out, seconds=waveform.shape[-1] / rate, sampling_rate=rate, generation_s=generation_s)
    new_ids = generated[:, batch["input_ids"].shape[1] :]
    text = processor.batch_decode(new_ids, skip_special_tokens=True)[0].strip()
    write_text(out, text + "\n")
    return TaskResult(task, out, text=text)


# ---- build ----------------------------------------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from conversion.build_c3llm import build_tiny

    out = Path(args.out)
    _check_empty_dir(out, "--out")
    start = time.perf_counter()
    try:
        if not args.tiny:
            from c3llm.hub_commands import cmd_build_pretrained

            print(cmd_build_pretrained(args))
            return 0
        model, _ = build_tiny(out, seed=args.seed, num_codebooks=args.num_codebooks,
                              masked_num_layers=args.masked_decoder_layers)
    except (ValueError, FileExistsError) as e:
        raise CLIError(str(e)) from e
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"built the tiny random C3LLM ({parameters / 1e6:.2f} M parameters, {args.num_codebooks} "
        f"codebook{'s' if args.num_codebooks != 1 else ''}, "
        f"seed {args.seed}) in {out} ({time.perf_counter() - start:.1f} s)"
    )
    return 0


# ---- generate -------------------------------------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    inputs = {argument: getattr(args, argument) for argument in FLAGS}
    task = args.task or infer_task(inputs)
    validate_inputs(task, inputs)  # before the (slow) model load
    model, processor = load_model(args.model)
    result = run_task(model, processor, task, inputs, args.out, seconds=args.seconds,
                      max_new_tokens=args.max_new_tokens, seed=args.seed, greedy=args.greedy,
                      temperature=args.temperature, top_k=args.top_k, decoding=args.decoding,
                      decoding_steps=args.decoding_steps, window_context=args.window_context, stream=args.stream,
                      chunk_seconds=args.chunk_seconds)  # fmt: skip
    print(f"{result.task}: wrote {result.output} ({result.describe()})")
    return 0


# ---- serve ----------------------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        from c3llm.web.app import serve
        from c3llm.web.runner import Limits
    except ImportError as e:
        raise CLIError(f"`c3llm serve` needs the web extra ({e}); install it with `pip install \"c3llm[web]\"`.") from e
    limits = Limits(max_upload_mb=args.max_upload_mb, max_input_seconds=args.max_input_seconds,
                    max_output_seconds=args.max_seconds)  # fmt: skip
    serve(args.model, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency,
          max_queue=args.max_queue, limits=limits)  # fmt: skip
    return 0


# ---- tour -----------------------------------------------------------------------------------------------------------
def _write_tour_audio(path: Path) -> None:
    """1 s of a 440 Hz sine at 44.1 kHz, stereo: the processor resamples to CLAP's rate and downmixes to mono."""
    rate = 44100
    t = np.arange(rate) / rate
    tone = 0.4 * np.sin(2 * np.pi * 440.0 * t)
    write_wav(path, np.stack([tone, 0.8 * tone]).astype(np.float32), rate)


def _write_tour_video(path: Path, frames: int = 12, size: int = 32, fps: int = 10) -> None:
    """A short MP4 (mpeg4, yuv420p): a bright square moving right over a dark background."""
    import av

    with atomic_path(path, suffix=".mp4") as tmp:
        with av.open(tmp, "w") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
            for i in range(frames):
                image = np.full((size, size, 3), 24, dtype=np.uint8)
                x = 2 + 2 * i
                image[10:20, x : x + 10] = (230, 200, 40)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def _write_tour_image(path: Path, size: int = 32) -> None:
    """A 32x32 PNG: a colour gradient with a filled circle."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), np.full_like(x, 96)], axis=-1).astype(np.uint8)
    image[(x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 4) ** 2] = (250, 250, 250)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _prepare_tour_dir(out: Path) -> None:
    """Accepts a new or empty folder, or one a previous tour made (its model/inputs/outputs are replaced)."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder.")
    if out.exists() and any(out.iterdir()):
        if not (out / TOUR_MARKER).is_file():
            raise CLIError(
                f"--out {out} is not empty and was not made by `c3llm tour`; choose a new folder or remove it first."
            )
        for name in ("model", "inputs", "outputs"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / TOUR_MARKER).write_text("made by `c3llm tour`; running it again replaces model/, inputs/ and outputs/\n")


def tour_inputs(inputs_dir: Path) -> dict[str, TaskInputs]:
    """Writes the tour's input files and returns the inputs of every task."""
    inputs_dir.mkdir(parents=True, exist_ok=True)
    audio, video, image = inputs_dir / "sine_440hz_44k1_stereo.wav", inputs_dir / "moving_square.mp4", inputs_dir / "gradient.png"
    _write_tour_audio(audio)
    _write_tour_video(video)
    _write_tour_image(image)
    values = {"audio": audio, "video": video, "image": image, "audio_prompt": audio}  # the WAV is the prompt too
    return {
        task: {INPUT_ARGUMENTS[kind][0]: TOUR_TEXTS.get(task, next(iter(TOUR_TEXTS.values()))) if kind == "text"
               else values[kind] for kind in row.inputs}
        for task, row in TASKS.items()
    }  # fmt: skip


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def cmd_tour(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tqdm.auto import tqdm

    from conversion.build_c3llm import build_tiny

    start = time.perf_counter()
    out = Path(args.out)
    _prepare_tour_dir(out)
    model_dir, outputs_dir = out / "model", out / "outputs"
    print(f"building the tiny random model in {model_dir} ...", flush=True)
    build_tiny(model_dir, seed=args.seed)
    tasks = tour_inputs(out / "inputs")
    outputs_dir.mkdir(parents=True, exist_ok=True)
    model, processor = load_model(model_dir)

    results = []
    bar = tqdm(tasks.items(), desc="tasks", unit="task", total=len(tasks), file=sys.stderr)
    for task, inputs in bar:
        bar.set_postfix_str(task)
        suffix = ".wav" if TASKS[task].output == "audio" else ".txt"
        seconds = args.seconds if TASKS[task].output == "audio" else None
        results.append(run_task(model, processor, task, inputs, outputs_dir / f"{task}{suffix}",
                                seconds=seconds, seed=args.seed))
    bar.close()

    rows = [("task", "output", "result")]
    for result in results:
        shown = f"{result.seconds:.2f} s audio" if result.seconds is not None else _shorten(result.text or "", 40)
        rows.append((result.task, os.fspath(result.output), shown))
    print(_table(rows))
    print(f"tour done: {len(results)} tasks in {time.perf_counter() - start:.1f} s; outputs in {outputs_dir}")
    return 0


def _shorten(text: str, limit: int) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- parser ---------------------------------------------------------------------------------------------------------
class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks and appends real defaults (not None/False) to the flag help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        hidden = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if not hidden and "%(default)" not in help_text and action.option_strings:
            help_text += " (default: %(default)s)"
        return help_text


BUILD_EPILOG = """examples:
  c3llm build --out models/c3llm                       # google/gemma-2b, facebook/encodec_24khz, laion/clap-htsat-unfused, CLIP
  c3llm build --llm parts/llm --codec parts/codec --audio-encoder parts/clap --vision-encoder parts/clip \\
      --dtype bfloat16 --max-shard-size 2GB --out models/c3llm
  c3llm build --tiny --out models/tiny
  c3llm build --tiny --out models/tiny-4cb --num-codebooks 4 --seed 1
  c3llm build --tiny --out models/masked --masked-decoder-layers 2

The folder holds config.json, model.safetensors, the processor files and the modelling code, so it loads with
AutoModel/AutoProcessor (after `import modeling_c3llm, processing_c3llm`) or with trust_remote_code=True.
"""

def generate_epilog() -> str:
    """`c3llm generate --help`'s epilog: every task of `TASKS` with its flags, then examples."""
    flags = {task: " + ".join([FLAGS[INPUT_ARGUMENTS[kind][0]] for kind in row.inputs]
                              + [f"[{FLAGS[INPUT_ARGUMENTS[kind][0]]}]" for kind in row.optional])
             for task, row in TASKS.items()}  # fmt: skip
    task_width, flags_width = max(map(len, TASKS)), max(map(len, flags.values()))
    tasks = [f"  {task:<{task_width}} {flags[task]:<{flags_width}} -> {row.output}" for task, row in TASKS.items()]
    return ("tasks and the inputs they need ([optional]):\n" + "\n".join(tasks) + GENERATE_EXAMPLES)


GENERATE_EXAMPLES = """
  (--video-features NPY can replace --video: per-frame features of shape (frames, feature_size))
  Without --task, the task is the first of this table that takes the inputs given (--video alone: video-to-audio).

examples:
  c3llm generate --model models/tiny --task text-to-audio --text "a dog barks" --seconds 2 --out dog.wav
  c3llm generate --model models/tiny --task audio-to-text --audio clip.wav --max-new-tokens 20 --out clip.txt
  c3llm generate --model models/tiny --task video-to-audio --video clip.mp4 --seconds 1.5 --out clip.wav
  c3llm generate --model models/tiny --task video-text-to-audio --video clip.mp4 --text "rain" --out rain.wav
  c3llm generate --model models/tiny --task image-to-audio --image photo.png --greedy --out photo.wav
  c3llm generate --model models/masked --task text-to-audio --text "a dog barks" --decoding masked \\
      --decoding-steps 8 --out dog.wav      (a model with a masked decoder: `c3llm build --tiny --masked-decoder-layers 2`)

  long-form, streaming and continuation (the tiny model's window is 2 s; longer audio is generated in windows):
  c3llm generate --model models/tiny --task text-to-audio --text "rain" --seconds 60 --out rain.wav
  c3llm generate --model models/tiny --task video-to-audio --video long.mp4 --seconds 30 --window-context 0.5 \\
      --out long.wav
  c3llm generate --model models/tiny --text "rain" --seconds 60 --stream --chunk-seconds 1 --out rain.wav
      (rain.wav is a complete WAV after every chunk: a player can start on it while the rest is generated)
  c3llm generate --model models/tiny --audio-prompt dog.wav --seconds 4 --out more.wav
      (task audio-continuation, inferred; more.wav holds only the 4 s of new audio after dog.wav)
  c3llm generate --model models/tiny --audio-prompt dog.wav --text "a dog barks louder" --seconds 4 --out more.wav
  c3llm generate --model models/tiny --task video-text-audio-to-audio --video clip.mp4 --text "rain" \\
      --audio-prompt start.wav --seconds 1 --out next.wav

Exit codes: 0 success, 2 invalid arguments or inputs (printed as 'c3llm: error: ...').
"""

TOUR_EPILOG = """examples:
  c3llm tour --out outputs/tour
  c3llm tour --out outputs/tour --seconds 2 --seed 3

Layout: DIR/model (tiny random model), DIR/inputs (sine WAV at 44.1 kHz stereo, 12-frame MP4, PNG),
DIR/outputs (one .wav or .txt per task). Running it again on the same DIR replaces those three folders.
The model is random, so the audio is noise and the text gibberish: the tour checks the plumbing, not quality;
`c3llm demo` trains a small model that learns.
"""


SERVE_EPILOG = """examples:
  c3llm serve --model models/tiny                      # http://127.0.0.1:7860
  c3llm serve --model models/c3llm --host 0.0.0.0 --port 8080 --concurrency 2
  c3llm serve --model org/c3llm --share                # also a public gradio.live link

The page calls `generate` on the API too (gradio_client): Client("http://127.0.0.1:7860").predict(..., api_name=
"/text_to_audio"), one endpoint per task. Everything it writes lives in one temporary folder, removed on Ctrl-C or
SIGTERM. A Hugging Face Space runs `app.py` at the repository root (README "Web demo").
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="C3LLM (arXiv 2405.16136): one LLM for text/video/image -> audio and audio/video -> text.",
        epilog="examples:\n  c3llm build --tiny --out models/tiny\n"
        "  c3llm generate --model models/tiny --task text-to-audio --text 'a dog barks' --out dog.wav\n"
        "  c3llm tour --out outputs/tour\n  c3llm train c3llm/recipes/stage1.yaml\n"
        "  c3llm demo --out outputs/demo\n  c3llm serve --model models/tiny\n  c3llm eval --model models/tiny --dataset synthfoley --data-dir outputs/demo/data --out outputs/eval\n\nRun `c3llm COMMAND --help` for the flags of each command.",
        formatter_class=_HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    build = commands.add_parser(
        "build",
        help="build a model folder",
        description="Build a C3LLM model folder (weights, configs, processor, code, model card): from pretrained\n"
        "parts, or the tiny random model with --tiny.",
        epilog=BUILD_EPILOG,
        formatter_class=_HelpFormatter,
    )
    source = build.add_argument_group("model source (pretrained parts: Hub ids or local folders)")
    source.add_argument(
        "--tiny",
        action="store_true",
        help="build the tiny random model instead (a few hundred thousand parameters, every part real but narrow)",
    )
    from c3llm.hub_commands import add_build_source_flags

    add_build_source_flags(source, build)
    build.add_argument("--out", required=True, metavar="DIR", help="new or empty folder to write the model into")
    build.add_argument("--seed", type=int, default=0, help="random seed of the weight initialisation")
    build.add_argument(
        "--num-codebooks",
        type=_positive_int,
        default=2,
        metavar="K",
        help="EnCodec codebooks the model uses: the LLM predicts the first, the NAR head the other K-1",
    )
    build.add_argument(
        "--masked-decoder-layers",
        type=_positive_int,
        metavar="N",
        help="give the model a masked decoder of N layers (the NAR head's width) for `generate --decoding masked`, "
        "untrained in a pretrained build until `c3llm train --stage 3` (default: none)",
    )
    build.set_defaults(handler=cmd_build, subparser=build)

    generate = commands.add_parser(
        "generate",
        help="run one task from input files",
        description="Run one C3LLM task from input files and write a WAV (audio tasks) or a UTF-8 text file\n"
        "(text tasks), then print a one-line summary.",
        epilog=generate_epilog(),
        formatter_class=_HelpFormatter,
    )
    generate.add_argument("--model", required=True, metavar="DIR_OR_ID",
                          help="model folder (from `c3llm build`) or Hub repository id (downloaded unless HF_HUB_OFFLINE)")
    generate.add_argument("--task", choices=list(TASKS), metavar="TASK",
                          help=f"the task: one of {', '.join(TASKS)}; default: inferred from the inputs (the first "
                          "task of the table below that takes them)")
    inputs = generate.add_argument_group("inputs (give exactly those the task needs)")
    for kind in INPUT_KINDS:
        tasks = ", ".join(task for task, row in TASKS.items() if kind in row.inputs)
        for argument in INPUT_ARGUMENTS[kind]:
            metavar, text = FLAG_HELP.get(argument, (kind.upper(), f"{kind} input"))
            inputs.add_argument(FLAGS[argument], dest=argument, type=str if kind == "text" else Path, metavar=metavar,
                                help=f"{text} ({tasks})")
    sampling = generate.add_argument_group("generation")
    sampling.add_argument("--seconds", type=_positive_float, metavar="S",
                          help="length of the new audio (audio tasks; with --audio-prompt, the audio after the prompt), "
                          "up to the model's max_generation_seconds (600 s): beyond its window (max_audio_seconds) it "
                          "is generated in windows, each continuing the end of the one before; default: the model's "
                          "generation config, else a video's length when longer than the window, else until the model "
                          "ends the clip or its window is full")
    sampling.add_argument("--window-context", type=_positive_float, metavar="S",
                          help="long-form audio: seconds of the audio so far that each new window continues, shorter "
                          "than the model's window (default: the model's generation config, else a quarter of its "
                          "window)")
    sampling.add_argument("--stream", action="store_true",
                          help="write the WAV chunk by chunk while it is generated (a complete WAV after every chunk, "
                          "so a player can start early), a line per chunk on stderr and the time to the first chunk "
                          "and real-time factor in the summary; needs an exact length (--seconds or the model's "
                          "generation config); the partial file is removed on an error")
    sampling.add_argument("--chunk-seconds", type=_chunk_seconds, metavar="S",
                          help="--stream: the least audio per chunk, at least 0.5 s (default: 0.5; --decoding masked "
                          "streams one window per chunk)")
    sampling.add_argument("--max-new-tokens", type=_positive_int, metavar="N",
                          help="most tokens of text to generate (text tasks); default: the model's generation config")
    sampling.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    sampling.add_argument("--greedy", action="store_true",
                          help="pick the most likely token (default: the model's generation config: audio sampled, "
                          "text greedy)")
    sampling.add_argument("--temperature", type=_positive_float, metavar="F",
                          help="sampling temperature (default: the model's generation config)")
    sampling.add_argument("--top-k", type=_non_negative_int, metavar="K",
                          help="sample among the K most likely tokens, 0 for all (default: the model's generation config)")
    sampling.add_argument("--decoding", choices=DECODINGS, metavar="MODE",
                          help="how audio is decoded: 'autoregressive' (the LLM, one frame per step, the paper's) or "
                          "'masked' (the masked decoder fills every frame in a few parallel steps; needs a model with "
                          "one, see `c3llm train --stage 3`); default: the model's generation config")
    sampling.add_argument("--decoding-steps", type=_positive_int, metavar="N",
                          help="iterations of --decoding masked (default: the model's generation config, 16)")
    generate.add_argument("--out", required=True, type=Path, metavar="PATH",
                          help="output file: .wav for audio tasks, a text file (e.g. .txt) for text tasks")
    generate.set_defaults(handler=cmd_generate, subparser=generate)

    tour = commands.add_parser(
        "tour",
        help="run every task on a tiny random model, offline",
        description="Build the tiny random model, synthesise inputs (WAV, MP4, PNG), run every task through the\n"
        "same code as `generate` and print a summary table. Needs no network and no downloaded weights.",
        epilog=TOUR_EPILOG,
        formatter_class=_HelpFormatter,
    )
    tour.add_argument("--out", required=True, type=Path, metavar="DIR",
                      help="folder for model/, inputs/ and outputs/ (new, empty, or from a previous tour)")
    tour.add_argument("--seconds", type=_positive_float, default=1.0, metavar="S", help="length of each generated clip")
    tour.add_argument("--seed", type=int, default=0, help="random seed of the model weights and of the sampling")
    tour.set_defaults(handler=cmd_tour, subparser=tour)

    serve = commands.add_parser(
        "serve",
        help="serve the web demo (Gradio): a tab per task",
        description="Serve a web page with one tab per task: inputs (with examples), sampling settings,\n"
        "audio players, the video with its new soundtrack, spectrograms and downloads. One model is\n"
        "loaded once and shared; requests wait in a queue. Needs `pip install \"c3llm[web]\"`.",
        epilog=SERVE_EPILOG,
        formatter_class=_HelpFormatter,
    )
    serve.add_argument("--model", required=True, metavar="DIR_OR_ID",
                       help="model folder (from `c3llm build`) or Hub repository id (downloaded unless HF_HUB_OFFLINE)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; 0.0.0.0 makes the page reachable from other machines")
    serve.add_argument("--port", type=_positive_int, default=7860, help="port to listen on")
    serve.add_argument("--share", action="store_true",
                       help="also open a public *.gradio.live link through Gradio's share servers (off by default)")
    serve.add_argument("--concurrency", type=_positive_int, default=1, metavar="N",
                       help="requests that run at once (generation itself takes the one model in turn)")
    serve.add_argument("--max-queue", type=_positive_int, default=64, metavar="N",
                       help="requests that may wait in the queue; more are refused with a 'queue full' message")
    serve.add_argument("--max-upload-mb", type=_positive_float, default=50.0, metavar="MB",
                       help="largest file a user may upload")
    serve.add_argument("--max-input-seconds", type=_positive_float, default=30.0, metavar="S",
                       help="longest audio, audio prompt or video a user may upload")
    serve.add_argument("--max-seconds", type=_positive_float, default=30.0, metavar="S",
                       help="longest audio a user may ask for (and never beyond the model's max_generation_seconds)")
    serve.set_defaults(handler=cmd_serve, subparser=serve)

    # `c3llm train ...` is handed to the training recipe's own HfArgumentParser (see main); listed here for --help.
    commands.add_parser("train", help="fine-tune with the Trainer recipes (see `c3llm train --help`)", add_help=False)

    from .demo import add_demo_parser, add_synthfoley_parser

    add_demo_parser(commands, _HelpFormatter)
    add_synthfoley_parser(commands, _HelpFormatter)
    from .evaluation import add_eval_parser

    add_eval_parser(commands, _HelpFormatter)
    from c3llm.hub_commands import add_hub_commands

    add_hub_commands(commands, _HelpFormatter)
    from c3llm.standins import add_standins_command

    add_standins_command(commands, _HelpFormatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        from .training import main as train_main

        return train_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return args.handler(args, args.subparser)
    except (CLIError, ValueError, FileExistsError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
