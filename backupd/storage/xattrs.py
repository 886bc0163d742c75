"""Extended attributes of module entries: read, set on a staged file, update in place.

Every call reaches the entry through its parent directory's fd, confined as
the rest of ``storage/``: a regular file or a directory is read and written
through an ``fd`` of its own opened ``O_NOFOLLOW``; other entries (symlinks,
devices) through ``/proc/self/fd/<parent>/<name>`` without following the
final component (rsync's ``l*xattr`` calls, with the parent held).

An attribute-only change of a regular file in a module with history is not
made on the live inode: the file is copied (a reflink where the file system
has them) into a staged file, the attributes are set there and the copy is
renamed over the live one, so the old inode, with its old attributes, is the
version history keeps (design.md: a version in history is immutable).

Source: rsync xattrs.c get_xattr_names(), get_xattr_data(), rsync_xal_set();
lib/sysxattrs.c (Linux).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from backupd.errors import StorageError
from backupd.storage.fsops import fs_errors, show, split_path

if TYPE_CHECKING:
    from backupd.storage.staging import StagedFile
    from backupd.storage.tree import ModuleTree

NameFilter = Callable[[bytes], bool]
_NOT_SUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
_FICLONE = 0x40049409  # linux/fs.h FICLONE = _IOW(0x94, 9, int)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def read_xattrs(target: int | bytes, keep: NameFilter) -> dict[bytes, bytes]:
    """Name -> value of the attributes ``keep`` accepts; ``target`` an fd or a path (not followed).

    An fs without xattrs gives ``{}``; a name that vanishes meanwhile is left out.

    Raises:
        OSError: listing or reading failed otherwise.
    """
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _NOT_SUPPORTED:
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for text in names:
        name = os.fsencode(text)
        if not keep(name):
            continue
        try:
            out[name] = os.getxattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return out


def apply_xattrs(target: int | bytes, wanted: dict[bytes, bytes], removable: NameFilter) -> list[str]:
    """Make ``target``'s attributes ``wanted``: set each, remove the ``removable`` others.

    Values already equal are not written again. Returns one message per
    failed name (rsync goes on after a failed ``setxattr``, xattrs.c rsync_xal_set).
    """
    follow = isinstance(target, int)
    try:
        current = {os.fsencode(n) for n in os.listxattr(target, follow_symlinks=follow)}
    except OSError as exc:
        if exc.errno in _NOT_SUPPORTED and not wanted:
            return []
        return [f"listxattr failed: {exc.strerror} ({exc.errno})"]
    failed = []
    for name, value in wanted.items():
        try:
            if name in current and os.getxattr(target, name, follow_symlinks=follow) == value:
                continue
            os.setxattr(target, name, value, follow_symlinks=follow)
        except OSError as exc:
            failed.append(f'setxattr("{os.fsdecode(name)}") failed: {exc.strerror} ({exc.errno})')
    for name in sorted(current - wanted.keys()):
        if not removable(name):
            continue
        try:
            os.removexattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                failed.append(f'removexattr("{os.fsdecode(name)}") failed: {exc.strerror} ({exc.errno})')
    return failed


def apply_xattrs_owned(target: int | bytes, wanted: dict[bytes, bytes], removable: NameFilter) -> list[str]:
    """:func:`apply_xattrs`, adding ``u+w`` for the time of it to a file or directory we own without it.

    As non-root a ``user.*`` change needs write permission; rsync adds it
    temporarily (xattrs.c set_xattr, ``added_write_perm``).
    """
    failed = apply_xattrs(target, wanted, removable)
    if not failed or not isinstance(target, int) or os.geteuid() == 0:
        return failed
    st = os.fstat(target)
    if st.st_mode & stat.S_IWUSR or st.st_uid != os.geteuid():
        return failed
    os.fchmod(target, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    try:
        return apply_xattrs(target, wanted, removable)
    finally:
        os.fchmod(target, stat.S_IMODE(st.st_mode))


def _entry_target(parent_fd: int, name: bytes) -> tuple[int | bytes, int | None]:
    """(what to pass to the *xattr calls, an fd to close or None) for entry ``name``."""
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        fd = os.open(name, _OPEN_FLAGS, dir_fd=parent_fd)
        return fd, fd
    return b"/proc/self/fd/%d/%s" % (parent_fd, name), None


class XattrAccess:
    """The xattr side of one ``ModuleTree`` (roles reach attributes only through this).

    ``keep`` filters decide which names take part (rsync's namespace rules
    live in ``protocol/xattrs.py``); paths are module paths as everywhere.
    """

    def __init__(self, tree: ModuleTree) -> None:
        self.tree = tree

    def get(self, path: bytes, keep: NameFilter) -> dict[bytes, bytes] | None:
        """The entry's attributes ``keep`` accepts, or None when there is no entry.

        Raises:
            StorageError: reading failed (module, path and reason).
        """
        return self._at(path, lambda target: read_xattrs(target, keep))

    def get_value(self, path: bytes, name: bytes) -> bytes | None:
        """One attribute's value, re-read now (xattrs.c send_xattr_request); None if gone."""
        try:
            got = self._at(path, lambda target: read_xattrs(target, lambda n: n == name))
        except StorageError:
            return None
        return None if got is None else got.get(name)

    def set_in_place(self, path: bytes, wanted: dict[bytes, bytes], removable: NameFilter) -> list[str]:
        """Apply ``wanted`` to the live entry itself (directories, symlinks, devices; no history).

        Returns the failures as messages; a missing entry is one failure.
        """
        return self.apply_at(path, lambda target: apply_xattrs_owned(target, wanted, removable))

    def apply_at(self, path: bytes, apply: Callable[[int | bytes], list[str]]) -> list[str]:
        """Run ``apply(target)`` on the live entry (its fd, or a path not followed); failures as messages."""
        self.tree.check_writable(path)
        try:
            done = self._at(path, apply)
        except StorageError as exc:
            return [str(exc)]
        return [f"{show(path)}: entry vanished"] if done is None else done

    def update_file(self, path: bytes, wanted: dict[bytes, bytes], removable: NameFilter) -> list[str]:
        """An xattr-only change of regular file ``path``, the old version kept in history (see :meth:`rewrite`)."""
        return self.rewrite(
            path,
            lambda target: apply_xattrs_owned(target, wanted, removable),
            skip=lambda name: name in wanted or removable(name),
        )

    def rewrite(self, path: bytes, apply: Callable[[int], list[str]], *, skip: NameFilter) -> list[str]:
        """An attribute-only change of regular file ``path`` by ``apply(fd)``, the old version kept in history.

        Without history the live inode is changed in place. With history the
        file is copied (reflink if possible) with its mode, owner, times and
        attributes (but the names ``skip`` says) into a staged file, ``apply``
        runs there and the copy is committed: the old inode moves to history
        unchanged. A file with other hard links, or in a directory we may not
        write, is copied into history instead and changed in place. Returns
        the failures as messages.
        """
        if not self.tree.keeps_history(path):
            return self.apply_at(path, apply)
        try:
            return self._replace(path, apply, skip)
        except StorageError as exc:
            if getattr(exc, "errno", None) not in (errno.EACCES, errno.EPERM, errno.EMLINK):
                raise
        # no new name in a directory we may not write, or other names share the inode (-H):
        # a copy with the old attributes to history, then the change in place
        self._keep_copy(path)
        return self.apply_at(path, apply)

    def _replace(self, path: bytes, apply, skip: NameFilter) -> list[str]:
        """A copy of ``path`` changed by ``apply`` committed over it (the old inode goes to history)."""
        comps = split_path(path, self.tree.module)
        with fs_errors(self.tree.module, path):
            with self.tree.parent_of(comps, path) as (parent_fd, name):
                src = os.open(name, _OPEN_FLAGS, dir_fd=parent_fd)
            try:
                st = os.fstat(src)
                if not stat.S_ISREG(st.st_mode):
                    return [f"{show(path)}: no regular file to update"]
                if st.st_nlink > 1:  # a new inode would split the hard links
                    raise OSError(errno.EMLINK, "other hard links share the inode")
                staged = self.tree.create_staged(path, 0o600)
                try:
                    failed = apply(_copy_into(src, staged, skip))
                    staged.commit(
                        mtime_ns=st.st_mtime_ns, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid
                    )
                except BaseException:
                    staged.abort()
                    raise
            finally:
                os.close(src)
        return failed

    def _keep_copy(self, path: bytes) -> None:
        """Copy the live file, with its attributes, into history (it is then changed in place)."""
        tree = self.tree
        comps = split_path(path, tree.module)
        with fs_errors(tree.module, path):
            with tree.parent_of(comps, path) as (parent_fd, name):
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                kept = tree.history.preserve_at(parent_fd, comps, st, copy=True)
                src = os.open(name, _OPEN_FLAGS, dir_fd=parent_fd)
            try:
                values = read_xattrs(src, lambda n: True)
            finally:
                os.close(src)
            kept_comps = split_path(kept, tree.module)
            with tree.parent_of(kept_comps, kept) as (hist_fd, kept_name):
                fd = os.open(kept_name, _OPEN_FLAGS, dir_fd=hist_fd)
                try:
                    apply_xattrs_owned(fd, values, lambda n: False)
                finally:
                    os.close(fd)

    def at(self, path: bytes, fn):
        """``fn(target)`` on the entry (its fd for a file or directory, else a path); None if missing."""
        return self._at(path, fn)

    def _at(self, path: bytes, fn):
        tree = self.tree
        comps = split_path(path, tree.module)
        with fs_errors(tree.module, path):
            if not comps:
                return fn(tree.root_fd)
            try:
                with tree.parent_of(comps, path) as (parent_fd, name):
                    target, fd = _entry_target(parent_fd, name)
                    try:
                        return fn(target)
                    finally:
                        if fd is not None:
                            os.close(fd)
            except FileNotFoundError:
                return None


def _copy_into(src_fd: int, staged: StagedFile, skip: NameFilter) -> int:
    """Content (reflink, else copy) and the attributes but ``skip`` of ``src_fd`` into ``staged``; its fd."""
    out = staged.fileno()
    try:
        fcntl.ioctl(out, _FICLONE, src_fd)
    except OSError:
        size, offset = os.fstat(src_fd).st_size, 0
        while offset < size:
            sent = os.sendfile(out, src_fd, offset, min(size - offset, 1 << 30))
            if sent == 0:
                break
            offset += sent
    staged.note_written(os.fstat(src_fd).st_size)
    for name, value in read_xattrs(src_fd, lambda n: True).items():
        if skip(name):
            continue
        try:
            os.setxattr(out, name, value)  # what is not ours to change (security.*, ACLs) goes along
        except OSError:
            pass
    return out
