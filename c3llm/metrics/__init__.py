"""Evaluation metrics of the C3LLM paper, as plain functions and as `evaluate` modules.

Each folder here is an `evaluate` module, loaded offline from its path:

    import evaluate
    from c3llm.metrics import metric_path

    captioning = evaluate.load(metric_path("audio_captioning"))
    captioning.compute(predictions=["a dog barks"], references=[["a dog is barking", "dogs bark"]])
"""

from pathlib import Path

from .audio_generation import (
    clap_score,
    embedding_statistics,
    frechet_audio_distance,
    frechet_distance,
    inception_score,
    kl_divergence,
    posteriors,
)
from .captioning import CAPTION_METRICS, MissingToolError, caption_scores
from .onsets import clip_onset_scores, detect_onsets, onset_metrics

METRICS_DIR = Path(__file__).resolve().parent
MODULES = ("audio_captioning", "frechet_audio_distance", "kl_divergence", "inception_score", "clap_score", "onset_sync")


def metric_path(name: str) -> str:
    """Folder of one of the `evaluate` modules (`MODULES`), for `evaluate.load`."""
    if name not in MODULES:
        raise ValueError(f"unknown metric module {name!r}; choose one of {', '.join(MODULES)}.")
    return str(METRICS_DIR / name)


__all__ = [
    "CAPTION_METRICS", "MODULES", "MissingToolError", "caption_scores", "clap_score", "clip_onset_scores",
    "detect_onsets", "embedding_statistics", "frechet_audio_distance", "frechet_distance", "inception_score",
    "kl_divergence", "metric_path", "onset_metrics", "posteriors",
]  # fmt: skip
