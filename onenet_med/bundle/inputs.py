"""Input and output file names of slice-wise prediction: which files a folder or an MSD dataset.json holds, and what
the prediction of an input is called. Shared by ``onenet-med predict`` and the bundles' ``inference.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from onenet_med.inference.writers import NIFTI_SUFFIXES

__all__ = ["IMAGE_SUFFIXES", "expand_inputs", "output_name"]

#: Volume files picked up from folders (NIfTI via nibabel, the rest via SimpleITK).
IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".nhdr", ".mha", ".mhd", ".nia", ".gipl", ".gipl.gz", ".mnc", ".vtk")

# output extension for inputs whose own format is a header/data pair
_OUTPUT_EXT = {".mhd": ".mha", ".nhdr": ".nrrd"}


def _suffix(path: str | os.PathLike) -> str:
    name = os.path.basename(os.fspath(path)).lower()
    for ext in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def output_name(path: str | os.PathLike, postfix: str = "seg", ext: str | None = None) -> str:
    """File name of an output for input ``path``: ``<stem>_<postfix><ext>``; ``ext`` defaults to the input's
    format family (``.nii.gz`` stays ``.nii.gz``, ``.nrrd`` stays ``.nrrd``, ``.mhd`` becomes ``.mha``)."""
    name = os.path.basename(os.fspath(path))
    suffix = _suffix(name)
    stem = name[: len(name) - len(suffix)] if suffix else name
    if ext is None:
        ext = _OUTPUT_EXT.get(suffix, name[len(stem) :] or ".nii.gz")
    return f"{stem}_{postfix}{ext}"


def expand_inputs(
    inputs: str | os.PathLike | Sequence[str | os.PathLike], suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> list[str]:
    """Image files to predict from a mix of files, folders (their files ending in ``suffixes``, sorted, hidden
    files skipped) and MSD ``dataset.json`` files (their ``test`` list, relative to the json's folder).

    Files are not opened here: a missing or corrupt file fails on its own when it is predicted.

    Raises:
        ValueError: a ``.json`` that is not an MSD dataset description with a ``test`` list.
    """
    from monai.data import load_decathlon_datalist

    entries = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files: list[str] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files += sorted(
                str(p)
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes)
            )
        elif path.suffix.lower() == ".json":
            try:
                items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key="test")
            except (ValueError, KeyError, json.JSONDecodeError) as error:
                raise ValueError(f"{path}: not an MSD dataset.json with a 'test' list ({error})") from error
            for item in items:
                image = item["image"]
                if isinstance(image, (list, tuple)):
                    raise ValueError(f"{path}: test entries with one file per channel are not supported ({image})")
                files.append(str(image))
        else:
            files.append(str(path))
    return files
