"""Small fast peers of OneNet from the MONAI ecosystem, with the same interface as the networks here.

- :func:`segresnet`: MONAI ``SegResNet`` (Myronenko's encoder-decoder with residual blocks, GroupNorm, ReLU,
  bilinear upsampling) as a 2D network; ``init_filters`` is its width (MONAI's default 8: 0.40 M parameters for
  in 3 / out 4). The input is zero-padded to a multiple of ``2**(len(blocks_down) - 1)`` (8 by default) and the
  output cropped back, like the other baselines (:class:`onenet_med.networks.PaddedNet`).

nnU-Net's 2D ``PlainConvUNet`` (package ``dynamic-network-architectures``) is not offered: the package requires
``timm``, whose ``torchvision`` dependency replaces a CPU build of torch 2.13 with another torch (or, with torch
pinned, installs a ``torchvision`` that fails to import next to it).
"""

from __future__ import annotations

import math
from typing import Any

from monai.networks.nets import SegResNet

from onenet_med.networks.onenet import check_common_args
from onenet_med.networks.unet import PaddedNet

__all__ = ["segresnet"]


def segresnet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 2,
    init_filters: int = 8,
    blocks_down: tuple[int, ...] = (1, 2, 2, 4),
    blocks_up: tuple[int, ...] = (1, 1, 1),
    norm: tuple | str | None = None,
    **kwargs: Any,
) -> PaddedNet:
    """MONAI ``SegResNet`` in 2D for any H, W.

    Args:
        spatial_dims: must be 2.
        in_channels: input channels.
        out_channels: number of classes (logits).
        init_filters: width of the first stage (MONAI's default 8); stage i has ``init_filters * 2**i`` channels.
        blocks_down: residual blocks per encoder stage (MONAI's default).
        blocks_up: residual blocks per decoder stage (MONAI's default).
        norm: normalisation; default MONAI's GroupNorm with 8 groups, fewer (gcd(8, init_filters)) when
            ``init_filters`` is not a multiple of 8, where MONAI's default would fail.
        kwargs: further ``SegResNet`` arguments (``dropout_prob``, ``act``, ``upsample_mode``, ...).

    Returns:
        a :class:`PaddedNet` holding the ``SegResNet`` as ``.net``;
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` logits.

    Raises:
        ValueError: invalid arguments (the message says what is allowed).
    """
    check_common_args(spatial_dims, in_channels, out_channels, max(1, len(blocks_down)), init_filters)
    if len(blocks_up) != len(blocks_down) - 1:
        raise ValueError(
            f"blocks_up needs one entry per decoder stage (len(blocks_down) - 1 = {len(blocks_down) - 1}), "
            f"got {tuple(blocks_up)}."
        )
    if norm is None:
        norm = ("GROUP", {"num_groups": math.gcd(8, init_filters)})
    net = SegResNet(
        spatial_dims=2,
        init_filters=init_filters,
        in_channels=in_channels,
        out_channels=out_channels,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
        norm=norm,
        **kwargs,
    )
    return PaddedNet(net, 2 ** (len(blocks_down) - 1), in_channels)
