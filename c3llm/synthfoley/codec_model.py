"""The small EnCodec of `c3llm/synthfoley/train_codec.py`: its config, a scale-keeping initialisation, and the training-time
forward pass with EMA-learned residual vector quantization (straight-through), checked against the library's path."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import EncodecConfig, EncodecModel

SAMPLING_RATE = 24000
HOP_LENGTH = 320  # prod(upsampling_ratios)
BANDWIDTH = 1.5  # kbps: 2 codebooks of 10 bits at 75 frames/s
WEIGHT_GAIN = 1.0

# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def make_config(
    num_filters: int = 6, hidden_size: int = 32, num_lstm_layers: int = 1, codebook_size: int = 1024
) -> EncodecConfig:
    """The tiny EnCodec config: 24 kHz mono, hop 320 (75 frames/s), 2 codebooks of `codebook_size` codes."""
    return EncodecConfig(
        sampling_rate=SAMPLING_RATE,
        audio_channels=1,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        target_bandwidths=[BANDWIDTH],
        upsampling_ratios=[8, 5, 4, 2],
        num_filters=num_filters,
        hidden_size=hidden_size,
        codebook_dim=hidden_size,
        codebook_size=codebook_size,
        num_lstm_layers=num_lstm_layers,
        num_residual_layers=1,
    )


@torch.no_grad()
def reset_weights(model: EncodecModel) -> EncodecModel:
    """Re-initialises the convolutions and LSTMs for training from scratch.

    The library's initialisation targets loading pretrained weights: it leaves the weight-norm gains of the
    convolutions small (the input signal drowns in the biases) and the encoder then hardly gets a gradient. Here each
    convolution gets normal weights of std `WEIGHT_GAIN / sqrt(fan_in)` (fan_in of a transposed convolution:
    in_channels * kernel / stride), set through the weight-norm parametrization (gain = the weight's norm), and zero
    biases, so that the signal keeps its scale through the network; the LSTMs get PyTorch's default init.
    """
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            kernel, stride = module.kernel_size[0], module.stride[0]
            if isinstance(module, torch.nn.ConvTranspose1d):  # each output sees kernel/stride taps per input channel
                fan_in = module.in_channels * kernel / stride
            else:
                fan_in = module.in_channels * kernel
            weight = torch.randn_like(module.weight) * (WEIGHT_GAIN / math.sqrt(fan_in))
            module.weight = weight  # weight-norm right inverse: sets the gain and the direction
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, torch.nn.LSTM):
            module.reset_parameters()
    return model


@dataclass
class QuantizerStats:
    """Per-codebook figures of one forward pass."""

    perplexity: list[float] = field(default_factory=list)  # exp(entropy) of the code histogram of the batch
    replaced: list[int] = field(default_factory=list)  # dead codes replaced in this step


class CodebookTrainer:
    """EMA (k-means-like) training of the RVQ codebooks, which are buffers in transformers' `EncodecModel`.

    For each codebook, every training step: `cluster_size <- decay * cluster_size + (1 - decay) * counts`,
    `embed_avg <- decay * embed_avg + (1 - decay) * sum of the assigned vectors`, and `embed = embed_avg / cluster_size`
    with Laplace smoothing of `cluster_size`. A codebook that has never been trained (all-zero `cluster_size`) is first
    initialised with random vectors of the batch. Codes not chosen during the last `dead_after_steps` steps are dead:
    they restart at random vectors of the current batch (this keeps all 1024 codes in use).
    """

    def __init__(self, decay: float = 0.99, epsilon: float = 1e-5, dead_after_steps: int = 20, seed: int = 0):
        self.decay = decay
        self.epsilon = epsilon
        self.dead_after_steps = dead_after_steps
        self.generator = torch.Generator().manual_seed(seed)
        self.idle_steps: dict[int, torch.Tensor] = {}  # codebook id -> steps since each code was last chosen

    @torch.no_grad()
    def initialise(self, codebook, vectors: torch.Tensor) -> None:
        """Codes = random rows of `vectors` (with replacement and a little jitter if there are fewer rows)."""
        num_codes = codebook.embed.shape[0]
        if vectors.shape[0] >= num_codes:
            picked = vectors[torch.randperm(vectors.shape[0], generator=self.generator)[:num_codes]]
        else:
            picked = self._sample(vectors, num_codes)
        expected = vectors.shape[0] / num_codes
        codebook.embed.copy_(picked)
        codebook.cluster_size.fill_(expected)
        codebook.embed_avg.copy_(picked * expected)
        codebook.inited.fill_(1.0)

    @torch.no_grad()
    def kmeans_initialise(self, model: EncodecModel, vectors: torch.Tensor, frames_per_step: int, iterations: int = 15):
        """Initialises every codebook by k-means on encoder outputs `vectors` (N, D), stage by stage on the residuals
        of the previous stages; `cluster_size` starts at each cluster's share of `frames_per_step`."""
        residual = vectors
        for layer in model.quantizer.layers:
            codebook = layer.codebook
            num_codes = codebook.embed.shape[0]
            centers = self._sample(residual, num_codes)
            for _ in range(iterations):
                indices = _nearest(residual, centers)
                counts = torch.bincount(indices, minlength=num_codes)
                sums = torch.zeros_like(centers).index_add_(0, indices, residual)
                empty = counts == 0
                centers = torch.where(empty.unsqueeze(1), centers, sums / counts.clamp_min(1).unsqueeze(1))
                if empty.any():  # restart empty clusters at random points
                    centers[empty] = self._sample(residual, int(empty.sum()))
            indices = _nearest(residual, centers)
            counts = torch.bincount(indices, minlength=num_codes).to(vectors.dtype)
            cluster_size = (counts * frames_per_step / residual.shape[0]).clamp_min(frames_per_step / residual.shape[0])
            codebook.embed.copy_(centers)
            codebook.cluster_size.copy_(cluster_size)
            codebook.embed_avg.copy_(centers * cluster_size.unsqueeze(1))
            codebook.inited.fill_(1.0)
            residual = residual - centers[indices]

    def _sample(self, vectors: torch.Tensor, count: int) -> torch.Tensor:
        picked = vectors[torch.randint(vectors.shape[0], (count,), generator=self.generator)]
        jitter = torch.randn(picked.shape, generator=self.generator) * (1e-3 * vectors.std())
        return picked + jitter

    @torch.no_grad()
    def update(self, codebook, vectors: torch.Tensor, indices: torch.Tensor) -> int:
        """One EMA step on `vectors` (N, D) assigned to `indices` (N,); returns the number of dead codes replaced."""
        num_codes = codebook.embed.shape[0]
        counts = torch.bincount(indices, minlength=num_codes).to(vectors.dtype)
        sums = torch.zeros_like(codebook.embed).index_add_(0, indices, vectors)
        codebook.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        codebook.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = codebook.cluster_size.sum()
        smoothed = (codebook.cluster_size + self.epsilon) / (total + num_codes * self.epsilon) * total
        codebook.embed.copy_(codebook.embed_avg / smoothed.unsqueeze(1))

        idle = self.idle_steps.setdefault(id(codebook), torch.zeros(num_codes, dtype=torch.long))
        idle.add_(1).masked_fill_(counts > 0, 0)
        dead = idle >= self.dead_after_steps
        num_dead = int(dead.sum())
        if num_dead:
            picked = self._sample(vectors, num_dead)
            expected = vectors.shape[0] / num_codes
            codebook.embed[dead] = picked
            codebook.embed_avg[dead] = picked * expected
            codebook.cluster_size[dead] = expected
            idle[dead] = 0
        return num_dead


def _nearest(vectors: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of `embed` (K, D) for each row of `vectors` (N, D), as the library computes it."""
    distances = vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ embed.t() + embed.pow(2).sum(1).unsqueeze(0)
    return distances.argmin(dim=1)


def quantize(
    model: EncodecModel, embeddings: torch.Tensor, trainer: CodebookTrainer | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, QuantizerStats]:
    """Residual vector quantization of encoder outputs `(B, D, T)` with all the model's codebooks.

    Returns the quantized embeddings with straight-through gradients (value: the sum of the chosen codes; gradient:
    identity to `embeddings`), the codes `(B, num_quantizers, T)`, the commitment loss (mean squared distance of each
    stage's residual to its code, summed over stages) and statistics. With a `trainer`, every codebook takes one EMA
    step on its residuals (after the codes were chosen with the codebook as it was).
    """
    batch, dim, frames = embeddings.shape
    residual = embeddings
    quantized_sum = torch.zeros_like(embeddings)
    codes, commitment, stats = [], embeddings.new_zeros(()), QuantizerStats()
    for layer in model.quantizer.layers:
        codebook = layer.codebook
        flat = residual.detach().permute(0, 2, 1).reshape(-1, dim)
        if trainer is not None and codebook.cluster_size.sum() == 0:
            trainer.initialise(codebook, flat)
        embed = codebook.embed
        indices = _nearest(flat, embed)
        chosen = embed[indices].clone()
        quantized = chosen.view(batch, frames, dim).permute(0, 2, 1)
        commitment = commitment + F.mse_loss(residual, quantized)
        histogram = torch.bincount(indices, minlength=embed.shape[0]).float() / indices.numel()
        nonzero = histogram[histogram > 0]
        stats.perplexity.append(float((-(nonzero * nonzero.log()).sum()).exp()))
        if trainer is not None:
            stats.replaced.append(trainer.update(codebook, flat, indices))
        codes.append(indices.view(batch, frames))
        quantized_sum = quantized_sum + quantized
        residual = residual - quantized
    straight_through = embeddings + (quantized_sum - embeddings).detach()
    return straight_through, torch.stack(codes, dim=1), commitment, stats


def codec_forward(
    model: EncodecModel, audio: torch.Tensor, trainer: CodebookTrainer | None = None, quantize_latents: bool = True
):
    """Encoder -> residual VQ -> decoder on `(B, 1, L)` audio (L a multiple of 320 keeps lengths equal); with a
    `trainer`, the codebooks take an EMA step; without `quantize_latents` the decoder gets the encoder outputs
    (the quantizer warm-up). Returns `(reconstruction (B, 1, L), codes (B, num_quantizers, frames) or None,
    commitment loss, QuantizerStats)`.
    """
    embeddings = model.encoder(audio)
    if quantize_latents:
        quantized, codes, commitment, stats = quantize(model, embeddings, trainer)
    else:
        quantized, codes, commitment, stats = embeddings, None, embeddings.new_zeros(()), QuantizerStats()
    reconstruction = model.decoder(quantized)[..., : audio.shape[-1]]
    return reconstruction, codes, commitment, stats


@torch.no_grad()
def library_reconstruct(model: EncodecModel, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The standard transformers path: `model.encode(x, bandwidth=1.5)` -> `model.decode(codes, [None])`."""
    encoded = model.encode(audio, bandwidth=BANDWIDTH)
    decoded = model.decode(encoded.audio_codes, [None]).audio_values
    return decoded[..., : audio.shape[-1]], encoded.audio_codes[0]


@torch.no_grad()
def check_library_path(model: EncodecModel, audio: torch.Tensor) -> dict:
    """Compares `codec_forward` with the library's encode/decode on `audio`: code agreement and max sample error."""
    was_training = model.training
    model.eval()
    ours, our_codes, _, _ = codec_forward(model, audio)
    theirs, their_codes = library_reconstruct(model, audio)
    model.train(was_training)
    return {
        "code_agreement": float((our_codes == their_codes).float().mean()),
        "max_abs_diff": float((ours - theirs).abs().max()),
    }
