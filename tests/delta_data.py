"""Basis / new file pairs that exercise the sender's block search counts (match.c match_report).

Shared by the differential scenarios (``pull-vv-delta-*``) and the unit test
of ``MatchCounts`` (tests/protocol/test_match_counts.py), whose expected
counts were read from stock rsyncd 3.5.0 on these very bytes.
"""

from __future__ import annotations

import random

import numpy as np

from backupd.protocol.sums import block_sums1


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def twisted(block: bytes, at: int) -> bytes:
    """``block`` with bytes at..at+2 changed by +1, -2, +1: the same checksum1, another strong sum."""
    out = bytearray(block)
    out[at] += 1
    out[at + 1] -= 2
    out[at + 2] += 1
    return bytes(out)


def distinct_blocks(seed: int, count: int, size: int) -> bytes:
    """``count`` random blocks of ``size`` bytes, no two with the same checksum1.

    Blocks that share a weak sum are false alarms for each other, and the
    generator's 2-byte strong sums of a big file would let one in ~65,536
    of them match by chance: a flaky count.
    """
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(count * size))
    while True:
        _, first = np.unique(block_sums1(data, size), return_index=True)
        if len(first) == count:
            return bytes(data)
        for i in sorted(set(range(count)) - set(first.tolist())):
            data[i * size : (i + 1) * size] = rng.randbytes(size)


# three 700-byte blocks of one weak sum (few, as 2-byte strong sums could collide), then a short one
_REP = bytes(random.Random(4).randrange(20, 200) for _ in range(700))
REP_BASIS = _REP + twisted(_REP, 1) + twisted(_REP, 2) + _REP[:300]
REP_NEW = b"head" + _REP * 3 + twisted(_REP, 9) + b"tail" + REP_BASIS[1400:]

MANY = distinct_blocks(3, 53000, 32)  # 53,000 blocks (over 52,420): rsync's hash table is 66,261, not 65,536
MANY2 = MANY[:1000] + blob(1, 96 * 1024)[:3000] + MANY[1000:800000] + MANY[800003:]

# --inplace pulls (sender.c updating_basis_file): blocks the new file holds below and above their basis offset
_B = blob(7, 70000)
BACKFWD_BASIS = _B
BACKFWD_NEW = _B[30000:40000] + _B[0:20000] + b"x" * 500 + _B[50000:70000] + _B[20000:30000]
# zeros 100 bytes before the basis has them: hash_search() re-aligns them to the block boundary
_ZERO = bytes(8000)
ZERO_BASIS = blob(8, 3000) + _ZERO + blob(9, 3000)
ZERO_NEW = blob(8, 3000)[:2900] + bytes(100) + _ZERO + blob(9, 3000)
# 1 MiB rotated: every block is at a higher offset, then a lower one; the receiver's map window
# (256 KiB) is re-read from the file it already wrote over, so a backward match corrupts it
ROT_BASIS = blob(10, 1 << 20)
ROT_NEW = ROT_BASIS[600000:] + ROT_BASIS[:600000]
