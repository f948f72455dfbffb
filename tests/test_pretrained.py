"""Assembly from pretrained parts (tiny random stand-ins saved as Hub-style folders), LoRA merge, push checks and the
model card, through the real CLI and fresh processes."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel, AutoProcessor, ClapModel, GemmaForCausalLM

from conversion.hub_c3llm import push_folder, verify_model_folder
from conversion.model_card import (
    TASK_EXAMPLES,
    check_model_card,
    render_model_card,
    update_model_index,
)
from c3llm.standins import save_standin_parts
from processing_c3llm.processing_c3llm import TASKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "c3llm.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd or ROOT, timeout=600, check=False)


@pytest.fixture(scope="session")
def parts(tmp_path_factory):
    return save_standin_parts(tmp_path_factory.mktemp("standins"))


@pytest.fixture(scope="session")
def assembled(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("assembled") / "c3llm"
    result = run_cli("build", "--llm", parts["llm"], "--codec", parts["codec"], "--audio-encoder",
                     parts["audio_encoder"], "--vision-encoder", parts["vision_encoder"], "--max-shard-size", "300KB",
                     "--nar-config", '{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, '
                     '"intermediate_size": 64}',
                     "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "assembled C3LLM" in result.stdout
    return out


def test_assembled_folder_keeps_pretrained_weights_and_extends_the_vocabulary(assembled, parts):
    index = json.loads((assembled / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded at 300KB
    model = AutoModel.from_pretrained(assembled).eval()
    processor = AutoProcessor.from_pretrained(assembled)
    llm = GemmaForCausalLM.from_pretrained(parts["llm"])
    offset = model.config.acoustic_token_offset
    assert offset == llm.config.vocab_size and len(processor.tokenizer) == model.config.text_config.vocab_size
    assert processor.tokenizer.convert_tokens_to_ids("<|a_0|>") == offset
    embed = model.get_input_embeddings().weight
    assert torch.equal(embed[:offset], llm.get_input_embeddings().weight)
    new_rows = embed[offset:]
    assert (new_rows - embed[:offset].mean(0)).abs().max() < 1.0 and new_rows.std(0).mean() > 0
    for name, value in llm.state_dict().items():
        if "embed_tokens" not in name and "lm_head" not in name:
            assert torch.equal(model.language_model.state_dict()[name], value), name
    clap = ClapModel.from_pretrained(parts["audio_encoder"])
    assert torch.equal(model.audio_encoder.audio_projection.linear1.weight, clap.audio_projection.linear1.weight)
    assert 0.01 < model.audio_projector.linear_1.weight.std() < 0.03  # initialised, not loaded and not empty
    assert json.loads((assembled / "config.json").read_text())["auto_map"]["AutoModel"]


def test_load_in_bfloat16_with_device_map_auto(assembled):
    model = AutoModel.from_pretrained(assembled, dtype=torch.bfloat16, device_map="auto").eval()
    reference = AutoModel.from_pretrained(assembled).eval()
    assert model.dtype == torch.bfloat16 and {p.device.type for p in model.parameters()} == {"cpu"}
    state = model.state_dict()
    for name, value in reference.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(state[name].float(), value.to(torch.bfloat16).float()), name
    processor = AutoProcessor.from_pretrained(assembled)
    torch.manual_seed(0)
    out = model.generate(**processor(text="a dog barks"), audio_length_in_s=0.2, do_sample=True)
    assert out.audio_codes.shape[-1] == 15 and torch.isfinite(out.audio.float()).all()


CARD_RUNNER = textwrap.dedent(
    """
    import sys
    for name in ("modeling_c3llm", "processing_c3llm", "conversion"):
        sys.modules[name] = None  # the folder's own code must be enough
    code = open(sys.argv[1]).read()
    scope = {}
    exec(compile(code, "model_card_examples", "exec"), scope)
    assert type(scope["model"]).__module__.startswith("transformers_modules"), type(scope["model"]).__module__
    assert scope["result"]["audio"].size > 0 and scope["result"]["sampling_rate"] == 24000  # the pipeline example
    print("ran", code.count("processor("), "examples;", "audio", tuple(scope["out"].audio.shape))
    """
)


@pytest.mark.slow
def test_every_model_card_example_runs_in_a_fresh_process_on_the_assembled_folder(assembled, media, tmp_path):
    """The card in the folder is what `push` uploads; its code, run with trust_remote_code, covers every task."""
    card = ModelCard.load(assembled / "README.md")
    blocks = re.findall(r"```python\n(.*?)```", card.text, flags=re.DOTALL)
    assert len(blocks) == 1 + len(TASK_EXAMPLES)
    script = "\n".join(blocks).replace('"path/or/repo"', repr(str(assembled)))
    script = script.replace("audio_length_in_s=2.0", "audio_length_in_s=0.3").replace("max_new_tokens=20", "max_new_tokens=4")
    (tmp_path / "examples.py").write_text(script)
    shutil.copy(media / "stereo_44k.wav", tmp_path / "clip.wav")
    shutil.copy(media / "clip.mp4", tmp_path / "clip.mp4")
    shutil.copy(media / "image.png", tmp_path / "photo.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", CARD_RUNNER, str(tmp_path / "examples.py")], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ran {len(TASKS)} examples" in result.stdout


def test_push_verifies_the_folder_and_lists_what_it_uploads(assembled, tmp_path, monkeypatch):
    files = verify_model_folder(assembled)
    for name in ("config.json", "model.safetensors.index.json", "README.md", "processor_config.json",
                 "tokenizer.json", "modeling_c3llm.py", "configuration_c3llm.py", "processing_c3llm.py"):
        assert name in files, name
    assert sum(name.endswith(".safetensors") for name in files) > 1
    result = run_cli("push", assembled, "me/c3llm", "--dry-run")
    assert result.returncode == 0 and "would be uploaded to me/c3llm" in result.stdout, result.stderr
    assert result.stdout.splitlines()[:-1] == files

    broken = tmp_path / "broken"
    shutil.copytree(assembled, broken)
    for remove, message in (("README.md", "README.md"), ("modeling_c3llm.py", "code files that are missing")):
        shutil.copy(assembled / remove, tmp_path / remove)
        (broken / remove).unlink()
        with pytest.raises(ValueError, match=message):
            verify_model_folder(broken)
        shutil.copy(tmp_path / remove, broken / remove)
    shard = next(name for name in files if name.endswith(".safetensors"))
    (broken / shard).unlink()
    with pytest.raises(ValueError, match="shards that are missing"):
        verify_model_folder(broken)

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no_login"))
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no_login" / "token"))
    with pytest.raises(ValueError, match="No Hub token"):
        push_folder(assembled, "me/c3llm")
    with pytest.raises(ValueError, match="user-or-org/name"):
        push_folder(assembled, "no-namespace", token="hf_x")


def test_merge_folds_the_adapter_into_the_base(tiny_folder, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = AutoModel.from_pretrained(tiny_folder).eval()
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    result = run_cli("merge", "--base", tiny_folder, "--adapter", tmp_path / "adapter", "--out", tmp_path / "merged")
    assert result.returncode == 0, result.stderr[-3000:]
    merged = AutoModel.from_pretrained(tmp_path / "merged").eval()
    adapted = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_folder), tmp_path / "adapter").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "merged")
    inputs = processor(text=["a dog barks", "rain on a roof"])
    with torch.no_grad():
        logits, expected = merged(**inputs).logits, adapted(**inputs).logits
        plain = AutoModel.from_pretrained(tiny_folder).eval()(**inputs).logits
    assert (expected - plain).abs().max() > 1e-3  # the adapter changes the outputs
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    greedy = [m.generate(**inputs, audio_length_in_s=0.2, do_sample=False).audio_codes for m in (merged, adapted)]
    assert torch.equal(greedy[0], greedy[1])
    verify_model_folder(tmp_path / "merged")
    bad = run_cli("merge", "--base", tiny_folder, "--adapter", tmp_path, "--out", tmp_path / "m2")
    assert bad.returncode == 2 and "not a PEFT adapter folder" in bad.stderr


def test_model_card_is_generated_valid_and_covers_every_task(tmp_path):
    card = check_model_card(os.path.join(ROOT, "model_card.md"))
    assert card.content.strip() == str(render_model_card()).strip()  # the committed card is the rendered template
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-to-audio"
    assert data["license"] == "gemma" and data["base_model"] == "google/gemma-2b" and data["datasets"]
    assert "arXiv:2405.16136" in card.text and "## Limitations and biases" in card.text
    for task in TASKS:
        assert f'task="{task}"' in card.text
    with pytest.raises(ValueError, match="no code example"):
        check_model_card(ModelCard(str(card).replace('task="image-to-audio"', 'task="x"')))

    path = tmp_path / "README.md"
    card.save(path)
    result = {"task_type": "text-to-audio", "task_name": "Text-to-audio", "dataset_type": "confit/audiocaps",
              "dataset_name": "AudioCaps", "dataset_split": "test", "metric_type": "fad", "metric_name": "FAD",
              "metric_value": 4.2}
    update_model_index(path, [result])
    update_model_index(path, [{**result, "metric_value": 3.9}])  # same task/dataset/metric: replaced, not added
    loaded = ModelCard.load(path)
    assert [r.metric_value for r in loaded.data.eval_results] == [3.9]
    assert "model-index" in path.read_text()


def test_full_size_standins_have_the_hub_checkpoints_shapes_and_a_256k_tokenizer():
    """The full-size stand-ins' configurations are the real checkpoints' (counted on the meta device: Gemma-2B has
    2,506,172,416 parameters), and the stand-in tokenizer has Gemma's 256,000 tokens and splits words into pieces."""
    from transformers import ClapAudioModel, CLIPVisionModel, EncodecModel

    from c3llm.standins import full_size_configs
    from conversion.build_c3llm import tiny_tokenizer

    configs = full_size_configs()
    with torch.device("meta"):
        gemma = GemmaForCausalLM(configs["llm"])
        clip = CLIPVisionModel(configs["vision_encoder"].vision_config)
        clap = ClapAudioModel(configs["audio_encoder"].audio_config)
        encodec = EncodecModel(configs["codec"])
    assert sum(p.numel() for p in gemma.parameters()) == 2_506_172_416
    text = configs["llm"]
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads,
            text.head_dim, text.vocab_size) == (18, 2048, 8, 1, 256, 256_000)  # fmt: skip
    vision = configs["vision_encoder"].vision_config
    assert (vision.patch_size, vision.image_size, vision.hidden_size, vision.num_hidden_layers) == (32, 224, 768, 12)
    assert 87e6 < sum(p.numel() for p in clip.parameters()) < 89e6  # ViT-B/32's vision tower: 87.8 M
    audio = configs["audio_encoder"].audio_config
    assert (list(audio.depths), audio.enable_fusion, audio.spec_size, audio.num_mel_bins) == ([2, 2, 6, 2], False, 256, 64)
    assert 25e6 < sum(p.numel() for p in clap.parameters()) < 35e6  # HTSAT-tiny
    codec = configs["codec"]
    assert (codec.sampling_rate, codec.frame_rate, codec.codebook_size, max(codec.target_bandwidths)) == (
        24000, 75, 1024, 24.0)
    assert 14e6 < sum(p.numel() for p in encodec.parameters()) < 16e6  # encodec_24khz: 14.9 M

    tokenizer = tiny_tokenizer(vocab_size=256_000)
    assert len(tokenizer) == 256_000
    ids = tokenizer("a dog barks loudly").input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[:3] == ["a", "▁dog", "▁bark"] and max(ids) < 256_000
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a dog barks loudly"


def test_standins_are_built_once_into_the_cache_and_a_killed_build_is_never_used(tmp_path):
    """`c3llm standins` builds the parts into a folder named after their configurations, then reuses it; a leftover
    of a killed build is ignored; another seed is another folder."""
    from c3llm.standins import standin_cache

    first = run_cli("standins", "--size", "tiny", "--cache", tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    root = next(p for p in tmp_path.iterdir() if p.name.startswith("tiny-"))
    assert f"c3llm build --llm {root / 'llm'} --codec {root / 'codec'}" in first.stdout
    assert re.search(rf"tiny stand-ins: \d+\.\d\d GB in {re.escape(str(root))}", first.stdout)
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    (tmp_path / f".{root.name}.killed").mkdir()  # what a build killed midway leaves
    parts = standin_cache("tiny", tmp_path)
    assert parts == {name: root / name for name in ("llm", "codec", "audio_encoder", "vision_encoder")}
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamp  # reused, not rebuilt
    other = standin_cache("tiny", tmp_path, seed=1)["llm"]
    assert other.parent != root
    weights = {folder: GemmaForCausalLM.from_pretrained(folder).model.embed_tokens.weight
               for folder in (root / "llm", other)}  # fmt: skip
    assert not torch.equal(*weights.values())
