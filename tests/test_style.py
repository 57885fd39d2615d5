"""House rules: the linter and the formatter configured in pyproject.toml ([tool.ruff]) pass on
the whole tree, so `python -m pytest -q` (and with it .ci/run) enforces them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(command):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    result = subprocess.run([ruff, *command], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# The package's data flow: a subpackage imports only from those before it.
LAYERS = ("models", "forms", "calibration", "engine", "quantize", "export", "benchmark")


def test_no_subpackage_reaches_back_up_the_chain():
    import ast

    package = REPO / "uniformer_edge"
    wrong = []
    for rank, layer in enumerate(LAYERS):
        for path in sorted((package / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                    target = node.module.split(".")[0]
                    if target in LAYERS and LAYERS.index(target) > rank:
                        wrong.append(f"{path.relative_to(REPO)}:{node.lineno} imports {target}")
    assert not wrong, wrong
