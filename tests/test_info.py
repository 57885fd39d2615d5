"""Model statistics against the official figures, and the model-info command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from uniformer_edge.models import create_model, model_info


def _stat_cases():
    from conftest import REFERENCE

    path = REFERENCE / "stats.json"
    if not path.is_file():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{path} not found (shared/ absent)"))]
    stats = json.loads(path.read_text())["variants"]
    return [pytest.param(v, f, id=f"{v}-{f['frames']}x{f['size']}") for v, e in stats.items() for f in e["flops"]]


@pytest.mark.parametrize("variant,entry", _stat_cases())
def test_gmacs_and_params_match_paper(reference_dir, variant, entry):
    stats = json.loads((reference_dir / "stats.json").read_text())["variants"][variant]
    info = model_info(create_model(variant.lower()), frames=entry["frames"], size=entry["size"])
    assert info.params == stats["params"]
    paper = entry["paper_per_view_gflops"]
    assert abs(info.gmacs - paper) / paper < 0.03, (info.gmacs, paper)
    # The per-operator split agrees with fvcore's count of the official model.
    for ours, theirs in (("conv", "conv"), ("linear", "linear"), ("matmul", "matmul")):
        assert info.gmacs_by_op[ours] == pytest.approx(entry["by_operator"][theirs] / 1e9, rel=0.01)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "uniformer_edge.models", *args], capture_output=True, text=True)


def test_cli_json():
    out = _cli("--variant", "xxs", "--frames", "8", "--size", "160", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["params"] == 9833896
    assert data["gmacs"] == pytest.approx(3.3, rel=0.03)


def test_cli_text_and_errors(tmp_path):
    out = _cli("--variant", "s")
    assert out.returncode == 0 and "21.40 M" in out.stdout and "GMACs" in out.stdout
    bad = _cli("--variant", "huge")
    assert bad.returncode == 2 and "unknown variant 'huge'" in bad.stderr and "Traceback" not in bad.stderr
    missing = _cli("--variant", "s", "--checkpoint", str(tmp_path / "none.pth"))
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
