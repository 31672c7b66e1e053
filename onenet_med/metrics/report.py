"""Evaluation reports: ``metrics.json``, a per-case CSV and a Markdown table in the paper's Table 1/3 layout."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from onenet_med.engine.atomic import atomic_write_text
from onenet_med.metrics.functional import DEFINITIONS, class_keys

__all__ = ["METRICS_JSON", "PER_CASE_CSV", "TABLE_MD", "EvaluationReport", "format_table", "write_evaluation"]

METRICS_JSON = "metrics.json"
PER_CASE_CSV = "per_case.csv"
TABLE_MD = "metrics.md"

# summary columns in the paper's order (Table 1: CE, mAP0.5, mIoU; Table 3 adds DSC), then our 3D Dice
SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ce", "CE"),
    ("map50", "mAP0.5"),
    ("miou", "mIoU"),
    ("dice", "DSC"),
    ("volume_dice", "DSC 3D"),
)
PER_CLASS_METRICS: tuple[tuple[str, str], ...] = (
    ("dice", "DSC"),
    ("iou", "IoU"),
    ("ap50", "AP0.5"),
    ("volume_dice", "DSC 3D"),
)


def _json_value(value: Any) -> Any:
    """NaN/inf -> None so that the file is strict JSON (absent classes appear as ``null``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _json_value(value.item())
    return value


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def _foreground_names(results: Mapping[str, Any], class_names: Sequence[str] | None) -> list[str]:
    """Foreground class names of a result dict (one ``dice_<name>`` key per class), checked against ``class_names``."""
    num_foreground = sum(1 for key in results if key.startswith("dice_"))
    names = class_keys(num_foreground + 1, class_names)
    missing = [n for n in names if f"dice_{n}" not in results]
    if missing:
        raise KeyError(f"results have no per-class values for {missing}; were they computed with these class_names?")
    return names


def format_table(entries: Sequence[Mapping[str, Any]], digits: int = 4) -> str:
    """Markdown table in the paper's layout: one row per method, a CE / mAP0.5 / mIoU / DSC column group per task.

    Args:
        entries: items with ``model``, ``task`` and ``results`` (a result dict with ``ce``, ``map50``, ``miou``,
            ``dice`` and optionally ``volume_dice``). Tasks appear in first-seen order; a missing value is ``–``.
        digits: decimals.

    Returns:
        the Markdown text (header, separator, one line per model), ending with a newline.
    """
    tasks: list[str] = []
    models: list[str] = []
    cells: dict[tuple[str, str], Mapping[str, Any]] = {}
    for entry in entries:
        task, model = str(entry.get("task", "")), str(entry.get("model", ""))
        if task not in tasks:
            tasks.append(task)
        if model not in models:
            models.append(model)
        cells[(model, task)] = entry["results"]
    columns = {
        task: [
            (key, title)
            for key, title in SUMMARY_COLUMNS
            if key != "volume_dice" or any("volume_dice" in cells.get((m, task), {}) for m in models)
        ]
        for task in tasks
    }
    header = ["Method"] + [f"{task} {title}".strip() for task in tasks for _, title in columns[task]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    for model in models:
        row = [model]
        for task in tasks:
            results = cells.get((model, task), {})
            row += [_fmt(results.get(key), digits) for key, _ in columns[task]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_evaluation(
    output_dir: str | os.PathLike,
    results: Mapping[str, Any],
    class_names: Sequence[str] | None,
    per_case_rows: Sequence[Mapping[str, Any]],
    model_name: str = "model",
    task: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``metrics.json``, ``per_case.csv`` and ``metrics.md`` into ``output_dir`` (each atomically).

    Args:
        output_dir: destination folder (created when missing).
        results: the flat result dict of :class:`~onenet_med.metrics.SegmentationMetrics` /
            :func:`~onenet_med.metrics.segmentation_metrics` (``ce``, ``dice``, ``miou``, ``map50``,
            ``dice_<name>``, ...; ``volume_dice`` when scored on volumes).
        class_names: class names (K with background first, or K-1 foreground), as given to the metric.
        per_case_rows: rows of the per-case CSV (e.g. ``SegmentationMetrics.per_case_rows()``).
        model_name: method name shown in the table.
        task: task name shown in the table.
        extra: more JSON-able facts to store in ``metrics.json`` (checkpoint path, data split, ...).

    Returns:
        paths of the written files, keyed ``json``, ``csv``, ``markdown``.

    ``metrics.json`` holds top-level floats ``ce``, ``dice``, ``miou``, ``map50`` (and ``volume_dice``), a
    ``per_class`` mapping ``{name: {dice, iou, ap50[, volume_dice]}}``, ``model``, ``task``, ``num_cases`` and the
    metric ``definitions``. Values that are undefined (class never present) are written as ``null``.
    """
    output_dir = os.fspath(output_dir)
    names = _foreground_names(results, class_names)
    summary = {key: _json_value(float(results[key])) for key, _ in SUMMARY_COLUMNS if key in results}
    for key in ("ce", "dice", "miou", "map50"):
        if key not in summary:
            raise KeyError(f"results lack the required metric {key!r}; got keys {sorted(results)}")
    per_class = {
        name: {
            metric: _json_value(float(results[f"{metric}_{name}"]))
            for metric, _ in PER_CLASS_METRICS
            if f"{metric}_{name}" in results
        }
        for name in names
    }
    document: dict[str, Any] = {
        "model": model_name,
        "task": task,
        **summary,
        "per_class": per_class,
        "num_cases": len(per_case_rows),
        "definitions": DEFINITIONS,
    }
    if extra:
        document.update({k: _json_value(v) for k, v in extra.items()})
    paths = {
        "json": os.path.join(output_dir, METRICS_JSON),
        "csv": os.path.join(output_dir, PER_CASE_CSV),
        "markdown": os.path.join(output_dir, TABLE_MD),
    }
    atomic_write_text(paths["json"], json.dumps(document, indent=2, allow_nan=False) + "\n")

    fieldnames: list[str] = []
    for row in per_case_rows:
        fieldnames.extend(k for k in row if k not in fieldnames)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames or ["case"], restval="", lineterminator="\n")
    writer.writeheader()
    for row in per_case_rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    atomic_write_text(paths["csv"], buffer.getvalue())

    per_class_columns = [(m, t) for m, t in PER_CLASS_METRICS if any(m in v for v in per_class.values())]
    lines = [
        f"# Evaluation of {model_name}" + (f" on {task}" if task else ""),
        "",
        format_table([{"model": model_name, "task": task, "results": results}]).rstrip("\n"),
        "",
        "| Class | " + " | ".join(t for _, t in per_class_columns) + " |",
        "| --- |" + " ---: |" * len(per_class_columns),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_fmt(per_class[name].get(m)) for m, _ in per_class_columns) + " |")
    lines += ["", f"Cases: {len(per_case_rows)}. Definitions (– = class never present):", ""]
    lines += [f"- **{key}**: {text}" for key, text in DEFINITIONS.items()]
    atomic_write_text(paths["markdown"], "\n".join(lines) + "\n")
    return paths


class EvaluationReport:
    """Ignite handler: when the evaluator completes, :func:`write_evaluation` from a :class:`SegmentationMetrics`.

    Attach it to the evaluator that computes ``metric`` (e.g. the bundle's ``key_metric``); the files are
    written by rank 0 only (every rank takes part in gathering the per-case rows in DDP).

    Args:
        output_dir: destination folder of ``metrics.json``, ``per_case.csv`` and ``metrics.md``.
        metric: the metric object attached to the same evaluator.
        model_name: method name shown in the table (e.g. the network registry name).
        task: task name shown in the table.
        extra: more JSON-able facts for ``metrics.json`` (checkpoint path, split, ...).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        metric: Any,
        model_name: str = "model",
        task: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.output_dir = output_dir
        self.metric = metric
        self.model_name = model_name
        self.task = task
        self.extra = dict(extra or {})
        self.paths: dict[str, str] = {}

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        import ignite.distributed as idist

        rows = self.metric.per_case_rows()
        if idist.get_rank() == 0:
            self.paths = write_evaluation(
                self.output_dir,
                engine.state.metrics,
                self.metric.class_names,
                rows,
                model_name=self.model_name,
                task=self.task,
                extra=self.extra,
            )
