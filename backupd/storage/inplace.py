"""``--inplace``: new content written into the live file's own inode.

rsync receiver.c with ``inplace``: no temp file and no rename, so every
hard link to the file sees the new content, as with stock rsyncd. The
version being overwritten is first copied (never linked: a link would share
the changes) into history when the module keeps history, so nothing is lost;
without history the update is as non-atomic as rsync's own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import time
from typing import TYPE_CHECKING

import xxhash

from backupd.errors import StorageError
from backupd.storage.fsops import change_owner, fs_errors, show
from backupd.storage.staging import SPARSE_BLOCK, block_runs

if TYPE_CHECKING:
    from backupd.storage.tree import ModuleTree


class InplaceFile:
    """The live file at ``path``, rewritten from offset 0; StagedFile's interface.

    Made by ``ModuleTree.open_inplace()``. ``write`` goes to the current
    offset (the receiver rebuilds the file front to back; rsync's sender only
    matches blocks at or after that offset, so the basis data still needed
    is never overwritten first); ``commit`` truncates to what was written and
    sets the attributes; ``abort`` and ``keep_partial`` leave what was written
    (rsync's in-place semantics). Every failure is a ``StorageError``.

    Attributes:
        replaced: after :meth:`commit`, the lstat of the file as commit
            found it (its data already rewritten, its attributes not yet
            set), StagedFile.replaced's twin.
    """

    def __init__(self, tree: ModuleTree, fd: int, path: bytes, mode: int, *, sparse: bool = False) -> None:
        self.path = path
        self.mode = mode
        self.sparse = sparse
        self._tree = tree
        self._fd = fd
        self._pos = 0
        self._done = False
        # the catalog's xxh128 of the new bytes (written in order from offset 0, then truncated)
        self._hash = xxhash.xxh128() if tree.catalog is not None else None
        self.xfer_sum: tuple[str, str] | None = None  # (checksum name, hex) the transfer verified
        self.replaced: os.stat_result | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at the current offset (a basis view is copied first: it may alias the file)."""
        self._check_open()
        chunk = bytes(data) if isinstance(data, memoryview) else data
        if self._hash is not None:
            self._hash.update(chunk)
        with fs_errors(self._tree.module, self.path):
            if self.sparse:
                self._write_sparse(memoryview(chunk).cast("B"))
            else:
                self._pwrite(memoryview(chunk))

    def write_block(self, basis, offset: int, data: memoryview) -> None:
        """A matched basis block: written like literal data (the live inode is the basis)."""
        self.write(data)

    def _pwrite(self, view: memoryview) -> None:
        while view:
            written = os.pwrite(self._fd, view, self._pos)
            self._pos += written
            view = view[written:]

    def _write_sparse(self, view: memoryview) -> None:
        """-S in place: aligned blocks of zeros become holes punched into the old data.

        rsync fileio.c write_sparse with inplace: do_punch_hole(), falling back
        to writing the zeros where the file system cannot punch.
        """
        head = min(len(view), -self._pos % SPARSE_BLOCK)
        self._pwrite(view[:head])
        view = view[head:]
        for piece, zero in block_runs(view):
            if zero and _punch_hole(self._fd, self._pos, len(piece)):
                self._pos += len(piece)
            else:
                self._pwrite(piece)
        self._pwrite(view[len(view) // SPARSE_BLOCK * SPARSE_BLOCK :])

    def commit(
        self, *, mtime_ns: int | None = None, mode: int | None = None, uid: int | None = None, gid: int | None = None
    ) -> None:
        """Truncate to the bytes written, then owner, mode, mtime, fsync (when asked); close.

        Raises:
            StorageError: any OS error (the file keeps what was written).
        """
        self._check_open()
        try:
            self.replaced = self.target_stat()
            with fs_errors(self._tree.module, self.path):
                os.ftruncate(self._fd, self._pos)
                change_owner(self._fd, uid, gid)
                os.fchmod(self._fd, stat.S_IMODE(self.mode if mode is None else mode))
                if mtime_ns is not None:
                    os.utime(self._fd, ns=(time.time_ns(), mtime_ns))
                if self._tree.fsync:
                    os.fsync(self._fd)
                if self._hash is not None:
                    self._tree.record_inplace(self.path, os.fstat(self._fd), self._hash.hexdigest(), self.xfer_sum)
        finally:
            self._close()

    def set_xattrs(self, wanted: dict[bytes, bytes], removable) -> list[str]:
        """The live file's extended attributes made ``wanted`` (as StagedFile.set_xattrs)."""
        from backupd.storage.xattrs import apply_xattrs_owned

        self._check_open()
        return apply_xattrs_owned(self._fd, wanted, removable)

    def set_acls(self, access, mode: int) -> list[str]:
        """The received access ACL on the live file, for its final ``mode`` (as StagedFile.set_acls)."""
        from backupd.storage.acls import apply_acls

        self._check_open()
        return apply_acls(self._fd, access, None, mode)

    def keep_partial(self) -> None:
        """``--partial``: what was written stays (it already is the live file)."""
        self._close()

    def target_stat(self) -> os.stat_result | None:
        """lstat of what ``path`` holds now (StagedFile.target_stat's twin; here the file being rewritten)."""
        return self._tree.lstat(self.path)

    def abort(self) -> None:
        """Stop writing; the file keeps what was written. Idempotent, never raises."""
        self._close()

    def _close(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            os.close(self._fd)
        except OSError:
            pass

    def __enter__(self) -> InplaceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def _check_open(self) -> None:
        if self._done:
            raise StorageError(f"module {self._tree.module}: {show(self.path)}: in-place file already finished")


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_LIBC.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate ``length`` bytes at ``offset`` (reads give zeros, the size stays); False if unsupported."""
    return _LIBC.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0
