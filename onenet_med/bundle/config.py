"""Reading a bundle folder's configs from Python (the Predictor, benchmarks, notebooks)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["SAVED_SPLIT", "load_bundle_config", "saved_datalists"]

#: The split training saves, in the bundle's ``output_dir`` (``train.json``'s ``saved_split``).
SAVED_SPLIT = "datalist.json"


def load_bundle_config(
    bundle_dir: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
):
    """The bundle's ``inference.json`` (which runs alone) + ``metadata.json`` in a :class:`monai.bundle.ConfigParser`,
    with ``bundle_root`` set to ``bundle_dir`` and ``overrides`` applied (``{"network_def#features": 8}``; settings
    that only training has, such as ``max_epochs`` or ``train#...``, are left out, so one set of overrides serves
    training and prediction).

    Args:
        bundle_dir: the bundle folder.
        overrides: config overrides, as on the ``monai.bundle`` command line.
        checkpoint: the weights to use (``ckpt_path``); the task saved beside it (``task.json``) then defines the
            task, the preprocessing and the network's arguments.

    Raises:
        FileNotFoundError: ``bundle_dir`` is not a bundle folder (no ``configs/inference.json``).
        KeyError: an override that is no setting of the bundle.
    """
    from monai.bundle import ConfigParser

    configs = Path(bundle_dir) / "configs"
    files = [configs / "inference.json", configs / "metadata.json"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{bundle_dir} is not a bundle folder: missing {', '.join(missing)}")
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser.read_meta(str(configs / "metadata.json"))
    parser["bundle_root"] = str(Path(bundle_dir).resolve())
    if checkpoint is not None:
        parser["ckpt_path"] = os.path.abspath(checkpoint)
    training_only = _training_ids(configs) - set(parser.get())
    for key, value in (overrides or {}).items():
        top = key.split("#", 1)[0]
        if top in training_only:
            continue  # a training setting (train#..., max_epochs, ...): prediction does not run that part
        if top not in parser.get():
            raise KeyError(f"{key!r} is not a setting of {configs / 'inference.json'}")
        parser[key] = value
    return parser


def _training_ids(configs: Path) -> set[str]:
    """Top-level ids of the bundle's ``train.json`` (empty when it has none)."""
    import json

    train = configs / "train.json"
    return set(json.loads(train.read_text())) if train.is_file() else set()


def saved_datalists(parser, splits: tuple[str, ...] = ("train", "validation")) -> tuple[dict[str, list[dict]], str]:
    """The datalists of the training run a bundle config belongs to (:func:`load_bundle_config`), as
    ``evaluate.json`` reads them: the split training saved (``output_dir/datalist.json``), else the default
    ``val_fraction`` / ``seed`` with a warning that the held-out cases may differ. Files are not checked.

    Args:
        parser: the bundle's config, with ``dataset_dir`` (and ``bundle_root``) of the run.
        splits: the lists needed.

    Returns:
        ``(datalists, the split file looked for)``.

    Raises:
        FileNotFoundError: no dataset at ``dataset_dir``.
        ValueError: a saved split that does not fit the dataset (naming the file).
    """
    from onenet_med.bundle.workflow import prepare_datalists

    split_file = os.path.join(parser.get_parsed_content("output_dir"), SAVED_SPLIT)
    lists = prepare_datalists(
        parser.get_parsed_content("task_spec"),
        parser.get_parsed_content("dataset_dir"),
        val_fraction=None,
        seed=None,
        check="none",
        splits=splits,
        split_file=split_file,
    )
    return lists, split_file
