"""rsync's ``--backup`` / ``--suffix`` / ``--backup-dir`` on a module without history.

With history off, a client's ``--backup`` behaves as stock rsyncd's: what a
push replaces or deletes is kept under its backup name, ``NAME~`` (or
``NAME`` + ``--suffix``) beside it, or the same path below ``--backup-dir``
(relative to the transfer's destination dir, as the receiver's cwd is there).
A module with history folds ``--backup`` into history instead (tree.py).

Paths are module components (``tuple[bytes, ...]``), reached through dir fds
that never follow a symlink, like everything in ``storage/``.

Source: rsync backup.c make_backup() / get_backup_name() / copy_valid_path(),
delete.c delete_item() / is_backup_file(), protocols 30-32.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from backupd.storage.fsops import (
    DIR_READ_FLAGS,
    DeleteCounts,
    change_owner,
    chmod_at,
    copy_entry_at,
    listdir_fd,
    open_dir,
    open_step,
    remove_tree,
)

MAX_DEPTH = 512  # directories nested deeper than this are refused, not walked


@dataclass(frozen=True)
class BackupPolicy:
    """Where a replaced or deleted entry is kept (rsync ``make_backups``).

    Attributes:
        suffix: appended to the kept name (``~`` by default, ``""`` with a
            backup dir unless ``--suffix`` says otherwise).
        backup_dir: module components of ``--backup-dir``, or None: kept
            beside the original.
        base: module components of the destination dir (rsync's cwd):
            names below it are kept at the same relative path in the backup dir.
        module: the module's name, for messages.
        report: called with the components of each entry ``keep`` keeps
            (rsync's ``backed up X to Y`` at -vv), or None; the generator
            reports ``copy`` (``--inplace``) itself, where rsync's does.
    """

    suffix: bytes
    backup_dir: tuple[bytes, ...] | None
    base: tuple[bytes, ...] = ()
    module: str = ""
    report: Callable[[tuple[bytes, ...]], None] | None = field(default=None, compare=False)

    def is_backup_name(self, name: bytes) -> bool:
        """True for a name that is itself a backup, never backed up again (delete.c is_backup_file)."""
        return self.backup_dir is None and len(name) > len(self.suffix) and name.endswith(self.suffix)

    def keep(self, root_fd: int, parent_fd: int, comps: tuple[bytes, ...], st: os.stat_result, *,
             prefer_rename: bool) -> bool:
        """Keep entry ``comps`` (in ``parent_fd``, lstat ``st``) under its backup name.

        Hard-linked there (the entry stays for the atomic rename over it), or
        renamed when ``prefer_rename`` (a delete) or the link fails. An entry
        already at the backup name is replaced. Source: rsync backup.c
        make_backup_inner() and link_or_rename().

        Returns:
            True when the entry was moved away, False when it is still in place.

        Raises:
            OSError: the backup name cannot be made (the caller reports it).
        """
        dst_fd, dst_name = self._backup_parent(root_fd, comps)
        try:
            try:
                moved = self._link_or_rename(parent_fd, comps[-1], dst_fd, dst_name, prefer_rename)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.EISDIR, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
                old = os.stat(dst_name, dir_fd=dst_fd, follow_symlinks=False)
                remove_tree(dst_fd, dst_name, old)  # delete_item(buf, DEL_FOR_BACKUP | DEL_RECURSE)
                moved = self._link_or_rename(parent_fd, comps[-1], dst_fd, dst_name, prefer_rename)
        finally:
            os.close(dst_fd)
        if self.report is not None:
            self.report(comps)
        return moved

    def copy(self, root_fd: int, parent_fd: int, comps: tuple[bytes, ...], st: os.stat_result) -> None:
        """Copy regular file ``comps`` to its backup name, replacing one there (``--inplace``).

        Content, mode, mtime and (as root) owner of the original. Source:
        rsync generator.c recv_generator, ``inplace && make_backups``: the
        basis is copied to ``get_backup_name()`` before it is rewritten.

        Raises:
            OSError: the copy cannot be made.
        """
        dst_fd, dst_name = self._backup_parent(root_fd, comps)
        try:
            try:
                old = os.stat(dst_name, dir_fd=dst_fd, follow_symlinks=False)
            except FileNotFoundError:
                old = None
            if old is not None:
                remove_tree(dst_fd, dst_name, old)
            copy_entry_at(parent_fd, comps[-1], st, dst_fd, dst_name)
        finally:
            os.close(dst_fd)

    @staticmethod
    def _link_or_rename(src_fd: int, name: bytes, dst_fd: int, dst_name: bytes, prefer_rename: bool) -> bool:
        if not prefer_rename:
            try:
                os.link(name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
                return False
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.EISDIR):
                    raise
        os.rename(name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return True

    def remove(self, root_fd: int, parent_fd: int, comps: tuple[bytes, ...], st: os.stat_result,
               depth: int = 0) -> DeleteCounts:
        """Delete entry ``comps``, backing up each non-directory first (delete.c delete_item).

        A directory is emptied entry by entry; one that still holds something
        afterwards (a ``NAME~`` backup made inside it) stays, as rsync's rmdir
        fails with ENOTEMPTY. Returns what was removed.

        Raises:
            OSError: an entry could not be kept or removed.
        """
        counts = DeleteCounts()
        name = comps[-1]
        if not stat.S_ISDIR(st.st_mode):
            if self.is_backup_name(name) or not self.keep(root_fd, parent_fd, comps, st, prefer_rename=True):
                os.unlink(name, dir_fd=parent_fd)
            counts.add(st.st_mode)
            return counts
        if depth > MAX_DEPTH:
            raise OSError(errno.ELOOP, f"directory nests deeper than {MAX_DEPTH} levels")
        fd = os.open(name, DIR_READ_FLAGS, dir_fd=parent_fd)
        try:
            for child in sorted(listdir_fd(fd), reverse=True):
                child_st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                counts += self.remove(root_fd, fd, comps + (child,), child_st, depth + 1)
        finally:
            os.close(fd)
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return counts
        counts.dirs += 1
        return counts

    def _backup_parent(self, root_fd: int, comps: tuple[bytes, ...]) -> tuple[int, bytes]:
        """(fd of the backup name's directory, backup name); missing backup dirs are made."""
        name = comps[-1] + self.suffix
        if self.backup_dir is None:
            return open_dir(root_fd, comps[:-1], self.module, b"/".join(comps)), name
        rel = comps[len(self.base):] if comps[: len(self.base)] == self.base else comps
        fd = self._make_root(root_fd)
        try:
            for i, part in enumerate(rel[:-1]):
                fd = self._step(fd, part, root_fd, self.base + rel[: i + 1])
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    def _make_root(self, root_fd: int) -> int:
        """The backup dir itself, made with default modes where missing (util1.c make_path)."""
        fd = os.dup(root_fd)
        try:
            for part in self.backup_dir or ():
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                next_fd = open_step(fd, part, self.module, b"/".join(self.backup_dir or ()))
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _step(self, fd: int, part: bytes, root_fd: int, source: tuple[bytes, ...]) -> int:
        """Enter ``part`` of the backup path; made like the dir it mirrors (backup.c copy_valid_path).

        Something other than a directory in the way is removed first. Closes ``fd``.
        """
        try:
            st = os.stat(part, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(part, dir_fd=fd)
            st = None
        if st is None:
            os.mkdir(part, 0o777, dir_fd=fd)
            self._copy_dir_attrs(root_fd, source, fd, part)
        next_fd = open_step(fd, part, self.module, b"/".join(source))
        os.close(fd)
        return next_fd

    def _copy_dir_attrs(self, root_fd: int, source: tuple[bytes, ...], fd: int, part: bytes) -> None:
        """Mode, owner and mtime of the source dir onto a new backup dir (copy_valid_path set_file_attrs)."""
        try:
            src_fd = open_dir(root_fd, source[:-1], self.module, b"/".join(source))
            try:
                src = os.stat(source[-1], dir_fd=src_fd, follow_symlinks=False)
            finally:
                os.close(src_fd)
        except OSError:
            return  # rsync: "backup stat X failed", the dir keeps its default attributes
        if not stat.S_ISDIR(src.st_mode):
            return
        change_owner(part, src.st_uid, src.st_gid, dir_fd=fd)
        chmod_at(fd, part, src.st_mode)
        os.utime(part, ns=(src.st_atime_ns, src.st_mtime_ns), dir_fd=fd, follow_symlinks=False)
