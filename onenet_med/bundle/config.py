"""Reading a bundle folder's configs from Python (the Predictor, benchmarks, notebooks)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["load_bundle_config"]


def load_bundle_config(bundle_dir: str | os.PathLike, overrides: Mapping[str, Any] | None = None):
    """The bundle's ``train.json`` + ``inference.json`` + ``metadata.json`` in a :class:`monai.bundle.ConfigParser`,
    with ``bundle_root`` set to ``bundle_dir`` and ``overrides`` applied (``{"network_def#features": 8}``).

    Raises:
        FileNotFoundError: ``bundle_dir`` is not a bundle folder (no ``configs/inference.json``).
    """
    from monai.bundle import ConfigParser

    configs = Path(bundle_dir) / "configs"
    files = [configs / "train.json", configs / "inference.json"]
    missing = [str(f) for f in [*files, configs / "metadata.json"] if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{bundle_dir} is not a bundle folder: missing {', '.join(missing)}")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.read_meta(str(configs / "metadata.json"))
    parser["bundle_root"] = str(Path(bundle_dir).resolve())
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser
