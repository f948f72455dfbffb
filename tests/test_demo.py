"""`c3llm demo` end to end at a small size: data, training, evaluation and every file of the report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from c3llm.demo import CODEC_DIR, DemoSettings, write_demo_data


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_writes_a_complete_report(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "c3llm.cli", "demo", "--out", str(out), "--train-clips", "12", "--video-clips", "8",
         "--test-clips", "4", "--steps", "8", "--batch-size", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = out / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    for key in ("audio_to_text_class_accuracy", "text_to_audio_class_accuracy", "video_to_audio_onset_precision"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["test_clips"] == 4
    for picture in ("loss_curve.png", "spectrograms.png"):
        assert (report / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((report / "captions.txt").read_text().splitlines()) == 4
    assert len(list((report / "audio").glob("t2a_*.wav"))) == 4 and len(list((report / "audio").glob("v2a_*.wav"))) == 4
    assert "C3LLM demo finished" in result.stdout
    trained = out / "training" / "merged"
    assert (trained / "model.safetensors").is_file() and (trained / "modeling_c3llm.py").is_file()
    shipped = json.loads((trained / "generation_config.json").read_text())  # the sampling the demo evaluated with
    assert {k: shipped[k] for k in ("do_sample", "top_k", "guidance_scale", "audio_length_in_s", "text_defaults")} == {
        "do_sample": True, "top_k": 20, "guidance_scale": 2.0, "audio_length_in_s": 2.0,
        "text_defaults": {"do_sample": False, "max_new_tokens": 24},
    }  # fmt: skip


def test_demo_uses_the_shipped_codec():
    from transformers import EncodecConfig

    config = EncodecConfig.from_pretrained(CODEC_DIR)
    assert config.sampling_rate == 24000 and config.frame_rate == 75 and config.num_quantizers == 2


def test_demo_data_is_reused_only_for_the_same_settings(tmp_path):
    def clips(layout: str) -> list[str]:
        return list(json.loads((tmp_path / layout / "synthfoley_train.json").read_text()))

    write_demo_data(tmp_path, DemoSettings(train_clips=3, video_clips=2, test_clips=1))
    first = clips("audiocaps")
    assert len(first) == 3 and clips("vggsound") == first[:2]
    marker = tmp_path / "audiocaps" / "marker"
    marker.write_text("kept")
    write_demo_data(tmp_path, DemoSettings(train_clips=3, video_clips=2, test_clips=1))
    assert marker.is_file()  # same settings: nothing rewritten
    write_demo_data(tmp_path, DemoSettings(train_clips=2, video_clips=1, test_clips=1))
    assert not marker.exists() and clips("audiocaps") == first[:2] and clips("vggsound") == first[:1]
