"""Virtual environments that tests build on first use and keep in a cache outside the repository.

    python = build_venv("reference", Path("conversion/reference/requirements.txt"), check="import encodec")

creates `<cache>/venvs/<name>-<key>` with `python -m venv`, installs the requirements into it with pip (its output
streamed line by line, with a line every 30 s while pip is silent, e.g. during a large download) and returns the path
of its python. `key` is a hash of the requirement lines (comments left out), the pip arguments and the interpreter
(version, platform), so an edited requirement gets a new venv and an unchanged one is reused without any pip call.
`<cache>` is `$C3LLM_VENV_CACHE`, else `$XDG_CACHE_HOME/c3llm`, else `~/.cache/c3llm`.

A venv counts as built only once its marker file is written (after the install and the `check` code succeeded); an
interrupted build is removed and redone by the next call. An exclusive `fcntl.flock` on `<name>-<key>.lock` makes
parallel test runs wait for one build instead of installing into the same folder (POSIX only). A failed install
raises `VenvBuildError` with the command, pip's last lines and the full log's path (`<name>-<key>.log`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

CACHE_VARIABLE = "C3LLM_VENV_CACHE"
MARKER = ".c3llm-venv-complete"
HEARTBEAT_S = 30.0


class VenvBuildError(RuntimeError):
    """A venv could not be built: the message names the failed step, pip's last output lines and the log file."""


def cache_root() -> Path:
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "c3llm"


def _requirements_text(requirements: str | os.PathLike | Sequence[str]) -> str:
    if isinstance(requirements, os.PathLike):
        return Path(requirements).read_text(encoding="utf-8")
    if isinstance(requirements, str):
        return requirements
    return "\n".join(requirements) + "\n"


def requirement_lines(requirements_text: str) -> list[str]:
    """The requirement lines without comments (pip's rule: `#` at the start or after whitespace) and blank lines."""
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in requirements_text.splitlines())
    return [line for line in lines if line]


def venv_key(requirements_text: str, pip_args: Sequence[str] = (), python: str | None = None) -> str:
    """16 hex digits identifying what the venv holds: the requirement lines (a comment edit keeps the key), pip
    arguments, interpreter version and platform."""
    python = python or sys.executable
    interpreter = subprocess.run(
        [python, "-c", "import sys, sysconfig; print(sys.version, sysconfig.get_platform())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    blob = json.dumps([requirement_lines(requirements_text), list(pip_args), interpreter, platform.machine()])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def build_venv(
    name: str,
    requirements: str | os.PathLike | Sequence[str],
    *,
    check: str | None = None,
    pip_args: Sequence[str] = (),
    python: str | None = None,
    root: os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Returns the python of the cached venv `name` holding `requirements`, building it first if needed.

    `requirements` is a requirements file (a `Path`), its text (a `str`) or a list of requirement lines. `check` is
    Python code run in the new venv before it counts as built (e.g. the imports the caller needs). `python` is the
    interpreter whose `-m venv` creates it (default: this one). `log` receives one line per stage and pip's output.
    """
    text = _requirements_text(requirements)
    root = Path(root) if root is not None else cache_root() / "venvs"
    key = venv_key(text, pip_args, python)
    target = root / f"{name}-{key}"
    marker = target / MARKER
    if marker.is_file():
        return venv_python(target)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}-{key}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"[venv {name}] another process is building {target}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():  # the other process built it
            return venv_python(target)
        _build(name, target, text, check, list(pip_args), python or sys.executable, root / f"{name}-{key}.log", log)
    return venv_python(target)


def _build(name, target: Path, text: str, check, pip_args, python: str, log_path: Path, log) -> None:
    start = time.monotonic()
    if target.exists():
        log(f"[venv {name}] removing the unfinished build in {target}")
        shutil.rmtree(target)
    log(f"[venv {name}] building {target} (first use; reused afterwards; log: {log_path})")
    # The venv's own environment: nothing of the caller's venv or PYTHONPATH leaks into pip or the check. pip's own
    # configuration (index, find-links, constraints) stays.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1")
    with open(log_path, "w", encoding="utf-8") as log_file:
        try:
            _step(name, "create", [python, "-m", "venv", str(target)], env, log_file, log)
            (target / "requirements.txt").write_text(text, encoding="utf-8")
            pip = [str(venv_python(target)), "-m", "pip", "install", "--progress-bar", "off", *pip_args,
                   "-r", str(target / "requirements.txt")]
            _step(name, "pip install", pip, env, log_file, log)
            if check:
                _step(name, "check", [str(venv_python(target)), "-c", check], env, log_file, log)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # several GB that the next call would redo anyway
            raise
    seconds = time.monotonic() - start
    (target / MARKER).write_text(json.dumps({"seconds": round(seconds, 1), "python": python}) + "\n")
    log(f"[venv {name}] built in {seconds / 60:.1f} min: {target}")


def _step(name: str, stage: str, command: list[str], env: dict, log_file, log) -> None:
    log(f"[venv {name}] {stage}: {' '.join(command)}")
    log_file.write(f"$ {' '.join(command)}\n")
    log_file.flush()
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=40)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               stdin=subprocess.DEVNULL, bufsize=1)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                log(f"[venv {name}] {stage}: still running ({(time.monotonic() - start) / 60:.1f} min)")
                continue
            if line is None:
                break
            tail.append(line)
            log_file.write(line + "\n")
            log_file.flush()
            log(f"[venv {name}]   {line}")
        code = process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    if code != 0:
        last = "\n".join(tail)
        raise VenvBuildError(
            f"Building the {name!r} venv failed at '{stage}' (exit code {code}):\n  {' '.join(command)}\n"
            f"Last output:\n{last}\nFull log: {log_file.name}"
        )


__all__ = ["VenvBuildError", "build_venv", "cache_root", "requirement_lines", "venv_key", "venv_python"]
