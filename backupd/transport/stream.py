"""The byte stream a session runs on: a socket, or a pair of file descriptors."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
import time
from typing import Protocol


class Stream(Protocol):
    """What a session needs from its transport (a subset of socket.socket)."""

    def recv(self, n: int) -> bytes: ...  # noqa: D102 - b"" at end of stream

    def sendall(self, data: bytes | memoryview) -> None: ...  # noqa: D102

    def settimeout(self, seconds: float | None) -> None: ...  # noqa: D102

    def shutdown(self, how: int) -> None: ...  # noqa: D102

    def close(self) -> None: ...  # noqa: D102


QUICKACK_BELOW = 64 * 1024  # QuickAckSocket: a read this short may leave the client waiting for our ACK


class QuickAckSocket(socket.socket):
    """A TCP connection that acknowledges a short read at once (TCP_QUICKACK, re-armed after each).

    rsync's client writes some messages in two pieces (``--server`` and the
    rest of the arguments, a vstring's length and its bytes) without
    TCP_NODELAY, so its kernel holds the second piece until the first is
    acknowledged, and Linux may delay that ACK by 40 ms. Every rsyncd
    session waits out two such delays before its file list, about 85 ms on
    loopback; acknowledging at once removes them. ``TCP_QUICKACK`` is not
    sticky, hence the re-arming; a read of QUICKACK_BELOW bytes or more is
    bulk data, whose full segments the kernel acknowledges promptly anyway.
    """

    __slots__ = ()

    @classmethod
    def adopt(cls, conn: socket.socket) -> QuickAckSocket:
        """The same connection (fd, options, timeout) as a QuickAckSocket; ``conn`` is detached."""
        timeout = conn.gettimeout()
        sock = cls(conn.family, conn.type, conn.proto, fileno=conn.detach())
        sock.settimeout(timeout)
        return sock

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """``socket.recv``; a short read sends its ACK now."""
        data = super().recv(bufsize, flags)
        if 0 < len(data) < QUICKACK_BELOW:
            try:
                self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:  # closed under us: the next call says so
                pass
        return data


class FdStream:
    """A Stream over two file descriptors (stdin/stdout, or a pipe pair)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self._timeout: float | None = None

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at end of stream. Raises TimeoutError."""
        if self._timeout is not None:
            import select

            ready, _, _ = select.select([self.read_fd], [], [], self._timeout)
            if not ready:
                raise TimeoutError("read timed out")
        return os.read(self.read_fd, n)

    def sendall(self, data: bytes | memoryview) -> None:
        """Write everything."""
        view = memoryview(data)
        while view:
            written = os.write(self.write_fd, view)
            view = view[written:]

    def settimeout(self, seconds: float | None) -> None:
        """Timeout for recv, in seconds (None = block)."""
        self._timeout = seconds

    def shutdown(self, how: int) -> None:
        """Close the write side for SHUT_WR / SHUT_RDWR."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        """Close both descriptors."""
        for fd in {self.read_fd, self.write_fd}:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.read_fd = self.write_fd = -1


def abort(stream: Stream, flush_s: float = 2.0) -> None:
    """Close ``stream`` the way rsyncd's process exits after a fatal error.

    rsyncd exits without reading what the client sent, so its kernel answers
    with a TCP reset and the client prints ``read error: Connection reset by
    peer (104)`` after the daemon's error lines. On a socket this waits up to
    ``flush_s`` seconds until everything written was acknowledged (SIOCOUTQ),
    then closes with SO_LINGER 0 (a reset, never a FIN). Any other stream is
    just closed. Never raises.
    """
    sock = stream if isinstance(stream, socket.socket) else None
    if sock is not None and sock.fileno() >= 0:
        deadline = time.monotonic() + flush_s
        try:
            while time.monotonic() < deadline and _unacked(sock) > 0:
                time.sleep(0.01)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    try:
        stream.close()
    except OSError:
        pass


def _unacked(sock: socket.socket) -> int:
    """Bytes written to ``sock`` that the peer has not acknowledged yet (Linux SIOCOUTQ)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]
