"""`c3llm demo` end to end at a small size: data, training, strict evaluation of every task, the report and the
trained model as a push-ready folder; and its answers to bad settings, unwritable folders and interrupted runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from c3llm.cli import main
from c3llm.demo import CODEC_DIR, DemoSettings, write_demo_data
from conversion.hub_c3llm import verify_model_folder
from conversion.model_card import format_value
from processing_c3llm.processing_c3llm import TASKS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_writes_a_complete_report_and_a_push_ready_model(tmp_path):
    out = tmp_path / "demo"
    # What an interrupted earlier run may have left: half a trained folder, a stale report, a model without weights.
    for leftover in ("training/merged/config.json", "report/metrics.json", "model/README.md"):
        (out / leftover).parent.mkdir(parents=True, exist_ok=True)
        (out / leftover).write_text("{half")
    result = subprocess.run(
        [sys.executable, "-m", "c3llm.cli", "demo", "--out", str(out), "--train-clips", "12", "--video-clips", "8",
         "--neutral-clips", "6", "--test-clips", "4", "--steps", "8", "--batch-size", "4", "--workers", "1",
         "--masked-steps", "4", "1", "--masked-train-steps", "3", "--long-clips", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = out / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["tasks"]) == set(TASKS) and metrics["test_clips"] == 4
    for task in ("audio-continuation", "video-text-audio-to-audio"):  # each measure beside its mismatched control
        scores = metrics["tasks"][task]["scores"]
        keys = ["continuation_in_prompt_classes"] if task == "audio-continuation" else [
            "prompt_class_present", "text_class_present", "onset_f1"]  # fmt: skip
        assert all(0.0 <= scores[key] <= 1.0 and 0.0 <= scores[f"{key}_mismatched"] <= 1.0 for key in keys)
        assert f"{task:<20} " in result.stdout and "mismatched" in result.stdout
    for task, entry in metrics["tasks"].items():
        if "audio_prompt" in TASKS[task].inputs:
            continue
        scores, intervals = entry["scores"], entry["intervals"]
        assert 0.0 <= intervals["class_sequence_exact"][0] <= scores["class_sequence_exact"] <= 1.0
        lenient = "lenient_class_set" if TASKS[task].output == "text" else "lenient_classes_present"
        assert scores[lenient] >= scores["class_sequence_exact"]  # the lenient figure, beside the strict one
        if "video" in TASKS[task].inputs and TASKS[task].output == "audio":
            assert {"onset_f1", "onset_f1_mismatched", "onset_precision", "onset_recall", "onset_accuracy",
                    "onset_ap"} <= set(scores)  # fmt: skip
    audio_tasks = {"text-to-audio", "video-to-audio"}  # the default --masked-tasks
    assert set(metrics["masked_decoding"]) == {"4", "1"}  # the audio tasks again, decoded by the masked decoder
    for steps, entry in metrics["masked_decoding"].items():
        assert entry["decoding_steps"] == int(steps) and set(entry["tasks"]) == audio_tasks
        assert 0.0 <= entry["tasks"]["text-to-audio"]["scores"]["class_sequence_exact"] <= 1.0
        assert "onset_f1" in entry["tasks"]["video-to-audio"]["scores"]
    assert "train_masked_loss" in metrics  # (none logged in 8 steps: the demo logs every 10)
    assert set(metrics["timing_s"]) == {"data", "preprocessing", "training", "masked training", "evaluation",
                                        "masked evaluation", "report", "total"}  # fmt: skip
    details = json.loads((report / "details.json").read_text())
    for task in [*TASKS, *(f"{task} (masked, 4 steps)" for task in audio_tasks)]:
        assert len(details[task]) == 4
        for record in details[task]:
            assert record["reference_classes"] and ("generated" in record or "detected_classes" in record)
    assert (out / "data" / "long" / "synthfoley_train.json").is_file()  # the long videos of later windows
    for record in details["video-to-audio"] + details["video-text-to-audio"]:
        assert record["visual_onsets"] and isinstance(record["generated_onsets"], list)
        assert Path(record["wav"]).is_file()
    for picture in ("loss_curve.png", "spectrograms.png"):
        assert (report / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((report / "captions.txt").read_text().splitlines()) == 8  # two caption tasks
    # The trained model is DIR/model: complete, with no pickle, its card holding the results in prose and metadata.
    model = out / "model"
    files = verify_model_folder(model)
    assert "model.safetensors" in files and not list(model.glob("*.bin")) and not (out / "training" / "merged").exists()
    card = ModelCard.load(model / "README.md")
    results = {(r.task_type, r.metric_type): r for r in card.data.eval_results}
    exact = results[("text-to-audio", "class_sequence_exact")]
    assert exact.metric_value == pytest.approx(metrics["tasks"]["text-to-audio"]["scores"]["class_sequence_exact"])
    assert f"| {exact.metric_name} | {format_value(exact.metric_value)} |" in card.text.split("## Evaluation")[1]
    shipped = json.loads((model / "generation_config.json").read_text())  # the sampling the demo evaluated with
    assert {k: shipped[k] for k in ("do_sample", "top_k", "guidance_scale", "audio_length_in_s", "text_defaults")} == {
        "do_sample": True, "top_k": 20, "guidance_scale": 2.0, "audio_length_in_s": 2.0,
        "text_defaults": {"do_sample": False, "max_new_tokens": 24},
    }  # fmt: skip
    assert "C3LLM demo finished" in result.stdout and "with masked decoding in 4 steps" in result.stdout
    assert (model / "model.safetensors").is_file() and json.loads((model / "config.json").read_text())[
        "masked_decoder_config"]["num_hidden_layers"] == 2  # fmt: skip
    for command in (f"c3llm generate --model {model}", f"c3llm eval --model {model}", f"c3llm push {model}"):
        assert command in result.stdout
    assert main(["push", str(model), "someone/c3llm-demo", "--dry-run"]) == 0


def test_demo_rejects_bad_settings_and_unwritable_folders(tmp_path, capsys):
    for flags, message in ((["--test-clips", "1"], "--test-clips must be at least 2"),
                           (["--train-clips", "3"], "--train-clips must be at least 4"),
                           (["--train-clips", "10", "--video-clips", "20"], "at most --train-clips"),
                           (["--steps", "0"], "--steps must be positive"),
                           (["--long-clips", "10", "--long-clip-seconds", "2"], "--long-clip-seconds must exceed")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", "--out", str(tmp_path / "d"), *flags])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["demo", "--out", str(blocker / "demo")]) == 2
    assert f"cannot write to {blocker / 'demo'}" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_uses_the_shipped_codec():
    from transformers import EncodecConfig

    config = EncodecConfig.from_pretrained(CODEC_DIR)
    assert config.sampling_rate == 24000 and config.frame_rate == 75 and config.num_quantizers == 2


def test_demo_data_is_reused_only_when_complete_and_of_the_same_settings(tmp_path):
    def clips(layout: str) -> list[str]:
        return list(json.loads((tmp_path / layout / "synthfoley_train.json").read_text()))

    settings = DemoSettings(train_clips=3, video_clips=2, neutral_clips=1, test_clips=1, workers=1, long_clips=1)
    write_demo_data(tmp_path, settings)
    first = clips("audiocaps")
    assert len(first) == 3 and clips("vggsound") == first[:2] and clips("neutral") == first[:1]
    marker = tmp_path / "audiocaps" / "marker"
    marker.write_text("kept")
    write_demo_data(tmp_path, settings)
    assert marker.is_file()  # same settings: nothing rewritten
    (tmp_path / "synthfoley.json").unlink()  # as an interrupted run leaves it: clips written, record not yet
    write_demo_data(tmp_path, settings)
    assert not marker.exists() and clips("audiocaps") == first
    marker.write_text("kept")
    write_demo_data(tmp_path, DemoSettings(train_clips=2, video_clips=1, neutral_clips=1, test_clips=1, workers=1,
                                           long_clips=1))  # fmt: skip
    assert not marker.exists() and clips("audiocaps") == first[:2] and clips("vggsound") == first[:1]
