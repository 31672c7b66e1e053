"""A fast inference copy of a trained network: :func:`optimize_for_inference`.

Training keeps the plain modules (``ChannelDense``: Conv -> ReLU -> BN, ...). For inference a copy is made in
which every convolution with its activation and normalisation becomes one :class:`FastConv2d`:

- **BatchNorm folded exactly.** Conv -> BN -> act ("NA"): the BN affine goes into the convolution's own weights.
  Conv -> ReLU -> BN ("AN", the authors' order): with the BN scale ``s`` and shift ``t`` per channel,
  ``s * relu(z) + t = clamp(s * z + t, t, inf)`` for ``s >= 0`` and ``clamp(s * z + t, -inf, t)`` for ``s < 0``
  (ReLU is positively homogeneous), so the scale and the shift go into the convolution and the ReLU becomes a
  per-channel clamp, which costs what the ReLU cost. This is exact wherever the output goes (a pixel shuffle,
  a concatenation, a spatial layer, a zero-padded 3x3 convolution: the border zeros stay zeros), so no layer
  needs to know its consumer.
- **oneDNN on CPU.** ``F.conv2d`` runs a 1x1 convolution through ``aten::_slow_conv2d_forward`` at one thread
  and small batches; on CPU float32 tensors the layers call oneDNN directly
  (``torch.ops.mkldnn._convolution_pointwise``, with the ReLU fused into the convolution; under TorchScript
  ``aten::mkldnn_convolution``), and low-resolution 1x1 layers with large weights run as one ``addmm`` on the
  channels-last ``(B*H*W, C)`` view (no per-call weight reorder). Under tracing, ``torch.compile``,
  ``torch.export`` and ONNX export, and on other devices, the same layers run the portable ``F.conv2d`` /
  ``torch.relu`` / ``torch.clamp``, so the copy exports like the plain network (dynamic batch, H, W).
- the unshuffle of the -C encoder levels stays fused into a 2x2 stride-2 convolution.

The copy is a new module tree (the model passed in is not modified), in eval mode, with parameters that do not
require gradients. Modules the optimiser does not know are kept as they are (in eval mode), so a network with
extra blocks still works; :func:`register_inference_converter` adds a converter for a new module type.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN, Convolution
from torch import nn

from onenet_med.networks.blocks import ChannelDense, OneNetDownBlock, pixel_unshuffle_cl

__all__ = ["FastConv2d", "FastDownBlock", "optimize_for_inference", "register_inference_converter"]

# what follows the convolution in a FastConv2d
POST_NONE, POST_RELU, POST_CLAMP = 0, 1, 2

#: 1x1 layers with at most this many output pixels (B*H*W) run as addmm on CPU: oneDNN reorders the weight on
#: every call, which costs more than it saves when the weight is large and the image small (measured at 1 thread:
#: a 1024 -> 1024 layer on 32x32 pixels 13.8 ms with addmm, 15.1 ms with oneDNN; 64x64 pixels: 3.7 vs 3.4 ms)
ADDMM_MAX_PIXELS = 2048

_HAS_POINTWISE = hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()


def _use_onednn(x: torch.Tensor) -> bool:
    """True when the CPU fast path may run: float32 on CPU, not traced, compiled or exported."""
    if torch.jit.is_scripting():
        return x.is_cpu and x.dtype == torch.float32
    return (
        _HAS_POINTWISE
        and x.is_cpu
        and x.dtype == torch.float32
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
    )


def _conv_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: list[int],
    padding: list[int],
    groups: int,
    relu: bool,
    addmm_max_pixels: int,
) -> torch.Tensor:
    """Convolution (+ ReLU) on CPU float32 through oneDNN or MKL, channels-last in, channels-last out."""
    b = x.shape[0]
    h = x.shape[2]
    w = x.shape[3]
    if (
        weight.shape[2] == 1
        and weight.shape[3] == 1
        and stride[0] == 1
        and stride[1] == 1
        and groups == 1
        and b * h * w <= addmm_max_pixels
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, x.shape[1])
        y = torch.addmm(bias, rows, weight.view(weight.shape[0], weight.shape[1]).t())
        if relu:
            y = y.relu_()
        return y.view(b, h, w, weight.shape[0]).permute(0, 3, 1, 2)
    if torch.jit.is_scripting():
        y = torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, stride, [1, 1], groups)
        return y.relu_() if relu else y
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, padding, stride, [1, 1], groups, "relu" if relu else "none", [], ""
    )


class FastConv2d(nn.Module):
    """An inference-only 2D convolution with its BatchNorm folded in and its activation fused.

    Computes ``post(conv2d(x, weight, bias, stride, padding, groups=groups))`` where ``post`` is nothing, a
    ReLU, a per-channel clamp ``clamp(y, lo, hi)`` (Conv -> ReLU -> BN folded) or ``act`` (any other module,
    applied last). Build it with :meth:`from_conv`.

    Shapes:
        ``(B, C_in, H, W) -> (B, C_out, H', W')``, channels-last in and out on the CPU fast path.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        groups: int = 1,
        post: int = POST_NONE,
        lo: torch.Tensor | None = None,
        hi: torch.Tensor | None = None,
        act: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone().contiguous(), requires_grad=False)
        self.stride = [int(s) for s in stride]
        self.padding = [int(p) for p in padding]
        self.groups = int(groups)
        self.post = int(post)
        self.relu = self.post == POST_RELU
        self.clamp = self.post == POST_CLAMP
        self.addmm_max_pixels = ADDMM_MAX_PIXELS
        empty = weight.new_zeros(0)
        shape = (1, -1, 1, 1)
        self.register_buffer("lo", lo.detach().reshape(shape).clone() if lo is not None else empty)
        self.register_buffer("hi", hi.detach().reshape(shape).clone() if hi is not None else empty.clone())
        self.act = act if act is not None else nn.Identity()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, after: list[nn.Module] | None = None) -> FastConv2d:
        """Fold the modules that run ``after`` the convolution (in order; BatchNorm2d, ReLU, Dropout, others).

        A leading BatchNorm goes into the weights; then a ReLU is fused, a ReLU followed by a BatchNorm becomes
        a clamp; whatever remains (other activations or norms) is kept, in eval mode, as ``act``.
        """
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FastConv2d folds plain zero-padded nn.Conv2d layers, got {conv!r}")
        if tuple(conv.dilation) != (1, 1):
            raise ValueError(f"FastConv2d does not support dilation, got {conv!r}")
        dtype = conv.weight.dtype
        weight = conv.weight.detach().double()  # fold in float64, round once
        bias = conv.bias.detach().double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        rest = [m for m in (after or []) if not isinstance(m, (nn.Dropout, nn.Identity))]  # identities in eval
        if rest and _foldable_bn(rest[0]):
            scale, shift = _bn_affine(rest[0])
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = bias * scale + shift
            rest = rest[1:]
        post, lo, hi = POST_NONE, None, None
        if rest and _is_relu(rest[0]):
            if len(rest) > 1 and _foldable_bn(rest[1]):
                scale, shift = _bn_affine(rest[1])
                weight = weight * scale.view(-1, 1, 1, 1)
                bias = bias * scale + shift
                inf = torch.full_like(shift, float("inf"))
                lo = torch.where(scale >= 0, shift, -inf)
                hi = torch.where(scale >= 0, inf, shift)
                post, rest = POST_CLAMP, rest[2:]
            else:
                post, rest = POST_RELU, rest[1:]
        act = None
        if rest:
            act = copy.deepcopy(nn.Sequential(*rest) if len(rest) > 1 else rest[0]).eval()
        lo, hi = (v.to(dtype) if v is not None else None for v in (lo, hi))
        return cls(weight.to(dtype), bias.to(dtype), conv.stride, conv.padding, conv.groups, post, lo, hi, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_onednn(x):
            y = _conv_cpu(
                x, self.weight, self.bias, self.stride, self.padding, self.groups, self.relu, self.addmm_max_pixels
            )
            if self.clamp:
                y = y.clamp_(self.lo, self.hi)
        else:
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, [1, 1], self.groups)
            if self.relu:
                y = torch.relu(y)
            elif self.clamp:
                y = torch.clamp(y, self.lo, self.hi)
        return self.act(y)

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        post = ("none", "relu", "clamp (folded ReLU -> BN)")[self.post]
        return f"{i * self.groups}, {o}, kernel_size=({kh}, {kw}), stride={tuple(self.stride)}, post={post}"


class FastDownBlock(nn.Module):
    """Inference form of :class:`~onenet_med.networks.blocks.OneNetDownBlock`.

    -C: one 2x2 stride-2 :class:`FastConv2d` (unshuffle fused into the first dense layer) then the second dense
    layer; -S: channels-last pixel-unshuffle -> the spatial layer (kept as it is) -> two dense layers.

    Shapes:
        ``(B, C, H, W) -> (B, C_out, H / 2, W / 2)``.
    """

    def __init__(self, block: OneNetDownBlock) -> None:
        super().__init__()
        self.fused = block.fused
        self.spatial = copy.deepcopy(block.spatial).eval()
        conv = block.reduce.conv
        if self.fused:  # PixelUnshuffle orders channels c * 4 + dy * 2 + dx: the weight viewed as (O, C, 2, 2)
            folded = nn.Conv2d(conv.in_channels // 4, conv.out_channels, 2, stride=2)
            with torch.no_grad():
                folded.weight.copy_(conv.weight.view(conv.out_channels, conv.in_channels // 4, 2, 2))
                folded.bias.copy_(conv.bias)
            conv = folded
        self.reduce = FastConv2d.from_conv(conv, list(block.reduce.adn.children()))
        self.refine = _dense(block.refine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.refine(self.reduce(x))
        return self.refine(self.reduce(self.spatial(pixel_unshuffle_cl(x))))


# ------------------------------------------------------------------------------------------ converters


def _dense(layer: ChannelDense) -> FastConv2d:
    return FastConv2d.from_conv(layer.conv, list(layer.adn.children()))


def _convolution(block: Convolution) -> nn.Module:
    """MONAI ``Convolution`` (conv then an ADN block): fold when it is a plain 2D convolution."""
    conv = getattr(block, "conv", None)
    if not _plain_conv2d(conv):
        return _convert_children(block)
    adn = getattr(block, "adn", None)
    after = list(adn.children()) if isinstance(adn, ADN) else ([] if adn is None else [adn])
    extra = [m for name, m in block.named_children() if name not in ("conv", "adn")]
    if extra:  # an unusual layout: leave it alone
        return _convert_children(block)
    return FastConv2d.from_conv(conv, after)


def _conv2d(conv: nn.Conv2d) -> nn.Module:
    return FastConv2d.from_conv(conv) if _plain_conv2d(conv) else conv


_CONVERTERS: dict[type, Callable[[nn.Module], nn.Module]] = {
    ChannelDense: _dense,
    OneNetDownBlock: FastDownBlock,
    Convolution: _convolution,
    nn.Conv2d: _conv2d,
}


def register_inference_converter(module_type: type, converter: Callable[[nn.Module], nn.Module]) -> None:
    """Make :func:`optimize_for_inference` replace every ``module_type`` module by ``converter(module)``.

    ``converter`` receives the module (a copy, in eval mode; it may be changed or reused) and returns the
    module to use instead, with the same ``forward`` signature and result. Subclasses of ``module_type`` are
    converted too unless they have their own converter. Use it for blocks this module does not know
    (e.g. to convert their children: ``lambda m: optimize_children(m)``).
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    _CONVERTERS[module_type] = converter


def _converter_for(module: nn.Module) -> Callable[[nn.Module], nn.Module] | None:
    for klass in type(module).__mro__:
        if klass in _CONVERTERS:
            return _CONVERTERS[klass]
    return None


def _convert(module: nn.Module) -> nn.Module:
    converter = _converter_for(module)
    if converter is not None:
        return converter(module)
    return _convert_children(module)


def _convert_children(module: nn.Module) -> nn.Module:
    """Convert every child of ``module`` in place and return ``module``."""
    for name, child in list(module.named_children()):
        new = _convert(child)
        if new is not child:
            setattr(module, name, new)
    return module


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """A new module computing the same logits as ``model`` in eval mode, faster (see the module docstring).

    Args:
        model: any network of :func:`onenet_med.networks.get_network` (or any ``nn.Module``; unknown blocks are
            kept as they are). Not modified: not even its train/eval mode changes.

    Returns:
        the optimised copy, in eval mode, parameters without gradients; TorchScript-scriptable and
        ONNX-exportable whenever ``model`` is. Its weights are not the training layout: load checkpoints
        into the plain network, then optimise.
    """
    if isinstance(model, torch.jit.ScriptModule):
        fast = copy.deepcopy(model)
        fast.eval()
        return fast
    fast = copy.deepcopy(model)
    fast.eval()
    fast = _convert(fast)
    fast.eval()
    fast.requires_grad_(False)
    return fast


optimize_children = _convert_children


# ------------------------------------------------------------------------------------------ helpers


def _plain_conv2d(conv: object) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and tuple(conv.dilation) == (1, 1)
    )


def _is_relu(module: nn.Module) -> bool:
    return type(module) is nn.ReLU


def _foldable_bn(module: nn.Module) -> bool:
    """An eval-mode BatchNorm2d that uses running statistics (a per-channel affine)."""
    return type(module) is nn.BatchNorm2d and module.running_mean is not None and module.running_var is not None


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` in float64 with ``bn(x) == x * scale + shift`` per channel in eval mode."""
    mean = bn.running_mean.detach().double()
    var = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale
