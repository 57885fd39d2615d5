"""Named UniFormer variants, `create_model`, and models built from official configs."""

from __future__ import annotations

import copy
import warnings
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

from torch import nn

from ..errors import InputError
from .checkpoint import load_checkpoint, read_state_dict
from .uniformer import DEFAULT_PRUNE_RATIO, DEFAULT_TRADE_OFF, UniFormer, UniFormerLight

__all__ = [
    "VariantSpec",
    "create_model",
    "list_variants",
    "get_variant",
    "from_official_config",
    "official_config_kwargs",
]


@dataclass(frozen=True)
class VariantSpec:
    name: str
    model_cls: Callable[..., nn.Module]
    kwargs: dict = field(default_factory=dict)
    description: str = ""
    # The input the released checkpoints of this variant were trained at (frames, size).
    default_input: tuple[int, int] = (8, 224)


_XS_SCHEDULE = ([], [], [1.0] + [0.5] * 8, [0.5] * 3)

_VARIANTS: dict[str, VariantSpec] = {
    "xxs": VariantSpec(
        "xxs",
        UniFormerLight,
        dict(embed_dim=(56, 112, 224, 448), depth=(2, 5, 8, 2), head_dim=28, mlp_ratio=(3, 3, 3, 3)),
        "UniFormer-XXS (Uniformer_light), 9.8 M params",
        (8, 160),
    ),
    "xs": VariantSpec(
        "xs",
        UniFormerLight,
        dict(
            embed_dim=(64, 128, 256, 512),
            depth=(3, 5, 9, 3),
            head_dim=32,
            mlp_ratio=(3, 3, 3, 3),
            prune_ratio=_XS_SCHEDULE,
            trade_off=_XS_SCHEDULE,
        ),
        "UniFormer-XS (Uniformer_light_fp32), 16.1 M params",
        (32, 192),
    ),
    "s": VariantSpec(
        "s",
        UniFormer,
        dict(embed_dim=(64, 128, 320, 512), depth=(3, 4, 8, 3), head_dim=64, mlp_ratio=4),
        "UniFormer-S (Uniformer), 21.4 M params",
        (8, 224),
    ),
    "b": VariantSpec(
        "b",
        UniFormer,
        dict(embed_dim=(64, 128, 320, 512), depth=(5, 8, 20, 7), head_dim=64, mlp_ratio=4),
        "UniFormer-B (Uniformer), 49.8 M params",
        (8, 224),
    ),
}


def list_variants() -> list[str]:
    return list(_VARIANTS)


def get_variant(name: str) -> VariantSpec:
    key = name.lower().replace("uniformer-", "").replace("uniformer_", "")
    if key not in _VARIANTS:
        raise InputError(f"unknown variant {name!r}; choose from {', '.join(_VARIANTS)}")
    return _VARIANTS[key]


def create_model(
    name: str,
    num_classes: int = 400,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    strict: bool = True,
    new_head: bool = True,
    **overrides,
) -> nn.Module:
    """Build a registered variant (`list_variants()`), optionally loading a checkpoint.

    Keyword overrides replace the variant's constructor arguments, e.g.
    `create_model("xxs", layer_scale=0.1)`. Given a light-model checkpoint with LayerScale
    parameters (`gamma_1`/`gamma_2`, as in the released XXS 4x128, 4x160 and 8x128 models) and
    no `layer_scale` override, the LayerScale form is built so the checkpoint loads strictly.
    """
    spec = get_variant(name)
    kwargs = {**copy.deepcopy(spec.kwargs), **overrides, "num_classes": num_classes}
    if checkpoint is not None and spec.model_cls is UniFormerLight and "layer_scale" not in overrides:
        if any(".gamma_1" in key for key in read_state_dict(checkpoint)):
            kwargs["layer_scale"] = 0.1  # initial value only; the checkpoint's values are loaded
    model = spec.model_cls(**kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=strict, new_head=new_head)
    return model


# ---------------------------------------------------------------------------------------------
# Official configs

_LIGHT_CLASSES = {"Uniformer_light", "Uniformer_light_fp32", "Uniformer_light_ls_fp32"}
_ALL_CLASSES = {"Uniformer"} | _LIGHT_CLASSES

# The official `defaults.py` (UNIFORMER section) for the fields a config may leave out. It
# has no INIT_VALUE: the LayerScale class reads one from every config that uses it.
_OFFICIAL_DEFAULTS = dict(
    EMBED_DIM=[64, 128, 320, 512],
    DEPTH=[3, 4, 8, 3],
    HEAD_DIM=64,
    MLP_RATIO=4,
    QKV_BIAS=True,
    QKV_SCALE=None,
    REPRESENTATION_SIZE=None,
    DROPOUT_RATE=0.0,
    ATTENTION_DROPOUT_RATE=0.0,
    DROP_DEPTH_RATE=0.1,
    PRETRAIN_NAME=None,
    SPLIT=False,
    STAGE_TYPE=[0, 0, 1, 1],
    STD=False,
    PRUNE_RATIO=[list(s) for s in DEFAULT_PRUNE_RATIO],
    TRADE_OFF=[list(s) for s in DEFAULT_TRADE_OFF],
)
# Keys released configs carry beyond the defaults; none changes the inference graph.
_KNOWN_EXTRAS = {"INIT_VALUE", "HEAD_DROPOUT_RATE"}
# `Uniformer_light` reads neither STD nor SPLIT; the other classes honour both.
_READS_STD_AND_SPLIT = {"Uniformer", "Uniformer_light_fp32", "Uniformer_light_ls_fp32"}


def _read_yaml(path: Union[str, os.PathLike]) -> dict:
    import yaml

    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"official config not found: {path}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not a valid YAML file ({e})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: expected a mapping with UNIFORMER and MODEL sections")
    return cfg


def _scalar_mlp_ratio(ratio, where: str) -> float:
    """The `Uniformer` class multiplies by one scalar MLP_RATIO. Two released fine-tune configs
    (UCF101, HMDB51) write it per stage with equal values, which is that scalar; unequal values
    are a model the class cannot build."""
    if not isinstance(ratio, (list, tuple)):
        return float(ratio)
    if len(ratio) == 4 and len({float(r) for r in ratio}) == 1:
        return float(ratio[0])
    raise InputError(
        f"{where}: the Uniformer class takes one MLP ratio for every stage; UNIFORMER.MLP_RATIO "
        f"{list(ratio)} has different values (the official class cannot build it either)"
    )


def official_config_kwargs(cfg: Union[Mapping[str, Any], str, os.PathLike]) -> tuple[type, dict]:
    """Map an official config (dict or `config.yaml` path) to (model class, constructor kwargs).
    Keys a config omits take the official `defaults.py` values; unknown UNIFORMER keys warn."""
    where = str(cfg) if isinstance(cfg, (str, os.PathLike)) else "config"
    if isinstance(cfg, (str, os.PathLike)):
        cfg = _read_yaml(cfg)
    model_sec = dict(cfg.get("MODEL") or {})
    given = dict(cfg.get("UNIFORMER") or {})
    uni = {**_OFFICIAL_DEFAULTS, **given}
    name = model_sec.get("MODEL_NAME")
    if name is None:
        raise InputError(
            f"{where}: MODEL.MODEL_NAME is missing; it names the class ({', '.join(sorted(_ALL_CLASSES))})"
        )
    if name not in _ALL_CLASSES:
        raise InputError(
            f"{where}: MODEL.MODEL_NAME {name!r} is not a UniFormer video class ({', '.join(sorted(_ALL_CLASSES))})"
        )
    unknown = sorted(set(given) - set(_OFFICIAL_DEFAULTS) - _KNOWN_EXTRAS)
    if unknown:
        warnings.warn(
            f"{where}: ignoring UNIFORMER key(s) this toolkit does not know: {', '.join(unknown)}", stacklevel=3
        )
    channels = (cfg.get("DATA") or {}).get("INPUT_CHANNEL_NUM", [3])
    first = channels[0] if isinstance(channels, (list, tuple)) and channels else channels
    if first != 3:
        raise InputError(
            f"{where}: DATA.INPUT_CHANNEL_NUM {channels} asks for {first} input channels; "
            f"UniFormer models here take RGB clips (3 channels)"
        )
    reads_std = name in _READS_STD_AND_SPLIT
    if uni["SPLIT"] and reads_std:
        raise InputError(
            f"{where}: UNIFORMER.SPLIT=True (split attention) is not supported; no released checkpoint uses it"
        )
    if uni["STAGE_TYPE"] != [0, 0, 1, 1]:
        raise InputError(f"{where}: UNIFORMER.STAGE_TYPE {uni['STAGE_TYPE']} is not the released layout [0, 0, 1, 1]")
    kwargs = dict(
        embed_dim=list(uni["EMBED_DIM"]),
        depth=list(uni["DEPTH"]),
        head_dim=int(uni["HEAD_DIM"]),
        qkv_bias=bool(uni["QKV_BIAS"]),
        qk_scale=uni["QKV_SCALE"] or None,
        representation_size=uni["REPRESENTATION_SIZE"] or None,
        num_classes=int(model_sec.get("NUM_CLASSES", 400)),
        drop_rate=float(uni["DROPOUT_RATE"]),
        attn_drop_rate=float(uni["ATTENTION_DROPOUT_RATE"]),
        drop_path_rate=float(uni["DROP_DEPTH_RATE"]),
        std_patch=bool(uni["STD"]) and reads_std,
    )
    ratio = uni["MLP_RATIO"]
    if name == "Uniformer":
        return UniFormer, {**kwargs, "mlp_ratio": _scalar_mlp_ratio(ratio, where)}
    layer_scale = None
    if name == "Uniformer_light_ls_fp32":
        if "INIT_VALUE" not in given:
            raise InputError(
                f"{where}: Uniformer_light_ls_fp32 needs UNIFORMER.INIT_VALUE (the LayerScale "
                f"initial value; the official defaults have none, released configs use 0.1)"
            )
        layer_scale = float(given["INIT_VALUE"])
    kwargs.update(
        mlp_ratio=list(ratio) if isinstance(ratio, (list, tuple)) else [ratio] * 4,
        prune_ratio=[list(s) for s in uni["PRUNE_RATIO"]],
        trade_off=[list(s) for s in uni["TRADE_OFF"]],
        layer_scale=layer_scale,
    )
    return UniFormerLight, kwargs


def from_official_config(cfg: Union[Mapping[str, Any], str, os.PathLike], **overrides) -> nn.Module:
    """Build the model an official config describes (dict with UNIFORMER / MODEL sections, or the
    path of an official `config.yaml`). Keyword overrides replace constructor arguments."""
    model_cls, kwargs = official_config_kwargs(cfg)
    return model_cls(**{**kwargs, **overrides})
