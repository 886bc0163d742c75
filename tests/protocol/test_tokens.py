"""Token streams: captured C sender streams decode, writer -> reader round trips, junk refused."""

from __future__ import annotations

import hashlib
import random
import struct
import subprocess
import sys
import zlib
from functools import cache

import pytest
import zstandard
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backupd.errors import ExitCode, ProtocolError, Unsupported
from backupd.protocol import zstd_stream
from backupd.protocol.match import match_tokens
from backupd.protocol.sums import (
    NULL_SUM_HEAD,
    Checksum,
    SumHead,
    decode_block_sums,
    decode_sum_head,
    generate_sums,
    sum_sizes,
)
from backupd.protocol.tokens import (
    LITERAL_PIECE,
    SYNC_MARKER,
    TOKEN_END,
    BlockMatch,
    Literal,
    make_token_reader,
    make_token_writer,
)
from tests.protocol import b_captures as bc

COMPRESSIONS = [None, "zlib", "zlibx", "zstd", "lz4"]
TOKEN_CAPTURES = [
    "b-push-delta", "b-push-delta-327p31", "b-push-delta-zlib", "b-push-delta-zstd",
    "b-push-delta-lz4", "b-pull-delta", "b-pull-delta-z", "b-pull-delta-327p31",
    "b-push-append", "b-push-append-verify", "b-push-redo",
]


def read_file(reader, read, head: SumHead | None, basis: bytes) -> tuple[bytes, list]:
    """Receiver loop: rebuild one file from its tokens; returns (data, tokens)."""
    reader.start_file(head)
    out, seen = bytearray(), []
    while (token := reader.next_token(read)) is not TOKEN_END:
        seen.append(token)
        if isinstance(token, Literal):
            assert token.data
            out += token.data
        else:
            size = head.block_size(token.index)
            block = basis[token.index * head.block_len :][:size]
            out += block
            reader.see_block(block)
    return bytes(out), seen


def merged(seen: list) -> list:
    """Tokens with adjacent literal pieces joined: [("L", bytes) | ("B", index)]."""
    out: list = []
    for token in seen:
        if isinstance(token, Literal):
            if out and out[-1][0] == "L":
                out[-1] = ("L", out[-1][1] + token.data)
            else:
                out.append(("L", token.data))
        else:
            out.append(("B", token.index))
    return out


@cache
def decoded_capture(name: str) -> tuple[bc.Capture, list[bc.Transfer]]:
    cap = bc.load(name)
    reader = make_token_reader(cap.compression)

    def read_tokens(cur, head_bytes, file_name):
        head = decode_sum_head(head_bytes, cap.digest_len)
        path = bc.basis_dir(cap) / file_name
        basis = path.read_bytes() if path.exists() else b""
        if cap.append:                      # only literal data after the kept prefix
            data, seen = read_file(reader, cur.read, NULL_SUM_HEAD, b"")
            return basis[: head.prefix_len] + data, seen, head.prefix_len
        data, seen = read_file(reader, cur.read, head, basis)
        return data, seen, 0

    return cap, bc.sender_transfers(cap, read_tokens)


# ---------------------------------------------------------------- captured C streams

@pytest.mark.parametrize("name", TOKEN_CAPTURES)
def test_captured_sender_streams_rebuild_the_new_files(name):
    cap, transfers = decoded_capture(name)
    checksum = Checksum(cap.checksum, cap.seed)
    results = []
    for t in transfers:
        data, _, prefix = t.decoded
        hasher = checksum.file_sum_hasher()
        hasher.update(data[prefix:] if cap.append == 1 else data)    # --append sums new bytes only
        new = (bc.new_dir(cap) / t.name).read_bytes()
        results.append((t.name, data == new, hasher.digest() == t.file_sum))
    if name == "b-push-redo":               # the proxy flipped a literal byte of the first copy
        assert results == [("a.bin", False, False), ("a.bin", True, True)]
    else:
        assert results and all(ok_data and ok_sum for _, ok_data, ok_sum in results), results


def test_plain_capture_token_sequence():
    _, [t] = decoded_capture("b-push-delta")
    assert t.tokens.startswith(bytes.fromhex("ffffffff feffffff"))
    assert t.tokens.endswith(bytes.fromhex("e3ffffff 00000000"))
    seq = merged(t.decoded[1])
    assert seq[:10] == [("B", i) for i in range(10)]
    assert seq[10] == ("L", (bc.B_DATA / "new" / "a.bin").read_bytes()[7000:7700])
    assert seq[11:] == [("B", i) for i in range(11, 29)]


@pytest.mark.parametrize("name", ["b-push-delta-zlib", "b-push-delta-zstd", "b-push-delta-lz4"])
def test_compressed_capture_runs(name):
    _, transfers = decoded_capture(name)
    a_bin = transfers[0]
    assert a_bin.tokens[:3] == bytes.fromhex("c00900")              # blocks 0..9
    assert a_bin.tokens[-4:] == bytes.fromhex("c2110000")            # blocks 11..28, END
    assert [kind for kind, _ in merged(a_bin.decoded[1])] == ["B"] * 10 + ["L"] + ["B"] * 18
    t_txt = transfers[1]
    assert t_txt.tokens[:3] == bytes.fromhex("c01b00")              # blocks 0..27
    assert t_txt.tokens[-4:] == bytes.fromhex("c21a0000")            # blocks 29..55, END


ZLIBX_STREAM = (bc.CAPTURES / "daemon-pull-avz-limited-server-lists.s2c").read_bytes()


@pytest.mark.parametrize(("start", "end", "content"), [
    (0x13A, 0x13B, b""),                       # .dot: END only
    (0x182, 0x193, b"hello world\n"),          # DEFLATED_DATA 14 bytes + END
    (0x1C3, 0x1CE, b"inner\n"),
])
def test_zlibx_capture_vector(start, end, content):
    wire = ZLIBX_STREAM[start:end]
    data, _ = read_file(make_token_reader("zlibx"), bc.Cursor(wire).read, NULL_SUM_HEAD, b"")
    assert data == content
    assert ZLIBX_STREAM[end : end + 16] == hashlib.md5(content).digest()   # file sum follows
    assert make_token_writer("zlibx").send(content, -1) == wire


# ---------------------------------------------------------------- round trips

@st.composite
def basis_and_new(draw):
    basis = draw(st.binary(max_size=1500))
    copy = st.tuples(st.integers(0, len(basis)), st.integers(0, 600)).map(
        lambda t: basis[t[0] : t[0] + t[1]]
    )
    new = b"".join(draw(st.lists(st.one_of(st.binary(max_size=120), copy), max_size=8)))
    return basis, new


def send_file(writer, basis, new, block_size, chunk):
    checksum = Checksum("xxh128", 99)
    head = sum_sizes(len(basis), 16, block_size=block_size)
    sum1, sum2 = decode_block_sums(generate_sums(basis, head, checksum), head)
    writer.start_file()
    calls = match_tokens(new, head, sum1, sum2, checksum, chunk=chunk, window=97)
    return head, b"".join(writer.send(*call) for call in calls)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@settings(max_examples=40, deadline=None)
@given(st.lists(basis_and_new(), min_size=1, max_size=3), st.integers(1, 40), st.integers(1, 90))
def test_writer_reader_round_trip(compression, files, block_size, chunk):
    writer, reader = make_token_writer(compression), make_token_reader(compression)
    for basis, new in files:                 # one session: zstd spans the files
        head, wire = send_file(writer, basis, new, block_size, chunk)
        cur = bc.Cursor(wire)
        data, _ = read_file(reader, cur.read, head, basis)
        assert data == new and not cur.left()


TOKENS = st.sampled_from([-2, 0, 1, 2, 3, 63, 64, 65, 90, 199])
CALLS = st.lists(st.tuples(st.binary(max_size=200), TOKENS), max_size=25)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@settings(max_examples=40, deadline=None)
@given(CALLS, st.binary(min_size=600, max_size=600))
def test_any_call_sequence_round_trips(compression, calls, basis):
    head = SumHead(200, 3, 2, 0)
    writer, reader = make_token_writer(compression), make_token_reader(compression)
    wire = b"".join(writer.send(lit, tok, basis[tok * 3 : tok * 3 + 3]) for lit, tok in calls)
    wire += writer.send(b"", -1)
    data, seen = read_file(reader, bc.Cursor(wire).read, head, basis)
    sent = []
    for lit, tok in calls:
        sent += [Literal(lit)] if lit else []
        sent += [BlockMatch(tok)] if tok >= 0 else []
    assert merged(seen) == merged(sent)


@pytest.mark.parametrize("compression", ["zlib", "zlibx", "zstd", "lz4"])
def test_long_and_backward_runs(compression):
    writer = make_token_writer(compression)
    wire = b"".join(writer.send(b"", t, b"x") for t in (100, 5, 6, 7)) + writer.send(b"", -1)
    assert wire == bytes.fromhex("20 64000000 21 05000000 0200 00")


@pytest.mark.parametrize("compression", ["zlib", "zstd", "lz4"])
def test_runs_split_at_65536_blocks(compression):
    basis = bytes(range(256)) * 274                 # 70144 one-byte blocks
    head = SumHead(70_000, 1, 2, 0)
    writer = make_token_writer(compression)
    wire = b"".join(writer.send(b"", i, basis[i : i + 1]) for i in range(70_000))
    wire += writer.send(b"", -1)
    assert wire == bytes.fromhex("c0ffff c16f11 00")          # 0..65535, then +1: 65536..69999
    data, seen = read_file(make_token_reader(compression), bc.Cursor(wire).read, head, basis)
    assert [t.index for t in seen] == list(range(70_000)) and data == basis[:70_000]


def test_plain_literal_pieces_are_32k():
    literal = bytes(range(256)) * 400               # 102400 bytes
    wire = make_token_writer(None).send(literal, -1)
    lengths, pos = [], 0
    while (n := struct.unpack_from("<i", wire, pos)[0]) > 0:
        lengths.append(n)
        pos += 4 + n
    assert lengths == [32768, 32768, 32768, 4096] and wire[pos:] == bytes(4)
    data, seen = read_file(make_token_reader(None), bc.Cursor(wire).read, NULL_SUM_HEAD, b"")
    assert data == literal and max(len(t.data) for t in seen) == 32768


def chunks(wire: bytes) -> list[bytes]:
    """DEFLATED_DATA payloads of a compressed stream without block tokens."""
    out, pos = [], 0
    while wire[pos] & 0xC0 == 0x40:
        n = (wire[pos] & 0x3F) << 8 | wire[pos + 1]
        out.append(wire[pos + 2 : pos + 2 + n])
        pos += 2 + n
    assert wire[pos:] == b"\x00"
    return out


def test_zlib_chunks_follow_c_buffering():
    literal = random.Random(1).randbytes(100_000)                     # incompressible
    payloads = chunks(make_token_writer("zlib").send(literal, -1))
    simple = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
    deflated = simple.compress(literal) + simple.flush(zlib.Z_SYNC_FLUSH)
    assert b"".join(payloads) + SYNC_MARKER == deflated           # same deflate bytes
    assert all(0 < len(p) <= 16383 for p in payloads)
    assert zlib.decompressobj(-15).decompress(deflated) == literal


def test_lz4_pending_flush_sends_an_empty_block():
    writer = make_token_writer("lz4")
    wire = writer.send(b"abc", -2) + writer.send(b"", 0, b"blk") + writer.send(b"", -1)
    assert wire == bytes.fromhex("40 04 30616263" "40 01 00" "80" "00")
    head = SumHead(1, 3, 2, 0)
    data, _ = read_file(make_token_reader("lz4"), bc.Cursor(wire).read, head, b"blk")
    assert data == b"abcblk"


def test_zlib_big_output_comes_in_bounded_pieces():
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = deflater.compress(bytes(12 << 20)) + deflater.flush(zlib.Z_SYNC_FLUSH)
    payload = payload[:-4]
    assert len(payload) <= 16383
    wire = bytes((0x40 | len(payload) >> 8, len(payload) & 0xFF)) + payload + b"\x00"
    data, seen = read_file(make_token_reader("zlib"), bc.Cursor(wire).read, NULL_SUM_HEAD, b"")
    assert data == bytes(12 << 20) and max(len(t.data) for t in seen) <= LITERAL_PIECE


BOMB_SCRIPT = r"""
import sys, zstandard
from backupd.protocol import tokens, zstd_stream
from backupd.protocol.sums import NULL_SUM_HEAD
if sys.argv[1] == "fallback":
    zstd_stream._LIB = None
cobj = zstandard.ZstdCompressor(level=3).compressobj()
zero = bytes(32768)
payload = b"".join(cobj.compress(zero) for _ in range(16000)) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
del zero
wire = bytes((0x40 | len(payload) >> 8, len(payload) & 0xFF)) + payload + b"\x00"
pos = 0
def read(n):
    global pos
    pos += n
    return wire[pos - n : pos]
reader = tokens.make_token_reader("zstd")
reader.start_file(NULL_SUM_HEAD)
total = biggest = 0
while (token := reader.next_token(read)) is not tokens.TOKEN_END:
    total += len(token.data)
    biggest = max(biggest, len(token.data))
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]  # reset by exec
print(len(payload), total, biggest, int(hwm[0].split()[1]) // 1024)
"""


@pytest.mark.parametrize("path", ["libzstd", "fallback"])
def test_zstd_bomb_streams_in_bounded_memory(path):
    """Issue 15.4: a 16 KB chunk that decodes to 500 MiB (what a C sender makes of zeros).

    Before: decoded whole, 541 MB peak. Now handed out in LITERAL_PIECE
    pieces as C's fixed buffer does: the peak RSS of the whole process stays
    far under 100 MB (VmHWM of a child: zstd's own buffers count too).
    """
    done = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, path], capture_output=True, text=True,
                          timeout=120, check=True)
    size, total, biggest, peak_mb = map(int, done.stdout.split())
    assert size <= 16383 and total == 16000 * 32768
    assert biggest <= LITERAL_PIECE
    assert peak_mb < 100, f"peak RSS {peak_mb} MB"


@pytest.mark.parametrize("path", ["libzstd", "fallback"])
def test_zstd_frame_asking_for_a_huge_window_is_refused(monkeypatch, path):
    """A frame may make zstd allocate its window (up to 2 GiB): over 16 MiB is refused first."""
    if path == "fallback":
        monkeypatch.setattr(zstd_stream, "_LIB", None)
    params = zstandard.ZstdCompressionParameters(window_log=27, compression_level=3)
    stream = zstandard.ZstdCompressor(compression_params=params).compressobj()
    payload = stream.compress(b"abc" * 1000) + stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    wire = bytes((0x40 | len(payload) >> 8, len(payload) & 0xFF)) + payload + b"\x00"
    with pytest.raises(ProtocolError, match="too much memory") as info:
        read_file(make_token_reader("zstd"), bc.Cursor(wire).read, NULL_SUM_HEAD, b"")
    assert info.value.exit_code == ExitCode.STREAMIO


def test_zstd_fallback_reads_what_libzstd_reads(monkeypatch):
    """The python-zstandard path (no libzstd) decodes a multi-file session the same."""
    writer = make_token_writer("zstd")
    wire = b""
    for data in (b"abc" * 200_000, bytes(range(256)) * 300, b""):
        writer.start_file()
        wire += writer.send(data, -1)
    monkeypatch.setattr(zstd_stream, "_LIB", None)
    reader, cur = make_token_reader("zstd"), bc.Cursor(wire)
    got = [read_file(reader, cur.read, NULL_SUM_HEAD, b"")[0] for _ in range(3)]
    assert got == [b"abc" * 200_000, bytes(range(256)) * 300, b""]
    assert not cur.left()


# ---------------------------------------------------------------- junk

@pytest.mark.parametrize(("compression", "wire", "exit_code"), [
    (None, struct.pack("<i", (16 << 20) + 1), ExitCode.PROTOCOL),    # literal too long
    (None, struct.pack("<i", -6), ExitCode.PROTOCOL),                # block 5 of 5
    ("zlib", bytes.fromhex("c0 0000"), ExitCode.PROTOCOL),            # run count 0
    ("zstd", bytes.fromhex("01"), ExitCode.PROTOCOL),                 # unknown flag
    ("lz4", bytes.fromhex("20 ffffffff"), ExitCode.PROTOCOL),         # negative TOKEN_LONG
    ("zlib", bytes.fromhex("84"), ExitCode.PROTOCOL),                 # block 4, beyond head
    ("zlib", bytes.fromhex("40 01 ff"), ExitCode.STREAMIO),           # invalid deflate block type
    ("zlibx", bytes.fromhex("40 00"), ExitCode.STREAMIO),             # empty chunk
    ("zlib", bytes.fromhex("40 02 0300 00"), ExitCode.STREAMIO),      # final block: stream ended
    ("zstd", bytes.fromhex("40 04 61626364"), ExitCode.STREAMIO),     # not zstd
    ("lz4", bytes.fromhex("40 02 f0ff"), ExitCode.STREAMIO),          # truncated lz4 block
])
def test_bad_streams_are_refused_with_exit_code(compression, wire, exit_code):
    with pytest.raises(ProtocolError) as info:
        reader, head = make_token_reader(compression), SumHead(4, 2, 2, 0)
        read_file(reader, bc.Cursor(wire).read, head, bytes(8))
    assert info.value.exit_code == exit_code


@pytest.mark.parametrize("compression", COMPRESSIONS)
@settings(max_examples=150)
@given(st.binary(max_size=80))
@example(bytes.fromhex("c0ffff"))
@example(bytes.fromhex("7f ff") + bytes(20))
def test_junk_is_decoded_or_refused(compression, junk):
    reader = make_token_reader(compression)
    read = bc.Cursor(junk).read
    try:
        for _ in range(3):                  # a few files in a row
            reader.start_file(None)
            for _ in range(2000):           # runs can be 65536 blocks long
                token = reader.next_token(read)
                if token is TOKEN_END:
                    break
                if isinstance(token, BlockMatch):
                    reader.see_block(b"abcd")
                else:
                    assert isinstance(token, Literal) and token.data
    except (ProtocolError, EOFError):
        pass


def test_factories_refuse_unknown_names_and_levels():
    with pytest.raises(Unsupported):
        make_token_reader("gzip")
    with pytest.raises(Unsupported):
        make_token_writer("brotli")
    with pytest.raises(ValueError):
        make_token_writer("zlib", 0)
    with pytest.raises(ValueError):
        make_token_writer(None).send(b"", -3)
    with pytest.raises(ValueError):
        make_token_writer("zlib").send(b"x", 0)      # zlib needs the block to prime
    assert make_token_writer("none").send(b"", -1) == bytes(4)


def test_zstd_chunk_that_decodes_past_256k_is_read_whole():
    """Regression: 3.2.7 senders put 600 kB of compressible literal in one chunk.

    A zstd stream writer left the tail of such a chunk inside the decoder and
    the file failed verification; the reader must drain every chunk.
    """
    import zstandard

    from backupd.protocol.tokens import Literal, TokenEnd, make_token_reader
    from backupd.protocol.wire import ByteReader

    data = b"abc" * 200_000
    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    payload = cobj.compress(data) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert len(payload) < 16383
    wire = bytes([0x40 | len(payload) >> 8, len(payload) & 0xFF]) + payload + b"\x00"
    reader = make_token_reader("zstd")
    reader.start_file()
    src = ByteReader(wire)
    out = bytearray()
    while not isinstance(token := reader.next_token(src.read), TokenEnd):
        assert isinstance(token, Literal)
        out += token.data
    assert bytes(out) == data
