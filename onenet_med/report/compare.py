"""The report of ``onenet-med compare`` (:mod:`onenet_med.compare`): ``report.md`` and its PNG plots, from the
``results.json`` document that :func:`onenet_med.compare.compare` assembles.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_report"]


def _class_results(metrics: Mapping[str, Any], class_names: Sequence[str], metric: str) -> dict[str, float | None]:
    values = {c: metrics.get("per_class", {}).get(c, {}).get(metric) for c in class_names}
    values["mean"] = metrics.get(metric)
    return values


def _overlay_slices(truth, count: int = 4) -> list[int]:
    """``count`` axial slices spread over the labelled extent of ``truth`` (H, W, D)."""
    import numpy as np

    z = np.flatnonzero(np.asarray(truth).reshape(-1, truth.shape[-1]).any(0))
    if len(z) == 0:
        z = np.arange(truth.shape[-1])
    picks = np.linspace(z[0], z[-1], count + 2)[1:-1] if len(z) > count else z
    return sorted({int(round(p)) for p in picks})


def _canonical(path: str | os.PathLike):
    import nibabel as nib
    import numpy as np

    img = nib.as_closest_canonical(nib.load(os.fspath(path)))
    data = np.asanyarray(img.dataobj)
    return (data[..., 0] if data.ndim == 4 else data), float(np.prod(img.header.get_zooms()[:3]))


def write_report(
    results: Mapping[str, Any],
    output_dir: str | os.PathLike,
    predict_input: str | None = None,
    held_out: Sequence[Mapping[str, Any]] = (),
) -> dict[str, str]:
    """Plots and ``report.md`` of a :func:`onenet_med.compare.compare` result into ``output_dir``; returns name -> path
    of each file."""
    from onenet_med.engine.atomic import atomic_write_text
    from onenet_med.metrics import DEFINITIONS, format_table
    from onenet_med.report.curves import RunCurves
    from onenet_med.report.plots import plot_class_dice, plot_dice_curves, plot_loss_curves, plot_overlays
    from onenet_med.report.summary import label_volumes_ml, markdown_table

    out = Path(output_dir)
    nets: Mapping[str, Any] = results["networks"]
    class_names = list(results["class_names"])
    fg = class_names[1:]
    task = results["task"]
    runs = {
        n: RunCurves(
            train_loss=[tuple(p) for p in e["curves"]["train_loss"]],
            validation={k: [tuple(p) for p in v] for k, v in e["curves"]["validation"].items()},
            epoch_length=e["training"]["epoch_length"],
        )
        for n, e in nets.items()
    }
    files = {
        "loss_curves": plot_loss_curves(runs, out / "loss_curves.png"),
        "dice_curves": plot_dice_curves(runs, fg, out / "dice_curves.png", metric="dice"),
        "class_dice": plot_class_dice(
            {n: _class_results(e["metrics"], fg, "dice") for n, e in nets.items()},
            fg,
            out / "class_dice.png",
            title=f"Per-class Dice (per 2D slice) on the held-out {task} cases",
        ),
    }
    if any("volume_dice" in e["metrics"] for e in nets.values()):
        files["class_volume_dice"] = plot_class_dice(
            {n: _class_results(e["metrics"], fg, "volume_dice") for n, e in nets.items()},
            fg,
            out / "class_volume_dice.png",
            title=f"Per-class Dice (per 3D case) on the held-out {task} cases",
        )
    predictions = {n: e["prediction"] for n, e in nets.items() if e.get("prediction")}
    volume_rows: list[list[Any]] = []
    if predictions and predict_input:
        image, _ = _canonical(predict_input)
        same = [i for i in held_out if os.path.abspath(i["image"]) == os.path.abspath(predict_input)]
        truth_path = same[0].get("label") if same else None
        truth, voxel = _canonical(truth_path) if truth_path else (None, None)
        preds = {}
        for n, p in predictions.items():
            preds[n], voxel_pred = _canonical(p)
            volumes = label_volumes_ml(preds[n], voxel_pred, class_names)
            volume_rows.append([f"{n} prediction", *volumes.values()])
        if truth is not None:
            volume_rows.insert(0, ["ground truth", *label_volumes_ml(truth, voxel, class_names).values()])
        slices = _overlay_slices(truth if truth is not None else next(iter(preds.values())))
        files["overlays"] = plot_overlays(
            image,
            truth,
            preds,
            slices,
            class_names,
            out / "overlays.png",
            title=f"Prediction vs ground truth: {os.path.basename(predict_input)} (held-out), axial slices",
        )

    lines = [f"# Model comparison on `{task}` ({os.path.basename(results['bundle'])})", ""]
    lines += [
        f"Networks: {', '.join(nets)}. Trained on {len(results['train_cases'])} case(s) "
        f"({', '.join(map(str, results['train_cases']))}), evaluated on the held-out case(s) "
        f"{', '.join(map(str, results['held_out_cases']))} with the best checkpoint by validation Dice on those "
        "same cases (no separate test split).",
        "",
    ]
    if results.get("checks"):
        lines += ["## Checks", ""]
        for c in results["checks"]:
            measured = "–" if c["measured"] is None else f"{c['measured']:.4f}"
            lines.append(f"- {'PASS' if c['passed'] else 'FAIL'}: {c['check']} (measured {measured})")
        lines.append("")
    lines += ["## Table 1: metrics on the held-out cases (paper layout)", ""]
    lines.append(format_table([{"model": n, "task": task, "results": e["metrics"]} for n, e in nets.items()]))
    for metric, label in (("dice", "per 2D slice"), ("volume_dice", "per 3D case")):
        if any(metric in e["metrics"] for e in nets.values()):
            lines += [f"Per-class Dice ({label}):", ""]
            rows = [[n, *_class_results(e["metrics"], fg, metric).values()] for n, e in nets.items()]
            lines.append(markdown_table(["Method", *fg, "mean"], rows))
    lines += ["## Table 2: size and speed", ""]
    shape = results.get("profile_input")
    rows = []
    for n, e in nets.items():
        prof, tr = e.get("profile", {}), e["training"]
        rows.append(
            [
                n,
                prof.get("params", 0) / 1e6 if prof else None,
                prof.get("param_mb"),
                prof.get("gflops"),
                prof.get("latency_ms"),
                tr["iterations"],
                tr["s_per_iteration"],
                e["seconds"].get("train"),
                e["seconds"].get("evaluate"),
            ]
        )
    lines.append(
        markdown_table(
            [
                "Method",
                "Params (M)",
                "Param size (MB)",
                f"GFLOPs / slice {tuple(shape) if shape else ''}",
                "Latency / slice (ms)",
                "Train iterations",
                "s / iteration",
                "Train wall (s)",
                "Evaluate wall (s)",
            ],
            rows,
            digits=3,
        )
    )
    lines += [
        "GFLOPs: true FLOPs of one forward pass (torch.utils.flop_counter; a multiply-add = 2). Latency: median "
        f"no-grad forward pass of one slice (batch 1) on this machine ({results.get('profile_threads') or 'default'} "
        "thread(s)). s / iteration: median training step from the "
        "TensorBoard wall times (validation excluded). Wall times include process start-up, data loading, "
        "validation and checkpoints. A shared machine makes every timing noisy; compare rows of the same run.",
        "",
        "## Plots",
        "",
    ]
    for key, caption in (
        ("loss_curves", "Loss per epoch"),
        ("dice_curves", "Validation Dice per epoch"),
        ("class_dice", "Per-class Dice (per slice)"),
        ("class_volume_dice", "Per-class Dice (per 3D case)"),
        ("overlays", "Prediction vs ground truth"),
    ):
        if key in files:
            lines += [f"![{caption}]({os.path.basename(files[key])})", ""]
    if predictions:
        lines += ["## Slice-wise prediction", ""]
        lines += [f"Input: `{predict_input}`", ""]
        lines += [f"- {n}: `{os.path.relpath(p, out)}`" for n, p in predictions.items()]
        lines.append("")
        if volume_rows:
            lines += ["Volumes (mL):", "", markdown_table(["", *class_names[1:]], volume_rows, digits=1)]
    lines += ["## Exact commands", "", "```bash", *results.get("setup_commands", []), results["command"], "```", ""]
    lines += ["Which ran, per network (train, evaluate, predict):", ""]
    for n, e in nets.items():
        lines += [f"`{n}`:", "", "```bash", *e["commands"].values(), "```", ""]
    m = results["machine"]
    lines += ["## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in m.items()]
    lines += ["", f"Total wall time of the runs: {results['total_seconds']:.0f} s.", "", "## Definitions", ""]
    lines += [f"- **{k}**: {v}" for k, v in DEFINITIONS.items()]
    files["report"] = str(out / "report.md")
    atomic_write_text(files["report"], "\n".join(lines) + "\n")
    return {k: str(v) for k, v in files.items()}
