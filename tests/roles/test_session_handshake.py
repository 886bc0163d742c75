"""The daemon handshake over a socketpair: listing, refusals, auth, bad input.

A session runs in a thread on one end; the test plays the client on the
other, byte by byte as rsync-protocol-a.md §3 describes. No rsync binary.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from pathlib import Path

import pytest

from backupd.config.model import AuthUser, DaemonConfig, ModuleConfig
from backupd.errors import ExitCode
from backupd.protocol import greeting as gr
from backupd.roles import session as session_mod
from backupd.roles.session import SessionContext, run_session

GREETING = b"@RSYNCD: 32.0 sha512 sha256 sha1 md5 md4\n"


@pytest.fixture
def config(tmp_path: Path) -> DaemonConfig:
    secrets = tmp_path / "secrets"
    secrets.write_text("alice:s3cret\n")
    secrets.chmod(0o600)
    mods = {
        "pub": ModuleConfig("pub", tmp_path, comment="public module", read_only=False),
        "hidden": ModuleConfig("hidden", tmp_path, list=False),
        "priv": ModuleConfig("priv", tmp_path, auth_users=(AuthUser("alice"),), secrets_file=secrets),
        "lan": ModuleConfig("lan", tmp_path, comment="lan only", hosts_allow=("10.0.0.0/8",)),
    }
    # a root server would run these sessions as nobody; they run in this process, so as us
    own = {"uid": str(os.getuid()), "gid": str(os.getgid())}
    mods = {name: dataclasses.replace(mod, **own) for name, mod in mods.items()}
    return DaemonConfig(modules=mods, reverse_lookup=False)


class Client:
    """The client end of a socketpair with a session thread on the other end."""

    def __init__(self, config: DaemonConfig, peer: str = "127.0.0.1") -> None:
        self.sock, server = socket.socketpair()
        self.sock.settimeout(10)
        self.code: ExitCode | None = None
        ctx = SessionContext(config=config, peer_addr=peer, session_id="test")
        self.thread = threading.Thread(target=self._serve, args=(server, ctx), daemon=True)
        self.thread.start()
        self.buf = b""

    def _serve(self, server, ctx) -> None:
        self.code = run_session(server, ctx)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def rest(self) -> bytes:
        out = self.buf
        while chunk := self.sock.recv(4096):
            out += chunk
        return out

    def finish(self) -> ExitCode:
        self.sock.close()
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.code


def test_listing_shows_listable_modules_whatever_their_hosts_rules(config):
    # as rsync 3.5.0's send_listing (tests/interop/test_hosts_access.py checks it against rsyncd)
    c = Client(config)
    assert c.line().startswith(b"@RSYNCD: 32.0 ")
    c.sock.sendall(GREETING + b"\n")
    assert c.rest() == gr.encode_listing([("pub", "public module"), ("priv", ""), ("lan", "lan only")])
    assert c.finish() == ExitCode.OK


@pytest.mark.parametrize(
    ("module", "reply", "code"),
    [
        (b"nosuch", b"@ERROR: Unknown module 'nosuch'", ExitCode.STARTCLIENT),
        (b"lan", b"@ERROR: access denied to lan from UNDETERMINED (127.0.0.1)", ExitCode.STARTCLIENT),
        (b"#weird", b"@ERROR: Unknown command '#weird'", ExitCode.STARTCLIENT),
    ],
)
def test_refusals_before_ok_are_error_lines(config, module, reply, code):
    c = Client(config)
    c.line()
    c.sock.sendall(GREETING + module + b"\n")
    assert c.line() == reply
    assert c.rest() == b""
    assert c.finish() == code


@pytest.mark.parametrize(("password", "ok"), [(b"s3cret", True), (b"wrong", False)])
def test_challenge_response_auth(config, monkeypatch, password, ok):
    monkeypatch.setattr(session_mod, "AUTH_FAIL_DELAY_S", 0)
    c = Client(config)
    c.line()
    c.sock.sendall(GREETING + b"priv\n")
    line = c.line()
    assert line.startswith(b"@RSYNCD: AUTHREQD ")
    challenge = line.split(b" ", 2)[2].decode()
    assert len(challenge) == 86  # sha512, as rsyncd sizes it
    response = gr.auth_response("sha512", password, challenge)
    c.sock.sendall(f"alice {response}\n".encode())
    if ok:
        assert c.line() == b"@RSYNCD: OK"
        c.sock.sendall(b"\0")  # an empty argument list: refused after OK
    else:
        assert c.line() == b"@ERROR: auth failed on module priv"
    c.rest()
    assert (c.finish() == ExitCode.STARTCLIENT) is not ok


@pytest.mark.parametrize(
    ("greeting", "reply"),
    [
        (b"@RSYNCD: 26.0\n", b"@ERROR: protocol version 26 is too old"),
        (b"@RSYNCD: 32.0\n", b"@ERROR: your client omitted the digest name list"),
        (b"\x16\x03\x01\x02\x00random tls junk\n", b"@ERROR: protocol startup error"),
    ],
)
def test_bad_greetings_get_a_clear_error(config, greeting, reply):
    c = Client(config)
    c.line()
    c.sock.sendall(greeting)
    assert c.line().startswith(reply)
    c.rest()
    assert c.finish() != ExitCode.OK


def test_client_that_vanishes_ends_only_its_session(config):
    c = Client(config)
    c.line()
    c.sock.sendall(b"@RSYNCD: 32.0 md5")  # no newline, then gone
    assert c.finish() == ExitCode.STREAMIO


def test_overlong_line_is_refused(config):
    c = Client(config)
    c.line()
    c.sock.sendall(b"@RSYNCD: " + b"9" * 10_000)
    c.rest()
    assert c.finish() == ExitCode.PROTOCOL
