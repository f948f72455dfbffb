"""A DSP sound-event detector for SynthFoley clips: STFT energy onsets and feature-based classification.

Used to score generated audio against the events a caption asks for. It relies on wide frequency bands, spectral
concentration and energy modulation rather than exact frequencies, and its thresholds are relative to each clip's
noise floor, so it tolerates low-pass filtering, added noise, compression and lossy codecs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import get_window

_LEVEL_WINDOW = 0.01  # seconds; short frames keep clicks well above the noise
_SPECTRUM_WINDOW = 0.02  # seconds; longer frames resolve the 110 Hz hum from DC
_HOP = 0.005  # seconds
_QUIET_FRACTION = 0.1  # share of the quietest frames that estimates the noise floor
_MIN_FLOOR_DB = -70.0  # dB re full scale: digital silence does not make every faint sound an event
_HIGH_DB = 5.0  # a segment must rise this far above the noise floor somewhere
_LOW_DB = 2.5  # and spans the frames above this
_MERGE_GAP = 0.06  # seconds; shorter gaps join segments (the clicks of a click train)
_MIN_LENGTH = 0.01  # seconds
_PEAK_SPAN = 0.03  # seconds over which the level used for onset/offset interpolation is taken
_TONE_HALF_BAND = 150.0  # Hz around a frame's spectral peak that counts as "the tone"


@dataclass(frozen=True)
class DetectedEvent:
    """A detected event: its class and its onset and offset in seconds."""

    label: str
    onset: float
    offset: float


def _power_spectrogram(
    audio: np.ndarray, sampling_rate: int, seconds: float, hop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Power spectrogram (frames, bins) of Hann frames centered on multiples of `hop`, and the bin frequencies.

    It is scaled so that a frame's bins sum to about its mean square (a full-scale sine gives 0.5)."""
    taper = get_window("hann", round(seconds * sampling_rate))
    n_fft = 2 ** int(np.ceil(np.log2(len(taper))) + 1)
    padded = np.pad(audio, len(taper) // 2, mode="reflect")
    frames = sliding_window_view(padded, len(taper))[::hop] * taper
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 * (2 / (n_fft * np.sum(taper**2)))
    return power, np.fft.rfftfreq(n_fft, 1 / sampling_rate)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index pairs of the True runs of a boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def _segments(level: np.ndarray, hop: float) -> list[tuple[int, int]]:
    """Hysteresis segmentation of the frame level (ratio to the noise floor); close segments are merged."""
    high, low = 10 ** (_HIGH_DB / 10), 10 ** (_LOW_DB / 10)
    merged: list[list[int]] = []
    for start, stop in _runs(level > low):
        if level[start:stop].max() <= high:
            continue
        if merged and (start - merged[-1][1]) * hop < _MERGE_GAP:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return [(start, stop) for start, stop in merged]


def _crossing(excess: np.ndarray, start: int, stop: int, span: int) -> tuple[float, float]:
    """Sub-frame positions where the excess energy crosses half of its level within `span` frames of each end."""
    half = 0.5 * excess[start : min(stop, start + span)].max()
    k = start + int(np.argmax(excess[start:stop] >= half))
    onset = k - 1 + _fraction(excess[k - 1], excess[k], half) if k > 0 else float(k)
    half = 0.5 * excess[max(start, stop - span) : stop].max()
    k = stop - 1 - int(np.argmax(excess[start:stop][::-1] >= half))
    offset = k + 1 - _fraction(excess[k + 1], excess[k], half) if k + 1 < len(excess) else float(k)
    return onset, offset


def _fraction(low: float, high: float, value: float) -> float:
    """Where `value` lies between `low` and `high`, clipped to [0, 1]."""
    return float(np.clip((value - low) / (high - low), 0.0, 1.0)) if high > low else 1.0


def _classify(power: np.ndarray, floor: np.ndarray, freqs: np.ndarray, excess: np.ndarray, hop: float) -> str:
    """Class of one segment from its spectra (frames, bins), the per-bin noise floor and its frame excess energy."""
    strong = excess >= 0.25 * excess.max()
    spectra = np.maximum(power[strong] - 2 * floor, 0.0)[:, freqs >= 50.0]
    freqs = freqs[freqs >= 50.0]
    peaks = freqs[np.argmax(spectra, axis=1)]
    in_band = np.abs(freqs[None, :] - peaks[:, None]) <= _TONE_HALF_BAND
    concentration = (spectra * in_band).sum(axis=1) / np.maximum(spectra.sum(axis=1), 1e-30)
    if np.median(concentration) < 0.5:  # broadband: clicks come as separate energy peaks
        above = excess >= 0.3 * excess.max()
        num_peaks = int(np.count_nonzero(np.diff(above.astype(np.int8)) == 1)) + int(above[0])
        return "click train" if num_peaks >= 3 else "noise burst"
    tonal = concentration >= 0.5
    times, track = np.flatnonzero(strong)[tonal] * hop, peaks[tonal]
    spread = np.percentile(track, 90) - np.percentile(track, 10)
    slope = np.polyfit(times, track, 1)[0] if len(track) > 2 else 0.0
    if spread > 600.0 and slope > 1000.0:  # Hz, Hz/s: a rising sweep
        return "chirp"
    frequency = np.median(track)
    if frequency < 300.0:
        return "hum"
    if frequency < 1000.0:
        return "low beep"
    if frequency < 2800.0:
        return "high beep"
    return "chirp"


def detect_events(audio: np.ndarray, sampling_rate: int) -> list[DetectedEvent]:
    """Detects and classifies the sound events of a mono clip; events in onset order, times in seconds.

    Frames louder than the clip's noise floor (estimated from its quietest frames) by a few dB form segments; each
    segment's onset/offset is where its energy crosses half of its level, and its class comes from the spectral
    concentration around the frame peaks (tonal or not), the peak-frequency track (slope, band) and, for broadband
    sounds, the number of separate energy peaks.
    """
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    if len(audio) <= round(_SPECTRUM_WINDOW * sampling_rate):
        return []
    hop_samples = max(1, round(_HOP * sampling_rate))
    hop = hop_samples / sampling_rate
    energy = _power_spectrogram(audio, sampling_rate, _LEVEL_WINDOW, hop_samples)[0].sum(axis=1)
    power, freqs = _power_spectrogram(audio, sampling_rate, _SPECTRUM_WINDOW, hop_samples)
    quiet = energy <= np.quantile(energy, _QUIET_FRACTION)
    floor = power[quiet].mean(axis=0)
    floor_energy = max(energy[quiet].mean(), 10 ** (_MIN_FLOOR_DB / 10))
    excess = energy - floor_energy
    span = max(1, round(_PEAK_SPAN / hop))
    events = []
    for start, stop in _segments(energy / floor_energy, hop):
        onset, offset = _crossing(excess, start, stop, span)
        if (offset - onset) * hop < _MIN_LENGTH:
            continue
        label = _classify(power[start:stop], floor, freqs, excess[start:stop], hop)
        events.append(DetectedEvent(label, max(0.0, onset * hop), offset * hop))
    return events


def event_classes(audio: np.ndarray, sampling_rate: int) -> list[str]:
    """Labels of the detected events in onset order."""
    return [event.label for event in detect_events(audio, sampling_rate)]


def onsets(audio: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Onset times in seconds of the detected events."""
    return np.array([event.onset for event in detect_events(audio, sampling_rate)], dtype=np.float64)
