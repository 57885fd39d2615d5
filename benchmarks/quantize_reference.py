"""Quantization accuracy on the synthetic reference model, beside the peers, in one run.

    python benchmarks/quantize_reference.py [--num-calib 32] [--num-eval 6000] [--skip-qat]
    python benchmarks/quantize_reference.py --executorch-only   # rescore the .pte row alone
    python benchmarks/quantize_reference.py --openvino-only     # score the OpenVINO rows alone
    python benchmarks/quantize_reference.py --rewrite           # judge the targets again, no scoring

Every method sees the same calibration clips (class-stratified from the training split) and
is scored on the same evaluation clips (the test split): our PT2E recipes (w8a8 with each
observer, weight-only w8/w4, w4a8) and QAT, ONNX Runtime's `quantize_static` (QDQ,
per-channel, MinMax and Entropy, after `quant_pre_process`), torchao's stock X86 PT2E
quantizer applied directly to the same deploy-form graph, our OpenVINO IR int8 export and NNCF's
int8 models of our fp32 ONNX, run by OpenVINO (the presets and the fix of `openvino_peers.NNCF`),
and the int8 ExecuTorch program
(XNNPACK quantizer) run by the ExecuTorch runtime. Reports top-1/top-5, the drop against
the float model with its paired standard error, logit SQNR, KL and top-1 agreement with it,
and the time taken, and judges the targets: the suite's fastest int8 program within 0.3 top-1
points of float after calibration and 0.1 after QAT, each resolved by the clips (drop plus two
standard errors within the bound).
Writes benchmarks/results/quantize_reference.{json,md}. `--executorch-only` reruns the
ExecuTorch row (after a change to the XNNPACK form) and keeps every other row, the QAT and the
pruning figures of the committed result.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from common import (
    EXECUTORCH_QAT_ROW,
    EXECUTORCH_ROW,
    INT8_DROP_BOUNDS,
    OPENVINO_IR_QAT_ROW,
    OPENVINO_IR_ROW,
    REFERENCE_RECIPE,
    RESULTS,
    drop_verdict,
    environment,
    machine_line,
    reference_checkpoint,
    reference_qat_job,
    row_clips,
    torchao_x86_prepare,
    write_results,
    x86_census_text,
)
from openvino_peers import NNCF, nncf_quantize
from uniformer_edge.calibration import build_dataset, calibration_set
from uniformer_edge.engine import agreement, collect_logits, top1_drop, topk_accuracy
from uniformer_edge.export.executorch import executorch_available, load_executorch, lower_executorch, run_executorch
from uniformer_edge.quantize.xnnpack import xnnpack_quantize
from uniformer_edge.export.onnx import export_onnx, ort_quantize_static, ort_session, run_onnx
from uniformer_edge.export.openvino import compile_openvino, openvino_available, run_openvino, save_ir
from uniformer_edge.models import create_model, deploy
from uniformer_edge.models.uniformer import EvoSABlock
from uniformer_edge.quantize import QuantConfig, QuantizeJob, quantize_ptq
from uniformer_edge.quantize.config import OPENVINO_FORM, QAT_LR
from uniformer_edge.quantize.ptq import calibrate, export_float
from uniformer_edge.quantize.qat import QATSchedule, run_qat

R = REFERENCE_RECIPE


def torchao_x86(model, calib, example):
    """torchao's stock X86 Inductor quantizer on the deploy-form graph, calibrated, converted, and
    what it quantized (`torchao_x86_prepare`)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared, census = torchao_x86_prepare(export_float(model, example).module())

    class _Prepared:  # calibrate() only needs `.module`
        module = prepared

    calibrate(_Prepared, calib, progress=False)
    return convert_pt2e(prepared), census


def executorch_int8_logits(model, example, calib, eval_set, desc="ExecuTorch", finetuning=None):
    """Logits of the int8 XNNPACK `.pte` of `model` (the suite's fastest int8 path; with
    `finetuning=(schedule, train_set)` after QAT), run by the ExecuTorch runtime, and the
    seconds taken to quantize and lower it."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        pte = Path(tmp) / "int8.pte"
        lower_executorch(xnnpack_quantize(model, example, calib, finetuning), example, pte)
        method = load_executorch(pte)
        seconds = time.time() - started
        return collect_logits(lambda x: run_executorch(method, x), eval_set, batch_size=32, desc=desc)[0], seconds


def nncf_available() -> Optional[str]:
    """Why NNCF's rows cannot be scored here, or None."""
    missing = openvino_available()
    if missing:
        return missing
    try:
        import nncf  # noqa: F401
    except ImportError as err:
        return f"nncf is not installed ({err}); pip install nncf"
    return None


def nncf_note() -> str:
    import nncf

    return f"NNCF {nncf.__version__} on our fp32 ONNX, run by OpenVINO's CPU plugin at f32"


def openvino_ir_logits(model, calib, eval_set, example, qat_job: Optional[QuantizeJob] = None) -> tuple:
    """(logits, seconds) of our OpenVINO IR int8 program, made as `export --format openvino
    --precision int8` makes it (PT2E w8a8 in `OPENVINO_FORM`, ONNX, converted to IR), or with
    `qat_job` (`quantize --form openvino --method qat`, then `export --quantized`), and run clip by
    clip by OpenVINO at f32 inference precision."""
    started = time.time()
    if qat_job is None:
        program, _ = quantize_ptq(model, calib, QuantConfig(recipe="w8a8", **OPENVINO_FORM), example, progress=False)
    else:
        program, _, _ = run_qat(model, calib, qat_job, example, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        ir = save_ir(export_onnx(program, Path(tmp) / "int8.onnx"), Path(tmp) / "int8.openvino")
        compiled, _ = compile_openvino(ir, "CPU", torch.get_num_threads(), "f32")
    seconds = time.time() - started
    return collect_logits(lambda x: run_openvino(compiled, x), eval_set, batch_size=32, desc="OpenVINO IR")[0], seconds


def nncf_row(float_onnx: Path, calib, eval_set, preset: str, options: dict):
    """(row name, logits, seconds) of NNCF's int8 model of our fp32 ONNX export `float_onnx`, made
    with `preset` and `options` as `openvino_peers.NNCF` makes UniFormer-S's, calibrated on the
    same clips as every other method and run clip by clip by OpenVINO."""
    import nncf
    import openvino as ov

    ignored = options.get("ignored_types")
    name = f"OpenVINO NNCF int8 ({preset} preset" + (f", {'/'.join(ignored)} float" if ignored else "") + ")"
    clips = [clip[None].numpy() for batch, _ in calib for clip in batch]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        quantized = nncf_quantize(
            ov.Core().read_model(str(float_onnx)), nncf.Dataset(clips), preset, options, len(clips)
        )
        ov.save_model(quantized, str(Path(tmp) / "int8.xml"))
        compiled, _ = compile_openvino(Path(tmp) / "int8.xml", "CPU", torch.get_num_threads(), "f32")
        seconds = time.time() - started
        run = lambda x: run_openvino(compiled, x)  # noqa: E731  (clip by clip: the export's batch is the example's)
        return name, collect_logits(run, eval_set, batch_size=32, desc=name)[0], seconds


def without_pruning(model):
    """The same weights with every token kept (no top-k selection)."""
    model = copy.deepcopy(model)
    for block in model.modules():
        if isinstance(block, EvoSABlock):
            block.prune_ratio = 1.0
    return model


def weight_noise_sqnr(model, clips, rel: float) -> float:
    """Logit SQNR after adding Gaussian noise of `rel` x (per-output-channel max |w|) to every
    weight matrix: how chaotic the model is, whatever the quantizer."""
    noisy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            if p.ndim > 1:
                scale = p.abs().amax(dim=tuple(range(1, p.ndim)), keepdim=True)
                p.add_(torch.randn(p.shape, generator=g) * scale * rel)
        return agreement(model(clips), noisy(clips))["sqnr_db"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-calib", type=int, default=32)
    p.add_argument(
        "--num-eval",
        type=int,
        default=6000,
        help="test clips (default 6000: a drop's standard error near 0.1 points); the test split renders "
        "any number, and its first 1200 are the standard split",
    )
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--qat-clips", type=int, default=1024)
    p.add_argument("--qat-lr", type=float, help="default: the quantize CLI's for the recipe's weight bits")
    p.add_argument("--skip-qat", action="store_true")
    p.add_argument("--et-qat-epochs", type=int, default=2, help="QAT epochs of the ExecuTorch int8 program")
    p.add_argument("--et-qat-lr", type=float, default=QAT_LR[8], help="its learning rate (default: the export CLI's)")
    # each keeps the committed rows the others would rescore
    only = p.add_mutually_exclusive_group()
    only.add_argument(
        "--executorch-only",
        action="store_true",
        help="rescore only the ExecuTorch rows (and the no-pruning ExecuTorch entry); keep the rest of "
        "results/quantize_reference.json",
    )
    only.add_argument(
        "--openvino-only",
        action="store_true",
        help="score only the OpenVINO rows (NNCF's int8 models); keep the rest of results/quantize_reference.json",
    )
    p.add_argument(
        "--keep-nncf-rows",
        action="store_true",
        help="with --openvino-only: keep NNCF's rows of results/quantize_reference.json (our recipes do not "
        "change them) and score our OpenVINO IR rows alone",
    )
    only.add_argument(
        "--rewrite",
        action="store_true",
        help="score nothing: judge the targets and write the Markdown again from results/quantize_reference.json",
    )
    return p


def main():
    args = parser().parse_args()
    if args.rewrite:
        result = json.loads((RESULTS / "quantize_reference.json").read_text())
        result.setdefault("command", _command(result))
        write_report(result)
        return
    if args.executorch_only and executorch_available():  # else the committed row would be kept as if rescored
        raise SystemExit(f"--executorch-only: {executorch_available()}")
    if args.keep_nncf_rows and not args.openvino_only:
        raise SystemExit("--keep-nncf-rows goes with --openvino-only")
    if args.openvino_only:  # else the committed rows would be kept as if rescored
        missing = openvino_available() if args.keep_nncf_rows else nncf_available()
        if missing:
            raise SystemExit(f"--openvino-only: {missing}")
    torch.manual_seed(0)
    ckpt = reference_checkpoint()
    model = create_model(R["variant"], num_classes=12, checkpoint=ckpt).eval()
    data = dict(frames=R["frames"], size=R["size"], seed=0)
    calib = calibration_set(build_dataset("synthetic", "train", **data), args.num_calib, seed=0, batch_size=8)
    eval_set = build_dataset("synthetic", "test", num_clips=args.num_eval, **data)
    example = next(iter(calib))[0][:1]

    def qat_job(config: QuantConfig, tmp: str, **options) -> QuantizeJob:
        return reference_qat_job(config, tmp, args.num_calib, **options)

    def run_torch(fn):
        with torch.no_grad():
            return collect_logits(fn, eval_set, batch_size=32, desc="evaluating")

    float_logits, labels = run_torch(model)
    rows = {}

    def record(name, logits, seconds, group, note=""):
        top1 = topk_accuracy(logits, labels, 1)
        rows[name] = {
            "group": group,
            "top1": top1,
            "top5": topk_accuracy(logits, labels, 5),
            **top1_drop(float_logits, logits, labels),
            "seconds": round(seconds, 1),
            "clips": len(labels),
            "note": note,
            **agreement(float_logits, logits),
        }
        r = rows[name]
        print(
            f"{name:34s} top-1 {100 * r['top1']:6.2f}%  drop {r['drop_points']:5.2f} ± {r['drop_se_points']:.2f}  "
            f"SQNR {r['sqnr_db']:5.1f} dB  agree {100 * r['top1_agreement']:.1f}%  {seconds:.0f} s",
            flush=True,
        )

    record("float (fp32)", float_logits, 0.0, "float")
    if args.executorch_only or args.openvino_only:
        previous = json.loads((RESULTS / "quantize_reference.json").read_text())
        # The OpenVINO rows alone may be scored on more test clips than the table, to resolve a bound:
        # each row keeps its count and is scored against float on its own clips, the float row of that
        # count beside them (the test split renders any number, the first ones always the same).
        more_clips = args.openvino_only and len(labels) > previous["evaluation_clips"]
        if previous["calibration_clips"] != calib.num_clips or (
            previous["evaluation_clips"] != len(labels) and not more_clips
        ):
            raise SystemExit(
                f"--{'executorch' if args.executorch_only else 'openvino'}-only needs the clip counts of the "
                "committed result "
                f"({previous['calibration_clips']} calibration, {previous['evaluation_clips']} evaluation"
                + (", or more evaluation clips" if args.openvino_only else "")
                + ")"
            )
        if more_clips:
            rows[f"float (fp32), {len(labels)} clips"] = rows.pop("float (fp32)")
        rows.update({name: row for name, row in previous["rows"].items() if name not in rows})
    else:
        for recipe, observer in (
            ("w8a8", "minmax"),
            ("w8a8", "percentile"),
            ("w8a8", "mse"),
            ("w8a8", "moving_average"),
            ("w8", "minmax"),
            ("w4a8", "minmax"),
            ("w4", "minmax"),
        ):
            started = time.time()
            program, _ = quantize_ptq(
                model, calib, QuantConfig(recipe=recipe, observer=observer), example, progress=False
            )
            name = f"ours PTQ {recipe}" + (f" ({observer})" if recipe.endswith("a8") else "")
            record(name, run_torch(program.module())[0], time.time() - started, "ours")

        started = time.time()
        x86, x86_census = torchao_x86(model, calib, example)
        record(
            "torchao X86InductorQuantizer (default)",
            run_torch(x86)[0],
            time.time() - started,
            "peer",
            x86_census_text(x86_census),
        )

        with tempfile.TemporaryDirectory() as tmp:
            float_onnx = export_onnx(deploy(model, per_channel_safe=True), Path(tmp) / "float.onnx", example)
            for method in ("minmax", "entropy"):
                started = time.time()
                path = ort_quantize_static(float_onnx, Path(tmp) / f"{method}.onnx", calib, method)
                session = ort_session(path)
                seconds = time.time() - started
                record(
                    f"ORT quantize_static QDQ per-channel ({method})",
                    collect_logits(lambda x: run_onnx(session, x), eval_set, batch_size=32, desc="ORT")[0],
                    seconds,
                    "peer",
                )

    def unpruned_float_logits(unpruned):
        with torch.no_grad():
            return collect_logits(unpruned, eval_set, batch_size=32, desc="no pruning")[0]

    def no_pruning_entry(unpruned_logits, q):
        """Logits `q` of a quantized form of the weights without pruning, scored against their float model."""
        return {
            "top1": topk_accuracy(q, labels, 1),
            **top1_drop(unpruned_logits, q, labels),
            **agreement(unpruned_logits, q),
        }

    def no_pruning_executorch(unpruned, unpruned_logits):
        """The int8 .pte of the weights without pruning."""
        q = executorch_int8_logits(unpruned, example, calib, eval_set, desc="no pruning, ExecuTorch")[0]
        return no_pruning_entry(unpruned_logits, q)

    if not args.executorch_only:
        missing = openvino_available()
        if missing:
            print(f"OpenVINO IR row skipped: {missing}", flush=True)
        else:
            record(
                OPENVINO_IR_ROW,
                *openvino_ir_logits(model, calib, eval_set, example),
                "ours",
                "`export --format openvino --precision int8`, run by OpenVINO's CPU plugin at f32",
            )
            # QAT as a user makes it: `quantize --form openvino --method qat` at the CLI's defaults
            with tempfile.TemporaryDirectory() as tmp:
                config = QuantConfig(recipe="w8a8", qat=True, **OPENVINO_FORM)
                job = qat_job(config, tmp)
                record(
                    OPENVINO_IR_QAT_ROW,
                    *openvino_ir_logits(model, calib, eval_set, example, job),
                    "ours",
                    f"`quantize --form openvino --method qat` at its defaults ({job.qat_epochs} epoch x "
                    f"{job.qat_clips} clips, lr {job.qat_lr:g}, distillation weight {job.distill_weight:g}), "
                    "exported as IR",
                )
        missing = nncf_available()
        if args.keep_nncf_rows:
            print("NNCF rows kept from results/quantize_reference.json", flush=True)
        elif missing:
            print(f"NNCF rows skipped: {missing}", flush=True)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                float_onnx = export_onnx(deploy(model), Path(tmp) / "float.onnx", example)
                for preset, options in NNCF.values():
                    record(*nncf_row(float_onnx, calib, eval_set, preset, options), "peer", nncf_note())

    unavailable = executorch_available()
    if unavailable:
        print(f"ExecuTorch row skipped: {unavailable}", flush=True)
    elif not args.openvino_only:
        record(
            EXECUTORCH_ROW,
            *executorch_int8_logits(model, example, calib, eval_set),
            "ours",
            "the suite's fastest int8 path, run by the ExecuTorch runtime",
        )
        schedule = QATSchedule(epochs=args.et_qat_epochs, lr=args.et_qat_lr, batch_size=8, distill_weight=1.0)
        train_set = build_dataset("synthetic", "train", num_clips=args.qat_clips, **data)
        record(
            EXECUTORCH_QAT_ROW,
            *executorch_int8_logits(model, example, calib, eval_set, "ExecuTorch QAT", (schedule, train_set)),
            "ours",
            f"the same program after QAT: {schedule.epochs} epochs x {len(train_set)} clips, lr {schedule.lr}, "
            "distillation only, activation ranges from the calibration",
        )

    if args.executorch_only:
        qat_info, sensitivity = previous["qat"], previous["pruning_sensitivity"]
        unpruned = without_pruning(model)
        sensitivity["no_pruning_executorch_int8"] = no_pruning_executorch(unpruned, unpruned_float_logits(unpruned))
    elif args.openvino_only:
        qat_info, sensitivity = previous["qat"], previous["pruning_sensitivity"]
    else:
        qat_info = None
        if not args.skip_qat:
            # QAT at the lowest bit width where PTQ loses more than a point.
            lossy = [n for n in ("ours PTQ w4a8 (minmax)", "ours PTQ w4") if rows[n]["drop_points"] > 1.0]
            recipe = "w4a8" if "ours PTQ w4a8 (minmax)" in lossy else ("w4" if lossy else "w4a8")
            with tempfile.TemporaryDirectory() as tmp:
                job = qat_job(
                    QuantConfig(recipe=recipe, qat=True),
                    tmp,
                    qat_epochs=args.qat_epochs,
                    qat_clips=args.qat_clips,
                    qat_lr=args.qat_lr,
                )
                started = time.time()
                program, _, info = run_qat(model, calib, job, example)
                qat_info = info["qat"]
                record(
                    f"ours QAT {recipe}",
                    run_torch(program.module())[0],
                    time.time() - started,
                    "ours",
                    f"{args.qat_epochs} epochs x {args.qat_clips} clips, lr {job.qat_lr:g}, "
                    f"distillation weight {job.distill_weight:g}",
                )
            ptq_drop = rows[f"ours PTQ {recipe}" + (" (minmax)" if recipe == "w4a8" else "")]["drop_points"]
            qat_info["ptq_drop_points"] = ptq_drop
            qat_info["recovered_fraction"] = (
                (ptq_drop - rows[f"ours QAT {recipe}"]["drop_points"]) / ptq_drop if ptq_drop > 0 else None
            )

        # Token pruning is a discrete top-k choice: any perturbation that reorders tokens near the cut
        # changes what later blocks see. Measure that sensitivity, and the same PTQ without pruning.
        clips = torch.stack([eval_set[i][0] for i in range(min(96, len(eval_set)))])
        unpruned = without_pruning(model)
        sensitivity = {
            "clips": len(clips),
            "weight_noise_sqnr_db": {
                f"{rel:g}": {
                    "pruning": weight_noise_sqnr(model, clips, rel),
                    "no_pruning": weight_noise_sqnr(unpruned, clips, rel),
                }
                for rel in (1e-3, 4e-3)
            },
        }
        unpruned_logits = unpruned_float_logits(unpruned)
        sensitivity["no_pruning_float_top1"] = topk_accuracy(unpruned_logits, labels, 1)
        for recipe in ("w8a8", "w8"):
            program, _ = quantize_ptq(unpruned, calib, QuantConfig(recipe=recipe), example, progress=False)
            with torch.no_grad():
                q = collect_logits(program.module(), eval_set, batch_size=32, desc="no pruning, quantized")[0]
            sensitivity[f"no_pruning_{recipe}"] = no_pruning_entry(unpruned_logits, q)
        if not unavailable:
            sensitivity["no_pruning_executorch_int8"] = no_pruning_executorch(unpruned, unpruned_logits)
        print(sensitivity, flush=True)

    if args.openvino_only:
        rows = _float_beside_its_rows(rows, previous["evaluation_clips"])
    result = {
        "recipe": R,
        "command": _command(vars(args)),
        "checkpoint": str(ckpt),
        "calibration_clips": calib.num_clips,
        "evaluation_clips": len(labels),
        "rows": rows,
        "qat": qat_info,
        "pruning_sensitivity": sensitivity,
        "environment": environment(),
    }
    if args.executorch_only or args.openvino_only:
        result = rescored_alone(result, previous, args)
    write_report(result)


def rescored_alone(result: dict, previous: dict, args: argparse.Namespace) -> dict:
    """`result` of an `--executorch-only` or `--openvino-only` run, which rescored some rows of the
    `previous` table: the rest of the table is the earlier run's, on its machine, so the table keeps
    its command and environment, and the run that rescored those rows is named beside them (each
    group its own, so rescoring one never erases how the other was scored)."""
    this_run = {"command": result["command"], "environment": result["environment"]}
    kept = {
        key: previous[key]
        for key in ("executorch_rows_rescored_alone", "openvino_rows_scored_alone")
        if key in previous
    }
    result = {
        **result,
        "command": previous.get("command") or _command(previous),
        "evaluation_clips": previous["evaluation_clips"],  # the table's; rows scored on more say so
        "environment": previous["environment"],
        **kept,
    }
    if args.executorch_only:
        result["executorch_rows_rescored_alone"] = this_run
    else:
        earlier = previous.get("openvino_rows_scored_alone")
        result["openvino_rows_scored_alone"] = dict(this_run)
        if args.keep_nncf_rows and earlier:  # NNCF's rows were scored by the earlier run, or one before it
            result["openvino_rows_scored_alone"]["nncf_rows"] = earlier.get("nncf_rows", earlier)
    return result


def _command(run: dict) -> str:
    """The command line of a run: its arguments that differ from the defaults. `run` is the parsed
    arguments, or a result written before results kept their command (its clip counts are all it
    tells)."""
    defaults = vars(parser().parse_args([]))
    if "num_eval" not in run:
        run = {**defaults, "num_eval": run["evaluation_clips"], "num_calib": run["calibration_clips"]}
    flags = []
    for key, value in run.items():
        if key in defaults and key != "rewrite" and value != defaults[key]:
            flags.append(f"--{key.replace('_', '-')}" + ("" if value is True else f" {value}"))
    return " ".join(["python benchmarks/quantize_reference.py", *flags])


def _float_beside_its_rows(rows: dict, table_clips: int) -> dict:
    """`rows` with each float row scored on more clips than the table ("float (fp32), N clips") moved
    just before the first row scored on those clips, and dropped where no row is any more."""
    extra = {
        n: row for n, row in rows.items() if row["group"] == "float" and row.get("clips", table_clips) != table_clips
    }
    ordered = {}
    for name, row in rows.items():
        if name in extra:
            continue
        for float_name, float_row in extra.items():
            if row.get("clips", table_clips) == float_row["clips"] and float_name not in ordered:
                ordered[float_name] = float_row
        ordered[name] = row
    return ordered


def _peer_verdict(ours: dict, peer_name: str, peer: dict) -> str:
    """Whether the most accurate peer is ahead of ours by more than its clips resolve, by their drops
    against float (each on its own clips, where a row was scored on more). The rows keep each one's
    paired standard error against float, not against each other: the standard error of the
    difference is taken as if the two were independent, which overstates it when both lose the
    same hard clips."""
    gap = ours["drop_points"] - peer["drop_points"]
    se = (ours["drop_se_points"] ** 2 + peer["drop_se_points"] ** 2) ** 0.5
    if gap <= 0:
        return "met"
    told = f"{peer_name} ahead by {gap:.2f} ± {se:.2f} points"
    return f"NOT met ({told})" if gap > 2 * se else f"met within noise ({told})"


def targets_of(result: dict) -> dict:
    rows, qat_info = result["rows"], result["qat"]
    ours = rows["ours PTQ w8a8 (minmax)"]
    best_peer = min((name for name, r in rows.items() if r["group"] == "peer"), key=lambda n: rows[n]["drop_points"])
    targets = {
        "w8a8_drop_at_most_0.5": drop_verdict(ours, 0.5, row_clips(ours, result)),
        "w8a8_sqnr_at_least_20db": "met" if ours["sqnr_db"] >= 20 else "NOT met",
        "w8a8_not_resolvably_less_accurate_than_any_peer": _peer_verdict(ours, best_peer, rows[best_peer]),
    }
    for key, _, _, name, bound in INT8_DROP_BOUNDS:  # the performance targets' int8 programs
        if name in rows:
            targets[key] = drop_verdict(rows[name], bound, row_clips(rows[name], result))
    if qat_info:
        # The target applies at a bit width where PTQ loses more than a point.
        targets["qat_closes_half_of_ptq_drop"] = (
            ("met" if qat_info["recovered_fraction"] >= 0.5 else "NOT met")
            if qat_info["ptq_drop_points"] > 1.0
            else "not applicable (no PTQ recipe loses more than 1 point)"
        )
    return targets


def write_report(result: dict) -> None:
    """results/quantize_reference.{json,md} from a run's rows, with the targets judged from them."""
    result["targets"] = targets_of(result)
    rows, qat_info, sensitivity = result["rows"], result["qat"], result["pruning_sensitivity"]
    lines = [
        "# Quantization of the synthetic reference model, beside the peers",
        "",
        f"UniFormer-{R['variant'].upper()} {R['frames']}x{R['size']} reference model; every method calibrated "
        f"on the same {result['calibration_clips']} training clips and scored on the same "
        f"{result['evaluation_clips']} test clips"
        + (
            "; the rows with more test clips were scored on those, each against the float model's logits on "
            "the same clips (its row above them), to resolve a bound: the first "
            f"{result['evaluation_clips']} are the table's."
            if any(row_clips(r, result) != result["evaluation_clips"] for r in rows.values())
            else "."
        ),
        "",
        "| method | test clips | top-1 | top-5 | drop ± s.e. (pts) | clips lost / gained | logit SQNR (dB) | KL | "
        "top-1 agreement | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {row_clips(r, result)} | {100 * r['top1']:.2f}% | {100 * r['top5']:.2f}% | "
            f"{r['drop_points']:.2f} ± "
            f"{r['drop_se_points']:.2f} | {r['lost']} / {r['gained']} | "
            f"{r['sqnr_db']:.1f} | {r['kl']:.2e} | {100 * r['top1_agreement']:.2f}% | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        "Drop: top-1 points lost against float on the same clips, ± its paired standard error (from the "
        "clips one model gets right and the other wrong). A bound on a drop is met when the drop plus two "
        "standard errors (and 3 clips' worth, the rule of three, at least) is within it, and NOT met when the "
        "drop minus two is beyond it; in between, these clips do not resolve it.",
        "",
        "Targets: " + ", ".join(f"{k}: {v}" for k, v in result["targets"].items()) + ".",
    ]
    if qat_info:
        lines += [
            "",
            f"QAT: {qat_info['epochs']} epochs x {qat_info['train_clips']} clips, lr {qat_info['lr']}, "
            f"distillation weight {qat_info['distill_weight']} at T={qat_info['temperature']}; "
            f"PTQ drop {qat_info['ptq_drop_points']:.2f} pts, fraction recovered "
            + (f"{100 * qat_info['recovered_fraction']:.0f}%" if qat_info["recovered_fraction"] is not None else "n/a")
            + ".",
        ]

    def scored(entry):
        return (
            f"{entry['sqnr_db']:.1f} dB, top-1 {100 * entry['top1']:.2f}%, drop {entry['drop_points']:.2f} ± "
            f"{entry['drop_se_points']:.2f}"
        )

    ns = sensitivity["weight_noise_sqnr_db"]
    lines += [
        "",
        "## Why the logit SQNR of the light model is low",
        "",
        "UniFormer-XXS prunes tokens by a top-k on attention scores: a tiny perturbation reorders tokens "
        "near the cut, and later blocks see different tokens. Gaussian weight noise of 0.1% / 0.4% of each "
        f"channel's range gives a logit SQNR of {ns['0.001']['pruning']:.1f} / {ns['0.004']['pruning']:.1f} dB "
        f"with pruning and {ns['0.001']['no_pruning']:.1f} / {ns['0.004']['no_pruning']:.1f} dB with every "
        "token kept (int8 rounding noise is about 0.23% of the range). The same weights with pruning "
        f"switched off (float top-1 {100 * sensitivity['no_pruning_float_top1']:.2f}%) quantize to "
        f"{scored(sensitivity['no_pruning_w8a8'])} (w8a8) and {scored(sensitivity['no_pruning_w8'])} (w8) "
        "against that float model.",
    ]
    no_pruning_et = sensitivity.get("no_pruning_executorch_int8")
    if no_pruning_et:
        lines[-1] += (
            f" The ExecuTorch int8 program of those weights reaches {scored(no_pruning_et)}, against "
            f"{rows[EXECUTORCH_ROW]['sqnr_db']:.1f} dB with pruning: UniFormer-S, the model of the speed "
            "target, prunes no tokens."
        )
    lines += [
        "",
        "Peers: ORT `quantize_static` runs on the float ONNX export of the same deploy form "
        "(BatchNorm folded) and quantizes every op it supports, LayerNorm/Softmax/residual adds included; "
        "torchao's X86 quantizer annotates 1-D and 2-D convolutions, linear layers and the ops fused with "
        "them, but no Conv3d: it ran this model with "
        f"{rows['torchao X86InductorQuantizer (default)']['note']}, not a full W8A8 model.",
        "",
        f"Command: `{result['command']}` ({machine_line(result['environment'])}).",
    ]
    executorch = result.get("executorch_rows_rescored_alone")
    if executorch:
        lines[-1] += (
            " The ExecuTorch rows (and the no-pruning ExecuTorch figure) were rescored afterwards: "
            f"`{executorch['command']}` ({machine_line(executorch['environment'])})."
        )
    alone = result.get("openvino_rows_scored_alone")
    if alone:
        lines[-1] += (
            f" The OpenVINO rows were scored afterwards: `{alone['command']}` ({machine_line(alone['environment'])})."
        )
        nncf = alone.get("nncf_rows")
        if nncf:
            lines[-1] += f" NNCF's rows come from an earlier `{nncf['command']}` ({machine_line(nncf['environment'])})."
    write_results("quantize_reference", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
