"""Primitive rsync encodings: int32, shortint, varint, varlong, vstring, ndx.

Decoders take ``read(n) -> bytes``, a callable that returns exactly ``n``
bytes or raises (``ProtocolError`` / ``StreamClosed``). Every length read from
the wire is bounded by the caller before anything is allocated.
Source: rsync io.c write_varint/read_varint, write_varlong/read_varlong,
write_vstring, write_ndx/read_ndx (protocols 30-32), write_longint/read_longint
and the plain int32 ndx of protocols 27-29; rsync-protocol-a.md §1.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from backupd.errors import ProtocolError
from backupd.protocol.constants import NDX_DONE

Read = Callable[[int], bytes]

_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_I64 = struct.Struct("<q")
_LONGINT_ESCAPE = b"\xff\xff\xff\xff"


class ByteReader:
    """A ``read(n)`` over an in-memory buffer; short reads raise ProtocolError."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = bytes(data)
        self.pos = 0

    def read(self, n: int) -> bytes:
        """Return exactly ``n`` bytes. Raises ProtocolError past the end."""
        end = self.pos + n
        if n < 0 or end > len(self._data):
            raise ProtocolError(f"truncated: wanted {n} bytes at offset {self.pos} of {len(self._data)}")
        chunk = self._data[self.pos : end]
        self.pos = end
        return chunk

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self.pos


def encode_int32(value: int) -> bytes:
    """Signed 32-bit little-endian (io.c write_int)."""
    return _I32.pack(value)


def decode_int32(read: Read) -> int:
    """Read a signed 32-bit little-endian int."""
    return _I32.unpack(read(4))[0]


def encode_shortint(value: int) -> bytes:
    """Unsigned 16-bit little-endian (io.c write_shortint; iflags)."""
    return _U16.pack(value & 0xFFFF)


def decode_shortint(read: Read) -> int:
    """Read an unsigned 16-bit little-endian int."""
    return _U16.unpack(read(2))[0]


def encode_longint(value: int) -> bytes:
    """A 64-bit value as protocols < 30 send it (io.c write_longint).

    Wire: int32 when ``0 <= value <= 0x7FFFFFFF``, else ``ff ff ff ff`` and
    the value as int64 little-endian (12 bytes).
    """
    if 0 <= value <= 0x7FFFFFFF:
        return _I32.pack(value)
    return _LONGINT_ESCAPE + _I64.pack(value)


def decode_longint(read: Read) -> int:
    """Read a longint (io.c read_longint): an int32, or -1 then an int64."""
    head = read(4)
    if head != _LONGINT_ESCAPE:
        return _I32.unpack(head)[0]
    return _I64.unpack(read(8))[0]


def encode_varint(value: int) -> bytes:
    """rsync varint: 1-5 bytes; negative int32 values take 5 bytes.

    Source: io.c write_varint. Raises ProtocolError if ``value`` is outside int32/uint32.
    """
    if not -(1 << 31) <= value < (1 << 32):
        raise ProtocolError(f"varint {value} outside 32 bits")
    b = (value & 0xFFFFFFFF).to_bytes(4, "little")
    n = 4
    while n > 1 and b[n - 1] == 0:
        n -= 1
    top = b[n - 1]
    if top >= 1 << (8 - n):
        return bytes([(0xFF << (8 - n)) & 0xFF]) + b[:n]
    if n == 1:
        return b[:1]
    return bytes([top | ((0xFF << (9 - n)) & 0xFF)]) + b[: n - 1]


def _count_lead_ones(lead: int) -> int:
    extra = 0
    while extra < 8 and lead & (0x80 >> extra):
        extra += 1
    return extra


_LEAD_ONES = bytes(_count_lead_ones(lead) for lead in range(256))  # lead byte -> extra bytes


class Truncated(Exception):
    """A buffer decoder ran out of bytes: ``end`` is the buffer length the value needs so far.

    Raised by the ``*_at`` decoders, which read from bytes already received
    instead of calling ``read`` per field; the caller gets more bytes and
    decodes again from the same start.
    """

    def __init__(self, end: int) -> None:
        super().__init__(end)
        self.end = end

    def beyond(self, have: int) -> int:
        """How many bytes past the ``have`` held the decoder needs.

        Raises:
            RuntimeError: none (a decoder that asks for bytes it had would loop forever).
        """
        if self.end <= have:
            raise RuntimeError(f"decoder wanted {self.end} of the {have} bytes it had")
        return self.end - have


def decode_varint(read: Read) -> int:
    """Read an rsync varint as a signed int32.

    Raises:
        ProtocolError: a lead byte announcing more than 4 extra bytes (F8-FF).
    """
    lead = read(1)[0]
    if lead < 0x80:  # one byte: most values on the wire
        return lead
    return _varint_value(lead, read(_varint_extra(lead)))


def varint_at(data: bytes, pos: int) -> tuple[int, int]:
    """:func:`decode_varint` from ``data[pos:]``: (value, position after it).

    Raises:
        Truncated: ``data`` ends inside the varint.
        ProtocolError: as decode_varint.
    """
    if pos >= len(data):
        raise Truncated(pos + 1)
    lead = data[pos]
    if lead < 0x80:
        return lead, pos + 1
    end = pos + 1 + _varint_extra(lead)
    if end > len(data):
        raise Truncated(end)
    return _varint_value(lead, data[pos + 1:end]), end


def _varint_extra(lead: int) -> int:
    extra = _LEAD_ONES[lead]
    if extra > 4:
        raise ProtocolError(f"bad varint lead byte {lead:#04x}")
    return extra


def _varint_value(lead: int, low: bytes) -> int:
    """io.c read_varint: the low bytes, then what the lead byte's unflagged bits hold."""
    extra = len(low)
    if extra == 4:  # the lead byte adds nothing: a signed int32
        return int.from_bytes(low, "little", signed=True)
    value = int.from_bytes(low, "little") | (lead & ((1 << (8 - extra)) - 1)) << (8 * extra)
    return value - (1 << 32) if value & 0x80000000 else value


def encode_varlong(value: int, min_bytes: int) -> bytes:
    """rsync varlong with at least ``min_bytes`` bytes (3 for sizes, 4 for times).

    Source: io.c write_varlong. The lead byte holds the most significant bits.
    """
    b = (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
    n = 8
    while n > min_bytes and b[n - 1] == 0:
        n -= 1
    top = b[n - 1]
    if top >= 1 << (7 - n + min_bytes):
        lead = (0xFF << (8 - (n - min_bytes + 1))) & 0xFF
        return bytes([lead]) + b[:n]
    if n > min_bytes:
        lead = top | ((0xFF << (8 - (n - min_bytes))) & 0xFF)
        return bytes([lead]) + b[: n - 1]
    return bytes([top]) + b[: n - 1]


def decode_varlong(read: Read, min_bytes: int) -> int:
    """Read an rsync varlong as a signed int64.

    Raises:
        ProtocolError: more than 8 value bytes announced.
    """
    head = read(min_bytes)
    lead = head[0]
    if lead < 0x80:  # no extra bytes: the value is head[1:] with lead on top
        return int.from_bytes(head[1:], "little") | lead << (8 * (min_bytes - 1))
    extra = _varlong_extra(lead, min_bytes)
    return _varlong_value(lead, extra, head[1:] + read(extra))


def varlong_at(data: bytes, pos: int, min_bytes: int) -> tuple[int, int]:
    """:func:`decode_varlong` from ``data[pos:]``: (value, position after it).

    Raises:
        Truncated: ``data`` ends inside the varlong.
        ProtocolError: as decode_varlong.
    """
    end = pos + min_bytes
    if end > len(data):
        raise Truncated(end)
    lead = data[pos]
    if lead < 0x80:
        return int.from_bytes(data[pos + 1:end], "little") | lead << (8 * (min_bytes - 1)), end
    extra = _varlong_extra(lead, min_bytes)
    if end + extra > len(data):
        raise Truncated(end + extra)
    return _varlong_value(lead, extra, data[pos + 1:end + extra]), end + extra


def _varlong_extra(lead: int, min_bytes: int) -> int:
    extra = _LEAD_ONES[lead]
    if min_bytes - 1 + extra > 8:
        raise ProtocolError(f"bad varlong lead byte {lead:#04x}")
    return extra


def _varlong_value(lead: int, extra: int, low: bytes) -> int:
    """io.c read_varlong: ``min_bytes - 1 + extra`` low bytes, the lead byte's unflagged bits on top."""
    if extra:
        lead &= (1 << (8 - extra)) - 1
    raw = low + bytes([lead]) if len(low) < 8 else low
    value = int.from_bytes(raw[:8], "little")
    return value - (1 << 64) if value >= 1 << 63 else value


def encode_vstring(data: bytes) -> bytes:
    """Length-prefixed string (io.c write_vstring); at most 0x7FFF bytes."""
    n = len(data)
    if n > 0x7FFF:
        raise ProtocolError(f"vstring of {n} bytes exceeds 32767")
    head = bytes([n]) if n < 0x80 else bytes([0x80 | n >> 8, n & 0xFF])
    return head + data


def decode_vstring(read: Read, max_len: int = 0x7FFF) -> bytes:
    """Read a vstring of at most ``max_len`` bytes. Raises ProtocolError above it."""
    n = read(1)[0]
    if n & 0x80:
        n = (n & 0x7F) << 8 | read(1)[0]
    if n > max_len:
        raise ProtocolError(f"vstring of {n} bytes exceeds {max_len}")
    return read(n)


class NdxEncoder:
    """Writes file-list indexes for one direction (io.c write_ndx).

    Protocol >= 30: the difference coding below; protocols < 30: a plain
    int32 (``NDX_DONE`` is ``ff ff ff ff``).
    """

    def __init__(self, protocol: int = 32) -> None:
        self._prev_pos = -1
        self._prev_neg = 1
        self._legacy = protocol < 30

    def encode(self, ndx: int) -> bytes:
        """Return the wire bytes of ``ndx`` and advance this direction's state."""
        if self._legacy:
            return _I32.pack(ndx)
        if ndx == NDX_DONE:
            return b"\x00"
        if ndx >= 0:
            value, diff, prefix = ndx, ndx - self._prev_pos, b""
            self._prev_pos = ndx
        else:
            value = -ndx
            diff, prefix = value - self._prev_neg, b"\xff"
            self._prev_neg = value
        if 0 < diff < 0xFE:
            return prefix + bytes([diff])
        if 0 <= diff <= 0x7FFF:
            return prefix + bytes([0xFE, diff >> 8, diff & 0xFF])
        return prefix + bytes([0xFE, 0x80 | (value >> 24), value & 0xFF, (value >> 8) & 0xFF, (value >> 16) & 0xFF])


class NdxDecoder:
    """Reads file-list indexes for one direction (io.c read_ndx; int32 below protocol 30)."""

    def __init__(self, protocol: int = 32) -> None:
        self._prev_pos = -1
        self._prev_neg = 1
        self._legacy = protocol < 30

    def decode(self, read: Read) -> int:
        """Read one ndx. Raises ProtocolError for a value above 0x7FFFFFFF."""
        if self._legacy:
            return _I32.unpack(read(4))[0]
        b = read(1)[0]
        if b == 0:
            return NDX_DONE
        negative = b == 0xFF
        if negative:
            b = read(1)[0]
        prev = self._prev_neg if negative else self._prev_pos
        if b == 0xFE:
            hi, lo = read(2)
            if hi & 0x80:
                rest = read(2)
                value = ((hi & 0x7F) << 24) | lo | (rest[0] << 8) | (rest[1] << 16)
            else:
                value = prev + ((hi << 8) | lo)
        else:
            value = prev + b
        if value > 0x7FFFFFFF:
            raise ProtocolError(f"ndx {value} above 0x7fffffff")
        if negative:
            self._prev_neg = value
            return -value
        self._prev_pos = value
        return value
