"""The import contracts in `.importlinter` (README "Layout") hold, and they catch an upward import and a cycle.

Each check runs `lint-imports` in a subprocess, without its cache (nothing is written into the tree). The negative
tests copy the four packages' Python files and `.importlinter` into a temporary folder, break one rule in the copy and
lint the copy, with that folder first on PYTHONPATH so that it, and not the installed project, is analysed.
"""

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
PACKAGES = ("modeling_c3llm", "processing_c3llm", "conversion", "c3llm")
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def contract_names() -> dict[str, str]:
    """Contract id -> name, as `.importlinter` defines them."""
    parser = configparser.ConfigParser()
    parser.read(CONFIG, encoding="utf-8")
    prefix = "importlinter:contract:"
    return {s[len(prefix):]: parser[s]["name"] for s in parser.sections() if s.startswith(prefix)}


def lint_imports(root: Path) -> tuple[int, str]:
    """Exit code and output of `lint-imports` on `root`'s packages, the output's whitespace (wrapping) collapsed."""
    env = {**os.environ, "PYTHONPATH": str(root), "NO_COLOR": "1"}
    result = subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache", "--no-logo", str(root / ".importlinter")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def copy_project(dest: Path) -> Path:
    """The packages' Python files and `.importlinter`, nothing else (no data files, caches or bytecode)."""

    def ignore(folder, names):
        return [n for n in names if n == "__pycache__" or (Path(folder, n).is_file() and not n.endswith(".py"))]

    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    shutil.copy(CONFIG, dest / ".importlinter")
    return dest


def inject(module_file: Path, line: str) -> None:
    """Appends an import at the end of a module (after any `from __future__` import, so the file still parses)."""
    assert module_file.is_file(), module_file
    module_file.write_text(module_file.read_text(encoding="utf-8") + f"\n{line}  # injected by test_layers\n")


def test_the_import_contracts_hold():
    names = contract_names()
    assert {"layers", "remote-code", "acyclic"} <= names.keys()
    code, output = lint_imports(ROOT)
    assert code == 0, output[-4000:]
    for name in names.values():
        assert f"{name} KEPT" in output, name
    assert f"Contracts: {len(names)} kept, 0 broken." in output


def test_an_upward_import_breaks_the_layers(tmp_path):
    root = copy_project(tmp_path)
    inject(root / "modeling_c3llm" / "modeling_c3llm.py", "from c3llm import cli")
    code, output = lint_imports(root)
    names = contract_names()
    assert code != 0, output[-4000:]
    assert f"{names['layers']} BROKEN" in output
    assert f"{names['remote-code']} BROKEN" in output  # the remote code may not import the application either
    assert f"{names['acyclic']} KEPT" in output
    assert "modeling_c3llm.modeling_c3llm -> c3llm.cli" in output  # the report names the injected import


def test_an_import_cycle_breaks_the_acyclic_contract(tmp_path):
    root = copy_project(tmp_path)
    # Two sibling modules of the model package that import each other (neither imports the other today).
    inject(root / "modeling_c3llm" / "configuration_c3llm.py", "import modeling_c3llm.generation_c3llm")
    inject(root / "modeling_c3llm" / "generation_c3llm.py", "import modeling_c3llm.configuration_c3llm")
    code, output = lint_imports(root)
    names = contract_names()
    assert code != 0, output[-4000:]
    assert f"{names['acyclic']} BROKEN" in output
    assert f"Contracts: {len(names) - 1} kept, 1 broken." in output  # only the cycle
    assert "No cycles are allowed in modeling_c3llm" in output
    assert any(f".{a}_c3llm -> .{b}_c3llm" in output for a, b in (("generation", "configuration"),
                                                                    ("configuration", "generation")))
