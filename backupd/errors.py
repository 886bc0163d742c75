"""One error root for backupd, and rsync's exit codes.

Source of the codes: rsync errcode.h (RERR_*), identical in 3.2.7 and 3.5.0.
Whose fault decides the type: ``ProtocolError`` (the peer broke the
protocol), ``Unsupported`` (refused on purpose), ``DaemonRefusal`` (bad
module, auth or host; sent as ``@ERROR`` before the binary phase),
``FileError`` (one file failed; the session goes on and ends 23/24).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """rsync exit codes (errcode.h RERR_*), as the client reports them."""

    OK = 0
    SYNTAX = 1
    PROTOCOL = 2
    FILESELECT = 3
    UNSUPPORTED = 4
    STARTCLIENT = 5
    SOCKETIO = 10
    FILEIO = 11
    STREAMIO = 12
    MESSAGEIO = 13
    IPC = 14
    CRASHED = 15
    TERMINATED = 16
    SIGNAL = 20
    WAITCHILD = 21
    MALLOC = 22
    PARTIAL = 23
    VANISHED = 24
    DEL_LIMIT = 25
    TIMEOUT = 30
    CONTIMEOUT = 35


EXIT_TEXT = {
    ExitCode.SYNTAX: "syntax or usage error",
    ExitCode.PROTOCOL: "protocol incompatibility",
    ExitCode.FILESELECT: "errors selecting input/output files, dirs",
    ExitCode.UNSUPPORTED: "requested action not supported",
    ExitCode.STARTCLIENT: "error starting client-server protocol",
    ExitCode.SOCKETIO: "error in socket IO",
    ExitCode.FILEIO: "error in file IO",
    ExitCode.STREAMIO: "error in rsync protocol data stream",
    ExitCode.MESSAGEIO: "errors with program diagnostics",
    ExitCode.IPC: "error in IPC code",
    ExitCode.CRASHED: "sibling process crashed",
    ExitCode.PARTIAL: "some files/attrs were not transferred (see previous errors)",
    ExitCode.VANISHED: "some files vanished before they could be transferred",
    ExitCode.DEL_LIMIT: "the --max-delete limit stopped deletions",
    ExitCode.TIMEOUT: "timeout in data send/receive",
}


class BackupdError(Exception):
    """Root of every error backupd raises on purpose."""


class ConfigError(BackupdError):
    """A configuration file or value is wrong; the message names file:line."""


class StorageError(BackupdError):
    """A filesystem effect on a module failed; the message names module and path."""


class PathEscape(StorageError):
    """A path tried to leave the module (``..``, absolute, symlinked parent)."""


class RsyncError(BackupdError):
    """An error that ends the session with an rsync exit code."""

    exit_code: ExitCode = ExitCode.PROTOCOL

    def __init__(self, message: str, exit_code: ExitCode | None = None, *, bare: bool = False) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        self.bare = bare  # sent as is, without the "rsync: [role] " prefix (rsync's plain rprintf)


class ProtocolError(RsyncError):
    """The peer broke the protocol (bad length, bad ndx, bad stream)."""

    exit_code = ExitCode.PROTOCOL


class StreamClosed(RsyncError):
    """The peer closed the connection before the session was over."""

    exit_code = ExitCode.STREAMIO


class Unsupported(RsyncError):
    """A request refused on purpose (an option we do not implement, e.g. -X)."""

    exit_code = ExitCode.UNSUPPORTED


class DaemonRefusal(RsyncError):
    """Refused before the binary phase; sent to the client as ``@ERROR: ...``."""

    exit_code = ExitCode.STARTCLIENT


class FileError(BackupdError):
    """One file failed; recorded, sent as MSG_ERROR_XFER, and the session goes on."""
