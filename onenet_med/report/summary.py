"""Small facts for reports: the machine a run used, label volumes in millilitres, Markdown tables."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["label_volumes_ml", "machine_info", "markdown_table"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """What a timing depends on: CPU model, cores usable by this process, torch threads, GPU, RAM, load, versions."""
    import monai
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "memory_gib": _memory_gib(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
    }
    try:
        info["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def label_volumes_ml(
    labels: np.ndarray, voxel_volume_mm3: float, class_names: Sequence[str], include_background: bool = False
) -> dict[str, float]:
    """Volume of each class of a label map in millilitres (1 mL = 1000 mm^3).

    Args:
        labels: integer label map of any shape.
        voxel_volume_mm3: volume of one voxel in mm^3 (product of the voxel sizes, e.g.
            ``prod(img.header.get_zooms()[:3])`` of a nibabel image).
        class_names: all class names, index = label value (background first).
        include_background: also report class 0.

    Returns:
        ``{class name: mL}`` in class order.
    """
    if voxel_volume_mm3 <= 0:
        raise ValueError(f"voxel_volume_mm3 must be > 0, got {voxel_volume_mm3}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=len(class_names))
    if len(counts) > len(class_names):
        raise ValueError(f"labels hold values up to {len(counts) - 1}, but only {len(class_names)} classes are named")
    start = 0 if include_background else 1
    return {class_names[c]: float(counts[c]) * voxel_volume_mm3 / 1000.0 for c in range(start, len(class_names))}


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4, align: Sequence[str] | None = None
) -> str:
    """A Markdown table; floats get ``digits`` decimals, None/NaN show as ``–``.

    Args:
        header: column titles.
        rows: cell values, one sequence per row, as long as ``header``.
        digits: decimals of float cells.
        align: per column ``"l"`` or ``"r"`` (default: first column left, the others right).
    """
    align = align or ["l"] + ["r"] * (len(header) - 1)
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {list(row)} has {len(row)} cells, the header {len(header)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" ---: " if a == "r" else " --- " for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
