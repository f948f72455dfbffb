"""Loading a model for the commands (a folder or a Hub id, with one clear error line for what cannot be loaded), and
reading an audio prompt into the codes the model continues."""

from __future__ import annotations

import os
from pathlib import Path


class CLIError(Exception):
    """A user-facing error: printed as `c3llm: error: <message>`, exit code 2, no traceback."""


def load_model(source: str | os.PathLike):
    """Loads a C3LLM model and processor from a folder or a Hub repository id (downloaded unless HF_HUB_OFFLINE is set,
    as everywhere in transformers). Missing, corrupt or truncated files end in a `CLIError` naming the file."""
    from huggingface_hub import constants
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoProcessor

    import modeling_c3llm  # noqa: F401  (registers AutoModel)
    import processing_c3llm  # noqa: F401  (registers AutoProcessor)

    path = Path(source)
    if not path.exists() and (path.is_absolute() or str(source).startswith(".") or str(source).count("/") > 1):
        raise CLIError(f"--model {source} is neither a folder nor a Hub repository id (org/name); build a folder with "
                       f"`c3llm build --tiny --out {source}`.")
    if path.exists():
        if not path.is_dir():
            raise CLIError(f"--model {path} is not a folder; build one with `c3llm build --tiny --out {path}`.")
        if not (path / "config.json").is_file():
            raise CLIError(f"--model {path} has no config.json, so it is not a C3LLM model folder.")
    try:
        model = AutoModel.from_pretrained(source)
        processor = AutoProcessor.from_pretrained(source)
    except SafetensorError as e:
        raise CLIError(f"--model {source}: the weights are corrupt or truncated ({e}); download or save them again.") from e
    except (OSError, ValueError, KeyError) as e:
        if path.exists():
            where = f"folder {source}"
        else:
            offline = " (HF_HUB_OFFLINE is set: unset it to download, or pass a local folder)" if constants.HF_HUB_OFFLINE else ""
            where = f"Hub repository {source}{offline}"
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CLIError(f"--model: could not load the model from the {where}: {message}") from e
    return model.eval(), processor


def encode_audio_prompt(model, processor, source: str | os.PathLike):
    """The EnCodec codes `(num_codebooks, frames)` of an audio prompt file (any rate and channel count), checked to be
    shorter than the model's window, which continues it. Raises `ValueError` (a `MediaError` for an unreadable file)
    naming the file."""
    import torch

    target = processor.prepare_audio_target(os.fspath(source))  # MediaError names the file
    with torch.no_grad():
        codes = model.encode_audio(**target)[0]
    config = model.config
    if codes.shape[-1] >= round(config.max_audio_seconds * config.frame_rate):
        raise ValueError(f"the audio prompt '{os.fspath(source)}' is {codes.shape[-1] / config.frame_rate:.2f} s long; "
                         f"this model continues prompts shorter than its window of {config.max_audio_seconds:g} s "
                         "(max_audio_seconds): trim it to its last seconds.")  # fmt: skip
    return codes
