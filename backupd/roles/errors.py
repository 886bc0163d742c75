"""Per-file errors, recorded in one place: counted, io_error set, sent as MSG_ERROR_XFER, logged.

rsync reports a file it cannot read, write, delete or accept with
``rprintf(FERROR_XFER, ...)`` and, where the failure must stop later
deletions or mark the run partial, ``io_error |= IOERR_GENERAL``; the
session then goes on and ends with exit code 23 (24 for vanished files).
Every role records such an error through ``FileErrors.record`` instead of
building the message, the count and the flag at each site.

Wire: MSG_ERROR_XFER (multiplexed message code 1), payload one line of
text ending in a newline, normally ``rsync: [role] what: why``; the client
prints it to stderr. Source: rsync log.c rwrite() (FERROR_XFER), the
io_error sites of generator.c, receiver.c, sender.c and flist.c;
style.md §3 (FileError is recorded, the session goes on).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from backupd.protocol.constants import MsgCode

_LOCK = threading.Lock()  # the generator thread and the receiver share one tally


class Tally(Protocol):
    """What a recorder adds to: the count of per-file errors and the io_error bits (IOERR_*)."""

    file_errors: int
    io_error: int


@dataclass
class ErrorTally:
    """A stand-alone ``Tally`` (the sender's and the file-list builder's)."""

    io_error: int = 0
    file_errors: int = 0


class FileErrors:
    """Records the per-file errors of one role.

    ``send(code, payload)`` queues a multiplexed message; ``log`` is the
    session's logger (or None); ``role`` names the side in the message
    (``generator``, ``receiver``, ``sender``); ``io_flag`` is the io_error
    bit a record sets unless told otherwise (0: none, as rsync's generator).
    """

    def __init__(
        self,
        send: Callable[[MsgCode, bytes], None],
        log,
        role: str,
        tally: Tally,
        *,
        io_flag: int = 0,
    ) -> None:
        self.send = send
        self.log = log
        self.role = role
        self.tally = tally
        self.io_flag = io_flag

    def record(
        self, message: str, path: bytes | None = None, *, io_flag: int | None = None, prefixed: bool = True
    ) -> None:
        """Count one error, set its io_error bit, send it to the client and log it.

        Args:
            message: what failed, without the trailing newline.
            path: the entry it concerns (module- or transfer-relative), for the log only.
            io_flag: IOERR_* bits to set (None: the role's default; 0: none).
            prefixed: start the line with ``rsync: [role] `` (rsync's own
                ``ERROR: ...`` lines and the generator's make-room line have none).

        Wire: MSG_ERROR_XFER, payload the line in UTF-8, names in their own
        bytes (see :func:`wire_text`).
        """
        bits = self.io_flag if io_flag is None else io_flag
        with _LOCK:
            self.tally.file_errors += 1
            self.tally.io_error |= bits
        text = f"rsync: [{self.role}] {message}" if prefixed else message
        self.send(MsgCode.ERROR_XFER, wire_text(text + "\n"))
        if self.log is not None:
            shown = message if path is None else f"{os.fsdecode(path)}: {message}"
            self.log.warning("{}", shown)

    def flag(self, bits: int) -> None:
        """Set io_error bits without an error line (a vanished file: IOERR_VANISHED and a warning)."""
        with _LOCK:
            self.tally.io_error |= bits


def wire_text(text: str) -> bytes:
    """A message for the client in UTF-8; a name decoded with ``os.fsdecode`` goes back to its own bytes.

    rsync puts a file's name into its messages as the bytes it has, so a
    non-UTF-8 name reaches the client unchanged (the client escapes what it
    cannot print). Text that still cannot be encoded is replaced.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")
