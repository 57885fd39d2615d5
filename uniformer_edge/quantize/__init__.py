"""Quantization: PT2E post-training (static W8A8, weight-only, dynamic) and quantization-aware
training, per-layer sensitivity and mixed precision."""

from .config import OBSERVERS, QUANTIZABLE_OPS, RECIPES, QuantConfig
from .pipeline import QuantizeJob, default_out_dir, run_job
from .artifact import ArtifactError, load_program, load_quantized, read_quantize_config, verify_program
from .ptq import calibrate, convert, export_float, prepare, quantize_ptq
from .quantizer import UniformerQuantizer, quantizable_ops

__all__ = [
    "QuantConfig",
    "RECIPES",
    "OBSERVERS",
    "QUANTIZABLE_OPS",
    "UniformerQuantizer",
    "quantizable_ops",
    "export_float",
    "prepare",
    "calibrate",
    "convert",
    "quantize_ptq",
    "load_program",
    "QuantizeJob",
    "run_job",
    "default_out_dir",
    "ArtifactError",
    "load_quantized",
    "read_quantize_config",
    "verify_program",
]
