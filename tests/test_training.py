"""Training recipes: what each stage trains, overfitting, adapter/merged round trips, resume, DDP and checkpointing."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Dataset
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, TrainerCallback, set_seed

from c3llm.data.collator import C3LLMDataCollator
from c3llm.training import (
    PROJECTORS,
    C3LLMTrainingArguments,
    DataArguments,
    ModelArguments,
    main,
    parse_args,
    prepare_model,
    run_training,
    standardize_projectors,
)
from conversion.build_c3llm import save_folder
from conversion.hub_c3llm import verify_model_folder
from modeling_c3llm import C3LLMForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "c3llm" / "recipes"
TRAINABLE_MARKERS = ("lora_", "trainable_tokens_delta", "modules_to_save")


# ---- helpers ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_media")
    t = np.arange(16000) / 16000
    sf.write(root / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 16000)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[4:20, 6:24] = (0, 200, 255)
    Image.fromarray(image).save(root / "square.png")
    return root


def mixed_dataset(files: Path, seed: int = 0) -> Dataset:
    """One example per kind of input: text, precomputed video features, a real WAV (audio-to-text) and an image."""
    rng = np.random.default_rng(seed)
    codes = lambda: rng.integers(0, 1024, (2, 6)).tolist()  # noqa: E731
    return Dataset.from_dict(
        {
            "id": ["t", "v", "a", "i"],
            "task": ["text-to-audio", "video-to-audio", "audio-to-text", "image-to-audio"],
            "caption": ["a dog barks", "a drum", "rain falls", "a bell"],
            "audio_codes": [codes(), codes(), None, codes()],
            "video_features": [None, rng.normal(size=(5, 64)).astype(np.float32).tolist(), None, None],
            "audio_path": [None, None, str(files / "tone.wav"), None],
            "image_path": [None, None, None, str(files / "square.png")],
        }
    )


def text_video_dataset(n: int = 4, seed: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset.from_dict(
        {
            "task": ["text-to-audio", "video-to-audio"] * (n // 2),
            "caption": ["a dog barks", "a drum"] * (n // 2),
            "audio_codes": [rng.integers(0, 1024, (2, 5)).tolist() for _ in range(n)],
            "video_features": [
                None if i % 2 == 0 else rng.normal(size=(4, 64)).astype(np.float32).tolist() for i in range(n)
            ],
        }
    )


def train_args(output_dir, **overrides) -> C3LLMTrainingArguments:
    defaults = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
    )
    return C3LLMTrainingArguments(**{**defaults, **overrides})


class Snapshot(TrainerCallback):
    """Parameters (and which train) at the start and end of training; optionally the end model's logits on `batch`."""

    def __init__(self, batch=None):
        self.batch, self.before, self.after, self.trainable, self.logits = batch, {}, {}, set(), None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}
        if self.batch is not None:
            with torch.no_grad():
                self.logits = model.eval()(**self.batch).logits

    def changed(self) -> set[str]:
        return {n for n in self.before if not torch.equal(self.before[n], self.after[n])}


def log_history(output_dir) -> list[dict]:
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- stage 1 ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage1(tiny_folder, data_files, tmp_path_factory):
    """Overfits the tiny model on one fixed batch of four tasks for 30 stage-1 steps."""
    out = tmp_path_factory.mktemp("stage1")
    dataset = mixed_dataset(data_files)
    processor = AutoProcessor.from_pretrained(tiny_folder)
    batch = C3LLMDataCollator(processor)(list(dataset))
    snapshot = Snapshot(batch)
    model_args = ModelArguments(model_name_or_path=str(tiny_folder), stage=1, lora_r=4, lora_alpha=8)
    args = train_args(out, max_steps=30, train_sampling_strategy="sequential", eval_strategy="steps", eval_steps=15)
    metrics = run_training(model_args, DataArguments(), args, train_dataset=dataset, eval_dataset=dataset,
                           callbacks=[snapshot])
    return {"out": out, "metrics": metrics, "snapshot": snapshot, "batch": batch, "processor": processor,
            "dataset": dataset}


def test_stage1_trains_only_lora_token_rows_and_projectors(stage1, tiny_folder):
    snap = stage1["snapshot"]
    expected = {n for n in snap.before if any(marker in n for marker in TRAINABLE_MARKERS)}
    assert snap.trainable == expected
    assert snap.changed() == expected  # every LoRA matrix, the new rows and all three projectors moved; nothing else
    assert any("lora_A" in n for n in expected) and any("lora_B" in n for n in expected)
    projectors = {n.split(".")[2] for n in expected if "modules_to_save" in n}
    assert projectors == {"audio_projector", "video_projector", "image_projector"}
    # LoRA only inside the language model, on attention and MLP projections.
    lora = {n for n in expected if "lora_" in n}
    assert all(n.startswith("base_model.model.language_model.") for n in lora)
    assert {n.split(".")[-4] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"}

    base = C3LLMForConditionalGeneration.from_pretrained(tiny_folder)
    merged = C3LLMForConditionalGeneration.from_pretrained(stage1["out"] / "merged")
    offset = base.config.acoustic_token_offset
    base_sd, merged_sd = base.state_dict(), merged.state_dict()
    embed = "language_model.model.embed_tokens.weight"
    assert torch.equal(merged_sd[embed][:offset], base_sd[embed][:offset])  # text rows untouched
    assert (merged_sd[embed][offset:] - base_sd[embed][offset:]).abs().amax(-1).gt(0).float().mean() > 0.9
    assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight  # still tied
    for name, value in base_sd.items():
        if name.startswith(("codec.", "audio_encoder.", "vision_encoder.", "nar_head.")) or "norm" in name:
            assert torch.equal(merged_sd[name], value), name
    assert not torch.equal(merged_sd["language_model.model.layers.0.self_attn.q_proj.weight"],
                           base_sd["language_model.model.layers.0.self_attn.q_proj.weight"])
    assert merged.config.nar_loss_weight == base.config.nar_loss_weight == 1.0  # stage 1 trains with 0, saves 1


def test_training_standardizes_projector_inputs_once(stage1, tiny_folder):
    base = C3LLMForConditionalGeneration.from_pretrained(tiny_folder)
    merged = C3LLMForConditionalGeneration.from_pretrained(stage1["out"] / "merged")
    expected = C3LLMForConditionalGeneration.from_pretrained(tiny_folder)
    counts = standardize_projectors(expected, stage1["processor"], stage1["dataset"], 256, seed=0)
    assert all(counts[name] > 0 for name in ("audio", "video", "image"))
    for name in PROJECTORS:
        assert not getattr(base, name).is_standardized and getattr(merged, name).is_standardized
        for buffer in ("feature_bias", "feature_scale"):
            assert torch.equal(getattr(getattr(merged, name), buffer), getattr(getattr(expected, name), buffer))
    # A model trained before keeps its standardization when it trains again.
    scale = merged.video_projector.feature_scale.clone()
    standardize_projectors(merged, stage1["processor"], text_video_dataset(), 8)  # other video features
    assert torch.equal(merged.video_projector.feature_scale, scale)
    with pytest.raises(ValueError, match="standardize_examples must be positive"):
        standardize_projectors(base, stage1["processor"], stage1["dataset"], 0)


def test_stage1_with_an_untied_backbone_trains_the_lm_head_rows_too():
    from conversion.build_c3llm import tiny_config, tiny_tokenizer

    config = tiny_config(len(tiny_tokenizer()))
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = prepare_model(C3LLMForConditionalGeneration(config), ModelArguments(stage=1, lora_r=4, lora_dropout=0.0))
    deltas = [n for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens_delta" in n]
    assert [n.split(".")[-4] for n in deltas] == ["embed_tokens", "lm_head"]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "trainable_tokens_delta" in name or "lora_B" in name:
                param.add_(0.1 * torch.randn_like(param))
    ids = torch.tensor([[2, 5, 9, config.acoustic_token_offset + 3, config.audio_start_token_id]])
    with torch.no_grad():
        adapted = model.eval()(input_ids=ids).logits
        merged = model.merge_and_unload()(input_ids=ids).logits
    assert torch.allclose(adapted, merged, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
def test_efficient_token_rows_match_peft_and_skip_the_frozen_rows_gradient(tied, contiguous):
    """Stage 1's token rows give PEFT's logits and gradients, and their backward pass leaves out exactly the
    `tokens x hidden x frozen rows` matmul of the output layer's weight gradient (counted, not timed)."""
    import copy

    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from torch.utils.flop_counter import FlopCounterMode

    from c3llm.token_rows import EfficientTrainableTokens
    from conversion.build_c3llm import tiny_config, tiny_tokenizer

    config = tiny_config(len(tiny_tokenizer()))
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = tied
    torch.manual_seed(0)
    model = prepare_model(C3LLMForConditionalGeneration(config), ModelArguments(stage=1, lora_r=4, lora_dropout=0.0))
    layers = [m for m in model.modules() if isinstance(m, TrainableTokensLayer)]
    assert layers and all(type(m) is EfficientTrainableTokens for m in layers)
    if not contiguous:  # the general path: train every second new row and two text rows
        rows = list(range(config.acoustic_token_offset, config.text_config.vocab_size, 2)) + [5, 9]
        for layer in layers:
            if not layer.tied_adapter:
                layer.token_indices["default"] = rows
                layer.trainable_tokens_delta["default"] = torch.nn.Parameter(layer.weight[rows].detach().clone())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "trainable_tokens_delta" in name or "lora_B" in name:
                param.add_(0.1 * torch.randn_like(param))
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if type(module) is EfficientTrainableTokens:
            module.__class__ = TrainableTokensLayer  # PEFT's own forward
    offset = config.acoustic_token_offset
    ids = torch.tensor([[2, 5, 9, offset + 3, config.audio_start_token_id, offset + 7, offset, 4]])
    labels = ids.clone()
    labels[0, :4] = -100

    def step(peft_model):
        peft_model.zero_grad()
        with FlopCounterMode(display=False) as counter:
            out = peft_model(input_ids=ids, labels=labels)
            out.loss.backward()
        grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}
        return out.logits.detach(), grads, counter.get_total_flops()

    logits, grads, flops = step(model.train())
    expected_logits, expected_grads, peft_flops = step(reference.train())
    assert torch.allclose(logits, expected_logits, atol=1e-6, rtol=0)
    assert grads.keys() == expected_grads.keys() and any("trainable_tokens_delta" in n for n in grads)
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-6, rtol=1e-5), name
    vocab, hidden = model.get_output_embeddings().weight.shape
    frozen_rows = vocab - len(layers[0].token_indices["default"])
    if contiguous:
        assert peft_flops - flops == 2 * ids.numel() * hidden * frozen_rows
    else:  # every logit is computed, then the trained rows' logits replace theirs: the rows' three matmuls instead of
        # PEFT's full weight gradient
        trained = len(layers[0].token_indices["default"])
        assert peft_flops - flops == 2 * ids.numel() * hidden * (vocab - 3 * trained)


def test_stage1_overfits_and_logs_losses_separately(stage1):
    history = log_history(stage1["out"])
    losses = [r["loss"] for r in history if "loss" in r]
    assert len(losses) == 30
    assert losses[0] > 6.0  # about ln(1109): an untrained vocabulary
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert losses[-1] < 4.0
    train = [r for r in history if "loss" in r]
    assert all(r["lm_loss"] == pytest.approx(r["loss"], abs=1e-4) for r in train)  # NAR weight 0: Eq. 1 only
    nar = [r["nar_loss"] for r in train]
    # The frozen NAR head's loss does not train; it drifts by ~1e-5 only because its condition holds the outputs of the
    # trained projectors. (A set of values rounded to 4 decimals failed when the drift crossed a rounding boundary.)
    assert max(nar) - min(nar) < 1e-3
    evals = [r for r in history if "eval_loss" in r]
    assert len(evals) >= 2 and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert {"eval_lm_loss", "eval_nar_loss"} <= set(evals[-1])
    metrics = stage1["metrics"]
    assert metrics["eval_lm_loss"] == pytest.approx(metrics["eval_loss"], abs=1e-4)
    assert Path(metrics["adapter_path"], "adapter_config.json").is_file()
    assert "model.safetensors" in verify_model_folder(metrics["merged_path"])
    assert not list(Path(metrics["merged_path"]).glob("*.bin"))


def test_adapter_round_trip_and_merged_model_match(stage1, tiny_folder):
    from peft import PeftModel

    batch, processor = stage1["batch"], stage1["processor"]
    adapter = PeftModel.from_pretrained(C3LLMForConditionalGeneration.from_pretrained(tiny_folder),
                                        stage1["out"] / "adapter").eval()
    merged = C3LLMForConditionalGeneration.from_pretrained(stage1["out"] / "merged").eval()
    with torch.no_grad():
        adapter_logits, merged_logits = adapter(**batch).logits, merged(**batch).logits
    assert torch.equal(adapter_logits, stage1["snapshot"].logits)  # saved and reloaded adapter = trained model
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-5, rtol=0)

    prompts = processor(text=["a dog barks", "a bell"], task="text-to-audio")
    audio = [m.generate(**prompts, audio_length_in_s=0.2, do_sample=False) for m in (adapter, merged)]
    assert torch.equal(audio[0].audio_codes, audio[1].audio_codes)
    caption = processor(audio=str(stage1["dataset"][2]["audio_path"]), task="audio-to-text")
    text = [m.generate(**caption, max_new_tokens=6, do_sample=False) for m in (adapter, merged)]
    assert torch.equal(text[0], text[1])


FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    for name in ("modeling_c3llm", "processing_c3llm", "conversion"):
        sys.modules[name] = None  # the folder's own code must be enough
    import json, torch
    from transformers import AutoModel
    folder, inputs = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    data = torch.load(inputs)
    with torch.no_grad():
        logits = model(**data["batch"]).logits
    codes = model.generate(**data["prompts"], audio_length_in_s=0.2, do_sample=False).audio_codes
    print(json.dumps({"logits_diff": float((logits - data["logits"]).abs().max()),
                      "codes_equal": bool(torch.equal(codes, data["codes"])),
                      "nar_loss_weight": model.config.nar_loss_weight}))
    """
)


@pytest.mark.slow
def test_merged_folder_loads_in_fresh_process_without_the_package(stage1, tmp_path):
    merged = C3LLMForConditionalGeneration.from_pretrained(stage1["out"] / "merged").eval()
    batch = dict(stage1["batch"])
    prompts = dict(stage1["processor"](text=["a dog barks"], task="text-to-audio"))
    with torch.no_grad():
        logits = merged(**batch).logits
    codes = merged.generate(**prompts, audio_length_in_s=0.2, do_sample=False).audio_codes
    torch.save({"batch": batch, "prompts": prompts, "logits": logits, "codes": codes}, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(stage1["out"] / "merged"), str(tmp_path / "inputs.pt")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"logits_diff": 0.0, "codes_equal": True, "nar_loss_weight": 1.0}


# ---- stage 2 ------------------------------------------------------------------------------------------------------
def test_stage2_trains_only_the_nar_head(stage1, tiny_folder, data_files, tmp_path):
    # From the tiny model plus the stage-1 adapter (merged on load), which must equal the stage-1 merged folder.
    snapshot = Snapshot()
    model_args = ModelArguments(model_name_or_path=str(tiny_folder), stage=2,
                                adapter_path=str(stage1["out"] / "adapter"))
    metrics = run_training(model_args, DataArguments(), train_args(tmp_path, max_steps=3, learning_rate=1e-3),
                           train_dataset=mixed_dataset(data_files), callbacks=[snapshot])
    nar = {n for n in snapshot.before if n.startswith("nar_head.")}
    assert snapshot.trainable == nar
    assert snapshot.changed() == nar
    stage1_merged = C3LLMForConditionalGeneration.from_pretrained(stage1["out"] / "merged").state_dict()
    assert all(torch.equal(snapshot.before[n], stage1_merged[n]) for n in snapshot.before)
    history = [r for r in log_history(tmp_path) if "loss" in r]
    assert all(r["loss"] == pytest.approx(r["nar_loss"], abs=1e-4) for r in history)  # the objective is Eq. 2
    assert metrics["adapter_path"] is None
    saved = C3LLMForConditionalGeneration.from_pretrained(metrics["merged_path"]).state_dict()
    assert all(torch.equal(saved[n], snapshot.after[n]) for n in snapshot.after)
    # A Hub-ready folder: model card, code, safetensors and no pickled training arguments.
    assert "model.safetensors" in verify_model_folder(metrics["merged_path"])
    assert not list(Path(metrics["merged_path"]).glob("*.bin"))


# ---- stage 3: the masked decoder ----------------------------------------------------------------------------------
def test_stage3_adds_and_trains_only_the_masked_decoder(tiny_folder, data_files, tmp_path):
    snapshot = Snapshot()
    model_args = ModelArguments(model_name_or_path=str(tiny_folder), stage=3, masked_decoder_layers=1)
    metrics = run_training(model_args, DataArguments(), train_args(tmp_path, max_steps=4, learning_rate=3e-3),
                           train_dataset=mixed_dataset(data_files), callbacks=[snapshot])  # fmt: skip
    decoder = {n for n in snapshot.before if n.startswith("masked_decoder.")}
    assert decoder and snapshot.trainable == decoder
    assert snapshot.changed() == decoder
    history = [r for r in log_history(tmp_path) if "loss" in r]
    assert history and all(r["loss"] == pytest.approx(r["masked_loss"], abs=1e-4) for r in history)
    saved = C3LLMForConditionalGeneration.from_pretrained(metrics["merged_path"]).eval()
    assert saved.config.masked_decoder_config.num_hidden_layers == 1
    assert all(torch.equal(saved.state_dict()[n], snapshot.after[n]) for n in snapshot.after)
    processor = AutoProcessor.from_pretrained(metrics["merged_path"])
    out = saved.generate(**processor(text=["a bell"], task="text-to-audio"), decoding="masked", audio_length_in_s=0.1)
    assert out.audio_codes.min() >= 0


def test_stage1_trains_the_masked_decoder_with_lora_and_stage2_keeps_its_loss_weight(data_files, tmp_path):
    from conversion.build_c3llm import build_tiny

    build_tiny(tmp_path / "base", seed=0, masked_num_layers=1)
    snapshot = Snapshot()
    model_args = ModelArguments(model_name_or_path=str(tmp_path / "base"), stage=1, lora_r=4, lora_alpha=8)
    metrics = run_training(model_args, DataArguments(), train_args(tmp_path / "s1", max_steps=3),
                           train_dataset=mixed_dataset(data_files), callbacks=[snapshot])  # fmt: skip
    decoder = {n for n in snapshot.changed() if "masked_decoder" in n}
    assert decoder and all("modules_to_save" in n for n in decoder)
    assert all(r["masked_loss"] > 0 for r in log_history(tmp_path / "s1") if "loss" in r)
    merged = C3LLMForConditionalGeneration.from_pretrained(metrics["merged_path"])
    trained = {n.replace("base_model.model.", "").replace("modules_to_save.default.", ""): snapshot.after[n]
               for n in decoder}  # fmt: skip
    assert all(torch.equal(merged.state_dict()[n], value) for n, value in trained.items())

    stage2 = run_training(ModelArguments(model_name_or_path=metrics["merged_path"], stage=2), DataArguments(),
                          train_args(tmp_path / "s2", max_steps=1), train_dataset=mixed_dataset(data_files))  # fmt: skip
    assert all("masked_loss" not in r for r in log_history(tmp_path / "s2"))  # stage 2 skips the masked loss ...
    assert C3LLMForConditionalGeneration.from_pretrained(stage2["merged_path"]).config.masked_loss_weight == 1.0


def test_stage3_resumes_like_an_uninterrupted_run(tiny_folder, tmp_path):
    dataset = text_video_dataset(4)
    model_args = ModelArguments(model_name_or_path=str(tiny_folder), stage=3, masked_decoder_layers=1)
    common = dict(max_steps=4, per_device_train_batch_size=2, save_strategy="steps", save_steps=2, learning_rate=5e-3)
    run_training(model_args, DataArguments(), train_args(tmp_path / "full", **common), train_dataset=dataset)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    run_training(model_args, DataArguments(),
                 train_args(tmp_path / "resumed", resume_from_checkpoint=str(checkpoint), **common),
                 train_dataset=dataset)  # fmt: skip
    full = load_file(tmp_path / "full" / "merged" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "merged" / "model.safetensors")
    names = [n for n in full if n.startswith("masked_decoder.")]
    assert names and full.keys() == resumed.keys()
    for name in names:
        assert torch.allclose(full[name], resumed[name], atol=1e-6, rtol=0), name
    losses = lambda run: [r["masked_loss"] for r in log_history(tmp_path / run) if "loss" in r]  # noqa: E731
    assert len(losses("full")) == 4 and losses("resumed") == losses("full")


# ---- resume -------------------------------------------------------------------------------------------------------
def test_resume_from_checkpoint_matches_uninterrupted_run(tiny_folder, tmp_path):
    dataset = text_video_dataset(4)
    model_args = ModelArguments(model_name_or_path=str(tiny_folder), stage=1, lora_r=4, lora_alpha=8)
    common = dict(max_steps=6, per_device_train_batch_size=2, save_strategy="steps", save_steps=3, learning_rate=5e-3)
    run_training(model_args, DataArguments(), train_args(tmp_path / "full", **common), train_dataset=dataset)
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    run_training(model_args, DataArguments(),
                 train_args(tmp_path / "resumed", resume_from_checkpoint=str(checkpoint), **common),
                 train_dataset=dataset)
    full = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.allclose(full[name], resumed[name], atol=1e-6, rtol=0), name
    losses = lambda run: [r["loss"] for r in log_history(tmp_path / run) if "loss" in r]  # noqa: E731
    assert len(losses("full")) == 6 and losses("resumed") == losses("full")  # resumed history: restored + 3 new


def kill_in_the_middle_of_saving(step: int) -> None:
    """Makes this process SIGKILL itself while it writes checkpoint-`step`, after the weights and before the rest: the
    Trainer's adapter but not its optimizer state; `ShardedTrainer`'s DCP files but not its trainer state."""
    from transformers import Trainer

    from c3llm.sharded import ShardedTrainer

    for owner, method, global_step in ((Trainer, "_save_optimizer_and_scheduler", lambda t: t.state.global_step),
                                       (ShardedTrainer, "_save_trainer_files", lambda t: t.global_step)):
        def killed_midway(self, *args, _save=getattr(owner, method), _step=global_step):
            if _step(self) == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return _save(self, *args)

        setattr(owner, method, killed_midway)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from c3llm.training import DataArguments, ModelArguments, run_training
    from tests.test_training import RESUME_RUN, kill_in_the_middle_of_saving, text_video_dataset, train_args

    folder, out, kill_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kill_in_the_middle_of_saving(kill_step)
    run_training(ModelArguments(model_name_or_path=folder, stage=1, lora_r=4, lora_alpha=8), DataArguments(),
                 train_args(out, **RESUME_RUN), train_dataset=text_video_dataset(4))
    """
)
RESUME_RUN = dict(max_steps=4, per_device_train_batch_size=2, save_strategy="steps", save_steps=1, learning_rate=5e-3)


def test_a_save_killed_midway_leaves_complete_checkpoints_and_last_resumes_like_an_uninterrupted_run(
    tiny_folder, tmp_path, caplog
):
    """SIGKILL in the middle of writing checkpoint-2 (a hook, not a timer): only complete checkpoints appear, and
    `--resume_from_checkpoint last` resumes from the newest complete one, naming what it passed over."""
    script = tmp_path / "killed.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(script), str(tiny_folder), str(out), "2"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=400)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    folders = sorted(p.name for p in out.iterdir() if "checkpoint" in p.name)
    assert folders == [".incomplete-checkpoint-2", "checkpoint-1"], folders
    assert (out / ".incomplete-checkpoint-2" / "checkpoint-2" / "adapter_model.safetensors").is_file()  # mid-save
    (out / "checkpoint-3").mkdir()  # what a save killed under the plain Trainer leaves: it must not block a resume

    model_args = ModelArguments(model_name_or_path=str(tiny_folder), stage=1, lora_r=4, lora_alpha=8)
    with caplog.at_level("WARNING", logger="c3llm.training"):
        run_training(model_args, DataArguments(), train_args(out, resume_from_checkpoint="last", **RESUME_RUN),
                     train_dataset=text_video_dataset(4))  # fmt: skip
    assert f"Skipping {out / 'checkpoint-3'}: it has no trainer_state.json" in caplog.text
    assert f"{out / '.incomplete-checkpoint-2'} is the leftover of a save that was killed" in caplog.text
    assert f"Resuming from {out / 'checkpoint-1'}." in caplog.text
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == [f"checkpoint-{i}" for i in range(1, 5)]

    run_training(model_args, DataArguments(), train_args(tmp_path / "full", **RESUME_RUN),
                 train_dataset=text_video_dataset(4))  # fmt: skip
    full = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    resumed = load_file(out / "adapter" / "adapter_model.safetensors")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.allclose(full[name], resumed[name], atol=1e-6, rtol=0), name
    losses = lambda run: [r["loss"] for r in log_history(run) if "loss" in r]  # noqa: E731
    assert len(losses(tmp_path / "full")) == 4 and losses(out) == losses(tmp_path / "full")
    empty = tmp_path / "bare" / "checkpoint-9"
    empty.mkdir(parents=True)
    with pytest.raises(ValueError, match="not a complete checkpoint: it has no trainer_state.json"):
        run_training(model_args, DataArguments(), train_args(tmp_path / "bare", resume_from_checkpoint=str(empty),
                                                             **RESUME_RUN), train_dataset=text_video_dataset(4))


# ---- mixed precision ----------------------------------------------------------------------------------------------
def test_bf16_autocast_on_cpu_tracks_fp32_and_the_merged_folder_saves_and_loads_in_bf16(tmp_path):
    """`--bf16` on the CPU (accelerate's CPU autocast) as the stand-in of the GPU path: on a model with large weights
    (a random model's loss is log(vocabulary) whatever the precision), the first step's loss is within 1% of fp32's
    and not within 1e-5 (the matmuls really ran in bf16); `--save_dtype bfloat16` writes a bf16 merged folder that
    loads in bf16 and runs."""
    from tests.test_model import sharp_tiny

    save_folder(*sharp_tiny(), tmp_path / "sharp")
    dataset = text_video_dataset(4)
    common = dict(max_steps=1, per_device_train_batch_size=4)
    first_loss = {}
    for precision in ("fp32", "bf16"):
        model_args = ModelArguments(model_name_or_path=str(tmp_path / "sharp"), stage=1, lora_r=4, lora_alpha=8,
                                    lora_dropout=0.0, save_dtype="bfloat16" if precision == "bf16" else None)
        run_training(model_args, DataArguments(), train_args(tmp_path / precision, bf16=precision == "bf16", **common),
                     train_dataset=dataset)  # fmt: skip
        first_loss[precision] = log_history(tmp_path / precision)[0]["loss"]
    assert 1e-5 < abs(first_loss["bf16"] / first_loss["fp32"] - 1) < 1e-2, first_loss

    weights = load_file(tmp_path / "bf16" / "merged" / "model.safetensors")
    floats = {name: t.dtype for name, t in weights.items() if t.is_floating_point()}
    assert floats and set(floats.values()) == {torch.bfloat16}
    assert {t.dtype for t in load_file(tmp_path / "fp32" / "merged" / "model.safetensors").values()
            if t.is_floating_point()} == {torch.float32}  # fmt: skip
    model = C3LLMForConditionalGeneration.from_pretrained(tmp_path / "bf16" / "merged", dtype="auto")
    assert model.dtype == torch.bfloat16
    processor = AutoProcessor.from_pretrained(tmp_path / "bf16" / "merged")
    batch = C3LLMDataCollator(processor)(list(dataset))
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


# ---- DDP ----------------------------------------------------------------------------------------------------------
DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from c3llm.training import C3LLMTrainingArguments, DataArguments, ModelArguments, run_training

    folder, out, per_device = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(0)
    # Every example has the same number of target tokens and frames, so per-rank means average to the global mean.
    dataset = Dataset.from_dict({
        "task": ["text-to-audio"] * 8,
        "caption": ["a dog barks", "a cat meows", "rain on tin", "a door slam"] * 2,
        "audio_codes": [rng.integers(0, 1024, (2, 6)).tolist() for _ in range(8)],
    })

    class Keep(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero:
                torch.save({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                           os.path.join(out, "trainable.pt"))

    args = C3LLMTrainingArguments(
        output_dir=out, max_steps=2, per_device_train_batch_size=per_device, learning_rate=1e-2, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
        dataloader_num_workers=0, dataloader_drop_last=True, train_sampling_strategy="sequential", ddp_backend="gloo",
    )
    run_training(ModelArguments(model_name_or_path=folder, stage=1, lora_r=4, lora_alpha=8, lora_dropout=0.0),
                 DataArguments(), args, train_dataset=dataset, callbacks=[Keep()])
    """
)


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tiny_folder, tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    runs = {
        "single": [sys.executable, str(script), str(tiny_folder), str(tmp_path / "single"), "4"],
        "ddp": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), str(script), str(tiny_folder), str(tmp_path / "ddp"), "2"],
    }
    for name, command in runs.items():
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=400)
        assert result.returncode == 0, f"{name}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    losses = {name: [(r["loss"], r["lm_loss"]) for r in log_history(tmp_path / name) if "loss" in r] for name in runs}
    assert len(losses["single"]) == len(losses["ddp"]) == 2
    assert np.allclose(losses["single"], losses["ddp"], atol=1e-5, rtol=0)
    single = torch.load(tmp_path / "single" / "trainable.pt")
    ddp = torch.load(tmp_path / "ddp" / "trainable.pt")
    assert single.keys() == ddp.keys() and any("lora_" in n for n in single)
    for name in single:
        assert torch.allclose(single[name], ddp[name], atol=1e-5, rtol=0), name
    state = json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["train_batch_size"] == 2


# ---- FSDP2 --------------------------------------------------------------------------------------------------------
def sharded_run(folder, out, stage="1", fsdp2="0", resume=None, bf16="0", save_dtype=None, kill_at=None,
                activation_checkpointing="0", save_total_limit=None):
    """4 steps at a global batch of 4 with a checkpoint every step, on 8 text-to-audio examples with the same number of
    target tokens (so per-process means average to the global mean): with `fsdp2="1"` sharded over torchrun's
    processes, else in one process with the Trainer. The options are strings, as `FSDP_SCRIPT` passes them."""
    if kill_at is not None:
        kill_in_the_middle_of_saving(int(kill_at))
    rng = np.random.default_rng(0)
    dataset = Dataset.from_dict({
        "task": ["text-to-audio"] * 8,
        "caption": ["a dog barks", "a cat meows", "rain on tin", "a door slam"] * 2,
        "audio_codes": [rng.integers(0, 1024, (2, 6)).tolist() for _ in range(8)],
    })  # fmt: skip
    batch = dict(fsdp2=True, global_batch_size=4) if fsdp2 == "1" else dict(per_device_train_batch_size=4)
    args = C3LLMTrainingArguments(
        output_dir=str(out), max_steps=4, learning_rate=1e-2, logging_steps=1, save_strategy="steps", save_steps=1,
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0, data_seed=0, dataloader_num_workers=0,
        train_sampling_strategy="sequential", resume_from_checkpoint=resume, bf16=bf16 == "1",
        activation_checkpointing=activation_checkpointing == "1",
        save_total_limit=None if save_total_limit is None else int(save_total_limit), **batch,
    )
    stage = int(stage)
    parts = {1: dict(lora_r=4, lora_alpha=8, lora_dropout=0.0), 3: dict(masked_decoder_layers=1)}.get(stage, {})
    return run_training(ModelArguments(model_name_or_path=str(folder), stage=stage, save_dtype=save_dtype, **parts),
                        DataArguments(), args, train_dataset=dataset)  # fmt: skip


FSDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from tests.test_training import sharded_run

    sharded_run(sys.argv[1], sys.argv[2], **dict(option.split("=", 1) for option in sys.argv[3:]))
    """
)


def launch(root: Path, name: str, folder, *options: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`sharded_run(folder, root / name, *options)` under `torchrun --nproc_per_node processes`."""
    script = root / "sharded_run.py"
    script.write_text(FSDP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(free_port()), str(script), str(folder), str(root / name), *options]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, cwd=root, env=env, timeout=400)


def succeeded(result: subprocess.CompletedProcess) -> bool:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return True


def losses(out, part: str = "loss") -> list[float]:
    return [r[part] for r in log_history(out) if part in r]


@pytest.fixture(scope="module")
def fsdp_stage1(tiny_folder, tmp_path_factory):
    """Stage 1 in one process ("single") and sharded over two ("fsdp"), fp32: the references of the FSDP tests."""
    root = tmp_path_factory.mktemp("fsdp_stage1")
    sharded_run(tiny_folder, root / "single")
    assert succeeded(launch(root, "fsdp", tiny_folder, "fsdp2=1"))
    return root


def adapter(out) -> dict[str, torch.Tensor]:
    return load_file(Path(out) / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_fsdp_two_processes_match_one_process_and_the_adapter_loads_unsharded(fsdp_stage1, tiny_folder):
    """FSDP2 under torchrun on gloo: the same weights (1e-5) and losses as one process at the same global batch; the
    adapter saved from the sharded run loads into an unsharded model with the same logits as the one-process run's.
    (Resuming from a sharded checkpoint: the test of a save killed midway.)"""
    root = fsdp_stage1
    assert (root / "fsdp" / "checkpoint-2" / "sharded" / ".metadata").is_file()
    assert len(losses(root / "single")) == 4
    assert np.allclose(losses(root / "single"), losses(root / "fsdp"), atol=1e-5, rtol=0)
    adapters = {name: adapter(root / name) for name in ("single", "fsdp")}
    assert adapters["single"].keys() == adapters["fsdp"].keys()
    for name, weight in adapters["single"].items():
        assert torch.allclose(weight, adapters["fsdp"][name], atol=1e-5, rtol=0), name

    from peft import PeftModel

    ids = torch.tensor([[2, 5, 9, 14, 20, 31]])
    with torch.no_grad():
        logits = {name: PeftModel.from_pretrained(C3LLMForConditionalGeneration.from_pretrained(tiny_folder),
                                                  root / name / "adapter")(input_ids=ids).logits
                  for name in ("single", "fsdp")}  # fmt: skip
        merged = C3LLMForConditionalGeneration.from_pretrained(root / "fsdp" / "merged")(input_ids=ids).logits
    assert torch.allclose(logits["fsdp"], logits["single"], atol=1e-4, rtol=0)
    assert torch.allclose(merged, logits["fsdp"], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_fsdp_a_sharded_save_killed_midway_leaves_complete_checkpoints_and_last_resumes_in_4_processes(
    fsdp_stage1, tiny_folder, tmp_path
):
    """Both processes SIGKILL themselves while writing checkpoint-3 (a hook, not a timer), after its DCP files: only
    complete checkpoints appear; `--resume_from_checkpoint last` in 4 processes (the same global batch) names the
    leftover, resumes from the sharded checkpoint-2 and ends with the uninterrupted 2-process run's weights and losses
    (within 1e-6: the gradients are summed in another order; measured 1.5e-8)."""
    out = tmp_path / "killed"
    killed = launch(tmp_path, "killed", tiny_folder, "fsdp2=1", "kill_at=3")
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-3000:]
    folders = sorted(p.name for p in out.iterdir() if "checkpoint" in p.name)
    assert folders == [".incomplete-checkpoint-3", "checkpoint-1", "checkpoint-2"], folders
    leftover = out / ".incomplete-checkpoint-3" / "checkpoint-3"
    assert sorted(p.name for p in (leftover / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (leftover / "trainer_state.json").exists()

    resumed = launch(tmp_path, "killed", tiny_folder, "fsdp2=1", "resume=last", processes=4)
    assert succeeded(resumed)
    assert f"{out / '.incomplete-checkpoint-3'} is the leftover of a save that was killed" in resumed.stderr
    assert f"Resuming from {out / 'checkpoint-2'}." in resumed.stderr
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == [f"checkpoint-{i}" for i in range(1, 5)]
    assert len(list((out / "checkpoint-4" / "sharded").glob("*.distcp"))) == 4
    full, resumed_adapter = adapter(fsdp_stage1 / "fsdp"), adapter(out)
    assert full.keys() == resumed_adapter.keys()
    for name, weight in full.items():
        assert torch.allclose(weight, resumed_adapter[name], atol=1e-6, rtol=0), name
    assert len(losses(out)) == 4 and np.allclose(losses(out), losses(fsdp_stage1 / "fsdp"), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_fsdp_bf16_tracks_fp32_keeps_fp32_masters_and_saves_a_bf16_merged_folder(fsdp_stage1, tiny_folder, tmp_path):
    """`--bf16` under FSDP2 (bf16 parameters in the forward and backward, fp32 gradient reduction and masters): the
    losses track the fp32 sharded run's within 0.5% and differ from them (the matmuls really ran in bf16; measured:
    up to 2.5e-4 apart); the adapter is saved in fp32; `--save_dtype bfloat16` gives a merged folder that loads in
    bf16."""
    assert succeeded(launch(tmp_path, "bf16", tiny_folder, "fsdp2=1", "bf16=1", "save_dtype=bfloat16"))
    fp32, bf16 = np.array(losses(fsdp_stage1 / "fsdp")), np.array(losses(tmp_path / "bf16"))
    relative = np.abs(bf16 / fp32 - 1)
    assert len(bf16) == 4 and relative.max() < 5e-3 and relative.max() > 1e-6, relative
    saved = adapter(tmp_path / "bf16")
    assert saved.keys() == adapter(fsdp_stage1 / "fsdp").keys()
    assert {t.dtype for t in saved.values()} == {torch.float32}
    merged = load_file(tmp_path / "bf16" / "merged" / "model.safetensors")
    assert {t.dtype for t in merged.values() if t.is_floating_point()} == {torch.bfloat16}
    model = C3LLMForConditionalGeneration.from_pretrained(tmp_path / "bf16" / "merged", dtype="auto")
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[2, 5, 9, 14, 20, 31]])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


@pytest.mark.slow
def test_fsdp_stage2_matches_one_process_and_its_merged_folder_keeps_the_frozen_weights(tiny_folder, tmp_path):
    """Stage 2 (the NAR head alone) sharded over two processes, with activation checkpointing: the NAR head's weights
    within 1e-5 and the NAR losses of one process (without it) at the same global batch; the merged folder loads with `AutoModel` and every other weight is the
    base model's. The attention's key biases are the exception (within 1e-4): softmax ignores them, so their gradient
    is rounding noise, which Adam scales up to steps of the learning rate's size (measured: 2.4e-5 apart)."""
    from transformers import AutoModel

    assert succeeded(launch(tmp_path, "fsdp", tiny_folder, "stage=2", "fsdp2=1", "activation_checkpointing=1"))
    sharded_run(tiny_folder, tmp_path / "single", stage="2")
    assert len(losses(tmp_path / "single", "nar_loss")) == 4
    assert np.allclose(losses(tmp_path / "single", "nar_loss"), losses(tmp_path / "fsdp", "nar_loss"), atol=1e-5)
    base = load_file(tiny_folder / "model.safetensors")
    single, sharded = (load_file(tmp_path / run / "merged" / "model.safetensors") for run in ("single", "fsdp"))
    assert single.keys() == sharded.keys() == base.keys()
    nar = {name for name in base if name.startswith("nar_head.")}
    assert nar and all(not torch.equal(single[name], base[name]) for name in nar)
    hidden = single["nar_head.norm.weight"].numel()
    for name in nar:
        if name.endswith("qkv_proj.bias"):
            keys = slice(hidden, 2 * hidden)
            assert torch.allclose(single[name][keys], sharded[name][keys], atol=1e-4, rtol=0), name
            single[name][keys] = sharded[name][keys]
        assert torch.allclose(single[name], sharded[name], atol=1e-5, rtol=0), name
    model = AutoModel.from_pretrained(tmp_path / "fsdp" / "merged", trust_remote_code=True)
    assert type(model).__name__ == "C3LLMForConditionalGeneration"
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], base[name] if name not in nar else sharded[name]) for name in base)


@pytest.mark.slow
def test_fsdp_stage3_trains_only_the_masked_decoder(tiny_folder, tmp_path):
    """Stage 3 sharded over two processes: a masked decoder is added, each of its weights trains from its seeded
    initialisation, nothing else changes, the objective is the masked loss, and the merged folder holds the decoder;
    `--save_total_limit 2` keeps the newest two checkpoints.
    (Its random masks are drawn per process, so it does not repeat a one-process run.)"""
    assert succeeded(launch(tmp_path, "fsdp", tiny_folder, "stage=3", "fsdp2=1", "save_total_limit=2"))
    checkpoints = sorted(p.name for p in (tmp_path / "fsdp").iterdir() if "checkpoint" in p.name)
    assert checkpoints == ["checkpoint-3", "checkpoint-4"], checkpoints  # --save_total_limit 2
    history = [r for r in log_history(tmp_path / "fsdp") if "loss" in r]
    assert len(history) == 4 and all(r["loss"] == pytest.approx(r["masked_loss"], abs=1e-4) for r in history)
    base = load_file(tiny_folder / "model.safetensors")
    saved = load_file(tmp_path / "fsdp" / "merged" / "model.safetensors")
    initial = C3LLMForConditionalGeneration.from_pretrained(tiny_folder)
    set_seed(0)  # as run_training before it adds the decoder
    initial.add_masked_decoder(1)
    decoder = {n: t for n, t in initial.state_dict().items() if n.startswith("masked_decoder.")}
    assert decoder and saved.keys() == base.keys() | decoder.keys()
    assert all(torch.equal(saved[name], base[name]) for name in base)
    unchanged = [name for name, init in decoder.items() if torch.equal(saved[name], init)]
    assert not unchanged, unchanged
    # Adam moves a weight by at most about the learning rate per step: 1e-2 + 7.5e-3 + 5e-3 + 2.5e-3 over the 4 steps
    # (measured 2.50e-2; from a decoder initialised with another seed, 0.14).
    assert max(float((saved[name] - init).abs().max()) for name, init in decoder.items()) < 2.6e-2


def test_fsdp_bad_inputs_are_clear_errors(tiny_folder, tmp_path):
    from c3llm.sharded import per_device_batch

    with pytest.raises(ValueError, match="launch with `torchrun --nproc_per_node N`"):
        run_training(ModelArguments(model_name_or_path=str(tiny_folder), stage=1, lora_r=4, lora_alpha=8),
                     DataArguments(), train_args(tmp_path, fsdp2=True, global_batch_size=4, max_steps=1),
                     train_dataset=text_video_dataset(4))  # fmt: skip
    with pytest.raises(ValueError, match="does not divide over 2 processes x 2 accumulation steps; choose a multiple of 4"):
        per_device_batch(6, 2, 2)
    assert per_device_batch(8, 2, 2) == 2


def test_fsdp_units_are_the_classes_the_accelerate_recipe_wraps():
    import yaml

    from c3llm.sharded import LAYER_CLASSES

    recipe = yaml.safe_load((RECIPES / "accelerate_fsdp.yaml").read_text())
    assert recipe["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",") == list(LAYER_CLASSES)


# ---- activation checkpointing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_folder, data_files, stage):
    processor = AutoProcessor.from_pretrained(tiny_folder)
    batch = C3LLMDataCollator(processor)(list(mixed_dataset(data_files)))
    model = C3LLMForConditionalGeneration.from_pretrained(tiny_folder)
    model = prepare_model(model, ModelArguments(stage=stage, lora_r=4, lora_alpha=8, lora_dropout=0.0)).train()
    # A module inside a checkpointed layer is entered again when backward recomputes the layer (the layer's own
    # hooks stay outside the checkpoint; a pre-hook, since the recompute stops early once it has what it needs).
    inner = "base_model.model.language_model.model.layers.0.self_attn" if stage == 1 else "nar_head.layers.0.qkv_proj"
    calls = []
    model.get_submodule(inner).register_forward_pre_hook(lambda *_: calls.append(1))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        calls.clear()
        output = model(**batch, use_cache=False)
        loss = output.loss if stage == 1 else output.nar_loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, len(calls)

    plain_loss, plain_grads, plain_calls = loss_and_grads()
    model.activation_checkpointing_enable()  # what Trainer calls for --activation_checkpointing
    checkpointed_loss, checkpointed_grads, checkpointed_calls = loss_and_grads()
    assert checkpointed_calls == 2 * plain_calls  # really recomputed in backward
    assert torch.allclose(checkpointed_loss, plain_loss, atol=1e-6, rtol=0)
    assert plain_grads.keys() == checkpointed_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        assert torch.allclose(checkpointed_grads[name], grad, atol=1e-6, rtol=1e-5), name


def test_trainer_with_gradient_checkpointing_matches_without(tiny_folder, tmp_path):
    model_args = ModelArguments(model_name_or_path=str(tiny_folder), stage=1, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    runs = {}
    for flag in (False, True):
        args = train_args(tmp_path / str(flag), max_steps=3, per_device_train_batch_size=2,
                          train_sampling_strategy="sequential", activation_checkpointing=flag)
        assert args.activation_checkpointing is flag
        seen = []

        class Check(TrainerCallback):
            def on_step_begin(self, args, state, control, model=None, **kwargs):
                layers = model.get_base_model().language_model.model.layers
                seen.append(all(layer.gradient_checkpointing for layer in layers) and model.training)

        run_training(model_args, DataArguments(), args, train_dataset=text_video_dataset(4), callbacks=[Check()])
        assert seen == [flag] * 3
        runs[flag] = [r["loss"] for r in log_history(tmp_path / str(flag)) if "loss" in r]
        runs[flag, "adapter"] = load_file(tmp_path / str(flag) / "adapter" / "adapter_model.safetensors")
    assert np.allclose(runs[True], runs[False], atol=1e-6, rtol=0) and len(runs[True]) == 3
    for name, value in runs[False, "adapter"].items():
        assert torch.allclose(runs[True, "adapter"][name], value, atol=1e-6, rtol=0), name


# ---- data loading and the command line -----------------------------------------------------------------------------
@pytest.mark.slow
def test_main_trains_from_an_audiocaps_folder(tiny_folder, tmp_path, capsys):
    from c3llm.synthfoley.synthfoley import write_audiocaps

    data = tmp_path / "audiocaps"
    write_audiocaps(data, 4, "train", seed=0, duration=1.0)
    write_audiocaps(data, 2, "test", seed=0, duration=1.0)
    out = tmp_path / "run"
    config = tmp_path / "stage1.yaml"
    config.write_text(f"model_name_or_path: {tiny_folder}\nstage: 1\nlora_r: 4\ndataset: audiocaps\n"
                      f"data_dir: {data}\neval_split: test\ntasks: [text-to-audio, audio-to-text]\n"
                      f"cache_dir: {tmp_path / 'cache'}\noutput_dir: {out}\nmax_steps: 2\nuse_cpu: true\n"
                      "per_device_train_batch_size: 4\nlogging_steps: 1\nsave_strategy: 'no'\neval_strategy: steps\n"
                      "eval_steps: 2\nreport_to: none\ndisable_tqdm: true\nlearning_rate: 1.0e-3\n")
    assert main([str(config), "--max_train_examples", "3"]) == 0
    printed = capsys.readouterr().out
    assert "audiocaps/train: kept 4 of 4" in printed and "add_audio_codes" in printed
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    evals = [r for r in state["log_history"] if "eval_loss" in r]
    assert evals and {"eval_lm_loss", "eval_nar_loss"} <= set(evals[-1])
    assert (out / "merged" / "model.safetensors").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    assert "C3LLM stage 1 training done" in printed


def test_main_reports_missing_corrupt_and_unusable_clips(tiny_folder, tmp_path, capsys):
    from c3llm.synthfoley.synthfoley import write_audiocaps

    data = tmp_path / "audiocaps"
    write_audiocaps(data, 5, "train", seed=0, duration=1.0)
    wavs = sorted((data / "audio" / "train").glob("*.wav"))
    missing, corrupt, nan = (str(path) for path in wavs[:3])
    os.remove(missing)
    Path(corrupt).write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    # A valid float WAV header with NaN samples: passes the load-time probe, fails when add_audio_codes reads it.
    sf.write(nan, np.full(24000, np.nan, dtype=np.float32), 24000, subtype="FLOAT")
    out = tmp_path / "run"
    assert main(["--model_name_or_path", str(tiny_folder), "--stage", "1", "--lora_r", "4", "--dataset", "audiocaps",
                 "--data_dir", str(data), "--tasks", "text-to-audio", "--cache_dir", str(tmp_path / "cache"),
                 "--output_dir", str(out), "--max_steps", "2", "--use_cpu", "true", "--per_device_train_batch_size",
                 "4", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]) == 0
    assert (out / "merged" / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert f"train: kept 2 of 5 clips, skipped 3: see {out / 'data_report.json'}" in printed

    report = json.loads((out / "data_report.json").read_text())
    assert set(report) == {"train"}  # no eval split
    train = report["train"]
    assert (train["split"], train["total"], train["kept"], train["left_out"]) == ("train", 5, 2, 0)
    skipped = {entry["path"]: (entry["stage"], entry["reason"]) for entry in train["skipped"]}
    assert set(skipped) == {missing, corrupt, nan} and len(train["skipped"]) == 3
    assert skipped[missing] == ("load", "file not found")
    assert skipped[corrupt][0] == "load" and skipped[corrupt][1].startswith("unreadable audio")
    assert skipped[nan][0] == "add_audio_codes" and "NaN" in skipped[nan][1]
    stages = [(s["stage"], s["total"], s["kept"], len(s["skipped"])) for s in train["stages"]]
    assert stages == [("load", 5, 3, 2), ("add_audio_codes", 3, 2, 1)]


# ---- configuration --------------------------------------------------------------------------------------------------
def test_condition_dropout_applies_to_training_batches_only(tiny_folder, tmp_path):
    from c3llm.training import C3LLMTrainer

    processor = AutoProcessor.from_pretrained(tiny_folder)
    model = C3LLMForConditionalGeneration.from_pretrained(tiny_folder)
    dataset = text_video_dataset(32)
    trainer = C3LLMTrainer(model=model, args=train_args(tmp_path, per_device_train_batch_size=32,
                                                        per_device_eval_batch_size=32),
                           data_collator=C3LLMDataCollator(processor, condition_dropout=0.5, seed=0),
                           train_dataset=dataset, eval_dataset=dataset)
    unconditional = processor.unconditional_prompt()

    def unconditional_rows(batch):
        rows = zip(batch["input_ids"], batch["labels"], batch["attention_mask"])
        return sum(ids[(mask == 1) & (labels == -100)].tolist() == unconditional for ids, labels, mask in rows)

    assert 8 <= unconditional_rows(next(iter(trainer.get_train_dataloader()))) <= 24
    assert unconditional_rows(next(iter(trainer.get_eval_dataloader()))) == 0
    assert trainer.data_collator.condition_dropout == 0.5  # restored after building the evaluation loader


def test_recipes_parse_and_flags_override(tmp_path):
    model_args, data_args, args = parse_args([str(RECIPES / "stage1.yaml")])
    assert model_args.stage == 1 and model_args.lora_r == 16 and model_args.lora_alpha == 32
    assert args.remove_unused_columns is False and args.learning_rate > 0
    model_args, data_args, args = parse_args(
        [str(RECIPES / "stage1.yaml"), "--max_steps", "7", "--lora_r", "4", "--output_dir", str(tmp_path)]
    )
    assert (args.max_steps, model_args.lora_r, args.output_dir) == (7, 4, str(tmp_path))
    model_args, _, _ = parse_args([str(RECIPES / "stage2.yaml")])
    assert model_args.stage == 2
    model_args, data_args, _ = parse_args([str(RECIPES / "stage3.yaml")])
    assert (model_args.stage, model_args.masked_decoder_layers, data_args.tasks) == (3, 12, ["text-to-audio"])
    (tmp_path / "c.yaml").write_text("model_name_or_path: m\nlearning_rate: 1e-4\ntasks: [text-to-audio]\n")
    model_args, data_args, args = parse_args([str(tmp_path / "c.yaml")])
    assert args.learning_rate == 1e-4 and data_args.tasks == ["text-to-audio"]  # YAML's "1e-4" string converted
    (tmp_path / "bad.yaml").write_text("model_name_or_path: m\nlora_rank: 8\n")
    with pytest.raises(SystemExit):
        parse_args([str(tmp_path / "bad.yaml")])
    (tmp_path / "c.json").write_text(json.dumps({"model_name_or_path": "m", "stage": 2, "output_dir": str(tmp_path)}))
    model_args, _, args = parse_args([str(tmp_path / "c.json")])
    assert (model_args.model_name_or_path, model_args.stage, args.bf16) == ("m", 2, torch.cuda.is_available())

    from accelerate.commands.config.config_args import load_config_from_file

    ddp = load_config_from_file(str(RECIPES / "accelerate_ddp.yaml"))
    fsdp = load_config_from_file(str(RECIPES / "accelerate_fsdp.yaml"))
    assert ddp.distributed_type.value == "MULTI_GPU" and fsdp.distributed_type.value == "FSDP"
    assert "GemmaDecoderLayer" in fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    assert fsdp.fsdp_config["fsdp_use_orig_params"] is True


def test_main_help_and_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--stage" in out and "--lora_r" in out and "--dataset" in out
    assert main(["--output_dir", str(tmp_path), "--use_cpu", "true"]) == 2
    assert "--model_name_or_path is required" in capsys.readouterr().err
