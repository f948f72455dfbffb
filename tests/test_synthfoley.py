"""Tests for the SynthFoley dataset (c3llm.synthfoley.synthfoley) and the DSP event detector."""

import csv
import itertools
import json
import os

import av
import numpy as np
import pytest
from PIL import Image
from scipy.signal import butter, sosfiltfilt

from c3llm.synthfoley.event_detector import DetectedEvent, detect_events, event_classes, onsets
from processing_c3llm.media_c3llm import load_audio, load_video
from c3llm.synthfoley.synthfoley import (
    BACKGROUND_DB,
    EVENT_CLASSES,
    EVENT_VISUALS,
    LAYOUTS,
    PROMPT_LAYOUTS,
    MIN_GAP,
    NEUTRAL_VISUAL,
    Clip,
    Event,
    event_frames,
    make_caption,
    make_clip,
    neutral_frames,
    parse_caption,
    render_glyphs,
    write_audiocaps,
    write_synthfoley,
    write_vggsound,
)


SR = 24000
FPS = 10.0
NUM_DETECTOR_CLIPS = 200
ONSET_TOLERANCE = 0.03


def _labels(clip: Clip) -> list[str]:
    return [event.label for event in clip.events]


def _degrade(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Low-pass at 8 kHz, white noise at -30 dBFS, then a slight tanh compression."""
    lowpassed = sosfiltfilt(butter(8, 8000, fs=SR, output="sos"), audio)
    noisy = lowpassed + rng.normal(0.0, 10 ** (-30 / 20), len(audio))
    return (np.tanh(1.5 * noisy) / 1.5).astype(np.float32)


def _scores(clips: list[Clip], audios: list[np.ndarray]) -> tuple[float, float]:
    """(share of clips whose class sequence is exactly right, share of true events with a detected onset nearby)."""
    exact, near, total = 0, 0, 0
    for clip, audio in zip(clips, audios):
        detected = detect_events(audio, SR)
        exact += [event.label for event in detected] == _labels(clip)
        for event in clip.events:
            total += 1
            near += any(abs(found.onset - event.onset) <= ONSET_TOLERANCE for found in detected)
    return exact / len(clips), near / total


@pytest.fixture(scope="module")
def detector_clips():
    rng = np.random.default_rng(1234)
    return [make_clip(rng) for _ in range(NUM_DETECTOR_CLIPS)]


# --- clips -----------------------------------------------------------------------------------------------------------


def test_make_clip_is_reproducible():
    first, second = make_clip(np.random.default_rng(7)), make_clip(np.random.default_rng(7))
    assert first.caption == second.caption and first.events == second.events
    np.testing.assert_array_equal(first.audio, second.audio)
    np.testing.assert_array_equal(first.frames, second.frames)
    assert not np.array_equal(first.audio, make_clip(np.random.default_rng(8)).audio)


def test_clip_structure():
    rng = np.random.default_rng(0)
    seen_classes, seen_counts = set(), set()
    for _ in range(300):
        clip = make_clip(rng)
        assert clip.audio.dtype == np.float32 and clip.audio.shape == (2 * SR,)
        assert clip.frames.dtype == np.uint8 and clip.frames.shape == (20, 32, 32, 3)
        assert clip.sampling_rate == SR and clip.fps == FPS
        assert 1 <= len(clip.events) <= 3
        assert clip.caption == make_caption(_labels(clip))
        for event in clip.events:
            assert event.label in EVENT_CLASSES
            assert abs(event.onset * FPS - round(event.onset * FPS)) < 1e-9  # on the video frame grid
            assert event.onset >= 1 / FPS - 1e-9 and event.onset + event.duration <= 2.0 + 1e-9
        for before, after in zip(clip.events, clip.events[1:]):
            assert after.onset - (before.onset + before.duration) >= MIN_GAP - 1e-9
        seen_classes.update(_labels(clip))
        seen_counts.add(len(clip.events))
    assert seen_classes == set(EVENT_CLASSES) and seen_counts == {1, 2, 3}


def test_clip_audio_levels():
    clip = make_clip(np.random.default_rng(3))
    active = np.zeros(len(clip.audio), dtype=bool)
    for event in clip.events:
        segment = clip.audio[round(event.onset * SR) : round((event.onset + event.duration) * SR)]
        assert 0.25 <= np.abs(segment).max() <= 0.65
        active[round(event.onset * SR) : round((event.onset + event.duration) * SR)] = True
    background_db = 20 * np.log10(np.std(clip.audio[~active]))
    assert abs(background_db - BACKGROUND_DB) < 1.0


def test_events_that_do_not_fit_are_dropped():
    for seed in range(50):
        clip = make_clip(np.random.default_rng(seed), duration=0.8, max_events=3)
        assert clip.events and all(event.onset + event.duration <= 0.8 + 1e-9 for event in clip.events)
    with pytest.raises(ValueError, match="too short"):
        make_clip(np.random.default_rng(0), duration=0.1)


def test_video_shows_each_event_from_its_onset_frame():
    rng = np.random.default_rng(11)
    for _ in range(50):
        clip = make_clip(rng)
        covered = np.zeros(len(clip.frames), dtype=bool)
        for event in clip.events:
            shown = event_frames(event, FPS)
            assert shown.start == round(event.onset * FPS) and len(shown) >= 1
            covered[shown.start : shown.stop] = True
            _, color, _ = EVENT_VISUALS[event.label]
            mask = clip.frames[shown.start].any(axis=-1)
            assert mask.sum() >= 4
            assert (clip.frames[shown.start][mask] == color).all()
            for index in shown:
                np.testing.assert_array_equal(clip.frames[index], clip.frames[shown.start])
        assert not clip.frames[~covered].any(), "frames outside every event must be black"


def test_visuals_are_distinct():
    colors = [color for _, color, _ in EVENT_VISUALS.values()]
    assert len(set(colors)) == len(EVENT_CLASSES) and set(EVENT_VISUALS) == set(EVENT_CLASSES)


# --- captions --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, caption",
    [
        (["high beep"], "a high beep"),
        (["chirp", "hum"], "a chirp, then a hum"),
        (["noise burst", "click train", "low beep"], "a noise burst, then a click train, then a low beep"),
        (["high beep", "high beep", "noise burst"], "a high beep repeats twice, then a noise burst"),
        (["hum", "hum", "hum"], "a hum repeats three times"),
        (["click train", "low beep", "click train"], "a click train, then a low beep, then a click train"),
        (["chirp"] * 7, "a chirp repeats 7 times"),
    ],
)
def test_caption_templates(labels, caption):
    assert make_caption(labels) == caption
    assert parse_caption(caption) == labels


def test_parse_caption_round_trip_all_sequences():
    for length in (1, 2, 3, 4):
        for labels in itertools.product(EVENT_CLASSES, repeat=length):
            assert parse_caption(make_caption(list(labels))) == list(labels)


def test_parse_caption_is_lenient():
    assert parse_caption("A Chirp then a hum.") == ["chirp", "hum"]
    assert parse_caption("a low beep repeats four times and some wind") == ["low beep"] * 4
    assert parse_caption("birds singing") == []
    with pytest.raises(ValueError):
        make_caption([])


# --- layouts on disk -------------------------------------------------------------------------------------------------


def test_audiocaps_layout(tmp_path):
    csv_path = write_audiocaps(tmp_path, 4, "train", seed=3)
    assert csv_path == tmp_path / "train.csv"
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "audiocap_id,youtube_id,start_time,caption"
    rows = list(csv.DictReader(lines))
    sidecar = json.loads((tmp_path / "synthfoley_train.json").read_text(encoding="utf-8"))
    assert len(rows) == 4 and list(sidecar) == [row["youtube_id"] for row in rows]
    for row in rows:
        youtube_id = row["youtube_id"]
        assert len(youtube_id) == 11 and youtube_id.startswith("sf") and row["start_time"] == "0"
        assert int(row["audiocap_id"]) > 0
        entry = sidecar[youtube_id]
        assert entry["caption"] == row["caption"] and entry["file"] == f"audio/train/{youtube_id}.wav"
        assert parse_caption(row["caption"]) == [event["label"] for event in entry["events"]]
        audio = load_audio(tmp_path / "audio" / "train" / f"{youtube_id}.wav", SR)
        assert audio.shape == (2 * SR,)
        detected = detect_events(audio, SR)
        assert [event.label for event in detected] == [event["label"] for event in entry["events"]]


def test_layouts_are_reproducible(tmp_path):
    for name in ("a", "b"):
        write_audiocaps(tmp_path / name, 3, "test", seed=5)
        write_vggsound(tmp_path / name, 2, "test", seed=5)
    for relative in ("test.csv", "synthfoley_test.json", "vggsound.csv"):
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
    wavs = sorted(path.name for path in (tmp_path / "a" / "audio" / "test").iterdir())
    assert len(wavs) == 3
    for wav in wavs:
        assert (tmp_path / "a/audio/test" / wav).read_bytes() == (tmp_path / "b/audio/test" / wav).read_bytes()
    other = write_audiocaps(tmp_path / "c", 3, "test", seed=6).read_text(encoding="utf-8")
    assert other != (tmp_path / "a" / "test.csv").read_text(encoding="utf-8")


def _decode(path) -> tuple[int, np.ndarray, int, int]:
    """(video frame count, decoded mono audio, audio rate, audio channels) of an MP4 file."""
    with av.open(str(path)) as container:
        num_frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        audio = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
        return num_frames, audio[0], stream.rate, stream.channels


def test_vggsound_layout(tmp_path):
    csv_path = write_vggsound(tmp_path, 3, "train", seed=0)
    assert csv_path == tmp_path / "vggsound.csv"
    text = csv_path.read_text(encoding="utf-8")
    assert not text.startswith("youtube_id")
    rows = list(csv.reader(text.splitlines()))
    sidecar = json.loads((tmp_path / "synthfoley_train.json").read_text(encoding="utf-8"))
    assert len(rows) == 3
    decoded_clips = {}
    for youtube_id, start_seconds, label, split in rows:
        assert len(youtube_id) == 11 and start_seconds == "0" and split == "train"
        assert label == sidecar[youtube_id]["caption"]
        path = tmp_path / "video" / f"{youtube_id}_000000.mp4"
        assert sidecar[youtube_id]["file"] == f"video/{youtube_id}_000000.mp4"
        num_frames, audio, rate, channels = _decode(path)
        assert num_frames == 20 and rate == SR and channels == 1
        decoded_clips[youtube_id] = (audio, label, sidecar[youtube_id]["events"])
        frames, fps = load_video(path)
        assert frames.shape == (20, 32, 32, 3) and fps == pytest.approx(FPS)
    # The audio track is the clip audio after AAC: compare with the WAV written for the same seed/split/index.
    write_audiocaps(tmp_path / "ac", 3, "train", seed=0)
    for youtube_id, (audio, label, events) in decoded_clips.items():
        reference = load_audio(tmp_path / "ac" / "audio" / "train" / f"{youtube_id}.wav", SR)
        assert abs(len(audio) - len(reference)) < 1024
        decoded = audio[: len(reference)]
        assert np.corrcoef(decoded, reference)[0, 1] > 0.99
        assert np.sqrt(np.mean((decoded - reference) ** 2)) < 0.02
        assert event_classes(audio, SR) == [event["label"] for event in events] == parse_caption(label)


def test_vggsound_video_shows_the_events(tmp_path):
    write_vggsound(tmp_path, 3, "test", seed=2)
    sidecar = json.loads((tmp_path / "synthfoley_test.json").read_text(encoding="utf-8"))
    for entry in sidecar.values():
        frames, _ = load_video(tmp_path / entry["file"])
        covered = np.zeros(len(frames), dtype=bool)
        for event in entry["events"]:
            shown = event_frames(Event(**event), FPS)
            covered[shown.start : shown.stop] = True
            for frame in frames[shown.start : shown.stop]:
                bright = frame.max(axis=-1) > 128  # the shape's core survives the lossy codec
                assert bright.sum() >= 4
                mean = frame[bright].mean(axis=0)
                nearest = min(EVENT_VISUALS, key=lambda name: np.abs(mean - EVENT_VISUALS[name][1]).sum())
                assert nearest == event["label"]
        assert frames[~covered].max() < 40, "frames outside every event stay (nearly) black"


def test_vggsound_appends_without_duplicates(tmp_path):
    write_vggsound(tmp_path, 2, "train", seed=0)
    write_vggsound(tmp_path, 2, "test", seed=0)
    write_vggsound(tmp_path, 3, "train", seed=0)
    rows = list(csv.reader((tmp_path / "vggsound.csv").read_text(encoding="utf-8").splitlines()))
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids)) == 5
    assert sorted(row[3] for row in rows) == ["test"] * 2 + ["train"] * 3
    assert len(json.loads((tmp_path / "synthfoley_train.json").read_text(encoding="utf-8"))) == 3


def test_write_synthfoley_splits_are_disjoint(tmp_path):
    roots = write_synthfoley(tmp_path, train=3, test=2, seed=0)
    assert roots == {layout: tmp_path / layout for layout in LAYOUTS + PROMPT_LAYOUTS}
    train = json.loads((roots["audiocaps"] / "synthfoley_train.json").read_text(encoding="utf-8"))
    test = json.loads((roots["audiocaps"] / "synthfoley_test.json").read_text(encoding="utf-8"))
    assert len(train) == 3 and len(test) == 2 and not set(train) & set(test)
    assert (roots["audiocaps"] / "train.csv").is_file() and (roots["audiocaps"] / "test.csv").is_file()
    for layout in ("vggsound", "neutral"):
        rows = list(csv.reader((roots[layout] / "vggsound.csv").read_text(encoding="utf-8").splitlines()))
        assert [row[0] for row in rows] == list(train) + list(test)
        assert [row[2] for row in rows] == [entry["caption"] for entry in (*train.values(), *test.values())]
    train_audio = {load_audio(roots["audiocaps"] / v["file"], SR).tobytes() for v in train.values()}
    test_audio = {load_audio(roots["audiocaps"] / v["file"], SR).tobytes() for v in test.values()}
    assert not train_audio & test_audio


def test_write_synthfoley_writes_the_first_training_clips_as_videos(tmp_path):
    roots = write_synthfoley(tmp_path, train=4, test=2, seed=0, video_train=2, neutral_train=3)
    audio, video, neutral = (
        json.loads((roots[layout] / "synthfoley_train.json").read_text(encoding="utf-8")) for layout in LAYOUTS
    )
    assert len(audio) == 4 and list(video) == list(audio)[:2] and list(neutral) == list(audio)[:3]  # same order
    for clip_id, entry in video.items():
        assert entry == {"file": f"video/{clip_id}_000000.mp4", "image": f"image/{clip_id}.png",
                         "caption": audio[clip_id]["caption"], "events": audio[clip_id]["events"]}  # fmt: skip
    for clip_id, entry in neutral.items():
        assert entry == {"file": f"video/{clip_id}_000000.mp4", "caption": audio[clip_id]["caption"],
                         "events": audio[clip_id]["events"]}  # fmt: skip
        num_frames, track, rate, channels = _decode(roots["neutral"] / entry["file"])  # a clip without class video too
        assert (num_frames, rate, channels) == (20, SR, 1)
        assert event_classes(track, SR) == [event["label"] for event in entry["events"]]
    video_test = json.loads((roots["vggsound"] / "synthfoley_test.json").read_text(encoding="utf-8"))
    neutral_test = json.loads((roots["neutral"] / "synthfoley_test.json").read_text(encoding="utf-8"))
    assert len(video_test) == 2 and list(neutral_test) == list(video_test)
    assert sorted(os.listdir(roots["vggsound"] / "image")) == sorted(f"{i}.png" for i in [*video, *video_test])
    assert not (roots["neutral"] / "image").exists()
    default = write_synthfoley(tmp_path / "default", train=3, test=0, seed=0, video_train=2)
    assert len(json.loads((default["neutral"] / "synthfoley_train.json").read_text(encoding="utf-8"))) == 2
    with pytest.raises(ValueError, match="video_train must be between 0 and train"):
        write_synthfoley(tmp_path, train=2, test=1, video_train=3)
    with pytest.raises(ValueError, match="neutral_train must be between 0 and train"):
        write_synthfoley(tmp_path, train=2, test=1, neutral_train=-1)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        write_synthfoley(tmp_path, train=2, test=1, workers=0)


def _tree(root) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_write_synthfoley_in_worker_processes_writes_the_same_files(tmp_path):
    for name, workers in (("one", 1), ("two", 2)):
        write_synthfoley(tmp_path / name, train=5, test=2, seed=1, video_train=4, neutral_train=3, workers=workers)
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert list(one) == list(two)
    suffixes = [name.rsplit(".", 1)[-1] for name in one]
    # audio 5 + 2 and continuation 5 + 2 WAVs; class videos 4 + 2, neutral 3 + 2 and multicondition 3 + 2 MP4s
    assert (suffixes.count("wav"), suffixes.count("png"), suffixes.count("mp4")) == (7 + 7, 6, 6 + 5 + 5)
    videos = [name for name in one if name.endswith(".mp4")]
    assert all(one[name] == two[name] for name in one if name not in videos)  # CSVs, sidecars, WAVs and PNGs
    # libx264 may, rarely, encode a clip a little differently in a process that has encoded other clips before.
    for name in videos:
        frames, _ = load_video(tmp_path / "one" / name)
        assert np.abs(frames.astype(int) - load_video(tmp_path / "two" / name)[0]).max() <= 16


# --- pictures and class-neutral videos -------------------------------------------------------------------------------


def _columns(image: np.ndarray, color) -> set[int]:
    return set(np.nonzero((image == color).all(axis=-1).any(axis=0))[0].tolist())


def test_glyphs_show_the_events_left_to_right():
    image = render_glyphs(["chirp", "hum", "chirp"])
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    chirp, hum = EVENT_VISUALS["chirp"][1], EVENT_VISUALS["hum"][1]
    left, middle, right = (set(third.tolist()) for third in np.array_split(np.arange(32), 3))
    chirp_columns, hum_columns = _columns(image, chirp), _columns(image, hum)
    assert chirp_columns & left and chirp_columns & right and chirp_columns <= left | right
    assert hum_columns and hum_columns <= middle
    lit = image.any(axis=-1)
    assert ((image == chirp).all(axis=-1) | (image == hum).all(axis=-1))[lit].all(), "only the two class colors"
    np.testing.assert_array_equal(render_glyphs(["chirp", "hum", "chirp"]), image)  # no randomness
    assert not np.array_equal(render_glyphs(["hum", "chirp", "chirp"]), image)
    assert not np.array_equal(render_glyphs(["chirp", "chirp", "hum"]), image)
    labels = ["low beep", "high beep", "noise burst", "click train"]
    image = render_glyphs(labels)
    firsts = [min(_columns(image, EVENT_VISUALS[label][1])) for label in labels]
    assert firsts == sorted(firsts) and len(set(firsts)) == 4
    with pytest.raises(ValueError, match="holds 1 to 8 glyphs"):
        render_glyphs([])


@pytest.mark.parametrize("label", EVENT_CLASSES)
def test_a_glyph_is_centred_in_its_class_color(label):
    for size in (32, 64):
        image = render_glyphs([label], size)
        lit = image.any(axis=-1)
        assert lit.sum() >= size and (image[lit] == EVENT_VISUALS[label][1]).all()
        rows, columns = np.nonzero(lit.any(axis=1))[0], np.nonzero(lit.any(axis=0))[0]
        assert abs(rows[0] - (size - 1 - rows[-1])) <= 1 and abs(columns[0] - (size - 1 - columns[-1])) <= 1


def test_neutral_frames_show_the_same_square_on_the_same_frames():
    rng = np.random.default_rng(4)
    side = round(NEUTRAL_VISUAL[2] * 32)
    for _ in range(30):
        clip = make_clip(rng)
        frames = neutral_frames(clip, rng)
        assert frames.shape == clip.frames.shape and frames.dtype == np.uint8
        np.testing.assert_array_equal(frames.any(axis=(1, 2, 3)), clip.frames.any(axis=(1, 2, 3)))
        lit = frames.any(axis=-1)
        assert (frames[lit] == NEUTRAL_VISUAL[1]).all()
        for frame in lit[lit.any(axis=(1, 2))]:
            rows, columns = np.nonzero(frame.any(axis=1))[0], np.nonzero(frame.any(axis=0))[0]
            assert frame.sum() == side * side and rows[-1] - rows[0] + 1 == columns[-1] - columns[0] + 1 == side


def test_written_pictures_and_neutral_videos(tmp_path):
    roots = write_synthfoley(tmp_path, train=0, test=3, seed=2)
    video = json.loads((roots["vggsound"] / "synthfoley_test.json").read_text(encoding="utf-8"))
    neutral = json.loads((roots["neutral"] / "synthfoley_test.json").read_text(encoding="utf-8"))
    assert list(neutral) == list(video)
    for clip_id, entry in video.items():
        labels = [event["label"] for event in entry["events"]]
        with Image.open(roots["vggsound"] / entry["image"]) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), render_glyphs(labels))
        class_frames, _ = load_video(roots["vggsound"] / entry["file"])
        neutral_video, fps = load_video(roots["neutral"] / neutral[clip_id]["file"])
        assert neutral_video.shape == class_frames.shape and fps == pytest.approx(FPS)
        neutral_audio, class_audio = (_decode(roots[layout] / entry["file"])[1] for layout in ("neutral", "vggsound"))
        np.testing.assert_allclose(neutral_audio, class_audio, atol=1e-3)  # the same audio track
        shown = np.zeros(len(neutral_video), dtype=bool)
        for event in entry["events"]:
            span = event_frames(Event(**event), FPS)
            shown[span.start : span.stop] = True
        lit = neutral_video.max(axis=(1, 2, 3)) > 64
        np.testing.assert_array_equal(lit, class_frames.max(axis=(1, 2, 3)) > 64)  # the same visual onsets
        np.testing.assert_array_equal(lit, shown)
        bright = neutral_video.max(axis=-1) > 64
        assert (np.abs(neutral_video[bright].astype(int) - NEUTRAL_VISUAL[1]) <= 12).all()
        assert (bright.sum(axis=(1, 2))[lit] == round(NEUTRAL_VISUAL[2] * 32) ** 2).all()  # one square, one size
        assert neutral_video[~lit].max() < 40


# --- detector --------------------------------------------------------------------------------------------------------


def test_detector_on_clean_clips(detector_clips):
    exact, near = _scores(detector_clips, [clip.audio for clip in detector_clips])
    print(f"clean: class sequence exact {exact:.3f}, onsets within {ONSET_TOLERANCE} s {near:.3f}")
    assert exact >= 0.95 and near >= 0.95


def test_detector_on_degraded_clips(detector_clips):
    rng = np.random.default_rng(99)
    exact, near = _scores(detector_clips, [_degrade(clip.audio, rng) for clip in detector_clips])
    print(f"degraded: class sequence exact {exact:.3f}, onsets within {ONSET_TOLERANCE} s {near:.3f}")
    assert exact >= 0.85


def test_detector_on_background_noise_and_silence():
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert detect_events(rng.normal(0.0, 10 ** (BACKGROUND_DB / 20), 2 * SR).astype(np.float32), SR) == []
    assert detect_events(np.zeros(2 * SR, dtype=np.float32), SR) == []
    assert detect_events(np.zeros(10, dtype=np.float32), SR) == []


def test_detector_api(detector_clips):
    clip = detector_clips[0]
    detected = detect_events(clip.audio, SR)
    assert all(isinstance(event, DetectedEvent) and event.onset < event.offset for event in detected)
    assert event_classes(clip.audio, SR) == [event.label for event in detected]
    np.testing.assert_allclose(onsets(clip.audio, SR), [event.onset for event in detected])
    assert onsets(np.zeros(SR), SR).shape == (0,)


@pytest.mark.parametrize("sampling_rate", [16000, 44100])
def test_detector_at_other_rates(sampling_rate):
    rng = np.random.default_rng(5)
    for _ in range(20):
        clip = make_clip(rng, sampling_rate=sampling_rate)
        detected = detect_events(clip.audio, sampling_rate)
        assert [event.label for event in detected] == _labels(clip)
        assert all(abs(a.onset - b.onset) <= ONSET_TOLERANCE for a, b in zip(detected, clip.events))
