"""The xattr codec (protocol/xattrs.py): byte vectors from our own captures, round trips, junk.

Captures (tests/data/captures/daemon-*-xattrs*_c3.5.0.*) were recorded with
shared/tools/rsync-tap.py between the stock 3.5.0 client and stock rsyncd
3.5.0 (as root, module on XFS) for the tree SOURCE below, then CHANGE.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from backupd.errors import ProtocolError
from backupd.protocol.constants import ItemFlags
from backupd.protocol.flist import FlistDecoder
from backupd.protocol.mux import MuxDecoder
from backupd.protocol.wire import ByteReader, NdxEncoder, decode_varint, decode_vstring, encode_shortint
from backupd.protocol.xattrs import (
    XattrDecoder,
    XattrEncoder,
    XattrItem,
    XattrSet,
    decode_xattr_request,
    decode_xattr_values,
    encode_xattr_request,
    encode_xattr_values,
    keep_local_name,
    keep_removable_name,
    make_items,
    wire_name_in,
    wire_name_out,
    xattr_diff,
)

from .captures import CAPTURES, client_side
from .test_flist_captures import flist_options

HUGE = bytes(range(256)) * 24
SOURCE = {  # send order of the client (its directory scan), as in the capture
    ".": {},
    "sub": {b"user.dirattr": b"D" * 100},
    "a.txt": {b"user.small": b"hi"},
    "d.txt": {b"user.small": b"hi"},
    "big.txt": {b"user.huge": HUGE, b"user.mid": b"m" * 40},
    "sub/c.txt": {b"user.n%d" % i: b"v%d" % i for i in range(5)},
}
CHANGED_HUGE = bytes(range(255, -1, -1)) * 24

VECTORS = [  # (wire hex cut from daemon-push-xattrs_c3.5.0, local values)
    ("0000", {}),
    ("00010d64" + b"user.dirattr\0".hex() + hashlib.md5(b"D" * 100).hexdigest(), {b"user.dirattr": b"D" * 100}),
    ("00010b02" + b"user.small\0".hex() + "6869", {b"user.small": b"hi"}),
    (
        "00020a9800" + b"user.huge\0".hex() + "975c3b2d76c3d752793d82a7db1c4ede"
        "0928" + b"user.mid\0".hex() + "45a4f5c54b4efb2e8691ce2ac4020957",
        {b"user.huge": HUGE, b"user.mid": b"m" * 40},
    ),
]


def decode_all(wire: bytes, step: int, decoder: XattrDecoder | None = None) -> XattrSet:
    chunks = [wire[i : i + step] for i in range(0, len(wire), step)]
    buf = bytearray()

    def read(n: int) -> bytes:
        while len(buf) < n:
            if not chunks:
                raise ProtocolError("short")
            buf.extend(chunks.pop(0))
        out = bytes(buf[:n])
        del buf[:n]
        return out

    xset = (decoder or XattrDecoder()).decode(read)
    assert not buf and not chunks
    return xset


@pytest.mark.parametrize("step", [1, 3, 1 << 20])
@pytest.mark.parametrize(("wire_hex", "values"), VECTORS)
def test_capture_vector_decodes_and_encodes_back(wire_hex, values, step):
    wire = bytes.fromhex(wire_hex)
    assert decode_all(wire, step).items == make_items(values)
    assert XattrEncoder().encode(make_items(values))[0] == wire


def test_vector_with_trailing_bytes_leaves_them_unread():
    wire = bytes.fromhex(VECTORS[2][0]) + b"\x99\x98"
    reader = ByteReader(wire)
    XattrDecoder().decode(reader.read)
    assert reader.read(reader.remaining) == b"\x99\x98"


def test_abbreviated_digest_is_unseeded_md5():
    item = make_items({b"user.huge": HUGE})[0]
    assert item.abbreviated and item.digest == bytes.fromhex("975c3b2d76c3d752793d82a7db1c4ede")
    assert item.matches(HUGE) and not item.matches(CHANGED_HUGE) and not item.matches(None)


def test_equal_set_is_sent_as_a_reference():
    enc = XattrEncoder()
    blocks = [enc.encode(make_items(values))[0] for values in SOURCE.values()]
    assert blocks[3] == b"\x03"  # d.txt: same as set #2 (a.txt), as the client sent it
    dec = XattrDecoder()
    sets = [decode_all(b, 1 << 20, dec) for b in blocks]
    assert sets[3] is sets[2]


# ---------------------------------------------------------------- whole captures


def _push_flist_with_xattrs(name: str):
    side = client_side(name)
    assert side.opts.xattrs == 1
    reader = ByteReader(side.data)
    flist, xdec = FlistDecoder(flist_options(side.opts)), XattrDecoder(am_root=1, level=1)
    got = {}
    while (entry := flist.read_entry(reader.read)) is not None:
        got[entry.name.decode()] = xdec.decode(reader.read)
    return got, side, reader


def test_push_capture_file_list_carries_each_entrys_set():
    got, _, _ = _push_flist_with_xattrs("daemon-push-xattrs_c3.5.0")
    assert list(got) == list(SOURCE)
    for name, values in SOURCE.items():
        assert got[name].items == make_items(values), name


def test_push_capture_encodes_as_the_client_sent_it():
    side = client_side("daemon-push-xattrs_c3.5.0")
    enc = XattrEncoder()
    blocks = [enc.encode(make_items(v))[0] for v in SOURCE.values()]
    pos = 0
    for block in blocks:  # each block at its place, in order, in the client's stream
        pos = side.data.index(block, pos) + len(block)


def server_data(name: str) -> bytes:
    """The MSG_DATA stream server -> client of a daemon capture (after greeting, flags, seed)."""
    raw = (CAPTURES / f"{name}.s2c").read_bytes()
    reader = ByteReader(raw)
    for _ in range(2):
        while reader.read(1) != b"\n":
            pass
    decode_varint(reader.read)
    decode_vstring(reader.read)
    reader.read(4)
    mux = MuxDecoder()
    mux.feed(reader.read(reader.remaining))
    data = bytearray()
    while (frame := mux.next_frame()) is not None:
        if frame.code == 0:
            data += frame.payload
    return bytes(data)


def test_change_capture_request_and_answer():
    """An xattr-only change: the generator asks for user.huge (#1) of big.txt; the sender answers it."""
    sets, side, _ = _push_flist_with_xattrs("daemon-push-xattrs-change_c3.5.0")
    big = sets["big.txt"]
    assert [i.name for i in big.items] == [b"user.huge", b"user.mid"]
    ndx, flags = NdxEncoder(), encode_shortint(ItemFlags.REPORT_XATTR)
    # sorted: 0 ., 1 a.txt, 2 big.txt, 3 d.txt, 4 sub, 5 sub/c.txt; a.txt and c.txt need no value
    asked = [(1, []), (2, [1]), (5, [])]
    want = b"".join(ndx.encode(n) + flags + encode_xattr_request(nums) for n, nums in asked)
    assert server_data("daemon-push-xattrs-change_c3.5.0").startswith(want)
    echo, answers = NdxEncoder(), {2: [(1, CHANGED_HUGE)]}
    want = b"".join(echo.encode(n) + flags + encode_xattr_values(answers.get(n, [])) for n, _ in asked)
    assert want in side.data
    at = side.data.index(want)
    rest = ByteReader(side.data[at + 3 + 1 + 3 :])  # a.txt's echo and end; big.txt's header
    assert decode_xattr_values(rest.read, big) == {1: CHANGED_HUGE}


def test_pull_capture_server_answers_every_abbreviated_value():
    """A pull into an empty dir: the client asks for each value over 32 bytes; rsyncd answers in order."""
    data = server_data("daemon-pull-xattrs-new_c3.5.0")
    assert encode_xattr_values([(1, CHANGED_HUGE), (2, b"m" * 40)]) in data
    assert encode_xattr_values([(1, b"D" * 100)]) in data
    asked = client_side("daemon-pull-xattrs-new_c3.5.0").data
    assert b"\x01\x01\x00" in asked  # big.txt: #1 then #2 (+1)


# ---------------------------------------------------------------- round trips, junk

names = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b).map(lambda b: b"user." + b)
value_maps = st.dictionaries(names, st.binary(max_size=80), max_size=8)


@given(st.lists(value_maps, max_size=5))
def test_round_trip_through_the_cache(maps):
    enc, dec = XattrEncoder(), XattrDecoder(am_root=1, level=2)
    for values in maps:
        wire, sent = enc.encode(make_items(values))
        got = decode_all(wire, 1, dec)
        assert got.items == sent.items == make_items(values)
        assert got.ndx == sent.ndx


@given(st.binary(max_size=80))
@example(bytes.fromhex("0001"))  # count 1, then nothing
@example(bytes.fromhex("05"))  # reference past the cache
@example(bytes.fromhex("000103020000"))  # name without its NUL
@example(bytes.fromhex("0001028480808008"))  # value length over the bound
def test_junk_is_decoded_exactly_or_refused(junk):
    reader = ByteReader(junk)
    try:
        xset = XattrDecoder(am_root=1, level=2).decode(reader.read)
    except ProtocolError:
        return
    used = junk[: len(junk) - reader.remaining]
    assert XattrEncoder().encode(xset.items)[0] == used


@given(st.lists(st.integers(1, 40), unique=True, max_size=10))
def test_request_round_trip(nums):
    items = tuple(XattrItem(b"user.%d" % n, 33, None, bytes(16), n) for n in range(1, 41))
    xset = XattrSet(0, items)
    wire = encode_xattr_request(nums)
    assert [i.num for i in decode_xattr_request(ByteReader(wire).read, xset)] == nums


@given(st.dictionaries(st.integers(1, 6), st.binary(max_size=300), max_size=6))
def test_values_round_trip(pairs):
    items = tuple(XattrItem(b"user.%d" % n, 40, None, bytes(16), n) for n in range(1, 7))
    wire = encode_xattr_values(sorted(pairs.items()))
    assert decode_xattr_values(ByteReader(wire).read, XattrSet(0, items)) == pairs


def test_request_for_a_full_value_or_unknown_number_is_refused():
    xset = XattrSet(0, make_items({b"user.a": b"x", b"user.b": b"y" * 40}))
    assert [i.name for i in decode_xattr_request(ByteReader(b"\x02\x00").read, xset)] == [b"user.b"]
    for wire in (b"\x01\x00", b"\x05\x00", b"\x02\x00\x00"[:1] + b"\x7f\x00"):
        with pytest.raises(ProtocolError):
            decode_xattr_request(ByteReader(wire).read, xset)


# ---------------------------------------------------------------- name rules, diff


@pytest.mark.parametrize(
    ("name", "am_root", "level", "kept"),
    [
        (b"user.a", 0, 1, b"user.a"),
        (b"security.selinux", 0, 1, None),  # non-root keeps only user.*
        (b"security.selinux", 1, 1, b"security.selinux"),
        (b"trusted.t", -1, 1, b"user.rsync.trusted.t"),  # fake super: disguised
        (b"user.rsync.%stat", 1, 1, None),  # rsync.%FOO only with -XX
        (b"user.rsync.%stat", 1, 2, b"user.rsync.%stat"),
    ],
)
def test_received_names(name, am_root, level, kept):
    assert wire_name_in(name, am_root=am_root, level=level) == kept


def test_local_names_and_removal():
    assert not keep_local_name(b"system.posix_acl_access", am_root=1, sender=True, level=1)
    assert keep_local_name(b"security.x", am_root=1, sender=False, level=1)
    assert not keep_local_name(b"security.x", am_root=0, sender=False, level=1)
    assert not keep_local_name(b"user.rsync.%aacl", am_root=1, sender=True, level=1)
    assert keep_local_name(b"user.rsync.%aacl", am_root=1, sender=True, level=2)
    assert not keep_local_name(b"user.rsync.%stat", am_root=-1, sender=False, level=2)
    assert keep_removable_name(b"trusted.x", am_root=1) and not keep_removable_name(b"trusted.x", am_root=0)
    assert not keep_removable_name(b"user.rsync.%stat", am_root=-1)
    assert wire_name_out(b"user.rsync.security.x", am_root=-1) == b"security.x"
    assert wire_name_out(b"user.rsync.%stat", am_root=-1) == b"user.rsync.%stat"
    assert wire_name_out(b"user.rsync.security.x", am_root=1) == b"user.rsync.security.x"


def test_diff_flags_what_differs_and_the_values_to_fetch():
    items = make_items({b"user.huge": HUGE, b"user.small": b"hi"})
    assert xattr_diff(items, {b"user.huge": HUGE, b"user.small": b"hi"}) == (False, [])
    assert xattr_diff(items, {b"user.huge": HUGE, b"user.small": b"ho"}) == (True, [])
    assert xattr_diff(items, {b"user.small": b"hi"}) == (True, [items[0]])
    assert xattr_diff(items, None) == (True, [items[0]])
    assert xattr_diff(items, {b"user.huge": HUGE, b"user.small": b"hi", b"user.extra": b""})[0]
    assert xattr_diff((), {}) == (False, [])
