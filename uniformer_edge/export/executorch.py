"""ExecuTorch export: XNNPACK-delegated `.pte` programs, fp32 and int8, from the XNNPACK form
(`xnnpack_form`: the deploy form with `conv3d="2d"`, as XNNPACK has no 5-D convolution, and
LayerNorms spelled in ops XNNPACK runs), run with the ExecuTorch runtime for parity."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from .._io import atomic_write
from ..engine import init_distributed
from ..models import deploy
from ..models.deploy import FrameCBlock, FrameEmbed
from ..models.uniformer import EvoSABlock, SABlock
from ..quantize.ptq import export_batch_dynamic
from ..quantize.qat import QATSchedule, finetune

__all__ = ["executorch_available", "LayerNormAsXnnpackOps", "xnnpack_form", "XnnpackHalf",
           "lower_executorch", "xnnpack_quantize", "xnnpack_weight_quantize", "load_executorch", "run_executorch"]


def executorch_available() -> Optional[str]:
    """None when ExecuTorch can export and run here, else the reason it cannot."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.runtime import Runtime  # noqa: F401
    except Exception as err:  # ImportError, or a runtime library that fails to load
        return f"ExecuTorch is not installed ({err.__class__.__name__}: {err}); pip install 'uniformer-edge[executorch]'"
    return None


class LayerNormAsXnnpackOps(nn.Module):
    """LayerNorm over the last dimension from operators XNNPACK runs. XNNPACK has no LayerNorm:
    `native_layer_norm` stays on ExecuTorch's portable kernel (6.5% of the int8 UniFormer-S
    time) and splits the delegated graph at each of its 26 instances. The means over channels
    are products with a constant 1/C vector (XNNPACK's mean reduces only the spatial dims of
    4-D maps); the centred two-pass variance keeps the LayerNorm's precision.

    With `channels_first=True` it normalises dim 1 of (N, C, H, W) maps instead, the means
    being 1x1 convolutions, so XNNPACK keeps the maps channels-last. Permuting the channels
    last and back around the norm left the maps channels-first for XNNPACK, which then
    transposed every depthwise tap slice read from them (1.6 ms of transposes per UniFormer-S
    run, in the two frame-batched patch embeddings)."""

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
            child.norm = LayerNormAsXnnpackOps(child.norm, channels_first=True)
        elif isinstance(child, nn.LayerNorm):
            setattr(module, name, LayerNormAsXnnpackOps(child))
        else:
            _replace_layer_norms(child)


def xnnpack_form(model: nn.Module, frames: int, per_channel_safe: bool = False) -> nn.Module:
    """The deploy form for clips of `frames` frames, `deploy(conv3d="2d", frames=frames)` with
    every LayerNorm as `LayerNormAsXnnpackOps`: XNNPACK delegates all of UniFormer but its final
    pooling (two delegate calls); the light models' token pruning stays on portable kernels.
    The position embeddings' residuals fold into their kernels even when `per_channel_safe`
    (`float_depthwise`): the int8 program keeps depthwise convolutions fp32 (`_xnnpack_quantizer`)."""
    deployed = deploy(model, conv3d="2d", per_channel_safe=per_channel_safe, frames=frames, float_depthwise=True)
    _replace_layer_norms(deployed)
    return deployed.requires_grad_(False)


def _is_depthwise_conv(node) -> bool:
    args = node.args
    return node.target == torch.ops.aten.conv2d.default and len(args) > 6 and args[6] > 1 \
        and args[6] == args[1].meta["val"].shape[0]  # groups == output channels


def _is_token_score_op(node) -> bool:
    """An op on the light models' token scores, (batch, tokens) tensors: the only 2-D tensors
    besides the classifier's. One int8 scale cannot order scores that span orders of magnitude,
    and the pruning stays float like everywhere else in the toolkit."""
    value = node.meta.get("val")
    return node.target != torch.ops.aten.linear.default and isinstance(value, Tensor) and value.dim() == 2


_BLOCK_CLASSES = {f"{c.__module__}.{c.__qualname__}" for c in (FrameCBlock, SABlock, EvoSABlock)}


def _is_residual_add(node) -> bool:
    """An add in a block's own forward: its residual connections (the sums inside a block's
    layers, such as the LayerNorms' and the depthwise taps', belong to those layers). The
    export names each op's enclosing modules in `nn_module_stack`, innermost last."""
    stack = node.meta.get("nn_module_stack")
    return node.target == torch.ops.aten.add.Tensor and bool(stack) and \
        list(stack.values())[-1][1] in _BLOCK_CLASSES


def _xnnpack_quantizer(qat: bool = False):
    """ExecuTorch's XNNPACK quantizer (symmetric per-channel int8) with the depthwise
    convolutions, the sums of their temporal taps and whatever shares their quantization
    parameters left in fp32: on x86 XNNPACK's fp32 depthwise kernels take less than half the
    time of its int8 ones (per-op profile of UniFormer-S 8x224), conversions included. The
    LayerNorms stay fp32 too (their averaging products are not weight layers), and so do the
    token scores (`_is_token_score_op`) and the residual adds (`_is_residual_add`): the
    residual stream carries a few outlier channels (max |x| about 30x the median channel's at
    the stage-3 embedding of the reference model), and one int8 scale per tensor for its sums
    left the typical channels a handful of levels, block after block. Keeping them (and the
    position embeddings' depthwise outputs they add) fp32 lifted the reference model's program
    from 15.1 to 18.3 dB logit SQNR and its top-1 agreement with the float model from 95.1 to
    97.6% (1200 test clips); on UniFormer-S 8x224 it cost 0-4% of the program's time (two
    interleaved comparisons). `qat=True`: the same annotations with fake quantizers."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    def shared_with(spec) -> set:
        if not isinstance(spec, SharedQuantizationSpec):
            return set()
        edge = spec.edge_or_node
        return set(edge) if isinstance(edge, tuple) else {edge}

    class FloatDepthwiseQuantizer(XNNPACKQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            in_float = set()
            for node in model.graph.nodes:
                if node.op != "call_function":
                    continue
                if _is_token_score_op(node) or _is_residual_add(node):
                    node.meta.pop("quantization_annotation", None)
                    in_float.add(node)
                    continue
                annotation = node.meta.get("quantization_annotation")
                specs = [] if annotation is None else [annotation.output_qspec, *annotation.input_qspec_map.values()]
                tap_sum = node.target == torch.ops.aten.add.Tensor and all(
                    a in in_float for a in node.args if isinstance(a, torch.fx.Node))
                if _is_depthwise_conv(node) or tap_sum or any(shared_with(s) & in_float for s in specs):
                    node.meta.pop("quantization_annotation", None)
                    in_float.add(node)
            return model

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    return FloatDepthwiseQuantizer().set_global(config).set_module_type(LayerNormAsXnnpackOps, None)


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


def xnnpack_weight_quantize(model: nn.Module, example: Tensor, bits: int) -> torch.fx.GraphModule:
    """Weight quantization of the XNNPACK form with no calibration: symmetric per-channel int8
    (`bits=8`) or 4-bit (`bits=4`) weights, whose inputs XNNPACK quantizes to int8 at every call
    with that call's range (its qd8-f32-qc8w / qc4w kernels). int8 covers the linear layers and
    the pointwise (1x1) convolutions; 4-bit the linear layers only: XNNPACK has no 4-bit
    convolution (such a `.pte` fails to load). Depthwise convolutions stay fp32, as in the int8
    program, and so do the patch embeddings and stem (kernels over 1x1): the lowering rejects
    their dynamic quantization ("required rank 4 tensor to use channels_last format")."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    weight_range = {8: (-127, 127), 4: (-8, 7)}  # XNNPACK's qc8w and qc4w
    if bits not in weight_range:
        raise ValueError(f"XNNPACK weight quantization has 8 or 4 bits, not {bits}")

    class PointwiseQuantizer(XNNPACKQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            for node in model.graph.nodes:
                if node.target == torch.ops.aten.conv2d.default and (
                        bits == 4 or _is_depthwise_conv(node) or node.args[1].meta["val"].shape[-2:] != (1, 1)):
                    node.meta.pop("quantization_annotation", None)
            return model

    qmin, qmax = weight_range[bits]
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True, weight_qmin=qmin, weight_qmax=qmax)
    deployed = xnnpack_form(model, example.shape[2], per_channel_safe=True)
    prepared = prepare_pt2e(torch.export.export(deployed, (example[:1],)).module(),
                            PointwiseQuantizer().set_global(config).set_module_type(LayerNormAsXnnpackOps, None))
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


def xnnpack_quantize(model: nn.Module, example: Tensor, batches: Iterable[tuple[Tensor, Tensor]],
                     finetuning: Optional[tuple[QATSchedule, Dataset]] = None):
    """int8 PT2E quantization of the XNNPACK form: symmetric per-channel weights on the patterns
    XNNPACK runs in int8, depthwise convolutions, LayerNorms and token scores in fp32 (see
    `_xnnpack_quantizer`), calibrated clip by clip. With `finetuning=(schedule, train_set)` the
    weights are first fine-tuned with fake quantization (`_quantization_aware_weights`).
    Prepared on the batch-of-one export, whose frame slices the quantizer keeps int8: prepared on
    a batch-dynamic one it leaves them fp32, about 1 dB more accurate on the reference model but
    a third slower on UniFormer-S 8x224 (154.5 against 116.1 ms)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    deployed = xnnpack_form(model, example.shape[2], per_channel_safe=True)
    if finetuning is not None:
        _quantization_aware_weights(model, deployed, example, batches, *finetuning)
    prepared = prepare_pt2e(torch.export.export(deployed, (example[:1],)).module(), _xnnpack_quantizer())
    _calibrate_clipwise(prepared, batches)
    return convert_pt2e(prepared)


def _quantization_aware_weights(model: nn.Module, deployed: nn.Module, example: Tensor, batches,
                                schedule: QATSchedule, train_set: Dataset) -> None:
    """QAT for the XNNPACK int8 program: fine-tune the weights of `deployed` (in place) under
    the same quantizer with fake quantizers, towards the float model
    (`uniformer_edge.quantize.qat.finetune`), the activation ranges fixed at calibrated ones (a
    moving min/max would widen them). It trains a batch-dynamic export of the form (the .pte's
    batch-of-one graph trains about ten times slower clip by clip), on which the quantizer leaves
    the frame slices fp32 (see `xnnpack_quantize`): the training graph is close to the program,
    not the same. The trained weights then go through the calibration of `xnnpack_quantize`, so
    the program is the calibrated one's graph."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    graph = export_batch_dynamic(deployed, example).module()
    observed = prepare_pt2e(copy.deepcopy(graph), _xnnpack_quantizer())
    _calibrate_clipwise(observed, batches)
    student = prepare_qat_pt2e(graph, _xnnpack_quantizer(qat=True))
    _calibrate_clipwise(student, batches)  # weight ranges, and any activation without a calibrated twin
    _fix_activation_ranges(student, observed)
    allow_exported_model_train_eval(student)
    for p in student.parameters():
        p.requires_grad_(True)
    finetune(student, deploy(model), train_set, schedule, init_distributed())
    trained = dict(student.named_parameters())  # the export keeps the module's parameter names
    with torch.no_grad():
        for name, param in deployed.named_parameters():
            param.copy_(trained[name])


def _observers_by_input(graph: torch.fx.GraphModule) -> dict:
    """{name of the observed node: observer module} for the nodes watched by one observer."""
    found: dict[str, list] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module" and node.target.startswith("activation_post_process_"):
            found.setdefault(node.args[0].name, []).append(getattr(graph, node.target))
    return {name: mods[0] for name, mods in found.items() if len(mods) == 1}


def _fix_activation_ranges(student: torch.fx.GraphModule, observed: torch.fx.GraphModule) -> None:
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


def lower_executorch(model: nn.Module, example: Tensor, path) -> dict[str, int]:
    """Lower `model` (the XNNPACK form, float or PT2E-converted) to an XNNPACK `.pte` at
    `path`; returns the op census of the lowered graph (delegate calls and any ops left on
    ExecuTorch's portable kernels)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(torch.export.export(model, (example[:1],)), partitioner=[XnnpackPartitioner()])
    counts: dict[str, int] = {}
    for node in edge.exported_program().graph.nodes:
        if node.op == "call_function":
            name = getattr(node.target, "__name__", str(node.target))
            counts[name] = counts.get(name, 0) + 1
    buffer = edge.to_executorch().buffer
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer))
    return dict(sorted(counts.items()))


def load_executorch(path):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(Path(path)).load_method("forward")


def run_executorch(method, clips: Tensor) -> Tensor:
    """Logits for `clips`, one clip per call (the program's batch is one)."""
    return torch.cat([method.execute((clip[None].contiguous(),))[0] for clip in clips]).float()
