"""`c3llm eval` end to end: a tiny model on a tiny SynthFoley split, tiny random metric models, the paper's tables,
results.json and the model card's model-index."""

import json

import pytest
import torch

from c3llm.cli import main
from c3llm.metrics.audio_models import Cnn14, VGGish, save_audio_model
from c3llm.synthfoley.synthfoley import write_synthfoley
from conversion.model_card import format_value
from processing_c3llm.processing_c3llm import TASKS


@pytest.mark.slow
def test_eval_writes_the_papers_tables_and_the_model_index(tiny_folder, tmp_path, capsys):
    write_synthfoley(tmp_path / "sf", train=0, test=3, seed=0)
    torch.manual_seed(0)
    vggish = save_audio_model(VGGish({"channels": [4, 4, 8, 8], "hidden_size": 16, "embedding_size": 8}), tmp_path / "vggish")
    cnn14 = save_audio_model(Cnn14({"channels": [4, 4, 8, 8, 8, 16], "num_classes": 5}), tmp_path / "cnn14")
    card = tmp_path / "model_card.md"
    card.write_text("---\nlicense: gemma\n---\n\n# Tiny\n\nBody text.\n")
    code = main(["eval", "--model", str(tiny_folder), "--dataset", "synthfoley", "--data-dir", str(tmp_path / "sf"),
                 "--out", str(tmp_path / "eval"), "--batch-size", "2", "--seconds", "1", "--max-new-tokens", "8",
                 "--embedding-model", str(vggish), "--classifier", str(cnn14), "--inception-splits", "2",
                 "--caption-metrics", "bleu_4", "rouge_l", "cider_d", "spider", "--model-card", str(card)])  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    tasks = results["tasks"]
    assert set(tasks) == set(TASKS)  # SynthFoley serves every task
    assert all(t["clips"] == 3 for t in tasks.values())
    assert {"bleu_4", "rouge_l", "cider_d"} <= set(tasks["audio-to-text"]["scores"])
    assert "spider" in tasks["audio-to-text"]["skipped"] or "spider" in tasks["audio-to-text"]["scores"]
    for task in ("text-to-audio", "video-to-audio"):
        assert {"fad", "kl", "inception_score"} <= set(tasks[task]["scores"])
        assert tasks[task]["scores"]["inception_splits"] == 2
    assert {"onset_accuracy", "onset_ap"} <= set(tasks["video-to-audio"]["scores"])
    assert "clap_score" in tasks["text-to-audio"]["skipped"]
    assert results["timing"]["clips"] == 3 * len(TASKS) and results["timing"]["clips_per_s"] > 0
    # The strict SynthFoley measures, each rate with its interval, and one record per clip.
    for task, entry in tasks.items():
        # The audio-prompt tasks' own measure (with its mismatched control) in place of the class sequence.
        key = {"audio-continuation": "continuation_in_prompt_classes",
               "video-text-audio-to-audio": "text_class_present"}.get(task, "class_sequence_exact")  # fmt: skip
        assert 0.0 <= entry["scores"][key] <= 1.0 and len(entry["records"]) == 3
        low, high = entry["intervals"][key]
        assert 0.0 <= low <= entry["scores"][key] <= high <= 1.0
        if key != "class_sequence_exact":
            assert 0.0 <= entry["scores"][f"{key}_mismatched"] <= 1.0
        if "video" in TASKS[task].inputs and TASKS[task].output == "audio":
            assert {"onset_f1", "onset_f1_mismatched", "onset_f1_gap", "lenient_onset_precision"} <= set(entry["scores"])
            assert all(len(r["visual_onsets"]) >= 1 for r in entry["records"])
    table = (tmp_path / "eval" / "results.md").read_text()
    for title in ("Table 1, V2A", "Table 1, A2T", "Table 1, T2A", "Table 2"):
        assert title in table
    assert "| CoDi (paper) | 3.6449 | 3.6941 | 11.5036 |" in table and "| C3LLM (paper) | 0.1420 | 0.6700 |" in table
    onset_ap = tasks["video-to-audio"]["scores"]["onset_ap"]
    assert f"{onset_ap:.4f} |" in table and "**this run** (synthfoley, 3 clips)" in table
    assert "Table 1, V2A" in capsys.readouterr().out

    from huggingface_hub import ModelCard

    loaded = ModelCard.load(card)
    assert loaded.data.license == "gemma" and "Body text." in loaded.text
    # The card's prose table says what its model-index says, row for row.
    table_rows = [line for line in loaded.text.split("## Evaluation")[1].splitlines() if line.startswith("| ")][2:]
    assert table_rows == [f"| {r.task_name or r.task_type} | {r.dataset_name} | {r.dataset_split} | {r.metric_name} | "
                          f"{format_value(r.metric_value)} |" for r in loaded.data.eval_results]  # fmt: skip
    values = {(r.task_type, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert values[("video-to-audio", "onset_ap")] == pytest.approx(onset_ap)
    assert values[("text-to-audio", "fad")] == pytest.approx(tasks["text-to-audio"]["scores"]["fad"])
    # A second run replaces the same task/dataset results instead of appending duplicates.
    from c3llm.evaluation import model_index_results
    from conversion.model_card import update_model_index

    update_model_index(card, model_index_results(results))
    assert len(ModelCard.load(card).data.eval_results) == len(loaded.data.eval_results)


def test_eval_rejects_bad_arguments(tiny_folder, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_folder), "--dataset", "clotho", "--data-dir", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_folder), "--dataset", "vas", "--data-dir", ".", "--out", "o", "--batch-size", "0"])
    assert main(["eval", "--model", str(tiny_folder), "--dataset", "clotho", "--data-dir", ".", "--out",
                 str(tmp_path / "o"), "--tasks", "text-to-audio"]) == 2  # fmt: skip
    assert "clotho has no ['text-to-audio'] split" in capsys.readouterr().err
