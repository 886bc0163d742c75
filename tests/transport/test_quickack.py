"""A session's TCP connection acknowledges short reads at once (stream.QuickAckSocket)."""

from __future__ import annotations

import socket

import pytest

from backupd.transport.stream import QUICKACK_BELOW, QuickAckSocket


@pytest.fixture
def pair():
    """(client, server side) of a loopback TCP connection, the server side as accepted."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    yield client, server
    client.close()
    server.close()


def _ping_pong(client, server, reply: bytes = b"r") -> None:
    """What puts Linux into delayed-ACK (interactive) mode: a read answered at once."""
    client.sendall(b"a")
    assert server.recv(16) == b"a"
    server.sendall(reply)
    assert client.recv(16) == reply


def _quickack(sock) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)


def test_a_plain_socket_delays_its_acks_after_a_ping_pong(pair) -> None:
    """The control: what rsyncd's connection does, and why its client waits."""
    client, server = pair
    _ping_pong(client, server)
    client.sendall(b"b")
    assert server.recv(16) == b"b"
    assert _quickack(server) == 0


def test_a_short_read_acknowledges_at_once_every_time(pair) -> None:
    client, server = pair
    server.settimeout(7.5)
    fd = server.fileno()
    sock = QuickAckSocket.adopt(server)
    assert (sock.fileno(), sock.gettimeout(), server.fileno()) == (fd, 7.5, -1)  # the same connection
    _ping_pong(client, sock)  # our answer puts the kernel back into delayed-ACK mode...
    client.sendall(b"b")
    assert sock.recv(16) == b"b"
    assert _quickack(sock) == 1  # ...and the next short read re-arms it (not sticky)
    sock.close()


class _Counting(QuickAckSocket):
    __slots__ = ()
    armed = 0

    def setsockopt(self, *args) -> None:
        if args[:2] == (socket.IPPROTO_TCP, socket.TCP_QUICKACK):
            type(self).armed += 1
        super().setsockopt(*args)


def test_only_short_reads_rearm(pair) -> None:
    """Bulk data (reads of QUICKACK_BELOW or more) costs no extra system call."""
    client, server = pair
    sock = _Counting.adopt(server)
    client.sendall(b"x" * (8 * QUICKACK_BELOW))
    client.shutdown(socket.SHUT_WR)
    sizes = []
    while data := sock.recv(4 * QUICKACK_BELOW):
        sizes.append(len(data))
    assert sum(sizes) == 8 * QUICKACK_BELOW
    assert _Counting.armed == sum(1 for n in sizes if n < QUICKACK_BELOW)
    assert any(n >= QUICKACK_BELOW for n in sizes)
    sock.close()
