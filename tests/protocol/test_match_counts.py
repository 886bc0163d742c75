"""match.c's search counts (matches, hash hits, false alarms, literal data) against stock rsyncd.

Each expectation was read from stock rsyncd 3.5.0 (``max verbosity = 2``)
pulling the new file with ``rsync -avv --no-inc-recursive`` over the basis
(its last line, ``total: matches=M  hash_hits=H  false_alarms=F data=N``);
rsyncd's 2-byte strong sums collided with none of the false alarms (the
same counts with any seed), so full-length strong sums here give them too.
"""

from __future__ import annotations

import pytest

from backupd.protocol.match import match_tokens, match_tokens_ref
from backupd.protocol.match_counts import MatchCounts, hash_tablesize, suffix_sums1
from backupd.protocol.sums import Checksum, SumHead, checksum1_ref, decode_block_sums, generate_sums, sum_sizes
from tests.delta_data import (
    BACKFWD_BASIS,
    BACKFWD_NEW,
    MANY,
    MANY2,
    REP_BASIS,
    REP_NEW,
    ZERO_BASIS,
    ZERO_NEW,
    blob,
)

BIG = blob(1, 96 * 1024)
BIG2 = BIG[:40000] + b"inserted in the middle\n" + BIG[40000:90000]
MANY8_NEW = MANY[:1000] + BIG[:3000] + MANY[1000:200000] + MANY[200003:430000]

CASES = {  # name: (basis, new, --block-size or None, rsyncd's (matches, hash_hits, false_alarms, data))
    "shifted-copy": (BIG[:90000], BIG2, None, (128, 129, 0, 723)),
    "equal-weak-sums": (REP_BASIS, REP_NEW, 700, (5, 6, 9, 708)),
    "table-above-65536": (MANY, MANY2, 32, (52998, 54713, 4, 3061)),
    "table-above-65536-short-blocks": (MANY[:430000], MANY8_NEW, 8, (53749, 55412, 1215, 3005)),
}


def sums_for(basis: bytes, block_size: int | None, checksum: Checksum):
    head = sum_sizes(len(basis), checksum.digest_len, block_size=block_size)
    head = SumHead(head.count, head.block_len, checksum.digest_len, head.remainder)
    return head, *decode_block_sums(generate_sums(basis, head, checksum), head)


def counted(search, new: bytes, head, sum1, sum2, checksum, **kw) -> MatchCounts:
    counts = MatchCounts()
    for _ in search(new, head, sum1, sum2, checksum, counts=counts, **kw):
        pass
    return counts


INPLACE_CASES = {  # the same, pulled with rsync -avv --inplace (sender.c updating_basis_file)
    "shifted-copy": (BIG[:90000], BIG2, None, (57, 186, 0, 50123)),
    "backward-and-forward": (BACKFWD_BASIS, BACKFWD_NEW, None, (42, 121, 0, 31100)),
    "zeros-re-aligned": (ZERO_BASIS, ZERO_NEW, 500, (27, 27, 0, 500)),
    "table-above-65536": (MANY, MANY2, 32, (31, 565346, 2118, 1698005)),
}


@pytest.mark.parametrize("name", INPLACE_CASES)
def test_inplace_counts_equal_rsyncd(name):
    basis, new, block_size, want = INPLACE_CASES[name]
    checksum = Checksum("md5", 12345)
    head, sum1, sum2 = sums_for(basis, block_size, checksum)
    counts = counted(match_tokens, new, head, sum1, sum2, checksum, updating_basis=True)
    assert (counts.matches, counts.hash_hits, counts.false_alarms, counts.data) == want
    if len(new) < 200_000:
        assert counted(match_tokens_ref, new, head, sum1, sum2, checksum, updating_basis=True) == counts
    small = counted(match_tokens, new, head, sum1, sum2, checksum, updating_basis=True, window=777)
    assert small == counts


@pytest.mark.parametrize("name", CASES)
def test_counts_equal_rsyncd(name):
    basis, new, block_size, want = CASES[name]
    checksum = Checksum("md5", 12345)
    head, sum1, sum2 = sums_for(basis, block_size, checksum)
    counts = counted(match_tokens, new, head, sum1, sum2, checksum)
    assert (counts.matches, counts.hash_hits, counts.false_alarms, counts.data) == want
    if len(new) < 200_000:                       # the byte loop: about a microsecond a byte
        assert counted(match_tokens_ref, new, head, sum1, sum2, checksum) == counts


def test_big_table_is_used_above_52420_blocks():
    assert hash_tablesize(52420) == 1 << 16       # 52420 / 8 * 10 + 11 = 65531
    assert hash_tablesize(52428) == 65541
    assert hash_tablesize(53000) == 66261


def test_counts_add_up_over_files_and_small_windows():
    checksum = Checksum("xxh128", 7)
    totals = MatchCounts()
    for basis, new, block_size, _ in (CASES["shifted-copy"], CASES["equal-weak-sums"]):
        head, sum1, sum2 = sums_for(basis, block_size, checksum)
        for _ in match_tokens(new, head, sum1, sum2, checksum, counts=totals, window=333):
            pass
    assert (totals.matches, totals.hash_hits, totals.false_alarms, totals.data) == (133, 135, 9, 1431)
    assert totals.report_line() == b"total: matches=133  hash_hits=135  false_alarms=9 data=1431\n"


def test_files_without_sums_count_only_literal_data():
    counts = MatchCounts()
    checksum = Checksum("md5", 1)
    empty = SumHead(0, 700, 16, 0)
    for _ in match_tokens(b"x" * 100_000, empty, [], [], checksum, counts=counts):
        pass
    assert counts == MatchCounts(data=100_000)


def test_offset_zero_is_looked_at_when_the_file_is_shorter_than_a_block():
    checksum = Checksum("md5", 1)
    head, sum1, sum2 = sums_for(b"abcdefgh" * 100, 100, checksum)
    new = b"abcdefgh"[:5]                     # hash_search's do-while: one offset, no block this short
    assert counted(match_tokens, new, head, sum1, sum2, checksum) == counted(
        match_tokens_ref, new, head, sum1, sum2, checksum)


@pytest.mark.parametrize("data", [b"", b"a", b"\xff\x80\x01zz", bytes(range(256)) * 3])
def test_suffix_sums_are_checksum1_of_each_suffix(data):
    assert suffix_sums1(memoryview(data)).tolist() == [checksum1_ref(data[i:]) for i in range(len(data))]
