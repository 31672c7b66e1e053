"""Building blocks of OneNet and of the U-Net baselines.

OneNet's "channel-wise 1D convolution" (the paper's Conv1d with kernel = stride = C_in over the tensor
flattened channel-last to ``(B, 1, H*W*C)``) is mathematically a per-pixel dense layer, so
:class:`ChannelDense` runs it as a 1x1 convolution on channels-last activations (one GEMM, no reshapes).
The "spatial" layer (a Conv1d(1, 1, k) over the same flattened sequence) is run by
:class:`SpatialConv1d` as a small block-Toeplitz convolution, about 25x faster on one CPU thread than the
literal ``nn.Conv1d`` (4.8 ms instead of 129 ms on a 64x256x256 input). ``tests/test_networks.py`` proves
both equal the literal forms numerically.

All blocks take and return channel-first ``(B, C, H, W)`` tensors; they are fastest when the input is in
``torch.channels_last`` memory format (the networks convert their input once).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN, Convolution
from monai.networks.layers.utils import get_act_layer
from torch import nn

__all__ = [
    "ADN_ORDERINGS",
    "ChannelDense",
    "SpatialConv1d",
    "OneNetDownBlock",
    "OneNetUpBlock",
    "UNetDownBlock",
    "UNetUpBlock",
    "conv_block_2d",
    "check_input",
    "pad_to_multiple",
    "pixel_unshuffle_cl",
]

#: orderings of activation (A) and normalisation (N) after each channel-wise layer: the authors' code uses
#: Conv -> ReLU -> BN ("AN"); "NA" (Conv -> BN -> ReLU) is the usual CNN ordering.
ADN_ORDERINGS = ("AN", "NA")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_input(x: torch.Tensor, in_channels: int) -> None:
    """Raise a ValueError unless ``x`` is a ``(B, in_channels, H, W)`` batch of 2D images."""
    if x.dim() != 4:
        raise ValueError(
            f"expected a (B, C, H, W) batch of 2D images, got a tensor of shape {list(x.shape)}; "
            "run volumes slice by slice"
        )
    if not torch.jit.is_tracing() and x.shape[1] != in_channels:  # traced sizes are tensors: no check there
        raise ValueError(f"expected {in_channels} input channels, got {x.shape[1]} (input shape {list(x.shape)})")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom and right of a ``(B, C, H, W)`` tensor so that H and W are multiples of ``multiple``.

    Always pads (possibly by zero rows), never branches on the size, so that TorchScript and ONNX export
    with dynamic height/width give one graph for every size. Crop back with ``y[:, :, :H, :W]``.
    """
    h = x.shape[2]
    w = x.shape[3]
    return F.pad(
        x, [0, (w + multiple - 1) // multiple * multiple - w, 0, (h + multiple - 1) // multiple * multiple - h]
    )


def pixel_unshuffle_cl(x: torch.Tensor) -> torch.Tensor:
    """``F.pixel_unshuffle(x, 2)`` (channel ``c * 4 + dy * 2 + dx``), about 2x faster for channels-last input.

    Two cache-friendly copies instead of one strided gather: first the 2x2 sub-pixels of each output pixel
    are brought together (whole C-channel runs), then each pixel's ``(4, C)`` block is transposed. Returns a
    channels-last ``(B, 4C, H/2, W/2)`` tensor.
    """
    b, c, h, w = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).contiguous()
    x = x.view(b, h // 2, w // 2, 4, c).transpose(3, 4).contiguous()
    return x.view(b, h // 2, w // 2, 4 * c).permute(0, 3, 1, 2)


class ChannelDense(nn.Module):
    """OneNet's channel-wise 1D convolution: a per-pixel dense layer C_in -> C_out, then activation/norm.

    Equals ``nn.Conv1d(1, C_out, kernel_size=C_in, stride=C_in)`` applied to the input flattened
    channel-last to ``(B, 1, H*W*C_in)`` (weight ``(C_out, 1, C_in)`` = this layer's ``(C_out, C_in, 1, 1)``).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        act: activation (MONAI name or ``(name, kwargs)``); None for none.
        norm: normalisation (MONAI name or ``(name, kwargs)``); None for none.
        dropout: dropout probability after the activation/normalisation (0 = none).
        adn_ordering: "AN" (Conv -> act -> norm, the authors' order) or "NA" (Conv -> norm -> act).

    Shapes:
        ``(B, C_in, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        act: tuple | str | None = ("relu", {"inplace": True}),
        norm: tuple | str | None = "batch",
        dropout: float = 0.0,
        adn_ordering: str = "AN",
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        if adn_ordering not in ADN_ORDERINGS:
            raise ValueError(f"adn_ordering must be one of {ADN_ORDERINGS}, got {adn_ordering!r}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)
        ordering = adn_ordering + ("D" if dropout else "")
        self.adn = ADN(
            ordering=ordering,
            in_channels=out_channels,
            act=act,
            norm=norm,
            norm_dim=2,
            dropout=dropout if dropout else None,
            dropout_dim=1,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adn(self.conv(x))


def _block_size(channels: int, halo: int) -> int:
    """Block length of the fast spatial convolution: a divisor of ``channels`` >= ``halo`` (8 preferred); 0 if none."""
    divisors = [d for d in range(max(halo, 1), min(channels, 64) + 1) if channels % d == 0]
    if not divisors:
        return 0
    return min(divisors, key=lambda d: (d < 8, d if d >= 8 else -d))


class SpatialConv1d(nn.Module):
    """OneNet's "spatial" layer: ``Conv1d(1, 1, k, reflection pad k // 2)`` over the channel-last flattened sequence.

    The input ``(B, C, H, W)`` is read as B sequences of length ``N = H*W*C`` in which channels vary fastest
    (then W, then H); the layer convolves each sequence with one k-tap kernel (k + 1 parameters with the
    bias), reflection-padded at both ends of the sequence, and applies the activation. Context therefore
    crosses pixel borders horizontally only (and wraps from the end of one image row to the start of the next).

    Fast path: the sequence is cut into blocks of P values (P divides C), and the 1-channel k-tap
    convolution over N values becomes a P -> P channel convolution with 3 taps over N / P block positions
    (a block-Toeplitz weight built from the k taps), which oneDNN runs at GEMM speed on the channels-last
    memory without copying it. The ``k // 2`` outputs at each end of each sequence are then recomputed with
    the reflected padding. Layers whose channel count has no usable divisor fall back to the literal conv1d.

    Args:
        channels: C, the channel count of the input (fixes the block size).
        kernel_size: k, odd.
        act: activation after the convolution (the authors: ReLU); None for none. No normalisation: the
            authors' code has no BatchNorm on 1-channel layers.

    Shapes:
        ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, kernel_size: int = 9, act: tuple | str | None = ("relu", {"inplace": True})):
        super().__init__()
        _check_positive("channels", channels)
        _check_positive("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"spatial kernel_size must be odd (same-length output), got {kernel_size}.")
        self.channels = channels
        self.kernel_size = kernel_size
        self.halo = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(1, 1, kernel_size))
        self.bias = nn.Parameter(torch.empty(1))
        bound = 1.0 / math.sqrt(kernel_size)  # nn.Conv1d's default initialisation for fan_in = k
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        self.block = _block_size(channels, self.halo) if self.halo > 0 else 0
        p = self.block
        if p > 0:
            # index[o, i, 0, j] = tap of the k-kernel linking block input i at block offset j - 1 to output o
            o = torch.arange(p).view(p, 1, 1, 1)
            i = torch.arange(p).view(1, p, 1, 1)
            j = torch.arange(3).view(1, 1, 1, 3)
            tap = (j - 1) * p + i - o + self.halo
            index = torch.where((tap >= 0) & (tap < kernel_size), tap, torch.full_like(tap, kernel_size))
        else:
            index = torch.zeros(0, dtype=torch.long)
        self.register_buffer("index", index, persistent=False)
        self.act = get_act_layer(act) if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w * c
        seq = x.permute(0, 2, 3, 1).reshape(b, 1, n)  # a view for channels-last input
        p = self.block
        r = self.halo
        if p > 0:
            taps = torch.cat([self.weight.reshape(-1), self.weight.new_zeros(1)])
            blocks = seq.view(b, 1, n // p, p).permute(0, 3, 1, 2)  # (B, P, 1, N/P), channels-last, no copy
            y = F.conv2d(blocks, taps[self.index], self.bias.expand(p).contiguous(), padding=(0, 1))
            y = y.permute(0, 2, 3, 1).reshape(b, 1, n)
            # the block convolution zero-pads the sequence ends; redo the first and last r outputs with reflection
            head = F.conv1d(F.pad(seq.narrow(2, 0, 2 * r), [r, 0], mode="reflect"), self.weight, self.bias)
            tail = F.conv1d(F.pad(seq.narrow(2, n - 2 * r, 2 * r), [0, r], mode="reflect"), self.weight, self.bias)
            if torch.jit.is_tracing():  # the TorchScript-based ONNX exporter drops in-place writes to views
                y = torch.cat([head, y.narrow(2, r, n - 2 * r), tail], dim=2)
            else:
                y.narrow(2, 0, r).copy_(head)
                y.narrow(2, n - r, r).copy_(tail)
        else:
            y = F.conv1d(F.pad(seq, [r, r], mode="reflect") if r > 0 else seq, self.weight, self.bias)
        return self.act(y.reshape(b, h, w, c).permute(0, 3, 1, 2))


class OneNetDownBlock(nn.Module):
    """OneNet encoder level: PixelUnshuffle(2) -> [spatial layer] -> dense 4C -> C_out -> dense C_out -> C_out.

    Without the spatial layer (-C variant), unshuffle and the first dense layer are fused into one 2x2,
    stride-2 convolution whose weight is the dense layer's ``(C_out, 4C, 1, 1)`` weight viewed as
    ``(C_out, C, 2, 2)`` (PixelUnshuffle orders channels as ``c * 4 + dy * 2 + dx``, the same order), so the
    unshuffled tensor is never materialised. Both paths use the same parameters.

    Shapes:
        ``(B, C, H, W) -> (B, C_out, H / 2, W / 2)`` (H, W even).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_kernel: int | None = None,
        act: tuple | str | None = ("relu", {"inplace": True}),
        norm: tuple | str | None = "batch",
        dropout: float = 0.0,
        adn_ordering: str = "AN",
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        kw = {"act": act, "norm": norm, "dropout": dropout, "adn_ordering": adn_ordering}
        self.fused = spatial_kernel is None
        self.spatial = nn.Identity() if spatial_kernel is None else SpatialConv1d(4 * in_channels, spatial_kernel, act)
        self.reduce = ChannelDense(4 * in_channels, out_channels, **kw)
        self.refine = ChannelDense(out_channels, out_channels, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            weight = self.reduce.conv.weight
            weight = weight.view(weight.shape[0], weight.shape[1] // 4, 2, 2)
            x = self.reduce.adn(F.conv2d(x, weight, self.reduce.conv.bias, stride=2))
        else:
            x = self.reduce(self.spatial(pixel_unshuffle_cl(x)))
        return self.refine(x)


class OneNetUpBlock(nn.Module):
    """OneNet-ed decoder stage: PixelShuffle(2) -> concat skip -> [spatial layer] -> dense x2.

    Args:
        in_channels: channels before the shuffle (a multiple of 4).
        skip_channels: channels of the encoder skip concatenated after the shuffle (0 at the top stage).
        out_channels: channels of both dense layers.
        spatial_kernel: k of the spatial layer, or None (-C variant).

    Shapes:
        ``(B, C_in, h, w), skip (B, C_skip, 2h, 2w) -> (B, C_out, 2h, 2w)``; concatenation order is
        ``[skip, upsampled]``.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        spatial_kernel: int | None = None,
        act: tuple | str | None = ("relu", {"inplace": True}),
        norm: tuple | str | None = "batch",
        dropout: float = 0.0,
        adn_ordering: str = "AN",
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        if in_channels % 4:
            raise ValueError(f"PixelShuffle(2) needs in_channels divisible by 4, got {in_channels}.")
        kw = {"act": act, "norm": norm, "dropout": dropout, "adn_ordering": adn_ordering}
        cat_channels = in_channels // 4 + skip_channels
        self.spatial = nn.Identity() if spatial_kernel is None else SpatialConv1d(cat_channels, spatial_kernel, act)
        self.dense1 = ChannelDense(cat_channels, out_channels, **kw)
        self.dense2 = ChannelDense(out_channels, out_channels, **kw)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.pixel_shuffle(x, 2)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.dense2(self.dense1(self.spatial(x)))


def conv_block_2d(
    in_channels: int,
    out_channels: int,
    act: tuple | str | None = ("relu", {"inplace": True}),
    norm: tuple | str | None = "batch",
    dropout: float = 0.0,
    bias: bool = True,
    separable: bool = False,
    conv_only: bool = False,
) -> nn.Module:
    """A 3x3 convolution then norm -> dropout -> activation (MONAI ``Convolution``, "NDA" ordering).

    ``separable=True`` gives the MobileNet block (the paper's Fig. 3(b)): depthwise 3x3 -> norm -> act,
    then pointwise 1x1 -> norm -> act. ``conv_only=True`` drops norm/act/dropout.
    """
    kw = {"act": act, "norm": norm, "dropout": dropout if dropout else None, "bias": bias, "conv_only": conv_only}
    if not separable:
        return Convolution(2, in_channels, out_channels, kernel_size=3, **kw)
    return nn.Sequential(
        Convolution(2, in_channels, in_channels, kernel_size=3, groups=in_channels, **kw),
        Convolution(2, in_channels, out_channels, kernel_size=1, **kw),
    )


class UNetDownBlock(nn.Module):
    """U-Net encoder level: MaxPool(2) -> two 3x3 conv blocks. ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        act: tuple | str | None = ("relu", {"inplace": True}),
        norm: tuple | str | None = "batch",
        dropout: float = 0.0,
        bias: bool = False,
        separable: bool = False,
    ) -> None:
        super().__init__()
        kw = {"act": act, "norm": norm, "dropout": dropout, "bias": bias, "separable": separable}
        self.pool = nn.MaxPool2d(2)
        self.convs = nn.Sequential(
            conv_block_2d(in_channels, out_channels, **kw), conv_block_2d(out_channels, out_channels, **kw)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(self.pool(x))


class UNetUpBlock(nn.Module):
    """U-Net decoder stage: ConvTranspose2d(2, stride 2) C_in -> C_out -> concat skip -> two 3x3 conv blocks.

    Args:
        in_channels: C_in.
        skip_channels: channels of the skip (0: no skip, as in OneNet-e's top stage).
        out_channels: C_out.
        conv_only: no norm/act in the two conv blocks (OneNet-e's top stage, which "avoids zero-centering the
            prediction head").

    Shapes:
        ``(B, C_in, h, w), skip (B, C_skip, 2h, 2w) -> (B, C_out, 2h, 2w)``; concatenation order ``[skip, up]``.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        act: tuple | str | None = ("relu", {"inplace": True}),
        norm: tuple | str | None = "batch",
        dropout: float = 0.0,
        bias: bool = True,
        separable: bool = False,
        conv_only: bool = False,
    ) -> None:
        super().__init__()
        kw = {"act": act, "norm": norm, "dropout": dropout, "bias": bias, "separable": separable}
        kw["conv_only"] = conv_only
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.convs = nn.Sequential(
            conv_block_2d(out_channels + skip_channels, out_channels, **kw),
            conv_block_2d(out_channels, out_channels, **kw),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.convs(x)
