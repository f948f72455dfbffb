"""Builds an original EnCodec or LAION-CLAP module with random weights and writes what the parity tests compare.

Runs in the *reference* environment (the venv of `requirements.txt` next to this script, which the parity tests build
and cache in `~/.cache/c3llm/venvs/reference-<hash>`; see README "Parity tests"), where the `encodec` and `laion-clap`
packages import; it never downloads anything. It writes into OUT_DIR:

* the checkpoint in the package's own format: `checkpoint.th` (EnCodec: a bare `state_dict`, as
  `encodec_24khz-d7cc33bc.th`) or `checkpoint.pt` (LAION-CLAP: `{"epoch", "state_dict"}` with the `module.` prefix of
  a DistributedDataParallel training run, as `630k-audioset-best.pt`);
* `reference.safetensors`: the inputs and the original module's outputs on them.

    ~/.cache/c3llm/venvs/reference-<hash>/bin/python conversion/reference/make_reference.py encodec_24khz /tmp/ref
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # laion_clap's imports reach for the Hub otherwise

import torch
from safetensors.torch import save_file
from torch import nn

KINDS = ("encodec_24khz", "encodec_48khz", "clap", "clap_fusion")


@torch.no_grad()
def randomize_norms_and_biases(module: nn.Module, generator: torch.Generator) -> None:
    """Moves norm weights/statistics and biases off their default values, so a swapped or dropped one shows."""

    def noise(tensor, scale, offset=0.0):
        tensor.copy_(offset + scale * torch.randn(tensor.shape, generator=generator))

    for sub in module.modules():
        if isinstance(sub, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
            if getattr(sub, "weight", None) is not None:
                noise(sub.weight, 0.1, 1.0)
                noise(sub.bias, 0.1)
            if getattr(sub, "running_mean", None) is not None:
                noise(sub.running_mean, 0.1)
                sub.running_var.copy_(0.5 + torch.rand(sub.running_var.shape, generator=generator))
        elif isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d)) and sub.bias is not None:
            noise(sub.bias, 0.02)


def make_encodec(kind: str, out_dir: Path, generator: torch.Generator) -> None:
    from encodec import EncodecModel

    model = getattr(EncodecModel, f"{kind.replace('encodec_', 'encodec_model_')}")(pretrained=False)
    randomize_norms_and_biases(model, generator)
    bandwidth = max(model.target_bandwidths)
    model.set_target_bandwidth(bandwidth)
    rate, channels = model.sample_rate, model.channels
    # The codebooks start empty (k-means fills them on the first training batch, 50 iterations per level: minutes on a
    # CPU). Seeding each level with residual vectors of a random batch plus noise, as k-means' own start does, is
    # enough here: every level then sees varied codes.
    train_audio = 0.3 * torch.randn(2, channels, rate, generator=generator)
    with torch.no_grad():
        residual = model.encoder(train_audio)  # (batch, dim, frames)
        for layer in model.quantizer.vq.layers:
            samples = residual.transpose(1, 2).reshape(-1, residual.shape[1])
            picks = torch.randint(len(samples), (layer.codebook_size,), generator=generator)
            spread = samples.std() * 0.1
            layer._codebook.embed.copy_(samples[picks] + spread * torch.randn(samples[picks].shape, generator=generator))
            layer._codebook.embed_avg.copy_(layer._codebook.embed)
            layer._codebook.inited.fill_(1)
            residual = residual - layer.decode(layer.encode(residual))
    model.eval()
    torch.save(model.state_dict(), out_dir / "checkpoint.th")

    # Two clips: noise and a chirp.
    if model.segment_length is None:
        length = rate + rate // 3
    else:  # two whole segments and a partial one
        length = 2 * model.segment_stride + model.segment_length // 3
    t = torch.arange(length) / rate
    chirp = 0.5 * torch.sin(2 * torch.pi * (200 + 800 * t) * t)
    audio = torch.stack([0.2 * torch.randn(channels, length, generator=generator), chirp.expand(channels, -1)])
    with torch.no_grad():
        frames = model.encode(audio)  # with segments, the last one is shorter
        decoded = model.decode(frames)
    tensors = {
        "input_values": audio.contiguous(),
        # One entry per segment, each (batch, codebooks, frames).
        **{f"audio_codes.{i}": codes.contiguous() for i, (codes, _) in enumerate(frames)},
        "audio_values": decoded.contiguous(),
        "bandwidth": torch.tensor(bandwidth),
    }
    if model.normalize:
        tensors["audio_scales"] = torch.stack([scale for _, scale in frames]).contiguous()  # (chunks, batch, 1)
    save_file(tensors, out_dir / "reference.safetensors")


def make_clap(fusion: bool, out_dir: Path, generator: torch.Generator) -> None:
    from laion_clap.clap_module.model import CLAP

    # HTSAT-tiny, as in 630k-audioset-best.pt and the fusion checkpoints (fusion type "aff_2d", as the package's
    # CLAP_Module uses). The text branch is the package's own small transformer: it builds offline, and the converter
    # must skip text weights whatever they are.
    audio_cfg = {
        "model_type": "HTSAT", "model_name": "tiny", "sample_rate": 48000, "audio_length": 1024, "window_size": 1024,
        "hop_size": 480, "fmin": 50, "fmax": 14000, "class_num": 527, "mel_bins": 64, "clip_samples": 480000,
    }
    text_cfg = {"context_length": 77, "vocab_size": 100, "width": 64, "heads": 2, "layers": 1, "model_type": "transformer"}
    model = CLAP(
        embed_dim=768, audio_cfg=audio_cfg, text_cfg=text_cfg, enable_fusion=fusion,
        fusion_type="aff_2d" if fusion else "None", joint_embed_shape=512, mlp_act="relu",
    )
    randomize_norms_and_biases(model, generator)
    model.eval()
    state = {f"module.{name}": value for name, value in model.state_dict().items()}
    torch.save({"epoch": 45, "state_dict": state}, out_dir / "checkpoint.pt")

    branch = model.audio_branch
    batch = 3
    if fusion:
        # Channel 0: the whole clip shrunk to the window; 1-3: three crops. Clip 0 is "longer", the others are not.
        inputs = {"mel_fusion": torch.randn(batch, 4, 1001, 64, generator=generator) * 2 - 4,
                  "longer": torch.tensor([[True], [False], [True]])}
        input_features = inputs["mel_fusion"]
        is_longer = inputs["longer"]
    else:
        waveform = 0.3 * torch.randn(batch, audio_cfg["clip_samples"], generator=generator)
        inputs = {"waveform": waveform}
        with torch.no_grad():
            input_features = branch.logmel_extractor(branch.spectrogram_extractor(waveform))  # (batch, 1, time, mel)
        is_longer = torch.zeros(batch, 1, dtype=torch.bool)
    with torch.no_grad():
        encoded = branch({k: v.clone() for k, v in inputs.items()}, device="cpu")
        embeds = model.audio_projection(encoded["embedding"])
        normalized = model.get_audio_embedding([{k: v[i] for k, v in inputs.items()} for i in range(batch)])
    save_file(
        {
            "input_features": input_features.contiguous(),
            "is_longer": is_longer.contiguous(),
            "pooler_output": encoded["embedding"].contiguous(),
            "audio_embeds": embeds.contiguous(),
            "normalized_audio_embeds": normalized.contiguous(),
        },
        out_dir / "reference.safetensors",
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS, help="which original module to build")
    parser.add_argument("out_dir", type=Path, help="folder for the checkpoint and reference.safetensors")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    if args.kind.startswith("encodec"):
        make_encodec(args.kind, args.out_dir, generator)
    else:
        make_clap(args.kind == "clap_fusion", args.out_dir, generator)
    print(f"wrote {args.kind} reference to {args.out_dir}")


if __name__ == "__main__":
    main()
