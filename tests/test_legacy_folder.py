"""A model folder saved by c3llm 0.1 (before the layers change; weights, configs, processor and tokenizer, without its
code copies) loads with today's classes and generates exactly the codes and ids it generated then."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor


FOLDER = Path(__file__).parent / "data" / "folder_v0.1"
EXPECTED = json.loads((Path(__file__).parent / "data" / "folder_v0.1_outputs.json").read_text())


@pytest.fixture(scope="module")
def legacy():
    return AutoModel.from_pretrained(FOLDER).eval(), AutoProcessor.from_pretrained(FOLDER)


def test_text_to_audio_codes_are_unchanged(legacy):
    model, processor = legacy
    out = model.generate(**processor(text=["a dog barks", "rain"], task="text-to-audio"), audio_length_in_s=0.2,
                         do_sample=False)
    assert out.audio_codes.tolist() == EXPECTED["text-to-audio"]


def test_video_to_audio_codes_are_unchanged(legacy):
    model, processor = legacy
    features = np.random.RandomState(0).randn(4, model.config.video_feature_size).astype(np.float32)
    out = model.generate(**processor(video_features=features, task="video-to-audio"), audio_length_in_s=0.1,
                         do_sample=False)
    assert out.audio_codes.tolist() == EXPECTED["video-to-audio"]


def test_audio_to_text_ids_are_unchanged(legacy):
    model, processor = legacy
    rate = processor.feature_extractor.sampling_rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    inputs = processor(audio=wave, sampling_rate=rate, task="audio-to-text")
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert ids[:, inputs["input_ids"].shape[1]:].tolist() == EXPECTED["audio-to-text"]
    assert isinstance(ids, torch.Tensor)
