"""Training recipes for C3LLM (arXiv 2405.16136): stage 1 (LoRA + acoustic vocabulary + projectors, Eq. 1),
stage 2 (the NAR head, Eq. 2) and stage 3 (the masked decoder of `decoding="masked"`), on the transformers `Trainer`.

    c3llm train c3llm/recipes/stage1.yaml                    # a YAML or JSON config ...
    c3llm train c3llm/recipes/stage1.yaml --max_steps 100    # ... with flags overriding it
    c3llm train --model_name_or_path models/tiny --dataset synthfoley --data_dir data/sf --output_dir runs/s1
    accelerate launch --config_file c3llm/recipes/accelerate_ddp.yaml \
        -m c3llm.training c3llm/recipes/stage1.yaml   # several GPUs (DDP or FSDP)

Stage 1 saves `output_dir/adapter` (the PEFT adapter) and `output_dir/merged` (a complete model folder with its
processor, loadable with `AutoModel.from_pretrained(..., trust_remote_code=True)`); stages 0, 2 and 3 save
`output_dir/merged`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging

from c3llm.data import datasets as data
from c3llm.data import registry
from c3llm.data.collator import C3LLMDataCollator, with_tasks
from c3llm.synthfoley.synthfoley import write_synthfoley
from conversion.build_c3llm import save_folder
from conversion.hub_c3llm import merge_adapter
from conversion.model_card import render_model_card
from modeling_c3llm import C3LLMForConditionalGeneration
from processing_c3llm.media_c3llm import write_text
from processing_c3llm.processing_c3llm import TASKS

from .sharded import INCOMPLETE_PREFIX, ShardedTrainer, checkpoint_problem, last_complete_checkpoint, world
from .token_rows import use_efficient_trainable_tokens

logger = logging.get_logger(__name__)


PROG = "c3llm train"
LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROJECTORS = ["audio_projector", "video_projector", "image_projector"]


# ---- arguments --------------------------------------------------------------------------------------------------
@dataclass
class ModelArguments:
    """Which model to train and how (paper section 3.2: stage 1, section 3.3: stage 2)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A C3LLM model folder (from `c3llm build`, or a stage-1 `merged` folder)."}
    )
    stage: int = field(
        default=1,
        metadata={
            "help": "1: LoRA on the LLM, the new token rows and the projectors (Eq. 1), and the masked decoder if the "
            "model has one. 2: the NAR head only (Eq. 2). 3: the masked decoder only (masked-token loss, cosine "
            "masking-ratio schedule; the LLM frozen), added first to a model without one. 0: everything but the "
            "frozen encoders and codec, jointly, for a small backbone trained from scratch such as the demo's.",
            "choices": [0, 1, 2, 3],
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (stage 1)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (stage 1)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA inputs (stage 1)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGET_MODULES),
        metadata={"help": "Linear layers of the language model that get LoRA (only names inside `language_model`)."},
    )
    adapter_path: str | None = field(
        default=None,
        metadata={
            "help": "A stage-1 adapter folder. Stage 1: continue training it. Stages 2 and 3: merge it into the model "
            "first."
        },
    )
    masked_decoder_layers: int | None = field(
        default=None,
        metadata={
            "help": "Stage 3 on a model without a masked decoder: its number of layers (width, heads and MLP are the "
            "NAR head's; default: the NAR head's layers too)."
        },
    )
    standardize_features: bool = field(
        default=True,
        metadata={
            "help": "Stages 0 and 1: before training, fit each projector's input standardization (per-channel mean and "
            "std of the frozen encoder's features) on --standardize_examples training examples. Projectors already "
            "standardized (a model trained before) keep theirs."
        },
    )
    standardize_examples: int = field(
        default=256, metadata={"help": "How many training examples (a seeded random sample) --standardize_features reads."}
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Weights dtype when loading (mixed precision is `--bf16`); float32 keeps fp32 master weights.",
            "choices": ["float32", "bfloat16", "float16", "auto"],
        },
    )
    save_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the saved merged folder (e.g. bfloat16: half the size, loads in bf16 with "
            "dtype='auto'); default: the training dtype.",
            "choices": ["float32", "bfloat16", "float16"],
        },
    )


@dataclass
class DataArguments:
    """Which data to train and evaluate on (loaded by `c3llm.data.datasets`)."""

    dataset: str | None = field(
        default=None, metadata={"help": "The dataset layout under --data_dir.", "choices": registry.TRAIN_DATASETS}
    )
    data_dir: str | None = field(default=None, metadata={"help": "Root folder of the dataset."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split to evaluate on (none: no evaluation data)."})
    tasks: list[str] | None = field(
        default=None,
        metadata={"help": f"Tasks to train, each clip once per task (default per dataset). Choices: {sorted(TASKS)}."},
    )
    max_train_examples: int | None = field(default=None, metadata={"help": "Keep at most this many training clips."})
    max_eval_examples: int | None = field(default=None, metadata={"help": "Keep at most this many evaluation clips."})
    precompute_video_features: bool = field(
        default=True,
        metadata={"help": "Run the frozen vision encoder over the videos once, before training (else in every step)."},
    )
    condition_dropout: float = field(
        default=0.0,
        metadata={"help": "Probability that a training example with an audio output loses its condition (text, video, "
                  "image), so that the model also learns unconditional audio for classifier-free guidance "
                  "(`generate(guidance_scale=...)`). Evaluation batches keep every condition."},
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})
    preprocessing_batch_size: int = field(default=8, metadata={"help": "Batch size of the codec/encoder passes."})
    cache_dir: str | None = field(default=None, metadata={"help": "Cache of the loaded and preprocessed datasets."})


@dataclass
class C3LLMTrainingArguments(TrainingArguments):
    """`TrainingArguments` with C3LLM's defaults: bf16 only where a CUDA GPU supports it, raw columns kept for the
    collator, loss-only evaluation and `find_unused_parameters` on (a batch need not use every projector)."""

    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision (default: on when a CUDA GPU supports it, else off)."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False: the collator needs them."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation gathers losses, not logits."})
    ddp_find_unused_parameters: bool | None = field(
        default=True, metadata={"help": "DDP: allow parameters without gradient (projectors of absent modalities)."}
    )
    fsdp2: bool = field(default=False, metadata={"help": "Shard with PyTorch's FSDP2 under torchrun (2+ processes; "
                                                 "gloo on the CPU, NCCL on GPUs); needs --global_batch_size."})
    global_batch_size: int | None = field(default=None, metadata={
        "help": "--fsdp2: examples per optimiser step over all processes (per process: it / processes / accumulation)."})

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bool(
                not self.use_cpu and not self.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            )
        if self.label_names is None:
            self.label_names = ["labels"]
        if self.ddp_backend and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            # accelerate would try to join a process group that a single process never starts; one config serves both.
            self.ddp_backend = None
        super().__post_init__()


# ---- model ------------------------------------------------------------------------------------------------------
def load_model_and_processor(model_args: ModelArguments) -> tuple[C3LLMForConditionalGeneration, Any]:
    """Loads a C3LLM folder (model and processor); in stage 2 merges `adapter_path` into it first."""
    from transformers import AutoProcessor

    import processing_c3llm  # noqa: F401  (registers the processor with AutoProcessor)

    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required: a C3LLM model folder (see `c3llm build`).")
    dtype = _dtype(model_args)
    if model_args.stage in (2, 3) and model_args.adapter_path:
        model = merge_adapter(model_args.model_name_or_path, model_args.adapter_path, dtype=dtype)
    else:
        model = C3LLMForConditionalGeneration.from_pretrained(model_args.model_name_or_path, dtype=dtype)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    return model, processor


def _saved_dtype(model: C3LLMForConditionalGeneration, model_args: ModelArguments) -> C3LLMForConditionalGeneration:
    """The trained model in `--save_dtype` (cast in place: training is over), or as it is."""
    return model if model_args.save_dtype is None else model.to(getattr(torch, model_args.save_dtype))


def _dtype(model_args: ModelArguments) -> Any:
    return model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)


def trainable_parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameters per group (LoRA, new token rows, projectors, NAR head, other) and in total."""
    counts = {"lora": 0, "token_rows": 0, "projectors": 0, "nar_head": 0, "masked_decoder": 0, "other": 0}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_" in name:
            group = "lora"
        elif "trainable_tokens_delta" in name:
            group = "token_rows"
        elif any(projector in name for projector in PROJECTORS):
            group = "projectors"
        elif "nar_head" in name:
            group = "nar_head"
        elif "masked_decoder" in name:
            group = "masked_decoder"
        else:
            group = "other"
        counts[group] += param.numel()
    counts["trainable"] = sum(counts.values())
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def prepare_model(model: C3LLMForConditionalGeneration, model_args: ModelArguments) -> torch.nn.Module:
    r"""
    Sets up what trains. Stage 1 (paper 3.2) returns a `PeftModel`: LoRA on the language model's attention and MLP
    projections, the acoustic/special token rows of the (tied) embedding through PEFT's `trainable_token_indices`
    (run by `EfficientTrainableTokens`), the projectors fully trained (`modules_to_save`), and the NAR loss weight 0
    (Eq. 1, plus the masked loss with the masked decoder trained too if the model has one). Stage 2 (paper 3.3)
    returns the model with everything frozen except `nar_head` (Eq. 2). Stage 3 trains the masked decoder alone on the
    frozen LLM's prompt states (adding one to a model without: `masked_decoder_layers`). Stage 0 trains all but the
    encoders and codec jointly (a backbone from scratch). Encoders and codec stay frozen in every stage.
    """
    config = model.config
    model.requires_grad_(False)
    if model_args.stage == 1:
        from peft import LoraConfig, PeftModel, get_peft_model
        from peft.utils.other import TrainableTokensWrapper

        config.nar_loss_weight = 0.0  # Eq. 1 only; run_training restores the weight in the saved model
        if model_args.adapter_path:
            model = PeftModel.from_pretrained(model, model_args.adapter_path, is_trainable=True)
        else:
            targets = "|".join(sorted(set(model_args.lora_target_modules)))
            new_rows = list(range(config.acoustic_token_offset, config.text_config.vocab_size))
            # Tied embeddings (Gemma): PEFT wraps the tied lm_head with the same trainable rows. Untied: both layers.
            token_rows = {"embed_tokens": new_rows}
            if not config.tie_word_embeddings:
                token_rows["lm_head"] = new_rows
            lora_config = LoraConfig(
                r=model_args.lora_r,
                lora_alpha=model_args.lora_alpha,
                lora_dropout=model_args.lora_dropout,
                target_modules=rf"language_model\..*\.({targets})",  # never the vision/audio encoders' layers
                trainable_token_indices=token_rows,
                modules_to_save=PROJECTORS + (["masked_decoder"] if model.masked_decoder is not None else []),
            )
            model = get_peft_model(model, lora_config)
        use_efficient_trainable_tokens(model)  # same parameters and files, the backward pass skips frozen rows
        if not isinstance(model.get_output_embeddings(), TrainableTokensWrapper):
            raise RuntimeError(
                "PEFT did not wrap lm_head with the trainable token rows, so the new rows would train in the input "
                "embedding only; C3LLMForConditionalGeneration needs `_tied_weights_keys = {}` for PEFT to find the "
                "tie."
            )
    elif model_args.stage == 0:
        model.requires_grad_(True)
    elif model_args.stage == 2:
        if model.nar_head is None:
            raise ValueError("Stage 2 trains the NAR head, but this model has num_codebooks=1 and no NAR head.")
        model.nar_head.requires_grad_(True)
        config.masked_loss_weight = 0.0  # the NAR loss only; run_training restores the weight in the saved model
    elif model_args.stage == 3:
        if model.masked_decoder is None:
            model.add_masked_decoder(model_args.masked_decoder_layers)
        model.masked_decoder.requires_grad_(True)
    else:
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {model_args.stage}.")
    model.freeze_encoders()  # (a PeftModel forwards the call) frozen and in eval mode
    counts = trainable_parameter_counts(model)
    parts = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k not in ("trainable", "total") and v)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"Stage {model_args.stage}: {counts['trainable']:,} trainable of {counts['total']:,} parameters "
            f"({100 * counts['trainable'] / max(counts['total'], 1):.2f}%): {parts}"
        )
    return model


# ---- data -------------------------------------------------------------------------------------------------------
def _video_task(task: str) -> bool:
    return "video" in TASKS[task].inputs


def _describe(report: Any) -> str:
    return report.summary() if hasattr(report, "summary") else str(report)


def _stage_report(stage: str, dataset: str, report: Any) -> dict[str, Any]:
    return {"stage": stage, "dataset": dataset, **report.to_dict()}


def _prepare_split(data, layout: registry.Layout, root: Path, split: str, limit: int | None, model, processor,
                   data_args: DataArguments):
    """Loads one split of `layout` under the data folder `root`, keeps `limit` clips, adds what its tasks need (codec
    codes, video features), expands tasks. Returns the dataset and what happened to its clips: the report of the
    loader and of each preprocessing step."""
    name, tasks = layout.reader, list(layout.tasks)
    dataset, report = layout.load(root, split, **({"cache_dir": data_args.cache_dir} if data_args.cache_dir else {}))
    print(_describe(report))
    part = {"dataset": name, "total": report.total, "left_out": 0, "stages": [_stage_report("load", name, report)]}
    if limit is not None:
        part["left_out"] = max(len(dataset) - limit, 0)
        dataset = dataset.select(range(min(limit, len(dataset))))
    steps = []
    if any(TASKS[task].output == "audio" for task in tasks):
        steps.append(data.add_audio_codes)  # the targets: EnCodec codes of the clip's audio
    if data_args.precompute_video_features and any(_video_task(task) for task in tasks):
        steps.append(data.add_video_features)  # the frozen vision encoder's per-frame features
    for step in steps:
        dataset, step_report = step(dataset, model, processor, batch_size=data_args.preprocessing_batch_size,
                                    num_proc=data_args.preprocessing_num_workers)
        print(_describe(step_report))  # the report names its step
        part["stages"].append(_stage_report(step.__name__, name, step_report))
    part["kept"] = len(dataset)
    return with_tasks(dataset, tasks), part


def _split_report(split: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One split's clips over its dataset parts: listed (`total`), `kept` for training, `skipped` files (each with the
    stage that dropped it) and `left_out` by --max_*_examples; `stages` holds every step's own report."""
    stages = [stage for part in parts for stage in part["stages"]]
    skipped = [{"stage": stage["stage"], **entry} for stage in stages for entry in stage["skipped"]]
    return {"split": split, "total": sum(part["total"] for part in parts), "kept": sum(part["kept"] for part in parts),
            "skipped": skipped, "left_out": sum(part["left_out"] for part in parts), "stages": stages}


def load_datasets(data_args: DataArguments, model, processor, training_args: TrainingArguments | None = None,
                  reports: dict[str, Any] | None = None):
    """The training and evaluation datasets of `data_args` (evaluation: `None` without `eval_split`). A `reports`
    dict receives, under "train" and "eval", what happened to each split's clips (see `_split_report`)."""
    from datasets import concatenate_datasets

    if data_args.dataset is None or data_args.data_dir is None:
        raise ValueError("Give --dataset and --data_dir (or pass train_dataset to run_training).")
    spec = registry.DATASETS[data_args.dataset]
    tasks = list(data_args.tasks or spec.train_tasks)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"Unknown tasks {unknown}; choose from {sorted(TASKS)}.")
    root = Path(data_args.data_dir)
    if data_args.dataset == "synthfoley":
        # Procedural data in the AudioCaps and VGGSound layouts: generated on first use, then reused.
        if not all((root / part.folder).is_dir() for part in spec.parts):
            write_synthfoley(root)
    elif not root.is_dir():
        raise FileNotFoundError(f"--data_dir {root} does not exist.")
    parts = spec.layouts(tasks)

    reports = {} if reports is None else reports

    def build(key: str, split: str, limit: int | None):
        pieces, done = zip(*[_prepare_split(data, layout, root, split, limit, model, processor, data_args)
                             for layout in parts])
        reports[key] = _split_report(split, list(done))
        return pieces[0] if len(pieces) == 1 else concatenate_datasets(list(pieces))

    context = training_args.main_process_first(desc="preprocessing") if training_args else contextlib.nullcontext()
    with context:
        train = build("train", data_args.train_split, data_args.max_train_examples)
        evaluation = build("eval", data_args.eval_split, data_args.max_eval_examples) if data_args.eval_split else None
    return train, evaluation


def write_data_report(reports: dict[str, Any], path: str | os.PathLike) -> None:
    """Writes `reports` (from `load_datasets`) as JSON atomically and prints one line per split."""

    write_text(path, json.dumps(reports, indent=2) + "\n")
    for key, report in reports.items():
        left_out = f", {report['left_out']} left out by --max_{key}_examples" if report["left_out"] else ""
        print(f"{key}: kept {report['kept']} of {report['total']} clips, skipped {len(report['skipped'])}{left_out}: "
              f"see {path}")


# ---- trainer ----------------------------------------------------------------------------------------------------
LOSS_PARTS = ("lm_loss", "nar_loss", "masked_loss")  # the model output's losses the Trainer logs separately
OBJECTIVES = {0: "loss", 1: "loss", 2: "nar_loss", 3: "masked_loss"}  # what each stage optimises


class C3LLMTrainer(Trainer):
    r"""
    `Trainer` for C3LLM. The optimised and reported `loss` is the stage's objective, a per-batch mean: with
    `objective="loss"` the model's `loss` (`lm_loss + nar_loss_weight * nar_loss + masked_loss_weight * masked_loss`;
    stage 1 sets the NAR weight to 0), with `objective="nar_loss"` or `"masked_loss"` that loss alone (stages 2 and 3:
    the others carry no gradient there). `lm_loss`, `nar_loss` and `masked_loss` are logged separately for training
    and evaluation (`eval_lm_loss`, ...), averaged over batches and processes.
    """

    def __init__(self, *args, objective: str = "loss", **kwargs):
        if objective not in ("loss", *LOSS_PARTS[1:]):
            raise ValueError(f"objective must be 'loss', 'nar_loss' or 'masked_loss', got {objective!r}.")
        super().__init__(*args, **kwargs)
        self.objective = objective
        # The model's loss is a per-batch mean that ignores `num_items_in_batch`: the Trainer must divide it by the
        # accumulation steps and must not scale it by the number of processes.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self._loss_sums = {"train": self._zero_sums(), "eval": self._zero_sums()}  # per part: sum then count

    @staticmethod
    def _zero_sums() -> list[float]:
        return [0.0] * (2 * len(LOSS_PARTS))

    def get_eval_dataloader(self, eval_dataset=None):
        collator = self.data_collator
        if getattr(collator, "condition_dropout", 0.0):
            self.data_collator = replace(collator, condition_dropout=0.0)  # evaluate with every condition
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Stage 3 needs the prompts' hidden states only: the model skips the targets, the logits and the other losses.
        only = {"masked_loss_only": True} if self.objective == "masked_loss" else {}
        outputs = model(**inputs, use_cache=False, **only)
        loss = getattr(outputs, self.objective)
        if loss is None:
            raise ValueError(
                "The batch has no targets: training examples need captions or audio_codes (stages 2 and 3: "
                "audio_codes)."
            )
        sums = self._loss_sums["train" if model.training else "eval"]
        for index, part in enumerate(LOSS_PARTS):
            value = getattr(outputs, part)
            if value is not None:
                sums[2 * index] += float(value.detach())
                sums[2 * index + 1] += 1
        return (loss, outputs) if return_outputs else loss

    def _save_checkpoint(self, model, trial) -> None:
        """Writes `checkpoint-N` as `.incomplete-checkpoint-N/checkpoint-N` and renames it into place only once every
        process has written its part, so a job killed at any moment (even mid-save) leaves complete checkpoints
        only; `--resume_from_checkpoint last` then takes the newest (see `last_complete_checkpoint`)."""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, f"{INCOMPLETE_PREFIX}{name}")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # the leftover of a save that was killed
        self.accelerator.wait_for_everyone()
        run_dir_of = self._get_output_dir
        self._get_output_dir = lambda trial=None: staging  # the Trainer writes `staging/checkpoint-N`
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._get_output_dir = run_dir_of
        self.accelerator.wait_for_everyone()
        final = os.path.join(run_dir, name)
        if self.args.should_save:
            if os.path.isdir(final):  # an incomplete folder of that step from an older run
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging)
            best = self.state.best_model_checkpoint
            if best is not None and best.startswith(staging):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)  # fmt: skip
        self.accelerator.wait_for_everyone()

    def _pop_means(self, kind: str) -> dict[str, float]:
        """Means of the tracked losses since the last call, over all processes (a collective call)."""
        sums = torch.tensor(self._loss_sums[kind], dtype=torch.float64, device=self.args.device)
        self._loss_sums[kind] = self._zero_sums()
        if self.args.world_size > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        return {part: round(float(sums[2 * i] / sums[2 * i + 1]), 6)
                for i, part in enumerate(LOSS_PARTS) if sums[2 * i + 1] > 0}  # fmt: skip

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (every process logs at the same steps)
            logs.update(self._pop_means("train"))
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._loss_sums["eval"] = self._zero_sums()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in self._pop_means("eval").items()})
        return output


# ---- training ---------------------------------------------------------------------------------------------------
def _resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """`--resume_from_checkpoint PATH`, or `last`/`true` for the newest complete checkpoint in output_dir."""
    resume = training_args.resume_from_checkpoint
    if resume is None or str(resume).lower() in ("", "false", "none"):
        return None
    if str(resume).lower() in ("last", "true"):
        last = last_complete_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise FileNotFoundError(f"No complete checkpoint-* folder in {training_args.output_dir} to resume from.")
        logger.warning(f"Resuming from {last}.")
        return last
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume_from_checkpoint {resume} does not exist.")
    problem = checkpoint_problem(Path(resume))
    if problem is not None:
        raise ValueError(f"--resume_from_checkpoint {resume} is not a complete checkpoint: {problem}.")
    return resume


def _limit(dataset, limit: int | None):
    return dataset if dataset is None or limit is None else dataset.select(range(min(limit, len(dataset))))


def _audio_output_only(dataset, stage: int):
    if dataset is None:
        return None
    kept = dataset.filter(lambda task: TASKS[task].output == "audio", input_columns="task")
    if len(kept) == 0:
        raise ValueError(f"Stage {stage} trains on audio targets, but the data has no audio-output examples.")
    return kept


def standardize_projectors(model, processor, dataset, max_examples: int, seed: int = 0) -> dict[str, int]:
    """Fits the standardization of the projectors not yet standardized on a seeded sample of `dataset`."""
    from tqdm.auto import tqdm

    if max_examples <= 0:
        raise ValueError(f"standardize_examples must be positive, got {max_examples}.")
    if hasattr(dataset, "__len__"):
        order = np.random.default_rng(seed).permutation(len(dataset))[:max_examples]
        rows = [dataset[int(i)] for i in order]
    else:  # streaming: the first examples
        rows = list(itertools.islice(iter(dataset), max_examples))
    collator = C3LLMDataCollator(processor)
    chunks = [rows[i : i + 16] for i in range(0, len(rows), 16)]
    batches = (collator(chunk) for chunk in tqdm(chunks, desc="standardizing projector inputs", leave=False))
    counts = model.fit_projector_standardization(batches, refit=False)
    logger.info("Projector inputs standardized from %s feature vectors.", counts)
    return counts


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    train_dataset=None,
    eval_dataset=None,
    callbacks: list[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """Trains one stage and saves the results; returns the metrics (losses, steps) and the output paths.

    `train_dataset`/`eval_dataset` (rows with `task`, `caption`, `audio_codes`, `video_features`, `audio_path`, ...)
    replace loading `data_args.dataset`.

    When it loads the data itself, `output_dir/data_report.json` lists per split ("train", "eval") and stage (load,
    add_audio_codes, add_video_features) the clips' total, kept and skipped files with the reason. With
    `train_dataset` passed in nothing is loaded and no report is written: which files its caller dropped is unknown.
    """
    started = time.time()
    output_dir = Path(training_args.output_dir)
    merged_dir, adapter_dir = output_dir / "merged", output_dir / "adapter"
    if merged_dir.exists() and any(merged_dir.iterdir()):
        raise FileExistsError(f"{merged_dir} exists and is not empty; choose another --output_dir or remove it.")
    resume = _resume_checkpoint(training_args)
    training_args.remove_unused_columns = False  # the collator builds the inputs from the raw columns
    if training_args.label_names is None:
        training_args.label_names = ["labels"]

    set_seed(training_args.seed)
    model, processor = load_model_and_processor(model_args)
    loss_weights = {name: getattr(model.config, name) for name in ("nar_loss_weight", "masked_loss_weight")}
    if train_dataset is None:
        model.to(training_args.device)  # the codec and vision-encoder passes of preprocessing run on the accelerator
        reports: dict[str, Any] = {}
        train_dataset, loaded_eval = load_datasets(data_args, model, processor, training_args, reports)
        if eval_dataset is not None:
            reports.pop("eval", None)  # the loaded evaluation split is not used
        eval_dataset = eval_dataset if eval_dataset is not None else loaded_eval
        model.to("cpu")  # as loaded: the Trainer (or FSDP) places it
        if training_args.process_index == 0:
            write_data_report(reports, output_dir / "data_report.json")
    else:
        train_dataset = _limit(train_dataset, data_args.max_train_examples)
        eval_dataset = _limit(eval_dataset, data_args.max_eval_examples)
    if model_args.stage in (2, 3):  # the NAR head and the masked decoder learn from audio targets only
        train_dataset, eval_dataset = (_audio_output_only(d, model_args.stage) for d in (train_dataset, eval_dataset))
    if model_args.standardize_features and model_args.stage in (0, 1):  # stages 2 and 3 keep the projectors
        standardize_projectors(model, processor, train_dataset, model_args.standardize_examples, training_args.seed)
    set_seed(training_args.seed)  # the same LoRA initialisation whatever preprocessing consumed
    model = prepare_model(model, model_args)
    counts = trainable_parameter_counts(model)

    if getattr(training_args, "fsdp2", False):
        if eval_dataset is not None:
            logger.warning("--fsdp2 does not evaluate during training; evaluate the merged folder afterwards.")
        return _run_sharded(model, processor, model_args, training_args, train_dataset, resume, loss_weights, counts,
                            output_dir, started, data_args.condition_dropout)  # fmt: skip
    trainer = C3LLMTrainer(
        model=model,
        args=training_args,
        data_collator=C3LLMDataCollator(processor, data_args.condition_dropout, seed=training_args.seed),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        callbacks=callbacks,
        objective=OBJECTIVES[model_args.stage],
    )
    result = trainer.train(resume_from_checkpoint=resume)
    metrics: dict[str, Any] = dict(result.metrics)
    for record in trainer.state.log_history:  # the last logged training lm/nar losses
        metrics.update({f"train_{k}": v for k, v in record.items() if k in LOSS_PARTS})
    last_eval = next((r for r in reversed(trainer.state.log_history) if "eval_loss" in r), None)
    if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        metrics.update({k: v for k, v in last_eval.items() if k.startswith("eval_")})  # evaluated at the last step
    elif eval_dataset is not None:
        metrics.update(trainer.evaluate())
    trainer.save_state()
    for name, weight in loss_weights.items():  # a stage that trained with a loss weight 0 saves the model's own
        setattr(trainer.accelerator.unwrap_model(trainer.model).config, name, weight)

    if model_args.stage == 1:
        trainer.save_model(str(adapter_dir))  # collective under FSDP (gathers the full adapter state)
        if trainer.is_world_process_zero():

            if trainer.is_fsdp_enabled:  # sharded weights: merge a fresh base with the adapter just saved
                merged = merge_adapter(model_args.model_name_or_path, str(adapter_dir), dtype=_dtype(model_args))
            else:
                merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
                merged.freeze_encoders()
            for name, weight in loss_weights.items():
                setattr(merged.config, name, weight)
            save_folder(_saved_dtype(merged, model_args), processor, merged_dir)
    elif trainer.is_fsdp_enabled:
        trainer.save_model(str(merged_dir))  # collective: gathers the sharded weights, with processor and code
        if trainer.is_world_process_zero():  # a Hub-ready folder: a model card, no pickled training arguments
            (merged_dir / TRAINING_ARGS_NAME).unlink(missing_ok=True)
            render_model_card(trainer.accelerator.unwrap_model(trainer.model).config).save(merged_dir / "README.md")
    elif trainer.is_world_process_zero():
        save_folder(_saved_dtype(trainer.accelerator.unwrap_model(trainer.model), model_args), processor, merged_dir)
    trainer.accelerator.wait_for_everyone()

    metrics.update(
        stage=model_args.stage,
        trainable_parameters=counts["trainable"],
        total_parameters=counts["total"],
        adapter_path=str(adapter_dir) if model_args.stage == 1 else None,
        merged_path=str(merged_dir),
        output_dir=str(output_dir),
    )
    if trainer.is_world_process_zero():
        _print_summary(metrics, time.time() - started)
    return metrics


def _run_sharded(model, processor, model_args, training_args, train_dataset, resume, loss_weights, counts, output_dir,
                 started, condition_dropout: float) -> dict[str, Any]:
    """`run_training` under --fsdp2: `ShardedTrainer` trains; rank 0 saves the adapter (stage 1) and the merged
    folder from the gathered trainable weights."""
    if training_args.global_batch_size is None:
        raise ValueError("--fsdp2 needs --global_batch_size (examples per optimiser step over all processes).")
    # Each process draws its own condition dropout: the same seed everywhere would drop the same batch positions.
    collator = C3LLMDataCollator(processor, condition_dropout, seed=training_args.seed + world()[0])
    trainer = ShardedTrainer(model, training_args, collator, train_dataset, OBJECTIVES[model_args.stage], LOSS_PARTS,
                             training_args.global_batch_size)  # fmt: skip
    metrics = trainer.train(resume)
    trainer.save_state()
    gathered = trainer.full_trainable_state_dict()  # collective
    if trainer.rank == 0:
        # The trainable parameters and every buffer (e.g. the projectors' standardization), whole.
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        weights = dict(gathered)
        if model_args.stage == 1:
            model.save_pretrained(str(output_dir / "adapter"), state_dict=weights)
            merged = merge_adapter(model_args.model_name_or_path, str(output_dir / "adapter"), dtype=_dtype(model_args))
        else:
            merged, _ = load_model_and_processor(model_args)
            if model_args.stage == 3 and merged.masked_decoder is None:  # as `prepare_model` added it
                merged.add_masked_decoder(model_args.masked_decoder_layers)
            unexpected = merged.load_state_dict(weights, strict=False).unexpected_keys
            if unexpected or not trainable <= set(weights):
                raise RuntimeError(f"the gathered weights do not fit the model: {unexpected or trainable - set(weights)}")
        for name, weight in loss_weights.items():
            setattr(merged.config, name, weight)
        save_folder(_saved_dtype(merged, model_args), processor, output_dir / "merged")
    torch.distributed.barrier()
    metrics.update(stage=model_args.stage, trainable_parameters=counts["trainable"], total_parameters=counts["total"],
                   adapter_path=str(output_dir / "adapter") if model_args.stage == 1 else None,
                   merged_path=str(output_dir / "merged"), output_dir=str(output_dir))  # fmt: skip
    if trainer.rank == 0:
        _print_summary(metrics, time.time() - started)
    return metrics


def _print_summary(metrics: dict[str, Any], seconds: float) -> None:
    def fmt(key: str) -> str:
        value = metrics.get(key)
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    print(f"\nC3LLM stage {metrics['stage']} training done in {seconds:.0f} s")
    print(f"  trainable parameters: {metrics['trainable_parameters']:,} of {metrics['total_parameters']:,}")
    print(f"  train loss {fmt('train_loss')} (last lm {fmt('train_lm_loss')}, nar {fmt('train_nar_loss')}, masked "
          f"{fmt('train_masked_loss')})")
    if "eval_loss" in metrics:
        print(f"  eval loss {fmt('eval_loss')} (lm {fmt('eval_lm_loss')}, nar {fmt('eval_nar_loss')}, masked "
              f"{fmt('eval_masked_loss')})")
    if metrics.get("adapter_path"):
        print(f"  adapter: {metrics['adapter_path']}")
    print(f"  model:   {metrics['merged_path']}")


# ---- command line -----------------------------------------------------------------------------------------------
def build_parser() -> HfArgumentParser:
    return HfArgumentParser(
        (ModelArguments, DataArguments, C3LLMTrainingArguments),
        prog=PROG,
        description="Train C3LLM: stage 1 (LoRA, acoustic tokens, projectors), stage 2 (NAR head) or stage 3 (masked "
        "decoder). Give a YAML/JSON "
        "config file as the first argument and/or flags (flags override the file).",
    )


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, C3LLMTrainingArguments]:
    """Flags, or a `.yaml`/`.yml`/`.json` config file first and then flags overriding its values.

    The file's values become the parser's defaults, so they go through the same type conversion as flags (YAML reads
    `1e-4` as a string; argparse makes it a float) and unknown keys are errors.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and not argv[0].startswith("-") and argv[0].lower().endswith((".yaml", ".yml", ".json")):
        path = Path(argv.pop(0))
        if not path.is_file():
            parser.error(f"config file {path} does not exist")
        if path.suffix.lower() == ".json":
            values = json.loads(path.read_text())
        else:
            import yaml

            values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            parser.error(f"{path} must hold a mapping of argument names to values")
        unknown = sorted(set(values) - {action.dest for action in parser._actions})
        if unknown:
            parser.error(f"unknown keys in {path}: {unknown}")
        parser.set_defaults(**values)
    return tuple(parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False))


def main(argv: list[str] | None = None) -> int:
    """`c3llm train`: parses the arguments, trains, prints a summary; returns the exit code."""
    model_args, data_args, training_args = parse_args(argv)
    try:
        run_training(model_args, data_args, training_args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "C3LLMTrainer",
    "C3LLMTrainingArguments",
    "DataArguments",
    "ModelArguments",
    "load_datasets",
    "load_model_and_processor",
    "main",
    "prepare_model",
    "run_training",
    "trainable_parameter_counts",
    "write_data_report",
]


if __name__ == "__main__":
    sys.exit(main())

