"""Reflinked deltas: matched basis blocks cloned into the new version, not copied.

On a file system with shared extents (XFS with ``reflink=1``, btrfs) the
receiver asks the kernel to make a run of the new version's blocks share the
basis file's extents (``ioctl(FICLONERANGE)``, Linux ``fs/remap_range.c``).
The bytes are the same, nothing is written for them, and the old version,
moved to history by a hard link, keeps its own extents: a write to either
file is copy-on-write. Stock rsync copies every matched byte.

Only aligned runs can be cloned (source offset, destination offset and length
multiples of the file system block); the generator picks block lengths that
are multiples of it (``protocol.sums.sum_sizes(align=...)``) so that an edit
that keeps offsets leaves whole aligned runs. Everything else is copied, and
any refusal of the kernel (another file system, EXDEV, EOPNOTSUPP) falls back
to copying for the rest of the file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterator

FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range), linux/fs.h
_RANGE = struct.Struct("=qQQQ")  # src_fd (s64), src_offset, src_length, dest_offset (u64)
# the kernel or the file system cannot clone this pair: copy instead
UNSUPPORTED = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EPERM}
)
PROBE_BYTES = 64 * 1024


def clone_range(src_fd: int, src_offset: int, length: int, dst_fd: int, dst_offset: int) -> None:
    """Make ``dst_fd``'s ``[dst_offset, +length)`` share ``src_fd``'s ``[src_offset, +length)``.

    Offsets and length in bytes, multiples of the file system block (the
    length may end at the source's end of file).

    Raises:
        OSError: the kernel refused (errno in ``UNSUPPORTED``: no reflink
            here) or an I/O error.
    """
    fcntl.ioctl(dst_fd, FICLONERANGE, _RANGE.pack(src_fd, src_offset, length, dst_offset))


def clone_align(dir_fd: int) -> int:
    """The block size to align clones to in the directory ``dir_fd``, or 0: no reflinks there.

    Probes with two anonymous files (``O_TMPFILE``: nothing appears in the
    module, nothing is left behind): one written, one cloned from it.
    """
    try:
        block = os.fstatvfs(dir_fd).f_bsize
    except OSError:
        return 0
    if block <= 0 or PROBE_BYTES % block:
        return 0
    fds = []
    try:
        for _ in range(2):
            fds.append(os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd))
        os.write(fds[0], b"\xa5" * PROBE_BYTES)
        clone_range(fds[0], 0, PROBE_BYTES, fds[1], 0)
        return block if os.pread(fds[1], 16, PROBE_BYTES - 16) == b"\xa5" * 16 else 0
    except OSError:
        return 0
    finally:
        for fd in fds:
            os.close(fd)


class CloneRun:
    """A run of basis bytes waiting to be cloned at one destination offset.

    Consecutive aligned blocks that are also consecutive in the basis grow
    one run (one ioctl, one shared extent); the owner issues it with
    :meth:`issue` before writing anything else. ``source`` is the object the
    fd belongs to (a ``Basis``), compared by identity; the run owns a
    duplicate of the fd, so the basis may be closed meanwhile.
    """

    def __init__(self, source: object, src_fd: int, src_offset: int, dst_offset: int, length: int) -> None:
        self.source = source
        self.src_fd = os.dup(src_fd)
        self.src_offset = src_offset
        self.dst_offset = dst_offset
        self.length = length

    def extends(self, source: object, src_offset: int, dst_offset: int) -> bool:
        """True if a block at these offsets of the same basis continues this run."""
        return (
            source is self.source
            and src_offset == self.src_offset + self.length
            and dst_offset == self.dst_offset + self.length
        )

    def issue(self, dst_fd: int) -> bool:
        """Clone the run into ``dst_fd``; False when this file system cannot (nothing written).

        Raises:
            OSError: an I/O error other than "cannot clone here".
        """
        try:
            clone_range(self.src_fd, self.src_offset, self.length, dst_fd, self.dst_offset)
            return True
        except OSError as exc:
            if exc.errno in UNSUPPORTED:
                return False
            raise

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The run's bytes in pieces of ``size``, read from the basis (the copy made when cloning is refused).

        Raises:
            OSError: the basis cannot be read.
        """
        done = 0
        while done < self.length:
            piece = os.pread(self.src_fd, min(size, self.length - done), self.src_offset + done)
            if not piece:
                raise OSError(errno.EIO, "basis file shrank under the transfer")
            done += len(piece)
            yield piece

    def close(self) -> None:
        """Drop the duplicate fd (idempotent)."""
        if self.src_fd >= 0:
            os.close(self.src_fd)
            self.src_fd = -1
