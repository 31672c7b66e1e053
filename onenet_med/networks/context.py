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

Any H x W works: the ``(n, n)`` mixing matrix of an axis of length ``n`` is gathered from the taps at run time
(a Toeplitz matrix, one per channel), offsets beyond ``reach`` share the outermost tap, so nothing depends on a
size fixed at construction and TorchScript and ONNX export with dynamic height and width.
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import ADN
from torch import nn

from onenet_med.networks.blocks import ADN_ORDERINGS, _check_positive

__all__ = ["AxialContext", "toeplitz"]


def toeplitz(taps: torch.Tensor, n: int) -> torch.Tensor:
    """Per-channel mixing matrices of an axis of length ``n`` from relative-offset taps.

    Args:
        taps: ``(C, 2R + 1)``; column ``R + d`` is the weight of offset ``d = i - j`` (output ``i``, input ``j``).
        n: the axis length (any ``n >= 1``).

    Returns:
        ``(C, n, n)`` with ``T[c, i, j] = taps[c, R + clamp(i - j, -R, R)]``: offsets beyond ``R`` share the
        outermost tap, so ``T`` couples every pair of positions for every ``n``.
    """
    reach = (taps.shape[1] - 1) // 2
    position = torch.arange(n, device=taps.device)
    index = (position.view(-1, 1) - position.view(1, -1)).clamp(-reach, reach) + reach
    return taps[:, index]


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
        """``T_W (T_H x)``: every output position a weighted sum of the whole map, per channel (no bias)."""
        h = x.shape[2]
        w = x.shape[3]
        y = torch.matmul(toeplitz(self.taps_h, h), x)  # (C, H, H) @ (B, C, H, W): along columns
        return torch.matmul(y, toeplitz(self.taps_w, w).transpose(1, 2))  # (B, C, H, W) @ (C, W, W): along rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.adn(self.mix(x + self.offset.view(1, -1, 1, 1)) + self.bias.view(1, -1, 1, 1))
        return (x + y).contiguous(memory_format=torch.channels_last)
