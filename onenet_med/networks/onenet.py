"""OneNet (Byun et al., 2024): a U-Net whose 2D convolutions are replaced by pixel-unshuffle + channel-wise layers.

Two variants (SPEC §2):

- ``"ed"`` (encoder and decoder replaced): 1D encoder, per-pixel bottleneck, pixel-shuffle 1D decoder.
  Every layer of the -C variant is per-pixel, so an output pixel depends only on its own
  ``2**levels x 2**levels`` input block (16 x 16 for 4 levels); the -S variant (``spatial_kernel=9``) adds
  horizontal context only. Fast and small; for local detail, not image-wide context.
- ``"e"`` (encoder replaced): 1D encoder + a standard 2D U-Net decoder (transposed conv, 3x3 convs), which
  gives the network its spatial context. Choose it for context-heavy tasks.

Layer table (in_channels 3, out_channels 4, features 64, levels 4, stem_repeat 3; widths w_i = 64 * 2**i):

- stem: dense 3 -> 64, then 2 x dense 64 -> 64
- encoder level i = 1..L: unshuffle (w_{i-1} -> 4 w_{i-1}) -> [spatial] -> dense 4 w_{i-1} -> w_i -> dense w_i -> w_i
- ed: bottleneck dense w_L -> 2 w_L; stage i = L..1: shuffle -> concat encoder level i-1 output (none at
  stage 1) -> [spatial] -> 2 x dense; head 1x1 conv 64 -> out_channels (no norm/act)
- e: stage i = L..1: ConvTranspose2d w_i -> w_{i-1}, concat encoder level i-1 output (none at stage 1),
  2 x (3x3 conv + BN + ReLU) (no BN/ReLU at stage 1); head 3x3 conv 64 -> out_channels

Every dense layer is Conv -> act -> norm (the authors' order, ``adn_ordering="AN"``) or Conv -> norm -> act
(``"NA"``). With the defaults the parameter counts are (in 3, out 4): onenet_e4 16,355,908, e5 65,658,436,
ed4 9,073,796, ed5 36,367,492; with ``spatial_kernel=9`` 10 more per spatial layer.
"""

from __future__ import annotations

import torch
from torch import nn

from onenet_med.networks.blocks import (
    ADN_ORDERINGS,
    ChannelDense,
    OneNetDownBlock,
    OneNetUpBlock,
    UNetUpBlock,
    check_input,
    conv_block_2d,
    pad_to_multiple,
)
from onenet_med.networks.context import AxialContext

__all__ = ["OneNet", "OneNetEDDecoder", "OneNetEDecoder", "VARIANTS", "check_common_args"]

VARIANTS = ("e", "ed")


def check_common_args(spatial_dims: int, in_channels: int, out_channels: int, levels: int, features: int) -> None:
    """Raise a ValueError that says what is allowed for the arguments every 2D network here shares."""
    if spatial_dims != 2:
        raise ValueError(
            f"spatial_dims must be 2 (these are 2D networks; run volumes slice by slice), got {spatial_dims!r}."
        )
    for name, value, low in (
        ("in_channels", in_channels, 1),
        ("out_channels", out_channels, 1),
        ("levels", levels, 1),
        ("features", features, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if levels > 6:
        raise ValueError(f"levels must be between 1 and 6 (the paper uses 4 and 5), got {levels}.")


class _SkipDecoder(nn.Module):
    """Runs ``self.stages`` (an ``nn.ModuleList`` set by the subclass) deepest first, each with its encoder skip
    (the top stages have none), then ``self.head``."""

    def decode(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        n = len(skips)
        for i, stage in enumerate(self.stages):
            if i < n:
                x = stage(x, skips[n - 1 - i])
            else:
                x = stage(x, None)
        return self.head(x)


class OneNetEDDecoder(_SkipDecoder):
    """OneNet-ed decoder: bottleneck dense -> pixel-shuffle stages -> 1x1 head.

    ``forward(x, skips)``: ``x`` the deepest encoder output ``(B, w_L, H/2^L, W/2^L)``; ``skips`` the outputs
    of encoder levels 1..L-1 (shallow first). Returns logits ``(B, out_channels, H, W)``.
    """

    def __init__(self, widths: list[int], out_channels: int, spatial_kernel: int | None, **kw) -> None:
        super().__init__()
        levels = len(widths) - 1
        self.bottleneck = ChannelDense(widths[levels], 2 * widths[levels], **kw)
        stages = []
        for i in reversed(range(levels)):  # stage i + 1 upsamples to the resolution of level i
            skip = widths[i] if i > 0 else 0
            out = 2 * widths[i] if i > 0 else widths[0]
            stages.append(OneNetUpBlock(2 * widths[i + 1], skip, out, spatial_kernel, **kw))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.decode(self.bottleneck(x), skips)


class OneNetEDecoder(_SkipDecoder):
    """OneNet-e decoder: the standard 2D U-Net decoder (transposed conv + two 3x3 conv blocks per stage).

    The top stage has no skip and no norm/act; the head is a 3x3 convolution. Same ``forward`` as
    :class:`OneNetEDDecoder`.
    """

    def __init__(
        self,
        widths: list[int],
        out_channels: int,
        act: tuple | str | None = ("relu", {"inplace": True}),
        norm: tuple | str | None = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        levels = len(widths) - 1
        stages = []
        for i in reversed(range(levels)):
            skip = widths[i] if i > 0 else 0
            stages.append(
                UNetUpBlock(widths[i + 1], skip, widths[i], act=act, norm=norm, dropout=dropout, conv_only=i == 0)
            )
        self.stages = nn.ModuleList(stages)
        self.head = conv_block_2d(widths[0], out_channels, conv_only=True)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.decode(x, skips)


class OneNet(nn.Module):
    """OneNet as a MONAI-style 2D segmentation network (raw logits out).

    Args:
        spatial_dims: must be 2.
        in_channels: input channels (e.g. 1 for CT/MRI, 4 for MSD Brain, 3 for RGB).
        out_channels: number of classes (logits).
        variant: "ed" (encoder and decoder replaced) or "e" (encoder replaced, 2D U-Net decoder).
        levels: number of pixel-unshuffle downscalings (the paper: 4 or 5).
        features: stem width (64 in the paper); level i has ``features * 2**i`` channels.
        spatial_kernel: k of the spatial layer before every channel-layer pair (the paper's -S variant: 9);
            None for the channel-only -C variant (the paper's Table 1 default).
        stem_repeat: number of per-pixel dense layers in the stem (3 reproduces the paper's Table 2).
        act: activation (MONAI name or ``(name, kwargs)``).
        norm: normalisation of every multi-channel layer (MONAI name or ``(name, kwargs)``); None for none.
        dropout: dropout probability after every channel-wise layer's act/norm (0 = none).
        adn_ordering: "AN" (Conv -> act -> norm, the authors' order) or "NA" (Conv -> norm -> act) for the
            channel-wise layers; the e-variant's 2D decoder always uses Conv -> norm -> act.

    Shapes:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` for any H, W >= 1: the input is zero-padded at the
        bottom/right to a multiple of ``2**levels`` and the output cropped back.

    Note:
        BatchNorm after ReLU on per-pixel layers makes eval-mode predictions sensitive to stale running
        statistics (SPEC §6a); refresh BN statistics on training data before validating, or use
        ``adn_ordering="NA"``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        variant: str = "ed",
        levels: int = 4,
        features: int = 64,
        spatial_kernel: int | None = None,
        stem_repeat: int = 3,
        act: tuple | str | None = ("relu", {"inplace": True}),
        norm: tuple | str | None = "batch",
        dropout: float = 0.0,
        adn_ordering: str = "AN",
        context: bool = False,
    ) -> None:
        super().__init__()
        check_common_args(spatial_dims, in_channels, out_channels, levels, features)
        if variant not in VARIANTS:
            raise ValueError(
                f"variant must be one of {VARIANTS} ('ed': encoder+decoder, 'e': encoder), got {variant!r}."
            )
        if spatial_kernel is not None and (
            not isinstance(spatial_kernel, int) or spatial_kernel < 1 or spatial_kernel % 2 == 0
        ):
            raise ValueError(
                f"spatial_kernel must be None (-C variant) or an odd integer >= 1 (9: -S), got {spatial_kernel!r}."
            )
        if not isinstance(stem_repeat, int) or stem_repeat < 1:
            raise ValueError(f"stem_repeat must be an integer >= 1, got {stem_repeat!r}.")
        if adn_ordering not in ADN_ORDERINGS:
            raise ValueError(f"adn_ordering must be one of {ADN_ORDERINGS}, got {adn_ordering!r}.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        if not isinstance(context, bool):
            raise ValueError(
                f"context must be True or False (image-wide context at the deepest level), got {context!r}."
            )

        self.variant = variant
        self.in_channels = in_channels
        self.levels = levels
        self.multiple = 2**levels
        kw = {"act": act, "norm": norm, "dropout": dropout, "adn_ordering": adn_ordering}
        widths = [features * 2**i for i in range(levels + 1)]
        self.stem = nn.Sequential(
            ChannelDense(in_channels, features, **kw),
            *[ChannelDense(features, features, **kw) for _ in range(stem_repeat - 1)],
        )
        self.encoder = nn.ModuleList(
            [OneNetDownBlock(widths[i], widths[i + 1], spatial_kernel, **kw) for i in range(levels)]
        )
        # image-wide mixing of the deepest level (beyond the paper); off: no module, no parameters
        self.context = (
            AxialContext(widths[levels], act=act, norm=norm, adn_ordering=adn_ordering) if context else nn.Identity()
        )
        if variant == "ed":
            self.decoder: nn.Module = OneNetEDDecoder(widths, out_channels, spatial_kernel, **kw)
        else:
            self.decoder = OneNetEDecoder(widths, out_channels, act=act, norm=norm, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels)
        h = x.shape[2]
        w = x.shape[3]
        x = pad_to_multiple(x, self.multiple).contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        skips: list[torch.Tensor] = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        skips.pop()  # the deepest output is the decoder's input, not a skip
        y = self.decoder(self.context(x), skips)
        return y[:, :, :h, :w].contiguous()
