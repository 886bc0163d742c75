"""Protocols 27-29: the legacy file-list codec, int32 ndx, longint and md4_old sums.

Byte by byte against real sessions (stock 3.5.0 client with --protocol=N and
stock 3.5.0 rsyncd; see legacy_captures.py), and a hypothesis round trip.
"""

from __future__ import annotations

import random
import stat

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from backupd.errors import ProtocolError
from backupd.protocol.constants import NDX_DONE
from backupd.protocol.flist import FileEntry, FlistOptions, legacy_sort_key, sort_key_for
from backupd.protocol.flist_legacy import LegacyFlistDecoder, LegacyFlistEncoder, new_flist_decoder
from backupd.protocol.sums import Checksum, SumHead, decode_sum_head
from backupd.protocol.wire import ByteReader, NdxDecoder, NdxEncoder, decode_longint, encode_longint

from .legacy_captures import legacy_flist_options, legacy_session

# (capture, whose list): the client's list of a push, the server's of a pull
LISTS = [
    ("daemon-push-proto29", "client"),
    ("legacy-push-aH-p29", "client"),
    ("legacy-push-aH-p28", "client"),
    ("legacy-push-aH-p27", "client"),
    ("legacy-pull-aH-p29", "server"),
    ("legacy-pull-aH-p28", "server"),
    ("legacy-pull-aH-p27", "server"),
    ("legacy-pull-delta-p29", "server"),
]
AH_NAMES = [b".", b"fifo", b"chr", b"empty", b"link", b"hello.txt", b"sub", b"sub/hl", b"sub/inner.txt"]
T_CAPTURE = 1704164645  # 2024-01-02 03:04:05 UTC, every mtime of the recorded trees


def _decode(name: str, side: str, step: int = 1 << 20):
    """Decode the list, its id lists and io_error from the capture, ``step`` bytes fed at a time."""
    s = legacy_session(name)
    data = s.client if side == "client" else s.server
    fopts = legacy_flist_options(s.opts, s.protocol)
    decoder = LegacyFlistDecoder(fopts)
    r = ByteReader(data)
    while decoder.read_entry(r.read) is not None:
        pass
    end = r.pos
    ids = decoder.read_id_lists(r.read)
    return s, fopts, decoder, data[: r.pos], end, ids


@pytest.mark.parametrize(("name", "side"), LISTS)
def test_captured_list_decodes_to_the_recorded_tree(name, side):
    s, _, decoder, _, _, ids = _decode(name, side)
    entries = decoder.wire_entries
    assert decoder.io_error == 0
    assert ids == ({}, {})  # every file is root's: id 0 is never listed
    assert all(e.mtime == T_CAPTURE for e in entries)
    if "aH" not in name:
        return
    assert [e.name for e in entries] == AH_NAMES
    by = {e.name: e for e in entries}
    assert by[b"chr"].is_device and (by[b"chr"].rdev_major, by[b"chr"].rdev_minor) == (1, 3)
    assert by[b"fifo"].is_special and by[b"link"].link_target == b"hello.txt"
    assert by[b"hello.txt"].hlink_group == by[b"sub/hl"].hlink_group == 5
    assert by[b"empty"].hlink_group is None  # 27: a group of one is dissolved
    assert by[b"."].xflags == 1 and by[b"sub"].xflags == 0  # TOP_DIR only below 30
    assert by[b"hello.txt"].size == 12 and stat.S_IMODE(by[b"hello.txt"].mode) == 0o644


@pytest.mark.parametrize(("name", "side"), LISTS)
def test_reencoding_gives_the_captured_bytes(name, side):
    """Entries, the 00 end byte, both id lists and the int32 io_error, byte for byte."""
    s, fopts, decoder, wire, end, (users, groups) = _decode(name, side)
    index = {id(e): i for i, e in enumerate(decoder.wire_entries)}
    encoder = LegacyFlistEncoder(fopts, dev_ino=lambda e: decoder.dev_ino[index[id(e)]])
    out = b"".join(encoder.encode_entry(e) for e in decoder.wire_entries) + encoder.encode_end()
    assert out.hex() == wire[:end].hex()
    tail = encoder.encode_id_lists(users, groups) + (0).to_bytes(4, "little")
    assert (out + tail).hex() == wire.hex()


@pytest.mark.parametrize("step", [1, 3, 7])
@pytest.mark.parametrize(("name", "side"), LISTS[:2] + LISTS[4:5])
def test_decoding_in_small_reads_gives_the_same_entries(name, side, step):
    whole = _decode(name, side)[2].wire_entries
    s = legacy_session(name)
    data = s.client if side == "client" else s.server
    buf = bytearray()
    pos = 0

    def read(n: int) -> bytes:  # hands out at most ``step`` new bytes per call, as a trickling peer
        nonlocal pos
        while len(buf) < n:
            buf.extend(data[pos : pos + step])
            pos += step
            if pos > len(data) + step:
                raise ProtocolError("truncated")
        out = bytes(buf[:n])
        del buf[:n]
        return out

    decoder = LegacyFlistDecoder(legacy_flist_options(s.opts, s.protocol))
    while decoder.read_entry(read) is not None:
        pass
    assert decoder.wire_entries == whole


def test_the_legacy_sort_is_strcmp_of_the_whole_path():
    """Protocols 27-28 sort as rsync's f_name_cmp with t_PATH = t_ITEM: the order the 28 client asked in."""
    _, _, decoder, _, _, _ = _decode("legacy-pull-aH-p28", "server")
    ordered = sorted(decoder.wire_entries, key=lambda e: legacy_sort_key(e.name, e.is_dir))
    names = [e.name for e in ordered]
    assert names == [b".", b"chr", b"empty", b"fifo", b"hello.txt", b"link", b"sub", b"sub/hl", b"sub/inner.txt"]
    s = legacy_session("legacy-pull-aH-p28")
    requests = ByteReader(s.client[4:])  # after the empty filter list
    asked = []
    while (ndx := NdxDecoder(28).decode(requests.read)) != NDX_DONE:
        asked.append(names[ndx])
        decode_sum_head(requests.read(16))  # no iflags below 29: the sum head follows the ndx
    assert asked == [b"empty", b"sub/hl", b"sub/inner.txt"]  # hello.txt is linked to sub/hl
    assert sort_key_for(29) is not legacy_sort_key and sort_key_for(27) is legacy_sort_key


NDX_VECTORS = [  # (wire hex, value): int32 little-endian below protocol 30
    ("02000000", 2),
    ("ffffffff", NDX_DONE),
    ("07000000", 7),
    ("fdffffff", -3),
]


@pytest.mark.parametrize(("wire", "value"), NDX_VECTORS)
@pytest.mark.parametrize("protocol", [27, 28, 29])
def test_ndx_is_a_plain_int32(wire, value, protocol):
    assert NdxEncoder(protocol).encode(value).hex() == wire
    assert NdxDecoder(protocol).decode(ByteReader(bytes.fromhex(wire)).read) == value


def test_captured_requests_of_protocol_29_carry_iflags():
    s = legacy_session("legacy-pull-aH-p29")
    r = ByteReader(s.client[4:])
    ndx = NdxDecoder(29)
    assert ndx.decode(r.read) == 0 and r.read(2).hex() == "0060"  # ".": IS_NEW | LOCAL_CHANGE
    assert ndx.decode(r.read) == 1 and r.read(2).hex() == "0260"


LONGINT_VECTORS = [  # io.c write_longint
    ("00100000", 4096),
    ("ffffffff" "0000000002000000", 1 << 33),
    ("ffffffff" "fbffffffffffffff", -5),
    ("ffffff7f", 0x7FFFFFFF),
    ("ffffffff" "0000008000000000", 0x80000000),
]


@pytest.mark.parametrize(("wire", "value"), LONGINT_VECTORS)
def test_longint_vectors(wire, value):
    assert encode_longint(value).hex() == wire
    assert decode_longint(ByteReader(bytes.fromhex(wire)).read) == value


def test_md4_old_file_sums_of_a_captured_push():
    """CSUM_MD4_OLD: MD4 of the 4 seed bytes, then the data (checksum.c sum_init)."""
    s = legacy_session("daemon-push-proto29")
    checksum = Checksum("md4_old", s.seed)
    empty = checksum.file_sum_hasher().digest()
    hello = checksum.file_sum_hasher()
    hello.update(b"hello world\n")
    assert empty.hex() in s.client.hex() and hello.digest().hex() in s.client.hex()
    assert empty.hex() == "9d6ec7d5c8c91db5c0031bc2df3047da"


def _delta_files() -> tuple[bytes, bytes]:
    """The module's big.bin and the client's older copy in legacy-pull-delta-p29."""
    new = random.Random(5).randbytes(5000)
    old = bytearray(new)
    old[2500:2510] = b"X" * 10
    return new, bytes(old)


def test_md4_old_block_sums_of_a_captured_pull():
    """The client generator's sums: sum1, then md4(block + seed) cut to s2length (get_checksum2)."""
    new, old = _delta_files()
    s = legacy_session("legacy-pull-delta-p29")
    r = ByteReader(s.client[4:])
    assert NdxDecoder(29).decode(r.read) == 0 and r.read(2).hex() == "0880"
    head = decode_sum_head(r.read(16))
    assert head == SumHead(8, 700, 2, 100)
    checksum = Checksum("md4_old", s.seed)
    for i in range(head.count):
        block = old[i * 700 : (i + 1) * 700]
        r.read(4)  # sum1 is protocol-independent (test_sums covers it)
        assert r.read(2) == checksum.block_sum(block)[:2], i
    file_sum = checksum.file_sum_hasher()
    file_sum.update(new)
    tokens_end = s.server.index(bytes(4) + file_sum.digest())  # the end token, then the whole-file sum
    assert tokens_end > 0


# ---------------------------------------------------------------- hypothesis round trip

_MODES = [stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777, stat.S_IFCHR | 0o600,
          stat.S_IFBLK | 0o660, stat.S_IFIFO | 0o644, stat.S_IFSOCK | 0o755, stat.S_IFREG | 0o7777]


@st.composite
def _lists(draw):
    protocol = draw(st.sampled_from([27, 28, 29]))
    fopts = FlistOptions(
        protocol=protocol, preserve_uid=draw(st.booleans()), preserve_gid=draw(st.booleans()),
        preserve_links=True, preserve_devices=True, preserve_specials=True,
        preserve_hard_links=draw(st.booleans()), csum_len=draw(st.sampled_from([0, 16])),
    )
    entries = []
    for i in range(draw(st.integers(1, 12))):
        mode = draw(st.sampled_from(_MODES))
        e = FileEntry(
            name=draw(st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b)),
            mode=mode,
            size=draw(st.integers(0, 1 << 62)) if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else 0,
            mtime=draw(st.sampled_from([0, 1, T_CAPTURE, 0xFFFFFFFF])) if draw(st.booleans())
            else draw(st.integers(0, 0xFFFFFFFF)),
            uid=draw(st.integers(0, 0xFFFFFFFF)) if fopts.preserve_uid else None,
            gid=draw(st.integers(0, 0xFFFFFFFF)) if fopts.preserve_gid else None,
        )
        if e.is_dir:
            e.xflags = draw(st.sampled_from([0, 1]))
        if e.is_link:
            e.link_target = draw(st.binary(min_size=1, max_size=40))
        if e.is_device:
            e.rdev_major = draw(st.integers(0, 4095 if protocol < 28 else 0x7FFFFFFF))
            e.rdev_minor = draw(st.integers(0, 255 if protocol < 28 else 0x7FFFFFFF))
        if e.is_reg and fopts.csum_len:
            e.checksum = draw(st.binary(min_size=16, max_size=16))
        if fopts.preserve_hard_links and not e.is_dir and (protocol >= 28 or e.is_reg) and draw(st.booleans()):
            firsts = [j for j, f in enumerate(entries) if f.hlink_group == j]
            e.hlink_group = draw(st.sampled_from(firsts + [i]))
        entries.append(e)
    return fopts, entries


def _expected(fopts: FlistOptions, entries: list[FileEntry]) -> list[FileEntry]:
    """What the receiver keeps: a hard-link group needs two members, a 27 rdev is one dev_t."""
    members: dict[int, int] = {}
    for e in entries:
        if e.hlink_group is not None:
            members[e.hlink_group] = members.get(e.hlink_group, 0) + 1
    out = []
    for e in entries:
        e2 = FileEntry(**{f: getattr(e, f) for f in e.__slots__})
        if e2.hlink_group is not None and members[e2.hlink_group] < 2:
            e2.hlink_group = None
        e2.hlink_first = e2.hlink_group is not None and e2.hlink_group == entries.index(e)
        out.append(e2)
    return out


@given(_lists())
@example((FlistOptions(protocol=28, preserve_devices=True),
          [FileEntry(b"d", stat.S_IFCHR | 0o600, rdev_major=0, rdev_minor=256)]))  # 4-byte minor
@example((FlistOptions(protocol=27), [FileEntry(b"dir", stat.S_IFDIR | 0o755)]))  # flags 0: LONG_NAME escape
def test_round_trip(case):
    fopts, entries = case
    encoder = LegacyFlistEncoder(fopts)
    wire = b"".join(encoder.encode_entry(e) for e in entries) + encoder.encode_end()
    wire += encoder.encode_id_lists({}, {}) + (0).to_bytes(4, "little")
    decoder = new_flist_decoder(fopts)
    r = ByteReader(wire)
    while decoder.read_entry(r.read) is not None:
        pass
    decoder.read_id_lists(r.read)
    assert r.remaining == 0
    assert decoder.wire_entries == _expected(fopts, entries)


@given(st.binary(max_size=80), st.sampled_from([27, 28, 29]))
@example(bytes.fromhex("40ffffffff"), 29)  # LONG_NAME with a negative length
@example(bytes.fromhex("0101" "61" "00000000" "00000000" "a4810080"), 29)  # mode bits above 16: refused
@example(bytes.fromhex("0101" "61" "00000000" "00000000" "a4210000" "00000000" "ffffffff" "ffffffff"), 28)
def test_junk_is_decoded_or_refused(junk, protocol):
    fopts = FlistOptions(protocol=protocol, preserve_uid=True, preserve_links=True, preserve_devices=True,
                         preserve_hard_links=True)
    decoder = LegacyFlistDecoder(fopts)
    r = ByteReader(junk)
    try:
        while decoder.read_entry(r.read) is not None:
            pass
    except ProtocolError:
        return


@pytest.mark.parametrize("wire", [
    "0101" "61" "00000000" "00000000" "a4810080",                                  # mode bits above 16
    "0101" "61" "00000000" "00000000" "a4210000" "00000000" "ffffffff" "ffffffff",  # device 2**32-1
])
def test_values_no_system_call_takes_are_refused(wire):
    """A mode over 16 bits or a device number over 31 bits would crash mknod later (fuzzer find)."""
    fopts = FlistOptions(protocol=28, preserve_uid=True, preserve_devices=True)
    with pytest.raises(ProtocolError):
        LegacyFlistDecoder(fopts).read_entry(ByteReader(bytes.fromhex(wire)).read)
