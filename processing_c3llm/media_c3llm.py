"""Media helpers for C3LLM: loading and validating audio, video and images, optical flow, WAV and MP4 writing.

This file is remote code (copied into every saved model folder), so importing it needs only numpy and transformers.
The media libraries (PyAV, OpenCV, Pillow, soundfile, SciPy) are imported by `optional_import` when a video, image or
file needs them: `importlib` keeps them out of the import list that transformers checks before loading remote code,
and `DeferredImageProcessor` keeps transformers' image processor (Pillow or torchvision) waiting for an image or video.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from math import gcd
from typing import Any

import numpy as np
from transformers.image_processing_base import ImageProcessingMixin

logger = logging.getLogger(__name__)

_MAX_AUDIO_CHANNELS = 8


class MediaError(ValueError):
    """Raised when an audio, video or image input cannot be read or is invalid."""


class MissingMediaPackageError(ImportError):
    """Raised when an input needs an optional media package (PyAV, OpenCV, Pillow, soundfile, SciPy) that is not
    installed; the message names the pip package and what needed it."""


def optional_import(module: str, pip_name: str, purpose: str) -> Any:
    """Imports `module` (e.g. "cv2") on first use; if it is missing, raises `MissingMediaPackageError` naming the pip
    package (`pip_name`, e.g. "opencv-python-headless") and `purpose` (what needed it)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if isinstance(e, ModuleNotFoundError) and e.name is not None and e.name.split(".")[0] == top:
            problem = f"which is not installed; install it with `pip install {pip_name}`"
        else:  # installed but broken, e.g. a system library is missing
            problem = f"which is installed but failed to import ({e}); reinstall it with `pip install {pip_name}`"
        message = f"{purpose} needs the pip package `{pip_name}` (module `{top}`), {problem}."
        raise MissingMediaPackageError(message) from e


class DeferredImageProcessor(ImageProcessingMixin):
    """Stands in for a saved image processor until an image or video needs it.

    transformers' image processors need Pillow (or torchvision) to be built at all, which text and audio inputs do
    not. Until first use this object holds the saved config: `to_dict` (and so saving the processor) returns it
    unchanged. Calling it, or reading or setting any setting (`crop_size`, ...), loads the real processor with
    `AutoImageProcessor.from_pretrained(source, **load_kwargs)`, the call that loading the processor would have made,
    and delegates to it from then on.
    """

    def __init__(self, config: dict[str, Any], source: str | os.PathLike, load_kwargs: dict[str, Any] | None = None):
        # ImageProcessingMixin.__init__ is not called: the settings live in the config until the real processor loads.
        self._config = copy.deepcopy(config)
        self._source = (source, dict(load_kwargs or {}))
        self._processor = None

    @property
    def is_loaded(self) -> bool:
        return self._processor is not None

    def load(self) -> ImageProcessingMixin:
        """The real image processor, loaded on the first call."""
        if self._processor is None:
            optional_import("PIL.Image", "pillow", "Preparing images and video frames for the vision encoder")
            from transformers import AutoImageProcessor

            source, load_kwargs = self._source
            self._processor = AutoImageProcessor.from_pretrained(source, **load_kwargs)
            if "auto_map" in self._config:  # set when the processor was saved since loading (see `custom_object_save`)
                self._processor.auto_map = copy.deepcopy(self._config["auto_map"])
        return self._processor

    def __call__(self, *args, **kwargs):
        return self.load()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # only reached for names this object lacks
        if name.startswith("_"):  # private and special names (copy, pickle) never load the processor
            raise AttributeError(name)
        if name == "auto_map" and self._processor is None:
            return self._config.get("auto_map")
        return getattr(self.load(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        elif name == "auto_map" and self._processor is None:
            self._config["auto_map"] = value
        else:
            setattr(self.load(), name, value)

    def to_dict(self) -> dict[str, Any]:
        return self._processor.to_dict() if self._processor is not None else copy.deepcopy(self._config)

    def __repr__(self) -> str:
        if self._processor is not None:
            return repr(self._processor)
        return f"{type(self).__name__} (loads on first use) {self.to_json_string()}"


def _to_numpy(data: Any, name: str) -> np.ndarray:
    """Converts numpy arrays, torch tensors (duck-typed) and nested lists to a numeric numpy array."""
    if hasattr(data, "detach"):
        data = data.detach().cpu()
        try:
            data = data.numpy()
        except TypeError:  # e.g. bfloat16 has no numpy equivalent
            data = data.float().numpy()
    try:
        array = np.asarray(data)
    except (TypeError, ValueError) as e:
        raise MediaError(f"{name}: could not convert input of type {type(data).__name__} to an array ({e}).") from e
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise MediaError(f"{name}: expected numeric data, got dtype {array.dtype}. Pass real-valued numbers.")
    return array


def _check_finite(array: np.ndarray, what: str) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise MediaError(f"{what} contains NaN or infinite values. Clean the input (e.g. np.nan_to_num) and retry.")


def _check_exists(path: str | os.PathLike, kind: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"{kind} file '{path}' does not exist or is not a file. Check the path.")
    return path


def _pcm_to_float(array: np.ndarray) -> np.ndarray:
    """Scales integer PCM to float32 in [-1, 1]; floats are just cast."""
    if np.issubdtype(array.dtype, np.signedinteger):
        return (array.astype(np.float64) / -np.iinfo(array.dtype).min).astype(np.float32)
    if np.issubdtype(array.dtype, np.unsignedinteger):
        mid = (np.iinfo(array.dtype).max + 1) / 2
        return ((array.astype(np.float64) - mid) / mid).astype(np.float32)
    return array.astype(np.float32)


def load_audio(path: str | os.PathLike, sampling_rate: int) -> np.ndarray:
    """Reads an audio file into a float32 mono array at `sampling_rate` (downmixing and resampling as needed)."""
    path = _check_exists(path, "Audio")
    sf = optional_import("soundfile", "soundfile", f"Reading the audio file '{path}'")
    try:
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:
        raise MediaError(
            f"Audio file '{path}' could not be read ({e}). It may be corrupt or in an unsupported format; "
            "convert it to WAV or FLAC."
        ) from e
    if data.shape[0] == 0:
        raise MediaError(f"Audio file '{path}' contains zero samples. Provide a non-empty recording.")
    _check_finite(data, f"Audio file '{path}'")
    if data.shape[1] > 1:
        logger.debug("%s: downmixed %d channels to mono", path, data.shape[1])
    waveform = data.mean(axis=1)
    if file_rate != sampling_rate:
        waveform = resample(waveform, file_rate, sampling_rate)
        logger.debug("%s: resampled %d Hz -> %d Hz", path, file_rate, sampling_rate)
    return np.ascontiguousarray(waveform, dtype=np.float32)


def resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling of the last axis from `from_rate` to `to_rate` (a no-op when they are equal)."""
    if int(from_rate) == int(to_rate):
        return waveform
    signal = optional_import("scipy.signal", "scipy", f"Resampling audio from {from_rate} Hz to {to_rate} Hz")
    factor = gcd(int(from_rate), int(to_rate))
    return signal.resample_poly(waveform, int(to_rate) // factor, int(from_rate) // factor, axis=-1)


def validate_waveform(
    waveform: Any, sampling_rate: int | None, expected_sampling_rate: int, name: str = "audio"
) -> np.ndarray:
    """Validates an in-memory waveform and returns it as a float32 mono 1-D array."""
    if sampling_rate is None:
        raise MediaError(
            f"{name}: an in-memory waveform needs its rate; pass sampling_rate={expected_sampling_rate} "
            "(after resampling to it), or pass a file path instead."
        )
    if int(sampling_rate) != int(expected_sampling_rate):
        raise MediaError(
            f"{name}: sampling_rate is {sampling_rate} Hz but the model expects {expected_sampling_rate} Hz; "
            f"resample to {expected_sampling_rate} Hz first, or pass a file path so it is resampled for you."
        )
    array = _to_numpy(waveform, name)
    if array.size == 0:
        raise MediaError(f"{name}: the waveform is empty. Provide at least one sample.")
    if array.ndim > 2:
        raise MediaError(f"{name}: expected shape (samples,) or (channels, samples), got {array.shape} (>2 dims).")
    _check_finite(array, f"{name}: the waveform")
    array = _pcm_to_float(array)
    if array.ndim == 2:
        if array.shape[0] > _MAX_AUDIO_CHANNELS:
            raise MediaError(
                f"{name}: expected (channels, samples) with at most {_MAX_AUDIO_CHANNELS} channels, "
                f"got {array.shape}. "
                "If your array is (samples, channels), transpose it."
            )
        if array.shape[0] > 1:
            logger.debug("%s: downmixed %d channels to mono", name, array.shape[0])
        array = array.mean(axis=0)
    return np.ascontiguousarray(array, dtype=np.float32)


def load_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decodes a video file with PyAV into (uint8 RGB frames (N, H, W, 3), fps)."""
    path = _check_exists(path, "Video")
    av = optional_import("av", "av", f"Decoding the video file '{path}'")
    try:
        container = av.open(path)
    except Exception as e:
        raise MediaError(
            f"Video file '{path}' could not be opened ({e}). It may be corrupt; re-encode it as MP4."
        ) from e
    with container:
        if not container.streams.video:
            raise MediaError(f"Video file '{path}' has no video stream. Pass a file that contains video.")
        stream = container.streams.video[0]
        # One reformatter for the whole clip keeps its conversion context: `frame.to_ndarray(format=...)` sets one
        # up per frame, which made decoding ten times slower.
        reformatter = av.video.reformatter.VideoReformatter()
        try:
            frames = [reformatter.reformat(frame, format="rgb24").to_ndarray() for frame in container.decode(stream)]
        except Exception as e:
            raise MediaError(
                f"Video file '{path}' could not be decoded ({e}). It may be corrupt; re-encode it."
            ) from e
        fps = None
        for rate in (stream.average_rate, stream.guessed_rate):
            if rate is not None and float(rate) > 0:
                fps = float(rate)
                break
    if not frames:
        raise MediaError(f"Video file '{path}' decoded to zero frames. Check that the file is not truncated.")
    if fps is None:
        fps = 25.0
        logger.debug("%s: stream has no frame rate, assuming %.1f fps", path, fps)
    return np.stack(frames), fps


def validate_video(frames: Any, name: str = "video") -> np.ndarray:
    """Validates in-memory video frames and returns them as uint8 (N, H, W, 3)."""
    array = _to_numpy(frames, name)
    if array.size == 0 or (array.ndim > 0 and array.shape[0] == 0):
        raise MediaError(f"{name}: the video has no frames. Provide at least one frame.")
    if array.ndim != 4:
        raise MediaError(f"{name}: expected 4 dims (frames, height, width, 3), got shape {array.shape}.")
    if array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    if array.shape[-1] != 3:
        raise MediaError(f"{name}: expected 3 color channels (RGB), got {array.shape[-1]} in shape {array.shape}.")
    return _to_uint8(array, name)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Casts pixel data to uint8; floats with max <= 1 are treated as [0, 1] and scaled to 0..255."""
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        _check_finite(array, f"{name}: the pixel data")
        if array.max() <= 1.0:
            array = array * 255.0
        array = np.rint(array)
    return np.ascontiguousarray(np.clip(array, 0, 255).astype(np.uint8))


def sample_frames(
    frames: np.ndarray, source_fps: float, target_fps: float, max_frames: int | None = None
) -> np.ndarray:
    """Selects the frames nearest to times k / target_fps within the clip's duration (at least one frame)."""
    if not source_fps > 0 or not target_fps > 0:
        raise MediaError(f"fps values must be positive, got source_fps={source_fps}, target_fps={target_fps}.")
    num_frames = len(frames)
    if num_frames == 0:
        raise MediaError("the video has no frames to sample from.")
    count = max(1, int(np.ceil(num_frames * target_fps / source_fps - 1e-9)))
    times = np.arange(count) / target_fps
    indices = np.minimum(np.floor(times * source_fps + 0.5).astype(np.int64), num_frames - 1)
    if max_frames is not None:
        indices = indices[: max(1, int(max_frames))]
    return frames[indices]


def optical_flow(frames: np.ndarray) -> np.ndarray:
    """Farneback dense optical flow between consecutive frames -> float32 (M, H, W, 2), one field per frame."""
    num_frames, height, width = frames.shape[:3]
    if num_frames == 0:
        raise MediaError("optical_flow: the video has no frames.")
    winsize = min(15, height, width)
    winsize = max(3, winsize if winsize % 2 == 1 else winsize - 1)
    cv2 = optional_import("cv2", "opencv-python-headless", "Optical flow of video frames")
    gray = [cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2GRAY) for frame in frames]
    flows = np.zeros((num_frames, height, width, 2), dtype=np.float32)
    for i in range(num_frames - 1):
        flows[i] = cv2.calcOpticalFlowFarneback(
            gray[i], gray[i + 1], None, pyr_scale=0.5, levels=3, winsize=winsize,
            iterations=3, poly_n=5, poly_sigma=1.2, flags=0,
        )  # fmt: skip
    if num_frames > 1:
        flows[-1] = flows[-2]
    return flows


def flow_to_image(flow: np.ndarray, clip: float = 20.0) -> np.ndarray:
    """Renders flow (M, H, W, 2) as uint8 RGB (dx, dy, magnitude); zero motion maps to (128, 128, 0)."""
    if not clip > 0:
        raise MediaError(f"flow_to_image: clip must be positive, got {clip}.")
    flow = np.asarray(flow, dtype=np.float32)
    dx, dy = flow[..., 0], flow[..., 1]
    magnitude = np.sqrt(dx**2 + dy**2)
    signed = np.clip(np.stack([dx, dy], axis=-1), -clip, clip) / clip * 127.5 + 127.5
    mag = np.clip(magnitude, 0, clip) / clip * 255.0
    image = np.concatenate([signed, mag[..., None]], axis=-1)
    return np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8)


def load_image(path_or_image: Any) -> np.ndarray:
    """Loads a path, PIL image or array as uint8 RGB (H, W, 3); only paths and PIL images need Pillow."""
    if isinstance(path_or_image, (str, os.PathLike)):
        path = _check_exists(path_or_image, "Image")
        image_module = optional_import("PIL.Image", "pillow", f"Reading the image file '{path}'")
        try:
            with image_module.open(path) as image:
                return np.asarray(image.convert("RGB")).copy()
        except (image_module.UnidentifiedImageError, OSError) as e:
            raise MediaError(f"Image file '{path}' could not be read ({e}). It may be corrupt; re-save as PNG.") from e
    image_module = sys.modules.get("PIL.Image")  # a PIL image can only exist once Pillow is imported
    if image_module is not None and isinstance(path_or_image, image_module.Image):
        return np.asarray(path_or_image.convert("RGB")).copy()
    array = _to_numpy(path_or_image, "image")
    if array.size == 0:
        raise MediaError(f"image: the array is empty (shape {array.shape}). Provide a non-empty image.")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] > 4:  # channel-first
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise MediaError(f"image: expected shape (H, W), (H, W, 1|3|4) or (1|3|4, H, W), got {array.shape}.")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 4:
        array = array[..., :3]
    return _to_uint8(array, "image")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside `path` to write to; on success it becomes `path` (mode 0644) in one rename, on
    any error it is removed, so readers never see a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically writes UTF-8 text."""
    with atomic_path(path, suffix=".tmp") as tmp_path:
        with open(tmp_path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)


def write_wav(path: str | os.PathLike, waveform: np.ndarray, sampling_rate: int) -> None:
    """Atomically writes a float waveform (samples,) or (channels, samples) as a 16-bit PCM WAV file."""
    path = os.fspath(path)
    data = _to_numpy(waveform, f"write_wav('{path}')").astype(np.float32)
    if data.ndim not in (1, 2):
        raise MediaError(f"write_wav('{path}'): expected (samples,) or (channels, samples), got {data.shape}.")
    _check_finite(data, f"write_wav('{path}'): the waveform")
    if not int(sampling_rate) > 0:
        raise MediaError(f"write_wav('{path}'): sampling_rate must be positive, got {sampling_rate}.")
    data = np.clip(data, -1.0, 1.0)
    if data.ndim == 2:
        data = data.T  # soundfile wants (samples, channels)
    sf = optional_import("soundfile", "soundfile", f"Writing the WAV file '{path}'")
    with atomic_path(path, suffix=".wav") as tmp_path:
        sf.write(tmp_path, data, int(sampling_rate), subtype="PCM_16", format="WAV")


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, audio: np.ndarray | None = None,
              sampling_rate: int | None = None) -> None:
    """Atomically writes uint8 RGB frames `(N, H, W, 3)` (H.264, or MPEG-4 Part 2 without libx264; yuv420p, even
    sizes) and, if given, mono float audio `(samples,)` (AAC) into an MP4."""
    av = optional_import("av", "av", f"Writing the video '{path}'")
    from fractions import Fraction

    frames = validate_video(frames, f"write_mp4('{path}')")
    if audio is not None:
        audio = _to_numpy(audio, f"write_mp4('{path}'): the audio").astype(np.float32).reshape(-1)
        _check_finite(audio, f"write_mp4('{path}'): the audio")
        if sampling_rate is None or not int(sampling_rate) > 0:
            raise MediaError(f"write_mp4('{path}'): audio needs a positive sampling_rate, got {sampling_rate}.")
        sampling_rate = int(sampling_rate)
    frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # yuv420p needs even sizes
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with atomic_path(path, suffix=".mp4") as tmp_path:
        with av.open(tmp_path, "w", format="mp4") as container:
            video = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            video.width, video.height = frames.shape[2], frames.shape[1]
            video.pix_fmt = "yuv420p"
            video.codec_context.thread_count = 1  # deterministic output
            if codec == "libx264":
                video.options = {"crf": "12", "preset": "medium"}
            if audio is not None:
                sound = container.add_stream("aac", rate=sampling_rate, layout="mono")
                sound.bit_rate = 128000
                sound.options = {"aac_coder": "fast"}  # a third of the default coder's time, as close to the source
            for frame in frames:
                container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(video.encode())
            if audio is not None:
                for start in range(0, len(audio), 1024):
                    chunk = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], format="fltp", layout="mono")
                    chunk.sample_rate, chunk.pts = sampling_rate, start
                    chunk.time_base = Fraction(1, sampling_rate)
                    container.mux(sound.encode(chunk))
                container.mux(sound.encode())
