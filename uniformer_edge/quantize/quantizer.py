"""The PT2E quantizer: annotates convolutions (depthwise ones a group of their own), linear
layers and attention matrix products of an exported UniFormer graph according to a `QuantConfig`.

Weights: symmetric int8 (or int4) per output channel. Activations: int8 per tensor (affine, or
symmetric for OpenVINO: `QuantConfig.activation_scheme`), observed at the inputs of quantized
ops, so everything between two quantized ops (LayerNorm, Softmax, GELU, residual adds, token
pruning) stays float.
"""

from __future__ import annotations

import fnmatch
from typing import Optional

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.fake_quantize import FakeQuantize
from torchao.quantization.pt2e.observer import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer

from ..errors import InputError
from .config import OVERFLOW_SAFE_WEIGHT_MAX, QuantConfig
from .observers import PercentileObserver

__all__ = ["UniformerQuantizer", "op_kind", "module_path", "QuantizableOp", "quantizable_ops"]

_OP_KINDS = {
    torch.ops.aten.conv1d.default: "conv",
    torch.ops.aten.conv2d.default: "conv",
    torch.ops.aten.conv3d.default: "conv",
    torch.ops.aten.linear.default: "linear",
    torch.ops.aten.matmul.default: "matmul",
    torch.ops.aten.bmm.default: "matmul",
}


def op_kind(node: Node) -> Optional[str]:
    kind = _OP_KINDS.get(node.target) if node.op == "call_function" else None
    if kind == "conv" and _is_depthwise(node):
        return "depthwise"
    return kind


def _is_depthwise(node: Node) -> bool:
    """A convolution with one input channel per group (and more than one group)."""
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    weight = node.args[1].meta.get("val") if isinstance(node.args[1], Node) else None
    return groups > 1 and weight is not None and weight.shape[1] == 1


def module_path(node: Node) -> list[str]:
    """Module names enclosing an exported op, outermost first (e.g. blocks3, blocks3.0,
    blocks3.0.attn, blocks3.0.attn.qkv)."""
    stack = node.meta.get("nn_module_stack") or {}
    return [fqn for fqn, _ in stack.values() if fqn]


class QuantizableOp:
    """A quantizable op of the graph with the name people know it by."""

    def __init__(self, node: Node):
        self.node, self.kind = node, op_kind(node)
        path = module_path(node)
        owner = path[-1] if path else node.name
        # Matrix products live inside the attention module: name them after their role.
        self.name = f"{owner}.{node.name}" if self.kind == "matmul" else owner
        self.path = path

    def matches(self, pattern: str) -> bool:
        return any(fnmatch.fnmatchcase(p, pattern) for p in self.path + [self.name])


def quantizable_ops(gm: GraphModule) -> list[QuantizableOp]:
    return [QuantizableOp(n) for n in gm.graph.nodes if op_kind(n) is not None]


def _activation_levels(cfg: QuantConfig) -> dict:
    """dtype, integer range and scheme of static int8 activations (see `config.ACTIVATION_SCHEMES`)."""
    if cfg.activation_scheme == "symmetric":
        return dict(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_tensor_symmetric)
    return dict(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine)


def _activation_ctr(cfg: QuantConfig):
    if cfg.activations == "dynamic":
        return PlaceholderObserver.with_args(dtype=torch.int8, quant_min=-128, quant_max=127, is_dynamic=True)
    if cfg.qat:  # ranges track the activations as the weights move
        return FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **_activation_levels(cfg))
    # dtype, range and scheme reach these observers from the QuantizationSpec at prepare
    return {
        "minmax": MinMaxObserver.with_args(),
        "moving_average": MovingAverageMinMaxObserver.with_args(averaging_constant=0.01),
        "percentile": PercentileObserver.with_args(percentile=cfg.percentile),
        "mse": HistogramObserver.with_args(),
    }[cfg.observer]


class UniformerQuantizer(Quantizer):
    """Annotate the graph per `QuantConfig`; `keep_float` patterns (fnmatch on module names,
    e.g. "patch_embed1*", "head", "blocks3.*.attn*") leave matching ops in float."""

    def __init__(self, cfg: QuantConfig):
        super().__init__()
        self.cfg = cfg
        self.quantized: list[str] = []
        self.kept_float: list[str] = []

    def _weight_spec(self) -> QuantizationSpec:
        qmax = OVERFLOW_SAFE_WEIGHT_MAX if self.cfg.overflow_safe_weights else 2 ** (self.cfg.weight_bits - 1) - 1
        observer = MovingAveragePerChannelMinMaxObserver if self.cfg.qat else PerChannelMinMaxObserver
        ctr = (
            FakeQuantize.with_args(
                observer=observer,
                quant_min=-qmax,
                quant_max=qmax,
                dtype=torch.int8,
                qscheme=torch.per_channel_symmetric,
                ch_axis=0,
            )
            if self.cfg.qat
            else observer
        )
        return QuantizationSpec(
            dtype=torch.int8,
            quant_min=-qmax,
            quant_max=qmax,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
            observer_or_fake_quant_ctr=ctr,
        )

    def _activation_spec(self) -> Optional[QuantizationSpec]:
        if self.cfg.activations is None:
            return None
        dynamic = self.cfg.activations == "dynamic"
        levels = (
            dict(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine)
            if dynamic
            else _activation_levels(self.cfg)
        )
        return QuantizationSpec(**levels, is_dynamic=dynamic, observer_or_fake_quant_ctr=_activation_ctr(self.cfg))

    def annotate(self, model: GraphModule) -> GraphModule:
        cfg = self.cfg
        ops = quantizable_ops(model)
        unmatched = [p for p in cfg.keep_float if not any(op.matches(p) for op in ops)]
        if unmatched:
            names = sorted({op.name for op in ops})
            raise InputError(
                f"--keep-float pattern(s) {', '.join(unmatched)} match no quantizable layer "
                f"(layers look like: {', '.join(names[:6])}, ...)"
            )
        weight, act = self._weight_spec(), self._activation_spec()
        for op in ops:
            if op.kind not in cfg.ops or any(op.matches(p) for p in cfg.keep_float):
                self.kept_float.append(op.name)
                continue
            node, qspecs = op.node, {}
            if op.kind == "matmul":
                # Both operands are activations; products of two run-time tensors cannot be
                # weight-only or dynamic-linear quantized.
                if act is None or cfg.activations == "dynamic":
                    self.kept_float.append(op.name)
                    continue
                qspecs = {node.args[0]: act, node.args[1]: act}
            else:
                qspecs[node.args[1]] = weight
                # Dynamic recipes quantize linear activations at run time; convolutions keep
                # float activations there (no backend runs dynamically quantized Conv3d).
                if act is not None and not (cfg.activations == "dynamic" and op.kind in ("conv", "depthwise")):
                    qspecs[node.args[0]] = act
            node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=qspecs, _annotated=True)
            self.quantized.append(op.name)
        if not self.quantized:
            raise InputError("nothing left to quantize: every quantizable layer is kept float")
        return model

    def validate(self, model: GraphModule) -> None:
        pass
