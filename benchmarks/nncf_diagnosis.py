"""Why NNCF's int8 UniFormer-S loses accuracy: NNCF's quantization of our fp32 ONNX export
(UniFormer-S 8x224) redone with one change at a time (SmoothQuant off, op types left float),
each model's logit SQNR against the float model on the same clips.

    pip install 'uniformer-edge[openvino]' nncf
    python benchmarks/nncf_diagnosis.py [--clips 16]

The float reference is OpenVINO running the fp32 export (it matches PyTorch to > 120 dB, see
openvino_peers.md). Reuses `export_models.py`'s S ONNX export; writes
benchmarks/results/nncf_diagnosis.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import EXPORTS, environment, require_exports, write_results
from openvino_peers import ONNX_FP32, nncf_quantize

# variant -> (preset, keyword arguments of nncf.quantize beyond the preset, what changes)
VARIANTS = {
    "default preset": ("default", {}, "as NNCF's documentation makes it"),
    "transformer preset": ("transformer", {}, "model_type=TRANSFORMER: SmoothQuant, then fast bias correction"),
    "transformer, SmoothQuant off": ("transformer", {"smooth_quant": False}, "SmoothQuant alphas -1"),
    "transformer, MatMul float": ("transformer", {"ignored_types": ["MatMul"]}, "every MatMul left float"),
    "default, MatMul float": ("default", {"ignored_types": ["MatMul"]}, "every MatMul left float"),
    "default, Add/Multiply float": ("default", {"ignored_types": ["Add", "Multiply"]}, "elementwise ops float"),
    "default, GroupConvolution float": ("default", {"ignored_types": ["GroupConvolution"]}, "depthwise convs float"),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    import nncf
    import openvino as ov

    from uniformer_edge.calibration import build_dataset, calibration_set
    from uniformer_edge.engine import agreement

    require_exports([ONNX_FP32])
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads}
    source = build_dataset("synthetic", "train", frames=8, size=224, seed=0)
    calib = [c[None].numpy() for batch, _ in calibration_set(source, 32, seed=0, batch_size=8) for c in batch]
    test = build_dataset("synthetic", "test", frames=8, size=224, num_clips=args.clips)
    clips = [test[i][0][None].numpy() for i in range(args.clips)]

    def logits(model) -> torch.Tensor:
        compiled = core.compile_model(model, "CPU", config)
        return torch.cat([torch.from_numpy(compiled(c)[compiled.output(0)].copy()) for c in clips])

    reference = logits(core.read_model(str(EXPORTS / ONNX_FP32)))
    rows = {}
    for name, (preset, options, what) in VARIANTS.items():
        started = time.perf_counter()
        model = nncf_quantize(core.read_model(str(EXPORTS / ONNX_FP32)), nncf.Dataset(calib), preset, options)
        seconds = time.perf_counter() - started
        figures = agreement(reference, logits(model))
        rows[name] = {"what": what, "seconds": seconds, **{k: figures[k] for k in ("sqnr_db", "top1_agreement")}}
        print(f"{name}: {figures['sqnr_db']:.1f} dB", flush=True)
    result = {"clips": args.clips, "variants": rows, "environment": environment()}
    lines = [
        "# NNCF int8 UniFormer-S 8x224: which choice costs the accuracy",
        "",
        f"{result['environment']['processor']}; NNCF {nncf.__version__}. "
        f"Logit SQNR and top-1 agreement against OpenVINO fp32 of the same export, on {args.clips} synthetic "
        "test clips (random weights); 32 calibration clips.",
        "",
        "| NNCF model | change | logit SQNR dB | top-1 agreement | quantize s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {r['what']} | {r['sqnr_db']:.1f} | {100 * r['top1_agreement']:.1f}% | {r['seconds']:.0f} |"
        for n, r in rows.items()
    ]
    lines += ["", f"Command: `python benchmarks/nncf_diagnosis.py --clips {args.clips}`."]
    write_results("nncf_diagnosis", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
