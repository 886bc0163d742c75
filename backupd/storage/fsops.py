"""Dir-fd confined filesystem primitives shared by the module tree and history.

Every path a client sends is split by :func:`split_path` and reached by
:func:`open_dir`, which opens one component at a time relative to the module's
root fd with ``O_NOFOLLOW | O_DIRECTORY`` (``openat``-style). A symlink, a
``..`` or an absolute name can therefore never lead outside the module, even
when a directory is swapped for a symlink between two calls. Final components
are only ever used through ``*at`` calls that do not follow symlinks.

Errors: ``PathEscape`` for a path that tries to leave the module; every other
``OSError`` is turned into ``StorageError`` by :func:`fs_errors`, with module,
path and OS reason in the message and ``errno``, ``module`` and ``path``
attributes for callers that branch on them (the roles turn a ``StorageError``
about one file into a ``FileError``).
"""

from __future__ import annotations

import errno
import os
import stat
import string
from collections.abc import Iterator
from dataclasses import dataclass

from backupd.errors import PathEscape, StorageError

NAME_MAX = 255  # bytes in one path component (Linux)
O_PATH = getattr(os, "O_PATH", os.O_RDONLY)
DIR_WALK_FLAGS = O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_READ_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TMP_SUFFIX_CHARS = (string.ascii_letters + string.digits).encode()
# random byte -> suffix char in one translate() (8 of 62 chars a little likelier; O_EXCL makes names safe anyway)
_TMP_SUFFIX_MAP = bytes(TMP_SUFFIX_CHARS[i % len(TMP_SUFFIX_CHARS)] for i in range(256))
TMP_MAX_NAME = NAME_MAX - 1 - len(b".XXXXXX") - 1  # 246: rsync get_tmpname()
TMP_TRIES = 100

ENTER, LEAF, LEAVE = "enter", "leaf", "leave"


def show(path: bytes) -> str:
    """Printable form of a wire path for messages (invalid UTF-8 escaped)."""
    return path.decode("utf-8", "backslashreplace")


def storage_error(module: str, path: bytes, exc: OSError) -> StorageError:
    """``StorageError`` ``module M: PATH: REASON`` carrying errno/module/path."""
    reason = exc.strerror or str(exc)
    err = StorageError(f"module {module}: {show(path)}: {reason}")
    err.errno = exc.errno  # type: ignore[attr-defined]
    err.module = module  # type: ignore[attr-defined]
    err.path = path  # type: ignore[attr-defined]
    return err


def escape_error(module: str, path: bytes, reason: str) -> PathEscape:
    """``PathEscape`` naming module, path and why it was refused."""
    err = PathEscape(f"module {module}: {show(path)}: refused, {reason}")
    err.errno = None  # type: ignore[attr-defined]
    err.module = module  # type: ignore[attr-defined]
    err.path = path  # type: ignore[attr-defined]
    return err


def fs_errors(module: str, path: bytes) -> _FsErrors:
    """Context manager: turn ``OSError`` (and the ``ValueError`` of a NUL byte) into StorageError."""
    return _FsErrors(module, path)


class _FsErrors:
    """fs_errors' context manager: a class, as it wraps several calls per file (a generator's costs ~1 µs)."""

    __slots__ = ("module", "path")

    def __init__(self, module: str, path: bytes) -> None:
        self.module, self.path = module, path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            return False
        if issubclass(exc_type, OSError):
            raise storage_error(self.module, self.path, exc) from exc
        if issubclass(exc_type, ValueError):  # e.g. "embedded null byte" in a symlink target
            raise storage_error(self.module, self.path, OSError(errno.EINVAL, str(exc))) from exc
        return False


def split_path(path: bytes, module: str = "") -> tuple[bytes, ...]:
    """Validate a client path and split it into components.

    ``b""`` and ``b"."`` are the module root (``()``). Components are separated
    by one ``/``; rsync sends clean names, so anything else is refused.

    Raises:
        PathEscape: absolute path, ``..``, ``.`` or empty component, NUL byte.
    """
    path = bytes(path)
    if path in (b"", b"."):
        return ()
    if b"\0" in path:
        raise escape_error(module, path, "NUL byte in path")
    if path.startswith(b"/"):
        raise escape_error(module, path, "absolute path")
    parts = tuple(path.split(b"/"))
    for part in parts:
        if part == b"..":
            raise escape_error(module, path, "'..' component")
        if part in (b"", b"."):
            raise escape_error(module, path, "empty or '.' component")
    return parts


def join_path(comps: tuple[bytes, ...] | list[bytes]) -> bytes:
    """Inverse of :func:`split_path` (``()`` is ``b"."``)."""
    return b"/".join(comps) or b"."


def is_symlink_at(dir_fd: int, name: bytes) -> bool:
    """True when ``name`` in ``dir_fd`` is a symlink (never follows it)."""
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_step(dir_fd: int, name: bytes, module: str, path: bytes, flags: int = DIR_WALK_FLAGS) -> int:
    """Open subdirectory ``name`` of ``dir_fd`` (O_PATH, O_NOFOLLOW; ``flags`` DIR_READ_FLAGS: readable).

    Raises:
        PathEscape: ``name`` is a symlink.
        OSError: missing (ENOENT), not a directory (ENOTDIR), ...
    """
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and is_symlink_at(dir_fd, name):
            raise escape_error(module, path, f"{show(name)} is a symlink") from None
        raise


def open_dir(root_fd: int, comps: tuple[bytes, ...], module: str, path: bytes, *, readable: bool = False) -> int:
    """Open directory ``comps`` below ``root_fd`` one component at a time.

    Returns a new fd (an ``O_PATH`` fd where available: usable as ``dir_fd``,
    not for reading) that the caller closes; ``()`` gives a dup of the root.
    ``readable``: the directory itself is opened O_RDONLY (listable,
    lockable; needs read permission on it), the ones on the way O_PATH.

    Raises:
        PathEscape: a component is a symlink.
        OSError: a component is missing or not a directory.
    """
    last = DIR_READ_FLAGS if readable else DIR_WALK_FLAGS
    if not comps:
        return os.open(".", last, dir_fd=root_fd) if readable else os.dup(root_fd)
    # the root itself is never closed here: no dup to start
    fd = open_step(root_fd, comps[0], module, path, last if len(comps) == 1 else DIR_WALK_FLAGS)
    try:
        for n, name in enumerate(comps[1:], 2):
            next_fd = open_step(fd, name, module, path, last if n == len(comps) else DIR_WALK_FLAGS)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def listdir_fd(dir_fd: int) -> list[bytes]:
    """Names in the directory open as ``dir_fd`` (a readable fd), as bytes."""
    return [os.fsencode(name) for name in os.listdir(dir_fd)]


def temp_name(basename: bytes) -> bytes:
    """rsync's temp name for ``basename``: ``.`` + name + ``.XXXXXX``.

    One leading dot is not doubled; the name is cut to 246 bytes (dangling
    high-bit bytes dropped when the cut hits one), one trailing dot is dropped.
    Source: rsync receiver.c get_tmpname(), rsync-protocol-b.md §7.2.
    """
    name = basename[1:] if basename.startswith(b".") else basename
    if len(name) > TMP_MAX_NAME:
        cut_byte = name[TMP_MAX_NAME]
        name = name[:TMP_MAX_NAME]
        if cut_byte & 0x80:
            name = name.rstrip(bytes(range(0x80, 0x100)))
    prefixed = b"." + name
    if prefixed.endswith(b"."):
        prefixed = prefixed[:-1]
    rand = os.urandom(6).translate(_TMP_SUFFIX_MAP)
    return prefixed + b"." + rand


@dataclass
class DeleteCounts:
    """What a delete removed, per kind, for rsync's NDX_DEL_STATS.

    Source: rsync main.c write_del_stats(), rsync-protocol-b.md §8.6.
    """

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    devices: int = 0
    specials: int = 0

    def add(self, mode: int) -> None:
        """Count one removed entry of file type ``mode`` (an ``st_mode``)."""
        if stat.S_ISDIR(mode):
            self.dirs += 1
        elif stat.S_ISLNK(mode):
            self.symlinks += 1
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            self.devices += 1
        elif stat.S_ISREG(mode):
            self.files += 1
        else:
            self.specials += 1

    def __iadd__(self, other: DeleteCounts) -> DeleteCounts:
        self.files += other.files
        self.dirs += other.dirs
        self.symlinks += other.symlinks
        self.devices += other.devices
        self.specials += other.specials
        return self

    @property
    def total(self) -> int:
        """Entries of every kind."""
        return self.files + self.dirs + self.symlinks + self.devices + self.specials


def iter_tree(
    parent_fd: int, name: bytes, st: os.stat_result
) -> Iterator[tuple[str, int, bytes, os.stat_result]]:
    """Walk the entry ``name`` of ``parent_fd`` depth first, never following symlinks.

    Yields ``(event, dir_fd, name, st)``: ``ENTER`` before a directory's
    contents, ``LEAF`` for anything else, ``LEAVE`` after a directory's
    contents. ``dir_fd`` is the open parent of ``name``, valid during the
    yield; the consumer may unlink a leaf or rmdir a directory on ``LEAVE``.
    Iterative (no recursion limit); fds are closed when the walk ends or is
    abandoned.
    """
    if not stat.S_ISDIR(st.st_mode):
        yield LEAF, parent_fd, name, st
        return
    frames: list[tuple[int, bytes, os.stat_result, int, list[bytes]]] = []
    fd = os.open(name, DIR_READ_FLAGS, dir_fd=parent_fd)
    try:
        frames.append((parent_fd, name, st, fd, listdir_fd(fd)))
    except BaseException:
        os.close(fd)
        raise
    try:
        yield ENTER, parent_fd, name, st
        while frames:
            event = _walk_step(frames)
            if event is not None:
                yield event
                if event[0] == LEAVE:
                    os.close(frames.pop()[3])
    finally:
        for frame in frames:
            os.close(frame[3])


def _walk_step(frames: list) -> tuple[str, int, bytes, os.stat_result] | None:
    """Advance :func:`iter_tree` by one entry; None when an entry vanished."""
    pfd, dname, dst, fd, names = frames[-1]
    if not names:
        return LEAVE, pfd, dname, dst
    child = names.pop()
    try:
        cst = os.stat(child, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(cst.st_mode):
        return LEAF, fd, child, cst
    try:
        cfd = os.open(child, DIR_READ_FLAGS, dir_fd=fd)
    except OSError as exc:  # replaced by a non-directory since the stat
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise
        return None if exc.errno == errno.ENOENT else (LEAF, fd, child, _lstat(fd, child))
    try:
        frames.append((fd, child, cst, cfd, listdir_fd(cfd)))
    except BaseException:
        os.close(cfd)
        raise
    return ENTER, fd, child, cst


def _lstat(dir_fd: int, name: bytes) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def remove_tree(parent_fd: int, name: bytes, st: os.stat_result) -> DeleteCounts:
    """Delete entry ``name`` (a whole tree if a directory); count what went.

    Confined like everything here: directories are opened with O_NOFOLLOW
    relative to their parent fd, symlinks are unlinked, never followed.
    """
    counts = DeleteCounts()
    for event, dir_fd, entry, est in iter_tree(parent_fd, name, st):
        if event == LEAF:
            os.unlink(entry, dir_fd=dir_fd)
            counts.add(est.st_mode)
        elif event == LEAVE:
            os.rmdir(entry, dir_fd=dir_fd)
            counts.dirs += 1
    return counts


def count_tree(parent_fd: int, name: bytes, st: os.stat_result) -> DeleteCounts:
    """Count the entries of ``name`` (itself and, for a directory, all inside)."""
    counts = DeleteCounts()
    for event, _dir_fd, _entry, est in iter_tree(parent_fd, name, st):
        if event != ENTER:
            counts.add(est.st_mode)
    return counts


def change_owner(
    target: int | bytes,
    uid: int | None,
    gid: int | None,
    *,
    dir_fd: int | None = None,
    current: os.stat_result | None = None,
) -> bool:
    """lchown/fchown as rsync does: owner only as root, failures ignored if not root.

    ``target`` is an open fd, or a name in ``dir_fd`` (never followed). Values
    equal to ``current`` are skipped so set-id bits are not cleared for nothing.

    Returns:
        True when an owner or group change was made.

    Raises:
        OSError: only when running as root.
    """
    am_root = os.geteuid() == 0
    new_uid = -1 if uid is None or uid < 0 or not am_root else uid
    new_gid = -1 if gid is None or gid < 0 else gid
    if current is not None:
        new_uid = -1 if new_uid == current.st_uid else new_uid
        new_gid = -1 if new_gid == current.st_gid else new_gid
    if new_uid == -1 and new_gid == -1:
        return False
    try:
        if isinstance(target, int):
            os.chown(target, new_uid, new_gid)
        else:
            os.chown(target, new_uid, new_gid, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        if am_root:
            raise
        return False
    return True


def chmod_at(dir_fd: int, name: bytes, mode: int) -> None:
    """chmod entry ``name`` of ``dir_fd`` without ever following a symlink.

    Symlinks are left alone. The entry is pinned with an ``O_PATH|O_NOFOLLOW``
    fd and changed through ``/proc/self/fd`` (the same inode, whatever happens
    to the name meanwhile); without /proc, ``fchmodat(AT_SYMLINK_NOFOLLOW)``.
    """
    fd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return
        try:
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(mode))
            return
        except FileNotFoundError:
            pass
    finally:
        os.close(fd)
    try:
        os.chmod(name, stat.S_IMODE(mode), dir_fd=dir_fd, follow_symlinks=False)
    except (NotImplementedError, ValueError) as exc:
        raise OSError(errno.ENOTSUP, f"no safe chmod: {exc}") from exc


def is_stale_temp(name: bytes, st: os.stat_result) -> bool:
    """Whether ``name`` looks like a temp file a killed session left behind.

    rsync's temp name (``.`` + name + ``.`` + 6 of TMP_SUFFIX_CHARS, see
    :func:`temp_name`), a regular file with one link and :func:`create_temp`'s
    mode 0600 (the final mode is set only just before the rename).
    """
    if not (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) == 0o600):
        return False
    if len(name) < 9 or not name.startswith(b".") or name[-7:-6] != b".":
        return False
    return all(c in TMP_SUFFIX_CHARS for c in name[-6:])


def create_temp(dir_fd: int, basename: bytes) -> tuple[bytes, int]:
    """Create a fresh rsync-style temp file for ``basename`` in ``dir_fd``.

    ``O_EXCL``, mode 0600, never following a symlink. Returns ``(name, fd)``.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(TMP_TRIES):
        name = temp_name(basename)
        try:
            return name, os.open(name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temp name after {TMP_TRIES} tries")


def copy_file_at(src_fd: int, dst_dir_fd: int, dst_name: bytes) -> None:
    """Copy the regular file open as ``src_fd`` to the new name ``dst_name``.

    All or nothing: written under a temp name in the same directory with
    content, mode, extended attributes and ACLs, mtime (ns) and, as root,
    owner; fsynced; then hard-linked
    to ``dst_name``, which fails with ``FileExistsError`` if that is taken
    (where the file system has no hard links: renamed if still free). A
    crash leaves at most a stray ``.name.XXXXXX``, never a torn copy.
    """
    st = os.fstat(src_fd)
    temp, out = create_temp(dst_dir_fd, dst_name)
    try:
        try:
            offset = 0
            while offset < st.st_size:
                sent = os.sendfile(out, src_fd, offset, min(st.st_size - offset, 1 << 30))
                if sent == 0:
                    break
                offset += sent
            change_owner(out, st.st_uid, st.st_gid)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            copy_xattrs(src_fd, out)
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(out)
        finally:
            os.close(out)
        _publish(dst_dir_fd, temp, dst_name)
    finally:
        try:
            os.unlink(temp, dir_fd=dst_dir_fd)
        except FileNotFoundError:
            pass


_XATTR_SKIP = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENODATA, errno.E2BIG, errno.ENOSPC)


def copy_xattrs(src_fd: int, dst_fd: int) -> int:
    """Give ``dst_fd`` every extended attribute of ``src_fd`` (POSIX ACLs included); returns how many.

    A copy kept as a version must carry the metadata of the original: the
    ACLs travel as their ``system.posix_acl_*`` attributes. Names the file
    system or our privileges refuse (``trusted.*`` as non-root, a value too
    big for the target) are skipped; the data copy stands.
    """
    try:
        names = os.listxattr(src_fd)
    except OSError as exc:
        if exc.errno in _XATTR_SKIP:
            return 0
        raise
    done = 0
    for name in names:
        try:
            os.setxattr(dst_fd, name, os.getxattr(src_fd, name))
            done += 1
        except OSError as exc:
            if exc.errno not in _XATTR_SKIP:
                raise
    return done


def _publish(dir_fd: int, temp: bytes, name: bytes) -> None:
    """Give ``temp`` the additional name ``name`` without replacing anything."""
    try:
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        return
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    raise FileExistsError(errno.EEXIST, "File exists")


def copy_entry_at(
    src_dir_fd: int, name: bytes, st: os.stat_result, dst_dir_fd: int, dst_name: bytes
) -> None:
    """Copy one non-directory entry (file, symlink, device, special) exclusively.

    Raises:
        FileExistsError: ``dst_name`` already exists.
        OSError: the copy failed (e.g. EPERM for a device as non-root).
    """
    if stat.S_ISREG(st.st_mode):
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        src = os.open(name, flags, dir_fd=src_dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(src).st_mode):
                raise OSError(errno.EAGAIN, "entry changed type while being copied")
            copy_file_at(src, dst_dir_fd, dst_name)
        finally:
            os.close(src)
        return
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src_dir_fd), dst_name, dir_fd=dst_dir_fd)
    else:
        os.mknod(dst_name, st.st_mode, st.st_rdev, dir_fd=dst_dir_fd)
        chmod_at(dst_dir_fd, dst_name, st.st_mode)
    change_owner(dst_name, st.st_uid, st.st_gid, dir_fd=dst_dir_fd)
    os.utime(dst_name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_dir_fd,
             follow_symlinks=False)


def copy_tree_into(
    parent_fd: int, name: bytes, st: os.stat_result, hfd: int, cand: bytes
) -> None:
    """Copy directory ``name`` of ``parent_fd`` into the existing empty directory ``cand`` of ``hfd``.

    Contents, modes and mtimes; symlinks copied as links, never followed.
    Used when a rename into history crosses file systems (EXDEV) and by restore.
    """
    events = iter_tree(parent_fd, name, st)
    next(events)  # ENTER of ``name`` itself: ``cand`` stands for it
    dst = [os.open(cand, DIR_READ_FLAGS, dir_fd=hfd)]
    try:
        for event, dir_fd, entry, est in events:
            if event == ENTER:
                os.mkdir(entry, 0o700, dir_fd=dst[-1])
                dst.append(os.open(entry, DIR_READ_FLAGS, dir_fd=dst[-1]))
            elif event == LEAF:
                copy_entry_at(dir_fd, entry, est, dst[-1], entry)
            elif event == LEAVE:
                done = dst.pop()
                try:
                    os.fchmod(done, stat.S_IMODE(est.st_mode))
                    os.utime(done, ns=(est.st_atime_ns, est.st_mtime_ns))
                finally:
                    os.close(done)
    finally:
        events.close()
        for fd in dst:
            os.close(fd)
