"""The XNNPACK quantization target: PT2E quantization of the XNNPACK form
(`uniformer_edge.forms.xnnpack_form`) with ExecuTorch's XNNPACK quantizer, calibrated clip by
clip (the `.pte` has a static batch of one), optionally fine-tuned with fake quantization first;
and XNNPACK's weight-only quantization, which needs no calibration.

Exclusions go through composition, as torchao's `ComposableQuantizer` expects: `FloatOps`
annotates the ops that stay fp32 with an empty annotation before XNNPACK's quantizer runs, and
XNNPACK's annotators skip annotated ops. Which ops stay fp32, and why:
- depthwise convolutions: on x86, XNNPACK's fp32 depthwise kernels take less than half the time
  of its int8 ones, conversions included; so do the sums of their temporal taps and the
  concatenations of those sums;
- residual adds (`forms.is_residual_add`): the residual stream carries a few outlier channels,
  and one int8 scale per tensor for its sums leaves the typical channels a handful of levels,
  block after block;
- token scores (`forms.is_token_score_op`): one int8 scale cannot order scores that span orders
  of magnitude, and the pruning stays float everywhere in the toolkit;
- the pooled features (`forms.is_feature_pool`): left to follow the last stage's range, the
  average of its map would get that map's coarser scale; float, the classifier's input
  observer gives the features a range of their own;
- LayerNorms, spelled in ops XNNPACK runs (`LayerNormAsXnnpackOps`): their averaging products
  are not weight layers.
"""

from __future__ import annotations

import copy
from typing import Iterable, Optional

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node
from torch.utils.data import Dataset
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

from ..engine import init_distributed
from ..errors import InputError
from ..forms import (
    LayerNormAsXnnpackOps,
    is_depthwise_conv,
    is_feature_pool,
    is_residual_add,
    is_token_score_op,
    xnnpack_form,
)
from ..models import deploy
from .ptq import export_batch_dynamic
from .qat import QATSchedule, finetune

__all__ = [
    "FloatOps",
    "xnnpack_quantizer",
    "xnnpack_quantize",
    "xnnpack_weight_quantize",
    "xnnpack_program",
    "weight_layers",
    "XNNPACK_RECIPES",
    "WEIGHT_BITS",
]

# XNNPACK's qc8w and qc4w weight ranges.
WEIGHT_BITS = {8: (-127, 127), 4: (-8, 7)}
_aten = torch.ops.aten
# Ops that XNNPACK's quantizer gives their input's quantization parameters (it propagates them
# through these): they follow their input, float or int8.
_FOLLOW_INPUT = {
    _aten.slice.Tensor,
    _aten.view.default,
    _aten.reshape.default,
    _aten.transpose.int,
    _aten.permute.default,
    _aten.flatten.using_ints,
    _aten.squeeze.dim,
    _aten.mean.dim,
    _aten.mean.default,
    _aten.max_pool2d.default,
    _aten.adaptive_avg_pool2d.default,
    _aten.relu.default,
    _aten.hardtanh.default,
    _aten.dropout.default,
}
# Ops to whose outputs XNNPACK's quantizer gives quantization parameters of their own.
_OWN_OUTPUT_QPARAMS = {
    _aten.conv2d.default,
    _aten.linear.default,
    _aten.add.Tensor,
    _aten.mul.Tensor,
    _aten.cat.default,
    _aten.adaptive_avg_pool2d.default,
}


def _cat_qparam_source(cat: Node) -> Node:
    """The input whose quantization parameters a concatenation shares in XNNPACK's quantizer: the
    first one that reaches, through ops that follow their input, an op with parameters of its own."""
    for value in cat.args[0]:
        node = value
        while isinstance(node, Node) and node.op == "call_function":
            if node.target in _OWN_OUTPUT_QPARAMS:
                return value
            if node.target not in _FOLLOW_INPUT:
                break
            node = node.args[0]
    return cat.args[0][0]


def _float_ops(graph: GraphModule) -> set[Node]:
    """The ops of the XNNPACK form that its int8 program keeps fp32 (module docstring), in one
    pass in graph order: the marked roles, then sums and concatenations of fp32 values only, and
    the shape ops that follow an fp32 input."""
    floats: set[Node] = set()
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if is_token_score_op(node) or is_feature_pool(node) or is_residual_add(node) or is_depthwise_conv(node):
            floats.add(node)
        elif node.target == _aten.add.Tensor:
            if all(a in floats for a in node.args if isinstance(a, Node)):
                floats.add(node)
        elif node.target in _FOLLOW_INPUT and node.args and node.args[0] in floats:
            floats.add(node)
        elif node.target == _aten.cat.default and _cat_qparam_source(node) in floats:
            floats.add(node)
    return floats


class FloatOps(Quantizer):
    """Annotates the given ops (by default those of `_float_ops`) as handled, with no
    quantization specs: composed before a quantizer whose annotators skip annotated ops, it
    leaves them float."""

    def __init__(self, select=_float_ops):
        super().__init__()
        self.select = select

    def annotate(self, model: GraphModule) -> GraphModule:
        for node in self.select(model):
            node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
        return model

    def validate(self, model: GraphModule) -> None:
        pass


def _behind_float_ops(config, select=_float_ops) -> Quantizer:
    """ExecuTorch's XNNPACK quantizer with `config`, LayerNorms left float, behind
    `FloatOps(select)`."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer

    xnnpack = XNNPACKQuantizer().set_global(config).set_module_type(LayerNormAsXnnpackOps, None)
    return ComposableQuantizer([FloatOps(select), xnnpack])


def xnnpack_quantizer(qat: bool = False) -> Quantizer:
    """ExecuTorch's XNNPACK quantizer (symmetric per-channel int8 weights, per-tensor
    activations) behind `FloatOps`; `qat=True`: the same annotations with fake quantizers."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    return _behind_float_ops(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))


def _non_pointwise_convs(bits: int):
    def select(graph: GraphModule) -> set[Node]:
        # XNNPACK has no 4-bit convolution (such a .pte fails to load); the lowering rejects
        # dynamically quantized convolutions with kernels over 1x1 ("required rank 4 tensor to
        # use channels_last format"); depthwise convolutions stay fp32 as in the int8 program.
        return {
            n
            for n in graph.graph.nodes
            if n.target == torch.ops.aten.conv2d.default
            and (bits == 4 or is_depthwise_conv(n) or n.args[1].meta["val"].shape[-2:] != (1, 1))
        }

    return select


def xnnpack_weight_quantize(model: nn.Module, example: Tensor, bits: int) -> GraphModule:
    """Weight quantization of the XNNPACK form with no calibration: symmetric per-channel int8
    (`bits=8`) or 4-bit (`bits=4`) weights, whose inputs XNNPACK quantizes to int8 at every call
    with that call's range (its qd8-f32-qc8w / qc4w kernels). int8 covers the linear layers and
    the pointwise (1x1) convolutions; 4-bit the linear layers only."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if bits not in WEIGHT_BITS:
        raise ValueError(f"XNNPACK weight quantization has 8 or 4 bits, not {bits}")
    qmin, qmax = WEIGHT_BITS[bits]
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True, weight_qmin=qmin, weight_qmax=qmax)
    quantizer = _behind_float_ops(config, _non_pointwise_convs(bits))
    deployed = xnnpack_form(model, example.shape[2], per_channel_safe=True)
    prepared = prepare_pt2e(torch.export.export(deployed, (example[:1],)).module(), quantizer)
    with torch.no_grad():
        prepared(example[:1])  # the weight observers read the weights; activations need no ranges
    return convert_pt2e(prepared)


def _calibrate_clipwise(prepared, batches) -> None:
    seen = 0
    with torch.no_grad():
        for clips, _ in batches:
            for clip in clips:  # the program has a static batch of one
                prepared(clip[None])
                seen += 1
    if seen == 0:
        raise ValueError("the calibration set is empty")


def xnnpack_quantize(
    model: nn.Module,
    example: Tensor,
    batches: Iterable[tuple[Tensor, Tensor]],
    finetuning: Optional[tuple[QATSchedule, Dataset]] = None,
    training: Optional[dict] = None,
) -> GraphModule:
    """int8 PT2E quantization of the XNNPACK form, calibrated clip by clip. With
    `finetuning=(schedule, train_set)` the weights are first fine-tuned with fake quantization
    (`_quantization_aware_weights`), and `training` (a dict) receives the fine-tuning's figures.
    Prepared on the batch-of-one export, whose frame slices the quantizer keeps int8 (on a
    batch-dynamic export it leaves them fp32, which is slower)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    deployed = xnnpack_form(model, example.shape[2], per_channel_safe=True)
    if finetuning is not None:
        trained = _quantization_aware_weights(model, deployed, example, batches, *finetuning)
        if training is not None:
            training.update(trained)
    prepared = prepare_pt2e(torch.export.export(deployed, (example[:1],)).module(), xnnpack_quantizer())
    _calibrate_clipwise(prepared, batches)
    return convert_pt2e(prepared)


def _quantization_aware_weights(
    model: nn.Module, deployed: nn.Module, example: Tensor, batches, schedule: QATSchedule, train_set: Dataset
) -> None:
    """Fine-tune the weights of `deployed` (in place) under the same quantizer with fake
    quantizers, towards the float model (`uniformer_edge.quantize.qat.finetune`), the activation
    ranges fixed at calibrated ones (a moving min/max would widen them). It trains a
    batch-dynamic export of the form (clip by clip, the batch-of-one graph trains about ten times
    slower), on which the quantizer leaves the frame slices fp32: the training graph is close to
    the program, not the same. The trained weights then go through the calibration of
    `xnnpack_quantize`, so the program is the calibrated one's graph."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    graph = export_batch_dynamic(deployed, example).module()
    observed = prepare_pt2e(copy.deepcopy(graph), xnnpack_quantizer())
    _calibrate_clipwise(observed, batches)
    student = prepare_qat_pt2e(graph, xnnpack_quantizer(qat=True))
    _calibrate_clipwise(student, batches)  # weight ranges, and any activation without a calibrated twin
    _fix_activation_ranges(student, observed)
    allow_exported_model_train_eval(student)
    for p in student.parameters():
        p.requires_grad_(True)
    figures = finetune(student, deploy(model), train_set, schedule, init_distributed())
    trained = dict(student.named_parameters())  # the export keeps the module's parameter names
    with torch.no_grad():
        for name, param in deployed.named_parameters():
            param.copy_(trained[name])
    return figures


def _observers_by_input(graph: GraphModule) -> dict:
    """{name of the observed node: observer module} for the nodes watched by one observer."""
    found: dict[str, list] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module" and node.target.startswith("activation_post_process_"):
            found.setdefault(node.args[0].name, []).append(getattr(graph, node.target))
    return {name: mods[0] for name, mods in found.items() if len(mods) == 1}


def _fix_activation_ranges(student: GraphModule, observed: GraphModule) -> None:
    """Give every per-tensor fake quantizer of `student` the quantization parameters of the
    calibrated observer on the same node of `observed`, and stop it observing. The fused fake
    quantizer recomputes its scale from its running min/max at every call, so those are set to
    the range the calibrated scale and zero point represent."""
    calibrated = _observers_by_input(observed)
    for name, fake_quant in _observers_by_input(student).items():
        if fake_quant.qscheme != torch.per_tensor_affine or name not in calibrated:
            continue
        scale, zero_point = calibrated[name].calculate_qparams()
        scale, zero_point = float(scale), int(zero_point)
        fake_quant.activation_post_process.min_val.fill_((fake_quant.quant_min - zero_point) * scale)
        fake_quant.activation_post_process.max_val.fill_((fake_quant.quant_max - zero_point) * scale)
        fake_quant.disable_observer()


# The quantize recipes the XNNPACK target has: static int8 (calibrated, or fine-tuned with QAT)
# and weight-only int8/int4 (XNNPACK quantizes activations at every call).
XNNPACK_RECIPES = ("w8a8", "w8", "w4")


def weight_layers(graph: GraphModule) -> dict[str, list[str]]:
    """The convolutions and linear layers of a converted graph, by whether their weights are
    integers (read through a dequantize op) or float."""
    layers: dict[str, list[str]] = {"quantized": [], "float": []}
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target in (_aten.conv2d.default, _aten.linear.default):
            weight = node.args[1]
            quantized = isinstance(weight, Node) and "dequantize" in str(weight.target)
            layers["quantized" if quantized else "float"].append(node.name)
    return layers


def xnnpack_program(
    model: nn.Module,
    example: Tensor,
    batches: Iterable[tuple[Tensor, Tensor]],
    recipe: str,
    finetuning: Optional[tuple[QATSchedule, Dataset]] = None,
    training: Optional[dict] = None,
):
    """The program of the XNNPACK target for `recipe` (`XNNPACK_RECIPES`), as a `torch.export`
    program with a static batch of one, which `export --format executorch` lowers as it is;
    and its layers by weight precision. `training` receives the QAT figures."""
    if recipe not in XNNPACK_RECIPES:
        raise InputError(f"the xnnpack target has recipes {', '.join(XNNPACK_RECIPES)}, not {recipe}")
    if recipe == "w8a8":
        graph = xnnpack_quantize(model, example, batches, finetuning, training)
    elif finetuning is not None:
        raise InputError(f"QAT fine-tunes int8 activations: the xnnpack target's {recipe} quantizes weights only")
    else:
        graph = xnnpack_weight_quantize(model, example, bits=int(recipe[1:]))
    return torch.export.export(graph, (example[:1],)), weight_layers(graph)
