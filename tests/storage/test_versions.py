"""history ls and restore over versions the real HistoryStore made."""

from __future__ import annotations

import os
from datetime import date, datetime

import pytest

from backupd.errors import PathEscape
from backupd.storage import HistoryStore, ModuleTree
from backupd.storage.versions import find_versions, pick_version, restore_version

MTIME = 1_600_000_000 * 10**9


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock():
    return Clock(datetime(2026, 11, 19, 9, 0, 0))


@pytest.fixture
def tree(root, clock):
    with ModuleTree(root, module="m", history=HistoryStore(clock=clock)) as tree:
        yield tree


def put(tree, path: bytes, data: bytes, mode: int = 0o640, mtime_ns: int = MTIME) -> None:
    with tree.create_staged(path, mode) as staged:
        staged.write(data)
        staged.commit(mtime_ns=mtime_ns)


@pytest.fixture
def history(tree, root, clock):
    """a/f.txt: v1 (19th) replaced at 10:11:12 by v2, at 12:13:14 by v3; on the 20th at 8:00 by v4, deleted.

    History: 19th f.txt = v1, f.txt.~121314~ = v2; 20th f.txt = v3, f.txt.~080000~ = v4.
    """
    tree.makedirs(b"a", 0o755)
    put(tree, b"a/f.txt", b"v1", mtime_ns=MTIME + 1)
    clock.now = datetime(2026, 11, 19, 10, 11, 12)
    put(tree, b"a/f.txt", b"v2 two", mtime_ns=MTIME + 2)
    clock.now = datetime(2026, 11, 19, 12, 13, 14)
    put(tree, b"a/f.txt", b"v3 three", 0o600, mtime_ns=MTIME + 3)
    clock.now = datetime(2026, 11, 20, 8, 0, 0)
    put(tree, b"a/f.txt", b"v4 four!", mtime_ns=MTIME + 4)
    tree.delete(b"a/f.txt")
    return tree


def test_versions_newest_first_with_suffix_times(history):
    versions = find_versions(history, b"a/f.txt", "history-backup")
    assert [v.path for v in versions] == [
        b"history-backup/2026-11-20/a/f.txt.~080000~",
        b"history-backup/2026-11-20/a/f.txt",
        b"history-backup/2026-11-19/a/f.txt.~121314~",
        b"history-backup/2026-11-19/a/f.txt",
    ]
    assert [v.size for v in versions] == [8, 8, 6, 2]
    assert versions[0].archived == datetime(2026, 11, 20, 8, 0, 0)
    assert versions[2].archived == datetime(2026, 11, 19, 12, 13, 14)
    assert [v.mtime_ns - MTIME for v in versions] == [4, 3, 2, 1]
    assert not any(v.current for v in versions)


def test_current_version_is_listed_first(history):
    put(history, b"a/f.txt", b"now")
    versions = find_versions(history, b"a/f.txt", "history-backup")
    assert versions[0].current and versions[0].size == 3 and versions[0].path == b"a/f.txt"


def test_versions_inside_a_directory_deleted_twice_in_a_day(tree, clock):
    tree.makedirs(b"d", 0o755)
    put(tree, b"d/x", b"first")
    tree.delete(b"d")
    clock.now = datetime(2026, 11, 19, 15, 16, 17)
    tree.makedirs(b"d", 0o755)
    put(tree, b"d/x", b"second")
    tree.delete(b"d")
    versions = find_versions(tree, b"d/x", "history-backup")
    assert [(v.path, v.archived) for v in versions][0] == (
        b"history-backup/2026-11-19/d.~151617~/x", datetime(2026, 11, 19, 15, 16, 17))
    assert {v.path for v in versions} == {b"history-backup/2026-11-19/d.~151617~/x",
                                          b"history-backup/2026-11-19/d/x"}


def test_pick_by_day_or_time(history):
    versions = find_versions(history, b"a/f.txt", "history-backup")
    assert pick_version(versions, date(2026, 11, 19)).size == 6          # that day's newest
    assert pick_version(versions, datetime(2026, 11, 19, 11, 0)).size == 2
    assert pick_version(versions, datetime(2026, 11, 19, 12, 13, 14)).size == 6
    assert pick_version(versions, date(2026, 11, 18)) is None


def test_restore_copies_content_mode_and_mtime(history, tmp_path):
    versions = find_versions(history, b"a/f.txt", "history-backup")
    target = restore_version(history, versions[2], tmp_path / "out")
    assert target == tmp_path / "out" / "f.txt"
    assert target.read_bytes() == b"v2 two"
    st = target.stat()
    assert st.st_mtime_ns == MTIME + 2 and st.st_mode & 0o777 == 0o640


def test_restore_refuses_to_overwrite_unless_forced(history, tmp_path):
    versions = find_versions(history, b"a/f.txt", "history-backup")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f.txt").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        restore_version(history, versions[0], tmp_path / "out")
    assert (tmp_path / "out" / "f.txt").read_bytes() == b"mine"
    restore_version(history, versions[0], tmp_path / "out", force=True)
    assert (tmp_path / "out" / "f.txt").read_bytes() == b"v4 four!"
    assert os.listdir(tmp_path / "out") == ["f.txt"]          # no temp file left behind


def test_restore_a_deleted_directory_whole(tree, tmp_path):
    tree.makedirs(b"d/e", 0o750)
    put(tree, b"d/e/x", b"x!")
    os.symlink("e/x", tree.root.decode() + "/d/ln")
    tree.delete(b"d")
    (version,) = find_versions(tree, b"d", "history-backup")
    assert version.kind == "dir"
    out = restore_version(tree, version, tmp_path / "out")
    assert (out / "e" / "x").read_bytes() == b"x!" and os.readlink(out / "ln") == "e/x"
    assert (out / "e").stat().st_mode & 0o777 == 0o750


def test_paths_inside_history_are_refused(history):
    with pytest.raises(PathEscape):
        find_versions(history, b"history-backup/2026-11-19/a/f.txt", "history-backup")


def test_symlinks_in_history_are_not_followed(tree, root, tmp_path):
    outside = tmp_path / "outside"
    (outside / "a").mkdir(parents=True)
    (outside / "a" / "f.txt").write_text("secret")
    (root / "history-backup" / "2026-11-18").mkdir(parents=True)
    os.symlink(outside / "a", root / "history-backup" / "2026-11-18" / "a")
    os.symlink(outside, root / "history-backup" / "2026-11-17")
    assert find_versions(tree, b"a/f.txt", "history-backup") == []
