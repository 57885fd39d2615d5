"""A numpy reference executor of the MIL program inside a saved `.mlpackage`.

Core ML itself only runs on macOS. On every system the package's program, weights included,
can be read back from disk (coremltools' milproto loader) and executed here, op by op, with
each result rounded to the dtype the program declares (so an fp16 program stores fp16 between
ops, while each op computes in fp32 like Core ML's CPU kernels accumulate). What this checks is
the converted program: weights, pads, layouts, quantization parameters, pruning indices. It
says nothing about Core ML's own kernels or their fp16 accumulation on GPU / Neural Engine, so
its figures are labelled "MIL reference", never "Core ML".

An op type without an implementation here is an error naming it (`UnsupportedOp`), never
skipped. The private coremltools modules used to read the program are pinned through the
`coreml` extra's version range."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np

__all__ = [
    "MilReference",
    "UnsupportedOp",
    "load_mil_program",
    "IMPLEMENTED_OPS",
    "FP16_MAX",
    "RUNTIME_NAME",
    "RUNTIME_NOTE",
]

FP16_MAX = 65504.0
RUNTIME_NAME = "MIL reference (numpy)"
RUNTIME_NOTE = (
    "executes the converted MIL program read back from the saved package; it checks the program "
    "(weights, pads, layouts, quantization parameters, pruning indices), not Core ML's kernels"
)

_NP_DTYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "bool": np.bool_,
    "int4": np.int8,
    "uint4": np.uint8,
    "uint1": np.uint8,
    "uint2": np.uint8,
    "uint3": np.uint8,
    "uint6": np.uint8,
}
_INT_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int4": (-8, 7),
    "uint4": (0, 15),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
}


class UnsupportedOp(NotImplementedError):
    """The program holds an op type (or an op setting) the reference does not implement."""


def load_mil_program(path):
    """The MIL `Program` of a saved `.mlpackage`, weights read from its `weight.bin`."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved .mlpackage (no Manifest.json)")
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{path} is not an ML program package (holds {spec.WhichOneof('Type')})")
    return load(spec, spec.specificationVersion, model.weights_dir)


def _dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types

    dtype = var.dtype
    if types.is_tensor(var.sym_type):
        dtype = var.sym_type.get_primitive()
    return types.builtin_to_string(dtype)


# -- op implementations ------------------------------------------------------------------
# Each takes (op, get) where get(name) is the value of the op's input `name` (None when the op
# has no such input) and returns the op's output values in order. Arithmetic is in fp32 (fp64
# for fp64 inputs); the executor rounds each output to its declared dtype.


def _f(x):
    x = np.asarray(x)
    return x if x.dtype == np.float64 else x.astype(np.float32, copy=False)


def _axes(value, rank: int) -> tuple[int, ...]:
    return tuple(int(a) % rank for a in np.atleast_1d(value))


def _conv(op, get):
    x, w, b = _f(get("x")), _f(get("weight")), get("bias")
    n = x.ndim - 2
    strides = [int(s) for s in (get("strides") if get("strides") is not None else [1] * n)]
    dilations = [int(d) for d in (get("dilations") if get("dilations") is not None else [1] * n)]
    groups = int(get("groups") if get("groups") is not None else 1)
    pad_type = str(get("pad_type") if get("pad_type") is not None else "valid")
    kernel = w.shape[2:]
    spatial = x.shape[2:]
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if pad_type == "custom":
        pad = [int(p) for p in get("pad")]
        pads = [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    elif pad_type == "valid":
        pads = [(0, 0)] * n
    elif pad_type in ("same", "same_lower"):
        pads = []
        for size, k, s in zip(spatial, eff, strides):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            small, large = total // 2, total - total // 2
            pads.append((large, small) if pad_type == "same_lower" else (small, large))
    else:
        raise UnsupportedOp(f"conv pad_type {pad_type!r}")
    x = np.pad(x, [(0, 0), (0, 0)] + pads)
    out_size = [(x.shape[2 + i] - eff[i]) // strides[i] + 1 for i in range(n)]
    batch, cin = x.shape[:2]
    cout = w.shape[0]
    cin_g, cout_g = cin // groups, cout // groups
    if w.shape[1] != cin_g:
        raise ValueError(f"conv {op.name}: weight {w.shape} does not fit input channels {cin} in {groups} groups")
    xg = x.reshape(batch, groups, cin_g, *x.shape[2:])
    wg = w.reshape(groups, cout_g, cin_g, *kernel)
    depthwise = cin_g == 1
    out = np.zeros((batch, groups, cout_g, *out_size), dtype=np.float32 if x.dtype != np.float64 else np.float64)
    for tap in np.ndindex(*kernel):
        window = tuple(
            slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in zip(tap, dilations, out_size, strides)
        )
        xs = xg[(slice(None), slice(None), slice(None)) + window]  # (B, G, Cin_g, *out)
        wt = wg[(slice(None), slice(None), slice(None)) + tap]  # (G, Cout_g, Cin_g)
        if depthwise:
            out += xs * wt.reshape(1, groups, cout_g, *([1] * n))
        else:
            flat = xs.reshape(batch, groups, cin_g, -1)
            out += np.matmul(wt, flat).reshape(out.shape)
    out = out.reshape(batch, cout, *out_size)
    if b is not None:
        out += _f(b).reshape(1, cout, *([1] * n))
    return [out]


def _linear(op, get):
    x, w, b = _f(get("x")), _f(get("weight")), get("bias")
    y = np.matmul(x, w.T)
    return [y + _f(b) if b is not None else y]


def _matmul(op, get):
    x, y = _f(get("x")), _f(get("y"))
    if get("transpose_x"):
        x = np.swapaxes(x, -1, -2)
    if get("transpose_y"):
        y = np.swapaxes(y, -1, -2)
    return [np.matmul(x, y)]


def _layer_norm(op, get):
    x = _f(get("x"))
    axes = _axes(get("axes"), x.ndim) if get("axes") is not None else tuple(range(x.ndim))
    eps = float(get("epsilon") if get("epsilon") is not None else 1e-5)
    mean = x.mean(axis=axes, keepdims=True)
    centred = x - mean
    y = centred / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + eps)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    if get("gamma") is not None:
        y = y * _f(get("gamma")).reshape(shape)
    if get("beta") is not None:
        y = y + _f(get("beta")).reshape(shape)
    return [y]


def _softmax(op, get):
    x = _f(get("x"))
    axis = int(get("axis") if get("axis") is not None else -1)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 from the complementary error function's Chebyshev fit (Numerical
    Recipes `erfcc`): relative error below 1.2e-7 everywhere, far inside fp32 parity."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (
        -z * z
        - 1.26551223
        + t
        * (
            1.00002368
            + t
            * (
                0.37409196
                + t
                * (
                    0.09678418
                    + t
                    * (
                        -0.18628806
                        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))
                    )
                )
            )
        )
    )
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def _gelu(op, get):
    x = _f(get("x"))
    mode = str(get("mode") if get("mode") is not None else "EXACT")
    if mode == "EXACT":
        y = 0.5 * x.astype(np.float64) * (1.0 + _erf(x / math.sqrt(2.0)))
    elif mode == "TANH_APPROXIMATION":
        x64 = x.astype(np.float64)
        y = 0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3)))
    elif mode == "SIGMOID_APPROXIMATION":
        y = x / (1.0 + np.exp(-1.702 * x))
    else:
        raise UnsupportedOp(f"gelu mode {mode!r}")
    return [y]


def _binary(fn):
    def run(op, get):
        x, y = np.asarray(get("x")), np.asarray(get("y"))
        if x.dtype.kind == "f" or y.dtype.kind == "f":
            x, y = _f(x), _f(y)
        return [fn(x, y)]

    return run


def _reduce(fn):
    def run(op, get):
        x = np.asarray(get("x"))
        x = _f(x) if x.dtype.kind == "f" else x
        axes = _axes(get("axes"), x.ndim) if get("axes") is not None else None
        return [fn(x, axis=axes, keepdims=bool(get("keep_dims") if get("keep_dims") is not None else False))]

    return run


def _reshape(op, get):
    x, shape = np.asarray(get("x")), [int(s) for s in np.atleast_1d(get("shape"))]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _transpose(op, get):
    return [np.transpose(np.asarray(get("x")), [int(p) for p in get("perm")])]


def _expand_dims(op, get):
    x = np.asarray(get("x"))
    rank = x.ndim + len(np.atleast_1d(get("axes")))
    for axis in sorted(int(a) % rank for a in np.atleast_1d(get("axes"))):
        x = np.expand_dims(x, axis)
    return [x]


def _squeeze(op, get):
    x = np.asarray(get("x"))
    axes = get("axes")
    return [np.squeeze(x) if axes is None else np.squeeze(x, axis=_axes(axes, x.ndim))]


def _slice_by_index(op, get):
    x = np.asarray(get("x"))
    rank = x.ndim
    begin, end = np.atleast_1d(get("begin")).astype(int), np.atleast_1d(get("end")).astype(int)
    stride = np.atleast_1d(get("stride")).astype(int) if get("stride") is not None else np.ones(rank, int)

    def mask(name):
        value = get(name)
        return np.zeros(rank, bool) if value is None else np.atleast_1d(value).astype(bool)

    begin_mask, end_mask, squeeze_mask = mask("begin_mask"), mask("end_mask"), mask("squeeze_mask")
    index = []
    for i in range(rank):
        if squeeze_mask[i]:
            index.append(int(begin[i]))
            continue
        start = None if begin_mask[i] else int(begin[i])
        stop = None if end_mask[i] else int(end[i])
        index.append(slice(start, stop, int(stride[i])))
    return [x[tuple(index)]]


def _split(op, get):
    x = np.asarray(get("x"))
    axis = int(get("axis")) % x.ndim
    sizes = get("split_sizes")
    if sizes is None:
        parts = int(get("num_splits"))
        sizes = [x.shape[axis] // parts] * parts
    edges = np.cumsum([int(s) for s in sizes])[:-1]
    return list(np.split(x, edges, axis=axis))


def _concat(op, get):
    if get("interleave"):
        raise UnsupportedOp("concat with interleave=True")
    return [np.concatenate([np.asarray(v) for v in get("values")], axis=int(get("axis")))]


def _cast(op, get):
    x = np.asarray(get("x"))
    target = _NP_DTYPES.get(str(get("dtype")))
    if target is None:
        raise UnsupportedOp(f"cast to {get('dtype')!r}")
    if np.dtype(target).kind in "iu" and x.dtype.kind == "f":
        x = np.trunc(x)
    return [x.astype(target)]


def _select(op, get):
    return [np.where(np.asarray(get("cond")).astype(bool), get("a"), get("b"))]


def _gather(op, get):
    x, indices = np.asarray(get("x")), np.asarray(get("indices")).astype(np.int64)
    if int(get("batch_dims") or 0):
        raise UnsupportedOp("gather with batch_dims > 0")
    axis = int(get("axis") if get("axis") is not None else 0) % x.ndim
    return [np.take(x, np.where(indices < 0, indices + x.shape[axis], indices), axis=axis)]


def _gather_along_axis(op, get):
    x, indices = np.asarray(get("x")), np.asarray(get("indices")).astype(np.int64)
    axis = int(get("axis") if get("axis") is not None else 0) % x.ndim
    return [np.take_along_axis(x, np.where(indices < 0, indices + x.shape[axis], indices), axis=axis)]


def _scatter_along_axis(op, get):
    data, indices = np.array(get("data")), np.asarray(get("indices")).astype(np.int64)
    updates = np.asarray(get("updates"))
    axis = int(get("axis") if get("axis") is not None else 0) % data.ndim
    mode = str(get("mode") if get("mode") is not None else "add")
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    if mode == "update":
        np.put_along_axis(data, indices, updates, axis=axis)
    elif mode == "add":
        grid = list(np.indices(indices.shape, sparse=True))
        grid[axis] = indices
        np.add.at(data, tuple(grid), updates)
    else:
        raise UnsupportedOp(f"scatter_along_axis mode {mode!r}")
    return [data]


def _topk(op, get):
    x = np.asarray(get("x"))
    x = _f(x) if x.dtype.kind == "f" else x
    k, axis = int(get("k")), int(get("axis") if get("axis") is not None else -1) % x.ndim
    ascending = bool(get("ascending")) if get("ascending") is not None else False
    if get("return_indices") is not None and not bool(get("return_indices")):
        raise UnsupportedOp("topk without indices")
    # Stable: among equal values the lower index first, as PyTorch's CPU topk orders them.
    order = np.argsort(x if ascending else -x, axis=axis, kind="stable")
    indices = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, indices, axis=axis), indices]


def _per_axis(param, x: np.ndarray, axis) -> np.ndarray:
    param = np.asarray(param)
    if param.ndim == 0 or axis is None:
        return param
    shape = [1] * x.ndim
    shape[int(axis) % x.ndim] = -1
    return param.reshape(shape)


def _quantize(op, get):
    x = _f(get("input"))
    dtype = str(get("output_dtype"))
    if dtype not in _INT_RANGES:
        raise UnsupportedOp(f"quantize to {dtype!r}")
    axis = get("axis")
    scale = _f(_per_axis(get("scale"), x, axis))
    zero = _per_axis(get("zero_point") if get("zero_point") is not None else 0, x, axis).astype(np.float32)
    low, high = _INT_RANGES[dtype]
    # round half to even, as Core ML's and PyTorch's quantize round
    return [np.clip(np.rint(x / scale) + zero, low, high)]


def _dequantize(op, get):
    x = np.asarray(get("input")).astype(np.float32)
    axis = get("axis")
    scale = _f(_per_axis(get("scale"), x, axis))
    zero = _per_axis(get("zero_point") if get("zero_point") is not None else 0, x, axis).astype(np.float32)
    return [(x - zero) * scale]


def _expand_blocks(param: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Repeat a blockwise parameter (same rank, each dim dividing the data's) to the data's shape."""
    param = np.asarray(param)
    if param.ndim != len(shape):
        raise ValueError(f"blockwise parameter of rank {param.ndim} for data of rank {len(shape)}")
    for axis, (p, d) in enumerate(zip(param.shape, shape)):
        if d % p:
            raise ValueError(f"blockwise parameter dim {p} does not divide data dim {d}")
        if p != d:
            param = np.repeat(param, d // p, axis=axis)
    return param


def _constexpr_blockwise_shift_scale(op, get):
    data = np.asarray(get("data")).astype(np.float32)
    scale = _expand_blocks(_f(get("scale")), data.shape)
    offset = get("offset")
    if offset is not None:
        data = data - _expand_blocks(np.asarray(offset).astype(np.float32), data.shape)
    return [data * scale]


def _constexpr_affine_dequantize(op, get):
    """iOS16/17 weight decompression: (data - zero_point) * scale, both per `axis` or scalar."""
    data = np.asarray(get("quantized_data")).astype(np.float32)
    axis = int(get("axis") if get("axis") is not None else 0)
    zero = _per_axis(np.asarray(get("zero_point")).astype(np.float32), data, axis)
    return [(data - zero) * _f(_per_axis(get("scale"), data, axis))]


def _constexpr_lut_to_dense(op, get):
    if get("shape") is not None:  # iOS16/17: one palette, indices packed LSB first into bytes
        lut, shape = np.asarray(get("lut")), [int(d) for d in get("shape")]
        nbits = int(round(math.log2(lut.size)))
        if 2**nbits != lut.size or lut.ndim != 1:
            raise UnsupportedOp(f"constexpr_lut_to_dense with a palette of shape {lut.shape}")
        bits = np.unpackbits(np.asarray(get("indices")).astype(np.uint8), bitorder="little")
        count = int(np.prod(shape))
        bits = bits[: count * nbits].reshape(count, nbits).astype(np.int64)
        return [lut[bits @ (1 << np.arange(nbits))].reshape(shape)]
    indices, lut = np.asarray(get("indices")).astype(np.int64), np.asarray(get("lut"))
    if get("vector_axis") is not None or lut.shape[-1] != 1:
        raise UnsupportedOp("constexpr_lut_to_dense with vector palettes")
    rank = indices.ndim
    if lut.ndim != rank + 2:
        raise ValueError(f"lut of rank {lut.ndim} for indices of rank {rank}")
    groups = []
    for axis in range(rank):
        size, count = indices.shape[axis], lut.shape[axis]
        if size % count:
            raise ValueError(f"lut groups {count} do not divide indices dim {size}")
        shape = [1] * rank
        shape[axis] = size
        groups.append((np.arange(size) // (size // count)).reshape(shape))
    return [lut[(*groups, indices, 0)]]


_OPS: dict[str, Callable] = {
    "conv": _conv,
    "linear": _linear,
    "matmul": _matmul,
    "layer_norm": _layer_norm,
    "softmax": _softmax,
    "gelu": _gelu,
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(np.divide),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "greater_equal": _binary(np.greater_equal),
    "greater": _binary(np.greater),
    "less": _binary(np.less),
    "less_equal": _binary(np.less_equal),
    "equal": _binary(np.equal),
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reshape": _reshape,
    "transpose": _transpose,
    "expand_dims": _expand_dims,
    "squeeze": _squeeze,
    "slice_by_index": _slice_by_index,
    "split": _split,
    "concat": _concat,
    "cast": _cast,
    "select": _select,
    "gather": _gather,
    "gather_along_axis": _gather_along_axis,
    "scatter_along_axis": _scatter_along_axis,
    "topk": _topk,
    "quantize": _quantize,
    "dequantize": _dequantize,
    "constexpr_blockwise_shift_scale": _constexpr_blockwise_shift_scale,
    "constexpr_lut_to_dense": _constexpr_lut_to_dense,
    "constexpr_affine_dequantize": _constexpr_affine_dequantize,
}
IMPLEMENTED_OPS = frozenset(_OPS) | {"const"}


def _round(value, dtype_name: str):
    target = _NP_DTYPES.get(dtype_name)
    if target is None:
        raise UnsupportedOp(f"values of dtype {dtype_name}")
    value = np.asarray(value)
    if dtype_name in _INT_RANGES and value.dtype.kind == "f":
        low, high = _INT_RANGES[dtype_name]
        value = np.clip(np.rint(value), low, high)
    return value.astype(target, copy=False)


class MilReference:
    """The program of one saved package, ready to execute on numpy inputs.

    `run(inputs)` returns the named outputs. `magnitudes` (after a run with `track=True`) maps
    each floating-point op output to its largest magnitude over all runs since the last reset,
    the figure to hold against fp16's 65504."""

    def __init__(self, path, function: str = "main"):
        self.path = Path(path)
        self.program = load_mil_program(self.path)
        if function not in self.program.functions:
            raise ValueError(
                f"{self.path}: no function {function!r} in the program (has {', '.join(self.program.functions)})"
            )
        self.function = self.program.functions[function]
        self.ops = list(self.function.operations)
        missing = sorted({op.op_type for op in self.ops} - IMPLEMENTED_OPS)
        if missing:
            raise UnsupportedOp(f"{self.path}: the MIL reference does not implement op type(s) {', '.join(missing)}")
        if any(op.blocks for op in self.ops):
            raise UnsupportedOp(f"{self.path}: ops with nested blocks (control flow) are not implemented")
        self.input_names = list(self.function.inputs)
        self.output_names = [v.name for v in self.function.outputs]
        self.input_dtypes = {n: _dtype_name(v) for n, v in self.function.inputs.items()}
        # Constants are materialised once; constexpr ops (decompression of weights) too.
        self.constants: dict[str, object] = {}
        self._last_use = self._last_uses()
        self.magnitudes: dict[str, float] = {}
        self.op_types: dict[str, str] = {}

    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, op in enumerate(self.ops):
            for value in op.inputs.values():
                for var in value if isinstance(value, (list, tuple)) else [value]:
                    last[var.name] = i
        for name in self.output_names:
            last[name] = len(self.ops)
        return last

    def _constant(self, op):
        key = op.outputs[0].name
        if key not in self.constants:
            value = op.outputs[0].val
            if value is None:
                raise ValueError(f"{self.path}: const {op.name} has no value")
            dtype = _dtype_name(op.outputs[0])
            self.constants[key] = _round(value, dtype) if dtype in _NP_DTYPES else value  # strings stay as they are
        return self.constants[key]

    def run(
        self, inputs: dict, track: bool = False, edit: Optional[Callable[[object, list], list]] = None
    ) -> dict[str, np.ndarray]:
        """Execute the program once. `edit(op, outputs)` may replace an op's outputs (tests use it
        to plant faults)."""
        unknown = set(inputs) - set(self.input_names)
        if unknown or set(self.input_names) - set(inputs):
            raise ValueError(f"{self.path}: inputs {sorted(inputs)} do not match the program's {self.input_names}")
        env: dict[str, object] = {}
        for name, var in self.function.inputs.items():
            value = np.asarray(inputs[name])
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(
                    f"{self.path}: input {name} has shape {tuple(value.shape)}, the program declares {tuple(var.shape)}"
                )
            env[name] = _round(value, self.input_dtypes[name])
        for index, op in enumerate(self.ops):
            if op.op_type == "const":
                env[op.outputs[0].name] = self._constant(op)
                continue
            cached = op.op_type.startswith("constexpr_") and edit is None
            if cached and op.outputs[0].name in self.constants:
                env[op.outputs[0].name] = self.constants[op.outputs[0].name]
                continue

            def get(name, _op=op):
                var = _op.inputs.get(name)
                if var is None:
                    return None
                if isinstance(var, (list, tuple)):
                    return [env[v.name] for v in var]
                return env[var.name]

            try:
                outputs = _OPS[op.op_type](op, get)
            except UnsupportedOp as err:
                raise UnsupportedOp(f"{self.path}: op {op.name} ({op.op_type}): {err}") from None
            if len(outputs) != len(op.outputs):
                raise RuntimeError(f"{op.name}: {len(outputs)} results for {len(op.outputs)} outputs")
            outputs = [_round(value, _dtype_name(var)) for value, var in zip(outputs, op.outputs)]
            if edit is not None:
                outputs = edit(op, outputs)
            for value, var in zip(outputs, op.outputs):
                if tuple(value.shape) != tuple(var.shape) and all(isinstance(d, int) for d in var.shape):
                    raise RuntimeError(
                        f"{self.path}: op {op.name} ({op.op_type}) gave shape {value.shape}, "
                        f"the program declares {tuple(var.shape)}"
                    )
                env[var.name] = value
                if cached:
                    self.constants[var.name] = value
                elif track and value.dtype.kind == "f" and value.size:
                    peak = float(np.abs(value.astype(np.float32)).max())
                    self.magnitudes[var.name] = max(self.magnitudes.get(var.name, 0.0), peak)
                    self.op_types[var.name] = op.op_type
            for value in op.inputs.values():  # free what no later op reads
                for var in value if isinstance(value, (list, tuple)) else [value]:
                    if self._last_use.get(var.name) == index and var.name not in self.constants:
                        env.pop(var.name, None)
        return {name: env[name] for name in self.output_names}

    def decompressed_weights(self) -> dict[str, np.ndarray]:
        """The outputs of the program's constexpr ops (weights decompressed at load time), by name.
        A run caches them; only a reference that has not run yet runs once, on zeros, to fill it."""
        names = [op.outputs[0].name for op in self.ops if op.op_type.startswith("constexpr_")]
        if any(name not in self.constants for name in names):
            self.run({n: np.zeros(v.shape, _NP_DTYPES[self.input_dtypes[n]]) for n, v in self.function.inputs.items()})
        return {name: self.constants[name] for name in names}

    def run_batch(
        self,
        clips: np.ndarray,
        input_name: Optional[str] = None,
        output_name: Optional[str] = None,
        track: bool = False,
    ) -> np.ndarray:
        """One run per clip of `clips` (the programs have a static batch of one); returns the
        concatenated `output_name` (the first output by default) as float32."""
        input_name = input_name or self.input_names[0]
        output_name = output_name or self.output_names[0]
        outs = [self.run({input_name: np.asarray(clip)[None]}, track=track)[output_name] for clip in clips]
        return np.concatenate(outs, axis=0).astype(np.float32)

    def near_overflow(self, factor: float = 4.0) -> list[tuple[str, str, float]]:
        """(output, op type, largest magnitude) of the tracked ops within `factor` of fp16's maximum."""
        return sorted(
            ((name, self.op_types[name], peak) for name, peak in self.magnitudes.items() if peak * factor >= FP16_MAX),
            key=lambda item: -item[2],
        )
