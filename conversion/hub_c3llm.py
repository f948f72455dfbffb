"""Model folders in, model folders or Hub repositories out: merge a LoRA adapter, verify a folder, push it.
The `c3llm merge/push/convert` commands that call these live in `c3llm.hub_commands`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoProcessor

from modeling_c3llm import C3LLMForConditionalGeneration

from .build_c3llm import save_folder
from .model_card import check_model_card

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
REQUIRED_FILES = ("config.json", "processor_config.json", "README.md")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- merge ----------------------------------------------------------------------------------------------------------
def merge_adapter(model_name_or_path: str | os.PathLike, adapter_path: str | os.PathLike,
                  dtype: torch.dtype = torch.float32) -> C3LLMForConditionalGeneration:
    """A fresh base model from `model_name_or_path` with a stage-1 LoRA adapter merged into its weights."""
    from peft import PeftModel

    base = C3LLMForConditionalGeneration.from_pretrained(model_name_or_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    merged.freeze_encoders()
    return merged


def merge_folder(base: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike,
                 dtype: torch.dtype = torch.float32, max_shard_size: str = "5GB") -> Path:
    """Folds a stage-1 LoRA adapter into the base model and saves a complete folder (processor and card included)."""
    if not Path(adapter, "adapter_config.json").is_file():
        raise ValueError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json); pass the stage-1 'adapter' folder.")
    merged = merge_adapter(str(base), str(adapter), dtype=dtype)
    processor = AutoProcessor.from_pretrained(base)
    return save_folder(merged.eval(), processor, out, max_shard_size=max_shard_size)


# ---- push -----------------------------------------------------------------------------------------------------------
def verify_model_folder(folder: str | os.PathLike) -> list[str]:
    """Checks that `folder` is a complete C3LLM folder and returns the files to upload (relative paths, sorted).

    Required: config.json with an `auto_map` and every code file it names, the weights (one safetensors file, or an
    index and all its shards), the processor files, and a model card (README.md) that passes `check_model_card`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; build one with `c3llm build` or `c3llm merge`.")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append("model.safetensors (or model.safetensors.index.json)")
    if missing:
        raise ValueError(f"{folder} is not a complete C3LLM folder: missing {', '.join(missing)}.")
    if any(path.suffix in {".bin", ".pt", ".pth", ".pkl", ".th"} for path in folder.iterdir()):
        raise ValueError(f"{folder} holds pickle weights; only safetensors are uploaded. Remove them first.")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        absent = [shard for shard in shards if not (folder / shard).is_file()]
        if absent:
            raise ValueError(f"{folder}: the weight index names shards that are missing: {absent}.")
    code_files = set()
    for name in ("config.json", "processor_config.json"):
        auto_map = json.loads((folder / name).read_text()).get("auto_map")
        if not auto_map:
            raise ValueError(f"{folder / name} has no auto_map; it would not load with trust_remote_code=True.")
        code_files |= {f"{ref.split('.')[0]}.py" for ref in auto_map.values() if isinstance(ref, str)}
    absent = sorted(name for name in code_files if not (folder / name).is_file())
    if absent:
        raise ValueError(f"{folder}: auto_map names code files that are missing: {absent}.")
    try:
        check_model_card(folder / "README.md")
    except ValueError as e:
        raise ValueError(f"{folder}/README.md: {e}") from e
    return sorted(
        str(path.relative_to(folder)) for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(folder).parts)
    )


def push_folder(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False,
                revision: str | None = None, create_pr: bool = False, commit_message: str | None = None):
    """Verifies `folder` and uploads exactly its files to the Hub model repository `repo_id`.

    The token is `token`, else HF_TOKEN, else the stored `hf auth login`. `revision` uploads to a branch (created if
    needed); `create_pr` opens a pull request instead of committing to the branch. Returns the commit info.
    """
    from huggingface_hub import HfApi, get_token

    files = verify_model_folder(folder)
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'user-or-org/name', got {repo_id!r}.")
    token = token or get_token()
    if token is None:
        raise ValueError("No Hub token: set HF_TOKEN or run `hf auth login` first.")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision, create_pr=create_pr,
        allow_patterns=files, commit_message=commit_message or f"Upload C3LLM ({len(files)} files)",
    )
