"""UniFormer video models: official-compatible modules, named variants, checkpoint loading,
model statistics and the inference-only deploy form (folds); runtime-specific forms are in
`uniformer_edge.forms`."""

from .checkpoint import (
    CheckpointError,
    LoadReport,
    checkpoint_metadata,
    inflate_2d_kernel,
    load_checkpoint,
    read_state_dict,
)
from .config import FLOAT_WEIGHTS_FILE, MEAN, STD, ModelCard, Preprocessing, weights_sha256
from .deploy import deploy
from .info import ModelInfo, model_info
from .registry import (
    VariantSpec,
    create_model,
    from_official_config,
    get_variant,
    list_variants,
    official_config_kwargs,
)
from .uniformer import UniFormer, UniFormerLight, prunes_tokens

__all__ = [
    "UniFormer",
    "UniFormerLight",
    "prunes_tokens",
    "create_model",
    "list_variants",
    "get_variant",
    "VariantSpec",
    "from_official_config",
    "official_config_kwargs",
    "load_checkpoint",
    "read_state_dict",
    "inflate_2d_kernel",
    "checkpoint_metadata",
    "CheckpointError",
    "LoadReport",
    "deploy",
    "ModelCard",
    "Preprocessing",
    "weights_sha256",
    "FLOAT_WEIGHTS_FILE",
    "MEAN",
    "STD",
    "model_info",
    "ModelInfo",
]
