"""Multiplexed frames of protocol >= 30: MuxDecoder and encode_frame.

Wire: 4-byte little-endian header ``(MPLEX_BASE + code) << 24 | length``, then
``length`` bytes (0 .. 16 MiB - 1). Source: rsync io.c, rsync-protocol-a.md §6.
"""

from __future__ import annotations

from dataclasses import dataclass

from backupd.errors import ProtocolError
from backupd.protocol.constants import MAX_FRAME_PAYLOAD, MAX_MSG_PAYLOAD, MPLEX_BASE, MsgCode

_TAGS = frozenset(int(c) for c in MsgCode)


@dataclass(frozen=True)
class MuxFrame:
    """One multiplexed message: its code and payload bytes."""

    code: MsgCode
    payload: bytes


def encode_frame(code: MsgCode, payload: bytes | memoryview = b"") -> bytes:
    """Return header + payload. Raises ProtocolError above 0xFFFFFF bytes."""
    n = len(payload)
    if n > MAX_FRAME_PAYLOAD:
        raise ProtocolError(f"frame payload of {n} bytes exceeds {MAX_FRAME_PAYLOAD}")
    return (((MPLEX_BASE + code) << 24) | n).to_bytes(4, "little") + bytes(payload)


def decode_header(header: bytes) -> tuple[MsgCode, int]:
    """Split a 4-byte frame header into (code, payload length).

    Raises:
        ProtocolError: unknown tag, or a non-DATA message over 5120 bytes
            (rsync io.c treats those as "multiplexing overflow").
    """
    value = int.from_bytes(header, "little")
    tag = (value >> 24) - MPLEX_BASE
    length = value & MAX_FRAME_PAYLOAD
    if tag not in _TAGS:
        raise ProtocolError(f"multiplex header {value:#010x}: unknown tag {tag}")
    if tag != MsgCode.DATA and length > MAX_MSG_PAYLOAD:
        raise ProtocolError(f"multiplexing overflow: message {tag} of {length} bytes")
    return MsgCode(tag), length


class MuxDecoder:
    """Splits a multiplexed rsync stream into frames; never reads or blocks."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> None:
        """Append received bytes."""
        self._buf += data

    def next_frame(self) -> MuxFrame | None:
        """Return the next whole frame, or None until more bytes are fed.

        Raises:
            ProtocolError: see decode_header; raised before the payload is kept.
        """
        if len(self._buf) < 4:
            return None
        code, length = decode_header(bytes(self._buf[:4]))
        end = 4 + length
        if len(self._buf) < end:
            return None
        frame = MuxFrame(code, bytes(self._buf[4:end]))
        del self._buf[:end]
        return frame
