"""UniFormer video models, state-dict compatible with the official implementation.

`UniFormer` is the official `Uniformer` (variants S, B); `UniFormerLight` is the official
`Uniformer_light` family (XS, XXS) with its class token, token pruning and optional
LayerScale. Parameter names, registration order and eval-mode arithmetic follow the
official code so released checkpoints load with `strict=True` and reproduce its logits.

Unlike the official light model, which keeps token scores in module-level globals, the
scores here travel through the blocks as explicit tensors: the forward pass is pure,
thread-safe and exportable with static shapes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["UniFormer", "UniFormerLight", "prunes_tokens"]

# Official defaults for the light models' pruning schedule (UNIFORMER.PRUNE_RATIO / TRADE_OFF).
DEFAULT_PRUNE_RATIO = ([], [], [1.0] + [0.5] * 7, [0.5] * 3)
DEFAULT_TRADE_OFF = ([], [], [1.0] + [0.5] * 7, [0.5] * 3)


def to_tokens(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B, T*H*W, C), token order t-major, w fastest."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(x: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of `to_tokens` for a 5-D shape (B, C, T, H, W)."""
    B, C, T, H, W = shape
    return x.transpose(1, 2).reshape(B, C, T, H, W)


def _flat_order(order: Tensor) -> Tensor:
    """Per-clip token orders (B, N) as one order over the clips' tokens laid end to end."""
    # A gather from the positions, not an offset add: quantizers annotate adds, int ones too.
    positions = torch.arange(order.numel(), device=order.device).reshape(order.shape)
    return positions.gather(1, order).reshape(-1)


def _permute_tokens(tokens: Tensor, flat_order: Tensor) -> Tensor:
    """tokens[b, order[b, i]] for every clip: a row selection, which ExecuTorch's portable
    kernels copy row by row, where an element-wise `gather` indexed every element (about 30x
    slower: 20 of the 50 ms of a UniFormer-XXS 8x160 int8 program). Kept 3-D, like every token
    tensor: quantizers tell the 2-D token scores by their rank."""
    B, N, C = tokens.shape
    return tokens.reshape(1, B * N, C).index_select(1, flat_order).reshape(B, N, C)


def _inverse_order(flat_order: Tensor) -> Tensor:
    """The order that undoes `flat_order`."""
    positions = torch.arange(flat_order.numel(), device=flat_order.device)
    return torch.zeros_like(flat_order).scatter(0, flat_order, positions)


class DropPath(nn.Module):
    """Stochastic depth on the residual branch; identity in eval."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _scale(x: Tensor, gamma: Optional[Tensor]) -> Tensor:
    return x if gamma is None else x * gamma


class ConvMlp(nn.Module):
    """MLP of 1x1x1 convolutions on a 5-D map (local blocks)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv3d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Mlp(nn.Module):
    """MLP of linear layers on tokens (global blocks)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TokenScoreOp(nn.Module):
    """One computation on the light models' token scores (the class token's attention, the score
    updates, the pruning order, the merge weights) as a module of its own, without parameters:
    exported graphs then name these ops in their `nn_module_stack`, and quantizers and lowering
    forms find them by that mark (`forms.is_token_score_op`)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)

    def extra_repr(self) -> str:
        return self.fn.__name__


def cls_attention(attn: Tensor) -> Tensor:
    """Head-averaged attention of the class token (the first) to every other token: (B, h, M, M) -> (B, M-1)."""
    return attn[:, :, 0, 1:].mean(dim=1)


class Attention(nn.Module):
    """Multi-head self-attention with explicit matrix products (no fused SDPA), so that both
    attention matmuls stay visible to quantizers and exporters."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise InputError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        head_width = dim // num_heads
        self.scale = qk_scale or head_width**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.cls_scores = TokenScoreOp(cls_attention)

    def forward(self, x: Tensor, want_cls_scores: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """Returns the attention output and, if asked, the head-averaged attention of the
        first (class) token to every other token, shape (B, M-1)."""
        B, M, C = x.shape
        qkv = self.qkv(x).reshape(B, M, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        cls_scores = self.cls_scores(attn) if want_cls_scores else None
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, M, C)
        return self.proj_drop(self.proj(x)), cls_scores


class PatchEmbed(nn.Module):
    """Strided Conv3d followed by a per-position LayerNorm (official `PatchEmbed`)."""

    def __init__(self, in_chans: int, embed_dim: int, kernel, stride, padding=0):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)  # registered first: official key order
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        return from_tokens(self.norm(to_tokens(x)), x.shape)


class ConvStem(nn.Module):
    """Light models' stem: two k3 stride-2 convolutions with BatchNorm (official
    `patch_embed1.proj.{0..4}`)."""

    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        mid = embed_dim // 2
        self.proj = nn.Sequential(
            nn.Conv3d(in_chans, mid, 3, (1, 2, 2), 1),
            nn.BatchNorm3d(mid),
            nn.GELU(),
            nn.Conv3d(mid, embed_dim, 3, (2, 2, 2), 1),
            nn.BatchNorm3d(embed_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class CBlock(nn.Module):
    """Local MHRA block: dynamic position embedding, then BN -> PW -> DW 5x5x5 -> PW, then a
    1x1x1-conv MLP."""

    def __init__(
        self, dim: int, mlp_ratio: float, drop: float = 0.0, drop_path: float = 0.0, layer_scale: Optional[float] = None
    ):
        super().__init__()
        if layer_scale is not None:  # registered first: official key order
            self.gamma_1 = nn.Parameter(torch.full((1, dim, 1, 1, 1), float(layer_scale)))
            self.gamma_2 = nn.Parameter(torch.full((1, dim, 1, 1, 1), float(layer_scale)))
        else:
            self.gamma_1 = self.gamma_2 = None
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm3d(dim)
        self.conv1 = nn.Conv3d(dim, dim, 1)
        self.conv2 = nn.Conv3d(dim, dim, 1)
        self.attn = nn.Conv3d(dim, dim, 5, padding=2, groups=dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.BatchNorm3d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        # `deploy` folds the position-embedding residual into the depthwise kernel.
        self.pos_embed_residual = True

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_embed(x) if self.pos_embed_residual else self.pos_embed(x)
        x = x + self.drop_path(_scale(self.conv2(self.attn(self.conv1(self.norm1(x)))), self.gamma_1))
        return x + self.drop_path(_scale(self.mlp(self.norm2(x)), self.gamma_2))


class SABlock(nn.Module):
    """Global MHRA block: dynamic position embedding, then joint spatio-temporal attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: Optional[float] = None,
    ):
        super().__init__()
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma_1 = self.gamma_2 = None
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.pos_embed_residual = True

    def _add_pos_embed(self, x: Tensor) -> Tensor:
        return x + self.pos_embed(x) if self.pos_embed_residual else self.pos_embed(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self._add_pos_embed(x)
        tokens = to_tokens(x)
        tokens = tokens + self.drop_path(_scale(self.attn(self.norm1(tokens))[0], self.gamma_1))
        tokens = tokens + self.drop_path(_scale(self.mlp(self.norm2(tokens)), self.gamma_2))
        return from_tokens(tokens, x.shape)


_SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


def _updated_scores(scores: Optional[Tensor], cls_attn: Tensor, lam: float) -> Tensor:
    if scores is None:
        return cls_attn
    if scores.shape[1] == cls_attn.shape[1]:
        return (1 - lam) * scores + lam * cls_attn
    # Pruned case: only the kept tokens' scores move; the representative's column is unused.
    keep = cls_attn.shape[1] - 1
    kept = (1 - lam) * scores[:, :keep] + lam * cls_attn[:, :keep]
    return torch.cat([kept, scores[:, keep:]], dim=1)


def _prune_order(scores: Tensor) -> tuple[Tensor, Tensor]:
    # A full descending topk is argsort by another name, and one that mobile runtimes
    # (ExecuTorch's portable kernels) implement.
    return torch.topk(scores, scores.shape[1], dim=1)


def _merge_weights(sorted_scores: Tensor, keep: int) -> Tensor:
    """The weights of the pruned tokens (all but the first `keep`) in their representative."""
    dropped_scores = sorted_scores[:, keep:]
    # Once attention is peaked, every pruned token's score can underflow to 0, and the official
    # 0 / 0 gives NaN logits. The bound changes the weights only where the sum is below fp32's
    # smallest normal number (the sum's precision is gone there anyway).
    return dropped_scores / dropped_scores.sum(dim=1, keepdim=True).clamp_min(_SMALLEST_NORMAL)


def _restore_scores(scores: Tensor, order: Tensor, sorted_scores: Tensor) -> Tensor:
    return torch.zeros_like(scores).scatter(1, order, sorted_scores)


def _pool_scores(scores: Tensor, sorted_scores: Tensor, shape: Sequence[int]) -> Tensor:
    """2x2 spatial average pooling (floor) of the scores onto the next stage's grid,
    rescaled to keep the total mass. Written as reshape+mean rather than avg_pool3d so
    that runtimes without 5-D pooling can run it, with tensors of rank <= 5 (Core ML)."""
    B, _, T, H, W = shape
    Ho, Wo = H // 2, W // 2
    grid = scores.reshape(B, T, H, W)[:, :, : 2 * Ho, : 2 * Wo]
    pooled = grid.reshape(B * T, Ho, 2, Wo, 2).mean(dim=(2, 4)).reshape(B, -1)
    return pooled * sorted_scores.sum(dim=1, keepdim=True) / pooled.sum(dim=1, keepdim=True)


class EvoSABlock(SABlock):
    """Global block of the light models: attends with a class token and, when
    `prune_ratio < 1`, attends only to the highest-scoring tokens plus one score-weighted
    representative of the rest (which then receive the representative's update).

    Scores are explicit inputs and outputs: `forward(cls, x, scores) -> (cls, x, scores)`.
    `scores` is None before the first block and may be returned as None when no later block
    prunes (`track_scores=False`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        prune_ratio: float,
        trade_off: float,
        pool_scores: bool = False,
        track_scores: bool = True,
        **kwargs,
    ):
        super().__init__(dim, num_heads, mlp_ratio, **kwargs)
        self.prune_ratio = float(prune_ratio)
        self.trade_off = float(trade_off)
        self.pool_scores = pool_scores
        self.track_scores = track_scores
        self.update_scores = TokenScoreOp(_updated_scores)
        self.prune_order = TokenScoreOp(_prune_order)
        self.merge_weights = TokenScoreOp(_merge_weights)
        self.restore_scores = TokenScoreOp(_restore_scores)
        self.score_pool = TokenScoreOp(_pool_scores)

    def forward(self, cls: Tensor, x: Tensor, scores: Optional[Tensor]):
        x = self._add_pos_embed(x)
        shape = x.shape
        tokens = to_tokens(x)
        want_scores = self.track_scores

        if self.prune_ratio >= 1:
            z = torch.cat([cls, tokens], dim=1)
            a, cls_attn = self.attn(self.norm1(z), want_cls_scores=want_scores)
            z = z + self.drop_path(_scale(a, self.gamma_1))
            z = z + self.drop_path(_scale(self.mlp(self.norm2(z)), self.gamma_2))
            scores = self.update_scores(scores, cls_attn, self.trade_off) if want_scores else None
            return z[:, :1], from_tokens(z[:, 1:], shape), scores

        if scores is None:
            raise RuntimeError("a pruning block needs token scores from an earlier block")
        N = tokens.shape[1]
        keep = int(N * self.prune_ratio)
        sorted_scores, order = self.prune_order(scores)
        flat_order = _flat_order(order)
        sorted_tokens = _permute_tokens(tokens, flat_order)

        kept, dropped = sorted_tokens[:, :keep], sorted_tokens[:, keep:]
        weights = self.merge_weights(sorted_scores, keep)
        representative = (weights.unsqueeze(-1) * dropped).sum(dim=1, keepdim=True)

        z = torch.cat([cls, kept, representative], dim=1)
        a, cls_attn = self.attn(self.norm1(z), want_cls_scores=True)
        a = self.drop_path(_scale(a, self.gamma_1))
        z = z + a
        m = self.drop_path(_scale(self.mlp(self.norm2(z)), self.gamma_2))
        z = z + m
        # Dropped tokens receive the representative's update (both branches, before residuals).
        dropped = dropped + a[:, -1:] + m[:, -1:]
        sorted_tokens = torch.cat([z[:, 1 : keep + 1], dropped], dim=1)
        tokens = _permute_tokens(sorted_tokens, _inverse_order(flat_order))

        if want_scores:
            sorted_scores = self.update_scores(sorted_scores, cls_attn, self.trade_off)
            scores = self.restore_scores(scores, order, sorted_scores)
            if self.pool_scores:
                scores = self.score_pool(scores, sorted_scores, shape)
        else:
            scores = None
        return z[:, :1], from_tokens(tokens, shape), scores


def prunes_tokens(model: nn.Module) -> bool:
    """Whether a block of `model` keeps only its highest-scoring tokens (the light models' top-k)."""
    return any(isinstance(m, EvoSABlock) and m.prune_ratio < 1 for m in model.modules())


def _stage_rates(drop_path_rate: float, depth: Sequence[int]) -> list[list[float]]:
    rates = torch.linspace(0, drop_path_rate, sum(depth)).tolist()
    out, start = [], 0
    for d in depth:
        out.append(rates[start : start + d])
        start += d
    return out


def _check_four(name: str, value) -> list:
    value = list(value)
    if len(value) != 4:
        raise InputError(f"{name} needs 4 entries (one per stage), got {value}")
    return value


class FeaturePool(nn.Module):
    """The average over every position of the last stage's map, (B, C, T, H, W) -> (B, C): the
    features the classifier reads, as a module of its own so that exported graphs name it
    (`forms.is_feature_pool`)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).mean(-1)


class _Backbone(nn.Module):
    """Shared head and input handling of both model classes."""

    num_classes: int

    def _init_head(self, dim: int, num_classes: int, representation_size: Optional[int]):
        self.num_classes = num_classes
        self.norm = nn.BatchNorm3d(dim)
        self.features = FeaturePool()
        if representation_size:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(dim, representation_size))
            self.pre_logits.add_module("act", nn.Tanh())
            dim = representation_size
        else:
            self.pre_logits = nn.Identity()
        return dim

    def _pool(self, x: Tensor) -> Tensor:
        return self.pre_logits(self.features(self.norm(x)))

    @staticmethod
    def _clip(x) -> Tensor:
        # The official forward takes a list of pathways and reads element 0; accept both.
        if isinstance(x, (list, tuple)):
            x = x[0]
        if x.ndim != 5:
            raise InputError(f"expected a clip of shape (B, 3, T, H, W), got {tuple(x.shape)}")
        return x

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class UniFormer(_Backbone):
    """Official video `Uniformer` (variants S and B)."""

    def __init__(
        self,
        embed_dim: Sequence[int] = (64, 128, 320, 512),
        depth: Sequence[int] = (3, 4, 8, 3),
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        num_classes: int = 400,
        in_chans: int = 3,
        qk_scale: Optional[float] = None,
        representation_size: Optional[int] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        std_patch: bool = False,
    ):
        super().__init__()
        embed_dim, depth = _check_four("embed_dim", embed_dim), _check_four("depth", depth)
        if isinstance(mlp_ratio, (list, tuple)):
            raise InputError(
                "Uniformer takes one scalar mlp_ratio for every stage "
                f"(got {list(mlp_ratio)}); per-stage ratios exist only in the light models"
            )
        self.embed_dim, self.depth = embed_dim, depth
        self.patch_embed1 = PatchEmbed(in_chans, embed_dim[0], (3, 4, 4), (2, 4, 4), (1, 0, 0))
        k, p = ((3, 2, 2), (1, 0, 0)) if std_patch else ((1, 2, 2), 0)
        self.patch_embed2 = PatchEmbed(embed_dim[0], embed_dim[1], k, (1, 2, 2), p)
        self.patch_embed3 = PatchEmbed(embed_dim[1], embed_dim[2], k, (1, 2, 2), p)
        self.patch_embed4 = PatchEmbed(embed_dim[2], embed_dim[3], k, (1, 2, 2), p)
        self.pos_drop = nn.Dropout(drop_rate)

        rates = _stage_rates(drop_path_rate, depth)
        heads = [d // head_dim for d in embed_dim]
        self.blocks1 = nn.ModuleList(CBlock(embed_dim[0], mlp_ratio, drop_rate, r) for r in rates[0])
        self.blocks2 = nn.ModuleList(CBlock(embed_dim[1], mlp_ratio, drop_rate, r) for r in rates[1])
        self.blocks3 = nn.ModuleList(
            SABlock(embed_dim[2], heads[2], mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, r)
            for r in rates[2]
        )
        self.blocks4 = nn.ModuleList(
            SABlock(embed_dim[3], heads[3], mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, r)
            for r in rates[3]
        )
        feat = self._init_head(embed_dim[3], num_classes, representation_size)
        self.head = nn.Linear(feat, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pos_drop(self.patch_embed1(self._clip(x)))
        for stage, embed in (
            (self.blocks1, None),
            (self.blocks2, self.patch_embed2),
            (self.blocks3, self.patch_embed3),
            (self.blocks4, self.patch_embed4),
        ):
            if embed is not None:
                x = embed(x)
            for blk in stage:
                x = blk(x)
        return self._pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


class UniFormerLight(_Backbone):
    """Official video `Uniformer_light` family (variants XS and XXS): convolutional stem,
    class token from stage 3 and token pruning in the global stages. `layer_scale` gives the
    LayerScale initial value of `Uniformer_light_ls_fp32` (None: plain residuals).

    In training mode `forward` returns `(logits, cls_logits)` as the official code does; in
    eval mode it returns the logits of the main head.
    """

    def __init__(
        self,
        embed_dim: Sequence[int] = (56, 112, 224, 448),
        depth: Sequence[int] = (2, 5, 8, 2),
        head_dim: int = 28,
        mlp_ratio: Sequence[float] = (3, 3, 3, 3),
        prune_ratio: Sequence[Sequence[float]] = DEFAULT_PRUNE_RATIO,
        trade_off: Sequence[Sequence[float]] = DEFAULT_TRADE_OFF,
        num_classes: int = 400,
        layer_scale: Optional[float] = None,
        in_chans: int = 3,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        representation_size: Optional[int] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        std_patch: bool = False,
    ):
        super().__init__()
        embed_dim, depth = _check_four("embed_dim", embed_dim), _check_four("depth", depth)
        if not isinstance(mlp_ratio, (list, tuple)):
            mlp_ratio = [mlp_ratio] * 4  # official yamls write a scalar
        mlp_ratio = _check_four("mlp_ratio", mlp_ratio)
        prune_ratio, trade_off = _check_four("prune_ratio", prune_ratio), _check_four("trade_off", trade_off)
        stage3_ratio = self._schedule("prune_ratio", prune_ratio[2], depth[2])
        stage4_ratio = self._schedule("prune_ratio", prune_ratio[3], depth[3])
        stage3_lam = self._schedule("trade_off", trade_off[2], depth[2])
        stage4_lam = self._schedule("trade_off", trade_off[3], depth[3])
        self._check_schedule(stage3_ratio, stage4_ratio)
        self.embed_dim, self.depth = embed_dim, depth
        self.prune_ratio = (stage3_ratio, stage4_ratio)

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim[2]))
        self.patch_embed1 = ConvStem(in_chans, embed_dim[0])
        k, p = ((3, 2, 2), (1, 0, 0)) if std_patch else ((1, 2, 2), 0)
        self.patch_embed2 = PatchEmbed(embed_dim[0], embed_dim[1], k, (1, 2, 2), p)
        self.patch_embed3 = PatchEmbed(embed_dim[1], embed_dim[2], k, (1, 2, 2), p)
        self.patch_embed4 = PatchEmbed(embed_dim[2], embed_dim[3], k, (1, 2, 2), p)
        self.pos_drop = nn.Dropout(drop_rate)
        self.cls_upsample = nn.Linear(embed_dim[2], embed_dim[3])

        rates = _stage_rates(drop_path_rate, depth)
        heads = [d // head_dim for d in embed_dim]
        # Stages 3 and 4 both use mlp_ratio[3]; mlp_ratio[2] is never read (official behaviour).
        ratios = [mlp_ratio[0], mlp_ratio[1], mlp_ratio[3], mlp_ratio[3]]
        self.blocks1 = nn.ModuleList(CBlock(embed_dim[0], ratios[0], drop_rate, r, layer_scale) for r in rates[0])
        self.blocks2 = nn.ModuleList(CBlock(embed_dim[1], ratios[1], drop_rate, r, layer_scale) for r in rates[1])
        # A block tracks scores only when some later block prunes with them.
        schedule = stage3_ratio + stage4_ratio
        later_prunes = [any(r < 1 for r in schedule[i + 1 :]) for i in range(len(schedule))]
        common = dict(
            qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate, layer_scale=layer_scale
        )
        self.blocks3 = nn.ModuleList(
            EvoSABlock(
                embed_dim[2],
                heads[2],
                ratios[2],
                stage3_ratio[i],
                stage3_lam[i],
                pool_scores=(i == depth[2] - 1),
                track_scores=later_prunes[i],
                drop_path=rates[2][i],
                **common,
            )
            for i in range(depth[2])
        )
        self.blocks4 = nn.ModuleList(
            EvoSABlock(
                embed_dim[3],
                heads[3],
                ratios[3],
                stage4_ratio[i],
                stage4_lam[i],
                track_scores=later_prunes[depth[2] + i],
                drop_path=rates[3][i],
                **common,
            )
            for i in range(depth[3])
        )
        feat = self._init_head(embed_dim[3], num_classes, representation_size)
        self.norm_cls = nn.LayerNorm(embed_dim[3])
        self.head = nn.Linear(feat, num_classes) if num_classes > 0 else nn.Identity()
        self.head_cls = nn.Linear(embed_dim[3], num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _schedule(name: str, values: Sequence[float], depth: int) -> list[float]:
        values = list(values)
        if len(values) < depth:
            raise InputError(f"{name} lists {len(values)} entries for a stage of {depth} blocks")
        return [float(v) for v in values[:depth]]  # surplus entries are ignored, as officially

    @staticmethod
    def _check_schedule(stage3: list[float], stage4: list[float]):
        if any(not 0 < r <= 1 for r in stage3 + stage4):
            raise InputError(f"prune ratios must lie in (0, 1], got {stage3} and {stage4}")
        if stage3 and stage3[0] < 1:
            raise InputError(
                "the first stage-3 block must not prune (prune_ratio 1): there are no token scores before it"
            )
        if stage3 and stage3[-1] >= 1 and any(r < 1 for r in stage4):
            raise InputError(
                "stage-4 blocks can prune only if the last stage-3 block prunes: "
                "its pooling maps the scores onto the stage-4 grid"
            )

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pos_drop(self.patch_embed1(self._clip(x)))
        for blk in self.blocks1:
            x = blk(x)
        x = self.patch_embed2(x)
        for blk in self.blocks2:
            x = blk(x)
        x = self.patch_embed3(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        scores = None
        for blk in self.blocks3:
            cls, x, scores = blk(cls, x, scores)
        cls = self.cls_upsample(cls)
        x = self.patch_embed4(x)
        for blk in self.blocks4:
            cls, x, scores = blk(cls, x, scores)
        return self._pool(x), cls[:, 0]

    def forward(self, x: Tensor):
        pooled, cls = self.forward_features(x)
        if self.training:
            return self.head(pooled), self.head_cls(self.norm_cls(cls))
        return self.head(pooled)
