"""Incremental recursion on pushes with trees larger than the client's list lookahead.

The stock client keeps at most about 10,000 entries of sub-lists ahead of
what the generator has finished (sender.c / io.c MAX_FILECNT_LOOKAHEAD): a
receiver that waited for the whole list before generating would hang here.
Each push goes to stock rsyncd and to backupd with the same command; both
must leave the same tree and print the same itemized lines.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import assert_trees_equal
from tests.interop.conftest import T0, assert_ok, set_mtime, show

DIRS, FILES = 220, 60   # 13,200 files in 220 directories (plus 22 parents): past the lookahead
NATIVE = {"c3.5.0", "c3.2.7"}  # each client at its own protocol; the forced 30/31 variants add no list rules


@pytest.fixture
def native_client(rsync_client):
    if rsync_client.id not in NATIVE:
        pytest.skip("a big tree per client version is enough: the forced-protocol variants run the scenarios")
    return rsync_client


def many_small_files(root: Path) -> None:
    """``g00/d000 .. g21/d219``, each with ``FILES`` tiny files; fixed mtimes."""
    for d in range(DIRS):
        sub = root / f"g{d // 10:02d}" / f"d{d:03d}"
        sub.mkdir(parents=True)
        for f in range(FILES):
            path = sub / f"f{f:02d}"
            path.write_bytes(b"%d/%d\n" % (d, f))
            set_mtime(path, T0 + f)
        set_mtime(sub, T0)
    for group in root.iterdir():
        set_mtime(group, T0)
    set_mtime(root, T0)


def _names(result) -> list[str]:
    """The -v lines without the byte counts and rates (framing and timing differ)."""
    return [line for line in result.stdout.splitlines() if not line.startswith(("sent ", "total size"))]


def _itemized(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line[:1] in "<>ch.*"]


def test_a_push_beyond_the_lookahead_matches_rsyncd(make_targets, native_client, tmp_path):
    rsync_client = native_client
    src = tmp_path / "src"
    src.mkdir()
    many_small_files(src)
    targets = make_targets(params={"history": False})
    first = {kind: t.push(rsync_client, "-av", f"{src}/", timeout=300) for kind, t in targets.items()}
    for result in first.values():
        assert_ok(result)
        assert result.stdout.startswith("sending incremental file list\n"), show(result)
    assert _names(first["backupd"]) == _names(first["rsyncd"])
    assert len(_names(first["rsyncd"])) > DIRS * FILES
    assert_trees_equal(targets["rsyncd"].module, targets["backupd"].module)

    # a second push: a directory gone, files changed in many lists, deletions per directory
    shutil.rmtree(src / "g03")
    for d in range(0, DIRS, 7):
        path = src / f"g{d // 10:02d}" / f"d{d:03d}" / "f05"
        if path.exists():
            path.write_bytes(b"changed %d\n" % d)
            set_mtime(path, T0 + 999)
    os.remove(src / "g10" / "d100" / "f00")
    second = {kind: t.push(rsync_client, "-ai", "--delete", f"{src}/", timeout=300) for kind, t in targets.items()}
    for result in second.values():
        assert_ok(result)
    # the same lines; where '*deleting' messages fall among the itemized requests depends, for
    # both servers, on when the generator's buffer is flushed (the small scenarios pin the order)
    assert sorted(_itemized(second["backupd"])) == sorted(_itemized(second["rsyncd"])), show(second["backupd"])
    assert len(_itemized(second["rsyncd"])) > 600  # the deletions of g03 and the changed files
    assert_trees_equal(targets["rsyncd"].module, targets["backupd"].module)


def test_history_keeps_what_an_incremental_push_deletes(make_targets, native_client, tmp_path):
    rsync_client = native_client
    src = tmp_path / "src"
    src.mkdir()
    many_small_files(src)
    target = make_targets(("backupd",))["backupd"]
    assert_ok(target.push(rsync_client, "-a", f"{src}/", timeout=300))
    shutil.rmtree(src / "g21")
    (src / "g00" / "d000" / "f01").write_bytes(b"new content\n")
    assert_ok(target.push(rsync_client, "-a", "--delete", f"{src}/", timeout=300))
    kept = target.history_contents()
    assert kept["g00/d000/f01"] == [b"0/1\n"]
    assert sum(1 for rel in kept if rel.startswith("g21/")) == 10 * FILES
    assert not (target.module / "g21").exists()


def _link_groups(root: Path) -> list[list[str]]:
    """Names of the files sharing an inode, grouped; the groups sorted."""
    by_inode: dict[int, list[str]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            by_inode.setdefault(os.lstat(path).st_ino, []).append(os.path.relpath(path, root))
    return sorted(sorted(names) for names in by_inode.values() if len(names) > 1)


def test_hard_links_across_many_lists_match_rsyncd(make_targets, native_client, tmp_path):
    """-H past the generator's 500-entry read-ahead: groups whose members are lists apart."""
    src = tmp_path / "src"
    src.mkdir()
    many_small_files(src)
    for d in range(0, DIRS, 9):  # each group: a file early in the tree, one far later, one in the last dir
        first = src / f"g{d // 10:02d}" / f"d{d:03d}" / "f07"
        later = DIRS - 1 - d // 3
        os.link(first, src / f"g{later // 10:02d}" / f"d{later:03d}" / f"link{d:03d}")
        os.link(first, src / "g21" / "d219" / f"also{d:03d}")
    targets = make_targets(params={"history": False})
    done = {kind: t.push(native_client, "-aHi", f"{src}/", timeout=300) for kind, t in targets.items()}
    for result in done.values():
        assert_ok(result)
    assert sorted(_itemized(done["backupd"])) == sorted(_itemized(done["rsyncd"])), show(done["backupd"])
    assert_trees_equal(targets["rsyncd"].module, targets["backupd"].module)
    groups = _link_groups(targets["backupd"].module)
    assert groups == _link_groups(targets["rsyncd"].module) and len(groups) == len(range(0, DIRS, 9))
