"""The frame-batched 2-D form: UniFormer without 5-D convolution, for runtimes that have none
(ExecuTorch XNNPACK) or run it off their fast units (the Core ML Neural Engine).

Every Conv3d becomes Conv2d over temporal taps and attention uses 3-D batched matrix products.
The convolution-only stages 1-2 run on frame-batched maps (B*T, C, H, W), which XNNPACK keeps
in its channels-last layout from one convolution to the next. The residual adds of the blocks
this form owns go through `ResidualAdd`, so quantizers can tell them from the sums inside layers.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..models import deploy
from ..models.deploy import ChannelAffine
from ..models.uniformer import Attention, CBlock, ConvStem, PatchEmbed

__all__ = [
    "frame_batched",
    "Conv3dAs2d",
    "TimeUnrolledConv",
    "BatchedAttention",
    "FrameConvStages",
    "FrameEmbed",
    "FrameCBlock",
    "ResidualAdd",
    "affine_as_depthwise",
]


class ResidualAdd(nn.Module):
    """x + branch on a block's residual stream. A module, so that the op it exports carries it
    in its `nn_module_stack`: the marker by which a quantizer keeps residual adds float."""

    def forward(self, x: Tensor, branch: Tensor) -> Tensor:
        return x + branch


def affine_as_depthwise(affine: ChannelAffine) -> nn.Conv2d:
    """A `ChannelAffine` on frame-batched maps as a 1x1 depthwise convolution: XNNPACK runs it
    as one fp32 pass (its int8 program keeps depthwise convolutions fp32), where the multiply-add
    ran as a quantize, an int8 multiply and an int8 add."""
    channels = affine.scale.numel()
    conv = nn.Conv2d(channels, channels, 1, groups=channels)
    with torch.no_grad():
        conv.weight.copy_(affine.scale.reshape(-1, 1, 1, 1))
        conv.bias.copy_(affine.shift.reshape(-1))
    return conv


def _to_frames(x: Tensor) -> Tensor:
    """Clip (B, C, T, H, W) -> frame-batched map (B*T, C, H, W), frames of a clip adjacent."""
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)


def _from_frames(x: Tensor, batch: int) -> Tensor:
    BT, C, H, W = x.shape
    return x.reshape(batch, BT // batch, C, H, W).transpose(1, 2)


def _time_slice(frames: Tensor, batch: int, start: int, count: int, step: int) -> Tensor:
    """Frames start, start + step, ... (`count` of them) of every clip of a frame-batched map."""
    stop = start + step * (count - 1) + 1
    if batch == 1:  # a slice of the leading dimension, which XNNPACK runs in its channels-last layout
        return frames[start:stop:step]
    return frames.unflatten(0, (batch, -1))[:, start:stop:step].flatten(0, 1)


def _time_cat(runs: list[Tensor], batch: int) -> Tensor:
    """Frame-batched maps of consecutive frames of the same clips, joined along time."""
    if batch == 1:
        return torch.cat(runs, dim=0)
    return torch.cat([r.unflatten(0, (batch, -1)) for r in runs], dim=1).flatten(0, 1)


def _time_pad(frames: Tensor, batch: int, pad: int) -> Tensor:
    """`pad` zero frames before and after every clip. The zeros are made from the input (a
    multiply by 0) rather than `new_zeros` or `F.pad`: XNNPACK runs neither tensor creation
    nor int8 padding of the leading dimensions, which would split the delegated graph."""
    if batch == 1:
        zero = [frames[:1] * 0.0] * pad
        return torch.cat(zero + [frames] + zero, dim=0)
    clips = frames.unflatten(0, (batch, -1))
    zero = [clips[:, :1] * 0.0] * pad
    return torch.cat(zero + [clips] + zero, dim=1).flatten(0, 1)


class Conv3dAs2d(nn.Module):
    """A Conv3d as Conv2d over temporal taps, on clips (B, C, T, H, W) or, with `batch`, on
    frame-batched maps (B*T, C, H, W). Dense kernels concatenate their taps along channels into
    one Conv2d; depthwise kernels sum one Conv2d per tap and skip the taps that read temporal
    padding. On clips, depthwise taps convolve whole frames and their outputs are sliced: XNNPACK
    would otherwise convert every slice of channels-first frames to its channels-last layout."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        if conv.dilation != (1, 1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("Conv3dAs2d supports zero padding without dilation only")
        kt, kh, kw = conv.kernel_size
        self.time_kernel, self.time_stride, self.time_pad = kt, conv.stride[0], conv.padding[0]
        self.out_channels = conv.out_channels
        w = conv.weight.detach()
        spatial = dict(kernel_size=(kh, kw), stride=conv.stride[1:], padding=conv.padding[1:])
        has_bias = conv.bias is not None
        self.dense = conv.groups == 1
        self.per_frame = (kt, self.time_stride, self.time_pad) == (1, 1, 0)
        self.pointwise = conv.kernel_size == (1, 1, 1) and conv.stride == (1, 1, 1) and conv.padding == (0, 0, 0)
        if self.dense:
            # Input channels ordered tap-major: channel tau * C + c.
            fused = nn.Conv2d(conv.in_channels * kt, conv.out_channels, bias=has_bias, **spatial)
            with torch.no_grad():
                fused.weight.copy_(w.permute(0, 2, 1, 3, 4).reshape(fused.weight.shape))
                if has_bias:
                    fused.bias.copy_(conv.bias)
            self.taps = nn.ModuleList([fused])
        else:
            # The bias rides on the tap that reads each output frame's own input frame, which
            # every output frame reads unless the padding exceeds half the kernel.
            self.bias_tap = min(self.time_pad, kt - 1)
            self.taps = nn.ModuleList()
            for tau in range(kt):
                tap = nn.Conv2d(
                    conv.in_channels,
                    conv.out_channels,
                    groups=conv.groups,
                    bias=has_bias and tau == self.bias_tap,
                    **spatial,
                )
                with torch.no_grad():
                    tap.weight.copy_(w[:, :, tau])
                    if tap.bias is not None:
                        tap.bias.copy_(conv.bias)
                self.taps.append(tap)

    def forward(self, x: Tensor, batch: Optional[int] = None) -> Tensor:
        if batch is None:
            B, C, T, H, W = x.shape
            if self.pointwise:  # a 1x1x1 kernel needs no frame split: (B, C, T*H, W) keeps the layout
                return self.taps[0](x.reshape(B, C, T * H, W)).reshape(B, self.out_channels, T, H, W)
            frames = _to_frames(x)
            runs = None if self.dense or self.per_frame else self._runs(T)
            if runs is not None:
                return _from_frames(self._sum_valid_taps(frames, B, runs, whole_taps=True), B)
            return _from_frames(self(frames, B), B)
        if self.per_frame:
            return self.taps[0](x)
        frames = x.shape[0] // batch
        runs = None if self.dense else self._runs(frames)
        if runs is not None:
            return self._sum_valid_taps(x, batch, runs)
        if self.time_pad:
            x = _time_pad(x, batch, self.time_pad)
        t_out = self.frames_out(frames)
        taps = [_time_slice(x, batch, tau, t_out, self.time_stride) for tau in range(self.time_kernel)]
        if self.dense:
            return self.taps[0](taps[0] if self.time_kernel == 1 else torch.cat(taps, dim=1))
        y = self.taps[0](taps[0])
        for conv, tap in zip(self.taps[1:], taps[1:]):
            y = y + conv(tap)
        return y

    def frames_out(self, frames: int) -> int:
        return (frames + 2 * self.time_pad - self.time_kernel) // self.time_stride + 1

    def real_taps(self, t: int, frames: int) -> list[tuple[int, int]]:
        """(tap, input frame) of the taps of output frame `t` that read one of the `frames` input
        frames rather than temporal padding."""
        sources = ((tau, t * self.time_stride + tau - self.time_pad) for tau in range(self.time_kernel))
        return [(tau, source) for tau, source in sources if 0 <= source < frames]

    def _runs(self, frames: int) -> Optional[list[tuple[int, int, list[int]]]]:
        """Runs of consecutive output frames that read the same taps, as (first output frame,
        count, taps); None when some output frame does not read the bias tap (padding over
        half the kernel), which the padded form handles."""
        runs: list[tuple[int, int, list[int]]] = []
        for t in range(self.frames_out(frames)):
            taps = [tau for tau, _ in self.real_taps(t, frames)]
            if self.bias_tap not in taps:
                return None
            if runs and runs[-1][2] == taps:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, taps)
            else:
                runs.append((t, 1, taps))
        return runs

    def _sum_valid_taps(self, x: Tensor, batch: int, runs, whole_taps: bool = False) -> Tensor:
        """Each run's taps summed; `whole_taps`: slices of each tap's output over all frames
        (computed once, when first read) rather than each tap over slices of the input."""
        frames, st = x.shape[0] // batch, self.time_stride
        tap_outputs: dict[int, Tensor] = {}

        def term(tau: int, start: int, count: int) -> Tensor:
            whole = start == 0 and count == frames and st == 1
            if not whole_taps:
                return self.taps[tau](x if whole else _time_slice(x, batch, start, count, st))
            if tau not in tap_outputs:
                tap_outputs[tau] = self.taps[tau](x)
            return tap_outputs[tau] if whole else _time_slice(tap_outputs[tau], batch, start, count, st)

        outputs = []
        for first, count, _ in runs:
            y = None
            for tau, start in self.real_taps(first, frames):  # the run's taps, as its first frame reads them
                y = term(tau, start, count) if y is None else y + term(tau, start, count)
            outputs.append(y)
        return outputs[0] if len(outputs) == 1 else _time_cat(outputs, batch)


class TimeUnrolledConv(nn.Module):
    """A dense Conv3d on clips of a known frame count as one Conv2d over (B, C*T, H, W), which
    is the clip's own memory, with one block of output channels per output frame; returns
    frame-batched maps (B*T_out, O, H', W'). For the stem, whose few input channels make the
    zero-filled kernel cheap (T/kt times the multiply-adds), this replaces the transpose of
    the input clip to frames, the temporal padding and the strided tap slices, which XNNPACK
    does not run (most of the int8 stem's time in a per-op profile)."""

    def __init__(self, conv: Conv3dAs2d, frames: int):
        super().__init__()
        if not conv.dense:
            raise ValueError("TimeUnrolledConv unrolls dense convolutions only")
        fused = conv.taps[0]
        kt = conv.time_kernel
        out_ch, in_ch = conv.out_channels, fused.in_channels // kt
        self.frames_out = conv.frames_out(frames)
        if self.frames_out < 1:
            raise ValueError(f"{frames} frames are fewer than the temporal kernel ({kt}) needs")
        self.frames, self.out_channels = frames, out_ch
        self.conv = nn.Conv2d(
            in_ch * frames,
            self.frames_out * out_ch,
            fused.kernel_size,
            fused.stride,
            fused.padding,
            bias=fused.bias is not None,
        )
        taps = fused.weight.detach().reshape(out_ch, kt, in_ch, *fused.kernel_size)
        with torch.no_grad():
            weight = self.conv.weight.zero_().reshape(self.frames_out, out_ch, in_ch, frames, *fused.kernel_size)
            for t in range(self.frames_out):
                for tau, source in conv.real_taps(t, frames):  # taps on padding frames stay zero
                    weight[t, :, :, source] = taps[:, tau]
            if fused.bias is not None:
                self.conv.bias.copy_(fused.bias.detach().repeat(self.frames_out))

    def forward(self, x: Tensor) -> Tensor:
        B, C, T, H, W = x.shape
        if T != self.frames:
            raise ValueError(f"this deploy form takes clips of {self.frames} frames, got {T}")
        y = self.conv(x.reshape(B, C * T, H, W))
        return y.reshape(B * self.frames_out, self.out_channels, *y.shape[-2:])


class FrameCBlock(nn.Module):
    """A (folded) local block on frame-batched maps."""

    def __init__(self, blk: CBlock):
        super().__init__()
        self.pos_embed, self.attn = Conv3dAs2d(blk.pos_embed), Conv3dAs2d(blk.attn)
        self.pos_embed_residual = blk.pos_embed_residual
        self.conv1, self.conv2 = Conv3dAs2d(blk.conv1), Conv3dAs2d(blk.conv2)
        self.fc1, self.act, self.fc2 = Conv3dAs2d(blk.mlp.fc1), blk.mlp.act, Conv3dAs2d(blk.mlp.fc2)
        self.residual = ResidualAdd()
        self.norm1, self.norm2 = (
            affine_as_depthwise(n) if isinstance(n, ChannelAffine) else n for n in (blk.norm1, blk.norm2)
        )

    def forward(self, x: Tensor, batch: int) -> Tensor:
        pe = self.pos_embed(x, batch)
        x = self.residual(x, pe) if self.pos_embed_residual else pe
        x = self.residual(x, self.conv2(self.attn(self.conv1(self.norm1(x), batch), batch), batch))
        return self.residual(x, self.fc2(self.act(self.fc1(self.norm2(x), batch)), batch))


class FrameEmbed(nn.Module):
    """A (folded) `PatchEmbed` (convolution, LayerNorm over channels) or `ConvStem`
    (convolution, GELU, convolution) on frame-batched maps. With `frames` given, the first
    convolution is a `TimeUnrolledConv` and the module takes clips instead."""

    def __init__(self, embed: nn.Module, frames: Optional[int] = None):
        super().__init__()
        if isinstance(embed, PatchEmbed):
            self.convs, self.act, self.norm = nn.ModuleList([Conv3dAs2d(embed.proj)]), None, embed.norm
        elif isinstance(embed, ConvStem):
            self.convs = nn.ModuleList([Conv3dAs2d(embed.proj[0]), Conv3dAs2d(embed.proj[3])])
            self.act, self.norm = embed.proj[2], None
        else:
            raise TypeError(f"no frame-batched form of {type(embed).__name__}")
        self.norm_takes_maps = False  # True: the norm normalises (N, C, H, W) maps as they are
        self.takes_clips = frames is not None
        if self.takes_clips:
            self.convs[0] = TimeUnrolledConv(self.convs[0], frames)

    def set_norm(self, norm: nn.Module, takes_maps: bool) -> None:
        """Replace the LayerNorm; `takes_maps`: `norm` normalises dim 1 of (N, C, H, W) maps."""
        self.norm, self.norm_takes_maps = norm, takes_maps

    def forward(self, x: Tensor, batch: int) -> Tensor:
        x = self.convs[0](x) if self.takes_clips else self.convs[0](x, batch)
        if self.act is not None:
            x = self.convs[1](self.act(x), batch)
        if self.norm_takes_maps:
            return self.norm(x)
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


class FrameConvStages(nn.Module):
    """Stem, stage 1, patch merging and stage 2 (convolutions only) on frame-batched maps
    (B*T, C, H, W); takes and returns clips. With no 5-D tensor between two convolutions,
    XNNPACK keeps the whole span in its channels-last layout instead of transposing around
    every convolution (transposes, layout conversions and slices took a quarter of the int8
    UniFormer-S time before). With `frames` given, the stem takes the clips as they come
    (`TimeUnrolledConv`)."""

    def __init__(self, embed1: nn.Module, blocks1, embed2: nn.Module, blocks2, frames: Optional[int] = None):
        super().__init__()
        self.embed1, self.embed2 = FrameEmbed(embed1, frames), FrameEmbed(embed2)
        self.blocks1 = nn.ModuleList(FrameCBlock(b) for b in blocks1)
        self.blocks2 = nn.ModuleList(FrameCBlock(b) for b in blocks2)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        if not self.embed1.takes_clips:
            x = _to_frames(x)
        for embed, blocks in ((self.embed1, self.blocks1), (self.embed2, self.blocks2)):
            x = embed(x, batch)
            for blk in blocks:
                x = blk(x, batch)
        return _from_frames(x, batch)


class BatchedAttention(nn.Module):
    """`Attention` for runtimes that run 3-D batched matrix products (XNNPACK): separate q, k, v
    projections with the attention scale folded into q, heads merged into the batch and plain
    `bmm`, so no strided head selection or 4-D broadcasting matmul reaches the runtime (both
    fall back to slow portable kernels and split the delegated graph)."""

    def __init__(self, attn: Attention):
        super().__init__()
        C = attn.proj.in_features
        self.num_heads = attn.num_heads
        self.q, self.k, self.v = (nn.Linear(C, C, bias=attn.qkv.bias is not None) for _ in range(3))
        with torch.no_grad():
            for i, (layer, scale) in enumerate(zip((self.q, self.k, self.v), (attn.scale, 1.0, 1.0))):
                layer.weight.copy_(attn.qkv.weight[i * C : (i + 1) * C] * scale)
                if layer.bias is not None:
                    layer.bias.copy_(attn.qkv.bias[i * C : (i + 1) * C] * scale)
        self.proj, self.cls_scores = attn.proj, attn.cls_scores

    def forward(self, x: Tensor, want_cls_scores: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        B, M, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        q = self.q(x).reshape(B, M, h, d).transpose(1, 2).reshape(B * h, M, d)
        k_t = self.k(x).reshape(B, M, h, d).permute(0, 2, 3, 1).reshape(B * h, d, M)
        v = self.v(x).reshape(B, M, h, d).transpose(1, 2).reshape(B * h, M, d)
        attn = torch.bmm(q, k_t).softmax(dim=-1)
        cls_scores = self.cls_scores(attn.reshape(B, h, M, M)) if want_cls_scores else None
        out = torch.bmm(attn, v)
        return self.proj(out.reshape(B, h, M, C // h).permute(0, 2, 1, 3).reshape(B, M, C)), cls_scores


def _to_frame_batched(model: nn.Module, frames: Optional[int]):
    # Stages 1-2 become one frame-batched module in place of `patch_embed1`; the model's own
    # forward then passes through the emptied stage-1/2 slots unchanged.
    model.patch_embed1 = FrameConvStages(model.patch_embed1, model.blocks1, model.patch_embed2, model.blocks2, frames)
    model.blocks1, model.patch_embed2, model.blocks2 = nn.ModuleList(), nn.Identity(), nn.ModuleList()
    _replace_3d(model)


def _replace_3d(module: nn.Module):
    for name, child in module.named_children():
        if isinstance(child, nn.Conv3d):
            setattr(module, name, Conv3dAs2d(child))
        elif isinstance(child, Attention):
            setattr(module, name, BatchedAttention(child))
        elif not isinstance(child, FrameConvStages):
            _replace_3d(child)


def frame_batched(
    model: nn.Module, frames: Optional[int] = None, per_channel_safe: bool = False, float_depthwise: bool = False
) -> nn.Module:
    """`deploy(model, per_channel_safe, float_depthwise)` in the frame-batched 2-D form. `frames`
    fixes the clips' frame count, which lets the stem take the clips without a transpose
    (`TimeUnrolledConv`); the form then runs on that count only. The input model is untouched."""
    out = deploy(model, per_channel_safe=per_channel_safe, float_depthwise=float_depthwise)
    _to_frame_batched(out, frames)
    return out.requires_grad_(False)
