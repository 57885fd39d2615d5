"""Per-layer sensitivity, per-block numerical comparison and mixed precision.

After calibration every observer of the prepared graph is swapped for a switchable fake
quantizer that uses the observer's quantization parameters. With all switches off the graph
is the float deploy model; with all on it computes what the converted int8 graph computes.
Layers can then be quantized or left float one at a time without re-calibrating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Interpreter
from tqdm.auto import tqdm

from ..engine import agreement, topk_accuracy
from .ptq import PreparedModel
from .quantizer import QuantizableOp, module_path, op_kind

__all__ = ["SwitchableQuantGraph", "LayerSensitivity", "sensitivity", "block_sqnr", "choose_float_layers"]


class _SwitchableFakeQuant(nn.Module):
    """Fake-quantizes with a calibrated observer's parameters when `enabled`."""

    def __init__(self, observer: nn.Module):
        super().__init__()
        scale, zero_point = observer.calculate_qparams()
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero_point", zero_point.int())
        self.quant_min, self.quant_max = observer.quant_min, observer.quant_max
        self.per_channel = observer.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
        self.ch_axis = getattr(observer, "ch_axis", 0)
        self.dynamic = getattr(observer, "is_dynamic", False)
        self.enabled = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled or self.dynamic:
            return x
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(
                x, self.scale, self.zero_point, self.ch_axis, self.quant_min, self.quant_max
            )
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale.item(), int(self.zero_point.item()), self.quant_min, self.quant_max
        )


class SwitchableQuantGraph:
    """A calibrated prepared graph whose quantizers can be switched per layer."""

    def __init__(self, prepared: PreparedModel):
        gm = prepared.module
        self.module: GraphModule = gm
        self.layer_switches: dict[str, list[_SwitchableFakeQuant]] = {}
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or not node.target.startswith("activation_post_process"):
                continue
            switch = _SwitchableFakeQuant(gm.get_submodule(node.target))
            setattr(gm, node.target, switch)
            for user in node.users:
                if op_kind(user) is not None and "quantization_annotation" in user.meta:
                    self.layer_switches.setdefault(QuantizableOp(user).name, []).append(switch)
        self.layers = list(self.layer_switches)

    def set_quantized(self, layers: Optional[Sequence[str]] = None):
        """Quantize exactly `layers` (all when None); every other layer runs float."""
        wanted = set(self.layers if layers is None else layers)
        for switches in self.layer_switches.values():
            for s in switches:
                s.enabled = False
        for name in wanted:
            for s in self.layer_switches[name]:
                s.enabled = True

    @torch.no_grad()
    def logits(self, clips: Tensor) -> Tensor:
        return self.module(clips)


@dataclass
class LayerSensitivity:
    layer: str
    only_quantized: dict
    only_float: dict


def _score(graph: SwitchableQuantGraph, clips: Tensor, labels: Optional[Tensor], float_logits: Tensor) -> dict:
    out = graph.logits(clips)
    result = agreement(float_logits, out)
    if labels is not None:
        result["top1"] = topk_accuracy(out, labels, 1)
    return result


def sensitivity(
    graph: SwitchableQuantGraph, clips: Tensor, labels: Optional[Tensor] = None, progress: bool = True
) -> list[LayerSensitivity]:
    """For every layer: agreement with float (and top-1) when only it is quantized, and when
    only it is left float."""
    graph.set_quantized([])
    float_logits = graph.logits(clips)
    rows = []
    for layer in tqdm(graph.layers, desc="sensitivity", disable=not progress, leave=False, unit="layer"):
        graph.set_quantized([layer])
        alone = _score(graph, clips, labels, float_logits)
        graph.set_quantized([name for name in graph.layers if name != layer])
        rows.append(LayerSensitivity(layer, alone, _score(graph, clips, labels, float_logits)))
    graph.set_quantized(None)
    return rows


def _block_outputs(gm: GraphModule) -> dict[str, torch.fx.Node]:
    """The last node of each block (`blocksN.i`, `patch_embedN`), i.e. its output map."""
    last: dict[str, torch.fx.Node] = {}
    for node in gm.graph.nodes:
        for name in module_path(node):
            parts = name.split(".")
            if (parts[0].startswith("blocks") and len(parts) == 2) or (
                parts[0].startswith("patch_embed") and len(parts) == 1
            ):
                last[name] = node
    return last


class _Recorder(Interpreter):
    def __init__(self, gm: GraphModule, wanted: dict[str, torch.fx.Node]):
        super().__init__(gm)
        self.by_node = {node: name for name, node in wanted.items()}
        self.values: dict[str, Tensor] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.by_node and isinstance(out, Tensor):
            self.values[self.by_node[n]] = out.detach()
        return out


@torch.no_grad()
def block_sqnr(graph: SwitchableQuantGraph, clips: Tensor) -> dict[str, float]:
    """SQNR (dB) of every block's output, fully quantized graph against the float graph."""
    wanted = _block_outputs(graph.module)
    graph.set_quantized([])
    ref = _Recorder(graph.module, wanted)
    ref.run(clips)
    graph.set_quantized(None)
    quant = _Recorder(graph.module, wanted)
    quant.run(clips)
    return {
        name: agreement(ref.values[name].flatten(1), quant.values[name].flatten(1))["sqnr_db"]
        for name in wanted
        if name in ref.values and name in quant.values
    }


def choose_float_layers(
    graph: SwitchableQuantGraph,
    rows: list[LayerSensitivity],
    evaluate: Callable[[], float],
    baseline: float,
    max_drop: float,
    progress: bool = True,
) -> tuple[list[str], float]:
    """Greedy mixed precision: leave float, most sensitive first, the fewest layers for which
    `baseline - evaluate()` (top-1 points) is at most `max_drop`. Returns (layers, final score)."""
    ranked = sorted(
        rows, key=lambda r: (-r.only_float.get("top1", r.only_float["top1_agreement"]), -r.only_float["sqnr_db"])
    )
    kept: list[str] = []
    graph.set_quantized(None)
    score = evaluate()
    bar = tqdm(ranked, desc="mixed precision", disable=not progress, leave=False, unit="layer")
    for row in bar:
        if 100 * (baseline - score) <= max_drop:
            break
        kept.append(row.layer)
        graph.set_quantized([name for name in graph.layers if name not in kept])
        score = evaluate()
    bar.close()
    graph.set_quantized(None)
    return kept, score
