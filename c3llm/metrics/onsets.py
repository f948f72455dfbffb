"""Audio-video synchronization metrics of the paper (Table 2): "# onset accuracy" and "onset AP" as CondFoleyGen
(Du et al. 2023, `predict_onset.py`) defines them, on 22.05 kHz audio.

* Onsets are found by `librosa.onset.onset_detect(delta=0.3)` in the reference and in the generated audio.
* **# onset accuracy**: the share of clips whose generated audio has exactly as many onsets as the reference.
* **onset AP**: per clip, each generated onset gets a confidence, the largest min-max-normalized |amplitude| within
  ±0.05 s; generated onsets closer than 0.05 s to a more confident one are suppressed. Reference onsets are taken in
  order; each is matched to the remaining generated onset within 0.1 s (strictly) with the largest amplitude at its
  sample (label 1, score = its confidence) or, if none is within 0.1 s, counts as a miss (label 1, score 0); matching
  stops once every generated onset is used. Unmatched generated onsets are false alarms (label 0, score = their
  confidence). AP is scikit-learn's `average_precision_score` of these labels and scores, averaged over clips.
* **onset detection accuracy**: matched reference onsets / reference onsets, averaged over clips.

Where CondFoleyGen's script is undefined we chose: confidence windows are clipped at the clip's start (the script
would slice from a negative index); a clip with neither reference nor generated onsets has AP 1; a clip with
generated but no reference onsets, or reference but no generated onsets, has AP 0 (scikit-learn would return 1 for
the latter, all labels being positive).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from processing_c3llm.media_c3llm import resample

SAMPLING_RATE = 22050
TOLERANCE = 0.1  # seconds: a generated onset closer than this to a reference onset detects it
CONFIDENCE_WINDOW = 0.05  # seconds either side of an onset for its confidence
NMS_WINDOW = 0.05  # seconds
ONSET_DELTA = 0.3  # librosa peak-picking threshold used by CondFoleyGen


def detect_onsets(waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Onset sample indices at 22.05 kHz of a mono waveform, by librosa's spectral-flux detector (delta 0.3)."""
    import librosa

    audio = np.asarray(waveform, dtype=np.float64).reshape(-1)
    if audio.size == 0 or not np.isfinite(audio).all():
        raise ValueError("the waveform is empty or holds NaN/infinite values.")
    audio = resample(audio, sampling_rate, SAMPLING_RATE).astype(np.float32)
    return librosa.onset.onset_detect(y=audio, sr=SAMPLING_RATE, units="samples", delta=ONSET_DELTA).astype(np.int64)


def _confidence(envelope: np.ndarray, onset: int, half_window: int) -> float:
    return float(np.max(envelope[max(0, onset - half_window) : onset + half_window]))


def _suppress(onsets: np.ndarray, envelope: np.ndarray, half_window: int, window: int) -> list[int]:
    """Non-maximum suppression: keeps the most confident onsets, dropping others closer than `window` samples."""
    confidences = [_confidence(envelope, int(o), half_window) for o in onsets]
    remaining = [int(o) for o in onsets]
    kept = []
    for index in np.argsort(confidences, kind="stable")[::-1]:
        onset = int(onsets[index])
        if onset not in remaining:
            continue
        kept.append(onset)
        remaining = [o for o in remaining if o != onset and abs(o - onset) >= window]
    return sorted(kept)


def clip_onset_scores(
    reference_onsets: Sequence[int], generated_onsets: Sequence[int], generated_audio: np.ndarray,
    tolerance: float = TOLERANCE,
) -> dict[str, float]:  # fmt: skip
    """CondFoleyGen's per-clip scores from onset sample indices at 22.05 kHz and the generated audio at 22.05 kHz:
    `count_match` (1.0 if the onset counts agree), `detection_accuracy` and `ap`."""
    from sklearn.metrics import average_precision_score

    reference = np.asarray(reference_onsets, dtype=np.int64).reshape(-1)
    generated = np.asarray(generated_onsets, dtype=np.int64).reshape(-1)
    audio = np.abs(np.asarray(generated_audio, dtype=np.float64).reshape(-1))
    if len(generated) and (generated.min() < 0 or generated.max() >= len(audio)):
        raise ValueError("generated onsets must be sample indices inside the generated audio.")
    span = audio.max() - audio.min() if audio.size else 0.0
    envelope = (audio - audio.min()) / span if span > 0 else np.zeros_like(audio)
    half_window, window = round(CONFIDENCE_WINDOW * SAMPLING_RATE), round(NMS_WINDOW * SAMPLING_RATE)
    count_match = float(len(reference) == len(generated))
    kept = _suppress(generated, envelope, half_window, window)
    unused = list(kept)
    labels, scores, hits = [], [], 0
    for onset in reference:
        if not unused:
            break
        near = [o for o in unused if abs(o - onset) < tolerance * SAMPLING_RATE]
        labels.append(1)
        if not near:
            scores.append(0.0)
            continue
        match = near[int(np.argmax([envelope[o] for o in near]))]
        hits += 1
        scores.append(_confidence(envelope, match, half_window))
        unused.remove(match)
    labels += [0] * len(unused)
    scores += [_confidence(envelope, o, half_window) for o in unused]
    if not len(reference):
        ap = 1.0 if not len(kept) else 0.0
    elif not len(kept):
        ap = 0.0
    else:
        ap = float(average_precision_score(labels, scores)) if 0 in labels else 1.0
    accuracy = hits / len(reference) if len(reference) else 0.0
    return {"count_match": count_match, "detection_accuracy": accuracy, "ap": ap}


def onset_metrics(
    generated: Sequence[np.ndarray], references: Sequence[np.ndarray], sampling_rate: int,
    tolerance: float = TOLERANCE,
) -> dict[str, float]:  # fmt: skip
    """Corpus scores of paired generated and reference waveforms (mono, at `sampling_rate`): `onset_accuracy`
    (CondFoleyGen's "# onset acc"), `onset_ap` and `onset_detection_accuracy`, each the mean over clips."""
    if len(generated) != len(references) or not len(generated):
        raise ValueError(f"give one reference per generated clip (got {len(generated)} and {len(references)}), "
                         "and at least one.")  # fmt: skip
    per_clip = []
    for gen, ref in zip(generated, references):
        audio = resample(np.asarray(gen, dtype=np.float64).reshape(-1), sampling_rate, SAMPLING_RATE)
        per_clip.append(clip_onset_scores(detect_onsets(ref, sampling_rate), detect_onsets(gen, sampling_rate),
                                          audio, tolerance))  # fmt: skip
    return {
        "onset_accuracy": float(np.mean([c["count_match"] for c in per_clip])),
        "onset_ap": float(np.mean([c["ap"] for c in per_clip])),
        "onset_detection_accuracy": float(np.mean([c["detection_accuracy"] for c in per_clip])),
    }
