"""Shared test set-up: deterministic, single-threaded torch so the suite is fast and repeatable on 2 cores."""

from __future__ import annotations

import os

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child processes: the checkout importable, one thread, no GPU."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


@pytest.fixture(scope="session")
def exported_heart(tmp_path_factory):
    """A tiny heart checkpoint exported once per session as onnx, onnx-int8 and torchscript
    (:func:`tests.inference_helpers.export_tiny_heart`); skipped without the ``onnx`` extra."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tests.inference_helpers import export_tiny_heart

    torch.set_num_threads(1)
    return export_tiny_heart(tmp_path_factory.mktemp("exported_heart"))


def pytest_terminal_summary(terminalreporter) -> None:
    """After a run of tests/test_docs.py: every documented command and what happened to it (ran, skipped, why)."""
    import sys

    docs = sys.modules.get("test_docs") or sys.modules.get("tests.test_docs")  # rootdir-relative or package name
    if docs is not None and docs.RESULTS:
        terminalreporter.write_sep("-", f"documented commands ({len(docs.RESULTS)})")
        for line in docs.listing():
            terminalreporter.write_line(line)
