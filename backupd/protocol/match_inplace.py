"""The sender's block search when the receiver updates its basis in place (updating_basis_file).

With ``--inplace`` (or a partial-dir file the receiver writes in place,
``inplace_partial``) the receiver writes the new file over its basis as the
tokens arrive, so hash_search() (rsync match.c) changes three things:

- a block whose basis offset is below the current offset may already be
  overwritten: it is unusable, and removed from its hash chain when a walk
  reaches it, unless SUMFLG_SAME_OFFSET marks it: it was matched at its own
  offset, where the receiver writes nothing (it seeks), so it stays intact;
- a strong match is replaced by the block at the same offset (aligned to
  ``blength``) when that block matches too, before the want_i rule, which
  then only takes a usable block; and a window of zeros (weak sum 0) that
  matches is moved forward to the next block boundary when the window there
  matches too (literal zeros are sent to re-align with the basis);
- the removals empty buckets, which changes later hash hits.

``InplaceSearch`` follows these rules over the same candidate walk as the
fast search (``match._scan_full_windows``: only offsets whose weak sum is a
block's sum1 are looked at in Python). The live blocks of a weak sum at
offset ``o`` are those of index ``>= ceil(o / blength)`` (a prefix of C's
chain, which runs from the highest index down) and the flagged ones below;
both are found by binary search. ``InplaceCounter`` counts hash hits and
false alarms afterwards, in NumPy passes over the offsets the search looked
at: a walk that reaches the end of its chain leaves exactly the live blocks
in it, and one that stops early (a match, MAX_CHAIN_LEN) leaves at least the
block it stopped at, so whether an offset's bucket is empty depends only on
the previous visit to that bucket. Source: rsync match.c (3.5.0)
hash_search(); who decides: sender_data.updating_basis_file.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator

import numpy as np

from backupd.protocol.match import SendCall, _Search  # match imports this module lazily
from backupd.protocol.match_counts import MatchCounts, hash_buckets, hash_tablesize, suffix_sums1
from backupd.protocol.sums import block_sums1, rolling_sums1

COUNT_WINDOW = 1 << 20   # offsets per NumPy pass of the counter
_NO_FLAG = np.iinfo(np.int64).max


class InplaceSearch(_Search):
    """``match._Search`` with hash_search()'s updating_basis_file rules (module docstring)."""

    def __init__(self, data, head, sum1, sum2, checksum, max_chain, chunk, counts: MatchCounts | None) -> None:
        super().__init__(data, head, sum1, sum2, checksum, max_chain, chunk, None)
        count = head.count
        self.neg_order = -self.order                # ascending within a weak sum's slice
        self.rank = np.empty(count, dtype=np.int64)
        self.rank[self.order] = np.arange(count)
        self.flagged = bytearray(count)             # SUMFLG_SAME_OFFSET
        self.flags_of: dict[int, list[int]] = {}    # weak sum -> flagged blocks, ascending
        self.flags_by_sum: dict[tuple[int, bytes], list[int]] = {}
        self.aligned_offset = self.aligned_i = 0
        self.short_last = self.last_len != self.b
        self.icounter = InplaceCounter(counts, self.sum1, self.last_len, self.b, max_chain) if (
            counts is not None and count) else None
        self._at = 0                                 # where the block found last is sent
        self._visit: tuple[int, int] = (0, 0)        # (offset looked at, its false alarms)

    # -- the walk ---------------------------------------------------------------------
    def _live_match(self, offset: int, weak: int, length: int, strong: bytes) -> tuple[int, int] | None:
        """(block, rank in the walk) of the first usable block of ``weak`` with this length and sum2."""
        lo = int(np.searchsorted(self.sorted_sum1, weak, "left"))
        hi = int(np.searchsorted(self.sorted_sum1, weak, "right"))
        if lo == hi:
            return None
        t = -(-offset // self.b)                   # blocks from index t on are not passed
        n_prefix = int(np.searchsorted(self.neg_order[lo:hi], -t, "right"))
        cap = self.max_chain
        first = int(self.order[lo])
        if length != self.b:                       # only the short last block, which leads its chain
            live = first >= t or self.flagged[first]
            ok = self.short_last and first == self.head.count - 1 and live and (cap is None or cap >= 1)
            return (first, 0) if ok and self.sum2[first] == strong else None
        limit = n_prefix if cap is None else min(n_prefix, cap)
        if limit <= 8 or not self.cmp_len:
            for k, i in enumerate(self.order[lo : lo + limit].tolist()):
                if self.block_len(i) == length and self.sum2[i] == strong:
                    return i, k
        else:
            keys, blocks = self._long_table(weak, self.order[lo:hi])
            pos = int(np.searchsorted(keys, np.array(strong, dtype=keys.dtype)))
            if pos < len(keys) and self.sum2[int(blocks[pos])] == strong:
                j = int(blocks[pos])
                if int(self.rank[j]) - lo < limit:
                    return j, int(self.rank[j]) - lo
        return self._flagged_match(weak, strong, t, n_prefix)

    def _flagged_match(self, weak: int, strong: bytes, t: int, n_prefix: int) -> tuple[int, int] | None:
        """The highest flagged full-length block below ``t`` with this sum2, ranked after the prefix."""
        same = self.flags_by_sum.get((weak, strong))
        if not same:
            return None
        k = bisect_left(same, t) - 1
        while k >= 0 and self.block_len(same[k]) != self.b:
            k -= 1
        if k < 0:
            return None
        f, flags = same[k], self.flags_of[weak]
        rank = n_prefix + bisect_left(flags, t) - bisect_right(flags, f)
        return (f, rank) if self.max_chain is None or rank < self.max_chain else None

    def find(self, offset: int, weak: int) -> int | None:
        """The block sent for the window at ``offset`` (and ``self._at``, where), or None."""
        length = min(self.b, self.size - offset)
        if length != self.b and self.last_len != length:
            return None
        strong = self.strong_sum(offset, length)
        hit = self._live_match(offset, weak, length, strong)
        if hit is None:
            return None
        i, rank = hit
        lead = int(self.order[int(np.searchsorted(self.sorted_sum1, weak, "left"))])
        lead_live = lead * self.b >= offset or self.flagged[lead]
        skipped_short = rank > 0 and self.short_last and lead == self.head.count - 1 and lead_live
        self._visit = (offset, rank - skipped_short)
        i, self._at = self._chosen(i, offset, weak, length, strong)
        return i

    def _chosen(self, i: int, offset: int, weak: int, length: int, strong: bytes) -> tuple[int, int]:
        """After a strong match: the same-offset block, zero re-alignment, then want_i."""
        b, count = self.b, self.head.count
        while self.aligned_offset < offset:
            self.aligned_offset += b
            self.aligned_i += 1
        a, ai = self.aligned_offset, self.aligned_i
        if (offset == a or (weak == 0 and length == b and a + length <= self.size)) and ai < count:
            ok = True
            if i != ai:
                if not self._same_block(ai, weak, length, strong):
                    ok = False
                else:
                    i = ai
            if ok and offset != a:                  # C overwrites sum, then sum2, with the aligned window's
                weak = int(block_sums1(self.view[a : a + length], length)[0])
                if weak != int(self.sum1[i]):
                    ok = False
                else:
                    strong = self.strong_sum(a, length)
                    ok = self.sum2[i] == strong
                    offset = a if ok else offset
            if ok:
                self._flag(i)
                self.want = i
        w = self.want
        if (
            i != w and w < count and (w * b >= offset or self.flagged[w])
            and self._same_block(w, weak, length, strong)
        ):
            i = w
        self.want = i + 1
        return i, offset

    def _same_block(self, i: int, weak: int, length: int, strong: bytes) -> bool:
        return int(self.sum1[i]) == weak and self.block_len(i) == length and self.sum2[i] == strong

    def _flag(self, i: int) -> None:
        if self.flagged[i]:
            return
        self.flagged[i] = 1
        weak = int(self.sum1[i])
        insort(self.flags_of.setdefault(weak, []), i)
        insort(self.flags_by_sum.setdefault((weak, self.sum2[i]), []), i)
        if self.icounter is not None:
            self.icounter.flags.append((i, self._visit[0]))

    def emit_match(self, offset: int, i: int) -> SendCall:
        """matched(at, i) for the block ``find`` chose at ``offset`` (``at`` may be re-aligned)."""
        at = self._at
        end = at + self.block_len(i)
        if self.icounter is not None:
            self.icounter.matched(self._visit[0], end, self._visit[1])
        call = SendCall(self.view[self.last_match : at], i, self.view[at:end])
        self.last_match = self.pos = end
        self.want = i + 1
        return call

    def finish(self) -> Iterator[SendCall]:
        """Flushes, the end call, then (when counting) the hash hits and false alarms of every offset."""
        yield from super().finish()
        if self.icounter is not None:
            self.icounter.count(self.view, self.end)


class InplaceCounter:
    """hash_search()'s counts with updating_basis_file, from what ``InplaceSearch`` recorded.

    The search records its matches (the offset looked at, where the next
    look is, the false alarms before the block) and the blocks it flagged;
    :meth:`count` then walks every looked-at offset in NumPy passes: its
    hash hit (is the bucket non-empty, from the previous visit to it) and,
    unless it matched, its false alarms (the usable blocks of its weak sum
    and length, at most MAX_CHAIN_LEN of that weak sum walked).
    """

    def __init__(self, counts: MatchCounts, sum1: np.ndarray, last_len: int, block_len: int,
                 max_chain: int | None) -> None:
        self.counts, self.sum1, self.last_len, self.b, self.max_chain = counts, sum1, last_len, block_len, max_chain
        self.tablesize = hash_tablesize(len(sum1))
        self.skips: list[tuple[int, int]] = []      # offsets [lo, hi) not looked at (inside a match)
        self.matched_at: list[int] = []
        self.flags: list[tuple[int, int]] = []      # (block, offset whose look flagged it)

    def matched(self, visit: int, next_visit: int, alarms: int) -> None:
        """A block sent for the window at ``visit``; the search looks next at ``next_visit``."""
        self.counts.matches += 1
        self.counts.false_alarms += alarms
        self.matched_at.append(visit)
        self.skips.append((visit + 1, next_visit))

    def count(self, view: memoryview, end: int) -> None:
        """Add the hash hits and the unmatched offsets' false alarms of offsets ``[0, max(end, 1))``."""
        state = _CountState(self)
        size, b = len(view), self.b
        full_end = max(size - b + 1, 0)              # offsets with a whole blength window
        stop_all = max(end, 1)
        for lo in range(0, stop_all, COUNT_WINDOW):
            hi = min(lo + COUNT_WINDOW, stop_all)
            parts = []
            if lo < min(hi, full_end):
                top = min(hi, full_end)
                parts.append(rolling_sums1(view[lo : top + b - 1], b))
            if hi > max(lo, full_end):
                tail_lo = max(lo, full_end)
                parts.append(suffix_sums1(view[tail_lo:])[: hi - tail_lo])
            weak = np.concatenate(parts) if len(parts) > 1 else parts[0]
            state.add(lo, weak, size)


class _CountState:
    """Per-bucket state carried from one pass of ``InplaceCounter.count`` to the next."""

    def __init__(self, c: InplaceCounter) -> None:
        self.c = c
        count, b, ts = len(c.sum1), c.b, c.tablesize
        blocks = np.arange(count, dtype=np.int64)
        self.bucket_of = hash_buckets(c.sum1, ts).astype(np.int64)
        self.max_off = np.full(ts, -1, dtype=np.int64)
        np.maximum.at(self.max_off, self.bucket_of, blocks * b)
        self.min_flag = np.full(ts, _NO_FLAG, dtype=np.int64)
        flagged = np.array([i for i, _ in c.flags], dtype=np.int64)
        if len(flagged):
            np.minimum.at(self.min_flag, self.bucket_of[flagged], np.array([v for _, v in c.flags]))
        self.is_flagged = np.zeros(count, dtype=bool)
        self.is_flagged[flagged] = True
        self.keys = np.sort(c.sum1.astype(np.uint64) << np.uint64(32) | blocks.astype(np.uint64))
        self.flag_keys = np.sort(c.sum1[flagged].astype(np.uint64) << np.uint64(32) | flagged.astype(np.uint64))
        self.last_visit = np.full(ts, -1, dtype=np.int64)
        self.last_break = np.zeros(ts, dtype=bool)
        self.skips = np.array(c.skips, dtype=np.int64).reshape(-1, 2)
        self.matched_at = np.array(c.matched_at, dtype=np.int64)

    def add(self, lo: int, weak: np.ndarray, size: int) -> None:
        c = self.c
        n = len(weak)
        buckets = hash_buckets(weak, c.tablesize).astype(np.int64)
        keep = self._looked_at(lo, n) & (self.max_off[buckets] >= 0)   # an empty bucket stays empty
        ys = lo + np.flatnonzero(keep)
        weak, buckets = weak[keep], buckets[keep]
        lengths = np.minimum(c.b, size - ys)
        matched = np.isin(ys, self.matched_at)
        alarms, chain_break = self._alarms(ys, weak, lengths)
        alarms[matched] = 0
        c.counts.false_alarms += int(alarms.sum())
        c.counts.hash_hits += self._hits(ys, buckets, chain_break | matched)

    def _looked_at(self, lo: int, n: int) -> np.ndarray:
        delta = np.zeros(n + 1, dtype=np.int64)
        sk = self.skips
        np.add.at(delta, np.clip(sk[:, 0] - lo, 0, n), 1)
        np.add.at(delta, np.clip(sk[:, 1] - lo, 0, n), -1)
        return np.cumsum(delta[:-1]) == 0

    def _alarms(self, ys: np.ndarray, weak: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """False alarms of each offset if it matched nothing, and whether MAX_CHAIN_LEN stopped it."""
        c = self.c
        t = -(-ys // c.b)
        w = weak.astype(np.uint64) << np.uint64(32)
        tk = w | np.minimum(t, 0xFFFFFFFF).astype(np.uint64)
        n_live = (np.searchsorted(self.keys, w | np.uint64(0xFFFFFFFF), "right")
                  - np.searchsorted(self.keys, tk))
        n_live += np.searchsorted(self.flag_keys, tk) - np.searchsorted(self.flag_keys, w)
        walked = n_live if c.max_chain is None else np.minimum(n_live, c.max_chain)
        chain_break = np.zeros(len(ys), dtype=bool) if c.max_chain is None else n_live > c.max_chain
        if c.last_len == c.b:
            return np.where(lengths == c.b, walked, 0), chain_break
        last = len(c.sum1) - 1
        short = (weak == c.sum1[last]) & ((last >= t) | self.is_flagged[last]) & (walked > 0)
        alarms = np.where(lengths == c.b, walked - short, short & (lengths == c.last_len))
        return alarms.astype(np.int64), chain_break

    def _hits(self, ys: np.ndarray, buckets: np.ndarray, stopped: np.ndarray) -> int:
        """Hash hits: the bucket is non-empty, by the previous look at it (module docstring)."""
        order = np.argsort(buckets, kind="stable")
        bs, at, brk = buckets[order], ys[order], stopped[order]
        first = np.ones(len(bs), dtype=bool)
        first[1:] = bs[1:] != bs[:-1]
        prev = np.empty_like(at)
        prev_brk = np.empty_like(brk)
        prev[1:], prev_brk[1:] = at[:-1], brk[:-1]
        prev[first], prev_brk[first] = self.last_visit[bs[first]], self.last_break[bs[first]]
        never = self.max_off[bs] >= 0
        live = (self.max_off[bs] >= prev) | (self.min_flag[bs] < prev)
        hits = np.where(prev < 0, never, prev_brk | live)
        last = np.ones(len(bs), dtype=bool)
        last[:-1] = bs[:-1] != bs[1:]
        self.last_visit[bs[last]], self.last_break[bs[last]] = at[last], brk[last]
        return int(hits.sum())
