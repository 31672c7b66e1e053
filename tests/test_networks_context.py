"""Tests of onenet_med.networks.context and OneNet's ``context`` option: the axial context block against reference
formulations, parameter counts by hand, shapes for any H x W, the measured receptive field (the whole image), the
paper networks unchanged with context off, TorchScript and ONNX export with dynamic H/W, and (slow) the
position-dependent task that onenet_ed4 cannot solve and onenet_ed4_ctx can."""

from __future__ import annotations

import importlib.util
import io
import os

import pytest
import torch
import torch.nn.functional as F
from parameterized import parameterized

from onenet_med.networks import AxialContext, OneNet, get_network
from onenet_med.networks.context import axial_mix, axial_mix_matmul, toeplitz
from onenet_med.profiling import count_parameters, receptive_field
from tests.test_networks import EXPORT_CHECK_SHAPES, _onnx_round_trip

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _position_task():
    path = os.path.join(REPO_ROOT, "scripts", "position_task.py")
    spec = importlib.util.spec_from_file_location("position_task", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def axial_reference(x: torch.Tensor, taps_h: torch.Tensor, taps_w: torch.Tensor) -> torch.Tensor:
    """The block's mixing written as two sums over positions: y[i, k] = sum_j,l th[i - j] tw[k - l] x[j, l], where
    an offset beyond the taps' reach R takes the outermost tap (th[d] = taps_h[R + clamp(d, -R, R)])."""
    reach = (taps_h.shape[1] - 1) // 2
    b, c, h, w = x.shape

    def tap(taps: torch.Tensor, d: int) -> torch.Tensor:
        return taps[:, reach + max(-reach, min(reach, d))].view(1, c, 1)

    rows = torch.zeros_like(x)
    for i in range(h):
        for j in range(h):
            rows[:, :, i, :] += tap(taps_h, i - j) * x[:, :, j, :]
    out = torch.zeros_like(x)
    for k in range(w):
        for m in range(w):
            out[:, :, :, k] += tap(taps_w, k - m) * rows[:, :, :, m]
    return out


# ---------------------------------------------------------------- the block


MIX_CASES = [
    # channels, reach, batch, h, w: reach covering the axes, reach shorter than the axes (outer taps shared),
    # a single row / column, a 1 x 1 map, a non-square map
    (6, 8, 2, 5, 7),
    (4, 2, 1, 9, 6),
    (3, 4, 2, 1, 11),
    (5, 1, 1, 6, 1),
    (2, 3, 1, 1, 1),
]


@parameterized.expand(
    [(f"{fn.__name__}_{i}", fn, *case) for fn in (axial_mix, axial_mix_matmul) for i, case in enumerate(MIX_CASES)]
)
def test_axial_mixing_equals_reference_sums(_, mix, channels, reach, b, h, w):
    block = AxialContext(channels, reach=reach)
    x = torch.randn(b, channels, h, w)
    expected = axial_reference(x, block.taps_h, block.taps_w)
    torch.testing.assert_close(mix(x, block.taps_h, block.taps_w), expected, rtol=1e-4, atol=1e-5)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(mix(x_cl, block.taps_h, block.taps_w), expected, rtol=1e-4, atol=1e-5)


def test_block_uses_the_matmul_form_under_tracing():
    block = AxialContext(3, reach=2).eval()
    traced = torch.jit.trace(block, torch.randn(1, 3, 4, 5))
    graph = str(traced.inlined_graph)
    assert "aten::_convolution" not in graph and "aten::matmul" in graph
    x = torch.randn(2, 3, 7, 6)  # another size than the trace's
    with torch.no_grad():
        torch.testing.assert_close(traced(x), block(x), rtol=1e-4, atol=1e-5)


@parameterized.expand([(3, 4, 5), (2, 8, 8), (4, 3, 1)])
def test_axial_mixing_equals_depthwise_convolutions_when_reach_covers_the_map(channels, h, w):
    # with reach >= size - 1 nothing is clamped: the mixing is a zero-padded depthwise convolution along H, then W
    reach = max(h, w)
    block = AxialContext(channels, reach=reach)
    x = torch.randn(2, channels, h, w)
    k = 2 * reach + 1
    kernel_h = block.taps_h.flip(1).view(channels, 1, k, 1)  # convolution (cross-correlation) reads taps reversed
    kernel_w = block.taps_w.flip(1).view(channels, 1, 1, k)
    expected = F.conv2d(
        F.conv2d(x, kernel_h, padding=(reach, 0), groups=channels), kernel_w, padding=(0, reach), groups=channels
    )
    torch.testing.assert_close(block.mix(x), expected, rtol=1e-4, atol=1e-5)


def test_toeplitz_layout():
    taps = torch.arange(5.0).view(1, 5)  # reach 2: offsets -2..2 -> taps 0..4
    expected = torch.tensor([[2, 1, 0, 0], [3, 2, 1, 0], [4, 3, 2, 1], [4, 4, 3, 2]], dtype=torch.float32)
    assert torch.equal(toeplitz(taps, 4)[0], expected)


def test_block_is_residual_with_adn():
    block = AxialContext(4, reach=3).eval()
    x = torch.randn(1, 4, 5, 6)
    with torch.no_grad():  # values away from their initialisation, BatchNorm statistics as after training
        for tensor in (block.offset, block.bias, block.adn.N.running_mean, block.adn.N.weight, block.adn.N.bias):
            tensor.uniform_(-1, 1)
        block.adn.N.running_var.uniform_(0.5, 2)
    mixed = axial_reference(x + block.offset.view(1, -1, 1, 1), block.taps_h, block.taps_w)
    z = torch.relu(mixed + block.bias.view(1, -1, 1, 1))  # ReLU -> BatchNorm (eval: running statistics)
    bn = block.adn.N
    mean, var, scale, shift = (t.view(1, -1, 1, 1) for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    expected = x + scale * (z - mean) / torch.sqrt(var + bn.eps) + shift
    torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)


@parameterized.expand([("channels_0", {"channels": 0}), ("reach_0", {"channels": 4, "reach": 0})])
def test_block_bad_arguments(_, kwargs):
    with pytest.raises(ValueError, match="must be a positive integer"):
        AxialContext(**kwargs)


# ---------------------------------------------------------------- OneNet's context option


def _hand_count(channels: int, reach: int = 32) -> int:
    """Parameters the context block adds: two tap sets (C x (2R + 1)), an offset and a bias (C each) and BatchNorm's
    scale and shift (C each)."""
    return 2 * channels * (2 * reach + 1) + 2 * channels + 2 * channels


@parameterized.expand(
    [
        # name, overrides, plain network, deepest width (in 3, out 4, features 64)
        ("onenet_ed4_ctx", {}, "onenet_ed4", 1024, 9_211_012),
        ("onenet_ed5_ctx", {}, "onenet_ed5", 2048, 36_641_924),
        ("onenet_e4", {"context": True}, "onenet_e4", 1024, 16_493_124),
        ("onenet_ed4_ctx", {"features": 16}, "onenet_ed4", 256, None),
    ]
)
def test_context_parameter_count_by_hand(name, overrides, plain, channels, reported):
    with torch.device("meta"):
        net = get_network(name, 3, 4, **overrides)
        base = get_network(plain, 3, 4, **{k: v for k, v in overrides.items() if k != "context"})
    assert count_parameters(net) == count_parameters(base) + _hand_count(channels)
    if reported is not None:
        assert count_parameters(net) == reported


@parameterized.expand(
    [
        ("e4", "e", 4, 16_355_908),
        ("e5", "e", 5, 65_658_436),
        ("ed4", "ed", 4, 9_073_796),
        ("ed5", "ed", 5, 36_367_492),
    ]
)
def test_context_off_keeps_the_paper_networks(_, variant, levels, expected):
    with torch.device("meta"):
        net = OneNet(2, 3, 4, variant=variant, levels=levels, context=False)
        default = OneNet(2, 3, 4, variant=variant, levels=levels)
    assert count_parameters(net) == count_parameters(default) == expected
    assert list(net.state_dict()) == list(default.state_dict())  # old checkpoints load unchanged
    assert not any(k.startswith("context") for k in net.state_dict())


@parameterized.expand([("string", "axial"), ("int", 1), ("none", None)])
def test_context_must_be_a_bool(_, value):
    with pytest.raises(ValueError, match="context must be True or False"):
        OneNet(2, 3, 4, context=value)


@parameterized.expand(
    [
        ("onenet_ed4_ctx", 3, 4, (2, 250, 190), {}),
        ("onenet_ed5_ctx", 3, 2, (1, 33, 17), {}),
        ("onenet_ed4_ctx", 1, 2, (1, 7, 5), {}),  # smaller than one block: a 1x1 bottleneck
        ("onenet_ed4_ctx", 4, 3, (2, 16, 600), {}),  # 1 x 38 bottleneck: longer than the taps' reach
        ("onenet_e4", 3, 4, (1, 67, 45), {"context": True}),
    ]
)
def test_context_output_shape(name, in_channels, out_channels, bhw, overrides):
    b, h, w = bhw
    net = get_network(name, in_channels, out_channels, features=4, **overrides).eval()
    with torch.no_grad():
        y = net(torch.randn(b, in_channels, h, w))
    assert y.shape == (b, out_channels, h, w) and torch.isfinite(y).all()


@parameterized.expand([("onenet_ed4_ctx", {}), ("onenet_ed5_ctx", {}), ("onenet_e4", {"context": True})])
def test_context_every_parameter_gets_a_gradient(name, overrides):
    net = get_network(name, 3, 4, features=4, **overrides).train()
    net(torch.randn(2, 3, 80, 96)).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


# ---------------------------------------------------------------- receptive field


@parameterized.expand(
    [
        # name, overrides, (H, W), output pixel: the far corners and an inner pixel
        ("onenet_ed4_ctx", {}, (96, 128), (0, 0)),
        ("onenet_ed4_ctx", {}, (96, 128), (95, 127)),
        ("onenet_ed4_ctx", {}, (80, 70), (37, 5)),  # padded size: the crop keeps the whole input in the field
        ("onenet_ed5_ctx", {}, (96, 96), (50, 60)),
        ("onenet_e4", {"context": True}, (96, 128), (0, 127)),
    ]
)
def test_context_receptive_field_is_the_whole_image(name, overrides, hw, pixel):
    net = get_network(name, 3, 2, features=16, **overrides)
    field = receptive_field(net, (1, 3, *hw), pixel)
    assert field["whole_image"], field
    # and with the plain network (no leaky probe): the farthest corner moves this pixel's logits
    x = torch.randn(1, 3, *hw, requires_grad=True)
    net.eval()(x)[0, :, pixel[0], pixel[1]].sum().backward()
    far = (hw[0] - 1 if pixel[0] < hw[0] // 2 else 0, hw[1] - 1 if pixel[1] < hw[1] // 2 else 0)
    corner = x.grad[0, :, max(far[0] - 3, 0) : far[0] + 4, max(far[1] - 3, 0) : far[1] + 4]
    assert corner.abs().sum() > 0


@parameterized.expand([("onenet_ed4", 16), ("onenet_ed5", 32)])
def test_without_context_the_field_stays_one_block(name, block):
    field = receptive_field(get_network(name, 3, 2, features=4), (1, 3, 4 * block, 4 * block), (block + 3, 2 * block))
    assert (field["height"], field["width"]) == (block, block)
    assert field["rows"] == (block, 2 * block - 1) and field["cols"] == (2 * block, 3 * block - 1)


# ---------------------------------------------------------------- TorchScript and ONNX


CTX_EXPORT = [("onenet_ed4_ctx", {}), ("onenet_ed5_ctx", {}), ("onenet_e4", {"context": True})]


@parameterized.expand(CTX_EXPORT)
def test_context_torchscript_round_trip(name, overrides):
    net = get_network(name, 3, 2, features=4, **overrides).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for shape in [(2, 3, 37, 50), (1, 3, 16, 600)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-5)


def _context_onnx_round_trip(net, tmp_path, dynamo: bool) -> None:
    # other sizes than the export's, including a bottleneck longer than the taps' reach (16 x 600 -> 1 x 38)
    _onnx_round_trip(net, tmp_path, dynamo, shapes=[*EXPORT_CHECK_SHAPES, (1, 3, 16, 600)])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name,overrides", CTX_EXPORT)
def test_context_onnx_torchscript_exporter_dynamic_sizes(name, overrides, tmp_path):
    _context_onnx_round_trip(get_network(name, 3, 2, features=4, **overrides).eval(), tmp_path, dynamo=False)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name,overrides", CTX_EXPORT[:2])
def test_context_onnx_dynamo_exporter_dynamic_sizes(name, overrides, tmp_path):
    _context_onnx_round_trip(get_network(name, 3, 2, features=4, **overrides).eval(), tmp_path, dynamo=True)


# ---------------------------------------------------------------- the position-dependent task


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,low,high",
    [
        # network, lowest and highest accepted mean Dice of classes 1 and 2
        ("onenet_ed4", 0.0, 0.6),  # the same answer for both classes: chance level
        ("onenet_ed4_ctx", 0.9, 1.0),
    ],
)
def test_position_task(name, low, high):
    result = _position_task().train_and_score(name, "halves", seed=0)
    assert low <= result["dice"] <= high, result
