"""Data collation for C3LLM training: one batch may mix every task; the processor builds prompts, labels and padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import BatchFeature

from processing_c3llm.processing_c3llm import INPUT_ARGUMENTS, TASKS, C3LLMProcessor, Task


def _description(example: dict[str, Any]) -> str | None:
    return example.get("caption") or example.get("label")  # VGGSound/VAS describe a clip by its label


def _video(example: dict[str, Any]) -> dict[str, Any]:
    if example.get("video_features") is not None:  # precomputed by `add_video_features`
        return {"video_features": np.asarray(example["video_features"], dtype=np.float32)}
    return {"videos": example.get("video_path")}


# Where a dataset example keeps each input kind of `TASKS`: kind -> (example -> {processor argument: value}).
INPUT_COLUMNS = {
    "text": lambda example: {"text": example.get("prompt") or _description(example)},
    "audio": lambda example: {"audio": example.get("audio_path")},
    "video": _video,
    "image": lambda example: {"images": next((example[c] for c in ("image", "image_path") if example.get(c) is not None), None)},
    # EnCodec codes of the clip's head, from `add_audio_codes` on rows with `prompt_seconds` (evaluation encodes them
    # itself: `c3llm.evaluation.with_prompt_codes`)
    "audio_prompt": lambda example: {"audio_prompt_codes": _codes(example.get("audio_prompt_codes"))},
}  # fmt: skip


def _codes(codes: Any) -> np.ndarray | None:
    return None if codes is None else np.asarray(codes, dtype=np.int64)


def task_of(example: dict[str, Any], task: str | None = None) -> Task:
    """The `TASKS` row of `task`, or of the example's own `task` column."""
    task = task or example.get("task")
    if task not in TASKS:
        raise ValueError(f"Example {example.get('id')!r} has unknown task {task!r}; choose one of {sorted(TASKS)}.")
    return TASKS[task]


def example_inputs(example: dict[str, Any], task: str | None = None) -> dict[str, Any]:
    """One dataset example (see `c3llm.data.datasets`) -> the processor arguments of `task` (default: its own), with
    the task but without a target: what generation and evaluation feed the processor."""
    row = task_of(example, task)
    inputs: dict[str, Any] = {"task": row.name}
    for kind in row.inputs:
        inputs.update(INPUT_COLUMNS[kind](example))
    for kind in row.optional:  # an optional input comes from a column of its own name only (not a caption)
        if example.get(INPUT_ARGUMENTS[kind][0]) is not None:
            inputs.update(INPUT_COLUMNS[kind](example))
    return inputs


def batch_inputs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-example processor arguments (from `example_inputs` or `example_to_inputs`) -> one batch of arguments:
    a list per argument with `None` where an example lacks it, and `task` as the list of the examples' tasks."""
    keys = sorted({key for row in rows for key in row} - {"task"})
    return {"task": [row["task"] for row in rows], **{key: [row.get(key) for row in rows] for key in keys}}


def example_to_inputs(example: dict[str, Any]) -> dict[str, Any]:
    """One dataset example (see `c3llm.data.datasets`) -> the processor arguments of its `task`, with its target."""
    row = task_of(example)
    inputs = example_inputs(example)
    if row.output == "text":
        inputs["text_target"] = _description(example)
    else:
        if example.get("audio_codes") is None:
            raise ValueError(f"Example {example.get('id')!r} ({row.name}) has no `audio_codes`; run add_audio_codes first.")
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
        columns = batch_inputs([example_to_inputs(example) for example in examples])
        drop = None
        if self.condition_dropout > 0:
            audio_output = [TASKS[task].output == "audio" for task in columns["task"]]
            drop = [bool(out and self._rng.random() < self.condition_dropout) for out in audio_output]
        return self.processor(return_tensors="pt", drop_condition=drop, **columns)


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


__all__ = ["C3LLMDataCollator", "batch_inputs", "example_inputs", "example_to_inputs", "task_of", "with_tasks"]
