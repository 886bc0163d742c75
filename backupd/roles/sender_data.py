"""One file's data for the sender: confined open, token stream, whole-file checksum.

Two paths, the same wire result (rsync match.c match_sums()):

* literal (no block sums: a new file on the client, ``--whole-file``, or
  the part after the kept prefix for ``--append``): the file is read with
  ``preadv`` into one reused 1 MiB buffer, cut into the C sender's
  32 KiB literal calls, and hashed in the same pass. Memory stays flat
  whatever the file size.
* matched (the client sent block sums of its copy): the file is mmap'd and
  ``match_tokens`` runs the rolling-checksum search over it (NumPy prefix
  sums, candidate lookup, C hash for strong sums); the whole-file sum is
  a second pass over the mapping.

A file that shrinks while it is read gets a deliberately wrong checksum
(C: all zero, last byte bumped if the real one was all zero), so the
client discards it and asks again in the redo phase.

Source: rsync sender.c send_files(), match.c match_sums(); protocol-b §4.5, §5, §6.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from backupd.errors import StorageError
from backupd.protocol.constants import CHUNK_SIZE, FNAMECMP_FNAME, FNAMECMP_PARTIAL_DIR
from backupd.protocol.sums import Checksum, SumHead
from backupd.protocol.tokens import TokenWriter
from backupd.storage import ModuleTree
from backupd.storage.fsops import fs_errors, open_dir, split_path

if TYPE_CHECKING:
    from backupd.protocol.match_counts import MatchCounts  # NumPy: not loaded by every session

READ_SIZE = 1 << 20          # bytes per preadv on the literal path (a multiple of CHUNK_SIZE)
HASH_PIECE = 8 << 20         # bytes per checksum update on the matched path

Write = Callable[[bytes], None]


class SourceFile:
    """A regular file of the module opened read-only without following symlinks.

    Attributes:
        fd: the open descriptor (closed by ``close``).
        size: bytes, from fstat right after the open.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def close(self) -> None:
        """Close the descriptor; idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SourceFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_source(tree: ModuleTree, path: bytes) -> SourceFile | None:
    """Open module path ``path`` for sending; None if it is gone or no longer a regular file.

    Parents are walked from the module root with O_NOFOLLOW (a symlinked
    parent is refused), the file itself is opened with O_NOFOLLOW.

    Raises:
        StorageError: any other failure (PathEscape for a symlinked parent).
    """
    comps = split_path(path, tree.module)
    if not comps:
        return None
    with fs_errors(tree.module, path):
        try:
            dir_fd = open_dir(tree.root_fd, comps[:-1], tree.module, path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | tree.read_flags
            try:
                fd = os.open(comps[-1], flags, dir_fd=dir_fd)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                if exc.errno == 40:   # ELOOP: the name is now a symlink
                    return None
                raise
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return SourceFile(fd, st.st_size)


def file_digest(tree: ModuleTree, path: bytes, checksum: Checksum) -> tuple[bytes, int] | None:
    """(unseeded whole-file digest, size) of module file ``path`` for ``-c``; None if gone.

    Raises:
        StorageError: it cannot be opened or read.
    """
    src = open_source(tree, path)
    if src is None:
        return None
    with src, fs_errors(tree.module, path):
        hasher = checksum.file_sum_hasher()
        view = memoryview(bytearray(READ_SIZE))
        if not _hash_range(src, hasher, view, 0, src.size):
            return None
        return hasher.digest(), src.size


def spoil(digest: bytes) -> bytes:
    """The checksum C sends after a read error: zeros, the last byte bumped if it was zeros."""
    bad = bytearray(len(digest))
    if digest == bytes(bad):
        bad[-1] = 1
    return bytes(bad)


def send_literal(src: SourceFile, writer: TokenWriter, checksum: Checksum, write: Write, *,
                 start: int = 0, hash_from: int = 0, counts: MatchCounts | None = None) -> bool:
    """Send ``src[start:]`` as literal data, then the whole-file sum of ``src[hash_from:]``.

    Calls: ``-2`` at every multiple of CHUNK_SIZE past ``start`` below the
    size, then ``-1`` with the rest (match.c match_sums() without sums).
    ``counts.data`` adds the ``size - start`` literal bytes (matched()'s
    data_transfer). Returns False if the file came up short (a spoiled
    checksum was sent).
    """
    if counts is not None:
        counts.data += max(0, src.size - start)
    hasher = checksum.file_sum_hasher()
    view = memoryview(bytearray(READ_SIZE))
    complete = _hash_range(src, hasher, view, hash_from, start)
    pos, size, last = start, src.size, b""
    while pos < size and complete:
        n = os.preadv(src.fd, [view[: min(READ_SIZE, size - pos)]], pos)
        if n <= 0:
            complete = False
            break
        hasher.update(view[:n])
        for off in range(0, n, CHUNK_SIZE):
            piece = view[off : min(off + CHUNK_SIZE, n)]
            if pos + off + len(piece) < size:
                write(writer.send(piece, -2))
            else:
                last = bytes(piece)
        pos += n
    write(writer.send(last if complete else b"", -1))
    digest = hasher.digest()
    write(digest if complete else spoil(digest))
    return complete


def _hash_range(src: SourceFile, hasher, view: memoryview, start: int, end: int) -> bool:
    """Feed ``src[start:end]`` to ``hasher`` (--append-verify's kept prefix)."""
    pos = start
    while pos < end:
        n = os.preadv(src.fd, [view[: min(len(view), end - pos)]], pos)
        if n <= 0:
            return False
        hasher.update(view[:n])
        pos += n
    return True


def updating_basis_file(*, inplace: bool, inplace_partial: bool, fnamecmp_type: int, protocol: int,
                        backup: bool, redo: bool) -> bool:
    """Whether the receiver writes into the basis it sent sums of (C's updating_basis_file).

    ``(inplace_partial && fnamecmp_type == FNAMECMP_PARTIAL_DIR) || (inplace
    && (protocol >= 29 ? fnamecmp_type == FNAMECMP_FNAME : make_backups <= 0))``;
    below 29 ``make_backups`` is negated for the redo phase, so it is <= 0
    without --backup or on a redo. Source: rsync sender.c send_files().
    """
    if inplace_partial and fnamecmp_type == FNAMECMP_PARTIAL_DIR:
        return True
    if not inplace:
        return False
    return fnamecmp_type == FNAMECMP_FNAME if protocol >= 29 else (not backup or redo)


def send_matched(src: SourceFile, head: SumHead, sum1, sum2: list[bytes], checksum: Checksum,
                 writer: TokenWriter, write: Write, *, counts: MatchCounts | None = None,
                 updating_basis: bool = False) -> bool:
    """Match ``src`` against the client's block sums; send the tokens and the file sum.

    ``counts``, when given, adds the search's matches, hash hits, false
    alarms and literal bytes (rsync match.c hash_search(), for match_report()).
    ``updating_basis``: the receiver writes into the basis (sender.c
    updating_basis_file): the search uses no block it may have overwritten.

    Raises:
        StorageError: the file cannot be mapped.
    """
    from backupd.protocol.match import match_tokens  # NumPy: loaded by the first delta, not by every session

    if not src.size:
        return send_literal(src, writer, checksum, write, counts=counts)
    try:
        mapping = mmap.mmap(src.fd, src.size, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot map the file: {exc}") from None
    view = memoryview(mapping)
    try:
        for call in match_tokens(view, head, sum1, sum2, checksum, counts=counts, updating_basis=updating_basis):
            data = writer.send(call.literal, call.token, call.block)
            if data:
                write(data)
            del call
        hasher = checksum.file_sum_hasher()
        for off in range(0, src.size, HASH_PIECE):
            hasher.update(view[off : off + HASH_PIECE])
        write(hasher.digest())
    finally:
        view.release()
        try:
            mapping.close()
        except BufferError:
            pass   # a slice still alive: unmapped when it goes
    return True
