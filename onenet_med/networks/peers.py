"""Small fast peers of OneNet from the MONAI ecosystem, with the same interface as the networks here.

- :func:`segresnet`: MONAI ``SegResNet`` (Myronenko's encoder-decoder with residual blocks, GroupNorm, ReLU,
  bilinear upsampling) as a 2D network; ``init_filters`` is its width (MONAI's default 8: 0.40 M parameters for
  in 3 / out 4). The input is zero-padded to a multiple of ``2**(len(blocks_down) - 1)`` (8 by default) and the
  output cropped back, like the other baselines (:class:`onenet_med.networks.PaddedNet`).

- :func:`plainconvunet`: nnU-Net's 2D ``PlainConvUNet`` (package ``dynamic-network-architectures``) with the
  settings nnU-Net's default 2D plans give a 256 x 256 task: 7 stages of two 3x3 convolutions (with bias), instance
  norm, LeakyReLU, widths 32 doubling up to 512, strided-convolution downsampling and transposed-convolution
  upsampling (33.5 M parameters for in 3 / out 4). The package is optional and must be installed with
  ``pip install --no-deps dynamic-network-architectures``: its ``timm`` dependency pulls a ``torchvision`` that
  replaces a CPU build of torch (or, with torch pinned, fails to import next to it); the network needs only torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import SegResNet
from torch import nn

from onenet_med.networks.blocks import check_input, pad_to_multiple
from onenet_med.networks.onenet import check_common_args
from onenet_med.networks.unet import PaddedNet

__all__ = ["plainconvunet", "segresnet"]

NNUNET_INSTALL = "pip install --no-deps dynamic-network-architectures"


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


class _PaddedPlainConvUNet(PaddedNet):
    """:class:`PaddedNet` that also pads to at least two blocks of ``multiple`` rows: the deepest map of nnU-Net's
    network must hold more than one pixel (its instance norm fails on a 1 x 1 map)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels)
        h = x.shape[2]
        w = x.shape[3]
        x = pad_to_multiple(x, self.multiple)
        x = F.pad(x, [0, 0, 0, max(0, 2 * self.multiple - x.shape[2])]).contiguous(memory_format=torch.channels_last)
        return self.net(x)[:, :, :h, :w].contiguous()


def plainconvunet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 2,
    features: int = 32,
    n_stages: int = 7,
    max_features: int | None = None,
    **kwargs: Any,
) -> PaddedNet:
    """nnU-Net's 2D ``PlainConvUNet`` as nnU-Net's default plans build it, for any H, W.

    Args:
        spatial_dims: must be 2.
        in_channels: input channels.
        out_channels: number of classes (logits; no deep supervision).
        features: width of the first stage (nnU-Net's 32); stage i has ``min(features * 2**i, max_features)``.
        n_stages: resolution stages (nnU-Net plans 7 for 256 x 256 in 2D: down to 4 x 4).
        max_features: widest stage; default ``16 * features`` (nnU-Net's 512 for 2D at width 32).
        kwargs: further ``PlainConvUNet`` arguments (``dropout_op``, ``nonlin_first``, ...).

    Returns:
        a :class:`PaddedNet` holding the ``PlainConvUNet`` as ``.net`` (zero padding to a multiple of
        ``2**(n_stages - 1)``, and to at least twice that many rows); ``(B, in_channels, H, W) -> (B, out_channels,
        H, W)`` logits.

    Raises:
        ImportError: the optional package is missing (the message gives the install command).
        ValueError: invalid arguments (the message says what is allowed).
    """
    check_common_args(spatial_dims, in_channels, out_channels, 1, features)
    if not isinstance(n_stages, int) or not 2 <= n_stages <= 8:
        raise ValueError(f"n_stages must be an integer between 2 and 8 (nnU-Net plans 7 for 2D), got {n_stages!r}.")
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
    except ImportError as error:
        raise ImportError(
            f"plainconvunet is nnU-Net's network from the optional package dynamic-network-architectures: "
            f"{NNUNET_INSTALL} (without --no-deps its timm dependency replaces the CPU build of torch)"
        ) from error
    widest = 16 * features if max_features is None else max_features
    settings: dict[str, Any] = {
        "conv_bias": True,
        "norm_op": nn.InstanceNorm2d,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
        **kwargs,
    }
    net = PlainConvUNet(
        input_channels=in_channels,
        n_stages=n_stages,
        features_per_stage=[min(features * 2**i, widest) for i in range(n_stages)],
        conv_op=nn.Conv2d,
        kernel_sizes=3,
        strides=[1] + [2] * (n_stages - 1),
        n_conv_per_stage=2,
        num_classes=out_channels,
        n_conv_per_stage_decoder=2,
        **settings,
    )
    return _PaddedPlainConvUNet(net, 2 ** (n_stages - 1), in_channels)
