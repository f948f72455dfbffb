"""The strict SynthFoley measures (`c3llm.metrics.events`, `c3llm.synthfoley.scoring`) on hand-made cases."""

import numpy as np
import pytest

from c3llm.metrics import events
from c3llm.synthfoley import scoring
from c3llm.synthfoley.synthfoley import make_clip


def test_class_sequences_count_order_and_repeats():
    reference = ["chirp", "hum", "chirp"]
    assert events.exact_sequence(["chirp", "hum", "chirp"], reference)
    assert not events.exact_sequence(["chirp", "hum", "chirp", "click train"], reference)  # an extra event
    assert not events.exact_sequence(["chirp", "hum"], reference)  # a missing repeat
    assert not events.exact_sequence(["hum", "chirp", "chirp"], reference)  # reordered
    assert events.same_set(["hum", "chirp"], reference) and events.same_set(["hum", "chirp", "hum"], reference)
    assert not events.same_set(["hum", "chirp", "noise burst"], reference)
    # The lenient measure lets extra events pass, the strict ones do not.
    assert events.holds_all(["chirp", "hum", "noise burst"], reference) and not events.holds_all(["hum"], reference)


def test_onsets_are_matched_one_to_one():
    assert events.match_onsets([0.5], [0.5, 0.55]) == 1  # one generated onset cannot match two visual onsets
    assert events.match_onsets([0.5, 0.52], [0.5]) == 1  # nor two generated onsets one visual onset
    assert events.match_onsets([0.3, 0.55], [0.4, 0.6]) == 2  # the sweep finds the full matching
    assert events.match_onsets([0.0, 0.95], [0.1, 0.85, 1.5], tolerance=0.1) == 2
    assert events.match_onsets([0.5], [0.61]) == 0 and events.match_onsets([], [0.5]) == 0
    scores = events.onset_scores([events.onset_counts([0.5, 0.52, 1.0], [0.5, 1.5])])
    assert scores == {"precision": pytest.approx(1 / 3), "recall": 0.5, "f1": pytest.approx(0.4)}
    assert events.onset_scores([(0, 0, 0)]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_brute_force_agrees_with_the_sweep():
    from itertools import permutations

    rng = np.random.default_rng(0)
    for _ in range(200):
        predicted = list(np.round(rng.uniform(0, 1, rng.integers(0, 5)), 2))
        reference = list(np.round(rng.uniform(0, 1, rng.integers(0, 4)), 2))
        best = 0
        longer, shorter = (predicted, reference) if len(predicted) >= len(reference) else (reference, predicted)
        for order in permutations(range(len(longer)), len(shorter)):
            best = max(best, sum(abs(longer[i] - s) <= 0.1 + 1e-9 for i, s in zip(order, shorter)))
        assert events.match_onsets(predicted, reference) == best


def test_a_mismatched_video_scores_at_chance():
    rng = np.random.default_rng(0)
    clips = [make_clip(rng) for _ in range(300)]
    visual = [[event.onset for event in clip.events] for clip in clips]
    perfect = [{"generated_onsets": v, "visual_onsets": v} for v in visual]
    scores, intervals = scoring.onset_sync_scores(perfect)
    assert scores["onset_f1"] == 1.0 and scores["onset_precision"] == scores["onset_recall"] == 1.0
    # Against the next clip's video the same audio scores what independent clips score: chance.
    independent = [[event.onset for event in make_clip(rng).events] for _ in clips]
    chance = events.onset_scores([events.onset_counts(g, v) for g, v in zip(independent, visual)])["f1"]
    assert abs(scores["onset_f1_mismatched"] - chance) < 0.05 and 0.1 < chance < 0.5
    assert scores["onset_f1_gap"] == pytest.approx(1.0 - scores["onset_f1_mismatched"])
    low, high = intervals["onset_f1_mismatched"]
    assert low < scores["onset_f1_mismatched"] < high and high - low < 0.15
    # Audio whose onsets ignore the video scores the same whatever video it is paired with.
    random_audio = [{"generated_onsets": g, "visual_onsets": v} for g, v in zip(independent, visual)]
    random_scores, _ = scoring.onset_sync_scores(random_audio)
    assert abs(random_scores["onset_f1_gap"]) < 0.06


def test_intervals_cover_the_rate():
    low, high = events.wilson_interval(38, 40)
    assert 0.82 < low < 0.95 < high < 1.0
    assert events.wilson_interval(0, 10)[0] == 0.0 and events.wilson_interval(10, 10)[1] == 1.0
    result = events.rate([True] * 19 + [False])
    assert result["value"] == 0.95 and result["n"] == 20 and result["ci95"][0] < 0.95 < result["ci95"][1]
    with pytest.raises(ValueError, match="at least two clips"):
        events.mismatched([[0.1]])
