"""Tests for processing_c3llm.media_c3llm using real files written to tmp_path."""

import logging
import os

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from processing_c3llm.media_c3llm import (
    MediaError,
    flow_to_image,
    load_audio,
    load_image,
    load_video,
    optical_flow,
    sample_frames,
    validate_video,
    validate_waveform,
    write_wav,
)


TARGET_SR = 24000
VIDEO_CODEC = "mpeg4"
NUM_VIDEO_FRAMES = 20
SQUARE = 10  # side of the moving square in pixels


def _sine(freq: float, sr: int, seconds: float) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_frequency(waveform: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform))
    return float(np.fft.rfftfreq(len(waveform), 1 / sr)[np.argmax(spectrum)])


def _square_x(i: int) -> int:
    return 4 + 2 * i


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    """A real MP4: 20 frames of 64x32 at 10 fps, a bright square moving 2 px right per frame."""
    path = tmp_path_factory.mktemp("video") / "moving_square.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream(VIDEO_CODEC, rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
    stream.options = {"qscale": "2"}
    for i in range(NUM_VIDEO_FRAMES):
        image = np.full((32, 64, 3), 20, dtype=np.uint8)
        image[11 : 11 + SQUARE, _square_x(i) : _square_x(i) + SQUARE] = 230
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


# ----------------------------------------------------------------------------- audio files


def test_load_audio_resamples_and_downmixes_stereo(tmp_path, caplog):
    sine = _sine(440.0, 44100, 1.0)
    path = tmp_path / "stereo_44k.wav"
    sf.write(path, np.stack([sine, sine], axis=1), 44100, subtype="FLOAT")

    with caplog.at_level(logging.DEBUG, logger="processing_c3llm.media_c3llm"):
        waveform = load_audio(path, TARGET_SR)

    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(len(waveform) - round(len(sine) * TARGET_SR / 44100)) <= 1
    assert abs(_peak_frequency(waveform, TARGET_SR) - 440.0) < 5.0
    assert "downmixed 2 channels to mono" in caplog.text
    assert "resampled 44100 Hz -> 24000 Hz" in caplog.text


def test_load_audio_at_target_rate_is_unchanged(tmp_path, caplog):
    sine = _sine(440.0, TARGET_SR, 0.5)
    path = tmp_path / "mono_24k.wav"
    sf.write(path, sine, TARGET_SR, subtype="FLOAT")
    with caplog.at_level(logging.DEBUG, logger="processing_c3llm.media_c3llm"):
        waveform = load_audio(path, TARGET_SR)
    np.testing.assert_allclose(waveform, sine, atol=1e-6)
    assert "resampled" not in caplog.text and "downmixed" not in caplog.text


def test_load_audio_downmix_of_opposite_channels_is_silent(tmp_path):
    sine = _sine(440.0, TARGET_SR, 0.25)
    path = tmp_path / "opposite.flac"
    sf.write(path, np.stack([sine, -sine], axis=1), TARGET_SR)
    assert np.abs(load_audio(path, TARGET_SR)).max() < 1e-4


def test_load_audio_missing_file(tmp_path):
    with pytest.raises(MediaError, match=r"nope\.wav.*does not exist"):
        load_audio(tmp_path / "nope.wav", TARGET_SR)


def test_load_audio_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(MediaError, match=r"corrupt\.wav.*could not be read"):
        load_audio(path, TARGET_SR)


def test_load_audio_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), TARGET_SR)
    with pytest.raises(MediaError, match=r"empty\.wav.*zero samples"):
        load_audio(path, TARGET_SR)


def test_load_audio_nan_samples(tmp_path):
    data = _sine(440.0, TARGET_SR, 0.1)
    data[10] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, data, TARGET_SR, subtype="FLOAT")
    with pytest.raises(MediaError, match=r"nan\.wav.*NaN or infinite"):
        load_audio(path, TARGET_SR)


# ----------------------------------------------------------------------------- in-memory audio


def test_validate_waveform_float_list_and_stereo(caplog):
    np.testing.assert_allclose(validate_waveform([0.1, -0.2, 0.3], TARGET_SR, TARGET_SR), [0.1, -0.2, 0.3], rtol=1e-6)
    x = _sine(100.0, TARGET_SR, 0.1)
    with caplog.at_level(logging.DEBUG, logger="processing_c3llm.media_c3llm"):
        mono = validate_waveform(np.stack([x, -x]), TARGET_SR, TARGET_SR)
    assert mono.shape == x.shape and mono.dtype == np.float32
    assert np.abs(mono).max() < 1e-7
    assert "downmixed 2 channels" in caplog.text


def test_validate_waveform_int16_pcm():
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    out = validate_waveform(pcm, TARGET_SR, TARGET_SR)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, -1.0, 32767 / 32768], atol=1e-7)
    out32 = validate_waveform(np.array([2**30, -(2**31)], dtype=np.int32), TARGET_SR, TARGET_SR)
    np.testing.assert_allclose(out32, [0.5, -1.0], atol=1e-7)


def test_validate_waveform_missing_sampling_rate():
    with pytest.raises(MediaError, match=r"pass sampling_rate=24000"):
        validate_waveform(np.zeros(10), None, TARGET_SR)


def test_validate_waveform_mismatching_sampling_rate():
    with pytest.raises(MediaError, match=r"44100 Hz.*resample to 24000 Hz first, or pass a file path"):
        validate_waveform(np.zeros(10), 44100, TARGET_SR)


@pytest.mark.parametrize(
    "waveform, message",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.array([0.0, np.nan, 0.1]), "NaN or infinite"),
        (np.array([0.0, np.inf]), "NaN or infinite"),
        (np.zeros((1, 2, 3)), ">2 dims"),
        (["a", "b"], "numeric"),
        (np.zeros((16, 100)), "at most 8 channels"),
    ],
)
def test_validate_waveform_bad_inputs(waveform, message):
    with pytest.raises(MediaError, match=message):
        validate_waveform(waveform, TARGET_SR, TARGET_SR, name="speech")


def test_validate_waveform_duck_typed_tensor():
    class FakeTensor:
        def __init__(self, array):
            self.array = array

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.array

    out = validate_waveform(FakeTensor(np.ones((2, 5), dtype=np.float64)), TARGET_SR, TARGET_SR)
    assert out.dtype == np.float32 and out.shape == (5,)


# ----------------------------------------------------------------------------- video


def test_load_video_decodes_frames_and_fps(video_path):
    frames, fps = load_video(video_path)
    assert frames.dtype == np.uint8 and frames.shape[1:] == (32, 64, 3)
    assert abs(len(frames) - NUM_VIDEO_FRAMES) <= 1
    assert fps == pytest.approx(10.0)
    # the square is bright, the background dark
    assert frames[0, 15, _square_x(0) + SQUARE // 2].mean() > 200
    assert frames[0, 2, 60].mean() < 50


def test_load_video_missing_file(tmp_path):
    with pytest.raises(MediaError, match=r"missing\.mp4.*does not exist"):
        load_video(tmp_path / "missing.mp4")


def test_load_video_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(MediaError, match=r"corrupt\.mp4.*could not be"):
        load_video(path)


def test_load_video_without_video_stream(tmp_path):
    path = tmp_path / "audio_only.wav"
    sf.write(path, _sine(440.0, TARGET_SR, 0.1), TARGET_SR)
    with pytest.raises(MediaError, match=r"audio_only\.wav.*no video stream"):
        load_video(path)


def test_validate_video_layouts():
    frames = np.random.default_rng(0).integers(0, 256, (4, 8, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(validate_video(frames), frames)
    np.testing.assert_array_equal(validate_video(frames.transpose(0, 3, 1, 2)), frames)
    floats = validate_video(np.full((2, 4, 4, 3), 0.5, dtype=np.float32))
    assert floats.dtype == np.uint8 and np.all(floats == 128)


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((0,), dtype=np.uint8), "the video has no frames"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "the video has no frames"),
        (np.zeros((8, 8, 3), dtype=np.uint8), "expected 4 dims"),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), "3 color channels"),
        (np.full((2, 8, 8, 3), np.nan, dtype=np.float32), "NaN or infinite"),
    ],
)
def test_validate_video_bad_inputs(frames, message):
    with pytest.raises(MediaError, match=message):
        validate_video(frames)


def test_sample_frames_indices():
    frames = np.arange(60, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.uint8)
    picked = sample_frames(frames, source_fps=30.0, target_fps=5.0)
    assert picked.shape == (10, 2, 2, 3)
    np.testing.assert_array_equal(picked[:, 0, 0, 0], np.arange(0, 60, 6))
    np.testing.assert_array_equal(picked[1], frames[6])
    assert len(sample_frames(frames, 30.0, 5.0, max_frames=4)) == 4
    # upsampling repeats nearest frames; a very low target rate still yields one frame
    np.testing.assert_array_equal(sample_frames(frames[:3], 1.0, 2.0)[:, 0, 0, 0], [0, 1, 1, 2, 2, 2])
    assert len(sample_frames(frames, 30.0, 0.01)) == 1


def test_sample_frames_bad_fps():
    frames = np.zeros((5, 2, 2, 3), dtype=np.uint8)
    with pytest.raises(MediaError, match="positive"):
        sample_frames(frames, 0.0, 5.0)
    with pytest.raises(MediaError, match="positive"):
        sample_frames(frames, 30.0, -1.0)


def test_optical_flow_of_moving_square(video_path):
    frames, _ = load_video(video_path)
    flow = optical_flow(frames)
    assert flow.shape == frames.shape[:3] + (2,) and flow.dtype == np.float32
    for i in (0, 5, 10):
        region = flow[i, 11 : 11 + SQUARE, _square_x(i) : _square_x(i) + SQUARE]
        assert region[..., 0].mean() > 0.5
        assert np.abs(region[..., 1]).mean() < 0.2
    np.testing.assert_array_equal(flow[-1], flow[-2])
    # far from the square (while it is still on the left) nothing moves
    assert np.abs(flow[:5, 0:3, 56:64]).max() < 0.1


def test_optical_flow_single_and_tiny_frames():
    assert np.all(optical_flow(np.zeros((1, 8, 8, 3), dtype=np.uint8)) == 0)
    assert optical_flow(np.zeros((2, 4, 6, 3), dtype=np.uint8)).shape == (2, 4, 6, 2)


def test_flow_to_image_mapping():
    flow = np.zeros((2, 3, 4, 2), dtype=np.float32)
    flow[1, 0, 0] = [20.0, -20.0]
    flow[1, 0, 1] = [100.0, 0.0]
    image = flow_to_image(flow, clip=20.0)
    assert image.dtype == np.uint8 and image.shape == (2, 3, 4, 3)
    np.testing.assert_array_equal(image[0, ..., 0], 128)
    np.testing.assert_array_equal(image[0, ..., 1], 128)
    np.testing.assert_array_equal(image[0, ..., 2], 0)
    np.testing.assert_array_equal(image[1, 0, 0], [255, 0, 255])
    np.testing.assert_array_equal(image[1, 0, 1], [255, 128, 255])


# ----------------------------------------------------------------------------- images


def test_load_image_from_files_and_arrays(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(load_image(str(tmp_path / "rgb.png")), rgb)

    rgba = np.concatenate([rgb, np.full((6, 5, 1), 255, dtype=np.uint8)], axis=-1)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgba, mode="RGBA")), rgb)
    np.testing.assert_array_equal(load_image(rgba), rgb)

    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(load_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(load_image(gray), np.repeat(gray[..., None], 3, axis=-1))

    assert np.all(load_image(np.ones((4, 4, 3), dtype=np.float32)) == 255)
    np.testing.assert_array_equal(load_image(rgb.transpose(2, 0, 1)), rgb)


def test_load_image_missing_file(tmp_path):
    with pytest.raises(MediaError, match=r"nope\.png.*does not exist"):
        load_image(tmp_path / "nope.png")


def test_load_image_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(np.random.default_rng(2).bytes(512))
    with pytest.raises(MediaError, match=r"corrupt\.png.*could not be read"):
        load_image(path)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 4, 3), dtype=np.uint8), "empty"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "expected shape"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), "expected shape"),
        (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN or infinite"),
    ],
)
def test_load_image_bad_inputs(image, message):
    with pytest.raises(MediaError, match=message):
        load_image(image)


# ----------------------------------------------------------------------------- writing


def test_write_wav_round_trip(tmp_path):
    path = tmp_path / "out.wav"
    x = _sine(440.0, TARGET_SR, 0.2)
    write_wav(path, x, TARGET_SR)
    data, sr = sf.read(path, dtype="float32")
    assert sr == TARGET_SR and sf.info(path).subtype == "PCM_16"
    np.testing.assert_allclose(data, x, atol=1 / 32768 + 1e-6)
    assert os.listdir(tmp_path) == ["out.wav"]

    # stereo (channels, samples), clipping, and overwriting the existing file
    write_wav(path, np.stack([x * 4, -x]), TARGET_SR)
    data, _ = sf.read(path, dtype="float32")
    assert data.shape == (len(x), 2)
    assert data[:, 0].max() == pytest.approx(1.0, abs=1e-4) and data[:, 0].min() == pytest.approx(-1.0, abs=1e-4)
    np.testing.assert_allclose(data[:, 1], -x, atol=1 / 32768 + 1e-6)
    assert os.listdir(tmp_path) == ["out.wav"]


def test_write_wav_nan_leaves_no_file(tmp_path):
    x = _sine(440.0, TARGET_SR, 0.1)
    x[3] = np.nan
    with pytest.raises(MediaError, match="NaN or infinite"):
        write_wav(tmp_path / "bad.wav", x, TARGET_SR)
    assert os.listdir(tmp_path) == []


def test_write_wav_failure_during_write_removes_temp_file(tmp_path, monkeypatch):
    def failing_write(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sf, "write", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_wav(tmp_path / "out.wav", np.zeros(10, dtype=np.float32), TARGET_SR)
    assert os.listdir(tmp_path) == []
