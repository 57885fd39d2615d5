"""Quantization configuration: one small dataclass that says what is quantized and how."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import InputError

__all__ = ["QuantConfig", "RECIPES", "OBSERVERS", "QUANTIZABLE_OPS"]

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
# Op groups that can be quantized. LayerNorm, Softmax, GELU and residual adds stay float:
# they are the known accuracy traps of vision transformers (FQ-ViT).
QUANTIZABLE_OPS = ("conv", "linear", "matmul")


@dataclass
class QuantConfig:
    recipe: str = "w8a8"
    observer: str = "minmax"
    percentile: float = 99.99
    ops: tuple[str, ...] = QUANTIZABLE_OPS
    keep_float: tuple[str, ...] = ()
    qat: bool = False

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise InputError(f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        if self.observer not in OBSERVERS:
            raise InputError(f"unknown observer {self.observer!r}; choose from {', '.join(OBSERVERS)}")
        bad = [op for op in self.ops if op not in QUANTIZABLE_OPS]
        if bad or not self.ops:
            raise InputError(f"unknown op group(s) {bad or '(none given)'}; choose from {', '.join(QUANTIZABLE_OPS)}")
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
