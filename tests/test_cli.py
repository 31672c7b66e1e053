import subprocess
import sys

import pytest

from onenet_med import __version__
from onenet_med.cli import main


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: onenet-med" in capsys.readouterr().out


def test_module_entry_point(subprocess_env):
    out = subprocess.run(
        [sys.executable, "-m", "onenet_med", "--help"], env=subprocess_env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "onenet-med" in out.stdout
