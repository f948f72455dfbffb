"""Long-form and streamed audio for C3LLM's `generate`: the window plan, the audio timeline that windows fill and
that decodes finished frames chunk by chunk, and the streamer that hands those chunks to the caller."""

import math
import queue
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer


DEFAULT_LOOKAHEAD_SECONDS = 0.2  # streaming with a NAR head that attends to every frame
MIN_CHUNK_SECONDS = 0.5  # the shortest chunk a streamer hands out (but the last of a clip that ends at </Audio>)
CODEC_CONTEXT_SECONDS = 0.5  # earlier audio decoded again before each chunk, so that the codec's state has settled
CROSSFADE_SECONDS = 0.01  # each chunk's start is crossfaded with the previous decode of the same samples
NON_CAUSAL_LOOKAHEAD_FRAMES = 8  # a non-causal codec's frames held back until later frames are known


@dataclass(frozen=True)
class Window:
    """One window of long-form generation over timeline frames `[start, start + context + new)`: the first `context`
    frames are known (the audio prompt or the previous window's end) and continue into `new` generated frames."""

    start: int
    context: int
    new: int

    @property
    def end(self) -> int:
        return self.start + self.context + self.new


def window_grid(frame_rate: float, video_fps: float | None) -> int:
    """The step, in audio frames, that window starts take so that each window starts on a video frame: 1 without a
    video, else the fewest audio frames that span a whole number of video frames (15 for 75 Hz codes and 5 or 10 fps)."""
    if video_fps is None:
        return 1
    ratio = Fraction(video_fps).limit_denominator(1000) / Fraction(frame_rate).limit_denominator(1000)
    return ratio.denominator


def plan_windows(prefix: int, total: int, window: int, context: int, grid: int = 1) -> list[Window]:
    r"""
    The windows that generate `total` timeline frames, of which the first `prefix` are known, with at most `window`
    frames each: the first continues the prefix; each later one starts `context` frames (rounded up to a whole `grid`
    step) before the frames generated so far, which it sees as its prompt, and generates until it is full.
    """
    if not 0 <= prefix < window:
        raise ValueError(f"The audio prompt ({prefix} frames) must be shorter than the model's window ({window} frames).")
    if total <= prefix:
        raise ValueError(f"Nothing to generate: {total} frames asked, {prefix} known.")
    windows = [Window(0, prefix, min(window, total) - prefix)]
    while windows[-1].end < total:
        end = windows[-1].end
        start = max(0, (end - context) // grid * grid)
        new = min(start + window, total) - end
        if new <= 0:
            raise ValueError(
                f"A window of {window} frames after {end - start} frames of context generates nothing; use a shorter "
                "window_context_in_s."
            )
        windows.append(Window(start, end - start, new))
    return windows


class C3LLMAudioStreamer(BaseStreamer):
    r"""
    Receives the audio of `generate(..., streamer=streamer)` as it is produced, in chunks of at least
    `chunk_length_in_s` seconds (the last chunk may be shorter only when a clip ends early at `</Audio>`), while the LLM
    is still generating the coarse codes: the NAR head and the codec run on each chunk. Iterate over it from another
    thread (as with transformers' `TextIteratorStreamer`), or override `on_chunk`.

    Each chunk is a `torch.FloatTensor` of shape `(batch_size, channels, samples)` at `sampling_rate`; the chunks put
    end to end make `output.audio` of the same call. [`~C3LLMGenerationMixin.generate_stream`] wraps the thread.

    Args:
        chunk_length_in_s (`float`, *optional*, defaults to 0.5): The least audio per chunk (at least 0.5 s).
        lookahead_in_s (`float`, *optional*): Coarse codes generated after a chunk before its finer codebooks are
            predicted, so that the bidirectional NAR head sees what follows. Default: the NAR head's receptive field
            when its attention is local (`nar_config.attention_window`: then the finer codes equal unstreamed ones),
            else `DEFAULT_LOOKAHEAD_SECONDS` (more: closer to the audio without streaming, later chunks).
        timeout (`float`, *optional*): Seconds the iterator waits for a chunk before raising `queue.Empty`.
    """

    def __init__(self, chunk_length_in_s: float = MIN_CHUNK_SECONDS, lookahead_in_s: float | None = None,
                 timeout: float | None = None):  # fmt: skip
        if not chunk_length_in_s >= MIN_CHUNK_SECONDS:
            raise ValueError(f"chunk_length_in_s must be at least {MIN_CHUNK_SECONDS} s, got {chunk_length_in_s}.")
        if lookahead_in_s is not None and not lookahead_in_s >= 0:
            raise ValueError(f"lookahead_in_s must not be negative, got {lookahead_in_s}.")
        self.chunk_length_in_s = float(chunk_length_in_s)
        self.lookahead_in_s = lookahead_in_s
        self.timeout = timeout
        self.sampling_rate: int | None = None
        self._queue: queue.Queue = queue.Queue()
        self._done = object()

    def start(self, sampling_rate: int) -> None:
        """Called by `generate` before the first chunk."""
        self.sampling_rate = sampling_rate

    def on_chunk(self, chunk: torch.Tensor) -> None:
        """Called by `generate` with each chunk; by default queues it for the iterator."""
        self._queue.put(chunk)

    def put(self, value):
        raise TypeError("C3LLMAudioStreamer receives audio chunks from C3LLM's generate, not token ids.")

    def end(self, error: BaseException | None = None) -> None:
        """Called by `generate` after the last chunk (or by `generate_stream` with the error that stopped it)."""
        self._queue.put(error if error is not None else self._done)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        item = self._queue.get(timeout=self.timeout)
        if item is self._done:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item


class AudioTimeline:
    r"""
    The codes of the whole output `(rows, num_codebooks, frames)`, `-1` where not yet generated, which the windows of
    `generate` fill in order. With a streamer, `finish` decodes the frames finished since the last chunk with
    `CODEC_CONTEXT_SECONDS` of earlier codes before them, crossfades the join and hands out chunks of at least the
    streamer's length (all the audio decoded so far, in one chunk); `audio` is then those chunks end to end, `samples`
    long. Without one, `audio` decodes the new frames in one pass
    (with the known prefix before them, so that a continuation joins its prompt without a click).
    """

    def __init__(self, model, prefix: torch.LongTensor, total: int, streamer: C3LLMAudioStreamer | None = None,
                 samples: int | None = None):  # fmt: skip
        config = model.config
        self.model, self.streamer, self.prefix = model, streamer, prefix.shape[-1]
        self.codes = prefix.new_full((prefix.shape[0], config.num_codebooks, total), -1)
        self.codes[..., : self.prefix] = prefix
        self.frames_mask = torch.ones_like(self.codes[:, 0], dtype=torch.bool)
        self.finished = self.prefix  # frames whose every codebook is final
        self.hop = config.hop_length
        self.exact = True  # the output has exactly `total` frames (else a clip may end at </Audio>)
        self._decoded = self.prefix  # frames whose audio is decoded (streaming)
        self._pending: list[torch.Tensor] = []  # decoded audio not yet handed out
        self._tail: torch.Tensor | None = None  # the last decoded samples, held back for the next crossfade
        self._chunks: list[torch.Tensor] = []
        self._emitted = 0  # samples handed out
        self.samples = samples if samples is not None else (total - self.prefix) * self.hop  # of the output
        if streamer is not None:
            causal = getattr(getattr(model.codec, "config", None), "use_causal_conv", True)
            self._lookahead = 0 if causal else NON_CAUSAL_LOOKAHEAD_FRAMES
            self._context = math.ceil(CODEC_CONTEXT_SECONDS * config.frame_rate)
            self._fade = round(CROSSFADE_SECONDS * config.sampling_rate)
            self._chunk = math.ceil(streamer.chunk_length_in_s * config.sampling_rate)
            streamer.start(config.sampling_rate)

    @property
    def total(self) -> int:
        return self.codes.shape[-1]

    def write(self, start: int, codes: torch.LongTensor, final: int) -> None:
        """Writes `codes` at frame `start`, keeping the frames already final, and marks the frames before `final` as
        final (decoding and handing out their audio when streaming)."""
        stop = start + codes.shape[-1]
        keep = max(start, min(self.finished, stop))
        self.codes[..., keep:stop] = codes[..., keep - start :]
        self.finish(final)

    def end_early(self, frames_mask: torch.BoolTensor) -> None:
        """A single window without an exact length: `frames_mask` `(rows, frames)` marks each clip's real frames."""
        self.exact = False
        self.codes = self.codes[..., : frames_mask.shape[-1]]
        self.frames_mask = frames_mask

    def finish(self, final: int) -> None:
        self.finished = max(self.finished, min(final, self.total))
        if self.streamer is None:
            return
        last = self.finished == self.total
        upto = self.total if last else max(self._decoded, self.finished - self._lookahead)
        if upto > self._decoded:
            self._decode(upto)
        self._hand_out(last)

    def _decode(self, upto: int) -> None:
        """Decodes frames `[_decoded, upto)` after up to `_context` earlier frames; its first samples, which the
        previous decode also gave, are crossfaded with those held back from it, and its own end is held back."""
        begin = max(0, self._decoded - self._context)
        audio = self.model.decode_audio(self.codes[..., begin:upto], self.frames_mask[:, begin:upto])
        held = 0 if self._tail is None else self._tail.shape[-1]
        audio = audio[..., (self._decoded - begin) * self.hop - held :]
        if held:
            fade = torch.linspace(0.0, 1.0, held, device=audio.device, dtype=audio.dtype)
            audio = torch.cat([self._tail * (1 - fade) + audio[..., :held] * fade, audio[..., held:]], -1)
        self._decoded = upto
        self._tail = None
        if upto < self.total and audio.shape[-1] > self._fade:
            audio, self._tail = audio[..., : -self._fade], audio[..., -self._fade :]
        self._pending.append(audio)

    def _hand_out(self, last: bool) -> None:
        """Hands out the decoded audio as one chunk once it reaches the chunk length, holding back what the last chunk
        needs to reach it too; at the end, the rest (trimmed to `samples`)."""
        pending = torch.cat(self._pending, -1) if self._pending else self.codes.new_zeros((0,)).float()
        self._pending = []
        if last:
            pending = pending[..., : max(0, self.samples - self._emitted)]
            if pending.shape[-1]:
                self._emit(pending)
            self.streamer.end()
            return
        size = pending.shape[-1]
        if self.exact:  # what is still to come, and what the last chunk then lacks
            size -= max(0, self._chunk - (self.samples - self._emitted - size))
        if size >= self._chunk:
            self._emit(pending[..., :size])
            pending = pending[..., size:]
        if pending.shape[-1]:
            self._pending = [pending]

    @property
    def frames_per_chunk(self) -> int:
        """Frames whose decoding gives a chunk (the held-back crossfade included)."""
        return math.ceil((self._chunk + self._fade) / self.hop)

    def _emit(self, chunk: torch.Tensor) -> None:
        self._emitted += chunk.shape[-1]
        self._chunks.append(chunk)
        self.streamer.on_chunk(chunk)

    def audio(self) -> torch.Tensor:
        """The waveforms of the new frames `(rows, channels, samples)`: the chunks handed out, or one decode."""
        if self.streamer is not None:
            return torch.cat(self._chunks, -1)
        begin = max(0, self.prefix - math.ceil(CODEC_CONTEXT_SECONDS * self.model.config.frame_rate))
        audio = self.model.decode_audio(self.codes[..., begin:], self.frames_mask[:, begin:])
        return audio[..., (self.prefix - begin) * self.hop :]

    def new_codes(self) -> tuple[torch.LongTensor, torch.BoolTensor]:
        """The generated codes (after the prefix) and their frames mask."""
        return self.codes[..., self.prefix :], self.frames_mask[:, self.prefix :]


PER_FRAME_INPUTS = ("pixel_values_videos", "flow_values_videos", "video_features", "video_frames_mask")


def slice_media(features: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """`features` with the video frames `[start, stop)` of its per-frame inputs."""
    return {name: value[:, start:stop] if name in PER_FRAME_INPUTS else value for name, value in features.items()}


__all__ = ["AudioTimeline", "C3LLMAudioStreamer", "DEFAULT_LOOKAHEAD_SECONDS", "MIN_CHUNK_SECONDS", "Window", "plan_windows", "window_grid"]
