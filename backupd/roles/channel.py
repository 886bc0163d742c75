"""Session I/O: raw handshake reads, the multiplexed input, and a writer thread.

Input (``Inbox``) is read by one thread only. Output (``Outbox``) is owned by
a writer thread so that neither the generator nor the receiver ever blocks on
the socket while the other needs it (rsync-protocol-b.md §1.3: read while
you write). Source of the framing: rsync io.c, rsync-protocol-a.md §6.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from backupd.errors import ExitCode, ProtocolError, RsyncError, StreamClosed
from backupd.protocol.constants import MPLEX_BASE, MsgCode
from backupd.protocol.mux import decode_header, encode_frame
from backupd.protocol.wire import Truncated
from backupd.transport.stream import Stream

READ_SIZE = 256 * 1024
FRAME_DATA_MAX = 256 * 1024
HIGH_WATER = 8 * 1024 * 1024
T = TypeVar("T")


def peer_exit(payload: bytes) -> StreamClosed:
    """The error for the peer's MSG_ERROR_EXIT (rsync io.c read_a_msg): the session ends with its code."""
    exit_code = int.from_bytes(payload[:4], "little") if len(payload) >= 4 else ExitCode.PARTIAL
    return StreamClosed(
        f"client aborted with exit code {exit_code}",
        ExitCode(exit_code) if exit_code in ExitCode._value2member_map_ else ExitCode.PROTOCOL,
    )


def stop_on_peer_exit(code: MsgCode, payload: bytes) -> None:
    """The Inbox's handler until a role sets its own: MSG_ERROR_EXIT ends the session, the rest is dropped.

    Without it a client that gives up while sending its filter or file list
    (``rsync -R a/../a``) would wait for a server that waits for more list.
    """
    if code == MsgCode.ERROR_EXIT:
        raise peer_exit(payload)


class Inbox:
    """Reads the peer's bytes: lines and raw bytes first, then the MSG_DATA stream.

    ``on_message(code, payload)`` receives every non-DATA frame.
    """

    def __init__(self, stream: Stream, timeout_s: float | None = None) -> None:
        self.stream = stream
        self._raw = bytearray()
        self._data = b""
        self._dpos = 0
        self.muxed = False
        self.bytes_read = 0
        self.timeout_s = timeout_s
        self.on_message: Callable[[MsgCode, bytes], None] = stop_on_peer_exit
        stream.settimeout(timeout_s)

    def _fill(self) -> None:
        try:
            chunk = self.stream.recv(READ_SIZE)
        except TimeoutError:
            raise RsyncError(f"io timeout after {self.timeout_s:g} seconds -- exiting", ExitCode.TIMEOUT) from None
        except OSError as exc:
            raise StreamClosed(f"connection read error: {exc.strerror or exc}") from None
        if not chunk:
            raise StreamClosed(f"connection unexpectedly closed ({self.bytes_read} bytes received so far)")
        self.bytes_read += len(chunk)
        self._raw += chunk

    def read_line(self, max_len: int = 4096) -> bytes:
        r"""One ``\n``-terminated line without the newline (pre-multiplex phase).

        Raises:
            ProtocolError: no newline within ``max_len`` bytes.
        """
        while True:
            end = self._raw.find(b"\n", 0, max_len + 1)
            if end >= 0:
                line = bytes(self._raw[:end])
                del self._raw[: end + 1]
                return line
            if len(self._raw) > max_len:
                raise ProtocolError(f"line longer than {max_len} bytes")
            self._fill()

    def read_raw(self, n: int) -> bytes:
        """Exactly ``n`` unframed bytes."""
        while len(self._raw) < n:
            self._fill()
        out = bytes(self._raw[:n])
        del self._raw[:n]
        return out

    def read_until_nul(self, max_len: int = 4096) -> bytes:
        """One NUL-terminated argument (without the NUL), pre-multiplex."""
        while True:
            end = self._raw.find(b"\0", 0, max_len + 1)
            if end >= 0:
                arg = bytes(self._raw[:end])
                del self._raw[: end + 1]
                return arg
            if len(self._raw) > max_len:
                raise ProtocolError(f"argument longer than {max_len} bytes")
            self._fill()

    def has_buffered(self) -> bool:
        """True when input has arrived that no read has taken yet (a read would not wait for the peer)."""
        return len(self._data) > self._dpos or bool(self._raw)

    def start_mux(self) -> None:
        """From now on the peer's bytes are multiplexed frames."""
        self.muxed = True

    def _next_data(self) -> bytes:
        """The payload of the next MSG_DATA frame; other frames go to ``on_message``."""
        while True:
            while len(self._raw) < 4:
                self._fill()
            code, length = decode_header(bytes(self._raw[:4]))
            while len(self._raw) < 4 + length:
                self._fill()
            payload = bytes(self._raw[4 : 4 + length])
            del self._raw[: 4 + length]
            if code != MsgCode.DATA:
                self.on_message(code, payload)
            elif payload:
                return payload

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes of the MSG_DATA stream, dispatching other frames."""
        pos = self._dpos
        end = pos + n
        if end <= len(self._data):
            self._dpos = end
            return self._data[pos:end]
        if not self.muxed:
            return self.read_raw(n)
        self._gather(n)
        self._dpos = n
        return self._data[:n]

    def decode(self, decode_at: Callable[[bytes, int], tuple[T, int]]) -> T:
        """One value that ``decode_at(data, pos) -> (value, end)`` decodes from the MSG_DATA stream.

        ``decode_at`` reads the received bytes in place (no call per field)
        and raises ``wire.Truncated`` when they end too soon; the next frames
        are then joined on and it decodes again from the same start.
        Multiplexed input only.
        """
        while True:
            try:
                value, end = decode_at(self._data, self._dpos)
            except Truncated as short:
                past_end = short.beyond(len(self._data))
                self._gather(len(self._data) - self._dpos + past_end)
                continue
            self._dpos = end
            return value

    def _gather(self, n: int) -> None:
        """Join frames until at least ``n`` unread bytes are buffered; they then start at offset 0."""
        parts = [self._data[self._dpos:]]
        have = len(parts[0])
        while have < n:
            payload = self._next_data()
            parts.append(payload)
            have += len(payload)
        self._data = b"".join(parts)
        self._dpos = 0

    def drain(self, limit_s: float = 5.0) -> None:
        """Read and drop input until EOF or ``limit_s`` seconds (polite close)."""
        deadline = time.monotonic() + limit_s
        try:
            self.stream.settimeout(0.5)
            while time.monotonic() < deadline:
                if not self.stream.recv(READ_SIZE):
                    return
        except OSError:
            return


class Outbox:
    """Buffered multiplexed output written by one writer thread.

    ``write`` appends protocol bytes (MSG_DATA), ``send_msg`` queues a message
    after the data written before it, ``flush`` hands the buffer to the
    writer. A keep-alive (empty MSG_DATA) goes out after ``keepalive_s`` of
    silence when set. Callers block only above HIGH_WATER queued bytes.
    """

    def __init__(self, stream: Stream, keepalive_s: float | None = None) -> None:
        self.stream = stream
        self.keepalive_s = keepalive_s
        self._buf = bytearray()
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._closing = False
        self.error: BaseException | None = None
        self.bytes_written = 0
        self.msgs_overtake = False
        self.flush_size = FRAME_DATA_MAX  # buffered data goes to the writer once it reaches this many bytes
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes to the MSG_DATA stream."""
        with self._cond:
            self._check()
            self._buf += data
            if len(self._buf) >= self.flush_size:
                self._move_buffer()
                while self._queued > HIGH_WATER and self.error is None:
                    self._cond.wait(1.0)

    def send_msg(self, code: MsgCode, payload: bytes = b"") -> None:
        """Queue a message frame after everything written so far. Never blocks long.

        With ``msgs_overtake`` set, after everything flushed so far only: the
        message goes ahead of data still in the buffer, as rsync's io.c sends
        its message buffer before buffered data (a push's generator sets it,
        so the client prints rsyncd's info lines where rsyncd's come).
        """
        with self._cond:
            if self.error is not None:
                return
            if not self.msgs_overtake:
                self._move_buffer()
            frame = encode_frame(code, payload)
            self._queue.append(frame)
            self._queued += len(frame)
            self._cond.notify_all()

    @property
    def buffered(self) -> int:
        """Bytes written but not yet handed to the writer (a flush would send them)."""
        return len(self._buf)

    def flush(self) -> None:
        """Hand buffered data to the writer thread."""
        with self._cond:
            self._check()
            self._move_buffer()

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush, wait for the writer to send everything, stop it."""
        with self._cond:
            self._move_buffer()
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _check(self) -> None:
        if self.error is not None:
            raise StreamClosed(f"connection write error: {self.error}")

    def _move_buffer(self) -> None:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            for start in range(0, len(data), FRAME_DATA_MAX):
                frame = encode_frame(MsgCode.DATA, data[start : start + FRAME_DATA_MAX])
                self._queue.append(frame)
                self._queued += len(frame)
            self._cond.notify_all()

    def _take(self) -> list[bytes] | None:
        with self._cond:
            while not self._queue and not self._closing:
                if not self._cond.wait(self.keepalive_s) and self.keepalive_s:
                    self._queue.append(((MPLEX_BASE + MsgCode.DATA) << 24).to_bytes(4, "little"))
                    self._queued += 4
            if not self._queue:
                return None
            items = list(self._queue)
            self._queue.clear()
            return items

    def _run(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            data = b"".join(items)
            try:
                self.stream.sendall(data)
            except OSError as exc:
                with self._cond:
                    self.error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._queued -= len(data)
                self.bytes_written += len(data)
                self._cond.notify_all()
