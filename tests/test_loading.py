"""Loading a model for the commands: Hub ids work wherever a folder does, and unloadable files end in one error line."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf


ROOT = Path(__file__).parents[1]
REPO_ID = "someone/tiny-c3llm"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def run_cli(*args, env_extra=None, offline=True):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["PYTHONPATH"] = str(ROOT)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "c3llm", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_error_line(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("c3llm: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_importing_the_cli_leaves_the_hub_online():
    """The command line must not switch the Hub client offline: a Hub id downloads unless the user set
    HF_HUB_OFFLINE, as everywhere in transformers."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    code = ("import os, c3llm.cli, c3llm.training, c3llm.evaluation, c3llm.demo; from huggingface_hub import constants; "
            "print(os.environ.get('HF_HUB_OFFLINE'), constants.HF_HUB_OFFLINE)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "False"]


@pytest.fixture
def hub_cache(tiny_folder, tmp_path):
    """The tiny model laid out as the Hub client caches a downloaded repository (HF_HUB_CACHE)."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    shutil.copytree(tiny_folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def test_generate_takes_a_hub_id(hub_cache, tmp_path):
    out = tmp_path / "dog.wav"
    result = run_cli("generate", "--model", REPO_ID, "--task", "text-to-audio", "--text", "a dog barks",
                     "--seconds", "0.5", "--out", out, env_extra={"HF_HUB_CACHE": str(hub_cache)})
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(out)
    assert rate == 24000 and len(audio) == 12000


def test_an_unknown_hub_id_offline_is_one_error_line(tmp_path):
    result = run_cli("generate", "--model", "nobody/no-such-model", "--task", "text-to-audio", "--text", "a dog",
                     "--out", tmp_path / "x.wav", env_extra={"HF_HUB_CACHE": str(tmp_path / "empty")})
    assert_one_error_line(result, "Hub repository nobody/no-such-model", "HF_HUB_OFFLINE")
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("damage", ["truncated weights", "corrupt weights", "corrupt config"])
def test_damaged_model_files_are_one_error_line(tiny_folder, tmp_path, damage):
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    weights = folder / "model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "corrupt weights":
        weights.write_bytes(os.urandom(4096))
    else:
        (folder / "config.json").write_text('{"model_type": "c3llm", "text_config": ')
    result = run_cli("generate", "--model", folder, "--task", "text-to-audio", "--text", "a dog", "--out",
                     tmp_path / "x.wav")
    assert_one_error_line(result, str(folder), "config.json" if damage == "corrupt config" else "weights")
    assert not (tmp_path / "x.wav").exists()
