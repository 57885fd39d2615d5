"""Artifacts and the backends that run them.

An artifact folder is either an export output (`manifest.json`: ONNX, Core ML, ExecuTorch
files) or a quantization output (`quant_config.json` + `quantized.pt2`, run by PyTorch).
Every backend either loads an artifact into a callable `clips -> logits` or says why it is not
available on this device."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


from ..export import RUNTIMES, Precision, Runner, get_runtime, verify_manifest
from ..models import ModelCard
from ..quantize import read_quantize_config, verify_program

__all__ = ["Artifact", "discover", "BACKENDS", "Runner", "runners_for", "backend_status", "setting_status"]

BACKENDS = tuple(RUNTIMES)  # the runtimes a benchmark can time, by name


@dataclass
class Artifact:
    path: Path
    format: str  # onnx | coreml | executorch | pt2
    precision: str
    variant: str
    frames: int
    size: int
    size_bytes: int
    card: ModelCard  # the float model it was made from
    card_file: Path  # the file holding the card (manifest.json or quant_config.json)
    source: dict = field(default_factory=dict)  # facts its runtime needs to load it (the program's hash)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def group(self) -> tuple:
        """Artifacts of one model at one input size share a float reference and evaluation set."""
        return (self.variant, self.frames, self.size, self.card.weights_sha256, self.card.num_classes)

    def float_model(self):
        """The float model the artifact was made from, rebuilt from its card (weights checked)."""
        return self.card.build(self.card_file.parent, str(self.card_file))


def discover(folder) -> list[Artifact]:
    """The artifacts of one folder; hashes are verified against the manifest first."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        manifest = verify_manifest(folder)
        card_file = folder / "manifest.json"
        card = ModelCard.from_dict(manifest.get("model"), str(card_file))
        return [
            Artifact(
                folder / a["path"],
                a["format"],
                a["precision"],
                manifest["variant"],
                manifest["input"]["frames"],
                manifest["input"]["size"],
                a["size_bytes"],
                card,
                card_file,
            )
            for a in manifest["artifacts"]
        ]
    if (folder / "quant_config.json").is_file():
        cfg = read_quantize_config(folder)
        verify_program(folder / "quantized.pt2", cfg["program_sha256"])
        _, _, frames, size, _ = cfg["input_shape"]
        card_file = folder / "quant_config.json"
        recipe = cfg["quant_config"]["recipe"]
        exported = {p.pt2e_recipe: p.value for p in Precision if p.pt2e_recipe}
        precision = exported.get(recipe, recipe)  # named like its exports where it has them
        precision += "-qat" if cfg["method"] == "qat" else ""
        return [
            Artifact(
                folder / "quantized.pt2",
                "pt2",
                precision,
                cfg["variant"],
                frames,
                size,
                (folder / "quantized.pt2").stat().st_size,
                ModelCard.from_dict(cfg.get("model"), str(card_file)),
                card_file,
                {"sha256": cfg["program_sha256"], "static_batch": cfg.get("target") == "xnnpack"},
            )
        ]
    raise FileNotFoundError(
        f"{folder} has no manifest.json (an export output) or quant_config.json + quantized.pt2 (a quantization output)"
    )


def runners_for(artifact: Artifact, backend: str, threads: int) -> list[Runner]:
    """Every setting of `backend` this device has for `artifact` (empty if it does not run it)."""
    runtime = get_runtime(backend)
    if not runtime.runs(artifact.format):
        return []
    return runtime.runners(artifact.path, threads, artifact.source)


def setting_status(backend: str) -> dict[str, Optional[str]]:
    """Every setting of `backend` (device, execution provider, compute units): None when it runs
    here, else why not; a backend that is not available here gives its reason for each."""
    return get_runtime(backend).status()


def backend_status(name: str) -> Optional[str]:
    """None when the backend runs here, else why not."""
    return get_runtime(name).available()
