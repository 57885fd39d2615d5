"""Post-training quantization through torchao's PT2E flow on `torch.export`:
deploy form -> export -> prepare_pt2e -> calibrate -> convert_pt2e -> export again. The
result is one quantized graph (quantize/dequantize ops around int8 weights) that every
exporter consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from tqdm.auto import tqdm

from ..errors import InputError
from ..forms import frame_batched
from ..models import deploy
from .config import QuantConfig
from .quantizer import UniformerQuantizer

__all__ = ["export_float", "export_batch_dynamic", "prepare", "calibrate", "convert", "quantize_ptq", "PreparedModel"]


def export_float(model: nn.Module, example: Tensor, conv3d: str = "native") -> ExportedProgram:
    """Export the quantization-friendly deploy form of `model` (only output-channel folds, see
    `deploy(per_channel_safe=True)`; `conv3d="2d"`: in the frame-batched form) with a dynamic
    batch dimension; frames and frame size stay those of `example` (the light models prune to a
    static count)."""
    deployed = frame_batched(model, per_channel_safe=True) if conv3d == "2d" else deploy(model, per_channel_safe=True)
    return export_batch_dynamic(deployed, example)


def export_batch_dynamic(module: nn.Module, example: Tensor) -> ExportedProgram:
    """`torch.export` of `module` with a dynamic batch dimension. It traces two clips: a batch
    of one would be specialised to a constant."""
    two = example[:1].expand(2, *example.shape[1:]).contiguous()
    return torch.export.export(module, (two,), dynamic_shapes=({0: Dim("batch", min=1, max=1024)},))


@dataclass
class PreparedModel:
    module: torch.fx.GraphModule
    quantizer: UniformerQuantizer
    example: Tensor
    cfg: QuantConfig
    quantized_layers: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)


def prepare(model: nn.Module, cfg: QuantConfig, example: Tensor, conv3d: str = "native") -> PreparedModel:
    """Insert observers (PTQ) or fake quantizers (`cfg.qat`) into the exported deploy form."""
    program = export_float(model, example, conv3d)
    quantizer = UniformerQuantizer(cfg)
    prepare_fn = prepare_qat_pt2e if cfg.qat else prepare_pt2e
    prepared = prepare_fn(program.module(), quantizer)
    return PreparedModel(prepared, quantizer, example, cfg, list(quantizer.quantized), list(quantizer.kept_float))


@torch.no_grad()
def calibrate(
    prepared: PreparedModel,
    batches: Iterable[tuple[Tensor, Tensor]],
    progress: bool = True,
    total: Optional[int] = None,
) -> int:
    """Run calibration batches through the observers; returns the number of clips seen."""
    seen = 0
    for clips, _ in tqdm(batches, desc="calibrating", total=total, disable=not progress, leave=False, unit="batch"):
        prepared.module(clips)
        seen += len(clips)
    return seen


def _drop_unused_attributes(gm: torch.fx.GraphModule) -> None:
    """convert_pt2e folds weights into int8 constants but leaves the float originals on the
    module; drop every parameter and buffer the graph no longer reads, so they are not saved."""
    gm.graph.eliminate_dead_code()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, attr)
    gm.recompile()


def pack_int4(q: Tensor) -> Tensor:
    """int8 values in [-8, 7] -> uint8 bytes holding two values each (low nibble first)."""
    flat = (q.flatten().to(torch.int16) & 0xF).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def _unpack_int4(packed: Tensor, shape: list[int]) -> Tensor:
    """Inverse of `pack_int4`, written with plain tensor ops so it exports to every runtime."""
    low = torch.bitwise_and(packed, 15).to(torch.int8)
    high = torch.bitwise_right_shift(packed, 4).to(torch.int8)
    nibbles = torch.stack([low, high], dim=1).flatten()
    values = torch.where(nibbles > 7, nibbles - 16, nibbles)  # two's complement sign
    numel = 1
    for d in shape:
        numel *= d
    return values[:numel].reshape(shape)


def _pack_int4_weights(gm: torch.fx.GraphModule) -> int:
    """Store every int4 weight (an int8 constant in [-7, 7] feeding a per-channel dequantize)
    as packed nibbles, halving its size; the graph unpacks it on the fly. Returns the count."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or "dequantize_per_channel" not in str(node.target):
            continue
        source = node.args[0]
        if source.op != "get_attr" or node.args[4:6] != (-7, 7):
            continue
        weight = getattr(gm, source.target)
        name = f"{source.target}_int4"
        gm.register_buffer(name, pack_int4(weight))
        with gm.graph.inserting_before(node):
            packed = gm.graph.get_attr(name)
            unpacked = gm.graph.call_function(_unpack_int4, (packed, list(weight.shape)))
        node.replace_input_with(source, unpacked)
        count += 1
    gm.graph.lint()
    gm.recompile()
    return count


def convert(prepared: PreparedModel) -> ExportedProgram:
    """Replace observers by quantize/dequantize ops and re-export (dynamic batch kept). int4
    weights are stored packed, two per byte."""
    converted = convert_pt2e(prepared.module)
    if prepared.cfg.weight_bits == 4:
        _pack_int4_weights(converted)
    _drop_unused_attributes(converted)
    return export_batch_dynamic(converted, prepared.example)


def quantize_ptq(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    cfg: QuantConfig,
    example: Tensor,
    conv3d: str = "native",
    progress: bool = True,
) -> tuple[ExportedProgram, PreparedModel]:
    """Static or weight-only PTQ of `model`; returns the quantized program and the prepared model."""
    if cfg.qat:
        raise ValueError("quantize_ptq takes a PTQ config (qat=False)")
    prepared = prepare(model, cfg, example, conv3d)
    seen = calibrate(prepared, batches, progress)
    if seen == 0:
        raise InputError("the calibration set is empty")
    return convert(prepared), prepared
