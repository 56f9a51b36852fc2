"""Every command has help, is in the README, and the CLI's exit codes mean what README says."""

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from pagelens import __version__
from pagelens.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
COMMANDS = ["index", "search", "show", "serve", "info", "verify", "remove", "compact", "recompress"]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"pagelens {__version__}"


def test_every_command_has_help_and_is_documented():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for command in COMMANDS:
        assert re.search(rf"\b{command}\b", top.output), f"{command} missing from top-level help"
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "--index" in result.output or command == "index"
        assert f"pagelens {command}" in readme, f"README does not show `pagelens {command}`"


def test_missing_index_is_one_clear_error(tmp_path):
    result = runner.invoke(app, ["info", "--index", str(tmp_path / "nowhere")])
    assert result.exit_code == 4
    assert "no pagelens index" in result.output
    assert "Traceback" not in result.output


def test_usage_error_exit_code(tmp_path):
    result = runner.invoke(app, ["search"])
    assert result.exit_code == 2


def test_disk_full_is_one_clear_error(tmp_path, monkeypatch):
    import errno

    import pagelens.api

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "idx"))

    monkeypatch.setattr(pagelens.api.Index, "open", classmethod(lambda cls, *a, **k: full()))
    result = runner.invoke(app, ["info", "--index", str(tmp_path / "idx")])
    assert result.exit_code == 4
    assert "No space left on device" in result.output and "run the same command again" in result.output
    assert "Traceback" not in result.output


def test_every_exit_code_is_in_the_readme_table_and_the_top_level_help():
    import pagelens.errors

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    top = runner.invoke(app, ["--help"]).output
    codes = {v for k, v in vars(pagelens.errors).items() if k.startswith("EXIT_")}
    assert codes == {0, 1, 2, 3, 4, 5, 130, 143}
    for code in codes:
        assert re.search(rf"^\| {code} \|", readme, re.MULTILINE), f"exit code {code} missing from README"
        assert re.search(rf"\b{code}\b", top), f"exit code {code} missing from --help"
