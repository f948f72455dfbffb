"""Sharded training with PyTorch's own FSDP2 (`fully_shard`) and distributed checkpoints, under torchrun: gloo on the
CPU, NCCL on GPUs.

    torchrun --nproc_per_node 2 -m c3llm.training c3llm/recipes/stage1.yaml --fsdp2 --global_batch_size 32

accelerate cannot shard on the CPU (its FSDP needs GPU processes), so `run_training` hands a `--fsdp2` run to
`ShardedTrainer`. PyTorch does the sharding (each decoder layer, then the whole model: the wrapping of
`recipes/accelerate_fsdp.yaml`), the gradient reduce-scatter and the checkpoints' resharding; this file is the loop
around them: the Trainer's optimizer, schedule, clipping and logging, and checkpoints of the trainable weights.

"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.data import DataLoader, DistributedSampler
from transformers import get_scheduler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

SHARDED_DIR = "sharded"  # the DCP files of a checkpoint (trainable weights and optimizer state)
STATE_FILE = "trainer_state.json"
# Each module of these classes is one FSDP unit: Gemma's decoder layers and the layers of the NAR head and of the
# masked decoder; recipes/accelerate_fsdp.yaml wraps the same set (`fsdp_transformer_layer_cls_to_wrap`).
LAYER_CLASSES = ("GemmaDecoderLayer", "C3LLMNARLayer")
logger = logging.getLogger("c3llm.training")  # the training run's messages, wherever they come from


INCOMPLETE_PREFIX = ".incomplete-"  # `C3LLMTrainer._save_checkpoint` writes `checkpoint-N` under this name first
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None. The Trainer writes `trainer_state.json` last."""
    if not (folder / "trainer_state.json").is_file():
        return "it has no trainer_state.json (its save did not finish)"
    if not any((folder / name).exists() for name in ("adapter_model.safetensors", "model.safetensors",
                                                        "model.safetensors.index.json", "pytorch_model_fsdp_0",
                                                        SHARDED_DIR)):
        return "it has no model weights"
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` of `output_dir`; the newer incomplete ones it passes over, and the
    leftovers of killed saves (`.incomplete-*`), are named in a warning with the reason."""
    folder = Path(output_dir)
    for leftover in sorted(folder.glob(f"{INCOMPLETE_PREFIX}*")):
        logger.warning(f"{leftover} is the leftover of a save that was killed; it is ignored (and replaced when "
                       "that step is saved again).")  # fmt: skip
    steps = sorted(((int(m.group(1)), path) for path in folder.iterdir()
                    if path.is_dir() and (m := _CHECKPOINT.match(path.name))), reverse=True)  # fmt: skip
    for _, path in steps:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning(f"Skipping {path}: {problem}.")
    return None




def world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def per_device_batch(global_batch: int, world_size: int, accumulation: int) -> int:
    """The per-process micro-batch of a global batch; refuses a world size that does not divide it."""
    if world_size < 2:
        raise ValueError("--fsdp2 shards the model over several processes: launch with `torchrun --nproc_per_node N` "
                         "(N >= 2), or drop --fsdp2 to train in one process.")  # fmt: skip
    if global_batch % (world_size * accumulation):
        raise ValueError(f"--global_batch_size {global_batch} does not divide over {world_size} processes x "
                         f"{accumulation} accumulation steps; choose a multiple of {world_size * accumulation}.")
    return global_batch // (world_size * accumulation)


def _touch(output, objective: str, parameters: list[torch.nn.Parameter]):
    """Adds 0 x every parameter to the objective, so each of them gets a gradient (zero where unused)."""
    loss = getattr(output, objective, None)
    if loss is not None:
        setattr(output, objective, loss + 0.0 * sum(p.sum() for p in parameters))
    return output


class ShardedTrainer:
    """Trains `model` (already prepared for its stage) sharded with FSDP2; `train`, then `full_trainable_state_dict`
    on every process (rank 0 gets the tensors) to save the adapter or the merged folder."""

    def __init__(self, model, args, data_collator, train_dataset, objective: str, loss_parts: tuple[str, ...],
                 global_batch_size: int):  # fmt: skip
        self.rank, self.world_size = world()
        self.args, self.objective, self.loss_parts = args, objective, loss_parts
        self.per_device = per_device_batch(global_batch_size, self.world_size, args.gradient_accumulation_steps)
        self.global_batch_size = global_batch_size
        cuda = torch.cuda.is_available() and not args.use_cpu
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if args.bf16 \
            else MixedPrecisionPolicy()  # fmt: skip
        model.to(self.device)
        if args.activation_checkpointing:  # as the Trainer does, before sharding: each recomputed layer is an FSDP unit
            options = dict(args.activation_checkpointing_kwargs or {})
            every_n_layers, offload = options.pop("every_n_layers", 1), options.pop("offload", False)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=options or None,
                                                  every_n_layers=every_n_layers, offload=offload)  # fmt: skip
        layers = [module for module in model.modules() if type(module).__name__ in LAYER_CLASSES]
        in_layers = {id(p) for layer in layers for p in layer.parameters()}
        root_trainable = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_layers]
        # Every process must reduce-scatter the same gradients: a projector that this process's batch does not use
        # gets a zero one. The hook looks the parameters up by name: FSDP swaps in unsharded ones for the forward.
        model.register_forward_hook(lambda module, args, output: _touch(
            output, objective, [module.get_parameter(n) for n in root_trainable]))
        for layer in layers:
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy, reshard_after_forward=False)  # the hook above sees unsharded parameters
        self.model = model
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                           eps=args.adam_epsilon, weight_decay=args.weight_decay)  # fmt: skip
        self.sampler = DistributedSampler(train_dataset, num_replicas=self.world_size, rank=self.rank,
                                          shuffle=args.train_sampling_strategy != "sequential",
                                          seed=args.data_seed if args.data_seed is not None else args.seed,
                                          drop_last=True)  # fmt: skip
        self.loader = DataLoader(train_dataset, batch_size=self.per_device, sampler=self.sampler,
                                 collate_fn=data_collator, drop_last=True)  # fmt: skip
        steps_per_epoch = len(self.loader) // args.gradient_accumulation_steps
        if steps_per_epoch == 0:
            raise ValueError(f"the training set is smaller than one global batch of {global_batch_size}.")
        self.max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=args.get_warmup_steps(self.max_steps),
                                       num_training_steps=self.max_steps)  # fmt: skip
        self.global_step, self.log_history = 0, []

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def _options(self, full: bool = False, strict: bool = True) -> StateDictOptions:
        return StateDictOptions(ignore_frozen_params=True, full_state_dict=full, cpu_offload=full, strict=strict)

    def save_checkpoint(self) -> str:
        """`checkpoint-N` with the trainable weights and optimizer state (DCP, one file per process), the schedule and
        the state; written under `.incomplete-checkpoint-N` and renamed once every process has written."""
        out = Path(self.args.output_dir)
        name = f"checkpoint-{self.global_step}"
        staging = out / f"{INCOMPLETE_PREFIX}{name}" / name
        if self.rank == 0:
            shutil.rmtree(staging.parent, ignore_errors=True)
        dist.barrier()
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer, options=self._options())
        dcp_save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(staging / SHARDED_DIR))
        self._save_trainer_files(staging)
        dist.barrier()
        final = out / name
        if self.rank == 0:
            if final.is_dir():
                shutil.rmtree(final)
            os.replace(staging, final)
            shutil.rmtree(staging.parent)
            rotate_checkpoints(output_dir=str(out), save_total_limit=self.args.save_total_limit, use_mtime=True)
        dist.barrier()
        return str(final)

    def _save_trainer_files(self, staging: Path) -> None:
        """The rest of a checkpoint, after the DCP files: random state, schedule, and `trainer_state.json` last."""
        torch.save(torch.get_rng_state(), staging / f"rng_state_{self.rank}.pth")
        if self.rank == 0:
            torch.save(self.scheduler.state_dict(), staging / "scheduler.pt")
            self._write_state(staging / STATE_FILE)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Resumes from a checkpoint of any process count (DCP reshards) at the same global batch."""
        path = Path(path)
        state = json.loads((path / STATE_FILE).read_text())
        if state["global_batch_size"] != self.global_batch_size:
            raise ValueError(f"{path} was trained with a global batch of {state['global_batch_size']}, this run has "
                             f"{self.global_batch_size}; resume with --global_batch_size {state['global_batch_size']}.")
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer, options=self._options())
        loaded = {"model": model_state, "optimizer": optimizer_state}
        dcp_load(loaded, checkpoint_id=str(path / SHARDED_DIR))
        set_state_dict(self.model, self.optimizer, model_state_dict=loaded["model"],
                       optim_state_dict=loaded["optimizer"],
                       options=self._options(strict=False))  # the frozen weights come from the model folder
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng = path / f"rng_state_{self.rank}.pth"
        if state["world_size"] == self.world_size and rng.is_file():
            torch.set_rng_state(torch.load(rng, weights_only=True))
        self.global_step, self.log_history = state["global_step"], state["log_history"]

    def _write_state(self, path: Path) -> None:
        path.write_text(json.dumps({"global_step": self.global_step, "log_history": self.log_history,
                                    "global_batch_size": self.global_batch_size, "world_size": self.world_size,
                                    "max_steps": self.max_steps}, indent=2) + "\n")  # fmt: skip

    def save_state(self) -> None:
        if self.rank == 0:
            self._write_state(Path(self.args.output_dir) / STATE_FILE)

    def full_trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights gathered whole on rank 0 (on the CPU); a collective call."""
        model_state, _ = get_state_dict(self.model, self.optimizer, options=self._options(full=True))
        return model_state

    # ---- the loop ---------------------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        only = {"masked_loss_only": True} if self.objective == "masked_loss" else {}
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        outputs = self.model(**batch, use_cache=False, **only)
        parts = {p: float(getattr(outputs, p).detach()) for p in self.loss_parts if getattr(outputs, p) is not None}
        return getattr(outputs, self.objective), parts

    def train(self, resume_from_checkpoint: str | None = None) -> dict[str, Any]:
        from tqdm.auto import tqdm

        if resume_from_checkpoint is not None:
            self.load_checkpoint(resume_from_checkpoint)
        args, accumulation = self.args, self.args.gradient_accumulation_steps
        self.model.train()
        progress = tqdm(total=self.max_steps, initial=self.global_step, disable=self.rank != 0 or args.disable_tqdm,
                        desc="training (FSDP2)")  # fmt: skip
        epoch, skip = divmod(self.global_step, self.steps_per_epoch)
        while self.global_step < self.max_steps:
            self.sampler.set_epoch(epoch)
            batches = iter(self.loader)
            for _ in range(skip * accumulation):  # the batches a resumed run has already trained on
                next(batches)
            skip = 0
            for _ in range(self.steps_per_epoch):
                sums: dict[str, float] = {}
                for _ in range(accumulation):
                    loss, parts = self._loss(next(batches))
                    (loss / accumulation).backward()
                    for key, value in {"loss": float(loss.detach()), **parts}.items():
                        sums[key] = sums.get(key, 0.0) + value / accumulation
                if args.max_grad_norm and args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                   args.max_grad_norm)  # fmt: skip
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                progress.update(1)
                if self.global_step % max(int(args.logging_steps), 1) == 0:
                    means = torch.tensor(list(sums.values()), dtype=torch.float64)
                    dist.all_reduce(means)
                    record = {k: round(float(v) / self.world_size, 6) for k, v in zip(sums, means)}
                    record.update(learning_rate=self.scheduler.get_last_lr()[0], step=self.global_step)
                    self.log_history.append(record)
                if args.save_strategy == "steps" and self.global_step % int(args.save_steps) == 0:
                    self.save_checkpoint()
                if self.global_step >= self.max_steps:
                    break
            epoch += 1
        progress.close()
        return {"global_step": self.global_step, "train_loss": self.log_history[-1]["loss"] if self.log_history
                else None}  # fmt: skip
