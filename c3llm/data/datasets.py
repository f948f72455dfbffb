"""Training data for C3LLM: loaders for AudioCaps, Clotho, VGGSound, VAS and audio/video folders, and cached
`datasets.map` preprocessing (EnCodec target codes, CLAP inputs, frozen video-encoder features).

Every loader returns `(dataset, report)`: a `datasets.Dataset` backed by Arrow files in the datasets cache (or, with
`streaming=True`, a lazy `datasets.IterableDataset`) and a `LoadReport` listing the files that were skipped because
they are missing or unreadable. Each example has the columns of `EXAMPLE_FEATURES`. The `add_*` functions return
`(dataset, report)` too: examples whose file fails during preprocessing are reported and filtered out (a
`RuntimeError` is raised only when every example fails, which points to a setup problem rather than bad files).
Their results are cached by `datasets` under an explicit fingerprint (dataset fingerprint, code version, configs and
encoder weights), so a second run over the same files reuses the cache.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import av
import multiprocess
import numpy as np
import soundfile as sf
import torch
from datasets import Dataset, Features, IterableDataset, List, Value
from PIL import Image

from modeling_c3llm.streaming_c3llm import window_grid
from processing_c3llm.media_c3llm import MediaError, load_audio, resample, write_text

logger = logging.getLogger(__name__)

# Bump when the loaders or the mapped functions change what they produce, so old caches are not reused.
_CACHE_VERSION = "2"
_ERROR_COLUMN = "_c3llm_error"

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")

_STRING = Value("string")
EXAMPLE_FEATURES = Features(
    {"id": _STRING, "task": _STRING, "audio_path": _STRING, "video_path": _STRING, "image_path": _STRING,
     "caption": _STRING, "captions": List(_STRING), "label": _STRING}
)  # fmt: skip
# Loaders given `prompt_seconds` add this column: the head of each clip that is an audio prompt (audio-continuation and
# video-text-audio-to-audio), split off its codes by `add_audio_codes`.
PROMPT_FEATURES = Features({**EXAMPLE_FEATURES, "prompt_seconds": Value("float64")})
Loaded = tuple[Dataset | IterableDataset, "LoadReport"]


# ---- reports -----------------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What a loader or a preprocessing step kept and skipped: `skipped` holds `(path, reason)` pairs and
    `skipped_ids` the matching example ids. A streaming loader fills its report while the dataset is iterated."""

    name: str = ""
    total: int = 0
    kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)
    _seen: set = field(default_factory=set, repr=False, compare=False)

    def add(self, example_id: str, path: str | None = None, reason: str | None = None) -> None:
        """Counts one example (once per id); a `reason` marks it skipped."""
        if example_id in self._seen:
            return
        self._seen.add(example_id)
        self.total += 1
        if reason is None:
            self.kept += 1
        else:
            self.skipped.append((str(path), reason))
            self.skipped_ids.append(example_id)

    def summary(self, max_listed: int = 20) -> str:
        """One line of counts, then one line per skipped file (at most `max_listed`)."""
        head = f"{self.name or 'dataset'}: kept {self.kept} of {self.total} examples, skipped {len(self.skipped)}"
        lines = [head] + [f"  skipped {path}: {reason}" for path, reason in self.skipped[:max_listed]]
        if len(self.skipped) > max_listed:
            lines.append(f"  ... and {len(self.skipped) - max_listed} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        skipped = [{"id": i, "path": p, "reason": r} for i, (p, r) in zip(self.skipped_ids, self.skipped)]
        return {"name": self.name, "total": self.total, "kept": self.kept, "skipped": skipped}

    def to_json(self, path: str | os.PathLike) -> None:
        """Writes the report as JSON atomically (temporary file in the same folder, then renamed)."""
        write_text(path, json.dumps(self.to_dict(), indent=2))


# ---- media -------------------------------------------------------------------------------------------------------
def load_video_audio(path: str | os.PathLike, sampling_rate: int) -> np.ndarray:
    """Decodes the first audio stream of a video file (PyAV) into float32 mono at `sampling_rate`.

    Channels are averaged and the rate is converted with polyphase resampling, as `media_c3llm.load_audio` does.
    Raises `MediaError` for missing or undecodable files and for files without an audio stream.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"Video file '{path}' does not exist or is not a file. Check the path.")
    try:
        container = av.open(path)
    except Exception as e:
        raise MediaError(f"Video file '{path}' could not be opened ({e}). It may be corrupt; re-encode it.") from e
    chunks, rate = [], None
    with container:
        if not container.streams.audio:
            raise MediaError(f"Video file '{path}' has no audio stream; it cannot serve as an audio source or target.")
        resampler = None
        try:
            for frame in container.decode(container.streams.audio[0]):
                if resampler is None:  # planar float, keeping the first frame's layout and rate
                    rate = frame.sample_rate
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=rate)
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            if resampler is not None:
                chunks += [f.to_ndarray() for f in resampler.resample(None)]
        except Exception as e:
            raise MediaError(f"The audio of '{path}' could not be decoded ({e}). It may be corrupt.") from e
    if not chunks or sum(c.shape[-1] for c in chunks) == 0:
        raise MediaError(f"The audio stream of '{path}' decoded to zero samples.")
    waveform = np.concatenate(chunks, axis=-1).astype(np.float64).mean(axis=0)
    if not np.isfinite(waveform).all():
        raise MediaError(f"The audio of '{path}' contains NaN or infinite values.")
    waveform = resample(waveform, rate, sampling_rate)
    return np.ascontiguousarray(waveform, dtype=np.float32)


def _probe_file(path: str) -> str | None:
    return "file not found" if not os.path.isfile(path) else "empty file" if os.path.getsize(path) == 0 else None


def probe_audio(path: str) -> str | None:
    """Cheap load-time check of an audio file: the reason it is unusable, or None."""
    if reason := _probe_file(path):
        return reason
    try:
        info = sf.info(path)
    except Exception as e:
        return f"unreadable audio ({type(e).__name__}: {e})"
    return None if info.frames > 0 else "no audio samples"


def probe_video(path: str, require_audio: bool = False) -> str | None:
    """Cheap load-time check of a video file (opens it and looks for streams): the reason it is unusable, or None."""
    if reason := _probe_file(path):
        return reason
    try:
        with av.open(path) as container:
            has_video, has_audio = bool(container.streams.video), bool(container.streams.audio)
    except Exception as e:
        return f"unreadable video ({type(e).__name__}: {e})"
    if not has_video:
        return "no video stream"
    if require_audio and not has_audio:
        return "no audio stream"
    return None


def probe_image(path: str) -> str | None:
    """Cheap load-time check of an image file (reads its header and checks its structure): the reason it is
    unusable, or None."""
    if reason := _probe_file(path):
        return reason
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as e:
        return f"unreadable image ({type(e).__name__}: {e})"
    return None


_PROBES = {"audio": probe_audio, "video": probe_video, "video+audio": partial(probe_video, require_audio=True),
           "image": probe_image}  # fmt: skip


# ---- loaders -----------------------------------------------------------------------------------------------------
def _example(
    id: str, task: str, audio_path: str | None = None, video_path: str | None = None, image_path: str | None = None,
    captions: Sequence[str] = (), label: str | None = None, require_audio: bool = False,
    prompt_seconds: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    captions = [c.strip() for c in captions if c and c.strip()]
    checks = [(audio_path, "audio")] if audio_path else []
    checks += [(video_path, "video+audio" if require_audio else "video")] if video_path else []
    checks += [(image_path, "image")] if image_path else []
    caption = captions[0] if captions else None
    example = {"id": id, "task": task, "audio_path": audio_path, "video_path": video_path, "image_path": image_path,
               "caption": caption, "captions": captions, "label": label, "_checks": checks}  # fmt: skip
    if prompt_seconds is not None:
        example["prompt_seconds"] = float(prompt_seconds)
    return example


def _check(example: dict[str, Any], report: LoadReport) -> bool:
    for path, kind in example["_checks"]:
        reason = _PROBES[kind](path)
        if reason is not None:
            report.add(example["id"], path, reason)
            return False
    report.add(example["id"])
    return True


def _features(examples: list[dict[str, Any]]) -> Features:
    return PROMPT_FEATURES if any("prompt_seconds" in example for example in examples) else EXAMPLE_FEATURES


def _public(example: dict[str, Any]) -> dict[str, Any]:
    return {name: example[name] for name in EXAMPLE_FEATURES if name in example} | (
        {"prompt_seconds": example["prompt_seconds"]} if "prompt_seconds" in example else {}
    )


def _yield_examples(examples: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from examples


def _stream_examples(examples: list[dict[str, Any]], report: LoadReport) -> Iterator[dict[str, Any]]:
    for example in examples:
        if _check(example, report):
            yield _public(example)


def _hash(value: Any) -> str:
    def default(obj: Any) -> Any:
        if isinstance(obj, (np.ndarray, torch.Tensor)):
            array = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
            return {"sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()}
        return str(obj)

    return hashlib.sha256(json.dumps(value, sort_keys=True, default=default).encode()).hexdigest()[:32]


def _build(examples: list[dict[str, Any]], name: str, streaming: bool, cache_dir: str | None) -> Loaded:
    report = LoadReport(name=name)
    if streaming:  # files are probed lazily, while iterating
        gen_kwargs = {"examples": examples, "report": report}
        stream = IterableDataset.from_generator(_stream_examples, features=_features(examples), gen_kwargs=gen_kwargs)
        return stream, report
    kept = [example for example in examples if _check(example, report)]
    # The fingerprint covers the examples and each file's size and mtime, so that `map` caches built on this dataset
    # are reused across runs and invalidated when a file changes.
    stats = [(path, (st := os.stat(path)).st_size, st.st_mtime_ns) for e in kept for path, _ in e["_checks"]]
    kept = [_public(example) for example in kept]
    fingerprint = _hash([_CACHE_VERSION, name, kept, stats])
    dataset = Dataset.from_generator(
        _yield_examples, features=_features(kept), gen_kwargs={"examples": kept}, cache_dir=cache_dir,
        fingerprint=fingerprint,
    )  # fmt: skip
    if report.skipped:
        logger.warning(report.summary())
    return dataset, report


def _read_csv(path: str, header: bool = True) -> list[dict[str, str]] | list[list[str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Metadata file '{path}' not found; check `root`, `split` and the file template.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        if header:
            reader = csv.DictReader(f)
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
        return [[cell.strip() for cell in row] for row in csv.reader(f) if row and any(cell.strip() for cell in row)]


def _require(rows: list[dict[str, str]], columns: Sequence[str], path: str) -> None:
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"'{path}' lacks the column(s) {missing}; found {sorted(rows[0])}.")


def load_audiocaps(
    root: str | os.PathLike, split: str, csv_template: str = "{split}.csv",
    audio_template: str | Sequence[str] = ("audio/{split}/{youtube_id}.wav", "audio/{youtube_id}.wav"),
    task: str = "text-to-audio", streaming: bool = False, cache_dir: str | None = None,
    prompt_seconds: float | None = None,
) -> Loaded:  # fmt: skip
    """AudioCaps: `{split}.csv` (`audiocap_id,youtube_id,start_time,caption`); rows of one clip become one example
    whose `captions` lists all of them. The first existing file among the `audio_template`s is used. With
    `prompt_seconds`, every example gets that `prompt_seconds` column (the clip's head is an audio prompt)."""
    root = os.path.abspath(root)
    csv_path = os.path.join(root, csv_template.format(split=split))
    rows = _read_csv(csv_path)
    _require(rows, ["youtube_id", "caption"], csv_path)
    templates = [audio_template] if isinstance(audio_template, str) else list(audio_template)
    grouped: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        grouped.setdefault(row["youtube_id"], []).append(row)
    examples = []
    for youtube_id, group in grouped.items():
        fields = {**group[0], "split": split}
        candidates = [os.path.join(root, t.format(**fields)) for t in templates]
        path = next((c for c in candidates if os.path.isfile(c)), candidates[0])
        captions = [row["caption"] for row in group]
        examples.append(_example(youtube_id, task, audio_path=path, captions=captions, prompt_seconds=prompt_seconds))
    return _build(examples, f"audiocaps/{split}", streaming, cache_dir)


def load_clotho(
    root: str | os.PathLike, split: str, csv_template: str = "clotho_captions_{split}.csv",
    audio_template: str = "{split}/{file_name}", task: str = "audio-to-text", streaming: bool = False,
    cache_dir: str | None = None,
) -> Loaded:  # fmt: skip
    """Clotho: `clotho_captions_{split}.csv` (`file_name,caption_1..caption_5`), audio in `{split}/{file_name}`."""
    root = os.path.abspath(root)
    csv_path = os.path.join(root, csv_template.format(split=split))
    rows = _read_csv(csv_path)
    _require(rows, ["file_name"], csv_path)
    examples = []
    for row in rows:
        captions = [row[key] for key in sorted(row, key=_caption_index) if _caption_index(key) >= 0]
        path = os.path.join(root, audio_template.format(split=split, file_name=row["file_name"]))
        examples.append(_example(row["file_name"], task, audio_path=path, captions=captions))
    return _build(examples, f"clotho/{split}", streaming, cache_dir)


def _caption_index(key: str) -> int:
    suffix = key[len("caption_") :]
    return int(suffix) if key.startswith("caption_") and suffix.isdigit() else -1


def load_vggsound(
    root: str | os.PathLike, split: str, csv_template: str = "vggsound.csv",
    video_template: str = "video/{youtube_id}_{start_seconds:06d}.mp4", task: str = "video-to-audio",
    require_audio: bool = True, image_template: str | None = None, streaming: bool = False,
    cache_dir: str | None = None, prompt_seconds: float | None = None,
) -> Loaded:  # fmt: skip
    """VGGSound: header-less `vggsound.csv` rows `youtube_id,start_seconds,label,split`; the mp4 carries the audio
    (with `require_audio`, clips without an audio stream are skipped). With `image_template` (e.g.
    `"image/{youtube_id}.png"`, the same fields as `video_template`) each example also gets that `image_path`, and
    clips whose image is missing or unreadable are skipped. With `prompt_seconds`, every example gets that
    `prompt_seconds` column (the clip's head is an audio prompt)."""
    root = os.path.abspath(root)
    csv_path = os.path.join(root, csv_template.format(split=split))
    examples = []
    for line, row in enumerate(_read_csv(csv_path, header=False), 1):
        if len(row) < 4:
            raise ValueError(f"'{csv_path}' line {line}: expected youtube_id,start_seconds,label,split, got {row}.")
        youtube_id, start, label, row_split = row[0], int(float(row[1])), row[2], row[3]
        if row_split != split:
            continue
        fields = {"youtube_id": youtube_id, "start_seconds": start, "label": label, "split": split}
        path = os.path.join(root, video_template.format(**fields))
        image_path = os.path.join(root, image_template.format(**fields)) if image_template else None
        example_id = f"{youtube_id}_{start:06d}"
        examples.append(
            _example(example_id, task, video_path=path, image_path=image_path, label=label, require_audio=require_audio,
                     prompt_seconds=prompt_seconds)
        )
    return _build(examples, f"vggsound/{split}", streaming, cache_dir)


def load_vas(
    root: str | os.PathLike, split: str, list_template: str = "{split}.txt",
    video_template: str = "{label}/videos/{clip}.mp4", task: str = "video-to-audio", require_audio: bool = True,
    streaming: bool = False, cache_dir: str | None = None,
) -> Loaded:  # fmt: skip
    """VAS: `{split}.txt` lists `class/clip` lines; videos in `{class}/videos/{clip}.mp4`; the label is the class."""
    root = os.path.abspath(root)
    list_path = os.path.join(root, list_template.format(split=split))
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"Split list '{list_path}' not found; check `root`, `split` and `list_template`.")
    examples = []
    with open(list_path, encoding="utf-8") as f:
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            label, _, clip = entry.partition("/")
            clip = clip[:-4] if clip.endswith(".mp4") else clip
            if not clip:
                raise ValueError(f"'{list_path}': expected lines 'class/clip', got {entry!r}.")
            path = os.path.join(root, video_template.format(label=label, clip=clip, split=split))
            example = _example(f"{label}/{clip}", task, video_path=path, label=label, require_audio=require_audio)
            examples.append(example)
    return _build(examples, f"vas/{split}", streaming, cache_dir)


def load_folder(
    root: str | os.PathLike, split: str | None = None, metadata_template: str = "metadata.csv",
    task: str | None = None, streaming: bool = False, cache_dir: str | None = None,
) -> Loaded:  # fmt: skip
    """audiofolder/videofolder layout: `metadata.csv` (in `root`, or `root/{split}` when `split` is given) with a
    `file_name` column relative to it and optional `caption`/`text` and `label` columns; rows naming the same file
    are grouped. The default task is text-to-audio for captioned audio, audio-to-text for other audio and
    video-to-audio for videos."""
    folder = os.path.abspath(os.path.join(root, split) if split else root)
    csv_path = os.path.join(folder, metadata_template)
    rows = _read_csv(csv_path)
    _require(rows, ["file_name"], csv_path)
    grouped: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        grouped.setdefault(row["file_name"], []).append(row)
    examples = []
    for file_name, group in grouped.items():
        path = os.path.join(folder, file_name)
        captions = [row.get("caption") or row.get("text") or "" for row in group]
        label = next((row["label"] for row in group if row.get("label")), None)
        is_video = file_name.lower().endswith(VIDEO_EXTENSIONS)
        if not is_video and not file_name.lower().endswith(AUDIO_EXTENSIONS):
            raise ValueError(f"'{csv_path}': cannot tell whether {file_name!r} is audio or video from its extension.")
        has_caption = any(c.strip() for c in captions)
        example_task = task or ("video-to-audio" if is_video else "text-to-audio" if has_caption else "audio-to-text")
        paths = {"video_path": path} if is_video else {"audio_path": path}
        examples.append(_example(file_name, example_task, captions=captions, label=label, **paths))
    return _build(examples, f"folder/{split}" if split else "folder", streaming, cache_dir)


# ---- preprocessing -----------------------------------------------------------------------------------------------
def _load_source_audio(audio_path: str | None, video_path: str | None, rate: int) -> np.ndarray:
    if audio_path:
        return load_audio(audio_path, rate)
    if video_path:
        return load_video_audio(video_path, rate)
    raise MediaError("The example has neither audio_path nor video_path.")


class _Shared:
    """Hands a model or processor to `map` workers without pickling it.

    Modules with weight-norm parametrizations (EnCodec) cannot be pickled, and pickling a large model per worker is
    slow. Forked workers inherit `_REGISTRY`, so the handle pickles as a key into it. Under another start method
    ('spawn', 'forkserver') a module is rebuilt in the worker from its class, config and state dict.
    """

    _REGISTRY: dict[int, Any] = {}

    def __init__(self, obj: Any):
        self.obj = obj
        self.key = id(obj)

    def __reduce__(self):
        method = multiprocess.get_start_method(allow_none=True) or multiprocess.get_all_start_methods()[0]
        if method == "fork" and self._REGISTRY.get(self.key) is self.obj:
            return _shared_lookup, (self.key,)
        if isinstance(self.obj, torch.nn.Module) and hasattr(self.obj, "config"):
            return _rebuild_module, (type(self.obj), self.obj.config, self.obj.state_dict())
        return _identity, (self.obj,)


def _worker_threads() -> None:
    # One intra-op thread per worker: `num_proc` is the parallelism, and GNU OpenMP's pool, inherited half-alive from
    # a parent that already ran torch ops, deadlocks a forked child's first multi-threaded op.
    torch.set_num_threads(1)


def _shared_lookup(key: int) -> Any:
    _worker_threads()
    return _Shared._REGISTRY[key]


def _rebuild_module(cls: type, config: Any, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    _worker_threads()
    module = cls(config)
    module.load_state_dict(state_dict)
    if hasattr(module, "freeze_encoders"):
        module.freeze_encoders()
    return module.eval()


def _identity(obj: Any) -> Any:
    return obj


def _resolve(value: Any) -> Any:
    return value.obj if isinstance(value, _Shared) else value


@contextmanager
def _shared(**objects: Any) -> Iterator[dict[str, Any]]:
    handles = {name: _Shared(obj) for name, obj in objects.items()}
    for handle in handles.values():
        _Shared._REGISTRY[handle.key] = handle.obj
    try:
        yield handles
    finally:
        for handle in handles.values():
            _Shared._REGISTRY.pop(handle.key, None)


def _map_examples(batch: dict[str, list], step: Any, columns: Sequence[str], **kwargs: Any) -> dict[str, list]:
    """Runs `step` on each example of a batch; a failure (a bad file) sets its columns to None and records why."""
    kwargs = {name: _resolve(value) for name, value in kwargs.items()}
    out: dict[str, list] = {name: [] for name in (*columns, _ERROR_COLUMN)}
    for i in range(len(batch["id"])):
        try:
            values, error = step({name: value[i] for name, value in batch.items()}, **kwargs), None
        except Exception as e:  # one bad file must not stop the run: it is reported and filtered out
            values, error = dict.fromkeys(columns), f"{type(e).__name__}: {e}"
        for name in columns:
            out[name].append(values[name])
        out[_ERROR_COLUMN].append(error)
    return out


def prompt_frames(prompt_seconds: float, frame_rate: float) -> int:
    """Codec frames of an audio prompt of `prompt_seconds`: `round(prompt_seconds * frame_rate)`."""
    return round(prompt_seconds * frame_rate)


def _audio_codes(example: dict, model: Any, processor: Any, max_samples: int | None, column: str,
                 split_prompt: bool = False) -> dict:  # fmt: skip
    rate = processor.codec_feature_extractor.sampling_rate
    waveform = _load_source_audio(example["audio_path"], example["video_path"], rate)[:max_samples]
    # One clip per call: the codes then never depend on which clips share a batch (or a worker).
    inputs = processor.prepare_audio_target([waveform], sampling_rate=rate)
    weight = next(model.codec.parameters())
    padding_mask = inputs.get("padding_mask")
    codes = model.encode_audio(
        inputs["input_values"].to(weight.device, weight.dtype),
        None if padding_mask is None else padding_mask.to(weight.device),
    )
    frames = math.ceil(len(waveform) / model.config.hop_length)
    codes = codes[0, :, :frames].cpu().numpy().astype(np.int16)
    if not split_prompt:
        return {column: codes}
    if example.get("prompt_seconds") is None:
        return {column: codes, "audio_prompt_codes": None}
    head = prompt_frames(example["prompt_seconds"], model.config.frame_rate)
    if not 0 < head < codes.shape[1]:
        raise ValueError(f"a {example['prompt_seconds']} s prompt leaves no codes of a {frames}-frame clip.")
    return {column: codes[:, head:], "audio_prompt_codes": codes[:, :head]}


def _clap_inputs(example: dict, processor: Any) -> dict:
    rate = processor.feature_extractor.sampling_rate
    waveform = _load_source_audio(example["audio_path"], example["video_path"], rate)
    clap = processor(audio=[waveform], sampling_rate=rate, task="audio-to-text", return_tensors="np")
    return {
        "input_features": np.asarray(clap["input_features"][0], dtype=np.float32),
        "is_longer": [bool(v) for v in np.asarray(clap["is_longer"][0]).reshape(-1)],
    }


def compute_video_features(model: Any, inputs: Any) -> torch.Tensor:
    """Raw per-frame features `(frames, video_feature_size)` of one processed clip, from the model's own
    `encode_video_frames` (the vision encoder's pooled RGB and optical-flow features, concatenated: what
    `get_video_features` projects), over the clip's real frames only."""
    mask = inputs["video_frames_mask"][0].bool()
    weight = next(model.vision_encoder.parameters())
    frames = [inputs[name][0][mask][None].to(weight.device, weight.dtype) for name in ("pixel_values_videos", "flow_values_videos")]
    return model.encode_video_frames(*frames)[0]


def _video_features(example: dict, model: Any, processor: Any, dtype: str) -> dict:
    if not example["video_path"]:
        raise MediaError("The example has no video_path.")
    inputs = processor(videos=[example["video_path"]], task="video-to-audio")
    array = compute_video_features(model, inputs).float().cpu().numpy()
    width = model.config.video_feature_size
    if array.shape[-1] != width or not np.isfinite(array).all():
        raise ValueError(f"video features of shape {array.shape} are not finite or not {width} wide")
    return {"video_features": array.astype(dtype)}


def _is_ok(errors: list[str | None]) -> list[bool]:
    return [error is None for error in errors]


def module_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes): part of the preprocessing cache key."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def _config_dict(obj: Any) -> dict[str, Any]:
    data = obj.to_dict() if hasattr(obj, "to_dict") else dict(vars(obj))
    return {k: v for k, v in data.items() if k not in ("_name_or_path", "transformers_version", "processor_class")}


def _preprocess(
    dataset: Dataset, step: Any, fn_kwargs: dict[str, Any], new_features: dict[str, Any], key: list[Any],
    path_columns: Sequence[str], batch_size: int, num_proc: int | None, load_from_cache_file: bool | None, name: str,
) -> tuple[Dataset, LoadReport]:  # fmt: skip
    if isinstance(dataset, IterableDataset):
        raise TypeError(f"{name} needs a map-style `datasets.Dataset`; load without `streaming=True`.")
    features = dataset.features.copy()
    features.update(new_features)
    features[_ERROR_COLUMN] = Value("string")
    # Hashing a model with dill is slow and not stable, so the cache key is explicit: the dataset's fingerprint, the
    # code version, the relevant configs and the weights of the encoder used.
    fingerprint = _hash([_CACHE_VERSION, name, dataset._fingerprint, key])
    shared = {k: v for k, v in fn_kwargs.items() if k in ("model", "processor")}
    with _shared(**shared) as handles:
        mapped = dataset.map(
            _map_examples, batched=True, batch_size=batch_size, num_proc=num_proc,
            fn_kwargs={**fn_kwargs, **handles, "step": step, "columns": list(new_features)},
            features=features, new_fingerprint=fingerprint, load_from_cache_file=load_from_cache_file, desc=name,
        )  # fmt: skip
    # The report is rebuilt from the (possibly cached) error column, so a cache hit reports the same failures.
    errors = list(mapped[_ERROR_COLUMN])
    failed = [i for i, error in enumerate(errors) if error is not None]
    report = LoadReport(name=name, total=len(errors), kept=len(errors) - len(failed))
    for i, row in zip(failed, mapped.select_columns(["id", *path_columns]).select(failed) if failed else []):
        report.skipped.append((str(next((row[c] for c in path_columns if row[c]), None)), errors[i]))
        report.skipped_ids.append(row["id"])
    if failed:
        logger.warning(report.summary())
        if len(failed) == len(errors):
            raise RuntimeError(f"{name} failed for every example; this points to a setup problem.\n{report.summary()}")
        mapped = mapped.filter(
            _is_ok, input_columns=[_ERROR_COLUMN], batched=True, new_fingerprint=_hash([fingerprint, "filter"]),
            load_from_cache_file=load_from_cache_file, desc=f"{name}: drop failed",
        )  # fmt: skip
    return mapped.remove_columns([_ERROR_COLUMN]), report


def add_audio_codes(
    dataset: Dataset, model: Any, processor: Any, batch_size: int = 8, num_proc: int | None = None,
    max_seconds: float | None = None, column: str = "audio_codes", load_from_cache_file: bool | None = None,
) -> tuple[Dataset, LoadReport]:  # fmt: skip
    """Adds EnCodec codes `(num_codebooks, frames)` of each example's target audio (`audio_path`, else the audio
    track of `video_path`), trimmed to `ceil(samples / hop_length)` frames. `max_seconds` keeps the head of longer
    clips. With `num_proc > 1`, forked workers share the model (see `_Shared`); keep `num_proc=None` for a GPU model.

    A dataset with a `prompt_seconds` column (audio-prompt tasks) also gets `audio_prompt_codes`: a row with a
    `prompt_seconds` keeps the first `round(prompt_seconds * model.config.frame_rate)` frames of its clip's codes
    there (the prompt) and the rest in `column` (the target); the other rows get `None` there."""
    max_samples = None if max_seconds is None else int(max_seconds * processor.codec_feature_extractor.sampling_rate)
    split_prompt = "prompt_seconds" in (dataset.column_names or [])
    key = [
        model.config.codec_config.to_dict(), model.config.num_codebooks, model.config.hop_length,
        module_hash(model.codec), _config_dict(processor.codec_feature_extractor), max_samples, column,
    ] + ([("audio_prompt_codes", model.config.frame_rate)] if split_prompt else [])  # fmt: skip
    codes_feature = List(List(Value("int16")))
    new_features = {column: codes_feature, **({"audio_prompt_codes": codes_feature} if split_prompt else {})}
    return _preprocess(
        dataset, _audio_codes,
        {"model": model, "processor": processor, "max_samples": max_samples, "column": column,
         "split_prompt": split_prompt},
        new_features, key, ("audio_path", "video_path"), batch_size, num_proc,
        load_from_cache_file, "add_audio_codes",
    )  # fmt: skip


def add_clap_inputs(
    dataset: Dataset, processor: Any, batch_size: int = 8, num_proc: int | None = None,
    load_from_cache_file: bool | None = None,
) -> tuple[Dataset, LoadReport]:  # fmt: skip
    """Adds CLAP inputs of each example's source audio (`audio_path`, else the audio of `video_path`): columns
    `input_features` `(1, frames, mel_bins)` and `is_longer` `(1,)`, equal to the processor's for audio-to-text."""
    key = [_config_dict(processor.feature_extractor)]
    return _preprocess(
        dataset, _clap_inputs, {"processor": processor},
        {"input_features": List(List(List(Value("float32")))), "is_longer": List(Value("bool"))}, key,
        ("audio_path", "video_path"), batch_size, num_proc, load_from_cache_file, "add_clap_inputs",
    )  # fmt: skip


def add_video_features(
    dataset: Dataset, model: Any, processor: Any, batch_size: int = 8, num_proc: int | None = None,
    dtype: str = "float32", load_from_cache_file: bool | None = None,
) -> tuple[Dataset, LoadReport]:  # fmt: skip
    """Precomputes the frozen vision encoder's raw per-frame features of `video_path` (frames sampled as the processor
    does) into `video_features` `(frames, video_feature_size)`; pass them to the processor as `video_features`.
    `dtype="float16"` halves the storage. Keep `num_proc=None` for a GPU model."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}.")
    key = [
        model.config.vision_config.to_dict(), module_hash(model.vision_encoder),
        _config_dict(processor.image_processor), processor.video_fps, processor.video_num_frames, dtype,
    ]  # fmt: skip
    return _preprocess(
        dataset, _video_features, {"model": model, "processor": processor, "dtype": dtype},
        {"video_features": List(List(Value(dtype)))}, key, ("video_path",), batch_size, num_proc,
        load_from_cache_file, "add_video_features",
    )  # fmt: skip


def long_form_windows(dataset: Dataset, config: Any, context_seconds: float, seed: int = 0) -> Dataset:
    r"""
    Training examples of long-form generation's later windows (`generate(audio_length_in_s=...)` beyond
    `config.max_audio_seconds`) from video clips longer than that window: per clip, one crop of the window's length that
    starts at a random video frame on the window grid (`window_grid`), with the frames of its span (`video_features`),
    its first frames' codes as the audio prompt (`audio_prompt_codes`: `context_seconds` of them, or up to one grid step
    more, as `generate` rounds them) and the rest as the target (`audio_codes`). Needs whole-clip `audio_codes`
    (`add_audio_codes`) and `video_features` (`add_video_features`).
    """
    rate, fps = config.frame_rate, config.video_fps
    window = round(config.max_audio_seconds * rate)
    grid = window_grid(rate, fps)
    context = max(1, round(context_seconds * rate))
    rng = np.random.default_rng(seed)

    def crop(example: dict) -> dict:
        codes, frames = np.asarray(example["audio_codes"]), np.asarray(example["video_features"])
        starts = range(grid, codes.shape[1] - window + 1, grid)
        if not starts:
            raise ValueError(f"clip {example.get('id')!r} ({codes.shape[1]} frames) is not longer than a window "
                             f"({window} frames).")  # fmt: skip
        start = int(rng.choice(starts))
        known = context + int(rng.integers(grid))
        first = round(start / rate * fps)
        return {"audio_prompt_codes": codes[:, start : start + known], "audio_codes": codes[:, start + known : start + window],
                "video_features": frames[first : first + config.video_num_frames], "task": "video-to-audio"}  # fmt: skip

    features = Features({**dataset.features, "audio_prompt_codes": dataset.features["audio_codes"],
                         "task": Value("string")})  # fmt: skip
    return dataset.map(crop, features=features, desc="long_form_windows")


__all__ = [
    "EXAMPLE_FEATURES", "LoadReport", "add_audio_codes", "add_clap_inputs", "add_video_features",
    "PROMPT_FEATURES", "compute_video_features", "load_audiocaps", "load_clotho", "load_folder", "load_vas", "load_vggsound",
    "load_video_audio", "long_form_windows", "module_hash", "prompt_frames", "probe_audio", "probe_image", "probe_video",
]  # fmt: skip
