"""Parity of the converted EnCodec and LAION-CLAP weights with the original packages' modules.

The originals run in the reference environment (torch 2.9.1 + torchaudio + encodec + laion-clap; see README
"Parity tests"): `conversion/reference/make_reference.py` builds each module with random weights, saves its checkpoint
in the package's own format and its outputs on fixed inputs. This process converts the checkpoint with our code and
must reproduce those outputs: identical codes, waveforms and embeddings within 1e-5.

The reference environment is a venv that the first parity test builds from `conversion/reference/requirements.txt`
(about 7.6 GB: a CUDA build of torch 2.9.1) and caches in `~/.cache/c3llm/venvs/reference-<hash>` (tests/venvs.py:
keyed by the requirements, locked against parallel runs, pip's output shown). `C3LLM_REFERENCE_PYTHON` points the
tests at an existing interpreter instead.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conversion.convert_clap import convert_clap_checkpoint
from conversion.convert_encodec import convert_encodec_checkpoint

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "conversion" / "reference" / "requirements.txt"
ATOL = 1e-5


@pytest.fixture(scope="module")
def reference_python(request) -> Path:
    """The reference environment's python: `C3LLM_REFERENCE_PYTHON`, else the cached venv, built on first use."""
    override = os.environ.get("C3LLM_REFERENCE_PYTHON")
    if override:
        if not Path(override).is_file():
            pytest.fail(f"C3LLM_REFERENCE_PYTHON={override} is not a file.")
        return Path(override)
    from venvs import VenvBuildError, build_venv  # tests/venvs.py

    capture = request.config.pluginmanager.getplugin("capturemanager")
    started = False

    def show(line: str) -> None:  # past pytest's capture, so a first build's progress is visible as it happens
        nonlocal started
        with capture.global_and_fixture_disabled():
            print(("" if started else "\n") + line, flush=True)  # the first line leaves pytest's progress line
        started = True

    try:
        return build_venv("reference", REQUIREMENTS, check="import encodec, laion_clap, safetensors", log=show)
    except VenvBuildError as error:
        pytest.fail(f"{error}\n(or point C3LLM_REFERENCE_PYTHON at a python where `encodec` and `laion_clap` import)",
                    pytrace=False)


def make_reference(python: Path, kind: str, out_dir: Path) -> dict[str, torch.Tensor]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [str(python), str(ROOT / "conversion" / "reference" / "make_reference.py"), kind, str(out_dir)],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return load_file(out_dir / "reference.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["encodec_24khz", "encodec_48khz"])
def test_encodec_conversion_matches_the_original(kind, reference_python, tmp_path):
    ref = make_reference(reference_python, kind, tmp_path / "ref")
    model = convert_encodec_checkpoint(tmp_path / "ref" / "checkpoint.th", tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "preprocessor_config.json").is_file()
    bandwidth = float(ref["bandwidth"])
    with torch.no_grad():
        encoded = model.encode(ref["input_values"], bandwidth=bandwidth)
        decoded = model.decode(
            encoded.audio_codes, encoded.audio_scales, last_frame_pad_length=encoded.last_frame_pad_length
        ).audio_values
    segments = [ref[f"audio_codes.{i}"] for i in range(len([k for k in ref if k.startswith("audio_codes.")]))]
    assert torch.cat(segments, -1).unique().numel() > 50, "degenerate reference: random codebooks give varied codes"
    assert encoded.audio_codes.shape[0] == len(segments)
    for ours, theirs in zip(encoded.audio_codes, segments):
        assert torch.equal(ours[..., : theirs.shape[-1]], theirs)
    if "audio_scales" in ref:
        scales = torch.stack([s.view(-1, 1) for s in encoded.audio_scales])
        torch.testing.assert_close(scales, ref["audio_scales"], atol=ATOL, rtol=0)
    assert decoded.shape == ref["audio_values"].shape
    assert ref["audio_values"].abs().max() > 1e-3
    torch.testing.assert_close(decoded, ref["audio_values"], atol=ATOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["clap", "clap_fusion"])
def test_clap_conversion_matches_the_original(kind, reference_python, tmp_path):
    ref = make_reference(reference_python, kind, tmp_path / "ref")
    model = convert_clap_checkpoint(tmp_path / "ref" / "checkpoint.pt", tmp_path / "hf")
    assert model.config.enable_fusion == (kind == "clap_fusion")
    with torch.no_grad():
        out = model(input_features=ref["input_features"], is_longer=ref["is_longer"])
        pooled = model.audio_model(input_features=ref["input_features"], is_longer=ref["is_longer"]).pooler_output
    for name, ours in (("pooler_output", pooled), ("audio_embeds", out.audio_embeds),
                       ("normalized_audio_embeds", torch.nn.functional.normalize(out.audio_embeds, dim=-1))):
        assert ours.shape == ref[name].shape, name
        torch.testing.assert_close(ours, ref[name], atol=ATOL, rtol=0, msg=name)
    assert ref["audio_embeds"].std(0).mean() > 1e-3  # the clips give different embeddings


def test_converters_refuse_other_checkpoints(tmp_path):
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="Not an EnCodec checkpoint"):
        convert_encodec_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="Not a LAION-CLAP HTSAT checkpoint"):
        convert_clap_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not exist"):
        convert_clap_checkpoint(tmp_path / "missing.pt")


def test_converters_read_weights_only(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran while loading",))

    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Payload()}, tmp_path / "unsafe.th")
    with pytest.raises(ValueError, match="weights-only"):
        convert_encodec_checkpoint(tmp_path / "unsafe.th")
    assert sys.modules.get("conversion.convert_encodec") is not None
