"""The report of ``onenet-med compare`` (:mod:`onenet_med.compare`): ``report.md`` and its PNG plots, from the
``results.json`` document that :func:`onenet_med.compare.compare` assembles.

The report is two ordered lists, so that a new figure or table is one function added to one of them:

* :data:`PLOTS`: ``(key, caption, function)``; each function draws one PNG into the report folder (or returns
  ``None`` when the results have nothing to draw) and the figure is shown under "Plots" with its caption;
* :data:`SECTIONS`: functions returning the Markdown lines of one section, in report order.

Both take a :class:`ReportInputs` (the results, the folder, the prediction input and its ground truth).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

__all__ = ["PLOTS", "SECTIONS", "ReportInputs", "write_report"]


@dataclass
class ReportInputs:
    """What every plot and section reads.

    Attributes:
        results: the ``results.json`` document of :func:`onenet_med.compare.compare`.
        output_dir: the report folder.
        predict_input: the volume every network predicted (``None`` without predictions).
        held_out: the held-out data items (``{"image", "label"}``), to find ``predict_input``'s ground truth.
        files: name -> path of every file written so far (plots, then ``report``).
    """

    results: Mapping[str, Any]
    output_dir: Path
    predict_input: str | None = None
    held_out: Sequence[Mapping[str, Any]] = ()
    files: dict[str, str] = field(default_factory=dict)

    @property
    def networks(self) -> Mapping[str, Any]:
        return self.results["networks"]

    @property
    def class_names(self) -> list[str]:
        return list(self.results["class_names"])

    @property
    def foreground(self) -> list[str]:
        return self.class_names[1:]

    @property
    def task(self) -> str:
        return self.results["task"]

    @property
    def predictions(self) -> dict[str, str]:
        """Network -> its predicted label volume of ``predict_input``."""
        return {n: e["prediction"] for n, e in self.networks.items() if e.get("prediction")}

    def class_results(self, metric: str) -> dict[str, dict[str, float | None]]:
        """Network -> ``{class: value, ..., "mean": value}`` of ``metric`` (``dice``, ``volume_dice``)."""
        return {n: _class_results(e["metrics"], self.foreground, metric) for n, e in self.networks.items()}

    def has_metric(self, metric: str) -> bool:
        return any(metric in e["metrics"] for e in self.networks.values())

    @cached_property
    def frontier(self) -> list[dict[str, Any]]:
        """:func:`onenet_med.report.frontier.frontier_rows` of the results (empty without a profile)."""
        from onenet_med.report.frontier import frontier_rows

        return frontier_rows(self.results)

    @cached_property
    def volumes(self) -> dict[str, Any] | None:
        """The prediction input in canonical (RAS) orientation: ``image``, ``truth`` (or None), ``predictions``
        (network -> labels) and ``rows`` (label volumes in mL per class, ground truth first); None without
        predictions."""
        from onenet_med.report.summary import label_volumes_ml

        if not self.predictions or not self.predict_input:
            return None
        image, _ = _canonical(self.predict_input)
        same = [i for i in self.held_out if os.path.abspath(i["image"]) == os.path.abspath(self.predict_input)]
        truth_path = same[0].get("label") if same else None
        truth, voxel = _canonical(truth_path) if truth_path else (None, None)
        preds, rows = {}, []
        for n, p in self.predictions.items():
            preds[n], voxel_pred = _canonical(p)
            rows.append([f"{n} prediction", *label_volumes_ml(preds[n], voxel_pred, self.class_names).values()])
        if truth is not None:
            rows.insert(0, ["ground truth", *label_volumes_ml(truth, voxel, self.class_names).values()])
        return {"image": image, "truth": truth, "predictions": preds, "rows": rows}


# ------------------------------------------------------------------------------------------------ plots


def _run_curves(inputs: ReportInputs) -> dict[str, Any]:
    from onenet_med.report.curves import RunCurves

    return {
        n: RunCurves(
            train_loss=[tuple(p) for p in e["curves"]["train_loss"]],
            validation={k: [tuple(p) for p in v] for k, v in e["curves"]["validation"].items()},
            epoch_length=e["training"]["epoch_length"],
        )
        for n, e in inputs.networks.items()
    }


def plot_loss(inputs: ReportInputs) -> str:
    from onenet_med.report.plots import plot_loss_curves

    return plot_loss_curves(_run_curves(inputs), inputs.output_dir / "loss_curves.png")


def plot_dice(inputs: ReportInputs) -> str:
    from onenet_med.report.plots import plot_dice_curves

    return plot_dice_curves(_run_curves(inputs), inputs.foreground, inputs.output_dir / "dice_curves.png", "dice")


def plot_slice_dice(inputs: ReportInputs) -> str:
    from onenet_med.report.plots import plot_class_dice

    title = f"Per-class Dice (per 2D slice) on the held-out {inputs.task} cases"
    return plot_class_dice(
        inputs.class_results("dice"), inputs.foreground, inputs.output_dir / "class_dice.png", title=title
    )


def plot_volume_dice(inputs: ReportInputs) -> str | None:
    from onenet_med.report.plots import plot_class_dice

    if not inputs.has_metric("volume_dice"):
        return None
    title = f"Per-class Dice (per 3D case) on the held-out {inputs.task} cases"
    path = inputs.output_dir / "class_volume_dice.png"
    return plot_class_dice(inputs.class_results("volume_dice"), inputs.foreground, path, title=title)


def plot_prediction_overlays(inputs: ReportInputs) -> str | None:
    from onenet_med.report.plots import plot_overlays

    volumes = inputs.volumes
    if volumes is None:
        return None
    truth = volumes["truth"]
    slices = _overlay_slices(truth if truth is not None else next(iter(volumes["predictions"].values())))
    name = os.path.basename(inputs.predict_input or "")
    return plot_overlays(
        volumes["image"],
        truth,
        volumes["predictions"],
        slices,
        inputs.class_names,
        inputs.output_dir / "overlays.png",
        title=f"Prediction vs ground truth: {name} (held-out), axial slices",
    )


def plot_accuracy_latency(inputs: ReportInputs) -> str | None:
    from onenet_med.report.plots import plot_frontier

    rows = inputs.frontier
    if not rows:
        return None
    title = f"Held-out mean Dice against latency per slice on {inputs.task} (numbers: widths; ringed: Pareto-optimal)"
    return plot_frontier(rows, _thread_keys(inputs), inputs.output_dir / "frontier.png", title=title)


#: ``(key, caption, plot function)`` in the order the figures appear; a function returns the PNG path or None.
PLOTS: list[tuple[str, str, Callable[[ReportInputs], str | None]]] = [
    ("loss_curves", "Loss per epoch", plot_loss),
    ("dice_curves", "Validation Dice per epoch", plot_dice),
    ("class_dice", "Per-class Dice (per slice)", plot_slice_dice),
    ("class_volume_dice", "Per-class Dice (per 3D case)", plot_volume_dice),
    ("overlays", "Prediction vs ground truth", plot_prediction_overlays),
    ("frontier", "Accuracy against latency per slice", plot_accuracy_latency),
]


# ------------------------------------------------------------------------------------------------ sections


def section_title(inputs: ReportInputs) -> list[str]:
    r = inputs.results
    return [
        f"# Model comparison on `{inputs.task}` ({os.path.basename(r['bundle'])})",
        "",
        f"Networks: {', '.join(inputs.networks)}. Trained on {len(r['train_cases'])} case(s) "
        f"({', '.join(map(str, r['train_cases']))}), evaluated on the held-out case(s) "
        f"{', '.join(map(str, r['held_out_cases']))} with the best checkpoint by validation Dice on those "
        "same cases (no separate test split).",
        "",
    ]


def section_checks(inputs: ReportInputs) -> list[str]:
    checks = inputs.results.get("checks")
    if not checks:
        return []
    lines = ["## Checks", ""]
    for c in checks:
        measured = "–" if c["measured"] is None else f"{c['measured']:.4f}"
        lines.append(f"- {'PASS' if c['passed'] else 'FAIL'}: {c['check']} (measured {measured})")
    return [*lines, ""]


def section_table1(inputs: ReportInputs) -> list[str]:
    from onenet_med.metrics import format_table
    from onenet_med.report.summary import markdown_table

    lines = ["## Table 1: metrics on the held-out cases (paper layout)", ""]
    rows = [{"model": n, "task": inputs.task, "results": e["metrics"]} for n, e in inputs.networks.items()]
    lines.append(format_table(rows))
    for metric, label in (("dice", "per 2D slice"), ("volume_dice", "per 3D case")):
        if inputs.has_metric(metric):
            lines += [f"Per-class Dice ({label}):", ""]
            per_class = [[n, *values.values()] for n, values in inputs.class_results(metric).items()]
            lines.append(markdown_table(["Method", *inputs.foreground, "mean"], per_class))
    return lines


def _thread_keys(inputs: ReportInputs) -> list[str]:
    """The thread counts of the latency profile (``results["profile_threads"]``), as the profile's keys."""
    return [str(t) for t in inputs.results.get("profile_threads") or []]


def section_table2(inputs: ReportInputs) -> list[str]:
    from onenet_med.report.summary import markdown_table

    shape = inputs.results.get("profile_input")
    threads = _thread_keys(inputs)
    rows = []
    for n, e in inputs.networks.items():
        prof, tr = e.get("profile", {}), e["training"]
        latency = [prof.get(k, {}).get(t) for k in ("latency_ms", "latency_plain_ms") for t in threads]
        rows.append(
            [
                n,
                prof.get("params", 0) / 1e6 if prof else None,
                prof.get("param_mb"),
                prof.get("gflops"),
                *latency,
                tr["iterations"],
                tr["s_per_iteration"],
                e["seconds"].get("train"),
                e["seconds"].get("evaluate"),
            ]
        )
    header = [
        "Method",
        "Params (M)",
        "Param size (MB)",
        f"GFLOPs / slice {tuple(shape) if shape else ''}",
        *[f"Latency / slice (ms), {t} thread(s)" for t in threads],
        *[f"Plain network (ms), {t} thread(s)" for t in threads],
        "Train iterations",
        "s / iteration",
        "Train wall (s)",
        "Evaluate wall (s)",
    ]
    return [
        "## Table 2: size and speed",
        "",
        markdown_table(header, rows, digits=3),
        "GFLOPs: true FLOPs of one forward pass (torch.utils.flop_counter; a multiply-add = 2). Latency: median of "
        f"{inputs.results.get('profile_repeats', 5)} no-grad forward passes of one slice (batch 1) on this machine by "
        "the inference copy that prediction uses (onenet_med.networks.optimize_for_inference: BatchNorm folded, oneDNN "
        "on CPU), at each thread count; plain "
        "network: the trained modules in eval mode. All networks and thread counts are timed in the same interleaved "
        "rounds. s / iteration: median training step from the TensorBoard wall times (validation excluded). Wall "
        "times include process start-up, data loading, validation and checkpoints. A shared machine makes every "
        "timing noisy; compare rows of the same run.",
        "",
    ]


def section_frontier(inputs: ReportInputs) -> list[str]:
    from onenet_med.report.summary import markdown_table

    rows, threads = inputs.frontier, _thread_keys(inputs)
    if not rows:
        return []
    header = ["Method", "Width", "Mean Dice", "GFLOPs / slice"]
    header += [f"Latency (ms), {t} thread(s)" for t in threads] + [f"Pareto-optimal, {t} thread(s)" for t in threads]
    table = [
        [r["label"], r["width"], r["accuracy"], r["gflops"], *(r["latency_ms"][t] for t in threads),
         *("yes" if r["pareto"][t] else "" for t in threads)]
        for r in rows
    ]  # fmt: skip
    lines = ["## Accuracy against latency", "", markdown_table(header, table, digits=3)]
    lines.append(
        "Mean Dice: held-out, per 2D slice (Table 1); latency: the inference copy of Table 2, one slice at batch 1, "
        "all networks and thread counts in the same interleaved rounds. Pareto-optimal: no other network here is "
        "at least as fast and at least as accurate (one of the two strictly) at that thread count."
    )
    if "frontier" in inputs.files:
        lines += ["", f"![Accuracy against latency per slice]({os.path.basename(inputs.files['frontier'])})"]
    return [*lines, ""]


def section_plots(inputs: ReportInputs) -> list[str]:
    lines = ["## Plots", ""]
    for key, caption, _ in PLOTS:
        if key in inputs.files and key != "frontier":  # the frontier is shown under its table
            lines += [f"![{caption}]({os.path.basename(inputs.files[key])})", ""]
    return lines


def section_prediction(inputs: ReportInputs) -> list[str]:
    from onenet_med.report.summary import markdown_table

    predictions = inputs.predictions
    if not predictions:
        return []
    lines = ["## Slice-wise prediction", "", f"Input: `{inputs.predict_input}`", ""]
    lines += [f"- {n}: `{os.path.relpath(p, inputs.output_dir)}`" for n, p in predictions.items()]
    lines.append("")
    volumes = inputs.volumes
    if volumes and volumes["rows"]:
        lines += ["Volumes (mL):", "", markdown_table(["", *inputs.foreground], volumes["rows"], digits=1)]
    return lines


def section_commands(inputs: ReportInputs) -> list[str]:
    r = inputs.results
    lines = ["## Exact commands", "", "```bash", *r.get("setup_commands", []), r["command"], "```", ""]
    lines += ["Which ran, per network (train, evaluate, predict):", ""]
    for n, e in inputs.networks.items():
        lines += [f"`{n}`:", "", "```bash", *e["commands"].values(), "```", ""]
    return lines


def section_machine(inputs: ReportInputs) -> list[str]:
    r = inputs.results
    lines = ["## Machine", "", *[f"- {k}: {v}" for k, v in r["machine"].items()]]
    return [*lines, "", f"Total wall time of the runs: {r['total_seconds']:.0f} s.", ""]


def section_definitions(inputs: ReportInputs) -> list[str]:
    from onenet_med.metrics import DEFINITIONS

    return ["## Definitions", "", *[f"- **{k}**: {v}" for k, v in DEFINITIONS.items()]]


#: The report's sections in order; each returns its Markdown lines (an empty list leaves it out).
SECTIONS: list[Callable[[ReportInputs], list[str]]] = [
    section_title,
    section_checks,
    section_table1,
    section_table2,
    section_frontier,
    section_plots,
    section_prediction,
    section_commands,
    section_machine,
    section_definitions,
]


def write_report(
    results: Mapping[str, Any],
    output_dir: str | os.PathLike,
    predict_input: str | None = None,
    held_out: Sequence[Mapping[str, Any]] = (),
) -> dict[str, str]:
    """Plots and ``report.md`` of a :func:`onenet_med.compare.compare` result into ``output_dir``.

    Returns:
        name -> path of each file written (the :data:`PLOTS` keys that drew something, and ``report``).
    """
    from onenet_med.engine.atomic import atomic_write_text

    inputs = ReportInputs(results, Path(output_dir), predict_input, held_out)
    for key, _, plot in PLOTS:
        path = plot(inputs)
        if path is not None:
            inputs.files[key] = str(path)
    lines = [line for section in SECTIONS for line in section(inputs)]
    inputs.files["report"] = str(inputs.output_dir / "report.md")
    atomic_write_text(inputs.files["report"], "\n".join(lines) + "\n")
    return dict(inputs.files)


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
