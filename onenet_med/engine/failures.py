"""What a failed bundle run ends with: the problem and its file, after MONAI's traceback.

A problem found inside ``python -m monai.bundle run`` (a bad data file, a missing dataset folder, a checkpoint of
another network, an unknown network or task name, a switch set to ``yes``) reaches the user wrapped in MONAI's
``RuntimeError: Failed to evaluate ConfigExpression ...`` and ``Failed to instantiate ...``: the last lines on the
screen are the wrapper's, and the message that matters is tens of lines up, in the middle of a traceback.

:func:`install_failure_summary` (the configs call it first thing in ``initialize``) chains a ``sys.excepthook``
that lets Python print the traceback as before and then prints a short summary: the config item that failed,
the config files, and the innermost error that is not a MONAI wrapper, so that the last lines a user sees say
what went wrong, naming the file. The exit status stays Python's (1).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

__all__ = ["failure_summary", "install_failure_summary", "root_problem"]

_WRAPPER_PREFIXES = ("Failed to evaluate", "Failed to instantiate")
MAX_LINES = 60


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from (``__cause__``, else the unsuppressed ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _is_wrapper(error: BaseException) -> bool:
    """MONAI's config wrappers, which only say which expression or component failed."""
    return isinstance(error, RuntimeError) and str(error).startswith(_WRAPPER_PREFIXES)


def root_problem(error: BaseException) -> BaseException:
    """The outermost exception in ``error``'s chain that is not a MONAI config wrapper (our errors wrap the
    low-level ones with the file name, so the outermost non-wrapper is the one that says the most)."""
    for item in _chain(error):
        if not _is_wrapper(item):
            return item
    return error


def _config_items(error: BaseException) -> list[str]:
    """Ids of the config items being resolved when ``error`` happened, outermost first (read from MONAI's
    reference resolver frames; empty when the failure did not come through a config)."""
    ids: list[str] = []
    for item in _chain(error):
        tb: types.TracebackType | None = item.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code.co_name == "_resolve_one_item" and isinstance(frame.f_locals.get("id"), str):
                if not ids or ids[-1] != frame.f_locals["id"]:
                    ids.append(frame.f_locals["id"])
            tb = tb.tb_next
    return ids


def _config_files(argv: list[str]) -> str | None:
    """The ``--config_file`` value of a ``monai.bundle`` command line."""
    for i, token in enumerate(argv):
        if token == "--config_file" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config_file="):
            return token.split("=", 1)[1]
    return None


def _message(error: BaseException) -> list[str]:
    """The error's message as lines; a DataLoader worker's error keeps its first and last lines."""
    text = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else str(error)
    lines = str(text).strip().splitlines() or [""]
    if "Original Traceback (most recent call last):" in lines:  # torch re-raising a worker's exception
        lines = [lines[0], lines[-1]]
    if len(lines) > MAX_LINES:
        lines = [*lines[: MAX_LINES - 1], f"  ... {len(lines) - MAX_LINES + 1} more lines in the traceback above"]
    lines[0] = f"{type(error).__name__}: {lines[0]}"
    return lines


def failure_summary(error: BaseException, argv: list[str] | None = None) -> str:
    """The lines printed after the traceback of a failed run: where it failed, then the problem (last)."""
    argv = sys.argv if argv is None else argv
    problem = root_problem(error)
    head = "onenet-med: the run failed"
    items = _config_items(error)
    where = []
    if items:
        where.append(f"config item '{items[-1].replace('::', '#')}'")  # MONAI's internal separator
    files = _config_files(argv)
    if files:
        where.append(f"config {files}")
    lines = ["", f"--- {head}" + (f" ({', '.join(where)})" if where else "") + " ---", *_message(problem)]
    return "\n".join(lines)


_installed: list = []


def install_failure_summary() -> None:
    """Chain the summary after the current ``sys.excepthook`` (once per process; idempotent)."""
    if _installed and sys.excepthook is _installed[0]:
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, tb: types.TracebackType | None) -> None:
        previous(kind, error, tb)
        if isinstance(error, Exception):  # not KeyboardInterrupt / SystemExit
            try:
                print(failure_summary(error), file=sys.stderr, flush=True)
            except Exception:  # the summary must never hide the traceback
                pass

    _installed[:] = [hook]
    sys.excepthook = hook
