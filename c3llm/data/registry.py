"""The datasets the application knows, in one table: which loader reads each layout and which tasks it serves.

The tasks themselves (inputs, output) are declared once by the processor (`processing_c3llm.processing_c3llm.TASKS`);
this table only maps datasets to them, and it is not remote code: no model folder ships a dataset list. Training
(`c3llm train --dataset`), evaluation (`c3llm eval --dataset`) and the demo read it. A task's scores go into a model
card's `model-index` under the task's name as `task_type`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from c3llm.data import datasets
from processing_c3llm.processing_c3llm import TASKS

# Inputs that need a clip's video (or a picture of it): such tasks read the video layout of a composite dataset.
VISUAL_INPUTS = frozenset({"video", "image"})


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: `loader` names its `load_*` function in `c3llm.data.datasets` (`None` for a composite of other
    layouts), `train_tasks` are what `c3llm train` trains by default, `eval_tasks` what `c3llm eval` scores (none: not
    an evaluation set). A composite keeps, in sub-folders named after them, an `audio_layout` for the tasks without
    visual input and a `video_layout` for the others."""

    name: str
    loader: str | None
    train_tasks: tuple[str, ...] = ()
    eval_tasks: tuple[str, ...] = ()
    audio_layout: str | None = None
    video_layout: str | None = None

    def layouts(self, tasks: Iterable[str]) -> list[tuple[str, str, list[str]]]:
        """Where each task's clips come from: `(dataset whose loader reads them, sub-folder of the data folder or ""
        for the folder itself, its tasks in the order given)`, one entry per layout that serves any of `tasks`."""
        tasks = list(tasks)
        if self.loader is not None:
            return [(self.name, "", tasks)]
        visual = [task for task in tasks if VISUAL_INPUTS & set(TASKS[task].inputs)]
        parts = ((self.audio_layout, [task for task in tasks if task not in visual]), (self.video_layout, visual))
        return [(layout, layout, part) for layout, part in parts if part]


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("audiocaps", "load_audiocaps", ("text-to-audio", "audio-to-text"), ("audio-to-text", "text-to-audio")),
        DatasetSpec("clotho", "load_clotho", ("text-to-audio", "audio-to-text"), ("audio-to-text",)),
        DatasetSpec("vggsound", "load_vggsound", ("video-to-audio",), ("video-to-audio",)),
        DatasetSpec("vas", "load_vas", ("video-to-audio",), ("video-to-audio",)),
        DatasetSpec("folder", "load_folder", ("text-to-audio",)),
        # SynthFoley (`c3llm.synthfoley.synthfoley.write_synthfoley`): AudioCaps and VGGSound layouts side by side.
        DatasetSpec("synthfoley", None, ("text-to-audio", "audio-to-text", "video-to-audio"),
                    ("audio-to-text", "text-to-audio", "video-to-audio"), audio_layout="audiocaps",
                    video_layout="vggsound"),
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


__all__ = ["DATASETS", "EVAL_DATASETS", "TRAIN_DATASETS", "VISUAL_INPUTS", "DatasetSpec", "loader"]
