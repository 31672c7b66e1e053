"""Image-wide context blocks for the deepest level of OneNet (development: several candidates)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN
from torch import nn

from onenet_med.networks.blocks import ChannelDense


def toeplitz(taps: torch.Tensor, n: int) -> torch.Tensor:
    """``(C, 2R+1)`` relative-offset taps -> ``(C, n, n)`` matrices ``T[c, i, j] = taps[c, R + clamp(i - j)]``.

    Offsets beyond ``R`` share the outermost tap, so the reach covers the whole axis for every ``n``.
    """
    reach = (taps.shape[1] - 1) // 2
    r = torch.arange(n, device=taps.device)
    index = (r.view(-1, 1) - r.view(1, -1)).clamp(-reach, reach) + reach
    return taps[:, index]


def _adn(channels: int, act, norm, adn_ordering: str) -> nn.Module:
    return ADN(ordering=adn_ordering, in_channels=channels, act=act, norm=norm, norm_dim=2)


class AxialContext(nn.Module):
    """Per-channel full-length 1D convolutions along H then W (a separable image-wide filter per channel)."""

    def __init__(
        self, channels, reach=32, act=("relu", {"inplace": True}), norm="batch", adn_ordering="AN", dense=False
    ):
        super().__init__()
        bound = 1.0 / math.sqrt(2 * reach + 1)
        self.taps_h = nn.Parameter(torch.empty(channels, 2 * reach + 1).uniform_(-bound, bound))
        self.taps_w = nn.Parameter(torch.empty(channels, 2 * reach + 1).uniform_(-bound, bound))
        self.dense = dense
        if dense:
            self.mix = ChannelDense(channels, channels, act=act, norm=norm, adn_ordering=adn_ordering)
        else:
            self.bias = nn.Parameter(torch.zeros(channels))
            self.adn = _adn(channels, act, norm, adn_ordering)

    def forward(self, x):
        h = x.shape[2]
        w = x.shape[3]
        y = torch.matmul(toeplitz(self.taps_h, h), x)
        y = torch.matmul(y, toeplitz(self.taps_w, w).transpose(1, 2))
        if self.dense:
            y = self.mix(y.contiguous(memory_format=torch.channels_last))
        else:
            y = self.adn(y + self.bias.view(1, -1, 1, 1))
        return x + y


class PooledContext(nn.Module):
    """Global average (dense C -> C) plus normalised coordinates (2 -> C), added back."""

    def __init__(self, channels, act=("relu", {"inplace": True}), norm="batch", adn_ordering="AN"):
        super().__init__()
        self.pool_dense = nn.Linear(channels, channels)
        self.coord_dense = nn.Conv2d(2, channels, 1, bias=False)
        self.adn = _adn(channels, act, norm, adn_ordering)

    def forward(self, x):
        b = x.shape[0]
        h = x.shape[2]
        w = x.shape[3]
        g = self.pool_dense(x.mean(dim=(2, 3)))
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
        coords = torch.stack([ys.view(h, 1).expand(h, w), xs.view(1, w).expand(h, w)]).unsqueeze(0)
        y = self.coord_dense(coords) + g.view(b, -1, 1, 1)
        return x + self.adn(y)


class AxialAttention(nn.Module):
    """Axial self-attention along H then W, relative position bias, a null key; reduced width."""

    def __init__(
        self, channels, heads=4, reduction=8, reach=32, act=("relu", {"inplace": True}), norm="batch", adn_ordering="AN"
    ):
        super().__init__()
        d = max(heads, channels // reduction)
        d -= d % heads
        self.heads = heads
        self.d = d
        self.qkv = nn.Conv2d(channels, 3 * d, 1)
        self.bias_h = nn.Parameter(torch.zeros(heads, 2 * reach + 1))
        self.bias_w = nn.Parameter(torch.zeros(heads, 2 * reach + 1))
        self.null_k = nn.Parameter(torch.zeros(heads, d // heads))
        self.out = nn.Conv2d(d, channels, 1)
        self.adn = _adn(channels, act, norm, adn_ordering)

    def _attend(self, q, k, v, bias):
        # q, k, v: (N, heads, n, dh); bias (heads, n, n)
        n_ = q.shape[0]
        dh = q.shape[-1]
        nk = self.null_k.view(1, self.heads, 1, dh).expand(n_, self.heads, 1, dh)
        k = torch.cat([k, nk], dim=2)
        v = torch.cat([v, torch.zeros_like(nk)], dim=2)
        bias = F.pad(bias, [0, 1])
        att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh) + bias, dim=-1)
        return torch.matmul(att, v)

    def forward(self, x):
        b = x.shape[0]
        h = x.shape[2]
        w = x.shape[3]
        nh = self.heads
        dh = self.d // nh
        q, k, v = self.qkv(x).chunk(3, dim=1)  # (B, d, h, w)

        # along H: sequences are columns
        def cols(t):
            return t.reshape(b, nh, dh, h, w).permute(0, 4, 1, 3, 2).reshape(b * w, nh, h, dh)

        y = self._attend(cols(q), cols(k), cols(v), toeplitz(self.bias_h, h))
        y = y.reshape(b, w, nh, h, dh).permute(0, 3, 1, 2, 4)  # (B, h, w, nh, dh)
        v2 = y.reshape(b * h, w, nh, dh).transpose(1, 2)

        def rows(t):
            return t.reshape(b, nh, dh, h, w).permute(0, 3, 1, 4, 2).reshape(b * h, nh, w, dh)

        z = self._attend(rows(q), rows(k), v2, toeplitz(self.bias_w, w))  # (B*h, nh, w, dh)
        z = z.reshape(b, h, nh, w, dh).permute(0, 2, 4, 1, 3).reshape(b, self.d, h, w)
        return x + self.adn(self.out(z))


CONTEXT_KINDS = {
    "axial": lambda c, **kw: AxialContext(c, **kw),
    "axial_dense": lambda c, **kw: AxialContext(c, dense=True, **kw),
    "pool": lambda c, **kw: PooledContext(c, **kw),
    "attention": lambda c, **kw: AxialAttention(c, **kw),
}


def context_block(kind, channels, act, norm, adn_ordering):
    if kind is None:
        return nn.Identity()
    return CONTEXT_KINDS[kind](channels, act=act, norm=norm, adn_ordering=adn_ordering)
