"""One recorder for per-file errors (roles/errors.FileErrors): count, io_error, MSG_ERROR_XFER, log."""

from __future__ import annotations

import threading

import pytest

from backupd.protocol.constants import IoError, MsgCode
from backupd.roles.errors import ErrorTally, FileErrors


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, fmt: str, *args) -> None:
        self.lines.append(fmt.format(*args))


def recorder(role: str = "generator", io_flag: int = 0):
    sent: list[tuple[MsgCode, bytes]] = []
    log, tally = Log(), ErrorTally()
    return FileErrors(lambda code, data: sent.append((code, data)), log, role, tally, io_flag=io_flag), sent, log, tally


@pytest.mark.parametrize(
    ("role", "kwargs", "wire"),
    [
        ("generator", {}, b"rsync: [generator] mkdir x failed\n"),
        ("receiver", {}, b"rsync: [receiver] mkdir x failed\n"),
        ("sender", {}, b"rsync: [sender] mkdir x failed\n"),
        ("generator", {"prefixed": False}, b"mkdir x failed\n"),
    ],
)
def test_the_line_on_the_wire(role, kwargs, wire):
    errors, sent, log, tally = recorder(role)
    errors.record("mkdir x failed", **kwargs)
    assert sent == [(MsgCode.ERROR_XFER, wire)]
    assert tally.file_errors == 1 and log.lines == ["mkdir x failed"]


def test_io_flag_default_and_override():
    errors, _, _, tally = recorder("receiver", io_flag=IoError.GENERAL)
    errors.record("a")
    assert tally.io_error == IoError.GENERAL
    plain, _, _, plain_tally = recorder("sender", io_flag=IoError.GENERAL)
    plain.record("not removing x", io_flag=0)        # counted, but later deletions are not blocked
    assert plain_tally.io_error == 0 and plain_tally.file_errors == 1
    plain.flag(IoError.VANISHED)                     # a vanished file: a bit, no error line
    assert plain_tally.io_error == IoError.VANISHED and plain_tally.file_errors == 1


def test_undecodable_names_keep_their_bytes_and_the_path_is_logged():
    errors, sent, log, _ = recorder()
    name = b"bad\xff"
    errors.record(f"open {name.decode('utf-8', 'surrogateescape')} failed", name)
    assert sent[0][1] == b"rsync: [generator] open " + name + b" failed\n"  # rsync sends the name's own bytes
    assert log.lines[0].startswith("bad")


def test_two_roles_on_one_tally_count_every_error():
    tally = ErrorTally()
    roles = [FileErrors(lambda c, d: None, None, r, tally) for r in ("generator", "receiver")]

    def hammer(errors):
        for _ in range(2000):
            errors.record("x")

    threads = [threading.Thread(target=hammer, args=(e,)) for e in roles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert tally.file_errors == 4000
