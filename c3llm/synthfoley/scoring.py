"""How outputs on SynthFoley clips are scored, with the clips' true events from the dataset's sidecars.

* Captions (audio-to-text, video-to-caption): the classes a caption names (`parse_caption`) must equal the clip's
  event classes in order, with repeats (`class_sequence_exact`). Lenient, as the demo first measured it: the same set.
* Audio (every audio task): the event detector's class sequence of the generated audio must equal the clip's
  (`class_sequence_exact`); `class_set_same` ignores order and repeats. Lenient: every requested class is detected
  (extra events pass). For video-text-to-audio the classes come from the text alone (the video shows neutral shapes).
* Timing (tasks with a video): generated onsets matched one to one to the visual onsets within 0.1 s give
  `onset_precision`, `onset_recall` and `onset_f1`; `onset_f1_mismatched` scores each clip's audio against the next
  clip's video (the chance level) and `onset_f1_gap` is the difference, both with bootstrap intervals. Lenient: the
  share of generated onsets within 0.1 s of any visual onset.

* Audio prompts (audio-continuation, video-text-audio-to-audio): the generated audio is the continuation alone, its
  time 0 the clip's `prompt_seconds`. Continuation: `continuation_in_prompt_classes` is the share of clips with at
  least one detected event whose detected classes are all among the prompt's classes. Multi-condition, one measure
  per condition: `prompt_class_present` (the prompt's class P is detected: the audio prompt's information),
  `text_class_present` (the text's class T is detected) and the onset measures against the continuation's visual
  onsets (the video's). Each has a `_mismatched` control: the same audio scored against the next clip's prompt
  classes, P, T or video, the chance level.

Rates carry Wilson 95% intervals, F1 figures bootstrap 95% intervals (clips resampled).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from c3llm.metrics import events
from processing_c3llm.processing_c3llm import TASKS

from .event_detector import detect_events
from .synthfoley import parse_caption

# Metric keys -> names, for tables and model cards; those starting with "lenient" are the first, looser measures.
MEASURES = {
    "class_sequence_exact": "Exact class sequence",
    "class_set_same": "Same class set",
    "onset_precision": "Onset precision (0.1 s, one-to-one)",
    "onset_recall": "Onset recall (0.1 s, one-to-one)",
    "onset_f1": "Onset F1 (0.1 s, one-to-one)",
    "onset_f1_mismatched": "Onset F1 vs a mismatched video",
    "onset_f1_gap": "Onset F1 gain over a mismatched video",
    "lenient_class_set": "Lenient: caption names the same class set",
    "lenient_classes_present": "Lenient: requested classes among the detected",
    "lenient_onset_precision": "Lenient: generated onsets near any visual onset",
    "continuation_in_prompt_classes": "Continuation holds only the prompt's classes",
    "continuation_in_prompt_classes_mismatched": "Continuation holds only a mismatched prompt's classes",
    "prompt_class_present": "Audio prompt's class present",
    "prompt_class_present_mismatched": "A mismatched audio prompt's class present",
    "text_class_present": "Text's class present",
    "text_class_present_mismatched": "A mismatched text's class present",
}


def clip_events(data_dir: str | Path, folder: str, split: str) -> dict[str, list[dict]]:
    """The true events (label, onset, duration) of every clip of a layout folder, by media file name."""
    path = Path(data_dir) / folder / f"synthfoley_{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a SynthFoley folder (written by write_synthfoley)?")
    sidecar = json.loads(path.read_text(encoding="utf-8"))
    return {Path(entry["file"]).name: entry["events"] for entry in sidecar.values()}


def clip_entries(data_dir: str | Path, folder: str, split: str) -> dict[str, dict]:
    """The sidecar entries (events, caption and, for audio-prompt clips, `prompt_seconds` and the classes) of every
    clip of a layout folder, by media file name."""
    path = Path(data_dir) / folder / f"synthfoley_{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a SynthFoley folder (written by write_synthfoley)?")
    sidecar = json.loads(path.read_text(encoding="utf-8"))
    return {Path(entry["file"]).name: entry for entry in sidecar.values()}


def row_events(row: dict, truth: dict[str, list[dict]]) -> list[dict]:
    """The true events of a dataset row (found by its video or audio file)."""
    name = Path(row.get("video_path") or row["audio_path"]).name
    if name not in truth:
        raise ValueError(f"clip {row['id']} ({name}) is not in the SynthFoley sidecar.")
    return truth[name]


def _flag_scores(records: list[dict], keys: dict[str, str]) -> tuple[dict[str, float], dict[str, list[float]]]:
    scores, intervals = {}, {}
    for key, field in keys.items():
        result = events.rate([record[field] for record in records])
        scores[key], intervals[key] = result["value"], result["ci95"]
    return scores, intervals


def score_captions(
    rows: list[dict], captions: list[str], truth: dict[str, list[dict]]
) -> tuple[dict, dict, list[dict]]:
    """`(scores, intervals, records)` of generated captions."""
    records = []
    for row, caption in zip(rows, captions, strict=True):
        reference = [event["label"] for event in row_events(row, truth)]
        generated = parse_caption(caption)
        records.append({"id": row["id"], "reference": row.get("caption") or row.get("label"), "generated": caption,
                        "reference_classes": reference, "generated_classes": generated,
                        "exact": events.exact_sequence(generated, reference),
                        "lenient_same_set": events.same_set(generated, reference)})  # fmt: skip
    scores, intervals = _flag_scores(records, {"class_sequence_exact": "exact",
                                               "lenient_class_set": "lenient_same_set"})  # fmt: skip
    return scores, intervals, records


def score_audio(task: str, rows: list[dict], waves: list[np.ndarray], sampling_rate: int,
                truth: dict[str, list[dict]], seed: int = 0) -> tuple[dict, dict, list[dict]]:  # fmt: skip
    """`(scores, intervals, records)` of generated audio: detected classes, and onsets for tasks with a video."""
    records = []
    for row, wave in zip(rows, waves, strict=True):
        true_events = row_events(row, truth)
        reference = [event["label"] for event in true_events]
        detected = detect_events(wave, sampling_rate)
        classes = [event.label for event in detected]
        record = {"id": row["id"], "condition": row.get("caption") or row.get("label"),
                  "reference_classes": reference,
                  "detected_classes": classes, "generated_onsets": [round(e.onset, 4) for e in detected],
                  "exact": events.exact_sequence(classes, reference), "same_set": events.same_set(classes, reference),
                  "lenient_present": events.holds_all(classes, reference)}  # fmt: skip
        if "video" in TASKS[task].inputs:
            record["visual_onsets"] = [round(event["onset"], 4) for event in true_events]
        records.append(record)
    scores, intervals = _flag_scores(records, {"class_sequence_exact": "exact", "class_set_same": "same_set",
                                               "lenient_classes_present": "lenient_present"})  # fmt: skip
    if "video" in TASKS[task].inputs:
        timing, timing_intervals = onset_sync_scores(records, seed)
        scores.update(timing)
        intervals.update(timing_intervals)
    return scores, intervals, records


def onset_sync_scores(records: list[dict], seed: int = 0) -> tuple[dict, dict]:
    """Onset precision/recall/F1 against each clip's own visual onsets and against the next clip's."""
    generated = [record["generated_onsets"] for record in records]
    visual = [record["visual_onsets"] for record in records]
    own = [events.onset_counts(g, v) for g, v in zip(generated, visual)]
    other = [events.onset_counts(g, v) for g, v in zip(generated, events.mismatched(visual))]
    matched, chance = events.onset_f1(own, seed), events.onset_f1(other, seed)

    def gap(pairs):
        return events.onset_scores([p[0] for p in pairs])["f1"] - events.onset_scores([p[1] for p in pairs])["f1"]

    near = sum(any(abs(t - v) <= events.ONSET_TOLERANCE for v in vis)
               for gen, vis in zip(generated, visual, strict=True) for t in gen)
    total = sum(len(gen) for gen in generated)
    scores = {"onset_precision": matched["precision"], "onset_recall": matched["recall"], "onset_f1": matched["value"],
              "onset_f1_mismatched": chance["value"], "onset_f1_gap": matched["value"] - chance["value"],
              "lenient_onset_precision": near / total if total else 0.0}  # fmt: skip
    intervals = {"onset_f1": matched["ci95"], "onset_f1_mismatched": chance["ci95"],
                 "onset_f1_gap": list(events.bootstrap_interval(list(zip(own, other)), gap, seed=seed))}  # fmt: skip
    return scores, intervals


def holds_prompt_classes(detected: list[str], allowed: list[str]) -> bool:
    """At least one detected event, and every detected class among `allowed`."""
    return bool(detected) and set(detected) <= set(allowed)


def _prompt_parts(row: dict, entries: dict[str, dict]) -> tuple[dict, float, list[dict], list[dict]]:
    """A row's sidecar entry, its prompt length and its events before and after it (these shifted to the
    continuation's time)."""
    entry = row_events(row, entries)
    prompt_seconds = float(entry["prompt_seconds"])
    prompt = [event for event in entry["events"] if event["onset"] < prompt_seconds]
    after = [{**event, "onset": event["onset"] - prompt_seconds} for event in entry["events"]
             if event["onset"] >= prompt_seconds]  # fmt: skip
    return entry, prompt_seconds, prompt, after


def continuation_scores(records: list[dict]) -> tuple[dict, dict]:
    """`(scores, intervals)` of continuation records (`detected_classes`, `prompt_classes`): the rate of
    `holds_prompt_classes` against each clip's own prompt classes and against the next clip's."""
    own = [holds_prompt_classes(r["detected_classes"], r["prompt_classes"]) for r in records]
    other_classes = events.mismatched([r["prompt_classes"] for r in records])
    other = [holds_prompt_classes(r["detected_classes"], classes) for r, classes in zip(records, other_classes)]
    scores, intervals = {}, {}
    for key, flags in (("continuation_in_prompt_classes", own), ("continuation_in_prompt_classes_mismatched", other)):
        result = events.rate(flags)
        scores[key], intervals[key] = result["value"], result["ci95"]
    return scores, intervals


def score_continuation(rows: list[dict], waves: list[np.ndarray], sampling_rate: int, entries: dict[str, dict],
                       seed: int = 0) -> tuple[dict, dict, list[dict]]:  # fmt: skip
    """`(scores, intervals, records)` of generated continuations (the audio after each clip's prompt)."""
    records = []
    for row, wave in zip(rows, waves, strict=True):
        entry, prompt_seconds, prompt, after = _prompt_parts(row, entries)
        detected = [event.label for event in detect_events(wave, sampling_rate)]
        prompt_classes = sorted({event["label"] for event in prompt})
        records.append({"id": row["id"], "prompt_seconds": prompt_seconds, "prompt_classes": prompt_classes,
                        "reference_classes": [event["label"] for event in after], "detected_classes": detected,
                        "holds_prompt_classes": holds_prompt_classes(detected, prompt_classes)})  # fmt: skip
    scores, intervals = continuation_scores(records)
    return scores, intervals, records


def multicondition_scores(records: list[dict], seed: int = 0) -> tuple[dict, dict]:
    """`(scores, intervals)` of multi-condition records (`detected_classes`, `prompt_class`, `text_class`,
    `generated_onsets`, `visual_onsets`): per condition its measure and the same against the next clip's condition."""
    scores, intervals = {}, {}
    for key, field in (("prompt_class_present", "prompt_class"), ("text_class_present", "text_class")):
        wanted = [r[field] for r in records]
        for name, classes in ((key, wanted), (f"{key}_mismatched", events.mismatched(wanted))):
            result = events.rate([label in r["detected_classes"] for r, label in zip(records, classes)])
            scores[name], intervals[name] = result["value"], result["ci95"]
    timing, timing_intervals = onset_sync_scores(records, seed)
    return {**scores, **timing}, {**intervals, **timing_intervals}


def score_multicondition(rows: list[dict], waves: list[np.ndarray], sampling_rate: int, entries: dict[str, dict],
                         seed: int = 0) -> tuple[dict, dict, list[dict]]:  # fmt: skip
    """`(scores, intervals, records)` of generated continuations of the multi-condition clips."""
    records = []
    for row, wave in zip(rows, waves, strict=True):
        entry, prompt_seconds, prompt, after = _prompt_parts(row, entries)
        detected = detect_events(wave, sampling_rate)
        records.append({"id": row["id"], "prompt_seconds": prompt_seconds, "text": entry.get("text"),
                        "prompt_class": entry["prompt_class"], "text_class": entry["text_class"],
                        "reference_classes": [event["label"] for event in after],
                        "detected_classes": [event.label for event in detected],
                        "generated_onsets": [round(event.onset, 4) for event in detected],
                        "visual_onsets": [round(event["onset"], 4) for event in after]})  # fmt: skip
    scores, intervals = multicondition_scores(records, seed)
    return scores, intervals, records


# The audio-prompt tasks' scorers: (rows, waves, sampling_rate, sidecar entries by file name, seed) -> results.
PROMPT_SCORERS = {"audio-continuation": score_continuation, "video-text-audio-to-audio": score_multicondition}


__all__ = ["MEASURES", "PROMPT_SCORERS", "clip_entries", "clip_events", "continuation_scores", "holds_prompt_classes",
           "multicondition_scores", "onset_sync_scores", "row_events", "score_audio", "score_captions",
           "score_continuation", "score_multicondition"]
