"""Sum head, block-length rule, checksum1 and strong sums against the b-* captures."""

from __future__ import annotations

import hashlib
import math
import random
import struct
import tracemalloc
from functools import cache

import pytest
import xxhash
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backupd.errors import ExitCode, ProtocolError, Unsupported
from backupd.protocol.sums import (
    HAVE_MD4,
    MAX_ALLOC,
    NULL_SUM_HEAD,
    ROW,
    ROW_MIN_BLOCK,
    SUM_BUF_SIZE,
    SUPPORTED_CHECKSUMS,
    Checksum,
    StrongSums,
    SumHead,
    _block_sums1_by_row,
    block_sums1,
    checksum1_ref,
    decode_block_sums,
    decode_sum_head,
    generate_sums,
    iter_sums_wire,
    rolling_sums1,
    sum_sizes,
)
from tests.protocol import b_captures as bc

SUM_CAPTURES = [
    "b-push-delta", "b-push-delta-327p31", "b-push-delta-zlib", "b-push-delta-zstd",
    "b-push-delta-lz4", "b-pull-delta", "b-pull-delta-z", "b-pull-delta-327p31", "b-push-redo",
]
OLD_A = (bc.B_DATA / "old" / "a.bin").read_bytes()
NEW_A = (bc.B_DATA / "new" / "a.bin").read_bytes()


@cache
def capture(name: str) -> bc.Capture:
    return bc.load(name)


def all_requests():
    for name in SUM_CAPTURES:
        for n, req in enumerate(capture(name).requests):
            yield pytest.param(name, req, id=f"{name}-{req.name}-{n}")


# ---------------------------------------------------------------- sum_sizes (§4.2)

SIZE_TABLE = [  # L, count, blength, remainder, s2length: protocol-b §4.2 (--debug=deltasum2)
    (1, 1, 700, 1, 2),
    (700, 1, 700, 0, 2),
    (701, 2, 700, 1, 2),
    (490_000, 700, 700, 0, 2),
    (490_001, 701, 700, 1, 2),
    (1_000_000, 1000, 1000, 0, 2),
    (10_000_000, 3165, 3160, 1760, 2),
    (123_456_789, 11119, 11104, 2517, 3),
    (1_100_000_000, 33173, 33160, 16480, 3),
    (17_300_000_000, 131989, 131072, 68864, 4),
]


@pytest.mark.parametrize(("length", "count", "block_len", "remainder", "s2_len"), SIZE_TABLE)
def test_sum_sizes_table(length, count, block_len, remainder, s2_len):
    assert sum_sizes(length, 16) == SumHead(count, block_len, s2_len, remainder)


@pytest.mark.parametrize(("length", "s2_len"), [
    (2**25 - 1, 2), (2**25, 3), (2**31 - 1, 3), (2**31, 4),
    (2**36 - 1, 4), (2**36, 5), (2**40 - 1, 5), (2**40, 6),
])
def test_first_pass_s2_len_thresholds(length, s2_len):
    assert sum_sizes(length, 16).s2_len == s2_len


@pytest.mark.parametrize(("digest_len", "want"), [(8, 8), (16, 16), (20, 16)])
def test_redo_pass_uses_min_16_digest(digest_len, want):
    assert sum_sizes(20_000, digest_len, redo=True) == SumHead(29, 700, want, 400)


def test_largest_files():
    assert sum_sizes(2**40, 8).s2_len == 6
    assert sum_sizes(2**47, 8) == SumHead(2**30, 131072, 7, 0)
    with pytest.raises(ValueError):                                   # count > int32
        sum_sizes(2**48, 16)


def test_block_size_option_and_empty_basis():
    assert sum_sizes(20_000, 16, block_size=1000) == SumHead(20, 1000, 2, 0)
    assert sum_sizes(500, 16, block_size=131072) == SumHead(1, 131072, 2, 500)
    assert sum_sizes(0, 16) == NULL_SUM_HEAD == SumHead(0, 0, 0, 0)


@pytest.mark.parametrize("kwargs", [
    {"file_len": -1}, {"file_len": 10, "block_size": 0}, {"file_len": 10, "block_size": 131073},
])
def test_sum_sizes_refuses(kwargs):
    with pytest.raises(ValueError):
        sum_sizes(digest_len=16, **kwargs)


@given(st.integers(min_value=1, max_value=2**45))
@example(490_001)
@example(4**17 - 1)
@example(4**17)
def test_sum_sizes_block_len_is_rounded_sqrt(length):
    head = sum_sizes(length, 16)
    if length <= 490_000:
        want = 700
    elif length >= 4**17:
        want = 131072
    else:
        want = max(700, math.isqrt(length) & ~7)
    assert head.block_len == want
    assert head.prefix_len == length
    assert 2 <= head.s2_len <= 16


# ---------------------------------------------------------------- SumHead (§4.1)

def test_captured_heads_decode_and_encode_back():
    wire = bytes.fromhex("1d000000bc0200000200000090010000")      # b-push-delta, a.bin
    head = decode_sum_head(wire)
    assert head == SumHead(29, 700, 2, 400)
    assert head.encode() == wire
    assert head.prefix_len == 20_000
    assert [head.block_size(i) for i in (0, 27, 28)] == [700, 700, 400]


def test_append_head_prefix_len():
    append = capture("b-push-append")
    head = decode_sum_head(append.requests[0].head)
    assert append.requests[0].head == bytes.fromhex("12000000bc02000002000000bd010000")
    assert head.prefix_len == 17 * 700 + 445 == 12345
    assert head.prefix_len == len((bc.B_DATA / "prefix" / "a.bin").read_bytes())


@pytest.mark.parametrize("index", [-1, 29, 2**31])
def test_block_index_outside_head_is_refused(index):
    with pytest.raises(ProtocolError):
        SumHead(29, 700, 2, 400).block_size(index)


@pytest.mark.parametrize("fields", [
    (-1, 700, 2, 0),            # negative count
    (1, 0, 2, 0),               # zero block length with blocks
    (1, 131073, 2, 0),          # block length over MAX_BLOCK_SIZE
    (1, -700, 2, 0),
    (1, 700, -1, 0),            # negative s2length
    (1, 700, 17, 0),            # longer than any digest we accept
    (1, 700, 2, 701),           # remainder > blength
    (1, 700, 2, -1),
    (0, 700, 2, 5),             # remainder without blocks (our extra check)
])
def test_decode_sum_head_bounds(fields):
    with pytest.raises(ProtocolError) as info:
        decode_sum_head(struct.pack("<4i", *fields))
    assert info.value.exit_code == ExitCode.PROTOCOL


def test_decode_sum_head_s2_len_limits():
    head = struct.pack("<4i", 29, 700, 16, 400)
    assert decode_sum_head(head, digest_len=8).s2_len == 16         # 3.2.7 redo with xxh64
    assert decode_sum_head(struct.pack("<4i", 1, 700, 20, 0), digest_len=20).s2_len == 20
    with pytest.raises(ProtocolError):
        decode_sum_head(struct.pack("<4i", 1, 700, 17, 0), digest_len=8)
    with pytest.raises(ProtocolError):
        decode_sum_head(head[:15])


@given(st.binary(min_size=16, max_size=16))
@example(bytes(16))
@example(bytes.fromhex("1d000000bc0200000200000090010000"))
def test_junk_sum_head_is_decoded_exactly_or_refused(junk):
    try:
        head = decode_sum_head(junk)
    except ProtocolError:
        return
    assert head.encode() == junk
    assert head.prefix_len >= 0


# ---------------------------------------------------------------- checksum1 (§4.3, §12.2)

def test_checksum1_of_captured_block_0():
    assert checksum1_ref(OLD_A[:700]) == 0x610AFAD4                   # protocol-b §11.1
    assert int(block_sums1(OLD_A, 700)[0]) == 0x610AFAD4


def test_checksum1_uses_signed_bytes():
    assert checksum1_ref(b"\x80") == 0xFF80FF80                       # -128, not 128
    assert checksum1_ref(b"\xff\x01") == (0 | (0xFFFF & (2 * -1 + 1)) << 16)


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
@example(bytes(range(256)) * 3, 700)
def test_block_sums1_equals_reference(data, block_len):
    want = [checksum1_ref(data[i : i + block_len]) for i in range(0, len(data), block_len)]
    assert block_sums1(data, block_len).tolist() == want


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=40_000), st.integers(min_value=ROW_MIN_BLOCK, max_value=12_000))
@example(b"\x80" * 70_000, 65_536)                   # every row at the float32 bound: -128 * (0 + ... + 255)
@example(b"\x7f" * 70_000, ROW * 9)                   # boundaries on row starts only
@example(bytes(range(256)) * 40, ROW_MIN_BLOCK + 1)
def test_block_sums1_by_row_equals_reference(data, block_len):
    """The row-wise path that bases of about 4 MiB or more take."""
    want = [checksum1_ref(data[i : i + block_len]) for i in range(0, len(data), block_len)]
    assert block_sums1(data, block_len).tolist() == want


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=700))
@example(b"", 5)
@example(b"\x80" * 1000, 1)
def test_row_sums_hold_for_any_block_length(data, block_len):
    """Its block boundaries inside rows, and blocks shorter than a row, too."""
    want = [checksum1_ref(data[i : i + block_len]) for i in range(0, len(data), block_len)]
    assert _block_sums1_by_row(data, block_len).tolist() == want


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=80))
@example(b"\xff" * 300, 64)
def test_rolling_sums1_equals_reference(data, k):
    want = [checksum1_ref(data[o : o + k]) for o in range(len(data) - k + 1)]
    assert rolling_sums1(data, k).tolist() == want


def test_rolling_sums1_large_window_wraps_correctly():
    data = b"\xff" * 140_000 + b"\x7f" * 140_000                      # sums far beyond 16 bits
    got = rolling_sums1(data, 131_072)
    for o in (0, 1000, 70_000, len(data) - 131_072):
        assert int(got[o]) == checksum1_ref(data[o : o + 131_072])


def test_rolling_sums1_refuses_empty_window():
    with pytest.raises(ValueError):
        rolling_sums1(b"abc", 0)
    assert len(rolling_sums1(b"abc", 4)) == 0


# ---------------------------------------------------------------- strong sums (§4.4, §4.5)

def test_xxh128_block_vector():
    ck = Checksum("xxh128", 1796152109)                               # b-push-delta seed
    assert ck.block_sum(OLD_A[:700]).hex() == "b7066fd531326be78d966291d1a23daf"
    assert ck.digest_len == 16


@pytest.mark.parametrize(("path", "want"), [
    ("old/a.bin", "ca66a8b1f1e26beabd172220ce100126"),                # protocol-b §4.5
    ("new/a.bin", "0d8f07fc4b9c52ae17cf7725d50ed5a7"),                # b-push-delta file sum
])
def test_xxh128_file_sum_vectors(path, want):
    hasher = Checksum("xxh128", 1796152109).file_sum_hasher()
    data = (bc.B_DATA / path).read_bytes()
    for i in range(0, len(data), 3000):
        hasher.update(data[i : i + 3000])
    assert hasher.digest().hex() == want


# RFC 1320 appendix A.5 test suite (independent of the library that computes it)
MD4_VECTORS = [
    (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
    (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
    (b"message digest", "d9130a8164549fe818874806e1c7014b"),
    (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
]


@pytest.mark.skipif(not HAVE_MD4, reason="no md4 provider")
@pytest.mark.parametrize(("data", "want"), MD4_VECTORS)
def test_md4_unseeded_block_and_file_sum(data, want):
    assert Checksum("md4", 0).block_sum(data).hex() == want
    hasher = Checksum("md4", 1796152109).file_sum_hasher()   # the file sum is never seeded
    for i in range(0, len(data), 7):
        hasher.update(memoryview(data)[i : i + 7])
    assert hasher.digest().hex() == want


@pytest.mark.skipif(not HAVE_MD4, reason="no md4 provider")
def test_md4_block_sum_appends_seed():
    # checksum.c get_checksum2 CSUM_MD4: MD4(block + SIVAL(seed)): "message di" + b"gest"
    seed = int.from_bytes(b"gest", "little", signed=True)
    assert Checksum("md4", seed).block_sum(b"message di").hex() == MD4_VECTORS[2][1]
    assert "md4" in SUPPORTED_CHECKSUMS


def test_seed_placement_per_algorithm():
    block, seed = b"block data " * 10, -123456
    seed_le = struct.pack("<i", seed)
    s64 = seed & (2**64 - 1)
    md5, sha1 = hashlib.md5, hashlib.sha1
    assert Checksum("md5", seed).block_sum(block) == md5(seed_le + block).digest()
    assert Checksum("md5", seed, seed_fix=False).block_sum(block) == md5(block + seed_le).digest()
    assert Checksum("md5", 0).block_sum(block) == md5(block).digest()
    assert Checksum("sha1", seed).block_sum(block) == sha1(seed_le + block).digest()
    xxh64, xxh3 = xxhash.xxh64_intdigest(block, s64), xxhash.xxh3_64_intdigest(block, s64)
    assert Checksum("xxh64", seed).block_sum(block) == struct.pack("<Q", xxh64)
    assert Checksum("xxh3", seed).block_sum(block) == struct.pack("<Q", xxh3)
    assert Checksum("xxhash", seed).name == "xxh64"


@pytest.mark.parametrize("name", SUPPORTED_CHECKSUMS)
def test_file_sum_is_unseeded_full_digest(name):
    ck = Checksum(name, 1796152109)
    whole = ck.file_sum_hasher()
    whole.update(NEW_A)
    assert len(whole.digest()) == ck.digest_len
    unseeded_block = Checksum(name, 0).block_sum(NEW_A)               # seed 0 = no seed
    assert whole.digest() == unseeded_block


@pytest.mark.parametrize("name", ["none", "sha256", "md4x", ""] + ([] if HAVE_MD4 else ["md4"]))
def test_unknown_checksums_are_refused(name):
    with pytest.raises(Unsupported):
        Checksum(name, 1)


def test_seed_must_be_int32():
    with pytest.raises(ValueError):
        Checksum("md5", 2**31)


# ---------------------------------------------------------------- block sums on the wire

@pytest.mark.parametrize(("name", "req"), list(all_requests()))
def test_generated_sums_equal_captured(name, req):
    cap = capture(name)
    basis = (bc.basis_dir(cap) / req.name).read_bytes()
    head = decode_sum_head(req.head, cap.digest_len)
    redo = head.s2_len == 16
    assert sum_sizes(len(basis), cap.digest_len, redo=redo) == head
    assert generate_sums(basis, head, Checksum(cap.checksum, cap.seed)) == req.sums


def test_decode_block_sums_of_capture():
    req = capture("b-push-delta").requests[0]
    head = decode_sum_head(req.head)
    sum1, sum2 = decode_block_sums(req.sums, head)
    assert sum1.dtype.name == "uint32" and sum1.shape == (29,)
    assert int(sum1[0]) == 0x610AFAD4 and sum2[0] == bytes.fromhex("b706")
    wire = (struct.pack("<I", s) + t for s, t in zip(sum1.tolist(), sum2, strict=True))
    assert b"".join(wire) == req.sums
    with pytest.raises(ProtocolError):
        decode_block_sums(req.sums[:-1], head)


@settings(max_examples=60)
@given(
    st.binary(min_size=1, max_size=3000),
    st.integers(min_value=1, max_value=300),
    st.integers(min_value=1, max_value=1200),
    st.sampled_from(SUPPORTED_CHECKSUMS),
)
def test_windowed_sums_equal_per_block_reference(data, block_len, window, name):
    ck = Checksum(name, -7)
    head = sum_sizes(len(data), ck.digest_len, block_size=block_len, redo=True)
    want = b"".join(
        struct.pack("<I", checksum1_ref(data[i : i + block_len]))
        + ck.block_sum(data[i : i + block_len])[: head.s2_len]
        for i in range(0, len(data), block_len)
    )
    assert b"".join(iter_sums_wire(data, head, ck, window=window)) == want


def test_generate_sums_refuses_bad_input():
    ck = Checksum("xxh64", 1)
    with pytest.raises(ValueError):
        generate_sums(OLD_A[:100], SumHead(29, 700, 2, 400), ck)
    with pytest.raises(ValueError):
        generate_sums(OLD_A, SumHead(29, 700, 16, 400), ck)
    assert generate_sums(b"", NULL_SUM_HEAD, ck) == b""


# ---------------------------------------------------------------- --max-alloc

def test_sum_head_beyond_max_alloc_is_refused_before_anything_is_read():
    """Issue 15.4: 2**26 block sums (~8 GB as Python objects) were accepted; rsync's
    my_alloc() refuses count x sizeof(struct sum_buf) >= --max-alloc (1 GiB)."""
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=r"exceeds --max-alloc=1073741824") as info:
            decode_sum_head(SumHead(1 << 26, 700, 16, 0).encode(), 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.exit_code == ExitCode.MALLOC
    assert peak < 1 << 20
    limit = MAX_ALLOC // SUM_BUF_SIZE                  # 44739242: the C bound
    assert decode_sum_head(SumHead(limit - 1, 1, 2, 0).encode(), 16).count == limit - 1
    with pytest.raises(ProtocolError):
        decode_sum_head(SumHead(limit, 1, 2, 0).encode(), 16)
    assert decode_sum_head(SumHead(1 << 22, 700, 16, 0).encode(), 16).count == 1 << 22
    assert decode_sum_head(SumHead(1 << 26, 700, 16, 0).encode(), 16, max_alloc=None).count == 1 << 26
    with pytest.raises(ProtocolError):                 # a smaller --max-alloc, strong sums bound
        decode_sum_head(SumHead(1 << 16, 700, 16, 0).encode(), 16, max_alloc=1 << 20)


def test_block_sums_are_kept_compact():
    """4 + s2_len bytes a block, not a bytes object each (2**22 sums peaked at 505 MB)."""
    count, s2_len = 1 << 18, 16
    wire = random.Random(4).randbytes(count * (4 + s2_len))
    head = SumHead(count, 700, s2_len, 0)
    tracemalloc.start()
    try:
        sum1, sum2 = decode_block_sums(wire, head)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < count * (4 + s2_len) * 1.1 and peak < 2.2 * count * (4 + s2_len)
    assert len(sum2) == count and sum2[-1] == wire[-s2_len:] and sum2[0] == wire[4:20]
    assert int(sum1[1]) == int.from_bytes(wire[20:24], "little")
    assert StrongSums.of(sum2, 2) == [s[:2] for s in sum2[:count]]
    assert sum2.array()[3] == sum2[3].rstrip(b"\0")   # NumPy S16: trailing NULs dropped


def test_sum_sizes_align_rounds_large_block_lengths_up_for_reflinks():
    plain = sum_sizes(24 << 20, 16)
    aligned = sum_sizes(24 << 20, 16, align=4096)
    assert plain.block_len == 5016 and aligned.block_len == 8192
    assert aligned.count == -(-(24 << 20) // 8192) and aligned.remainder == (24 << 20) % 8192
    assert sum_sizes(1 << 20, 16, align=4096) == sum_sizes(1 << 20, 16)  # below one block: rsync's choice
    assert sum_sizes(24 << 20, 16, align=4096, block_size=5000).block_len == 5000  # -B wins
    assert sum_sizes(1 << 40, 16, align=4096).block_len == 131072  # never over MAX_BLOCK_SIZE
