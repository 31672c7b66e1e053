"""A failed ``python -m monai.bundle run`` ends with the problem and its file (real subprocesses), and the summary's
parts on hand-made exception chains."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from onenet_med.engine.failures import MAX_LINES, failure_summary, install_failure_summary, root_problem
from tests.conftest import REPO_ROOT
from tests.data_trees import make_msd_task, save_nifti

TINY = ["--network_def#features", "4", "--spatial_size", "32", "--batch_size", "4", "--num_workers", "0"]
TINY += ["--max_epochs", "1", "--val_interval", "1", "--bn_refresh_batches", "1", "--progress", "false"]
TRAIN = "bundles/onenet_heart/configs/train.json"
EVALUATE = "['bundles/onenet_heart/configs/train.json','bundles/onenet_heart/configs/evaluate.json']"
INFERENCE = "bundles/onenet_heart/configs/inference.json"


def bad_data(tmp: Path) -> tuple[Path, list[str]]:
    """A heart tree with a wrong label shape (a training case) and a corrupt image (the validation case)."""
    task = make_msd_task(tmp / "data", "heart", n_train=4, n_test=1)
    save_nifti(task / "labelsTr" / "case_001.nii.gz", np.zeros((7, 7, 7), np.uint8))
    (task / "imagesTr" / "case_002.nii.gz").write_bytes(b"not a gzip file")
    return task, [
        f"{task}/labelsTr/case_001.nii.gz: label shape (7, 7, 7) != image shape",
        f"{task}/imagesTr/case_002.nii.gz: unreadable image",
    ]


def checkpoint_of_another_network(tmp: Path) -> tuple[Path, list[str]]:
    """``models/model.pt`` holding unet4 weights where the bundle builds onenet_ed4."""
    from onenet_med.networks import get_network

    task = make_msd_task(tmp / "data", "heart", n_train=4, n_test=1)
    path = tmp / "bundle" / "models" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save(get_network("unet4", 1, 2, features=4).state_dict(), path)
    return task, [f"ValueError: checkpoint {path} does not fit the network OneNet of this configuration: "]


def unreadable_task_record(tmp: Path) -> tuple[Path, list[str]]:
    """``models/task.json`` beside the checkpoint that is not a task record."""
    task = make_msd_task(tmp / "data", "heart", n_train=4, n_test=1)
    record = tmp / "bundle" / "models" / "task.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"format": 1, "task": {"name": "heart"')
    return task, [f"ValueError: {record}: not a task record of onenet-med"]


def saved_split(tmp: Path) -> tuple[Path, list[str]]:
    """The training run's ``output/datalist.json`` (val_fraction 0.2); evaluation asks for 0.5."""
    task = make_msd_task(tmp / "data", "heart", n_train=4, n_test=1)
    split = tmp / "bundle" / "output" / "datalist.json"
    split.parent.mkdir(parents=True)
    document = {"train": ["case_000", "case_001", "case_002"], "validation": ["case_003"], "val_fraction": 0.2}
    split.write_text(json.dumps({**document, "seed": 0, "task": "heart"}))
    return task, [f"ValueError: {split}: this run asks for val_fraction=0.5, but the model was trained on the split"]


# (case, config files, extra arguments, data builder, expected last lines: each a substring of one line, in order)
CASES = [
    ("data_problems", TRAIN, [], bad_data, None),
    (
        "missing_dataset_dir",
        TRAIN,
        [],
        lambda tmp: (tmp / "no_such_folder", [f"FileNotFoundError: dataset_dir '{tmp / 'no_such_folder'}' does not"]),
        None,
    ),
    ("checkpoint_of_another_network", EVALUATE, [], checkpoint_of_another_network, None),
    (
        "unknown_network",
        TRAIN,
        ["--network_name", "onenet_xx9"],
        lambda tmp: (make_msd_task(tmp / "data", "heart"), []),
        ["config item 'network_def', config bundles/onenet_heart/configs/train.json", "unknown network 'onenet_xx9'"],
    ),
    (
        "unknown_task",
        TRAIN,
        ["--task", "hart"],
        lambda tmp: (make_msd_task(tmp / "data", "heart"), []),
        ["config bundles/onenet_heart/configs/train.json", "KeyError: Unknown task 'hart'; known tasks: heart,"],
    ),
    (
        "switch_value",
        TRAIN,
        ["--resume", "maybe"],
        lambda tmp: (make_msd_task(tmp / "data", "heart"), []),
        ["SwitchError: switch 'resume' takes true, false, True, False, 1 or 0; got 'maybe'"],
    ),
    ("unreadable_task_record", EVALUATE, [], unreadable_task_record, None),
    ("saved_split_of_other_settings", EVALUATE, ["--val_fraction", "0.5"], saved_split, None),
    (
        "missing_split_file",
        TRAIN,
        ["--split_file", "no_such_split.json"],
        lambda tmp: (make_msd_task(tmp / "data", "heart"), []),
        ["FileNotFoundError: split file no_such_split.json does not exist"],
    ),
    (  # inference.json alone: its initialize (copied from train.json by bundle sync) installs the summary too
        "inference_alone_without_checkpoint",
        INFERENCE,
        [],
        lambda tmp: (
            make_msd_task(tmp / "data", "heart"),
            [f"FileNotFoundError: checkpoint {tmp / 'bundle' / 'models' / 'model.pt'} does not exist"],
        ),
        None,
    ),
]


def command_line(config: str, extra: list[str], dataset_dir: Path, tmp: Path) -> list[str]:
    args = ["--config_file", config, *TINY, "--dataset_dir", str(dataset_dir), "--bundle_root", str(tmp / "bundle")]
    return args + extra


def assert_last_lines(case: str, text: str, expected: list[str]) -> None:
    last = text.rstrip().splitlines()[-len(expected) :]
    for line, part in zip(last, expected):
        assert part in line, f"{case}: expected {part!r} in the last lines, got:\n" + "\n".join(last)


@pytest.mark.slow
@pytest.mark.parametrize("case, config, extra, build, expected", CASES, ids=[c[0] for c in CASES])
def test_failed_run_ends_with_the_problem_and_its_file(tmp_path, subprocess_env, case, config, extra, build, expected):
    """The real command: exit status 1, MONAI's traceback, then the summary whose last lines name the problem."""
    dataset_dir, from_builder = build(tmp_path)
    cmd = [sys.executable, "-m", "monai.bundle", "run", *command_line(config, extra, dataset_dir, tmp_path)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback (most recent call last)" in done.stderr  # MONAI's traceback is still there, above
    assert_last_lines(case, done.stderr, expected or from_builder)
    assert not (tmp_path / "bundle" / "models" / "latest.pt").exists()  # nothing trained


@pytest.mark.parametrize("case, config, extra, build, expected", CASES, ids=[c[0] for c in CASES])
def test_failure_summary_of_each_case(tmp_path, case, config, extra, build, expected):
    """The same cases in this process (values parsed by python-fire as the CLI does): the summary's last lines."""
    from fire.parser import DefaultParseValue
    from monai.bundle import ConfigWorkflow

    dataset_dir, from_builder = build(tmp_path)
    argv = command_line(config, extra, dataset_dir, tmp_path)
    overrides = {key[2:]: DefaultParseValue(value) for key, value in zip(argv[2::2], argv[3::2])}
    names = ast.literal_eval(config) if config.startswith("[") else [config]
    files = [str(Path(REPO_ROOT) / name) for name in names]
    kind = "infer" if config == INFERENCE else "train"
    workflow = ConfigWorkflow(config_file=files, logging_file=False, workflow_type=kind, **overrides)
    with pytest.raises(Exception) as error:
        workflow.initialize()
        workflow.run()
    assert_last_lines(case, failure_summary(error.value, argv=["monai.bundle", *argv]), expected or from_builder)


# ----------------------------------------------------------------------------------- the summary, hand-made chains


def wrapped(error: Exception) -> RuntimeError:
    """``error`` inside two MONAI-style wrappers, as raised in a bundle run."""
    try:
        try:
            try:
                raise error
            except Exception as inner:
                raise RuntimeError("Failed to evaluate ConfigExpression: \n'$ob.prepare_datalists(...)'") from inner
        except Exception as middle:
            raise RuntimeError("Failed to instantiate component 'SupervisedTrainer' with keywords: x") from middle
    except RuntimeError as outer:
        return outer


def test_root_problem_skips_monai_wrappers():
    ours = FileNotFoundError("dataset_dir '/x' does not exist")
    assert root_problem(wrapped(ours)) is ours
    low = RuntimeError("low-level")
    try:
        raise ValueError("checkpoint /m.pt does not fit") from low
    except ValueError as mid:
        assert root_problem(wrapped(mid)) is mid  # ours, not the torch error it wraps
    plain = RuntimeError("Failed to evaluate something")  # a wrapper with nothing inside: itself
    assert root_problem(plain) is plain


def test_summary_lines():
    text = failure_summary(wrapped(KeyError("Unknown task 'hart'")), argv=["x", "--config_file", "a/train.json"])
    lines = text.splitlines()
    assert lines[-2] == "--- onenet-med: the run failed (config a/train.json) ---"
    assert lines[-1] == "KeyError: Unknown task 'hart'"  # no repr quotes around a KeyError's message


def test_summary_of_a_dataloader_worker_error_keeps_first_and_last_line():
    message = "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
    message += '  File "x.py", line 1, in f\nValueError: /data/case_007.nii.gz: truncated'
    lines = failure_summary(RuntimeError(message), argv=[]).splitlines()
    assert lines[-2:] == [
        "RuntimeError: Caught ValueError in DataLoader worker process 0.",
        "ValueError: /data/case_007.nii.gz: truncated",
    ]


def test_long_messages_are_cut():
    lines = failure_summary(ValueError("\n".join(f"line {i}" for i in range(500))), argv=[]).splitlines()
    assert len(lines) == MAX_LINES + 2 and "more lines in the traceback above" in lines[-1]


def test_hook_prints_after_the_previous_hook(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: calls.append("previous"))
    monkeypatch.setattr(sys, "argv", ["python"])
    install_failure_summary()
    install_failure_summary()  # idempotent: one summary
    error = wrapped(ValueError("unknown network 'x'"))
    sys.excepthook(type(error), error, error.__traceback__)
    assert calls == ["previous"]
    err = capsys.readouterr().err
    assert err.count("onenet-med: the run failed") == 1
    assert err.rstrip().splitlines()[-1] == "ValueError: unknown network 'x'"
    sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)  # no summary for Ctrl-C
    assert calls == ["previous", "previous"] and capsys.readouterr().err == ""
