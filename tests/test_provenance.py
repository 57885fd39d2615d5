"""Provenance: every command writes a model card (weights and their hash, variant, classes,
preprocessing) and the next rebuilds the float reference from it, never by re-seeding."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from conftest import TINY
from uniformer_edge.benchmark import discover
from uniformer_edge.export import ExportJob, run_export
from uniformer_edge.models import FLOAT_WEIGHTS_FILE, ModelCard, Preprocessing, create_model, weights_sha256
from uniformer_edge.quantize import QuantizeJob, read_quantize_config, run_job

PLAIN = {k: v for k, v in TINY.items() if k != "num_classes"}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    out = tmp_path_factory.mktemp("provenance") / "q"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_job(
            QuantizeJob(
                variant="s", model_overrides=PLAIN, frames=8, size=32, num_calib=4, num_eval=4, seed=3, out=str(out)
            ),
            progress=False,
        )
    return out


def test_card_records_weights_classes_and_preprocessing(quantized):
    card = json.loads((quantized / "quant_config.json").read_text())["model"]
    assert card["variant"] == "s" and card["num_classes"] == 12 and card["checkpoint"] is None
    assert card["weights_file"] == FLOAT_WEIGHTS_FILE and (quantized / FLOAT_WEIGHTS_FILE).is_file()
    assert card["preprocessing"] == {
        "frames": 8,
        "size": 32,
        "sampling": "uniform",
        "mean": [0.45] * 3,
        "std": [0.225] * 3,
    }
    saved = torch.load(quantized / FLOAT_WEIGHTS_FILE, weights_only=True)
    model = create_model("s", num_classes=12, **PLAIN)
    model.load_state_dict(saved)
    assert weights_sha256(model) == card["weights_sha256"]


def test_reference_is_rebuilt_from_the_card_whatever_the_random_state(quantized):
    (artifact,) = discover(quantized)
    torch.manual_seed(12345)  # a benchmark that re-seeded would now build other weights
    first = artifact.float_model()
    torch.randn(1000)
    second = artifact.float_model()
    assert weights_sha256(first) == weights_sha256(second) == artifact.card.weights_sha256
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(first(x), second(x))


def test_export_from_quantized_keeps_its_weights_not_its_seed(quantized, tmp_path):
    manifest = run_export(
        ExportJob(quantized=str(quantized), formats=("onnx",), seed=99, out=str(tmp_path / "x"), check_clips=1),
        progress=False,
    )
    quantize_card = read_quantize_config(quantized)["model"]
    assert manifest["model"]["weights_sha256"] == quantize_card["weights_sha256"]
    assert (tmp_path / "x" / FLOAT_WEIGHTS_FILE).is_file()  # the export folder stands on its own
    (artifact,) = discover(tmp_path / "x")
    (source,) = discover(quantized)
    assert artifact.group == source.group  # one float reference for both in a benchmark


def test_changed_weights_are_refused(quantized, tmp_path):
    import shutil

    copy = tmp_path / "q"
    shutil.copytree(quantized, copy)
    state = torch.load(copy / FLOAT_WEIGHTS_FILE, weights_only=True)
    state["head.bias"][0] += 1.0
    torch.save(state, copy / FLOAT_WEIGHTS_FILE)
    (artifact,) = discover(copy)
    with pytest.raises(ValueError, match="are not the ones .* records"):
        artifact.float_model()
    (copy / FLOAT_WEIGHTS_FILE).unlink()
    with pytest.raises(ValueError, match="missing"):
        artifact.float_model()


def test_checkpoint_cards_name_and_check_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("s", num_classes=5, **PLAIN).eval()
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    card = ModelCard.describe(
        model, "s", 5, Preprocessing.for_variant("s", 8, 32), checkpoint=str(checkpoint), model_overrides=PLAIN
    )
    assert card.weights_file is None and card.seed is None and len(card.checkpoint_sha256) == 64
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())), "card.json")
    assert weights_sha256(again.build(tmp_path, "card.json")) == card.weights_sha256
    state = model.state_dict()
    state["head.bias"] = state["head.bias"] + 1
    torch.save({"model": state}, checkpoint)
    with pytest.raises(ValueError, match="SHA-256 differs"):
        again.build(tmp_path, "card.json")


def test_outputs_of_older_versions_are_refused_with_the_reason(quantized, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(quantized, old)
    config = json.loads((old / "quant_config.json").read_text())
    del config["model"]
    (old / "quant_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lacks model .*older uniformer-edge"):
        discover(old)
    with pytest.raises(ValueError, match="no model card"):
        ModelCard.from_dict(None, "manifest.json")
