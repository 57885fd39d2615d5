"""What a format and a runtime declare, for the registry (`export.registry`) to list.

A format (one module each: `onnx`, `coreml`, `executorch`) declares its precisions with the
parity threshold each must meet, how an artifact is built and counted (op census), and the
runtime that runs it. A runtime declares whether it runs here (`available() -> reason | None`),
its settings (device, execution provider, compute units) and how it loads an artifact into a
callable `clips -> logits`. `export`, `benchmark` and the benchmark suite iterate over these;
nothing else lists formats, precisions or runtimes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch

from ..engine import agreement

__all__ = [
    "Precision",
    "Reference",
    "Threshold",
    "FP32_PARITY",
    "FP16_PARITY",
    "PT2E_PARITY",
    "PRUNING_SQNR_MARGIN_DB",
    "Format",
    "Runtime",
    "Runner",
    "tally",
    "compare",
    "judge",
]


class Precision(str, enum.Enum):
    """What an artifact computes in. The value is the name users type and manifests record."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"  # W8A8 from the PT2E graph (ExecuTorch: XNNPACK's own calibrated program)
    W8 = "w8"  # int8 weights, float activations
    W4 = "w4"  # int4 weights
    PALETTIZE4 = "palettize4"  # 16-entry lookup table per weight (Core ML)
    PALETTIZE6 = "palettize6"
    INT8_ORT = "int8-ort"  # ONNX Runtime's quantize_static, MinMax ranges
    INT8_ORT_ENTROPY = "int8-ort-entropy"  # ... Entropy (KL) ranges

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def pt2e_recipe(self) -> Optional[str]:
        """The `quantize` recipe whose PT2E graph this precision is exported from, if any."""
        return {"int8": "w8a8", "w8": "w8", "w4": "w4"}.get(self.value)

    @classmethod
    def from_recipe(cls, recipe: str) -> "Precision":
        for p in cls:
            if p.pt2e_recipe == recipe:
                return p
        exportable = ", ".join(p.pt2e_recipe for p in cls if p.pt2e_recipe)
        raise KeyError(f"recipe {recipe} cannot be exported (exportable: {exportable})")


class Reference(str, enum.Enum):
    """What an artifact's output is judged against."""

    FLOAT = "float"  # the float model
    PT2E_GRAPH = "pytorch_quantized"  # the quantized program in PyTorch
    PACKAGE_WEIGHTS = "package_weights"  # the float model holding the artifact's decompressed weights
    NONE = "none"  # no counterpart: figures against float, no verdict


_REFERENCE_WORDS = {
    Reference.FLOAT: "float",
    Reference.PT2E_GRAPH: "the PyTorch quantized graph",
    Reference.PACKAGE_WEIGHTS: "the model with the package's decompressed weights in PyTorch",
}


@dataclass(frozen=True)
class Threshold:
    """A parity bound: relative max error, or cosine (and optionally the same top-1), against a reference."""

    against: Reference = Reference.FLOAT
    max_rel_err: Optional[float] = None
    min_cosine: Optional[float] = None
    same_top1: bool = False

    def describe(self) -> str:
        if self.against is Reference.NONE:
            return "none: no PyTorch counterpart, compared with the float model"
        bound = (
            f"max_rel_err <= {self.max_rel_err}"
            if self.max_rel_err is not None
            else f"cosine >= {self.min_cosine}{' and same top-1' if self.same_top1 else ''}"
        )
        return f"{bound} vs {_REFERENCE_WORDS[self.against]}"

    def passed(self, figures: dict) -> bool:
        if self.against is Reference.NONE:
            return True
        if self.max_rel_err is not None and not figures["max_rel_err"] <= self.max_rel_err:
            return False
        if self.min_cosine is not None and not figures["cosine"] >= self.min_cosine:
            return False
        return not self.same_top1 or figures["top1_agreement"] == 1.0


# Every format's float exports: fp32 reproduces the float model to float rounding; fp16 keeps
# its direction and every top-1 (the light models' token pruning can swap two tokens at the cut
# in fp16, which moves a whole token between the kept and the merged set: no tighter bound holds).
FP32_PARITY = Threshold(max_rel_err=1e-4)
FP16_PARITY = Threshold(min_cosine=0.999, same_top1=True)
# Exports of a PT2E graph reproduce that graph in PyTorch by cosine only: no elementwise bound
# holds for int8, where a rounding tie in one int8 value can cascade.
PT2E_PARITY = Threshold(Reference.PT2E_GRAPH, min_cosine=0.999)


# Token pruning (the light models) makes a model's output discontinuous: one int8 step or one fp16
# rounding anywhere upstream can move a token across the top-k cut, after which two correct
# programs differ beyond any cosine bound, on clips that depend on the CPU's kernels (the PT2E graph
# run on a batch instead of clip by clip misses its own bound: results/int8_stability.md). An
# artifact of such a model that misses its bound against its quantized or compressed counterpart is
# judged by what a conversion fault costs instead, accuracy: it passes when its logit SQNR against
# float is at most this far below the counterpart's: two correct programs' SQNRs on a few clips
# differ by a few dB, a fault that costs accuracy by far more (benchmarks/results/int8_stability.md).
PRUNING_SQNR_MARGIN_DB = 10.0


def compare(reference: torch.Tensor, output: torch.Tensor) -> dict:
    rel = float((output - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    return {"max_rel_err": rel, **agreement(reference, output)}


def judge(
    runtime: str,
    output: torch.Tensor,
    float_logits: torch.Tensor,
    threshold: Threshold,
    counterpart: Optional[Callable[[], torch.Tensor]] = None,
    prunes_tokens: bool = False,
    **about,
) -> dict:
    """A parity entry: `output`'s figures against float and, where the threshold names one,
    against `counterpart()` (the PyTorch program the artifact must reproduce), and the verdict.
    With `prunes_tokens`, a miss against the counterpart falls back to the accuracy rule above."""
    vs_float = compare(float_logits, output)
    entry = {"runtime": runtime, **about, "clips": len(output), "vs_float": vs_float}
    figures, described = vs_float, threshold.describe()
    if threshold.against not in (Reference.PT2E_GRAPH, Reference.PACKAGE_WEIGHTS):
        return {**entry, "threshold": described, "passed": threshold.passed(figures)}
    with torch.no_grad():
        expected = counterpart()
    figures = entry[f"vs_{threshold.against.value}"] = compare(expected, output)
    passed = threshold.passed(figures)
    if prunes_tokens:
        described += (
            f"; as the model prunes tokens, else a logit SQNR vs float at most {PRUNING_SQNR_MARGIN_DB:g} dB "
            "below that counterpart's"
        )
        if not passed:
            own = agreement(float_logits, expected)["sqnr_db"]
            passed = vs_float["sqnr_db"] >= own - PRUNING_SQNR_MARGIN_DB
            entry["token_pruning_rule"] = {
                "counterpart_sqnr_vs_float_db": own,
                "sqnr_vs_float_db": vs_float["sqnr_db"],
                "margin_db": PRUNING_SQNR_MARGIN_DB,
                "passed": passed,
            }
    return {**entry, "threshold": described, "passed": passed}


def tally(names: Iterable[str]) -> dict[str, int]:
    """How many of each op type, sorted by name: the op census every format records."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class Format:
    """An artifact format. `thresholds` keys are its precisions, in the order they are listed."""

    name: str
    suffix: str
    runtime: str  # the runtime that runs its artifacts (parity here, latency in the benchmark)
    thresholds: Mapping[Precision, Threshold]
    # (context, precision, path) -> the manifest entry's facts; the context is the export job's
    # (`export.pipeline.ExportContext`): model, check clips, float logits, calibration, programs
    build: Callable[..., dict]
    census: Optional[Callable[[Path], dict]]  # op counts of a saved artifact (None: recorded by build)
    min_target: Mapping[Precision, str] = field(default_factory=dict)  # oldest deployment target per precision

    @property
    def precisions(self) -> tuple[Precision, ...]:
        return tuple(self.thresholds)


@dataclass
class Runner:
    """One artifact on one runtime setting, ready to run."""

    backend: str
    setting: str  # e.g. "cpu", "cuda", "CPUExecutionProvider", "CPU_AND_NE"
    fn: Callable[[torch.Tensor], torch.Tensor]
    fixed_batch: Optional[int] = None
    extra: dict = field(default_factory=dict)  # reported with the row, e.g. Core ML's compute plan


@dataclass(frozen=True)
class Runtime:
    """Something that runs artifacts of a format (and perhaps others) on this machine."""

    name: str
    format: str  # what it runs: a Format's name, or "pt2" (a `quantize` output)
    settings: tuple[str, ...]
    available: Callable[[], Optional[str]]  # None when it runs here, else why not
    # (path, setting, threads, source) -> Runner; source: the artifact's provenance (hashes)
    load: Callable[..., Runner]
    setting_available: Callable[[str], Optional[str]] = lambda setting: None
    artifact_settings: Optional[tuple[str, ...]] = None  # settings that run artifacts (default: all)
    also_runs: tuple[str, ...] = ()  # other formats it runs (OpenVINO: ONNX as well as its own IR)

    def runs(self, fmt: str) -> bool:
        return fmt == self.format or fmt in self.also_runs

    def status(self) -> dict[str, Optional[str]]:
        """Every setting: None when it runs here, else why not."""
        overall = self.available()
        return {s: overall if overall is not None else self.setting_available(s) for s in self.settings}

    def runners(self, path: Path, threads: int, source: dict) -> list[Runner]:
        """The artifact at `path` on every setting of this runtime that runs here."""
        usable = self.artifact_settings or self.settings
        return [self.load(path, s, threads, source) for s, why in self.status().items() if why is None and s in usable]
