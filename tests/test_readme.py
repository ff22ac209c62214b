"""Every command in the README names a script that exists and accepts the options written there,
so the README cannot drift from the code. What the commands do is tested by the other test files
(and `make demo` runs its own); here each Python command is parsed by its own argparse parser."""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
# Indented code lines and inline `code` that start a command; a line ending in a backslash goes
# on in the next; comments and `[optional]` parts are dropped, `a && b` is two commands.
COMMAND = re.compile(r"(?:^ {4}|`)((?:python|\./reencode\.sh|make) [^`#\n]*)", re.M)


def readme_commands() -> list[str]:
    found = set()
    for m in COMMAND.finditer(re.sub(r"\\\n\s*", " ", README.read_text())):
        for part in m.group(1).split("&&"):
            cmd = re.sub(r"\[[^\]]*\]", "", part).strip()
            if cmd:
                found.add(cmd)
    return sorted(found)


class _Parsed(Exception):
    """Raised once a script's parser has accepted its arguments (so nothing else runs)."""


def test_the_readme_has_commands():
    cmds = readme_commands()
    assert len(cmds) > 20
    assert {"make demo", "make test"} <= set(cmds)


@pytest.mark.parametrize("cmd", readme_commands())
def test_readme_command_parses(cmd, monkeypatch):
    argv = shlex.split(cmd)
    if argv[0] == "make":
        assert re.search(rf"^{re.escape(argv[1])}:", (ROOT / "Makefile").read_text(), re.M), cmd
        return
    if argv[0] == "./reencode.sh":  # placeholders name no folder: the script says so, exit 2
        run = subprocess.run(["bash", str(ROOT / "reencode.sh"), *argv[1:]], capture_output=True,
                             text=True, cwd="/")
        assert run.returncode == 2 and "does not exist" in run.stderr, run.stderr
        return
    script = ROOT / argv[1]
    assert script.is_file(), f"{cmd}: no such script"
    original = argparse.ArgumentParser.parse_args

    def parse(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse)
    monkeypatch.setattr(sys, "argv", [str(script), *argv[2:]])
    try:
        runpy.run_path(str(script), run_name="__main__")
    except _Parsed:
        return
    except SystemExit as e:
        pytest.fail(f"{cmd}: rejected by its parser (exit {e.code})")
    pytest.fail(f"{cmd}: ran without parsing any argument")
