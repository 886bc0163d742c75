"""The sender's block search: C sender bytes reproduced, fast search == byte-by-byte reference."""

from __future__ import annotations

import random
import time
import tracemalloc
from functools import cache

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backupd.protocol.match import TWIN_WINDOW, literal_calls, match_tokens, match_tokens_ref
from backupd.protocol.match_counts import MatchCounts
from backupd.protocol.sums import (
    NULL_SUM_HEAD,
    Checksum,
    SumHead,
    decode_block_sums,
    decode_sum_head,
    generate_sums,
    sum_sizes,
)
from backupd.protocol.tokens import TOKEN_END, Literal, make_token_reader, make_token_writer
from tests.protocol import b_captures as bc

DELTA_CAPTURES = [
    "b-push-delta", "b-push-delta-327p31", "b-pull-delta", "b-pull-delta-327p31", "b-push-redo",
    "b-push-delta-zstd", "b-pull-delta-z", "b-push-delta-zlib", "b-push-delta-lz4",
]


def as_tuples(calls) -> list[tuple]:
    return [(bytes(c.literal), c.token, None if c.block is None else bytes(c.block)) for c in calls]


def rebuild(calls, head: SumHead, basis: bytes) -> bytes:
    """What a receiver builds: literals plus the basis blocks named by the tokens."""
    out = bytearray()
    for literal, token, _ in calls:
        out += literal
        if token >= 0:
            out += basis[token * head.block_len :][: head.block_size(token)]
    return bytes(out)


def rebuild_in_place(calls, head: SumHead, basis: bytes) -> bytes:
    """What an --inplace receiver builds: it writes over the basis it reads blocks from.

    A block at the offset being written is skipped, not copied (receiver.c
    receive_data() seeks), so it reads as the bytes already there.
    """
    out, pos = bytearray(basis), 0
    for literal, token, _ in calls:
        out[pos : pos + len(literal)] = literal
        pos += len(literal)
        if token >= 0:
            at, size = token * head.block_len, head.block_size(token)
            out[pos : pos + size] = out[at : at + size]
            pos += size
    return bytes(out[:pos])


def covered(calls) -> bytes:
    """The sender's own bytes in call order: literals and the matched regions."""
    return b"".join(literal + (block or b"") for literal, _, block in calls)


def token_view(compression, wire: bytes, head: SumHead, basis: bytes) -> list:
    """Decoded tokens with literals joined and compressed payloads replaced by their content."""
    reader, cur, out = make_token_reader(compression), bc.Cursor(wire), []
    reader.start_file(head)
    while (token := reader.next_token(cur.read)) is not TOKEN_END:
        if isinstance(token, Literal):
            if out and isinstance(out[-1], bytes):
                out[-1] += token.data
            else:
                out.append(token.data)
        else:
            out.append(token.index)
            start = token.index * head.block_len
            reader.see_block(basis[start : start + head.block_size(token.index)])
    assert not cur.left()
    return out


@cache
def captured(name: str):
    """(capture, [(request, transfer)]) with the sender's token bytes cut out by a reader."""
    cap = bc.load(name)
    reader = make_token_reader(cap.compression)

    def skip_tokens(cur, head_bytes, file_name):
        head = decode_sum_head(head_bytes, cap.digest_len)
        basis = (bc.basis_dir(cap) / file_name).read_bytes()
        reader.start_file(head)
        while (token := reader.next_token(cur.read)) is not TOKEN_END:
            if not isinstance(token, Literal):
                start = token.index * head.block_len
                reader.see_block(basis[start : start + head.block_size(token.index)])

    transfers = bc.sender_transfers(cap, skip_tokens)
    assert [(r.ndx, r.head) for r in cap.requests] == [(t.ndx, t.head) for t in transfers]
    return cap, list(zip(cap.requests, transfers, strict=True))


@pytest.mark.parametrize("name", DELTA_CAPTURES)
def test_c_sender_output_is_reproduced(name):
    cap, pairs = captured(name)
    checksum = Checksum(cap.checksum, cap.seed)
    writer = make_token_writer(cap.compression)          # one per session, like zstd's stream
    for number, (req, sent) in enumerate(pairs):
        head = decode_sum_head(req.head, cap.digest_len)
        sum1, sum2 = decode_block_sums(req.sums, head)
        new = (bc.new_dir(cap) / req.name).read_bytes()
        basis = (bc.basis_dir(cap) / req.name).read_bytes()
        calls = list(match_tokens(new, head, sum1, sum2, checksum))
        assert as_tuples(calls) == as_tuples(match_tokens_ref(new, head, sum1, sum2, checksum))
        writer.start_file()
        ours = b"".join(writer.send(*call) for call in calls)
        hasher = checksum.file_sum_hasher()
        hasher.update(new)
        if name == "b-push-redo" and number == 0:      # the proxy flipped one literal byte
            assert len(ours) == len(sent.tokens)
            assert sum(a != b for a, b in zip(ours, sent.tokens, strict=True)) == 1
        elif cap.compression in (None, "zstd"):
            assert ours == sent.tokens and hasher.digest() == sent.file_sum
        else:                                          # zlib chunking / liblz4 version may differ
            assert token_view(cap.compression, ours, head, basis) == token_view(
                cap.compression, sent.tokens, head, basis
            )


@pytest.mark.parametrize("name", ["b-push-append", "b-push-append-verify"])
def test_append_stream_is_reproduced(name):
    cap = bc.load(name)

    def skip_tokens(cur, head_bytes, file_name):
        reader = make_token_reader(None)
        reader.start_file(NULL_SUM_HEAD)
        while reader.next_token(cur.read) is not TOKEN_END:
            pass

    [sent] = bc.sender_transfers(cap, skip_tokens)
    prefix = decode_sum_head(sent.head).prefix_len
    new = (bc.new_dir(cap) / sent.name).read_bytes()
    writer = make_token_writer(None)
    ours = b"".join(writer.send(*call) for call in literal_calls(memoryview(new)[prefix:]))
    assert ours == sent.tokens


# ---------------------------------------------------------------- fast == reference

@st.composite
def match_case(draw):
    unit = draw(st.sampled_from([b"", b"\x00", b"ab", b"\xff\x01\x80"]))
    basis = draw(st.one_of(st.binary(max_size=900), st.integers(0, 300).map(lambda n: unit * n)))
    piece = st.one_of(
        st.binary(max_size=90),
        st.tuples(st.integers(0, len(basis)), st.integers(0, 400)).map(
            lambda t: basis[t[0] : t[0] + t[1]]
        ),
        st.integers(0, 100).map(lambda n: unit * n),
    )
    new = b"".join(draw(st.lists(piece, max_size=8)))
    return basis, new


@settings(max_examples=150, deadline=None)
@given(
    match_case(),
    st.integers(1, 48),
    st.integers(0, 16),
    st.sampled_from([None, 1, 2, 1024]),
    st.integers(1, 80),
    st.integers(1, 300),
    st.sampled_from(["xxh128", "md5", "xxh64"]),
    st.booleans(),
)
@example((b"\x00" * 64, b"\x00" * 70), 8, 2, None, 1, 5, "xxh128", False)
@example((b"\x00" * 64, b"\x00" * 70), 8, 2, None, 1, 5, "xxh128", True)
@example((b"ab" * 40 + b"\x00" * 64, b"ab" * 3 + b"\x00" * 70 + b"ab" * 30), 8, 16, 2, 1, 5, "md5", True)
def test_fast_search_equals_reference(case, block_size, s2_len, max_chain, chunk, window, name, updating):
    basis, new = case
    checksum = Checksum(name, -99)
    head = sum_sizes(len(basis), checksum.digest_len, block_size=block_size)
    head = SumHead(head.count, head.block_len, min(s2_len, checksum.digest_len), head.remainder)
    sum1, sum2 = decode_block_sums(generate_sums(basis, head, checksum), head)
    kwargs = {"max_chain": max_chain, "chunk": chunk, "updating_basis": updating}
    fast = as_tuples(match_tokens(new, head, sum1, sum2, checksum, window=window, **kwargs))
    assert fast == as_tuples(match_tokens_ref(new, head, sum1, sum2, checksum, **kwargs))
    counts, want = MatchCounts(), MatchCounts()
    counted = match_tokens(new, head, sum1, sum2, checksum, window=window, counts=counts, **kwargs)
    assert as_tuples(counted) == fast           # counting changes no call
    list(match_tokens_ref(new, head, sum1, sum2, checksum, counts=want, **kwargs))
    assert counts == want
    assert covered(fast) == new
    if head.s2_len >= 4:                      # shorter strong sums may let a wrong block match
        assert rebuild(fast, head, basis) == new
        if updating:                          # no block is read after the receiver wrote over it
            assert rebuild_in_place(fast, head, basis) == new
    assert fast[-1][1] == -1 and all(token != -1 for _, token, _ in fast[:-1])


def test_early_literal_flush_with_real_chunk_size():
    rng = random.Random(7)
    basis = rng.randbytes(300_000)
    new = basis[:100_000] + rng.randbytes(100_000) + basis[200_000:]
    checksum = Checksum("xxh128", 5)
    head = sum_sizes(len(basis), 16)
    sum1, sum2 = decode_block_sums(generate_sums(basis, head, checksum), head)
    fast = as_tuples(match_tokens(new, head, sum1, sum2, checksum))
    assert fast == as_tuples(match_tokens_ref(new, head, sum1, sum2, checksum))
    flushes = [literal for literal, token, _ in fast if token == -2]
    assert len(flushes) == 3 and all(len(f) == 32768 for f in flushes)   # 99400 .. 197704
    after = fast[fast.index((flushes[-1], -2, None)) + 1]
    assert after[1] == 286 and len(after[0]) == 286 * 700 - 99_400 - 3 * 32768
    assert rebuild(fast, head, basis) == new


def test_short_strong_sums_of_a_327_redo_are_compared_by_digest_length():
    basis = random.Random(3).randbytes(5000)
    checksum = Checksum("xxh64", 11)                  # 8-byte digest, head says 16
    honest = SumHead(8, 700, 8, 100)
    sum1, sum2 = decode_block_sums(generate_sums(basis, honest, checksum), honest)
    sum2 = [s + b"garbage!" for s in sum2]
    head = SumHead(8, 700, 16, 100)
    fast = as_tuples(match_tokens(basis, head, sum1, sum2, checksum))
    assert [token for _, token, _ in fast] == list(range(8)) + [-1]
    assert fast == as_tuples(match_tokens_ref(basis, head, sum1, sum2, checksum))


def test_chain_limit_of_1024():
    """1100 blocks share one weak sum; the wanted one is 1025th in C's chain order."""
    combos = [(t, -2 * t + u, t - 2 * u, u) for t in range(-20, 20) for u in range(-20, 20)]
    basis = b"".join(bytes(v & 0xFF for v in combo) for combo in combos[:1100])
    checksum = Checksum("xxh128", 1)
    head = SumHead(1100, 4, 16, 0)
    sum1, sum2 = decode_block_sums(generate_sums(basis, head, checksum), head)
    assert set(sum1.tolist()) == {0}
    new = basis[:4]                                    # block 0: last in the chain
    for max_chain, tokens in [(1024, [-1]), (None, [0, -1]), (1100, [0, -1])]:
        fast = as_tuples(match_tokens(new, head, sum1, sum2, checksum, max_chain=max_chain))
        assert [token for _, token, _ in fast] == tokens
        ref = match_tokens_ref(new, head, sum1, sum2, checksum, max_chain=max_chain)
        assert fast == as_tuples(ref)


def test_all_literal_paths():
    data = bytes(range(256)) * 400                     # 102400 bytes
    calls = as_tuples(match_tokens(data, NULL_SUM_HEAD, [], [], Checksum("md5", 0)))
    assert [(len(lit), tok) for lit, tok, _ in calls] == [(32768, -2)] * 3 + [(4096, -1)]
    assert b"".join(lit for lit, _, _ in calls) == data
    head = SumHead(1, 700, 2, 5)
    empty = as_tuples(match_tokens(b"", head, [0], [b"xx"], Checksum("md5", 0)))
    assert empty == [(b"", -1, None)]


def test_memory_stays_bounded_for_big_files():
    rng = random.Random(11)
    basis = bytearray(rng.randbytes(16 << 20))
    checksum = Checksum("xxh3", 2)
    head = sum_sizes(len(basis), checksum.digest_len)
    sum1, sum2 = decode_block_sums(generate_sums(basis, head, checksum), head)
    basis[5_000_000:5_000_100] = bytes(100)
    tracemalloc.start()
    try:
        calls = sum(1 for _ in match_tokens(basis, head, sum1, sum2, checksum, window=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert calls == head.count        # every block but the changed one, its literal, the end
    assert peak < 48 << 20            # unwindowed: about 16 bytes per byte = 256 MiB


# ---------------------------------------------------------------- bounded work

def _counting(checksum: Checksum) -> list[int]:
    """Count the strong sums ``checksum`` computes from now on (returns the counter)."""
    count, real = [0], checksum.block_sum

    def block_sum(data):
        count[0] += 1
        return real(data)

    checksum.block_sum = block_sum
    return count


@pytest.mark.parametrize("unit", [b"\x00", b"ab", b"abcdefghi", bytes(range(256))],
                         ids=["zeros", "period-2", "period-9", "period-256"])
def test_equal_weak_sums_cost_bounded_work(unit):
    """Issue 15.3: a client's sums that all share the file's weak sum, none its strong sum.

    Before: up to 1024 candidates per offset, a strong sum at every offset
    (about 900 s of CPU for 4 MiB of zeros); now one strong sum per distinct
    window, and well under 2 s.
    """
    size = 4 << 20
    data = (unit * (size // len(unit) + 1))[:size]
    checksum = Checksum("xxh128", 1)
    head = sum_sizes(size, checksum.digest_len)
    weak = generate_sums(data[: head.block_len], SumHead(1, head.block_len, 16, 0), checksum)[:4]
    sum1 = np.full(head.count, int.from_bytes(weak, "little"), dtype=np.uint32)
    rng = random.Random(5)
    sum2 = [rng.randbytes(16) for _ in range(head.count)]
    strong = _counting(checksum)
    started = time.process_time()
    calls = as_tuples(match_tokens(data, head, sum1, sum2, checksum))
    cpu_s = time.process_time() - started
    assert covered(calls) == data and all(token < 0 for _, token, _ in calls)
    # one per distinct window in each TWIN_WINDOW (zeros: 32 for 4 MiB, was one per byte)
    assert strong[0] <= (len(unit) + 1) * (size // TWIN_WINDOW + 1)
    assert cpu_s < 2.0                           # loose: the count above is the real bound


def test_equal_blocks_in_a_long_chain_are_checked_once():
    """5000 blocks with one weak sum and one strong sum: one lookup per offset, not a walk."""
    data = bytes(64 * 5000)
    checksum = Checksum("md5", 3)
    head = SumHead(5000, 64, 16, 0)
    sum1, sum2 = decode_block_sums(generate_sums(data, head, checksum), head)
    strong = _counting(checksum)
    for max_chain in (1024, None):
        calls = as_tuples(match_tokens(data, head, sum1, sum2, checksum, max_chain=max_chain))
        assert [t for _, t, _ in calls] == list(range(5000)) + [-1]   # want-next keeps the order
    assert strong[0] == 2 * 5000
