"""Fréchet audio distance as an `evaluate` module (see `c3llm.metrics.audio_generation`)."""

import datasets
import evaluate
import numpy as np

from c3llm.metrics.audio_generation import (
    frechet_audio_distance,
    stack_embeddings,
)
from c3llm.metrics.audio_models import AudioEmbedder, as_waveforms, resolve

_DESCRIPTION = """Fréchet distance between the Gaussians fitted to the embeddings of generated and of reference audio
(Kilgour et al. 2019). VGGish embeddings (one per 0.96 s patch) as in the paper; PANNs CNN14 and CLAP as options."""

_KWARGS = """
Args:
    predictions: generated audio, one mono waveform per clip (or one embedding per row with input_type="embeddings").
    references: reference audio (or embeddings), as many rows as predictions.
    input_type (`str`): "audio" (default) or "embeddings".
    sampling_rate (`int`): rate of the waveforms (audio input).
    embedding (`str`): "vggish" (default), "panns" or "clap".
    model: the embedding model: a folder or checkpoint file (VGGish, CNN14), a CLAP folder or Hub id, or a loaded
        `AudioEmbedder`.
Returns:
    {"fad": float}
"""


class FrechetAudioDistance(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Kilgour et al., Fréchet Audio Distance, Interspeech 2019",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Sequence(datasets.Value("float32"))}),
        )  # fmt: skip

    def _compute(self, predictions, references, input_type="audio", sampling_rate=None, embedding="vggish",
                 model=None, device="cpu"):  # fmt: skip
        if input_type == "embeddings":
            return {"fad": frechet_audio_distance(np.asarray(predictions), np.asarray(references))}
        if input_type != "audio":
            raise ValueError(f"input_type must be 'audio' or 'embeddings', got {input_type!r}.")
        embedder = resolve(model, AudioEmbedder, "embedding model (model=...)", embedding, device=device)
        gen = [embedder(w, sampling_rate) for w in as_waveforms(predictions, sampling_rate)]
        ref = [embedder(w, sampling_rate) for w in as_waveforms(references, sampling_rate)]
        return {"fad": frechet_audio_distance(stack_embeddings(gen), stack_embeddings(ref))}
