"""`c3llm demo` end to end at a small size: data, training, evaluation and every file of the report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_c3llm.demo_c3llm import CODEC_DIR


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_writes_a_complete_report(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "modeling_c3llm.cli", "demo", "--out", str(out), "--train-clips", "12", "--video-clips", "8",
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


def test_demo_uses_the_shipped_codec():
    from transformers import EncodecConfig

    config = EncodecConfig.from_pretrained(CODEC_DIR)
    assert config.sampling_rate == 24000 and config.frame_rate == 75 and config.num_quantizers == 2
