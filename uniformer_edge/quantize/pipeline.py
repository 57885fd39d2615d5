"""The quantization job behind `python -m uniformer_edge.quantize`: build the model and data,
quantize (PTQ or QAT), compare with the float model and write the artifacts atomically:
`quantized.pt2`, `quant_config.json`, `report.json`, `report.md`."""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from ..errors import InputError
from .. import __version__
from .._environment import cpu_facts, library_versions
from .._io import atomic_dir, check_output_dir, sha256_file
from ..calibration import build_dataset, calibration_set
from ..engine import agreement, collect_logits, dataset_num_classes, init_distributed, per_clip, topk_accuracy
from ..models import ModelCard, Preprocessing, create_model, get_variant, read_state_dict
from .config import OPENVINO_FORM, QAT_DISTILL_WEIGHT, QAT_LR, QuantConfig
from .ptq import PreparedModel, calibrate, convert, prepare, quantize_ptq
from .report import render_markdown

__all__ = ["QuantizeJob", "run_job", "default_out_dir", "QUANTIZE_REPORT_SCHEMA"]

QUANTIZE_REPORT_SCHEMA = 1


@dataclass
class QuantizeJob:
    variant: str
    config: QuantConfig = field(default_factory=QuantConfig)
    method: str = "ptq"
    checkpoint: Optional[str] = None
    calib_data: str = "synthetic"
    calib_root: Optional[str] = None
    num_calib: int = 32
    eval_data: Optional[str] = None
    eval_root: Optional[str] = None
    num_eval: int = 96
    train_data: Optional[str] = None
    train_root: Optional[str] = None
    frames: Optional[int] = None
    size: Optional[int] = None
    batch_size: int = 8
    seed: int = 0
    out: Optional[str] = None
    force: bool = False
    qat_epochs: int = 1
    qat_lr: Optional[float] = None  # None: QAT_LR for the recipe's weight bits
    qat_clips: int = 512
    freeze_observers_after: Optional[int] = None
    distill_weight: float = QAT_DISTILL_WEIGHT
    temperature: float = 2.0
    analyze: bool = False
    max_drop: Optional[float] = None
    analysis_clips: int = 32
    model_overrides: dict = field(default_factory=dict)  # constructor arguments, e.g. for small test models
    resume: bool = False  # QAT: continue from <out>.qat-state.pth
    stop_after: Optional[int] = None  # QAT: end this invocation after that many epochs (state saved)
    # "native": the 5-D graph that ONNX, Core ML and PyTorch run; "xnnpack": the XNNPACK form,
    # a static batch of one, that `export --format executorch` lowers as it is
    target: str = "native"

    def __post_init__(self):
        if self.method not in ("ptq", "qat"):
            raise InputError(f"unknown method {self.method!r}; choose ptq or qat")
        if self.target not in TARGETS:
            raise InputError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")
        if self.target == "xnnpack":
            self._check_xnnpack()
        spec = get_variant(self.variant)
        self.variant = spec.name
        for name in ("frames", "size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        self.frames = spec.default_input[0] if self.frames is None else self.frames
        self.size = spec.default_input[1] if self.size is None else self.size
        if self.qat_lr is None:
            self.qat_lr = QAT_LR[self.config.weight_bits]
        self.out = self.out or default_out_dir(self.variant, self.config.recipe, self.method, self.target)
        if self.method == "qat" and not self.train_data:
            raise InputError("QAT needs training data: pass --train-data synthetic, or a video list with --train-root")
        if self.num_calib < 1:
            raise InputError(f"--num-calib must be at least 1, got {self.num_calib}")
        if (self.resume or self.stop_after is not None) and self.method != "qat":
            raise InputError("--resume and --stop-after apply to --method qat")
        if (self.analyze or self.max_drop is not None) and self.method != "ptq":
            raise InputError("--analyze and --max-drop work with --method ptq")
        if self.max_drop is not None and self.max_drop < 0:
            raise InputError(f"--max-drop must be non-negative, got {self.max_drop}")

    def _check_xnnpack(self):
        """The XNNPACK target quantizes with ExecuTorch's XNNPACK quantizer as it is configured
        (`quantize.xnnpack`): the native target's choices do not apply to it."""
        from .xnnpack import XNNPACK_RECIPES

        if self.config.recipe not in XNNPACK_RECIPES:
            raise InputError(f"--target xnnpack has recipes {', '.join(XNNPACK_RECIPES)}, not {self.config.recipe}")
        default = QuantConfig(recipe=self.config.recipe, qat=self.config.qat)
        flags = {"observer": "--observer", "ops": "--ops", "keep_float": "--keep-float"}
        flags |= {"percentile": "--percentile", "activation_scheme": "--form", "overflow_safe_weights": "--form"}
        changed = list(
            dict.fromkeys(flag for name, flag in flags.items() if getattr(self.config, name) != getattr(default, name))
        )
        if "--form" in changed and self.config.ops == OPENVINO_FORM["ops"]:  # the form's op groups, not --ops
            changed.remove("--ops")
        changed += [flag for flag, on in (("--analyze", self.analyze), ("--max-drop", self.max_drop is not None)) if on]
        changed += [flag for flag, on in (("--resume", self.resume), ("--stop-after", self.stop_after)) if on]
        if self.method == "qat" and self.config.recipe != "w8a8":
            changed.append(f"--method qat with --recipe {self.config.recipe}")
        if changed:
            raise InputError(
                f"--target xnnpack uses XNNPACK's own quantizer configuration; it does not take {', '.join(changed)}"
            )


TARGETS = ("native", "xnnpack")


def default_out_dir(variant: str, recipe: str, method: str = "ptq", target: str = "native") -> str:
    suffix = ("-qat" if method == "qat" else "") + ("-xnnpack" if target == "xnnpack" else "")
    return f"artifacts/uniformer-{variant}-{recipe}" + suffix


def _num_classes(job: QuantizeJob, eval_set) -> int:
    if job.checkpoint:
        head = read_state_dict(job.checkpoint).get("head.weight")
        if head is not None:
            return int(head.shape[0])
    return dataset_num_classes(eval_set)


def _analyze_and_quantize(model, calib, eval_set, job: QuantizeJob, example, progress: bool):
    """Sensitivity analysis on a switchable copy of the calibrated graph; with `max_drop`, the
    fewest layers left float to stay within the top-1 budget, then the real PTQ with them."""
    from .analysis import SwitchableQuantGraph, block_sqnr, choose_float_layers, sensitivity

    prepared = prepare(model, job.config, example)
    calibrate(prepared, calib, progress)
    graph = SwitchableQuantGraph(PreparedModel(copy.deepcopy(prepared.module), prepared.quantizer, example, job.config))
    n = min(job.analysis_clips, len(eval_set))
    items = [eval_set[i] for i in range(n)]
    clips, labels = torch.stack([c for c, _ in items]), torch.tensor([y for _, y in items])
    labels = labels if job.checkpoint else None
    rows = sensitivity(graph, clips, labels, progress)
    info = {
        "analysis": {
            "clips": n,
            "criterion": "top1" if labels is not None else "top1_agreement",
            "layers": [
                {"layer": r.layer, "only_quantized": r.only_quantized, "only_float": r.only_float} for r in rows
            ],
            "block_sqnr_db": block_sqnr(graph, clips),
        }
    }
    if job.max_drop is None:
        return convert(prepared), prepared, info
    graph.set_quantized([])
    float_out = graph.logits(clips)
    if labels is not None:
        baseline = topk_accuracy(float_out, labels, 1)
        evaluate = lambda: topk_accuracy(graph.logits(clips), labels, 1)  # noqa: E731
    else:
        baseline = 1.0
        evaluate = lambda: agreement(float_out, graph.logits(clips))["top1_agreement"]  # noqa: E731
    kept, score = choose_float_layers(graph, rows, evaluate, baseline, job.max_drop, progress)
    info["mixed_precision"] = {
        "max_drop_points": job.max_drop,
        "kept_float": kept,
        "simulated_drop_points": 100 * (baseline - score),
    }
    if kept:
        cfg = dataclasses.replace(job.config, keep_float=tuple(job.config.keep_float) + tuple(kept))
        prepared = prepare(model, cfg, example)
        calibrate(prepared, calib, progress)
    return convert(prepared), prepared, info


def run_job(job: QuantizeJob, progress: bool = True) -> dict:
    """Run the job end to end and return the report (also written to `job.out`)."""
    check_output_dir(job.out, job.force)  # refuse early, before any heavy work
    started = time.time()
    data_kw = dict(frames=job.frames, size=job.size, seed=job.seed)
    calib_source = build_dataset(job.calib_data, "train", root=job.calib_root, **data_kw)
    eval_set = build_dataset(
        job.eval_data or job.calib_data,
        "test",
        root=job.eval_root if job.eval_data else job.calib_root,
        num_clips=job.num_eval if (job.eval_data or job.calib_data) == "synthetic" else None,
        **data_kw,
    )
    calib = calibration_set(calib_source, job.num_calib, seed=job.seed, batch_size=job.batch_size)
    num_classes = _num_classes(job, eval_set)
    torch.manual_seed(job.seed)  # the random-weight model is the same on every run (and every rank)
    model = create_model(job.variant, num_classes=num_classes, checkpoint=job.checkpoint, **job.model_overrides)
    if not job.checkpoint:
        warnings.warn(
            "no --checkpoint: the model has random weights, so top-1 figures are meaningless; "
            "the report's agreement with the float model (SQNR, KL, top-1 agreement) still holds",
            stacklevel=2,
        )
    model.eval()
    # described (and its weights kept) before quantization: PT2E passes may share the module's tensors
    card = ModelCard.describe(
        model,
        job.variant,
        num_classes,
        Preprocessing.for_variant(job.variant, job.frames, job.size),
        checkpoint=job.checkpoint,
        seed=job.seed,
        model_overrides=job.model_overrides,
    )
    float_weights = None if job.checkpoint else copy.deepcopy(model.state_dict())
    example = next(iter(calib))[0][:1]

    run_program = None  # how the quantized program runs on a batch of clips
    if job.target == "xnnpack":
        from .xnnpack import xnnpack_program

        finetuning = None
        if job.method == "qat":
            from .qat import qat_training

            finetuning = qat_training(job)
        trained: dict = {}
        program, layers = xnnpack_program(model, example, calib, job.config.recipe, finetuning, trained)
        run_program = per_clip(program.module())  # a static batch of one, like the .pte
        method_info = {}
        if finetuning:
            schedule, train_set = finetuning
            method_info = {
                "qat": {
                    "epochs": schedule.epochs,
                    "steps": trained["steps"],
                    "lr": schedule.lr,
                    "train_clips": len(train_set),
                    "distill_weight": schedule.distill_weight,
                    "temperature": schedule.temperature,
                    "observers_frozen_after_step": trained["observers_frozen_after_step"],
                    "epoch_losses": trained["epoch_losses"],
                    "activation_ranges": "fixed at the calibrated ones (XNNPACK target)",
                }
            }
    elif job.method == "ptq" and (job.analyze or job.max_drop is not None):
        program, prepared, method_info = _analyze_and_quantize(model, calib, eval_set, job, example, progress)
    elif job.method == "ptq":
        program, prepared = quantize_ptq(model, calib, job.config, example, progress=progress)
        method_info = {}
    else:
        from .qat import run_qat

        program, prepared, method_info = run_qat(
            model, calib, job, example, progress=progress, resume=job.resume, stop_after=job.stop_after
        )
    if job.target == "native":
        layers = {"quantized": prepared.quantized_layers, "float": prepared.float_layers}
    quant_seconds = time.time() - started
    ctx = init_distributed()
    if not ctx.is_main:  # under torchrun, rank 0 evaluates and writes the outputs
        return {}

    float_logits, labels = collect_logits(model, eval_set, job.batch_size, progress=progress, desc="float model")
    quant_logits, _ = collect_logits(
        run_program or program.module(), eval_set, job.batch_size, progress=progress, desc="quantized model"
    )
    has_labels = job.checkpoint is not None
    float_params = sum(p.numel() * p.element_size() for p in model.parameters())

    with atomic_dir(job.out, force=job.force) as tmp:
        torch.export.save(program, tmp / "quantized.pt2")
        size = (tmp / "quantized.pt2").stat().st_size
        card.save_weights(float_weights, tmp)
        config = {
            "toolkit_version": __version__,
            "variant": job.variant,
            "method": job.method,
            "target": job.target,
            "quant_config": job.config.as_dict(),
            "job": {k: v for k, v in asdict(job).items() if k != "config"},
            "input_shape": [1, 3, job.frames, job.size, job.size],
            "num_classes": num_classes,
            "model_overrides": job.model_overrides,
            "checkpoint_sha256": sha256_file(job.checkpoint) if job.checkpoint else None,
            "program_sha256": sha256_file(tmp / "quantized.pt2"),
            "model": card.to_dict(),
            "versions": library_versions(),
            "cpu": cpu_facts(),
        }
        (tmp / "quant_config.json").write_text(json.dumps(config, indent=2) + "\n")
        report = {
            "schema": QUANTIZE_REPORT_SCHEMA,
            "variant": job.variant,
            "method": job.method,
            "target": job.target,
            "recipe": job.config.recipe,
            "observer": job.config.observer,
            "calibration_clips": calib.num_clips,
            "calibration_data": getattr(calib_source, "describe", lambda: job.calib_data)(),
            "evaluation_data": getattr(eval_set, "describe", lambda: "")(),
            "evaluation_clips": len(labels),
            "checkpoint": job.checkpoint,
            "random_weights": job.checkpoint is None,
            "seconds": round(quant_seconds, 2),
            "size_bytes": {"float32_parameters": float_params, "quantized_pt2": size},
            "float": {
                "top1": topk_accuracy(float_logits, labels, 1) if has_labels else None,
                "top5": topk_accuracy(float_logits, labels, 5) if has_labels else None,
            },
            "quantized": {
                "top1": topk_accuracy(quant_logits, labels, 1) if has_labels else None,
                "top5": topk_accuracy(quant_logits, labels, 5) if has_labels else None,
            },
            "agreement": agreement(float_logits, quant_logits),
            "layers": layers,
            **method_info,
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
        (tmp / "report.md").write_text(render_markdown(report))
    if job.method == "qat":
        from .qat import qat_state_path

        qat_state_path(job.out).unlink(missing_ok=True)  # the job is complete: its state is no longer needed
    return report
