"""Converts the `encodec` package's checkpoints (`encodec_24khz-d7cc33bc.th`, `encodec_48khz-7e698e3e.th`) into a
transformers `EncodecModel` folder (config, safetensors weights, feature extractor).

    python -m conversion.convert_encodec encodec_24khz-d7cc33bc.th --out models/encodec_24khz
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from transformers import EncodecConfig, EncodecFeatureExtractor, EncodecModel

from .checkpoints import load_converted, load_foreign_checkpoint, rename, save_converted

# Original module paths -> transformers ones. SConv1d/SConvTranspose1d wrap a `conv`/`convtr` and a `norm`; the
# transformers port keeps the inner conv as `conv` and the norm as `norm` directly on the layer.
RULES = (
    (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook."),
    (r"^(encoder|decoder)\.model\.(\d+)\.", r"\1.layers.\2."),
    (r"\.conv\.conv\.", ".conv."),
    (r"\.convtr\.convtr\.", ".conv."),
    (r"\.(conv|convtr)\.norm\.", ".norm."),
)


def encodec_config_for(state: dict[str, torch.Tensor]) -> EncodecConfig:
    """The transformers config of the 24 kHz or 48 kHz model, recognised from the checkpoint's weights."""
    first = next((state[k] for k in ("encoder.model.0.conv.conv.weight_v", "encoder.model.0.conv.conv.weight") if k in state), None)
    if first is None:
        raise ValueError("Not an EnCodec checkpoint: encoder.model.0.conv.conv.weight(_v) is missing.")
    channels = first.shape[1]
    quantizers = len({k.split(".")[3] for k in state if k.startswith("quantizer.vq.layers.")})
    if any(".conv.norm." in k for k in state):  # time-group-norm convs: the non-causal, normalised 48 kHz model
        config = EncodecConfig(
            sampling_rate=48_000, audio_channels=channels, target_bandwidths=[3.0, 6.0, 12.0, 24.0],
            use_causal_conv=False, norm_type="time_group_norm", normalize=True, chunk_length_s=1.0, overlap=0.01,
        )
    else:
        config = EncodecConfig(audio_channels=channels)  # the defaults are the causal 24 kHz model
    if channels != (2 if config.sampling_rate == 48_000 else 1) or quantizers != config.num_quantizers:
        raise ValueError(
            f"Unrecognised EnCodec variant: {channels} channel(s), {quantizers} quantizers; expected the 24 kHz "
            "(mono, 32 quantizers) or 48 kHz (stereo, 16 quantizers) model."
        )
    return config


def convert_encodec_state_dict(state: dict[str, torch.Tensor], model: EncodecModel) -> dict[str, torch.Tensor]:
    """Renames the original weights to `model`'s names (weight-norm `weight_g`/`weight_v` to its parametrization)."""
    targets = set(model.state_dict())
    converted = {}
    for name, value in state.items():
        new = rename(name, RULES)
        for suffix, index in ((".weight_g", "0"), (".weight_v", "1")):
            if new.endswith(suffix) and new not in targets:
                new = f"{new[: -len(suffix)]}.parametrizations.weight.original{index}"
        converted[new] = value
    return converted


def convert_encodec_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> EncodecModel:
    """Reads an original EnCodec checkpoint (weights only) and returns the equivalent `EncodecModel`.

    With `out_dir`, also saves the model and its `EncodecFeatureExtractor` there, as the Hub's `facebook/encodec_*`.
    """
    state = load_foreign_checkpoint(checkpoint)
    config = encodec_config_for(state)
    model = EncodecModel(config).eval()
    load_converted(model, convert_encodec_state_dict(state, model), str(checkpoint))
    if out_dir is not None:
        extractor = EncodecFeatureExtractor(
            feature_size=config.audio_channels, sampling_rate=config.sampling_rate,
            chunk_length_s=config.chunk_length_s, overlap=config.overlap,
        )
        save_converted(model, extractor, out_dir)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="the encodec package's .th file (24 kHz or 48 kHz)")
    parser.add_argument("--out", required=True, type=Path, help="new folder for the transformers model")
    args = parser.parse_args(argv)
    model = convert_encodec_checkpoint(args.checkpoint, args.out)
    print(f"converted {args.checkpoint} ({model.config.sampling_rate} Hz, {model.config.num_quantizers} quantizers) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
