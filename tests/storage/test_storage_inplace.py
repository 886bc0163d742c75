"""InplaceFile (--inplace): the live inode rewritten, its old version copied to history first."""

from __future__ import annotations

import os

import pytest

from backupd.errors import StorageError

DAY = "history-backup/2024-05-17"  # conftest FIXED_NOW


def rewrite(tree, path: bytes, data: bytes, *, sparse: bool = False, mtime_ns: int = 7_000_000_000) -> None:
    f = tree.open_inplace(path, 0o600, sparse=sparse)
    f.write(memoryview(data))
    f.commit(mtime_ns=mtime_ns, mode=0o640)


def test_the_same_inode_gets_the_new_content_and_history_a_copy_of_the_old(tree, root):
    (root / "f").write_bytes(b"old content, longer than the new\n")
    os.link(root / "f", root / "other-name")
    inode = (root / "f").stat().st_ino
    rewrite(tree, b"f", b"new\n")
    assert (root / "f").stat().st_ino == inode
    assert (root / "other-name").read_bytes() == b"new\n"  # a hard link shares it, as with rsyncd
    assert (root / "f").stat().st_mtime_ns == 7_000_000_000
    assert (root / "f").stat().st_mode & 0o777 == 0o640
    kept = root / DAY / "f"
    assert kept.read_bytes() == b"old content, longer than the new\n"
    assert kept.stat().st_ino != inode  # a copy: a link would have changed with it


def test_without_history_nothing_is_kept_and_a_missing_file_is_created(plain_tree, root):
    rewrite(plain_tree, b"new-file", b"fresh\n")
    assert (root / "new-file").read_bytes() == b"fresh\n"
    (root / "g").write_bytes(b"x" * 100)
    rewrite(plain_tree, b"g", b"y" * 10)
    assert (root / "g").read_bytes() == b"y" * 10
    assert not (root / "history-backup").exists()


def test_sparse_rewrite_punches_holes_into_old_data(plain_tree, root):
    (root / "s").write_bytes(b"\xff" * (1 << 20))
    data = b"head" + b"\0" * ((1 << 20) - 8) + b"tail"
    rewrite(plain_tree, b"s", data, sparse=True)
    assert (root / "s").read_bytes() == data
    assert (root / "s").stat().st_blocks * 512 < 1 << 19  # the zeros are holes now


def test_an_abort_leaves_what_was_written_and_history_keeps_the_old(tree, root):
    (root / "f").write_bytes(b"0123456789")
    f = tree.open_inplace(b"f", 0o600)
    f.write(b"ab")
    f.abort()
    f.abort()  # idempotent
    assert (root / "f").read_bytes() == b"ab23456789"
    assert (root / DAY / "f").read_bytes() == b"0123456789"
    with pytest.raises(StorageError):
        f.write(b"more")


def test_a_non_regular_entry_or_a_symlinked_path_is_refused(tree, root):
    (root / "d").mkdir()
    os.symlink("d", root / "link")
    with pytest.raises(StorageError):
        tree.open_inplace(b"d", 0o600)
    with pytest.raises(StorageError):
        tree.open_inplace(b"link/x", 0o600)
