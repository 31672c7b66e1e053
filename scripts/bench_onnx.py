#!/usr/bin/env python
"""ONNX Runtime fp32 / int8 against PyTorch: speed, file size, logits, and the Dice of int8 on the demo.

Two parts (the issue's must-show for the ONNX Runtime backend):

``speed``: one network (default ``onenet_ed4`` at paper width, 1x3x256x256, random weights with BatchNorm statistics
of random inputs) as PyTorch (plain, and ``optimize_for_inference``), ONNX Runtime fp32 and ONNX Runtime int8
(static QDQ, per-channel weights, calibrated on ``--calibration-slices`` random N(0, 1) slices: the speed does not
depend on the calibration data; ``ort_int8`` keeps the first two convolutions float as ``onenet-med export`` does by
default, ``ort_int8_all`` quantizes every convolution), exported with ``onenet_med.inference.export`` exactly as
``onenet-med export`` does. All are timed in one interleaved run at each thread count
(``onenet_med.profiling.measure_latency``, ORT sessions with the same intra-op thread count), medians reported with
GFLOP/s (``torch.utils.flop_counter`` FLOPs of the plain network); the ORT sessions run with ONNX Runtime's thread
spinning off (``OnnxRuntimeNetwork(spinning=False)``), since sessions that take turns on the same cores otherwise
slow each other down (``--spinning`` keeps ORT's default to show it; ``--sequential`` times each model in its own
block of passes, as a user's single session runs); the file sizes, the largest |difference| of ORT fp32 logits from
PyTorch's, and the CPU's VNNI flag. ``--profile`` adds ONNX Runtime's per-operator profile (time by op type, int8
and fp32, at the largest thread count) and the op types that stay in float in the int8 graph after ORT's graph
optimisation. ``--plain`` also exports the network without the optimisation (BatchNorm as its own op) for
comparison; ``--no-bn-bound`` the network with every BatchNorm removed (Conv + ReLU only, the same convolutions):
what fp32 and int8 would cost if every BatchNorm were folded away, a bound for the analysis, not a model to use.

``dice``: a trained bundle (the demo, ``bundle_root`` holding ``models/model.pt``) exported as fp32 and int8
with ``onenet-med export`` (calibrated on the bundle's training data), the held-out validation case(s) predicted
with the torch backend and with ONNX Runtime fp32 and int8 (``Predictor``, same preprocessing, slicing and
inversion), Dice against the ground truth with the project's metric code (``onenet_med.metrics``, per 2D
slice and per case), the largest |difference| of fp32 ORT logits from PyTorch's on the held-out slices, and of
each float32 form (ORT, the torch backend, the trained network as it is) from the trained network run in
float64: how much of the difference is float32 rounding.

Usage::

    OMP_NUM_THREADS=2 python scripts/bench_onnx.py speed --threads 1 2 --repeats 7 [--profile] [--json out.json]
    OMP_NUM_THREADS=2 python scripts/bench_onnx.py dice --bundle bundles/onenet_demo --bundle-root runs/demo \\
        --dataset-dir data/Task00_MNI152Tissue --override network_def#features=16 [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from onenet_med.inference.backends import OnnxRuntimeNetwork, import_onnxruntime  # noqa: E402
from onenet_med.inference.cli import add_override_option  # noqa: E402
from onenet_med.inference.export import export_onnx, quantize_int8  # noqa: E402
from onenet_med.networks import get_network, list_networks, optimize_for_inference  # noqa: E402
from onenet_med.profiling import count_flops, measure_latency, write_json  # noqa: E402


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return f.read().strip()


def _has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any("avx512_vnni" in line or "avx_vnni" in line for line in f if line.startswith("flags"))
    except OSError:
        return False


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # the exporter's and the quantizer's progress messages


def _set_bn_statistics(net: torch.nn.Module, shape, seed: int = 0) -> None:
    """BatchNorm statistics of N(0, 1) inputs (a fresh network's are 0 / 1 and make no realistic activations)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        net.train()
        net(torch.randn(max(4, shape[0]), *shape[1:], generator=torch.Generator().manual_seed(seed)))
        net.eval()


def _without_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` with every BatchNorm replaced by the identity (for the analysis bound only)."""
    import copy

    bare = copy.deepcopy(net)
    for module in list(bare.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                setattr(module, child_name, torch.nn.Identity())
    return bare.eval()


def _op_profile(path: str, x: np.ndarray, threads: int, runs: int) -> dict[str, float]:
    """Milliseconds per run by op type from ONNX Runtime's profiler."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the timed sessions
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(os.path.dirname(path), "ort_profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: x})
    trace = session.end_profiling()
    with open(trace) as f:
        events = json.load(f)
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1000.0 / runs
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def _optimized_graph_ops(path: str) -> dict[str, int]:
    """Op types (domain-qualified) of the graph ONNX Runtime runs after its optimisations."""
    import onnx

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.optimized_model_filepath = path + ".ort_optimized.onnx"
    options.log_severity_level = 3
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    model = onnx.load(options.optimized_model_filepath)
    ops = collections.Counter((f"{n.domain}." if n.domain else "") + n.op_type for n in model.graph.node)
    return dict(ops.most_common())


def speed(args: argparse.Namespace) -> dict[str, Any]:
    _quiet()
    load_start = _loadavg()
    shape = tuple(args.shape)
    torch.manual_seed(0)
    overrides = {"features": args.width} if args.width else {}
    net = get_network(args.network, shape[1], args.out_channels, **overrides).eval()
    _set_bn_statistics(net, shape)
    optimized = optimize_for_inference(net)
    gflop = count_flops(net, shape) / 1e9
    work = args.workdir or tempfile.mkdtemp(prefix="bench_onnx_")
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((1, *shape[1:]), dtype=np.float32) for _ in range(args.calibration_slices)]
    files = {
        "ort_fp32": os.path.join(work, "fp32.onnx"),
        "ort_int8": os.path.join(work, "int8.onnx"),
        "ort_int8_all": os.path.join(work, "int8_all.onnx"),
    }
    start = time.perf_counter()
    export_onnx(optimize_for_inference(net, portable=True), files["ort_fp32"], shape[1])  # as onenet-med export
    quantize_int8(files["ort_fp32"], files["ort_int8"], calibration)  # as onenet-med export: first 2 convs float
    quantize_int8(files["ort_fp32"], files["ort_int8_all"], calibration, float_layers=0)
    variants = {"plain": net} if args.plain else {}
    if args.fast_path_form:
        variants["fast_path_form"] = optimized
    if args.no_bn_bound:
        variants["no_bn"] = _without_batchnorm(net)
    for tag, module in variants.items():
        files[f"ort_fp32_{tag}"] = os.path.join(work, f"fp32_{tag}.onnx")
        files[f"ort_int8_{tag}"] = os.path.join(work, f"int8_{tag}.onnx")
        export_onnx(module, files[f"ort_fp32_{tag}"], shape[1])
        quantize_int8(files[f"ort_fp32_{tag}"], files[f"ort_int8_{tag}"], calibration)
    export_seconds = time.perf_counter() - start
    sizes = {k: os.path.getsize(p) for k, p in files.items()}

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_plain, ref_optimized = net(x), optimized(x)
    fp32_out = OnnxRuntimeNetwork(files["ort_fp32"])(x)
    logits = {
        "max_abs_logit": float(ref_plain.abs().max()),
        "ort_fp32_vs_torch_plain": float((fp32_out - ref_plain).abs().max()),
        "ort_fp32_vs_torch_optimized": float((fp32_out - ref_optimized).abs().max()),
        "int8_argmax_agreement_with_fp32": float(
            (OnnxRuntimeNetwork(files["ort_int8"])(x).argmax(1) == fp32_out.argmax(1)).float().mean()
        ),
    }

    results: dict[str, Any] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        models = {} if args.skip_torch else {"torch_plain": net, "torch_optimized": optimized}
        # spinning off: the sessions take turns with each other and with torch on the same cores, and an idle
        # session's spin-waiting threads would hold the cores of the one running (2 threads: int8 66 -> 39 ms)
        models.update({k: OnnxRuntimeNetwork(p, threads=threads, spinning=args.spinning) for k, p in files.items()})
        if args.sequential:  # each model in its own block of passes: nothing else runs between its passes
            times = {}
            for name, model in models.items():
                times.update(
                    measure_latency({name: model}, shape, repeats=args.repeats, warmup=args.warmup, threads=threads)
                )
        else:
            times = measure_latency(models, shape, repeats=args.repeats, warmup=args.warmup, threads=threads)
        results[threads] = {
            name: {
                "median_ms": statistics.median(t) * 1e3,
                "min_ms": min(t) * 1e3,
                "gflop_per_s": gflop / statistics.median(t),
            }
            for name, t in times.items()
        }
    profile = {}
    if args.profile:
        threads = max(args.threads)
        for key in ("ort_fp32", "ort_int8"):
            profile[key] = _op_profile(files[key], x.numpy(), threads, args.repeats)
        profile["int8_graph_ops_after_ort_optimisation"] = _optimized_graph_ops(files["ort_int8"])
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "network": args.network,
        "width": args.width,
        "shape": list(shape),
        "gflop": gflop,
        "repeats": args.repeats,
        "calibration_slices": args.calibration_slices,
        "export_seconds": export_seconds,
        "bytes": sizes,
        "int8_over_fp32_bytes": sizes["ort_int8"] / sizes["ort_fp32"],
        "logits": logits,
        "latency": results,
        "profile_ms_per_run": profile,
        "ort_spinning": args.spinning,
        "sequential": args.sequential,
        "cpu_vnni": _has_vnni(),
        "onnxruntime": import_onnxruntime().__version__,
        "torch": torch.__version__,
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
    }


def print_speed(r: dict[str, Any]) -> None:
    shape = "x".join(str(s) for s in r["shape"])
    print(
        f"{r['network']} (width {r['width'] or 'default'}), input {shape}, {r['gflop']:.2f} GFLOP, "
        f"median of {r['repeats']} {'passes, each model on its own' if r['sequential'] else 'interleaved passes'}; "
        f"onnxruntime {r['onnxruntime']}, torch {r['torch']}, "
        f"AVX-512 VNNI: {r['cpu_vnni']}; ORT thread spinning {'on' if r['ort_spinning'] else 'off'}"
    )
    print(f"load average at start: {r['loadavg_start']}; at end: {r['loadavg_end']}")
    for threads, rows in r["latency"].items():
        print(f"\n{threads} thread(s)        median ms   min ms   GFLOP/s")
        for name, row in rows.items():
            print(f"  {name:18s} {row['median_ms']:9.1f} {row['min_ms']:8.1f} {row['gflop_per_s']:9.1f}")
        fp32, int8, int8_all = (rows[k]["median_ms"] for k in ("ort_fp32", "ort_int8", "ort_int8_all"))
        print(
            f"  ORT int8 speed-up over ORT fp32: {fp32 / int8:.2f}x as exported (first 2 convs float), "
            f"{fp32 / int8_all:.2f}x all int8 (target >= 2 at 2 threads)"
        )
    b = r["bytes"]
    print(
        f"\nfiles: fp32 {b['ort_fp32'] / 1e6:.2f} MB, int8 {b['ort_int8'] / 1e6:.2f} MB: "
        f"int8 = {r['int8_over_fp32_bytes']:.1%} of fp32 (target <= 30%)"
    )
    lg = r["logits"]
    print(
        f"ORT fp32 vs torch (random input, max |logit| {lg['max_abs_logit']:.2f}): "
        f"{lg['ort_fp32_vs_torch_plain']:.2e} (plain), {lg['ort_fp32_vs_torch_optimized']:.2e} (optimized); "
        f"int8 argmax = fp32 on {lg['int8_argmax_agreement_with_fp32']:.1%} of pixels"
    )
    for key, ops in r["profile_ms_per_run"].items():
        unit = "" if "graph" in key else " ms"
        print(f"\n{key}: " + ", ".join(f"{op} {v:.1f}{unit}" if unit else f"{op} {v}" for op, v in ops.items()))


def dice(args: argparse.Namespace) -> dict[str, Any]:
    from onenet_med.bundle import load_bundle_config, saved_datalists
    from onenet_med.inference import Predictor
    from onenet_med.inference.cli import parse_overrides
    from onenet_med.inference.export import export_bundle
    from onenet_med.metrics import segmentation_metrics

    _quiet()
    load_start = _loadavg()
    overrides = {**parse_overrides(args.override), "bundle_root": os.path.abspath(args.bundle_root)}
    if args.dataset_dir:
        overrides["dataset_dir"] = os.path.abspath(args.dataset_dir)
    checkpoint = os.path.join(args.bundle_root, "models", "model.pt")
    out = args.out or os.path.join(args.bundle_root, "exported")
    records = {
        fmt: export_bundle(
            args.bundle,
            out,
            fmt,
            checkpoint=checkpoint,
            overrides=overrides,
            calibration_count=args.calibration_slices,
            float_layers=args.float_layers,
        )
        for fmt in ("onnx", "onnx-int8")
    }
    parser = load_bundle_config(args.bundle, overrides, checkpoint=checkpoint)  # the task.json beside it
    spec = parser.get_parsed_content("task_spec")
    cases = saved_datalists(parser, splits=("validation",))[0]["validation"]  # the training run's held-out cases
    predictors = {
        "torch": Predictor.from_bundle(args.bundle, checkpoint=checkpoint, overrides=overrides, device="cpu"),
        "ort_fp32": Predictor.from_bundle(
            args.bundle, overrides=overrides, backend="onnxruntime", model=records["onnx"]["file"]
        ),
        "ort_int8": Predictor.from_bundle(
            args.bundle, overrides=overrides, backend="onnxruntime", model=records["onnx-int8"]["file"]
        ),
    }
    scores: dict[str, Any] = {name: [] for name in predictors}
    labels_equal: dict[str, list[float]] = {name: [] for name in predictors}
    max_diff = max_diff_plain = 0.0
    # the trained network as it is (the torch predictor runs its optimize_for_inference copy)
    plain_network = Predictor.from_bundle(
        args.bundle, checkpoint=checkpoint, overrides=overrides, device="cpu", optimize=False
    ).network
    float64_network = copy.deepcopy(plain_network).double()
    from_float64 = dict.fromkeys(("ort_fp32", "torch", "torch_plain"), 0.0)
    import nibabel as nib

    for case in cases:
        truth = torch.as_tensor(np.asarray(nib.load(case["label"]).dataobj).astype(np.int64))
        reference = None
        for name, predictor in predictors.items():
            labels = predictor.predict_volume(case["image"]).labels
            onehot = torch.nn.functional.one_hot(torch.as_tensor(labels).long(), spec.num_classes)
            # (1, K, X, Y, Z) scores of +-1 whose argmax is the labels (the metrics refuse one-hot maps as logits)
            logits = onehot.permute(3, 0, 1, 2)[None].float() * 2 - 1
            scores[name].append(segmentation_metrics(logits, truth[None, None], spec.num_classes, spec.class_names))
            reference = labels if reference is None else reference
            labels_equal[name].append(float((labels == reference).mean()))
        # logits on the held-out slices after the bundle's preprocessing: ORT fp32 against the trained network
        image = predictors["torch"].preprocessing({"image": case["image"]})["image"].as_tensor()
        x = image.permute(3, 0, 1, 2).contiguous()
        with torch.no_grad():
            expected = predictors["torch"].network(x)
            trained = plain_network(x)
            ort_fp32 = predictors["ort_fp32"].network(x)
            exact = float64_network(x.double())  # what float32 rounding is measured against
        max_diff = max(max_diff, float((ort_fp32 - expected).abs().max()))
        max_diff_plain = max(max_diff_plain, float((ort_fp32 - trained).abs().max()))
        for name, logits in (("ort_fp32", ort_fp32), ("torch", expected), ("torch_plain", trained)):
            from_float64[name] = max(from_float64[name], float((logits.double() - exact).abs().max()))
    summary = {
        name: {
            key: float(np.mean([s[key] for s in per_case]))
            for key in per_case[0]
            if not key.startswith(("ap50", "map50", "ce"))
        }
        for name, per_case in scores.items()
    }
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "cases": [c["image"] for c in cases],
        "calibration_slices": records["onnx-int8"]["quantization"]["calibration_slices"],
        "float_layers": records["onnx-int8"]["quantization"]["float_layers"],
        "bytes": {fmt: rec["bytes"] for fmt, rec in records.items()},
        "metrics": summary,
        "labels_equal_to_torch": {k: float(np.mean(v)) for k, v in labels_equal.items()},
        "ort_fp32_max_abs_logit_diff_on_held_out_slices": max_diff,
        "ort_fp32_max_abs_logit_diff_from_plain_on_held_out_slices": max_diff_plain,
        "max_abs_logit_diff_from_float64_on_held_out_slices": from_float64,
        "int8_dice_minus_fp32": summary["ort_int8"]["dice"] - summary["ort_fp32"]["dice"],
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
    }


def print_dice(r: dict[str, Any]) -> None:
    print(
        f"held-out case(s): {', '.join(r['cases'])}; int8 calibrated on {r['calibration_slices']} training slices, "
        f"float layers {r['float_layers']}"
    )
    print(f"load average at start: {r['loadavg_start']}; at end: {r['loadavg_end']}")
    keys = ["dice"] + [k for k in r["metrics"]["torch"] if k.startswith("dice_")] + ["volume_dice"]
    print(f"{'backend':10s} " + " ".join(f"{k[:22]:>22s}" for k in keys) + f" {'labels = torch':>15s}")
    for name, m in r["metrics"].items():
        row = " ".join(f"{m[k]:22.4f}" for k in keys)
        print(f"{name:10s} {row} {r['labels_equal_to_torch'][name]:15.4%}")
    print(f"int8 mean Dice - fp32 mean Dice: {r['int8_dice_minus_fp32']:+.4f} (target within 0.01)")
    print(
        f"ORT fp32 logits vs PyTorch on the held-out slices: max |diff| "
        f"{r['ort_fp32_max_abs_logit_diff_on_held_out_slices']:.2e} against the torch backend "
        f"(optimize_for_inference), {r['ort_fp32_max_abs_logit_diff_from_plain_on_held_out_slices']:.2e} against the "
        "trained network as it is (target <= 1e-4)"
    )
    print(
        "float32 rounding, max |diff| from the trained network run in float64: "
        + ", ".join(f"{k} {v:.2e}" for k, v in r["max_abs_logit_diff_from_float64_on_held_out_slices"].items())
    )
    print(f"files: {', '.join(f'{k} {v / 1e6:.2f} MB' for k, v in r['bytes'].items())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    s = sub.add_parser("speed", help="latency of torch / ORT fp32 / ORT int8, file sizes, op profile")
    s.add_argument("--network", default="onenet_ed4", choices=list_networks())
    s.add_argument("--width", type=int, default=None, help="features (default: the network's, 64)")
    s.add_argument("--shape", type=int, nargs=4, default=[1, 3, 256, 256], metavar=("B", "C", "H", "W"))
    s.add_argument("--out-channels", type=int, default=4)
    s.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    s.add_argument("--repeats", type=int, default=7)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--calibration-slices", type=int, default=16)
    s.add_argument(
        "--spinning", action="store_true", help="keep ONNX Runtime's thread spinning on in the timed sessions"
    )
    s.add_argument(
        "--sequential",
        action="store_true",
        help="time each model in its own block of passes instead of interleaving them (as one user session runs)",
    )
    s.add_argument("--profile", action="store_true", help="ORT per-op profile and the int8 graph's op types")
    s.add_argument("--plain", action="store_true", help="also export the network without optimize_for_inference")
    s.add_argument(
        "--fast-path-form",
        action="store_true",
        help="also export optimize_for_inference's CPU fast-path form (grouped pixel-shuffle channel order: "
        "Reshape -> 6-D Transpose -> Reshape) instead of the portable one that onenet-med export writes",
    )
    s.add_argument(
        "--skip-torch",
        action="store_true",
        help="time only the ONNX Runtime sessions (the int8/fp32 ratio without the PyTorch passes in between)",
    )
    s.add_argument("--no-bn-bound", action="store_true", help="also the network without BatchNorm (analysis bound)")
    s.add_argument("--workdir", default=None, help="where the ONNX files go (default: a temporary folder)")
    s.add_argument("--json", default=None)
    d = sub.add_parser("dice", help="held-out Dice of torch / ORT fp32 / ORT int8 for a trained bundle")
    d.add_argument("--bundle", required=True)
    d.add_argument("--bundle-root", required=True, help="the training's bundle_root (models/model.pt)")
    d.add_argument("--dataset-dir", default=None)
    add_override_option(d)
    d.add_argument("--calibration-slices", type=int, default=64)
    d.add_argument("--float-layers", type=int, default=2, help="leading convolutions kept float in int8 (export's)")
    d.add_argument("--out", default=None, help="export folder (default <bundle-root>/exported)")
    d.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = speed(args) if args.part == "speed" else dice(args)
    (print_speed if args.part == "speed" else print_dice)(result)
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
