"""onenet_med.switches: every spelling of every switch, in the helper, the bundle configs and the onenet-med CLI."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from fire.parser import DefaultParseValue
from parameterized import parameterized

from onenet_med.switches import SwitchArgumentParser, SwitchError, switch, switch_type
from tests.conftest import REPO_ROOT

CONFIGS = Path(REPO_ROOT) / "bundles" / "common" / "configs"

# what users type, and what `python -m monai.bundle run` hands the config for it: MONAI's CLI is python-fire,
# whose parser keeps lower case as a string and makes "True" a bool and "1" an int
SPELLINGS = [("true", True), ("false", False), ("True", True), ("False", False), ("1", True), ("0", False)]
FIRE_VALUES = [(DefaultParseValue(text), meaning) for text, meaning in SPELLINGS]
REJECTED = ["yes", "TRUE", "no", "", "2", 2, -1, 1.0, None]


def test_fire_hands_over_strings_bools_and_ints():
    """The types the switch must handle, as MONAI's command line produces them."""
    assert FIRE_VALUES == [("true", True), ("false", False), (True, True), (False, False), (1, True), (0, False)]
    assert [type(value) for value, _ in FIRE_VALUES] == [str, str, bool, bool, int, int]


class TestSwitch:
    @parameterized.expand(SPELLINGS + FIRE_VALUES)
    def test_accepted_spellings(self, value, expected):
        assert switch(value, "resume") is expected

    @parameterized.expand([(value,) for value in REJECTED])
    def test_rejected_values_name_the_switch(self, value):
        with pytest.raises(SwitchError, match=r"switch 'resume' takes true, false, True, False, 1 or 0; got") as error:
            switch(value, "resume")
        assert error.value.name == "resume" and error.value.value == value
        assert isinstance(error.value, ValueError)

    def test_switch_type_for_argparse(self):
        parser = argparse.ArgumentParser()
        parser.add_argument("--amp", type=switch_type("--amp"), default=None)
        for text, expected in SPELLINGS:
            assert parser.parse_args(["--amp", text]).amp is expected
        with pytest.raises(SystemExit):
            parser.parse_args(["--amp", "yes"])


# ------------------------------------------------------------------------------------------------- the bundles


CONFIG_FILES = sorted(p.name for p in CONFIGS.glob("*.json"))


def config_switches(config_files: list[str] = CONFIG_FILES) -> dict[str, object]:
    """Top-level ids of the configs (all of ``bundles/common/configs``: ``train.json``'s ``amp``, ``inference.json``'s
    ``load_pretrain``, ...) whose default is a boolean: a JSON bool or a ``$`` expression without references that
    evaluates to one (``amp``: CUDA available). Every such id is a switch."""
    from monai.bundle import ConfigParser

    found = {}
    for name in config_files:
        raw = json.loads((CONFIGS / name).read_text())
        parser = ConfigParser(raw)
        for key, value in raw.items():
            if isinstance(value, bool):
                found[key] = value
            elif isinstance(value, str) and value.startswith("$") and "@" not in value and "import" not in value:
                try:
                    parsed = parser.get_parsed_content(key)
                except Exception:  # needs something else of the config: not a plain default
                    continue
                if isinstance(parsed, bool):
                    found[key] = parsed
    return found


def use_sites(config, name: str, path: str = "") -> list[tuple[str, str]]:
    """``(id, text)`` of every string of ``config`` that refers to ``@name``."""
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list):
        items = enumerate(config)
    else:
        pattern = re.compile(rf"@{re.escape(name)}(?![\w#])")
        return [(path, config)] if isinstance(config, str) and pattern.search(config) else []
    return [site for key, value in items for site in use_sites(value, name, f"{path}#{key}" if path else str(key))]


def test_switches_are_found():
    switches = config_switches()
    assert {"resume", "amp", "progress", "drop_last", "load_pretrain", "separate_folder"} <= set(switches)
    assert {"optimize", "channels_last", "compile"} <= set(switches)
    assert switches["resume"] is False and switches["progress"] is True and switches["drop_last"] is False
    assert switches["load_pretrain"] is True and switches["separate_folder"] is False
    assert switches["optimize"] is True and switches["channels_last"] is False and switches["compile"] is False
    speed = {"optimize", "channels_last", "compile"}
    assert set(config_switches(["train.json", "evaluate.json"])) == {"resume", "amp", "progress", "drop_last", *speed}


@parameterized.expand([(name,) for name in CONFIG_FILES])
def test_every_use_of_a_switch_goes_through_the_helper(config_file):
    """A switch read as ``@resume`` would take the string "false" as true: every use must call the helper."""
    config = json.loads((CONFIGS / config_file).read_text())
    for name in config_switches():
        for site, text in use_sites(config, name):
            assert f"onenet_med.switch(@{name}, '{name}')" in text, (
                f"{config_file}: {site} uses @{name} without onenet_med.switch(@{name}, '{name}'): {text!r}"
            )


def parsed_with(config_files: list[str], overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in config_files])
    parser.read_meta(str(Path(REPO_ROOT) / "bundles" / "onenet_heart" / "configs" / "metadata.json"))
    parser.update(overrides)
    parser.parse(reset=True)
    return parser


@parameterized.expand([(files,) for files in (["train.json", "evaluate.json"], ["train.json", "inference.json"])])
def test_each_spelling_of_each_switch_at_each_use(config_files):
    """With every spelling, every place a switch is used gets what the real boolean gives; anything else is
    rejected naming the switch."""
    merged = {}
    for name in config_files:
        merged.update(json.loads((CONFIGS / name).read_text()))
    switches = config_switches(config_files)
    sites = {name: [site for site, _ in use_sites(merged, name)] for name in switches}
    assert all(sites.values()), sites
    for value, meaning in FIRE_VALUES:
        given = parsed_with(config_files, dict.fromkeys(switches, value))
        reference = parsed_with(config_files, dict.fromkeys(switches, meaning))
        for name, ids in sites.items():
            for site in ids:
                assert given.get_parsed_content(site) == reference.get_parsed_content(site), (name, site, value)
    for name, ids in sites.items():
        bad = parsed_with(config_files, {name: "yes"})
        for site in ids:
            with pytest.raises(RuntimeError) as error:  # MONAI wraps the expression's error
                bad.get_parsed_content(site)
            assert isinstance(error.value.__cause__, SwitchError), site
            assert f"switch '{name}'" in str(error.value.__cause__)


@parameterized.expand(SPELLINGS + FIRE_VALUES)
def test_cache_switch_spellings(value, on):
    parser = parsed_with(["train.json"], {"cache": value})
    expected = "memory" if on else "none"  # heart's own mode is memory
    assert parser.get_parsed_content("train#dataset#cache") == expected
    assert parser.get_parsed_content("validate#dataset#cache") == expected


# -------------------------------------------------------------------------------------------- the onenet-med CLI


FLAG_KINDS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


def cli_flags() -> list[tuple[list[str], argparse.ArgumentParser, argparse.Action]]:
    """(sub-command words, its parser, flag action) for every presence flag (store_true / store_false) and every
    ``--x`` / ``--no-x`` pair (BooleanOptionalAction) of every ``onenet-med`` sub-command."""
    from onenet_med.cli import build_parser

    found = []

    def visit(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    visit(sub, [*words, name])
            elif isinstance(action, FLAG_KINDS):
                found.append((words, parser, action))

    visit(build_parser(), [])
    return found


def flag_meanings(action: argparse.Action) -> list[tuple[str, object, object]]:
    """``(option, value when on, value when off)`` of each option string of a flag action."""
    if isinstance(action, argparse.BooleanOptionalAction):  # --amp false = --no-amp, --no-amp false = --amp
        return [
            (option, not option.startswith("--no-"), option.startswith("--no-")) for option in action.option_strings
        ]
    return [(option, action.const, action.default) for option in action.option_strings[:1]]


def required_arguments(parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """Placeholder values for the required options and the positionals of a sub-command."""
    options, positionals = [], []
    for action in parser._actions:
        value = str(next(iter(action.choices))) if action.choices else "1" if action.type is int else "x"
        if not action.option_strings and action.nargs != "?" and action.nargs != "*":
            positionals.append(value)
        elif action.option_strings and action.required:
            options += [action.option_strings[0], value]
    return options, positionals


def test_cli_has_flags():
    names = {option for _, _, action in cli_flags() for option in action.option_strings}
    assert {"--overwrite", "--no-progress", "--quick", "--reuse"} <= names
    assert {"--optimize", "--no-optimize", "--amp", "--no-amp", "--compile", "--no-channels-last"} <= names


def test_every_cli_flag_takes_every_spelling():
    from onenet_med.cli import build_parser

    parser = build_parser()
    for words, sub, action in cli_flags():
        options, positionals = required_arguments(sub)
        for flag, on, off in flag_meanings(action):
            for text, meaning in SPELLINGS:
                for given in ([flag, text], [f"{flag}={text}"]):
                    # the value right after the flag, positionals after it: the value must not be taken as an input
                    args = parser.parse_args([*words, *options, *given, *positionals])
                    assert getattr(args, action.dest) == (on if meaning else off), (words, given)
                    if positionals:
                        dest = next(a.dest for a in sub._actions if not a.option_strings and a.nargs != "?")
                        got = getattr(args, dest)
                        assert (got if isinstance(got, str) else got[0]) == positionals[0], (words, given)
            assert getattr(parser.parse_args([*words, *options, flag, *positionals]), action.dest) == on
        assert getattr(parser.parse_args([*words, *options, *positionals]), action.dest) == action.default


@pytest.mark.parametrize("value", ["maybe", "", "TRUE", "yes"])
def test_cli_rejects_other_values_naming_the_flag(value, capsys):
    from onenet_med.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--bundle", "b", "--output", "o", f"--overwrite={value}", "scan.nii.gz"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"switch '--overwrite' takes true, false, True, False, 1 or 0; got {value!r}" in last


def test_flag_before_a_path_stays_a_flag():
    """A flag followed by anything that is not a switch value is a plain flag, as before."""
    from onenet_med.cli import build_parser

    args = build_parser().parse_args(["data", "check", "--quick", "data/Task02_Heart"])
    assert args.quick is True and args.path == "data/Task02_Heart"
    args = build_parser().parse_args(["data", "check", "--quick", "--", "0"])  # a folder named 0
    assert args.quick is True and args.path == "0"


def test_flag_pairs_take_values():
    """A BooleanOptionalAction pair (default: unset, the bundle's setting): a value sets either side explicitly."""
    parser = SwitchArgumentParser(prog="x")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("inputs", nargs="*")
    assert parser.parse_args([]).amp is None
    assert parser.parse_args(["--amp", "false", "a.nii"]) == argparse.Namespace(amp=False, inputs=["a.nii"])
    assert parser.parse_args(["--no-amp=0"]).amp is True
    assert parser.parse_args(["--amp", "b.nii"]) == argparse.Namespace(amp=True, inputs=["b.nii"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp=yes"])


def test_switch_parser_subparsers_inherit():
    parser = SwitchArgumentParser(prog="x")
    sub = parser.add_subparsers(dest="command").add_parser("go")
    sub.add_argument("--dry", action="store_true")
    sub.add_argument("--keep", action="store_false")
    assert isinstance(sub, SwitchArgumentParser)
    assert parser.parse_args(["go", "--dry", "False", "--keep", "1"]) == argparse.Namespace(
        command="go", dry=False, keep=False
    )
    assert parser.parse_args(["go", "--dry=true", "--keep=false"]) == argparse.Namespace(
        command="go", dry=True, keep=True
    )
