"""The datasets the application knows, in one table: which loader reads each layout and which tasks it serves.

The tasks themselves (inputs, output) are declared once by the processor (`processing_c3llm.processing_c3llm.TASKS`);
this table only maps datasets to them, and it is not remote code: no model folder ships a dataset list. Training
(`c3llm train --dataset`), evaluation (`c3llm eval --dataset`) and the demo read it. A task's scores go into a model
card's `model-index` under the task's name as `task_type`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from c3llm.data import datasets
from c3llm.synthfoley.synthfoley import PROMPT_SECONDS
from processing_c3llm.processing_c3llm import TASKS


@dataclass(frozen=True)
class Layout:
    """One folder of a dataset: `folder` under the data folder ("" for the folder itself) is read by the loader of
    the dataset `reader`, with the keyword `options`, for `tasks`."""

    folder: str
    reader: str
    tasks: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)

    def load(self, root: str | os.PathLike, split: str, **kwargs: Any):
        """`(dataset, report)` of this layout's `split` under the data folder `root`."""
        return loader(self.reader)(Path(root) / self.folder, split, **self.options, **kwargs)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: `loader` names its `load_*` function in `c3llm.data.datasets` (`None` for a composite of other
    layouts, listed in `parts`), `train_tasks` are what `c3llm train` trains by default, `eval_tasks` what
    `c3llm eval` scores (none: not an evaluation set)."""

    name: str
    loader: str | None
    train_tasks: tuple[str, ...] = ()
    eval_tasks: tuple[str, ...] = ()
    parts: tuple[Layout, ...] = ()

    def layouts(self, tasks: Iterable[str]) -> list[Layout]:
        """Where the clips of `tasks` come from: one `Layout` per folder that serves any of them, holding those of
        `tasks` it serves, in the order given."""
        tasks = list(tasks)
        if self.loader is not None:
            return [Layout("", self.name, tuple(tasks))]
        served = {task for part in self.parts for task in part.tasks}
        if missing := [task for task in tasks if task not in served]:
            raise ValueError(f"{self.name} has no clips for {missing}; it serves {sorted(served)}.")
        chosen = [replace(part, tasks=tuple(t for t in tasks if t in part.tasks)) for part in self.parts]
        return [part for part in chosen if part.tasks]

    def layout(self, task: str) -> Layout:
        """The one layout whose clips `task` uses."""
        [part] = self.layouts([task])
        return part


# SynthFoley (`c3llm.synthfoley.synthfoley.write_synthfoley`): the same clips as audio (AudioCaps layout), as videos
# of class shapes with a picture of their events (VGGSound layout) and as videos of class-neutral shapes, where only
# the text can give the classes (VGGSound layout); and clips of their own whose first PROMPT_SECONDS are an audio
# prompt (rows with `prompt_seconds`): continuations of a class palette (AudioCaps layout) and the multi-condition
# clips, a class-neutral video, a text naming one class and a prompt of another (VGGSound layout).
SYNTHFOLEY_TASKS = tuple(TASKS)
SYNTHFOLEY_PARTS = (
    Layout("audiocaps", "audiocaps", ("text-to-audio", "audio-to-text")),
    Layout("vggsound", "vggsound", ("video-to-audio", "video-to-caption", "image-to-audio", "image-text-to-audio"),
           {"image_template": "image/{youtube_id}.png"}),
    Layout("neutral", "vggsound", ("video-text-to-audio",)),
    Layout("continuation", "audiocaps", ("audio-continuation",), {"prompt_seconds": PROMPT_SECONDS}),
    Layout("multicondition", "vggsound", ("video-text-audio-to-audio",), {"prompt_seconds": PROMPT_SECONDS}),
)  # fmt: skip

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("audiocaps", "load_audiocaps", ("text-to-audio", "audio-to-text"), ("audio-to-text", "text-to-audio")),
        DatasetSpec("clotho", "load_clotho", ("text-to-audio", "audio-to-text"), ("audio-to-text",)),
        DatasetSpec("vggsound", "load_vggsound", ("video-to-audio",), ("video-to-audio",)),
        DatasetSpec("vas", "load_vas", ("video-to-audio",), ("video-to-audio",)),
        DatasetSpec("folder", "load_folder", ("text-to-audio",)),
        DatasetSpec("synthfoley", None, SYNTHFOLEY_TASKS, SYNTHFOLEY_TASKS, SYNTHFOLEY_PARTS),
    )
}  # fmt: skip
TRAIN_DATASETS = [name for name, spec in DATASETS.items() if spec.train_tasks]
EVAL_DATASETS = [name for name, spec in DATASETS.items() if spec.eval_tasks]


def loader(name: str) -> Callable:
    """The `load_*` function of `c3llm.data.datasets` that reads the layout `name`."""

    spec = DATASETS.get(name)
    if spec is None or spec.loader is None:
        raise ValueError(f"No loader reads the layout {name!r}; layouts: {[n for n, s in DATASETS.items() if s.loader]}.")
    return getattr(datasets, spec.loader)


__all__ = ["DATASETS", "EVAL_DATASETS", "TRAIN_DATASETS", "DatasetSpec", "Layout", "loader"]
