"""The multiplexed output: what stays buffered, what a flush sends, what a message overtakes."""

from __future__ import annotations

import socket

from backupd.protocol.constants import MsgCode
from backupd.protocol.mux import encode_frame
from backupd.roles.channel import Outbox


def received(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += sock.recv(n - len(data))
    return data


def nothing_waiting(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(None)
    return False


def test_buffered_bytes_wait_for_a_flush_and_messages_may_overtake_them():
    ours, peer = socket.socketpair()
    with ours, peer:
        out = Outbox(ours)
        out.msgs_overtake = True
        out.write(b"\x00\x01")
        out.write(b"\x02")
        assert out.buffered == 3
        assert nothing_waiting(peer)  # below the frame size: held
        out.send_msg(MsgCode.INFO, b"hi\n")  # goes ahead of the held data (rsync io.c's msg buffer)
        assert out.buffered == 3
        info = encode_frame(MsgCode.INFO, b"hi\n")
        assert received(peer, len(info)) == info
        out.flush()
        assert out.buffered == 0
        data = encode_frame(MsgCode.DATA, b"\x00\x01\x02")
        assert received(peer, len(data)) == data
        out.close()
