"""The export job behind `python -m uniformer_edge.export`: every requested format x precision,
each checked against PyTorch on a runtime where one exists, listed in `manifest.json`.

Each format declares its precisions and the parity threshold of each (`export.registry`): an
artifact that misses its threshold is not written; the others are, and the job fails naming it.
Every artifact also reports SQNR, KL and top-1 agreement against the float model. Core ML
packages are also executed by the MIL reference (`mil_reference`) from the saved package on
every system."""

from __future__ import annotations


import json
import platform
import shutil
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .._environment import cpu_facts, library_versions
from .._io import atomic_dir, check_output_dir, sha256_file, sha256_tree
from ..calibration import build_dataset, calibration_set, read_class_names
from ..errors import ExportError, InputError
from ..models import ModelCard, Preprocessing, create_model, get_variant, prunes_tokens, read_state_dict
from ..quantize.config import QAT_DISTILL_WEIGHT, QAT_LR
from ..quantize import QuantConfig, load_program, quantize_ptq, read_quantize_config, verify_program
from ..quantize.qat import QATSchedule
from .base import Precision, Threshold, judge
from .coreml import FORMS, TARGETS
from .registry import FORMATS, get_format, precision_of

__all__ = ["ExportJob", "ExportContext", "run_export", "MANIFEST_SCHEMA", "verify_manifest", "ExportError"]

MANIFEST_SCHEMA = 1


@dataclass
class ExportJob:
    variant: Optional[str] = None
    checkpoint: Optional[str] = None
    quantized: Optional[str] = None
    formats: tuple[str, ...] = ("onnx",)
    precisions: tuple[str, ...] = ()  # empty: fp32, or the --quantized graph's precision
    frames: Optional[int] = None
    size: Optional[int] = None
    labels: Optional[str] = None
    target: Optional[str] = None  # Core ML target; default: ios17, or the later one a requested precision needs
    coreml_form: str = "ane"  # "ane": frame-batched 2-D program for the Neural Engine; "3d": native Conv3d
    out: str = "exports"
    force: bool = False
    num_classes: Optional[int] = None
    # Calibration of the programs quantized here (ExecuTorch int8, ONNX int8-ort, int8 without
    # --quantized). None: the --quantized folder's calibration data, else synthetic and 32 clips.
    calib_data: Optional[str] = None
    calib_root: Optional[str] = None
    num_calib: Optional[int] = None
    check_clips: int = 4
    seed: int = 0
    # QAT of the ExecuTorch int8 program (0 epochs: calibration only), on the training split of --calib-data
    qat_epochs: int = 0
    qat_clips: int = 1024
    qat_lr: float = QAT_LR[8]  # the .pte's weights are int8
    model_overrides: dict = field(default_factory=dict)  # constructor arguments, e.g. for small test models
    quant_config: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        if self.quantized:
            self._read_quantized()
        self.calib_data, self.num_calib = self.calib_data or "synthetic", self.num_calib or 32
        if not self.precisions:
            self.precisions = (self.quant_config["precision"],) if self.quantized else ("fp32",)
        if not self.variant:
            raise InputError("--variant is required (or --quantized, which names its variant)")
        spec = get_variant(self.variant)
        self.variant = spec.name
        for name in ("frames", "size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        self.frames = spec.default_input[0] if self.frames is None else self.frames
        self.size = spec.default_input[1] if self.size is None else self.size
        self.formats = tuple(get_format(f).name for f in dict.fromkeys(self.formats))
        self.precisions = tuple(precision_of(p) for p in dict.fromkeys(self.precisions))
        for prec in self.precisions:
            lacking = [f for f in self.formats if prec not in FORMATS[f].thresholds]
            if lacking:
                having = [f.name for f in FORMATS.values() if prec in f.thresholds]
                raise InputError(
                    f"precision {prec} is not available for {', '.join(lacking)} "
                    f"(formats with {prec}: {', '.join(having)})"
                )
        # the oldest deployment target every requested precision runs on (formats that have targets)
        needed = [FORMATS[f].min_target[p] for f in self.formats for p in self.precisions if FORMATS[f].min_target]
        if self.target is None:
            self.target = max(["ios17", *needed], key=TARGETS.index)
        if self.target not in TARGETS:
            raise InputError(f"unknown --target {self.target!r}; choose from {', '.join(TARGETS)}")
        if self.coreml_form not in FORMS:
            raise InputError(f"unknown --coreml-form {self.coreml_form!r}; choose from {', '.join(FORMS)}")
        for fmt in self.formats:
            for prec, oldest in FORMATS[fmt].min_target.items():
                if prec in self.precisions and TARGETS.index(self.target) < TARGETS.index(oldest):
                    raise InputError(f"Core ML {prec} needs --target {oldest} or later (got {self.target})")
        if self.quantized and self.quant_config["target"] == "xnnpack" and self.formats != ("executorch",):
            raise InputError(
                f"--quantized {self.quantized} holds a program of the XNNPACK form (quantize --target xnnpack), "
                "which only --format executorch lowers; quantize with the native target for "
                f"{', '.join(f for f in self.formats if f != 'executorch')}"
            )
        if self.quantized:
            mine = self.quant_config["precision"]
            other = [p for p in self.precisions if p.pt2e_recipe and p != mine]
            if other:
                raise InputError(
                    f"--quantized {self.quantized} holds a {self.quant_config['recipe']} graph "
                    f"(precision {mine}); it cannot provide {', '.join(other)}"
                )
        if self.check_clips < 1:
            raise InputError("check_clips must be at least 1")
        if self.qat_epochs < 0:
            raise InputError(f"--qat-epochs must be 0 or more, got {self.qat_epochs}")
        if self.qat_epochs and self.quantized and self.quant_config["target"] == "xnnpack":
            raise InputError(
                f"--quantized {self.quantized} is already quantized for XNNPACK; fine-tune it with "
                "`quantize --target xnnpack --method qat`, not --qat-epochs"
            )
        if self.qat_epochs and not ("executorch" in self.formats and "int8" in self.precisions):
            raise InputError(
                "--qat-epochs fine-tunes the ExecuTorch int8 program: it needs --format executorch --precision int8"
            )

    def _read_quantized(self):
        folder = Path(self.quantized)
        cfg = read_quantize_config(folder)
        verify_program(folder / "quantized.pt2", cfg["program_sha256"])  # before any work, not only at loading
        recipe = cfg["quant_config"]["recipe"]
        try:
            precision = Precision.from_recipe(recipe)
        except KeyError as err:
            raise InputError(f"--quantized {folder}: {err.args[0]}") from None
        if self.variant and get_variant(self.variant).name != cfg["variant"]:
            raise InputError(
                f"--quantized {folder} holds a UniFormer-{cfg['variant'].upper()} model, not --variant {self.variant}"
            )
        _, _, frames, size, _ = cfg["input_shape"]
        if (self.frames is not None and self.frames != frames) or (self.size is not None and self.size != size):
            raise InputError(
                f"--quantized {folder} was quantized at {frames}x{size}; "
                f"it cannot be exported at {self.frames or frames}x{self.size or size}"
            )
        self.variant, self.frames, self.size = cfg["variant"], frames, size
        self.checkpoint = self.checkpoint or cfg["job"].get("checkpoint")
        if (
            self.checkpoint
            and cfg.get("checkpoint_sha256")
            and Path(self.checkpoint).is_file()
            and sha256_file(self.checkpoint) != cfg["checkpoint_sha256"]
        ):
            raise InputError(
                f"checkpoint {self.checkpoint} is not the one {folder} was quantized from (SHA-256 differs)"
            )
        self.num_classes = self.num_classes or cfg.get("num_classes")
        self.model_overrides = self.model_overrides or cfg.get("model_overrides") or {}
        self.quant_config = {**cfg, "recipe": recipe, "precision": precision, "target": cfg.get("target", "native")}
        if self.calib_data is None:  # what the folder was calibrated on reaches every program calibrated here
            job = cfg["job"]
            self.calib_data, self.calib_root = job.get("calib_data", "synthetic"), job.get("calib_root")
            self.num_calib = self.num_calib or job.get("num_calib")
            self.seed = job.get("seed", self.seed)


def _num_classes(job: ExportJob, labels) -> int:
    if job.checkpoint:
        head = read_state_dict(job.checkpoint).get("head.weight")
        if head is not None:
            return int(head.shape[0])
    if job.num_classes:
        return job.num_classes
    return len(labels) if labels else 400


class ExportContext:
    """What every format's build needs from one export job: the float model, the check clips and
    their float logits, the calibration set, and the PT2E programs (from --quantized, or
    quantized here once and shared by the formats)."""

    def __init__(self, job: ExportJob, progress: bool):
        self.job, self.progress = job, progress
        self.labels = read_class_names(job.labels) if job.labels else None
        preprocessing = Preprocessing.for_variant(job.variant, job.frames, job.size)
        if job.quantized:  # the float model the folder was quantized from, as its model card records it
            where = f"{Path(job.quantized) / 'quant_config.json'}"
            card = ModelCard.from_dict(job.quant_config.get("model"), where)
            self.model = card.build(Path(job.quantized), where)
            card = dataclasses.replace(card, preprocessing=preprocessing)
            num_classes = card.num_classes
        else:
            num_classes = _num_classes(job, self.labels)
            torch.manual_seed(job.seed)  # draws random weights; the manifest's folder keeps them
            self.model = create_model(
                job.variant, num_classes=num_classes, checkpoint=job.checkpoint, **job.model_overrides
            ).eval()
            card = ModelCard.describe(
                self.model, job.variant, num_classes, preprocessing, job.checkpoint, job.seed, job.model_overrides
            )
        if self.labels and len(self.labels) != num_classes:
            raise InputError(f"labels file {job.labels} has {len(self.labels)} classes, the model {num_classes}")
        self.card = dataclasses.replace(card, class_names=self.labels or card.class_names)
        self.prunes_tokens = prunes_tokens(self.model)  # decides the parity rule of every artifact
        self.num_classes = num_classes
        data = dict(frames=job.frames, size=job.size, seed=job.seed)
        check = build_dataset("synthetic", "test", num_clips=job.check_clips, **data)
        self.clips = torch.stack([check[i][0] for i in range(len(check))])
        self.example = self.clips[:1]
        with torch.no_grad():
            self.float_logits = self.model(self.clips)
        self._calib, self._programs = None, {}
        self.xnnpack_program = None  # a `quantize --target xnnpack` program, which the .pte lowers as it is
        if job.quantized:
            program = load_program(Path(job.quantized) / "quantized.pt2", job.quant_config["program_sha256"])
            if job.quant_config["target"] == "xnnpack":
                self.xnnpack_program = program
            else:
                self._programs[job.quant_config["precision"]] = program

    def calibration(self):
        if self._calib is None:
            j = self.job
            source = build_dataset(j.calib_data, "train", frames=j.frames, size=j.size, root=j.calib_root, seed=j.seed)
            self._calib = calibration_set(source, j.num_calib, seed=j.seed, batch_size=8)
        return self._calib

    def program(self, precision: str, conv3d: str = "native", form: Optional[dict] = None):
        """The PT2E-quantized program for `precision` of the deploy form with `conv3d` ("native" or
        "2d"). A --quantized program serves every native request as it is; programs quantized here
        take the `QuantConfig` settings `form` (e.g. `quantize.config.OPENVINO_FORM`)."""
        form = dict(form or {})
        if conv3d == "native" and (self.job.quantized or not form):
            key = precision
        else:
            key = (precision, conv3d, tuple(sorted(form.items())))
        if key not in self._programs:
            cfg = QuantConfig(recipe=Precision(precision).pt2e_recipe, **form)
            self._programs[key], _ = quantize_ptq(
                self.model, self.calibration(), cfg, self.example, conv3d=conv3d, progress=self.progress
            )
        return self._programs[key]

    def program_settings(self, form: dict) -> dict:
        """The values of `form`'s settings in `program(..., form=form)`: a --quantized folder's own
        (its defaults where it predates a setting), else `form`'s."""
        if not self.job.quantized:
            return dict(form)
        saved, default = self.job.quant_config["quant_config"], QuantConfig()
        return {k: saved.get(k, getattr(default, k)) for k in form}

    def preprocessing(self) -> dict:
        return self.card.preprocessing.describe()

    def parity(
        self, runtime: str, output: torch.Tensor, threshold: Threshold, counterpart: Optional[Callable] = None, **about
    ) -> dict:
        """`output` on the check clips judged by `threshold` (see `base.judge`)."""
        return judge(runtime, output, self.float_logits, threshold, counterpart, self.prunes_tokens, **about)

    def finetuning(self):
        """(schedule, training clips) of the ExecuTorch int8 QAT, or None without --qat-epochs."""
        j = self.job
        if not j.qat_epochs:
            return None
        train_set = build_dataset(
            j.calib_data,
            "train",
            frames=j.frames,
            size=j.size,
            root=j.calib_root,
            num_clips=j.qat_clips if j.calib_data == "synthetic" else None,
            seed=j.seed,
        )
        return QATSchedule(
            epochs=j.qat_epochs, lr=j.qat_lr, batch_size=8, seed=j.seed, distill_weight=QAT_DISTILL_WEIGHT
        ), train_set

    def input_spec(self, batch) -> dict:
        """The manifest's `input` of an artifact taking `batch` clips (an int, or "batch": dynamic)."""
        return {"name": "video", "shape": [batch, 3, *self.thw()], "dtype": "float32"}

    def thw(self) -> list[int]:
        return [self.job.frames, self.job.size, self.job.size]


def run_export(job: ExportJob, progress: bool = True) -> dict:
    """Export every format x precision of `job` into `job.out` (atomically) and return the manifest.

    An artifact that misses its parity threshold is not kept; the others are written, with the
    miss listed under the manifest's `failed`, and `ExportError` (carrying the manifest) is raised
    after writing. When every artifact misses, nothing is written."""
    check_output_dir(job.out, job.force)
    exporter = ExportContext(job, progress)
    artifacts, failed = [], []
    with atomic_dir(job.out, force=job.force) as tmp:
        exporter.card.save_weights(exporter.model.state_dict(), tmp)  # before any build touches the model
        for fmt in job.formats:
            for precision in job.precisions:
                name = f"uniformer-{job.variant}-{job.frames}x{job.size}-{precision}{FORMATS[fmt].suffix}"
                if progress:
                    print(f"exporting {name} ...", flush=True)
                started = time.time()
                path = tmp / name
                try:
                    info = FORMATS[fmt].build(exporter, precision, path)
                except ExportError as err:
                    failed.append({"path": name, "format": fmt, "precision": precision, "reason": str(err)})
                    _remove(path)
                    continue
                missed = [
                    (key, info[key])
                    for key in ("parity", "reference_parity")
                    if isinstance(info.get(key), dict) and info[key].get("passed") is False
                ]
                if missed:
                    key, parity = missed[0]
                    figures = {k: v for k, v in parity.items() if k.startswith("vs_")}
                    failed.append(
                        {
                            "path": name,
                            "format": fmt,
                            "precision": precision,
                            key: parity,
                            "reason": f"{name} misses its {parity['runtime']} parity threshold "
                            f"({parity['threshold']}): {json.dumps(figures)}",
                        }
                    )
                    _remove(path)
                    continue
                artifacts.append(
                    {
                        "path": name,
                        "format": fmt,
                        "precision": precision,
                        "target": info.get("target"),
                        "export_seconds": round(time.time() - started, 2),
                        "size_bytes": _size(path),
                        "sha256": sha256_tree(path) if path.is_dir() else sha256_file(path),
                        **{k: v for k, v in info.items() if k != "target"},
                    }
                )
        if not artifacts:
            # no manifest is written; the error still lists what failed
            raise ExportError(
                "; ".join(f["reason"] for f in failed) + " (nothing written)",
                manifest={"artifacts": [], "failed": failed},
            )
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "variant": job.variant,
            "num_classes": exporter.num_classes,
            "labels": exporter.labels,
            "model": exporter.card.to_dict(),
            "source": {
                "checkpoint": job.checkpoint,
                "checkpoint_sha256": sha256_file(job.checkpoint) if job.checkpoint else None,
                "random_weights": job.checkpoint is None,
                "seed": job.seed,
                "model_overrides": job.model_overrides,
                "quantized": job.quantized,
                "quantized_recipe": job.quant_config.get("recipe"),
            },
            "input": {
                "name": "video",
                "dtype": "float32",
                "layout": "B,3,T,H,W",
                "frames": job.frames,
                "size": job.size,
                "preprocessing": exporter.preprocessing(),
            },
            "output": {"name": "logits", "dtype": "float32", "classes": exporter.num_classes},
            "artifacts": artifacts,
            "failed": failed,
            "versions": library_versions(),
            "platform": platform.platform(),
            "cpu": cpu_facts(),
        }
        text = json.dumps(manifest, indent=2) + "\n"
        (tmp / "manifest.json").write_text(text)
    manifest = json.loads(text)  # exactly what manifest.json holds (tuples become lists)
    if failed:
        raise ExportError(
            f"{len(failed)} of {len(failed) + len(artifacts)} artifacts not written: "
            + "; ".join(f["reason"] for f in failed)
            + f". The other {len(artifacts)} are in {job.out} (manifest.json lists the failures)",
            manifest=manifest,
        )
    return manifest


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def verify_manifest(folder) -> dict:
    """Re-read `folder/manifest.json` and re-hash every artifact; raises ValueError naming the
    first artifact that is missing or whose SHA-256 no longer matches."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no manifest.json: is it the output of `python -m uniformer_edge.export`?"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err})") from None
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("artifacts"), list)
        or not all(isinstance(a, dict) and {"path", "sha256"} <= a.keys() for a in manifest["artifacts"])
    ):
        raise InputError(f"{path} is not an export manifest (no list of artifacts with path and sha256)")
    for key in ("variant", "input", "source", "num_classes"):
        if key not in manifest:
            raise InputError(f"{path} is not an export manifest (no {key})")
    if not isinstance(manifest.get("schema", 0), int):
        raise InputError(f"{path}: schema must be an integer")
    if manifest.get("schema", 0) > MANIFEST_SCHEMA:
        raise InputError(
            f"{path} has manifest schema {manifest['schema']}, newer than this toolkit reads "
            f"({MANIFEST_SCHEMA}); upgrade uniformer-edge"
        )
    for art in manifest["artifacts"]:
        if not isinstance(art["path"], str) or Path(art["path"]).name != art["path"] or art["path"] in ("", ".", ".."):
            raise InputError(f"{path}: artifact path {art['path']!r} is not a file name inside {folder}")
        p = folder / art["path"]
        if not p.exists():
            raise InputError(f"artifact {p} listed in {path} is missing")
        digest = sha256_tree(p) if p.is_dir() else sha256_file(p)
        if digest != art["sha256"]:
            raise InputError(
                f"artifact {p} does not match its manifest (SHA-256 {digest[:12]}..., "
                f"manifest {art['sha256'][:12]}...): it was modified after export"
            )
    return manifest
