"""KL divergence of classifier posteriors, reference ‖ generated, as an `evaluate` module."""

import datasets
import evaluate
import numpy as np

from c3llm.metrics.audio_generation import kl_divergence, posteriors
from c3llm.metrics.audio_models import AudioClassifier, as_waveforms, resolve

_DESCRIPTION = """Mean over clip pairs of KL(p_ref ‖ p_gen) of a pretrained audio classifier's posteriors, with
AudioLDM's 1e-6 floor inside the log. The default classifier is PANNs CNN14 (AudioSet)."""

_KWARGS = """
Args:
    predictions: generated audio (mono waveforms), or per-clip logits / probabilities (see input_type).
    references: the paired reference audio (or logits / probabilities), one per prediction.
    input_type (`str`): "audio" (default), "logits" or "probabilities".
    sampling_rate (`int`): rate of the waveforms (audio input).
    classifier: PANNs CNN14 folder or checkpoint, a transformers audio-classification folder or Hub id, or a loaded
        `AudioClassifier`.
    activation (`str`): "softmax" or "sigmoid" for logits; default: sigmoid for CNN14 (multi-label), softmax else.
    eps (`float`): floor inside the log of the generated posteriors (default 1e-6).
Returns:
    {"kl": float}
"""


class KLDivergence(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Liu et al., AudioLDM, ICML 2023 (evaluation protocol)",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Sequence(datasets.Value("float32"))}),
        )  # fmt: skip

    def _compute(self, predictions, references, input_type="audio", sampling_rate=None, classifier=None,
                 activation=None, eps=1e-6, device="cpu"):  # fmt: skip
        if input_type == "probabilities":
            return {"kl": kl_divergence(np.asarray(predictions), np.asarray(references), eps=eps)}
        if input_type == "logits":
            gen, ref = np.asarray(predictions), np.asarray(references)
        elif input_type == "audio":
            model = resolve(classifier, AudioClassifier, "classifier (classifier=...)", device=device)
            gen = np.stack([model.logits(w, sampling_rate) for w in as_waveforms(predictions, sampling_rate)])
            ref = np.stack([model.logits(w, sampling_rate) for w in as_waveforms(references, sampling_rate)])
            activation = activation or ("sigmoid" if model.multi_label else "softmax")
        else:
            raise ValueError(f"input_type must be 'audio', 'logits' or 'probabilities', got {input_type!r}.")
        activation = activation or "softmax"
        return {"kl": kl_divergence(posteriors(gen, activation), posteriors(ref, activation), eps=eps)}
