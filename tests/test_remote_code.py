"""A saved folder's remote code needs only torch, transformers, numpy and safetensors.

The media packages (PyAV, OpenCV, Pillow, soundfile, SciPy; torchvision for transformers' image processors) load only
when a video, image or file needs them, and a missing one fails with an error that names its pip package. The fast
tests check the imports transformers sees, the error messages (a package is hidden by a `None` in `sys.modules`) and
the deferred image processor; the slow test runs the folder in a bare venv (tests/venvs.py: built on first use in
~/.cache/c3llm/venvs, then reused).
"""

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, AutoProcessor
from transformers.dynamic_module_utils import get_imports

from conversion.build_c3llm import build_tiny
from processing_c3llm.media_c3llm import (
    DeferredImageProcessor,
    MissingMediaPackageError,
    load_audio,
    load_image,
    optical_flow,
    optional_import,
    resample,
    write_wav,
)

BARE_REQUIREMENTS = ["torch==2.13.0", "transformers==5.23.0", "numpy<2", "safetensors"]
BARE_PACKAGES = {"torch", "transformers", "numpy", "safetensors"}
MEDIA_MODULES = ("cv2", "av", "PIL", "scipy", "soundfile", "torchvision")


# ---- what transformers checks before it runs the remote code --------------------------------------------------------
def test_remote_code_imports_only_the_bare_packages(tiny_folder):
    files = sorted(Path(tiny_folder).glob("*.py"))
    names = {f.name for f in files}
    assert {"modeling_c3llm.py", "configuration_c3llm.py", "generation_c3llm.py", "processing_c3llm.py",
            "media_c3llm.py"} <= names  # fmt: skip
    for file in files:
        third_party = set(get_imports(file)) - set(sys.stdlib_module_names)
        assert third_party <= BARE_PACKAGES, f"{file.name} makes transformers require {third_party - BARE_PACKAGES}"


# ---- optional_import ----------------------------------------------------------------------------------------------
def test_optional_import_returns_the_module_or_names_the_pip_package(tmp_path, monkeypatch):
    assert optional_import("json", "json", "Testing") is json
    with pytest.raises(MissingMediaPackageError, match=r"Reading X needs the pip package `no-such-dist` \(module "
                       r"`c3llm_no_such_module`\), which is not installed; install it with `pip install no-such-dist`"):
        optional_import("c3llm_no_such_module.sub", "no-such-dist", "Reading X")
    # Installed but broken (a dependency of its own is missing): said so, not "not installed".
    (tmp_path / "c3llm_broken_module.py").write_text("import c3llm_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = "installed but failed to import .*c3llm_missing_dependency"
    with pytest.raises(MissingMediaPackageError, match=broken) as e:
        optional_import("c3llm_broken_module", "broken-dist", "Decoding Y")
    assert isinstance(e.value, ImportError) and "pip install broken-dist" in str(e.value)


@pytest.mark.parametrize(
    ("hidden", "pip_name", "call"),
    [
        ("soundfile", "soundfile", lambda media, folder, tmp: load_audio(media / "stereo_44k.wav", 16000)),
        ("soundfile", "soundfile", lambda media, folder, tmp: write_wav(tmp / "out.wav", np.zeros(10), 16000)),
        ("scipy.signal", "scipy", lambda media, folder, tmp: resample(np.zeros(100), 44100, 16000)),
        ("av", "av", lambda media, folder, tmp: AutoProcessor.from_pretrained(folder)(videos=media / "clip.mp4")),
        ("cv2", "opencv-python-headless", lambda media, folder, tmp: optical_flow(np.zeros((2, 8, 8, 3), "uint8"))),
        ("PIL.Image", "pillow", lambda media, folder, tmp: load_image(media / "image.png")),
        ("PIL.Image", "pillow", lambda media, folder, tmp: AutoProcessor.from_pretrained(folder)(
            images=np.zeros((40, 48, 3), np.uint8))),
    ],
)
def test_a_missing_media_package_is_named_with_its_pip_name(hidden, pip_name, call, media, tiny_folder, tmp_path,
                                                          monkeypatch):  # fmt: skip
    monkeypatch.setitem(sys.modules, hidden, None)  # `import` now fails as if the package were not installed
    expected = f"which is not installed; install it with `pip install {pip_name}`"
    with pytest.raises(MissingMediaPackageError, match=expected):
        call(media, tiny_folder, tmp_path)


def test_arrays_need_no_media_package(monkeypatch):
    for module in ("PIL.Image", "cv2", "av", "soundfile", "scipy.signal"):
        monkeypatch.setitem(sys.modules, module, None)
    image = load_image(np.full((1, 4, 5), 0.5, dtype=np.float32))
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8 and (image == 128).all()
    assert resample(np.arange(4.0), 16000, 16000).tolist() == [0.0, 1.0, 2.0, 3.0]


# ---- the deferred image processor -----------------------------------------------------------------------------------
def test_the_image_processor_loads_only_for_images_and_videos(tiny_folder, media, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_folder)
    deferred = processor.image_processor
    assert isinstance(deferred, DeferredImageProcessor) and not deferred.is_loaded
    processor(text="a dog barks")
    processor(audio=np.zeros(16000, np.float32), sampling_rate=16000)
    repr(processor)
    copy.deepcopy(processor)
    assert not pickle.loads(pickle.dumps(deferred)).is_loaded
    saved = json.loads((Path(tiny_folder) / "processor_config.json").read_text())
    processor.save_pretrained(tmp_path / "unloaded")
    assert json.loads((tmp_path / "unloaded" / "processor_config.json").read_text()) == saved
    assert not deferred.is_loaded, "text, audio, repr, copies and saving must not load the image processor"

    eager = AutoImageProcessor.from_pretrained(tiny_folder)
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    pixels = processor(images=image)["pixel_values"]
    assert deferred.is_loaded and type(deferred.load()) is type(eager)
    assert pixels.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(pixels.numpy(), eager(image, return_tensors="np")["pixel_values"])
    assert deferred.crop_size == eager.crop_size
    video = processor(videos=str(media / "clip.mp4"))
    assert video["pixel_values_videos"].shape[2:] == (3, 32, 32)
    processor.save_pretrained(tmp_path / "loaded")
    assert json.loads((tmp_path / "loaded" / "processor_config.json").read_text()) == saved

    deferred.do_normalize = False  # settings go to the real processor
    assert deferred.load().do_normalize is False and deferred.to_dict()["do_normalize"] is False


# ---- a bare environment ---------------------------------------------------------------------------------------------
BARE_SCRIPT = textwrap.dedent(
    """
    import importlib.metadata, importlib.util, json, sys
    import numpy as np
    from transformers import AutoModel, AutoProcessor

    folder, video_file, out_file, media = sys.argv[1:]
    MEDIA = tuple(media.split(","))

    def media_imported():
        return sorted(m for m in sys.modules if m.split(".")[0] in MEDIA)

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    result = {"classes": [type(processor).__module__, type(model).__module__]}
    audio = model.generate(**processor(text="a dog barks", task="text-to-audio"), audio_length_in_s=0.4,
                           do_sample=False)
    result["audio_shape"] = list(audio.audio.shape)
    result["waveform"] = processor.decode_audio(audio)[0].tolist()
    masked = model.generate(**processor(text="a dog barks", task="text-to-audio"), audio_length_in_s=0.4,
                            do_sample=False, decoding="masked", decoding_steps=4)
    result["masked_codes"] = masked.audio_codes.tolist()
    rate = processor.feature_extractor.sampling_rate
    t = np.arange(rate) / rate
    array = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(rate))
    inputs = processor(audio=array.astype(np.float32), sampling_rate=rate, task="audio-to-text")
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    result["caption_ids"] = ids.tolist()
    result["caption"] = processor.batch_decode(ids, skip_special_tokens=True)
    result["image_processor_loaded"] = processor.image_processor.is_loaded
    result["imported_after_generation"] = media_imported()
    result["errors"] = {}
    for name, videos in (("video_file", video_file), ("video_frames", np.zeros((4, 40, 40, 3), np.uint8))):
        try:
            processor(videos=videos)
            result["errors"][name] = None
        except ImportError as error:
            result["errors"][name] = [type(error).__name__, str(error)]
    result["imported_at_end"] = media_imported()
    result["installed"] = [m for m in MEDIA if importlib.util.find_spec(m) is not None]
    result["repository_importable"] = [
        m for m in ("c3llm", "conversion", "modeling_c3llm", "processing_c3llm") if importlib.util.find_spec(m)
    ]
    result["versions"] = {p: importlib.metadata.version(p) for p in ("torch", "transformers", "numpy", "safetensors")}
    with open(out_file, "w") as f:
        json.dump(result, f)
    """
)


@pytest.fixture(scope="module")
def bare_python(request) -> Path:
    """The python of a venv with only torch, transformers, numpy and safetensors (and their dependencies)."""
    from venvs import VenvBuildError, build_venv  # tests/venvs.py

    capture = request.config.pluginmanager.getplugin("capturemanager")

    def show(line: str) -> None:  # past pytest's capture, so a first build's progress is visible as it happens
        with capture.global_and_fixture_disabled():
            print(line, flush=True)

    try:
        # --no-compile: writing torch's bytecode took most of the install (4.0 min against 1.4 min on 2 busy cores);
        # the few modules the test imports are compiled when first imported.
        return build_venv("bare", BARE_REQUIREMENTS, check="import torch, transformers, numpy, safetensors",
                          pip_args=["--no-compile"], log=show)
    except VenvBuildError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.mark.slow
def test_text_and_in_memory_audio_run_in_a_bare_environment(bare_python, tmp_path):
    tiny_folder = tmp_path / "model"  # the tiny model with a masked decoder, which travels as remote code too
    build_tiny(tiny_folder, seed=0, masked_num_layers=1)
    video_file = tmp_path / "clip.mp4"
    video_file.write_bytes(b"\x00" * 64)  # never decoded: PyAV is missing
    work = tmp_path / "work"  # the cwd: the repository's packages are not importable from it
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    (work / "run_bare.py").write_text(BARE_SCRIPT)
    out_file = tmp_path / "result.json"
    arguments = [str(tiny_folder), str(video_file), str(out_file), ",".join(MEDIA_MODULES)]
    run = subprocess.run([str(bare_python), "run_bare.py", *arguments], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-6000:]
    result = json.loads(out_file.read_text())

    assert result["versions"]["torch"].startswith("2.13.0") and result["versions"]["transformers"] == "5.23.0"
    assert result["installed"] == [], f"the bare venv has media packages: {result['installed']}"
    assert result["repository_importable"] == []
    assert all(module.startswith("transformers_modules.") for module in result["classes"]), result["classes"]
    assert result["imported_after_generation"] == [] and result["imported_at_end"] == []
    assert result["image_processor_loaded"] is False

    # The same folder, inputs and greedy decoding in this environment give the same outputs.
    model, processor = AutoModel.from_pretrained(tiny_folder).eval(), AutoProcessor.from_pretrained(tiny_folder)
    audio = model.generate(**processor(text="a dog barks", task="text-to-audio"), audio_length_in_s=0.4,
                           do_sample=False)  # fmt: skip
    assert result["audio_shape"] == [1, 1, round(0.4 * 24000)]
    waveform = np.array(result["waveform"], dtype=np.float32)
    assert waveform.shape == (1, 9600) and np.isfinite(waveform).all() and np.abs(waveform).max() > 0
    np.testing.assert_allclose(waveform, processor.decode_audio(audio)[0], atol=1e-5)
    masked = model.generate(**processor(text="a dog barks", task="text-to-audio"), audio_length_in_s=0.4,
                            do_sample=False, decoding="masked", decoding_steps=4)  # fmt: skip
    assert result["masked_codes"] == masked.audio_codes.tolist()
    rate = processor.feature_extractor.sampling_rate
    t = np.arange(rate) / rate
    array = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(rate))
    inputs = processor(audio=array.astype(np.float32), sampling_rate=rate, task="audio-to-text")
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    assert len(result["caption_ids"][0]) == 6
    assert (torch.tensor(result["caption_ids"]) < model.config.acoustic_token_offset).all(), "text, not audio tokens"
    assert result["caption_ids"] == ids.tolist()
    assert result["caption"] == processor.batch_decode(ids, skip_special_tokens=True)

    # A video needs the media packages: the error names the pip package to install.
    kind, message = result["errors"]["video_file"]
    assert kind == "MissingMediaPackageError" and "`pip install av`" in message and str(video_file) in message
    kind, message = result["errors"]["video_frames"]
    assert kind == "MissingMediaPackageError"
    assert "`pip install pillow`" in message or "`pip install opencv-python-headless`" in message, message
