"""CLAP text-audio score as an `evaluate` module."""

import datasets
import evaluate

from c3llm.metrics.audio_generation import clap_score
from c3llm.metrics.audio_models import ClapScorer, as_waveforms, resolve

_DESCRIPTION = """Mean cosine similarity between the CLAP embedding of each generated clip and of its text prompt."""

_KWARGS = """
Args:
    predictions: generated audio, one mono waveform per clip.
    references (`list[str]`): the text prompt of each clip.
    sampling_rate (`int`): rate of the waveforms.
    model: a transformers CLAP folder or Hub id (e.g. laion/clap-htsat-unfused), or a loaded `ClapScorer`.
Returns:
    {"clap_score": float}
"""


class ClapScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Wu et al., Large-scale Contrastive Language-Audio Pretraining, ICASSP 2023",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Value("string")}),
        )  # fmt: skip

    def _compute(self, predictions, references, sampling_rate=None, model=None, device="cpu"):
        scorer = resolve(model, ClapScorer, "CLAP model (model=...)", device=device)
        audio = scorer.audio(as_waveforms(predictions, sampling_rate), sampling_rate)
        return {"clap_score": clap_score(audio, scorer.text(references))}
