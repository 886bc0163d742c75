"""The sender's block-search statistics: matches, hash hits, false alarms, literal data.

rsync's sender counts them in static totals over the whole session and, at
DEBUG DELTASUM level 1 (-vv, where the daemon's ``max verbosity`` allows
2), prints them once after the last file: ``total: matches=M  hash_hits=H
false_alarms=F data=N``. Source: rsync match.c (3.5.0) build_hash_table(),
hash_search(), matched(), match_sums(), match_report().

What is counted, at each offset hash_search() looks at (every offset below
``end = len + 1 - last block's length``, offset 0 always, except the
offsets inside a matched block):

- a hash hit when the bucket of the window's weak sum holds any block: the
  bucket is ``((s1 + s2) & 0xFFFF)`` (SUM2HASH) in a 65536 table, or
  ``sum % tablesize`` where ``tablesize = count / 8 * 10 + 11`` is larger;
  blocks of other weak sums share buckets, so hash hits need no match;
- a false alarm for each block, in chain order (highest index first, the
  first MAX_CHAIN_LEN of the window's weak sum), with the window's weak sum
  and length but another strong sum, up to the first whose strong sum is
  equal (want_i only changes which block is sent then, not the counts);
- a match for each block sent; ``data`` adds the literal bytes (also of
  files sent whole).

``FileCounter`` gets these for the fast search without walking offsets in
Python: the search hands it each NumPy pass of weak sums (a "piece"), it
adds the piece as if no offset in it matched, and each match takes back
what the offsets it covers added. Only an unmatched window's false alarms
are needed in bulk, and they depend on its weak sum alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRADITIONAL_TABLESIZE = 1 << 16   # match.c: the table's size unless count / 8 * 10 + 11 is larger


@dataclass
class MatchCounts:
    """match.c's session totals (total_matches, total_hash_hits, total_false_alarms, literal_data)."""

    matches: int = 0
    hash_hits: int = 0
    false_alarms: int = 0
    data: int = 0          # literal bytes sent (stats.literal_data)

    def report_line(self) -> bytes:
        """match_report()'s FINFO line, numbers without separators (big_num)."""
        return (
            f"total: matches={self.matches}  hash_hits={self.hash_hits}  "
            f"false_alarms={self.false_alarms} data={self.data}\n"
        ).encode()


def hash_tablesize(count: int) -> int:
    """build_hash_table()'s tablesize for ``count`` blocks (load about 80%, odd when large)."""
    return max(TRADITIONAL_TABLESIZE, (count // 8) * 10 + 11)


def hash_buckets(weak: np.ndarray, tablesize: int) -> np.ndarray:
    """The bucket of each weak sum (uint32 array, any shape): SUM2HASH, or BIG_SUM2HASH."""
    weak = weak.astype(np.uint32, copy=False)
    if tablesize == TRADITIONAL_TABLESIZE:
        return ((weak & 0xFFFF) + (weak >> 16)) & 0xFFFF
    return weak % np.uint32(tablesize)


def suffix_sums1(data: memoryview) -> np.ndarray:
    """checksum1 of every suffix ``data[o:]``: uint32, shape ``(len(data),)``.

    The windows hash_search() rolls over near the end, where its window
    shrinks by a byte per offset (get_checksum1 of what is left).
    """
    x = np.frombuffer(data, dtype=np.int8).astype(np.int64)
    weights = np.arange(len(x), 0, -1, dtype=np.int64)          # (len - j) for byte j
    s1 = np.cumsum(x[::-1])[::-1]
    s2 = np.cumsum((x * weights)[::-1])[::-1]
    return ((s1 & 0xFFFF) | (s2 & 0xFFFF) << 16).astype(np.uint32)


class _Piece:
    """One pass of offsets ``[start, start + n)``: prefix sums of its hash hits and false alarms."""

    def __init__(self, start: int, hit: np.ndarray, cands: np.ndarray, alarms: np.ndarray) -> None:
        self.start, self.cands = start, cands
        self.hits = np.concatenate(([0], np.cumsum(hit, dtype=np.int64)))
        self.alarms = np.concatenate(([0], np.cumsum(alarms, dtype=np.int64)))

    def within(self, lo: int, hi: int) -> tuple[int, int]:
        """(hash hits, false alarms) the piece added for offsets ``[lo, hi)`` (absolute, clipped)."""
        n = len(self.hits) - 1
        lo, hi = min(max(lo - self.start, 0), n), min(max(hi - self.start, 0), n)
        i, j = np.searchsorted(self.cands, (lo, hi)).tolist()
        return int(self.hits[hi] - self.hits[lo]), int(self.alarms[j] - self.alarms[i])


class FileCounter:
    """The counts of one file's hash_search(), fed by the fast search (``match._Search``).

    Args:
        counts: the session totals to add to.
        sum1: the blocks' weak sums, shape ``(count,)``.
        order: block indices sorted by (sum1, -index): C's chain order per weak sum.
        last_len: the last block's length (the only one that may be short).
        block_len: ``blength``.
        max_chain: MAX_CHAIN_LEN (None: no cap, 3.2.7).
    """

    def __init__(self, counts: MatchCounts, sum1: np.ndarray, order: np.ndarray, last_len: int,
                 block_len: int, max_chain: int | None) -> None:
        count = len(sum1)
        self.counts, self.sum1, self.b, self.last_len = counts, sum1, block_len, last_len
        self.tablesize = hash_tablesize(count)
        self.buckets = np.zeros(self.tablesize, dtype=bool)
        self.buckets[hash_buckets(sum1, self.tablesize)] = True
        self.weak, n_equal = np.unique(sum1, return_counts=True)
        walked = n_equal if max_chain is None else np.minimum(n_equal, max_chain)
        if last_len != block_len:        # the short last block leads its chain: walked, never compared
            walked[int(np.searchsorted(self.weak, sum1[-1]))] -= 1
        self.full_alarms = walked        # false alarms of an unmatched full-length window, per weak sum
        self.rank = np.empty(count, dtype=np.int64)
        self.rank[order] = np.arange(count)
        self.sorted_sum1 = sum1[order]
        self.piece: _Piece | None = None

    def add_piece(self, start: int, sums: np.ndarray, cands: np.ndarray) -> None:
        """Offsets ``start + arange(len(sums))`` (full-length windows, weak sums ``sums``) looked at.

        ``cands``: the (sorted, relative) offsets whose weak sum is a full block's sum1.
        """
        alarms = self.full_alarms[np.searchsorted(self.weak, sums[cands])]
        self._add(_Piece(start, self.buckets[hash_buckets(sums, self.tablesize)], cands, alarms))

    def add_tail(self, view: memoryview, lo: int, hi: int) -> None:
        """Offsets ``[lo, hi)`` whose windows run to the end of ``view`` (shorter than ``blength``).

        Only the short last block has such a length: its offset is a false
        alarm unless it matches (then ``matched`` takes it back).
        """
        if lo >= hi:
            return
        sums = suffix_sums1(view[lo:])[: hi - lo]
        at = len(view) - self.last_len - lo
        short = self.last_len != self.b and 0 <= at < hi - lo and int(sums[at]) == int(self.sum1[-1])
        cands = np.array([at] if short else [], dtype=np.int64)
        alarms = np.ones(len(cands), dtype=np.int64)
        self._add(_Piece(lo, self.buckets[hash_buckets(sums, self.tablesize)], cands, alarms))

    def _add(self, piece: _Piece) -> None:
        self.piece = piece
        self.counts.hash_hits += int(piece.hits[-1])
        self.counts.false_alarms += int(piece.alarms[-1])

    def matched(self, offset: int, length: int, weak: int, found: int) -> None:
        """Block ``found`` (the chain's first strong match, before want_i) matched at ``offset``.

        The offsets the match covers were added as unmatched (if in the
        current piece): taken back; the offset itself is one hash hit, and
        the false alarms are the chain's blocks of this length before ``found``.
        """
        if self.piece is not None:
            hits, alarms = self.piece.within(offset, offset + length)
            self.counts.hash_hits -= hits
            self.counts.false_alarms -= alarms
        lo = int(np.searchsorted(self.sorted_sum1, weak, "left"))
        before = int(self.rank[found]) - lo            # blocks of this weak sum above ``found``
        last = len(self.sum1) - 1
        if before and self.last_len != self.b and length == self.b and int(self.sum1[last]) == weak:
            before -= 1                                # the short last block is walked, not compared
        self.counts.matches += 1
        self.counts.hash_hits += 1
        self.counts.false_alarms += before if length == self.b else 0
