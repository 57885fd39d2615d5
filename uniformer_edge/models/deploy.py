"""Inference-only deploy form of a UniFormer model.

`deploy(model)` returns a copy with every eval-time affine folded into a neighbouring
weight: BatchNorm into the following 1x1x1 convolution (or the preceding convolution in
the light stem, or the classifier after pooling), the position-embedding residual into
its depthwise kernel, and LayerScale into the branch's last projection. With
`per_channel_safe=True` only the folds that scale whole output channels are made (the
form that quantizes well per channel); the BatchNorms it keeps become plain per-channel
multiply-adds (`ChannelAffine`). Runtime-specific forms built on it live in
`uniformer_edge.forms`.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .uniformer import CBlock, ConvStem, DropPath, SABlock

__all__ = ["deploy", "ChannelAffine"]


def _bn_affine(bn: nn.BatchNorm3d) -> tuple[Tensor, Tensor]:
    """BatchNorm in eval as y = scale * x + shift, per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def _fold_bn_into_next(bn: nn.BatchNorm3d, layer: nn.Module):
    """layer(bn(x)) -> layer'(x) for a 1x1x1 Conv3d or a Linear consuming the BN output."""
    scale, shift = _bn_affine(bn)
    w = layer.weight
    flat = w.reshape(w.shape[0], w.shape[1])  # 1x1x1 conv or linear: (out, in)
    layer.bias.add_(flat @ shift)
    w.mul_(scale.reshape((1, -1) + (1,) * (w.ndim - 2)))


@torch.no_grad()
def _fold_bn_into_prev(conv: nn.Conv3d, bn: nn.BatchNorm3d):
    """bn(conv(x)) -> conv'(x)."""
    scale, shift = _bn_affine(bn)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1, 1))
    conv.bias.mul_(scale).add_(shift)


@torch.no_grad()
def _fold_scale_into(layer: nn.Module, gamma: Tensor):
    """gamma * layer(x) -> layer'(x), per output channel."""
    g = gamma.reshape(-1)
    layer.weight.mul_(g.reshape((-1,) + (1,) * (layer.weight.ndim - 1)))
    layer.bias.mul_(g)


@torch.no_grad()
def _fold_identity_into_depthwise(conv: nn.Conv3d):
    """x + dwconv(x) -> dwconv'(x): add 1 at the centre tap of every channel's kernel."""
    kt, kh, kw = conv.kernel_size
    conv.weight[:, 0, kt // 2, kh // 2, kw // 2] += 1.0


class ChannelAffine(nn.Module):
    """An eval-mode BatchNorm3d as y = scale * x + shift. Same arithmetic, but a graph without
    batch_norm nodes skips torchao's conv-BatchNorm QAT folding in `convert_pt2e` (about a
    hundred pattern exports, tens of seconds, and nothing to match in a 3-D model) and has no
    train-mode statistics that QAT could move."""

    def __init__(self, bn: nn.BatchNorm3d):
        super().__init__()
        scale, shift = _bn_affine(bn)
        self.scale = nn.Parameter(scale.detach().reshape(-1, 1, 1, 1))
        self.shift = nn.Parameter(shift.detach().reshape(-1, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def _fold_block(blk: nn.Module, per_channel_safe: bool, float_depthwise: bool):
    if float_depthwise or not per_channel_safe:
        _fold_identity_into_depthwise(blk.pos_embed)
        blk.pos_embed_residual = False
    if isinstance(blk, CBlock):
        if per_channel_safe:
            blk.norm1, blk.norm2 = ChannelAffine(blk.norm1), ChannelAffine(blk.norm2)
        else:
            _fold_bn_into_next(blk.norm1, blk.conv1)
            _fold_bn_into_next(blk.norm2, blk.mlp.fc1)
            blk.norm1, blk.norm2 = nn.Identity(), nn.Identity()
        last_of_branch = (blk.conv2, blk.mlp.fc2)
    else:
        last_of_branch = (blk.attn.proj, blk.mlp.fc2)
    for layer, gamma_name in zip(last_of_branch, ("gamma_1", "gamma_2")):
        gamma = getattr(blk, gamma_name)
        if gamma is not None:
            _fold_scale_into(layer, gamma)
            setattr(blk, gamma_name, None)


def _fold_head(model: nn.Module):
    """norm(BN) -> mean over positions -> [pre_logits] -> head: the BN commutes with the mean."""
    first = model.pre_logits.fc if isinstance(model.pre_logits, nn.Sequential) else model.head
    if isinstance(first, nn.Linear):
        _fold_bn_into_next(model.norm, first)
        model.norm = nn.Identity()


def _drop_training_only(module: nn.Module):
    """Dropout and stochastic depth are identities in eval: remove them from the graph."""
    for name, child in module.named_children():
        if isinstance(child, (nn.Dropout, DropPath)):
            setattr(module, name, nn.Identity())
        else:
            _drop_training_only(child)


def deploy(model: nn.Module, per_channel_safe: bool = False, float_depthwise: bool = False) -> nn.Module:
    """Return an inference-only copy of a UniFormer / UniFormerLight with eval-time affines
    folded (see module docstring). The input model is left untouched.

    `per_channel_safe` keeps only the folds that scale whole output channels (BatchNorm into
    the preceding convolution, LayerScale). The others scale input channels or add 1 to one
    tap of each depthwise kernel, which stretches the per-output-channel weight range and
    costs int8 precision; quantized graphs use this form.

    `float_depthwise` is for runtimes that keep depthwise convolutions float in quantized
    programs (XNNPACK's int8 program): the position-embedding residuals then fold into their
    kernels even when `per_channel_safe`, which costs nothing there and saves one add over the
    residual stream per block."""
    out = copy.deepcopy(model).eval()
    for module in list(out.modules()):
        if isinstance(module, (CBlock, SABlock)):
            _fold_block(module, per_channel_safe, float_depthwise)
        elif isinstance(module, ConvStem):
            _fold_bn_into_prev(module.proj[0], module.proj[1])
            _fold_bn_into_prev(module.proj[3], module.proj[4])
            module.proj[1], module.proj[4] = nn.Identity(), nn.Identity()
    if not per_channel_safe:
        _fold_head(out)
    elif isinstance(out.norm, nn.BatchNorm3d):
        out.norm = ChannelAffine(out.norm)
    _drop_training_only(out)
    if hasattr(out, "head_cls"):  # train-only class-token head of the light models
        out.norm_cls, out.head_cls = nn.Identity(), nn.Identity()
    out.requires_grad_(False)
    return out
