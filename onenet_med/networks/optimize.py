"""A fast inference copy of a trained network: :func:`optimize_for_inference`.

Training keeps the plain modules (``ChannelDense``: Conv -> ReLU -> BN, ...). For inference a copy is made in
which every convolution with its activation and normalisation becomes one :class:`FastConv2d`:

- **BatchNorm folded exactly.** Conv -> BN -> act ("NA"): the BN affine goes into the convolution's own weights.
  Conv -> ReLU -> BN ("AN", the authors' order): with the BN scale ``s`` and shift ``t`` per channel,
  ``s * relu(z) + t = clamp(s * z + t, t, inf)`` for ``s >= 0`` and ``clamp(s * z + t, -inf, t)`` for ``s < 0``
  (ReLU is positively homogeneous), so the scale and the shift go into the convolution and the ReLU becomes a
  per-channel clamp, which costs what the ReLU cost. This is exact wherever the output goes (a pixel shuffle,
  a concatenation, a spatial layer, a zero-padded 3x3 convolution: the border zeros stay zeros), so no layer
  needs to know its consumer. Where the consumer is a 1x1 layer the clamp then moves into it (the ReLU stays
  fused); in the ``portable`` copy also across the pixel shuffle of an ed decoder stage
  (:func:`fold_across_shuffle`), so that a -C OneNet-ed has no clamp left. The folds compute in float64 and round
  once; a layer whose BN shift is far larger than its outputs (a channel of running variance ~0 and positive mean,
  :data:`MAX_SHIFT_RATIO`) keeps its clamp, because moving that shift would make the consumer cancel large terms.
- **oneDNN on CPU.** ``F.conv2d`` runs a 1x1 convolution through ``aten::_slow_conv2d_forward`` at one thread
  and small batches; on CPU float32 tensors the layers call oneDNN directly
  (``torch.ops.mkldnn._convolution_pointwise``, with the ReLU fused into the convolution; under TorchScript
  ``aten::mkldnn_convolution``), and low-resolution 1x1 layers with large weights run as one ``addmm`` on the
  channels-last ``(B*H*W, C)`` view (no per-call weight reorder). Under tracing, ``torch.compile``,
  ``torch.export`` and ONNX export, and on other devices, the same layers run the portable ``F.conv2d`` /
  ``torch.relu`` / ``torch.clamp``, so the copy exports like the plain network (dynamic batch, H, W). The
  ``portable=True`` copy (what ``onenet-med export`` writes to ONNX) also keeps the pixel shuffles in PyTorch's
  channel order, so each decoder stage exports as Conv -> DepthToSpace -> Concat -> Conv with nothing in float
  between the convolutions of an int8 model.
- the unshuffle of the -C encoder levels stays fused into a 2x2 stride-2 convolution.

The copy is a new module tree (the model passed in is not modified), in eval mode, with parameters that do not
require gradients. Modules the optimiser does not know are kept as they are (in eval mode), so a network with
extra blocks still works; :func:`register_inference_converter` adds a converter for a new module type.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN, Convolution
from torch import nn

from onenet_med.networks.blocks import ChannelDense, OneNetDownBlock, OneNetUpBlock, pixel_unshuffle_cl
from onenet_med.networks.onenet import OneNet, OneNetEDDecoder

__all__ = [
    "FastConv2d",
    "FastDownBlock",
    "fold_across_shuffle",
    "optimize_for_inference",
    "register_inference_converter",
]

# what follows the convolution in a FastConv2d
POST_NONE, POST_RELU, POST_CLAMP = 0, 1, 2

#: 1x1 layers with at most this many output pixels (B*H*W) run as addmm on CPU: oneDNN reorders the weight on
#: every call, which costs more than it saves when the weight is large and the image small (measured at 1 thread:
#: a 1024 -> 1024 layer on 32x32 pixels 13.8 ms with addmm, 15.1 ms with oneDNN; 64x64 pixels: 3.7 vs 3.4 ms)
ADDMM_MAX_PIXELS = 2048

#: a Conv -> ReLU -> BN layer keeps its clamp (instead of a fused ReLU, the BN shift moved into the next layer)
#: when its shift is more than this many times its outputs' size (:func:`_shift_ratio`): float32 accuracy first
MAX_SHIFT_RATIO = 16.0

_HAS_POINTWISE = hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()


def _use_onednn(x: torch.Tensor) -> bool:
    """True when the CPU fast path may run: float32 on CPU, not traced, compiled or exported."""
    if torch.jit.is_scripting():
        return x.is_cpu and x.dtype == torch.float32
    return (
        _HAS_POINTWISE
        and x.is_cpu
        and x.dtype == torch.float32
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
    )


def _conv_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: list[int],
    padding: list[int],
    groups: int,
    relu: bool,
    patch_rows: torch.Tensor,
    addmm_max_pixels: int,
) -> torch.Tensor:
    """Convolution (+ ReLU) on CPU float32 through oneDNN or MKL, channels-last in, channels-last out.

    ``patch_rows``: for a convolution whose kernel equals its stride (1x1, or the fused 2x2 stride-2 unshuffle
    layers) and has no padding, the weight as ``(C_out, kh * kw * C_in)`` in ``(dy, dx, c)`` order; empty
    otherwise. Such layers with few output pixels run as one ``addmm`` on the channels-last rows.
    """
    b = x.shape[0]
    kh = weight.shape[2]
    kw = weight.shape[3]
    h = x.shape[2] // kh
    w = x.shape[3] // kw
    if (
        patch_rows.numel() > 0
        and b * h * w <= addmm_max_pixels
        and x.shape[2] == h * kh
        and x.shape[3] == w * kw
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        c = x.shape[1]
        if kh == 1 and kw == 1:
            rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
        else:  # gather each output pixel's kh x kw input patch: one small copy instead of a weight reorder
            patches = x.permute(0, 2, 3, 1).reshape(b, h, kh, w, kw, c).permute(0, 1, 3, 2, 4, 5)
            rows = patches.reshape(b * h * w, kh * kw * c)
        y = torch.addmm(bias, rows, patch_rows.t())
        if relu:
            y = y.relu_()
        return y.view(b, h, w, weight.shape[0]).permute(0, 3, 1, 2)
    if torch.jit.is_scripting():
        y = torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, stride, [1, 1], groups)
        return y.relu_() if relu else y
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, padding, stride, [1, 1], groups, "relu" if relu else "none", [], ""
    )


class FastConv2d(nn.Module):
    """An inference-only 2D convolution with its BatchNorm folded in and its activation fused.

    Computes ``post(conv2d(x, weight, bias, stride, padding, groups=groups))`` where ``post`` is nothing, a
    ReLU, a per-channel clamp ``clamp(y, lo, hi)`` (Conv -> ReLU -> BN folded) or ``act`` (any other module,
    applied last). Build it with :meth:`from_conv`.

    Shapes:
        ``(B, C_in, H, W) -> (B, C_out, H', W')``, channels-last in and out on the CPU fast path.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        groups: int = 1,
        post: int = POST_NONE,
        lo: torch.Tensor | None = None,
        hi: torch.Tensor | None = None,
        act: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # channels-last weights: oneDNN would otherwise convert a k x k weight on every call (18 MB for a
        # 1024 -> 512 3x3 layer, ~35 ms at one thread)
        weight = weight.detach().clone().contiguous(memory_format=torch.channels_last)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone().contiguous(), requires_grad=False)
        self.stride = [int(s) for s in stride]
        self.padding = [int(p) for p in padding]
        self.groups = int(groups)
        self.post = int(post)
        self.relu = self.post == POST_RELU
        self.clamp = self.post == POST_CLAMP
        self.addmm_max_pixels = ADDMM_MAX_PIXELS
        empty = weight.new_zeros(0)
        shape = (1, -1, 1, 1)
        self.register_buffer("lo", lo.detach().reshape(shape).clone() if lo is not None else empty)
        self.register_buffer("hi", hi.detach().reshape(shape).clone() if hi is not None else empty.clone())
        self.act = act if act is not None else nn.Identity()
        self.register_buffer("patch_rows", empty.clone(), persistent=False)
        self._refresh()

    def _refresh(self) -> None:
        """Recompute ``patch_rows`` (the weight in addmm layout) after the weight changed."""
        o, i, kh, kw = self.weight.shape
        if self.groups == 1 and not any(self.padding) and self.stride == [kh, kw]:
            self.patch_rows = self.weight.detach().permute(0, 2, 3, 1).reshape(o, kh * kw * i).contiguous()
        else:
            self.patch_rows = self.weight.new_zeros(0)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, after: list[nn.Module] | None = None) -> FastConv2d:
        """Fold the modules that run ``after`` the convolution (in order; BatchNorm2d, ReLU, Dropout, others).

        A leading BatchNorm goes into the weights; then a ReLU is fused, a ReLU followed by a BatchNorm becomes
        a clamp; whatever remains (other activations or norms) is kept, in eval mode, as ``act``.
        """
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FastConv2d folds plain zero-padded nn.Conv2d layers, got {conv!r}")
        if tuple(conv.dilation) != (1, 1):
            raise ValueError(f"FastConv2d does not support dilation, got {conv!r}")
        dtype = conv.weight.dtype
        weight = conv.weight.detach().double()  # fold in float64, round once
        bias = conv.bias.detach().double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        rest = [m for m in (after or []) if not isinstance(m, (nn.Dropout, nn.Identity))]  # identities in eval
        if rest and _foldable_bn(rest[0]):
            scale, shift = _bn_affine(rest[0])
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = bias * scale + shift
            rest = rest[1:]
        post, lo, hi, shift_ratio = POST_NONE, None, None, 0.0
        if rest and _is_relu(rest[0]):
            if len(rest) > 1 and _foldable_bn(rest[1]):
                scale, shift = _bn_affine(rest[1])
                shift_ratio = _shift_ratio(rest[1], shift)
                weight = weight * scale.view(-1, 1, 1, 1)
                bias = bias * scale + shift
                inf = torch.full_like(shift, float("inf"))
                lo = torch.where(scale >= 0, shift, -inf)
                hi = torch.where(scale >= 0, inf, shift)
                post, rest = POST_CLAMP, rest[2:]
            else:
                post, rest = POST_RELU, rest[1:]
        act = None
        if rest:
            act = copy.deepcopy(nn.Sequential(*rest) if len(rest) > 1 else rest[0]).eval()
        lo, hi = (v.to(dtype) if v is not None else None for v in (lo, hi))
        layer = cls(weight.to(dtype), bias.to(dtype), conv.stride, conv.padding, conv.groups, post, lo, hi, act)
        layer._shift_ratio = shift_ratio
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_onednn(x):
            y = _conv_cpu(
                x,
                self.weight,
                self.bias,
                self.stride,
                self.padding,
                self.groups,
                self.relu,
                self.patch_rows,
                self.addmm_max_pixels,
            )
            if self.clamp:
                y = y.clamp_(self.lo, self.hi)
        else:
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, [1, 1], self.groups)
            if self.relu:
                y = torch.relu(y)
            elif self.clamp:
                y = torch.clamp(y, self.lo, self.hi)
        return self.act(y)

    # ---- rewrites used while optimising (not in forward); optimize_for_inference runs them on a float64 copy

    def release_output_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Turn a folded Conv -> ReLU -> BN clamp into a fused ReLU and return what the consumer must apply.

        With ``sign = sign(s)`` and the BN shift ``t``: ``s * relu(z) + t = sign * relu(|s| * z) + t``, so this
        layer keeps ``relu(|s| * z)`` (its rows multiplied by ``sign``) and every consumer must fold the
        per-channel affine ``x -> sign * x + t`` of its input (:meth:`fold_input_affine`). Returns
        ``(sign, t)``, or None (nothing changed) when the layer does not end in such a clamp.
        """
        if not self.clamp or not isinstance(self.act, nn.Identity):
            return None
        if getattr(self, "_shift_ratio", 0.0) > MAX_SHIFT_RATIO:  # consumers would cancel large terms: keep it
            return None
        lo = self.lo.detach().flatten().double()
        hi = self.hi.detach().flatten().double()
        positive = torch.isfinite(lo)
        shift = torch.where(positive, lo, hi)
        sign = torch.where(positive, 1.0, -1.0).to(shift)
        with torch.no_grad():
            self.weight.mul_(sign.view(-1, 1, 1, 1).to(self.weight))
            self.bias.copy_(((self.bias.double() - shift) * sign).to(self.bias))
        self.post, self.relu, self.clamp = POST_RELU, True, False
        self.lo = self.lo.new_zeros(0)
        self.hi = self.hi.new_zeros(0)
        self._refresh()
        return sign, shift

    def fold_input_affine(self, sign: torch.Tensor, shift: torch.Tensor, start: int = 0) -> None:
        """Absorb ``x -> sign * x + shift`` applied to input channels ``start:start + len(sign)``.

        Exact only without padding (the zeros of a padded border would not be shifted).
        """
        if self.groups != 1 or any(self.padding):
            raise ValueError(f"cannot fold an input affine into a padded or grouped convolution ({self})")
        stop = start + sign.numel()
        with torch.no_grad():
            part = self.weight[:, start:stop].double()
            self.bias.add_((part * shift.view(1, -1, 1, 1)).sum((1, 2, 3)).to(self.bias))
            self.weight[:, start:stop] = (part * sign.view(1, -1, 1, 1)).to(self.weight)
        self._refresh()

    def permute_outputs(self, order: torch.Tensor) -> None:
        """Output channel ``i`` becomes the old channel ``order[i]`` (weights, bias and clamp bounds)."""
        if not isinstance(self.act, nn.Identity):
            raise ValueError("cannot permute the outputs of a layer with an activation module")
        with torch.no_grad():
            self.weight.copy_(self.weight[order])
            self.bias.copy_(self.bias[order])
            if self.lo.numel():
                self.lo = self.lo[:, order].contiguous()
                self.hi = self.hi[:, order].contiguous()
        self._refresh()

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        post = ("none", "relu", "clamp (folded ReLU -> BN)")[self.post]
        return f"{i * self.groups}, {o}, kernel_size=({kh}, {kw}), stride={tuple(self.stride)}, post={post}"


def fold_into_consumers(producer: nn.Module, consumers: list[tuple[nn.Module, int]]) -> bool:
    """Move ``producer``'s folded ReLU -> BN clamp into ``consumers`` (``(layer, first input channel)``), if all can.

    The producer then runs with a fused ReLU and no clamp pass. Returns whether anything was folded.
    """
    if not isinstance(producer, FastConv2d) or not producer.clamp or not isinstance(producer.act, nn.Identity):
        return False
    if not consumers or not all(
        isinstance(c, FastConv2d) and c.groups == 1 and not any(c.padding) for c, _ in consumers
    ):
        return False
    released = producer.release_output_affine()
    if released is None:
        return False
    for consumer, start in consumers:
        consumer.fold_input_affine(*released, start=start)
    return True


def fold_across_shuffle(producer: nn.Module, consumer: nn.Module, start: int, marker: float = 1.0) -> bool:
    """Move ``producer``'s folded ReLU -> BN clamp through a 2x pixel shuffle into the 1x1 ``consumer``.

    ``consumer`` reads ``pixel_shuffle(producer(x), 2)`` at input channels ``start:`` (after a skip, say).
    After the shuffle, channel ``c`` at sub-pixel ``k`` (``dy * 2 + dx``) is producer channel ``c * 4 + k``, so
    the affine ``x -> sign * x + t`` that the consumer must absorb (:meth:`FastConv2d.release_output_affine`)
    depends on the position, which a 1x1 convolution cannot express by its weights alone. Exact rewrite, with
    only ReLU convolutions, a pixel shuffle and the consumer left (nothing in float between int8 layers):

    - the producer's rows with ``sign < 0`` move into extra shuffle groups (one per channel ``c`` that has any;
      zero rows where the other group holds the value), read by the consumer with the negated column;
    - three marker groups: rows of zero weight and bias ``marker`` at sub-pixel ``k`` = 1, 2, 3 (0 elsewhere), so
      after the shuffle channel ``k`` is ``marker`` exactly at sub-pixel ``k``; the consumer reads them with
      ``W (t_k - t_0) / marker`` and adds ``W t_0`` to its bias, which is the position-dependent ``W t_k``.

    ``marker`` only matters to int8 models, where it is best near the top of the tensor's activation range (a
    per-tensor 8-bit grid rounds a value near its top by a small fraction of it). Returns whether anything was
    folded (False, nothing changed, when either layer has another form).
    """
    if not isinstance(producer, FastConv2d) or not producer.clamp or not isinstance(producer.act, nn.Identity):
        return False
    if producer.groups != 1 or producer.weight.shape[0] % 4:
        return False
    if (
        not isinstance(consumer, FastConv2d)
        or consumer.groups != 1
        or any(consumer.padding)
        or tuple(consumer.weight.shape[2:]) != (1, 1)
        or consumer.weight.shape[1] != start + producer.weight.shape[0] // 4
    ):
        return False
    released = producer.release_output_affine()
    if released is None:
        return False
    sign, shift = (v.view(-1, 4) for v in released)  # (C, 4): channel c, sub-pixel k
    channels = sign.shape[0]
    negative = torch.nonzero((sign < 0).any(1)).flatten().tolist()
    weight = producer.weight.detach().double()
    bias = producer.bias.detach().double()
    rows = weight.view(channels, 4, *weight.shape[1:])
    row_bias = bias.view(channels, 4)
    positive_rows = torch.where((sign > 0).view(channels, 4, 1, 1, 1), rows, 0.0)
    positive_bias = torch.where(sign > 0, row_bias, 0.0)
    negative_rows = torch.where((sign < 0)[negative].view(-1, 4, 1, 1, 1), rows[negative], 0.0)
    negative_bias = torch.where((sign < 0)[negative], row_bias[negative], 0.0)
    marker_rows = rows.new_zeros(3, *rows.shape[1:])
    marker_bias = torch.zeros(3, 4, dtype=bias.dtype)
    marker_bias[:, 1:] = torch.eye(3, dtype=bias.dtype) * marker
    new_weight = torch.cat([positive_rows, negative_rows, marker_rows]).flatten(0, 1)
    new_bias = torch.cat([positive_bias, negative_bias, marker_bias]).flatten()

    reader = consumer.weight.detach().double()[:, :, 0, 0]
    skip_columns, up_columns = reader[:, :start], reader[:, start:]
    offsets = up_columns @ (shift[:, 1:] - shift[:, :1])  # (O, 3): W (t_k - t_0)
    new_reader = torch.cat([skip_columns, up_columns, -up_columns[:, negative], offsets / marker], dim=1)
    consumer_bias = consumer.bias.detach().double() + up_columns @ shift[:, 0]

    dtype = producer.weight.dtype
    producer.weight = nn.Parameter(new_weight.to(dtype).contiguous(memory_format=torch.channels_last), False)
    producer.bias = nn.Parameter(new_bias.to(dtype), False)
    producer._refresh()
    consumer.weight = nn.Parameter(
        new_reader[:, :, None, None].to(dtype).contiguous(memory_format=torch.channels_last), False
    )
    consumer.bias = nn.Parameter(consumer_bias.to(dtype), False)
    consumer._refresh()
    return True


class FastDownBlock(nn.Module):
    """Inference form of :class:`~onenet_med.networks.blocks.OneNetDownBlock`.

    -C: one 2x2 stride-2 :class:`FastConv2d` (unshuffle fused into the first dense layer) then the second dense
    layer; -S: channels-last pixel-unshuffle -> the spatial layer (kept as it is) -> two dense layers. The
    first layer's folded BatchNorm moves into the second.

    Shapes:
        ``(B, C, H, W) -> (B, C_out, H / 2, W / 2)``.
    """

    def __init__(self, block: OneNetDownBlock) -> None:
        super().__init__()
        self.fused = block.fused
        self.spatial = block.spatial.eval()
        conv = block.reduce.conv
        if self.fused:  # PixelUnshuffle orders channels c * 4 + dy * 2 + dx: the weight viewed as (O, C, 2, 2)
            like = {"device": conv.weight.device, "dtype": conv.weight.dtype}
            folded = nn.Conv2d(conv.in_channels // 4, conv.out_channels, 2, stride=2, **like)
            with torch.no_grad():
                folded.weight.copy_(conv.weight.view(conv.out_channels, conv.in_channels // 4, 2, 2))
                folded.bias.copy_(conv.bias)
            conv = folded
        self.reduce = FastConv2d.from_conv(conv, list(block.reduce.adn.children()))
        self.refine = _dense(block.refine)
        fold_into_consumers(self.reduce, [(self.refine, 0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.refine(self.reduce(x))
        return self.refine(self.reduce(self.spatial(pixel_unshuffle_cl(x))))


def _shuffle_order(channels: int) -> torch.Tensor:
    """Output order that makes a pixel shuffle copy whole runs: new channel ``k * C + c`` = old ``c * 4 + k``."""
    c = channels // 4
    return (torch.arange(c).view(1, c) * 4 + torch.arange(4).view(4, 1)).flatten()


def _shuffle_grouped(x: torch.Tensor) -> torch.Tensor:
    """``F.pixel_shuffle(x, 2)`` for input channels ordered ``k * C + c`` (see :func:`_shuffle_order`), portable."""
    b, c4, h, w = x.shape
    c = c4 // 4
    return x.reshape(b, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c, 2 * h, 2 * w)


class FastUpStage(nn.Module):
    """Inference form of :class:`~onenet_med.networks.blocks.OneNetUpBlock` (a OneNet-ed decoder stage).

    With ``grouped=True`` its input channels are in the order of :func:`_shuffle_order` (the producer's outputs
    are permuted once), so on the CPU fast path the pixel shuffle and the concatenation with the skip are one
    copy into one buffer (``[skip, upsampled]``, as in training) instead of two.

    Shapes:
        ``(B, 4 C, h, w), skip (B, C_skip, 2h, 2w) -> (B, C_out, 2h, 2w)``.
    """

    def __init__(self, block: OneNetUpBlock, grouped: bool = False) -> None:
        super().__init__()
        self.grouped = grouped
        self.spatial = block.spatial.eval()
        self.dense1 = _dense(block.dense1)
        self.dense2 = _dense(block.dense2)
        fold_into_consumers(self.dense1, [(self.dense2, 0)])

    def shuffle_cat(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if not self.grouped:
            up = F.pixel_shuffle(x, 2)
            return up if skip is None else torch.cat([skip, up], dim=1)
        if not _use_onednn(x) or not x.is_contiguous(memory_format=torch.channels_last):
            up = _shuffle_grouped(x)
            return up if skip is None else torch.cat([skip, up], dim=1)
        b, c4, h, w = x.shape
        c = c4 // 4
        cs = 0 if skip is None else skip.shape[1]
        out = torch.empty((b, 2 * h, 2 * w, cs + c), dtype=x.dtype, device=x.device)
        if skip is not None:
            out[:, :, :, :cs].copy_(skip.permute(0, 2, 3, 1))
        grouped = x.permute(0, 2, 3, 1).reshape(b, h, w, 2, 2, c).permute(0, 1, 3, 2, 4, 5)
        out[:, :, :, cs:].view(b, h, 2, w, 2, c).copy_(grouped)
        return out.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        return self.dense2(self.dense1(self.spatial(self.shuffle_cat(x, skip))))


class FastEDDecoder(nn.Module):
    """Inference form of :class:`~onenet_med.networks.onenet.OneNetEDDecoder`.

    Every layer feeding a pixel shuffle has its outputs permuted into the grouped order of
    :func:`_shuffle_order`; the top stage's folded BatchNorm moves into the head. When the top stage has no
    skip and no spatial layer (-C) and its layers are fully folded, it runs per sub-pixel on the CPU fast path:
    its dense layers and the head are per pixel, so they run on the ``(B, h, w, 2, 2, C)`` layout that the
    previous stage produced, and only the head's few output channels are put in image order.

    ``forward(x, skips)`` as the plain decoder (``skips`` shallow first); returns logits ``(B, K, H, W)``.
    """

    def __init__(self, decoder: OneNetEDDecoder) -> None:
        super().__init__()
        stages = list(decoder.stages)
        self.bottleneck = _dense(decoder.bottleneck)
        self.head = _convert(decoder.head)
        self.stages = nn.ModuleList([FastUpStage(stage) for stage in stages[:-1]])
        self.top = FastUpStage(stages[-1])
        ordered = [*self.stages, self.top]
        producers = [self.bottleneck] + [stage.dense2 for stage in ordered[:-1]]
        # for make_portable: where each shuffled activation's range roughly ends (the markers' value)
        self.peaks = [_activation_peak(plain) for plain in [decoder.bottleneck] + [s.dense2 for s in stages[:-1]]]
        self.grouped = all(isinstance(p, FastConv2d) and isinstance(p.act, nn.Identity) for p in producers)
        if self.grouped:
            for producer, stage in zip(producers, ordered):
                producer.permute_outputs(_shuffle_order(producer.weight.shape[0]))
                stage.grouped = True
        fold_into_consumers(self.top.dense2, [(self.head, 0)])
        self.top_grouped = False
        self.top_per_subpixel = (
            self.grouped
            and isinstance(self.top.spatial, nn.Identity)
            and isinstance(self.head, FastConv2d)
            and all(isinstance(m.act, nn.Identity) for m in (self.top.dense1, self.top.dense2, self.head))
        )

    def make_portable(self) -> None:
        """The export form: every pixel-shuffle input back in PyTorch's channel order (``c * 4 + k``), so the shuffles
        run as ``F.pixel_shuffle`` (ONNX ``DepthToSpace``) instead of the grouped copy of the CPU fast path, and the
        clamps of the layers feeding them folded across the shuffle (:func:`fold_across_shuffle`), so that only
        convolutions with fused ReLUs, shuffles and concatenations remain (on the CPU fast path the clamps cost less
        than the extra channels: measured 53 against 59 ms for onenet_ed4 at width 16, 1x1x224x256, 1 thread)."""
        ordered = [*self.stages, self.top]
        producers = [self.bottleneck] + [stage.dense2 for stage in ordered[:-1]]
        if self.grouped:
            for producer, stage in zip(producers, ordered):
                producer.permute_outputs(torch.argsort(_shuffle_order(producer.weight.shape[0])))
                stage.grouped = False
            self.grouped = False
            self.top_per_subpixel = False
        self.top_grouped = _top_per_subpixel_layers(producers[-1], self.top, self.head)
        for producer, stage, peak in zip(producers, ordered, self.peaks):
            if stage is self.top and self.top_grouped:
                continue
            if isinstance(stage.spatial, nn.Identity) and isinstance(producer, FastConv2d):
                start = stage.dense1.weight.shape[1] - producer.weight.shape[0] // 4
                fold_across_shuffle(producer, stage.dense1, start, peak)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottleneck(x)
        n = len(skips)
        for i, stage in enumerate(self.stages):
            skip: torch.Tensor | None = skips[n - 1 - i] if i < n else None
            x = stage(x, skip)
        i = len(self.stages)
        if self.top_grouped:  # the portable form's top stage, per sub-pixel (see make_portable)
            return F.pixel_shuffle(self.head(self.top.dense2(self.top.dense1(x))), 2)
        if i < n:
            return self.head(self.top(x, skips[n - 1 - i]))
        if self.top_per_subpixel and _use_onednn(x) and x.is_contiguous(memory_format=torch.channels_last):
            return self._top_per_subpixel(x)
        return self.head(self.top(x, None))

    def _top_per_subpixel(self, x: torch.Tensor) -> torch.Tensor:
        b, c4, h, w = x.shape
        c = c4 // 4
        rows = x.permute(0, 2, 3, 1).reshape(1, b * h * w * 4, 1, c).permute(0, 3, 1, 2)  # a channels-last view
        y = self.head(self.top.dense2(self.top.dense1(rows)))
        k = y.shape[1]
        y = y.permute(0, 2, 3, 1).reshape(b, h, w, 2, 2, k).permute(0, 5, 1, 3, 2, 4)
        return y.reshape(b, k, 2 * h, 2 * w)


# ------------------------------------------------------------------------------------------ converters


def _dense(layer: ChannelDense) -> FastConv2d:
    return FastConv2d.from_conv(layer.conv, list(layer.adn.children()))


def _top_per_subpixel_layers(producer: nn.Module, top: FastUpStage, head: nn.Module) -> bool:
    """Rewrite an ed decoder's top stage (no skip, no spatial layer) to run per sub-pixel before the pixel shuffle.

    Its layers are per pixel, so ``head(dense2(dense1(shuffle(p))))`` = ``shuffle(H(D2(D1(p))))`` with ``p`` the
    producer's output in the grouped order ``k * C + c`` (sub-pixel ``k``), ``D1`` / ``D2`` convolutions with 4
    groups (one per sub-pixel) and ``H`` the head with a block-diagonal weight whose outputs are in PyTorch's
    shuffle order ``o * 4 + k``. The producer's ReLU -> BN affine, different per sub-pixel, folds exactly into
    each group of ``D1``. Only the head's few channels are shuffled (ONNX ``DepthToSpace``), not the full-resolution
    activations. Returns whether the layers were rewritten (else nothing changed).
    """
    layers = (producer, top.dense1, top.dense2, head)
    if not all(isinstance(m, FastConv2d) and isinstance(m.act, nn.Identity) for m in layers):
        return False
    if not isinstance(top.spatial, nn.Identity) or any(m.groups != 1 or any(m.padding) for m in layers[1:]):
        return False
    if any(tuple(m.weight.shape[2:]) != (1, 1) for m in layers[1:]) or head.clamp or top.dense2.clamp:
        return False
    channels = producer.weight.shape[0] // 4
    if top.dense1.weight.shape[1] != channels:  # a skip, or another layout
        return False
    released = producer.release_output_affine() if producer.clamp else None
    sign = torch.ones(channels, 4, dtype=torch.float64)
    shift = torch.zeros(channels, 4, dtype=torch.float64)
    if released is not None:
        sign, shift = (v.view(channels, 4) for v in released)
    producer.permute_outputs(_shuffle_order(4 * channels))
    dtype = producer.weight.dtype

    def set_layer(layer: FastConv2d, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> None:
        layer.weight = nn.Parameter(
            weight[:, :, None, None].to(dtype).contiguous(memory_format=torch.channels_last), False
        )
        layer.bias = nn.Parameter(bias.to(dtype), False)
        layer.groups = groups
        layer._refresh()

    w1, b1 = top.dense1.weight.detach().double()[:, :, 0, 0], top.dense1.bias.detach().double()
    set_layer(
        top.dense1,
        torch.cat([w1 * sign[:, k] for k in range(4)]),
        torch.cat([b1 + w1 @ shift[:, k] for k in range(4)]),
        4,
    )
    w2, b2 = top.dense2.weight.detach().double()[:, :, 0, 0], top.dense2.bias.detach().double()
    set_layer(top.dense2, w2.repeat(4, 1), b2.repeat(4), 4)
    wh, bh = head.weight.detach().double()[:, :, 0, 0], head.bias.detach().double()
    k_out, width = wh.shape
    block = torch.zeros(k_out, 4, 4, width, dtype=torch.float64)  # (o, k, k', c): output o * 4 + k reads block k
    for k in range(4):
        block[:, k, k] = wh
    set_layer(head, block.reshape(4 * k_out, 4 * width), bh.repeat_interleave(4), 1)
    return True


def _activation_peak(layer: nn.Module) -> float:
    """A rough top of a Conv -> ReLU -> BN layer's output range with the BN scale applied: ``max |s| (mean + 4
    std)`` over channels of the ReLU outputs' running statistics; 1 when the layer has no such BatchNorm."""
    adn = getattr(layer, "adn", None)
    children = list(adn.children()) if isinstance(adn, ADN) else []
    for relu, bn in zip(children[:-1], children[1:]):
        if _is_relu(relu) and _foldable_bn(bn):
            scale, _ = _bn_affine(bn)
            peak = scale.abs() * (bn.running_mean.double().clamp(min=0) + 4 * bn.running_var.double().sqrt())
            value = float(peak.max())
            return value if value > 0 and value < float("inf") else 1.0
    return 1.0


def _sequential(seq: nn.Sequential) -> nn.Sequential:
    """Convert the children, then fold each folded ReLU -> BN into the next layer where it is a plain conv."""
    _convert_children(seq)
    if type(seq).forward is not nn.Sequential.forward:  # a subclass with its own data flow
        return seq
    layers = list(seq)
    for producer, consumer in zip(layers[:-1], layers[1:]):
        fold_into_consumers(producer, [(consumer, 0)])
    return seq


def _convolution(block: Convolution) -> nn.Module:
    """MONAI ``Convolution`` (conv then an ADN block): fold when it is a plain 2D convolution."""
    conv = getattr(block, "conv", None)
    if not _plain_conv2d(conv):
        return _convert_children(block)
    adn = getattr(block, "adn", None)
    after = list(adn.children()) if isinstance(adn, ADN) else ([] if adn is None else [adn])
    extra = [m for name, m in block.named_children() if name not in ("conv", "adn")]
    if extra:  # an unusual layout: leave it alone
        return _convert_children(block)
    return FastConv2d.from_conv(conv, after)


def _conv2d(conv: nn.Conv2d) -> nn.Module:
    return FastConv2d.from_conv(conv) if _plain_conv2d(conv) else conv


_CONVERTERS: dict[type, Callable[[nn.Module], nn.Module]] = {
    ChannelDense: _dense,
    OneNetDownBlock: FastDownBlock,
    OneNetUpBlock: FastUpStage,
    OneNetEDDecoder: FastEDDecoder,
    nn.Sequential: _sequential,
    Convolution: _convolution,
    nn.Conv2d: _conv2d,
}


def register_inference_converter(module_type: type, converter: Callable[[nn.Module], nn.Module]) -> None:
    """Make :func:`optimize_for_inference` replace every ``module_type`` module by ``converter(module)``.

    ``converter`` receives the module (a copy, in eval mode; it may be changed or reused) and returns the
    module to use instead, with the same ``forward`` signature and result. Subclasses of ``module_type`` are
    converted too unless they have their own converter. Use it for blocks this module does not know
    (e.g. to convert their children: ``lambda m: optimize_children(m)``).
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    _CONVERTERS[module_type] = converter


def _converter_for(module: nn.Module) -> Callable[[nn.Module], nn.Module] | None:
    for klass in type(module).__mro__:
        if klass in _CONVERTERS:
            return _CONVERTERS[klass]
    return None


def _convert(module: nn.Module) -> nn.Module:
    converter = _converter_for(module)
    if converter is not None:
        return converter(module)
    return _convert_children(module)


def _convert_children(module: nn.Module) -> nn.Module:
    """Convert every child of ``module`` in place and return ``module``."""
    for name, child in list(module.named_children()):
        new = _convert(child)
        if new is not child:
            setattr(module, name, new)
    return module


def optimize_for_inference(model: nn.Module, portable: bool = False) -> nn.Module:
    """A new module computing the same logits as ``model`` in eval mode, faster (see the module docstring).

    Args:
        model: any network of :func:`onenet_med.networks.get_network` (or any ``nn.Module``; unknown blocks are
            kept as they are). Not modified: not even its train/eval mode changes.
        portable: the form to export to ONNX (and other runtimes): pixel shuffles in PyTorch's channel order, so
            that they export as ``DepthToSpace`` and each decoder stage as ``Conv -> DepthToSpace -> Concat ->
            Conv`` with nothing in between, instead of the grouped channel order whose copy is fastest on the CPU
            fast path (which exports as Reshape -> 6-D Transpose -> Reshape). Same logits either way.

    Returns:
        the optimised copy, in eval mode, parameters without gradients; TorchScript-scriptable and
        ONNX-exportable whenever ``model`` is. Its weights are not the training layout: load checkpoints
        into the plain network, then optimise.
    """
    if isinstance(model, torch.jit.ScriptModule):
        fast = copy.deepcopy(model)
        fast.eval()
        return fast
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    # the folds run on a float64 copy and round once at the end: a folded Conv -> ReLU -> BN bias is b * s + t,
    # and recovering b * s from its float32 rounding cancels (s ~ 316 cost a trained model 2e-3 on its logits)
    fast = copy.deepcopy(model).double()
    fast.eval()
    fast = _convert(fast)
    fast.eval()
    fast.requires_grad_(False)
    if isinstance(fast, OneNet):
        fast = _fold_across_blocks(fast)
    if portable:
        for module in fast.modules():
            if isinstance(module, FastEDDecoder):
                module.make_portable()
    for module in fast.modules():  # a note for the rewrites, not part of the model
        module.__dict__.pop("_shift_ratio", None)
    return fast.to(dtype)


def _fold_across_blocks(net: OneNet) -> OneNet:
    """Fold the clamps of the stem's last layer and of every encoder level into the layers that read them.

    That data flow (stem -> level 1 -> ... -> level L -> decoder, level i's output also the skip of a decoder
    stage) is ``OneNet.forward``'s, which a subclass or a later change may alter; so the folds are made on a
    copy, which is kept only if it computes what ``net`` computes on a random input.
    """
    trial = copy.deepcopy(net)
    stem = list(trial.stem) if isinstance(trial.stem, nn.Sequential) else []
    levels = list(trial.encoder)
    decoder = trial.decoder
    if not stem or not levels or not all(isinstance(level, FastDownBlock) for level in levels):
        return net
    if isinstance(decoder, FastEDDecoder):
        stages = [*decoder.stages, decoder.top]
        # OneNet(context=True): the context block reads the deepest level first, through a position-dependent
        # (zero-padded) mixing that an input affine cannot pass; so that level keeps its clamp
        direct = isinstance(getattr(trial, "context", None), (nn.Identity, type(None)))
        deepest = [(decoder.bottleneck, 0)] if direct else []
    else:  # the e-variant decoder reads the encoder through zero-padded 3x3 and transposed convolutions
        stages, deepest = [], []

    def reads(level: int) -> list[tuple[nn.Module, int]] | None:
        """The layers reading the output of encoder level ``level`` (-1: the stem), or None if one cannot fold."""
        consumers: list[tuple[nn.Module, int]] = []
        if level + 1 < len(levels):
            nxt = levels[level + 1]
            if not nxt.fused:
                return None
            consumers.append((nxt.reduce, 0))
        elif not deepest:
            return None
        else:
            consumers += deepest
        if 0 <= level < len(levels) - 1:  # a skip, read first in the concatenation of its decoder stage
            n = len(levels) - 1
            if not stages or not isinstance(stages[n - 1 - level].spatial, nn.Identity):
                return None
            consumers.append((stages[n - 1 - level].dense1, 0))
        return consumers

    changed = False
    for level, producer in [(-1, stem[-1])] + [(i, lv.refine) for i, lv in enumerate(levels)]:
        consumers = reads(level)
        if consumers is not None:
            changed |= fold_into_consumers(producer, consumers)
    if not changed:
        return net
    try:
        x = torch.randn(
            1, net.in_channels, 2 * net.multiple, 2 * net.multiple, generator=torch.Generator().manual_seed(0)
        )
        x = x.to(next(net.parameters()))  # its device and dtype
        with torch.no_grad():
            expected = net(x)
            got = trial(x)
        same = bool((got - expected).abs().max() <= 1e-4 * (1 + expected.abs().max()))
    except Exception:  # a changed forward that this check cannot run: keep the folds inside the blocks only
        same = False
    return trial if same else net


optimize_children = _convert_children


# ------------------------------------------------------------------------------------------ helpers


def _plain_conv2d(conv: object) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and tuple(conv.dilation) == (1, 1)
    )


def _is_relu(module: nn.Module) -> bool:
    return type(module) is nn.ReLU


def _foldable_bn(module: nn.Module) -> bool:
    """An eval-mode BatchNorm2d that uses running statistics (a per-channel affine)."""
    return type(module) is nn.BatchNorm2d and module.running_mean is not None and module.running_var is not None


def _shift_ratio(bn: nn.BatchNorm2d, shift: torch.Tensor) -> float:
    """``max |t| / (|beta| + |gamma|)`` over channels: how much larger the BN shift ``t`` is than its outputs.

    Moving ``t`` out of a Conv -> ReLU -> BN layer (:meth:`FastConv2d.release_output_affine`) leaves ``|s| * relu(z)``,
    about ``|t|`` in size, for the next layer to sum with ``W t`` in its bias, which cancels: ratios of 1-3 are
    usual; a channel of tiny running variance and positive mean (``s`` ~ 300) gives ~100, and its release cost a
    trained model 7e-4 on the logits (1e-5 with the clamp kept).
    """
    gamma = bn.weight.detach().double().abs() if bn.weight is not None else torch.ones_like(shift)
    beta = bn.bias.detach().double().abs() if bn.bias is not None else torch.zeros_like(shift)
    return float((shift.abs() / (gamma + beta).clamp(min=1e-12)).max()) if shift.numel() else 0.0


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` in float64 with ``bn(x) == x * scale + shift`` per channel in eval mode."""
    mean = bn.running_mean.detach().double()
    var = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale
