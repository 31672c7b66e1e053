"""Tests of onenet_med.networks: shapes, exact parameter counts, equivalence of the fast channel-wise and spatial
layers with the paper's literal Conv1d forms, gradients, receptive field, TorchScript and ONNX export."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from parameterized import parameterized
from torch import nn

from onenet_med.networks import (
    ChannelDense,
    OneNet,
    OneNetDownBlock,
    OneNetUpBlock,
    SpatialConv1d,
    get_network,
    list_networks,
)
from onenet_med.networks.blocks import pixel_unshuffle_cl

ONENET_NAMES = [f"onenet_{v}{lv}{s}" for v in ("e", "ed") for lv in (4, 5) for s in ("", "_s")]
CONTEXT_NAMES = ["onenet_ed4_ctx", "onenet_ed5_ctx"]  # beyond the paper: tests/test_networks_context.py
BASELINE_NAMES = ["unet4", "unet5", "mobilenet_unet4", "resnet34_unet", "resnet50_unet", "basicunet"]
SMALL = {"features": 8}  # small widths keep the suite fast; structure is unchanged


def small_network(name: str, in_channels: int = 3, out_channels: int = 4, **kw) -> nn.Module:
    """The registry network with small widths where the constructor has ``features``."""
    overrides = dict(SMALL) if name.startswith(("onenet", "unet", "mobilenet")) else {}
    overrides.update(kw)
    return get_network(name, in_channels, out_channels, **overrides)


def literal_channel_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The paper's channel-wise 1D convolution: Conv1d(kernel = stride = C_in) over (B, 1, H*W*C_in)."""
    b, c, h, w = x.shape
    conv = nn.Conv1d(1, weight.shape[0], kernel_size=c, stride=c)
    with torch.no_grad():
        conv.weight.copy_(weight.view(weight.shape[0], 1, c))
        conv.bias.copy_(bias)
    y = conv(x.permute(0, 2, 3, 1).reshape(b, 1, h * w * c))  # (B, C_out, H*W)
    return y.view(b, -1, h, w)


def literal_spatial_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The paper's spatial layer: Conv1d(1, 1, k, reflection pad k // 2) over the flattened H*W*C sequence, ReLU."""
    b, c, h, w = x.shape
    k = weight.shape[-1]
    conv = nn.Conv1d(1, 1, k, padding=k // 2, padding_mode="reflect")
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    y = torch.relu(conv(x.permute(0, 2, 3, 1).reshape(b, 1, h * w * c)))
    return y.view(b, h, w, c).permute(0, 3, 1, 2)


def trained_like(net: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm running statistics and affine parameters far from their initial values (as after training): with
    the initial ones (mean 0, var 1, gamma 1, beta 0) BN is almost the identity and hides its position."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(c, generator=generator) - 0.5)
    return net


def literal_batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BatchNorm written out: (x - mean) / sqrt(var + eps) * gamma + beta."""
    shape = (1, -1, 1, 1)
    mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def literal_dense(x: torch.Tensor, layer: ChannelDense) -> torch.Tensor:
    """The authors' 1D layer: Conv1d(kernel = stride = C_in) over the channel-last sequence -> ReLU -> BatchNorm."""
    y = torch.relu(literal_channel_conv(x, layer.conv.weight, layer.conv.bias))
    return literal_batch_norm(y, layer.adn.N)


def literal_onenet(net: OneNet, x: torch.Tensor) -> torch.Tensor:
    """OneNet as the paper and the authors' code describe it, written plainly with the weights of ``net``.

    Zero padding at the bottom/right to a multiple of 2**levels; stem of 1D layers; encoder levels of
    nn.PixelUnshuffle(2) -> [reflection-padded spatial Conv1d + ReLU] -> two 1D layers; ed: bottleneck, stages of
    nn.PixelShuffle(2) -> concat [skip, upsampled] -> [spatial] -> two 1D layers, 1D head; e: stages of
    ConvTranspose2d -> concat [skip, upsampled] -> two 3x3 Conv -> BN -> ReLU (the top stage without BN/ReLU),
    3x3 head; crop back.
    """
    b, _, h, w = x.shape
    m = 2**net.levels
    x = F.pad(x, [0, (m - w % m) % m, 0, (m - h % m) % m])
    for layer in net.stem:
        x = literal_dense(x, layer)
    skips = []
    for level in net.encoder:
        x = nn.PixelUnshuffle(2)(x)
        if isinstance(level.spatial, SpatialConv1d):
            x = literal_spatial_conv(x, level.spatial.weight, level.spatial.bias)
        x = literal_dense(literal_dense(x, level.reduce), level.refine)
        skips.append(x)
    skips = skips[:-1][::-1]  # deepest first
    if net.variant == "ed":
        x = literal_dense(x, net.decoder.bottleneck)
        for i, stage in enumerate(net.decoder.stages):
            x = nn.PixelShuffle(2)(x)
            if i < len(skips):
                x = torch.cat([skips[i], x], dim=1)
            if isinstance(stage.spatial, SpatialConv1d):
                x = literal_spatial_conv(x, stage.spatial.weight, stage.spatial.bias)
            x = literal_dense(literal_dense(x, stage.dense1), stage.dense2)
        head = net.decoder.head
        x = literal_channel_conv(x, head.weight, head.bias)
    else:
        for i, stage in enumerate(net.decoder.stages):
            x = F.conv_transpose2d(x, stage.up.weight, stage.up.bias, stride=2)
            if i < len(skips):
                x = torch.cat([skips[i], x], dim=1)
            for block in stage.convs:
                x = F.conv2d(x, block.conv.weight, block.conv.bias, padding=1)
                if i < len(net.decoder.stages) - 1:
                    x = torch.relu(literal_batch_norm(x, block.adn.N))
        head = net.decoder.head.conv
        x = F.conv2d(x, head.weight, head.bias, padding=1)
    return x[:, :, :h, :w]


# ---------------------------------------------------------------- registry and arguments


def test_list_networks_names():
    expected = ["onenet_e4", "onenet_e4_s", "onenet_e5", "onenet_e5_s"]
    expected += ["onenet_ed4", "onenet_ed4_s", "onenet_ed5", "onenet_ed5_s"]
    expected += CONTEXT_NAMES + BASELINE_NAMES + ["segresnet", "plainconvunet"]
    assert list_networks() == expected


@parameterized.expand(
    [
        ("levels_0", lambda: get_network("onenet_ed4", 3, 4, levels=0), "levels"),
        ("spatial_dims_3", lambda: get_network("onenet_ed4", 3, 4, spatial_dims=3), "spatial_dims must be 2"),
        ("in_channels_0", lambda: get_network("onenet_e4", 0, 4), "in_channels"),
        ("out_channels_0", lambda: OneNet(2, 3, 0), "out_channels"),
        ("unknown_name", lambda: get_network("onenet_x9", 3, 4), "onenet_ed4"),
        ("variant", lambda: OneNet(2, 3, 4, variant="d"), "'ed'"),
        ("even_spatial_kernel", lambda: OneNet(2, 3, 4, spatial_kernel=8), "odd"),
        ("adn_ordering", lambda: OneNet(2, 3, 4, adn_ordering="NDA"), "'AN'"),
        ("stem_repeat_0", lambda: OneNet(2, 3, 4, stem_repeat=0), "stem_repeat"),
        ("unet_spatial_dims_3", lambda: get_network("unet4", 1, 2, spatial_dims=3), "spatial_dims must be 2"),
        ("unet_levels_0", lambda: get_network("unet4", 1, 2, levels=0), "levels"),
        ("resnet_in_channels_0", lambda: get_network("resnet34_unet", 0, 2), "in_channels"),
        ("basicunet_spatial_dims_3", lambda: get_network("basicunet", 1, 2, spatial_dims=3), "spatial_dims"),
    ]
)
def test_bad_arguments_raise_value_error(_, build, allowed):
    with pytest.raises(ValueError, match="must|choose") as err:
        build()
    assert allowed in str(err.value)


@parameterized.expand([("onenet_ed4",), ("onenet_e4_s",), ("unet4",), ("basicunet",), ("resnet34_unet",)])
def test_wrong_input_raises_clear_error(name):
    net = small_network(name, 3, 2).eval()
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        net(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) batch of 2D images.*slice by slice"):
        net(torch.randn(1, 3, 32, 32, 8))
    scripted = torch.jit.script(net)
    with pytest.raises(Exception, match="expected 3 input channels"):
        scripted(torch.randn(1, 1, 32, 32))


def test_unknown_name_lists_all_choices():
    with pytest.raises(ValueError) as err:
        get_network("nnunet", 1, 2)
    for name in list_networks():
        assert name in str(err.value)


# ---------------------------------------------------------------- parameter counts (no forward at full size)


@parameterized.expand(
    [
        ("onenet_e4_s", 16_355_948),
        ("onenet_e5_s", 65_658_486),
        ("onenet_ed4_s", 9_073_876),
        ("onenet_ed5_s", 36_367_592),
        ("onenet_e4", 16_355_908),
        ("onenet_e5", 65_658_436),
        ("onenet_ed4", 9_073_796),
        ("onenet_ed5", 36_367_492),
    ]
)
def test_onenet_parameter_count_exact(name, expected):
    with torch.device("meta"):
        net = get_network(name, 3, 4)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_unet4_parameter_count_matches_paper():
    with torch.device("meta"):
        net = get_network("unet4", 3, 4)
    assert abs(sum(p.numel() for p in net.parameters()) - 31.04e6) <= 0.005 * 31.04e6


def test_spatial_layers_hold_ten_parameters_each():
    with torch.device("meta"):
        s, c = get_network("onenet_ed4_s", 3, 4), get_network("onenet_ed4", 3, 4)
    spatial = [m for m in s.modules() if isinstance(m, SpatialConv1d)]
    assert len(spatial) == 8  # 4 encoder levels + 4 decoder stages
    assert all(sum(p.numel() for p in m.parameters()) == 10 for m in spatial)
    assert not [m for m in c.modules() if isinstance(m, SpatialConv1d)]


# ---------------------------------------------------------------- shapes


SHAPE_CASES = (
    [
        (name, 3, 4, (2, 250, 190))
        for name in ONENET_NAMES + CONTEXT_NAMES  # odd, non-multiple sizes
    ]
    + [
        ("onenet_ed5", 3, 2, (1, 240, 240)),  # 240 is not a multiple of 32
        ("onenet_e5_s", 3, 2, (1, 240, 240)),
        ("onenet_ed4", 4, 4, (2, 33, 17)),  # MSD Brain: 4 channels
        ("onenet_e4_s", 4, 4, (1, 16, 16)),
        ("onenet_ed4_s", 1, 2, (1, 7, 5)),  # smaller than one 16x16 block
        ("onenet_e4", 1, 2, (3, 64, 64)),
    ]
    + [(name, 4, 3, (2, 67, 45)) for name in BASELINE_NAMES]
)


@parameterized.expand(SHAPE_CASES)
def test_output_shape(name, in_channels, out_channels, bhw):
    b, h, w = bhw
    net = small_network(name, in_channels, out_channels).eval()
    with torch.no_grad():
        y = net(torch.randn(b, in_channels, h, w))
    assert y.shape == (b, out_channels, h, w)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert y.is_contiguous()


@parameterized.expand([(name,) for name in ("onenet_ed4", "onenet_ed4_s", "onenet_e4")])
def test_layers_run_on_channels_last_activations(name):
    """The network converts its input to channels-last once, so every 1D layer runs as a GEMM on
    channels-last memory, whatever the caller's memory format; the logits come back NCHW-contiguous."""
    net = small_network(name).eval()
    seen = []
    for module in net.modules():
        if isinstance(module, (ChannelDense, OneNetDownBlock, SpatialConv1d)):
            module.register_forward_pre_hook(
                lambda mod, args: seen.append(
                    (type(mod).__name__, args[0].is_contiguous(memory_format=torch.channels_last))
                )
            )
    x = torch.randn(2, 3, 40, 24)
    with torch.no_grad():
        a = net(x)
        b = net(x.contiguous(memory_format=torch.channels_last))
    assert seen and all(channels_last for _, channels_last in seen), [n for n, cl in seen if not cl]
    assert a.is_contiguous() and b.is_contiguous()
    torch.testing.assert_close(a, b)


@parameterized.expand([("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)])
def test_blocks_equal_literal_in_both_memory_formats(_, memory_format):
    """Each block on its own (no conversion by the network) gives the literal result for either memory format."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 10).contiguous(memory_format=memory_format)
    for spatial_kernel in (None, 9):
        block = trained_like(OneNetDownBlock(8, 16, spatial_kernel)).eval()
        u = nn.PixelUnshuffle(2)(x)
        if spatial_kernel:
            u = literal_spatial_conv(u, block.spatial.weight, block.spatial.bias)
        expected = literal_dense(literal_dense(u, block.reduce), block.refine)
        with torch.no_grad():
            torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)
    up = trained_like(OneNetUpBlock(32, 8, 12, spatial_kernel=9)).eval()
    low = torch.randn(2, 32, 6, 5).contiguous(memory_format=memory_format)
    cat = torch.cat([x, nn.PixelShuffle(2)(low)], dim=1)
    expected = literal_dense(
        literal_dense(literal_spatial_conv(cat, up.spatial.weight, up.spatial.bias), up.dense1), up.dense2
    )
    with torch.no_grad():
        torch.testing.assert_close(up(low, x), expected, rtol=1e-4, atol=1e-5)


def test_batch_items_are_independent_in_eval_mode():
    net = small_network("onenet_ed4_s").eval()
    x = torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        together = net(x)
        alone = torch.cat([net(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- equivalence with the paper's literal forms


@parameterized.expand([(3, 64, 1, 5, 7), (64, 32, 2, 8, 8), (12, 5, 2, 3, 11), (256, 128, 1, 4, 4)])
def test_channel_dense_equals_literal_conv1d(c_in, c_out, b, h, w):
    layer = ChannelDense(c_in, c_out, act=None, norm=None)
    x = torch.randn(b, c_in, h, w)
    expected = literal_channel_conv(x, layer.conv.weight, layer.conv.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-5)


@parameterized.expand(
    [
        # channels, kernel, batch, h, w: block sizes 8, 16, 4, 5, 12, literal fallback (C=3), k=1, k=17
        (64, 9, 2, 6, 5),
        (16, 9, 1, 3, 7),
        (4, 9, 2, 5, 4),
        (20, 9, 1, 4, 3),
        (36, 9, 2, 2, 3),
        (3, 9, 2, 4, 5),
        (8, 1, 1, 3, 3),
        (32, 17, 2, 4, 4),
        (256, 9, 1, 1, 1),
    ]
)
def test_spatial_layer_equals_literal_conv1d(channels, kernel, b, h, w):
    layer = SpatialConv1d(channels, kernel)
    with torch.no_grad():  # a bias of 0 keeps roughly half of the outputs above the ReLU
        layer.bias.zero_()
    x = torch.randn(b, channels, h, w)
    expected = literal_spatial_conv(x, layer.weight, layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-5)


def test_spatial_layer_gradients_equal_literal():
    layer = SpatialConv1d(24, 9)
    literal = nn.Conv1d(1, 1, 9, padding=4, padding_mode="reflect")
    with torch.no_grad():
        literal.weight.copy_(layer.weight)
        literal.bias.copy_(layer.bias)
    x = torch.randn(2, 24, 5, 6, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    g = torch.randn(2, 24, 5, 6)
    (layer(x) * g).sum().backward()
    y2 = torch.relu(literal(x2.permute(0, 2, 3, 1).reshape(2, 1, -1))).view(2, 5, 6, 24).permute(0, 3, 1, 2)
    (y2 * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, literal.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.bias.grad, literal.bias.grad, rtol=1e-4, atol=1e-4)


@parameterized.expand([("train",), ("eval",)])
def test_fused_unshuffle_block_equals_unshuffle_then_literal(mode):
    torch.manual_seed(1)
    block = OneNetDownBlock(8, 16, spatial_kernel=None)
    getattr(block, mode)()
    x = torch.randn(2, 8, 10, 6)
    y = block(x)
    # the paper's form: pixel-unshuffle, then Conv1d(kernel = stride = 4C) over the channel-last flattened tensor
    reduced = literal_channel_conv(F.pixel_unshuffle(x, 2), block.reduce.conv.weight, block.reduce.conv.bias)
    expected = block.refine(block.reduce.adn(reduced))
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)


def test_spatial_block_uses_authors_unshuffle_order():
    block = OneNetDownBlock(4, 8, spatial_kernel=9).eval()
    x = torch.randn(1, 4, 6, 4)
    u = F.pixel_unshuffle(x, 2)
    expected = literal_spatial_conv(u, block.spatial.weight, block.spatial.bias)
    torch.testing.assert_close(block.spatial(u.clone()), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(block(x), block.refine(block.reduce(expected)), rtol=1e-4, atol=1e-5)


@parameterized.expand([((1, 3, 4, 6),), ((2, 8, 10, 2),), ((1, 64, 16, 8),)])
def test_pixel_unshuffle_cl_equals_torch(shape):
    x = torch.randn(*shape)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        y = pixel_unshuffle_cl(x.contiguous(memory_format=memory_format))
        assert torch.equal(y, F.pixel_unshuffle(x, 2))
        assert y.is_contiguous(memory_format=torch.channels_last)


@parameterized.expand([("AN", ["A", "N"]), ("NA", ["N", "A"])])
def test_adn_ordering(ordering, names):
    layer = ChannelDense(4, 6, adn_ordering=ordering)
    assert [n for n, _ in layer.adn.named_children()] == names
    assert isinstance(layer.adn.N, nn.BatchNorm2d) and isinstance(layer.adn.A, nn.ReLU)


def test_authors_layer_order_and_heads():
    net = OneNet(2, 3, 4, variant="ed", features=8, spatial_kernel=9)
    # spatial layers: ReLU only, no norm (1-channel layers)
    assert all(isinstance(m.act, nn.ReLU) for m in net.modules() if isinstance(m, SpatialConv1d))
    # head: plain 1x1 conv; e-variant head: 3x3 conv, top stage without BN
    assert isinstance(net.decoder.head, nn.Conv2d) and net.decoder.head.kernel_size == (1, 1)
    e = OneNet(2, 3, 4, variant="e", features=8)
    assert e.decoder.head.conv.kernel_size == (3, 3)
    top = e.decoder.stages[-1]
    assert not [m for m in top.modules() if isinstance(m, (nn.BatchNorm2d, nn.ReLU))]
    assert [m for m in e.decoder.stages[0].modules() if isinstance(m, nn.BatchNorm2d)]


@parameterized.expand([(name, bhw) for name in ONENET_NAMES for bhw in ((2, 37, 50), (1, 64, 16))])
def test_whole_network_equals_literal_formulation(name, bhw):
    """The registry network with its defaults (only narrower) equals the paper's layers written plainly
    (``literal_onenet``) with the same weights, on sizes that need padding and on multiples."""
    torch.manual_seed(0)
    net = trained_like(get_network(name, 3, 4, features=8)).eval()
    b, h, w = bhw
    x = torch.randn(b, 3, h, w)
    with torch.no_grad():
        expected = literal_onenet(net, x)
        got = net(x)
    assert got.shape == expected.shape == (b, 4, h, w)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- gradients: no dead weights


@parameterized.expand([(name,) for name in ONENET_NAMES + CONTEXT_NAMES + ["unet4", "mobilenet_unet4"]])
def test_every_parameter_gets_a_gradient(name):
    net = small_network(name, 3, 4).train()
    x = torch.randn(2, 3, 48, 40)
    net(x).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


# ---------------------------------------------------------------- receptive field


def _input_gradient(net: nn.Module, x: torch.Tensor, row: int, col: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    net(x)[0, :, row, col].sum().backward()
    return x.grad[0].abs().sum(0)  # (H, W)


@parameterized.expand([("onenet_ed4",), ("onenet_ed5",)])
def test_ed_c_output_depends_only_on_its_own_block(name):
    net = small_network(name).eval()
    block = 2**net.levels
    x = torch.randn(1, 3, 2 * block, 3 * block)
    row, col = block + 5, block + 11  # inside block (1, 1)
    g = _input_gradient(net, x, row, col)
    inside = torch.zeros_like(g, dtype=torch.bool)
    inside[block : 2 * block, block : 2 * block] = True
    assert g[~inside].abs().max() == 0
    assert (g[inside] > 0).float().mean() > 0.9


def _positive_weights(net: nn.Module, seed: int) -> nn.Module:
    """Every weight positive, biases zero, BN the identity: with a positive input no ReLU is ever off, so the
    input gradient is non-zero exactly on the structural receptive field (for any seed)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:
                p.uniform_(0.1, 1.0)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.weight.fill_(1.0)
    return net


@parameterized.expand([(seed,) for seed in range(3)])
def test_ed_s_adds_horizontal_context_only(seed):
    net = _positive_weights(small_network("onenet_ed4_s"), seed).eval()
    x = torch.rand(1, 3, 48, 192) + 0.5  # 12 blocks per row: the probe's context never reaches a row end
    row, col = 16 + 7, 6 * 16 + 3  # inside block (1, 6)
    g = _input_gradient(net, x, row, col)
    rows = g.sum(1).nonzero().flatten()
    cols = g.sum(0).nonzero().flatten()
    assert rows.min() == 16 and rows.max() == 31  # all of the block's rows, no other row
    assert cols.min() < 6 * 16 and cols.max() >= 7 * 16  # context from the blocks on both sides
    assert cols.min() > 0 and cols.max() < 191  # ... but bounded (k = 9 taps per spatial layer)
    c_net = _positive_weights(small_network("onenet_ed4"), seed).eval()
    c_cols = _input_gradient(c_net, x, row, col).sum(0).nonzero().flatten()
    assert c_cols.min() == 6 * 16 and c_cols.max() == 7 * 16 - 1  # -C: exactly its own block


def test_e_variant_reaches_beyond_the_block():
    net = small_network("onenet_e4").eval()
    x = torch.randn(1, 3, 64, 64)
    g = _input_gradient(net, x, 20, 40)  # block rows 16..31, cols 32..47
    outside = torch.ones_like(g, dtype=torch.bool)
    outside[16:32, 32:48] = False
    assert g[outside].abs().max() > 0
    rows = g.sum(1).nonzero().flatten()
    assert rows.min() < 16 or rows.max() >= 32  # vertical context too (2D decoder)


# ---------------------------------------------------------------- TorchScript


@parameterized.expand([(name,) for name in ONENET_NAMES + CONTEXT_NAMES + BASELINE_NAMES])
def test_torchscript_round_trip(name):
    net = small_network(name, 3, 2).eval()
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(2, 3, 37, 50)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- ONNX


EXPORT_CHECK_SHAPES = [(1, 3, 50, 37), (3, 3, 80, 96), (1, 3, 13, 7)]  # sizes other than the export size


def _onnx_round_trip(
    net: nn.Module,
    tmp_path,
    dynamo: bool,
    shapes: list[tuple[int, ...]] = EXPORT_CHECK_SHAPES,
    reference: nn.Module | None = None,
    make_input: Callable[..., torch.Tensor] = torch.randn,
) -> str:
    """Export ``net`` to ONNX with dynamic batch/height/width and check ONNX Runtime's logits at ``shapes`` against
    ``reference`` (default: ``net`` itself) within 1e-4, with the same argmax when a reference is given.
    Returns the path of the ONNX file."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    path = str(tmp_path / "net.onnx")
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    with torch.no_grad():
        torch.onnx.export(
            net,
            (make_input(2, 3, 64, 48),),
            path,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes=axes,
            dynamo=dynamo,
        )
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in shapes:
        x = make_input(*shape)
        with torch.no_grad():
            expected = (net if reference is None else reference)(x)
        (out,) = session.run(None, {"image": x.numpy()})
        out = torch.from_numpy(out)
        assert out.shape == expected.shape
        assert (out - expected).abs().max() <= 1e-4
        if reference is not None:
            assert torch.equal(out.argmax(1), expected.argmax(1))
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["onenet_ed4_s", "onenet_e4_s", "onenet_ed5"])
def test_onnx_torchscript_exporter_dynamic_sizes(name, tmp_path):
    _onnx_round_trip(small_network(name).eval(), tmp_path, dynamo=False)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["onenet_ed4_s", "onenet_e4"])
def test_onnx_dynamo_exporter_dynamic_sizes(name, tmp_path):
    _onnx_round_trip(small_network(name).eval(), tmp_path, dynamo=True)


# ---------------------------------------------------------------- device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    net = small_network("onenet_ed4_s").eval()
    x = torch.randn(2, 3, 40, 30)
    with torch.no_grad():
        expected = net(x)
        got = net.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
