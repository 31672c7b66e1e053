"""On/off switches as users type them: one parser for every boolean setting of the bundles and the CLI.

``python -m monai.bundle run`` hands command-line values over through python-fire, which turns ``False`` into
the boolean ``False`` and ``0`` into the int ``0`` but leaves ``false`` as the *string* ``"false"``, and
``bool("false")`` is ``True``. JSON configs spell booleans in lower case, so users will too. Every switch
therefore goes through :func:`switch`, which accepts exactly ``true false True False 1 0`` (as strings, or the
bool / int python-fire makes of them) and rejects anything else with a message naming the switch.

Adopting it takes one line:

- in a bundle config, at every place the switch is used: ``"amp": "$onenet_med.switch(@amp, 'amp')"``;
- in the ``onenet-med`` command line, flags (``action="store_true"``) of parsers built by
  :class:`SwitchArgumentParser` (every ``onenet-med`` sub-command) also take a value: ``--overwrite false``,
  ``--overwrite=0``; a setting whose default is "the bundle's" (on, off or unset) is a
  ``argparse.BooleanOptionalAction`` pair with ``default=None`` (``--amp`` / ``--no-amp``), whose ``--amp false``
  means ``--no-amp``; an option holding a boolean value uses ``type=switch_type("--name")``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["FALSE_SPELLINGS", "TRUE_SPELLINGS", "SwitchArgumentParser", "SwitchError", "switch", "switch_type"]

TRUE_SPELLINGS = ("true", "True", "1")
FALSE_SPELLINGS = ("false", "False", "0")


class SwitchError(ValueError):
    """A switch got a value that is not one of ``true false True False 1 0``."""

    def __init__(self, name: str, value: Any) -> None:
        self.name, self.value = name, value
        super().__init__(f"switch {name!r} takes true, false, True, False, 1 or 0; got {value!r}")


def switch(value: Any, name: str) -> bool:
    """The boolean meant by ``value`` of the switch ``name``.

    Args:
        value: a bool, the int 0 or 1, or one of the strings ``true false True False 1 0``.
        name: the switch's name, for the error message (the config id or the command-line option).

    Raises:
        SwitchError: any other value (``"yes"``, ``"TRUE"``, ``2``, ``None``, ...).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # python-fire turns "1" / "0" into ints
        return bool(value)
    if isinstance(value, str):
        if value in TRUE_SPELLINGS:
            return True
        if value in FALSE_SPELLINGS:
            return False
    raise SwitchError(name, value)


def switch_type(name: str) -> Callable[[str], bool]:
    """An argparse ``type`` for an option holding a switch value (``--amp false``)."""

    def parse(text: str) -> bool:
        try:
            return switch(text, name)
        except SwitchError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = "switch"  # argparse names the type in some messages
    return parse


def _flag_options(parser: argparse.ArgumentParser) -> set[str]:
    """Option strings of the parser's own presence flags (store_true / store_false)."""
    kinds = (argparse._StoreTrueAction, argparse._StoreFalseAction)
    return {option for action in parser._actions if isinstance(action, kinds) for option in action.option_strings}


def _opposites(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``--amp`` -> ``--no-amp`` and back, for the parser's ``BooleanOptionalAction`` pairs."""
    pairs: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse.BooleanOptionalAction):
            positive = [o for o in action.option_strings if not o.startswith("--no-")]
            for option in positive:
                pairs[option], pairs["--no-" + option[2:]] = "--no-" + option[2:], option
    return pairs


class SwitchArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose flags also take a switch value.

    ``--overwrite`` alone still means on; ``--overwrite true|false|True|False|1|0`` and ``--overwrite=VALUE`` set
    it explicitly (``false`` = as if the flag were absent); ``--overwrite=yes`` is rejected naming the flag. A
    ``BooleanOptionalAction`` pair takes values the same way: ``--amp false`` is ``--no-amp`` (and ``--no-amp false``
    is ``--amp``). A flag followed by anything else (a path, another option) is a plain flag, as before. Sub-command
    parsers created with ``add_subparsers`` are of the same class, so every sub-command gets this.
    """

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._apply_switch_values(args), namespace)

    def _apply_switch_values(self, args: list[str]) -> list[str]:
        opposites = _opposites(self)
        flags = _flag_options(self) | set(opposites)
        out: list[str] = []
        i = 0
        while i < len(args):
            token = args[i]
            if token == "--":  # everything after is positional
                out += args[i:]
                break
            option, sep, value = token.partition("=")
            if sep and option in flags:
                on = self._switch_value(option, value)
            elif token in flags and i + 1 < len(args) and args[i + 1] in TRUE_SPELLINGS + FALSE_SPELLINGS:
                option, on = token, switch(args[i + 1], token)
                i += 1
            else:
                out.append(token)
                i += 1
                continue
            if on:
                out.append(option)
            elif option in opposites:
                out.append(opposites[option])
            i += 1
        return out

    def _switch_value(self, option: str, value: str) -> bool:
        try:
            return switch(value, option)
        except SwitchError as error:
            self.error(str(error))
