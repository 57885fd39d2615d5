"""Checkpoint loading: every wrapping users hold, head re-sizing, 2-D inflation, bad input."""

from __future__ import annotations

import collections

import pytest
import torch

from conftest import TINY, TINY_LIGHT
from uniformer_edge.models import (
    CheckpointError,
    UniFormer,
    UniFormerLight,
    create_model,
    load_checkpoint,
    read_state_dict,
)


@pytest.fixture
def source():
    torch.manual_seed(3)
    return UniFormer(**TINY).eval()


def _outputs_equal(a, b):
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model": sd},
        lambda sd: {"model_state": sd, "optimizer_state": {}, "epoch": 3, "cfg": "x"},
        lambda sd: {"state_dict": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"model_state": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: collections.OrderedDict(sd),
    ],
    ids=["bare", "model", "model_state", "state_dict", "ddp-prefix", "model_state+ddp", "ordered"],
)
def test_strict_load_every_wrapping(tmp_path, source, wrap):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(source.state_dict()), path)
    target = UniFormer(**TINY)
    report = load_checkpoint(target, path, strict=True)
    assert report.loaded == len(source.state_dict())
    assert not (report.missing or report.unexpected or report.dropped_head)
    assert _outputs_equal(source, target)


def test_create_model_with_checkpoint(tmp_path):
    model = create_model("xxs", num_classes=5)
    path = tmp_path / "xxs.pth"
    torch.save({"model_state": model.state_dict()}, path)
    loaded = create_model("xxs", num_classes=5, checkpoint=path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_light_checkpoint_without_train_only_head(tmp_path):
    torch.manual_seed(0)
    source = UniFormerLight(**TINY_LIGHT).eval()
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith(("norm_cls.", "head_cls."))}
    torch.save(sd, tmp_path / "light.pth")
    target = UniFormerLight(**TINY_LIGHT)
    report = load_checkpoint(target, tmp_path / "light.pth", strict=True)
    assert sorted(report.missing_train_only) == ["head_cls.bias", "head_cls.weight", "norm_cls.bias", "norm_cls.weight"]
    assert _outputs_equal(source, target)


def test_class_count_mismatch_drops_head_with_warning(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "k400.pth")
    target = UniFormer(**dict(TINY, num_classes=3))
    head_before = target.head.weight.clone()
    with pytest.warns(UserWarning, match="another class count.*head.weight"):
        report = load_checkpoint(target, tmp_path / "k400.pth")
    assert report.dropped_head == ["head.weight", "head.bias"]
    assert torch.equal(target.head.weight, head_before)
    assert torch.equal(target.blocks3[0].attn.qkv.weight, source.blocks3[0].attn.qkv.weight)


def test_imagenet_2d_weights_are_inflated(tmp_path, source):
    """An ImageNet checkpoint: 2-D kernels, 1000-class head. A static clip must then give the
    2-D network's per-frame response, which the official inflation (repeat / T) guarantees."""
    sd = {}
    for k, v in source.state_dict().items():
        sd[k] = v[:, :, v.shape[2] // 2] * v.shape[2] if v.ndim == 5 else v
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 128), torch.randn(1000)
    torch.save({"model": sd}, tmp_path / "imagenet.pth")
    target = UniFormer(**TINY)
    with pytest.warns(UserWarning) as caught:
        report = load_checkpoint(target, tmp_path / "imagenet.pth")
    assert any("inflated" in str(w.message) for w in caught)
    assert "patch_embed1.proj.weight" in report.inflated and "blocks1.0.attn.weight" in report.inflated
    w2d = sd["blocks1.0.attn.weight"]
    w3d = target.blocks1[0].attn.weight
    assert w3d.shape == (16, 1, 5, 5, 5)
    assert torch.allclose(w3d.sum(dim=2), w2d, atol=1e-6)
    assert torch.allclose(w3d[:, :, 0], w2d / 5)


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


class NotWeights:
    pass


def test_bad_checkpoints(tmp_path, source):
    model = UniFormer(**TINY)
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pth"):
        load_checkpoint(model, tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(model, tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="notes.txt: not a readable PyTorch checkpoint"):
        load_checkpoint(model, text)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth: not a readable"):
        load_checkpoint(model, empty)
    good = _save(tmp_path, "good.pth", source.state_dict())
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pth: not a readable"):
        load_checkpoint(model, truncated)
    pickled = _save(tmp_path, "pickled.pth", {"model": NotWeights()})
    with pytest.raises(CheckpointError, match=r"pickled.pth: holds pickled Python objects \(.*NotWeights\)"):
        load_checkpoint(model, pickled)
    with pytest.raises(CheckpointError, match="holds no weights .*top-level keys: epoch, cfg"):
        load_checkpoint(model, _save(tmp_path, "meta.pth", {"epoch": 1, "cfg": {"a": 1}}))
    with pytest.raises(CheckpointError, match="expected a dict of weights, found list"):
        load_checkpoint(model, _save(tmp_path, "list.pth", [torch.zeros(1)]))


def test_key_and_shape_mismatches_are_listed(tmp_path, source):
    sd = source.state_dict()
    model = UniFormer(**TINY)
    missing = dict(sd)
    del missing["blocks3.1.attn.qkv.weight"], missing["norm.running_var"]
    with pytest.raises(CheckpointError, match="missing 2 key.*blocks3.1.attn.qkv.weight, norm.running_var"):
        load_checkpoint(model, _save(tmp_path, "missing.pth", missing))
    extra = dict(sd, **{"blocks9.0.weird": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected 1 key.*blocks9.0.weird"):
        load_checkpoint(model, _save(tmp_path, "extra.pth", extra))
    # Non-strict loading reports instead of raising.
    with pytest.warns(UserWarning, match="non-strictly"):
        report = load_checkpoint(model, tmp_path / "missing.pth", strict=False)
    assert report.missing == ["blocks3.1.attn.qkv.weight", "norm.running_var"]
    # Shapes never load silently, strict or not.
    wrong = dict(sd, **{"blocks1.0.conv1.weight": torch.zeros(16, 8, 1, 1, 1)})
    with pytest.raises(
        CheckpointError,
        match=r"blocks1.0.conv1.weight: checkpoint \(16, 8, 1, 1, 1\) vs model "
        r"\(16, 16, 1, 1, 1\)",
    ):
        load_checkpoint(model, _save(tmp_path, "shape.pth", wrong), strict=False)
    # A wrong variant: a whole list of mismatches, truncated, never a traceback dump.
    with pytest.raises(CheckpointError, match=r"do not fit the model: .*more\)"):
        load_checkpoint(create_model("s"), tmp_path / "shape.pth")


def test_layer_scale_hint(tmp_path):
    torch.save(UniFormerLight(**dict(TINY_LIGHT, layer_scale=0.1)).state_dict(), tmp_path / "ls.pth")
    with pytest.raises(CheckpointError, match="LayerScale parameters .*layer_scale=0.1"):
        load_checkpoint(UniFormerLight(**TINY_LIGHT), tmp_path / "ls.pth")


def test_create_model_detects_layer_scale_checkpoints(tmp_path):
    source = create_model("xxs", num_classes=4, layer_scale=0.1)
    with torch.no_grad():
        source.blocks1[0].gamma_1.fill_(0.37)
    torch.save({"model_state": source.state_dict()}, tmp_path / "xxs_ls.pth")
    loaded = create_model("xxs", num_classes=4, checkpoint=tmp_path / "xxs_ls.pth")
    assert torch.all(loaded.blocks1[0].gamma_1 == 0.37)
    with pytest.raises(CheckpointError, match="LayerScale parameters"):
        create_model("xxs", num_classes=4, checkpoint=tmp_path / "xxs_ls.pth", layer_scale=None)


def test_read_state_dict_strips_compile_prefix(tmp_path, source):
    sd = {f"_orig_mod.{k}": v for k, v in source.state_dict().items()}
    loaded = read_state_dict(_save(tmp_path, "compiled.pth", sd))
    assert list(loaded) == list(source.state_dict())
