"""The import graph is the pipeline's layers (pyproject.toml's import-linter contract), without a cycle.

The contract is checked by import-linter itself, in a subprocess, as ``lint-imports`` would; and every
module of the package must be placed in a layer, so a new module cannot slip past the contract.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import fsllm

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[str]:
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    return [name for layer in contract["layers"] for name in re.split(r"\s*[|:]\s*", layer)]


def test_the_import_graph_keeps_the_declared_layers():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                               "sys.exit(lint_imports(config_filename='pyproject.toml'))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_every_module_of_the_package_is_in_a_layer():
    package = Path(fsllm.__file__).parent
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__" and p.stem != "__main__"}
    modules |= {p.parent.name for p in package.glob("*/__init__.py")}
    missing = sorted(modules - set(_layers()))
    assert not missing, f"modules in no layer of pyproject.toml's import-linter contract: {missing}"
