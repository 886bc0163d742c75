"""Staged writes (temp file -> fsync -> rename) and mmap'd basis files.

A ``StagedFile`` is rsync's temp file: ``.NAME.XXXXXX`` in the target's own
directory, created ``O_EXCL`` with mode 0600 relative to the parent's fd.
``commit()`` makes the data durable, sets the attributes on the temp file,
puts the old version into history (hard link, so the target still holds
it) and only then renames the temp file over the target: a SIGKILL at any
moment leaves the target holding the old or the new complete file, and the
old one is never lost.

Source: rsync receiver.c get_tmpname()/open_tmpfile(), rsync.c
finish_transfer(); rsync-protocol-b.md §7.2-7.3.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import xxhash

from backupd.errors import StorageError
from backupd.storage.fsops import (
    change_owner,
    create_temp,
    fs_errors,
    show,
    split_path,
)
from backupd.storage.reflink import CloneRun
from backupd.storage.xattrs import apply_xattrs

if TYPE_CHECKING:
    from types import TracebackType

    from backupd.storage.tree import ModuleTree

WRITE_BUFFER = 256 * 1024  # bytes buffered before a write(2)
SPARSE_BLOCK = 4096  # -S: an aligned block of this many zero bytes becomes a hole


def block_runs(view: memoryview) -> Iterator[tuple[memoryview, bool]]:
    """The whole SPARSE_BLOCK blocks at the start of ``view`` as runs: (piece, all zeros).

    Consecutive zero blocks (and consecutive data blocks) come as one piece,
    found with NumPy; the tail under one block is not included.
    """
    import numpy as np  # loaded by the first session that needs it
    count = len(view) // SPARSE_BLOCK
    if not count:
        return
    words = np.frombuffer(view[: count * SPARSE_BLOCK], dtype=np.uint64).reshape(count, -1)
    zero = ~words.any(axis=1)
    cuts = np.flatnonzero(zero[1:] != zero[:-1]) + 1
    start = 0
    for end in [*cuts.tolist(), count]:
        yield view[start * SPARSE_BLOCK : end * SPARSE_BLOCK], bool(zero[start])
        start = end


class TempWriter:
    """The temp file's fd behind a write buffer: ``io.BufferedWriter``'s calls that StagedFile uses.

    Made on a fresh ``O_EXCL`` file (offset 0), so nothing is asked of the
    kernel at open; ``io.open`` would fstat and lseek the fd and set aside a
    256 KiB buffer for a file that is mostly a few KiB. Writes of
    WRITE_BUFFER bytes or more go straight to the fd. Raises OSError as
    ``os.write``/``os.lseek`` do.
    """

    __slots__ = ("_fd", "_buf", "_pos")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._pos = 0  # the fd's offset (where the buffer goes)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` at the position (buffered below WRITE_BUFFER)."""
        if len(data) >= WRITE_BUFFER:
            self.flush()
            self._write_all(data)
            return
        self._buf += data
        if len(self._buf) >= WRITE_BUFFER:
            self.flush()

    def flush(self) -> None:
        """Write the buffer out."""
        if self._buf:
            buf, self._buf = self._buf, bytearray()
            self._write_all(buf)

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as view:
            view = view.cast("B")
            while view:
                written = os.write(self._fd, view)
                self._pos += written
                view = view[written:]

    def tell(self) -> int:
        """The position: bytes written or seeked over so far, buffer included."""
        return self._pos + len(self._buf)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Flush, then move the position as ``lseek`` does; returns it."""
        self.flush()
        self._pos = os.lseek(self._fd, offset, whence)
        return self._pos

    def fileno(self) -> int:
        """The fd (the buffer is not flushed: call :meth:`flush` first)."""
        return self._fd

    def close(self) -> None:
        """Flush and close the fd (closed even when the flush fails)."""
        try:
            self.flush()
        finally:
            os.close(self._fd)


class StagedFile:
    """New content for one file, invisible until :meth:`commit`.

    Made by ``ModuleTree.create_staged()``; owns an fd of the target's parent
    directory until finished. Every failure is a ``StorageError`` naming
    module and path; a failed ``commit()`` aborts (removes the temp file).
    Use as a context manager: leaving it unfinished, by exception or not,
    aborts.

    Attributes:
        path: the target, relative to the module root.
        temp_name: the temp file's name inside the target's directory.
        mode: permission bits applied at commit unless commit passes its own.
        sparse: ``-S``: runs of zeros are skipped with a seek instead of
            written, so whole blocks of them stay holes (rsync fileio.c
            write_sparse).
        clone_align: the block size matched basis blocks are cloned in
            (``storage.reflink``), 0 when they are copied (no reflinks in
            this module, or ``-S``).
        replaced: after :meth:`commit`, the lstat of the entry the new
            content replaced (None: there was none), read under the entry
            lock just before the rename.
    """

    def __init__(
        self,
        tree: ModuleTree,
        parent_fd: int,
        comps: tuple[bytes, ...],
        path: bytes,
        mode: int,
        *,
        sparse: bool = False,
        temp_fd: int | None = None,
    ) -> None:
        self.path = path
        self.mode = mode
        self.sparse = sparse
        self._tree = tree
        self._comps = comps
        self._parent_fd = parent_fd
        # --temp-dir: the temp file is made there (an fd the staged file owns) and moved beside the target at the end
        self._temp_fd = parent_fd if temp_fd is None else temp_fd
        parent = os.fstat(parent_fd)
        self._parent_id = (parent.st_dev, parent.st_ino)
        self.temp_name, fd = create_temp(self._temp_fd, comps[-1])
        self._file = TempWriter(fd)
        self._done = False
        # the catalog's xxh128 of the stored bytes, hashed as they are written
        self._hash = xxhash.xxh128() if tree.catalog is not None else None
        self._sealed: os.stat_result | None = None
        self.xfer_sum: tuple[str, str] | None = None  # (checksum name, hex) the transfer verified
        self.clone_align = 0 if sparse else tree.clone_align
        self._run: CloneRun | None = None  # matched blocks not yet cloned
        self.replaced: os.stat_result | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (buffered; any size)."""
        self._check_open()
        if self._hash is not None:
            self._hash.update(data)
        with fs_errors(self._tree.module, self.path):
            if self._run is not None:
                self._issue_run()
            if self.sparse:
                self._write_sparse(data)
            else:
                self._file.write(data)

    def write_block(self, basis: Basis, offset: int, data: memoryview) -> None:
        """Append ``data``, the basis's bytes at ``offset``: cloned when aligned, else copied.

        A clone is deferred so that consecutive blocks become one run.

        Raises:
            StorageError: as :meth:`write`.
        """
        align = self.clone_align
        at = self.tell()
        if not align or basis.fd < 0 or (at | offset | len(data)) % align:
            self.write(data)
            return
        if self._hash is not None:
            self._hash.update(data)
        if self._run is not None and self._run.extends(basis, offset, at):
            self._run.length += len(data)
            return
        with fs_errors(self._tree.module, self.path):
            if self._run is not None:
                self._issue_run()
            self._run = CloneRun(basis, basis.fd, offset, at, len(data))

    def _issue_run(self) -> None:
        """Clone the pending run at the file's position (copy it if this file system refuses)."""
        run, self._run = self._run, None
        try:
            self._file.flush()
            if run.issue(self._file.fileno()):
                self._file.seek(run.dst_offset + run.length)
                return
            self.clone_align = 0  # refused here: copy from now on
            for piece in run.chunks():
                self._file.write(piece)
        finally:
            run.close()

    def _write_sparse(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data``, seeking over zeros (the file's length is fixed at seal).

        Whole file-offset-aligned blocks of zeros are found with NumPy; the
        unaligned head and tail of a write (and writes under a block, such as
        the basis blocks of a delta) have their leading and trailing zeros
        seeked over, as rsync's write_sparse does.
        """
        view = memoryview(data).cast("B")
        if len(view) < SPARSE_BLOCK:
            self._write_trimmed(view)
            return
        head = -self._file.tell() % SPARSE_BLOCK
        if head:
            self._write_trimmed(view[:head])
            view = view[head:]
        for piece, zero in block_runs(view):
            if zero:
                self._file.seek(len(piece), os.SEEK_CUR)
            else:
                self._file.write(piece)
        self._write_trimmed(view[len(view) // SPARSE_BLOCK * SPARSE_BLOCK :])

    def _write_trimmed(self, view: memoryview) -> None:
        """Seek over the leading and trailing zeros of ``view``, write what is between."""
        import numpy as np  # loaded by the first session that needs it
        if not view:
            return
        nonzero = np.flatnonzero(np.frombuffer(view, dtype=np.uint8))
        if not len(nonzero):
            self._file.seek(len(view), os.SEEK_CUR)
            return
        first, last = int(nonzero[0]), int(nonzero[-1]) + 1
        if first:
            self._file.seek(first, os.SEEK_CUR)
        self._file.write(view[first:last])
        if last < len(view):
            self._file.seek(len(view) - last, os.SEEK_CUR)

    def fileno(self) -> int:
        """The temp file's fd, its buffer flushed (for a copy made by the kernel)."""
        self._check_open()
        if self._run is not None:
            with fs_errors(self._tree.module, self.path):
                self._issue_run()
        self._file.flush()
        return self._file.fileno()

    def note_written(self, size: int) -> None:
        """The fd was written to ``size`` bytes behind the buffer's back: move the position there."""
        self._file.seek(size)

    def set_xattrs(self, wanted: dict[bytes, bytes], removable) -> list[str]:
        """Give the temp file the attributes ``wanted`` before it is renamed into place.

        ``removable(name)`` says which other names may go. Returns the
        failures as messages (rsync goes on without the attribute).
        """
        return apply_xattrs(self.fileno(), wanted, removable)

    def set_acls(self, access, mode: int) -> list[str]:
        """Give the temp file the received access ACL for its final ``mode`` (before the rename)."""
        from backupd.storage.acls import apply_acls

        return apply_acls(self.fileno(), access, None, mode)

    def tell(self) -> int:
        """Bytes written so far (blocks waiting to be cloned included)."""
        self._check_open()
        return self._file.tell() + (self._run.length if self._run is not None else 0)

    def commit(
        self, *, mtime_ns: int | None, mode: int | None = None, uid: int | None = None, gid: int | None = None
    ) -> None:
        """Make the new content the target's, keeping the old version in history.

        Order: flush; owner (root only, else group if allowed), mode, mtime
        on the temp file; fsync (when the tree asks for it); re-check that the parent directory is still
        the one the temp file is in; old entry to history (file/symlink:
        ``link()``, else copy; directory: moved whole); ``rename()`` over the
        target. ``None`` leaves that attribute as written (mode: the one
        given to ``create_staged``).

        Raises:
            PathEscape: the parent directory was replaced meanwhile.
            StorageError: any OS error; the temp file is removed.
        """
        self._finish(mode=self.mode if mode is None else mode, mtime_ns=mtime_ns, uid=uid, gid=gid)

    def keep_partial(self) -> None:
        """``--partial``: the data so far replaces the target, mtime 0.

        Same history-safe replacement as :meth:`commit`; the mtime 0 keeps the
        partial file from looking up to date. Source: rsync-protocol-b.md §7.2.
        """
        self._finish(mode=self.mode, mtime_ns=0, uid=None, gid=None)

    def keep_partial_in(self, path: bytes) -> None:
        """``--partial-dir``: the data so far becomes module file ``path``, whose dir must exist.

        The temp file moves into that dir and replaces what is there (history
        first); its mode is the one given at creation, its mtime the time it
        was written (rsync cleanup.c / receiver.c: finish_transfer with
        ok_to_set_time 0). The target is untouched.

        Raises:
            StorageError: any OS error; the temp file is removed.
        """
        self._check_open()
        comps = split_path(path, self._tree.module)
        try:
            with fs_errors(self._tree.module, path), self._tree.parent_of(comps, path) as (pfd, _name):
                self._seal(self.mode, None, None, None)
                os.rename(self.temp_name, self.temp_name, src_dir_fd=self._temp_fd, dst_dir_fd=pfd)
                try:
                    self._tree.install(pfd, self.temp_name, comps, path)
                except BaseException:
                    try:
                        os.unlink(self.temp_name, dir_fd=pfd)
                    except OSError:
                        pass
                    raise
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._close_fds()

    def target_stat(self) -> os.stat_result | None:
        """lstat of what the commit will replace (None: nothing there), through the parent fd held.

        What ``ModuleTree.lstat(path)`` gives, without walking the path again.

        Raises:
            StorageError: any OS error but "missing".
        """
        with fs_errors(self._tree.module, self.path):
            try:
                return os.stat(self._comps[-1], dir_fd=self._parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None

    def abort(self) -> None:
        """Drop the temp file; the target is untouched. Idempotent, never raises."""
        if self._done:
            return
        self._done = True
        if self._run is not None:
            self._run.close()
            self._run = None
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self.temp_name, dir_fd=self._temp_fd)
        except OSError:
            pass
        self._close_fds()

    def _close_fds(self) -> None:
        if self._temp_fd != self._parent_fd:
            os.close(self._temp_fd)
            self._temp_fd = self._parent_fd
        os.close(self._parent_fd)

    def _into_parent(self) -> None:
        """Move the temp file from the --temp-dir beside the target (rsync robust_rename's first step)."""
        if self._temp_fd == self._parent_fd:
            return
        os.rename(self.temp_name, self.temp_name, src_dir_fd=self._temp_fd, dst_dir_fd=self._parent_fd)
        os.close(self._temp_fd)
        self._temp_fd = self._parent_fd

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()

    def _check_open(self) -> None:
        if self._done:
            raise StorageError(
                f"module {self._tree.module}: {show(self.path)}: staged file already committed or aborted"
            )

    def _finish(self, *, mode: int, mtime_ns: int | None, uid: int | None, gid: int | None) -> None:
        self._check_open()
        try:
            with fs_errors(self._tree.module, self.path):
                self._seal(mode, mtime_ns, uid, gid)
                self._into_parent()
                digest = self._hash.hexdigest() if self._hash is not None else None
                # the parent must still be at its path: install checks it under the entry lock
                self.replaced = self._tree.install(self._parent_fd, self.temp_name, self._comps, self.path,
                                                   digest=digest, xfer_sum=self.xfer_sum, new=self._sealed,
                                                   parent_id=self._parent_id)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._close_fds()

    def _seal(self, mode: int, mtime_ns: int | None, uid: int | None, gid: int | None) -> None:
        """Flush, set attributes on the temp file, fsync, close."""
        if self._run is not None:
            self._issue_run()
        self._file.flush()
        fd = self._file.fileno()
        if self.sparse:  # a hole at the end: the seek did not extend the file
            length = self._file.tell()
            if os.fstat(fd).st_size < length:
                os.ftruncate(fd, length)
        change_owner(fd, uid, gid)  # before chmod: chown clears set-id bits
        os.fchmod(fd, stat.S_IMODE(mode))
        if mtime_ns is not None:
            os.utime(fd, ns=(time.time_ns(), mtime_ns))
        if self._tree.fsync:
            os.fsync(fd)
        self._sealed = os.fstat(fd) if self._hash is not None else None   # the catalog's row, without a lookup
        self._file.close()


RELEASE_EVERY = 32 << 20  # bytes viewed between two MADV_DONTNEED of the mapping


class Basis:
    """A read-only regular file, mmap'd, for block matching and sending.

    ``view()`` hands out zero-copy slices; release them before ``close()``
    or the mapping lives on until the last slice is gone. A file truncated
    by someone else while mapped raises SIGBUS on access (rsync reads with
    read(2) and has no such risk); backupd itself only replaces files by
    rename, so only a local writer or ``--inplace`` could do that.

    Attributes:
        size: bytes, from fstat at open.
        stat: the fstat of the opened file.
        fd: the open file (owned; closed by :meth:`close`), -1 once closed;
            the source of reflinked blocks.
    """

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self.stat = st
        self.size = st.st_size
        self._map = mmap.mmap(fd, self.size, access=mmap.ACCESS_READ) if self.size else None
        self._touched = 0
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")

    @classmethod
    def open_at(cls, dir_fd: int, name: bytes, extra_flags: int = 0) -> Basis | None:
        """Open regular file ``name`` of ``dir_fd`` (O_NOFOLLOW, plus ``extra_flags``); None otherwise.

        Raises:
            OSError: anything but "missing" or "not a regular file".
        """
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None  # never open devices or FIFOs
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | extra_flags
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP):
                return None  # replaced since the stat
            raise
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                return cls(fd, st)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def view(self, offset: int, length: int) -> memoryview:
        """Bytes ``[offset, offset + length)``, zero-copy.

        Raises:
            ValueError: the range is not inside the file.
        """
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset}+{length} outside basis of {self.size} bytes")
        self.read_through(length)
        return self._view[offset : offset + length]

    def read_through(self, length: int) -> None:
        """Count ``length`` more bytes read from the views; every RELEASE_EVERY of them, :meth:`release`.

        ``view()`` counts its own range; a caller reading a long view piece
        by piece reports each piece here instead of releasing after each
        (every release walks the whole mapping).
        """
        self._touched += length
        if self._touched >= RELEASE_EVERY:
            self.release()

    def release(self) -> None:
        """Drop the mapped pages from this process's memory (MADV_DONTNEED).

        The file stays in the page cache and every view stays valid: a later
        access faults the page in again. Keeps the RSS of a worker that reads
        a GB basis at a few tens of MB instead of the file's size.
        """
        self._touched = 0
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self._map.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Unmap (deferred while slices from ``view()`` are alive) and close the fd; idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._view.release()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # unmapped when the last view is released
            self._map = None

    def __enter__(self) -> Basis:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
