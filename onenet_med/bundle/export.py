"""``onenet-med bundle export``: a bundle folder as the zip that ``monai.bundle download`` fetches and extracts.

The zip holds one folder named after the bundle (MONAI's ``extractall(..., has_base=True)`` layout) with its
``configs/``, ``docs/``, ``LICENSE`` and, when they exist, the trained ``models/model.pt``, ``models/model.ts`` and
``models/task.json`` (the task the model was trained for; :mod:`onenet_med.bundle.record`). Training state
(``models/latest.pt``), outputs and data stay behind. With a ``task.json``, the zip's ``metadata.json`` describes the
trained model's channels and classes (``network_data_format``), which matters for the generic ``onenet_msd``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["EXPORTED_MODELS", "export_bundle", "exported_metadata"]

#: Files of ``models/`` that travel with a bundle.
EXPORTED_MODELS = ("model.pt", "model.ts", "task.json")


def exported_metadata(metadata: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """``metadata`` with the trained task's channels and classes in ``network_data_format`` (unchanged without a
    task record)."""
    if record is None:
        return metadata
    spec = record["task_spec"]
    meta = json.loads(json.dumps(metadata))
    image = meta["network_data_format"]["inputs"]["image"]
    image["num_channels"] = spec.in_channels
    image["channel_def"] = {str(i): name for i, name in enumerate(spec.channel_names or ["image"] * spec.in_channels)}
    pred = meta["network_data_format"]["outputs"]["pred"]
    pred["num_channels"] = spec.num_classes
    pred["channel_def"] = {str(i): name for i, name in enumerate(spec.class_names)}
    return meta


def export_bundle(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``<out_dir>/<name>_v<version>.zip`` of a bundle folder, atomically.

    Raises:
        FileNotFoundError: not a bundle folder.
        ValueError: a symbolic link in the bundle, or (inside a checkout) shared files out of date with
            ``bundles/common`` (run ``onenet-med bundle sync``).
    """
    from onenet_med.bundle.record import read_task_record
    from onenet_med.bundle.sync import COMMON, sync_bundles
    from onenet_med.engine.atomic import atomic_path

    bundle = Path(bundle_dir).resolve()
    meta_file = bundle / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{bundle}: not a bundle folder (no configs/metadata.json)")
    if (bundle.parent / COMMON).is_dir():
        stale = sync_bundles(bundle.parent, check=True, bundles=[bundle])
        if stale:
            listed = ", ".join(stale)
            raise ValueError(f"{listed}: out of date with {bundle.parent / COMMON}: run onenet-med bundle sync")
    files = [p for folder in ("configs", "docs") for p in sorted((bundle / folder).rglob("*"))]
    files += [bundle / "LICENSE"] + [bundle / "models" / name for name in EXPORTED_MODELS]
    files = [p for p in files if p.is_symlink() or p.is_file()]
    links = [str(p) for p in files if p.is_symlink()]
    if links:
        raise ValueError(f"symbolic links cannot travel in a zip: {', '.join(links)}")
    metadata = json.loads(meta_file.read_text())
    name, version = metadata["name"], metadata["version"]
    record = read_task_record(bundle / "models" / "model.pt")
    target = Path(out_dir) / f"{name}_v{version}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            arcname = f"{name}/{path.relative_to(bundle).as_posix()}"
            if path == meta_file and record is not None:
                archive.writestr(arcname, json.dumps(exported_metadata(metadata, record), indent=4) + "\n")
            else:
                archive.write(path, arcname)
    return target
