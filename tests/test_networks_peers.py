"""Tests of onenet_med.networks.peers: MONAI SegResNet in 2D through the registry (shapes for any H, W, parameter
counts and outputs equal to MONAI's own class, TorchScript, ONNX)."""

from __future__ import annotations

import io
import sys

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SegResNet
from parameterized import parameterized

from onenet_med.compare import network_overrides
from onenet_med.networks import get_network
from tests.test_networks import _onnx_round_trip

# (init_filters, in_channels, out_channels, (B, H, W)): odd and prime sizes, widths above and below 8
SHAPE_CASES = [
    (8, 3, 4, (2, 37, 29)),
    (8, 1, 2, (1, 13, 7)),
    (16, 4, 4, (1, 40, 33)),
    (4, 1, 3, (3, 8, 64)),
    (12, 2, 2, (1, 1, 1)),
]


def _monai_segresnet(init_filters: int, in_channels: int, out_channels: int) -> SegResNet:
    """MONAI's class as MONAI builds it (8 GroupNorm groups; fewer where 8 does not divide the width)."""
    groups = 8 if init_filters % 8 == 0 else {4: 4, 12: 4}[init_filters]
    return SegResNet(
        spatial_dims=2,
        init_filters=init_filters,
        in_channels=in_channels,
        out_channels=out_channels,
        norm=("GROUP", {"num_groups": groups}),
    )


@parameterized.expand(SHAPE_CASES)
def test_output_shape(init_filters, in_channels, out_channels, bhw):
    net = get_network("segresnet", in_channels, out_channels, init_filters=init_filters).eval()
    b, h, w = bhw
    with torch.no_grad():
        y = net(torch.randn(b, in_channels, h, w))
    assert y.shape == (b, out_channels, h, w)
    assert torch.isfinite(y).all()


@parameterized.expand([(w, c_in, c_out) for w, c_in, c_out, _ in SHAPE_CASES])
def test_parameter_count_equals_monai(init_filters, in_channels, out_channels):
    net = get_network("segresnet", in_channels, out_channels, init_filters=init_filters)
    ref = _monai_segresnet(init_filters, in_channels, out_channels)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref.parameters())


def test_default_is_monai_default():
    """Width 8 with in 3 / out 4: the 0.40 M parameters of the issue's table, MONAI's default GroupNorm(8)."""
    net = get_network("segresnet", 3, 4)
    assert sum(p.numel() for p in net.parameters()) == 395_148
    groups = {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {8}


@parameterized.expand([((1, 37, 29),), ((2, 32, 40),), ((1, 9, 16),)])
def test_equals_monai_on_the_zero_padded_input(bhw):
    """The wrapper only pads bottom/right to a multiple of 8 and crops: MONAI's class with the same weights on
    the padded input, cropped, gives the same logits."""
    torch.manual_seed(0)
    net = get_network("segresnet", 2, 3, init_filters=8).eval()
    ref = _monai_segresnet(8, 2, 3).eval()
    ref.load_state_dict(net.net.state_dict())
    b, h, w = bhw
    x = torch.randn(b, 2, h, w)
    padded = F.pad(x, [0, -w % 8, 0, -h % 8])
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(padded)[:, :, :h, :w], rtol=1e-5, atol=1e-5)


@parameterized.expand(
    [
        ("spatial_dims_3", {"spatial_dims": 3}, "spatial_dims must be 2"),
        ("init_filters_0", {"init_filters": 0}, "features"),
        ("blocks_up", {"blocks_up": (1, 1)}, "blocks_up"),
    ]
)
def test_bad_arguments_raise_value_error(_, kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_network("segresnet", 1, 2, **kwargs)


def test_wrong_input_raises_clear_error():
    net = get_network("segresnet", 3, 2).eval()
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        net(torch.randn(1, 1, 16, 16))


@parameterized.expand([(8,), (16,)])
def test_compare_width_knob_sets_init_filters(width):
    over = network_overrides("segresnet", width)
    kwargs = {k.split("#")[1]: v for k, v in over.items() if k.startswith("network_def#")}
    net = get_network("segresnet", 1, 4, **kwargs)
    assert net.net.convInit.conv.out_channels == width


def test_torchscript_round_trip():
    net = get_network("segresnet", 3, 2).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(2, 3, 37, 50)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_torchscript_exporter_dynamic_sizes(tmp_path):
    _onnx_round_trip(get_network("segresnet", 3, 4).eval(), tmp_path, dynamo=False)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_dynamo_exporter_dynamic_sizes(tmp_path):
    _onnx_round_trip(get_network("segresnet", 3, 4).eval(), tmp_path, dynamo=True)


# ---------------------------------------------------------------- nnU-Net's 2D PlainConvUNet (optional package)

# nnU-Net's default 2D plans for a 256 x 256 task, as its plans file writes them (arch_kwargs of the 2d
# configuration): the registry's defaults must build exactly this network
NNUNET_2D_PLANS = {
    "n_stages": 7,
    "features_per_stage": [32, 64, 128, 256, 512, 512, 512],
    "kernel_sizes": [[3, 3]] * 7,
    "strides": [[1, 1]] + [[2, 2]] * 6,
    "n_conv_per_stage": [2] * 7,
    "n_conv_per_stage_decoder": [2] * 6,
    "conv_bias": True,
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "nonlin_kwargs": {"inplace": True},
}


def _nnunet_reference(in_channels: int, out_channels: int) -> torch.nn.Module:
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    return unet.PlainConvUNet(
        in_channels,
        conv_op=torch.nn.Conv2d,
        norm_op=torch.nn.InstanceNorm2d,
        nonlin=torch.nn.LeakyReLU,
        num_classes=out_channels,
        **NNUNET_2D_PLANS,
    )


def test_plainconvunet_is_nnunets_default_2d_network():
    """33.5 M parameters for in 3 / out 4 (the issue's table) and the logits of the network built from nnU-Net's
    plans on the zero-padded input (padding to a multiple of 64, cropped back)."""
    ref = _nnunet_reference(3, 4).eval()
    torch.manual_seed(0)
    net = get_network("plainconvunet", 3, 4).eval()
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref.parameters()) == 33_475_416
    ref.load_state_dict(net.net.state_dict())
    x = torch.randn(1, 3, 130, 70)
    with torch.no_grad():
        expected = ref(F.pad(x, [0, 128 - 70, 0, 192 - 130]))[:, :, :130, :70]
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


@parameterized.expand([((1, 3, 64, 64), (1, 3, 128, 64)), ((2, 3, 20, 130), (2, 3, 128, 192))])
def test_plainconvunet_small_inputs_keep_a_deepest_map_of_two_pixels(shape, padded):
    """Inputs up to 64 rows are padded to 128 (a 2 x 1 map at the 7th stage), the rest as PaddedNet does."""
    ref = _nnunet_reference(3, 4).eval()
    net = get_network("plainconvunet", 3, 4).eval()
    ref.load_state_dict(net.net.state_dict())
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = ref(F.pad(x, [0, padded[3] - shape[3], 0, padded[2] - shape[2]]))[:, :, : shape[2], : shape[3]]
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


@parameterized.expand([(16, 4, [16, 32, 64, 128, 256]), (8, 3, [8, 16, 32])])
def test_plainconvunet_width_and_stages(features, stages, widths):
    pytest.importorskip("dynamic_network_architectures")
    net = get_network("plainconvunet", 1, 2, features=features, n_stages=stages)
    assert net.multiple == 2 ** (stages - 1)
    assert list(net.net.encoder.output_channels) == [min(w, 16 * features) for w in widths[:stages]]
    over = network_overrides("plainconvunet", features)
    assert over == {"network_name": "plainconvunet", "network_def#features": features}


def test_plainconvunet_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures.architectures.unet", None)
    with pytest.raises(ImportError, match="pip install --no-deps dynamic-network-architectures"):
        get_network("plainconvunet", 1, 2)


@parameterized.expand([("n_stages_1", {"n_stages": 1}, "n_stages"), ("features_0", {"features": 0}, "features")])
def test_plainconvunet_bad_arguments(_, kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_network("plainconvunet", 1, 2, **kwargs)
