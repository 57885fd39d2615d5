"""ONNX export (fp32, fp16, int8 QDQ from the PT2E graph) through the dynamo exporter, the
alternative int8 route through ONNX Runtime's `quantize_static`, and ONNX Runtime sessions.

Every model has one input `video` (float32, B x 3 x T x H x W, dynamic batch) and one output
`logits`; fp16 models keep float32 I/O and cast inside, so apps feed the same tensor."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

from ..errors import ExportError, InputError
from ..models import deploy
from .base import FP16_PARITY, FP32_PARITY, PT2E_PARITY, Format, Precision, Reference, Runner, Runtime, Threshold, tally
from .._cpu import has_int8_dot_product, is_x86
from .._io import atomic_write

__all__ = [
    "OPSET",
    "export_onnx",
    "half_precision",
    "ort_session",
    "ort_session_config",
    "run_onnx",
    "ort_quantize_static",
    "onnx_op_census",
    "FORMAT",
    "RUNTIME",
    "ORT_PROVIDERS",
]

OPSET = 18  # the dynamo exporter's native opset; QDQ with per-channel axes needs >= 13


class _HalfPrecision(nn.Module):
    """fp16 weights and compute behind float32 input and output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, video: Tensor) -> Tensor:
        return self.model(video.half()).float()


def half_precision(model: nn.Module) -> nn.Module:
    return _HalfPrecision(model)


def _program(model, example: Optional[Tensor]) -> ExportedProgram:
    if isinstance(model, ExportedProgram):
        return model
    if example is None:
        raise ValueError("exporting an nn.Module needs an example input")
    two = example[:1].expand(2, *example.shape[1:]).contiguous()  # batch 1 would be specialised
    return torch.export.export(model, (two,), dynamic_shapes=({0: Dim("batch", min=1, max=1024)},))


def export_onnx(model, path, example: Optional[Tensor] = None, opset: int = OPSET) -> Path:
    """Write `model` (an ExportedProgram, e.g. a PT2E-quantized one, or an nn.Module with
    `example`) as a single-file ONNX model; weights are embedded, so one file is the artifact."""
    import onnx

    program = _program(model, example)
    log = io.StringIO()
    # The exporter prints progress lines and warnings on stdout; keep them for error messages only.
    with contextlib.redirect_stdout(log), _quiet_loggers("torch.onnx", "onnxscript"):
        onnx_program = torch.onnx.export(
            program,
            (),
            None,
            input_names=["video"],
            output_names=["logits"],
            opset_version=opset,
            dynamo=True,
            external_data=False,
        )
    proto = onnx_program.model_proto
    _unshare_quantization_parameters(proto)
    onnx.checker.check_model(proto)

    def write(tmp):
        onnx.save_model(proto, tmp)

    return atomic_write(path, write)


def _unshare_quantization_parameters(proto) -> int:
    """Give every QuantizeLinear/DequantizeLinear its own scale and zero-point initializers.

    The exporter shares equal constants between nodes; ONNX Runtime's exact-int8 rewrite
    (`session.x64quantprecision`, see `ort_session_config`) converts each int8 weight's zero
    point in place and fails on a shared one ("Attempt to replace the existing tensor")."""
    import onnx

    initializers = {init.name: init for init in proto.graph.initializer}
    uses: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            if name in initializers:
                uses[name] = uses.get(name, 0) + 1
    copies = 0
    for index, node in enumerate(proto.graph.node):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for slot in range(1, len(node.input)):
            name = node.input[slot]
            if name in initializers and uses[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(initializers[name])
                copy.name = f"{name}__q{index}_{slot}"
                proto.graph.initializer.append(copy)
                node.input[slot] = copy.name
                uses[name] -= 1
                copies += 1
    return copies


def ort_session_config() -> dict[str, str]:
    """ONNX Runtime session entries that our int8 models need on this CPU.

    On x86 without VNNI (or AMX) ONNX Runtime's u8 x s8 kernels add neighbouring products in
    saturating 16-bit arithmetic (PMADDUBSW: 255 x 127 x 2 > 32767), so full-range int8 weights
    give wrong sums; `session.x64quantprecision` makes it use exact u8 x u8 kernels instead.
    With VNNI the sums are 32-bit and exact, so the faster kernels stay."""
    exact_by_default = not is_x86() or has_int8_dot_product() is True
    return {} if exact_by_default else {"session.x64quantprecision": "1"}


@contextlib.contextmanager
def _quiet_loggers(*names):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def ort_session(
    path, threads: Optional[int] = None, providers: Optional[list[str]] = None, profile_prefix: Optional[Path] = None
):
    """An ONNX Runtime session with `ort_session_config()`; with `profile_prefix` it records every
    node's kernel time, written to a JSON trace at that prefix by `session.end_profiling()`. The
    entries it runs with are in `session.uniformer_config` (the exact-int8 rewrite fails on some
    graphs ONNX Runtime's own quantizer writes: those run with its default kernels, and say so)."""
    import onnxruntime as ort

    def make(config: dict):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 4
        for key, value in config.items():
            options.add_session_config_entry(key, value)
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile_prefix)
        session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        session.uniformer_config = dict(config)
        return session

    config = ort_session_config()
    try:
        return make(config)
    except Exception as err:  # onnxruntime's Fail is not importable by a stable name
        if not config or "replace the existing tensor" not in str(err):
            raise
    session = make({})
    session.uniformer_config = {
        "not applied": f"{', '.join(config)}: ONNX Runtime's exact-int8 rewrite fails on "
        f"this graph; its u8 x s8 kernels saturate on this CPU"
    }
    return session


def run_onnx(session, clips: Tensor) -> Tensor:
    return torch.from_numpy(session.run(["logits"], {"video": clips.numpy().astype(np.float32)})[0])


def onnx_op_census(path) -> dict[str, int]:
    """How many nodes of each op type the model holds (QuantizeLinear/DequantizeLinear included:
    some exporter versions silently drop them)."""
    import onnx

    return tally(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def _entropy_ranges(model: Path, clips: Iterable[Tensor], tmp: Path) -> Path:
    """KL-divergence ranges over a 2048-bin histogram (TensorRT's recipe), as a calibration cache.
    `quantize_static` cannot pass bin counts to its Entropy calibrator, whose default of 128 bins
    into 128 quantized bins leaves one candidate, the full range: the same ranges as MinMax."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise InputError(
            f"ONNX Runtime Entropy calibration needs onnxruntime>=1.32 (calibration caches); "
            f"this is {onnxruntime.__version__}, whose Entropy ranges equal MinMax"
        )
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    # ORT's own threshold search (compute_data) is a Python loop per bin: 8-9 minutes on UniFormer-S.
    ranges = {
        name: (*kl_threshold(*histogram[:4], num_quantized_bins=128), *histogram[:2])
        for name, histogram in entropy_histograms(model, list(clips), tmp).items()
    }
    cache = tmp / "entropy-ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.Entropy, ranges), cache)
    return cache


def entropy_histograms(model: Path, clips: list[Tensor], tmp: Path, num_bins: int = 2048) -> dict[str, tuple]:
    """Per-tensor histograms in the layout of ORT's Entropy collector, `(hist, edges, min, max,
    threshold)`, over the symmetric range of the tensor's largest magnitude across all clips.

    ORT's collector, fed one clip at a time, keeps the first clip's bin width and adds bins as
    later clips widen the range: a tensor that is near zero on the first clip and not on a later
    one asks numpy for billions of bins. Fixing the range in a first pass, as TensorRT's
    calibrator does, gives the histogram ORT builds when it sees all clips in one call, one clip
    in memory at a time."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(
        model, augmented_model_path=str(tmp / "augmented.onnx"), calibrate_method=CalibrationMethod.Entropy
    )
    session = calibrator.infer_session
    names = [output.name for output in session.get_outputs()]
    wanted = [i for i, name in enumerate(names) if name in calibrator.tensors_to_calibrate]

    def outputs():
        for clip in clips:
            values = session.run(None, {"video": clip[None].numpy()})
            yield {names[i]: values[i].ravel() for i in wanted}

    lowest, highest = {}, {}
    for values in outputs():
        for name, value in values.items():
            low, high = (np.nanmin(value), np.nanmax(value)) if value.size else (value.dtype.type(0),) * 2
            lowest[name] = min(lowest.get(name, low), low)
            highest[name] = max(highest.get(name, high), high)
    thresholds = {
        name: np.array(max(abs(lowest[name]), abs(highest[name])), dtype=lowest[name].dtype) for name in lowest
    }
    counts: dict[str, np.ndarray] = {}
    edges: dict[str, np.ndarray] = {}
    for values in outputs():
        for name, value in values.items():
            hist, edges[name] = np.histogram(value, num_bins, range=(-thresholds[name], thresholds[name]))
            counts[name] = counts[name] + hist if name in counts else hist
    return {name: (counts[name], edges[name], lowest[name], highest[name], thresholds[name]) for name in counts}


def kl_threshold(hist: np.ndarray, edges: np.ndarray, lowest, highest, num_quantized_bins: int = 128):
    """The (low, high) clipping range of ONNX Runtime's Entropy calibrator for one tensor's
    histogram, found by the same search with the same arithmetic (`HistogramCollector.
    get_entropy_threshold`: symmetric candidate windows around the zero bin, the window merged
    into `num_quantized_bins` and expanded back, smoothed, lowest KL divergence wins), with the
    per-bin loops written as array operations."""
    num_bins, zero = hist.size, hist.size // 2
    half = num_quantized_bins // 2
    total_before, total = np.concatenate([[0], np.cumsum(hist)]), hist.sum()
    divergences, windows = [], []
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, num_bins)
        windows.append((edges[start], edges[end]))
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += total_before[start]
        p[-1] += total - total_before[end]
        nonzero = p != 0
        width = sliced.size // num_quantized_bins
        body = num_quantized_bins * width
        merged = sliced[:body].reshape(num_quantized_bins, width).sum(axis=1)
        merged[-1] += sliced[body:].sum()
        norm = nonzero[:body].reshape(num_quantized_bins, width).sum(axis=1)
        q = np.zeros(p.size, dtype=np.int64)  # integer, as ORT stores it: the quotient is truncated
        q[:body] = np.repeat(np.where(norm > 0, merged / np.maximum(norm, 1), 0).astype(np.int64), width)
        divergences.append(_kl(_smooth(p), _smooth(q)))
    low, high = windows[int(np.argmin(divergences))]
    return (lowest if low < lowest else low), (highest if high > highest else high)


def _smooth(p: np.ndarray, eps: float = 1e-4) -> Optional[np.ndarray]:
    """ORT's `smooth_distribution`: zeros get eps, taken off the non-zero bins."""
    zeros = p == 0
    n_zeros = int(zeros.sum())
    if n_zeros == p.size:
        return None
    return p.astype(np.float32) + np.where(zeros, np.float32(eps), np.float32(-eps * n_zeros / (p.size - n_zeros)))


def _kl(p: Optional[np.ndarray], q: Optional[np.ndarray]) -> float:
    if p is None or q is None:
        return float("inf")
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q), dtype=np.float32))


class _CalibrationReader:
    """Feeds calibration batches to ONNX Runtime's calibrators, one clip at a time (the same clips
    our PT2E calibration sees)."""

    def __init__(self, batches: Iterable[tuple[Tensor, Tensor]]):
        self._clips = (clip[None].numpy() for clips, _ in batches for clip in clips)

    def get_next(self):
        clip = next(self._clips, None)
        return None if clip is None else {"video": clip}


def ort_quantize_static(
    float_onnx, path, batches: Iterable[tuple[Tensor, Tensor]], method: str = "minmax", per_channel: bool = True
) -> Path:
    """ONNX Runtime's own static int8 quantization (QDQ format, int8 weights and activations) of a
    float ONNX model, calibrated on `batches`; `method` is minmax, entropy or percentile."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise InputError(f"unknown ONNX Runtime calibration method {method!r}; choose from {', '.join(methods)}")
    with tempfile.TemporaryDirectory() as tmp, _quiet_loggers("root"), contextlib.redirect_stdout(io.StringIO()):
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(float_onnx), str(pre))  # shape inference + graph optimisation, as ORT asks
        out = Path(tmp) / "quantized.onnx"
        reader, cache = _CalibrationReader(batches), None
        if method == "entropy":
            reader, cache = None, _entropy_ranges(pre, (c for clips, _ in batches for c in clips), Path(tmp))
        quantize_static(
            str(pre),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            **({"calibration_cache_path": cache} if cache else {}),
        )
        import onnx

        proto = onnx.load(str(out))
        _unshare_quantization_parameters(proto)
        return atomic_write(path, lambda t: onnx.save_model(proto, t))


def _build(ctx, precision: Precision, path: Path) -> dict:
    """The ONNX artifact of `precision` at `path`, run by ONNX Runtime against its reference."""
    if precision in (Precision.INT8_ORT, Precision.INT8_ORT_ENTROPY):
        float_path = path.with_name(path.stem + ".float.tmp.onnx")
        export_onnx(deploy(ctx.model, per_channel_safe=True), float_path, ctx.example)
        try:
            method = "entropy" if precision is Precision.INT8_ORT_ENTROPY else "minmax"
            ort_quantize_static(float_path, path, ctx.calibration(), method)
        finally:
            float_path.unlink(missing_ok=True)
    elif precision.pt2e_recipe:
        export_onnx(ctx.program(precision), path)
    else:
        model = deploy(ctx.model)
        export_onnx(half_precision(model) if precision is Precision.FP16 else model, path, ctx.example)
    census = onnx_op_census(path)
    if precision not in (Precision.FP32, Precision.FP16) and not census.get("DequantizeLinear"):
        raise ExportError(f"{path.name}: the exporter dropped every QuantizeLinear/DequantizeLinear node")
    import onnxruntime

    session = ort_session(path)
    parity = ctx.parity(
        f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
        run_onnx(session, ctx.clips),
        FORMAT.thresholds[precision],
        lambda: ctx.program(precision).module()(ctx.clips),
    )
    parity["session_config"] = session.uniformer_config
    extra = {}
    if census.get("QuantizeLinear"):
        extra["onnxruntime_session_config"] = {
            "session.x64quantprecision": "1",
            "when": "x86 CPUs without VNNI or AMX: their u8 x s8 kernels saturate int16 pair sums",
        }
    return {
        **extra,
        "census": census,
        "parity": parity,
        "input": ctx.input_spec("batch"),
    }


# Exports of a PT2E graph must reproduce that graph in PyTorch (`PT2E_PARITY`). ONNX Runtime's own
# quantize_static has no PyTorch counterpart.
FORMAT = Format(
    name="onnx",
    suffix=".onnx",
    runtime="onnxruntime",
    thresholds={
        Precision.FP32: FP32_PARITY,
        Precision.FP16: FP16_PARITY,
        **{p: PT2E_PARITY for p in (Precision.INT8, Precision.W8, Precision.W4)},
        Precision.INT8_ORT: Threshold(Reference.NONE),
        Precision.INT8_ORT_ENTROPY: Threshold(Reference.NONE),
    },
    build=_build,
    census=onnx_op_census,
)

ORT_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider")


def _ort_available() -> Optional[str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        return f"onnxruntime is not installed ({err}); pip install 'uniformer-edge[onnx]'"
    return None


def _provider_available(provider: str) -> Optional[str]:
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        return None
    build = {
        "CUDAExecutionProvider": "the onnxruntime-gpu build has it",
        "CoreMLExecutionProvider": "onnxruntime's macOS builds have it",
    }[provider]
    return f"onnxruntime {ort.__version__} has no {provider} ({build})"


def _ort_runner(path, provider: str, threads: int, source: dict) -> Runner:
    session = ort_session(path, threads, [provider])
    return Runner("onnxruntime", provider, lambda clips: run_onnx(session, clips))


RUNTIME = Runtime(
    name="onnxruntime",
    format="onnx",
    settings=ORT_PROVIDERS,
    available=_ort_available,
    setting_available=_provider_available,
    load=_ort_runner,
)
