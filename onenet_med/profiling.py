"""Model-size and speed profile of the registry networks: the paper's Table 2, measured honestly.

For each network (``in_channels=3, out_channels=4`` unless told otherwise) :func:`profile_networks` reports

- **parameters** (millions) and **parameter size** (MB = 10^6 bytes of float32 parameters and buffers);
- **GFLOPs** from ``torch.utils.flop_counter.FlopCounterMode`` at 1x3x256x256 and 1x3x512x512: true FLOPs of
  the code that runs (a multiply-add is 2 FLOPs; convolutions and matrix products only, element-wise ops are
  not counted). Counted on the ``meta`` device, so no computation is done. OneNet's -S spatial layer runs as
  a block-Toeplitz convolution (``networks.blocks.SpatialConv1d``) and is counted as such (24 multiply-adds
  per element instead of the literal 9: +0.6 GFLOPs for onenet_ed4_s at 256x256);
- **peak inference memory**: the largest total size of tensors alive in PyTorch's CPU allocator during one
  ``torch.no_grad()`` forward pass of a 1x3xSxS input in eval mode, from the profiler's allocation and free
  events (``torch.profiler`` with ``profile_memory=True``), input and output included; "total" adds the
  parameters and buffers. On CUDA it is ``torch.cuda.max_memory_allocated`` over the forward pass;
- **latency**: median wall time of a no-grad forward pass after warm-up, with ``torch.set_num_threads``
  threads, the networks timed in interleaved rounds so that a noisy, shared machine slows all of them alike:
  ``latency_ms`` of the inference copy that prediction uses (:func:`onenet_med.networks.optimize_for_inference`:
  BatchNorm folded, oneDNN calls on CPU), ``latency_plain_ms`` of the network as built, in eval mode.

The paper's Table 2 is printed alongside. Its "GFLOPS" column is 2 x the multiply-adds counted by torchinfo,
which counts a ConvTranspose2d's multiply-adds 4x too high (it charges the full kernel to every output pixel);
its OneNet rows are the authors' -S models including their unused heads; it does not say how memory was
measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "PAPER_TABLE2",
    "TABLE2_NETWORKS",
    "count_parameters",
    "parameter_bytes",
    "count_flops",
    "peak_memory_bytes",
    "measure_latency",
    "profile_networks",
    "format_table",
    "write_json",
    "add_parser",
]

#: the paper's Table 2 (input 1x3x256x256): params (M), param size (MB), "GFLOPS" (2 x torchinfo mult-adds),
#: memory (MB); OneNet rows are the authors' -S models (with unused heads), so they are shown for -C and -S.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "unet4": {"params_m": 31.04, "param_mb": 124.03, "gflops": 104.72, "memory_mb": 509.61},
    "unet5": {"params_m": 124.42, "param_mb": 497.41, "gflops": 130.80, "memory_mb": 524.29},
    "resnet34_unet": {"params_m": 25.05, "param_mb": 98.07, "gflops": 29.40, "memory_mb": 241.17},
    "resnet50_unet": {"params_m": 74.07, "param_mb": 287.83, "gflops": 84.98, "memory_mb": 450.36},
    "mobilenet_unet4": {"params_m": 14.40, "param_mb": 57.47, "gflops": 83.96, "memory_mb": 671.09},
    "onenet_e4": {"params_m": 16.39, "param_mb": 65.42, "gflops": 78.42, "memory_mb": 639.63},
    "onenet_e5": {"params_m": 65.73, "param_mb": 262.63, "gflops": 98.82, "memory_mb": 656.41},
    "onenet_ed4": {"params_m": 9.08, "param_mb": 36.30, "gflops": 22.92, "memory_mb": 799.01},
    "onenet_ed5": {"params_m": 36.38, "param_mb": 145.47, "gflops": 39.00, "memory_mb": 885.00},
}
for _name in ("onenet_e4", "onenet_e5", "onenet_ed4", "onenet_ed5"):
    PAPER_TABLE2[_name + "_s"] = PAPER_TABLE2[_name]

#: the rows of the paper's Table 2, in its order
TABLE2_NETWORKS = (
    "unet4",
    "unet5",
    "resnet34_unet",
    "resnet50_unet",
    "mobilenet_unet4",
    "onenet_e4",
    "onenet_e5",
    "onenet_ed4",
    "onenet_ed5",
)

PAPER_NOTE = (
    "Paper's 'GFLOPS' = 2 x torchinfo mult-adds, which counts ConvTranspose2d 4x too high; ours are true FLOPs "
    "from torch.utils.flop_counter. Paper's OneNet rows are the authors' -S models with their unused heads."
)


def count_parameters(net: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in net.parameters())


def parameter_bytes(net: nn.Module) -> int:
    """Bytes of parameters and buffers (what a checkpoint of the weights holds)."""
    tensors = list(net.parameters()) + list(net.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def count_flops(net: nn.Module, shape: Sequence[int]) -> int:
    """FLOPs of one no-grad forward pass on an input of ``shape``, counted on the meta device (no computation).

    Args:
        net: the network (not modified: a meta copy is counted).
        shape: input shape, e.g. ``(1, 3, 256, 256)``.
    """
    meta = _meta_copy(net)
    x = torch.empty(*shape, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    return int(counter.get_total_flops())


def _meta_copy(net: nn.Module) -> nn.Module:
    import copy

    params = {id(p): p for p in net.parameters()}
    buffers = {id(b): b for b in net.buffers()}
    memo: dict[int, Any] = {}
    for key, tensor in {**params, **buffers}.items():
        moved = torch.empty_like(tensor, device="meta")
        memo[key] = nn.Parameter(moved, requires_grad=tensor.requires_grad) if key in params else moved
    return copy.deepcopy(net, memo).eval()


def peak_memory_bytes(net: nn.Module, shape: Sequence[int], device: str | torch.device = "cpu") -> int:
    """Peak bytes of tensors alive during one no-grad eval forward pass (input and output included, weights not).

    CPU: replays the allocation/free events recorded by ``torch.profiler`` (``profile_memory=True``) in time
    order and takes the maximum of the running total. CUDA: ``torch.cuda.max_memory_allocated`` minus the
    memory allocated before the pass (weights).
    """
    device = torch.device(device)
    net = net.to(device).eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            x = torch.randn(*shape, device=device)
            net(x)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            x = torch.randn(*shape)
            y = net(x)
            del x, y
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and "CPU" in str(e.device_type())
    ]
    events.sort(key=lambda event: event[0])
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return int(peak)


def measure_latency(
    nets: dict[str, nn.Module],
    shape: Sequence[int] = (1, 3, 256, 256),
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = 2,
    device: str | torch.device = "cpu",
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Wall times (seconds) of no-grad eval forward passes, the networks interleaved round by round.

    Args:
        nets: name -> network.
        shape: input shape.
        repeats: timed passes per network (take the median).
        warmup: untimed passes per network first.
        threads: ``torch.set_num_threads`` during the measurement (restored after); None keeps the current.
        device: where to run.
        clock: the timer.

    Returns:
        name -> list of ``repeats`` times in seconds.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}.")
    device = torch.device(device)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in nets}
    try:
        x = torch.randn(*shape, device=device)
        models = {name: net.to(device).eval() for name, net in nets.items()}
        with torch.no_grad():
            for net in models.values():
                for _ in range(warmup):
                    net(x)
            for _ in range(repeats):
                for name, net in models.items():
                    sync()
                    start = clock()
                    net(x)
                    sync()
                    times[name].append(clock() - start)
    finally:
        torch.set_num_threads(previous)
    return times


def profile_networks(
    names: Sequence[str] = TABLE2_NETWORKS,
    in_channels: int = 3,
    out_channels: int = 4,
    flop_sizes: Sequence[int] = (256, 512),
    size: int = 256,
    threads: int | None = 2,
    repeats: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    latency: bool = True,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Table 2 rows for registry networks.

    Args:
        names: registry names (``onenet_med.networks.list_networks()``).
        in_channels, out_channels: network channels (the paper: 3 and 4).
        flop_sizes: square input sizes at which FLOPs are counted.
        size: square input size for memory and latency.
        threads, repeats, warmup, device: latency settings (:func:`measure_latency`).
        latency: measure latency (False: skip the timing).
        overrides: constructor overrides passed to every network (e.g. ``features=8`` for quick checks).

    Returns:
        one dict per network with keys ``network, params, params_m, param_mb, gflops_<S>, peak_activation_mb,
        total_memory_mb, latency_ms, latency_ms_all, latency_plain_ms, latency_plain_ms_all, threads, paper``
        (``paper`` None where the paper has no row). Parameters, FLOPs and memory are those of the network as
        built; ``latency_ms`` is that of its inference copy, ``latency_plain_ms`` that of the network as built.
    """
    from onenet_med.networks import get_network, optimize_for_inference

    nets = {name: get_network(name, in_channels, out_channels, **overrides).eval() for name in names}
    rows: list[dict[str, Any]] = []
    for name, net in nets.items():
        row: dict[str, Any] = {"network": name, "params": count_parameters(net)}
        row["params_m"] = row["params"] / 1e6
        row["param_mb"] = parameter_bytes(net) / 1e6
        for s in flop_sizes:
            row[f"gflops_{s}"] = count_flops(net, (1, in_channels, s, s)) / 1e9
        peak = peak_memory_bytes(net, (1, in_channels, size, size), device=device)
        row["peak_activation_mb"] = peak / 1e6
        row["total_memory_mb"] = (peak + parameter_bytes(net)) / 1e6
        row["paper"] = PAPER_TABLE2.get(name) if (in_channels, out_channels, size) == (3, 4, 256) else None
        rows.append(row)
    if latency:
        timed = {name: optimize_for_inference(net) for name, net in nets.items()}
        timed.update({f"{name} (plain)": net for name, net in nets.items()})
        times = measure_latency(timed, (1, in_channels, size, size), repeats, warmup, threads, device)
        for row in rows:
            for key, name in (("latency_ms", row["network"]), ("latency_plain_ms", f"{row['network']} (plain)")):
                row[f"{key}_all"] = [t * 1e3 for t in times[name]]
                row[key] = statistics.median(row[f"{key}_all"])
    for row in rows:
        row["threads"] = threads
        row["input_size"] = size
        row["device"] = str(device)
    return rows


def format_table(rows: list[dict[str, Any]], flop_sizes: Sequence[int] = (256, 512)) -> str:
    """The rows as a text table, with the paper's values and the note on how the paper counted."""
    size = rows[0]["input_size"] if rows else 256
    head = ["network", "params M", "param MB"] + [f"GFLOPs@{s}" for s in flop_sizes]
    head += [f"peak act MB@{size}", "total MB", f"latency ms@{size}", "plain ms", "| paper: M", "MB", "GFLOPS"]
    head.append("mem MB")
    lines = [head]
    for row in rows:
        cells = [row["network"], f"{row['params_m']:.2f}", f"{row['param_mb']:.2f}"]
        cells += [f"{row[f'gflops_{s}']:.2f}" for s in flop_sizes]
        cells += [f"{row['peak_activation_mb']:.1f}", f"{row['total_memory_mb']:.1f}"]
        cells.append(f"{row['latency_ms']:.1f}" if "latency_ms" in row else "-")
        cells.append(f"{row['latency_plain_ms']:.1f}" if "latency_plain_ms" in row else "-")
        paper = row.get("paper")
        if paper:
            cells += [f"| {paper['params_m']:.2f}", f"{paper['param_mb']:.2f}", f"{paper['gflops']:.2f}"]
            cells.append(f"{paper['memory_mb']:.2f}")
        else:
            cells += ["| -", "-", "-", "-"]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines
    )
    threads = rows[0].get("threads") if rows else None
    device = rows[0].get("device") if rows else "cpu"
    footer = [
        PAPER_NOTE,
        "Peak activation memory: largest total of live tensors during one no-grad forward pass (torch.profiler "
        "allocation events on CPU); total adds parameters and buffers. MB = 10^6 bytes.",
        f"Latency: median of interleaved no-grad forward passes after warm-up, device {device}, threads {threads}: "
        "the inference copy (optimize_for_inference: BatchNorm folded, oneDNN on CPU); plain: the network as built.",
    ]
    return text + "\n\n" + "\n".join(footer)


def write_json(data: Any, path: str) -> None:
    """Write ``data`` as JSON through a temporary file in the same folder, then rename it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".profile-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``onenet-med profile`` (without importing the networks: ``onenet-med --help`` stays fast)."""
    parser = subparsers.add_parser(
        "profile",
        help="parameters, FLOPs, peak memory and CPU latency of networks (the paper's Table 2)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--networks",
        nargs="+",
        default=list(TABLE2_NETWORKS),
        metavar="NAME",
        help="registry names (default: the paper's Table 2 rows); an unknown name is rejected with the list",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the latency (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per network (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes per network first (default 2)")
    parser.add_argument("--size", type=int, default=256, help="input height/width for memory and latency")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--out-channels", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--no-latency", action="store_true", help="skip the timing")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise SystemExit(f"onenet-med profile: --threads must be >= 1, got {args.threads}")
    from onenet_med.networks import list_networks

    unknown = [name for name in args.networks if name not in list_networks()]
    if unknown:
        print(f"onenet-med profile: unknown network(s) {', '.join(unknown)}; choose from: {' '.join(list_networks())}")
        return 2
    rows = profile_networks(
        args.networks,
        in_channels=args.in_channels,
        out_channels=args.out_channels,
        size=args.size,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        latency=not args.no_latency,
    )
    print(format_table(rows))
    if args.json:
        write_json({"note": PAPER_NOTE, "rows": rows}, args.json)
        print(f"wrote {args.json}")
    return 0
