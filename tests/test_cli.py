"""End-to-end tests of the `c3llm` command line, run as real subprocesses on real files."""

import os
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from processing_c3llm.processing_c3llm import TASKS


ROOT = Path(__file__).parents[1]
CODEC_RATE = 24000


def run_cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "c3llm.cli", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_process(capsys, *args) -> subprocess.CompletedProcess:
    """`c3llm ARGS` in this process (for the many argument checks, which need no fresh interpreter), as `run_cli`
    reports it."""
    from c3llm.cli import main

    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_usage_error(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny random model, built once through `c3llm build --tiny`."""
    out = tmp_path_factory.mktemp("model") / "tiny"
    result = run_cli("build", "--tiny", "--out", out, "--seed", 0)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    return out


@pytest.fixture(scope="module")
def stereo_wav(tmp_path_factory):
    """1 s of 440 Hz at 44.1 kHz, stereo: the processor must resample and downmix it."""
    path = tmp_path_factory.mktemp("audio") / "tone_44k1_stereo.wav"
    t = np.arange(44100) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.stack([tone, 0.5 * tone], axis=1), 44100, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def video_mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(8):
            frame = np.full((32, 32, 3), 20, dtype=np.uint8)
            frame[8:18, 2 * i : 2 * i + 10] = 220
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def image_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "checker.png"
    checker = (np.indices((32, 32)).sum(axis=0) // 4 % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([checker] * 3, axis=-1)).save(path)
    return path


HELP_FLAGS = {
    "build": ["--tiny", "--llm", "--codec", "--audio-encoder", "--vision-encoder", "--dtype", "--nar-config",
              "--max-shard-size", "--out", "--seed", "--num-codebooks", "--masked-decoder-layers"],
    "merge": ["--base", "--adapter", "--out", "--dtype", "--max-shard-size"],
    "push": ["--private", "--revision", "--create-pr", "--message", "--dry-run"],
    "convert": ["--out"],
    "generate": [
        "--model", "--task", "--text", "--audio", "--video", "--image", "--video-features", "--seconds",
        "--max-new-tokens", "--seed", "--greedy", "--temperature", "--top-k", "--decoding", "--decoding-steps",
        "--out", "--audio-prompt", "--window-context", "--stream", "--chunk-seconds",
    ],
    "tour": ["--out", "--seconds", "--seed"],
    "demo": ["--out", "--train-clips", "--video-clips", "--neutral-clips", "--test-clips", "--steps", "--batch-size",
             "--learning-rate", "--condition-dropout", "--guidance-scale", "--masked-layers", "--masked-train-steps", "--masked-steps", "--masked-tasks",
             "--workers", "--seed", "--codec"],
    "synthfoley": ["--out", "--train", "--test", "--video-train", "--neutral-train", "--seed", "--duration", "--workers"],
    "eval": ["--model", "--dataset", "--data-dir", "--split", "--tasks", "--out", "--max-clips", "--batch-size",
             "--seconds", "--max-new-tokens", "--greedy", "--top-k", "--guidance-scale", "--decoding", "--decoding-steps",
             "--save-audio", "--seed",
             "--model-card"],
}  # fmt: skip


def test_top_level_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in HELP_FLAGS:
        assert command in result.stdout


@pytest.mark.parametrize("command", sorted(HELP_FLAGS))
def test_subcommand_help_mentions_every_flag(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout
    for flag in HELP_FLAGS[command]:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.stdout), f"{flag} missing from {command} --help"
    if command == "generate":
        for task in TASKS:
            assert task in result.stdout


def test_build_tiny_writes_a_model_folder(model_dir):
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (model_dir / name).is_file(), name


def test_build_from_unreachable_hub_ids_fails_clearly_offline(tmp_path):
    result = run_cli("build", "--out", tmp_path / "m")  # the default parts are Hub ids; the tests are offline
    assert_usage_error(result, "c3llm: error:", "google/gemma-2b")
    assert not (tmp_path / "m").exists()


def test_build_refuses_a_non_empty_folder(model_dir):
    result = run_cli("build", "--tiny", "--out", model_dir)
    assert_usage_error(result, "c3llm: error:", "not an empty folder")


def test_generate_text_to_audio_writes_a_wav_of_the_requested_length(model_dir, tmp_path):
    seconds = 1.0
    out = tmp_path / "dog.wav"
    result = run_cli("generate", "--model", model_dir, "--task", "text-to-audio", "--text", "a dog barks",
                     "--seconds", seconds, "--seed", 1, "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(out, always_2d=True)
    assert rate == CODEC_RATE
    assert audio.shape[0] == round(seconds * CODEC_RATE)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    summary = result.stdout.strip().splitlines()
    assert len(summary) == 1 and "text-to-audio" in summary[0] and str(out) in summary[0]
    assert f"{seconds:.2f} s" in summary[0]


def test_generate_masked_decoding_from_a_model_built_with_a_masked_decoder(tmp_path, stereo_wav, model_dir):
    built = run_cli("build", "--tiny", "--out", tmp_path / "m", "--masked-decoder-layers", 1)
    assert built.returncode == 0, built.stderr
    out = tmp_path / "masked.wav"
    result = run_cli("generate", "--model", tmp_path / "m", "--task", "text-to-audio", "--text", "a dog barks",
                     "--decoding", "masked", "--decoding-steps", 3, "--seconds", 0.5, "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(out, always_2d=True)
    assert audio.shape[0] == round(0.5 * rate) and np.abs(audio).max() > 0
    for extra, needle in (
        (["--decoding-steps", 3], "--decoding-steps applies to --decoding masked"),
        (["--decoding", "masked", "--decoding-steps", 0], "--decoding-steps"),
        (["--decoding", "beam"], "invalid choice"),
    ):
        assert_usage_error(run_cli("generate", "--model", tmp_path / "m", "--task", "text-to-audio", "--text", "a",
                                   "--out", tmp_path / "x.wav", *extra), needle)  # fmt: skip
    assert_usage_error(run_cli("generate", "--model", tmp_path / "m", "--task", "audio-to-text", "--audio", stereo_wav,
                               "--decoding", "masked", "--out", tmp_path / "x.txt"), "makes text")  # fmt: skip
    assert_usage_error(run_cli("generate", "--model", model_dir, "--task", "text-to-audio", "--text", "a",
                               "--decoding", "masked", "--out", tmp_path / "x.wav"), "c3llm train --stage 3")  # fmt: skip
    assert not (tmp_path / "x.wav").exists()


def test_generate_audio_to_text_from_44k1_stereo_wav(model_dir, stereo_wav, tmp_path):
    out = tmp_path / "caption.txt"
    result = run_cli("generate", "--model", model_dir, "--task", "audio-to-text", "--audio", stereo_wav,
                     "--max-new-tokens", 12, "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8").strip()
    assert text
    assert "audio-to-text" in result.stdout and str(out) in result.stdout
    assert not list(tmp_path.glob(".*.tmp")), "the temp file of the atomic write was left behind"


def test_generate_video_and_image_tasks(model_dir, video_mp4, image_png, tmp_path):
    result = run_cli("generate", "--model", model_dir, "--task", "video-text-to-audio", "--video", video_mp4,
                     "--text", "rain", "--seconds", 0.5, "--greedy", "--out", tmp_path / "v.wav")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sf.info(tmp_path / "v.wav").frames == CODEC_RATE // 2
    result = run_cli("generate", "--model", model_dir, "--task", "image-to-audio", "--image", image_png,
                     "--seconds", 0.5, "--temperature", 0.8, "--top-k", 20, "--out", tmp_path / "i.wav")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sf.info(tmp_path / "i.wav").frames == CODEC_RATE // 2


def test_generate_video_to_audio_from_precomputed_features(model_dir, tmp_path):
    import json

    width = 2 * json.loads((model_dir / "config.json").read_text())["vision_config"]["hidden_size"]
    features = tmp_path / "features.npy"
    np.save(features, np.random.default_rng(0).normal(size=(4, width)).astype(np.float32))
    result = run_cli("generate", "--model", model_dir, "--task", "video-to-audio", "--video-features", features,
                     "--seconds", 0.5, "--out", tmp_path / "f.wav")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sf.info(tmp_path / "f.wav").frames == CODEC_RATE // 2

    np.save(features, np.zeros((4, width + 1), dtype=np.float32))
    result = run_cli("generate", "--model", model_dir, "--task", "video-to-audio", "--video-features", features,
                     "--out", tmp_path / "g.wav")  # fmt: skip
    assert_usage_error(result, "c3llm: error:", "video_features")


@pytest.mark.parametrize(
    ("task", "flag"),
    [("text-to-audio", "--text"), ("audio-to-text", "--audio"), ("image-text-to-audio", "--image")],
)  # fmt: skip
def test_generate_missing_input_names_the_flag(model_dir, tmp_path, task, flag):
    args = ["--text", "hello"] if task == "image-text-to-audio" else []
    out = tmp_path / ("out.txt" if TASKS[task].output == "text" else "out.wav")
    result = run_cli("generate", "--model", model_dir, "--task", task, *args, "--out", out)
    assert_usage_error(result, "c3llm: error:", flag)
    assert not out.exists()


def test_generate_long_form_beyond_the_model_window_is_exactly_as_long(model_dir, tmp_path):
    """The tiny model's window (max_audio_seconds) is 2 s: 3.2 s are generated in windows and trimmed exactly."""
    out = tmp_path / "long.wav"
    result = run_cli("generate", "--model", model_dir, "--task", "text-to-audio", "--text", "rain", "--seconds", 3.2,
                     "--window-context", 0.4, "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(out, always_2d=True)
    assert rate == CODEC_RATE and audio.shape == (round(3.2 * CODEC_RATE), 1)
    assert np.isfinite(audio).all() and np.abs(audio[-CODEC_RATE:]).max() > 0  # the last window wrote audio too
    assert "3.20 s of audio at 24000 Hz" in result.stdout and "real-time factor" in result.stdout


def test_generate_stream_writes_a_valid_wav_of_the_asked_length(model_dir, tmp_path):
    out = tmp_path / "stream.wav"
    result = run_cli("generate", "--model", model_dir, "--text", "rain", "--seconds", 2.6, "--stream",
                     "--chunk-seconds", 0.5, "--out", out)  # fmt: skip  (the task is inferred: text-to-audio)
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(out, always_2d=True)
    assert rate == CODEC_RATE and audio.shape == (round(2.6 * CODEC_RATE), 1) and np.abs(audio).max() > 0
    chunks = re.findall(r"^chunk (\d+): ([\d.]+) / 2\.60 s of audio", result.stderr, re.MULTILINE)
    assert len(chunks) >= 3 and [int(n) for n, _ in chunks] == list(range(1, len(chunks) + 1))
    written = [float(s) for _, s in chunks]
    assert written == sorted(written) and written[0] >= 0.5 and written[-1] == 2.6
    summary = result.stdout.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("text-to-audio: wrote")
    assert re.search(rf"2\.60 s of audio at 24000 Hz; streamed in {len(chunks)} chunks, first after [\d.]+ s; "
                     r"real-time factor [\d.]+", summary[0]), summary[0]  # fmt: skip


def test_streaming_wav_writer_is_a_valid_wav_after_every_chunk(tmp_path):
    from c3llm.cli import StreamingWavWriter

    path = tmp_path / "w.wav"
    writer = StreamingWavWriter(path, 16000)
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-0.9, 0.9, size=(2, n)).astype(np.float32) for n in (800, 1601, 5)]
    for i, chunk in enumerate(chunks):
        writer.write(chunk)
        data, rate = sf.read(path, always_2d=True)  # read while the writer still holds the file open
        assert rate == 16000 and data.shape == (sum(c.shape[1] for c in chunks[: i + 1]), 2)
        np.testing.assert_allclose(data[-chunk.shape[1]:].T, chunk, atol=1e-4)  # 16-bit PCM
    writer.close()
    assert sf.info(path).frames == 2406 and writer.seconds == 2406 / 16000
    with pytest.raises(ValueError, match="non-finite"):
        StreamingWavWriter(tmp_path / "nan.wav", 16000).write(np.full((1, 4), np.nan))


def test_stream_error_removes_the_partial_file(tmp_path):
    from c3llm.cli import _stream_audio

    class FailingModel:  # one chunk on disk, then generation fails
        config = type("Config", (), {"sampling_rate": 8000})()

        def generate_stream(self, **kwargs):
            import torch

            yield torch.zeros(1, 1, 4000)
            assert (tmp_path / "p.wav").is_file() and sf.info(tmp_path / "p.wav").frames == 4000
            raise ValueError("the model failed")

    with pytest.raises(ValueError, match="the model failed"):
        _stream_audio(FailingModel(), {}, {}, tmp_path / "p.wav", None, 2.0)
    assert not (tmp_path / "p.wav").exists()


def test_generate_audio_prompt_writes_only_the_new_audio(model_dir, stereo_wav, tmp_path, capsys):
    """A 1 s 44.1 kHz stereo prompt is encoded with the model's codec; --seconds is the new audio alone."""
    out = tmp_path / "more.wav"
    result = run_cli("generate", "--model", model_dir, "--audio-prompt", stereo_wav, "--text", "louder",
                     "--seconds", 0.6, "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(out, always_2d=True)
    assert rate == CODEC_RATE and audio.shape == (round(0.6 * CODEC_RATE), 1) and np.abs(audio).max() > 0
    assert result.stdout.startswith("audio-continuation: wrote") and "0.60 s of audio" in result.stdout

    long_prompt = tmp_path / "long.wav"
    sf.write(long_prompt, np.full(3 * CODEC_RATE, 0.1), CODEC_RATE)
    result = run_in_process(capsys, "generate", "--model", model_dir, "--audio-prompt", long_prompt, "--seconds", 1,
                            "--out", tmp_path / "x.wav")  # fmt: skip
    assert_usage_error(result, "c3llm: error: --audio-prompt", "3.00 s long", "window of 2 s")
    result = run_in_process(capsys, "generate", "--model", model_dir, "--audio-prompt", tmp_path / "none.wav", "--out",
                            tmp_path / "x.wav")  # fmt: skip
    assert_usage_error(result, "c3llm: error: --audio-prompt", "none.wav")
    assert not (tmp_path / "x.wav").exists()


def test_generate_infers_the_task_from_the_inputs():
    from c3llm.cli import infer_task
    from c3llm.loading import CLIError

    prompt, video = Path("p.wav"), Path("v.mp4")
    assert infer_task({"text": "rain"}) == "text-to-audio"
    assert infer_task({"audio": Path("a.wav")}) == "audio-to-text"
    assert infer_task({"videos": video}) == "video-to-audio"
    assert infer_task({"audio_prompt_codes": prompt}) == "audio-continuation"
    assert infer_task({"audio_prompt_codes": prompt, "text": "rain"}) == "audio-continuation"
    assert infer_task({"videos": video, "text": "rain", "audio_prompt_codes": prompt}) == "video-text-audio-to-audio"
    with pytest.raises(CLIError, match="no task takes --audio \\+ --image"):
        infer_task({"audio": Path("a.wav"), "images": Path("i.png")})
    with pytest.raises(CLIError, match="give the inputs"):
        infer_task({"text": None})


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--seconds", 0], ["argument --seconds", "must be a positive number, got '0'"]),
        (["--seconds", "-2"], ["argument --seconds", "must be a positive number"]),
        (["--seconds", 600.5], ["c3llm: error: --seconds must be at most 600", "max_generation_seconds", "got 600.5"]),
        (["--seconds", 3, "--window-context", 2], ["--window-context must be shorter than the model's window of 2 s"]),
        (["--stream"], ["c3llm: error: Streaming needs an exact length: pass --seconds"]),
        (["--seconds", 1, "--stream", "--chunk-seconds", 0.2], ["argument --chunk-seconds", "at least 0.5"]),
        (["--seconds", 1, "--chunk-seconds", 1], ["--chunk-seconds sets the chunks of --stream"]),
    ],
)  # fmt: skip
def test_generate_rejects_bad_lengths_and_stream_settings(model_dir, tmp_path, capsys, extra, needles):
    out = tmp_path / "x.wav"
    result = run_in_process(capsys, "generate", "--model", model_dir, "--task", "text-to-audio", "--text", "a", *extra,
                            "--out", out)  # fmt: skip
    assert_usage_error(result, *needles)
    assert not out.exists()


def test_generate_stream_of_a_text_task_is_an_error(model_dir, stereo_wav, tmp_path, capsys):
    result = run_in_process(capsys, "generate", "--model", model_dir, "--audio", stereo_wav, "--stream", "--out",
                            tmp_path / "x.txt")  # fmt: skip
    assert_usage_error(result, "c3llm: error: --stream applies to audio tasks", "audio-to-text")
    assert not (tmp_path / "x.txt").exists()


def test_generate_rejects_an_input_the_task_does_not_take(model_dir, video_mp4, tmp_path):
    result = run_cli("generate", "--model", model_dir, "--task", "video-to-audio", "--video", video_mp4,
                     "--text", "rain", "--out", tmp_path / "x.wav")  # fmt: skip
    assert_usage_error(result, "c3llm: error:", "--text", "-text-")


def test_generate_unknown_task_is_an_argparse_error(model_dir, tmp_path):
    result = run_cli("generate", "--model", model_dir, "--task", "audio-to-video", "--out", tmp_path / "x.wav")
    assert_usage_error(result, "invalid choice", "text-to-audio")


def test_generate_missing_input_file(model_dir, tmp_path):
    missing = tmp_path / "nope.png"
    result = run_cli("generate", "--model", model_dir, "--task", "image-to-audio", "--image", missing,
                     "--out", tmp_path / "x.wav")  # fmt: skip
    assert_usage_error(result, "c3llm: error:", "--image", str(missing))


def test_generate_corrupt_wav_is_a_clean_error(model_dir, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio")
    out = tmp_path / "x.txt"
    result = run_cli("generate", "--model", model_dir, "--task", "audio-to-text", "--audio", corrupt, "--out", out)
    assert_usage_error(result, "c3llm: error:", str(corrupt))
    assert not out.exists()


def test_generate_missing_model_folder(tmp_path):
    result = run_cli("generate", "--model", tmp_path / "none", "--task", "text-to-audio", "--text", "x",
                     "--out", tmp_path / "x.wav")  # fmt: skip
    assert_usage_error(result, "c3llm: error:", "--model")


def test_tour_runs_every_task(tmp_path):
    out = tmp_path / "tour"
    result = run_cli("tour", "--out", out, "--seconds", 0.5)
    assert result.returncode == 0, result.stderr
    outputs = sorted(p.name for p in (out / "outputs").iterdir())
    expected = sorted(f"{task}.{'wav' if row.output == 'audio' else 'txt'}" for task, row in TASKS.items())
    assert outputs == expected and len(outputs) == len(TASKS)
    for task, row in TASKS.items():
        kind = row.output
        assert re.search(rf"^{re.escape(task)}\s+\S+{re.escape(task)}\.(wav|txt)\s+\S", result.stdout, re.M), task
        if kind == "audio":
            audio, rate = sf.read(out / "outputs" / f"{task}.wav")
            assert rate == CODEC_RATE and len(audio) == CODEC_RATE // 2 and np.isfinite(audio).all()
    assert f"{len(TASKS)} tasks" in result.stdout
    assert "tasks: 100%" in result.stderr  # the tqdm bar
    info = sf.info(out / "inputs" / "sine_440hz_44k1_stereo.wav")
    assert (info.samplerate, info.channels) == (44100, 2)
    assert (out / "model" / "model.safetensors").is_file()

    rerun = run_cli("tour", "--out", out, "--seconds", 0.5)  # a previous tour folder is replaced, not refused
    assert rerun.returncode == 0, rerun.stderr


def test_tour_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli("tour", "--out", tmp_path)
    assert_usage_error(result, "c3llm: error:", "not empty")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_new_task_row_is_picked_up(monkeypatch, tiny, media, capsys):
    """A task over existing inputs is one row of `TASKS`: the processor, the CLI's flags and help, the collator and
    the model card follow it."""
    from c3llm.cli import build_parser, validate_inputs
    from c3llm.data.collator import example_to_inputs
    from c3llm.loading import CLIError
    from conversion.model_card import task_example
    from processing_c3llm.processing_c3llm import Task

    row = Task("image-to-caption", ("image",), "text", "What an image sounds like.", "Describe what you would hear.")
    monkeypatch.setitem(TASKS, row.name, row)
    image = str(media / "image.png")
    batch = tiny[1](images=image, task=row.name, text_target="a bell")
    assert "pixel_values" in batch and (batch["labels"] != -100).sum() > 0
    example = example_to_inputs({"id": "a", "task": row.name, "image_path": image, "caption": "a bell"})
    assert example == {"task": row.name, "images": image, "text_target": "a bell"}
    validate_inputs(row.name, {"images": Path(image)})
    with pytest.raises(CLIError, match="needs --image"):
        validate_inputs(row.name, {"text": "a bell"})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    assert re.search(r"image-to-caption\s+--image\s+-> text", capsys.readouterr().out)
    assert f'processor(images="photo.png", task="{row.name}")' in task_example(row)[2]
