"""ModuleTree: every filesystem effect on one module, confined to its root.

Paths are wire paths: ``bytes`` relative to the module root, ``/``-separated
(``b"dir/sub/file"``; ``b"."`` or ``b""`` is the root), untrusted. Each one is
validated (``fsops.split_path``) and reached by walking from the root fd one
directory at a time with ``O_NOFOLLOW | O_DIRECTORY``; final components are
only used through ``*at`` calls that never follow symlinks. So nothing a
client sends can create, change or delete anything outside the module, even
if a directory is swapped for a symlink between two calls.

Errors (one rule for the whole package): ``PathEscape`` when a path tries to
leave the module or touch the history dir; ``StorageError`` for every other
failure, message ``module M: PATH: REASON``, with ``errno``, ``module`` and
``path`` attributes. Which of them concern "one client file" (and become a
``FileError`` on the wire) is decided by the roles, not here.

With a ``HistoryStore``, whatever a write replaces or a delete removes goes
to history first; clients can never write, replace or delete inside the
history dir (``allow_history=True`` is for the server's own use, and then
history paths are replaced without keeping their old versions).

Source: design.md §1 "Storage and history"; rsync-protocol-b.md §7-8.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import xxhash

from backupd.errors import PathEscape, StorageError
from backupd.storage.acls import AclAccess
from backupd.storage.catalog import hash_entry_at
from backupd.storage.fsops import (
    DIR_READ_FLAGS,
    TMP_TRIES,
    DeleteCounts,
    change_owner,
    chmod_at,
    count_tree,
    escape_error,
    fs_errors,
    is_stale_temp,
    join_path,
    listdir_fd,
    open_dir,
    open_step,
    remove_tree,
    show,
    split_path,
    temp_name,
)
from backupd.storage.inplace import InplaceFile
from backupd.storage.reflink import clone_align
from backupd.storage.staging import Basis, StagedFile
from backupd.storage.xattrs import XattrAccess

if TYPE_CHECKING:
    from types import TracebackType

    from backupd.storage.backup import BackupPolicy
    from backupd.storage.catalog import CatalogWriter
    from backupd.storage.history import HistoryStore, Kept


T = TypeVar("T")
# no lock to be had: directory unreadable to us, or no flock on this file system
_NO_LOCK = frozenset({errno.EACCES, errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL})


class _EntryLock:
    """What ``ModuleTree._entry_lock`` returns: closing the fd at the end of the block releases the lock.

    A class, not a generator-based context manager: one is made per file written.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)


class ModuleTree:
    """One module's directory, opened once; all access dir-fd confined.

    Args:
        root: the module's ``path`` (may itself be a symlink: config, trusted).
        module: module name, for messages.
        history: where replaced and deleted entries go; None deletes for real.
        fsync: fsync staged files before they are renamed into place.
        root_fd: the module directory already opened (before the session
            switched to the module's uid); the tree keeps a duplicate.
        catalog: records each version made live or retired (``catalog.py``);
            only with history, and never for paths inside it. Flushed and
            closed by :meth:`close`.
        backup: without history, the client's ``--backup``: what a write
            replaces or a delete removes is kept under its backup name
            (``backup.py``); ignored with history, which keeps everything.

    Raises:
        StorageError: the root cannot be opened as a directory.
    """

    def __init__(
        self,
        root: Path | bytes | str,
        *,
        module: str = "",
        history: HistoryStore | None = None,
        fsync: bool = True,
        root_fd: int | None = None,
        catalog: CatalogWriter | None = None,
        backup: BackupPolicy | None = None,
    ) -> None:
        self.module = module
        self.backup = backup if history is None else None
        self.catalog = catalog if history is not None else None
        # directories whose entries changed (catalog: their final mtime), as components: joined once at close
        self._touched: set[tuple[bytes, ...]] = set()
        self.fsync = fsync  # fsync staged files before the rename (rsync --fsync)
        self.root = root if isinstance(root, bytes) else os.fsencode(os.fspath(root))
        self._root_fd = -1
        with fs_errors(module, self.root):
            if root_fd is not None:  # opened earlier (before a uid switch): the tree owns a duplicate
                self._root_fd = os.dup(root_fd)
            else:
                self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.history = history
        self.reflink = True  # clone matched blocks where the file system can (False: always copy)
        self.read_flags = 0  # added to read-only opens of sources and basis files (os.O_NOATIME: --open-noatime)
        self._clone_align: int | None = None
        if history is not None:
            history.bind(self._root_fd, module)

    @property
    def clone_align(self) -> int:
        """Block size for reflinked deltas in this module (``storage.reflink``), 0 without; probed once."""
        if self._clone_align is None:
            self._clone_align = clone_align(self._root_fd) if self.reflink else 0
        return self._clone_align

    @property
    def root_fd(self) -> int:
        """The module root's directory fd (owned by the tree)."""
        return self._root_fd

    def close(self) -> None:
        """Flush the catalog, close the root fd; idempotent."""
        if self.catalog is not None:
            self._record_touched_dirs()
            self.catalog.close()
            self.catalog = None
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> ModuleTree:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- reading ---------------------------------------------------------

    def lstat(self, path: bytes) -> os.stat_result | None:
        """lstat of ``path``; None if it or a parent is missing or a parent is no dir.

        Raises:
            PathEscape: bad path or symlinked parent.
        """
        comps = split_path(path, self.module)
        with fs_errors(self.module, path):
            if not comps:
                return os.fstat(self._root_fd)
            try:
                fd = open_dir(self._root_fd, comps[:-1], self.module, path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            try:
                return os.stat(comps[-1], dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            finally:
                os.close(fd)

    def listdir(self, path: bytes) -> list[bytes]:
        """Names in directory ``path``, unsorted, without ``.`` and ``..``."""
        with fs_errors(self.module, path):
            return self._read_dir(path, listdir_fd)

    def scan_dir(self, path: bytes) -> dict[bytes, os.stat_result] | None:
        """lstat of every entry of directory ``path`` in one pass: name -> stat.

        None when ``path`` is missing or not a directory. A snapshot: entries
        changed afterwards are not reflected (callers drop it when they write).
        """
        with fs_errors(self.module, path):
            try:
                return self._read_dir(path, _scan_fd)
            except (FileNotFoundError, NotADirectoryError):
                return None

    def _read_dir(self, path: bytes, read: Callable[[int], T]) -> T:
        """``read(fd)`` on directory ``path`` opened readable (confined walk); raises OSError."""
        fd = open_dir(self._root_fd, split_path(path, self.module), self.module, path)
        try:
            read_fd = os.open(b".", DIR_READ_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        try:
            return read(read_fd)
        finally:
            os.close(read_fd)

    def readlink(self, path: bytes) -> bytes:
        """Target of symlink ``path`` (StorageError EINVAL if it is no symlink)."""
        comps = self._entry(path)
        with fs_errors(self.module, path), self._parent(comps, path) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    def open_basis(self, path: bytes) -> Basis | None:
        """Open regular file ``path`` read-only and mmap'd; None if missing or not one."""
        comps = split_path(path, self.module)
        if not comps:
            return None
        with fs_errors(self.module, path):
            try:
                fd = open_dir(self._root_fd, comps[:-1], self.module, path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            try:
                return Basis.open_at(fd, comps[-1], self.read_flags)
            finally:
                os.close(fd)

    def is_history_path(self, path: bytes) -> bool:
        """True when ``path`` is the history dir or inside it (False without history).

        A path that does not start with the history dir's name is not in it
        (its components cannot begin with the history dir's): that answer
        needs no split, which every file-list entry would pay for.

        Raises:
            PathEscape: a path that might be in history is not a clean module path.
        """
        if self.history is None or not path.startswith(self.history.dir_name):
            return False
        return self.history.contains(split_path(path, self.module))

    # -- writing ---------------------------------------------------------

    def mkdir(self, path: bytes, mode: int, *, exist_ok: bool = False, allow_history: bool = False) -> None:
        """Create directory ``path`` (parent must exist; ``mode`` minus umask)."""
        comps = self._writable(path, allow_history)
        with fs_errors(self.module, path), self._parent(comps, path) as (fd, name):
            try:
                os.mkdir(name, mode, dir_fd=fd)
            except FileExistsError:
                if not (exist_ok and stat.S_ISDIR(_lstat(fd, name).st_mode)):
                    raise
            else:
                self._record_new(fd, name, comps)

    def makedirs(self, path: bytes, mode: int, *, allow_history: bool = False) -> None:
        """Create ``path`` and missing parents (implied dirs); existing dirs are kept."""
        comps = split_path(path, self.module)
        self._guard(comps, path, allow_history)
        with fs_errors(self.module, path):
            fd = os.dup(self._root_fd)
            try:
                for i, name in enumerate(comps):
                    try:
                        os.mkdir(name, mode, dir_fd=fd)
                    except FileExistsError:
                        pass
                    else:
                        self._record_new(fd, name, comps[: i + 1])
                    next_fd = open_step(fd, name, self.module, path)
                    os.close(fd)
                    fd = next_fd
            finally:
                os.close(fd)

    def symlink(self, target: bytes, path: bytes, *, allow_history: bool = False) -> None:
        """Create or atomically replace symlink ``path`` -> ``target``.

        Made under a temp name in the same directory, then renamed over
        ``path``; what was there goes to history first (a directory as a
        whole). A symlink with the same target is left as it is.
        """
        comps = self._writable(path, allow_history, displaces=True)
        target = bytes(target)
        with fs_errors(self.module, path), self._parent(comps, path) as (fd, name):
            try:
                if os.readlink(name, dir_fd=fd) == target:
                    return
            except OSError:
                pass  # missing, or not a symlink
            tmp = self._temp_symlink(fd, name, target)
            try:
                self.install(fd, tmp, comps, path, digest=_digest(target) if self.catalog else None)
            except BaseException:
                _unlink_quietly(fd, tmp)
                raise

    def hardlink(self, existing: bytes, path: bytes, *, allow_history: bool = False) -> None:
        """Make ``path`` a hard link to the file ``existing`` (both module paths), atomically.

        A new name is linked directly; over an existing entry the link is
        made under a temp name beside ``path``, then renamed over it, what was
        there going to history first. Neither end follows a symlink.

        Raises:
            PathEscape: ``existing`` is inside the history folder (unless
                ``allow_history``): no live name may share a version's inode.
        """
        comps = self._writable(path, allow_history, displaces=True)
        src = split_path(existing, self.module)
        if not allow_history and self.history is not None and self.history.contains(src):
            # a live name sharing a version's inode could change it (issue 15.5)
            raise escape_error(self.module, existing, "a hard link to a version inside the history folder")
        with fs_errors(self.module, path), self._parent(comps, path) as (fd, name):
            with self._parent(src, existing) as (src_fd, src_name):
                try:  # a new name: link(2) makes it atomically, nothing to keep (the --link-dest case)
                    with self._entry_lock(fd, comps):  # not between another session's keep and rename
                        os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
                    return
                except FileExistsError:
                    pass
                tmp = self._temp_entry(
                    fd, name, lambda t: os.link(src_name, t, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
                )
            try:
                self.install(fd, tmp, comps, path)
            except BaseException:
                _unlink_quietly(fd, tmp)
                raise

    def mknod(self, path: bytes, mode: int, rdev: int = 0, *, allow_history: bool = False) -> None:
        """Create a device, fifo or socket node at ``path`` (replacing what is there, history first)."""
        comps = self._writable(path, allow_history, displaces=True)
        with fs_errors(self.module, path), self._parent(comps, path) as (fd, name):
            tmp = self._temp_entry(fd, name, lambda t: os.mknod(t, mode, rdev, dir_fd=fd))
            try:
                self.install(fd, tmp, comps, path)
            except BaseException:
                _unlink_quietly(fd, tmp)
                raise

    @staticmethod
    def _temp_entry(fd: int, name: bytes, make) -> bytes:
        for _ in range(TMP_TRIES):
            tmp = temp_name(name)
            try:
                make(tmp)
                return tmp
            except FileExistsError:
                continue
        raise FileExistsError(f"no free temp name beside {name!r}")

    def set_attrs(
        self,
        path: bytes,
        *,
        mode: int | None = None,
        mtime_ns: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        allow_history: bool = False,
    ) -> None:
        """Set owner, mode and mtime of ``path``, never following a final symlink.

        Owner: only as root (``lchown``); as non-root a group change is tried
        and failures ignored, as rsync does. ``mode`` is skipped on symlinks.
        ``None`` leaves that attribute alone. Source: rsync.c set_file_attrs().
        """
        comps = split_path(path, self.module)
        self._guard(comps, path, allow_history)
        with fs_errors(self.module, path):
            if not comps:
                _set_fd_attrs(self._root_fd, mode, mtime_ns, uid, gid)
                return
            with self._parent(comps, path) as (fd, name):
                st = _lstat(fd, name)
                owner_changed = change_owner(name, uid, gid, dir_fd=fd, current=st)
                if (
                    mode is not None
                    and not stat.S_ISLNK(st.st_mode)
                    and (owner_changed or stat.S_IMODE(mode) != stat.S_IMODE(st.st_mode))
                ):
                    chmod_at(fd, name, mode)
                if mtime_ns is not None:
                    os.utime(name, ns=(st.st_atime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)
            if self.catalog is not None and self._keeps_history(comps):
                self.catalog.attrs(join_path(comps), None if stat.S_ISLNK(st.st_mode) else mode, mtime_ns,
                                   self._when())

    def create_staged(self, path: bytes, mode: int, *, allow_history: bool = False, sparse: bool = False,
                      temp_dir: bytes | None = None) -> StagedFile:
        """Start new content for file ``path`` (parent must exist); see StagedFile.

        ``mode`` is applied at commit unless commit passes its own; ``sparse``
        (``-S``) turns blocks of zeros into holes. ``temp_dir`` (``--temp-dir``,
        a module dir outside history): the temp file is written there; one that
        cannot be opened as a plain directory leaves it beside the target.
        """
        comps = self._writable(path, allow_history, displaces=True)
        with fs_errors(self.module, path):
            fd = open_dir(self._root_fd, comps[:-1], self.module, path)
            try:
                return StagedFile(self, fd, comps, path, mode, sparse=sparse, temp_fd=self._temp_dir_fd(temp_dir))
            except BaseException:
                os.close(fd)
                raise

    def _temp_dir_fd(self, temp_dir: bytes | None) -> int | None:
        if temp_dir is None:
            return None
        comps = split_path(temp_dir, self.module)
        if self.history is not None and self.history.contains(comps):
            return None
        try:
            return open_dir(self._root_fd, comps, self.module, temp_dir)
        except (OSError, PathEscape):
            return None

    def open_inplace(self, path: bytes, mode: int, *, sparse: bool = False) -> InplaceFile:
        """``--inplace``: the live regular file at ``path`` opened for rewriting (created if missing).

        When the module keeps history, the current version is copied into
        it before anything is written. ``mode`` is applied at commit unless
        commit passes its own.

        Raises:
            PathEscape: bad path or inside history.
            StorageError: not a regular file (the caller stages instead), or an OS error.
        """
        comps = self._writable(path, False, displaces=True)
        with fs_errors(self.module, path):
            fd = open_dir(self._root_fd, comps[:-1], self.module, path)
            try:
                flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    st = os.stat(comps[-1], dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    new_fd = os.open(comps[-1], flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd)
                    return InplaceFile(self, new_fd, path, mode, sparse=sparse)
                if not stat.S_ISREG(st.st_mode):
                    raise StorageError(f"module {self.module}: {show(path)}: not a regular file")
                with self._entry_lock(fd, comps):
                    if self._keeps_history(comps):
                        when = self._when()
                        kept = self.history.preserve_entry(fd, comps, st, copy=True)
                        if self.catalog is not None:
                            self.catalog.retired(join_path(comps), st, when, kept.path, copy_ino=kept.copy_ino)
                    elif self.backup is not None:
                        self.backup.copy(self._root_fd, fd, comps, st)
                    return InplaceFile(self, os.open(comps[-1], flags, dir_fd=fd), path, mode, sparse=sparse)
            finally:
                os.close(fd)

    def record_inplace(self, path: bytes, st: os.stat_result, digest: str | None,
                       xfer_sum: tuple[str, str] | None) -> None:
        """Catalog op of an ``--inplace`` rewrite just finished (the live inode is the new version)."""
        comps = split_path(path, self.module)
        if self.catalog is not None and self._keeps_history(comps):
            kind, value = xfer_sum if xfer_sum else (None, None)
            self.catalog.made_live(join_path(comps), st, self._when(), xxh128=digest, xfer_sum=value,
                                   xfer_sum_kind=kind)

    def delete(
        self, path: bytes, *, allow_history: bool = False, backup: bool = True, only_empty: bool = False
    ) -> DeleteCounts:
        """Remove the entry at ``path``: into history (one move) or for real.

        ``backup=False``: rsync's own leftovers (a used partial file), never
        kept under a ``--backup`` name (history still keeps them).
        ``only_empty`` (a module without history): a directory is only
        rmdir'ed, one that holds something stays and counts nothing, as
        rsync's delete_item() on a directory its delete_dir_contents() emptied.

        A directory goes as a whole, whatever it holds (rsync's recursive
        delete); a missing entry (or parent) counts nothing.

        Returns:
            What was removed per kind; a directory counts itself and all inside.
        """
        comps = self._writable(path, allow_history, displaces=True)
        with fs_errors(self.module, path):
            try:
                fd = open_dir(self._root_fd, comps[:-1], self.module, path)
            except (FileNotFoundError, NotADirectoryError):
                return DeleteCounts()
            try:
                with self._entry_lock(fd, comps):
                    try:
                        st = _lstat(fd, comps[-1])
                    except FileNotFoundError:
                        return DeleteCounts()
                    if not self._keeps_history(comps):
                        if only_empty and stat.S_ISDIR(st.st_mode):
                            return _rmdir_if_empty(fd, comps[-1])
                        return self._remove(fd, comps, st) if backup else remove_tree(fd, comps[-1], st)
                    if self._stale_temp(comps, st):  # a killed session's temp file: not a version
                        return remove_tree(fd, comps[-1], st)
                    when = self._when()
                    kept, copy_ino = self.history.move_entry(fd, comps, st)
                    if self.catalog is not None:
                        self.catalog.retired(join_path(comps), st, when, kept, copy_ino=copy_ino)
                        self._touched.add(comps[:-1])
            finally:
                os.close(fd)
            if not stat.S_ISDIR(st.st_mode):
                counts = DeleteCounts()
                counts.add(st.st_mode)
                return counts
            kept_comps = split_path(kept, self.module)
            with self._parent(kept_comps, kept) as (fd, name):
                return count_tree(fd, name, _lstat(fd, name))

    # -- for storage.xattrs ------------------------------------------------

    @property
    def xattrs(self) -> XattrAccess:
        """The entries' extended attributes (storage/xattrs.py)."""
        return XattrAccess(self)

    @property
    def acls(self) -> AclAccess:
        """The entries' POSIX ACLs (storage/acls.py)."""
        return AclAccess(self)

    def check_writable(self, path: bytes) -> None:
        """Raise PathEscape unless a client may change the attributes of ``path`` (not in history)."""
        self._guard(split_path(path, self.module), path, False)

    def keeps_history(self, path: bytes) -> bool:
        """True when replacing ``path`` keeps its old version in history."""
        return self._keeps_history(split_path(path, self.module))

    def parent_of(self, comps: tuple[bytes, ...], path: bytes):
        """Context manager: ``(fd of the parent dir, final name)`` of ``comps``; raises OSError/PathEscape."""
        return self._parent(comps, path)

    # -- shared with StagedFile -------------------------------------------

    def install(self, parent_fd: int, temp: bytes, comps: tuple[bytes, ...], path: bytes, *,
                digest: str | None = None, xfer_sum: tuple[str, str] | None = None,
                new: os.stat_result | None = None,
                parent_id: tuple[int, int] | None = None) -> os.stat_result | None:
        """Rename ``temp`` over entry ``comps[-1]`` of ``parent_fd``, history first.

        For storage's own use (StagedFile, symlink); raises OSError. Returns
        the lstat of the entry it replaced (None: there was none), as seen
        under the entry lock. With a
        catalog, the retired and the new version are recorded once the
        rename is done (still under the entry lock): ``digest`` is the
        xxh128 of the new entry's bytes (read from ``temp`` when not given),
        ``xfer_sum`` ``(checksum name, hex)`` the whole-file checksum the
        transfer verified, ``new`` the temp entry's final stat if the caller
        has it (else it is read here). ``parent_id`` ``(st_dev, st_ino)`` of
        ``parent_fd``: the parent must still be at its path (see _entry_lock;
        PathEscape if not).
        """
        name = comps[-1]
        keeps = self.catalog is not None and self._keeps_history(comps)
        with self._entry_lock(parent_fd, comps, path, parent_id):
            try:
                st = _lstat(parent_fd, name)
            except FileNotFoundError:
                st = None
            when = self._when() if keeps else 0
            kept = self._displace(parent_fd, comps, st) if st is not None else None
            if not keeps:
                os.rename(temp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                return st
            if new is None:
                new = _lstat(parent_fd, temp)
            if digest is None:
                digest = hash_entry_at(parent_fd, temp, new)
            os.rename(temp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            kind, value = xfer_sum if xfer_sum else (None, None)
            self.catalog.installed(join_path(comps), st, kept.path if kept else None, new, when, xxh128=digest,
                                   xfer_sum=value, xfer_sum_kind=kind, copy_ino=kept.copy_ino if kept else None)
            self._touched.add(comps[:-1])
            return st

    def _record_new(self, parent_fd: int, name: bytes, comps: tuple[bytes, ...]) -> None:
        """Catalog op of a directory just made."""
        if self.catalog is not None and self._keeps_history(comps):
            self.catalog.made_live(join_path(comps), _lstat(parent_fd, name), self._when())
            self._touched.update((comps, comps[:-1]))

    def _record_touched_dirs(self) -> None:
        """Record the final mode and mtime of every directory this session changed.

        The kernel moves a directory's mtime when entries come and go, and
        rsync leaves a same-second one alone, so set_attrs alone misses it.
        """
        when = self._when() if self._touched else 0
        for path in sorted({join_path(comps) for comps in self._touched}):
            try:
                st = self.lstat(path) if path else None
            except StorageError:
                continue
            if st is not None and stat.S_ISDIR(st.st_mode):
                self.catalog.attrs(path, st.st_mode, st.st_mtime_ns, when)
        self._touched.clear()

    def _when(self) -> int:
        """Now (ns), by the history's clock, so catalog times and day folders agree."""
        return self.history.now_ns()

    def _entry_lock(self, parent_fd: int, comps: tuple[bytes, ...], path: bytes = b"",
                    parent_id: tuple[int, int] | None = None) -> _EntryLock:
        """Hold an exclusive ``flock`` on the parent directory while an entry is replaced.

        History keeps a version by linking the live entry aside, then the new
        one is renamed over it; two sessions interleaving those steps on one
        name (both link the same old entry, both rename) would leave one
        session's version with no name. Under this lock the pair is atomic
        for every backupd session (separate processes or threads: each takes
        it through its own open file description); a SIGKILL releases it with
        the process, and the pair itself stays crash safe (old entry linked
        before the rename). Only taken when history is kept. A directory that
        cannot be opened for reading or a file system without ``flock``
        (ENOLCK, EOPNOTSUPP) goes unlocked, as before.

        ``parent_id`` ``(st_dev, st_ino)``: the parent is opened again through
        ``path`` from the module root, and must still be the directory
        ``parent_fd`` is, history or not: one moved or replaced meanwhile
        (into history, say) never gets the entry (PathEscape). That same fd
        takes the lock. Use as ``with tree._entry_lock(...):``.
        """
        keeps = self._keeps_history(comps)
        if parent_id is not None:
            fd = self._reopen_parent(comps, path, parent_id, readable=keeps)
            if not keeps:
                os.close(fd)
                return _EntryLock(None)
        elif not keeps:
            return _EntryLock(None)
        else:
            try:
                fd = os.open(b".", DIR_READ_FLAGS, dir_fd=parent_fd)
            except OSError as exc:
                if exc.errno not in _NO_LOCK:
                    raise
                return _EntryLock(None)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in _NO_LOCK:
                os.close(fd)
                raise
        return _EntryLock(fd)

    def _reopen_parent(self, comps: tuple[bytes, ...], path: bytes, parent_id: tuple[int, int], *,
                       readable: bool) -> int:
        """The parent dir of ``comps`` opened from the root; PathEscape unless it is ``parent_id``.

        ``readable`` asks for a lockable fd; a directory the session may
        not read gives an ``O_PATH`` one (flock then fails with EBADF).
        """
        try:
            fd = open_dir(self._root_fd, comps[:-1], self.module, path, readable=readable)
        except PermissionError:
            if not readable:
                raise
            fd = open_dir(self._root_fd, comps[:-1], self.module, path)
        try:
            now = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if (now.st_dev, now.st_ino) != parent_id:
            os.close(fd)
            raise escape_error(self.module, path, "parent directory replaced during the transfer")
        return fd

    def _displace(self, parent_fd: int, comps: tuple[bytes, ...], st: os.stat_result) -> Kept | None:
        """Make way for a rename over ``comps[-1]`` without losing the old entry.

        File or symlink: linked (or copied) into history and left in place
        for the atomic rename. Directory, device, special: moved to history.
        Without history only a directory needs removing.

        Returns:
            Where the old entry went in history, and its copy's inode when
            history holds a copy (None without history).
        """
        if not self._keeps_history(comps):
            if stat.S_ISDIR(st.st_mode):
                self._remove(parent_fd, comps, st)
            elif self.backup is not None:  # rsync.c finish_transfer / atomic_create: make_backup(fname, False)
                self.backup.keep(self._root_fd, parent_fd, comps, st, prefer_rename=False)
            return None
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            return self.history.preserve_entry(parent_fd, comps, st)
        return self.history.move_entry(parent_fd, comps, st)

    def _remove(self, parent_fd: int, comps: tuple[bytes, ...], st: os.stat_result) -> DeleteCounts:
        """Delete for real, each non-directory kept under its backup name first with ``--backup``."""
        if self.backup is None:
            return remove_tree(parent_fd, comps[-1], st)
        return self.backup.remove(self._root_fd, parent_fd, comps, st)

    def _keeps_history(self, comps: tuple[bytes, ...]) -> bool:
        return self.history is not None and not self.history.contains(comps)

    def _stale_temp(self, comps: tuple[bytes, ...], st: os.stat_result) -> bool:
        """A killed session's ``.NAME.XXXXXX`` temp file: not a version, deleted without history.

        rsyncd deletes it as any extraneous file; it was never installed, so
        the catalog (where there is one) does not know it as live.
        """
        if not is_stale_temp(comps[-1], st):
            return False
        return self.catalog is None or not self.catalog.knows_live(join_path(comps))

    # -- helpers ---------------------------------------------------------

    def _entry(self, path: bytes) -> tuple[bytes, ...]:
        """Components of ``path``, which must not be the root."""
        comps = split_path(path, self.module)
        if not comps:
            raise escape_error(self.module, path, "the module root itself")
        return comps

    def _guard(self, comps: tuple[bytes, ...], path: bytes, allow_history: bool) -> None:
        """Refuse a write into history; every write passes here first (the catalog's writer mark)."""
        if not allow_history and self.history is not None and self.history.contains(comps):
            raise escape_error(self.module, path, "inside the history dir")
        if self.catalog is not None:
            self.catalog.begin()

    def _writable(self, path: bytes, allow_history: bool, *, displaces: bool = False) -> tuple[bytes, ...]:
        """Components of a path a client may write; ``displaces``: may replace a dir."""
        comps = self._entry(path)
        self._guard(comps, path, allow_history)
        if displaces and self.history is not None and self.history.is_ancestor(comps):
            raise escape_error(self.module, path, "holds the history dir")
        return comps

    @contextmanager
    def _parent(self, comps: tuple[bytes, ...], path: bytes) -> Iterator[tuple[int, bytes]]:
        """Yield ``(fd of the parent dir, final name)``; raises OSError/PathEscape."""
        fd = open_dir(self._root_fd, comps[:-1], self.module, path)
        try:
            yield fd, comps[-1]
        finally:
            os.close(fd)

    @staticmethod
    def _temp_symlink(fd: int, name: bytes, target: bytes) -> bytes:
        for _ in range(TMP_TRIES):
            tmp = temp_name(name)
            try:
                os.symlink(target, tmp, dir_fd=fd)
                return tmp
            except FileExistsError:
                continue
        raise FileExistsError(f"no free temp name after {TMP_TRIES} tries")


def _lstat(dir_fd: int, name: bytes) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def _scan_fd(dir_fd: int) -> dict[bytes, os.stat_result]:
    """name -> lstat of a readable directory fd; entries gone before their stat are left out.

    Other writers (the receiver's temp files) come and go while we read the
    directory: an entry listed but already renamed away is simply not there.
    """
    out = {}
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsencode, without its call
    with os.scandir(dir_fd) as it:
        for entry in it:
            try:
                out[entry.name.encode(encoding, errors)] = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
    return out


def _digest(data: bytes) -> str:
    return xxhash.xxh128(data).hexdigest()


def _unlink_quietly(dir_fd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _set_fd_attrs(fd: int, mode: int | None, mtime_ns: int | None, uid: int | None, gid: int | None) -> None:
    """set_attrs on an open directory (the module root)."""
    st = os.fstat(fd)
    change_owner(fd, uid, gid, current=st)
    if mode is not None:
        os.chmod(fd, stat.S_IMODE(mode))
    if mtime_ns is not None:
        os.utime(fd, ns=(st.st_atime_ns, mtime_ns))


def _rmdir_if_empty(parent_fd: int, name: bytes) -> DeleteCounts:
    """rmdir ``name``: one directory counted, or nothing when it is not empty (it stays)."""
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        return DeleteCounts()
    return DeleteCounts(dirs=1)
