"""The train / validation split of a run, saved as ``datalist.json``, and fixed splits given by the user.

Training writes the case ids it used (``output_dir/datalist.json``); evaluation and ``onenet-med compare`` read them
back, so that the held-out cases are exactly the training run's whatever ``val_fraction`` / ``seed`` say. The file::

    {"train": ["la_003", ...], "validation": ["la_007", ...],
     "task": "heart", "dataset_dir": "/data/Task02_Heart", "val_fraction": 0.2, "seed": 0, "source": "..."}

A fixed split of one's own needs only ``train`` and ``validation``: lists of case ids (MSD: image file names without
``.nii.gz``; VOC: image ids; Pets: image names), as ``onenet-med data check`` and ``per_case.csv`` show them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SPLITS", "check_split_settings", "read_split", "select_split", "write_split"]

#: The lists a split file holds.
SPLITS = ("train", "validation")


def write_split(path: str | os.PathLike, lists: Mapping[str, Sequence[Mapping[str, Any]]], **facts: Any) -> str:
    """Write the case ids of ``lists["train"]`` and ``lists["validation"]`` and ``facts`` (how the split was made)
    atomically; returns the path."""
    from onenet_med.engine.atomic import atomic_write_text

    document = {name: [str(item["case_id"]) for item in lists[name]] for name in SPLITS}
    document.update(facts)
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return os.fspath(path)


def read_split(path: str | os.PathLike) -> dict[str, Any]:
    """Read a split file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or ``train`` / ``validation`` missing or not lists of case ids (the message names
            the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    for name in SPLITS:
        ids = document.get(name) if isinstance(document, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{path}: '{name}' must be a list of case ids (strings), got {type(ids).__name__}")
    overlap = sorted(set(document["train"]) & set(document["validation"]))
    if overlap:
        raise ValueError(f"{path}: case(s) {overlap[:10]} are in both 'train' and 'validation'")
    return document


def check_split_settings(document: Mapping[str, Any], path: str | os.PathLike, **settings: Any) -> None:
    """Raise when a setting asked for now (not ``None``) differs from the one the split was made with.

    Raises:
        ValueError: naming the file, the recorded and the requested values.
    """
    conflicts = {
        key: (document[key], value)
        for key, value in settings.items()
        if value is not None and document.get(key) is not None and document[key] != value
    }
    if conflicts:
        asked = ", ".join(f"{k}={v[1]!r}" for k, v in conflicts.items())
        recorded = ", ".join(f"{k}={v[0]!r}" for k, v in conflicts.items())
        flags = " ".join(f"--{k}" for k in conflicts)
        raise ValueError(
            f"{os.fspath(path)}: this run asks for {asked}, but the model was trained on the split saved there "
            f"({recorded}): the held-out cases would differ. Drop {flags} to evaluate on the training run's held-out "
            "cases, or pass --split_file to choose a split"
        )


def select_split(
    document: Mapping[str, Any], pool: Sequence[Mapping[str, Any]], path: str | os.PathLike
) -> dict[str, list[dict]]:
    """``{"train": [...], "validation": [...]}``: the items of ``pool`` named by the split, in the split's order.

    Raises:
        ValueError: case ids of the split that the dataset does not have (the message names the file).
    """
    by_id = {str(item["case_id"]): dict(item) for item in pool}
    unknown = [i for name in SPLITS for i in document[name] if i not in by_id]
    if unknown:
        raise ValueError(
            f"{os.fspath(path)}: {len(unknown)} case id(s) not in the dataset: {unknown[:10]} "
            f"(the dataset has e.g. {sorted(by_id)[:5]})"
        )
    return {name: [by_id[i] for i in document[name]] for name in SPLITS}
