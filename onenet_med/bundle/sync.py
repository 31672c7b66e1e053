"""Self-contained bundle folders generated from one source: ``bundles/common/``.

Every bundle holds real files (no symbolic links: a zip, ``monai.bundle download`` and Windows clones turn links into
text files). What the bundles share is written once, in ``bundles/common/``, and copied into each bundle by
:func:`sync_bundles` (``onenet-med bundle sync``); a test fails when a bundle's copy differs from what it generates
(``onenet-med bundle sync --check``). A bundle's own files are ``configs/metadata.json`` (its name says its task),
``docs/README.md`` and ``docs/data_license.txt``.

Generated per bundle:

* ``configs/train.json``, ``evaluate.json``, ``multi_gpu_train.json``, ``multi_gpu_evaluate.json``,
  ``logging.conf``, ``docs/usage.md`` (how to use a bundle, anywhere) and ``LICENSE``: copies of ``common/``;
* ``configs/inference.json``: runs alone, model-zoo style. ``common/configs/inference.json`` is written as an overlay
  on ``train.json``; the bundle's copy is that overlay plus every ``train.json`` entry it refers to (directly or
  through other entries), and its ``imports`` and ``initialize`` (the failure summary, the seed), so a change to a
  shared entry of ``train.json`` reaches it too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "COMMON",
    "COPIED",
    "STANDALONE",
    "bundle_folders",
    "format_config",
    "generated_files",
    "standalone_config",
    "sync_bundles",
]

#: The source folder under ``bundles/``.
COMMON = "common"
#: Files copied verbatim from ``common/`` into every bundle.
COPIED = (
    "configs/train.json",
    "configs/evaluate.json",
    "configs/multi_gpu_train.json",
    "configs/multi_gpu_evaluate.json",
    "configs/logging.conf",
    "docs/usage.md",
    "LICENSE",
)
#: Overlays written standalone: bundle file -> the config whose entries it needs (same name under ``common/``).
STANDALONE = {"configs/inference.json": "configs/train.json"}

#: Entries of the base every standalone config gets, referred to or not: what a run does before anything else.
ALWAYS_COPIED = ("imports", "initialize")

_REFERENCE = re.compile(r"@(\w+)")


def bundle_folders(bundles_dir: str | os.PathLike) -> list[Path]:
    """The bundles under ``bundles_dir``: folders holding ``configs/metadata.json`` (not ``common/``), sorted."""
    root = Path(bundles_dir)
    return sorted(p for p in root.iterdir() if p.name != COMMON and (p / "configs" / "metadata.json").is_file())


def _references(value: Any) -> set[str]:
    """Top-level ids referred to (``@id``, ``@id#sub``) anywhere in ``value``."""
    if isinstance(value, str):
        return set(_REFERENCE.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(_references(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value))
    return set()


def standalone_config(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` plus the entries of ``base`` it needs (and :data:`ALWAYS_COPIED`), as one config that runs alone.

    Loading ``base`` and then the result gives what loading ``base`` and then ``overlay`` gives (the copied entries
    are ``base``'s own). Nested overlay ids (``network_def#trained``) are applied to the copied entry.

    Args:
        base: a config (``train.json``).
        overlay: a config meant to be loaded after ``base`` (``inference.json``).
    """
    nested = {k: v for k, v in overlay.items() if "#" in k}
    top = {k: v for k, v in overlay.items() if "#" not in k}
    needed = {*ALWAYS_COPIED} | {k.split("#", 1)[0] for k in nested} | _references(overlay)
    pending = list(needed)
    while pending:
        key = pending.pop()
        if key in base and key not in top:
            for ref in _references(base[key]) - needed:
                needed.add(ref)
                pending.append(ref)
    merged = {k: v for k, v in base.items() if k in needed and k not in top}  # base's order, then the overlay's
    merged.update(top)
    merged = json.loads(json.dumps(merged))  # a deep copy: nested ids below must not touch base
    for key, value in nested.items():
        *path, last = key.split("#")
        target = merged
        for part in path:
            if part not in target:
                raise KeyError(f"overlay id {key!r}: {part!r} is not in the base config")
            target = target[part]
        target[last] = value
    return merged


def format_config(config: Any, width: int = 120) -> str:
    """JSON with 4-space indents; a list or dict that fits on its line stays on one line (the configs' style)."""

    def render(value: Any, indent: int, room: int) -> str:
        flat = json.dumps(value, ensure_ascii=False)
        if not isinstance(value, (dict, list)) or (indent > 0 and len(flat) <= room) or not value:
            return flat
        pad, inner = " " * indent, " " * (indent + 4)
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                prefix = f"{json.dumps(k, ensure_ascii=False)}: "
                items.append(inner + prefix + render(v, indent + 4, width - indent - 4 - len(prefix) - 1))
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        items = [inner + render(v, indent + 4, width - indent - 5) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"

    return render(config, 0, width) + "\n"


def generated_files(common_dir: str | os.PathLike) -> dict[str, bytes]:
    """Relative path -> content of every file a bundle gets from ``common_dir``.

    Raises:
        FileNotFoundError: a source file is missing (naming it).
    """
    common = Path(common_dir)
    missing = [str(common / rel) for rel in (*COPIED, *STANDALONE) if not (common / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"bundle sources missing: {', '.join(missing)}")
    files = {rel: (common / rel).read_bytes() for rel in COPIED}
    for rel, base_rel in STANDALONE.items():
        base = json.loads((common / base_rel).read_text())
        overlay = json.loads((common / rel).read_text())
        files[rel] = format_config(standalone_config(base, overlay)).encode()
    return files


def sync_bundles(
    bundles_dir: str | os.PathLike, check: bool = False, bundles: Iterable[str | os.PathLike] | None = None
) -> list[str]:
    """Write the generated files into every bundle (or only report what differs).

    Args:
        bundles_dir: the folder holding ``common/`` and the bundles (``bundles``).
        check: write nothing; only list the files that differ from what would be written.
        bundles: bundle folders to sync (default: :func:`bundle_folders`).

    Returns:
        the files that were (``check``: would be) rewritten: out of date, missing, or symbolic links.
    """
    from onenet_med.engine.atomic import atomic_path

    files = generated_files(Path(bundles_dir) / COMMON)
    changed = []
    for bundle in [Path(b) for b in bundles] if bundles is not None else bundle_folders(bundles_dir):
        for rel, content in files.items():
            path = bundle / rel
            if not path.is_symlink() and path.is_file() and path.read_bytes() == content:
                continue
            changed.append(str(path))
            if check:
                continue
            if path.is_symlink():
                path.unlink()
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(content)
    return changed
