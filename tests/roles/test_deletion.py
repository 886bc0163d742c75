"""Applying a delete plan (roles/deletion.Deleter) on a real module tree, without rsync.

The plan says what and why (tests/roles/test_delete_plan.py); here: the
applier removes exactly that, reports it in plan order, counts what it
removed for NDX_DEL_STATS, does nothing on --dry-run, and a failed removal
is one recorded per-file error that loses nothing.
"""

from __future__ import annotations

import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from backupd.errors import StorageError
from backupd.protocol.constants import MsgCode
from backupd.protocol.flist import FileEntry
from backupd.protocol.server_args import TransferOptions
from backupd.protocol.wire import NdxEncoder
from backupd.roles.deletion import Deleter
from backupd.roles.errors import FileErrors
from backupd.storage import ModuleTree
from backupd.storage.backup import BackupPolicy


class Outbox:
    def __init__(self) -> None:
        self.msgs: list[tuple[MsgCode, bytes]] = []
        self.data = b""

    def send_msg(self, code: MsgCode, payload: bytes) -> None:
        self.msgs.append((code, payload))

    def write(self, data: bytes) -> None:
        self.data += data

    def of(self, code: MsgCode) -> list[bytes]:
        return [p for c, p in self.msgs if c == code]


class FailingTree(ModuleTree):
    """A module tree whose delete of one path fails, as a permission error would."""

    fail: bytes = b""
    fail_scan: bytes = b""

    def delete(self, path: bytes, **kw):
        if path == self.fail:
            raise StorageError(f"module m: {path.decode()}: Permission denied")
        return super().delete(path, **kw)

    def scan_dir(self, path: bytes):
        if path == self.fail_scan:
            raise StorageError(f"module m: {path.decode()}: Permission denied")
        return super().scan_dir(path)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def debug(self, fmt, *args) -> None:
        pass

    def warning(self, fmt, *args) -> None:
        self.lines.append(fmt.format(*args))


def make(tmp_path: Path, files: dict[str, bytes | None], flist: list[FileEntry], backup=None, **opts):
    root = tmp_path / "mod"
    root.mkdir()
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            p.mkdir()
        else:
            p.write_bytes(data)
    tree = FailingTree(root, module="m", backup=backup)
    state = SimpleNamespace(
        opts=TransferOptions(**opts), tree=tree, flist=flist, dest=[e.name for e in flist], dest_dir=b".",
        skip=set(), filters=None, module_filters=None, io_error=0, file_errors=0, protocol=32, inc=None,
    )
    out, log = Outbox(), Log()
    deleter = Deleter(state, out, log, FileErrors(out.send_msg, log, "generator", state))
    return root, state, out, deleter


def top(*names: bytes) -> list[FileEntry]:
    return [FileEntry(b".", stat.S_IFDIR | 0o755)] + [FileEntry(n, stat.S_IFREG | 0o644) for n in names]


FILES = {"keep": b"k", "old1": b"1", "old2": b"2", "gone/a": b"a", "gone/s/b": b"b", "gone/empty": None}


def reported(plan) -> list[bytes]:
    return [rel + (b"\0" if d else b"") for r in plan.removals for rel, d in r.reported]


def test_the_plan_is_applied_and_reported_in_its_order(tmp_path):
    root, state, out, deleter = make(tmp_path, FILES, top(b"keep"))
    plan = deleter.plan_dir(state.flist[0], b".")
    assert sorted(p.name for p in root.iterdir()) == ["gone", "keep", "old1", "old2"]  # planning changed nothing
    deleter.apply(plan)
    assert out.of(MsgCode.DELETED) == reported(plan) and len(reported(plan)) == 7
    assert [p.name for p in root.iterdir()] == ["keep"]
    assert deleter.deleted == {"files": 4, "dirs": 3, "symlinks": 0, "devices": 0, "specials": 0}
    assert state.file_errors == 0


def test_dry_run_reports_the_same_and_removes_nothing(tmp_path):
    root, state, out, deleter = make(tmp_path, FILES, top(b"keep"), dry_run=True)
    plan = deleter.plan_dir(state.flist[0], b".")
    deleter.apply(plan)
    assert out.of(MsgCode.DELETED) == reported(plan) and len(reported(plan)) == 7
    assert (root / "gone/s/b").read_bytes() == b"b" and (root / "old1").exists()
    assert sum(deleter.deleted.values()) == 0


def test_a_failed_delete_is_one_recorded_error_and_keeps_its_parent(tmp_path):
    root, state, out, deleter = make(tmp_path, FILES, top(b"keep"), max_delete=4)
    state.tree.fail = b"gone/s/b"
    deleter.apply(deleter.plan_dir(state.flist[0], b"."))  # budget 4 < 5: gone is emptied item by item
    assert out.of(MsgCode.ERROR_XFER) == [b"rsync: [generator] delete failed: module m: gone/s/b: Permission denied\n"]
    assert state.file_errors == 1 and state.io_error == 0
    assert (root / "gone/s/b").read_bytes() == b"b"               # nothing lost
    assert out.of(MsgCode.DELETED) == [b"gone/empty\0", b"gone/a"]  # not s: rmdir would find b in it
    assert out.of(MsgCode.INFO) == [b"cannot delete non-empty directory: gone/s\n"] * 2
    assert deleter.deletions_left == 2                               # the failures spent nothing


def test_max_delete_budget_carries_over_directories_and_is_reported(tmp_path):
    files = {"d1/x": b"", "d1/y": b"", "d2/z": b"", "d2/w": b""}
    flist = [FileEntry(b".", stat.S_IFDIR | 0o755), FileEntry(b"d1", stat.S_IFDIR | 0o755),
             FileEntry(b"d2", stat.S_IFDIR | 0o755)]
    root, state, out, deleter = make(tmp_path, files, flist, max_delete=3)
    deleter.delete_pass()
    assert len(out.of(MsgCode.DELETED)) == 3 and deleter.deletions_left == 0
    assert sum(1 for p in root.rglob("*") if p.is_file()) == 1
    deleter.send_del_stats(NdxEncoder())
    assert out.of(MsgCode.WARNING) == [b"Deletions stopped due to --max-delete limit (1 skipped)\n"]


def test_delete_missing_arg_needs_force_for_a_non_empty_directory(tmp_path):
    flist = [FileEntry(b".", stat.S_IFDIR | 0o755), FileEntry(b"gone", 0)]
    root, state, out, deleter = make(tmp_path, FILES, flist, delete_missing_args=True)
    deleter.delete_missing(1, flist[1], b"gone")
    assert out.of(MsgCode.INFO) == [b"cannot delete non-empty directory: gone\n"] and (root / "gone").exists()
    state.opts.force = True
    deleter.delete_missing(1, flist[1], b"gone")
    assert out.of(MsgCode.DELETED)[-1] == b"gone\0" and not (root / "gone").exists()


@pytest.mark.parametrize("depth", [3])
def test_make_room_contents_are_read_deepest_first(tmp_path, depth):
    files = {"x/" + "/".join(["n"] * depth) + "/f": b""}
    root, state, out, deleter = make(tmp_path, files, top())
    got = deleter.room_contents(b"x", b"x")
    assert got[0] == (b"x/n/n/n/f", False) and got[-1] == (b"x/n", True) and len(got) == depth + 1


def test_an_unreadable_directory_is_one_error_and_stays_while_the_rest_goes(tmp_path):
    root, state, out, deleter = make(tmp_path, FILES, top(b"keep"))
    state.tree.fail_scan = b"gone/s"
    deleter.apply(deleter.plan_dir(state.flist[0], b"."))
    assert out.of(MsgCode.ERROR_XFER) == [b"rsync: [generator] module m: gone/s: Permission denied\n"]
    assert state.file_errors == 1
    assert (root / "gone/s/b").read_bytes() == b"b"
    assert out.of(MsgCode.DELETED) == [b"gone/empty\0", b"gone/a", b"old2", b"old1"]
    assert out.of(MsgCode.INFO) == [b"cannot delete non-empty directory: gone/s\n",
                                    b"cannot delete non-empty directory: gone\n"]


def test_backups_made_by_the_pass_are_seen_where_it_reads_later(tmp_path):
    """--backup-dir=old inside the tree: rsync's delete pass finds the backups of zdir when it empties old."""
    files = {"zdir/z1": b"1", "old/b.txt": b"b", "keep": b"k"}
    root, state, out, deleter = make(tmp_path, files, top(b"keep"), backup=BackupPolicy(b"", (b"old",)))
    deleter.delete_pass()
    assert out.of(MsgCode.DELETED) == [b"zdir/z1", b"zdir\0", b"old/zdir/z1", b"old/zdir\0", b"old/b.txt"]
    assert out.of(MsgCode.INFO) == [b"cannot delete non-empty directory: old\n"]  # rmdir: old/old holds them
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "keep", "old", "old/old", "old/old/b.txt", "old/old/zdir", "old/old/zdir/z1"]
    assert deleter.deleted["dirs"] == 2 and deleter.deleted["files"] == 3


def test_delete_delay_decides_in_the_walk_and_deletes_at_the_end(tmp_path):
    root, state, out, deleter = make(tmp_path, {"gone/a": b"a", "keep": b"k"}, top(b"keep"), delete_mode="delay")
    deleter.delete_in_dir(0, state.flist[0], b".")
    assert out.msgs == [] and (root / "gone/a").exists()          # remembered only
    (root / "late").write_bytes(b"made after the walk")
    deleter.delete_delayed()
    assert out.of(MsgCode.DELETED) == [b"gone/a", b"gone\0"] and (root / "late").exists()
