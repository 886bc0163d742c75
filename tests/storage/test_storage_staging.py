"""StagedFile: temp file, commit with history, abort, --partial, fallbacks."""

from __future__ import annotations

import errno
import os
import stat
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.errors import StorageError
from backupd.storage import HistoryStore, ModuleTree, staging

DAY = "history-backup/2024-05-17"
STAMP = ".~134509~"  # conftest FIXED_NOW 13:45:09


def put(tree, path: bytes, data: bytes, *, mode=0o644, mtime_ns=1_000_000_000) -> None:
    with tree.create_staged(path, 0o600) as staged:
        staged.write(data)
        staged.commit(mtime_ns=mtime_ns, mode=mode)


def make_old(root, rel: str, data: bytes, mode: int, mtime_ns: int):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_new_file_commit_sets_content_attrs_and_removes_temp(tree, root):
    (root / "d").mkdir()
    staged = tree.create_staged(b"d/new.txt", 0o644)
    assert staged.temp_name.startswith(b".new.txt.")
    temp = root / "d" / os.fsdecode(staged.temp_name)
    assert stat.S_IMODE(temp.stat().st_mode) == 0o600
    staged.write(b"hello ")
    staged.write(memoryview(b"world"))
    assert staged.tell() == 11
    assert not (root / "d" / "new.txt").exists()  # invisible until commit
    staged.commit(mtime_ns=1_234_567_890_123_456_789)
    target = (root / "d" / "new.txt").stat()
    assert (root / "d" / "new.txt").read_bytes() == b"hello world"
    assert stat.S_IMODE(target.st_mode) == 0o644  # create_staged's mode
    assert target.st_mtime_ns == 1_234_567_890_123_456_789
    assert os.listdir(root / "d") == ["new.txt"]
    assert not (root / "history-backup").exists()  # nothing was replaced


def test_commit_keeps_old_version_intact_in_history(tree, root):
    old = make_old(root, "d/f", b"old content", 0o640, 1_111_111_111_000_000_001)
    old_ino = old.stat().st_ino
    put(tree, b"d/f", b"new content", mode=0o604, mtime_ns=2_000_000_000)
    assert old.read_bytes() == b"new content"
    assert stat.S_IMODE(old.stat().st_mode) == 0o604
    kept = root / DAY / "d" / "f"
    st = kept.stat()
    assert kept.read_bytes() == b"old content"
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 1_111_111_111_000_000_001)
    assert st.st_ino == old_ino  # hard link: the very same inode
    assert sorted(os.listdir(root / "d")) == ["f"]


def test_three_versions_on_one_day_give_three_history_files(tree, root):
    for n in range(4):
        put(tree, b"f", b"version %d" % n, mtime_ns=(n + 1) * 10**9)
    kept = root / DAY
    assert sorted(os.listdir(kept)) == sorted(["f", "f" + STAMP, "f" + STAMP + ".1"])
    assert (kept / "f").read_bytes() == b"version 0"
    assert (kept / ("f" + STAMP)).read_bytes() == b"version 1"
    assert (kept / ("f" + STAMP + ".1")).read_bytes() == b"version 2"
    assert (root / "f").read_bytes() == b"version 3"


def test_large_write_in_chunks(tree, root):
    chunk = os.urandom(1 << 20)
    with tree.create_staged(b"big", 0o644) as staged:
        for _ in range(8):
            staged.write(memoryview(chunk))
        staged.write(b"tail")
        assert staged.tell() == 8 * len(chunk) + 4
        staged.commit(mtime_ns=None)
    assert (root / "big").read_bytes() == chunk * 8 + b"tail"


def test_abort_and_exception_leave_target_untouched(tree, root):
    old = make_old(root, "f", b"old", 0o644, 10**9)
    staged = tree.create_staged(b"f", 0o644)
    staged.write(b"new")
    staged.abort()
    staged.abort()  # idempotent
    with pytest.raises(StorageError):
        staged.write(b"more")
    with pytest.raises(RuntimeError), tree.create_staged(b"f", 0o644) as staged:
        staged.write(b"new")
        raise RuntimeError("transfer failed")
    with tree.create_staged(b"f", 0o644) as staged:
        staged.write(b"never committed")
    assert old.read_bytes() == b"old"
    assert os.listdir(root) == ["f"]


def test_keep_partial_replaces_target_with_mtime_zero_and_keeps_old(tree, root):
    make_old(root, "f", b"old complete file", 0o644, 10**9)
    staged = tree.create_staged(b"f", 0o640)
    staged.write(b"part")
    staged.keep_partial()
    st = (root / "f").stat()
    assert (root / "f").read_bytes() == b"part"
    assert st.st_mtime_ns == 0
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (root / DAY / "f").read_bytes() == b"old complete file"
    assert set(os.listdir(root)) == {"f", "history-backup"}


def test_keep_partial_in_moves_the_data_aside_and_leaves_the_target(tree, root):
    make_old(root, "f", b"old complete file", 0o644, 10**9)
    (root / ".part").mkdir()
    make_old(root, ".part/f", b"an older partial", 0o600, 10**9)
    staged = tree.create_staged(b"f", 0o640)
    staged.write(b"part")
    staged.keep_partial_in(b".part/f")
    assert (root / "f").read_bytes() == b"old complete file"
    st = (root / ".part" / "f").stat()
    assert (root / ".part" / "f").read_bytes() == b"part"
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns > 10**9 * 10  # the write time, not the source's
    assert (root / DAY / ".part" / "f").read_bytes() == b"an older partial"
    assert sorted(os.listdir(root / ".part")) == ["f"]  # no temp file left in either dir
    assert sorted(os.listdir(root)) == [".part", "f", "history-backup"]


def test_temp_dir_holds_the_temp_file_until_commit(tree, root):
    make_old(root, "d/f", b"old", 0o644, 10**9)
    (root / "tmp").mkdir()
    staged = tree.create_staged(b"d/f", 0o640, temp_dir=b"tmp")
    staged.write(b"new")
    assert [n.startswith(".f.") for n in os.listdir(root / "tmp")] == [True]  # made there, rsync's name
    assert os.listdir(root / "d") == ["f"]
    staged.commit(mtime_ns=2 * 10**9)
    assert (root / "d" / "f").read_bytes() == b"new"
    assert os.listdir(root / "tmp") == [] and os.listdir(root / "d") == ["f"]
    assert (root / DAY / "d" / "f").read_bytes() == b"old"
    aborted = tree.create_staged(b"d/f", 0o640, temp_dir=b"tmp")
    aborted.abort()
    assert os.listdir(root / "tmp") == []
    inside = tree.create_staged(b"d/g", 0o640, temp_dir=b"history-backup")  # never inside history
    assert sorted(os.listdir(os.fsencode(root / "d"))) == sorted([b"f", inside.temp_name])
    inside.abort()


def test_commit_over_a_directory_moves_it_whole(tree, root, snapshot):
    (root / "x" / "sub").mkdir(parents=True)
    (root / "x" / "sub" / "a").write_bytes(b"a")
    os.symlink("sub/a", root / "x" / "ln")
    before = snapshot(root / "x")
    put(tree, b"x", b"now a file")
    assert (root / "x").read_bytes() == b"now a file"
    assert snapshot(root / DAY / "x") == before


def test_commit_over_a_symlink_keeps_the_symlink(tree, root):
    os.symlink("some/target", root / "ln")
    put(tree, b"ln", b"file")
    assert os.readlink(root / DAY / "ln") == "some/target"
    assert (root / "ln").read_bytes() == b"file"


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM])
def test_link_impossible_falls_back_to_copy(tree, root, monkeypatch, code):
    old = make_old(root, "f", b"old data" * 1000, 0o751, 1_700_000_000_123_456_789)
    old_ino = old.stat().st_ino

    real_link = os.link

    def no_link(src, dst, *, src_dir_fd=None, dst_dir_fd=None, **kwargs):
        if code == errno.EXDEV and src_dir_fd == dst_dir_fd:  # same dir: same device
            return real_link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, **kwargs)
        raise OSError(code, os.strerror(code))  # EPERM: no hard links at all

    monkeypatch.setattr(os, "link", no_link)
    put(tree, b"f", b"new")
    kept = (root / DAY / "f").stat()
    assert (root / DAY / "f").read_bytes() == b"old data" * 1000
    assert (stat.S_IMODE(kept.st_mode), kept.st_mtime_ns) == (0o751, 1_700_000_000_123_456_789)
    assert kept.st_ino != old_ino
    assert old.read_bytes() == b"new"
    assert os.listdir(root / DAY) == ["f"]  # no temp copy left behind


def test_failed_history_refuses_the_commit_and_keeps_old(tree, root):
    old = make_old(root, "f", b"old", 0o644, 10**9)
    (root / "history-backup").write_bytes(b"not a directory")
    staged = tree.create_staged(b"f", 0o644)
    staged.write(b"new")
    with pytest.raises(StorageError, match="module backup: f: "):
        staged.commit(mtime_ns=0)
    assert old.read_bytes() == b"old"
    assert sorted(os.listdir(root)) == ["f", "history-backup"]  # temp file removed


def test_history_off_replaces_without_keeping(plain_tree, root):
    old = make_old(root, "f", b"old", 0o644, 10**9)
    (root / "d").mkdir()
    (root / "d" / "inner").write_bytes(b"")
    put(plain_tree, b"f", b"new")
    put(plain_tree, b"d", b"file now")
    assert old.read_bytes() == b"new"
    assert (root / "d").read_bytes() == b"file now"
    assert sorted(os.listdir(root)) == ["d", "f"]


def test_symlink_create_and_replace(tree, root):
    tree.symlink(b"t1", b"ln")
    assert os.readlink(root / "ln") == "t1"
    tree.symlink(b"t1", b"ln")  # same target: left alone, nothing to history
    assert not (root / "history-backup").exists()
    tree.symlink(b"t2", b"ln")
    assert os.readlink(root / "ln") == "t2"
    assert os.readlink(root / DAY / "ln") == "t1"
    (root / "f").write_bytes(b"was a file")
    tree.symlink(b"t3", b"f")
    assert os.readlink(root / "f") == "t3"
    assert (root / DAY / "f").read_bytes() == b"was a file"
    (root / "d" / "e").mkdir(parents=True)
    tree.symlink(b"t4", b"d")
    assert os.readlink(root / "d") == "t4"
    assert (root / DAY / "d" / "e").is_dir()
    assert sorted(os.listdir(root)) == ["d", "f", "history-backup", "ln"]


def test_staged_file_in_history_needs_allow_history(root, now):
    with ModuleTree(root, module="m", history=HistoryStore("hist", clock=lambda: now)) as tree:
        with pytest.raises(StorageError):
            tree.create_staged(b"hist/x", 0o644)
        put(tree, b"history-backup", b"an ordinary name when the history dir is 'hist'")
        assert (root / "history-backup").is_file()


# ---------------------------------------------------------------- -S (sparse)

SEGMENT = st.one_of(
    st.integers(1, 3 * 4096).map(lambda n: bytes(n)),  # zeros
    st.binary(min_size=1, max_size=5000),
)


@settings(max_examples=60, deadline=None)
@given(segments=st.lists(SEGMENT, min_size=1, max_size=8), cut=st.integers(1, 9000), data=st.data())
def test_sparse_writes_keep_the_content_whatever_the_chunking(tmp_path_factory, segments, cut, data):
    root = tmp_path_factory.mktemp("sparse")
    tree = ModuleTree(root, module="m")
    want = b"".join(segments)
    sizes = data.draw(st.lists(st.integers(1, cut), min_size=1, max_size=40))
    with tree.create_staged(b"f", 0o644, sparse=True) as staged:
        pos = 0
        for size in sizes * (len(want) // max(1, sum(sizes)) + 1):
            if pos >= len(want):
                break
            staged.write(want[pos : pos + size])
            pos += size
        assert staged.tell() == len(want)
        staged.commit(mtime_ns=None)
    tree.close()
    assert (root / "f").read_bytes() == want


def test_sparse_leaves_holes_for_zero_blocks_and_the_tail(tree, root):
    mib = 1 << 20
    head, tail = os.urandom(5000), os.urandom(3000)
    want = head + bytes(4 * mib) + tail + bytes(2 * mib)
    for name, sparse in ((b"holes", True), (b"dense", False)):
        with tree.create_staged(name, 0o644, sparse=sparse) as staged:
            for off in range(0, len(want), 32 * 1024):
                staged.write(want[off : off + 32 * 1024])
            staged.commit(mtime_ns=None)
    holes, dense = (root / "holes").stat(), (root / "dense").stat()
    assert (root / "holes").read_bytes() == want and holes.st_size == len(want)
    assert dense.st_blocks * 512 >= 6 * mib  # written zeros take space...
    assert holes.st_blocks * 512 <= 64 * 1024  # ...holes do not: only the data blocks


# ---------------------------------------------------------------- the temp file's writer, what commit replaced

WRITER_OP = st.one_of(
    st.tuples(st.just("write"), st.binary(max_size=200)),
    st.tuples(st.just("skip"), st.integers(0, 100)),  # seek forward (a hole, as -S does)
    st.tuples(st.just("rewind"), st.integers(0, 10_000)),  # seek back to a position already written
)


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(WRITER_OP, max_size=30))
def test_temp_writer_is_a_buffered_file_whatever_the_calls(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("writer") / "f"
    model, pos = bytearray(), 0
    with patch.object(staging, "WRITE_BUFFER", 64):  # small: buffered, flushed and direct writes all happen
        writer = staging.TempWriter(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        for op, arg in ops:
            if op == "write":
                writer.write(arg)
                if arg:  # what a skip passed over reads as zeros once something is written after it
                    model.extend(bytes(max(0, pos - len(model))))
                model[pos : pos + len(arg)] = arg
                pos += len(arg)
            elif op == "skip":
                pos = writer.seek(arg, os.SEEK_CUR)
            else:
                pos = writer.seek(min(arg, len(model)))
            assert writer.tell() == pos
        writer.close()
    with pytest.raises(OSError):
        os.fstat(writer.fileno())  # closed
    assert path.read_bytes() == bytes(model)  # a seek past the end alone leaves no bytes (seal truncates)


def test_commit_reports_what_it_replaced(tree, root):
    with tree.create_staged(b"f", 0o644) as staged:
        staged.write(b"first")
        staged.commit(mtime_ns=None)
    assert staged.replaced is None  # nothing was there
    first = (root / "f").lstat()
    put(tree, b"f", b"second")
    with tree.create_staged(b"f", 0o644) as staged:
        staged.write(b"third")
        staged.commit(mtime_ns=None)
    assert staged.replaced.st_ino != first.st_ino  # the second version, not the first
    assert staged.replaced.st_size == len(b"second") and staged.replaced.st_mtime_ns == 1_000_000_000
