"""One web request, without Gradio: its inputs checked (through the processor's readers), the shared model run under
a lock with the request's own seed, and its outputs written into a folder of the app's temporary folder.

    runner = Runner(model, processor, workdir)
    result = runner.run(Request("text-to-audio", text="a dog barks", seconds=2.0, candidates=2, seed=7))
    result.audio  # [Path(".../candidate-1.wav"), Path(".../candidate-2.wav")]

`c3llm.web.app` puts a page around it; tests and scripts can call it directly.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from c3llm.loading import encode_audio_prompt
from c3llm.plots import plot_spectrograms
from modeling_c3llm.generation_c3llm import DECODINGS
from processing_c3llm.media_c3llm import load_audio, load_video, write_mp4, write_wav
from processing_c3llm.processing_c3llm import INPUT_ARGUMENTS, TASKS, check_task_inputs

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 4
MAX_SEED = 2**31 - 1
MIN_SECONDS = 0.1  # the shortest audio to generate (its spectrogram needs a few hundred samples)
SILENCE_PEAK = 1e-4  # an uploaded audio whose peak is below this (-80 dBFS) is refused as silent
_CHECK_RATE = 16000  # the rate uploads are read at to measure their length and loudness


class RequestError(ValueError):
    """An input the page shows back to the user as a readable error; the server goes on serving."""


class Cancelled(Exception):
    """The user cancelled the request; generation stopped at its next step."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask: the caps that keep a shared server responsive."""

    max_upload_mb: float = 50.0  # any uploaded file (Gradio refuses bigger uploads before they reach us)
    max_input_seconds: float = 30.0  # an uploaded audio, audio prompt or video
    max_output_seconds: float = 30.0  # the audio to generate
    max_new_tokens: int = 128  # a caption


@dataclass
class Request:
    """The inputs of one task (`TASKS`) and its generation settings, as the page gives them.

    `seed=-1` draws a random seed (the result says which). `temperature` 0 is greedy decoding, `None` (and `top_k`
    `None`) the model's generation config. `guidance_scale` of 1 means no classifier-free guidance; above 1 the audio
    is steered away from `negative_prompt` (or from the unconditional prompt)."""

    task: str
    text: str | None = None
    negative_prompt: str | None = None
    video: str | None = None
    image: str | None = None
    audio: str | None = None
    audio_prompt: str | None = None
    seconds: float | None = None
    seed: int = -1
    guidance_scale: float = 1.0
    temperature: float | None = None
    top_k: int | None = None
    decoding: str = "autoregressive"
    decoding_steps: int | None = None
    candidates: int = 1
    max_new_tokens: int | None = None


@dataclass
class Result:
    """What one request produced: per candidate a WAV (and for a video task an MP4 with the audio muxed in), or a
    caption; one spectrogram picture of all candidates; the seed used and the time taken."""

    task: str
    seed: int
    folder: Path
    audio: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    spectrogram: Path | None = None
    captions: list[str] = field(default_factory=list)
    seconds: float | None = None  # of each audio candidate
    generation_s: float = 0.0

    def summary(self) -> str:
        count = len(self.audio) or len(self.captions)
        made = (f"{count} candidate{'s' if count != 1 else ''} of {self.seconds:.2f} s" if self.audio
                else f"{count} caption{'s' if count != 1 else ''}")  # fmt: skip
        text = f"seed {self.seed} · {made} · generated in {self.generation_s:.2f} s"
        if self.audio and self.seconds:
            text += f" (real-time factor {self.generation_s / self.seconds:.2f})"
        return text


class _Steps:
    """Counts the forward passes of the LLM and the masked decoder while a request generates: it reports the fraction
    done to `progress` and stops generation (raising `Cancelled`) once `cancel` is set."""

    def __init__(self, model, total: int, progress: Callable[[float, str], None] | None,
                 cancel: threading.Event | None, what: str):  # fmt: skip
        self.total, self.progress, self.cancel, self.what, self.done = max(total, 1), progress, cancel, what, 0
        # The LLM's decoder stack (every generation step runs it, with or without the LM head) and the masked decoder.
        modules = [getattr(model.language_model, "model", model.language_model), getattr(model, "masked_decoder", None)]
        self.handles = [m.register_forward_pre_hook(self._step) for m in modules if m is not None]

    def _step(self, module, args) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done / self.total, 0.99), self.what)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class Runner:
    """Runs requests on one model shared by every user of the page: generation holds a lock (so each request's seed
    gives the same audio however many arrive together), the checks and file writing do not."""

    def __init__(self, model, processor, workdir: str | os.PathLike, limits: Limits | None = None,
                 keep_seconds: float = 3600.0):  # fmt: skip
        self.model, self.processor, self.limits = model, processor, limits or Limits()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep_seconds = keep_seconds
        self._lock = threading.Lock()
        config = model.config
        self.max_output_seconds = min(self.limits.max_output_seconds,
                                      float(getattr(config, "max_generation_seconds", config.max_audio_seconds)))
        self.default_seconds = min(float(config.max_audio_seconds), self.max_output_seconds)
        self.decodings = [d for d in DECODINGS if d != "masked" or getattr(model, "masked_decoder", None) is not None]

    # ---- checks --------------------------------------------------------------------------------------------------
    def check(self, request: Request) -> None:
        """Refuses what the request cannot ask, with a message that names the field and the fix."""
        if request.task not in TASKS:
            raise RequestError(f"unknown task {request.task!r}; choose one of {', '.join(TASKS)}.")
        row = TASKS[request.task]
        # A Request field per input kind of `TASKS`, named as the kind.
        given = [names[0] for kind, names in INPUT_ARGUMENTS.items() if getattr(request, kind) is not None]
        try:
            check_task_inputs(request.task, given)
        except ValueError as e:
            raise RequestError(f"{request.task}: {e}") from e
        if request.text is not None and not request.text.strip():
            raise RequestError("the text prompt is empty; type what you want to hear.")
        if not 1 <= int(request.candidates) <= MAX_CANDIDATES:
            raise RequestError(f"candidates must be 1 to {MAX_CANDIDATES}, got {request.candidates}.")
        if not -1 <= int(request.seed) <= MAX_SEED:
            raise RequestError(f"seed must be -1 (random) or 0 to {MAX_SEED}, got {request.seed}.")
        if request.temperature is not None and not (math.isfinite(request.temperature) and request.temperature >= 0):
            raise RequestError(f"temperature must be 0 (greedy) or a positive number, got {request.temperature}.")
        if request.temperature == 0 and request.candidates > 1:
            raise RequestError("greedy decoding (temperature 0) gives one answer; raise the temperature for several "
                               "candidates.")  # fmt: skip
        if request.top_k is not None and request.top_k < 0:
            raise RequestError(f"top-k must be 0 (all tokens) or more, got {request.top_k}.")
        if row.output == "text":
            if request.max_new_tokens is not None and not 1 <= request.max_new_tokens <= self.limits.max_new_tokens:
                raise RequestError(f"max new tokens must be 1 to {self.limits.max_new_tokens}, got "
                                   f"{request.max_new_tokens}.")  # fmt: skip
            return
        seconds = request.seconds
        if seconds is not None and not (math.isfinite(seconds) and MIN_SECONDS <= seconds <= self.max_output_seconds):
            raise RequestError(f"duration must be {MIN_SECONDS:g} to {self.max_output_seconds:g} s on this server, "
                               f"got {request.seconds:g} s.")  # fmt: skip
        if not (math.isfinite(request.guidance_scale) and request.guidance_scale >= 1):
            raise RequestError(f"guidance scale must be 1 (off) or more, got {request.guidance_scale}.")
        if request.negative_prompt and request.guidance_scale == 1:
            raise RequestError("a negative prompt acts through classifier-free guidance: raise the guidance scale "
                               "above 1, or clear the negative prompt.")  # fmt: skip
        if request.decoding not in self.decodings:
            raise RequestError(f"decoding must be one of {', '.join(self.decodings)} for this model, got "
                               f"{request.decoding!r}.")  # fmt: skip
        if request.decoding_steps is not None and request.decoding == "masked" and request.decoding_steps < 1:
            raise RequestError(f"decoding steps must be 1 or more, got {request.decoding_steps}.")

    def _check_file(self, path: str, what: str) -> None:
        if not os.path.isfile(path):
            raise RequestError(f"the {what} upload is missing; upload it again.")
        megabytes = os.path.getsize(path) / 2**20
        if megabytes > self.limits.max_upload_mb:
            raise RequestError(f"the {what} is {megabytes:.1f} MB; this server takes files up to "
                               f"{self.limits.max_upload_mb:g} MB.")  # fmt: skip

    def _check_audio(self, path: str, what: str) -> None:
        """Reads an uploaded audio with the processor's reader: refused if unreadable, too long or silent."""
        self._check_file(path, what)
        waveform = load_audio(path, _CHECK_RATE)
        seconds = waveform.shape[-1] / _CHECK_RATE
        if seconds > self.limits.max_input_seconds:
            raise RequestError(f"the {what} is {seconds:.1f} s long; this server takes up to "
                               f"{self.limits.max_input_seconds:g} s: trim it.")  # fmt: skip
        peak = float(np.abs(waveform).max())
        if peak < SILENCE_PEAK:
            raise RequestError(f"the {what} is silent (peak {20 * math.log10(max(peak, 1e-12)):.0f} dBFS); upload "
                               "audio with sound in it.")  # fmt: skip

    def _read_video(self, path: str) -> tuple[np.ndarray, float]:
        self._check_file(path, "video")
        frames, fps = load_video(path)
        seconds = len(frames) / fps
        if seconds > self.limits.max_input_seconds:
            raise RequestError(f"the video is {seconds:.1f} s long; this server takes up to "
                               f"{self.limits.max_input_seconds:g} s: trim it.")  # fmt: skip
        return frames, fps

    # ---- running -------------------------------------------------------------------------------------------------
    def run(self, request: Request, progress: Callable[[float, str], None] | None = None,
            cancel: threading.Event | None = None) -> Result:  # fmt: skip
        """Checks `request`, generates and writes its outputs. Raises `RequestError` for a bad input (a `MediaError`
        from the processor's readers becomes one) and `Cancelled` when `cancel` is set while it generates."""
        self.check(request)
        row = TASKS[request.task]
        video = None
        try:
            if request.video is not None:
                video = self._read_video(request.video)
            if request.image is not None:
                self._check_file(request.image, "image")
            for name in ("audio", "audio_prompt"):
                if getattr(request, name) is not None:
                    self._check_audio(getattr(request, name), name.replace("_", " "))
            arguments = {"text": request.text, "videos": request.video, "images": request.image,
                         "audio": request.audio}  # fmt: skip
            arguments = {name: value for name, value in arguments.items() if value is not None}
            if request.audio_prompt is not None:
                arguments["audio_prompt_codes"] = encode_audio_prompt(self.model, self.processor, request.audio_prompt)
            guided = row.output == "audio" and request.guidance_scale > 1
            if guided and request.negative_prompt:
                arguments["negative_prompt"] = request.negative_prompt
            batch = self.processor(**arguments, task=request.task)
        except RequestError:
            raise
        except ValueError as e:  # the processor's checks and MediaError
            raise RequestError(str(e)) from e

        seed = secrets.randbelow(MAX_SEED + 1) if request.seed == -1 else int(request.seed)
        kwargs, total, what = self._generation_kwargs(request, guided)
        folder = self._new_folder()
        with self._lock:
            steps = _Steps(self.model, total, progress, cancel, what)
            try:
                torch.manual_seed(seed)
                start = time.perf_counter()
                with torch.no_grad():
                    generated = self.model.generate(**batch, **kwargs)
                generation_s = time.perf_counter() - start
            except ValueError as e:  # generate's own checks (e.g. a prompt longer than the model's context)
                shutil.rmtree(folder, ignore_errors=True)
                raise RequestError(str(e)) from e
            except Cancelled:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            finally:
                steps.close()
        if progress is not None:
            progress(1.0, "writing the outputs")
        result = Result(request.task, seed, folder, generation_s=generation_s)
        if row.output == "text":
            new_ids = generated[:, batch["input_ids"].shape[1] :]
            result.captions = [text.strip() for text in self.processor.batch_decode(new_ids, skip_special_tokens=True)]
            return result
        self._write_audio(result, self.processor.decode_audio(generated), int(generated["sampling_rate"]), video)
        return result

    def _generation_kwargs(self, request: Request, guided: bool) -> tuple[dict, int, str]:
        """`generate`'s keywords for the request, the forward passes it will take (for the progress bar) and what
        the progress bar says."""
        row, config = TASKS[request.task], self.model.config
        kwargs: dict = {"num_return_sequences": request.candidates}
        if request.temperature == 0:
            kwargs["do_sample"] = False
        elif request.candidates > 1 or request.temperature is not None or request.top_k is not None:
            kwargs["do_sample"] = True
            if request.temperature is not None:
                kwargs["temperature"] = request.temperature
            if request.top_k is not None:
                kwargs["top_k"] = request.top_k
        if row.output == "text":
            kwargs["max_new_tokens"] = request.max_new_tokens or self.limits.max_new_tokens
            return kwargs, kwargs["max_new_tokens"], "writing the caption"
        seconds = request.seconds if request.seconds is not None else self.default_seconds
        kwargs["audio_length_in_s"] = seconds
        if guided:
            kwargs["guidance_scale"] = request.guidance_scale
        kwargs["decoding"] = request.decoding
        passes = 2 if guided else 1
        windows = max(1, math.ceil(seconds / config.max_audio_seconds))
        if request.decoding == "masked":
            if request.decoding_steps is not None:
                kwargs["decoding_steps"] = request.decoding_steps
            steps = kwargs.get("decoding_steps") or getattr(self.model.generation_config, "decoding_steps", None) or 16
            return kwargs, passes * windows * steps, "filling the audio codes (masked decoding)"
        return kwargs, passes * (round(seconds * config.frame_rate) + windows), "generating the audio codes"

    def _write_audio(self, result: Result, waveforms: list[np.ndarray], rate: int,
                     video: tuple[np.ndarray, float] | None) -> None:  # fmt: skip
        """Per candidate a WAV (and an MP4 of the video's frames over the audio's length, the audio muxed in); one
        spectrogram picture of all candidates."""
        result.seconds = waveforms[0].shape[-1] / rate
        for i, waveform in enumerate(waveforms, start=1):
            path = result.folder / f"candidate-{i}.wav"
            write_wav(path, waveform, rate)
            result.audio.append(path)
            if video is not None:
                frames, fps = video
                shown = frames[: max(1, math.ceil(waveform.shape[-1] / rate * fps))]
                mp4 = result.folder / f"candidate-{i}.mp4"
                write_mp4(mp4, shown, fps, waveform.mean(axis=0), rate)
                result.videos.append(mp4)
        result.spectrogram = result.folder / "spectrogram.png"
        rows = [(f"candidate {i} (seed {result.seed})", w.mean(axis=0)) for i, w in enumerate(waveforms, start=1)]
        plot_spectrograms(rows, rate, result.spectrogram)

    def _new_folder(self) -> Path:
        """A new folder for one request's outputs; folders older than `keep_seconds` are removed first."""
        now = time.time()
        for old in self.workdir.glob("request-*"):
            try:
                if now - old.stat().st_mtime > self.keep_seconds:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:
                pass
        return Path(tempfile.mkdtemp(prefix="request-", dir=self.workdir))
