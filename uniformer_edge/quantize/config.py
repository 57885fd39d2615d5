"""Quantization configuration: one small dataclass that says what is quantized and how."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import InputError

__all__ = [
    "QuantConfig",
    "RECIPES",
    "OBSERVERS",
    "QUANTIZABLE_OPS",
    "ACTIVATION_SCHEMES",
    "OPENVINO_FORM",
    "OVERFLOW_SAFE_WEIGHT_MAX",
    "FORMS",
    "QAT_LR",
    "QAT_DISTILL_WEIGHT",
]

# recipe -> (weight bits, activations: "static" | "dynamic" | None)
RECIPES = {
    "w8a8": (8, "static"),  # int8 weights per channel, int8 activations calibrated per tensor
    "w8": (8, None),  # weight-only int8 per channel
    "w4": (4, None),  # weight-only int4 per channel
    "w4a8": (4, "static"),  # int4 weights, int8 activations: the low-bit QAT setting
    "dynamic": (8, "dynamic"),  # int8 weights, linear-layer activations quantized at run time
}
# Range estimation for activations. `mse` searches the clipping range that minimises the
# quantization error on a histogram of the calibration activations.
OBSERVERS = ("minmax", "moving_average", "percentile", "mse")
# How static int8 activations map to integers. "affine": a zero point per tensor, the full 256
# levels over any range (ONNX Runtime, Core ML, PyTorch). "symmetric": zero point 0, levels
# -127..127: what OpenVINO's CPU plugin runs as int8 from end to end (attention products
# included); with a zero point it subtracts it in float and runs the attention products in fp32.
ACTIVATION_SCHEMES = ("affine", "symmetric")
# Op groups that can be quantized ("depthwise": convolutions with one input channel per group,
# the rest are "conv"). LayerNorm, Softmax, GELU and residual adds stay float: they are the known
# accuracy traps of vision transformers (FQ-ViT).
QUANTIZABLE_OPS = ("conv", "depthwise", "linear", "matmul")
# The int8 form OpenVINO's CPU plugin runs fastest and the same on every x86 CPU (`export
# --format openvino --precision int8`, `quantize --form openvino`): symmetric activations;
# depthwise convolutions float, which its fp32 depthwise kernels run faster than its int8 ones;
# overflow-safe weights (below), as x86 CPUs without VNNI run its int8 kernels on u8 x s8
# instructions that saturate.
OPENVINO_FORM = {"activation_scheme": "symmetric", "ops": ("conv", "linear", "matmul"), "overflow_safe_weights": True}
# Overflow-safe int8 weights use -63..63 (7 bits): the u8 x s8 multiply-adds of x86 CPUs without
# VNNI (AVX2's vpmaddubsw) sum two products into a saturating int16, and 2 x 255 x 63 fits it; with
# the full -127..127 an IR computes otherwise on such a CPU than on one with VNNI (tests/test_export.py).
OVERFLOW_SAFE_WEIGHT_MAX = 63
# Default QAT learning rate by weight bit width (AdamW; `--qat-lr` overrides it). AdamW moves
# every weight by about the learning rate per step whatever its gradient's size. With 8-bit
# weights what keeps the program from float is the rounding noise of int8 activations, which
# weight updates cannot remove: larger steps only add noise, so the default barely moves the
# weights and QAT's gain is its activation ranges, tracked over the training clips. 4-bit weights
# carry a systematic error that fine-tuning does reduce, at a step still small against their grid.
# The sweep behind these is in benchmarks/results/qat_lr_sweep.md.
QAT_LR = {8: 3e-6, 4: 1e-5}
# Distillation only: the float model's outputs are the target and labels are not read, so QAT
# recovers the float model rather than re-fitting it to labels (which moved it away from float).
QAT_DISTILL_WEIGHT = 1.0
# Named settings `quantize --form` applies: "default" changes nothing.
FORMS = {"default": {}, "openvino": OPENVINO_FORM}


@dataclass
class QuantConfig:
    recipe: str = "w8a8"
    observer: str = "minmax"
    percentile: float = 99.99
    ops: tuple[str, ...] = QUANTIZABLE_OPS
    keep_float: tuple[str, ...] = ()
    qat: bool = False
    activation_scheme: str = "affine"
    overflow_safe_weights: bool = False  # int8 weights on -63..63 (OVERFLOW_SAFE_WEIGHT_MAX)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise InputError(f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        if self.observer not in OBSERVERS:
            raise InputError(f"unknown observer {self.observer!r}; choose from {', '.join(OBSERVERS)}")
        bad = [op for op in self.ops if op not in QUANTIZABLE_OPS]
        if bad or not self.ops:
            raise InputError(f"unknown op group(s) {bad or '(none given)'}; choose from {', '.join(QUANTIZABLE_OPS)}")
        if self.activation_scheme not in ACTIVATION_SCHEMES:
            raise InputError(
                f"unknown activation scheme {self.activation_scheme!r}; choose from {', '.join(ACTIVATION_SCHEMES)}"
            )
        if self.overflow_safe_weights and self.weight_bits != 8:
            raise InputError(
                f"overflow-safe weights are 8-bit weights narrowed to 7 bits; recipe {self.recipe} has none"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise InputError(f"percentile must lie in (50, 100], got {self.percentile}")
        self.ops, self.keep_float = tuple(self.ops), tuple(self.keep_float)

    @property
    def weight_bits(self) -> int:
        return RECIPES[self.recipe][0]

    @property
    def activations(self) -> str | None:
        return RECIPES[self.recipe][1]

    def as_dict(self) -> dict:
        return asdict(self)
