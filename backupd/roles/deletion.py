"""Deleting what the client no longer has, for a push: read, plan, apply, report like rsync.

The decision is ``roles/delete_plan`` (pure): this module reads what it
needs from the module tree (a directory's listing, and what an extraneous
directory holds), asks for a ``DeletePlan`` and applies it: each removal
moves into the module's history (a directory as a whole when it may go
whole; gone for real with ``history = no``) and is reported to the client
as MSG_DELETED; the counts go out as NDX_DEL_STATS. With ``--dry-run`` the
plan is reported and not applied. Each directory is read when the pass
reaches it (a directory's entries when it gets there, with ``--backup`` and
no history each directory below them too), so what earlier steps made is
seen as by rsync; --delete-delay decides in the walk and deletes at the
end. Source: rsync generator.c delete_in_dir() / do_delayed_deletions(),
delete.c delete_item(), main.c write_del_stats(); rsync-protocol-b.md §8.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from backupd.errors import StorageError
from backupd.ops import logging as ops_logging
from backupd.protocol.constants import NDX_DEL_STATS, IoError, MsgCode
from backupd.protocol.flist import FileEntry
from backupd.protocol.wire import NdxEncoder, encode_varint
from backupd.roles.delete_plan import (
    NOT_IN_FILE_LIST,
    DeletePlan,
    DeleteRules,
    Listed,
    Note,
    PlanSteps,
    ReadDir,
    Removal,
    collect_plan,
    contents_in_order,
    extraneous_entries,
    iter_deletions,
    join_rel,
    plan_missing,
)
from backupd.roles.errors import FileErrors

if TYPE_CHECKING:  # push.py is the orchestrator above the roles: no import cycle at run time
    from backupd.roles.push import PushState

MAX_DEPTH = 512  # nesting of a directory to delete, as read for its plan


class Deleter:
    """Runs in the generator's thread; per-file failures go to ``errors`` (the generator's recorder)."""

    def __init__(self, state: PushState, out, log, errors: FileErrors) -> None:
        self.state = state
        self.opts = state.opts
        self.out = out
        self.log = log
        self.errors = errors
        self.rules = DeleteRules(state.filters, state.module_filters, state.tree.is_history_path)
        self.deleted = {"files": 0, "dirs": 0, "symlinks": 0, "devices": 0, "specials": 0}
        self.deletions_left = self.opts.max_delete if self.opts.max_delete is not None else -1
        self.deletions_skipped = 0
        self._children_map: dict[bytes, set[bytes]] | None = None  # made on the first deletion pass
        self._skip_at_start = frozenset(state.skip)
        self._lazy = state.tree.backup is not None  # a deletion's backups may land where a later one reads
        self._delayed: list[tuple[bytes, bytes, Listed]] = []  # --delete-delay: remembered in the walk

    @property
    def _children(self) -> dict[bytes, set[bytes]]:
        if self._children_map is None:  # without --delete never needed; incremental: add_children fills it
            self._children_map = _children_by_dir(self.state.flist, self._skip_at_start)
        return self._children_map

    def add_children(self, entries: list[FileEntry]) -> None:
        """An incremental sub-list's entries: names a deletion in their directory keeps."""
        if self._children_map is None:
            self._children_map = {}
        for parent, names in _children_by_dir(entries).items():
            self._children_map.setdefault(parent, set()).update(names)

    def allowed(self) -> bool:
        """False (and the client told why) when an I/O error on the sender side forbids deleting."""
        if self.state.io_error & IoError.GENERAL and not self.opts.ignore_errors:
            self.out.send_msg(MsgCode.INFO, b"IO error encountered -- skipping file deletion\n")
            return False
        return True

    @property
    def _budget(self) -> int | None:
        return None if self.deletions_left < 0 else self.deletions_left

    # -- the three callers ---------------------------------------------------------------
    def delete_missing(self, ndx: int, entry: FileEntry, path: bytes) -> None:
        """--delete-missing-args: remove what a mode-0 entry (a missing source arg) names."""
        if not self.opts.delete_missing_args or path == self.state.dest_dir:
            return
        st = self.state.tree.lstat(path)
        if st is None:
            return
        item = self._read_item(entry.name, path, entry.name.rpartition(b"/")[2], st.st_mode)
        self.apply(plan_missing(entry.name, path, item, self.rules, self._budget, force=self.opts.force))

    def delete_pass(self) -> None:
        """Sweep every content directory of the list (--delete-before/-after), each read as the pass reaches it.

        Those modes decline incremental recursion: the list is whole here, nothing freed.
        """
        for ndx, entry in enumerate(self.state.flist):
            if entry.is_content_dir and ndx not in self.state.skip:
                path = self.state.dest[ndx]
                st = self.state.tree.lstat(path)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    self.delete_in_dir(ndx, entry, path)

    def delete_in_dir(self, ndx: int, entry: FileEntry, path: bytes) -> None:
        """Delete what the directory holds and the file list does not (generator.c delete_in_dir).

        With --delete-delay the entries are only remembered (remember_delete),
        for ``delete_delayed`` at the end.
        """
        entries = self.extraneous_in(entry, path)
        if self.opts.delete_mode == "delay":
            self._delayed += entries
        else:
            self.run(self._steps(entries))

    def delete_delayed(self) -> None:
        """--delete-delay's end: each remembered entry deleted in turn (generator.c do_delayed_deletions).

        An entry that is gone by then is passed over, as rsync's delete_item finds ENOENT.
        """
        delayed, self._delayed = self._delayed, []
        for rel, path, item in delayed:
            st = self.state.tree.lstat(path)
            if st is not None:
                self.run(self._steps([(rel, path, Listed(item.name, st.st_mode))]))

    def extraneous_in(self, entry: FileEntry, path: bytes) -> list[tuple[bytes, bytes, Listed]]:
        """Read directory ``path`` (of file-list directory ``entry``): ``(rel, path, item)`` of what goes.

        In reverse file-list order; changes nothing (rsync delete_in_dir's get_dirlist and its test).
        """
        rel = b"." if entry.name in (b".", b"") else entry.name
        children, key = self._children, _parent_key(entry.name)
        # incremental: each directory is swept once, at its own list; its names are not needed after
        keep = (children.pop(key, None) if self.state.inc is not None else children.get(key)) or set()
        listing = [Listed(name, st.st_mode) for name, st in self._scan(path)]
        return extraneous_entries(rel, path, listing, keep, self.rules)

    def plan_dir(self, entry: FileEntry, path: bytes) -> DeletePlan:
        """Read directory ``path`` and all it would lose, and plan its deletions whole; changes nothing."""
        entries = self.extraneous_in(entry, path)
        entries = [(r, p, self._read_item(r, p, item.name, item.mode)) for r, p, item in entries]
        return collect_plan(iter_deletions(entries, NOT_IN_FILE_LIST, self.rules, self._budget))

    def _steps(self, entries: list[tuple[bytes, bytes, Listed]]) -> PlanSteps:
        """The lazy plan for ``entries``.

        With ``--backup`` on a module without history a deletion makes
        entries (its backups) that a later step may find: every directory
        is then read when the plan reaches it and emptied item by item, as
        rsync does. Otherwise nothing a deletion does is seen by another:
        each entry is read whole and a directory may go in one move.
        """
        if not self._lazy:
            entries = [(r, p, self._read_item(r, p, item.name, item.mode)) for r, p, item in entries]
        return iter_deletions(entries, NOT_IN_FILE_LIST, self.rules, self._budget, whole=not self._lazy)

    def room_contents(self, rel: bytes, path: bytes) -> list[tuple[bytes, bool]]:
        """``(rel, is_dir)`` of what directory ``path`` holds, in the order rsync reports it deleted.

        For a directory that makes room for another type (delete_item DEL_MAKE_ROOM).
        """
        item = self._read_item(rel, path, b"", stat.S_IFDIR, tolerant=False)
        return contents_in_order(rel, item)

    # -- reading -------------------------------------------------------------------------
    def _scan(self, path: bytes) -> list[tuple[bytes, os.stat_result]]:
        scan = self.state.tree.scan_dir(path)
        return [] if scan is None else list(scan.items())

    def _read_item(
        self, rel: bytes, path: bytes, name: bytes, mode: int, depth: int = 0, *, tolerant: bool = True
    ) -> Listed:
        """``Listed`` for entry ``name`` at ``path``: a directory with everything below it.

        ``tolerant``: a directory that cannot be listed is recorded as a
        per-file error and marked unreadable (the plan keeps it), as rsync's
        delete_dir_contents goes on after a failed opendir.

        Raises:
            StorageError: the directory nests deeper than MAX_DEPTH levels, or
                (not ``tolerant``) cannot be read.
        """
        if not stat.S_ISDIR(mode):
            return Listed(name, mode)
        if depth > MAX_DEPTH:
            raise StorageError(f"directory {os.fsdecode(rel)!r} nests deeper than {MAX_DEPTH} levels")
        try:
            scan = self._scan(path)
        except StorageError as exc:
            if not tolerant:
                raise
            self.errors.record(str(exc), path)
            return Listed(name, mode, unreadable=True)
        children = tuple(
            self._read_item(join_rel(rel, n), join_rel(path, n), n, st.st_mode, depth + 1, tolerant=tolerant)
            for n, st in scan
        )
        return Listed(name, mode, children)

    # -- applying ------------------------------------------------------------------------
    def apply(self, plan: DeletePlan) -> None:
        """Carry out a whole ``plan`` in order and report it as rsync does (see ``run``)."""
        kept: list[bytes] = []
        for step in plan.steps:
            self._apply_step(step, kept)
        self.deletions_skipped += plan.skipped

    def run(self, steps: PlanSteps) -> None:
        """Drive a lazy plan: each step applied before the next, each ``ReadDir`` answered as the dir is now.

        A removal that fails is recorded as a per-file error and keeps what
        it would have removed; a directory planned to go after it then stays
        with rsync's "cannot delete non-empty directory" note. The budget
        counts only what was removed. --dry-run reports without removing.
        Source: rsync delete.c delete_item(), delete_dir_contents().
        """
        kept: list[bytes] = []
        answer: tuple[Listed, ...] | None = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as stop:
                self.deletions_skipped += stop.value
                return
            answer = None
            if isinstance(step, ReadDir):
                answer = self._read_listing(step)
            else:
                self._apply_step(step, kept)

    def _read_listing(self, step: ReadDir) -> tuple[Listed, ...] | None:
        """What directory ``step.path`` holds now (children unread); None, the error recorded, if unreadable."""
        try:
            return tuple(Listed(name, st.st_mode) for name, st in self._scan(step.path))
        except StorageError as exc:
            self.errors.record(str(exc), step.path)
            return None

    def _apply_step(self, step: Removal | Note, kept: list[bytes]) -> None:
        if isinstance(step, Note):
            self.out.send_msg(MsgCode.INFO, step.text)
        elif kept and step.is_dir and any(p.startswith(step.path + b"/") for p in kept):
            for _ in range(2 if step.nested else 1):  # delete_dir_contents, then rmdir's ENOTEMPTY
                self.out.send_msg(MsgCode.INFO, Note(step.rel).text)
            kept.append(step.path)
        elif not self._remove(step):
            kept.append(step.path)

    def _remove(self, step: Removal) -> bool:
        backup = self.state.tree.backup
        reporter = backup.report if backup is not None else None
        held: dict[bytes, bytes] = {}  # -vv: "backed up" lines, each said just before its "deleting"
        if not self.opts.dry_run:
            if reporter is not None:
                reporter.hold()
            try:
                self.count(self.state.tree.delete(step.path, only_empty=self._lazy))
            except StorageError as exc:
                self.errors.record(f"delete failed: {exc}", step.path)
                return False
            finally:
                if reporter is not None:
                    for comps, line in reporter.take():
                        held[b"/".join(comps)] = held.get(b"/".join(comps), b"") + line
        if self.deletions_left > 0:
            self.deletions_left -= step.spent
        stays = False
        for rel, is_dir in step.reported:
            if (line := held.pop(step.path + rel[len(step.rel):], None)) is not None:
                self.out.send_msg(MsgCode.INFO, line)  # delete.c delete_item: make_backup, then log_delete
            if is_dir and not self.opts.dry_run and self._kept_by_backup(step.path + rel[len(step.rel):]):
                self.out.send_msg(MsgCode.INFO, Note(rel).text)  # a backup inside: rmdir's ENOTEMPTY
                stays = rel == step.rel
            else:
                self.report_deleted(rel, is_dir)
        if stays:  # not deleted, not counted; the directories it is in stay too (DR_NOT_EMPTY up the recursion)
            if self.opts.max_delete is not None:
                self.deletions_left += 1
            return False
        self.log.debug("deleted {} ({})", os.fsdecode(step.rel), step.reason)
        ops_logging.file_deleted(self, step.rel, step.is_dir, step.contents)  # transfer log "del.", counters
        return True

    def report_deleted(self, rel: bytes, is_dir: bool) -> None:
        """Tell the client about one deletion (log.c log_delete).

        Protocol 29+: MSG_DELETED (a directory's name with a trailing NUL).
        Below 29 the server formats the line itself, as MSG_INFO: the
        client's ``--log-format`` when it has ``%i`` or ``%o``, else
        ``deleting %n`` with -v; nothing without either.
        """
        if self.state.protocol >= 29:
            self.out.send_msg(MsgCode.DELETED, rel + (b"\0" if is_dir else b""))
            return
        line = legacy_delete_line(self.opts.log_format, self.opts.verbose, rel, is_dir)
        if line is not None:
            self.out.send_msg(MsgCode.INFO, line)

    def _kept_by_backup(self, path: bytes) -> bool:
        """True when a directory deleted with ``--backup`` (suffix backups beside) is still there."""
        return self.state.tree.backup is not None and self.state.tree.lstat(path) is not None

    # -- counts --------------------------------------------------------------------------
    def count(self, counts) -> None:
        """Add a storage DeleteCounts to the totals sent as NDX_DEL_STATS."""
        for key in self.deleted:
            self.deleted[key] += getattr(counts, key, 0)

    def send_del_stats(self, ndx: NdxEncoder, counts: bool = True) -> None:
        """The --max-delete warning, then (``counts``) NDX_DEL_STATS and its five counts (main.c write_del_stats)."""
        if self.deletions_skipped:
            self.out.send_msg(
                MsgCode.WARNING,
                f"Deletions stopped due to --max-delete limit ({self.deletions_skipped} skipped)\n".encode(),
            )
        if not counts:
            return
        d = self.deleted
        out = ndx.encode(NDX_DEL_STATS)
        for value in (d["files"], d["dirs"], d["symlinks"], d["devices"], d["specials"]):
            out += encode_varint(min(value, 0x7FFFFFFF))
        self.out.write(out)


_DELETE_ESCAPES = {b"i": b"*deleting  ", b"o": b"del.", b"%": b"%"}


def legacy_delete_line(log_format: str | None, verbose: int, rel: bytes, is_dir: bool) -> bytes | None:
    r"""The line a protocol 27-28 server sends for a deletion, with its ``\n``; None for none.

    ``log_format`` is the client's ``--log-format`` (``%i``, ``%i%I``,
    ``%o`` or ``X``). Escapes: ``%i`` (``*deleting`` padded to 11),
    ``%o`` (``del.``), ``%n`` (the name, ``/`` after a directory's), ``%%``;
    any other stays as written. Source: log.c log_delete()/log_formatted().
    """
    fmt = log_format.encode() if log_format else None
    if not verbose and fmt is None:
        return None
    if fmt is None or (b"%i" not in fmt and b"%o" not in fmt):
        fmt = b"deleting %n"
    name = rel + (b"/" if is_dir else b"")
    out, i = bytearray(), 0
    while i < len(fmt):
        if fmt[i : i + 1] == b"%" and i + 1 < len(fmt):
            esc = fmt[i + 1 : i + 2]
            out += name if esc == b"n" else _DELETE_ESCAPES.get(esc, fmt[i : i + 2])
            i += 2
        else:
            out += fmt[i : i + 1]
            i += 1
    return bytes(out) + b"\n"


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
