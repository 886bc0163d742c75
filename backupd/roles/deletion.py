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
from backupd.protocol.flist import FileEntry, sort_key
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
        self._children = _children_by_dir(state.flist, state.skip)

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
        """Delete what the directory holds and the file list does not (generator.c delete_in_dir).

        The directory's entries are visited in reverse file-list order, as rsync does.
        """
        state = self.state
        keep = self._children.get(_parent_key(entry.name), set())
        for name, child_st in self._listing(path):
            if name in keep:
                continue
            child_path = join_path(path, name)
            if state.tree.is_history_path(child_path):
                continue
            rel = join_path(b"" if entry.name == b"." else entry.name, name)
            is_dir = stat.S_ISDIR(child_st.st_mode)
            if state.filters is not None and state.filters.protected_from_delete(rel, is_dir, perishable_ok=False):
                continue
            if state.daemon_excluded(child_path, is_dir):
                continue
            self.delete(rel, child_path, is_dir)

    def _listing(self, path: bytes) -> list[tuple[bytes, os.stat_result]]:
        """(name, lstat) of a directory's entries in reverse rsync file-list order (get_dirlist)."""
        tree, out = self.state.tree, []
        for name in tree.listdir(path):
            st = tree.lstat(join_path(path, name))
            if st is not None:
                out.append((name, st))
        out.sort(key=lambda item: sort_key(item[0], stat.S_ISDIR(item[1].st_mode)), reverse=True)
        return out

    def delete(self, rel: bytes, path: bytes, is_dir: bool | None = None) -> None:
        """Delete one extraneous entry into history, reporting it like rsync (delete.c delete_item).

        A directory's contents go first, deepest first and in reverse order
        within each directory, then the directory. Every entry counts against
        --max-delete; at the limit an entry is skipped and a directory that
        keeps something ("cannot delete non-empty directory: X") stays, as
        does one with something inside protected by a filter rule. When all
        of it may go, it moves into history as a whole (one move).
        """
        tree = self.state.tree
        if is_dir is None:
            st = tree.lstat(path)
            if st is None:
                return
            is_dir = stat.S_ISDIR(st.st_mode)
        if not is_dir:
            self._delete_leaf(rel, path, False)
            return
        items = self._dir_items(rel, path)
        fits = self.deletions_left < 0 or self.deletions_left >= len(items) + 1
        if fits and not any(protected for _, _, protected in items):
            self._delete_whole(rel, path, items)
        elif self._delete_contents(rel, path):
            self._delete_leaf(rel, path, True)

    def _delete_whole(self, rel: bytes, path: bytes, items: list[tuple[bytes, bool, bool]]) -> None:
        if not self.opts.dry_run:
            try:
                self.count(self.state.tree.delete(path))
            except StorageError as exc:
                self._delete_failed(exc)
                return
        if self.deletions_left > 0:
            self.deletions_left -= len(items) + 1
        for item_rel, item_is_dir, _ in items:
            self.out.send_msg(MsgCode.DELETED, item_rel + (b"\0" if item_is_dir else b""))
        self.out.send_msg(MsgCode.DELETED, rel + b"\0")
        self.log.debug("deleted {}", os.fsdecode(rel))
        ops_logging.file_deleted(self, rel, True, items)  # ops hook: transfer log "del.", counters

    def _delete_leaf(self, rel: bytes, path: bytes, is_dir: bool) -> bool:
        """One file or emptied directory: the --max-delete check, then the delete (delete_item)."""
        if self.deletions_left == 0:
            self.deletions_skipped += 1
            return False
        if not self.opts.dry_run:
            try:
                self.count(self.state.tree.delete(path))
            except StorageError as exc:
                self._delete_failed(exc)
                return False
        if self.deletions_left > 0:
            self.deletions_left -= 1
        self.out.send_msg(MsgCode.DELETED, rel + (b"\0" if is_dir else b""))
        self.log.debug("deleted {}", os.fsdecode(rel))
        ops_logging.file_deleted(self, rel, is_dir, [])
        return True

    def _delete_failed(self, exc: StorageError) -> None:
        self.state.file_errors += 1
        self.out.send_msg(MsgCode.ERROR_XFER, f"rsync: [generator] delete failed: {exc}\n".encode("utf-8", "replace"))

    def _delete_contents(self, rel: bytes, path: bytes) -> bool:
        """Empty a directory item by item (delete.c delete_dir_contents); True if it is empty now."""
        empty = True
        for name, st in self._listing(path):
            child_rel, child_path = join_path(rel, name), join_path(path, name)
            child_is_dir = stat.S_ISDIR(st.st_mode)
            if self._protected(child_rel, child_path, child_is_dir):
                empty = False
                continue
            if child_is_dir:
                inner_empty = self._delete_contents(child_rel, child_path)
                if self.deletions_left == 0:
                    self.deletions_skipped += 1
                    empty = False
                elif not inner_empty:
                    self._not_empty(child_rel)  # rmdir: ENOTEMPTY
                    empty = False
                elif not self._delete_leaf(child_rel, child_path, True):
                    empty = False
            elif not self._delete_leaf(child_rel, child_path, False):
                empty = False
        if not empty:
            self._not_empty(rel)
        return empty

    def _not_empty(self, rel: bytes) -> None:
        self.out.send_msg(
            MsgCode.INFO, f"cannot delete non-empty directory: {os.fsdecode(rel)}\n".encode("utf-8", "replace")
        )

    def _protected(self, rel: bytes, path: bytes, is_dir: bool) -> bool:
        state = self.state
        if state.filters is not None and state.filters.protected_from_delete(rel, is_dir, perishable_ok=True):
            return True
        return state.daemon_excluded(path, is_dir)

    def _dir_items(self, rel: bytes, path: bytes, depth: int = 0) -> list[tuple[bytes, bool, bool]]:
        """Everything inside a directory in rsync's delete order: (rel, is_dir, protected).

        Reverse file-list order within each directory, a directory's contents before it.
        """
        if depth > 512:
            raise StorageError(f"directory {os.fsdecode(rel)!r} nests deeper than 512 levels")
        out = []
        for name, st in self._listing(path):
            child_rel, child_path = join_path(rel, name), join_path(path, name)
            child_is_dir = stat.S_ISDIR(st.st_mode)
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


def _children_by_dir(flist: list[FileEntry], skip: set[int] = frozenset()) -> dict[bytes, set[bytes]]:
    """Directory name (b"" for the root) -> the set of its children's basenames (pruned ones not)."""
    out: dict[bytes, set[bytes]] = {}
    for ndx, entry in enumerate(flist):
        if entry.name == b"." or ndx in skip:
            continue
        parent, _, base = entry.name.rpartition(b"/")
        out.setdefault(parent, set()).add(base)
    return out
