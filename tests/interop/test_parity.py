"""Parity with stock rsyncd 3.5.0 for the concrete examples of issue 9.

Every scenario runs the same client command against the stock rsyncd and
against backupd, both with ``history = no`` and seeded with the same module
tree, and compares the exit code, the itemized (``-i``) and ``*deleting``
lines in the order the client printed them, the daemon messages the client
prints, and the resulting module trees. Stock rsyncd is the oracle: nothing
here states what the output must be, only that both servers agree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.helpers import Dir, File, Symlink, make_tree, tree_differences
from tests.interop.conftest import T0, set_mtime, show

NO_HISTORY = {"history": False}


@pytest.fixture(params=["3.5.0", "3.2.7"], ids=["c3.5.0", "c3.2.7"])
def client(request, rsync_clients):
    """Both stock clients in turn."""
    return rsync_clients[request.param]


ITEM = re.compile(r"^(?:[<>ch.*][fdLDS][ .+?a-zA-Z]{9} |\*deleting +|created directory )")
NOISE = re.compile(r" at [\w./]+(?:\(\d+\))? \[\w+=[\w.-]+\]$")


def printed(done) -> list[str]:
    """Itemize, ``*deleting`` and ``created directory`` lines, in the client's order."""
    return [line for line in done.stdout.splitlines() if ITEM.match(line)]


def messages(done) -> list[str]:
    """stderr lines, without rsync's ``at main.c(N) [sender=V]`` tails, sorted."""
    return sorted(NOISE.sub("", line).strip() for line in done.stderr.splitlines() if line.strip())


def make_source(root: Path, spec) -> Path:
    make_tree(root, spec)
    os.chmod(root, 0o755)
    set_mtime(root, T0 + 40)
    return root


def compare(
    make_targets,
    client,
    args,
    *,
    seed=None,
    path="",
    params=None,
    cwd=None,
    volatile=(),
    order=True,
    stderr=True,
):
    """Run ``rsync <args> URL/path`` into rsyncd and backupd modules seeded with ``seed``.

    Asserts equal exit codes, equal printed lines (in order unless ``order``
    is false), equal stderr messages (if ``stderr``) and equal module trees;
    ``volatile`` names paths whose mtime is not compared (changed "now").
    """
    targets = make_targets(seed=seed or {}, params={**NO_HISTORY, **(params or {})})
    results = {k: t.push(client, *args, path=path, cwd=cwd) for k, t in targets.items()}
    stock, ours = results["rsyncd"], results["backupd"]
    both = f"--- rsyncd\n{show(stock)}\n\n--- backupd\n{show(ours)}"
    assert ours.returncode == stock.returncode, both
    a, b = printed(stock), printed(ours)
    if not order:
        a, b = sorted(a), sorted(b)
    assert b == a, both
    if stderr:
        assert messages(ours) == messages(stock), both
    diffs = tree_differences(targets["rsyncd"].module, targets["backupd"].module)
    skip = tuple(f"{os.fsencode(p)!r}: mtime differs" for p in volatile)
    diffs = [d for d in diffs if not d.startswith(skip)]
    assert not diffs, "modules differ (rsyncd vs backupd):\n" + "\n".join(diffs) + "\n" + both
    return targets, results


SRC = {
    "a.txt": File(b"a\n", mode=0o644, mtime=T0),
    "sub": Dir({"b.txt": File(b"b\n", mode=0o644, mtime=T0)}, mode=0o755, mtime=T0),
}


# ---------------------------------------------------------------- 1. missing destination


def test_push_into_missing_dir(make_targets, client, tmp_path):
    src = make_source(tmp_path / "src", SRC)
    compare(make_targets, client, ["-ai", f"{src}/"], path="x/", volatile=["."])


def test_push_mkpath(make_targets, client, tmp_path):
    src = make_source(tmp_path / "src", SRC)
    compare(make_targets, client, ["-ai", "--mkpath", f"{src}/"], path="x/y/", volatile=[".", "x", "x/y"])


@pytest.mark.parametrize(
    "args,path",
    [
        (["-ai", "SRC"], "x/"),  # the dir itself, not its contents
        (["-ai", "-n", "SRC/"], "x/"),
        (["-ai", "SRC/"], "x/y/"),  # missing parent: mkdir fails
        (["-ai", "--mkpath", "SRC/a.txt"], "x/y/f"),
        (["-ai", "--mkpath", "SRC/a.txt"], "x/y/"),
        (["-av", "--mkpath", "SRC/"], "x/y"),
    ],
    ids=["dir", "dry-run", "no-parent", "mkpath-file", "mkpath-file-slash", "mkpath-v"],
)
def test_push_missing_dest_forms(make_targets, client, tmp_path, args, path):
    src = make_source(tmp_path / "src", SRC)
    args = [a.replace("SRC", str(src)) for a in args]
    compare(make_targets, client, args, path=path, volatile=[".", "x", "x/y"])
