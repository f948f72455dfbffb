"""Strict event measures: class sequences compared with order and repeats, onsets matched one to one, and the 95%
intervals of the figures.

* `exact_sequence`: the predicted class sequence equals the reference, order and repeats included.
* `same_set`: the two sequences hold the same classes (order and repeats ignored); `holds_all`: every reference class
  occurs in the prediction (extra events pass). Both are lenient and reported beside the strict figure.
* `match_onsets`: the largest one-to-one matching of predicted to reference onsets within a tolerance (each onset is
  used at most once); `onset_scores` sums the matches over clips into precision, recall and F1 (micro average).
* `mismatched`: each clip's reference paired with the prediction of another clip (the next one), the chance level of
  a synchronization score.
* `wilson_interval` (a rate) and `bootstrap_interval` (any statistic of per-clip records, resampled over clips).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

ONSET_TOLERANCE = 0.1  # seconds
Z_95 = 1.959964
T = TypeVar("T")


def exact_sequence(predicted: Sequence[str], reference: Sequence[str]) -> bool:
    """The same classes in the same order, with the same repeats."""
    return list(predicted) == list(reference)


def same_set(predicted: Sequence[str], reference: Sequence[str]) -> bool:
    """The same classes, whatever their order and count."""
    return set(predicted) == set(reference)


def holds_all(predicted: Sequence[str], reference: Sequence[str]) -> bool:
    """Every reference class occurs in the prediction; extra events pass (the lenient measure)."""
    return set(reference) <= set(predicted)


def match_onsets(predicted: Sequence[float], reference: Sequence[float], tolerance: float = ONSET_TOLERANCE) -> int:
    """How many onsets match one to one within `tolerance` seconds: the maximum matching, found by a sweep over both
    sorted lists (on a line, pairing the earliest compatible onsets is optimal)."""
    predicted, reference = sorted(predicted), sorted(reference)
    tolerance += 1e-9  # onsets written with a few decimals: 0.4 - 0.3 is within 0.1
    i = j = matched = 0
    while i < len(predicted) and j < len(reference):
        if abs(predicted[i] - reference[j]) <= tolerance:
            matched, i, j = matched + 1, i + 1, j + 1
        elif predicted[i] < reference[j]:
            i += 1
        else:
            j += 1
    return matched


def onset_counts(
    predicted: Sequence[float], reference: Sequence[float], tolerance: float = ONSET_TOLERANCE
) -> tuple[int, int, int]:
    """(matched, predicted, reference) onset counts of one clip."""
    return match_onsets(predicted, reference, tolerance), len(predicted), len(reference)


def onset_scores(counts: Sequence[tuple[int, int, int]]) -> dict[str, float]:
    """Precision, recall and F1 of the summed `onset_counts` of all clips (0 where undefined)."""
    matched, predicted, reference = (int(sum(c[k] for c in counts)) for k in range(3))
    precision = matched / predicted if predicted else 0.0
    recall = matched / reference if reference else 0.0
    f1 = 2 * matched / (predicted + reference) if predicted + reference else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def mismatched(items: Sequence[T], shift: int = 1) -> list[T]:
    """`items` rotated by `shift`: clip i gets the item of clip i + shift (a pairing where no clip meets its own)."""
    if len(items) < 2:
        raise ValueError("a mismatched pairing needs at least two clips.")
    shift %= len(items)
    if shift == 0:
        raise ValueError("shift must not be a multiple of the number of clips.")
    return list(items[shift:]) + list(items[:shift])


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a rate (95% by default)."""
    if total <= 0:
        raise ValueError("an interval needs at least one trial.")
    rate = successes / total
    center = (rate + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * np.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total))
    low = 0.0 if successes == 0 else max(0.0, center - half)
    return float(low), float(1.0 if successes == total else min(1.0, center + half))


def bootstrap_interval(records: Sequence[Any], statistic: Callable[[Sequence[Any]], float], resamples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:  # fmt: skip
    """Percentile bootstrap interval of `statistic(records)`, resampling the per-clip `records` with replacement."""
    if not len(records):
        raise ValueError("an interval needs at least one record.")
    rng = np.random.default_rng(seed)
    values = [statistic([records[i] for i in rng.integers(0, len(records), len(records))]) for _ in range(resamples)]
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def rate(flags: Sequence[bool]) -> dict[str, Any]:
    """The share of true `flags` with its Wilson 95% interval: `{"value", "ci95", "n"}`."""
    hits, total = int(sum(bool(f) for f in flags)), len(flags)
    return {"value": hits / total, "ci95": list(wilson_interval(hits, total)), "n": total}


def onset_f1(counts: Sequence[tuple[int, int, int]], seed: int = 0) -> dict[str, Any]:
    """Onset precision, recall and F1 of per-clip `onset_counts`, the F1 with its bootstrap 95% interval."""
    scores = onset_scores(counts)
    interval = bootstrap_interval(counts, lambda sample: onset_scores(sample)["f1"], seed=seed)
    return {"value": scores["f1"], "ci95": list(interval), "n": len(counts), "precision": scores["precision"],
            "recall": scores["recall"]}  # fmt: skip


__all__ = [
    "ONSET_TOLERANCE", "bootstrap_interval", "exact_sequence", "holds_all", "match_onsets", "mismatched",
    "onset_counts", "onset_f1", "onset_scores", "rate", "same_set", "wilson_interval",
]  # fmt: skip
