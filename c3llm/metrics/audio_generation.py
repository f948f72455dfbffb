"""Audio-generation metrics of the paper (Tables 1 and 5): FAD, KL, IS and the CLAP text-audio score.

The formulas follow the tooling these numbers usually come from: the Fréchet distance as in pytorch-fid / the FAD
paper (matrix square root by `scipy.linalg.sqrtm`), KL(reference ‖ generated) of classifier posteriors per clip pair
averaged over pairs, as AudioLDM's evaluation computes it (with its 1e-6 floor inside the log), and the Inception
score exp(E_x KL(p(y|x) ‖ p(y))) averaged over splits, as torch-fidelity and AudioLDM compute it. No maintained
package fits the pins here (numpy<2, torch 2.13, no downloads at run time): `frechet-audio-distance` and `fadtk` need
torchaudio and fetch their models, so the formulas are written out and tested against closed forms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import linalg


def _matrix(values, name: str, min_rows: int = 1) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (items, dims), got shape {array.shape}.")
    if array.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {array.shape[0]}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return array


def embedding_statistics(embeddings) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, rows are samples) covariance of embeddings (n, dim); needs n >= 2."""
    embeddings = _matrix(embeddings, "embeddings", min_rows=2)
    return embeddings.mean(axis=0), np.cov(embeddings, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||² + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^½)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: means {mu1.shape} and {mu2.shape}, covariances {sigma1.shape} "
                         f"and {sigma2.shape}; both sets must be embedded by the same model.")  # fmt: skip
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: regularise, as pytorch-fid does
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"the covariance square root has a large imaginary part ({np.abs(covmean.imag).max():.3g}).")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_audio_distance(generated_embeddings, reference_embeddings) -> float:
    """FAD between two sets of embeddings (n, dim) (e.g. every VGGish patch of every clip)."""
    return frechet_distance(*embedding_statistics(generated_embeddings), *embedding_statistics(reference_embeddings))


def posteriors(logits, activation: str = "softmax") -> np.ndarray:
    """Class posteriors from logits (n, classes): "softmax" (one label per clip) or "sigmoid" (multi-label)."""
    logits = _matrix(logits, "logits")
    if activation == "softmax":
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")


def _check_probabilities(probabilities, name: str) -> np.ndarray:
    array = _matrix(probabilities, name)
    if (array < 0).any() or (array > 1 + 1e-6).any():
        raise ValueError(f"{name} must hold probabilities in [0, 1]; pass logits with input_type='logits' instead.")
    return array


def kl_divergence(generated_probabilities, reference_probabilities, eps: float = 1e-6) -> float:
    """Mean over clip pairs of KL(reference ‖ generated) = Σ_c p_ref log(p_ref / (p_gen + eps)), 0·log 0 = 0."""
    gen = _check_probabilities(generated_probabilities, "generated posteriors")
    ref = _check_probabilities(reference_probabilities, "reference posteriors")
    if gen.shape != ref.shape:
        raise ValueError(f"generated {gen.shape} and reference {ref.shape} posteriors must pair up clip by clip.")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(ref > 0, ref * (np.log(ref) - np.log(gen + eps)), 0.0)
    return float(terms.sum(axis=1).mean())


def inception_score(probabilities, splits: int = 10, eps: float = 1e-12) -> tuple[float, float]:
    """Inception score of posteriors (n, classes): mean and standard deviation over `splits` equal splits of
    exp(mean_x KL(p(y|x) ‖ p(y))), p(y) the split's marginal."""
    probs = _check_probabilities(probabilities, "posteriors")
    if not 1 <= splits <= len(probs):
        raise ValueError(f"splits must be between 1 and the number of clips ({len(probs)}), got {splits}.")
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part + eps) - np.log(marginal + eps)), 0.0).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def clap_score(audio_embeddings, text_embeddings) -> float:
    """Mean cosine similarity of paired CLAP audio and text embeddings (n, dim)."""
    audio, text = _matrix(audio_embeddings, "audio embeddings"), _matrix(text_embeddings, "text embeddings")
    if audio.shape != text.shape:
        raise ValueError(f"audio {audio.shape} and text {text.shape} embeddings must pair up clip by clip.")
    audio = audio / np.linalg.norm(audio, axis=1, keepdims=True).clip(1e-12)
    text = text / np.linalg.norm(text, axis=1, keepdims=True).clip(1e-12)
    return float((audio * text).sum(axis=1).mean())


def stack_embeddings(per_clip: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenates per-clip embedding arrays (n_i, dim) into one (Σ n_i, dim) set."""
    if not per_clip:
        raise ValueError("no embeddings to stack.")
    return np.concatenate([np.atleast_2d(e) for e in per_clip], axis=0)
