"""Daemon handshake lines: @RSYNCD greeting, module request, auth, @ERROR.

Source: rsync clientserver.c exchange_protocols/rsync_module, compat.c
output_daemon_greeting, authenticate.c gen_challenge/auth_server;
rsync-protocol-a.md §3.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass

from backupd.errors import DaemonRefusal, ExitCode, ProtocolError
from backupd.protocol.constants import MAX_PROTOCOL, MIN_PROTOCOL
from backupd.protocol.digests import have_md4, new_digest

MAX_LINE = 4096
AUTH_DIGESTS = ("sha512", "sha256", "sha1", "md5") + (("md4",) if have_md4() else ())

_GREETING = re.compile(rb"@RSYNCD: (\d+)(?:\.(\d+))?(?: (.*))?")


@dataclass(frozen=True)
class Greeting:
    """A peer's ``@RSYNCD: <major>.<sub> [digests]`` line."""

    protocol: int
    sub: int | None
    digests: tuple[str, ...] | None


def encode_greeting(protocol: int = MAX_PROTOCOL, digests: tuple[str, ...] = AUTH_DIGESTS) -> bytes:
    r"""Our greeting line, e.g. ``@RSYNCD: 32.0 sha512 sha256 sha1 md5\n``."""
    return f"@RSYNCD: {protocol}.0 {' '.join(digests)}\n".encode()


def decode_greeting(line: bytes) -> Greeting:
    r"""Parse a greeting line (without the newline; a trailing ``\r`` is dropped).

    Raises:
        DaemonRefusal: not a greeting ("protocol startup error").
    """
    m = _GREETING.fullmatch(line.rstrip(b"\r"))
    if m is None:
        raise DaemonRefusal("protocol startup error")
    digests = tuple(m.group(3).decode("ascii", "replace").split()) if m.group(3) else None
    return Greeting(int(m.group(1)), int(m.group(2)) if m.group(2) is not None else None, digests)


def negotiate_protocol(peer: Greeting, ours: int = MAX_PROTOCOL) -> int:
    """The session's protocol version: the lower major, per compat.c.

    Raises:
        DaemonRefusal: below MIN_PROTOCOL (27), a >= 30 peer without ``.sub``, or a
            > 31 peer without a digest list (the messages rsyncd uses).
    """
    if peer.protocol >= 30 and peer.sub is None:
        raise DaemonRefusal(f"your client omitted the subprotocol value: @RSYNCD: {peer.protocol}")
    if peer.protocol > 31 and peer.digests is None:
        raise DaemonRefusal(f"your client omitted the digest name list: @RSYNCD: {peer.protocol}.{peer.sub}")
    protocol = min(peer.protocol, ours)
    if peer.protocol < ours and peer.sub:
        protocol -= 1
    if protocol < MIN_PROTOCOL:
        raise DaemonRefusal(
            f"protocol version {protocol} is too old: backupd speaks protocols {MIN_PROTOCOL}-{MAX_PROTOCOL}"
            " (rsync 2.6.0 or later)",
            ExitCode.PROTOCOL,
        )
    return protocol


def choose_auth_digest(peer: Greeting) -> str:
    """First digest in the client's list that we support (md5 for a listless client).

    Raises:
        DaemonRefusal: no common digest (rsyncd's exact message).
    """
    if peer.digests is None:
        return "md5"
    for name in peer.digests:
        if name.lower() in AUTH_DIGESTS:
            return name.lower()
    raise DaemonRefusal(f"your client does not support one of our daemon-auth checksums: {' '.join(AUTH_DIGESTS)}")


def make_challenge(digest: str, random_bytes: bytes) -> str:
    """base64 (no padding) of digest(random_bytes): as long as rsyncd's challenge."""
    return _b64(new_digest(digest, random_bytes).digest())


def auth_response(digest: str, password: bytes, challenge: str) -> str:
    """base64_nopad(DIGEST(password + challenge)) (authenticate.c generate_hash)."""
    return _b64(new_digest(digest, password + challenge.encode("ascii")).digest())


def parse_auth_line(line: bytes) -> tuple[str, str]:
    """Split the client's ``user response`` line.

    Raises:
        ProtocolError: no space in the line.
    """
    text = line.rstrip(b"\r").decode("utf-8", "replace")
    user, sep, response = text.partition(" ")
    if not sep or not user:
        raise ProtocolError("malformed auth response line")
    return user, response.strip()


def check_response(digest: str, password: bytes, challenge: str, response: str) -> bool:
    """Constant-time comparison of the client's response with the expected one."""
    return hmac.compare_digest(auth_response(digest, password, challenge).encode(), response.encode())


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).rstrip(b"=").decode("ascii")


def encode_listing(modules: list[tuple[str, str]]) -> bytes:
    r"""Module listing lines (``%-15s\t%s``) then ``@RSYNCD: EXIT``."""
    lines = [f"{name:<15}\t{comment}\n".encode() for name, comment in modules]
    return b"".join(lines) + b"@RSYNCD: EXIT\n"


def encode_error(message: str) -> bytes:
    r"""``@ERROR: message\n``; the client prints it and exits 5."""
    return f"@ERROR: {message}\n".encode()
