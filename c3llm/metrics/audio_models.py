"""The pretrained audio models behind the generation metrics: embedders for FAD and classifiers for KL and IS.

* **VGGish** (Hershey et al. 2017), the embedding of the original FAD (Kilgour et al. 2019) and of the paper's tooling:
  16 kHz log-mel patches of 0.96 s, a VGG-like CNN, one 128-d embedding per patch (before the PCA/quantization
  post-processing, as `frechet-audio-distance` and AudioLDM's evaluation use it).
* **PANNs CNN14** (Kong et al. 2020), AudioSet tagging at 32 kHz: its 2048-d `fc1` output is an FAD embedding and its
  527 sigmoid outputs the classifier posteriors of KL and IS (as AudioLDM's evaluation does).
* **CLAP** (transformers' `ClapModel`): audio embeddings for FAD and the text-audio score.
* Any transformers audio classifier (`AutoModelForAudioClassification`, e.g. AST fine-tuned on AudioSet).

Neither VGGish nor CNN14 is in transformers, and the PyPI packages that wrap them (`torchvggish`, `panns-inference`,
`frechet-audio-distance`) download their checkpoints at run time, so both networks are written here and read their
weights from a local file: the original checkpoints (`vggish-10086976.pth`; `Cnn14_mAP=0.431.pth`, whose front-end
buffers are recomputed, not loaded) through `torch.load(weights_only=True)`, or a folder with `config.json` +
`model.safetensors` as `save_pretrained` writes it. Nothing is fetched: every model comes from a path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.audio_utils import mel_filter_bank

from processing_c3llm.media_c3llm import atomic_path, resample, write_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ---- front-ends ---------------------------------------------------------------------------------------------------
def _stft_power(waveform: torch.Tensor, n_fft: int, hop: int, window: int, center: bool, periodic: bool) -> torch.Tensor:
    """|STFT|² of (batch, samples) with a Hann window of `window` samples zero-padded to `n_fft`: (batch, frames, bins)."""
    taper = torch.hann_window(window, periodic=periodic, dtype=waveform.dtype, device=waveform.device)
    spec = torch.stft(waveform, n_fft, hop_length=hop, win_length=window, window=taper, center=center,
                      pad_mode="reflect", return_complex=True)  # fmt: skip
    return spec.abs().pow(2).transpose(1, 2)


# ---- VGGish ---------------------------------------------------------------------------------------------------------
VGGISH_DEFAULTS = {"architecture": "vggish", "channels": [64, 128, 256, 512], "hidden_size": 4096,
                   "embedding_size": 128, "sampling_rate": 16000}  # fmt: skip


class VGGish(nn.Module):
    """VGGish: log-mel patches (96 frames × 64 bands, 10 ms hop, 125-7500 Hz, HTK mel, log(mel + 0.01)) → 128-d.

    Layer names follow `torchvggish` (`features.*`, `embeddings.*`), so its checkpoint loads as it is."""

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        self.config = {**VGGISH_DEFAULTS, **(config or {})}
        c1, c2, c3, c4 = self.config["channels"]
        layers: list[nn.Module] = []
        for i, (cin, cout, pool) in enumerate([(1, c1, 1), (c1, c2, 1), (c2, c3, 0), (c3, c3, 1), (c3, c4, 0), (c4, c4, 1)]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        hidden = self.config["hidden_size"]
        self.embeddings = nn.Sequential(
            nn.Linear(c4 * 6 * 4, hidden), nn.ReLU(True), nn.Linear(hidden, hidden), nn.ReLU(True),
            nn.Linear(hidden, self.config["embedding_size"]), nn.ReLU(True),
        )  # fmt: skip
        mel = mel_filter_bank(num_frequency_bins=257, num_mel_filters=64, min_frequency=125.0, max_frequency=7500.0,
                              sampling_rate=16000, norm=None, mel_scale="htk")  # fmt: skip
        self.register_buffer("mel_filters", torch.from_numpy(mel).float(), persistent=False)

    @property
    def sampling_rate(self) -> int:
        return self.config["sampling_rate"]

    def log_mel_patches(self, waveform: torch.Tensor) -> torch.Tensor:
        """(samples,) at 16 kHz → (patches, 1, 96, 64); a clip shorter than one patch is zero-padded to 0.96 s."""
        waveform = nn.functional.pad(waveform, (0, max(0, 15600 - waveform.shape[-1])))
        power = _stft_power(waveform[None], 512, 160, 400, center=False, periodic=True)[0]
        log_mel = torch.log(power.sqrt() @ self.mel_filters + 0.01)
        patches = log_mel.shape[0] // 96
        return log_mel[: patches * 96].reshape(patches, 1, 96, 64)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.features(patches)
        x = x.permute(0, 2, 3, 1).flatten(1)  # channels last, as the TensorFlow original flattens
        return self.embeddings(x)

    @torch.no_grad()
    def embed(self, waveform: np.ndarray) -> np.ndarray:
        """One 128-d embedding per 0.96 s patch of a 16 kHz mono waveform: (patches, 128)."""
        weight = next(self.parameters())
        patches = self.log_mel_patches(torch.as_tensor(waveform, dtype=torch.float32, device=weight.device))
        return self(patches.to(weight.dtype)).float().cpu().numpy()


# ---- PANNs CNN14 ----------------------------------------------------------------------------------------------------
CNN14_DEFAULTS = {"architecture": "cnn14", "channels": [64, 128, 256, 512, 1024, 2048], "num_classes": 527,
                  "sampling_rate": 32000, "n_fft": 1024, "hop_length": 320, "num_mel_bins": 64, "fmin": 50.0,
                  "fmax": 14000.0}  # fmt: skip


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return nn.functional.avg_pool2d(x, pool)


class Cnn14(nn.Module):
    """PANNs CNN14: 32 kHz log-mel (1024-point STFT, 320 hop, 64 Slaney mel bands 50-14000 Hz, dB) → six conv
    blocks → time max + mean → `fc1` (the embedding) → `fc_audioset` (sigmoid tag posteriors). Layer names follow
    the PANNs checkpoints."""

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        self.config = {**CNN14_DEFAULTS, **(config or {})}
        cfg = self.config
        channels = cfg["channels"]
        self.bn0 = nn.BatchNorm2d(cfg["num_mel_bins"])
        for i, (cin, cout) in enumerate(zip([1, *channels[:-1]], channels), 1):
            setattr(self, f"conv_block{i}", _ConvBlock(cin, cout))
        self.fc1 = nn.Linear(channels[-1], channels[-1])
        self.fc_audioset = nn.Linear(channels[-1], cfg["num_classes"])
        mel = mel_filter_bank(num_frequency_bins=cfg["n_fft"] // 2 + 1, num_mel_filters=cfg["num_mel_bins"],
                              min_frequency=cfg["fmin"], max_frequency=cfg["fmax"], sampling_rate=cfg["sampling_rate"],
                              norm="slaney", mel_scale="slaney")  # fmt: skip
        self.register_buffer("mel_filters", torch.from_numpy(mel).float(), persistent=False)

    @property
    def sampling_rate(self) -> int:
        return self.config["sampling_rate"]

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(batch, samples) → (batch, 1, frames, mel bins) in dB (10·log10, floor 1e-10)."""
        n_fft = self.config["n_fft"]
        power = _stft_power(waveform, n_fft, self.config["hop_length"], n_fft, center=True, periodic=True)
        return (10.0 * torch.log10((power @ self.mel_filters).clamp_min(1e-10)))[:, None]

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.bn0(self.log_mel(waveform).transpose(1, 3)).transpose(1, 3)
        blocks = len(self.config["channels"])
        for i in range(1, blocks + 1):
            x = getattr(self, f"conv_block{i}")(x, (2, 2) if i < blocks else (1, 1))
        x = x.mean(dim=3)
        x = x.max(dim=2).values + x.mean(dim=2)
        embedding = torch.relu(self.fc1(x))
        logits = self.fc_audioset(embedding)
        return {"embedding": embedding, "logits": logits, "probabilities": torch.sigmoid(logits)}


# ---- saving and loading ---------------------------------------------------------------------------------------------
_ARCHITECTURES = {"vggish": VGGish, "cnn14": Cnn14}


def save_audio_model(model: VGGish | Cnn14, folder: str | os.PathLike) -> Path:
    """Writes `config.json` and `model.safetensors` (atomically) so that `load_audio_model(folder)` reads them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_NAME, suffix=".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    write_text(folder / CONFIG_NAME, json.dumps(model.config, indent=2))
    return folder


def load_audio_model(path: str | os.PathLike, architecture: str | None = None) -> VGGish | Cnn14:
    """A VGGish or CNN14 from a folder written by `save_audio_model`, or from an original checkpoint file
    (`.pth`/`.pt`, read with `weights_only=True`; `architecture` must then be given)."""
    path = Path(path)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise ValueError(f"{path} must hold {CONFIG_NAME} and {WEIGHTS_NAME} (see save_audio_model).")
        config = json.loads((path / CONFIG_NAME).read_text())
        architecture = config.get("architecture")
        state = load_file(path / WEIGHTS_NAME)
    elif path.is_file():
        config = {}
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("model", state)  # PANNs wrap the state dict in {"model": ...}
    else:
        raise ValueError(f"audio model path {path} does not exist; give a folder or a checkpoint file.")
    if architecture not in _ARCHITECTURES:
        raise ValueError(f"unknown audio model architecture {architecture!r} for {path}; "
                         f"expected one of {', '.join(_ARCHITECTURES)}.")  # fmt: skip
    model = _ARCHITECTURES[architecture](config or _sizes_from_state(architecture, state))
    # The PANNs checkpoints also hold their front-end (STFT kernels, mel matrix), which is recomputed here.
    state = {k: v for k, v in state.items() if not k.startswith(("spectrogram_extractor.", "logmel_extractor."))}
    model.load_state_dict(state)
    return model.eval()


def _sizes_from_state(architecture: str, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Layer widths of a checkpoint without a config (the original ones have the default widths)."""
    if architecture == "cnn14":
        channels = [state[f"conv_block{i}.conv1.weight"].shape[0] for i in range(1, 7) if f"conv_block{i}.conv1.weight" in state]
        return {"channels": channels, "num_classes": state["fc_audioset.weight"].shape[0]}
    convs = [state[f"features.{i}.weight"].shape[0] for i in (0, 3, 6, 11)]
    return {"channels": convs, "hidden_size": state["embeddings.0.weight"].shape[0],
            "embedding_size": state["embeddings.4.weight"].shape[0]}  # fmt: skip


# ---- what the metrics call ------------------------------------------------------------------------------------------
class AudioEmbedder:
    """Embeds waveforms for FAD. `kind` is "vggish" (one 128-d vector per 0.96 s patch), "panns" (CNN14's 2048-d
    `fc1` per clip) or "clap" (a transformers CLAP folder or Hub id: the projected audio embedding per clip)."""

    KINDS = ("vggish", "panns", "clap")

    def __init__(self, kind: str, path: str | os.PathLike, device: str | torch.device = "cpu"):
        if kind not in self.KINDS:
            raise ValueError(f"embedding must be one of {', '.join(self.KINDS)}, got {kind!r}.")
        self.kind, self.device = kind, torch.device(device)
        if kind == "clap":
            from transformers import ClapModel, ClapProcessor

            self.model = ClapModel.from_pretrained(path).to(self.device).eval()
            self.processor = ClapProcessor.from_pretrained(path)
            self.sampling_rate = self.processor.feature_extractor.sampling_rate
        else:
            self.model = load_audio_model(path, "vggish" if kind == "vggish" else "cnn14").to(self.device)
            if kind == "panns" and not isinstance(self.model, Cnn14) or kind == "vggish" and not isinstance(self.model, VGGish):
                raise ValueError(f"{path} holds a {self.model.config['architecture']} model, not a {kind} one.")
            self.sampling_rate = self.model.sampling_rate

    @torch.no_grad()
    def __call__(self, waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
        """Embeddings (n, dim) of one mono waveform (n = patches for VGGish, 1 otherwise)."""
        audio = resample(np.asarray(waveform, dtype=np.float64), sampling_rate, self.sampling_rate).astype(np.float32)
        if self.kind == "vggish":
            return self.model.embed(audio)
        if self.kind == "panns":
            return self.model(torch.from_numpy(audio)[None].to(self.device))["embedding"].cpu().numpy()
        return clap_audio_embeddings(self.model, self.processor, [audio], self.device)


def clap_audio_embeddings(model, processor, waveforms: list[np.ndarray], device: torch.device) -> np.ndarray:
    """Unit-norm CLAP audio embeddings (n, dim) of mono waveforms at the processor's rate."""
    rate = processor.feature_extractor.sampling_rate
    inputs = processor(audio=waveforms, sampling_rate=rate, return_tensors="pt").to(device)
    return model.get_audio_features(**inputs).pooler_output.float().cpu().numpy()


class ClapScorer:
    """Text and audio embeddings of a transformers CLAP model (folder or Hub id) for the CLAP text-audio score."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        from transformers import ClapModel, ClapProcessor

        self.device = torch.device(device)
        self.model = ClapModel.from_pretrained(path).to(self.device).eval()
        self.processor = ClapProcessor.from_pretrained(path)
        self.sampling_rate = self.processor.feature_extractor.sampling_rate

    @torch.no_grad()
    def audio(self, waveforms: list[np.ndarray], sampling_rate: int) -> np.ndarray:
        audio = [resample(np.asarray(w, dtype=np.float64), sampling_rate, self.sampling_rate).astype(np.float32)
                 for w in waveforms]  # fmt: skip
        return clap_audio_embeddings(self.model, self.processor, audio, self.device)

    @torch.no_grad()
    def text(self, texts: list[str]) -> np.ndarray:
        inputs = self.processor(text=list(texts), padding=True, return_tensors="pt").to(self.device)
        return self.model.get_text_features(**inputs).pooler_output.float().cpu().numpy()


class AudioClassifier:
    """Class posteriors for KL and IS: a PANNs CNN14 (folder or checkpoint; sigmoid outputs over AudioSet's 527
    classes) or a transformers `AutoModelForAudioClassification` folder or Hub id (softmax over its labels)."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        config_file = Path(path) / CONFIG_NAME
        ours = Path(path).is_file() or (config_file.is_file() and "architecture" in json.loads(config_file.read_text()))
        if ours:
            self.model = load_audio_model(path, "cnn14").to(self.device)
            if not isinstance(self.model, Cnn14):
                raise ValueError(f"{path} holds a {self.model.config['architecture']} model, not a classifier.")
            self.sampling_rate, self.extractor = self.model.sampling_rate, None
        else:
            from transformers import (
                AutoFeatureExtractor,
                AutoModelForAudioClassification,
            )

            self.model = AutoModelForAudioClassification.from_pretrained(path).to(self.device).eval()
            self.extractor = AutoFeatureExtractor.from_pretrained(path)
            self.sampling_rate = self.extractor.sampling_rate
        self.multi_label = self.extractor is None

    @torch.no_grad()
    def logits(self, waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
        """Class logits (classes,) of one mono waveform."""
        audio = resample(np.asarray(waveform, dtype=np.float64), sampling_rate, self.sampling_rate).astype(np.float32)
        if self.extractor is None:
            return self.model(torch.from_numpy(audio)[None].to(self.device))["logits"][0].cpu().numpy()
        inputs = self.extractor([audio], sampling_rate=self.sampling_rate, return_tensors="pt").to(self.device)
        return self.model(**inputs).logits[0].float().cpu().numpy()


def as_waveforms(values, sampling_rate: int | None) -> list[np.ndarray]:
    """Validates a list of mono waveforms (arrays or lists of floats) given with their `sampling_rate`."""
    if sampling_rate is None or int(sampling_rate) <= 0:
        raise ValueError("audio inputs need their rate: pass sampling_rate=<Hz>.")
    waveforms = [np.asarray(v, dtype=np.float32).reshape(-1) for v in values]
    for i, w in enumerate(waveforms):
        if w.size == 0 or not np.isfinite(w).all():
            raise ValueError(f"waveform {i} is empty or holds NaN/infinite values.")
    return waveforms


def resolve(value, cls: type, what: str, *args, device: str | torch.device = "cpu"):
    """`value` if it is already a loaded `cls`, else `cls(*args, value, device=device)` from a path or Hub id."""
    if isinstance(value, cls):
        return value
    if value is None:
        raise ValueError(f"audio inputs need a {what}: pass its folder, checkpoint file or Hub id.")
    return cls(*args, value, device=device)
