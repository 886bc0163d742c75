"""Pre-auth exhaustion (issue 15.2): connections that never log in are cut at the
handshake deadline, and hundreds of them cannot keep a real client out.
"""

from __future__ import annotations

import socket
import time

import pytest

from backupd.transport.tcp import MAX_PREAUTH, MAX_PREAUTH_PER_ADDRESS, PREAUTH_PATIENCE_S
from tests.helpers import free_port, render_rsyncd_conf
from tests.interop.conftest import assert_ok

SLOW_CONNECTIONS = 300
DEADLINE_S = 4


@pytest.fixture
def slow_server(backupd_server, tmp_path):
    module = tmp_path / "mod"
    module.mkdir()
    port = free_port()
    conf = tmp_path / "rsyncd.conf"
    conf.write_text(render_rsyncd_conf(
        port, {"reverse lookup": False, "handshake timeout": DEADLINE_S},
        {"mod": {"path": module, "read only": False, "history": False}},
    ))
    return backupd_server(conf, port=port), module


def open_slow(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"@")  # the first byte of a greeting, then nothing more for a long time
        socks.append(s)
    return socks


def trickle(socks: list[socket.socket]) -> int:
    """One more greeting byte on every connection; returns how many the server has closed."""
    closed = 0
    for s in socks:
        try:
            s.sendall(b"R")
        except OSError:
            closed += 1
    return closed


def test_slow_preauth_connections_do_not_keep_a_client_out(slow_server, rsync_clients, tmp_path):
    server, module = slow_server
    client = rsync_clients["3.5.0"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("pushed past the slowloris\n")
    socks = open_slow(server.port, SLOW_CONNECTIONS)
    try:
        trickle(socks)
        started = time.monotonic()
        done = client.run("-a", f"{src}/", server.url("mod"), timeout=30)
        elapsed = time.monotonic() - started
        assert_ok(done)
        assert elapsed < 10, f"the push took {elapsed:.1f} s behind {SLOW_CONNECTIONS} slow connections"
        assert (module / "f.txt").read_text() == "pushed past the slowloris\n"
    finally:
        for s in socks:
            s.close()


def test_a_trickling_client_is_cut_at_the_deadline(slow_server):
    server, _ = slow_server
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S + 10) as s:
        greeting = s.recv(100)
        assert greeting.startswith(b"@RSYNCD: ")
        started = time.monotonic()
        received = b""
        while time.monotonic() - started < DEADLINE_S + 8:
            try:
                s.sendall(b"@")  # a byte a second: a per-read timeout would never fire
            except OSError:
                break
            s.settimeout(1.0)
            try:
                chunk = s.recv(200)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
        elapsed = time.monotonic() - started
    assert DEADLINE_S - 1 <= elapsed <= DEADLINE_S + 3, f"cut after {elapsed:.1f} s"
    assert "handshake not completed" in server.log()


def test_a_burst_from_one_address_is_not_cut_while_its_logins_are_young(slow_server):
    """More than MAX_PREAUTH_PER_ADDRESS clients of one host, all mid-handshake
    at once (parallel pushes on a busy machine): rsyncd serves every one, and so
    must we; only a connection that has waited PREAUTH_PATIENCE_S is cut."""
    server, _ = slow_server
    count = MAX_PREAUTH_PER_ADDRESS + 8
    assert count < MAX_PREAUTH
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            assert s.recv(100).startswith(b"@RSYNCD: ")
            s.sendall(b"@RSYNCD: 31.0\n")  # greeted, not yet past auth: no module asked for
            socks.append(s)
        time.sleep(min(1.0, PREAUTH_PATIENCE_S / 4))
        listings = []
        for s in socks:
            s.sendall(b"\n")  # ask for the module list, as `rsync host::` does
            data = b""
            while not data.endswith(b"@RSYNCD: EXIT\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            listings.append(data)
    finally:
        for s in socks:
            s.close()
    served = [d for d in listings if d.endswith(b"@RSYNCD: EXIT\n")]
    assert len(served) == count, f"{count - len(served)} of {count} connections were cut"
    assert "not yet logged in" not in server.log()
