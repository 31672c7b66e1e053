"""Networks: OneNet (e / ed, 4 / 5 levels, -C / -S), the U-Net baselines, and the name registry.

``get_network(name, in_channels, out_channels, **overrides)`` builds any of :func:`list_networks`:

======================  =============================================================================
name                    network
======================  =============================================================================
onenet_e4, onenet_e5    OneNet-e (1D encoder + 2D U-Net decoder), 4 / 5 levels, channel-only (-C)
onenet_ed4, onenet_ed5  OneNet-ed (1D encoder + pixel-shuffle 1D decoder), 4 / 5 levels, -C
``..._s``               the same with the k = 9 spatial layers (-S, the paper's Table 3)
onenet_ed4_ctx, ..5_ctx OneNet-ed -C with image-wide context at the deepest level (``context=True``; beyond
                        the paper): every output pixel sees the whole image
unet4, unet5            vanilla U-Net, 4 / 5 levels, base width 64
mobilenet_unet4         U-Net with depthwise-separable (MobileNet) blocks, 4 levels
resnet34_unet           MONAI FlexibleUNet, ResNet34 encoder, from scratch
resnet50_unet           MONAI FlexibleUNet, ResNet50 encoder, from scratch
basicunet               MONAI BasicUNet (its defaults)
segresnet               MONAI SegResNet in 2D (its defaults; ``init_filters`` = width, 8)
plainconvunet           nnU-Net's 2D PlainConvUNet as its default plans build it (``features`` = width, 32;
                        optional package: ``pip install --no-deps dynamic-network-architectures``)
======================  =============================================================================

``overrides`` are keyword arguments of the network's constructor (e.g. ``features=16`` for a small OneNet,
``init_filters=16`` for SegResNet).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from onenet_med.networks.blocks import ChannelDense, OneNetDownBlock, OneNetUpBlock, SpatialConv1d, UNetUpBlock
from onenet_med.networks.context import AxialContext
from onenet_med.networks.onenet import OneNet
from onenet_med.networks.optimize import optimize_for_inference, register_inference_converter
from onenet_med.networks.peers import plainconvunet, segresnet
from onenet_med.networks.unet import PaddedNet, ResNetUNet, UNet, basic_unet

__all__ = [
    "AxialContext",
    "ChannelDense",
    "OneNet",
    "OneNetDownBlock",
    "OneNetUpBlock",
    "PaddedNet",
    "ResNetUNet",
    "SpatialConv1d",
    "UNet",
    "UNetUpBlock",
    "basic_unet",
    "get_network",
    "list_networks",
    "optimize_for_inference",
    "register_inference_converter",
    "segresnet",
    "plainconvunet",
]

_REGISTRY: dict[str, tuple[Any, dict[str, Any]]] = {}
for _variant in ("e", "ed"):
    for _levels in (4, 5):
        _REGISTRY[f"onenet_{_variant}{_levels}"] = (OneNet, {"variant": _variant, "levels": _levels})
        _REGISTRY[f"onenet_{_variant}{_levels}_s"] = (
            OneNet,
            {"variant": _variant, "levels": _levels, "spatial_kernel": 9},
        )
for _levels in (4, 5):
    _REGISTRY[f"onenet_ed{_levels}_ctx"] = (OneNet, {"variant": "ed", "levels": _levels, "context": True})
_REGISTRY.update(
    {
        "unet4": (UNet, {"levels": 4}),
        "unet5": (UNet, {"levels": 5}),
        "mobilenet_unet4": (UNet, {"levels": 4, "separable": True}),
        "resnet34_unet": (ResNetUNet, {"backbone": "resnet34"}),
        "resnet50_unet": (ResNetUNet, {"backbone": "resnet50"}),
        "basicunet": (basic_unet, {}),
        "segresnet": (segresnet, {}),
        "plainconvunet": (plainconvunet, {}),
    }
)


def list_networks() -> list[str]:
    """Names accepted by :func:`get_network`."""
    return list(_REGISTRY)


def get_network(name: str, in_channels: int, out_channels: int, **overrides: Any) -> nn.Module:
    """Build the registered network ``name`` for ``in_channels`` inputs and ``out_channels`` classes.

    Args:
        name: one of :func:`list_networks`.
        in_channels: input channels.
        out_channels: number of classes (the network outputs logits).
        overrides: constructor keyword arguments replacing the registry's defaults.

    Raises:
        ValueError: unknown name or invalid arguments (the message says what is allowed).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown network {name!r}; choose one of: {', '.join(_REGISTRY)}.")
    factory, defaults = _REGISTRY[name]
    kwargs = {**defaults, **overrides}
    return factory(
        spatial_dims=kwargs.pop("spatial_dims", 2), in_channels=in_channels, out_channels=out_channels, **kwargs
    )
