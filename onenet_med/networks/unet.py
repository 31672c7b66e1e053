"""Baselines of the paper's comparison, as 2D networks with the same interface as OneNet.

- :class:`UNet`: vanilla U-Net (Ronneberger): per level two 3x3 conv (no bias) + BN + ReLU, max-pool down,
  transposed-conv up, base width 64; 4 levels = 31,037,828 parameters for in 3 / out 4 (paper: 31.04 M).
  ``separable=True`` gives the MobileNet-style U-Net (depthwise 3x3 + pointwise 1x1 blocks, the paper's
  Fig. 3(b)); it has far fewer parameters than the paper's "MobileNet" row (14.40 M), which used an
  ImageNet MobileNet encoder.
- :class:`ResNetUNet`: MONAI ``FlexibleUNet`` with a ResNet34 / ResNet50 encoder, **from scratch**
  (``pretrained=False``). MONAI ships pretrained ResNet weights only for 3D single-channel inputs
  (MedicalNet); ImageNet weights (the paper's Table 1 ResNet rows) would have to be downloaded from torchvision
  and mapped onto the encoder, which this package does not do. The encoder uses projection ("B") shortcuts
  as in torchvision's ImageNet ResNets.
- :class:`PaddedNet` wraps MONAI ``BasicUNet`` (MONAI's default 2D U-Net) and ``FlexibleUNet`` so that any
  H, W works (pad to a multiple, crop back), like the networks defined here.

All take ``(B, in_channels, H, W)`` and return logits ``(B, out_channels, H, W)`` for any H, W.
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet, FlexibleUNet
from monai.networks.nets.resnet import ResNet, ResNetEncoder, get_inplanes, resnet_params
from torch import nn

from onenet_med.networks.blocks import UNetDownBlock, UNetUpBlock, check_input, conv_block_2d, pad_to_multiple
from onenet_med.networks.onenet import check_common_args

__all__ = ["UNet", "ResNetUNet", "PaddedNet", "basic_unet", "RESNET_BACKBONES"]

RESNET_BACKBONES = ("resnet34", "resnet50")


class UNet(nn.Module):
    """Vanilla 2D U-Net (or its depthwise-separable MobileNet-style version).

    Args:
        spatial_dims: must be 2.
        in_channels: input channels.
        out_channels: number of classes (logits).
        levels: number of max-pool downscalings (4 or 5 in the paper).
        features: width of the first level (64); level i has ``features * 2**i`` channels.
        act: activation (MONAI name or ``(name, kwargs)``).
        norm: normalisation (MONAI name or ``(name, kwargs)``).
        dropout: dropout probability in every conv block.
        separable: depthwise-separable conv blocks (MobileNet U-Net).

    Shapes:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``; H, W are zero-padded inside to a multiple of
        ``2**levels`` and the output cropped back.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        levels: int = 4,
        features: int = 64,
        act: tuple | str | None = ("relu", {"inplace": True}),
        norm: tuple | str | None = "batch",
        dropout: float = 0.0,
        separable: bool = False,
    ) -> None:
        super().__init__()
        check_common_args(spatial_dims, in_channels, out_channels, levels, features)
        self.in_channels = in_channels
        self.multiple = 2**levels
        widths = [features * 2**i for i in range(levels + 1)]
        kw = {"act": act, "norm": norm, "dropout": dropout, "bias": False, "separable": separable}
        first = {**kw, "separable": False} if separable else kw  # a depthwise conv on 1-3 input channels is pointless
        self.stem = nn.Sequential(
            conv_block_2d(in_channels, features, **first), conv_block_2d(features, features, **kw)
        )
        self.encoder = nn.ModuleList([UNetDownBlock(widths[i], widths[i + 1], **kw) for i in range(levels)])
        self.decoder = nn.ModuleList(
            [UNetUpBlock(widths[i + 1], widths[i], widths[i], **kw) for i in reversed(range(levels))]
        )
        self.head = nn.Conv2d(features, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels)
        h = x.shape[2]
        w = x.shape[3]
        x = pad_to_multiple(x, self.multiple).contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        skips: list[torch.Tensor] = [x]
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        n = len(skips)
        for i, stage in enumerate(self.decoder):
            x = stage(x, skips[n - 2 - i])
        return self.head(x)[:, :, :h, :w].contiguous()


class PaddedNet(nn.Module):
    """Run a network on inputs zero-padded to a multiple of ``multiple`` and crop its output back.

    Shapes:
        ``(B, C, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(self, net: nn.Module, multiple: int, in_channels: int) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels)
        h = x.shape[2]
        w = x.shape[3]
        x = pad_to_multiple(x, self.multiple).contiguous(memory_format=torch.channels_last)
        return self.net(x)[:, :, :h, :w].contiguous()


class _ResNetEncoderB(ResNetEncoder):
    """MONAI's ResNet encoder with torchvision's layout: projection (1x1 conv + BN, no bias) shortcuts.

    MONAI's ``resnet34`` encoder uses parameter-free "A" shortcuts (MedicalNet's choice), built from a
    ``functools.partial`` that TorchScript cannot compile; "B" shortcuts match the ImageNet ResNets.
    """

    def __init__(self, model_name: str, spatial_dims: int, in_channels: int) -> None:
        block, layers, _, _, _ = resnet_params[model_name]
        ResNet.__init__(
            self,
            block=block,
            layers=layers,
            block_inplanes=get_inplanes(),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            shortcut_type="B",
            feed_forward=False,
            bias_downsample=False,
        )


class ResNetUNet(PaddedNet):
    """MONAI ``FlexibleUNet`` with a ResNet34/ResNet50 encoder trained from scratch, for any H, W.

    Args:
        spatial_dims: must be 2.
        in_channels: input channels.
        out_channels: number of classes.
        backbone: "resnet34" or "resnet50".
        decoder_channels: FlexibleUNet's decoder widths.

    The network inside is ``self.net`` (a FlexibleUNet); inputs are padded to a multiple of 32.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        backbone: str = "resnet34",
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    ) -> None:
        check_common_args(spatial_dims, in_channels, out_channels, 5, 1)
        if backbone not in RESNET_BACKBONES:
            raise ValueError(f"backbone must be one of {RESNET_BACKBONES}, got {backbone!r}.")
        net = FlexibleUNet(
            in_channels, out_channels, backbone, pretrained=False, decoder_channels=decoder_channels, spatial_dims=2
        )
        net.encoder = _ResNetEncoderB(backbone, 2, in_channels)
        super().__init__(net, 32, in_channels)


def basic_unet(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> PaddedNet:
    """MONAI ``BasicUNet`` (its defaults: features (32, 32, 64, 128, 256, 32), instance norm, LeakyReLU), any H, W."""
    check_common_args(spatial_dims, in_channels, out_channels, 4, 1)
    return PaddedNet(
        BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, **kwargs), 16, in_channels
    )
