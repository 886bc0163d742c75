"""The module's history: old versions moved or linked aside before they go.

Layout (the sersync scripts' ``--backup-dir`` convention):
``<dir_name>/<YYYY-MM-DD>/<path>``, the day in the server's local time zone.
A second version of the same path on the same day never overwrites the
first: it gets ``<name>.~HHMMSS~``, then ``<name>.~HHMMSS~.1``, ``.2``, ...
(local time of the move). Names are claimed without overwriting: ``link()``
and ``O_EXCL`` fail on a taken name; a rename is preceded by a check
(``_rename_if_free``).
A directory component of ``<path>`` that is taken in history by a
non-directory (the path was a file earlier that day) gets the same suffixes.

Source: design.md §1 "Storage and history"; rsync backup.c (make_backup) for
the "link, else copy" order, rsync-protocol-b.md §7.5.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import NamedTuple

from backupd.errors import PathEscape, StorageError
from backupd.storage.fsops import (
    DIR_READ_FLAGS,
    NAME_MAX,
    copy_entry_at,
    copy_tree_into,
    escape_error,
    fs_errors,
    join_path,
    open_dir,
    remove_tree,
    split_path,
)


class Kept(NamedTuple):
    """Where an entry's version went in history, and whether it is a copy.

    ``copy_ino``: the inode of history's copy when it is not the entry's own
    (copied, not linked or renamed: ``-H`` names, ``--inplace``, another file
    system); None when history holds the entry's own inode, and for a
    directory (moved whole, or copied entry by entry across devices).
    """

    path: bytes
    copy_ino: int | None


MAX_VERSIONS_PER_DAY = 100_000  # bound on the suffix search for one name
# link() impossible: other file system, protected_hardlinks, too many links
LINK_FALLBACK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP})


def local_time(now: datetime) -> datetime:
    """``now`` in the server's local time zone (a naive ``now`` is taken as local)."""
    return now if now.tzinfo is None else now.astimezone()


def version_names(name: bytes, now: datetime) -> Iterator[bytes]:
    """Names tried in turn for ``name`` in one day folder.

    ``name``, ``name.~HHMMSS~``, ``name.~HHMMSS~.1``, ... (``now`` local);
    ``name`` is cut so that each candidate fits in NAME_MAX bytes.
    """
    yield name
    stamp = local_time(now).strftime(".~%H%M%S~").encode()
    base = name[: NAME_MAX - len(stamp) - 7]
    yield base + stamp
    for n in range(1, MAX_VERSIONS_PER_DAY):
        yield base + stamp + b".%d" % n


class HistoryStore:
    """Where a module's replaced and deleted entries go; bound to one tree.

    ``ModuleTree`` binds it to the module's root fd (``bind()``); all work is
    dir-fd confined like the tree's. Clients never name history paths here:
    the tree refuses client writes inside ``dir_name``.

    Args:
        dir_name: history folder relative to the module root (``history dir``).
        clock: returns "now"; naive means local time, aware is converted.
    """

    def __init__(
        self,
        dir_name: bytes | str = b"history-backup",
        *,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.dir_name = os.fsencode(dir_name) if isinstance(dir_name, str) else bytes(dir_name)
        self.comps = split_path(self.dir_name, "")
        if not self.comps:
            raise StorageError("history dir must not be the module root")
        self._clock = clock
        self._wall_clock = clock == datetime.now   # now_ns without a datetime (compared once, not per call)
        self._root_fd = -1
        self.module = ""

    def bind(self, root_fd: int, module: str) -> None:
        """Attach to a module root fd (owned by the tree, not closed here)."""
        self._root_fd = root_fd
        self.module = module

    def contains(self, comps: tuple[bytes, ...]) -> bool:
        """True when ``comps`` is the history dir or inside it."""
        n = len(self.comps)
        return len(comps) >= n and comps[:n] == self.comps

    def is_ancestor(self, comps: tuple[bytes, ...]) -> bool:
        """True when ``comps`` strictly contains the history dir (root included)."""
        return len(comps) < len(self.comps) and self.comps[: len(comps)] == comps

    def now(self) -> datetime:
        """The clock's time in the local zone."""
        return local_time(self._clock())

    def now_ns(self) -> int:
        """The clock's time as ns since the epoch, microsecond resolution (catalog times).

        With the real clock, ``time.time_ns`` (no datetime made per call).
        """
        if self._wall_clock:
            return time.time_ns() // 1000 * 1000
        return int(round(self.now().timestamp() * 1_000_000)) * 1000

    def day_dir(self, now: datetime) -> bytes:
        """``dir_name/YYYY-MM-DD`` for ``now`` in the server's local time zone."""
        return self.dir_name + b"/" + local_time(now).strftime("%Y-%m-%d").encode()

    def preserve(self, path: bytes, *, copy: bool = False) -> bytes:
        """Hard-link (or copy) the current version of ``path`` into history.

        ``path`` stays in place. Use ``copy=True`` when the file is about to be
        changed in place (``--inplace``): a link would share the changes.

        Returns:
            The history path used, relative to the module root.

        Raises:
            PathEscape: bad path, or inside history.
            StorageError: missing, a directory, or an OS error.
        """
        comps = self._own_comps(path)
        with fs_errors(self.module, path):
            fd = open_dir(self._root_fd, comps[:-1], self.module, path)
            try:
                st = os.stat(comps[-1], dir_fd=fd, follow_symlinks=False)
                return self.preserve_at(fd, comps, st, copy=copy)
            finally:
                os.close(fd)

    def move(self, path: bytes) -> bytes:
        """Move the entry at ``path`` (a directory as a whole) into history.

        Returns:
            The history path used, relative to the module root.

        Raises:
            PathEscape: bad path, or inside history.
            StorageError: missing, or an OS error.
        """
        comps = self._own_comps(path)
        with fs_errors(self.module, path):
            fd = open_dir(self._root_fd, comps[:-1], self.module, path)
            try:
                st = os.stat(comps[-1], dir_fd=fd, follow_symlinks=False)
                return self.move_at(fd, comps, st)
            finally:
                os.close(fd)

    def _own_comps(self, path: bytes) -> tuple[bytes, ...]:
        comps = split_path(path, self.module)
        if not comps or self.contains(comps) or self.is_ancestor(comps):
            raise escape_error(self.module, path, "history cannot hold this path")
        return comps

    def preserve_at(
        self, parent_fd: int, comps: tuple[bytes, ...], st: os.stat_result, *, copy: bool = False
    ) -> bytes:
        """:meth:`preserve` for entry ``comps[-1]`` of the open ``parent_fd``.

        ``st`` is its lstat. Raises OSError (EISDIR for a directory).
        """
        return self.preserve_entry(parent_fd, comps, st, copy=copy).path

    def preserve_entry(
        self, parent_fd: int, comps: tuple[bytes, ...], st: os.stat_result, *, copy: bool = False
    ) -> Kept:
        """:meth:`preserve_at`, also saying whether history got a copy (its inode, without a lookup)."""
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "cannot preserve a directory in place")
        name, now = comps[-1], self.now()
        use_link = [not copy and not _shares_inode(st)]
        copied: list[int] = []

        def put(cand: bytes) -> None:
            if use_link[0]:
                try:
                    os.link(name, cand, src_dir_fd=parent_fd, dst_dir_fd=hfd,
                            follow_symlinks=False)
                    return
                except OSError as exc:
                    if exc.errno not in LINK_FALLBACK:
                        raise
                    use_link[0] = False
            copied.append(_copy_at(parent_fd, name, st, hfd, cand))

        hfd, hcomps = self._open_target_dir(comps, now)
        try:
            path = join_path(hcomps + (self._place(name, now, put),))
        finally:
            os.close(hfd)
        return Kept(path, copied[-1] if copied else None)

    def move_at(self, parent_fd: int, comps: tuple[bytes, ...], st: os.stat_result) -> bytes:
        """:meth:`move` for entry ``comps[-1]`` of the open ``parent_fd``; raises OSError."""
        return self.move_entry(parent_fd, comps, st).path

    def move_entry(self, parent_fd: int, comps: tuple[bytes, ...], st: os.stat_result) -> Kept:
        """:meth:`move_at`, also saying whether history got a copy of a non-directory (see :class:`Kept`)."""
        name, now = comps[-1], self.now()
        copied: list[int] = []
        hfd, hcomps = self._open_target_dir(comps, now)
        try:
            if stat.S_ISDIR(st.st_mode):
                put = self._dir_mover(parent_fd, name, st, hfd)
            else:
                put = self._entry_mover(parent_fd, name, st, hfd, copied)
            path = join_path(hcomps + (self._place(name, now, put),))
        finally:
            os.close(hfd)
        return Kept(path, copied[-1] if copied else None)

    @staticmethod
    def _place(name: bytes, now: datetime, put: Callable[[bytes], None]) -> bytes:
        """Run ``put`` on successive version names until one is not taken."""
        for cand in version_names(name, now):
            try:
                put(cand)
                return cand
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, f"over {MAX_VERSIONS_PER_DAY} versions today")

    def _dir_mover(self, parent_fd: int, name: bytes, st: os.stat_result, hfd: int):
        """``put`` for a directory: one rename (cross-device: copy, then delete)."""

        def put(cand: bytes) -> None:
            try:
                _rename_if_free(parent_fd, name, hfd, cand)
                return
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            os.mkdir(cand, 0o700, dir_fd=hfd)
            copy_tree_into(parent_fd, name, st, hfd, cand)
            remove_tree(parent_fd, name, st)

        return put

    def _entry_mover(self, parent_fd: int, name: bytes, st: os.stat_result, hfd: int, copied: list[int]):
        """``put`` for a non-directory: link + unlink, else rename, else copy + unlink.

        A file other live names share (``-H``) is copied, so the version in
        history has an inode of its own that no later change of them reaches.
        A copy's inode is appended to ``copied``.
        """

        def put(cand: bytes) -> None:
            if _shares_inode(st):
                copied.append(_copy_at(parent_fd, name, st, hfd, cand))
                os.unlink(name, dir_fd=parent_fd)
                return
            try:
                os.link(name, cand, src_dir_fd=parent_fd, dst_dir_fd=hfd, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in LINK_FALLBACK:
                    raise
            else:
                os.unlink(name, dir_fd=parent_fd)
                return
            try:
                _rename_if_free(parent_fd, name, hfd, cand)
                return
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            copied.append(_copy_at(parent_fd, name, st, hfd, cand))
            os.unlink(name, dir_fd=parent_fd)

        return put

    def _open_target_dir(
        self, comps: tuple[bytes, ...], now: datetime
    ) -> tuple[int, tuple[bytes, ...]]:
        """Open (creating) the history folder that will hold ``comps[-1]``.

        Returns ``(fd, history comps of that folder)``; the caller closes fd.
        """
        day = local_time(now).strftime("%Y-%m-%d").encode()
        fd, used = os.dup(self._root_fd), []
        try:
            for name in (*self.comps, day):
                fd = self._swap(fd, _enter_dir(fd, name, lambda: 0o755), name)
                used.append(name)
            for i, name in enumerate(comps[:-1]):
                mode = functools.partial(self._original_mode, comps[: i + 1])
                for cand in version_names(name, now):
                    new_fd = _enter_dir(fd, cand, mode)
                    if new_fd is not None:
                        break
                fd = self._swap(fd, new_fd, cand)
                used.append(cand)
        except BaseException:
            os.close(fd)
            raise
        return fd, tuple(used)

    @staticmethod
    def _swap(fd: int, new_fd: int | None, name: bytes) -> int:
        if new_fd is None:
            raise NotADirectoryError(errno.ENOTDIR, f"history entry {name!r} is not a directory")
        os.close(fd)
        return new_fd

    def _original_mode(self, comps: tuple[bytes, ...]) -> int:
        """Permission bits of the module directory ``comps``; 0755 if unknown."""
        try:
            fd = open_dir(self._root_fd, comps, self.module, join_path(comps))
        except (OSError, PathEscape):
            return 0o755
        try:
            return stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)


def _copy_at(parent_fd: int, name: bytes, st: os.stat_result, hfd: int, cand: bytes) -> int:
    """``copy_entry_at`` into history's ``cand``; returns the copy's inode (one ``fstatat``)."""
    copy_entry_at(parent_fd, name, st, hfd, cand)
    return os.stat(cand, dir_fd=hfd, follow_symlinks=False).st_ino


def _shares_inode(st: os.stat_result) -> bool:
    """A regular file with more than one name: linking it into history would share its inode.

    A version in history must be immutable: a live hard link to the same
    inode would carry a later chmod, utime, chown or in-place write of the
    live name into it (issue 15.5), so such a file is copied instead.
    """
    return stat.S_ISREG(st.st_mode) and st.st_nlink > 1


def _enter_dir(fd: int, name: bytes, mode: Callable[[], int]) -> int | None:
    """Open subdirectory ``name`` of ``fd``, creating it (``mode() | 0700``).

    Returns None when ``name`` is taken by a non-directory (or a symlink,
    which is never followed).
    """
    created = False
    try:
        os.mkdir(name, 0o700, dir_fd=fd)
        created = True
    except FileExistsError:
        pass
    try:
        new_fd = os.open(name, DIR_READ_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    if created:
        try:
            os.fchmod(new_fd, mode() | 0o700)
        except BaseException:
            os.close(new_fd)
            raise
    return new_fd


def _rename_if_free(parent_fd: int, name: bytes, hfd: int, cand: bytes) -> None:
    """Rename entry ``name`` to ``cand`` in ``hfd`` unless ``cand`` is taken.

    Nothing is reserved first, so a crash leaves no empty placeholder that
    would look like a version. The lstat-then-rename gap only matters for two
    sessions moving the same name in the same second; rename still never
    replaces a non-empty directory, and a directory never replaces a file.

    Raises:
        FileExistsError: ``cand`` is taken.
        OSError: anything else (EXDEV: other file system).
    """
    try:
        os.stat(cand, dir_fd=hfd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        raise FileExistsError(errno.EEXIST, "File exists")
    try:
        os.rename(name, cand, src_dir_fd=parent_fd, dst_dir_fd=hfd)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, "File exists") from exc
        raise
