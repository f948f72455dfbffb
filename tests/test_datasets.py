"""Dataset loaders and cached preprocessing (c3llm.data.datasets) on real files written to tmp_path."""

import atexit
import os
import shutil
import tempfile

# Before `datasets` is imported: keep its caches out of the user's home and never touch the network.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="c3llm-test-hf-datasets-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import json  # noqa: E402
import math  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset, IterableDataset  # noqa: E402

from conversion.build_c3llm import build_tiny  # noqa: E402
from c3llm.data import datasets as dc  # noqa: E402
from c3llm.synthfoley.synthfoley import write_vggsound  # noqa: E402
from processing_c3llm.media_c3llm import MediaError, load_audio, load_image  # noqa: E402


# ---- media helpers -------------------------------------------------------------------------------------------------
def write_wav(path, seconds=0.5, rate=16000, freq=440.0, channels=1, subtype=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([wave] * channels, axis=1), rate, subtype=subtype)
    return str(path)


def write_mp4(path, seconds=0.6, fps=10, size=32, rate=16000, freq=440.0, audio=True):
    """A real MP4 (mpeg4 video: a moving square) with an AAC audio track (a sine) unless `audio=False`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=rate, layout="mono") if audio else None
        for i in range(int(seconds * fps)):
            image = np.zeros((size, size, 3), dtype=np.uint8)
            image[8:18, 2 * i % 20 : 2 * i % 20 + 10] = 255
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            t = np.arange(int(seconds * rate)) / rate
            wave = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None]
            for start in range(0, wave.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, start : start + 1024]), "fltp", "mono")
                frame.sample_rate, frame.pts = rate, start
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return str(path)


def write_corrupt(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).bytes(400))
    return str(path)


def write_nan_wav(path):
    """Valid float WAV header and data, but every sample is NaN: passes the load probe, fails when decoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(4000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    return str(path)


def rows(dataset):
    return [dict(example) for example in dataset]


def check_streaming(loader, report, dataset, **kwargs):
    """The streaming variant yields the same examples and, once iterated, reports the same skips."""
    stream, stream_report = loader(streaming=True, **kwargs)
    assert isinstance(stream, IterableDataset) and isinstance(dataset, Dataset)
    assert rows(stream) == rows(dataset)
    assert rows(stream) == rows(dataset)  # a second pass neither changes the examples nor double-counts
    assert (stream_report.total, stream_report.kept) == (report.total, report.kept)
    assert sorted(stream_report.skipped) == sorted(report.skipped)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=0)


# ---- loaders -------------------------------------------------------------------------------------------------------
def test_audiocaps(tmp_path):
    root = tmp_path / "audiocaps"
    write_wav(root / "audio" / "test" / "clipA.wav")
    write_wav(root / "audio" / "clipB.wav", seconds=0.3)  # found through the fallback template
    bad = write_corrupt(root / "audio" / "test" / "clipD.wav")
    root.joinpath("test.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "1,clipA,30,A dog barks\n2,clipB,0,Rain falls\n3,clipA,30,\"A dog barks, then a man speaks\"\n"
        "4,clipC,10,Nothing here\n5,clipA,30,Barking\n6,clipD,0,Corrupt\n7,clipB,0,Heavy rain\n"
    )
    kwargs = {"root": root, "split": "test", "cache_dir": str(tmp_path / "cache")}
    dataset, report = dc.load_audiocaps(**kwargs)
    assert rows(dataset) == [
        {"id": "clipA", "task": "text-to-audio", "audio_path": str(root / "audio/test/clipA.wav"), "video_path": None,
         "image_path": None, "caption": "A dog barks",
         "captions": ["A dog barks", "A dog barks, then a man speaks", "Barking"], "label": None},
        {"id": "clipB", "task": "text-to-audio", "audio_path": str(root / "audio/clipB.wav"), "video_path": None,
         "image_path": None, "caption": "Rain falls", "captions": ["Rain falls", "Heavy rain"], "label": None},
    ]  # fmt: skip
    assert (report.total, report.kept, report.skipped_ids) == (4, 2, ["clipC", "clipD"])
    assert [path for path, _ in report.skipped] == [str(root / "audio/test/clipC.wav"), bad]
    assert report.skipped[0][1] == "file not found" and "unreadable audio" in report.skipped[1][1]
    assert "kept 2 of 4" in report.summary() and bad in report.summary()
    check_streaming(dc.load_audiocaps, report, dataset, **kwargs)


def test_clotho(tmp_path):
    root = tmp_path / "clotho"
    write_wav(root / "evaluation" / "a b, c.wav")
    write_wav(root / "evaluation" / "second.wav", seconds=0.2)
    root.joinpath("clotho_captions_evaluation.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
        '"a b, c.wav",one,two,three,four,five\nsecond.wav,s1,s2,s3,s4,s5\nmissing.wav,m1,m2,m3,m4,m5\n'
    )
    kwargs = {"root": root, "split": "evaluation", "cache_dir": str(tmp_path / "cache")}
    dataset, report = dc.load_clotho(**kwargs)
    examples = rows(dataset)
    assert [e["id"] for e in examples] == ["a b, c.wav", "second.wav"]
    assert examples[0]["captions"] == ["one", "two", "three", "four", "five"] and examples[0]["caption"] == "one"
    assert examples[0]["task"] == "audio-to-text" and examples[0]["audio_path"] == str(root / "evaluation/a b, c.wav")
    assert report.skipped == [(str(root / "evaluation/missing.wav"), "file not found")]
    check_streaming(dc.load_clotho, report, dataset, **kwargs)


def test_vggsound(tmp_path):
    root = tmp_path / "vggsound"
    good = write_mp4(root / "video" / "abc_000030.mp4")
    write_mp4(root / "video" / "train1_000000.mp4")
    silent = write_mp4(root / "video" / "silent_000005.mp4", audio=False)
    corrupt = write_corrupt(root / "video" / "bad_000001.mp4")
    root.joinpath("vggsound.csv").write_text(
        'abc,30,"vehicle horn, car horn",test\ntrain1,0,dog barking,train\nsilent,5,wind,test\n'
        "bad,1,rain,test\nmissing,12,cat purring,test\n"
    )
    kwargs = {"root": root, "split": "test", "cache_dir": str(tmp_path / "cache")}
    dataset, report = dc.load_vggsound(**kwargs)
    assert rows(dataset) == [
        {"id": "abc_000030", "task": "video-to-audio", "audio_path": None, "video_path": good, "image_path": None,
         "caption": None, "captions": [], "label": "vehicle horn, car horn"}
    ]  # fmt: skip
    assert report.total == 4 and report.kept == 1
    assert dict(report.skipped) == {
        silent: "no audio stream",
        corrupt: dict(report.skipped)[corrupt],
        str(root / "video/missing_000012.mp4"): "file not found",
    }
    assert "unreadable video" in dict(report.skipped)[corrupt]
    check_streaming(dc.load_vggsound, report, dataset, **kwargs)
    train, _ = dc.load_vggsound(root, "train", cache_dir=str(tmp_path / "cache"))
    assert [e["label"] for e in train] == ["dog barking"]


def test_vggsound_images(tmp_path):
    root = tmp_path / "vggsound"
    write_vggsound(root, 4, "test", seed=0)
    sidecar = json.loads((root / "synthfoley_test.json").read_text(encoding="utf-8"))
    first, missing, corrupt, last = sidecar
    os.remove(root / sidecar[missing]["image"])
    truncated = root / sidecar[corrupt]["image"]
    truncated.write_bytes(truncated.read_bytes()[:60])
    kwargs = {"root": root, "split": "test", "image_template": "image/{youtube_id}.png", "cache_dir": str(tmp_path)}
    dataset, report = dc.load_vggsound(**kwargs)
    examples = rows(dataset)
    assert [(e["id"], e["image_path"]) for e in examples] == [
        (f"{clip_id}_000000", str(root / sidecar[clip_id]["image"])) for clip_id in (first, last)
    ]
    assert all(e["video_path"] == str(root / sidecar[e["id"][:-7]]["file"]) for e in examples)
    assert load_image(examples[0]["image_path"]).shape == (32, 32, 3)
    assert (report.total, report.kept, report.skipped_ids) == (4, 2, [f"{missing}_000000", f"{corrupt}_000000"])
    assert report.skipped[0] == (str(root / sidecar[missing]["image"]), "file not found")
    assert report.skipped[1][0] == str(root / sidecar[corrupt]["image"]) and "unreadable image" in report.skipped[1][1]
    check_streaming(dc.load_vggsound, report, dataset, **kwargs)
    plain, plain_report = dc.load_vggsound(root, "test", cache_dir=str(tmp_path))
    assert [e["image_path"] for e in plain] == [None] * 4 and plain_report.kept == 4


def test_vas(tmp_path):
    root = tmp_path / "vas"
    dog = write_mp4(root / "dog" / "videos" / "d1.mp4")
    drum = write_mp4(root / "drum" / "videos" / "x2.mp4", seconds=0.4)
    corrupt = write_corrupt(root / "drum" / "videos" / "x3.mp4")
    root.joinpath("test.txt").write_text("dog/d1\n\ndrum/x2.mp4\ndrum/x3\ndog/gone\n")
    kwargs = {"root": root, "split": "test", "cache_dir": str(tmp_path / "cache")}
    dataset, report = dc.load_vas(**kwargs)
    examples = rows(dataset)
    assert [(e["id"], e["label"], e["video_path"]) for e in examples] == [("dog/d1", "dog", dog), ("drum/x2", "drum", drum)]
    assert [path for path, _ in report.skipped] == [corrupt, str(root / "dog/videos/gone.mp4")]
    assert report.skipped_ids == ["drum/x3", "dog/gone"]
    check_streaming(dc.load_vas, report, dataset, **kwargs)


def test_folder(tmp_path):
    root = tmp_path / "folder"
    write_wav(root / "train" / "a.wav")
    write_wav(root / "train" / "sub" / "b.flac", seconds=0.2)
    write_mp4(root / "train" / "c.mp4")
    write_corrupt(root / "train" / "d.wav")
    root.joinpath("train", "metadata.csv").write_text(
        "file_name,caption,label\na.wav,a bell rings,bell\nsub/b.flac,,\nc.mp4,waves crash,sea\na.wav,a chime,bell\n"
        "d.wav,broken,\n"
    )
    kwargs = {"root": root, "split": "train", "cache_dir": str(tmp_path / "cache")}
    dataset, report = dc.load_folder(**kwargs)
    examples = {e["id"]: e for e in dataset}
    assert list(examples) == ["a.wav", "sub/b.flac", "c.mp4"]
    assert examples["a.wav"]["captions"] == ["a bell rings", "a chime"] and examples["a.wav"]["label"] == "bell"
    assert [examples[k]["task"] for k in examples] == ["text-to-audio", "audio-to-text", "video-to-audio"]
    assert examples["c.mp4"]["video_path"] == str(root / "train/c.mp4") and examples["c.mp4"]["audio_path"] is None
    assert [p for p, _ in report.skipped] == [str(root / "train/d.wav")]
    check_streaming(dc.load_folder, report, dataset, **kwargs)
    # Without a split, metadata.csv sits in root itself; `text` is accepted as the caption column.
    write_wav(root / "top.wav")
    root.joinpath("metadata.csv").write_text("file_name,text\ntop.wav,hello\n")
    flat, flat_report = dc.load_folder(root, cache_dir=str(tmp_path / "cache"))
    assert [(e["id"], e["caption"]) for e in flat] == [("top.wav", "hello")] and flat_report.skipped == []


def test_report_json_is_atomic(tmp_path):
    report = dc.LoadReport(name="x")
    report.add("a")
    report.add("b", "/data/b.wav", "file not found")
    report.add("b", "/data/b.wav", "file not found")  # counted once
    report.to_json(tmp_path / "out" / "report.json")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data == {"name": "x", "total": 2, "kept": 1,
                    "skipped": [{"id": "b", "path": "/data/b.wav", "reason": "file not found"}]}  # fmt: skip
    assert os.listdir(tmp_path / "out") == ["report.json"]


def test_load_video_audio(tmp_path):
    path = write_mp4(tmp_path / "a.mp4", seconds=0.6, freq=500.0)
    waveform = dc.load_video_audio(path, 24000)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(len(waveform) - 0.6 * 24000) <= 2048 * 1.5  # AAC adds up to a frame or two of padding
    spectrum = np.abs(np.fft.rfft(waveform))
    assert abs(np.argmax(spectrum) * 24000 / len(waveform) - 500.0) < 10
    with pytest.raises(MediaError, match="no audio stream"):
        dc.load_video_audio(write_mp4(tmp_path / "silent.mp4", audio=False), 24000)
    with pytest.raises(MediaError):
        dc.load_video_audio(write_corrupt(tmp_path / "bad.mp4"), 24000)


# ---- preprocessing -------------------------------------------------------------------------------------------------
@pytest.fixture
def audio_folder(tmp_path):
    """Two WAVs (one 44.1 kHz stereo), an MP4 with audio, and two files that pass the load probe but fail to decode:
    an all-NaN float WAV and an MP4 without an audio track."""
    root = tmp_path / "data"
    write_wav(root / "a.wav", seconds=0.5)
    write_wav(root / "b.wav", seconds=0.37, rate=44100, channels=2, freq=880.0)
    write_mp4(root / "c.mp4", seconds=0.6)
    write_nan_wav(root / "nan.wav")
    write_mp4(root / "silent.mp4", audio=False)
    root.joinpath("metadata.csv").write_text(
        "file_name,caption\na.wav,tone a\nnan.wav,nan\nb.wav,tone b\nc.mp4,video c\nsilent.mp4,silent\n"
    )
    return root


def direct_codes(model, processor, path):
    rate = processor.codec_feature_extractor.sampling_rate
    waveform = load_audio(path, rate) if path.endswith(".wav") else dc.load_video_audio(path, rate)
    inputs = processor.prepare_audio_target([waveform], sampling_rate=rate)
    codes = model.encode_audio(inputs["input_values"], inputs["padding_mask"])
    return codes[0, :, : math.ceil(len(waveform) / model.config.hop_length)], len(waveform)


def test_add_audio_codes(tiny, audio_folder, tmp_path, monkeypatch):
    model, processor = tiny
    dataset, load_report = dc.load_folder(audio_folder, cache_dir=str(tmp_path / "cache"))
    assert load_report.skipped == [] and len(dataset) == 5  # both bad files pass the cheap probe
    coded, report = dc.add_audio_codes(dataset, model, processor, batch_size=2)
    assert [e["id"] for e in coded] == ["a.wav", "b.wav", "c.mp4"]
    assert (report.total, report.kept, report.skipped_ids) == (5, 3, ["nan.wav", "silent.mp4"])
    assert [p for p, _ in report.skipped] == [str(audio_folder / "nan.wav"), str(audio_folder / "silent.mp4")]
    assert "NaN" in report.skipped[0][1] and "no audio stream" in report.skipped[1][1]
    for example in coded:
        path = example["audio_path"] or example["video_path"]
        expected, samples = direct_codes(model, processor, path)
        codes = np.array(example["audio_codes"])
        assert codes.shape == (2, math.ceil(samples / 320)) and codes.min() >= 0 and codes.max() < 1024
        np.testing.assert_array_equal(codes, expected.numpy())
    # The codes feed the processor as training targets.
    batch = processor(text=coded[0]["caption"], audio_codes=np.array(coded[0]["audio_codes"]), task="text-to-audio")
    assert batch["audio_codes"].shape == (1, 2, len(coded[0]["audio_codes"][0]))

    # Second run: a cache hit, the mapped function never runs and the same report is rebuilt from the cache.
    calls = []
    monkeypatch.setattr(dc, "_audio_codes", lambda *a, **k: calls.append(1))
    again, again_report = dc.add_audio_codes(dataset, model, processor, batch_size=2)
    assert calls == [] and again.cache_files == coded.cache_files
    assert again["audio_codes"] == coded["audio_codes"] and again_report == report
    # A reloaded dataset over the same files has the same fingerprint, so it hits the cache as well.
    reloaded, _ = dc.load_folder(audio_folder, cache_dir=str(tmp_path / "cache"))
    assert reloaded._fingerprint == dataset._fingerprint
    assert dc.add_audio_codes(reloaded, model, processor, batch_size=2)[0].cache_files == coded.cache_files
    assert calls == []
    monkeypatch.undo()

    # A different model (other codec weights) must not reuse the cache.
    other, _ = build_tiny(seed=1)
    assert dc.module_hash(other.codec) != dc.module_hash(model.codec)
    assert dc.add_audio_codes(dataset, other, processor, batch_size=2)[0].cache_files != coded.cache_files

    # num_proc=2 on a fresh cache gives identical results.
    fresh, _ = dc.load_folder(audio_folder, cache_dir=str(tmp_path / "cache2"))
    parallel, parallel_report = dc.add_audio_codes(fresh, model, processor, batch_size=2, num_proc=2)
    assert parallel.cache_files != coded.cache_files
    assert rows(parallel) == rows(coded) and parallel_report == report


def test_add_clap_inputs(tiny, audio_folder, tmp_path):
    _, processor = tiny
    dataset, _ = dc.load_folder(audio_folder, cache_dir=str(tmp_path / "cache"))
    clap, report = dc.add_clap_inputs(dataset, processor, batch_size=4)
    assert report.skipped_ids == ["nan.wav", "silent.mp4"]
    assert [e["id"] for e in clap] == ["a.wav", "b.wav", "c.mp4"]
    for example in clap.select(range(2)):
        expected = processor(audio=example["audio_path"], task="audio-to-text", return_tensors="np")
        np.testing.assert_allclose(np.array([example["input_features"]]), expected["input_features"], rtol=0, atol=0)
        assert np.array([example["is_longer"]]).tolist() == np.asarray(expected["is_longer"]).tolist()
    assert np.array(clap[2]["input_features"]).shape == np.asarray(expected["input_features"]).shape[1:]


def test_add_video_features(tiny, tmp_path):
    model, processor = tiny
    root = tmp_path / "vas"
    paths = [write_mp4(root / "dog" / "videos" / "d1.mp4", seconds=1.0), write_mp4(root / "dog" / "videos" / "d2.mp4")]
    root.joinpath("test.txt").write_text("dog/d1\ndog/d2\n")
    dataset, _ = dc.load_vas(root, "test", cache_dir=str(tmp_path / "cache"))
    featured, report = dc.add_video_features(dataset, model, processor, batch_size=1)
    assert report.kept == 2 and report.skipped == []
    for example, path in zip(featured, paths):
        features = torch.tensor(example["video_features"])
        inputs = processor(videos=[path], task="video-to-audio")
        with torch.no_grad():
            rgb = model.vision_encoder(pixel_values=inputs["pixel_values_videos"][0]).pooler_output
            flow = model.vision_encoder(pixel_values=inputs["flow_values_videos"][0]).pooler_output
        expected = torch.cat([rgb, flow], dim=-1)
        assert features.shape == (int(inputs["video_frames_mask"].sum()), model.config.video_feature_size)
        torch.testing.assert_close(features, expected, rtol=0, atol=0)
        # Precomputed features give the model the same video embeddings as the frames themselves.
        from_features = processor(video_features=features, task="video-to-audio")
        torch.testing.assert_close(
            model.get_video_features(video_features=from_features["video_features"]),
            model.get_video_features(inputs["pixel_values_videos"], inputs["flow_values_videos"]),
        )
    # Audio-only examples have no video: they are reported, not fatal.
    audio_root = tmp_path / "audio"
    write_wav(audio_root / "a.wav")
    write_mp4(audio_root / "v.mp4")
    audio_root.joinpath("metadata.csv").write_text("file_name\na.wav\nv.mp4\n")
    mixed, _ = dc.load_folder(audio_root, cache_dir=str(tmp_path / "cache"))
    kept, mixed_report = dc.add_video_features(mixed, model, processor, dtype="float16")
    assert [e["id"] for e in kept] == ["v.mp4"] and mixed_report.skipped_ids == ["a.wav"]
    assert kept.features["video_features"].feature.feature.dtype == "float16"


def test_preprocessing_rejects_streaming_and_reports_total_failure(tiny, tmp_path):
    model, processor = tiny
    root = tmp_path / "bad"
    write_nan_wav(root / "nan.wav")
    root.joinpath("metadata.csv").write_text("file_name,caption\nnan.wav,x\n")
    stream, _ = dc.load_folder(root, streaming=True)
    with pytest.raises(TypeError, match="streaming"):
        dc.add_audio_codes(stream, model, processor)
    dataset, _ = dc.load_folder(root, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="every example"):
        dc.add_audio_codes(dataset, model, processor)


def test_shared_handle_rebuilds_model_without_fork(tiny, monkeypatch):
    """Under 'spawn'/'forkserver' the model travels as class + config + state dict (weight-norm modules can't pickle)."""
    import pickle

    model, processor = tiny
    monkeypatch.setattr(dc.multiprocess, "get_start_method", lambda *a, **k: "spawn")
    threads = torch.get_num_threads()
    try:
        with dc._shared(model=model, processor=processor) as handles:
            copy = pickle.loads(pickle.dumps(handles["model"]))  # what a worker does; it limits torch to one thread
            assert pickle.loads(pickle.dumps(handles["processor"])).codebook_size == processor.codebook_size
    finally:
        torch.set_num_threads(threads)
    assert copy is not model and dc.module_hash(copy.codec) == dc.module_hash(model.codec)
    inputs = processor.prepare_audio_target([np.sin(np.arange(4000) / 7).astype(np.float32)], sampling_rate=24000)
    torch.testing.assert_close(copy.encode_audio(**inputs), model.encode_audio(**inputs))
