"""How reproducible is the W8A8 PT2E graph of a trained light model, and how close do its
exports come to it?

    python benchmarks/int8_stability.py [--checkpoint CKPT] [--num-clips 16]

On the reference model (UniFormer-XXS 8x64, trained by benchmarks/train_reference.py, cached) or
`--checkpoint`, quantized W8A8 as the export step does it (32 synthetic calibration clips, seed 0):
1. the PT2E graph in PyTorch, clip by clip against all clips in one batch (the same graph; the
   kernels sum in another order), and with 1e-6 noise on the input;
2. the Core ML package of that graph (3d form) run by the MIL reference, and the graph replayed
   with the package's own token orders forced into its top-k ops;
3. ONNX Runtime running the graph's int8 QDQ export;
each as cosine against the graph (clip by clip), with SQNR and top-1 agreement against float.
Writes benchmarks/results/int8_stability.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import REFERENCE_RECIPE, environment, machine_line, reference_checkpoint, write_results
from uniformer_edge.calibration import build_dataset, calibration_set
from uniformer_edge.engine import agreement
from uniformer_edge.export.base import PRUNING_SQNR_MARGIN_DB
from uniformer_edge.models import create_model, read_state_dict
from uniformer_edge.quantize import QuantConfig, quantize_ptq


def _cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [F.cosine_similarity(x.flatten(), y.flatten(), dim=0).item() for x, y in zip(a, b)]


def _row(name: str, output: torch.Tensor, graph: torch.Tensor, float_logits: torch.Tensor) -> dict:
    per_clip = _cosines(output, graph)
    vs_float = agreement(float_logits, output)
    return {
        "run": name,
        "cosine_vs_graph": F.cosine_similarity(output.flatten(), graph.flatten(), dim=0).item(),
        "min_clip_cosine_vs_graph": min(per_clip),
        "clips_below_0.999": sum(c < 0.999 for c in per_clip),
        "sqnr_vs_float_db": vs_float["sqnr_db"],
        "top1_agreement_vs_float": vs_float["top1_agreement"],
        "clip_cosines_vs_graph": per_clip,
        "clip_error_energy_vs_float": ((output - float_logits) ** 2).flatten(1).sum(1).tolist(),
        "clip_float_energy": (float_logits**2).flatten(1).sum(1).tolist(),
    }


class _TopkRecorder(torch.fx.Interpreter):
    """Runs a graph, recording (or, given `forced`, imposing) the indices of its top-k ops."""

    def __init__(self, gm, forced=None):
        super().__init__(gm)
        self.indices, self.forced = [], list(forced) if forced is not None else None

    def call_function(self, target, args, kwargs):
        if target == torch.ops.aten.topk.default and self.forced is not None:
            scores = args[0]
            index = torch.as_tensor(self.forced.pop(0)).long().reshape(scores.shape[0], -1)
            return scores.gather(1, index), index
        out = super().call_function(target, args, kwargs)
        if target == torch.ops.aten.topk.default:
            self.indices.append(out[1].clone())
        return out


def worst_group_margin(row: dict, graph_row: dict, group: int = 4) -> float:
    """The lowest, over consecutive groups of `group` clips (the export's default check clips), of
    the row's logit SQNR against float minus the graph's: what the export's token-pruning rule sees."""
    signal, error, own = (
        row["clip_float_energy"],
        row["clip_error_energy_vs_float"],
        graph_row["clip_error_energy_vs_float"],
    )
    margins = []
    for i in range(0, len(signal) - group + 1, group):
        s = sum(signal[i : i + group])
        margins.append(
            10 * np.log10(s / max(sum(error[i : i + group]), 1e-30))
            - 10 * np.log10(s / max(sum(own[i : i + group]), 1e-30))
        )
    return min(margins) if margins else float("nan")


def measure(checkpoint: str, num_clips: int, folder: Path) -> dict:
    from uniformer_edge.export.coreml import convert_coreml, save_mlpackage
    from uniformer_edge.export.mil_reference import MilReference
    from uniformer_edge.export.onnx import export_onnx, ort_session, run_onnx

    r = REFERENCE_RECIPE
    data = dict(frames=r["frames"], size=r["size"])
    num_classes = int(read_state_dict(checkpoint)["head.weight"].shape[0])
    model = create_model(r["variant"], num_classes=num_classes, checkpoint=checkpoint, new_head=False).eval()
    calib = calibration_set(build_dataset("synthetic", "train", seed=0, **data), 32, seed=0, batch_size=8)
    example = next(iter(calib))[0][:1]
    program, _ = quantize_ptq(model, calib, QuantConfig(recipe="w8a8"), example, progress=False)
    graph = program.module()
    test = build_dataset("synthetic", "test", num_clips=num_clips, **data)
    clips = torch.stack([test[i][0] for i in range(num_clips)])
    cut = []  # the float model's scores on either side of each pruning cut

    def at_cut(block, args):
        scores = args[2]
        if scores is not None and block.prune_ratio < 1:
            keep = int(scores.shape[1] * block.prune_ratio)
            ranked = torch.sort(scores, dim=1, descending=True).values
            cut.append({"last_kept": ranked[:, keep - 1].tolist(), "first_merged": ranked[:, keep].tolist()})

    hooks = [b.register_forward_pre_hook(at_cut) for b in list(model.blocks3) + list(model.blocks4)]
    with torch.no_grad():
        float_logits = model(clips)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        single = torch.cat([graph(c[None]) for c in clips])
        batched = graph(clips)
        noisy = torch.cat([graph((c + 1e-6 * torch.randn_like(c))[None]) for c in clips])
        graph_orders = []
        for c in clips:
            recorder = _TopkRecorder(graph)
            recorder.run(c[None])
            graph_orders.append(recorder.indices)
    rows = [
        _row("PT2E graph, clip by clip (the reference)", single, single, float_logits),
        _row("PT2E graph, all clips in one batch", batched, single, float_logits),
        _row("PT2E graph, 1e-6 noise on the input", noisy, single, float_logits),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        package = save_mlpackage(convert_coreml(graph, example, "int8", "ios17"), folder / "int8-3d.mlpackage")
    reference = MilReference(package)
    package_orders, outputs = [], []
    for c in clips:
        orders = []

        def record(op, outs, orders=orders):
            if op.op_type == "topk":
                orders.append(outs[1].copy())
            return outs

        outputs.append(reference.run({"video": c[None].numpy()}, edit=record)["logits"])
        package_orders.append(orders)
    package_logits = torch.from_numpy(np.concatenate(outputs).astype(np.float32))
    rows.append(_row("Core ML package (3d form), MIL reference", package_logits, single, float_logits))
    with torch.no_grad():
        forced = torch.cat([_TopkRecorder(graph, orders).run(c[None]) for c, orders in zip(clips, package_orders)])
    rows.append(_row("PT2E graph with the package's token orders forced", package_logits, forced, float_logits))
    rows[-1]["run"] = "Core ML package vs the PT2E graph with the package's token orders forced"
    faulty = MilReference(package)  # a planted conversion fault: the input's quantization scale 2x too small
    quantize = next(op for op in faulty.ops if op.op_type == "quantize")
    faulty.constants[quantize.inputs["scale"].name] = np.asarray(quantize.inputs["scale"].val) * 0.5
    faulty_logits = torch.from_numpy(
        np.concatenate([faulty.run({"video": c[None].numpy()})["logits"] for c in clips]).astype(np.float32)
    )
    planted = _row(
        "Core ML package with a planted fault (input quantization scale 2x too small)",
        faulty_logits,
        single,
        float_logits,
    )
    onnx_path = export_onnx(program, folder / "int8.onnx")
    rows.append(_row("ONNX Runtime, int8 QDQ export", run_onnx(ort_session(onnx_path), clips), single, float_logits))
    rows.append(planted)
    ratios = [b.prune_ratio for b in list(model.blocks3) + list(model.blocks4) if b.prune_ratio < 1]
    kept_differ = orders_differ = total = 0
    for g, p in zip(graph_orders, package_orders):
        for ratio, a, b in zip(ratios, g, p):
            a, b = a.numpy().ravel(), np.asarray(b).ravel()
            keep = int(len(a) * ratio)
            total += 1
            orders_differ += not np.array_equal(a, b)
            kept_differ += set(a[:keep].tolist()) != set(b[:keep].tolist())
    first_flip = _first_flip(graph, clips, single, batched)
    return {
        "rows": rows,
        "topk_orders": {"total": total, "order_differs": orders_differ, "kept_set_differs": kept_differ},
        "first_difference_batched_vs_single": first_flip,
        "float_scores_at_cut": cut,
        "clips": num_clips,
    }


def _first_flip(graph, clips, single, batched) -> dict:
    """The first int8 tensor at which the clip-by-clip and the batched runs of the graph differ,
    on the clip where they differ most."""
    worst = int(np.argmin(_cosines(batched, single)))

    def record(x):
        values = {}

        class Recorder(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                if isinstance(out, torch.Tensor) and out.dtype == torch.int8 and out.dim() > 0:
                    values[n.name] = out
                return out

        with torch.no_grad():
            Recorder(graph).run(x)
        return values

    one, every = record(clips[worst : worst + 1]), record(clips)
    for name, value in one.items():
        other = every.get(name)
        if other is None or other.shape[0] != len(clips) or value.shape[0] != 1:
            continue
        changed = int((value != other[worst : worst + 1]).sum())
        if changed:
            step = int((value.int() - other[worst : worst + 1].int()).abs().max())
            return {"clip": worst, "node": name, "values_changed": changed, "of": value.numel(), "largest_step": step}
    return {"clip": worst, "node": None}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a trained light checkpoint (default: the reference model)")
    p.add_argument("--num-clips", type=int, default=16, help="test clips (default 16)")
    args = p.parse_args()
    checkpoint = args.checkpoint or str(reference_checkpoint())
    with tempfile.TemporaryDirectory() as tmp:
        data = measure(checkpoint, args.num_clips, Path(tmp))
    data.update(checkpoint=checkpoint, environment=environment())
    env = data["environment"]
    flip = data["first_difference_batched_vs_single"]
    orders = data["topk_orders"]
    median_cut = float(np.median([v for c in data["float_scores_at_cut"] for v in c["first_merged"]]))
    lines = [
        "# Reproducibility of the W8A8 graph of a trained light model",
        "",
        f"UniFormer-{REFERENCE_RECIPE['variant'].upper()} {REFERENCE_RECIPE['frames']}x{REFERENCE_RECIPE['size']} "
        f"({'the reference model' if not args.checkpoint else '--checkpoint ' + args.checkpoint}), W8A8 PT2E graph "
        f"calibrated on 32 synthetic clips as the export step does, {data['clips']} test clips.",
        "",
        "| run | cosine vs graph | lowest clip | clips < 0.999 | SQNR vs float (dB) | top-1 agreement vs float "
        "| worst 4-clip SQNR vs float, minus the graph's (dB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        row["worst_4clip_sqnr_margin_db"] = worst_group_margin(row, data["rows"][0])
        lines.append(
            f"| {row['run']} | {row['cosine_vs_graph']:.4f} | {row['min_clip_cosine_vs_graph']:.4f} | "
            f"{row['clips_below_0.999']} | {row['sqnr_vs_float_db']:.1f} | "
            f"{100 * row['top1_agreement_vs_float']:.1f}% | {row['worst_4clip_sqnr_margin_db']:+.1f} |"
        )
    correct = [row for row in data["rows"][1:] if "planted" not in row["run"]]
    worst = min(row["worst_4clip_sqnr_margin_db"] for row in correct)
    fault = next(row for row in data["rows"] if "planted" in row["run"])
    lines += [
        "",
        f"The clip-by-clip and batched runs of the same graph first differ at `{flip.get('node')}` "
        f"({flip.get('values_changed')} of {flip.get('of')} int8 values, by {flip.get('largest_step')} step) on clip "
        f"{flip['clip']}: the kernels sum in another order, an fp32 result at a rounding boundary moves by one "
        f"int8 step, and the token pruning amplifies it. Of {orders['total']} pruning top-k ops, the package orders "
        f"the tokens differently from the graph in {orders['order_differs']} and "
        f"keeps another set of tokens in {orders['kept_set_differs']}.",
        "",
        f"In the float model the median score of the first merged token is {median_cut:.2g} (the class token's "
        f"attention, a softmax tail), so a small perturbation anywhere upstream can move tokens across the cut.",
        "",
        "The bound of PT2E-derived int8 artifacts (cosine >= 0.999 against this graph) therefore cannot be met "
        "on every clip by any runtime on such a model, this graph itself included: there it measures summation "
        "order, not conversion faults. The export judges an artifact of a token-pruning model that misses it by "
        "accuracy instead (`export.base.PRUNING_SQNR_MARGIN_DB`): its logit SQNR against float on the check "
        f"clips may be at most {PRUNING_SQNR_MARGIN_DB:g} dB below the graph's. Here the lowest, over groups of "
        f"4 clips (the default check clips), is {worst:+.1f} dB for the correct programs above and "
        f"{fault['worst_4clip_sqnr_margin_db']:+.1f} dB for the package with the planted fault.",
        "",
        f"Command: `python benchmarks/int8_stability.py{' --checkpoint ' + args.checkpoint if args.checkpoint else ''}"
        f" --num-clips {data['clips']}` ({machine_line(env)}).",
    ]
    write_results("int8_stability", data, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
