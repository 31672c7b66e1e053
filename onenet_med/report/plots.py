"""PNG figures of model comparisons: training curves, per-class Dice bars, prediction-vs-ground-truth overlays.

Every function writes one PNG atomically (temporary name, then rename) with the non-interactive Agg backend and
returns its path; titles say what is plotted, axes are labelled, models keep the same colour in every figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from onenet_med.engine.atomic import atomic_path
from onenet_med.report.curves import RunCurves

__all__ = [
    "CLASS_COLOURS",
    "plot_class_dice",
    "plot_dice_curves",
    "plot_frontier",
    "plot_loss_curves",
    "plot_overlays",
]

#: RGBA overlay colours of classes 1.. (background is transparent): blue, orange, green, red, purple, ...
CLASS_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.12, 0.47, 0.71),
    (1.00, 0.50, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
    (0.74, 0.74, 0.13),
    (0.09, 0.75, 0.81),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _model_colours(names: Sequence[str]) -> dict[str, tuple]:
    plt = _pyplot()
    cycle = plt.get_cmap("tab10")
    return {name: cycle(i % 10) for i, name in enumerate(names)}


def _save(fig, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def plot_loss_curves(runs: Mapping[str, RunCurves], path: str | os.PathLike, title: str | None = None) -> str:
    """Training loss (mean per epoch, solid) and validation cross-entropy (dashed, markers) per epoch, per model.

    Args:
        runs: model name -> its curves.
        path: PNG to write.
        title: figure title (default: "Loss per epoch").
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    colours = _model_colours(list(runs))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, curves in runs.items():
        if curves.train_loss:
            e, v = zip(*curves.train_loss)
            ax.plot(e, v, "-", color=colours[name], label=f"{name} training loss")
        if curves.validation.get("ce"):
            e, v = zip(*curves.validation["ce"])
            ax.plot(e, v, "--o", color=colours[name], markersize=4, label=f"{name} validation CE")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("weighted cross-entropy")
    ax.set_title(title or "Loss per epoch (training: mean over the epoch's iterations; validation: held-out cases)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_dice_curves(
    runs: Mapping[str, RunCurves],
    class_names: Sequence[str],
    path: str | os.PathLike,
    metric: str = "dice",
    title: str | None = None,
) -> str:
    """Validation Dice per epoch: one panel for the mean over classes and one per foreground class, a line per model.

    Args:
        runs: model name -> its curves (validation tags ``<metric>`` and ``<metric>_<class>``).
        class_names: foreground class names (as in the metric keys).
        path: PNG to write.
        metric: ``"dice"`` (per slice) or ``"volume_dice"`` (per 3D case).
        title: figure title.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    colours = _model_colours(list(runs))
    panels = [(metric, "mean over classes")] + [(f"{metric}_{c}", c) for c in class_names]
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, (key, label) in zip(axes.flat, panels):
        for name, curves in runs.items():
            points = [(e, v) for e, v in curves.validation.get(key, []) if math.isfinite(v)]
            if points:
                e, v = zip(*points)
                ax.plot(e, v, "-o", color=colours[name], markersize=4, label=name)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("Dice")
    axes[0, 0].legend(fontsize=8, loc="lower right")
    kind = "per 2D slice" if metric == "dice" else "per 3D case"
    fig.suptitle(title or f"Validation Dice ({kind}) per epoch on the held-out cases")
    fig.tight_layout()
    return _save(fig, path)


def plot_class_dice(
    results: Mapping[str, Mapping[str, float | None]],
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
    ylabel: str = "Dice",
) -> str:
    """Grouped bars: one group per foreground class plus the class mean, one bar per model, values printed on top.

    Args:
        results: model name -> ``{class name: value, "mean": value}`` (None / NaN = no value, no bar).
        class_names: foreground classes, in order.
        path: PNG to write.
        title: figure title.
        ylabel: y axis label.
    """
    plt = _pyplot()
    models = list(results)
    colours = _model_colours(models)
    groups = list(class_names) + ["mean"]
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * max(1, len(models)) / 2 + 3), 4.5))
    x = np.arange(len(groups))
    for i, model in enumerate(models):
        values = [results[model].get(g) for g in groups]
        heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, heights, width, color=colours[model], label=model)
        for bar, v in zip(bars, values):
            if v is not None and math.isfinite(v):
                ax.annotate(
                    f"{v:.3f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90 if len(models) > 3 else 0,
                )
    ax.set_xticks(x, groups)
    ax.set_ylim(0.0, 1.22)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Per-class Dice on the held-out cases")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=min(len(models), 4), frameon=False)
    return _save(fig, path)


def plot_frontier(
    rows: Sequence[Mapping],
    threads: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
    ylabel: str = "held-out mean Dice (per slice)",
) -> str:
    """Accuracy against latency per slice, one panel per thread count: one colour per network, its widths joined
    by a line and written beside the points, the Pareto-optimal points ringed and joined by a dashed step line.

    Args:
        rows: :func:`onenet_med.report.frontier.frontier_rows` (``label``, ``network``, ``width``, ``accuracy``,
            ``latency_ms`` and ``pareto`` per thread count); rows without a value are left out of a panel.
        threads: thread counts, one panel each (keys of ``latency_ms``).
        path: PNG to write.
        title: figure title.
        ylabel: y axis label.
    """
    plt = _pyplot()
    networks = list(dict.fromkeys(row["network"] for row in rows))
    colours = _model_colours(networks)
    fig, axes = plt.subplots(1, len(threads), figsize=(6.0 * len(threads), 4.8), squeeze=False, sharey=True)
    for ax, t in zip(axes[0], threads):
        drawn = [r for r in rows if r["latency_ms"].get(t) is not None and r["accuracy"] is not None]
        for network in networks:
            points = sorted((r for r in drawn if r["network"] == network), key=lambda r: r["latency_ms"][t])
            if not points:
                continue
            xs, ys = [r["latency_ms"][t] for r in points], [r["accuracy"] for r in points]
            ax.plot(xs, ys, "o-", color=colours[network], label=network, markersize=6, linewidth=1)
            for r in points:
                if r.get("width") is not None:
                    ax.annotate(f"{r['width']}", (r["latency_ms"][t], r["accuracy"]), textcoords="offset points",
                                xytext=(4, -10), fontsize=7, color=colours[network])  # fmt: skip
        front = sorted((r for r in drawn if r.get("pareto", {}).get(t)), key=lambda r: r["latency_ms"][t])
        if front:
            xs, ys = [r["latency_ms"][t] for r in front], [r["accuracy"] for r in front]
            ax.step(xs, ys, where="post", color="black", linestyle="--", linewidth=1, label="Pareto front")
            ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="black", linewidths=1.2, zorder=3)
        if drawn:
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"latency per slice, batch 1, {t} thread(s) (ms, log scale)")
        ax.set_title(f"{t} thread(s)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8, loc="lower right", frameon=False)
    fig.suptitle(title or "Accuracy against latency (numbers: widths; ringed: Pareto-optimal)")
    return _save(fig, path)


def _overlay_rgba(labels: np.ndarray, num_classes: int, alpha: float) -> np.ndarray:
    rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
    for c in range(1, num_classes):
        r, g, b = CLASS_COLOURS[(c - 1) % len(CLASS_COLOURS)]
        rgba[labels == c] = (r, g, b, alpha)
    return rgba


def plot_overlays(
    image: np.ndarray,
    truth: np.ndarray | None,
    predictions: Mapping[str, np.ndarray],
    slices: Sequence[int],
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
    alpha: float = 0.45,
) -> str:
    """Axial slices of a volume with the ground truth and each model's prediction drawn over the image.

    Rows are slices; columns are the image alone, the ground truth (when given), then one per model.
    Arrays are (H, W, D) in RAS (x = left->right, y = posterior->anterior, last axis axial), shown with anterior
    up and the subject's right on the image's left (radiological convention).

    Args:
        image: (H, W, D) intensities (first channel of a multi-channel volume).
        truth: (H, W, D) integer labels, or None.
        predictions: model name -> (H, W, D) integer labels of the same shape.
        slices: axial indices to show.
        class_names: all class names, background first (legend and colours).
        path: PNG to write.
        title: figure title.
        alpha: opacity of the label colours.
    """
    plt = _pyplot()
    from matplotlib.patches import Patch

    image = np.asarray(image)
    for name, arr in [("truth", truth), *predictions.items()]:
        if arr is not None and np.shape(arr) != image.shape:
            raise ValueError(f"{name} has shape {np.shape(arr)}, the image {image.shape}; they must match.")
    if not slices:
        raise ValueError("no slices to show")
    columns = [("image", None)] + ([("ground truth", truth)] if truth is not None else [])
    columns += [(name, arr) for name, arr in predictions.items()]
    k = len(class_names)
    lo, hi = np.percentile(image[image != 0], (1, 99)) if np.any(image != 0) else (0.0, 1.0)
    fig, axes = plt.subplots(len(slices), len(columns), figsize=(2.6 * len(columns), 2.9 * len(slices)), squeeze=False)
    for r, z in enumerate(slices):
        base = np.flipud(image[:, :, z].T)  # rows = anterior -> posterior, columns = left -> right (x)
        base = base[:, ::-1]  # radiological: subject's right on the left of the picture
        for c, (name, labels) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(base, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if labels is not None:
                lab = np.flipud(np.asarray(labels)[:, :, z].T)[:, ::-1]
                ax.imshow(_overlay_rgba(lab, k, alpha), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=10)
            if c == 0:
                ax.set_ylabel(f"slice {z}", fontsize=9)
    handles = [Patch(color=CLASS_COLOURS[(c - 1) % len(CLASS_COLOURS)], label=class_names[c]) for c in range(1, k)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(title or "Prediction vs ground truth on axial slices")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return _save(fig, path)
