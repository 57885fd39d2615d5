"""The model card every command writes beside its outputs and the next command reads: which
weights (a checkpoint and its hash, or the random weights themselves, saved beside the
artifacts), the variant and its constructor overrides, the classes, and the preprocessing the
model expects (in the spirit of timm's per-checkpoint pretrained configs). A float reference is
rebuilt from the card alone: nothing re-seeds a random generator to reproduce weights."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from .._io import atomic_torch_save, sha256_file
from ..errors import InputError
from .checkpoint import TRAIN_ONLY_PREFIXES
from .registry import create_model, get_variant

__all__ = ["MEAN", "STD", "Preprocessing", "ModelCard", "weights_sha256", "FLOAT_WEIGHTS_FILE", "CARD_SCHEMA"]

# The official UniFormer / SlowFast normalisation of [0, 1] RGB pixels, every channel alike.
MEAN, STD = 0.45, 0.225
FLOAT_WEIGHTS_FILE = "float_weights.pth"  # random weights, saved where there is no checkpoint to name
CARD_SCHEMA = 1


@dataclass(frozen=True)
class Preprocessing:
    """What a clip must look like before the model sees it."""

    frames: int
    size: int
    sampling: str = "uniform"  # the single test view: T frames evenly spaced over the clip
    mean: tuple[float, float, float] = (MEAN, MEAN, MEAN)
    std: tuple[float, float, float] = (STD, STD, STD)

    @classmethod
    def for_variant(cls, variant: str, frames: Optional[int] = None, size: Optional[int] = None) -> "Preprocessing":
        spec = get_variant(variant)
        default_frames, default_size = spec.default_input
        return cls(default_frames if frames is None else frames, default_size if size is None else size)

    def describe(self) -> dict:
        """The preprocessing block of manifests and Core ML metadata."""
        return {
            "frames": self.frames,
            "size": self.size,
            "channels": "RGB",
            "layout": "B,3,T,H,W",
            "pixel_scale": "divide 8-bit values by 255",
            "mean": list(self.mean),
            "std": list(self.std),
            "sampling": f"{self.sampling}: T frames evenly spaced over the clip, short side resized to size, "
            "centre crop size x size",
        }


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of the weights a model evaluates with (every key, dtype, shape and value, in key
    order; the light models' train-only modules, which checkpoints may omit, left out): the same
    weights give the same hash whatever file they were read from."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        if key.startswith(TRAIN_ONLY_PREFIXES):
            continue
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class ModelCard:
    variant: str
    num_classes: int
    preprocessing: Preprocessing
    weights_sha256: str
    checkpoint: Optional[str] = None  # the checkpoint file as given; None: random weights
    checkpoint_sha256: Optional[str] = None
    weights_file: Optional[str] = None  # random weights saved beside the card (a file name)
    seed: Optional[int] = None  # what drew the random weights (a record, never re-used)
    model_overrides: dict = field(default_factory=dict)
    class_names: Optional[list[str]] = None
    schema: int = CARD_SCHEMA

    @classmethod
    def describe(
        cls,
        model: nn.Module,
        variant: str,
        num_classes: int,
        preprocessing: Preprocessing,
        checkpoint: Optional[str] = None,
        seed: Optional[int] = None,
        model_overrides: Optional[dict] = None,
        class_names: Optional[Sequence[str]] = None,
    ) -> "ModelCard":
        return cls(
            variant=get_variant(variant).name,
            num_classes=num_classes,
            preprocessing=preprocessing,
            weights_sha256=weights_sha256(model),
            checkpoint=str(checkpoint) if checkpoint else None,
            checkpoint_sha256=sha256_file(checkpoint) if checkpoint else None,
            weights_file=None if checkpoint else FLOAT_WEIGHTS_FILE,
            seed=None if checkpoint else seed,
            model_overrides=dict(model_overrides or {}),
            class_names=list(class_names) if class_names else None,
        )

    def save_weights(self, state_dict: dict, folder: Path) -> None:
        """Random weights go beside the card; a checkpoint is named, not copied."""
        if self.weights_file:
            atomic_torch_save(state_dict, Path(folder) / self.weights_file)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["preprocessing"] = {
            **asdict(self.preprocessing),
            "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std),
        }
        return out

    @classmethod
    def from_dict(cls, data, where: str) -> "ModelCard":
        """The card in `data` (a manifest's or quantize config's `model` entry); `where` names the
        file in errors."""
        if not isinstance(data, dict):
            raise InputError(
                f"{where} has no model card (made by an older uniformer-edge?): re-run the command that wrote it"
            )
        if data.get("schema", 0) > CARD_SCHEMA:
            raise InputError(
                f"{where}: model card schema {data['schema']} is newer than this toolkit reads ({CARD_SCHEMA})"
            )
        try:
            pre = dict(data["preprocessing"])
            pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
            fields = {k: data[k] for k in ("variant", "num_classes", "weights_sha256")}
            optional = (
                "checkpoint",
                "checkpoint_sha256",
                "weights_file",
                "seed",
                "model_overrides",
                "class_names",
                "schema",
            )
            card = cls(preprocessing=Preprocessing(**pre), **fields, **{k: data[k] for k in optional if k in data})
        except (KeyError, TypeError) as err:
            raise InputError(f"{where}: the model card is incomplete or malformed ({err})") from None
        if card.weights_file is not None and Path(card.weights_file).name != card.weights_file:
            raise InputError(f"{where}: weights file {card.weights_file!r} is not a file name")
        return card

    def build(self, folder: Path, where: str) -> nn.Module:
        """The float model this card describes, in eval mode, its weights checked against the card."""
        if self.weights_file:
            source = Path(folder) / self.weights_file
            if not source.is_file():
                raise InputError(f"{where} names {self.weights_file}, which is missing from {folder}")
        else:
            source = Path(self.checkpoint)
            if not source.is_file():
                raise InputError(f"{where} names checkpoint {self.checkpoint}, which is not a file here")
            if self.checkpoint_sha256 and sha256_file(source) != self.checkpoint_sha256:
                raise InputError(f"checkpoint {self.checkpoint} is not the one {where} was made from (SHA-256 differs)")
        model = create_model(
            self.variant, num_classes=self.num_classes, checkpoint=source, new_head=False, **self.model_overrides
        ).eval()
        if weights_sha256(model) != self.weights_sha256:
            raise InputError(f"the weights {source} loads are not the ones {where} records (SHA-256 differs)")
        return model
