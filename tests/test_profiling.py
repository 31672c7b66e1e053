"""Tests of onenet_med.profiling and the ``onenet-med profile`` command, on tiny networks."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from parameterized import parameterized
from torch import nn

from onenet_med.cli import main
from onenet_med.profiling import (
    PAPER_TABLE2,
    TABLE2_NETWORKS,
    count_flops,
    count_parameters,
    format_table,
    measure_latency,
    parameter_bytes,
    peak_memory_bytes,
    profile_networks,
    write_json,
)


@parameterized.expand(
    [
        # in, out, kernel, stride, h, w: FLOPs = 2 * out elements * in channels * kernel area (bias not counted)
        (3, 8, 1, 1, 16, 16, 2 * (8 * 16 * 16) * 3),
        (64, 64, 1, 1, 32, 24, 2 * (64 * 32 * 24) * 64),
        (4, 6, 3, 1, 10, 10, 2 * (6 * 10 * 10) * 4 * 9),
        (8, 16, 2, 2, 8, 8, 2 * (16 * 4 * 4) * 8 * 4),
    ]
)
def test_flops_of_a_single_conv(c_in, c_out, k, stride, h, w, expected):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k // 2 if stride == 1 else 0))
    assert count_flops(conv, (1, c_in, h, w)) == expected


def test_flops_count_does_not_touch_the_network():
    conv = nn.Conv2d(3, 8, 1)
    before = conv.weight.detach().clone()
    count_flops(conv, (2, 3, 8, 8))
    assert conv.weight.device.type == "cpu" and torch.equal(conv.weight, before)


def test_flops_scale_with_pixels_for_onenet():
    from onenet_med.networks import get_network

    net = get_network("onenet_ed4", 3, 4, features=8)
    assert count_flops(net, (1, 3, 64, 64)) * 4 == count_flops(net, (1, 3, 128, 128))


def test_parameters_and_bytes():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))
    assert count_parameters(net) == 3 * 8 + 8 + 8 + 8
    # float32 parameters + running mean/var (float32) + num_batches_tracked (int64)
    assert parameter_bytes(net) == 4 * (3 * 8 + 8 + 16) + 4 * 16 + 8


def test_peak_memory_of_a_conv_counts_input_and_output():
    conv = nn.Conv2d(3, 8, 1)
    shape = (1, 3, 64, 64)
    peak = peak_memory_bytes(conv, shape)
    in_bytes, out_bytes = 4 * 3 * 64 * 64, 4 * 8 * 64 * 64
    assert in_bytes + out_bytes <= peak <= 2 * (in_bytes + out_bytes)


def test_peak_memory_sees_temporaries():
    class Wide(nn.Module):  # a large temporary freed before the output is made
        def forward(self, x):
            big = x.repeat(1, 16, 1, 1)
            return big.sum(1, keepdim=True)

    small = peak_memory_bytes(nn.Identity(), (1, 1, 32, 32))
    wide = peak_memory_bytes(Wide(), (1, 1, 32, 32))
    assert wide - small >= 16 * 4 * 32 * 32


def test_latency_interleaves_and_counts_passes():
    calls = []

    class Tag(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append(self.name)
            return x

    ticks = itertools.count()
    times = measure_latency(
        {"a": Tag("a"), "b": Tag("b")}, (1, 1, 4, 4), repeats=3, warmup=1, clock=lambda: next(ticks)
    )
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up, then interleaved rounds
    assert times == {"a": [1, 1, 1], "b": [1, 1, 1]}


def test_latency_restores_threads():
    before = torch.get_num_threads()
    measure_latency({"id": nn.Identity()}, (1, 1, 2, 2), repeats=1, warmup=0, threads=2)
    assert torch.get_num_threads() == before


def test_latency_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        measure_latency({"id": nn.Identity()}, repeats=0)


def test_profile_rows_and_table():
    rows = profile_networks(["onenet_ed4", "unet4"], size=32, repeats=1, warmup=0, threads=1, features=4)
    assert [r["network"] for r in rows] == ["onenet_ed4", "unet4"]
    for row in rows:
        assert row["params"] > 0 and row["gflops_512"] == pytest.approx(4 * row["gflops_256"], rel=1e-6)
        assert row["total_memory_mb"] > row["peak_activation_mb"] > 0
        assert row["latency_ms"] > 0 and row["latency_plain_ms"] > 0  # inference copy and network as built
        assert len(row["latency_ms_all"]) == len(row["latency_plain_ms_all"]) == 1
        assert row["paper"] is None  # size 32: the paper's numbers are for 256x256
    text = format_table(rows)
    assert "onenet_ed4" in text and "torchinfo" in text and "ConvTranspose2d" in text and "plain ms" in text


def test_paper_table2_has_every_row():
    assert set(TABLE2_NETWORKS) <= set(PAPER_TABLE2)
    assert PAPER_TABLE2["onenet_ed4"]["params_m"] == 9.08 and PAPER_TABLE2["unet4"]["gflops"] == 104.72


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json({"rows": [1, 2]}, str(path))
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_cli_profile_writes_json(tmp_path, capsys):
    path = tmp_path / "table2.json"
    code = main(
        [
            "profile",
            "--networks",
            "onenet_ed4",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--json",
            str(path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "onenet_ed4" in out and "9.07" in out and "torchinfo" in out
    data = json.loads(path.read_text())
    (row,) = data["rows"]
    assert row["network"] == "onenet_ed4" and row["params"] == 9_073_796
    assert row["paper"]["params_m"] == 9.08
    assert 20 < row["gflops_256"] < 25 and row["latency_ms"] > 0


def test_cli_profile_rejects_unknown_network(capsys):
    assert main(["profile", "--networks", "nnunet"]) == 2
    out = capsys.readouterr().out
    assert "unknown network(s) nnunet" in out and "onenet_ed4" in out
