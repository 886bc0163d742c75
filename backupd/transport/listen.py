"""Listening sockets for the daemon's ports (rsync daemon TCP and SSH).

One address, or the IPv4 and IPv6 wildcards as two sockets (IPV6_V6ONLY on
the IPv6 one, so each family is bound on its own, as rsync's socket.c
open_socket_in does with getaddrinfo's list).
"""

from __future__ import annotations

import errno
import socket

BACKLOG = 128
_MISSING_FAMILY = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


def bind_listeners(address: str | None, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``address`` (None: both wildcards) and ``port``.

    Without an address, a family the machine lacks (no IPv6: EADDRNOTAVAIL or
    EAFNOSUPPORT) is skipped as long as the other one binds.

    Raises:
        OSError: the address is in use or not available (or no family binds).
    """
    hosts = [address] if address else ["0.0.0.0", "::"]
    sockets: list[socket.socket] = []
    last: OSError | None = None
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            if address is None and exc.errno in _MISSING_FAMILY:
                last = exc
                continue
            raise
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if address is None and exc.errno in _MISSING_FAMILY:
                last = exc
                continue
            for done in sockets:
                done.close()
            raise
        sock.listen(BACKLOG)
        sock.setblocking(False)
        sockets.append(sock)
    if not sockets:
        raise last or OSError(errno.EADDRNOTAVAIL, "no address to listen on")
    return sockets
