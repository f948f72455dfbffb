"""Train a small EnCodec codec (transformers' `EncodecModel` at a tiny config) on SynthFoley audio, on a CPU.

C3LLM's LLM predicts the codes of EnCodec's first codebook and its NAR head the second; the codec turns them into a
waveform. A randomly initialised codec decodes noise, so the demo models need a codec that has learned something.
This script trains one on an endless stream of freshly synthesized SynthFoley clips (no data on disk) and saves it
with `save_pretrained` (config.json + model.safetensors), e.g. into `c3llm/synthfoley/codec`:

    python -m c3llm.synthfoley.train_codec --out c3llm/synthfoley/codec

The codec is the paper's (sec. 3.4): 24 kHz mono, strides (8, 5, 4, 2) so one frame per 320 samples (75 frames/s),
a residual vector quantizer with 1024 codes per codebook and exactly two codebooks (`target_bandwidths=[1.5]`:
2 x 10 bits x 75 frames/s = 1.5 kbps), only much narrower than the released 24 kHz EnCodec.

Training (defaults; about 0.4 s per step on one CPU core, so the default 4000 steps take about half an hour):

* Reconstruction losses as in EnCodec: L1 on the waveform (weight `--time-weight`) plus, at six STFT scales (windows
  of 64..2048 samples, hop a quarter window), the L1 and the L2 (root mean square) distance between mel
  spectrograms (`--mel-weight`). A log-compressed mel L1 term (`--log-mel-weight`) is added: without it the codec
  leaves faint artefacts in the quiet parts between events, which an event detector reads as extra events. The
  adversarial (multi-scale STFT discriminator) and feature-matching losses of EnCodec, and its loss balancer, are
  left out: they need far longer training than a CPU run to pay off.
* The codebooks of transformers' `EncodecModel` are buffers (`quantizer.layers[i].codebook.embed`, `embed_avg`,
  `cluster_size`), so they are learned as in EnCodec/SoundStream by exponential moving averages (k-means-like updates
  with decay `--ema-decay` and Laplace smoothing), initialised by k-means on encoder outputs, with dead codes (not
  chosen for `--dead-code-steps` steps) replaced by random encoder residuals of the batch. Gradients pass the
  quantizer straight through, and a commitment loss (`--commitment-weight`) pulls the encoder outputs towards their
  codes.
* Warm-ups that keep a from-scratch run from collapsing: the convolutions are re-initialised so that the signal keeps
  its scale through the network (`reset_weights`); the first `--quantizer-warmup-steps` steps train the autoencoder
  without quantization (then k-means initialises the codebooks) with a stronger waveform L1 and no log-mel term,
  which then ramp to their final weights over `--log-mel-ramp-steps` steps. Adam (betas 0.5, 0.9) with a linear
  learning-rate warm-up and a cosine decay.
* The training state is saved every `--save-every` steps to `--state`; starting the same command again after an
  interruption resumes the run.
* `--boost-classes CLASS ...` over-represents event classes in the training stream: a share `--boost-share` of the
  crops come from clips redrawn until they hold such an event, cropped so that the event lies whole inside the crop.
  The tiny decoder learns tones as a few fixed "oscillators" (the beeps' 440 and 1760 Hz); trained on the plain
  stream it renders a chirp (a 600 -> 3000 Hz sweep) as a flat 1760 Hz tone, which the event detector calls a high
  beep (the class sequence of 85% of held-out clips survived). The committed codec was then fine-tuned for 30 min
  (`--init-from`, `--boost-share 0.5`): 5 + 25 min with `--boost-classes chirp` (`--lr 3e-4`, then `4e-4 --seed 1`).
  It renders a chirp as a rising staircase of tones (about 450 -> 1200 -> 1760 -> 2400 Hz), which the detector reads
  as a chirp: the class sequences and onsets of 100% / 100% of 200 held-out clips survive (eval seed 1234; seed 777:
  99.5% / 100%; the original audio: 100% / 100%). A further 15 min with `--boost-classes chirp 'click train' 'noise
  burst'` (`--lr 2e-4 --seed 2`) reached 100% on both seeds; it is not shipped because the demo runs trained on its
  codes found the requested classes in 5-18% of text-to-audio clips, against 50% for one run on this codec's codes
  (a wider model at a lower learning rate: the comparison is confounded, and at the demo's final settings the two
  codecs gave 15% and 20%, within noise). Text-to-audio trained on the first, 85% codec's codes did better (62%).

The forward pass is written out (`codec_model.codec_forward`) rather than calling `model(...)`, because the library's path
has no straight-through estimator and no EMA updates; `check_library_path` verifies that the library's
`model.encode(x, bandwidth=1.5)` -> `model.decode(codes, [None])` gives the same reconstruction as `codec_forward`.

After training, the codec is evaluated on held-out clips (another seed): log-mel L1, SNR and, with SynthFoley's
event detector, how often the event classes detected in the reconstruction equal the clip's true classes, and how
many true onsets are found within 30 ms — the same figures for the original audio show the detector's own ceiling.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import EncodecModel
from transformers.audio_utils import mel_filter_bank

from c3llm.synthfoley import event_detector
from c3llm.synthfoley.synthfoley import EVENT_CLASSES, make_clip
from conversion.build_c3llm import atomic_folder
from processing_c3llm.media_c3llm import atomic_path

from .codec_model import (
    HOP_LENGTH,
    SAMPLING_RATE,
    CodebookTrainer,
    check_library_path,
    codec_forward,
    library_reconstruct,
    make_config,
    reset_weights,
)

ONSET_TOLERANCE = 0.03  # seconds


# ---------------------------------------------------------------------------------------------------------------------
# Losses and metrics
# ---------------------------------------------------------------------------------------------------------------------


class MultiScaleMelLoss(torch.nn.Module):
    """Mel spectrogram distances at several STFT scales (EnCodec's frequency-domain reconstruction loss).

    For each window n in `windows` (hop n/4, Hann window, magnitudes normalised by the window sum, min(64, n/8) HTK
    mel bands up to 12 kHz) it computes the L1 distance and the L2 distance (root mean square) of the mel magnitudes
    and the L1 distance of their logs (log(mel + `log_floor`)); `forward` returns the three, each averaged over
    scales.
    """

    def __init__(
        self,
        windows: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048),
        sampling_rate: int = SAMPLING_RATE,
        log_floor: float = 1e-4,
    ):
        super().__init__()
        self.windows = tuple(windows)
        self.log_floor = log_floor
        for n_fft in self.windows:
            filters = mel_filter_bank(
                num_frequency_bins=n_fft // 2 + 1,
                num_mel_filters=min(64, n_fft // 8),
                min_frequency=0.0,
                max_frequency=sampling_rate / 2,
                sampling_rate=sampling_rate,
                mel_scale="htk",
            )
            self.register_buffer(f"mel_{n_fft}", torch.tensor(filters.T, dtype=torch.float32), persistent=False)
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def mel(self, audio: torch.Tensor, n_fft: int) -> torch.Tensor:
        """Mel magnitudes `(B, mels, frames)` of `(B, L)` or `(B, 1, L)` audio at window `n_fft`."""
        audio = audio.reshape(-1, audio.shape[-1])
        window = getattr(self, f"window_{n_fft}")
        spectrum = torch.stft(audio, n_fft, hop_length=n_fft // 4, window=window, center=True, return_complex=True)
        magnitude = spectrum.abs() / window.sum()
        return getattr(self, f"mel_{n_fft}") @ magnitude

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        l1 = l2 = log_l1 = prediction.new_zeros(())
        for n_fft in self.windows:
            predicted, reference = self.mel(prediction, n_fft), self.mel(target, n_fft)
            difference = predicted - reference
            l1 = l1 + difference.abs().mean()
            l2 = l2 + difference.pow(2).mean().add(1e-12).sqrt()
            log_l1 = log_l1 + (torch.log(predicted + self.log_floor) - torch.log(reference + self.log_floor)).abs().mean()
        count = len(self.windows)
        return l1 / count, l2 / count, log_l1 / count


def log_envelope(audio: torch.Tensor, window: int = 240, hop: int = 120, floor: float = 1e-6) -> torch.Tensor:
    """Log short-time energy `(B, frames)` of `(B, 1, L)` audio: Hann windows of 10 ms every 5 ms at 24 kHz."""
    frames = audio.reshape(-1, audio.shape[-1]).unfold(-1, window, hop)
    taper = torch.hann_window(window, periodic=False, dtype=audio.dtype, device=audio.device)
    return torch.log((frames * taper).pow(2).mean(-1) + floor)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal-to-noise ratio of `estimate` against `reference`, in dB."""
    noise = np.sum((reference - estimate) ** 2)
    return float(10 * np.log10(np.sum(reference**2) / max(noise, 1e-12)))


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def next_crop_length(seconds: float) -> int:
    """`seconds` of audio in samples, rounded to a whole number of codec frames (320 samples)."""
    return max(HOP_LENGTH, round(seconds * SAMPLING_RATE / HOP_LENGTH) * HOP_LENGTH)


def crop_batches(
    seed: int | np.random.Generator,
    batch_size: int,
    crop_seconds: float,
    clip_seconds: float = 2.0,
    boost_classes: tuple[str, ...] = (),
    boost_share: float = 0.0,
):
    """Endless `(batch_size, 1, crop)` float tensors: random crops (crop a multiple of 320 samples) of fresh clips,
    drawn from `seed` (a seed or a numpy Generator, which the stream then advances).

    With `boost_classes`, a share `boost_share` of the crops (each crop independently) comes from a clip redrawn until
    it holds an event of one of those classes, and the crop is placed so that one such event (picked at random) lies
    inside it whole (or, if the event is longer than the crop, starts inside it); the other crops are unbiased.
    """

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    crop = next_crop_length(crop_seconds)
    boost_classes = tuple(boost_classes)
    unknown = sorted(set(boost_classes) - set(EVENT_CLASSES))
    if unknown:
        raise ValueError(f"unknown SynthFoley event classes {unknown}; choose from {list(EVENT_CLASSES)}")
    duration = max(clip_seconds, crop_seconds)
    while True:
        batch = np.zeros((batch_size, 1, crop), dtype=np.float32)
        for row in range(batch_size):
            boosted = bool(boost_classes) and boost_share > 0 and rng.random() < boost_share
            clip = make_clip(rng, duration=duration, sampling_rate=SAMPLING_RATE)
            while boosted and not any(event.label in boost_classes for event in clip.events):
                clip = make_clip(rng, duration=duration, sampling_rate=SAMPLING_RATE)
            audio = clip.audio
            low, high = 0, len(audio) - crop  # crop start range, inclusive
            if boosted:
                events = [event for event in clip.events if event.label in boost_classes]
                event = events[int(rng.integers(0, len(events)))]
                onset = round(event.onset * SAMPLING_RATE)
                end = min(len(audio), onset + round(event.duration * SAMPLING_RATE))
                low, high = max(low, min(onset, end - crop)), min(high, onset)
            start = int(rng.integers(low, high + 1))
            batch[row, 0] = audio[start : start + crop]
        yield torch.from_numpy(batch)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


def _onset_hits(true_onsets: list[float], detected: list[float], tolerance: float) -> int:
    """How many true onsets have a detected onset within `tolerance` (each detection used once, greedy in order)."""
    remaining = list(detected)
    hits = 0
    for onset in true_onsets:
        if not remaining:
            break
        nearest = min(range(len(remaining)), key=lambda i: abs(remaining[i] - onset))
        if abs(remaining[nearest] - onset) <= tolerance:
            hits += 1
            remaining.pop(nearest)
    return hits


@torch.no_grad()
def evaluate(
    model: EncodecModel,
    num_clips: int = 100,
    seed: int = 1234,
    duration: float = 2.0,
    batch_size: int = 10,
    reference: bool = True,
) -> dict:
    """Reconstructs `num_clips` held-out SynthFoley clips with the library's encode/decode and scores them.

    Figures: `mel_l1` (mean |log10 mel| distance, 1024-sample windows, 64 bands), `snr_db` (mean over clips),
    `class_accuracy` (fraction of clips whose detected class sequence equals the true one), `onset_recall` (fraction of
    true event onsets with a detected onset within 30 ms), the same two on the original audio (`original_*`, with
    `reference`), and `perplexity` (of each codebook's codes over all clips).
    """

    model.eval()
    rng = np.random.default_rng(seed)
    clips = [make_clip(rng, duration=duration, sampling_rate=SAMPLING_RATE) for _ in range(num_clips)]
    mel = MultiScaleMelLoss(windows=(1024,))
    totals = {"mel_l1": 0.0, "snr_db": 0.0, "class": 0, "onsets": 0, "original_class": 0, "original_onsets": 0}
    num_events = 0
    histograms = None
    for start in range(0, num_clips, batch_size):
        chunk = clips[start : start + batch_size]
        audio = torch.from_numpy(np.stack([clip.audio for clip in chunk]))[:, None]
        reconstruction, codes = library_reconstruct(model, audio)
        if histograms is None:
            histograms = [torch.zeros(model.config.codebook_size) for _ in range(codes.shape[1])]
        for k in range(codes.shape[1]):
            histograms[k] += torch.bincount(codes[:, k].reshape(-1), minlength=model.config.codebook_size).float()
        mel_in = torch.log10(mel.mel(audio, 1024) + 1e-5)
        mel_out = torch.log10(mel.mel(reconstruction, 1024) + 1e-5)
        totals["mel_l1"] += float((mel_in - mel_out).abs().mean(dim=(1, 2)).sum())
        for clip, restored in zip(chunk, reconstruction[:, 0].numpy()):
            labels = [event.label for event in clip.events]
            true_onsets = [event.onset for event in clip.events]
            num_events += len(labels)
            totals["snr_db"] += snr_db(clip.audio, restored)
            totals["class"] += event_detector.event_classes(restored, SAMPLING_RATE) == labels
            totals["onsets"] += _onset_hits(true_onsets, event_detector.onsets(restored, SAMPLING_RATE), ONSET_TOLERANCE)
            if reference:
                totals["original_class"] += event_detector.event_classes(clip.audio, SAMPLING_RATE) == labels
                totals["original_onsets"] += _onset_hits(
                    true_onsets, event_detector.onsets(clip.audio, SAMPLING_RATE), ONSET_TOLERANCE
                )
    perplexity = []
    for histogram in histograms:
        p = histogram[histogram > 0] / histogram.sum()
        perplexity.append(float((-(p * p.log()).sum()).exp()))
    result = {
        "num_clips": num_clips,
        "mel_l1": totals["mel_l1"] / num_clips,
        "snr_db": totals["snr_db"] / num_clips,
        "class_accuracy": totals["class"] / num_clips,
        "onset_recall": totals["onsets"] / max(num_events, 1),
        "perplexity": perplexity,
    }
    if reference:
        result["original_class_accuracy"] = totals["original_class"] / num_clips
        result["original_onset_recall"] = totals["original_onsets"] / max(num_events, 1)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------------------


def save_atomic(model: EncodecModel, out: str | os.PathLike) -> Path:
    """`save_pretrained` (safetensors) into a temporary sibling folder, then swapped in for `out` (`atomic_folder`)."""
    with atomic_folder(out, replace=True) as staging:
        model.save_pretrained(staging, safe_serialization=True)
    return Path(out)


def folder_size(path: str | os.PathLike) -> int:
    return sum(file.stat().st_size for file in Path(path).iterdir() if file.is_file())


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def train(
    out: str | os.PathLike,
    steps: int = 4000,
    minutes: float | None = None,
    batch_size: int = 8,
    crop_seconds: float = 1.0,
    lr: float = 1e-3,
    warmup_steps: int = 100,
    quantizer_warmup_steps: int = 300,
    kmeans_batches: int = 8,
    seed: int = 0,
    num_filters: int = 6,
    hidden_size: int = 32,
    num_lstm_layers: int = 1,
    time_weight: float = 0.1,
    warmup_time_weight: float = 1.0,
    mel_weight: float = 1.0,
    log_mel_weight: float = 1.0,
    log_mel_ramp_steps: int = 200,
    envelope_weight: float = 0.0,
    commitment_weight: float = 1.0,
    ema_decay: float = 0.99,
    dead_code_steps: int = 20,
    boost_classes: tuple[str, ...] = (),
    boost_share: float = 0.0,
    eval_clips: int = 100,
    eval_seed: int = 1234,
    threads: int | None = None,
    log_every: int = 50,
    progress: bool = True,
    init_from: str | os.PathLike | None = None,
    state_path: str | os.PathLike | None = None,
    save_every: int = 200,
) -> dict:
    """Trains the codec, saves it atomically into `out` and returns a summary (losses, timing, evaluation).

    Stops after `steps` optimizer steps or `minutes` of training, whichever comes first; the learning rate warms up
    linearly for `warmup_steps` and then follows a cosine to 5% of `lr` over the run (measured in steps or in time,
    whichever is further along). For the first `quantizer_warmup_steps` steps the decoder gets the encoder outputs
    unquantized, so that the encoder learns informative latents first; then the codebooks are initialised by k-means
    on the encoder outputs of `kmeans_batches` batches, and EMA-trained from there on. During that warm-up the
    waveform L1 weight is `warmup_time_weight` and the log-mel weight 0 (from the start, the log-mel loss drives the
    untrained decoder into outputting faint noise); over the next `log_mel_ramp_steps` steps both move linearly to
    `time_weight` and `log_mel_weight`. With `init_from`, training continues from a saved codec (its config and
    codebooks are kept, no warm-ups). `boost_classes` and `boost_share` over-represent event classes in the training
    stream (see `crop_batches`).

    With `state_path`, the whole training state (weights, codebooks, optimizer, step, random streams) is saved there
    every `save_every` steps, and a run started with the same settings resumes from it; it is deleted at the end.
    """
    previous_threads = torch.get_num_threads()
    try:
        return _train(**{name: value for name, value in locals().items() if name != "previous_threads"})
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    out, steps, minutes, batch_size, crop_seconds, lr, warmup_steps, quantizer_warmup_steps, kmeans_batches, seed,
    num_filters, hidden_size, num_lstm_layers, time_weight, warmup_time_weight, mel_weight, log_mel_weight,
    log_mel_ramp_steps, envelope_weight, commitment_weight, ema_decay, dead_code_steps, boost_classes, boost_share,
    eval_clips, eval_seed, threads, log_every, progress, init_from, state_path, save_every,
) -> dict:
    from tqdm.auto import tqdm

    settings = {
        name: value for name, value in locals().items()
        if name not in ("out", "eval_clips", "eval_seed", "threads", "log_every", "progress", "state_path",
                        "save_every", "tqdm")
    }
    settings["init_from"] = None if init_from is None else str(init_from)
    settings["boost_classes"] = list(boost_classes)

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    trainer = CodebookTrainer(decay=ema_decay, dead_after_steps=dead_code_steps, seed=seed)
    if init_from is not None:
        model = EncodecModel.from_pretrained(init_from)
    else:
        model = reset_weights(EncodecModel(make_config(num_filters, hidden_size, num_lstm_layers)))
    model.train()
    mel_loss = MultiScaleMelLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))
    data_rng = np.random.default_rng(seed)
    batches = crop_batches(data_rng, batch_size, crop_seconds, boost_classes=boost_classes, boost_share=boost_share)
    budget = minutes * 60 if minutes else None

    def lr_at(step: int, elapsed: float) -> float:
        if step < warmup_steps and init_from is None:
            return lr * (step + 1) / warmup_steps
        fraction = step / max(steps, 1)
        if budget:
            fraction = max(fraction, elapsed / budget)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))

    frames_per_step = batch_size * math.ceil(next_crop_length(crop_seconds) / HOP_LENGTH)
    initialised = init_from is not None

    def initialise_codebooks() -> None:
        with torch.no_grad():
            vectors = torch.cat(
                [model.encoder(next(batches)).permute(0, 2, 1).reshape(-1, model.config.hidden_size)
                 for _ in range(kmeans_batches)]
            )
        trainer.kmeans_initialise(model, vectors, frames_per_step)

    history = []
    running: dict[str, float] = {}
    step, previous_seconds = 0, 0.0
    state_path = Path(state_path) if state_path else None
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["settings"] != settings:
            changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
            raise ValueError(f"{state_path} holds a run with other settings ({', '.join(changed)}); delete it to start "
                             "afresh.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for layer, idle in zip(model.quantizer.layers, state["idle_steps"]):
            if idle is not None:
                trainer.idle_steps[id(layer.codebook)] = idle
        trainer.generator.set_state(state["trainer_rng"])
        torch.set_rng_state(state["torch_rng"])
        data_rng.bit_generator.state = state["data_rng"]
        step, previous_seconds, initialised = state["step"], state["seconds"], state["initialised"]
        running, history = state["running"], state["history"]

    def save_state() -> None:
        state = {
            "settings": settings, "step": step, "seconds": time.monotonic() - start + previous_seconds,
            "initialised": initialised, "running": running, "history": history,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "idle_steps": [trainer.idle_steps.get(id(layer.codebook)) for layer in model.quantizer.layers],
            "trainer_rng": trainer.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "data_rng": data_rng.bit_generator.state,
        }
        with atomic_path(state_path, suffix=".tmp") as tmp:
            torch.save(state, tmp)

    start = time.monotonic() - previous_seconds
    bar = tqdm(total=None if budget else steps, initial=step, desc="train codec", unit="step",
               disable=not progress, dynamic_ncols=True)
    while step < steps:
        elapsed = time.monotonic() - start
        if budget is not None and elapsed >= budget:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, elapsed)
        quantizing = step >= quantizer_warmup_steps or init_from is not None
        if quantizing and not initialised:
            initialise_codebooks()
            initialised = True
        audio = next(batches)
        reconstruction, _, commitment, stats = codec_forward(model, audio, trainer, quantize_latents=quantizing)
        time_l1 = (reconstruction - audio).abs().mean()
        mel_l1, mel_l2, log_mel_l1 = mel_loss(reconstruction, audio)
        envelope_l1 = (log_envelope(reconstruction) - log_envelope(audio)).abs().mean()
        ramp = 1.0 if init_from is not None else (step - quantizer_warmup_steps) / max(log_mel_ramp_steps, 1)
        ramp = min(max(ramp, 0.0), 1.0)
        loss = (
            ((1 - ramp) * warmup_time_weight + ramp * time_weight) * time_l1
            + mel_weight * (mel_l1 + mel_l2)
            + ramp * log_mel_weight * log_mel_l1
            + ramp * envelope_weight * envelope_l1
            + commitment_weight * commitment
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1

        with torch.no_grad():
            snr = 10 * torch.log10(audio.pow(2).sum() / (audio - reconstruction).pow(2).sum().clamp_min(1e-12))
        figures = {
            "loss": float(loss.detach()),
            "time_l1": float(time_l1.detach()),
            "mel_l1": float(mel_l1.detach()),
            "mel_l2": float(mel_l2.detach()),
            "log_mel_l1": float(log_mel_l1.detach()),
            "envelope_l1": float(envelope_l1.detach()),
            "commit": float(commitment.detach()),
            "snr_db": float(snr.detach()),
            "ppl1": stats.perplexity[0] if stats.perplexity else 0.0,
            "ppl2": stats.perplexity[-1] if stats.perplexity else 0.0,
            "dead": float(sum(stats.replaced)),
        }
        for key, value in figures.items():
            running[key] = value if key not in running else 0.95 * running[key] + 0.05 * value
        bar.update(1)
        if step % 10 == 0 or step == steps:
            bar.set_postfix(
                loss=f"{running['loss']:.3f}", logmel=f"{running['log_mel_l1']:.3f}",
                snr=f"{running['snr_db']:.1f}dB", ppl=f"{running['ppl1']:.0f}/{running['ppl2']:.0f}",
            )
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "seconds": round(time.monotonic() - start, 1), **running})
        if state_path is not None and step % save_every == 0:
            save_state()
    bar.close()
    if not initialised:  # a run shorter than the quantizer warm-up still saves a usable codec
        initialise_codebooks()
    train_seconds = time.monotonic() - start

    model.eval()
    check_audio = next(crop_batches(eval_seed + 1, 2, 2.0))
    consistency = check_library_path(model, check_audio)
    path = save_atomic(model, out)
    if state_path is not None and state_path.is_file():
        state_path.unlink()
    summary = {
        "out": str(path),
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "final": dict(running),
        "history": history,
        "library_path": consistency,
        "checkpoint_bytes": folder_size(path),
        "config": {
            "num_filters": model.config.num_filters,
            "hidden_size": model.config.hidden_size,
            "num_lstm_layers": model.config.num_lstm_layers,
            "num_quantizers": model.config.num_quantizers,
            "frame_rate": model.config.frame_rate,
            "codebook_size": model.config.codebook_size,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    }
    if eval_clips:
        summary["eval"] = evaluate(model, num_clips=eval_clips, seed=eval_seed)
    return summary


def _format_summary(summary: dict) -> str:
    config, final = summary["config"], summary["final"]
    lines = [
        f"saved {summary['out']} ({summary['checkpoint_bytes'] / 1e6:.2f} MB, {config['parameters']:,} parameters)",
        f"config: num_filters={config['num_filters']} hidden_size={config['hidden_size']} "
        f"lstm_layers={config['num_lstm_layers']} quantizers={config['num_quantizers']} x {config['codebook_size']} "
        f"codes, {config['frame_rate']} frames/s",
        f"trained {summary['steps']} steps in {summary['train_seconds'] / 60:.1f} min; last losses (EMA): "
        f"loss {final.get('loss', float('nan')):.4f}, log-mel L1 {final.get('log_mel_l1', float('nan')):.4f}, "
        f"train SNR {final.get('snr_db', float('nan')):.2f} dB, code perplexity "
        f"{final.get('ppl1', float('nan')):.0f}/{final.get('ppl2', float('nan')):.0f}",
        f"library encode->decode vs training forward: codes agree {summary['library_path']['code_agreement']:.4f}, "
        f"max |diff| {summary['library_path']['max_abs_diff']:.2e}",
    ]
    if "eval" in summary:
        ev = summary["eval"]
        lines += [
            f"held-out eval on {ev['num_clips']} clips: log10-mel L1 {ev['mel_l1']:.3f}, SNR {ev['snr_db']:.2f} dB, "
            f"code perplexity {' / '.join(f'{p:.0f}' for p in ev['perplexity'])}",
            f"  detector class sequence correct: codec {ev['class_accuracy']:.1%}, "
            f"original {ev.get('original_class_accuracy', float('nan')):.1%}",
            f"  onsets found within {ONSET_TOLERANCE * 1000:.0f} ms: codec {ev['onset_recall']:.1%}, "
            f"original {ev.get('original_onset_recall', float('nan')):.1%}",
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m c3llm.synthfoley.train_codec",
        description="Train a tiny EnCodec codec (2 codebooks x 1024 codes, 75 frames/s, 24 kHz) on freshly "
        "synthesized SynthFoley clips on the CPU, save it with save_pretrained (config.json + model.safetensors) and "
        "evaluate it on held-out clips with SynthFoley's event detector.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="c3llm/synthfoley/codec", help="output folder (replaced atomically)")
    parser.add_argument("--steps", type=int, default=4000, help="number of optimizer steps (the maximum)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training time budget in minutes; stops at --steps or at the budget, whichever is first")
    parser.add_argument("--batch-size", type=int, default=8, help="crops per step")
    parser.add_argument("--crop-seconds", type=float, default=1.0,
                        help="length of each training crop (rounded to 320 samples), cut from 2 s clips")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (betas 0.5, 0.9)")
    parser.add_argument("--warmup-steps", type=int, default=100, help="linear learning-rate warm-up steps")
    parser.add_argument("--quantizer-warmup-steps", type=int, default=300,
                        help="first steps without quantization (autoencoder only); then k-means codebook init")
    parser.add_argument("--kmeans-batches", type=int, default=8,
                        help="batches of encoder outputs the k-means codebook initialisation runs on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training clip stream and of torch")
    parser.add_argument("--num-filters", type=int, default=6, help="EncodecConfig.num_filters (width of the first conv)")
    parser.add_argument("--hidden-size", type=int, default=32, help="EncodecConfig.hidden_size = codebook_dim")
    parser.add_argument("--num-lstm-layers", type=int, default=1, help="EncodecConfig.num_lstm_layers")
    parser.add_argument("--time-weight", type=float, default=0.1, help="weight of the waveform L1 loss")
    parser.add_argument("--warmup-time-weight", type=float, default=1.0,
                        help="weight of the waveform L1 loss during the quantizer warm-up (then ramps to --time-weight)")
    parser.add_argument("--mel-weight", type=float, default=1.0, help="weight of the multi-scale mel L1 + L2 loss")
    parser.add_argument("--log-mel-weight", type=float, default=1.0, help="weight of the multi-scale log-mel L1 loss")
    parser.add_argument("--log-mel-ramp-steps", type=int, default=200,
                        help="steps after the quantizer warm-up over which the log-mel weight rises from 0 to "
                        "--log-mel-weight and the waveform L1 weight moves from --warmup-time-weight to --time-weight")
    parser.add_argument("--envelope-weight", type=float, default=0.0,
                        help="weight of the L1 distance of log short-time energies (10 ms windows, 5 ms hop), which "
                        "keeps transients sharp and noise envelopes smooth; ramps in like the log-mel loss")
    parser.add_argument("--commitment-weight", type=float, default=1.0, help="weight of the VQ commitment loss")
    parser.add_argument("--ema-decay", type=float, default=0.99, help="decay of the codebooks' EMA updates")
    parser.add_argument("--dead-code-steps", type=int, default=20,
                        help="a code not chosen for this many steps is replaced by a random encoder residual of the "
                        "batch")
    parser.add_argument("--boost-classes", nargs="+", default=[], choices=EVENT_CLASSES, metavar="CLASS",
                        help="SynthFoley event classes to over-represent in the training stream (quote names with a "
                        f"space, e.g. --boost-classes chirp 'high beep'; choices: {', '.join(EVENT_CLASSES)})")
    parser.add_argument("--boost-share", type=float, default=0.5,
                        help="with --boost-classes: share of the training crops drawn from clips redrawn until they "
                        "hold one of those classes, cropped so that such an event lies whole inside the crop")
    parser.add_argument("--eval-clips", type=int, default=100, help="held-out clips to evaluate on (0: skip)")
    parser.add_argument("--eval-seed", type=int, default=1234, help="seed of the held-out clips")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is the fastest on a small shared CPU; 0: torch's choice)")
    parser.add_argument("--init-from", default=None, help="continue training a saved codec folder")
    parser.add_argument("--state", default="outputs/train_codec_state.pt",
                        help="training-state file, saved every --save-every steps: an interrupted run started again "
                        "with the same settings resumes from it (deleted at the end; '' disables)")
    parser.add_argument("--save-every", type=int, default=200, help="steps between training-state saves")
    parser.add_argument("--evaluate-only", metavar="FOLDER", default=None,
                        help="skip training: evaluate the codec saved in FOLDER and exit")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*weight_norm.*")
    if args.evaluate_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        model = EncodecModel.from_pretrained(args.evaluate_only)
        result = evaluate(model, num_clips=args.eval_clips or 100, seed=args.eval_seed)
        print(result)
        return result
    summary = train(
        args.out,
        steps=args.steps,
        minutes=args.minutes,
        batch_size=args.batch_size,
        crop_seconds=args.crop_seconds,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        quantizer_warmup_steps=args.quantizer_warmup_steps,
        kmeans_batches=args.kmeans_batches,
        seed=args.seed,
        num_filters=args.num_filters,
        hidden_size=args.hidden_size,
        num_lstm_layers=args.num_lstm_layers,
        time_weight=args.time_weight,
        warmup_time_weight=args.warmup_time_weight,
        mel_weight=args.mel_weight,
        log_mel_weight=args.log_mel_weight,
        log_mel_ramp_steps=args.log_mel_ramp_steps,
        envelope_weight=args.envelope_weight,
        commitment_weight=args.commitment_weight,
        ema_decay=args.ema_decay,
        dead_code_steps=args.dead_code_steps,
        boost_classes=tuple(args.boost_classes),
        boost_share=args.boost_share if args.boost_classes else 0.0,
        eval_clips=args.eval_clips,
        eval_seed=args.eval_seed,
        threads=args.threads,
        progress=not args.no_progress,
        init_from=args.init_from,
        state_path=args.state or None,
        save_every=args.save_every,
    )
    print(_format_summary(summary))
    return summary


if __name__ == "__main__":
    main()
