"""`c3llm build` from pretrained parts, `c3llm merge`, `c3llm push` and `c3llm convert`: folders in, folders (or Hub
repositories) out. The command-line registration is `add_hub_commands`; the logic is in plain functions.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
REQUIRED_FILES = ("config.json", "processor_config.json", "README.md")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def allow_hub_access() -> None:
    """Lets the Hub client reach the network, unless the user set HF_HUB_OFFLINE themselves (the CLI defaults it on)."""
    from huggingface_hub import constants

    from modeling_c3llm.cli import OFFLINE_SET_BY_USER

    if not OFFLINE_SET_BY_USER:
        os.environ["HF_HUB_OFFLINE"] = "0"
        constants.HF_HUB_OFFLINE = False


# ---- merge ----------------------------------------------------------------------------------------------------------
def merge_folder(base: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike,
                 dtype: torch.dtype = torch.float32, max_shard_size: str = "5GB") -> Path:
    """Folds a stage-1 LoRA adapter into the base model and saves a complete folder (processor and card included)."""
    from transformers import AutoProcessor

    from modeling_c3llm.training_c3llm import merge_adapter

    from .build_c3llm import save_folder

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
    from .model_card import check_model_card

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


# ---- command line ---------------------------------------------------------------------------------------------------
def _is_hub_id(source: str) -> bool:
    return not Path(source).exists()


def cmd_build_pretrained(args: argparse.Namespace) -> str:
    """`c3llm build` without --tiny: assembles the pretrained parts, saves, returns a one-line summary."""
    from .build_c3llm import assemble_pretrained, save_folder

    sources = {"llm": args.llm, "codec": args.codec, "audio_encoder": args.audio_encoder,
               "vision_encoder": args.vision_encoder}
    if any(_is_hub_id(source) for source in sources.values()):
        allow_hub_access()
    start = time.perf_counter()
    try:
        nar_config = json.loads(args.nar_config) if args.nar_config else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--nar-config must be a JSON object of C3LLMNARConfig fields: {e}") from e
    model, processor = assemble_pretrained(**sources, dtype=DTYPES[args.dtype], seed=args.seed,
                                           num_codebooks=args.num_codebooks, nar_config=nar_config)
    save_folder(model, processor, args.out, max_shard_size=args.max_shard_size)
    parameters = sum(p.numel() for p in model.parameters())
    return (f"assembled C3LLM from {args.llm} ({parameters / 1e6:.1f} M parameters, {args.dtype}) in {args.out} "
            f"({time.perf_counter() - start:.1f} s)")


def add_build_source_flags(group: argparse._ArgumentGroup, build: argparse.ArgumentParser) -> None:
    from .build_c3llm import DEFAULT_PARTS

    group.add_argument("--llm", default=DEFAULT_PARTS["llm"], metavar="ID_OR_DIR", help="causal LM backbone and tokenizer")
    group.add_argument("--codec", default=DEFAULT_PARTS["codec"], metavar="ID_OR_DIR", help="EnCodec model")
    group.add_argument("--audio-encoder", default=DEFAULT_PARTS["audio_encoder"], metavar="ID_OR_DIR",
                       help="CLAP model (its audio side and projection are used)")
    group.add_argument("--vision-encoder", default=DEFAULT_PARTS["vision_encoder"], metavar="ID_OR_DIR",
                       help="CLIP model or CLIP vision model")
    build.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the saved weights")
    build.add_argument("--nar-config", metavar="JSON",
                       help='NAR head size as JSON, e.g. \'{"hidden_size": 512, "num_hidden_layers": 6}\' '
                       "(default: C3LLMNARConfig's 1024 wide, 12 layers)")
    build.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                       help="largest safetensors file; bigger models are sharded (e.g. 2GB, 500MB)")


def cmd_merge(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    start = time.perf_counter()
    merge_folder(args.base, args.adapter, args.out, dtype=DTYPES[args.dtype], max_shard_size=args.max_shard_size)
    print(f"merged {args.adapter} into {args.base} -> {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


def cmd_push(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    files = verify_model_folder(args.folder)
    if args.dry_run:
        print("\n".join(files))
        print(f"{len(files)} files would be uploaded to {args.repo_id}")
        return 0
    allow_hub_access()
    info = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision,
                       create_pr=args.create_pr, commit_message=args.message)
    print(f"uploaded {len(files)} files to {args.repo_id}: {getattr(info, 'pr_url', None) or info}")
    return 0


def cmd_convert(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .convert_clap import convert_clap_checkpoint
    from .convert_encodec import convert_encodec_checkpoint

    convert = convert_encodec_checkpoint if args.kind == "encodec" else convert_clap_checkpoint
    convert(args.checkpoint, args.out)
    print(f"converted {args.checkpoint} ({args.kind}) -> {args.out}")
    return 0


def add_hub_commands(commands, formatter) -> None:
    """Registers `merge`, `push` and `convert` on the `c3llm` sub-command parser."""
    merge = commands.add_parser(
        "merge", help="fold a LoRA adapter into its base model", formatter_class=formatter,
        description="Fold a stage-1 LoRA adapter into the base C3LLM folder and save a complete model folder.",
        epilog="examples:\n  c3llm merge --base models/c3llm --adapter runs/s1/adapter --out models/c3llm-s1",
    )
    merge.add_argument("--base", required=True, metavar="DIR", help="the base model folder the adapter was trained on")
    merge.add_argument("--adapter", required=True, metavar="DIR", help="the PEFT adapter folder (adapter_config.json)")
    merge.add_argument("--out", required=True, metavar="DIR", help="new or empty folder for the merged model")
    merge.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the merged weights")
    merge.add_argument("--max-shard-size", default="5GB", metavar="SIZE", help="largest safetensors file")
    merge.set_defaults(handler=cmd_merge, subparser=merge)

    push = commands.add_parser(
        "push", help="upload a model folder to the Hub", formatter_class=formatter,
        description="Verify a C3LLM folder (weights, configs, code named in auto_map, processor, model card) and\n"
        "upload it to a Hub model repository. The token comes from HF_TOKEN or `hf auth login`.",
        epilog="examples:\n  c3llm push models/c3llm me/c3llm --private\n"
        "  c3llm push models/c3llm me/c3llm --revision v2 --message 'stage 2'\n"
        "  c3llm push models/c3llm me/c3llm --create-pr\n  c3llm push models/c3llm me/c3llm --dry-run",
    )
    push.add_argument("folder", metavar="DIR", help="the model folder")
    push.add_argument("repo_id", metavar="REPO", help="Hub repository, user-or-org/name (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", metavar="BRANCH", help="branch to upload to (created if missing)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    push.add_argument("--message", metavar="TEXT", help="commit message")
    push.add_argument("--dry-run", action="store_true", help="verify and list the files, upload nothing")
    push.set_defaults(handler=cmd_push, subparser=push)

    convert = commands.add_parser(
        "convert", help="convert an original EnCodec or LAION-CLAP checkpoint", formatter_class=formatter,
        description="Convert an original checkpoint (read with weights_only=True) into a transformers folder.",
        epilog="examples:\n  c3llm convert encodec encodec_24khz-d7cc33bc.th --out models/encodec_24khz\n"
        "  c3llm convert clap 630k-audioset-best.pt --out models/clap_audio",
    )
    convert.add_argument("kind", choices=["encodec", "clap"], help="which package the checkpoint comes from")
    convert.add_argument("checkpoint", type=Path, help="the .th (encodec) or .pt (laion-clap) file")
    convert.add_argument("--out", required=True, type=Path, metavar="DIR", help="new or empty folder")
    convert.set_defaults(handler=cmd_convert, subparser=convert)
