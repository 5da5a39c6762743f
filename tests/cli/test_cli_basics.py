import subprocess
import sys

import pytest
from click.testing import CliRunner

from elastic_cli.cli.app import cli


def test_help_lists_exit_codes():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "75  preempted" in result.output


@pytest.mark.slow
def test_unknown_command_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "elastic_cli", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
