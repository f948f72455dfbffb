"""Shared fixtures: a tiny random C3LLM folder and real media files, all built offline."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import av  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import modeling_c3llm  # noqa: E402,F401  (registers the Auto classes)
import processing_c3llm  # noqa: E402,F401
from conversion.build_c3llm import build_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("c3llm") / "tiny"
    build_tiny(folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny(tiny_folder):
    from transformers import AutoModel, AutoProcessor

    return AutoModel.from_pretrained(tiny_folder).eval(), AutoProcessor.from_pretrained(tiny_folder)


def write_mp4(path, frames: int = 12, size: int = 32, fps: int = 10) -> None:
    """A real MP4: a bright square moving right by 2 px per frame."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.zeros((size, size, 3), dtype=np.uint8)
            image[10:20, 2 + 2 * i % (size - 12) : 12 + 2 * i % (size - 12)] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    t = np.arange(44100) / 44100
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(root / "stereo_44k.wav", np.stack([sine, sine], axis=1), 44100)
    write_mp4(root / "clip.mp4")
    image = np.zeros((40, 48, 3), dtype=np.uint8)
    image[5:25, 10:30] = (255, 0, 0)
    Image.fromarray(image).save(root / "image.png")
    (root / "corrupt.wav").write_bytes(os.urandom(300))
    (root / "corrupt.mp4").write_bytes(os.urandom(300))
    return root


# The EnCodec codes of an audio prompt (2 codebooks, 0.2 s at 75 Hz), for the tasks that continue one.
PROMPT_CODES = np.arange(30).reshape(2, 15) * 7 % 64


@pytest.fixture(scope="session")
def task_inputs(media):
    """Processor keyword arguments for one example of a task, from the media files."""
    return lambda task: {
        "audio-continuation": {"audio_prompt_codes": PROMPT_CODES, "text": "more of it"},
        "video-text-audio-to-audio": {"videos": str(media / "clip.mp4"), "text": "a drum",
                                      "audio_prompt_codes": PROMPT_CODES},
        "text-to-audio": {"text": "a dog barks"},
        "audio-to-text": {"audio": str(media / "stereo_44k.wav")},
        "video-to-audio": {"videos": str(media / "clip.mp4")},
        "video-to-caption": {"videos": str(media / "clip.mp4")},
        "video-text-to-audio": {"videos": str(media / "clip.mp4"), "text": "a drum"},
        "image-to-audio": {"images": str(media / "image.png")},
        "image-text-to-audio": {"images": str(media / "image.png"), "text": "a bell"},
    }[task]


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    np.random.seed(0)
