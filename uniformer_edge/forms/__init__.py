"""Runtime-specific lowering forms of a UniFormer model. `models.deploy` folds the eval-time
affines; the forms here rewrite the folded model for runtimes without some of its ops: the
frame-batched 2-D form (no 5-D convolution; ExecuTorch XNNPACK and the Core ML Neural Engine)
and the XNNPACK form on top of it."""

from .frames import BatchedAttention, Conv3dAs2d, FrameConvStages, ResidualAdd, TimeUnrolledConv, frame_batched
from .xnnpack import (
    LayerNormAsXnnpackOps,
    XnnpackHalf,
    is_depthwise_conv,
    is_feature_pool,
    is_residual_add,
    is_token_score_op,
    xnnpack_form,
)

__all__ = [
    "frame_batched",
    "Conv3dAs2d",
    "TimeUnrolledConv",
    "BatchedAttention",
    "FrameConvStages",
    "ResidualAdd",
    "xnnpack_form",
    "XnnpackHalf",
    "LayerNormAsXnnpackOps",
    "is_depthwise_conv",
    "is_residual_add",
    "is_token_score_op",
    "is_feature_pool",
]
