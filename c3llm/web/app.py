"""The web demo: a Gradio page with one tab per task of `TASKS`, served by `c3llm serve` and by a Space's `app.py`.

    c3llm serve --model models/tiny               # http://127.0.0.1:7860
    c3llm serve --model org/c3llm --host 0.0.0.0  # reachable from other machines

One model is loaded once and shared; requests wait in a queue and run `concurrency` at a time (`runner.Runner`).
Everything the app writes (uploads, outputs, examples) lives in one temporary folder, removed when the server stops;
Gradio serves files from there only. Gradio's analytics are off and the page loads nothing from outside the server.
"""

import os

# Before Gradio is imported: no telemetry and no version check (both would leave the machine).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import logging  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import unquote  # noqa: E402

import numpy as np  # noqa: E402

from c3llm.web.runner import MAX_CANDIDATES, MAX_SEED, MIN_SECONDS, Cancelled, Limits, Request, RequestError, Runner  # noqa: E402
from processing_c3llm.media_c3llm import MediaError, write_mp4, write_wav  # noqa: E402
from processing_c3llm.processing_c3llm import TASKS  # noqa: E402

logger = logging.getLogger(__name__)

TITLE = "C3LLM: one LLM for text, video and images to audio, and audio and video to text"
# How each input kind of `TASKS` reads on the page.
INPUT_LABELS = {"text": "Text prompt", "video": "Video", "image": "Image", "audio": "Audio",
                "audio_prompt": "Audio prompt (the audio to continue)"}  # fmt: skip
VIDEO_HEIGHT = 260  # pixels of the video players, whatever the video's size


@dataclass
class Examples:
    """Example inputs written at start-up: SynthFoley clips (silent video, audio, the audio's first 0.8 s as a prompt,
    the glyph image of its events) and their captions."""

    videos: list[str]
    audio: list[str]
    prompts: list[str]
    images: list[str]
    captions: list[str]

    def of(self, kind: str) -> list[str]:
        return {"text": self.captions, "video": self.videos, "image": self.images, "audio": self.audio,
                "audio_prompt": self.prompts}[kind]  # fmt: skip


def write_examples(folder: Path, count: int = 2, prompt_seconds: float = 0.8) -> Examples:
    """`count` SynthFoley clips in `folder` as example inputs of every task."""
    from c3llm.synthfoley.synthfoley import make_clip, render_glyphs
    from c3llm.synthfoley.synthfoley import write_png

    folder.mkdir(parents=True, exist_ok=True)
    examples = Examples([], [], [], [], [])
    for i in range(count):
        clip = make_clip(np.random.default_rng(1000 + i), duration=2.0, frame_size=64)
        stem = folder / f"synthfoley-{i + 1}"
        write_mp4(f"{stem}.mp4", clip.frames, clip.fps)
        write_wav(f"{stem}.wav", clip.audio, clip.sampling_rate)
        write_wav(f"{stem}-prompt.wav", clip.audio[: round(prompt_seconds * clip.sampling_rate)], clip.sampling_rate)
        write_png(f"{stem}.png", render_glyphs([event.label for event in clip.events], 64))
        examples.videos.append(f"{stem}.mp4")
        examples.audio.append(f"{stem}.wav")
        examples.prompts.append(f"{stem}-prompt.wav")
        examples.images.append(f"{stem}.png")
        examples.captions.append(clip.caption)
    return examples


class RefuseRemoteFiles:
    """ASGI middleware: Gradio's file route would fetch an http(s) URL for the client (`/file=https://...`); this
    server makes no outgoing request, so such a request gets 403."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            _, found, target = unquote(scope.get("path", "")).partition("/file=")
            if found and "://" in target:
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
                await send({"type": "http.response.body", "body": b"This server fetches no remote files."})
                return
        await self.app(scope, receive, send)


class Cancels:
    """Each browser session's cancel flag: the Cancel button sets it, the running request stops at its next step."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            event = self._events[session] = threading.Event()
        return event

    def cancel(self, session: str) -> None:
        with self._lock:
            event = self._events.get(session)
        if event is not None:
            event.set()

    def finish(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]


def task_title(task: str) -> str:
    """A tab's title: "video-text-to-audio" -> "Video + text → audio"."""
    source, found, target = task.partition("-to-")
    title = " + ".join(source.split("-")) + (f" → {target}" if found else "")
    return title.capitalize() if found else title.replace(" + ", " ").capitalize()


def build_app(runner: Runner, examples: Examples | None = None, concurrency: int = 1):
    """The page: a tab per task (inputs, settings, Generate and Cancel; audio players, MP4, spectrogram, downloads or
    caption, and the seed and time of the run). `concurrency` requests generate at once, across all tabs."""
    import gradio as gr

    cancels = Cancels()
    config = runner.model.generation_config
    with gr.Blocks(title="C3LLM", analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}\nPick a task, give its inputs and press **Generate**. Uploads up to "
                    f"{runner.limits.max_upload_mb:g} MB and {runner.limits.max_input_seconds:g} s; audio up to "
                    f"{runner.max_output_seconds:g} s.")  # fmt: skip
        with gr.Tabs():
            for task, row in TASKS.items():
                with gr.Tab(task_title(task), id=task, elem_id=f"tab-{task}"):
                    _task_tab(gr, runner, cancels, task, row, examples, config, concurrency)
    return app


def _task_tab(gr: Any, runner: Runner, cancels: Cancels, task: str, row, examples: Examples | None, config,
              concurrency: int) -> None:  # fmt: skip
    """One task's tab. Settings that do not apply to the task's output are fixed `State`s, which the page does not
    show and the API (one endpoint per task, `/text_to_audio`, ...) does not ask for."""
    audio_out = row.output == "audio"

    def setting(applies: bool, default: Any, make: Callable[[], Any]):
        return make() if applies else gr.State(default)

    gr.Markdown(row.description)
    with gr.Row():
        with gr.Column():
            inputs: dict[str, Any] = {}
            for kind in (*row.inputs, *row.optional):
                label = INPUT_LABELS[kind] + (" (optional)" if kind in row.optional else "")
                if kind == "text":
                    inputs[kind] = gr.Textbox(label=label, lines=2, elem_id=f"{task}-text")
                elif kind == "video":
                    inputs[kind] = gr.Video(label=label, sources=["upload"], height=VIDEO_HEIGHT,
                                            elem_id=f"{task}-video")  # fmt: skip
                elif kind == "image":
                    inputs[kind] = gr.Image(label=label, type="filepath", sources=["upload"], elem_id=f"{task}-image")
                else:
                    inputs[kind] = gr.Audio(label=label, type="filepath", sources=["upload"],
                                            elem_id=f"{task}-{kind}")  # fmt: skip
            negative = setting(audio_out, "", lambda: gr.Textbox(
                "", label="Negative prompt (what to steer away from; needs guidance above 1)",
                elem_id=f"{task}-negative"))  # fmt: skip
            seconds = setting(audio_out, None, lambda: gr.Slider(
                MIN_SECONDS, runner.max_output_seconds, value=runner.default_seconds, step=0.1, label="Duration (s)",
                elem_id=f"{task}-seconds"))  # fmt: skip
            with gr.Accordion("Settings", open=False, elem_id=f"{task}-settings"):
                seed = gr.Number(-1, precision=0, minimum=-1, maximum=MAX_SEED, label="Seed (-1 = random)",
                                 elem_id=f"{task}-seed")  # fmt: skip
                candidates = gr.Slider(1, MAX_CANDIDATES, value=1, step=1, label="Candidates",
                                       elem_id=f"{task}-candidates")  # fmt: skip
                text_defaults = getattr(config, "text_defaults", None) or {}
                sampled = audio_out or bool(text_defaults.get("do_sample", False))
                temperature = gr.Slider(0, 2, step=0.05, value=float(config.temperature or 1.0) if sampled else 0.0,
                                        label="Temperature (0 = greedy)", elem_id=f"{task}-temperature")  # fmt: skip
                top_k = gr.Slider(0, 1000, step=1, value=int(config.top_k or 0), label="Top-k (0 = all tokens)")
                guidance = setting(audio_out, 1.0, lambda: gr.Slider(1, 10, step=0.5, value=1,
                                                                    label="Guidance scale (1 = off)"))  # fmt: skip
                decoding = setting(audio_out, "autoregressive", lambda: gr.Radio(
                    runner.decodings, value="autoregressive", label="Decoding"))  # fmt: skip
                steps = setting(audio_out, None, lambda: gr.Slider(
                    1, 64, step=1, value=int(getattr(config, "decoding_steps", None) or 16),
                    label="Decoding steps (masked)"))  # fmt: skip
                max_tokens = setting(not audio_out, None, lambda: gr.Slider(
                    1, runner.limits.max_new_tokens, step=1, label="Max new tokens",
                    value=min(int(text_defaults.get("max_new_tokens", 32)), runner.limits.max_new_tokens)))  # fmt: skip
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id=f"{task}-generate")
                stop = gr.Button("Cancel", elem_id=f"{task}-cancel")
            if examples is not None:
                kinds = list(inputs)
                gr.Examples([[examples.of(kind)[i] for kind in kinds] for i in range(len(examples.captions))],
                            [inputs[kind] for kind in kinds], cache_examples=False)  # fmt: skip
        with gr.Column():
            players, video_out, spectrogram, files, caption = [], None, None, None, None
            if audio_out:
                players = [gr.Audio(label=f"Candidate {i}", type="filepath", interactive=False, visible=i == 1,
                                    elem_id=f"{task}-out-{i}") for i in range(1, MAX_CANDIDATES + 1)]  # fmt: skip
                if "video" in row.inputs:
                    video_out = gr.Video(label="Video with the generated audio (candidate 1)", interactive=False,
                                         height=VIDEO_HEIGHT, elem_id=f"{task}-out-video")  # fmt: skip
                spectrogram = gr.Image(label="Spectrogram", type="filepath", interactive=False,
                                       elem_id=f"{task}-spectrogram")  # fmt: skip
                files = gr.File(label="Download", file_count="multiple", interactive=False, elem_id=f"{task}-files")
            else:
                caption = gr.Textbox(label="Caption", lines=3, interactive=False, elem_id=f"{task}-caption")
            seed_used = gr.Number(None, label="Seed used", interactive=False, precision=0, elem_id=f"{task}-seed-used")
            summary = gr.Textbox(label="Run", interactive=False, elem_id=f"{task}-summary")
    outputs = [c for c in (*players, video_out, spectrogram, files, caption, seed_used, summary) if c is not None]

    def generate(text, video, image, audio, audio_prompt, negative_prompt, seconds, seed, candidates, temperature,
                 top_k, guidance_scale, decoding, decoding_steps, max_new_tokens, request: gr.Request,
                 progress=gr.Progress()):  # fmt: skip
        if "text" in row.inputs and not (text or "").strip():
            raise gr.Error("The text prompt is empty; type what you want to hear.", print_exception=False)
        temperature = float(temperature)
        web_request = Request(
            task, text=text or None, video=video, image=image, audio=audio, audio_prompt=audio_prompt,
            negative_prompt=negative_prompt or None, seconds=None if seconds is None else float(seconds),
            seed=int(seed if seed is not None else -1), candidates=int(candidates), temperature=temperature,
            top_k=int(top_k) if temperature > 0 else None, guidance_scale=float(guidance_scale), decoding=decoding,
            decoding_steps=int(decoding_steps) if decoding == "masked" and decoding_steps is not None else None,
            max_new_tokens=None if max_new_tokens is None else int(max_new_tokens),
        )  # fmt: skip
        session = request.session_hash or "anonymous"
        cancel = cancels.start(session)
        try:
            progress(0.0, desc="checking the inputs")
            result = runner.run(web_request, progress=lambda f, what: progress(f, desc=what), cancel=cancel)
        except (RequestError, MediaError) as e:
            raise gr.Error(str(e), print_exception=False) from e
        except Cancelled as e:
            raise gr.Error("Cancelled.", print_exception=False) from e
        finally:
            cancels.finish(session, cancel)
        values = {seed_used: result.seed, summary: result.summary()}
        if not audio_out:
            captions = result.captions
            values[caption] = "\n".join(f"{i}. {c}" for i, c in enumerate(captions, 1)) if len(captions) > 1 \
                else captions[0]  # fmt: skip
            return values
        for i, player in enumerate(players):
            shown = i < len(result.audio)
            values[player] = gr.update(value=str(result.audio[i]) if shown else None, visible=shown)
        if video_out is not None:
            values[video_out] = str(result.videos[0])
        values[spectrogram] = str(result.spectrogram)
        values[files] = [str(p) for p in result.audio + result.videos]
        return values

    # Every input kind in the order of `generate`'s parameters: a kind the task does not take is an empty State.
    given = [inputs[kind] if kind in inputs else gr.State(None) for kind in INPUT_LABELS]
    settings = [negative, seconds, seed, candidates, temperature, top_k, guidance, decoding, steps, max_tokens]
    event = run.click(generate, [*given, *settings], outputs, api_name=task.replace("-", "_"),
                      concurrency_limit=concurrency, concurrency_id="generate")  # fmt: skip

    def cancel(request: gr.Request) -> None:
        cancels.cancel(request.session_hash or "anonymous")

    stop.click(cancel, None, None, cancels=[event], api_name=False, queue=False)


def serve(model: str, host: str = "127.0.0.1", port: int = 7860, share: bool = False, concurrency: int = 1,
          max_queue: int = 64, limits: Limits | None = None) -> None:  # fmt: skip
    """Loads `model` (a folder or Hub id) once, writes the examples and serves the page until interrupted (Ctrl-C or
    SIGTERM); its temporary folder is removed on the way out."""
    from c3llm.loading import load_model

    limits = limits or Limits()
    root = Path(tempfile.mkdtemp(prefix="c3llm-web-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        # Gradio's uploads and the copies it serves, inside `root` (Gradio reads this when it is imported).
        os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
        import gradio as gr
        from starlette.middleware import Middleware

        loaded, processor = load_model(model)
        runner = Runner(loaded, processor, root / "outputs", limits)
        app = build_app(runner, write_examples(root / "examples"), concurrency)
        app.queue(default_concurrency_limit=concurrency, max_size=max_queue)
        blocked = [str(Path(model).resolve())] if Path(model).exists() else []
        theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                  font_mono=["ui-monospace", "monospace"])  # system fonts: nothing from a CDN
        # Blocks until Ctrl-C or SIGTERM (`_interrupt`), then closes the server.
        app.launch(server_name=host, server_port=port, share=share, max_file_size=f"{limits.max_upload_mb:g}mb",
                   blocked_paths=blocked, show_error=True, theme=theme, footer_links=[],
                   app_kwargs={"middleware": [Middleware(RefuseRemoteFiles)]})  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(root, ignore_errors=True)


def _interrupt(signum, frame) -> None:
    """SIGTERM ends the server as Ctrl-C does, so its temporary folder is removed."""
    raise KeyboardInterrupt
