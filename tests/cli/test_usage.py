"""The installed ``backupd`` console script: --help of every command, one-line usage errors, --version.

Run as subprocesses of the console script on PATH (what a user types), not
through typer's test runner, so a missing dependency or an import-time crash
fails here as it would for a user.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import backupd

COMMANDS = [
    (),
    ("serve",),
    ("watch",),
    ("push",),
    ("status",),
    ("history",),
    ("history", "ls"),
    ("restore",),
    ("prune",),
]


def console_script() -> str:
    """The ``backupd`` script installed beside this interpreter (pip install -e .)."""
    beside = Path(sys.executable).with_name("backupd")
    found = str(beside) if beside.exists() else shutil.which("backupd")
    if found is None:
        pytest.fail("the backupd console script is not installed (pip install -e '.[test]')")
    return found


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), *args], capture_output=True, text=True, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "backupd")
def test_help_of_every_command(command):
    done = run(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: backupd"), done.stdout
    assert "Traceback" not in done.stdout + done.stderr


USAGE_ERRORS = [
    (("srve",), "No such command 'srve'"),
    (("serve", "--bogus"), "No such option: --bogus"),
    (("serve", "--port", "99999"), "--port"),
    (("serve", "--port", "-1"), "--port"),
    (("history", "ls"), "Missing argument"),
    (("restore", "backup", "f", "--to", "/nonexistent-out", "--at", "xyzzy"), "'xyzzy'"),  # 'yesterday' is a time
    (("prune", "--days", "-3"), "--days"),
    (("watch",), "Missing option '--config'"),
]


@pytest.mark.parametrize("args,words", USAGE_ERRORS, ids=lambda a: " ".join(a) if isinstance(a, tuple) else None)
def test_usage_error_is_one_line_exit_2(args, words, tmp_path):
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert words in lines[0] and "error:" in lines[0], lines[0]
    assert "--help" in lines[0]
    assert list(tmp_path.iterdir()) == [], "a usage error created files"


def test_version():
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"backupd {backupd.__version__}"


def test_shell_completion_is_offered():
    done = run("--show-completion", "bash")
    assert done.returncode == 0, done.stderr
    assert "complete" in done.stdout and "backupd" in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("history", "ls", "backup", "."),
        ("restore", "backup", "f", "--at", "2026-01-01", "--to", "out"),
        ("prune", "--dry-run"),
    ],
    ids=["history-ls", "restore", "prune-dry-run"],
)
def test_reading_commands_create_nothing_without_a_config(args, tmp_path):
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "no --config given" in done.stderr and str(tmp_path / "backupd-data") in done.stderr
    assert list(tmp_path.iterdir()) == [], "a reading command created state"
