"""Atomic writes: a crash while writing leaves the previous file intact and no partial/temporary file behind."""

from __future__ import annotations

import os

import pytest
import torch

from onenet_med.engine import atomic_torch_save, atomic_write_text, save_checkpoint


class Crash(Exception):
    pass


def crashing_torch_save(obj, f, *args, **kwargs):
    """Write some bytes, then die like a process killed mid-save."""
    with open(f, "wb") as handle:
        handle.write(b"PK\x03\x04 half a checkpoint")
    raise Crash("killed while saving")


@pytest.mark.parametrize("writer", ["torch", "checkpoint", "text"])
def test_crash_during_save_keeps_previous_file(tmp_path, monkeypatch, writer):
    path = tmp_path / "sub" / ("latest.pt" if writer != "text" else "metrics.json")
    model = torch.nn.Linear(2, 2)
    if writer == "torch":
        atomic_torch_save({"w": torch.ones(3)}, path)
    elif writer == "checkpoint":
        save_checkpoint(path, {"model": model})
    else:
        atomic_write_text(path, '{"dice": 0.5}\n')
    before = path.read_bytes()

    if writer == "text":
        monkeypatch.setattr("builtins.open", _open_that_crashes_on_write(open))
        with pytest.raises(Crash):
            atomic_write_text(path, '{"dice": 0.9}\n')
    else:
        monkeypatch.setattr(torch, "save", crashing_torch_save)
        with pytest.raises(Crash):
            if writer == "torch":
                atomic_torch_save({"w": torch.zeros(3)}, path)
            else:
                save_checkpoint(path, {"model": model})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temporary file left
    if writer == "torch":
        assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))


def _open_that_crashes_on_write(real_open):
    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            handle.write('{"di')  # partial content, then the crash
            handle.close()
            raise Crash("killed while writing")
        return handle

    return fake_open


def test_successful_write_replaces_and_is_readable(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
