"""Save/load round trips, the fresh-process remote-code load and the text-to-audio pipeline, as real subprocesses."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from transformers import AutoConfig, AutoModel, AutoProcessor

from modeling_c3llm import C3LLMConfig


# Run in a fresh interpreter where our packages cannot be imported: the folder's own code must be enough.
FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    for name in ("modeling_c3llm", "processing_c3llm", "conversion"):
        sys.modules[name] = None  # importing them now raises ImportError
    import json, torch
    from transformers import AutoModel, AutoProcessor, pipeline
    folder, mode = sys.argv[1], sys.argv[2]
    if mode == "generate":
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = processor(text=["a dog barks", "rain"], task="text-to-audio")
        torch.manual_seed(7)
        out = model.generate(**inputs, audio_length_in_s=0.2, do_sample=True)
        print(json.dumps({"codes": out.audio_codes.tolist(), "audio_sum": float(out.audio.abs().sum())}))
    else:
        tta = pipeline("text-to-audio", model=folder, trust_remote_code=True)
        torch.manual_seed(0)
        result = tta("a dog barks", generate_kwargs={"audio_length_in_s": 0.2, "do_sample": True})
        print(json.dumps({"shape": list(result["audio"].shape), "sampling_rate": result["sampling_rate"],
                          "finite": bool(__import__("numpy").isfinite(result["audio"]).all())}))
    """
)


def run_fresh(folder, mode, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder), mode],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_config_json_round_trip_is_exact(tiny_folder, tmp_path):
    config = AutoConfig.from_pretrained(tiny_folder)
    assert isinstance(config, C3LLMConfig)
    config.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert again.to_diff_dict() == config.to_diff_dict()
    assert (tmp_path / "config.json").read_text() == (tiny_folder / "config.json").read_text()
    assert again.acoustic_token_offset == config.acoustic_token_offset
    assert again.text_config.vocab_size == config.text_config.vocab_size  # not extended twice


def test_saved_folder_has_safetensors_code_and_auto_map(tiny_folder):
    names = set(os.listdir(tiny_folder))
    assert {"model.safetensors", "config.json", "processor_config.json", "tokenizer.json"} <= names
    assert {"modeling_c3llm.py", "configuration_c3llm.py", "generation_c3llm.py", "processing_c3llm.py",
            "media_c3llm.py"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    auto_map = json.loads((tiny_folder / "config.json").read_text())["auto_map"]
    for auto_class in ("AutoConfig", "AutoModel", "AutoModelForTextToWaveform", "AutoModelForMultimodalLM"):
        assert auto_class in auto_map
    assert json.loads((tiny_folder / "processor_config.json").read_text())["auto_map"]["AutoProcessor"]


def test_model_and_processor_round_trip(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model2 = AutoModel.from_pretrained(tmp_path).eval()
    processor2 = AutoProcessor.from_pretrained(tmp_path)
    state, state2 = model.state_dict(), model2.state_dict()
    assert state.keys() == state2.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    inputs, inputs2 = processor(text="a dog barks"), processor2(text="a dog barks")
    assert inputs.keys() == inputs2.keys() and all(torch.equal(inputs[k], inputs2[k]) for k in inputs)
    processor2.save_pretrained(tmp_path / "again")
    for name in ("processor_config.json", "tokenizer.json"):
        assert (tmp_path / "again" / name).read_text() == (tmp_path / name).read_text()
    outs = []
    for m, i in ((model, inputs), (model2, inputs2)):
        torch.manual_seed(1)
        outs.append(m.generate(**i, audio_length_in_s=0.2, do_sample=True))
    assert torch.equal(outs[0].audio_codes, outs[1].audio_codes)
    assert torch.equal(outs[0].audio, outs[1].audio)


def test_fresh_process_loads_with_remote_code_and_generates_the_same(tiny, tiny_folder, tmp_path):
    model, processor = tiny
    remote = run_fresh(tiny_folder, "generate", tmp_path)
    torch.manual_seed(7)
    local = model.generate(**processor(text=["a dog barks", "rain"]), audio_length_in_s=0.2, do_sample=True)
    assert remote["codes"] == local.audio_codes.tolist()
    assert abs(remote["audio_sum"] - float(local.audio.abs().sum())) < 1e-3


def test_text_to_audio_pipeline_in_a_fresh_process(tiny_folder, tmp_path):
    result = run_fresh(tiny_folder, "pipeline", tmp_path)
    assert result["sampling_rate"] == 24000
    assert result["shape"] == [4800] and result["finite"]
