"""Deleting what the client no longer has, for a push: into history, reported like rsync.

Which names go is rsync's rule (generator.c delete_in_dir(), delete.c
delete_item()): entries of a content directory that the file list does not
name and no filter rule protects. Each one is moved into the module's
history (a directory as a whole) and reported to the client as MSG_DELETED;
the counts go out as NDX_DEL_STATS. Source: rsync-protocol-b.md §8.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from backupd.errors import StorageError
from backupd.ops import logging as ops_logging
from backupd.protocol.constants import NDX_DEL_STATS, IoError, MsgCode
from backupd.protocol.flist import FileEntry
from backupd.protocol.wire import NdxEncoder, encode_varint
from backupd.roles.push import PushState, join_path


class Deleter:
    """Runs in the generator's thread; ``file_error(message, entry)`` records failures."""

    def __init__(self, state: PushState, out, log, file_error: Callable[[str, FileEntry], None]) -> None:
        self.state = state
        self.opts = state.opts
        self.out = out
        self.log = log
        self.file_error = file_error
        self.deleted = {"files": 0, "dirs": 0, "symlinks": 0, "devices": 0, "specials": 0}
        self.deletions_left = self.opts.max_delete if self.opts.max_delete is not None else -1
        self.deletions_skipped = 0
        self._children = _children_by_dir(state.flist)

    def allowed(self) -> bool:
        """False (and the client told why) when an I/O error on the sender side forbids deleting."""
        if self.state.io_error & IoError.GENERAL and not self.opts.ignore_errors:
            self.out.send_msg(MsgCode.INFO, b"IO error encountered -- skipping file deletion\n")
            return False
        return True

    def delete_missing(self, ndx: int, entry: FileEntry, path: bytes) -> None:
        """--delete-missing-args: remove what a mode-0 entry (a missing source arg) names."""
        if not self.opts.delete_missing_args or path == self.state.dest_dir:
            return
        tree = self.state.tree
        st = tree.lstat(path)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode) and not self.opts.force and tree.listdir(path):
            # delete_item() without DEL_RECURSE: only --force removes a non-empty directory
            self.out.send_msg(
                MsgCode.INFO,
                f"cannot delete non-empty directory: {os.fsdecode(entry.name)}\n".encode("utf-8", "replace"),
            )
            return
        self.delete(entry.name, path)

    def delete_pass(self) -> None:
        """Sweep every content directory of the list (--delete-before/-after/-delay)."""
        for ndx, entry in enumerate(self.state.flist):
            if entry.is_content_dir and ndx not in self.state.skip:
                path = self.state.dest[ndx]
                st = self.state.tree.lstat(path)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    self.delete_in_dir(ndx, entry, path)

    def delete_in_dir(self, ndx: int, entry: FileEntry, path: bytes) -> None:
        """Delete what the directory holds and the file list does not (delete_in_dir)."""
        state = self.state
        keep = self._children.get(_parent_key(entry.name), set())
        names = sorted(state.tree.listdir(path))
        for name in names:
            if name in keep:
                continue
            child_path = join_path(path, name)
            if state.tree.is_history_path(child_path):
                continue
            rel = join_path(b"" if entry.name == b"." else entry.name, name)
            child_st = state.tree.lstat(child_path)
            is_dir = child_st is not None and stat.S_ISDIR(child_st.st_mode)
            if state.filters is not None and state.filters.protected_from_delete(rel, is_dir, perishable_ok=False):
                continue
            if state.daemon_excluded(child_path, is_dir):
                continue
            self.delete(rel, child_path, is_dir)

    def delete(self, rel: bytes, path: bytes, is_dir: bool | None = None) -> None:
        """Delete one extraneous entry into history, reporting it like rsync (delete_item).

        A directory goes as a whole unless something inside is protected by a
        filter rule: then its other entries go one by one and it stays, as
        rsync's recursive delete leaves it ("cannot delete non-empty
        directory"). Every entry counts against --max-delete; a directory
        that does not fit in what is left is skipped whole.
        """
        tree = self.state.tree
        if is_dir is None:
            st = tree.lstat(path)
            is_dir = st is not None and stat.S_ISDIR(st.st_mode)
        items = self._dir_items(rel, path) if is_dir else []
        if any(protected for _, _, protected in items):
            self._delete_contents(rel, path)
            return
        needed = len(items) + 1
        if 0 <= self.deletions_left < needed:
            self.deletions_skipped += needed
            return
        if not self.opts.dry_run:
            try:
                self.count(tree.delete(path))
            except StorageError as exc:
                self.state.file_errors += 1
                self.out.send_msg(
                    MsgCode.ERROR_XFER, f"rsync: [generator] delete failed: {exc}\n".encode("utf-8", "replace")
                )
                return
        if self.deletions_left > 0:
            self.deletions_left -= needed
        for item_rel, item_is_dir, _ in items:
            self.out.send_msg(MsgCode.DELETED, item_rel + (b"\0" if item_is_dir else b""))
        self.out.send_msg(MsgCode.DELETED, rel + (b"\0" if is_dir else b""))
        self.log.debug("deleted {}", os.fsdecode(rel))
        ops_logging.file_deleted(self, rel, is_dir, items)  # ops hook: transfer log "del.", counters

    def _delete_contents(self, rel: bytes, path: bytes) -> None:
        tree = self.state.tree
        for name in sorted(tree.listdir(path)):
            child_rel, child_path = join_path(rel, name), join_path(path, name)
            child_st = tree.lstat(child_path)
            child_is_dir = child_st is not None and stat.S_ISDIR(child_st.st_mode)
            if not self._protected(child_rel, child_path, child_is_dir):
                self.delete(child_rel, child_path, child_is_dir)
        self.out.send_msg(
            MsgCode.INFO, f"cannot delete non-empty directory: {os.fsdecode(rel)}\n".encode("utf-8", "replace")
        )

    def _protected(self, rel: bytes, path: bytes, is_dir: bool) -> bool:
        state = self.state
        if state.filters is not None and state.filters.protected_from_delete(rel, is_dir, perishable_ok=True):
            return True
        return state.daemon_excluded(path, is_dir)

    def _dir_items(self, rel: bytes, path: bytes, depth: int = 0) -> list[tuple[bytes, bool, bool]]:
        """Everything inside a directory, deepest first: (rel, is_dir, protected)."""
        if depth > 512:
            raise StorageError(f"directory {os.fsdecode(rel)!r} nests deeper than 512 levels")
        tree, out = self.state.tree, []
        for name in sorted(tree.listdir(path)):
            child_rel, child_path = join_path(rel, name), join_path(path, name)
            st = tree.lstat(child_path)
            child_is_dir = st is not None and stat.S_ISDIR(st.st_mode)
            if child_is_dir:
                out += self._dir_items(child_rel, child_path, depth + 1)
            out.append((child_rel, child_is_dir, self._protected(child_rel, child_path, child_is_dir)))
        return out

    def count(self, counts) -> None:
        """Add a storage DeleteCounts to the totals sent as NDX_DEL_STATS."""
        for key in self.deleted:
            self.deleted[key] += getattr(counts, key, 0)

    def send_del_stats(self, ndx: NdxEncoder) -> None:
        """The --max-delete warning, then NDX_DEL_STATS and its five counts (main.c write_del_stats)."""
        if self.deletions_skipped:
            self.out.send_msg(
                MsgCode.WARNING,
                f"Deletions stopped due to --max-delete limit ({self.deletions_skipped} skipped)\n".encode(),
            )
        d = self.deleted
        total_files = d["files"]
        out = ndx.encode(NDX_DEL_STATS)
        for value in (total_files, d["dirs"], d["symlinks"], d["devices"], d["specials"]):
            out += encode_varint(min(value, 0x7FFFFFFF))
        self.out.write(out)


def _parent_key(name: bytes) -> bytes:
    return b"" if name in (b".", b"") else name


def _children_by_dir(flist: list[FileEntry]) -> dict[bytes, set[bytes]]:
    """Directory name (b"" for the root) -> the set of its children's basenames."""
    out: dict[bytes, set[bytes]] = {}
    for entry in flist:
        if entry.name == b".":
            continue
        parent, _, base = entry.name.rpartition(b"/")
        out.setdefault(parent, set()).add(base)
    return out
