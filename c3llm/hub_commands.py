"""`c3llm build` from pretrained parts, `c3llm merge`, `c3llm push` and `c3llm convert`: the command-line side of
`conversion` (the logic is in plain functions there)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from conversion.build_c3llm import DEFAULT_PARTS, assemble_pretrained, save_folder
from conversion.convert_clap import convert_clap_checkpoint
from conversion.convert_encodec import convert_encodec_checkpoint
from conversion.hub_c3llm import DTYPES, merge_folder, push_folder, verify_model_folder


# ---- command line ---------------------------------------------------------------------------------------------------
def cmd_build_pretrained(args: argparse.Namespace) -> str:
    """`c3llm build` without --tiny: assembles the pretrained parts, saves, returns a one-line summary."""

    sources = {"llm": args.llm, "codec": args.codec, "audio_encoder": args.audio_encoder,
               "vision_encoder": args.vision_encoder}
    start = time.perf_counter()
    try:
        nar_config = json.loads(args.nar_config) if args.nar_config else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--nar-config must be a JSON object of C3LLMNARConfig fields: {e}") from e
    model, processor = assemble_pretrained(**sources, dtype=DTYPES[args.dtype], seed=args.seed,
                                           num_codebooks=args.num_codebooks, nar_config=nar_config)
    if args.masked_decoder_layers:
        model.add_masked_decoder(args.masked_decoder_layers)
    save_folder(model, processor, args.out, max_shard_size=args.max_shard_size)
    parameters = sum(p.numel() for p in model.parameters())
    return (f"assembled C3LLM from {args.llm} ({parameters / 1e6:.1f} M parameters, {args.dtype}) in {args.out} "
            f"({time.perf_counter() - start:.1f} s)")


def add_build_source_flags(group: argparse._ArgumentGroup, build: argparse.ArgumentParser) -> None:

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
    info = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision,
                       create_pr=args.create_pr, commit_message=args.message)
    print(f"uploaded {len(files)} files to {args.repo_id}: {getattr(info, 'pr_url', None) or info}")
    return 0


def cmd_convert(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:

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
