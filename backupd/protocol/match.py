"""The sender's block search: new file x received block sums -> send_token calls.

``match_tokens`` reproduces rsync's hash_search() call sequence exactly
(which block is chosen, where literal data is cut) without a per-byte
Python loop: the weak sums of every window come from NumPy prefix sums over
bounded pieces of the file, candidate offsets are those whose sum is in the
block table, and only candidates are walked in Python, with the strong sum
from the C hash. ``match_tokens_ref`` is the byte-by-byte transcription it
is tested against. Source: rsync match.c (3.5.0) match_sums(),
hash_search(), matched(); docs/rsync-protocol-b.md §5.

Work is bounded per byte whatever the client's sums are: a weak sum's chain
is one dict lookup by (length, strong sum), so at most one strong sum per
offset; and where candidates are dense (sums that all share a zero or
periodic file's weak sum), offsets whose window equals an earlier unmatched
one are skipped without hashing (``_earlier_twins``).

At -vv the sender reports hash_search()'s totals (match.c match_report):
given a ``MatchCounts``, the search adds its matches, hash hits, false
alarms and literal bytes, counted per NumPy pass (match_counts.FileCounter),
not per offset; without one it does no counting work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from backupd.protocol.constants import CHUNK_SIZE
from backupd.protocol.match_counts import FileCounter, MatchCounts, hash_tablesize
from backupd.protocol.sums import (
    Buffer,
    Checksum,
    StrongSums,
    SumHead,
    block_sums1,
    checksum1_ref,
    rolling_sums1,
)

MAX_CHAIN = 1024            # 3.5.0 MAX_CHAIN_LEN: equal weak sums tried per offset (None: 3.2.7)
MATCH_WINDOW = 1024 * 1024  # offsets whose weak sums are computed per NumPy pass (>= 16 blocks)
SHORT_CHAIN = 8            # chains up to this long are walked; longer ones get a table
TWIN_WINDOW = 128 * 1024   # offsets hashed together (twins are found within one such window)
TWIN_DENSITY = 16          # equal windows looked for when one offset in this many is a candidate
_HASH_BASE = 0x9E3779B97F4A7C15  # odd: invertible mod 2**64
_HASH_INV = pow(_HASH_BASE, -1, 1 << 64)
_HASH_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
_PREFILTER_SHIFT = 12       # bitmap over the top 20 bits of sum1 before the exact lookup


class SendCall(NamedTuple):
    """One C ``send_token`` call: ``literal`` then ``token`` (block, -1 end, -2 none).

    ``block`` is the matched block's data in the new file (zlib primes its
    history with it); None unless ``token >= 0``.
    """

    literal: memoryview
    token: int
    block: memoryview | None


def literal_calls(view: memoryview, chunk: int = CHUNK_SIZE) -> Iterator[SendCall]:
    """All data as literal: a -2 call at every multiple of ``chunk`` below the length, then -1.

    Used when there are no block sums (or an empty file), and for --append
    on the part after the kept prefix. Source: match.c match_sums().
    """
    last = 0
    for cut in range(chunk, len(view), chunk):
        yield SendCall(view[last:cut], -2, None)
        last = cut
    yield SendCall(view[last:], -1, None)


class _Search:
    """State of the fast search: block table, want, last_match, early flushes.

    Equal weak sums are found through an index sorted by (sum1, -block), so
    a weak sum's "chain" is a slice in C's order (highest block first, at
    most ``max_chain`` entries) without a Python object per block.
    """

    def __init__(
        self,
        data: Buffer,
        head: SumHead,
        sum1: Sequence[int] | np.ndarray,
        sum2: Sequence[bytes],
        checksum: Checksum,
        max_chain: int | None,
        chunk: int,
        counts: MatchCounts | None = None,
    ) -> None:
        if not len(sum1) == len(sum2) == head.count:
            raise ValueError(f"{len(sum1)}/{len(sum2)} block sums for a head of {head.count}")
        self.view = memoryview(data).cast("B")
        self.size = len(self.view)
        self.head, self.checksum, self.chunk, self.max_chain = head, checksum, chunk, max_chain
        self.b = head.block_len
        self.cmp_len = min(head.s2_len, checksum.digest_len)
        self.sum1 = np.asarray(sum1, dtype=np.uint32)
        self.sum2 = StrongSums.of(sum2, self.cmp_len)
        self.last_len = head.block_size(head.count - 1) if head.count else 0
        self.end = self.size + 1 - self.last_len
        # C's chain order: by sum1, highest block first (int32: 4 bytes a block)
        backwards = np.argsort(self.sum1[::-1], kind="stable").astype(np.int32)
        self.order = np.int32(head.count - 1) - backwards
        del backwards
        self.sorted_sum1 = self.sum1[self.order]
        self.last_match = 0
        self.pos = 0          # next offset the search looks at
        self.want = 0
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.strong_sums = 0  # strong sums computed (bounded: at most one per offset)
        self._powers: tuple[np.ndarray, np.ndarray] | None = None
        self.counter = None if counts is None or not head.count else FileCounter(
            counts, self.sum1, self.order, self.last_len, self.b, max_chain)
        self._found: tuple[int, int, int] | None = None  # (offset, weak, block) of the last find

    def hash_powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inverse base ** j, base ** j)`` mod 2**64 for ``j < n``, uint64, kept for the next pass."""
        if self._powers is None or len(self._powers[0]) < n:
            inv = np.full(n, _HASH_INV, dtype=np.uint64)
            base = np.full(n, _HASH_BASE, dtype=np.uint64)
            inv[0] = base[0] = 1
            self._powers = (np.cumprod(inv), np.cumprod(base))
        return self._powers

    def block_len(self, i: int) -> int:
        return self.last_len if i == self.head.count - 1 else self.b

    def chain(self, weak: int) -> np.ndarray:
        """Blocks whose sum1 is ``weak``, highest index first, at most ``max_chain``."""
        lo = int(np.searchsorted(self.sorted_sum1, weak, "left"))
        hi = int(np.searchsorted(self.sorted_sum1, weak, "right"))
        if self.max_chain is not None:
            hi = min(hi, lo + self.max_chain)
        return self.order[lo:hi]

    def chain_match(self, weak: int, length: int, strong: bytes) -> int | None:
        """First block of ``weak``'s chain (C's order, ``max_chain`` cut) with this length and sum2.

        What hash_search()'s walk finds, with bounded work however long the
        chain is: a short chain is walked; a long one is looked up in its
        table of distinct strong sums (built once, NumPy, ~``cmp_len + 8``
        bytes an entry), so blocks that share a weak and a strong sum are
        checked once (the CVE-2026-70453 class). Only the last block can be
        short, and it leads its chain.
        """
        chain = self.chain(weak)
        if len(chain) <= SHORT_CHAIN or not self.cmp_len:
            for i in chain.tolist():
                if self.block_len(i) == length and self.sum2[i] == strong:
                    return i
            return None
        first = int(chain[0])
        if self.block_len(first) != self.b:          # the short last block
            if length != self.b:
                return first if self.sum2[first] == strong else None
        elif length != self.b:
            return None
        keys, blocks = self._long_table(weak, chain)
        pos = int(np.searchsorted(keys, np.array(strong, dtype=keys.dtype)))
        if pos < len(keys) and self.sum2[int(blocks[pos])] == strong:
            return int(blocks[pos])
        return None

    def _long_table(self, weak: int, chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct sum2 of the chain's full-length blocks, first such block of each)."""
        table = self._tables.get(weak)
        if table is None:
            if self.block_len(int(chain[0])) != self.b:
                chain = chain[1:]
            keys, first = np.unique(self.sum2.array()[chain], return_index=True)
            table = self._tables[weak] = (keys, chain[first])
        return table

    def strong_sum(self, offset: int, length: int) -> bytes:
        """Strong sum of ``length`` bytes at ``offset``, cut to the compared length (counted)."""
        self.strong_sums += 1
        return self.checksum.block_sum(self.view[offset : offset + length])[: self.cmp_len]

    def find(self, offset: int, weak: int) -> int | None:
        """Block matching at ``offset`` (weak sum ``weak``), after the want-next rule; or None.

        At most one strong sum per offset.
        """
        length = min(self.b, self.size - offset)
        if length != self.b and self.block_len(self.head.count - 1) != length:
            return None                               # no block this short
        strong = self.strong_sum(offset, length)
        found = self.chain_match(weak, length, strong)
        if found is not None:
            self._found = (offset, weak, found)
        want = self.want
        if (
            found is not None and found != want and want < self.head.count
            and int(self.sum1[want]) == weak and self.block_len(want) == length
            and self.sum2[want] == strong
        ):
            found = want
        return found

    def emit_match(self, offset: int, i: int) -> SendCall:
        """matched(offset, i): literal since last_match, then block ``i``."""
        end = offset + self.block_len(i)
        if self.counter is not None:
            _, weak, found = self._found      # find() at ``offset`` came just before
            self.counter.matched(offset, end - offset, weak, found)
        call = SendCall(self.view[self.last_match : offset], i, self.view[offset:end])
        self.last_match = self.pos = end
        self.want = i + 1
        return call

    def flushes_before(self, limit: int) -> Iterator[SendCall]:
        """Early literal flushes at offsets below ``limit`` (no match in between).

        C flushes ``data[last_match : offset - blength]`` at the first offset
        where ``offset - last_match >= blength + CHUNK_SIZE``, while more
        than CHUNK_SIZE offsets remain before ``end``.
        """
        while True:
            at = self.last_match + self.b + self.chunk
            if at >= limit or self.end - at <= self.chunk:
                return
            yield SendCall(self.view[self.last_match : at - self.b], -2, None)
            self.last_match = at - self.b

    def finish(self) -> Iterator[SendCall]:
        """Flushes up to the end, then the end-of-file call with the remaining literal."""
        yield from self.flushes_before(self.end)
        yield SendCall(self.view[self.last_match :], -1, None)


def match_tokens(
    data: Buffer,
    head: SumHead,
    sum1: np.ndarray,
    sum2: Sequence[bytes],
    checksum: Checksum,
    *,
    max_chain: int | None = MAX_CHAIN,
    chunk: int = CHUNK_SIZE,
    window: int | None = None,
    counts: MatchCounts | None = None,
    updating_basis: bool = False,
) -> Iterator[SendCall]:
    """Yield the C sender's send_token calls for ``data`` against the generator's sums.

    Memory stays bounded for GB files (``data`` may be an mmap): weak sums
    are computed ``window`` offsets at a time, about 16 bytes of
    temporaries per offset (default: 1 MiB or 16 blocks, whichever is more;
    about 9 s per GiB on one core). Only ``min(s2_len, digest_len)`` strong-sum
    bytes are compared (a 3.2.7 redo may send 16 for an 8-byte digest).

    Args:
        data: the sender's file.
        head: the generator's sum head.
        sum1: weak sums, shape ``(count,)``.
        sum2: strong-sum prefixes, ``s2_len`` bytes each.
        checksum: the negotiated checksum with the session seed.
        max_chain: equal weak sums tried per offset (3.5.0: 1024; None: 3.2.7).
        chunk: CHUNK_SIZE (a parameter only for tests).
        window: offsets per NumPy pass (tests use small ones).
        counts: when given, hash_search()'s matches, hash hits, false
            alarms and literal bytes are added to it (match_counts; costs
            a few NumPy passes over the weak sums, so only when reported).
        updating_basis: the receiver writes into its basis (C's
            updating_basis_file, ``sender_data.updating_basis_file``):
            passed blocks are unusable unless matched at their own offset.

    Raises:
        ValueError: the number of sums does not match ``head.count``.
    """
    calls = _match_calls(data, head, sum1, sum2, checksum, max_chain, chunk, window, counts, updating_basis)
    if counts is None:
        yield from calls
        return
    for call in calls:
        counts.data += len(call.literal)
        yield call


def _match_calls(data, head, sum1, sum2, checksum, max_chain, chunk, window, counts,
                 updating) -> Iterator[SendCall]:
    """:func:`match_tokens` without the literal count."""
    if updating and head.count and len(memoryview(data)):
        from backupd.protocol.match_inplace import InplaceSearch

        search = InplaceSearch(data, head, sum1, sum2, checksum, max_chain, chunk, counts)
    else:
        search = _Search(data, head, sum1, sum2, checksum, max_chain, chunk, counts)
    if not search.size or not head.count:
        yield from literal_calls(search.view, chunk)
        return
    if window is None:
        window = max(MATCH_WINDOW, 16 * head.block_len)
    yield from _scan_full_windows(search, window)
    if search.counter is not None:   # the offsets whose window runs past the end (offset 0 always)
        lo = max(search.pos, search.size - search.b + 1, 0)
        search.counter.add_tail(search.view, lo, max(search.end, 1))
    if head.remainder and search.pos <= search.size - head.remainder:
        offset = search.size - head.remainder       # the only place the short block fits
        yield from search.flushes_before(offset)
        weak = int(block_sums1(search.view[offset:], head.remainder)[0])
        if (i := search.find(offset, weak)) is not None:
            yield search.emit_match(offset, i)
    yield from search.finish()


def _scan_full_windows(search: _Search, window: int) -> Iterator[SendCall]:
    """Walk the candidate offsets whose full-length window's weak sum is a block's sum1."""
    b = search.b
    full = search.sum1 if search.last_len == b else search.sum1[:-1]
    table = np.unique(full)
    last_full = search.size - b
    if last_full < 0 or not len(table) and search.counter is None:
        return
    bitmap = np.zeros(1 << (32 - _PREFILTER_SHIFT), dtype=bool)
    bitmap[table >> _PREFILTER_SHIFT] = True
    start = 0
    while (start := max(start, search.pos)) <= last_full:
        if search.pos == start == search.last_match and start > 0:
            # right after a match C looks at the block-aligned window first: take runs of
            # matching blocks without rolling over every offset in between
            while search.pos <= last_full:
                offset = search.pos
                weak = int(block_sums1(search.view[offset : offset + b], b)[0])
                at = int(np.searchsorted(table, weak))
                if at == len(table) or int(table[at]) != weak:
                    break
                if (i := search.find(offset, weak)) is None:
                    break
                yield search.emit_match(offset, i)
            start = search.pos
            if start > last_full:
                break
        stop = min(start + window, last_full + 1)
        piece = search.view[start : stop + b - 1]
        sums = rolling_sums1(piece, b)
        hits = np.flatnonzero(bitmap[sums >> _PREFILTER_SHIFT])
        at = np.searchsorted(table, sums[hits])     # np.isin would sort the table again
        np.minimum(at, len(table) - 1, out=at)
        hits = hits[table[at] == sums[hits]]
        if search.counter is not None:
            search.counter.add_piece(start, sums, hits)
        twin = _earlier_twins(search, piece, sums, hits)
        k = 0
        seg = 0  # offsets (relative) from here on were all looked at, none matched
        while k < len(hits):
            if twin is not None:
                k = _next_untwinned(twin, k, seg)
                if k >= len(hits):
                    break
            offset = start + int(hits[k])
            yield from search.flushes_before(offset)
            if (i := search.find(offset, int(sums[offset - start]))) is None:
                k += 1
                continue
            yield search.emit_match(offset, i)
            seg = search.pos - start
            k = int(np.searchsorted(hits, seg))
        start = stop


def _earlier_twins(search: _Search, piece: memoryview, sums: np.ndarray, hits: np.ndarray) -> np.ndarray | None:
    """For each hit, the nearest earlier hit whose window has the same bytes, else -1.

    Equal windows have equal weak and strong sums, so a twin of an offset
    that matched nothing matches nothing either and is never hashed: a
    zero-filled or periodic file against block sums that all share its weak
    sum costs one strong sum per distinct window, not one per byte (the
    CVE-2026-70453 class). Windows are told apart by weak sum and a 64-bit
    polynomial hash (NumPy prefix sums); two different windows with equal
    hashes only cost a match that is then not found (its bytes go as
    literal data), never a wrong one. None when hits are sparse (each is
    looked at anyway).
    """
    if len(hits) * TWIN_DENSITY < len(piece) or search.b < 2:
        return None
    twin = np.full(len(hits), -1, dtype=np.int64)
    for lo in range(0, len(sums), TWIN_WINDOW):   # bounded temporaries: ~80 bytes an offset
        first, end = np.searchsorted(hits, (lo, lo + TWIN_WINDOW)).tolist()
        if end - first > 1:
            twin[first:end] = _twins_in(search, piece, sums, hits[first:end], lo)
    return twin


def _twins_in(search: _Search, piece: memoryview, sums: np.ndarray, hits: np.ndarray, lo: int) -> np.ndarray:
    """:func:`_earlier_twins` for ``hits`` (sorted) in ``[lo, lo + TWIN_WINDOW)`` of ``piece``."""
    b = search.b
    sub = piece[lo : int(hits[-1]) + b]
    rel = hits - lo
    inv_pows, pows = search.hash_powers(len(sub))
    prefix = np.zeros(len(sub) + 1, dtype=np.uint64)
    weighted = np.frombuffer(sub, dtype=np.uint8).astype(np.uint64)
    weighted *= inv_pows[: len(sub)]
    np.cumsum(weighted, out=prefix[1:])
    del weighted
    keys = (prefix[rel + b] - prefix[rel]) * pows[rel] + sums[hits].astype(np.uint64) * _HASH_MIX
    del prefix
    order = np.argsort(keys, kind="stable")       # equal windows: in offset order
    same = keys[order[1:]] == keys[order[:-1]]
    twin = np.full(len(hits), -1, dtype=np.int64)
    twin[order[1:][same]] = hits[order[:-1][same]]
    return twin


def _next_untwinned(twin: np.ndarray, k: int, seg: int) -> int:
    """First index from ``k`` whose hit has no twin at or after ``seg`` (looked at, unmatched).

    Galloping: the work is proportional to the hits skipped.
    """
    n = 64
    while k < len(twin):
        nz = np.flatnonzero(twin[k : k + n] < seg)
        if len(nz):
            return k + int(nz[0])
        k += n
        n *= 2
    return len(twin)


def match_tokens_ref(
    data: Buffer,
    head: SumHead,
    sum1: Sequence[int] | np.ndarray,
    sum2: Sequence[bytes],
    checksum: Checksum,
    *,
    max_chain: int | None = MAX_CHAIN,
    chunk: int = CHUNK_SIZE,
    counts: MatchCounts | None = None,
    updating_basis: bool = False,
) -> Iterator[SendCall]:
    """Byte-by-byte transcription of hash_search(): the reference for ``match_tokens``.

    Rolls (s1, s2) one byte at a time, walks C's hash table chains
    (tablesize, key and insertion order of build_hash_table()) and checks
    the early flush at every offset, counting as C does into ``counts``.
    With ``updating_basis`` (C's updating_basis_file) the chains lose the
    blocks the search has passed, the same-offset block is preferred and
    zero runs re-align (see ``match_inplace``). About a microsecond per
    byte: tests only.
    """
    totals = counts or MatchCounts()
    for call in _ref_calls(data, head, sum1, sum2, checksum, max_chain, chunk, totals, updating_basis):
        if counts is not None:
            counts.data += len(call.literal)
        yield call


def _ref_calls(data, head, sum1, sum2, checksum, max_chain, chunk, counts, updating) -> Iterator[SendCall]:
    view = memoryview(data).cast("B")
    if not len(view) or not head.count:
        yield from literal_calls(view, chunk)
        return
    ref = _RefSearch(view, head, sum1, sum2, checksum, max_chain, counts, updating)
    size, b = len(view), head.block_len
    end = size + 1 - ref.lens[-1]
    signed = [v - 256 if v > 127 else v for v in view.tobytes()]
    k = min(size, b)
    s1, s2 = _split_sum(checksum1_ref(view[:k]))
    offset = last_match = 0
    while True:
        found = ref.chain_match(offset, (s1 & 0xFFFF) | (s2 & 0xFFFF) << 16, last_match)
        if found is not None:
            i, offset = found
            yield SendCall(view[last_match:offset], i, view[offset : offset + ref.lens[i]])
            last_match = offset + ref.lens[i]
            offset += ref.lens[i] - 1
            k = min(b, size - offset)
            s1, s2 = _split_sum(checksum1_ref(view[offset : offset + k]))
        backup = max(0, offset - last_match)
        x = signed[offset]
        s1, s2 = s1 - x, s2 - k * x
        if offset + k < size:
            s1 += signed[offset + k]
            s2 += s1
        else:
            k -= 1
        if backup >= b + chunk and end - offset > chunk:
            yield SendCall(view[last_match : offset - b], -2, None)
            last_match = offset - b
        offset += 1
        if offset >= end:
            break
    yield SendCall(view[last_match:], -1, None)


def _split_sum(value: int) -> tuple[int, int]:
    return value & 0xFFFF, value >> 16


class _RefSearch:
    """C's hash table (build_hash_table()) and chain walk, for ``match_tokens_ref``."""

    def __init__(self, view, head, sum1, sum2, checksum, max_chain, counts: MatchCounts, updating=False) -> None:
        self.view, self.head, self.checksum, self.max_chain = view, head, checksum, max_chain
        self.counts, self.updating = counts, updating
        self.lens = [head.block_size(i) for i in range(head.count)]
        self.cmp_len = min(head.s2_len, checksum.digest_len)
        self.sum1 = [int(s) for s in sum1]
        self.sum2 = [s[: self.cmp_len] for s in sum2]
        self.tablesize = hash_tablesize(head.count)
        self.buckets: dict[int, int] = {}
        self.next_in_chain = [-1] * head.count
        for i, s in enumerate(self.sum1):
            self.next_in_chain[i] = self.buckets.get(self.key(s), -1)
            self.buckets[self.key(s)] = i
        self.want = 0
        self.same_offset = [False] * head.count    # SUMFLG_SAME_OFFSET
        self.aligned_offset = self.aligned_i = 0

    def key(self, weak: int) -> int:
        if self.tablesize == 1 << 16:
            return ((weak & 0xFFFF) + (weak >> 16)) & 0xFFFF
        return weak % self.tablesize

    def strong(self, offset: int, length: int) -> bytes:
        return self.checksum.block_sum(self.view[offset : offset + length])[: self.cmp_len]

    def chain_match(self, offset: int, weak: int, last_match: int) -> tuple[int, int] | None:
        """(block, offset it is sent at) matched at ``offset``, or None; unlinks passed blocks."""
        key = self.key(weak)
        i, equal, strong, prev = self.buckets.get(key, -1), 0, None, -1
        length = min(self.head.block_len, len(self.view) - offset)
        self.counts.hash_hits += i >= 0
        while i >= 0:
            nxt = self.next_in_chain[i]
            if self.updating and i * self.head.block_len < offset and not self.same_offset[i]:
                if prev < 0:
                    self.buckets[key] = nxt        # *prev = chain: the bucket may become empty
                else:
                    self.next_in_chain[prev] = nxt
                i = nxt
                continue
            prev = i
            if self.sum1[i] == weak:
                equal += 1
                if self.max_chain is not None and equal > self.max_chain:
                    return None
                if length == self.lens[i]:
                    if strong is None:
                        strong = self.strong(offset, length)
                    if self.sum2[i] == strong:
                        self.counts.matches += 1
                        return self._chosen(i, offset, weak, length, strong, last_match)
                    self.counts.false_alarms += 1
            i = nxt
        return None

    def _chosen(self, i, offset, weak, length, strong, last_match) -> tuple[int, int]:
        """hash_search() after a strong match: same offset (in place), then want_i."""
        b, count = self.head.block_len, self.head.count
        if self.updating:
            while self.aligned_offset < offset:
                self.aligned_offset += b
                self.aligned_i += 1
            a, ai = self.aligned_offset, self.aligned_i
            if (offset == a or (weak == 0 and length == b and a + length <= len(self.view))) and ai < count:
                ok = True
                if i != ai:
                    if weak != self.sum1[ai] or length != self.lens[ai] or strong != self.sum2[ai]:
                        ok = False
                    else:
                        i = ai
                if ok and offset != a:      # zeros here and at the next block boundary: re-align
                    weak = checksum1_ref(self.view[a : a + length])   # C overwrites sum, then sum2
                    if weak != self.sum1[i]:
                        ok = False
                    else:
                        strong = self.strong(a, length)
                        if strong != self.sum2[i]:
                            ok = False
                        else:
                            offset = a
                if ok:
                    self.same_offset[i] = True
                    self.want = i
        w = self.want
        if (
            i != w and w < count
            and (not self.updating or w * b >= offset or self.same_offset[w])
            and self.sum1[w] == weak and self.lens[w] == length and self.sum2[w] == strong
        ):
            i = w
        self.want = i + 1
        return i, offset
