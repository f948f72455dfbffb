"""Onset accuracy and onset AP (CondFoleyGen) as an `evaluate` module (see `c3llm.metrics.onsets`)."""

import datasets
import evaluate

from c3llm.metrics.audio_models import as_waveforms
from c3llm.metrics.onsets import TOLERANCE, onset_metrics

_DESCRIPTION = """Synchronization of generated with reference audio: the share of clips with as many onsets as the
reference ("# onset accuracy"), the onset AP and the share of reference onsets detected within 0.1 s."""

_KWARGS = """
Args:
    predictions: generated audio, one mono waveform per clip.
    references: the reference audio of each clip.
    sampling_rate (`int`): rate of the waveforms (they are resampled to 22.05 kHz).
    tolerance (`float`): seconds within which a generated onset detects a reference onset (default 0.1).
Returns:
    {"onset_accuracy": float, "onset_ap": float, "onset_detection_accuracy": float}
"""


class OnsetSync(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Du et al., Conditional Generation of Audio from Video via Foley "
            "Analogies, CVPR 2023", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Sequence(datasets.Value("float32"))}),
        )  # fmt: skip

    def _compute(self, predictions, references, sampling_rate=None, tolerance=TOLERANCE):
        generated = as_waveforms(predictions, sampling_rate)
        return onset_metrics(generated, as_waveforms(references, sampling_rate), sampling_rate, tolerance)
