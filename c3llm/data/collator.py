"""Data collation for C3LLM training: one batch may mix every task; the processor builds prompts, labels and padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import BatchFeature

from processing_c3llm.processing_c3llm import TASKS, C3LLMProcessor


def example_to_inputs(example: dict[str, Any]) -> dict[str, Any]:
    """One dataset example (see `datasets_c3llm`) -> the processor arguments of its `task`, with its target."""
    task = example.get("task")
    if task not in TASKS:
        raise ValueError(f"Example {example.get('id')!r} has unknown task {task!r}; choose one of {sorted(TASKS)}.")
    needs, output = TASKS[task]
    description = example.get("caption") or example.get("label")  # VGGSound/VAS describe a clip by its label
    inputs: dict[str, Any] = {"task": task}
    if "text" in needs:
        inputs["text"] = example.get("prompt") or description
    if "audio" in needs:
        inputs["audio"] = example.get("audio_path")
    if "video" in needs:
        if example.get("video_features") is not None:
            inputs["video_features"] = np.asarray(example["video_features"], dtype=np.float32)
        else:
            inputs["videos"] = example.get("video_path")
    if "image" in needs:
        inputs["images"] = example.get("image") if example.get("image") is not None else example.get("image_path")
    if output == "text":
        inputs["text_target"] = description
    else:
        if example.get("audio_codes") is None:
            raise ValueError(f"Example {example.get('id')!r} ({task}) has no `audio_codes`; run add_audio_codes first.")
        inputs["audio_codes"] = np.asarray(example["audio_codes"], dtype=np.int64)
    return inputs


@dataclass
class C3LLMDataCollator:
    r"""
    Turns a list of dataset examples, each with its own `task`, into one padded training batch: left-padded
    `input_ids`, `labels` masked (`-100`) on prompts and padding, `audio_codes` padded with `-100`, and the features of
    every modality present.

    With `condition_dropout` > 0, each audio-output example loses its condition (text, video, image) with that
    probability and keeps its target: the unconditional examples classifier-free guidance needs. The draws come from a
    generator seeded with `seed`.
    """

    processor: C3LLMProcessor
    condition_dropout: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}.")
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, examples: list[dict[str, Any]]) -> BatchFeature:
        rows = [example_to_inputs(example) for example in examples]
        keys = sorted({key for row in rows for key in row} - {"task"})
        columns = {key: [row.get(key) for row in rows] for key in keys}
        drop = None
        if self.condition_dropout > 0:
            audio_output = [TASKS[row["task"]][1] == "audio" for row in rows]
            drop = [bool(out and self._rng.random() < self.condition_dropout) for out in audio_output]
        return self.processor(task=[row["task"] for row in rows], return_tensors="pt", drop_condition=drop, **columns)


def with_tasks(dataset, tasks: list[str]):
    """Repeats every example once per task in `tasks` (e.g. an AudioCaps clip serves text-to-audio and audio-to-text)."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"Unknown tasks {unknown}; choose from {sorted(TASKS)}.")

    def expand(batch: dict[str, list]) -> dict[str, list]:
        size = len(next(iter(batch.values())))
        out = {key: [value for value in values for _ in tasks] for key, values in batch.items() if key != "task"}
        out["task"] = [task for _ in range(size) for task in tasks]
        return out

    return dataset.map(expand, batched=True, remove_columns=[c for c in ["task"] if c in (dataset.column_names or [])])


__all__ = ["C3LLMDataCollator", "example_to_inputs", "with_tasks"]
