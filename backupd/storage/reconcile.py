"""Catalog and tree made to agree: after a crash (on start) and for ``history reindex``.

``plan_reconcile`` only reads: it walks the live tree and the history day
folders (dir-fd confined, never following symlinks) and compares them with
the catalog's rows; it returns a ``ReconcilePlan`` of repairs, each with
what and why. ``apply_reconcile`` writes them to the catalog in one
transaction. Files are never touched: the tree is the truth.

Repairs:

- ``retired``: an open row whose live entry is gone or is another inode,
  and whose inode is found in history (a push retired it and was killed
  before its batch reached the catalog): closed at the history entry's
  archive time, ``approx``.
- ``lost``: an open row whose entry is found nowhere, or a closed row whose
  history entry is gone: marked ``missing`` (restore and verify report it).
- ``live``: a live entry without its row: added, ``live_from`` its ctime
  (the rename that made it live; at least the previous version's end), ``approx``.
- ``history``: a history entry without its row (a crash, or versions older
  than the catalog): added, ``live_to`` its archive time (the ``.~HHMMSS~``
  suffix, else its ctime on the folder's day, else the day's start),
  ``live_from`` the previous version's end (else its mtime), ``approx``.
- ``attrs``: a live row whose entry's mode or mtime changed in place.
- ``from``: a closed row without ``live_from`` (the version was retired
  before any row described it going live): the previous version's end.

Directories in history are containers unless a row names them (a directory
moved whole); only non-directories there become rows of their own.

Source: issue 12 ("reconciled after a crash"); ``history.py`` (names).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from datetime import date, datetime, time

from backupd.storage.catalog import NS, Catalog, Row, hash_entry_at, kind_of
from backupd.storage.catalog_state import clear_dead_marks
from backupd.storage.fsops import DIR_READ_FLAGS, ENTER, LEAVE, iter_tree, join_path, listdir_fd, open_dir, split_path
from backupd.storage.prune import open_history, parse_day
from backupd.storage.tree import ModuleTree
from backupd.storage.versions import SUFFIX

MAX_REPAIRS_SHOWN = 1000  # repairs kept with their text in a plan (all are applied)


@dataclass(frozen=True)
class Repair:
    """One catalog fix: ``kind`` (see the module docstring), the module path, and why."""

    kind: str
    path: bytes
    why: str
    row_id: int | None = None
    values: tuple = ()


@dataclass
class ReconcilePlan:
    """What ``apply_reconcile`` changes in one module's catalog."""

    module: str
    repairs: list[Repair] = field(default_factory=list)
    live_entries: int = 0
    history_entries: int = 0

    def counts(self) -> dict[str, int]:
        """Repairs per kind."""
        out: dict[str, int] = {}
        for r in self.repairs:
            out[r.kind] = out.get(r.kind, 0) + 1
        return out


def walk_entries(root_fd: int, start: tuple[bytes, ...], skip: tuple[bytes, ...] | None = None):
    """Yield ``(comps, dir_fd, name, st)`` of everything below directory ``start`` of the module.

    ``comps`` are module path components; ``skip`` (components) is not entered.
    """
    path_fd = open_dir(root_fd, start, "", join_path(start)) if start else os.dup(root_fd)
    try:
        fd = os.open(b".", DIR_READ_FLAGS, dir_fd=path_fd)
    finally:
        os.close(path_fd)
    try:
        for name in listdir_fd(fd):
            if skip is not None and (*start, name) == skip:
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            stack = list(start)
            for event, dir_fd, entry, est in iter_tree(fd, name, st):
                if event == LEAVE:
                    stack.pop()
                    continue
                comps = (*stack, entry)
                if skip is not None and comps[: len(skip)] == skip:
                    if event == ENTER:
                        stack.append(entry)
                    continue
                yield comps, dir_fd, entry, est
                if event == ENTER:
                    stack.append(entry)
    finally:
        os.close(fd)


def origin(hist_comps: tuple[bytes, ...], comps: tuple[bytes, ...], st: os.stat_result) -> tuple[bytes, int] | None:
    """(module path, archive time ns) of history entry ``comps``; None outside a day folder."""
    rest = comps[len(hist_comps):]
    if len(rest) < 2:
        return None
    day = parse_day(rest[0])
    if day is None:
        return None
    names, stamps = [], []
    for c in rest[1:]:
        m = SUFFIX.match(c)
        names.append(m["base"] if m else c)
        if m:
            stamps.append((int(m["h"]), int(m["m"]), int(m["s"])))
    return join_path(tuple(names)), _archived_ns(day, stamps, st)


def _archived_ns(day: date, stamps: list, st: os.stat_result) -> int:
    if stamps:
        h, m, s = max(stamps)
        try:
            return int(datetime.combine(day, time(h, m, s)).timestamp()) * NS
        except ValueError:
            pass
    changed = datetime.fromtimestamp(st.st_ctime)
    if changed.date() == day:
        return st.st_ctime_ns
    return int(datetime.combine(day, time.min).timestamp()) * NS


def plan_reconcile(tree: ModuleTree, catalog: Catalog, history_dir: bytes | str, now_ns: int) -> ReconcilePlan:
    """Compare the tree with the catalog; returns the repairs (reads only).

    Raises:
        StorageError, PathEscape: the module or its history cannot be read.
    """
    hist = split_path(os.fsencode(history_dir), tree.module)
    plan = ReconcilePlan(tree.module)
    live = {comps: st for comps, _fd, _name, st in walk_entries(tree.root_fd, (), hist)}
    history = _history_entries(tree, hist)
    plan.live_entries, plan.history_entries = len(live), len(history)
    rows = catalog.rows()
    by_ino = {}
    for comps, (st, _origin) in history.items():
        by_ino.setdefault(st.st_ino, []).append(comps)
    used: set[tuple[bytes, ...]] = set()
    open_live: set[tuple[tuple[bytes, ...], int]] = set()
    ends: dict[bytes, list[int]] = {}
    for row in rows:
        if row.live_to is not None:
            ends.setdefault(row.path, []).append(row.live_to)
    for row in rows:
        _check_row(row, live, history, by_ino, used, open_live, plan, now_ns)
        if row.live_from is None and row.live_to is not None:   # retired before its row was ever written
            earlier = [t for t in ends.get(row.path, []) if t < row.live_to]
            plan.repairs.append(Repair("from", row.path, "interval start unknown: the previous version's end",
                                       row.id, (max(earlier) if earlier else row.live_to,)))
    _add_unlisted(tree, live, history, used, open_live, ends, plan)
    return plan


def _history_entries(tree: ModuleTree, hist: tuple[bytes, ...]) -> dict:
    """History comps -> (lstat, (module path, archive ns)) of every entry in day folders."""
    out = {}
    fd = open_history(tree, join_path(hist))
    if fd is None:
        return out
    os.close(fd)
    for comps, _dir_fd, _name, st in walk_entries(tree.root_fd, hist):
        found = origin(hist, comps, st)
        if found is not None:
            out[comps] = (st, found)
    return out


def _check_row(row: Row, live, history, by_ino, used, open_live, plan: ReconcilePlan, now_ns: int) -> None:
    if row.missing:
        return
    if row.live_to is None:
        comps = split_path(row.path) if row.path not in (b"", b".") else ()
        st = live.get(comps)
        if st is not None and st.st_ino == row.ino and kind_of(st.st_mode) == row.type:
            open_live.add((comps, row.ino))
            if row.type != "dir" and (st.st_mode != row.mode or st.st_mtime_ns != row.mtime_ns):
                plan.repairs.append(Repair("attrs", row.path, "mode or mtime changed in place", row.id,
                                           (st.st_mode, st.st_mtime_ns)))
            return
        for hcomps in by_ino.get(row.ino, ()):
            if hcomps not in used and history[hcomps][1][0] == row.path:
                used.add(hcomps)
                at = history[hcomps][1][1]
                plan.repairs.append(Repair("retired", row.path, f"found in history as {join_path(hcomps)!r}",
                                           row.id, (max(at, row.live_from or at), join_path(hcomps))))
                return
        plan.repairs.append(Repair("lost", row.path, "live version is gone and not in history", row.id, (now_ns,)))
        return
    if not row.history:
        return
    hcomps = split_path(row.history)
    entry = history.get(hcomps)
    if entry is not None and (row.ino is None or entry[0].st_ino == row.ino):
        used.add(hcomps)
        return
    if entry is None and row.type == "dir" and _is_dir_in(history, hcomps):
        used.add(hcomps)
        return
    plan.repairs.append(Repair("lost", row.path, f"history copy {row.history!r} is gone", row.id, (None,)))


def _is_dir_in(history, hcomps) -> bool:
    n = len(hcomps)
    return any(c[:n] == hcomps for c in history)


def _add_unlisted(tree, live, history, used, open_live, ends, plan: ReconcilePlan) -> None:
    for comps, st in sorted(live.items()):
        if (comps, st.st_ino) in open_live:
            continue
        path = join_path(comps)
        start = max([st.st_ctime_ns, *ends.get(path, [])])
        digest = _hash_at(tree, comps, st)
        plan.repairs.append(Repair("live", path, "live entry without a catalog row", None,
                                   _values(path, st, start, None, None, digest)))
    pending = sorted((info[1][1], hcomps) for hcomps, info in history.items()
                     if hcomps not in used and not stat.S_ISDIR(info[0].st_mode))
    for archived, hcomps in pending:
        st, (path, _at) = history[hcomps]
        earlier = [t for t in ends.get(path, []) if t < archived]
        start = max(earlier) if earlier else min(st.st_mtime_ns, archived)
        ends.setdefault(path, []).append(archived)
        digest = _hash_at(tree, hcomps, st)
        plan.repairs.append(Repair("history", path, f"history entry {join_path(hcomps)!r} without a catalog row",
                                   None, _values(path, st, start, archived, join_path(hcomps), digest)))


def _values(path: bytes, st: os.stat_result, start: int, end: int | None, hist: bytes | None, digest) -> tuple:
    return (path, kind_of(st.st_mode), start, end, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ino,
            digest, hist)


def _hash_at(tree: ModuleTree, comps: tuple[bytes, ...], st: os.stat_result) -> str | None:
    """xxh128 of the entry at ``comps`` (None if unreadable: verify will report it)."""
    try:
        fd = open_dir(tree.root_fd, comps[:-1], tree.module, join_path(comps))
    except OSError:
        return None
    try:
        return hash_entry_at(fd, comps[-1], st)
    except OSError:
        return None
    finally:
        os.close(fd)


def apply_reconcile(catalog: Catalog, plan: ReconcilePlan) -> None:
    """Write the plan's repairs to the catalog in one transaction.

    Raises:
        sqlite3.Error: the catalog cannot be written (nothing is applied).
    """
    db = catalog.db
    db.execute("BEGIN IMMEDIATE")
    try:
        for r in plan.repairs:
            _APPLY[r.kind](db, r)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _insert(db, r: Repair) -> None:
    db.execute("INSERT INTO versions(path, type, live_from, live_to, size, mode, mtime_ns, ino, xxh128, history, "
               "approx) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)", r.values)


_APPLY = {
    "attrs": lambda db, r: db.execute("UPDATE versions SET mode = ?, mtime_ns = ? WHERE id = ?", (*r.values, r.row_id)),
    "retired": lambda db, r: db.execute("UPDATE versions SET live_to = ?, history = ?, approx = 1 WHERE id = ?",
                                        (*r.values, r.row_id)),
    "lost": lambda db, r: db.execute("UPDATE versions SET missing = 1, live_to = COALESCE(live_to, ?) WHERE id = ?",
                                     (r.values[0], r.row_id)),
    "from": lambda db, r: db.execute("UPDATE versions SET live_from = ?, approx = 1 WHERE id = ?",
                                     (*r.values, r.row_id)),
    "live": _insert,
    "history": _insert,
}


def reconcile_module(module, *, rebuild: bool = False, log=None) -> ReconcilePlan:
    """Reconcile (or, with ``rebuild``, re-create) the catalog of ``module`` (a ModuleConfig).

    Each repair is passed to ``log(text)``. Returns the applied plan.

    Raises:
        StorageError, PathEscape: the module cannot be read.
        sqlite3.Error, OSError: the catalog cannot be written.
    """
    from backupd.storage.catalog import module_catalog_file, now_ns
    from backupd.storage.history import HistoryStore

    with ModuleTree(module.path, module=module.name, history=HistoryStore(module.history_dir)) as tree:
        with Catalog(module_catalog_file(module)) as catalog:
            if rebuild:
                catalog.db.execute("DELETE FROM versions")
            plan = plan_reconcile(tree, catalog, module.history_dir, now_ns())
            apply_reconcile(catalog, plan)
            catalog.set_meta("reconciled", str(now_ns()))
    clear_dead_marks(module_catalog_file(module))   # what their writers did is in the tree just walked
    if log is not None:
        for r in plan.repairs[:MAX_REPAIRS_SHOWN]:
            log(f"module {module.name}: catalog repair {r.kind}: {os.fsdecode(r.path)}: {r.why}")
    return plan


__all__ = ["ReconcilePlan", "Repair", "apply_reconcile", "origin", "plan_reconcile", "reconcile_module",
           "walk_entries"]
