"""Versions of a path across the history day folders, and copying one back out.

A version of module path ``a/b.txt`` lives in a day folder as
``<history>/<YYYY-MM-DD>/a/b.txt`` (the first one that day), or with the
same-day suffix ``b.txt.~HHMMSS~`` / ``b.txt.~HHMMSS~.N`` (later ones, the
time they went to history). A parent directory may carry the suffix
instead (``a.~HHMMSS~/b.txt``: the directory ``a`` was deleted as a whole
a second time that day). ``find_versions`` looks for all of these.

When did a version go to history: the suffix time if there is one, else
the entry's ctime (history links or renames it there, and nothing changes
it afterwards) when that falls on the folder's day; unknown otherwise.
Within a day the plain name is always the earliest version.

Everything is read through dir fds opened without following symlinks,
from the module root down, like ``tree.py``; a restore copies out of the
module into a directory the operator names, never into the module.

Source: design.md §1 "Storage and history", ``history.py`` (names).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

from backupd.errors import StorageError
from backupd.storage.fsops import (
    DIR_READ_FLAGS,
    NAME_MAX,
    copy_entry_at,
    copy_tree_into,
    escape_error,
    fs_errors,
    listdir_fd,
    open_dir,
    split_path,
    temp_name,
)
from backupd.storage.prune import open_history, parse_day
from backupd.storage.tree import ModuleTree

SUFFIX = re.compile(rb"^(?P<base>.+)\.~(?P<h>\d{2})(?P<m>\d{2})(?P<s>\d{2})~(?:\.(?P<n>\d+))?$")
_STAMP_LEN = len(".~HHMMSS~")
_CUT = NAME_MAX - _STAMP_LEN - 7           # history.version_names(): where a long name is cut

KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"))


@dataclass(frozen=True)
class Version:
    """One version of a path: where it is, what it is, and when it went to history.

    ``path`` is module-relative. ``day`` is the day folder (None for the
    current version). ``archived`` is the local time it went to history
    (None if unknown, or for the current version). ``rank`` orders the
    versions of one day: (suffix time as HHMMSS, counter), (-1, -1) for the
    plain name.
    """

    path: bytes
    kind: str
    size: int
    mtime_ns: int
    day: date | None
    archived: datetime | None
    rank: tuple[int, int] = (-1, -1)
    current: bool = False

    @property
    def when(self) -> datetime:
        """The archive time, or the start of its day when the time is unknown."""
        if self.archived is not None:
            return self.archived
        return datetime.combine(self.day or date.min, time.min)


def _kind(mode: int) -> str:
    return next((name for test, name in KINDS if test(mode)), "other")


def _suffix_of(name: bytes, wanted: bytes) -> tuple[int, int] | None:
    """(HHMMSS, counter) when ``name`` is ``wanted`` or a same-day version of it; else None."""
    if name == wanted:
        return (-1, -1)
    m = SUFFIX.match(name)
    if m is None:
        return None
    base = m["base"]
    if base != wanted and not (len(wanted) > _CUT and base == wanted[:_CUT]):
        return None
    hhmmss = int(m["h"] + m["m"] + m["s"])
    return (hhmmss, int(m["n"]) if m["n"] else 0)


def _candidates(day_fd: int, comps: tuple[bytes, ...]) -> list[tuple[tuple[bytes, ...], tuple, os.stat_result]]:
    """(history comps below the day folder, their suffixes, lstat) of each match of ``comps``."""
    out = []
    frontier = [(os.dup(day_fd), (), ())]
    nxt: list = []
    try:
        for depth, wanted in enumerate(comps):
            last = depth == len(comps) - 1
            nxt = []
            while frontier:
                fd, used, marks = frontier.pop()
                try:
                    for name in sorted(listdir_fd(fd)):
                        mark = _suffix_of(name, wanted)
                        if mark is None:
                            continue
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        if last:
                            out.append((used + (name,), marks + (mark,), st))
                        elif stat.S_ISDIR(st.st_mode):
                            child = os.open(name, DIR_READ_FLAGS, dir_fd=fd)
                            nxt.append((child, used + (name,), marks + (mark,)))
                finally:
                    os.close(fd)
            frontier, nxt = nxt, []
    finally:
        for fd, _used, _marks in frontier + nxt:
            os.close(fd)
    return out


def _archived(day: date, marks: tuple[tuple[int, int], ...],
              st: os.stat_result) -> tuple[datetime | None, tuple[int, int]]:
    stamped = [m for m in marks if m[0] >= 0]
    if stamped:
        hhmmss, counter = max(stamped)
        at = datetime.combine(day, time(hhmmss // 10000, hhmmss // 100 % 100, hhmmss % 100))
        return at, (hhmmss, counter)
    changed = datetime.fromtimestamp(st.st_ctime)
    return (changed if changed.date() == day else None), (-1, -1)


def find_versions(tree: ModuleTree, path: bytes, history_dir: bytes | str) -> list[Version]:
    """Every version of module path ``path``: the current one first, then newest first.

    Raises:
        PathEscape: ``path`` is not a clean module path, lies inside the
            history folder, or the history folder is reached through a symlink.
        StorageError: the history folder cannot be read.
    """
    hist = os.fsencode(history_dir)
    comps = split_path(path, tree.module)
    hist_comps = split_path(hist, tree.module)
    if not comps or comps[: len(hist_comps)] == hist_comps:
        raise escape_error(tree.module, path, "name a path of the module outside the history folder")
    found: list[Version] = []
    hist_fd = open_history(tree, hist)
    if hist_fd is not None:
        try:
            with fs_errors(tree.module, hist):
                found = _history_versions(hist_fd, hist, comps)
        finally:
            os.close(hist_fd)
    found.sort(key=lambda v: (v.day, v.rank), reverse=True)
    current = _current(tree, path)
    return ([current] if current else []) + found


def _history_versions(hist_fd: int, hist: bytes, comps: tuple[bytes, ...]) -> list[Version]:
    out = []
    for day_name in listdir_fd(hist_fd):
        day = parse_day(day_name)
        if day is None:
            continue
        try:
            day_fd = os.open(day_name, DIR_READ_FLAGS, dir_fd=hist_fd)
        except OSError:
            continue   # not a directory (or a symlink): not a day folder
        try:
            for used, marks, st in _candidates(day_fd, comps):
                archived, rank = _archived(day, marks, st)
                rel = b"/".join((hist, day_name, *used))
                out.append(Version(rel, _kind(st.st_mode), st.st_size, st.st_mtime_ns, day, archived, rank))
        finally:
            os.close(day_fd)
    return out


def _current(tree: ModuleTree, path: bytes) -> Version | None:
    try:
        st = tree.lstat(path)
    except StorageError:
        return None
    if st is None:
        return None
    return Version(path, _kind(st.st_mode), st.st_size, st.st_mtime_ns, None, None, current=True)


def pick_version(versions: list[Version], at: date | datetime) -> Version | None:
    """The version a restore ``--at`` means.

    A date: the newest version in that day folder. A date and time: the
    newest version that went to history at or before it (an unknown time
    counts as the start of its day). None if there is no such version.
    """
    history = [v for v in versions if not v.current]
    if isinstance(at, datetime):
        chosen = [v for v in history if v.when <= at]
    else:
        chosen = [v for v in history if v.day == at]
    return max(chosen, key=lambda v: (v.day, v.rank), default=None)


def restore_target(tree: ModuleTree, version: Version, dest_dir: Path) -> Path:
    """Where :func:`restore_version` would put ``version``: ``dest_dir / <original name>``.

    Pure: reads and creates nothing (``restore --dry-run``).
    """
    name = split_path(version.path, tree.module)[-1]
    return Path(dest_dir) / os.fsdecode(name if version.current else _original_name(name))


def restore_version(tree: ModuleTree, version: Version, dest_dir: Path, *, force: bool = False) -> Path:
    """Copy ``version`` out of the module to ``dest_dir / <its original name>``.

    Content, mode and mtime are kept (owner too, as root); a directory is
    copied whole, symlinks as symlinks. The copy is made under a temp name
    in ``dest_dir`` and renamed into place, so a failed restore leaves no
    half-written target. ``dest_dir`` is created if missing.

    Returns:
        The restored path.

    Raises:
        FileExistsError: the target exists and ``force`` is False.
        StorageError: the version cannot be read (PathEscape if reached
            through a symlink).
        OSError: the target cannot be written.
    """
    comps = split_path(version.path, tree.module)
    original = _original_name(comps[-1]) if not version.current else comps[-1]
    dest_dir = Path(dest_dir)
    target = restore_target(tree, version, dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target) and not force:
        raise FileExistsError(errno.EEXIST, f"{target} exists (use --force to replace it)")
    dst_fd = os.open(dest_dir, DIR_READ_FLAGS)
    try:
        temp = temp_name(original)
        with fs_errors(tree.module, version.path):
            src_fd = open_dir(tree.root_fd, comps[:-1], tree.module, version.path)
            try:
                st = os.stat(comps[-1], dir_fd=src_fd, follow_symlinks=False)
                _copy_out(src_fd, comps[-1], st, dst_fd, temp)
            finally:
                os.close(src_fd)
        _replace(dst_fd, temp, original, target)
    finally:
        os.close(dst_fd)
    return target


def _original_name(name: bytes) -> bytes:
    m = SUFFIX.match(name)
    return m["base"] if m else name


def _copy_out(src_fd: int, name: bytes, st: os.stat_result, dst_fd: int, dst_name: bytes) -> None:
    """Copy an entry (a directory with everything inside) to the new name ``dst_name``."""
    if not stat.S_ISDIR(st.st_mode):
        copy_entry_at(src_fd, name, st, dst_fd, dst_name)
        return
    os.mkdir(dst_name, 0o700, dir_fd=dst_fd)
    copy_tree_into(src_fd, name, st, dst_fd, dst_name)


def _replace(dst_fd: int, temp: bytes, name: bytes, target: Path) -> None:
    """Rename ``temp`` to ``name``; a directory in the way is removed first (``--force``)."""
    try:
        old = os.stat(name, dir_fd=dst_fd, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    if old is not None and stat.S_ISDIR(old.st_mode):
        shutil.rmtree(target)
    try:
        os.rename(temp, name, src_dir_fd=dst_fd, dst_dir_fd=dst_fd)
    except OSError:
        tst = os.stat(temp, dir_fd=dst_fd, follow_symlinks=False)
        if stat.S_ISDIR(tst.st_mode):
            shutil.rmtree(target.parent / os.fsdecode(temp))
        else:
            os.unlink(temp, dir_fd=dst_fd)
        raise


__all__ = ["Version", "find_versions", "pick_version", "restore_version"]
