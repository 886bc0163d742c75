"""storage/xattrs.py: reading, setting on a staged file, xattr-only updates that keep history."""

from __future__ import annotations

import os
from datetime import datetime

import pytest

from backupd.errors import PathEscape
from backupd.storage import HistoryStore, ModuleTree
from tests import xattr_fs

xattr_base, xattr_dir = xattr_fs.xattr_base, xattr_fs.xattr_dir  # fixtures

NOW = datetime(2026, 3, 4, 5, 6, 7)
BIG = bytes(range(256)) * 30
ALL = lambda name: True  # noqa: E731
USER = lambda name: name.startswith(b"user.")  # noqa: E731


@pytest.fixture
def module(xattr_dir):
    root = xattr_dir / "mod"
    (root / "sub").mkdir(parents=True)
    (root / "f.txt").write_bytes(b"content\n")
    os.setxattr(root / "f.txt", b"user.old", b"1")
    os.setxattr(root / "f.txt", b"user.big", BIG)
    os.symlink("f.txt", root / "link")
    return root


def tree_of(root, history=True) -> ModuleTree:
    return ModuleTree(root, module="m", history=HistoryStore(clock=lambda: NOW) if history else None)


def test_get_reads_what_the_filter_keeps(module):
    with tree_of(module) as tree:
        assert tree.xattrs.get(b"f.txt", USER) == {b"user.old": b"1", b"user.big": BIG}
        assert tree.xattrs.get(b"f.txt", lambda n: n == b"user.old") == {b"user.old": b"1"}
        assert tree.xattrs.get(b"link", USER) == {}  # the link itself, not its target
        assert tree.xattrs.get(b"missing", USER) is None
        assert tree.xattrs.get_value(b"f.txt", b"user.big") == BIG
        assert tree.xattrs.get_value(b"f.txt", b"user.none") is None


def test_staged_file_gets_its_attributes_before_the_rename(module):
    with tree_of(module) as tree:
        staged = tree.create_staged(b"sub/new.txt", 0o644)
        staged.write(b"new\n")
        assert staged.set_xattrs({b"user.a": b"A", b"user.big": BIG}, USER) == []
        assert not (module / "sub/new.txt").exists()
        staged.commit(mtime_ns=None)
    assert os.getxattr(module / "sub/new.txt", b"user.a") == b"A"
    assert os.getxattr(module / "sub/new.txt", b"user.big") == BIG


def test_xattr_only_update_is_a_new_inode_and_history_keeps_the_old(module):
    before = os.stat(module / "f.txt")
    with tree_of(module) as tree:
        failed = tree.xattrs.update_file(b"f.txt", {b"user.new": b"2", b"user.big": BIG[::-1]}, USER)
    assert failed == []
    after = os.stat(module / "f.txt")
    assert after.st_ino != before.st_ino
    assert (module / "f.txt").read_bytes() == b"content\n"
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert sorted(os.listxattr(module / "f.txt")) == ["user.big", "user.new"]  # user.old removed
    assert os.getxattr(module / "f.txt", b"user.big") == BIG[::-1]
    kept = module / "history-backup" / NOW.strftime("%Y-%m-%d") / "f.txt"
    assert os.stat(kept).st_ino == before.st_ino
    assert os.getxattr(kept, b"user.old") == b"1" and os.getxattr(kept, b"user.big") == BIG


def test_update_keeps_names_that_are_not_ours(module):
    os.setxattr(module / "f.txt", b"trusted.keep", b"t")  # root only; outside the filter
    with tree_of(module) as tree:
        assert tree.xattrs.update_file(b"f.txt", {}, USER) == []
    assert os.listxattr(module / "f.txt") == ["trusted.keep"]


def test_without_history_the_live_inode_is_updated(module):
    ino = os.stat(module / "f.txt").st_ino
    with tree_of(module, history=False) as tree:
        assert tree.xattrs.update_file(b"f.txt", {b"user.old": b"1"}, USER) == []
    assert os.stat(module / "f.txt").st_ino == ino
    assert os.listxattr(module / "f.txt") == ["user.old"]


def test_directory_and_root_in_place(module):
    with tree_of(module) as tree:
        assert tree.xattrs.set_in_place(b"sub", {b"user.d": b"x" * 100}, USER) == []
        assert tree.xattrs.set_in_place(b".", {b"user.top": b"t"}, USER) == []
        assert tree.xattrs.get(b"sub", USER) == {b"user.d": b"x" * 100}
        assert tree.xattrs.get(b".", ALL) == {b"user.top": b"t"}


def test_failures_are_reported_not_raised(module):
    with tree_of(module) as tree:
        failed = tree.xattrs.set_in_place(b"link", {b"user.x": b"1"}, USER)  # Linux: no user.* on symlinks
        assert failed and "user.x" in failed[0]
        assert tree.xattrs.set_in_place(b"gone", {}, USER)


def test_history_is_out_of_reach(module):
    with tree_of(module) as tree:
        tree.xattrs.update_file(b"f.txt", {}, USER)
        day = b"history-backup/" + NOW.strftime("%Y-%m-%d").encode()
        with pytest.raises(PathEscape):
            tree.xattrs.set_in_place(day + b"/f.txt", {}, USER)


def test_hard_linked_file_is_changed_in_place_with_a_copy_in_history(module):
    os.link(module / "f.txt", module / "g.txt")
    ino = os.stat(module / "f.txt").st_ino
    with tree_of(module) as tree:
        assert tree.xattrs.update_file(b"f.txt", {b"user.new": b"2"}, USER) == []
    assert os.stat(module / "f.txt").st_ino == os.stat(module / "g.txt").st_ino == ino
    assert os.listxattr(module / "g.txt") == ["user.new"]
    kept = module / "history-backup" / NOW.strftime("%Y-%m-%d") / "f.txt"
    assert os.stat(kept).st_ino != ino and kept.read_bytes() == b"content\n"
    assert os.getxattr(kept, b"user.old") == b"1" and os.getxattr(kept, b"user.big") == BIG
