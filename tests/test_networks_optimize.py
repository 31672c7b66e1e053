"""Tests of onenet_med.networks.optimize: the inference copy computes the plain network's logits (every OneNet
name, both orderings, no norm, odd sizes, batches), leaves the model alone, scripts and exports to ONNX."""

from __future__ import annotations

import collections
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from parameterized import parameterized
from torch import nn

from onenet_med.networks import (
    AxialContext,
    OneNet,
    get_network,
    optimize,
    optimize_for_inference,
    register_inference_converter,
)
from onenet_med.networks.blocks import ChannelDense
from onenet_med.networks.optimize import FastConv2d, _use_onednn, fold_across_shuffle
from tests.test_networks import _onnx_round_trip

ONENET_NAMES = [f"onenet_{v}{lv}{s}" for v in ("e", "ed") for lv in (4, 5) for s in ("", "_s")]
ONENET_NAMES += ["onenet_ed4_ctx", "onenet_ed5_ctx"]  # image-wide context at the deepest level
TOLERANCE = 1e-4


def trained_like(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm running statistics and affine parameters far from their initial values (some scales
    negative), as after training, so that folding them is not a no-op."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=generator) * 2 - 1)
                m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.2)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=generator) * 2.5 - 0.5)
                    m.bias.copy_(torch.rand(c, generator=generator) - 0.5)
    return net


def smooth_image(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A slice-like input: smooth blobs over a dark background plus a little noise, normalised like the bundles."""
    generator = torch.Generator().manual_seed(seed)
    yy = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    centres = torch.rand(b, c, 2, generator=generator) - 0.5
    image = torch.exp(-4 * ((yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2))
    image = image + 0.05 * torch.randn(b, c, h, w, generator=generator)
    return (image - image.mean()) / image.std()


def build(name: str, features: int = 8, in_channels: int = 3, out_channels: int = 4, **kw) -> nn.Module:
    torch.manual_seed(0)
    return trained_like(get_network(name, in_channels, out_channels, features=features, **kw)).eval()


def assert_same_logits(plain: nn.Module, fast: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = plain(x)
        got = fast(x)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert (got - expected).abs().max() <= TOLERANCE, (got - expected).abs().max()
    assert torch.equal(got.argmax(1), expected.argmax(1))


# ---------------------------------------------------------------- equivalence


CASES = [
    (name, ordering, (2, 50, 37), portable)
    for name in ONENET_NAMES
    for ordering in ("AN", "NA")
    for portable in (False, True)
]
CASES += [(name, "AN", (1, 33, 70), False) for name in ONENET_NAMES]


@parameterized.expand(CASES)
def test_optimized_equals_plain(name, ordering, bhw, portable):
    plain = build(name, adn_ordering=ordering)
    fast = optimize_for_inference(plain, portable=portable)
    b, h, w = bhw
    assert_same_logits(plain, fast, smooth_image(b, 3, h, w))


@parameterized.expand([("onenet_ed4",), ("onenet_e4_s",)])
def test_paper_width_equals_plain(name):
    plain = build(name, features=64, in_channels=1, out_channels=2)
    fast = optimize_for_inference(plain)
    assert_same_logits(plain, fast, smooth_image(1, 1, 64, 80))


@parameterized.expand(
    [
        ("no_norm", {"norm": None}),
        ("dropout", {"dropout": 0.2}),
        ("leaky_relu", {"act": ("leakyrelu", {"negative_slope": 0.1})}),
        ("instance_norm", {"norm": "instance", "levels": 2}),  # deeper: statistics over a handful of pixels
        ("stem_1", {"stem_repeat": 1, "levels": 2}),
    ]
)
def test_other_settings_equal_plain(_, kw):
    for name in ("onenet_ed4", "onenet_e4_s"):
        plain = build(name, **kw)
        fast = optimize_for_inference(plain)
        assert_same_logits(plain, fast, smooth_image(2, 3, 24, 40))


@parameterized.expand(
    [
        ("onenet_ed4", False, 4),  # the layers feeding a pixel shuffle: the CPU fast path keeps those clamps
        ("onenet_ed4", True, 0),
        ("onenet_ed4_s", False, 8),
        ("onenet_ed4_s", True, 8),
        ("onenet_e4", False, 4),
        ("onenet_e4", True, 4),
    ]
)
def test_batchnorm_is_folded_away(name, portable, clamps):
    """No BatchNorm is left; a Conv -> ReLU -> BN layer stays a clamp only where its reader cannot absorb the BN
    (a spatial layer, a zero-padded 3x3 convolution, and, on the CPU fast path, a pixel shuffle: the portable form
    folds it across the shuffle into the 1x1 reader); every other layer has a fused ReLU."""
    fast = optimize_for_inference(build(name), portable=portable)
    assert not [m for m in fast.modules() if isinstance(m, nn.BatchNorm2d)]
    layers = {n: m for n, m in fast.named_modules() if isinstance(m, FastConv2d)}
    assert all(isinstance(m.act, nn.Identity) for m in layers.values())
    clamped = sorted(n for n, m in layers.items() if m.clamp)
    assert len(clamped) == clamps, clamped
    if name == "onenet_ed4" and not portable:
        assert clamped == ["decoder.bottleneck"] + [f"decoder.stages.{i}.dense2" for i in range(3)]
    na = optimize_for_inference(build(name, adn_ordering="NA"))
    assert not [m for m in na.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(m.clamp for m in na.modules() if isinstance(m, FastConv2d))


def test_negative_batchnorm_scales_are_exact():
    """A BN scale < 0 turns ``s * relu(z)`` into a minimum: every channel negative, then mixed."""
    plain = build("onenet_ed4", levels=2)
    x = smooth_image(2, 3, 20, 28)
    for low, high in ((-2.0, -0.1), (-1.0, 1.0)):
        with torch.no_grad():
            for m in plain.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(low, high)
        assert_same_logits(plain, optimize_for_inference(plain), x)
        assert_same_logits(plain, optimize_for_inference(plain, portable=True), x)


# ---------------------------------------------------------------- float32 accuracy of the folds


def near_constant_channel(layer: ChannelDense) -> None:
    """Make channel 0 of a Conv -> ReLU -> BN layer what a trained model's stem had: ReLU outputs ~0.4 that barely
    vary, BN running variance 0 (scale ~316), so its BN shift (~ -126) is ~100x the layer's outputs."""
    with torch.no_grad():
        layer.conv.weight[0], layer.conv.bias[0] = 0.01, 0.4
        bn = layer.adn.N
        bn.running_var[0], bn.running_mean[0], bn.weight[0], bn.bias[0] = 0.0, 0.4, 1.0, 0.0


def test_large_batchnorm_shift_keeps_its_clamp():
    """Moving such a shift into the next layer (a fused ReLU, the shift in the reader's bias) makes the reader sum
    terms ~100x its result, which cost the trained model 7e-4 on its logits; the layer keeps its clamp instead,
    and the optimized pair is closer to a float64 run than the float32 pair itself (released: about as far)."""
    torch.manual_seed(0)
    pair = trained_like(nn.Sequential(ChannelDense(1, 16), ChannelDense(16, 16))).eval()
    near_constant_channel(pair[0])
    x = smooth_image(2, 1, 48, 64)
    with torch.no_grad():
        reference = copy.deepcopy(pair).double()(x.double())
        fast = optimize_for_inference(pair)
        fast_error = float((fast(x).double() - reference).abs().max())
        plain_error = float((pair(x).double() - reference).abs().max())
    assert fast_error <= plain_error / 2, (fast_error, plain_error)
    assert fast[0].clamp

    plain = build("onenet_ed4", features=16, in_channels=1)
    near_constant_channel(plain.stem[0])
    fast = optimize_for_inference(plain)
    assert fast.stem[0].clamp and not fast.stem[1].clamp
    assert not hasattr(fast.stem[0], "_shift_ratio") and not hasattr(fast.stem[0], "_exact_bias")
    assert_same_logits(plain, fast, smooth_image(2, 1, 48, 64))


def test_released_bias_is_rounded_once(monkeypatch):
    """Releasing a clamp subtracts the BN shift ``t`` from the folded bias ``b s + t``: optimize_for_inference folds
    on a float64 copy and rounds once, so the released bias is ``b s`` to float32 precision, not what the float32
    ``b s + t`` would leave (``b s`` lost to the ulp of ``t``)."""
    monkeypatch.setattr(optimize, "MAX_SHIFT_RATIO", float("inf"))
    pair = nn.Sequential(ChannelDense(1, 1), ChannelDense(1, 1)).eval()
    conv, bn = pair[0].conv, pair[0].adn.N
    bn.eps = 0.0
    with torch.no_grad():  # powers of two: s = 128 and t = -1024 exactly
        conv.weight.fill_(1.0)
        conv.bias.fill_(0.1234)
        bn.running_var.fill_(2.0**-14)
        bn.running_mean.fill_(8.0)
    exact = float(conv.bias) * 128
    rounded_then_shifted = float(torch.tensor(exact - 1024.0, dtype=torch.float32).double() + 1024.0)
    assert abs(rounded_then_shifted - exact) > 1e-5  # what the float32 bias alone would give
    sign, shift = FastConv2d.from_conv(conv.double(), [nn.ReLU(), bn.double()]).release_output_affine()
    assert float(shift) == -1024.0 and float(sign) == 1.0
    fast = optimize_for_inference(pair.float())
    assert fast[0].relu and not fast[0].clamp and fast[0].bias.dtype == torch.float32
    assert abs(float(fast[0].bias) - exact) <= 1e-6


# ---------------------------------------------------------------- the BatchNorm fold across a pixel shuffle


def shuffle_pair(skip: int, channels: int, out: int, scales: tuple[float, float]) -> tuple[nn.Module, nn.Module]:
    """A decoder stage's boundary in training form: Conv -> ReLU -> BN (BN scales uniform in ``scales``) whose
    pixel shuffle follows a ``skip``-channel skip, read by a 1x1 Conv -> ReLU."""
    torch.manual_seed(0)
    producer = trained_like(nn.Sequential(nn.Conv2d(6, 4 * channels, 1), nn.ReLU(), nn.BatchNorm2d(4 * channels)))
    with torch.no_grad():
        producer[2].weight.uniform_(*scales)
    return producer.eval(), nn.Sequential(nn.Conv2d(skip + channels, out, 1), nn.ReLU()).eval()


def run_pair(producer, reader, x, skip):
    up = F.pixel_shuffle(producer(x), 2)
    return reader(up if skip is None else torch.cat([skip, up], dim=1))


@parameterized.expand(
    [
        ("positive", 5, (0.2, 2.0), 1.0, 0),
        ("negative", 5, (-2.0, -0.2), 1.0, 8),  # every channel has a negative sub-pixel
        ("mixed", 5, (-1.0, 1.5), 7.5, None),
        ("mixed_no_skip", 0, (-1.0, 1.5), 1.0, None),  # the top stage
    ]
)
def test_fold_across_shuffle_is_exact(_, skip, scales, marker, negative_groups):
    """The clamp of a layer feeding a pixel shuffle moves into the reader: the producer keeps only a fused ReLU,
    with extra shuffle groups for negative BN scales and three marker groups; logits equal the plain pair's."""
    producer, reader = shuffle_pair(skip, 8, 6, scales)
    fast_producer = FastConv2d.from_conv(producer[0], [producer[1], producer[2]])
    fast_reader = FastConv2d.from_conv(reader[0], [reader[1]])
    assert fast_producer.clamp
    negative = int((producer[2].weight.view(8, 4) < 0).any(1).sum())
    if negative_groups is not None:
        assert negative == negative_groups
    assert fold_across_shuffle(fast_producer, fast_reader, skip, marker)
    assert not fast_producer.clamp and fast_producer.relu
    assert fast_producer.weight.shape[0] == 4 * (8 + negative + 3)
    assert fast_reader.weight.shape[1] == skip + 8 + negative + 3
    x = smooth_image(2, 6, 6, 10).contiguous(memory_format=torch.channels_last)
    skip_map = torch.relu(smooth_image(2, skip, 12, 20, seed=1)) if skip else None
    with torch.no_grad():
        expected = run_pair(producer, reader, x, skip_map)
        got = run_pair(fast_producer, fast_reader, x, skip_map)
    assert (got - expected).abs().max() <= 1e-5 * (1 + expected.abs().max())


@parameterized.expand([("onenet_ed4", True), ("onenet_ed5_ctx", True), ("onenet_ed4_s", False)])
def test_portable_top_stage_runs_per_subpixel(name, grouped):
    """The portable -C ed decoder's top stage runs before its pixel shuffle: its dense layers as 4-group
    convolutions, the head block-diagonal, so only the head's ``4 * K`` channels are shuffled; -S keeps its order
    (a spatial layer reads the shuffled image)."""
    plain = build(name, out_channels=3)
    fast = optimize_for_inference(plain, portable=True)
    decoder = fast.decoder
    assert decoder.top_grouped == grouped and not decoder.grouped
    if grouped:
        assert decoder.top.dense1.groups == decoder.top.dense2.groups == 4
        assert decoder.head.weight.shape[0] == 4 * 3 and decoder.head.groups == 1
    assert_same_logits(plain, fast, smooth_image(2, 3, 36, 20))
    assert not optimize_for_inference(plain).decoder.top_grouped  # the CPU fast path has its own top stage


def test_fold_across_shuffle_refuses_other_readers():
    """A zero-padded 3x3 reader, or one whose input is not ``skip + shuffled`` channels: nothing changes."""
    producer, _ = shuffle_pair(0, 8, 6, (-1.0, 1.0))
    fast_producer = FastConv2d.from_conv(producer[0], [producer[1], producer[2]])
    padded = FastConv2d.from_conv(nn.Conv2d(8, 6, 3, padding=1))
    assert not fold_across_shuffle(fast_producer, padded, 0)
    assert not fold_across_shuffle(fast_producer, FastConv2d.from_conv(nn.Conv2d(9, 6, 1)), 0)
    assert fast_producer.clamp and fast_producer.weight.shape[0] == 32


def test_model_is_not_modified():
    plain = build("onenet_ed4_s").train()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    modules = list(plain.modules())
    fast = optimize_for_inference(plain)
    assert plain.training and all(m.training for m in plain.modules())
    assert list(plain.modules()) == modules
    after = plain.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not fast.training and not any(m.training for m in fast.modules())
    assert not any(p.requires_grad for p in fast.parameters())
    assert all(p.requires_grad for p in plain.parameters())
    # the copy shares no storage with the model
    plain_ptrs = {t.data_ptr() for t in plain.state_dict().values()}
    assert not plain_ptrs & {t.data_ptr() for t in fast.state_dict().values()}


def test_checkpoint_loads_into_the_plain_network_then_optimizes(tmp_path):
    trained = build("onenet_ed4")
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    fresh = get_network("onenet_ed4", 3, 4, features=8)
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert_same_logits(trained, optimize_for_inference(fresh.eval()), smooth_image(1, 3, 32, 32))


@parameterized.expand([("unet4",), ("mobilenet_unet4",), ("basicunet",), ("resnet34_unet",)])
def test_other_networks_equal_plain(name):
    torch.manual_seed(0)
    kw = {"features": 8} if name.endswith("unet4") else {}
    plain = trained_like(get_network(name, 3, 4, **kw)).eval()
    fast = optimize_for_inference(plain)
    assert fast is not plain
    assert_same_logits(plain, fast, smooth_image(2, 3, 40, 36))


def test_unknown_modules_are_kept_in_eval_mode():
    class Context(nn.Module):  # a block the optimiser does not know, with a BN of its own
        def __init__(self, c):
            super().__init__()
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            return x + self.bn(x)

    class WithContext(OneNet):
        def __init__(self):
            super().__init__(2, 3, 4, variant="ed", levels=2, features=8)
            self.context = Context(32)

        def forward(self, x):  # a copy of OneNet.forward with the context block after the encoder
            h, w = x.shape[2], x.shape[3]
            x = F.pad(x, [0, (-w) % 4, 0, (-h) % 4]).contiguous(memory_format=torch.channels_last)
            x = self.stem(x)
            skips = []
            for level in self.encoder:
                x = level(x)
                skips.append(x)
            skips.pop()
            return self.decoder(self.context(x), skips)[:, :, :h, :w]

    plain = trained_like(WithContext()).train()
    fast = optimize_for_inference(plain)
    assert isinstance(fast.context, Context) and not fast.context.training
    assert isinstance(fast.stem[0], FastConv2d)
    assert_same_logits(plain.eval(), fast, smooth_image(2, 3, 20, 12))
    # the context block sits between the encoder and the bottleneck: the deepest level keeps its clamp, the
    # other folds across blocks stay; the plain OneNet folds them all
    assert fast.encoder[-1].refine.clamp and not fast.stem[-1].clamp and not fast.encoder[0].refine.clamp
    plain_onenet = optimize_for_inference(trained_like(OneNet(2, 3, 4, variant="ed", levels=2, features=8)))
    assert not plain_onenet.encoder[-1].refine.clamp and not plain_onenet.stem[-1].clamp


def test_context_network_keeps_the_folds_around_its_context_block():
    plain = build("onenet_ed4_ctx")
    fast = optimize_for_inference(plain)
    assert_same_logits(plain, fast, smooth_image(2, 3, 50, 37))
    assert isinstance(fast.context, AxialContext) and not fast.context.training
    # the context block reads the deepest level: that level keeps its clamp; the stem and the other levels fold
    assert fast.encoder[-1].refine.clamp
    assert not fast.stem[-1].clamp and not any(level.refine.clamp for level in fast.encoder[:-1])


def test_register_inference_converter():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.conv(self.conv(x))

    seen = []

    def convert(module):
        seen.append(module)
        return module

    register_inference_converter(Twice, convert)
    try:
        net = nn.Sequential(Twice())
        fast = optimize_for_inference(net)
        assert len(seen) == 1 and seen[0] is fast[0] and seen[0] is not net[0]
        assert isinstance(fast[0].conv, nn.Conv2d)  # the converter, not the default recursion, decided
    finally:
        from onenet_med.networks.optimize import _CONVERTERS

        del _CONVERTERS[Twice]
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_inference_converter(int, convert)


# ---------------------------------------------------------------- fast and portable paths


def test_fast_path_runs_on_cpu_and_portable_path_equals_it(monkeypatch):
    plain = build("onenet_ed4_s")
    fast = optimize_for_inference(plain)
    x = smooth_image(2, 3, 36, 52)
    assert _use_onednn(x)
    with torch.no_grad():
        quick = fast(x)
    import onenet_med.networks.optimize as optimize

    monkeypatch.setattr(optimize, "_HAS_POINTWISE", False)  # what tracing / export / other devices run
    assert not _use_onednn(x)
    with torch.no_grad():
        portable = fast(x)
        expected = plain(x)
    assert (quick - portable).abs().max() <= TOLERANCE
    assert (portable - expected).abs().max() <= TOLERANCE


def test_channels_last_input_and_output_layout():
    plain = build("onenet_ed4")
    fast = optimize_for_inference(plain)
    x = smooth_image(2, 3, 32, 48)
    with torch.no_grad():
        a = fast(x)
        b = fast(x.contiguous(memory_format=torch.channels_last))
    assert a.is_contiguous() and torch.equal(a, b)


# ---------------------------------------------------------------- TorchScript and ONNX


@parameterized.expand([(name,) for name in ONENET_NAMES])
def test_torchscript_of_optimized_equals_plain(name):
    plain = build(name)
    scripted = torch.jit.script(optimize_for_inference(plain))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for shape in [(2, 3, 37, 50), (1, 3, 16, 16)]:
        assert_same_logits(plain, loaded, smooth_image(*shape))


def _onnx_equals_plain(plain: nn.Module, fast: nn.Module, tmp_path, dynamo: bool) -> str:
    return _onnx_round_trip(fast, tmp_path, dynamo, reference=plain, make_input=smooth_image)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["onenet_ed4", "onenet_ed4_s", "onenet_e4", "onenet_e5_s", "onenet_ed4_ctx"])
def test_onnx_of_optimized_equals_plain(name, tmp_path):
    plain = build(name)
    _onnx_equals_plain(plain, optimize_for_inference(plain), tmp_path, dynamo=False)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "name, clamps",
    [("onenet_ed4", 0), ("onenet_ed5", 0), ("onenet_ed4_ctx", 1)],  # -S: see test_batchnorm_is_folded_away
)
def test_portable_onnx_uses_depth_to_space_and_no_clamps(name, clamps, tmp_path):
    """The portable form exports each pixel shuffle as one DepthToSpace (no Reshape -> Transpose -> Reshape) and,
    for the -C ed networks, no float op between its convolutions: no Max/Min clamp (-ctx: only the deepest level's,
    read by the context block through zero-padded mixing); same logits."""
    onnx = pytest.importorskip("onnx")
    plain = build(name)
    path = _onnx_equals_plain(plain, optimize_for_inference(plain, portable=True), tmp_path, dynamo=False)
    nodes = onnx.load(path).graph.node
    ops = collections.Counter(node.op_type for node in nodes)
    # no 6-D transposes (the grouped shuffle's); smaller ones transpose index tensors (padding, context block)
    perms = [list(a.ints) for n in nodes if n.op_type == "Transpose" for a in n.attribute if a.name == "perm"]
    assert ops["DepthToSpace"] == plain.levels and all(len(perm) < 6 for perm in perms), perms
    assert ops["Max"] == ops["Min"] == clamps
    assert ops["Clip"] == 0 or name.endswith("_ctx")  # the context block (kept as it is) clips its positions
    assert ops["Relu"] > 0 and ops["Concat"] >= plain.levels - 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["onenet_ed4", "onenet_e4_s"])
def test_onnx_dynamo_of_optimized_equals_plain(name, tmp_path):
    plain = build(name)
    _onnx_equals_plain(plain, optimize_for_inference(plain), tmp_path, dynamo=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_export_onnx_of_portable_form_has_no_clamps(tmp_path):
    """What ``onenet-med export`` writes (``export_onnx``: the dynamo exporter) for a -C ed network: DepthToSpace,
    no Max/Min/Clip, no 6-D Transpose; ONNX Runtime gives the plain network's logits."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from onenet_med.inference.export import export_onnx

    plain = build("onenet_ed4")
    path = str(tmp_path / "model.onnx")
    export_onnx(optimize_for_inference(plain, portable=True), path, 3)
    nodes = onnx.load(path).graph.node
    ops = collections.Counter(node.op_type for node in nodes)
    perms = [list(a.ints) for n in nodes if n.op_type == "Transpose" for a in n.attribute if a.name == "perm"]
    assert ops["DepthToSpace"] == 4 and not ops["Max"] and not ops["Min"] and not ops["Clip"]
    assert all(len(perm) < 6 for perm in perms)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = smooth_image(2, 3, 50, 37)
    with torch.no_grad():
        expected = plain(x)
    (out,) = session.run(None, {"image": x.numpy()})
    assert (torch.from_numpy(out) - expected).abs().max() <= TOLERANCE
