"""Retention: which history day folders are older than the module keeps, and removing them.

``plan_prune`` only looks (it lists and counts, never changes anything) and
returns a ``PrunePlan``: every day folder to remove with the reason and
what it holds, plus what it keeps and leaves alone. ``apply_prune`` carries
a plan out. ``--dry-run`` is simply "plan, print, do not apply" (borg,
restic).

What counts as a day folder: a directory directly in the history folder
named ``YYYY-MM-DD`` (a real calendar date). It is removed when its date is
more than ``keep_days`` days before today (local time): with 7 days on
2026-11-21 the cutoff is 2026-11-14, so 2026-11-13 goes and 2026-11-14
stays. ``keep_days`` 0 keeps history forever. Anything else in the history
folder (other names, files, symlinks) is left alone and reported; nothing
outside the history folder is ever opened for writing.

Confinement: the history folder is reached from the module root fd without
following symlinks (a symlinked history folder is refused), day folders
are opened relative to it with ``O_NOFOLLOW`` and removed entry by entry
with ``unlinkat``/``rmdir`` relative to their parent fd; symlinks inside are
unlinked, never followed.

Source: design.md §1 "Purge"; style.md §1 (pure plans).
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from backupd.storage.catalog_state import writer_mark
from backupd.storage.fsops import (
    DIR_READ_FLAGS,
    ENTER,
    LEAF,
    LEAVE,
    escape_error,
    fs_errors,
    iter_tree,
    listdir_fd,
    open_dir,
    split_path,
)
from backupd.storage.history import local_time
from backupd.storage.tree import ModuleTree

DAY_NAME = re.compile(rb"^(\d{4})-(\d{2})-(\d{2})$")
PROGRESS_EVERY = 500   # removed entries between progress callbacks


@dataclass(frozen=True)
class DayFolder:
    """One day folder of the history: its date, what it holds, why it goes or stays.

    ``files`` counts every non-directory entry inside, ``dirs`` the
    directories inside (the folder itself not included), ``size`` is the sum
    of the regular files' sizes in bytes.
    """

    name: bytes
    day: date
    files: int
    dirs: int
    size: int
    reason: str


@dataclass(frozen=True)
class PrunePlan:
    """What ``apply_prune`` will remove from one module's history, and why.

    ``remove`` and ``keep`` are sorted by date; ``ignored`` lists the other
    names found in the history folder with the reason they are left alone.
    ``cutoff`` is the oldest date kept (None when ``keep_days`` is 0).
    """

    module: str
    root: bytes
    history_dir: bytes
    now: datetime
    keep_days: int
    cutoff: date | None
    remove: tuple[DayFolder, ...] = ()
    keep: tuple[DayFolder, ...] = ()
    ignored: tuple[tuple[bytes, str], ...] = ()
    catalog_file: Path | None = None   # the module's catalog: rows of removed folders go too

    @property
    def files(self) -> int:
        """Non-directory entries the plan removes."""
        return sum(d.files for d in self.remove)

    @property
    def size(self) -> int:
        """Bytes of regular files the plan removes."""
        return sum(d.size for d in self.remove)

    @property
    def entries(self) -> int:
        """Every entry the plan removes: the folders, the dirs and files inside."""
        return sum(1 + d.dirs + d.files for d in self.remove)


@dataclass
class PruneResult:
    """What ``apply_prune`` removed (folders by name), and what failed."""

    module: str
    removed: list[bytes] = field(default_factory=list)
    files: int = 0
    dirs: int = 0
    size: int = 0
    rows: int = 0
    errors: list[str] = field(default_factory=list)


ProgressFn = Callable[[int], None]


def parse_day(name: bytes) -> date | None:
    """The date of a ``YYYY-MM-DD`` folder name, or None for anything else."""
    m = DAY_NAME.match(name)
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def cutoff_date(now: datetime, keep_days: int) -> date | None:
    """The oldest day folder date that is kept; None when ``keep_days`` is 0 (forever).

    Raises:
        ValueError: negative ``keep_days``.
    """
    if keep_days < 0:
        raise ValueError(f"keep days {keep_days} < 0")
    if keep_days == 0:
        return None
    return local_time(now).date() - timedelta(days=keep_days)


def open_history(tree: ModuleTree, history_dir: bytes) -> int | None:
    """An fd of the history folder (O_NOFOLLOW walk), or None if there is none.

    Raises:
        PathEscape: the history folder or a parent of it is a symlink.
        StorageError: it exists but cannot be opened.
    """
    comps = split_path(history_dir, tree.module)
    if not comps:
        raise escape_error(tree.module, history_dir, "the history folder cannot be the module root")
    with fs_errors(tree.module, history_dir):
        try:
            fd = open_dir(tree.root_fd, comps, tree.module, history_dir)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.open(b".", DIR_READ_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)


def _measure(hist_fd: int, name: bytes, st: os.stat_result) -> tuple[int, int, int]:
    """(files, dirs, bytes) inside day folder ``name``; the folder itself not counted."""
    files = dirs = size = 0
    for event, _fd, _entry, est in iter_tree(hist_fd, name, st):
        if event == LEAF:
            files += 1
            if stat.S_ISREG(est.st_mode):
                size += est.st_size
        elif event == ENTER:
            dirs += 1
    return files, dirs - 1, size


def _as_tree(tree_or_root: ModuleTree | Path | str | bytes, module: str) -> tuple[ModuleTree, bool]:
    if isinstance(tree_or_root, ModuleTree):
        return tree_or_root, False
    return ModuleTree(tree_or_root, module=module), True


def plan_prune(tree_or_root: ModuleTree | Path | str | bytes, now: datetime, keep_days: int, *,
               history_dir: bytes | str = b"history-backup", module: str = "",
               catalog_file: Path | None = None) -> PrunePlan:
    """Decide which day folders of a module's history are older than ``keep_days``.

    Reads only: lists the history folder and walks each day folder to count
    its files and bytes (the ones kept too, so a report can show them).

    Args:
        tree_or_root: the module (an open ModuleTree, or its path).
        now: the current time; naive means local time.
        keep_days: days of history kept; 0 keeps everything.
        history_dir: the history folder, relative to the module root.
        module: module name for messages.
        catalog_file: the module's catalog (``catalog.py``), if it has one:
            apply removes the rows of each folder with it.

    Raises:
        ValueError: negative ``keep_days``.
        PathEscape: the history folder is reached through a symlink.
        StorageError: the module or the history folder cannot be read.
    """
    hist = os.fsencode(history_dir)
    cutoff = cutoff_date(now, keep_days)
    tree, owned = _as_tree(tree_or_root, module)
    try:
        remove, keep, ignored = _classify(tree, hist, cutoff)
        return PrunePlan(module or tree.module, tree.root, hist, now, keep_days, cutoff,
                         tuple(remove), tuple(keep), tuple(ignored), catalog_file)
    finally:
        if owned:
            tree.close()


def _classify(tree: ModuleTree, hist: bytes, cutoff: date | None):
    remove: list[DayFolder] = []
    keep: list[DayFolder] = []
    ignored: list[tuple[bytes, str]] = []
    fd = open_history(tree, hist)
    if fd is None:
        return remove, keep, ignored
    try:
        with fs_errors(tree.module, hist):
            for name in sorted(listdir_fd(fd)):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                day = parse_day(name)
                if day is None or not stat.S_ISDIR(st.st_mode):
                    why = "not a YYYY-MM-DD name" if day is None else "not a directory"
                    ignored.append((name, why))
                    continue
                files, dirs, size = _measure(fd, name, st)
                if cutoff is not None and day < cutoff:
                    why = f"{day.isoformat()} is before {cutoff.isoformat()}, the oldest day kept"
                    remove.append(DayFolder(name, day, files, dirs, size, why))
                else:
                    why = "history is kept forever" if cutoff is None else "within the retention"
                    keep.append(DayFolder(name, day, files, dirs, size, why))
    finally:
        os.close(fd)
    return remove, keep, ignored


def apply_prune(plan: PrunePlan, *, progress: ProgressFn | None = None) -> PruneResult:
    """Remove the day folders of ``plan``, each re-checked just before it goes.

    A folder is removed only if it is still a directory (not a symlink)
    directly in the history folder with a date before the plan's cutoff.
    ``progress(n)`` is called with the number of entries removed since the
    previous call (the folders, the directories and files inside). With a
    catalog, a folder's rows are deleted (and committed) just before the
    folder: a crash in between leaves files without rows, which the next
    start's reconcile re-adds and the next prune removes (a writer mark,
    ``catalog_state.py``, held for the pass makes that start reconcile in full).

    Raises:
        PathEscape: the history folder became a symlink.
        StorageError: the module or the history folder cannot be opened.
    """
    result = PruneResult(plan.module)
    if not plan.remove:
        return result
    marked = plan.catalog_file if plan.catalog_file is not None and os.path.exists(plan.catalog_file) else None
    with ModuleTree(plan.root, module=plan.module) as tree, writer_mark(marked):   # killed: full reconcile
        fd = open_history(tree, plan.history_dir)
        if fd is None:
            return result
        try:
            for folder in plan.remove:
                _forget_rows(plan, folder, result)
                _remove_folder(fd, folder, plan, result, progress)
        finally:
            os.close(fd)
    return result


def _forget_rows(plan: PrunePlan, folder: DayFolder, result: PruneResult) -> None:
    """Delete the catalog rows of the versions stored in ``folder``."""
    if plan.catalog_file is None or parse_day(folder.name) is None or not os.path.exists(plan.catalog_file):
        return
    from backupd.storage.catalog import Catalog

    try:
        with Catalog(plan.catalog_file) as catalog:
            result.rows += catalog.forget_history(plan.history_dir + b"/" + folder.name)
    except (sqlite3.Error, OSError) as exc:
        result.errors.append(f"catalog {plan.catalog_file}: {exc}")


def _remove_folder(hist_fd: int, folder: DayFolder, plan: PrunePlan, result: PruneResult,
                   progress: ProgressFn | None) -> None:
    day = parse_day(folder.name)
    if day is None or plan.cutoff is None or day >= plan.cutoff:
        result.errors.append(f"{os.fsdecode(folder.name)}: not older than the cutoff, kept")
        return
    shown = f"module {plan.module}: {os.fsdecode(plan.history_dir)}/{os.fsdecode(folder.name)}"
    try:
        st = os.stat(folder.name, dir_fd=hist_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        result.errors.append(f"{shown}: no longer a directory, kept")
        return
    pending = 0
    try:
        for event, dir_fd, entry, est in iter_tree(hist_fd, folder.name, st):
            if event == LEAF:
                os.unlink(entry, dir_fd=dir_fd)
                result.files += 1
                result.size += est.st_size if stat.S_ISREG(est.st_mode) else 0
            elif event == LEAVE:
                os.rmdir(entry, dir_fd=dir_fd)
                result.dirs += 1 if entry != folder.name or dir_fd != hist_fd else 0
            else:
                continue
            pending += 1
            if progress is not None and pending >= PROGRESS_EVERY:
                progress(pending)
                pending = 0
    except OSError as exc:
        result.errors.append(f"{shown}: {exc.strerror or exc}")
        return
    finally:
        if progress is not None and pending:
            progress(pending)
    result.removed.append(folder.name)


__all__ = ["DayFolder", "PrunePlan", "PruneResult", "apply_prune", "cutoff_date", "open_history",
           "parse_day", "plan_prune"]
