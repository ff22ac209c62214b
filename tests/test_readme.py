"""Every command in the README and docs/*.md names a script that exists and accepts the options
written there, so the manual cannot drift from the code; the README's dataset instructions are
those of datasets.SPECS, and it stays a manual of at most 400 lines. What the commands do is
tested by the other test files (and `make demo` runs its own); here each Python command is parsed
by its own argparse parser."""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import subprocess
import sys

import pytest

import datasets
from tests.conftest import ROOT

README = ROOT / "README.md"
MANUAL = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
# Indented code lines and inline `code` that start a command; a line ending in a backslash goes
# on in the next; comments and `[optional]` parts are dropped, `a && b` is two commands.
COMMAND = re.compile(r"(?:^ {4}|`)((?:python|\./reencode\.sh|make) [^`#\n]*)", re.M)


def readme_commands() -> list[str]:
    found = set()
    text = "\n".join(p.read_text() for p in MANUAL)
    for m in COMMAND.finditer(re.sub(r"\\\n\s*", " ", text)):
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
    assert {
        "make demo",
        "make test",
        "python train.py @configs/demo.args --fold 0 --out runs/try",
        "python datasets.py --dataset custom --root data/mine --annotations data/mine/labels.csv",
    } <= set(cmds)


def test_the_readme_is_a_manual():
    """At most 400 lines, the first real-data training command within the first 150, and each
    dataset's instructions exactly as its spec gives them (one source: datasets.SPECS)."""
    lines = README.read_text().splitlines()
    assert len(lines) <= 400
    first = next(
        i for i, line in enumerate(lines) if line.startswith("    python train.py --dataset")
    )
    assert first < 150 and "--dataset synthetic" not in lines[first]
    text = README.read_text()
    for name in ("ckplus", "mmi", "afew", "dfew", "ferv39k", "mafw"):
        assert datasets.prepare_text(name, f"data/{name}-raw", f"data/{name}") in text, name


def test_nothing_outside_the_project_is_named():
    """No file of the project names its internal notes or trackers."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    pattern = re.compile(r"MISSION\.md|search[ ]tool|\bissue\b|\bIssue \d", re.I)
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".pb", ".pt", ".so"} or not path.is_file():
            continue
        hits = [
            i
            for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if pattern.search(line)
        ]
        assert not hits, f"{name}: lines {hits}"


@pytest.mark.parametrize("cmd", readme_commands())
def test_readme_command_parses(cmd, monkeypatch):
    monkeypatch.chdir(ROOT)  # @configs/... files are relative to the repository
    argv = shlex.split(cmd)
    if argv[0] == "make":
        assert re.search(rf"^{re.escape(argv[1])}:", (ROOT / "Makefile").read_text(), re.M), cmd
        return
    if argv[0] == "./reencode.sh":  # placeholders name no folder: the script says so, exit 2
        run = subprocess.run(
            ["bash", str(ROOT / "reencode.sh"), *argv[1:]], capture_output=True, text=True, cwd="/"
        )
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
