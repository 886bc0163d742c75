"""bind_listeners: the daemon's and the SSH port's listening sockets."""

from __future__ import annotations

import socket

import pytest

from backupd.transport.listen import bind_listeners


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_address_listens_and_accepts():
    port = _free_port()
    (sock,) = bind_listeners("127.0.0.1", port)
    try:
        assert sock.getsockname() == ("127.0.0.1", port)
        assert not sock.getblocking()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            sock.setblocking(True)
            conn, _ = sock.accept()
            conn.close()
    finally:
        sock.close()


def test_wildcards_bind_each_family_on_its_own():
    port = _free_port()
    sockets = bind_listeners(None, port)
    try:
        families = {s.family for s in sockets}
        assert socket.AF_INET in families
        for s in sockets:
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for s in sockets:
            s.close()


def test_address_in_use_raises_and_leaves_nothing_bound():
    port = _free_port()
    (first,) = bind_listeners("127.0.0.1", port)
    try:
        with pytest.raises(OSError):
            bind_listeners(None, port)  # 0.0.0.0 collides with 127.0.0.1's port
        with pytest.raises(OSError):
            bind_listeners("127.0.0.1", port)
    finally:
        first.close()
    again = bind_listeners(None, port)  # nothing of the failed tries is left holding the port
    for s in again:
        s.close()
