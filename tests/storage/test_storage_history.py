"""History layout, local-time day folders, versions, delete into history."""

from __future__ import annotations

import errno
import os
import stat
import time
from datetime import UTC, datetime

import pytest

from backupd.errors import PathEscape, StorageError
from backupd.storage import DeleteCounts, HistoryStore, ModuleTree

DAY = "history-backup/2024-05-17"
STAMP = ".~134509~"


@pytest.fixture
def tokyo_time(monkeypatch):
    """Server local zone UTC+9 (POSIX TZ string: no tz database needed)."""
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def build_tree(root):
    (root / "d" / "sub" / "deeper").mkdir(parents=True)
    (root / "d" / "a").write_bytes(b"a" * 100)
    (root / "d" / "sub" / "b").write_bytes(b"b")
    (root / "d" / "sub" / "deeper" / "c").write_bytes(b"c")
    os.symlink("../a", root / "d" / "sub" / "ln")
    os.mkfifo(root / "d" / "fifo")
    os.chmod(root / "d" / "sub", 0o750)
    os.utime(root / "d" / "sub", ns=(10**9, 10**9))


def test_day_dir_and_suffix_use_local_time(root, tokyo_time):
    utc_evening = datetime(2024, 3, 1, 20, 30, 15, tzinfo=UTC)  # Tokyo: 2 Mar 05:30:15
    store = HistoryStore(clock=lambda: utc_evening)
    assert store.day_dir(utc_evening) == b"history-backup/2024-03-02"
    with ModuleTree(root, module="m", history=store) as tree:
        for n in range(2):
            (root / "f").write_bytes(b"v%d" % n)
            assert tree.delete(b"f") == DeleteCounts(files=1)
    assert sorted(os.listdir(root / "history-backup" / "2024-03-02")) == ["f", "f.~053015~"]


def test_naive_clock_is_taken_as_local(root, tokyo_time):
    store = HistoryStore(b"old-versions", clock=lambda: datetime(2024, 12, 31, 23, 59, 59))
    assert store.day_dir(datetime(2024, 12, 31, 23, 59, 59)) == b"old-versions/2024-12-31"


def test_delete_file_moves_it_into_history(tree, root):
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"content")
    os.chmod(root / "d" / "f", 0o604)
    os.utime(root / "d" / "f", ns=(10**9, 123_456_789_123))
    ino = (root / "d" / "f").stat().st_ino
    assert tree.delete(b"d/f") == DeleteCounts(files=1)
    assert not (root / "d" / "f").exists()
    kept = (root / DAY / "d" / "f").stat()
    assert (root / DAY / "d" / "f").read_bytes() == b"content"
    assert (kept.st_ino, stat.S_IMODE(kept.st_mode)) == (ino, 0o604)
    assert kept.st_mtime_ns == 123_456_789_123
    assert tree.delete(b"d/f") == DeleteCounts()  # already gone: nothing to count
    assert tree.delete(b"nowhere/f") == DeleteCounts()


def test_delete_directory_moves_the_whole_tree(tree, root, snapshot):
    build_tree(root)
    before = snapshot(root / "d")
    ino = (root / "d").stat().st_ino
    counts = tree.delete(b"d")
    assert counts == DeleteCounts(files=3, dirs=3, symlinks=1, devices=0, specials=1)
    assert not (root / "d").exists()
    assert snapshot(root / DAY / "d") == before
    assert (root / DAY / "d").stat().st_ino == ino  # one rename, not a copy


def test_same_day_versions_of_a_directory_and_files_never_overwrite(tree, root):
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"first f")
    tree.delete(b"d/f")  # history now has DAY/d/ as a directory
    (root / "d" / "f").write_bytes(b"second f")
    tree.delete(b"d")  # DAY/d is taken: the whole dir goes to d.~HHMMSS~
    assert (root / DAY / "d" / "f").read_bytes() == b"first f"
    assert (root / DAY / ("d" + STAMP) / "f").read_bytes() == b"second f"
    (root / "d").write_bytes(b"d is a file now")
    tree.delete(b"d")
    assert (root / DAY / ("d" + STAMP + ".1")).read_bytes() == b"d is a file now"


def test_history_dir_component_taken_by_a_file_gets_a_suffix(tree, root):
    (root / "x").write_bytes(b"x was a file")
    tree.delete(b"x")
    (root / "x").mkdir()
    (root / "x" / "inner").write_bytes(b"inner")
    tree.delete(b"x/inner")
    assert (root / DAY / "x").read_bytes() == b"x was a file"
    assert (root / DAY / ("x" + STAMP) / "inner").read_bytes() == b"inner"


def test_history_parents_copy_the_original_modes(tree, root):
    (root / "p" / "q").mkdir(parents=True)
    os.chmod(root / "p", 0o750)
    os.chmod(root / "p" / "q", 0o711)
    (root / "p" / "q" / "f").write_bytes(b"")
    tree.delete(b"p/q/f")
    assert stat.S_IMODE((root / DAY / "p").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / DAY / "p" / "q").stat().st_mode) == 0o711


def test_history_off_deletes_for_real(plain_tree, root):
    build_tree(root)
    (root / "f").write_bytes(b"")
    assert plain_tree.delete(b"f") == DeleteCounts(files=1)
    counts = plain_tree.delete(b"d")
    assert counts == DeleteCounts(files=3, dirs=3, symlinks=1, specials=1)
    assert os.listdir(root) == []


def test_real_delete_does_not_follow_symlinks_inside(plain_tree, root, outside, snapshot):
    (root / "d").mkdir()
    os.symlink(outside, root / "d" / "out")
    os.symlink(outside / "secret", root / "d" / "secret")
    before = snapshot(outside)
    assert plain_tree.delete(b"d") == DeleteCounts(dirs=1, symlinks=2)
    assert snapshot(outside) == before


def test_deep_tree_delete_without_recursion_limit(plain_tree, root):
    deep = b"/".join([b"n"] * 1200)
    plain_tree.makedirs(deep, 0o755)
    assert plain_tree.delete(b"n").dirs == 1200
    assert os.listdir(root) == []


def test_preserve_and_move_api(tree, root):
    history = tree.history
    (root / "f").write_bytes(b"keep me")
    assert history.preserve(b"f") == DAY.encode() + b"/f"
    assert (root / "f").read_bytes() == b"keep me"  # still there
    copied = history.preserve(b"f", copy=True)
    assert copied == DAY.encode() + b"/f" + STAMP.encode()
    assert (root / "f").stat().st_ino != (root / copied.decode()).stat().st_ino
    moved = history.move(b"f")
    assert moved == DAY.encode() + b"/f" + STAMP.encode() + b".1"
    assert not (root / "f").exists()
    for bad in [b"", b"history-backup/x", b"../f"]:
        with pytest.raises(PathEscape):
            history.preserve(bad)
    with pytest.raises(StorageError):
        history.move(b"missing")
    (root / "dir").mkdir()
    with pytest.raises(StorageError):
        history.preserve(b"dir")


def test_kept_gives_the_copy_inode_only_when_history_holds_a_copy(tree, root, monkeypatch):
    """The catalog stores history's inode of a version: a link or rename keeps the entry's own, a copy has its own."""
    history = tree.history
    (root / "f").write_bytes(b"v1")
    own = (root / "f").stat().st_ino

    def entry(op, name=b"f", **kwargs):
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return op(fd, (name,), os.stat(name, dir_fd=fd, follow_symlinks=False), **kwargs)
        finally:
            os.close(fd)

    linked = entry(history.preserve_entry)
    assert linked.copy_ino is None and (root / linked.path.decode()).stat().st_ino == own
    copied = entry(history.preserve_entry, copy=True)
    assert copied.copy_ino == (root / copied.path.decode()).stat().st_ino != own
    os.link(root / "f", root / "g")  # -H: a shared inode is copied into history, on delete too
    moved = entry(history.move_entry)
    assert moved.copy_ino == (root / moved.path.decode()).stat().st_ino != own
    (root / "k").write_bytes(b"one name")
    assert entry(history.move_entry, b"k").copy_ino is None  # linked, then unlinked: its own inode
    real_link = os.link

    def across_devices(src, dst, *, src_dir_fd=None, dst_dir_fd=None, **kwargs):
        if src_dir_fd != dst_dir_fd:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, **kwargs)

    monkeypatch.setattr(os, "link", across_devices)
    (root / "h").write_bytes(b"v2")
    fallback = entry(history.preserve_entry, b"h")
    assert fallback.copy_ino == (root / fallback.path.decode()).stat().st_ino != (root / "h").stat().st_ino
    (root / "d").mkdir()
    assert entry(history.move_entry, b"d").copy_ino is None


def test_cross_device_directory_move_falls_back_to_copy(tree, root, snapshot, monkeypatch):
    build_tree(root)
    os.remove(root / "d" / "fifo")  # keep the comparison to regular entries
    before = snapshot(root / "d")

    def across_devices(real):  # history on another file system: only same-dir calls work
        def call(src, dst, *, src_dir_fd=None, dst_dir_fd=None, **kwargs):
            if src_dir_fd != dst_dir_fd:
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
            return real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, **kwargs)
        return call

    monkeypatch.setattr(os, "rename", across_devices(os.rename))
    monkeypatch.setattr(os, "link", across_devices(os.link))
    counts = tree.delete(b"d")
    assert counts == DeleteCounts(files=3, dirs=3, symlinks=1)
    assert not (root / "d").exists()
    after = snapshot(root / DAY / "d")
    assert after == before  # content, modes and mtimes, symlinks included
    (root / "f").write_bytes(b"moved across")
    assert tree.delete(b"f") == DeleteCounts(files=1)
    assert (root / DAY / "f").read_bytes() == b"moved across"
