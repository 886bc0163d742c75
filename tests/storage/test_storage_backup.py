"""--backup on a module without history: ModuleTree with a BackupPolicy (rsync backup.c)."""

from __future__ import annotations

import os

from backupd.storage import HistoryStore, ModuleTree
from backupd.storage.backup import BackupPolicy

T0 = 1_600_000_000


def _file(path, data: bytes, mode: int = 0o644, mtime: int = T0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def _write(tree: ModuleTree, path: bytes, data: bytes) -> None:
    staged = tree.create_staged(path, 0o600)
    staged.write(data)
    staged.commit(mtime_ns=(T0 + 9) * 10**9)


def test_replaced_file_is_kept_with_suffix_beside_it(root):
    _file(root / "d" / "f", b"old", mode=0o640)
    with ModuleTree(root, module="m", backup=BackupPolicy(b"~", None)) as tree:
        _write(tree, b"d/f", b"new")
    assert (root / "d" / "f").read_bytes() == b"new"
    kept = root / "d" / "f~"
    assert kept.read_bytes() == b"old"
    assert (kept.stat().st_mode & 0o777, kept.stat().st_mtime) == (0o640, T0)


def test_older_backup_is_replaced(root):
    _file(root / "f", b"old")
    _file(root / "f.bak", b"older")
    with ModuleTree(root, module="m", backup=BackupPolicy(b".bak", None)) as tree:
        _write(tree, b"f", b"new")
    assert (root / "f.bak").read_bytes() == b"old"


def test_backup_dir_mirrors_the_path_below_the_destination(root):
    _file(root / "dest" / "sub" / "f", b"old")
    os.chmod(root / "dest" / "sub", 0o750)
    policy = BackupPolicy(b"", (b"bak",), base=(b"dest",))
    with ModuleTree(root, module="m", backup=policy) as tree:
        _write(tree, b"dest/sub/f", b"new")
        assert (root / "bak" / "sub" / "f").read_bytes() == b"old"
        assert (root / "bak" / "sub").stat().st_mode & 0o777 == 0o750
        counts = tree.delete(b"dest/sub")
    assert (root / "bak" / "sub" / "f").read_bytes() == b"new"  # a delete keeps it too (rsync: rename)
    assert not (root / "dest" / "sub").exists()
    assert (counts.files, counts.dirs) == (1, 1)


def test_delete_with_suffix_leaves_the_dir_holding_its_backups(root):
    _file(root / "z" / "a", b"a")
    _file(root / "z" / "old~", b"earlier backup")
    with ModuleTree(root, module="m", backup=BackupPolicy(b"~", None)) as tree:
        counts = tree.delete(b"z")
    assert sorted(os.listdir(root / "z")) == ["a~"]  # an earlier backup is not kept again
    assert (counts.files, counts.dirs) == (2, 0)


def test_history_wins_over_backup(root):
    _file(root / "f", b"old")
    with ModuleTree(root, module="m", history=HistoryStore(), backup=BackupPolicy(b"~", None)) as tree:
        assert tree.backup is None
        _write(tree, b"f", b"new")
    assert not (root / "f~").exists()


def test_inplace_rewrite_copies_the_old_content_first(root):
    _file(root / "f", b"old content", mode=0o640)
    with ModuleTree(root, module="m", backup=BackupPolicy(b"~", None)) as tree:
        f = tree.open_inplace(b"f", 0o644)
        f.write(b"NEW")
        f.commit(mtime_ns=(T0 + 9) * 10**9)
    assert (root / "f").read_bytes() == b"NEW"
    kept = (root / "f~").stat()
    assert (root / "f~").read_bytes() == b"old content"
    assert (kept.st_mode & 0o777, kept.st_mtime) == (0o640, T0)
    assert kept.st_ino != (root / "f").stat().st_ino
