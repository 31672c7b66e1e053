"""The accuracy-latency frontier of a model comparison: which networks no other network beats on both counts.

A network is *Pareto-optimal* when no other network of the same comparison is at least as fast and at least as
accurate, and strictly better in one of the two. :func:`frontier_rows` reads the ``results.json`` document of
``onenet-med compare`` (held-out mean Dice per slice, FLOPs and latency per slice at each profiled thread count) into
one row per trained network, with the Pareto flags per thread count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["frontier_rows", "pareto_optimal"]


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def pareto_optimal(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """Whether each ``(cost, quality)`` point is Pareto-optimal: lower cost and higher quality are better.

    A point is dominated when another point has cost <= its cost and quality >= its quality, one of the two strictly;
    equal points do not dominate each other (both are optimal or neither). Points with a missing or non-finite value
    are never optimal and dominate nothing.

    Args:
        points: ``(cost, quality)`` pairs, e.g. (latency in ms, mean Dice).

    Returns:
        one flag per point, in order.
    """
    usable = [_usable(c) and _usable(q) for c, q in points]
    flags = []
    for i, (cost, quality) in enumerate(points):
        if not usable[i]:
            flags.append(False)
            continue
        dominated = any(
            usable[j] and c <= cost and q >= quality and (c < cost or q > quality)
            for j, (c, q) in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags


def frontier_rows(results: Mapping[str, Any], metric: str = "dice") -> list[dict[str, Any]]:
    """One row per network of a ``results.json`` document that has a profile: the frontier's data.

    Args:
        results: the document of :func:`onenet_med.compare.compare` (``networks`` -> ``metrics``, ``profile``;
            ``profile_threads``).
        metric: the accuracy (a top-level key of the networks' ``metrics.json``; default the held-out mean Dice
            per slice).

    Returns:
        rows ``{"label", "network", "width", "accuracy", "gflops", "latency_ms": {threads: ms}, "pareto":
        {threads: bool}}`` in the results' order; empty when nothing was profiled.
    """
    threads = [str(t) for t in results.get("profile_threads") or []]
    rows = []
    for label, entry in results["networks"].items():
        profile = entry.get("profile")
        if not profile:
            continue
        accuracy = entry.get("metrics", {}).get(metric)
        rows.append(
            {
                "label": label,
                "network": entry.get("network", label),
                "width": entry.get("width"),
                "accuracy": None if accuracy is None else float(accuracy),
                "gflops": profile.get("gflops"),
                "latency_ms": {t: profile.get("latency_ms", {}).get(t) for t in threads},
            }
        )
    for t in threads:
        flags = pareto_optimal([(row["latency_ms"][t], row["accuracy"]) for row in rows])
        for row, flag in zip(rows, flags):
            row.setdefault("pareto", {})[t] = flag
    return rows
