"""Primitive codecs: vectors seen in the captures, every split, and junk."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from backupd.errors import ProtocolError
from backupd.protocol.constants import MsgCode
from backupd.protocol.mux import MuxDecoder, MuxFrame, encode_frame
from backupd.protocol.wire import (
    ByteReader,
    NdxDecoder,
    NdxEncoder,
    decode_varint,
    decode_varlong,
    decode_vstring,
    encode_varint,
    encode_varlong,
    encode_vstring,
)

VARINTS = [  # (value, wire hex) from rsync-protocol-a.md §1.1, each seen in a capture
    (0, "00"), (1, "01"), (200, "80c8"), (0x1FF, "81ff"), (0x2C01, "ac01"), (12345, "b039"),
    (65534, "c0feff"), (123456789, "e715cd5b"), (-1, "f0ffffffff"),
]
VARLONGS = [  # (value, min bytes, wire hex) from §1.2 and rsync-protocol-b.md §9.2
    (0, 3, "000000"), (12, 3, "000c00"), (4096, 3, "000010"), (5368709120, 3, "c100000040"),
    (1704164645, 4, "65257d93"), (4102444800, 4, "80005786f4"), (-302486400, 4, "f8806cf8edffffffff"),
    (575, 3, "003f02"), (59200, 3, "0040e7"),
]


@pytest.mark.parametrize(("value", "wire"), VARINTS)
def test_varint_vectors(value, wire):
    assert encode_varint(value).hex() == wire
    reader = ByteReader(bytes.fromhex(wire) + b"\x99")
    assert decode_varint(reader.read) == value
    assert reader.remaining == 1


@pytest.mark.parametrize(("value", "min_bytes", "wire"), VARLONGS)
def test_varlong_vectors(value, min_bytes, wire):
    assert encode_varlong(value, min_bytes).hex() == wire
    assert decode_varlong(ByteReader(bytes.fromhex(wire)).read, min_bytes) == value


@given(st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1))
def test_varint_round_trip(value):
    assert decode_varint(ByteReader(encode_varint(value)).read) == value


@given(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), st.sampled_from([3, 4]))
def test_varlong_round_trip(value, min_bytes):
    assert decode_varlong(ByteReader(encode_varlong(value, min_bytes)).read, min_bytes) == value


@given(st.binary(max_size=12))
@example(b"\xf8\x00\x00\x00\x00\x00")
def test_varint_junk_is_decoded_or_refused(junk):
    try:
        decode_varint(ByteReader(junk).read)
    except ProtocolError:
        pass


@given(st.binary(max_size=600))
def test_vstring_round_trip(data):
    assert decode_vstring(ByteReader(encode_vstring(data)).read) == data


def test_vstring_over_the_bound_is_refused():
    with pytest.raises(ProtocolError):
        decode_vstring(ByteReader(encode_vstring(b"x" * 300)).read, max_len=255)


NDX_SEQUENCE = [  # (value, wire hex) in order, one direction, from rsync-protocol-b.md §2.1
    (0, "01"), (1, "01"), (1, "fe0000"), (2, "01"), (1, "fe80010000"), (-1, "00"), (-102, "ff65"),
    (-2, "fffe80020000"), (40000, "fe80409c00"),
]


def test_ndx_sequence_matches_the_captures():
    enc = NdxEncoder()
    assert [enc.encode(v).hex() for v, _ in NDX_SEQUENCE] == [w for _, w in NDX_SEQUENCE]
    dec = NdxDecoder()
    reader = ByteReader(bytes.fromhex("".join(w for _, w in NDX_SEQUENCE)))
    assert [dec.decode(reader.read) for _ in NDX_SEQUENCE] == [v for v, _ in NDX_SEQUENCE]


@given(st.lists(st.one_of(st.integers(0, 1 << 31 - 1), st.integers(-(1 << 20), -1)), max_size=50))
def test_ndx_round_trip(values):
    enc, dec = NdxEncoder(), NdxDecoder()
    wire = b"".join(enc.encode(v) for v in values)
    reader = ByteReader(wire)
    assert [dec.decode(reader.read) for _ in values] == values
    assert reader.remaining == 0


FRAMES = [  # (wire hex, frame) from rsync-protocol-a.md §6.1 and the b- captures
    ("03000007" "010800", MuxFrame(MsgCode.DATA, bytes.fromhex("010800"))),
    ("00000007", MuxFrame(MsgCode.DATA, b"")),
    ("0400005d" "04000000", MuxFrame(MsgCode.ERROR_EXIT, bytes.fromhex("04000000"))),
    ("0400006b" "01000000", MuxFrame(MsgCode.SUCCESS, bytes.fromhex("01000000"))),
    ("0700006c" "6f6c642e747874", MuxFrame(MsgCode.DELETED, b"old.txt")),
]


def decode_all(wire: bytes, step: int) -> list[MuxFrame]:
    decoder, frames = MuxDecoder(), []
    for i in range(0, len(wire), step):
        decoder.feed(wire[i : i + step])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    return frames


@pytest.mark.parametrize("step", [1, 3, 1 << 20])
@pytest.mark.parametrize(("wire_hex", "frame"), FRAMES)
def test_frame_vectors_in_any_split(wire_hex, frame, step):
    assert decode_all(bytes.fromhex(wire_hex), step) == [frame]
    assert encode_frame(frame.code, frame.payload).hex() == wire_hex


@given(st.binary(max_size=64))
@example(bytes.fromhex("ffffffff"))
@example(bytes.fromhex("ffff000a"))
def test_frame_junk_is_decoded_exactly_or_refused(junk):
    try:
        frames = decode_all(junk, 1)
    except ProtocolError:
        return
    assert junk.startswith(b"".join(encode_frame(f.code, f.payload) for f in frames))


def test_oversized_message_is_refused_before_its_payload():
    decoder = MuxDecoder()
    decoder.feed(bytes.fromhex("ffff000a"))  # MSG_ERROR of 65535 bytes: "multiplexing overflow"
    with pytest.raises(ProtocolError):
        decoder.next_frame()
