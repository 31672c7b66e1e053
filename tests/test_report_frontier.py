"""The accuracy-latency frontier: Pareto flags against hand-made cases, rows read from a results.json document."""

import math

import pytest

from onenet_med.report.frontier import frontier_rows, pareto_optimal


@pytest.mark.parametrize(
    "points,expected",
    [
        ([], []),
        ([(10.0, 0.9)], [True]),
        # faster and more accurate dominates; slower but more accurate stays on the front
        ([(10.0, 0.9), (20.0, 0.8), (30.0, 0.95)], [True, False, True]),
        # as fast and less accurate, or as accurate and slower: dominated
        ([(10.0, 0.9), (10.0, 0.8), (12.0, 0.9)], [True, False, False]),
        # equal points do not dominate each other
        ([(10.0, 0.9), (10.0, 0.9), (20.0, 0.85)], [True, True, False]),
        # a missing or NaN value is never optimal and dominates nothing
        ([(None, 0.99), (5.0, math.nan), (30.0, 0.5)], [False, False, True]),
        # a staircase: every point trades speed for accuracy
        ([(1.0, 0.1), (2.0, 0.2), (3.0, 0.3), (2.5, 0.15)], [True, True, True, False]),
    ],
)
def test_pareto_optimal(points, expected):
    assert pareto_optimal(points) == expected


def _entry(network, width, dice, gflops, latency):
    return {
        "network": network,
        "width": width,
        "metrics": {"dice": dice, "miou": dice - 0.1},
        "profile": {"gflops": gflops, "latency_ms": latency, "latency_plain_ms": latency},
    }


@pytest.mark.parametrize(
    "metric,pareto_1,pareto_2",
    [
        # 1 thread: b@8 is slower and less accurate than a@8 -> dominated; 2 threads: b@8 is the fastest
        ("dice", {"a@8": True, "b@8": False, "a@16": True}, {"a@8": True, "b@8": True, "a@16": True}),
        ("miou", {"a@8": True, "b@8": False, "a@16": True}, {"a@8": True, "b@8": True, "a@16": True}),
    ],
)
def test_frontier_rows(metric, pareto_1, pareto_2):
    results = {
        "profile_threads": [1, 2],
        "networks": {
            "a@8": _entry("a", 8, 0.90, 1.0, {"1": 10.0, "2": 6.0}),
            "b@8": _entry("b", 8, 0.85, 2.0, {"1": 12.0, "2": 5.0}),
            "a@16": _entry("a", 16, 0.93, 4.0, {"1": 30.0, "2": 20.0}),
            "c": {"metrics": {"dice": 0.99}},  # not profiled: not on the frontier
        },
    }
    rows = frontier_rows(results, metric)
    assert [r["label"] for r in rows] == ["a@8", "b@8", "a@16"]
    assert rows[2]["network"] == "a" and rows[2]["width"] == 16 and rows[2]["gflops"] == 4.0
    assert rows[0]["accuracy"] == pytest.approx(results["networks"]["a@8"]["metrics"][metric])
    assert rows[1]["latency_ms"] == {"1": 12.0, "2": 5.0}
    assert {r["label"]: r["pareto"]["1"] for r in rows} == pareto_1
    assert {r["label"]: r["pareto"]["2"] for r in rows} == pareto_2


def test_frontier_rows_empty_without_profile():
    assert frontier_rows({"networks": {"a": {"metrics": {"dice": 0.5}}}}) == []
