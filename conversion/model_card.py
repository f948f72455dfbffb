"""The Hub model card: rendered from `templates/model_card.md` with `huggingface_hub.ModelCard`, checked offline.

    render_model_card(config, repo_id="me/c3llm", results=[...]).save("model_card.md")
    update_model_index("runs/s1/merged/README.md", results)   # evaluation writes its figures into the card
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from processing_c3llm.media_c3llm import write_text
from processing_c3llm.processing_c3llm import INPUT_ARGUMENTS, TASKS, Task

TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
MODEL_NAME = "C3LLM"
# Example value of each processor argument in the card's snippets (the card's tests provide these files).
EXAMPLE_VALUES = {"text": '"a dog barks"', "audio": '"clip.wav"', "videos": '"clip.mp4"', "images": '"photo.png"',
                  "audio_prompt_codes": 'model.encode_audio(**processor.prepare_audio_target("clip.wav"))[0]'}
OUTPUT_CODE = {
    "audio": """\
out = model.generate(**inputs, audio_length_in_s=2.0, do_sample=True)
waveform = processor.decode_audio(out)[0]            # (channels, samples) at out.sampling_rate""",
    "text": """\
ids = model.generate(**inputs, max_new_tokens=20, do_sample=True)
caption = processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]""",
}
PIPELINE_EXAMPLE = ("text-to-audio pipeline", "The transformers `text-to-audio` pipeline.", """\
from transformers import pipeline

tts = pipeline("text-to-audio", model=model, tokenizer=processor.tokenizer, processor=processor)
result = tts("a dog barks", generate_kwargs={"audio_length_in_s": 1.0, "do_sample": True})""")


# Long-form and streamed audio, shown on the text-to-audio example's `inputs` (its snippet runs just before). 2.5 s is
# beyond the tiny test model's 2 s window, so the card's tests run the windowed path; a real model's is 10 s.
LONG_FORM_EXAMPLE = ("long-form and streamed audio", """\
Audio longer than the model's window (`config.max_audio_seconds`, the training clips' length) is generated in windows,
each continuing the end of the one before (`window_context_in_s`), up to `config.max_generation_seconds` (600 s);
`generate_stream` yields the audio in chunks while it is generated. Here with the text-to-audio `inputs` above.""", """\
out = model.generate(**inputs, audio_length_in_s=2.5, window_context_in_s=0.5)      # e.g. 60.0 for a minute
chunks = [chunk for chunk in model.generate_stream(**inputs, audio_length_in_s=2.5, chunk_length_in_s=0.5)]
streamed = torch.cat(chunks, dim=-1)                  # (batch, channels, samples): 2.5 s at model.config.sampling_rate""")


def task_example(task: Task) -> tuple[str, str, str]:
    """(task, what it does, code run after the loading snippet) of one row of the processor's `TASKS`."""
    arguments = ", ".join(f"{INPUT_ARGUMENTS[kind][0]}={EXAMPLE_VALUES[INPUT_ARGUMENTS[kind][0]]}" for kind in task.inputs)
    code = f'inputs = processor({arguments}, task="{task.name}")\n' + OUTPUT_CODE[task.output]
    return task.name, task.description, code


# One example per task (long-form and streaming right after text-to-audio, whose inputs it reuses), then the pipeline.
# The card's tests run every snippet on a tiny model.
_TASK_EXAMPLES = [task_example(task) for task in TASKS.values()]
_TASK_EXAMPLES.insert(next(i + 1 for i, (name, _, _) in enumerate(_TASK_EXAMPLES) if name == "text-to-audio"),
                      LONG_FORM_EXAMPLE)  # fmt: skip
TASK_EXAMPLES = (*_TASK_EXAMPLES, PIPELINE_EXAMPLE)
NO_RESULTS = "No evaluation results yet: `c3llm eval --model-card` writes them into this card's `model-index`."
EVALUATION_HEADING = "## Evaluation"


def format_value(value) -> str:
    """A metric value as the card's evaluation table prints it."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def evaluation_text(results: list[EvalResult] | None) -> str:
    """The card's evaluation section body: one table row per `model-index` result, so prose and metadata agree."""
    if not results:
        return NO_RESULTS
    rows = [f"| {r.task_name or r.task_type} | {r.dataset_name} | {r.dataset_split or ''} | "
            f"{r.metric_name or r.metric_type} | {format_value(r.metric_value)} |" for r in results]
    return "| task | dataset | split | metric | value |\n| --- | --- | --- | --- | ---: |\n" + "\n".join(rows)


def _with_evaluation(text: str, results: list[EvalResult] | None) -> str:
    """`text` (a card's markdown body) with its evaluation section rewritten from `results` (appended if absent)."""
    body = f"\n{evaluation_text(results)}\n"
    start = text.find(f"\n{EVALUATION_HEADING}\n")
    if start < 0:
        return text.rstrip("\n") + f"\n\n{EVALUATION_HEADING}\n{body}"
    start += len(EVALUATION_HEADING) + 2
    end = text.find("\n## ", start)
    return text[:start] + body + (text[end:] if end >= 0 else "")


def card_data(config=None, results: list[dict] | None = None, base_model: str = "google/gemma-2b") -> ModelCardData:
    """The card's YAML metadata; `results` (dicts of `EvalResult` fields) fill the `model-index`."""
    eval_results = [EvalResult(**result) for result in results] if results else None
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="text-to-audio",
        license="gemma",
        base_model=base_model,
        tags=["c3llm", "audio-generation", "text-to-audio", "video-to-audio", "audio-captioning", "encodec", "clap",
              "custom_code"],
        datasets=["confit/audiocaps", "Loie/VGGSound"],
        model_name=MODEL_NAME,
        eval_results=eval_results,
        extra_gated_prompt="To use this model you must accept Google's Gemma terms of use "
        "(https://ai.google.dev/gemma/terms), which govern the backbone.",
    )


def render_model_card(
    config=None, repo_id: str = "path/or/repo", results: list[dict] | None = None, base_model: str | None = None
) -> ModelCard:
    """Renders the card for a model `config` (sizes and rates in the text); `results` fill the `model-index`."""
    import transformers

    codec = getattr(config, "codec_config", None)
    num_codebooks = getattr(config, "num_codebooks", 2)
    frame_rate = getattr(codec, "frame_rate", 75)
    base_model = base_model or getattr(getattr(config, "text_config", None), "_name_or_path", "") or "google/gemma-2b"
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", base_model):  # a local folder: name the default Hub backbone
        base_model = "google/gemma-2b"
    evaluation = evaluation_text([EvalResult(**result) for result in results] if results else None)
    return ModelCard.from_template(
        card_data(config, results, base_model),
        template_path=str(TEMPLATE),
        model_name=MODEL_NAME,
        repo_id=repo_id,
        base_model=base_model,
        num_codebooks=num_codebooks,
        sampling_rate=getattr(codec, "sampling_rate", 24000),
        frame_rate=frame_rate,
        bandwidth=f"{num_codebooks * frame_rate * 10 / 1000:g}",
        transformers_version=transformers.__version__,
        tasks=[{"name": name, "description": text, "code": code} for name, text, code in TASK_EXAMPLES],
        masked_layers=getattr(getattr(config, "masked_decoder_config", None), "num_hidden_layers", None),
        evaluation=evaluation,
    )


def _check_model_index(data: dict) -> None:
    if "model-index" in data:
        try:
            model_index_to_eval_results(data["model-index"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"The model card's model-index is malformed: {e}") from e


def check_model_card(card: ModelCard | str | os.PathLike) -> ModelCard:
    """Offline checks of a card: YAML metadata parses into `ModelCardData`, required fields, a well-formed
    `model-index`, and a code example for every task. Raises ValueError naming what is wrong."""
    if not isinstance(card, ModelCard):
        card = ModelCard.load(card) if Path(card).exists() else ModelCard(str(card))
    data = card.data.to_dict()
    for field in ("library_name", "pipeline_tag", "license", "base_model", "tags"):
        if not data.get(field):
            raise ValueError(f"The model card's metadata lacks `{field}`.")
    _check_model_index(data)
    for task in TASKS:
        if f'task="{task}"' not in card.text:
            raise ValueError(f"The model card has no code example for the task {task!r}.")
    return card


def update_model_index(card_path: str | os.PathLike, results: list[dict]) -> ModelCard:
    """Adds or replaces evaluation `results` (dicts of `EvalResult` fields: task_type, dataset_type, dataset_name,
    metric_type, metric_value, ...) in the `model-index` of the card at `card_path` (a new card when there is none)
    and rewrites the card's evaluation table from the whole `model-index`, keeping the rest of the card; the file is
    replaced atomically."""

    card = ModelCard.load(card_path) if Path(card_path).is_file() else ModelCard("---\n---\n")
    if not isinstance(card.data, ModelCardData):
        card.data = ModelCardData(**card.data.to_dict())
    new = [EvalResult(**result) for result in results]
    kept = [old for old in (card.data.eval_results or []) if not any(old.is_equal_except_value(n) for n in new)]
    card.data.eval_results = kept + new
    card.data.model_name = card.data.model_name or MODEL_NAME
    _check_model_index(card.data.to_dict())
    card.text = _with_evaluation(card.text, card.data.eval_results)
    write_text(card_path, str(card))
    return card
