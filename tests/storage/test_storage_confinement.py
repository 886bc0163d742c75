"""ModuleTree confinement: nothing outside the module is ever read, created, changed or deleted."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.errors import PathEscape, StorageError
from backupd.storage import HistoryStore, ModuleTree

BAD_PATHS = [
    b"..",
    b"../x",
    b"a/../../x",
    b"a/..",
    b"/etc/passwd",
    b"/",
    b"a//b",
    b"a/",
    b"./a",
    b"a/./b",
    b"a\0b",
    b"\0",
]


def all_ops(tree: ModuleTree, path: bytes):
    """One callable per ModuleTree operation on ``path``."""

    def staged() -> None:
        with tree.create_staged(path, 0o644) as sf:
            sf.write(b"x")
            sf.commit(mtime_ns=0)

    return {
        "lstat": lambda: tree.lstat(path),
        "listdir": lambda: tree.listdir(path),
        "readlink": lambda: tree.readlink(path),
        "mkdir": lambda: tree.mkdir(path, 0o755),
        "makedirs": lambda: tree.makedirs(path, 0o755),
        "symlink": lambda: tree.symlink(b"target", path),
        "set_attrs": lambda: tree.set_attrs(path, mode=0o777, mtime_ns=0),
        "open_basis": lambda: tree.open_basis(path),
        "create_staged": staged,
        "delete": lambda: tree.delete(path),
    }


OP_NAMES = list(all_ops(None, b"x"))  # type: ignore[arg-type]


@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_path_is_refused_by_every_operation(tree, root, outside, snapshot, op, path):
    (root / "a").mkdir()
    before_in, before_out = snapshot(root), snapshot(outside.parent)
    with pytest.raises(PathEscape) as info:
        all_ops(tree, path)[op]()
    assert "module backup" in str(info.value)
    assert snapshot(outside.parent) == before_out
    assert snapshot(root) == before_in


@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("path", [b"link/secret", b"link/new", b"link/sub/new", b"d/link/secret"])
def test_symlinked_parent_is_refused(tree, root, outside, snapshot, op, path):
    os.symlink(outside, root / "link")
    (root / "d").mkdir()
    os.symlink(outside, root / "d" / "link")
    before_out = snapshot(outside)
    with pytest.raises(PathEscape) as info:
        all_ops(tree, path)[op]()
    assert path.decode() in str(info.value)
    assert snapshot(outside) == before_out


def test_relative_symlink_parent_is_refused(tree, root, outside, snapshot):
    (root / "d").mkdir()
    os.symlink("../../outside", root / "d" / "up")
    before = snapshot(outside)
    with pytest.raises(PathEscape):
        tree.makedirs(b"d/up/new/deeper", 0o755)
    with pytest.raises(PathEscape):
        tree.listdir(b"d/up")
    assert snapshot(outside) == before


def test_final_symlink_is_never_followed(tree, root, outside, snapshot):
    os.symlink(outside / "secret", root / "ln")
    os.symlink(outside, root / "dirln")
    before = snapshot(outside)

    tree.set_attrs(b"ln", mode=0o777, mtime_ns=123_000_000_000, uid=4321, gid=4321)
    assert tree.open_basis(b"ln") is None
    assert tree.open_basis(b"dirln") is None
    assert tree.lstat(b"ln").st_mtime_ns == 123_000_000_000  # the link itself
    assert stat.S_ISLNK(tree.lstat(b"dirln").st_mode)
    with pytest.raises(StorageError):
        tree.mkdir(b"dirln", 0o755, exist_ok=True)
    counts = tree.delete(b"ln")
    assert counts.symlinks == 1 and counts.total == 1
    counts = tree.delete(b"dirln")
    assert counts.symlinks == 1 and counts.total == 1

    assert snapshot(outside) == before
    assert not (root / "ln").is_symlink() and not (root / "dirln").is_symlink()
    kept = root / "history-backup" / "2024-05-17"
    assert os.readlink(kept / "ln") == str(outside / "secret")
    assert os.readlink(kept / "dirln") == str(outside)


def test_final_symlink_replaced_by_staged_file_not_written_through(tree, root, outside, snapshot):
    os.symlink(outside / "secret", root / "ln")
    before = snapshot(outside)
    with tree.create_staged(b"ln", 0o644) as sf:
        sf.write(b"new content")
        sf.commit(mtime_ns=1_000_000_000)
    assert snapshot(outside) == before
    assert (root / "ln").read_bytes() == b"new content"
    assert not (root / "ln").is_symlink()
    assert os.readlink(root / "history-backup" / "2024-05-17" / "ln") == str(outside / "secret")


def test_parent_swapped_for_symlink_between_calls(tree, root, outside, snapshot):
    (root / "d").mkdir()
    staged = tree.create_staged(b"d/f", 0o644)
    staged.write(b"data")
    os.rename(root / "d", root / "d_old")
    os.symlink(outside, root / "d")
    before = snapshot(outside)
    with pytest.raises(PathEscape):
        staged.commit(mtime_ns=0)
    assert snapshot(outside) == before
    assert os.listdir(root / "d_old") == []  # temp file removed by the failed commit
    with pytest.raises(PathEscape):
        tree.lstat(b"d/f")


@pytest.mark.parametrize("kind", ["history", "plain"])
def test_parent_renamed_away_during_transfer_is_refused(tree, plain_tree, root, kind):
    module = tree if kind == "history" else plain_tree
    (root / "d" / "e").mkdir(parents=True)
    for path in (b"d/f", b"d/e/f"):  # parent one and two levels down
        staged = module.create_staged(path, 0o644)
        staged.write(b"data")
        os.rename(root / "d", root / "elsewhere")
        (root / "d" / "e").mkdir(parents=True)
        with pytest.raises(PathEscape, match="parent directory replaced during the transfer"):
            staged.commit(mtime_ns=0)
        assert not any((root / "elsewhere").rglob("f*")) and not any((root / "d").rglob("f*"))
        assert not any((root / "elsewhere").rglob(".f*"))  # the temp file went with the refusal
        shutil.rmtree(root / "elsewhere")


def test_parent_moved_into_history_during_transfer_gets_nothing(tree, root):
    """Another session's delete moves the directory into history while a file for it is written."""
    (root / "d").mkdir()
    staged = tree.create_staged(b"d/f", 0o644)
    staged.write(b"data")
    assert tree.delete(b"d").dirs == 1
    kept = next((root / "history-backup").rglob("d"))
    with pytest.raises(StorageError, match="No such file or directory"):  # nothing at d/ any more
        staged.commit(mtime_ns=0)
    assert os.listdir(kept) == [] and not (root / "d").exists()


def test_unreadable_parent_is_checked_and_written_unlocked(tree, root, monkeypatch):
    """A directory the session may write but not read (mode 0300 as a non-root user) gets no flock."""
    import backupd.storage.tree as tree_module
    real = tree_module.open_dir

    def no_read(root_fd, comps, module, path, *, readable=False):
        if readable:
            raise PermissionError(13, "Permission denied")
        return real(root_fd, comps, module, path)

    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"old")
    monkeypatch.setattr(tree_module, "open_dir", no_read)
    with tree.create_staged(b"d/f", 0o644) as staged:
        staged.write(b"new")
        staged.commit(mtime_ns=0)
    assert (root / "d" / "f").read_bytes() == b"new"
    assert next((root / "history-backup").rglob("f")).read_bytes() == b"old"


SEGMENTS = [b"a", b"b", b"..", b".", b"", b"up", b"out", b"a\0", b"history-backup"]


@settings(max_examples=120, deadline=None)
@given(
    segments=st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5),
    absolute=st.booleans(),
    op=st.sampled_from(["makedirs", "create_staged", "symlink", "delete", "set_attrs", "mkdir"]),
)
def test_fuzzed_paths_never_touch_the_outside(segments, absolute, op):
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp)
        root, outside = top / "module", top / "outside"
        (root / "a" / "b").mkdir(parents=True)
        outside.mkdir()
        (outside / "a").mkdir()
        (outside / "secret").write_bytes(b"s")
        os.symlink("..", root / "a" / "up")
        os.symlink(outside, root / "out")
        before = {p: p.lstat() for p in [outside, outside / "a", outside / "secret", top]}
        before_names = sorted(os.listdir(top)), sorted(os.listdir(outside))
        path = (b"/" if absolute else b"") + b"/".join(segments)
        with ModuleTree(root, module="m", history=HistoryStore()) as tree:
            try:
                all_ops(tree, path)[op]()
            except StorageError:
                pass
        assert (sorted(os.listdir(top)), sorted(os.listdir(outside))) == before_names
        assert os.listdir(outside / "a") == []
        for p, st_before in before.items():
            st_now = p.lstat()
            assert (st_now.st_mode, st_now.st_mtime_ns, st_now.st_size) == (
                st_before.st_mode, st_before.st_mtime_ns, st_before.st_size)
        shutil.rmtree(root)


def test_history_dir_refused_for_client_writes(tree, root):
    tree.makedirs(b"d", 0o755)
    with tree.create_staged(b"d/f", 0o644) as sf:
        sf.write(b"v1")
        sf.commit(mtime_ns=0)
    tree.delete(b"d/f")
    kept = b"history-backup/2024-05-17/d/f"
    assert tree.lstat(kept) is not None
    assert tree.is_history_path(b"history-backup")
    assert tree.is_history_path(kept)
    assert not tree.is_history_path(b"history-backup2/x")
    assert not tree.is_history_path(b"d/history-backup")
    for path in [kept, b"history-backup", b"history-backup/2024-05-17", b"history-backup/new"]:
        for op in ["create_staged", "delete", "symlink", "mkdir", "makedirs", "set_attrs"]:
            with pytest.raises(PathEscape, match="history"):
                all_ops(tree, path)[op]()
    assert (root / kept.decode()).read_bytes() == b"v1"
    # the server itself may
    with tree.create_staged(b"history-backup/note", 0o644, allow_history=True) as sf:
        sf.write(b"server")
        sf.commit(mtime_ns=0)
    assert (root / "history-backup" / "note").read_bytes() == b"server"


def test_deleting_or_replacing_the_root_is_refused(tree, plain_tree):
    for module_tree in (tree, plain_tree):
        for path in (b"", b"."):
            for op in ["create_staged", "delete", "symlink", "mkdir"]:
                with pytest.raises(PathEscape):
                    all_ops(module_tree, path)[op]()


def test_ancestor_of_a_nested_history_dir_cannot_be_displaced(root):
    (root / "meta" / "history").mkdir(parents=True)
    with ModuleTree(root, module="m", history=HistoryStore(b"meta/history")) as tree:
        with pytest.raises(PathEscape):
            tree.delete(b"meta")
        with pytest.raises(PathEscape):
            tree.symlink(b"x", b"meta")
        with pytest.raises(PathEscape):
            tree.create_staged(b"meta", 0o644)
        assert tree.is_history_path(b"meta/history/x")
        assert not tree.is_history_path(b"meta")
        tree.makedirs(b"meta/other", 0o755)  # a sibling of history is fine
    assert (root / "meta" / "history").is_dir()


def test_history_off_means_no_protected_dir(plain_tree, root):
    (root / "history-backup").mkdir()
    assert not plain_tree.is_history_path(b"history-backup")
    plain_tree.delete(b"history-backup")
    assert not (root / "history-backup").exists()


def test_bad_history_dir_name_is_refused():
    with pytest.raises(PathEscape):
        HistoryStore(b"../elsewhere")
    with pytest.raises(StorageError):
        HistoryStore(b".")
