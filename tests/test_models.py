"""Model zoo: official parity, state-dict compatibility, deploy form, export-friendliness."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from torch import nn

from conftest import TINY, TINY_LIGHT, randomize_batchnorm, rel_err
from uniformer_edge.forms import Conv3dAs2d, TimeUnrolledConv, frame_batched
from uniformer_edge.models import UniFormer, UniFormerLight, create_model, deploy, from_official_config, list_variants
from uniformer_edge.models.uniformer import _flat_order, _inverse_order, _permute_tokens


def _form(model, conv3d: str):
    """The deploy form (`conv3d="native"`) or the frame-batched 2-D form (`"2d"`)."""
    return deploy(model) if conv3d == "native" else frame_batched(model)


FIXTURES = {"uniformer": "parity_uniformer_tiny.pt", "light": "parity_uniformer_light_tiny.pt"}


def load_fixture(reference_dir, which):
    fx = torch.load(reference_dir / FIXTURES[which], map_location="cpu", weights_only=True)
    cfg = {**fx["config"], "MODEL": {**fx["config"]["MODEL"], "MODEL_NAME": fx["class"]}}
    model = from_official_config(cfg).eval()
    model.load_state_dict(fx["state_dict"], strict=True)
    return fx, model


@pytest.mark.parametrize("which", list(FIXTURES))
def test_official_parity(reference_dir, which):
    fx, model = load_fixture(reference_dir, which)
    with torch.no_grad():
        logits = model(fx["input"])
    assert rel_err(logits, fx["logits"]) < 1e-4
    # In float64 the arithmetic must agree with the official float64 run almost exactly.
    with torch.no_grad():
        logits64 = model.double()(fx["input"].double())
    assert rel_err(logits64, fx["logits_float64"]) < 1e-9


def test_light_fixture_prunes_tokens(reference_dir):
    """The light fixture exercises pruning in stage 3 and 4: the schedule must really prune."""
    fx, model = load_fixture(reference_dir, "light")
    pruning_blocks = [b for b in list(model.blocks3) + list(model.blocks4) if b.prune_ratio < 1]
    assert len(pruning_blocks) == len(fx["pruning"]) == 2
    assert model.blocks3[-1].pool_scores


@pytest.mark.parametrize("which", list(FIXTURES))
@pytest.mark.parametrize("conv3d", ["native", "2d"])
def test_deploy_matches_official(reference_dir, which, conv3d):
    fx, model = load_fixture(reference_dir, which)
    deployed = _form(model, conv3d)
    with torch.no_grad():
        assert rel_err(deployed(fx["input"]), fx["logits"]) < 1e-4


@pytest.mark.parametrize("variant", ["S", "B", "XXS", "XS"])
def test_state_dict_matches_official_keys(reference_dir, variant):
    expected = [(k, list(s)) for k, s in json.loads((reference_dir / f"keys_{variant}.json").read_text())]
    model = create_model(variant.lower())
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == expected


def test_registry():
    assert list_variants() == ["xxs", "xs", "s", "b"]
    assert isinstance(create_model("s", num_classes=7), UniFormer)
    assert create_model("xxs").head.out_features == 400
    with pytest.raises(ValueError, match="unknown variant 'm'.*xxs, xs, s, b"):
        create_model("m")


def test_layer_scale_form():
    model = create_model("xxs", layer_scale=0.1)
    keys = list(model.state_dict())
    first = keys.index("blocks1.0.gamma_1")
    assert keys[first : first + 3] == ["blocks1.0.gamma_1", "blocks1.0.gamma_2", "blocks1.0.pos_embed.weight"]
    assert model.blocks1[0].gamma_1.shape == (1, 56, 1, 1, 1)
    assert model.blocks3[0].gamma_1.shape == (224,)
    assert torch.all(model.blocks3[0].gamma_2 == 0.1)


def _tiny(cls, **kw):
    torch.manual_seed(0)
    return randomize_batchnorm(cls(**kw)).eval()


DEPLOY_CASES = {
    "uniformer": (UniFormer, TINY),
    "light": (UniFormerLight, TINY_LIGHT),
    "light-layerscale": (UniFormerLight, dict(TINY_LIGHT, layer_scale=0.3)),
}


@pytest.mark.parametrize("case", list(DEPLOY_CASES))
@pytest.mark.parametrize("conv3d", ["native", "2d"])
def test_deploy_parity_and_form(case, conv3d):
    cls, kw = DEPLOY_CASES[case]
    model = _tiny(cls, **kw)
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        expected = model(x)
        deployed = _form(model, conv3d)
        got = deployed(x)
    assert rel_err(got, expected) < 1e-4
    kinds = {type(m) for m in deployed.modules()}
    assert nn.BatchNorm3d not in kinds, "every BatchNorm must be folded"
    assert all(getattr(b, "gamma_1", None) is None for b in deployed.modules() if hasattr(b, "gamma_1"))
    assert (nn.Conv3d in kinds) == (conv3d == "native")
    assert (Conv3dAs2d in kinds) == (conv3d == "2d")
    assert not any(p.requires_grad for p in deployed.parameters())
    # The original model is untouched.
    assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules())


@pytest.mark.parametrize(
    "kernel,stride,padding,groups",
    [
        ((3, 4, 4), (2, 4, 4), (1, 0, 0), 1),  # UniFormer stem
        ((3, 3, 3), (2, 2, 2), (1, 1, 1), 1),  # light stem, temporal stride 2
        ((5, 5, 5), (1, 1, 1), (2, 2, 2), 8),  # depthwise local MHRA
        ((1, 2, 2), (1, 2, 2), (0, 0, 0), 1),  # patch merging
        ((3, 3, 3), (1, 1, 1), (1, 1, 1), 4),  # grouped, not depthwise
        ((3, 3, 3), (2, 1, 1), (1, 1, 1), 8),  # depthwise, temporal stride 2
        ((3, 3, 3), (1, 1, 1), (2, 1, 1), 8),  # depthwise, padding over half the kernel (padded form)
    ],
)
@pytest.mark.parametrize("frames", [1, 5, 8])
@pytest.mark.parametrize("batch", [1, 2])
def test_conv3d_as_2d(kernel, stride, padding, groups, frames, batch):
    torch.manual_seed(1)
    conv = nn.Conv3d(8, 16, kernel, stride, padding, groups=groups)
    x = torch.randn(batch, 8, frames, 20, 20)

    def frames_of(clip):  # (B, C, T, H, W) -> (B*T, C, H, W)
        return clip.transpose(1, 2).flatten(0, 1)

    with torch.no_grad():
        expected = conv(x)
        assert rel_err(Conv3dAs2d(conv)(x), expected) < 1e-5
        assert rel_err(Conv3dAs2d(conv)(frames_of(x), batch), frames_of(expected)) < 1e-5


def test_depthwise_conv3d_as_2d_skips_padding_taps():
    torch.manual_seed(1)
    conv = nn.Conv3d(8, 8, 5, padding=2, groups=8)
    as_2d = Conv3dAs2d(conv)
    frames_read = []
    for tap in as_2d.taps:
        tap.register_forward_hook(lambda module, args, out: frames_read.append(args[0].shape[0]))
    x = torch.randn(2, 8, 4, 10, 10)
    frames = x.transpose(1, 2).flatten(0, 1)
    with torch.no_grad():
        expected = conv(x)
        assert rel_err(as_2d(frames, 2), expected.transpose(1, 2).flatten(0, 1)) < 1e-5
        assert sum(frames_read) == 2 * 14  # of 4 frames x 5 taps, 6 fall on temporal padding
        # on clips each tap convolves every frame once (one layout conversion in XNNPACK)
        frames_read.clear()
        assert rel_err(as_2d(x), expected) < 1e-5
        assert frames_read == [2 * 4] * 5


def test_deploy_float_depthwise_folds_position_residuals_when_per_channel_safe():
    model = _tiny(UniFormerLight, **TINY_LIGHT)
    x = torch.randn(2, 3, 8, 64, 64)
    kept = frame_batched(model, per_channel_safe=True)
    folded = frame_batched(model, per_channel_safe=True, float_depthwise=True)

    def residuals(form):
        return [m.pos_embed_residual for m in form.modules() if hasattr(m, "pos_embed_residual")]

    assert residuals(kept) and all(residuals(kept))
    assert len(residuals(folded)) == len(residuals(kept)) and not any(residuals(folded))
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) < 1e-4
    # only the position embeddings' kernels differ: by 1, at one tap of each channel
    before, after = kept.state_dict(), folded.state_dict()
    differing = [k for k in after if not torch.equal(after[k], before[k])]
    assert differing and all("pos_embed" in k for k in differing)
    for k in differing:
        change = (after[k] - before[k]).flatten(1)
        assert torch.allclose(change.sum(1), torch.ones(len(change))) and (change.abs() > 0.5).sum(1).eq(1).all()


@pytest.mark.parametrize(
    "kernel,stride,padding",
    [
        ((3, 4, 4), (2, 4, 4), (1, 0, 0)),  # UniFormer stem
        ((3, 3, 3), (1, 2, 2), (1, 1, 1)),  # light stem, first convolution
        ((1, 2, 2), (1, 2, 2), (0, 0, 0)),  # no temporal extent
    ],
)
@pytest.mark.parametrize("frames", [1, 5, 8])
@pytest.mark.parametrize("batch", [1, 2])
def test_time_unrolled_conv(kernel, stride, padding, frames, batch):
    torch.manual_seed(1)
    conv = nn.Conv3d(3, 16, kernel, stride, padding)
    x = torch.randn(batch, 3, frames, 20, 20)
    with torch.no_grad():
        expected = conv(x).transpose(1, 2).flatten(0, 1)  # frame-batched (B*T', C, H', W')
        assert rel_err(TimeUnrolledConv(Conv3dAs2d(conv), frames)(x), expected) < 1e-5
    with pytest.raises(ValueError, match="dense"):
        TimeUnrolledConv(Conv3dAs2d(nn.Conv3d(4, 4, 3, groups=4)), frames)


@pytest.mark.parametrize("case", list(DEPLOY_CASES))
def test_deploy_with_fixed_frames_takes_clips_in_the_stem(case):
    cls, kw = DEPLOY_CASES[case]
    model = _tiny(cls, **kw)
    x = torch.randn(2, 3, 8, 64, 64)
    deployed = frame_batched(model, 8, per_channel_safe=True)
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-4
    assert isinstance(deployed.patch_embed1.embed1.convs[0], TimeUnrolledConv)
    with pytest.raises(ValueError, match="clips of 8 frames, got 4"):
        deployed(x[:, :, :4])


def test_token_permutation_matches_gather_and_scatter():
    """Pruning blocks sort and unsort the tokens by row selections over all clips' tokens; the
    official code gathers and scatters them element-wise. Same values, any batch."""
    torch.manual_seed(0)
    tokens, scores = torch.randn(3, 10, 4), torch.rand(3, 10)
    order = torch.topk(scores, 10, dim=1).indices
    index = order.unsqueeze(-1).expand(3, 10, 4)
    flat_order = _flat_order(order)
    sorted_tokens = _permute_tokens(tokens, flat_order)
    assert torch.equal(sorted_tokens, torch.gather(tokens, 1, index))
    unsorted = _permute_tokens(2 * sorted_tokens, _inverse_order(flat_order))
    assert torch.equal(unsorted, torch.zeros_like(tokens).scatter(1, index, 2 * sorted_tokens))


@pytest.mark.parametrize("variant", ["s", "xxs"])
def test_torch_export(variant):
    torch.manual_seed(0)
    model = create_model(variant, num_classes=10).eval()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        expected = model(x)
    for m in (model, deploy(model), frame_batched(model)):
        program = torch.export.export(m, (x,))
        with torch.no_grad():
            assert rel_err(program.module()(x), expected) < 1e-4
    nodes = [n for n in program.graph.nodes if n.op == "call_function"]
    if variant != "s":
        # The light models' token pruning stays on portable kernels, which move the tokens by whole
        # rows (index_select); their element-wise gather and scatter are about 30x slower.
        elementwise = [
            n for n in nodes if str(n.target) in ("aten.gather.default", "aten.scatter.src") and n.meta["val"].ndim == 3
        ]
        assert not elementwise and "aten.index_select.default" in {str(n.target) for n in nodes}
        return
    # The XNNPACK form: no 5-D convolution, and none of the ops that XNNPACK leaves to slow portable
    # kernels in attention (strided head selection, broadcasting 4-D matmul, tensor creation).
    ops = {str(n.target) for n in nodes}
    assert "aten.bmm.default" in ops
    assert not ops & {
        "aten.conv3d.default",
        "aten.select.int",
        "aten.matmul.default",
        "aten.new_zeros.default",
        "aten.zeros.default",
    }, ops
    # Stages 1-2 run on frame-batched 4-D maps: the only 5-D values there are the clip's
    # conversion in and out, so XNNPACK keeps the span in its channels-last layout.
    in_conv_stages = [
        n for n in nodes if any(path.startswith("patch_embed1") for path, _ in n.meta["nn_module_stack"].values())
    ]
    five_d = [str(n.target) for n in in_conv_stages if n.meta["val"].ndim == 5]
    # stem, 3 + 4 local blocks of 25 Conv2d each, patch merging. On 4 frames the depthwise taps
    # that read real frames are 7 of 3 x 4 (3x3x3 position embedding) and 14 of 5 x 4 (5x5x5
    # kernel); 4 pointwise.
    assert sum("conv2d" in str(n.target) for n in in_conv_stages) == 1 + 3 * 25 + 1 + 4 * 25
    assert sorted(five_d) == ["aten.reshape.default", "aten.transpose.int", "aten.transpose.int"], five_d


def test_light_forward_is_pure_and_thread_safe():
    model = _tiny(UniFormerLight, **TINY_LIGHT)
    x = torch.randn(3, 3, 8, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        first = model(x)
        again = model(x)
        # Pruning decisions are per sample: a sample's logits do not depend on its batch-mates.
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    assert torch.equal(first, again)
    assert rel_err(alone, first) < 1e-5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    results, inputs = {}, [torch.randn(1, 3, 8, 64, 64) for _ in range(4)]

    def worker(i):
        with torch.no_grad():
            results[i] = model(inputs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with torch.no_grad():
        for i in range(4):
            assert torch.equal(results[i], model(inputs[i]))


@pytest.mark.parametrize(
    "cls,kw,shape,out_tokens",
    [
        (UniFormerLight, TINY_LIGHT, (1, 3, 5, 64, 80), None),
        (UniFormerLight, TINY_LIGHT, (1, 3, 1, 29, 29), None),
        (UniFormer, TINY, (1, 3, 16, 96, 96), None),
        (UniFormer, TINY, (2, 3, 3, 32, 48), None),
    ],
)
def test_odd_input_sizes(cls, kw, shape, out_tokens):
    model = _tiny(cls, **kw)
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], kw["num_classes"]) and torch.isfinite(out).all()


def test_light_training_mode_returns_both_heads():
    model = UniFormerLight(**TINY_LIGHT).train()
    out, cls_out = model(torch.randn(2, 3, 4, 64, 64))
    assert out.shape == cls_out.shape == (2, 10)


def test_bad_model_configs():
    with pytest.raises(ValueError, match="first stage-3 block must not prune"):
        UniFormerLight(**dict(TINY_LIGHT, prune_ratio=([], [], [0.5, 0.5], [0.5])))
    with pytest.raises(ValueError, match="last stage-3 block prunes"):
        UniFormerLight(**dict(TINY_LIGHT, prune_ratio=([], [], [1, 1], [0.5])))
    with pytest.raises(ValueError, match="scalar mlp_ratio"):
        UniFormer(**dict(TINY, mlp_ratio=[4, 4, 4, 4]))
    with pytest.raises(ValueError, match="expected a clip"):
        UniFormer(**TINY)(torch.randn(3, 8, 64, 64))


def test_official_yaml(tmp_path):
    yaml_text = """
MODEL:
  MODEL_NAME: Uniformer_light_ls_fp32
  NUM_CLASSES: 174
UNIFORMER:
  EMBED_DIM: [56, 112, 224, 448]
  DEPTH: [2, 5, 8, 2]
  HEAD_DIM: 28
  MLP_RATIO: 3
  INIT_VALUE: 0.1
  DROP_DEPTH_RATE: 0.05
"""
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    model = from_official_config(path)
    assert isinstance(model, UniFormerLight)
    assert model.head.out_features == 174
    assert model.blocks1[0].gamma_1.shape == (1, 56, 1, 1, 1)
    assert model.blocks4[0].mlp.fc1.out_features == 3 * 448
    keys = [k for k in model.state_dict() if ".gamma_" not in k]
    assert keys == list(create_model("xxs", num_classes=174).state_dict())


def test_official_config_errors(tmp_path):
    with pytest.raises(ValueError, match="MODEL.MODEL_NAME is missing"):
        from_official_config({"UNIFORMER": {}, "MODEL": {}})
    with pytest.raises(ValueError, match="'SlowFast' is not a UniFormer"):
        from_official_config({"MODEL": {"MODEL_NAME": "SlowFast"}})
    with pytest.raises(ValueError, match=r"one MLP ratio for every stage; UNIFORMER.MLP_RATIO \[4, 4, 3, 4\]"):
        from_official_config({"MODEL": {"MODEL_NAME": "Uniformer"}, "UNIFORMER": {"MLP_RATIO": [4, 4, 3, 4]}})
    with pytest.raises(ValueError, match="INPUT_CHANNEL_NUM \\[1\\] asks for 1 input channels"):
        from_official_config({"MODEL": {"MODEL_NAME": "Uniformer"}, "DATA": {"INPUT_CHANNEL_NUM": [1]}})
    with pytest.raises(ValueError, match="needs UNIFORMER.INIT_VALUE"):
        from_official_config({"MODEL": {"MODEL_NAME": "Uniformer_light_ls_fp32"}})
    with pytest.warns(UserWarning, match="does not know: NEW_THING"):
        from_official_config({"MODEL": {"MODEL_NAME": "Uniformer"}, "UNIFORMER": {"NEW_THING": 1}})
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        from_official_config(tmp_path / "nowhere.yaml")


# Official video configs, as released (model-relevant sections only; NUM_FRAMES does not change
# the model). Reference: the official classes' key lists and parameter counts (../shared/reference).
_S = {
    "EMBED_DIM": [64, 128, 320, 512],
    "DEPTH": [3, 4, 8, 3],
    "HEAD_DIM": 64,
    "MLP_RATIO": 4,
    "DROPOUT_RATE": 0,
    "ATTENTION_DROPOUT_RATE": 0,
    "DROP_DEPTH_RATE": 0.1,
    "SPLIT": False,
}
_FINE_TUNE = {
    **_S,
    "MLP_RATIO": [4.0, 4.0, 4.0, 4.0],
    "DROP_DEPTH_RATE": 0.2,
    "HEAD_DROPOUT_RATE": 0,
    "PRETRAIN_NAME": "uniformer_small_k400_16x4",
}
_XXS = {
    "EMBED_DIM": [56, 112, 224, 448],
    "DEPTH": [2, 5, 8, 2],
    "HEAD_DIM": 28,
    "MLP_RATIO": 3,
    "DROP_DEPTH_RATE": 0.05,
}
_XS = {
    "EMBED_DIM": [64, 128, 256, 512],
    "DEPTH": [3, 5, 9, 3],
    "HEAD_DIM": 32,
    "MLP_RATIO": 3,
    "PRUNE_RATIO": [[], [], [1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5]],
    "TRADE_OFF": [[], [], [1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5]],
}
OFFICIAL_CONFIGS = {
    **{
        f"uniformer_s{t}_k400": ("S", "Uniformer", dict(_S, PRETRAIN_NAME="uniformer_small_in1k"), 400, t)
        for t in (8, 16, 32)
    },
    **{
        f"uniformer_b{t}_k400": ("B", "Uniformer", dict(_S, DEPTH=[5, 8, 20, 7], DROP_DEPTH_RATE=0.3), 400, t)
        for t in (8, 16, 32)
    },
    "uniformer_b16_k600": ("B", "Uniformer", dict(_S, DEPTH=[5, 8, 20, 7]), 600, 16),
    "uniformer_s16x4_ucf101_prek400": ("S", "Uniformer", _FINE_TUNE, 101, 16),
    "uniformer_s16x4_hmdb51_prek400": ("S", "Uniformer", _FINE_TUNE, 51, 16),
    "uniformer_xxs8x160_k400": ("XXS", "Uniformer_light", _XXS, 400, 8),
    "uniformer_xxs4x128_k400 (LayerScale)": ("XXS", "Uniformer_light_ls_fp32", dict(_XXS, INIT_VALUE=0.1), 400, 4),
    "uniformer_xs32x192_k400": ("XS", "Uniformer_light_fp32", _XS, 400, 32),
    # Configs that omit keys: the official defaults (S) fill them in.
    "no UNIFORMER section": ("S", "Uniformer", {}, 400, 8),
    **{f"S without {key}": ("S", "Uniformer", {k: v for k, v in _S.items() if k != key}, 400, 8) for key in _S},
}


@pytest.mark.parametrize("name", list(OFFICIAL_CONFIGS))
def test_official_configs_build_the_official_models(name, reference_dir):
    variant, cls, uniformer, classes, frames = OFFICIAL_CONFIGS[name]
    config = {
        "MODEL": {"MODEL_NAME": cls, "NUM_CLASSES": classes, "ARCH": "uniformer"},
        "DATA": {"NUM_FRAMES": frames, "INPUT_CHANNEL_NUM": [3]},
        "UNIFORMER": uniformer,
    }
    model = from_official_config(config)
    official = json.loads((reference_dir / f"keys_{variant}.json").read_text())
    stats = json.loads((reference_dir / "stats.json").read_text())["variants"][variant]
    mine = model.state_dict()
    layer_scale = cls == "Uniformer_light_ls_fp32"
    names = [k for k in mine if ".gamma_" not in k] if layer_scale else list(mine)
    assert names == [k for k, _ in official]
    for key, shape in official:
        want = [classes, *shape[1:]] if key.startswith(("head.", "head_cls.")) else shape
        assert list(mine[key].shape) == want, key
    params = sum(p.numel() for n, p in model.named_parameters() if ".gamma_" not in n)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("head.", "head_cls.")))
    assert params - head == stats["params"] - head * 400 // classes


def test_official_config_quirks():
    plain = {"MODEL": {"MODEL_NAME": "Uniformer_light"}, "UNIFORMER": dict(_XXS, STD=True, SPLIT=True)}
    # Uniformer_light reads neither STD nor SPLIT; the fp32 classes honour STD.
    assert list(from_official_config(plain).state_dict()) == list(create_model("xxs").state_dict())
    fp32 = {"MODEL": {"MODEL_NAME": "Uniformer_light_fp32"}, "UNIFORMER": dict(_XXS, STD=True)}
    assert from_official_config(fp32).patch_embed2.proj.weight.shape[2] == 3
    with pytest.raises(ValueError, match="SPLIT=True"):
        from_official_config({"MODEL": {"MODEL_NAME": "Uniformer_light_fp32"}, "UNIFORMER": dict(_XXS, SPLIT=True)})


def test_pruning_with_every_dropped_score_zero_stays_finite():
    """Peaked attention can underflow every pruned token's score to 0: the representative's
    weights must not become 0 / 0 (NaN logits); scores with a normal sum are untouched (the
    official fixtures above)."""
    torch.manual_seed(0)
    model = _tiny(UniFormerLight, **TINY_LIGHT).eval()
    pruning = next(b for b in list(model.blocks3) + list(model.blocks4) if b.prune_ratio < 1)

    def one_hot_scores(module, args):
        cls, x, scores = args
        return cls, x, torch.zeros_like(scores).index_fill_(1, torch.tensor([0]), 1.0)

    pruning.register_forward_pre_hook(one_hot_scores)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 8, 64, 64))).all()
