"""Inception score of a pretrained audio classifier's posteriors as an `evaluate` module."""

import datasets
import evaluate
import numpy as np

from c3llm.metrics.audio_generation import inception_score, posteriors
from c3llm.metrics.audio_models import AudioClassifier, as_waveforms, resolve

_DESCRIPTION = """exp(E_x KL(p(y|x) ‖ p(y))) of classifier posteriors (softmax of its logits, as torch-fidelity and
AudioLDM compute it), mean and standard deviation over splits. The default classifier is PANNs CNN14."""

_KWARGS = """
Args:
    predictions: generated audio (mono waveforms), or per-clip logits / probabilities (see input_type).
    input_type (`str`): "audio" (default), "logits" or "probabilities".
    sampling_rate (`int`): rate of the waveforms (audio input).
    classifier: PANNs CNN14 folder or checkpoint, a transformers audio-classification folder or Hub id, or a loaded
        `AudioClassifier`.
    splits (`int`): number of splits (default 10; at most the number of clips).
Returns:
    {"inception_score": float, "inception_score_std": float}
"""


class InceptionScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Salimans et al., Improved Techniques for Training GANs, NeurIPS 2016",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32"))}),
        )  # fmt: skip

    def _compute(self, predictions, input_type="audio", sampling_rate=None, classifier=None, splits=10, device="cpu"):
        if input_type == "probabilities":
            probs = np.asarray(predictions)
        elif input_type in ("logits", "audio"):
            logits = np.asarray(predictions)
            if input_type == "audio":
                model = resolve(classifier, AudioClassifier, "classifier (classifier=...)", device=device)
                logits = np.stack([model.logits(w, sampling_rate) for w in as_waveforms(predictions, sampling_rate)])
            probs = posteriors(logits, "softmax")
        else:
            raise ValueError(f"input_type must be 'audio', 'logits' or 'probabilities', got {input_type!r}.")
        mean, std = inception_score(probs, splits=splits)
        return {"inception_score": mean, "inception_score_std": std}
