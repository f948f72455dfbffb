"""SynthFoley: a procedural sound-event dataset with captions and matching videos, written in the AudioCaps and
VGGSound layouts so that the C3LLM data pipeline and metrics can be exercised without downloading anything.

Every clip holds 1..N non-overlapping events from six classes. The audio is synthesized, the caption comes from a
template and the video shows one colored shape per event, from the event's onset frame for its duration. A picture
of the clip (`render_glyphs`) shows its events left to right in the same shapes and colors, so it gives their order
but not their timing; a class-neutral video (`neutral_frames`) shows every event as the same grey square, so it gives
their timing but not their classes.

Clips longer than `CLIP_SECONDS` (`make_clip(duration=...)`, `write_synthfoley(duration=...)`) are runs of independent
`CLIP_SECONDS` segments, each drawn like a training clip, so that their local statistics are the training clips'. Two
more layouts hold 2 s clips that continue an audio prompt, the first `PROMPT_SECONDS` of the clip: `continuation`
(`make_continuation_clip`: the prompt holds every class of a small palette and the rest continues with palette
classes) and `multicondition` (`make_multicondition_clip`: the prompt holds class P, the rest one P and one T event, a
class-neutral video gives their timing and a text names T alone).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from processing_c3llm.media_c3llm import atomic_path, write_mp4, write_text, write_wav

EVENT_CLASSES = ("high beep", "low beep", "chirp", "noise burst", "click train", "hum")

EVENT_DURATIONS = {
    "high beep": 0.15,
    "low beep": 0.15,
    "chirp": 0.3,
    "noise burst": 0.12,
    "click train": 0.258,  # 6 clicks 50 ms apart, the last one 8 ms long
    "hum": 0.6,
}

Color = tuple[int, int, int]
Visual = tuple[str, Color, float]  # (shape, RGB color, size as a fraction of the frame side)

EVENT_VISUALS: dict[str, Visual] = {
    "high beep": ("square", (255, 255, 0), 0.25),
    "low beep": ("square", (0, 0, 255), 0.5),
    "chirp": ("triangle", (0, 255, 0), 0.375),
    "noise burst": ("circle", (255, 255, 255), 0.375),
    "click train": ("plus", (255, 0, 0), 0.375),
    "hum": ("bar", (255, 0, 255), 0.625),
}
NEUTRAL_VISUAL: Visual = ("square", (128, 128, 128), 0.375)  # every event in the class-neutral videos

LAYOUTS = ("audiocaps", "vggsound", "neutral")  # the folders `write_synthfoley` writes under its root, same clips
PROMPT_LAYOUTS = ("continuation", "multicondition")  # and the folders of the audio-prompt clips, clips of their own
# The file layout each folder is written in: the AudioCaps one, or the VGGSound one with or without pictures.
_LAYOUT_STYLES = {"audiocaps": "audiocaps", "vggsound": "vggsound", "neutral": "neutral",
                  "continuation": "audiocaps", "multicondition": "neutral"}  # fmt: skip

CLIP_SECONDS = 2.0  # the training clips' length, and the segment that longer clips repeat
PROMPT_SECONDS = 0.8  # the audio prompt of the continuation and multi-condition clips: [0, PROMPT_SECONDS)

MIN_GAP = 0.1  # seconds of silence between consecutive events
BACKGROUND_DB = -45.0  # dB re full scale, the standard deviation of the white background noise
_FADE = 0.005
_CLICK_SPACING = 0.05
_CLICK_LENGTH = 0.008
_REPEAT_WORDS = {2: "twice", 3: "three times", 4: "four times", 5: "five times", 6: "six times"}
_WORD_COUNTS = {word: count for count, word in _REPEAT_WORDS.items()}
_CLASS_PATTERN = re.compile(
    r"\b(" + "|".join(re.escape(name) for name in EVENT_CLASSES) + r")\b"
    r"(?:\s+repeats\s+(" + "|".join(_WORD_COUNTS) + r"|\d+\s+times))?"
)


@dataclass
class Event:
    """One sound event: its class, onset and duration in seconds."""

    label: str
    onset: float
    duration: float


@dataclass
class Clip:
    """A synthesized clip: mono float32 audio, its events in onset order, caption and uint8 RGB frames (N, H, W, 3)."""

    audio: np.ndarray
    sampling_rate: int
    events: list[Event]
    caption: str
    frames: np.ndarray
    fps: float


def make_caption(labels: Sequence[str]) -> str:
    """Template caption for event classes in onset order; consecutive repeats merge into 'repeats twice' etc."""
    if not labels:
        raise ValueError("make_caption needs at least one event label.")
    parts = []
    index = 0
    while index < len(labels):
        count = 1
        while index + count < len(labels) and labels[index + count] == labels[index]:
            count += 1
        part = f"a {labels[index]}"
        if count > 1:
            part += f" repeats {_REPEAT_WORDS.get(count, f'{count} times')}"
        parts.append(part)
        index += count
    return ", then ".join(parts)


def parse_caption(caption: str) -> list[str]:
    """Event classes mentioned in a caption, in order, with 'repeats twice'/'repeats N times' expanded."""
    labels = []
    for match in _CLASS_PATTERN.finditer(caption.lower()):
        repeat = match.group(2)
        if repeat is None:
            count = 1
        elif repeat in _WORD_COUNTS:
            count = _WORD_COUNTS[repeat]
        else:
            count = int(repeat.split()[0])
        labels.extend([match.group(1)] * count)
    return labels


def event_frames(event: Event, fps: float) -> range:
    """Indices of the video frames that show `event`: from its onset frame for its duration, at least one frame."""
    first = round(event.onset * fps)
    last = int(np.ceil((event.onset + event.duration) * fps - 1e-6))
    return range(first, max(first + 1, last))


def _fade(signal: np.ndarray, sampling_rate: int) -> np.ndarray:
    length = min(int(_FADE * sampling_rate), len(signal) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(length) / length)
    signal[:length] *= ramp
    signal[len(signal) - length :] *= ramp[::-1]
    return signal


def synthesize_event(label: str, rng: np.random.Generator, sampling_rate: int) -> np.ndarray:
    """The waveform of one event of class `label`, peak amplitude about 0.3-0.5, with a short fade at both ends."""
    amplitude = rng.uniform(0.3, 0.5)
    num_samples = round(EVENT_DURATIONS[label] * sampling_rate)
    t = np.arange(num_samples) / sampling_rate
    phase = rng.uniform(0, 2 * np.pi)
    if label in ("high beep", "low beep"):
        frequency = 1760.0 if label == "high beep" else 440.0
        envelope = np.minimum(1.0, t / 0.003) * np.exp(-t / 0.15)
        signal = envelope * np.sin(2 * np.pi * frequency * t + phase)
    elif label == "chirp":
        start, stop, length = 600.0, 3000.0, EVENT_DURATIONS[label]
        signal = np.sin(2 * np.pi * (start * t + (stop - start) * t**2 / (2 * length)) + phase)
    elif label == "noise burst":
        signal = rng.uniform(-1.0, 1.0, num_samples)
    elif label == "click train":
        signal = np.zeros(num_samples)
        click_length = round(_CLICK_LENGTH * sampling_rate)
        decay = np.exp(-np.arange(click_length) / (0.0025 * sampling_rate))
        for k in range(6):
            start = round(k * _CLICK_SPACING * sampling_rate)
            signal[start : start + click_length] = rng.uniform(-1.0, 1.0, click_length) * decay
        return amplitude * signal  # clicks are already faded by their decay
    else:  # hum
        harmonics = [(1, 1.0), (2, 0.5), (3, 0.3)]
        signal = sum(gain * np.sin(2 * np.pi * 110.0 * k * t + k * phase) for k, gain in harmonics) / 1.5
    return amplitude * _fade(signal, sampling_rate)


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean mask of a shape `size` pixels wide: 'square', 'triangle', 'circle', 'plus' or 'bar' (a quarter as
    tall)."""
    box_h = max(1, size // 4) if shape == "bar" else size
    y, x = np.mgrid[:box_h, :size]
    if shape == "triangle":
        return np.abs(2 * x - (size - 1)) <= y
    if shape == "circle":
        return (2 * y - (size - 1)) ** 2 + (2 * x - (size - 1)) ** 2 <= size**2
    if shape == "plus":
        bar = max(1, size // 3)
        middle = (size - bar) // 2
        return ((y >= middle) & (y < middle + bar)) | ((x >= middle) & (x < middle + bar))
    return np.ones((box_h, size), dtype=bool)  # square, bar


def _paint(image: np.ndarray, mask: np.ndarray, top: int, left: int, color: Color) -> None:
    image[top : top + mask.shape[0], left : left + mask.shape[1]][mask] = color


def _draw(frame: np.ndarray, visual: Visual, rng: np.random.Generator) -> None:
    """Draws `visual` at a random position that keeps it inside the frame."""
    shape, color, fraction = visual
    height, width = frame.shape[:2]
    mask = shape_mask(shape, max(2, round(fraction * min(height, width))))
    top = int(rng.integers(0, height - mask.shape[0] + 1))
    left = int(rng.integers(0, width - mask.shape[1] + 1))
    _paint(frame, mask, top, left, color)


def _show(frames: np.ndarray, event: Event, fps: float, visual: Visual, rng: np.random.Generator) -> None:
    """Draws `visual` on the event's onset frame and repeats that frame for the event's duration (`event_frames`)."""
    shown = event_frames(event, fps)
    _draw(frames[shown.start], visual, rng)
    frames[shown.start + 1 : shown.stop] = frames[shown.start]


def render_glyphs(labels: Sequence[str], size: int = 32) -> np.ndarray:
    """A picture of an event sequence, uint8 RGB (size, size, 3): one glyph per event in its class shape and color
    (`EVENT_VISUALS`), in equal slots from left to right, each as wide as its slot less a margin and vertically
    centred, on black. It depends on the labels only."""
    if not 1 <= len(labels) <= size // 4:
        raise ValueError(f"a {size} px image holds 1 to {size // 4} glyphs, got {len(labels)}.")
    image = np.zeros((size, size, 3), dtype=np.uint8)
    slot = size // len(labels)
    margin = max(1, slot // 8)
    first = (size - slot * len(labels)) // 2 + margin
    for index, label in enumerate(labels):
        shape, color, _ = EVENT_VISUALS[label]
        mask = shape_mask(shape, slot - 2 * margin)
        _paint(image, mask, (size - mask.shape[0]) // 2, first + index * slot, color)
    return image


def neutral_frames(clip: Clip, rng: np.random.Generator) -> np.ndarray:
    """The clip's video with every event drawn as the same `NEUTRAL_VISUAL` (at a random position) on the frames that
    show its class shape: the events' timing stays visible, their classes do not."""
    frames = np.zeros_like(clip.frames)
    for event in clip.events:
        _show(frames, event, clip.fps, NEUTRAL_VISUAL, rng)
    return frames


def _steps(labels: Sequence[str], fps: float) -> list[int]:
    """Frames from each event's onset to the earliest onset of the next (its duration and MIN_GAP)."""
    return [int(np.ceil((EVENT_DURATIONS[label] + MIN_GAP) * fps - 1e-6)) for label in labels[:-1]]


def _slack(labels: Sequence[str], duration: float, fps: float) -> int:
    """Free frames left when `labels` are placed as tightly as `_place` allows in `duration`: negative if they do
    not fit."""
    last_onset = int(np.floor((duration - EVENT_DURATIONS[labels[-1]]) * fps + 1e-6))
    last_onset = min(last_onset, round(duration * fps) - 1)
    return last_onset - 1 - sum(_steps(labels, fps))


def _place(labels: list[str], duration: float, fps: float, rng: np.random.Generator) -> list[Event]:
    """Random onsets on the frame grid, one free frame before the first event and >= MIN_GAP between events."""
    while True:
        steps = _steps(labels, fps)
        slack = _slack(labels, duration, fps)
        if slack >= 0:
            break
        if len(labels) == 1:
            raise ValueError(f"a {duration} s clip is too short for a '{labels[0]}' event.")
        labels = labels[:-1]
    extra = rng.multinomial(slack, np.full(len(labels) + 1, 1.0 / (len(labels) + 1)))
    frame, events = 1 + int(extra[0]), []
    for i, label in enumerate(labels):
        events.append(Event(label, frame / fps, EVENT_DURATIONS[label]))
        if i < len(steps):
            frame += steps[i] + int(extra[i + 1])
    return events


def _place_all(labels: list[str], duration: float, fps: float, rng: np.random.Generator, offset: float = 0.0
               ) -> list[Event]:  # fmt: skip
    """`_place` for labels that must all fit, with `offset` seconds added to every onset."""
    if _slack(labels, duration, fps) < 0:
        raise ValueError(f"events {labels} do not fit in {duration} s.")
    return [replace(event, onset=offset + event.onset) for event in _place(labels, duration, fps, rng)]


def _draw_events(rng: np.random.Generator, duration: float, fps: float, max_events: int) -> list[Event]:
    """The events of one clip (or segment) of `duration`: 1..max_events random classes, placed by `_place`."""
    num_events = int(rng.integers(1, max_events + 1))
    labels = [EVENT_CLASSES[i] for i in rng.integers(0, len(EVENT_CLASSES), num_events)]
    return _place(labels, duration, fps, rng)


def make_clip(
    rng: np.random.Generator,
    duration: float = 2.0,
    sampling_rate: int = 24000,
    fps: float = 10.0,
    frame_size: int = 32,
    max_events: int = 3,
) -> Clip:
    """Synthesizes one clip with 1..max_events events on the video frame grid (fewer if they do not fit). A clip
    longer than `CLIP_SECONDS` must last a whole number of `CLIP_SECONDS` segments; each segment's events are drawn
    independently as those of a `CLIP_SECONDS` clip (1..max_events events, the same placement), so event density and
    spacing match the training clips over the whole duration."""
    if duration <= CLIP_SECONDS:
        events = _draw_events(rng, duration, fps, max_events)
    else:
        segments = round(duration / CLIP_SECONDS)
        if not math.isclose(segments * CLIP_SECONDS, duration, abs_tol=1e-6):
            raise ValueError(f"a clip longer than {CLIP_SECONDS} s must last a multiple of {CLIP_SECONDS} s, got "
                             f"{duration} s.")  # fmt: skip
        events = []
        for segment in range(segments):
            start = segment * CLIP_SECONDS
            events += [replace(e, onset=start + e.onset) for e in _draw_events(rng, CLIP_SECONDS, fps, max_events)]
    return _render(events, rng, duration, sampling_rate, fps, frame_size)


def _render(events: list[Event], rng: np.random.Generator, duration: float, sampling_rate: int, fps: float,
            frame_size: int) -> Clip:  # fmt: skip
    """The clip of `events`: background noise plus each event's sound, its class shapes on the video, its caption."""
    num_samples = round(duration * sampling_rate)
    audio = rng.normal(0.0, 10 ** (BACKGROUND_DB / 20), num_samples)
    frames = np.zeros((round(duration * fps), frame_size, frame_size, 3), dtype=np.uint8)
    for event in events:
        signal = synthesize_event(event.label, rng, sampling_rate)
        start = round(event.onset * sampling_rate)
        audio[start : start + len(signal)] += signal[: num_samples - start]
        _show(frames, event, fps, EVENT_VISUALS[event.label], rng)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    caption = make_caption([event.label for event in events])
    return Clip(audio, sampling_rate, events, caption, frames, fps)


def _distinct_classes(rng: np.random.Generator, count: int) -> list[str]:
    return [EVENT_CLASSES[int(i)] for i in rng.choice(len(EVENT_CLASSES), size=count, replace=False)]


def make_continuation_clip(
    rng: np.random.Generator, sampling_rate: int = 24000, fps: float = 10.0, frame_size: int = 32
) -> tuple[Clip, dict[str, object]]:
    """A `CLIP_SECONDS` clip for audio continuation and the sidecar fields it adds (`prompt_seconds`, `palette`). Its
    events come from a palette of 1 or 2 classes: the prompt [0, PROMPT_SECONDS) holds at least one event of every
    palette class (sometimes one more), the continuation [PROMPT_SECONDS, CLIP_SECONDS) 1 or 2 events of palette
    classes. No event crosses PROMPT_SECONDS (`_place` keeps one free frame before the first event of each part)."""
    while True:  # a palette whose classes fit in the prompt together (a hum fits only alone)
        palette = _distinct_classes(rng, int(rng.integers(1, 3)))
        prompt = [palette[int(i)] for i in rng.permutation(len(palette))]
        if _slack(prompt, PROMPT_SECONDS, fps) >= 0:
            break
    longer = list(prompt)
    longer.insert(int(rng.integers(0, len(prompt) + 1)), palette[int(rng.integers(0, len(palette)))])
    if rng.random() < 0.5 and _slack(longer, PROMPT_SECONDS, fps) >= 0:
        prompt = longer
    continuation = [palette[int(i)] for i in rng.integers(0, len(palette), int(rng.integers(1, 3)))]
    events = _place_all(prompt, PROMPT_SECONDS, fps, rng)
    # `_place` drops the second continuation event when the two do not fit (two hums): 1 or 2 events either way.
    events += [replace(e, onset=PROMPT_SECONDS + e.onset)
               for e in _place(continuation, CLIP_SECONDS - PROMPT_SECONDS, fps, rng)]  # fmt: skip
    clip = _render(events, rng, CLIP_SECONDS, sampling_rate, fps, frame_size)
    return clip, {"prompt_seconds": PROMPT_SECONDS, "palette": palette}


def make_multicondition_clip(
    rng: np.random.Generator, sampling_rate: int = 24000, fps: float = 10.0, frame_size: int = 32
) -> tuple[Clip, dict[str, object]]:
    """A `CLIP_SECONDS` clip for video-text-audio-to-audio and the sidecar fields it adds (`prompt_seconds`,
    `prompt_class`, `text_class`, `text`). The prompt [0, PROMPT_SECONDS) holds one or two events of a class P; the
    continuation exactly two events, one of P and one of a class T != P, in random order. The clip's `frames` are
    class-neutral (`neutral_frames`): the video gives the onsets, the audio prompt the class P and the text
    (`"a {T}"`) the class T. Every draw fits (the longest pair, a hum and a chirp, leaves a free frame)."""
    prompt_class, text_class = _distinct_classes(rng, 2)
    prompt = [prompt_class] * (2 if rng.random() < 0.5 and _slack([prompt_class] * 2, PROMPT_SECONDS, fps) >= 0 else 1)
    continuation = [prompt_class, text_class] if rng.random() < 0.5 else [text_class, prompt_class]
    events = _place_all(prompt, PROMPT_SECONDS, fps, rng)
    events += _place_all(continuation, CLIP_SECONDS - PROMPT_SECONDS, fps, rng, offset=PROMPT_SECONDS)
    clip = _render(events, rng, CLIP_SECONDS, sampling_rate, fps, frame_size)
    clip = replace(clip, frames=neutral_frames(clip, rng))
    text = f"a {text_class}"
    return clip, {"prompt_seconds": PROMPT_SECONDS, "prompt_class": prompt_class, "text_class": text_class,
                  "text": text}  # fmt: skip


def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "big"), index])


def _clip_id(seed: int, split: str, index: int) -> str:
    """An 11-character YouTube-like id: 'sf' + 9 hex digits derived from (seed, split, index); the audio-prompt
    layouts pass `{split}/{layout}` as `split`, so their clips have ids and random streams of their own."""
    return "sf" + hashlib.sha256(f"synthfoley/{seed}/{split}/{index}".encode()).hexdigest()[:9]


def _layout_files(layout: str, split: str, clip_id: str) -> dict[str, str]:
    """A clip's files in `layout`, relative to the layout's folder: 'file', and 'image' in the 'vggsound' layout."""
    layout = _LAYOUT_STYLES[layout]
    if layout == "audiocaps":
        return {"file": f"audio/{split}/{clip_id}.wav"}
    files = {"file": f"video/{clip_id}_{0:06d}.mp4"}
    if layout == "vggsound":
        files["image"] = f"image/{clip_id}.png"
    return files


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Atomically writes uint8 RGB pixels (H, W, 3) as a PNG file."""
    with atomic_path(path, suffix=".png") as tmp_path:
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(tmp_path, format="PNG")


def _write_clip(
    index: int, folders: dict[str, Path], split: str, seed: int, duration: float
) -> tuple[str, dict[str, object]]:
    """Synthesizes clip `index` of `split` once and writes its files into every layout of `folders` (layout ->
    folder); returns its id and the sidecar fields that all layouts share."""
    rng = _clip_rng(seed, split, index)
    clip = make_clip(rng, duration=duration)
    clip_id = _clip_id(seed, split, index)
    for layout, folder in folders.items():
        files = {name: folder / file for name, file in _layout_files(layout, split, clip_id).items()}
        if layout == "audiocaps":
            write_wav(files["file"], clip.audio, clip.sampling_rate)
            continue
        # The neutral video's shapes are placed by the clip's random stream, which goes on after `make_clip`.
        frames = clip.frames if layout == "vggsound" else neutral_frames(clip, rng)
        write_mp4(files["file"], frames, clip.fps, clip.audio, clip.sampling_rate)
        if "image" in files:
            # As wide as the frames, or wider for the many events of a long clip (4 px per glyph).
            size = max(clip.frames.shape[1], 4 * len(clip.events))
            write_png(files["image"], render_glyphs([event.label for event in clip.events], size))
    return clip_id, {"caption": clip.caption, "events": [asdict(event) for event in clip.events]}


_PROMPT_CLIP_MAKERS = {"continuation": make_continuation_clip, "multicondition": make_multicondition_clip}


def _write_prompt_clip(index: int, layout: str, folder: Path, split: str, seed: int) -> tuple[str, dict[str, object]]:
    """Synthesizes clip `index` of an audio-prompt layout ('continuation': a WAV, 'multicondition': an MP4 of
    class-neutral shapes with its audio) and writes it; returns its id and sidecar fields."""
    name = f"{split}/{layout}"
    clip, fields = _PROMPT_CLIP_MAKERS[layout](_clip_rng(seed, name, index))
    clip_id = _clip_id(seed, name, index)
    files = {key: folder / file for key, file in _layout_files(layout, split, clip_id).items()}
    if _LAYOUT_STYLES[layout] == "audiocaps":
        write_wav(files["file"], clip.audio, clip.sampling_rate)
    else:
        write_mp4(files["file"], clip.frames, clip.fps, clip.audio, clip.sampling_rate)
    return clip_id, {"caption": clip.caption, "events": [asdict(event) for event in clip.events], **fields}


def _write_sidecar(path: Path, entries: dict[str, dict], merge: bool) -> None:
    if merge and path.is_file():
        entries = {**json.loads(path.read_text(encoding="utf-8")), **entries}
    write_text(path, json.dumps(entries, indent=1) + "\n")


def _write_index(layout: str, folder: Path, split: str, clips: list[tuple[str, dict[str, object]]]) -> Path:
    """Writes the CSV and the `synthfoley_{split}.json` sidecar of `clips` in `layout`; returns the CSV path. The
    AudioCaps layout has a CSV per split; a VGGSound layout has one `vggsound.csv` whose rows of other ids stay.
    The CSV describes a clip by its `text` (the multi-condition clips' text condition), else its caption."""
    entries = {clip_id: {**_layout_files(layout, split, clip_id), **fields} for clip_id, fields in clips}
    if _LAYOUT_STYLES[layout] == "audiocaps":
        csv_path = folder / f"{split}.csv"
        rows = [["audiocap_id", "youtube_id", "start_time", "caption"]]
        rows += [[int(clip_id[2:], 16), clip_id, 0, fields.get("text", fields["caption"])] for clip_id, fields in clips]
    else:
        csv_path = folder / "vggsound.csv"
        rows = [[clip_id, 0, fields.get("text", fields["caption"]), split] for clip_id, fields in clips]
        if csv_path.is_file():
            with open(csv_path, newline="", encoding="utf-8") as f:
                rows = [row for row in csv.reader(f) if row and row[0] not in entries] + rows
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    write_text(csv_path, buffer.getvalue())
    _write_sidecar(folder / f"synthfoley_{split}.json", entries, merge=_LAYOUT_STYLES[layout] != "audiocaps")
    return csv_path


@contextmanager
def _clip_mapper(workers: int) -> Iterator[Callable]:
    """`map`, or with `workers` > 1 the ordered `map` of a pool of that many processes."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}.")
    if workers == 1:
        yield map
        return
    with ProcessPoolExecutor(workers) as pool:
        yield partial(pool.map, chunksize=8)


def _write_layouts(
    folders: dict[str, Path], counts: dict[str, dict[str, int]], seed: int, duration: float = 2.0, workers: int = 1
) -> dict[str, dict[str, Path]]:
    """Writes the clips of each split of `counts` (split -> layout -> number of clips): clip i, synthesized once, goes
    to every layout of `LAYOUTS` whose count exceeds i (layout -> folder in `folders`); each layout of
    `PROMPT_LAYOUTS` gets clips of its own. The CSVs and sidecars are written in clip order afterwards, so the output
    does not depend on `workers`. Returns split -> layout -> CSV path."""
    csv_paths = {}
    with _clip_mapper(workers) as map_clips:
        for split, all_counts in counts.items():
            csv_paths[split] = {}
            for layout in PROMPT_LAYOUTS:
                if layout in all_counts:
                    write = partial(_write_prompt_clip, layout=layout, folder=folders[layout], split=split, seed=seed)
                    clips = list(map_clips(write, range(all_counts[layout])))
                    csv_paths[split][layout] = _write_index(layout, folders[layout], split, clips)
            layout_counts = {layout: count for layout, count in all_counts.items() if layout not in PROMPT_LAYOUTS}
            num_clips = max(layout_counts.values(), default=0)
            targets = [
                {layout: folders[layout] for layout, count in layout_counts.items() if index < count}
                for index in range(num_clips)
            ]
            write = partial(_write_clip, split=split, seed=seed, duration=duration)
            clips = list(map_clips(write, range(num_clips), targets))
            csv_paths[split].update({
                layout: _write_index(layout, folders[layout], split, clips[:count])
                for layout, count in layout_counts.items()
            })  # fmt: skip
    return csv_paths


def _write_layout(layout: str, root: str | os.PathLike, num_clips: int, split: str, seed: int, duration: float) -> Path:
    return _write_layouts({layout: Path(root)}, {split: {layout: num_clips}}, seed, duration)[split][layout]


def write_audiocaps(root: str | os.PathLike, num_clips: int, split: str, seed: int, duration: float = 2.0) -> Path:
    """Writes `root/{split}.csv` (audiocap_id,youtube_id,start_time,caption), `root/audio/{split}/{id}.wav`
    (24 kHz mono 16-bit) and the `root/synthfoley_{split}.json` sidecar; returns the CSV path."""
    return _write_layout("audiocaps", root, num_clips, split, seed, duration)


def write_vggsound(root: str | os.PathLike, num_clips: int, split: str, seed: int, duration: float = 2.0) -> Path:
    """Writes `root/video/{id}_000000.mp4` files, `root/image/{id}.png` pictures of their events (`render_glyphs`),
    rows `youtube_id,start_seconds,label,split` (no header) into `root/vggsound.csv` (kept rows of other ids, replaced
    rows of the same ids) and the `root/synthfoley_{split}.json` sidecar; returns the CSV path. `split` should be
    'train' or 'test' as in VGGSound."""
    return _write_layout("vggsound", root, num_clips, split, seed, duration)


def write_synthfoley(
    root: str | os.PathLike, train: int = 200, test: int = 50, seed: int = 0, video_train: int | None = None,
    neutral_train: int | None = None, workers: int = 1, duration: float = CLIP_SECONDS, prompt_layouts: bool = True,
) -> dict[str, Path]:  # fmt: skip
    """Writes a train and a held-out test split under `root/audiocaps` (AudioCaps layout), `root/vggsound` (VGGSound
    layout: videos of the class shapes and a picture of the events per clip) and `root/neutral` (VGGSound layout:
    videos of class-neutral shapes, no pictures); returns layout -> folder. The split name is part of every clip's
    random stream, so no clip occurs in both splits. The layouts hold the same clips: all test clips; all `train`
    training clips as audio, the first `video_train` (default: all) as class videos and the first `neutral_train`
    (default: `video_train`) as neutral videos. Each clip is synthesized once; `workers` processes write them.

    `duration` sets those clips' length: `CLIP_SECONDS` (the training clips) or a multiple of it (long-form test
    clips, runs of independent `CLIP_SECONDS` segments, see `make_clip`; videos at the same 10 fps throughout). With
    `prompt_layouts`, `root/continuation` (AudioCaps layout, `make_continuation_clip`: `train` and `test` clips) and
    `root/multicondition` (VGGSound layout without pictures, `make_multicondition_clip`: `neutral_train` and `test`
    clips) are written too: `CLIP_SECONDS` clips of their own, whose sidecars add `prompt_seconds`."""
    root = Path(root)
    video_train = train if video_train is None else video_train
    neutral_train = video_train if neutral_train is None else neutral_train
    for name, count in (("video_train", video_train), ("neutral_train", neutral_train)):
        if not 0 <= count <= train:
            raise ValueError(f"{name} must be between 0 and train ({train}), got {count}.")
    layouts = LAYOUTS + (PROMPT_LAYOUTS if prompt_layouts else ())
    folders = {layout: root / layout for layout in layouts}
    counts = {"train": {"audiocaps": train, "vggsound": video_train, "neutral": neutral_train}}
    if prompt_layouts:
        counts["train"].update(continuation=train, multicondition=neutral_train)
    counts["test"] = dict.fromkeys(layouts, test)
    _write_layouts(folders, counts, seed, duration=duration, workers=workers)
    return folders
