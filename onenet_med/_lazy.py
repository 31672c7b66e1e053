"""Lazy package attributes: sub-modules that import MONAI load on first use, so ``onenet-med --help`` stays fast."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` serving ``names`` (attribute -> module) on first access.

    A module is a sub-module of ``package`` (``"predictor"``) or, for a re-export from another package, an absolute
    name (``"onenet_med.bundle.inputs"``)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name in names:
            module = names[name] if names[name].startswith("onenet_med.") else f"{package}.{names[name]}"
            value = getattr(importlib.import_module(module), name)
            namespace[name] = value  # later lookups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
