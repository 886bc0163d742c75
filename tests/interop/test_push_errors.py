"""Refused pushes and malformed input.

Refusals (wrong password, unknown module, denied host, read-only module)
run against backupd and the stock rsyncd with every client variant: the
client must exit with the same code and print the server's message.
Malformed input comes from raw sockets; each case must end only its own
session, with a clear log line and no traceback, and the daemon must go on
serving.
"""

from __future__ import annotations

import os
import random
import re
import socket
import time

import pytest

from tests.helpers import File, assert_trees_equal, make_tree
from tests.interop.conftest import MODULE, T0, assert_ok, set_mtime, show

SECRETS = {"alice": "s3cret"}
MODULES = {
    "auth": {"path": None, "read only": False, "auth users": "alice"},
    "deny": {"path": None, "read only": False, "hosts allow": "10.0.0.1"},
    "ro": {"path": None, "read only": True},
}


@pytest.fixture
def source(tmp_path):
    src = make_tree(tmp_path / "src", {"a.txt": File(b"a\n", mtime=T0), "d": {"b": b"b\n"}})
    set_mtime(src, T0)
    return src


@pytest.fixture
def both(make_targets):
    """rsyncd and backupd, each with ``mod`` and the ``auth``/``deny``/``ro`` modules."""
    return make_targets(secrets=SECRETS, extra_modules=MODULES)


def module_dir(target, name: str):
    return target.module.parent / name if name != MODULE else target.module


@pytest.mark.parametrize(
    ("module", "user", "password", "message"),
    [
        pytest.param("auth", "alice", "wrong", "@ERROR: auth failed on module auth", id="password"),
        pytest.param("auth", "mallory", "s3cret", "@ERROR: auth failed on module auth", id="user"),
        pytest.param("nosuch", None, None, "@ERROR: Unknown module 'nosuch'", id="unknown-module"),
        pytest.param("deny", None, None, "@ERROR: access denied to deny from", id="denied-host"),
        pytest.param("ro", None, None, "ERROR: module is read only", id="read-only"),
    ],
)
def test_refused_push_matches_rsyncd(both, rsync_client, source, module, user, password, message):
    results = {}
    for kind, target in both.items():
        url = target.server.url(module, user=user)
        results[kind] = rsync_client.run("-a", f"{source}/", url, password=password, timeout=30)
        assert message in results[kind].stderr, show(results[kind])
        if module != "nosuch":
            assert os.listdir(module_dir(target, module)) == [], kind
    stock, ours = results["rsyncd"], results["backupd"]
    assert ours.returncode == stock.returncode != 0, f"{show(stock)}\n\n{show(ours)}"


def test_right_password_and_writable_module_work(both, rsync_client, source):
    """The control for the refusals above: the same modules accept a proper push."""
    for target in both.values():
        url = target.server.url("auth", user="alice")
        assert_ok(rsync_client.run("-a", f"{source}/", url, password="s3cret", timeout=30))
        assert_trees_equal(source, module_dir(target, "auth"), mtime_precision_ns=10**9)
        assert_ok(target.push(rsync_client, "-a", f"{source}/", timeout=30))


# ---------------------------------------------------------------- malformed input


class Raw:
    """A hand-driven daemon-protocol client on a plain socket."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    def line(self) -> bytes:
        data = b""
        while not data.endswith(b"\n"):
            data += self.exact(1)
        return data

    def varint(self) -> int:
        first = self.exact(1)[0]
        extra = 0
        while extra < 6 and first & (0x80 >> extra):
            extra += 1
        rest = int.from_bytes(self.exact(extra), "little") if extra else 0
        return rest | (first & ((1 << (7 - extra)) - 1)) << (8 * extra)

    def setup(self, module: str = MODULE) -> None:
        """Greeting, module, arguments, compat flags, checksum lists and seed (protocol 31)."""
        self.sock.sendall(b"@RSYNCD: 31.0\n")
        assert self.line().startswith(b"@RSYNCD: ")
        self.sock.sendall(module.encode() + b"\n")
        assert self.line() == b"@RSYNCD: OK\n"
        self.sock.sendall(b"--server\0-logDtpre.LsfxCIvu\0.\0" + module.encode() + b"/\0\0")
        flags = self.varint()
        if flags & 0x80:  # CF_VARINT_FLIST_FLAGS: the checksum lists are exchanged
            self.exact(self.exact(1)[0])
            self.sock.sendall(b"\x03md5")
        self.exact(4)  # checksum seed; from here both directions are multiplexed

    def frame(self, code: int, payload: bytes, length: int | None = None) -> None:
        size = len(payload) if length is None else length
        self.sock.sendall(size.to_bytes(3, "little") + bytes([7 + code]) + payload)

    def until_closed(self, timeout: float = 10.0) -> bytes:
        """Everything the server sends until it closes (fails after ``timeout`` s)."""
        self.sock.settimeout(timeout)
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def random_bytes(raw: Raw) -> None:
    raw.sock.sendall(random.Random(1).randbytes(4096))
    raw.until_closed()


def truncated_flist(raw: Raw) -> None:
    raw.setup()
    raw.frame(0, bytes.fromhex("ac01012e0000"))  # the start of an entry for "."
    raw.sock.shutdown(socket.SHUT_WR)
    raw.until_closed()


def truncated_frame(raw: Raw) -> None:
    raw.setup()
    raw.frame(0, bytes.fromhex("ac01012e0000"), length=116)
    raw.sock.shutdown(socket.SHUT_WR)
    raw.until_closed()


def huge_message_frame(raw: Raw) -> None:
    raw.setup()
    raw.frame(3, b"", length=0xFFFFFF)  # MSG_ERROR of 16 MiB: a message is < 5120 bytes
    raw.until_closed()  # with our side still open: the server must not wait for the payload


def huge_name_length(raw: Raw) -> None:
    raw.setup()
    raw.frame(0, b"\x40" + b"\xf0\xff\xff\xff\x7f")  # XMIT_LONG_NAME, name of 2**31-1 bytes
    raw.until_closed()


def connect_and_close(raw: Raw) -> None:
    pass


LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")


@pytest.mark.parametrize(
    ("action", "words"),
    [
        pytest.param(random_bytes, r"greeting|line|protocol|@RSYNCD|version", id="random-bytes"),
        pytest.param(truncated_flist, r"closed|truncat|EOF|end of", id="truncated-file-list"),
        pytest.param(truncated_frame, r"closed|truncat|EOF|end of", id="truncated-frame"),
        pytest.param(huge_message_frame, r"overflow|too long|too large|length", id="huge-frame"),
        pytest.param(huge_name_length, r"name|length|too long|overflow", id="huge-name-length"),
        pytest.param(connect_and_close, r"closed|EOF|end of", id="connect-close"),
    ],
)
def test_malformed_session_ends_alone(backupd_target, rsync_clients, source, action, words):
    server = backupd_target.server
    start = len(server.log_path.read_bytes())
    raw = Raw(server.port)
    try:
        action(raw)
    finally:
        raw.close()
    new = _wait_for_log(server, start, LEVEL)
    lines = [line for line in new.splitlines() if LEVEL.search(line)]
    assert any(re.search(words, line, re.I) for line in lines), new
    assert server.proc.poll() is None, "the daemon died"
    assert_ok(backupd_target.push(rsync_clients["3.5.0"], "-a", f"{source}/", timeout=30))
    assert_trees_equal(source, backupd_target.module)
    assert "Traceback" not in server.log()


def test_idle_connection_does_not_block_others(backupd_target, rsync_clients, source):
    first, second = Raw(backupd_target.server.port), Raw(backupd_target.server.port)
    try:
        second.sock.sendall(b"@RSYNCD: 31.0\n")  # greets, then goes quiet
        assert_ok(backupd_target.push(rsync_clients["3.5.0"], "-a", f"{source}/", timeout=30))
        assert_trees_equal(source, backupd_target.module)
    finally:
        first.close()
        second.close()


def _wait_for_log(server, start: int, pattern: re.Pattern, timeout: float = 10.0) -> str:
    """The log text after byte ``start`` once a line matches ``pattern`` (or at timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        new = server.log_path.read_bytes()[start:].decode(errors="replace")
        if pattern.search(new) or time.monotonic() > deadline:
            return new
        time.sleep(0.05)
