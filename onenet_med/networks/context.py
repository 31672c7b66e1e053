"""Image-wide context for OneNet's deepest level (``OneNet(..., context=True)``; beyond the paper).

Every layer of OneNet-ed -C is per pixel at its resolution, so an output pixel sees only its own
``2**levels x 2**levels`` input block. :class:`AxialContext` mixes the deepest feature map (``H/16 x W/16`` for 4
levels, where it is cheap) along whole columns, then whole rows, in the spirit of OneNet's 1D layers: per channel,
a full-length 1D convolution along H and one along W, whose kernels are indexed by the relative offset between
two positions. Applied one after the other they form a separable filter that spans the whole map, so every output
pixel of the network depends on every input pixel. The convolutions are zero-padded at the map's borders, which
also tells a pixel where it lies in the image (the halves and landmark tasks of ``scripts/position_task.py``): the
mixing of a constant map is a position-dependent profile, the sum of the taps that fall inside the map. The
deepest features come out of BatchNorm with zero mean per channel at initialisation, which hides that profile
until training moves the means; a learned per-channel offset (initialised to 1) added before the mixing shows it
from the start (on the halves task: 4 of 4 seeds solved in 300 steps with it, 1 of 4 without).

Any H x W works: the kernel of an axis of length ``n`` (``2n - 1`` taps, one per offset) is gathered from the taps
at run time, offsets beyond ``reach`` share the outermost tap, so nothing depends on a size fixed at construction.
It runs as two depthwise convolutions (:func:`axial_mix`, oneDNN, channels-last); under tracing and ONNX export
(neither ONNX exporter can export a kernel whose size depends on the input), as the same mixing written with
``(n, n)`` Toeplitz matrices (:func:`axial_mix_matmul`, about 5x slower on the CPU).
TorchScript (scripting) and both ONNX exporters work with dynamic height and width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN
from torch import nn

from onenet_med.networks.blocks import ADN_ORDERINGS, _check_positive

__all__ = ["AxialContext", "axial_mix", "axial_mix_matmul", "toeplitz"]


def _offset_index(reach: int, offsets: torch.Tensor) -> torch.Tensor:
    """Column of each offset in a ``(C, 2R + 1)`` tap table: ``R + clamp(offset, -R, R)``."""
    return offsets.clamp(-reach, reach) + reach


def toeplitz(taps: torch.Tensor, n: int) -> torch.Tensor:
    """Per-channel mixing matrices of an axis of length ``n`` from relative-offset taps.

    Args:
        taps: ``(C, 2R + 1)``; column ``R + d`` is the weight of offset ``d = i - j`` (output ``i``, input ``j``).
        n: the axis length (any ``n >= 1``).

    Returns:
        ``(C, n, n)`` with ``T[c, i, j] = taps[c, R + clamp(i - j, -R, R)]``: offsets beyond ``R`` share the
        outermost tap, so ``T`` couples every pair of positions for every ``n``.
    """
    position = torch.arange(n, device=taps.device)
    return taps[:, _offset_index((taps.shape[1] - 1) // 2, position.view(-1, 1) - position.view(1, -1))]


def axial_mix(x: torch.Tensor, taps_h: torch.Tensor, taps_w: torch.Tensor) -> torch.Tensor:
    """``T_W (T_H x)`` per channel (:func:`toeplitz`) as two zero-padded depthwise convolutions.

    The kernel of an axis of length ``n`` holds the taps of offsets ``n - 1`` down to ``-(n - 1)`` (a convolution
    reads its kernel reversed), so every output position sums the whole column (row).

    Shapes:
        ``x (B, C, H, W)``, taps ``(C, 2R + 1)`` -> ``(B, C, H, W)``, channels-last when ``x`` is.
    """
    c = x.shape[1]
    h = x.shape[2]
    w = x.shape[3]
    reach = (taps_h.shape[1] - 1) // 2
    rows = torch.arange(h - 1, -h, -1, device=x.device)
    cols = torch.arange(w - 1, -w, -1, device=x.device)
    kernel_h = taps_h[:, _offset_index(reach, rows)].view(c, 1, 2 * h - 1, 1)
    kernel_w = taps_w[:, _offset_index(reach, cols)].view(c, 1, 1, 2 * w - 1)
    y = F.conv2d(x, kernel_h, padding=[h - 1, 0], groups=c)
    return F.conv2d(y, kernel_w, padding=[0, w - 1], groups=c)


def axial_mix_matmul(x: torch.Tensor, taps_h: torch.Tensor, taps_w: torch.Tensor) -> torch.Tensor:
    """:func:`axial_mix` with the ``(C, n, n)`` Toeplitz matrices: static kernel shapes, for tracing exporters.

    Shapes:
        as :func:`axial_mix` (contiguous output).
    """
    y = torch.matmul(toeplitz(taps_h, x.shape[2]), x)  # (C, H, H) @ (B, C, H, W): along columns
    return torch.matmul(y, toeplitz(taps_w, x.shape[3]).transpose(1, 2))  # @ (C, W, W): along rows


def _exporting() -> bool:
    """True under tracing (the TorchScript-based ONNX exporter) and under either ONNX exporter (the dynamo one
    turns the input-sized kernel into a size guard it cannot express); False when scripted."""
    if torch.jit.is_scripting():
        return False
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


class AxialContext(nn.Module):
    """Residual image-wide mixing: ``x + adn(T_W (T_H (x + offset)) + bias)``, per channel.

    ``T_H`` mixes every column of each channel with a full-length 1D convolution (taps ``taps_h``, indexed by the
    row offset, zero beyond the map), ``T_W`` every row (``taps_w``); see :func:`toeplitz`. ``adn`` is the
    activation and normalisation of OneNet's channel-wise layers (ReLU -> BatchNorm in the authors' order);
    ``offset`` (per channel, initialised to 1) makes the zero padding beyond the map differ from the map, so that
    position shows from initialisation (module docstring). The channel mixing comes from the layers after the
    block (OneNet-ed's bottleneck, OneNet-e's decoder).

    Args:
        channels: C.
        reach: R, offsets with their own tap on each side (``2R + 1`` taps per axis); larger offsets share the
            outermost tap. 32 gives every offset its own tap up to a 33 x 33 map (528 x 528 pixels at OneNet's
            4th level, 1056 x 1056 at the 5th).
        act: activation (MONAI name or ``(name, kwargs)``); None for none.
        norm: normalisation (MONAI name or ``(name, kwargs)``); None for none.
        adn_ordering: "AN" (act -> norm, the authors' order) or "NA".

    Parameters: ``2 C (2R + 1)`` taps, ``C`` offset, ``C`` bias, and the normalisation's (``2 C`` for BatchNorm).

    Shapes:
        ``(B, C, H, W) -> (B, C, H, W)``, any H, W >= 1.
    """

    def __init__(
        self,
        channels: int,
        reach: int = 32,
        act: tuple | str | None = ("relu", {"inplace": True}),
        norm: tuple | str | None = "batch",
        adn_ordering: str = "AN",
    ) -> None:
        super().__init__()
        _check_positive("channels", channels)
        _check_positive("reach", reach)
        if adn_ordering not in ADN_ORDERINGS:
            raise ValueError(f"adn_ordering must be one of {ADN_ORDERINGS}, got {adn_ordering!r}.")
        self.channels = channels
        self.reach = reach
        bound = 1.0 / math.sqrt(2 * reach + 1)  # nn.Conv1d's default for fan_in = 2R + 1
        self.taps_h = nn.Parameter(torch.empty(channels, 2 * reach + 1).uniform_(-bound, bound))
        self.taps_w = nn.Parameter(torch.empty(channels, 2 * reach + 1).uniform_(-bound, bound))
        self.offset = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.adn = ADN(ordering=adn_ordering, in_channels=channels, act=act, norm=norm, norm_dim=2)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """``T_W (T_H x)``: every output position a weighted sum of the whole map, per channel (no offset, bias)."""
        if _exporting():  # ONNX exporters cannot export conv kernels whose size depends on the input
            return axial_mix_matmul(x, self.taps_h, self.taps_w)
        return axial_mix(x, self.taps_h, self.taps_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.adn(self.mix(x + self.offset.view(1, -1, 1, 1)) + self.bias.view(1, -1, 1, 1))
        return (x + y).contiguous(memory_format=torch.channels_last)
