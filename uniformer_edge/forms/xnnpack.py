"""The XNNPACK form: the frame-batched form (`frame_batched`) with every LayerNorm spelled in
ops XNNPACK runs, and the roles of its ops that XNNPACK's quantization treats apart (depthwise
convolutions, token scores, residual adds)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.uniformer import EvoSABlock, FeaturePool, SABlock, TokenScoreOp
from .frames import FrameEmbed, ResidualAdd, frame_batched

__all__ = [
    "LayerNormAsXnnpackOps",
    "xnnpack_form",
    "XnnpackHalf",
    "is_depthwise_conv",
    "is_token_score_op",
    "is_feature_pool",
    "is_residual_add",
]


class LayerNormAsXnnpackOps(nn.Module):
    """LayerNorm over the last dimension from operators XNNPACK runs. XNNPACK has no LayerNorm:
    `native_layer_norm` stays on ExecuTorch's portable kernel and splits the delegated graph at
    each instance. The means over channels are products with a constant 1/C vector (XNNPACK's
    mean reduces only the spatial dims of 4-D maps); the centred two-pass variance keeps the
    LayerNorm's precision.

    With `channels_first=True` it normalises dim 1 of (N, C, H, W) maps instead, the means
    being 1x1 convolutions, so XNNPACK keeps the maps channels-last (permuting the channels last
    and back around the norm made it transpose every depthwise tap slice read from them)."""

    def __init__(self, norm: nn.LayerNorm, channels_first: bool = False):
        super().__init__()
        if len(norm.normalized_shape) != 1 or not norm.elementwise_affine:
            raise ValueError(f"only affine LayerNorms over the last dimension are rewritten, got {norm}")
        channels = norm.normalized_shape[0]
        self.eps, self.channels_first = norm.eps, channels_first
        # 4-D per-channel constants for channels-first maps: XNNPACK converts only 4-D operands
        # of a channels-last op to its layout and would otherwise run the op channels-first.
        # The same shape is the averaging 1x1 convolution's weight; a linear layer's is (1, C).
        shape = (1, channels, 1, 1) if channels_first else (channels,)
        self.register_buffer("average", torch.full(shape if channels_first else (1, channels), 1.0 / channels))
        self.weight = nn.Parameter(norm.weight.detach().clone().reshape(shape))
        self.bias = nn.Parameter(norm.bias.detach().clone().reshape(shape))

    def forward(self, x: Tensor) -> Tensor:
        mean = F.conv2d if self.channels_first else F.linear
        centred = x - mean(x, self.average)
        variance = mean(centred * centred, self.average)
        return centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias


def _replace_layer_norms(module: nn.Module):
    for name, child in module.named_children():
        if isinstance(child, FrameEmbed) and isinstance(child.norm, nn.LayerNorm):
            child.set_norm(LayerNormAsXnnpackOps(child.norm, channels_first=True), takes_maps=True)
        elif isinstance(child, nn.LayerNorm):
            setattr(module, name, LayerNormAsXnnpackOps(child))
        else:
            _replace_layer_norms(child)


def xnnpack_form(model: nn.Module, frames: int, per_channel_safe: bool = False) -> nn.Module:
    """The deploy form for clips of `frames` frames, `frame_batched(model, frames)` with
    every LayerNorm as `LayerNormAsXnnpackOps`: XNNPACK delegates all of UniFormer but its final
    pooling (two delegate calls); the light models' token pruning stays on portable kernels.
    The position embeddings' residuals fold into their kernels even when `per_channel_safe`
    (`float_depthwise`): the int8 program keeps depthwise convolutions fp32
    (`uniformer_edge.quantize.xnnpack`)."""
    deployed = frame_batched(model, frames, per_channel_safe=per_channel_safe, float_depthwise=True)
    _replace_layer_norms(deployed)
    return deployed.requires_grad_(False)


def is_depthwise_conv(node) -> bool:
    args = node.args
    return (
        node.target == torch.ops.aten.conv2d.default
        and len(args) > 6
        and args[6] > 1
        and args[6] == args[1].meta["val"].shape[0]
    )  # groups == output channels


def _inside(node, cls) -> bool:
    """Whether the model computes `node` inside a module of class `cls`: the export names each
    op's enclosing modules in `nn_module_stack`."""
    owner = f"{cls.__module__}.{cls.__qualname__}"
    return any(kind == owner for _, kind in (node.meta.get("nn_module_stack") or {}).values())


def is_token_score_op(node) -> bool:
    """An op on the light models' token scores: one the model computes inside a `TokenScoreOp`."""
    return _inside(node, TokenScoreOp)


def is_feature_pool(node) -> bool:
    """The average of the last stage's map that the classifier reads (`FeaturePool`)."""
    return _inside(node, FeaturePool)


# Modules whose own forward adds only residual connections: the form's marker, and the official
# global blocks, which the form runs as they are (their layers' inner sums are in their layers).
_RESIDUAL_OWNERS = {f"{c.__module__}.{c.__qualname__}" for c in (ResidualAdd, SABlock, EvoSABlock)}


def is_residual_add(node) -> bool:
    """An add on a block's residual stream. The export names each op's enclosing modules in
    `nn_module_stack`, innermost last."""
    stack = node.meta.get("nn_module_stack")
    return node.target == torch.ops.aten.add.Tensor and bool(stack) and list(stack.values())[-1][1] in _RESIDUAL_OWNERS


class XnnpackHalf(nn.Module):
    """The XNNPACK form in fp16 behind fp32 inputs and outputs, so the `.pte` takes the same
    clips as every other artifact: half the size of the fp32 program. XNNPACK computes fp16
    natively on Arm (ARMv8.2-A and later); on x86 the program runs slower than the fp32 one, and
    its fp16 GELUs stay on ExecuTorch's portable kernels."""

    def __init__(self, model: nn.Module, frames: int):
        super().__init__()
        self.model = xnnpack_form(model, frames).half()

    def forward(self, video: Tensor) -> Tensor:
        return self.model(video.half()).float()
