"""Sum head, block-length rule, checksum1 (reference + NumPy) and strong sums.

The generator describes its basis file with a ``SumHead`` and one
``sum1`` (int32 LE) + ``sum2`` (first ``s2_len`` bytes of the strong sum)
per block; the sender matches against them (``match.py``) and both ends
check the whole-file sum. Source: rsync generator.c sum_sizes_sqroot(),
generate_and_send_sums(); io.c read_sum_head(); checksum.c get_checksum1(),
get_checksum2(), sum_init(); docs/rsync-protocol-b.md §4, §12.2.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import xxhash

from backupd.errors import ExitCode, ProtocolError, Unsupported
from backupd.protocol.constants import MAX_BLOCK_SIZE
from backupd.protocol.digests import have_md4, new_digest

if TYPE_CHECKING:
    import numpy as np

BLOCK_SIZE = 700                # rsync.h BLOCK_SIZE: blength for files up to 700*700 bytes
SUM_LENGTH = 16                 # rsync.h SUM_LENGTH: longest per-block strong sum used
FIRST_PASS_S2_LEN = 2           # csum_length in phase 0 (SHORT_SUM_LENGTH)
BLOCKSUM_BIAS = 10              # generator.c: bits of safety in the s2length rule
SUMS_WINDOW = 2 * 1024 * 1024   # bytes of basis turned into sum1 values per NumPy pass
ROW = 256                       # block_sums1 by row: bytes per float32 row
ROW_MIN_BLOCK = 2048            # shorter blocks are summed block by block (a masked row per boundary costs more)
_MAX_COUNT = 0x7FFFFFFF         # count is an int32 on the wire
MAX_ALLOC = 1 << 30             # rsync --max-alloc default (options.c DEFAULT_MAX_ALLOC)
SUM_BUF_SIZE = 24               # sizeof(struct sum_buf) in rsync.h: what C allocates per block
_HEAD = struct.Struct("<4i")

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class SumHead:
    """The 16-byte checksum header (C ``struct sum_struct``, wire part).

    ``block_len`` is C's ``blength``, ``s2_len`` its ``s2length``. Block ``i``
    covers basis bytes ``[i * block_len, i * block_len + block_size(i))``.
    The all-zero head means "no basis: everything comes as literal data".
    Source: rsync io.c write_sum_head() / read_sum_head(); protocol-b §4.1.
    """

    count: int
    block_len: int
    s2_len: int
    remainder: int

    def encode(self) -> bytes:
        """Return the wire form: count, blength, s2length, remainder as 4 x int32 LE."""
        return _HEAD.pack(self.count, self.block_len, self.s2_len, self.remainder)

    @property
    def prefix_len(self) -> int:
        """Bytes the head describes: the basis length, or the kept prefix for --append.

        ``count * block_len - (block_len - remainder if remainder else 0)``.
        Source: rsync sender.c (append_mode), protocol-b §4.1.
        """
        if self.count == 0:
            return 0
        short = self.block_len - self.remainder if self.remainder else 0
        return self.count * self.block_len - short

    def block_size(self, index: int) -> int:
        """Length of block ``index``: ``remainder`` for a short last block, else ``block_len``.

        Raises:
            ProtocolError: ``index`` outside ``0 .. count - 1`` (it came off the wire).
        """
        if not 0 <= index < self.count:
            raise ProtocolError(f"block index {index} outside {self.count} blocks")
        if index == self.count - 1 and self.remainder:
            return self.remainder
        return self.block_len


NULL_SUM_HEAD = SumHead(0, 0, 0, 0)


def decode_sum_head(
    data: bytes | memoryview, digest_len: int = SUM_LENGTH, *, max_alloc: int | None = MAX_ALLOC,
    max_block_len: int = MAX_BLOCK_SIZE,
) -> SumHead:
    """Decode and bound-check the 16-byte sum head.

    Bounds are rsync 3.5.0's read_sum_head(): ``count >= 0``;
    ``0 <= blength <= 131072``, nonzero when ``count > 0``; ``0 <= remainder
    <= blength``. ``s2length`` may be up to ``max(16, digest_len)``: 3.5.0
    allows the digest length, and a 3.2.7 generator sends 16 in the redo
    pass even for 8-byte digests (protocol-b §7.4; compare only
    ``min(s2_len, digest_len)`` bytes). Stricter than C: a head with
    ``count == 0`` must have ``remainder == 0`` (else --append's prefix
    length would be negative). The sums the head announces are bounded
    before they are read, as C's receive_sums() allocations are: ``count``
    x ``sizeof(struct sum_buf)`` and ``count`` x the digest length, each
    under ``max_alloc`` (2**26 blocks are refused by default, 2**22 pass).

    Args:
        data: exactly 16 bytes.
        digest_len: full digest length of the negotiated checksum.
        max_alloc: rsync's --max-alloc; None: no bound.
        max_block_len: 131072, or OLD_MAX_BLOCK_SIZE (2**29) below protocol 30.

    Raises:
        ProtocolError: wrong size or a field out of bounds (exit code 2),
            or the sums would exceed ``max_alloc`` (exit code 22).
    """
    if len(data) != _HEAD.size:
        raise ProtocolError(f"sum head of {len(data)} bytes, want {_HEAD.size}")
    count, block_len, s2_len, remainder = _HEAD.unpack(data)
    if count < 0:
        raise ProtocolError(f"invalid checksum count {count}")
    if not 0 <= block_len <= max_block_len:
        raise ProtocolError(f"invalid block length {block_len} (max {max_block_len})")
    if count and not block_len:
        raise ProtocolError(f"invalid zero block length for {count} blocks")
    max_s2 = max(SUM_LENGTH, digest_len)
    if not 0 <= s2_len <= max_s2:
        raise ProtocolError(f"invalid checksum length {s2_len} (max {max_s2})")
    if not 0 <= remainder <= block_len:
        raise ProtocolError(f"invalid remainder length {remainder} for block length {block_len}")
    if not count and remainder:
        raise ProtocolError(f"remainder {remainder} without blocks")
    if max_alloc is not None:
        check_alloc(count, SUM_BUF_SIZE, max_alloc, "block sums")
        check_alloc(count * max(s2_len, digest_len), 1, max_alloc, "strong sums")
    return SumHead(count, block_len, s2_len, remainder)


def check_alloc(num: int, size: int, max_alloc: int, what: str) -> None:
    """Refuse an allocation of ``num`` items of ``size`` bytes reaching ``max_alloc``.

    rsync's rule (util2.c my_alloc(): ``num >= max_alloc / size``), checked
    before anything is read or allocated; the session ends with exit 22
    (RERR_MALLOC) as rsync's does.

    Raises:
        ProtocolError: over the limit (exit code 22).
    """
    if size and num >= max_alloc // size:
        raise ProtocolError(
            f"{what}: {num} x {size} bytes exceeds --max-alloc={max_alloc}", ExitCode.MALLOC
        )


def _sqrt_block_len(file_len: int) -> int:
    """Block length ~ sqrt(file_len), multiple of 8, 700 .. 131072 (sum_sizes_sqroot)."""
    if file_len <= BLOCK_SIZE * BLOCK_SIZE:
        return BLOCK_SIZE
    c = 1 << ((file_len.bit_length() - 1) // 2)    # 2 ** floor(log4(file_len))
    if c >= MAX_BLOCK_SIZE:
        return MAX_BLOCK_SIZE
    block_len = 0
    while c >= 8:
        if (block_len | c) ** 2 <= file_len:
            block_len |= c
        c >>= 1
    return max(block_len, BLOCK_SIZE)


def sum_sizes(
    file_len: int, digest_len: int, *, block_size: int | None = None, redo: bool = False, align: int = 0
) -> SumHead:
    """Choose the sum head for a basis of ``file_len`` bytes, as a 3.5.0 generator does.

    ``s2_len`` is 2..min(16, digest_len) bytes from the file and block size
    (2 below 32 MiB), or ``min(16, digest_len)`` in the redo pass. A zero
    length basis gets the null head (generator.c recv_generator).
    Source: rsync generator.c sum_sizes_sqroot(); protocol-b §4.2.

    Args:
        file_len: basis length in bytes.
        digest_len: full digest length of the negotiated checksum.
        block_size: the client's ``-B`` value, if any.
        redo: phase 1 (csum_length == SUM_LENGTH): full-length strong sums.
        align: a power of two, or 0. When the block length rsync would choose
            is at least ``align`` and the client gave no ``-B``, it is rounded
            up to a multiple of ``align`` (at most 131072), so that matched
            blocks can be reflinked (backupd's choice; any length is valid
            on the wire).

    Raises:
        ValueError: negative length, ``block_size`` outside 1..131072, or
            more than 2**31 - 1 blocks (C: "file is too large").
    """
    if file_len < 0:
        raise ValueError(f"negative file length {file_len}")
    if block_size is not None and not 0 < block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block size {block_size} outside 1..{MAX_BLOCK_SIZE}")
    if file_len == 0:
        return NULL_SUM_HEAD
    block_len = block_size if block_size is not None else _sqrt_block_len(file_len)
    if align and block_size is None and block_len >= align:
        block_len = min(-(-block_len // align) * align, MAX_BLOCK_SIZE)
    cap = min(SUM_LENGTH, digest_len)
    if redo:
        s2_len = cap
    else:
        bits = BLOCKSUM_BIAS + 2 * (file_len.bit_length() - 1)
        bits -= min(bits, block_len.bit_length() - 1)
        s2_len = min(max((bits + 1 - 32 + 7) // 8, FIRST_PASS_S2_LEN), cap)
    remainder = file_len % block_len
    count = file_len // block_len + (remainder != 0)
    if count > _MAX_COUNT:
        raise ValueError(f"{file_len} bytes need {count} blocks of {block_len}: too many")
    return SumHead(count, block_len, s2_len, remainder)


def checksum1_ref(data: Buffer) -> int:
    """checksum1 of ``data``, one byte at a time (the reference for the NumPy code).

    Bytes are signed chars (0x80..0xff count as -128..-1), CHAR_OFFSET 0:
    ``s1 = sum(b)``, ``s2 = sum((n - i) * b[i])``, result
    ``(s1 & 0xffff) | (s2 & 0xffff) << 16``. Source: rsync checksum.c
    get_checksum1(); protocol-b §4.3.
    """
    s1 = s2 = 0
    for byte in bytes(data):
        s1 += byte - 256 if byte > 127 else byte
        s2 += s1
    return (s1 & 0xFFFF) | (s2 & 0xFFFF) << 16


def block_sums1(window: Buffer, block_len: int) -> np.ndarray:
    """checksum1 of each block of ``window``: uint32, shape ``(ceil(len / block_len),)``.

    ``window`` starts on a block boundary, a few MiB at a time; the last
    block may be short. Blocks of ROW_MIN_BLOCK bytes or more (every basis
    over about 4 MiB) are summed row by row (``_block_sums1_by_row``), the
    rest block by block. Source: rsync checksum.c get_checksum1().
    """
    if block_len >= ROW_MIN_BLOCK:
        return _block_sums1_by_row(window, block_len)
    return _block_sums1_by_block(window, block_len)


def _block_sums1_by_block(window: Buffer, block_len: int) -> np.ndarray:
    """block_sums1 as one int64 matrix product per window (temporaries: about 8 bytes per byte)."""
    import numpy as np  # loaded by the first session that needs it
    x = np.frombuffer(window, dtype=np.int8).astype(np.int64)
    n_full = len(x) // block_len
    full = x[: n_full * block_len].reshape(n_full, block_len)
    weights = np.arange(block_len, 0, -1, dtype=np.int64)   # s2 = sum (n - i) * x[i]
    s1, s2 = full.sum(axis=1), full @ weights
    if tail := len(x) - n_full * block_len:
        s1 = np.append(s1, x[-tail:].sum())
        s2 = np.append(s2, x[-tail:] @ weights[-tail:])
    return ((s1 & 0xFFFF) | (s2 & 0xFFFF) << 16).astype(np.uint32)


def _block_sums1_by_row(window: Buffer, block_len: int) -> np.ndarray:
    """block_sums1 from float32 rows of ROW bytes, two BLAS matrix-vector products per window.

    Per row ``r``: ``S = sum x[j]`` and ``T = sum j * x[j]`` (j = 0..ROW-1).
    Every partial sum of either is an integer below 2**24 in magnitude
    (``128 * 255 * 256 / 2``), so float32 holds it exactly whatever order
    BLAS adds in. Prefix sums over rows give ``A(p) = sum x[k]`` and
    ``W(p) = sum k * x[k]`` for k < p at row starts; a block boundary inside
    a row adds that row's masked part. A block ``[b, e)`` then has
    ``s1 = A(e) - A(b)`` and ``s2 = (e - b) * s1 - (W(e) - W(b) - b * s1)``
    (checksum1's ``sum (n - i) * x[b + i]``). Temporaries: about 5 bytes
    per byte. Source: rsync checksum.c get_checksum1().
    """
    import numpy as np  # loaded by the first session that needs it
    x = np.frombuffer(window, dtype=np.int8)
    n = len(x)
    nrows = -(-n // ROW)
    flat = np.empty(nrows * ROW, dtype=np.float32)
    flat[:n] = x
    flat[n:] = 0
    rows = flat.reshape(nrows, ROW)
    ones, ramp = np.ones(ROW, dtype=np.float32), np.arange(ROW, dtype=np.float32)
    s = (rows @ ones).astype(np.int64)
    t = (rows @ ramp).astype(np.int64)
    first = np.arange(nrows, dtype=np.int64) * ROW           # index of each row's first byte
    a = np.concatenate(([0], np.cumsum(s)))                  # A at row starts (and at the end)
    w = np.concatenate(([0], np.cumsum(t + first * s)))      # W at row starts
    bounds = np.append(np.arange(0, n, block_len, dtype=np.int64), n)
    row, col = np.divmod(bounds, ROW)
    a_b, w_b = a[row], w[row]
    if len(cut := np.flatnonzero(col)):                      # boundaries inside a row
        part = np.where(ramp < col[cut, None], rows[row[cut]], 0)
        part_s = (part @ ones).astype(np.int64)
        a_b[cut] += part_s
        w_b[cut] += (part @ ramp).astype(np.int64) + first[row[cut]] * part_s
    s1 = np.diff(a_b)
    s2 = np.diff(bounds) * s1 - (np.diff(w_b) - bounds[:-1] * s1)
    return ((s1 & 0xFFFF) | (s2 & 0xFFFF) << 16).astype(np.uint32)


def rolling_sums1(data: Buffer, k: int) -> np.ndarray:
    """checksum1 of every window ``data[o:o + k]``: uint32, shape ``(max(0, len - k + 1),)``.

    Prefix sums instead of a byte loop: with ``A`` the running sum of the
    signed bytes and ``B`` the running sum of ``A`` (both starting at 0),
    ``s1 = A[o+k] - A[o]`` and ``s2 = B[o+k+1] - B[o+1] - k * A[o]``. Only
    the low 16 bits of s1 and s2 are kept, so everything is computed modulo
    2**32 in uint32 (wrap-around is harmless): about 12 bytes of
    temporaries per input byte. Source: protocol-b §12.2.

    Raises:
        ValueError: ``k < 1``.
    """
    import numpy as np  # loaded by the first session that needs it
    if k < 1:
        raise ValueError(f"window length {k} < 1")
    x = np.frombuffer(data, dtype=np.int8)
    n = len(x)
    m = n - k + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint32)
    a = np.zeros(n + 1, dtype=np.uint32)
    np.cumsum(x, out=a[1:], dtype=np.uint32)
    b = np.zeros(n + 2, dtype=np.uint32)
    np.cumsum(a, out=b[1:], dtype=np.uint32)
    s2 = b[k + 1 : k + 1 + m] - b[1 : 1 + m]
    del b
    s2 -= a[:m] * np.uint32(k)
    s1 = a[k : k + m] - a[:m]
    del a
    s1 &= 0xFFFF
    s2 <<= 16
    s2 |= s1
    return s2


class Hasher(Protocol):
    """Incremental digest: what ``Checksum.file_sum_hasher()`` returns."""

    def update(self, data: Buffer, /) -> None:
        """Add ``data`` to the digest."""

    def digest(self) -> bytes:
        """The digest of everything added so far, in wire byte order."""


class _LittleEndianXxh:
    """xxhash object whose digest is in rsync's wire order (little-endian words)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def update(self, data: Buffer) -> None:
        self._inner.update(data)

    def digest(self) -> bytes:
        return self._inner.digest()[::-1]    # canonical big-endian -> LE (xxh128: low64 first)


_DIGEST_LEN = {"xxh128": 16, "xxh3": 8, "xxh64": 8, "md5": 16, "md4": 16, "sha1": 20, "md4_old": 16}
# the implied checksum of protocols 27-29 (checksum.c CSUM_MD4_OLD); never negotiated by name
MD4_OLD = "md4_old"
_ALIASES = {"xxhash": "xxh64"}
HAVE_MD4 = have_md4()
# rsync checksum.c valid_checksums order; md4 where a library provides it (pycryptodomex on OpenSSL 3)
SUPPORTED_CHECKSUMS: tuple[str, ...] = ("xxh128", "xxh3", "xxh64", "md5") + (("md4",) if HAVE_MD4 else ()) + ("sha1",)


class Checksum:
    """The negotiated checksum: seeded per-block strong sums and the whole-file sum.

    Per block (checksum.c get_checksum2): xxh128/xxh3/xxh64 use the seed
    sign-extended to 64 bits; md5 and sha1 prepend the 4 seed bytes (LE;
    md5 appends them without CF_CHKSUM_SEED_FIX); md4 appends them; seed 0
    means no seed bytes. The whole-file sum is never seeded (sum_init for
    protocol >= 30; for md4 that is CSUM_MD4: plain MD4, no seed). Protocols
    27-29 imply ``md4_old`` (CSUM_MD4_OLD): its block sum is md4's (the
    seed appended when non-zero), its whole-file sum MD4 of the 4 seed
    bytes, always, then the data (sum_init). Digests
    are in wire byte order. md4 comes from hashlib or pycryptodomex
    (``digests.new_digest``), never a home-made one. Source: protocol-b §4.4, §4.5, §13.2-3.
    """

    def __init__(self, name: str, seed: int, *, seed_fix: bool = True) -> None:
        """Pick the algorithm.

        Args:
            name: negotiated name (``xxhash`` is an alias of ``xxh64``).
            seed: the session's checksum_seed, a signed int32.
            seed_fix: CF_CHKSUM_SEED_FIX was negotiated (every 3.2+ client).

        Raises:
            Unsupported: unknown name, ``none``, or md4 without a provider.
            ValueError: seed outside int32.
        """
        canonical = _ALIASES.get(name, name)
        if canonical not in _DIGEST_LEN or (canonical in ("md4", MD4_OLD) and not HAVE_MD4):
            raise Unsupported(f"checksum {name!r} is not supported")
        if not -(1 << 31) <= seed < 1 << 31:
            raise ValueError(f"checksum seed {seed} outside int32")
        self.name = canonical
        self.seed = seed
        self.seed_fix = seed_fix
        self.digest_len = _DIGEST_LEN[canonical]
        self._seed64 = seed & 0xFFFFFFFFFFFFFFFF
        self._seed_bytes = struct.pack("<i", seed) if seed else b""
        self._block = getattr(self, "_block_" + ("md4" if canonical == MD4_OLD else canonical))

    def __repr__(self) -> str:
        return f"Checksum({self.name!r}, {self.seed})"

    def block_sum(self, data: Buffer) -> bytes:
        """Full seeded strong sum of one block, ``digest_len`` bytes, wire order."""
        return self._block(data)

    def _block_xxh128(self, data: Buffer) -> bytes:
        return xxhash.xxh3_128_intdigest(data, seed=self._seed64).to_bytes(16, "little")

    def _block_xxh3(self, data: Buffer) -> bytes:
        return xxhash.xxh3_64_intdigest(data, seed=self._seed64).to_bytes(8, "little")

    def _block_xxh64(self, data: Buffer) -> bytes:
        return xxhash.xxh64_intdigest(data, seed=self._seed64).to_bytes(8, "little")

    def _block_md5(self, data: Buffer) -> bytes:
        if not self.seed_fix:
            h = hashlib.md5(data)
            h.update(self._seed_bytes)
            return h.digest()
        h = hashlib.md5(self._seed_bytes)
        h.update(data)
        return h.digest()

    def _block_md4(self, data: Buffer) -> bytes:
        h = new_digest("md4", data)
        if self._seed_bytes:
            h.update(self._seed_bytes)
        return h.digest()

    def _block_sha1(self, data: Buffer) -> bytes:
        h = hashlib.sha1(self._seed_bytes)
        h.update(data)
        return h.digest()

    def file_sum_hasher(self) -> Hasher:
        """A fresh whole-file hasher (seeded only for md4_old); ``digest()`` is ``digest_len`` bytes, wire order."""
        if self.name == MD4_OLD:
            return new_digest("md4", struct.pack("<i", self.seed))
        if self.name == "xxh128":
            return _LittleEndianXxh(xxhash.xxh3_128())
        if self.name == "xxh3":
            return _LittleEndianXxh(xxhash.xxh3_64())
        if self.name == "xxh64":
            return _LittleEndianXxh(xxhash.xxh64())
        return new_digest(self.name)


def iter_sums_wire(
    view: Buffer, head: SumHead, checksum: Checksum, *, window: int = SUMS_WINDOW
) -> Iterator[bytes]:
    """Yield the generator's block sums for ``view`` in pieces of about ``window`` bytes of basis.

    Wire per block: ``sum1`` int32 LE, then the first ``s2_len`` bytes of
    the seeded strong sum. sum1 comes from NumPy over block-aligned windows
    (memory stays bounded for GB files); strong sums from the C hash, one
    call per block. Source: rsync generator.c generate_and_send_sums().

    Raises:
        ValueError: ``view`` shorter than the head describes, or ``s2_len``
            longer than the digest.
    """
    if len(view) < head.prefix_len:
        raise ValueError(f"basis of {len(view)} bytes, sum head needs {head.prefix_len}")
    if head.s2_len > checksum.digest_len:
        raise ValueError(f"s2_len {head.s2_len} longer than the {checksum.name} digest")
    if not head.count:
        return
    mv = memoryview(view).cast("B")[: head.prefix_len]
    bl, s2_len = head.block_len, head.s2_len
    per_window = max(1, window // bl) * bl
    for start in range(0, len(mv), per_window):
        chunk = mv[start : start + per_window]
        sum1 = block_sums1(chunk, bl).astype("<u4").tobytes()
        parts = []
        for i, off in enumerate(range(0, len(chunk), bl)):
            parts.append(sum1[4 * i : 4 * i + 4])
            parts.append(checksum.block_sum(chunk[off : off + bl])[:s2_len])
        yield b"".join(parts)


def generate_sums(view: Buffer, head: SumHead, checksum: Checksum) -> bytes:
    """All block sums of a basis as the generator sends them after the head.

    Wire: ``count`` x (sum1 int32 LE + ``s2_len`` strong-sum bytes). See
    ``iter_sums_wire`` to stream them instead.

    Raises:
        ValueError: as ``iter_sums_wire``.
    """
    return b"".join(iter_sums_wire(view, head, checksum))


class StrongSums(Sequence[bytes]):
    """``count`` strong-sum prefixes of ``width`` bytes each, kept in one bytes object.

    What the sender holds per block besides sum1: ``width`` bytes, no
    Python object per block (a list of bytes costs ~57 bytes a block).
    Indexing gives ``bytes``; :meth:`array` a zero-copy NumPy view.
    """

    __slots__ = ("blob", "width", "_count")

    def __init__(self, blob: bytes, width: int, count: int) -> None:
        if len(blob) != width * count:
            raise ValueError(f"{len(blob)} bytes for {count} sums of {width}")
        self.blob, self.width, self._count = blob, width, count

    @classmethod
    def of(cls, sums: Iterable[bytes], width: int) -> StrongSums:
        """The first ``width`` bytes of each sum (each must have at least that many)."""
        import numpy as np  # loaded by the first session that needs it
        if isinstance(sums, StrongSums):
            if sums.width == width:
                return sums
            rows = np.frombuffer(sums.blob, dtype=np.uint8).reshape(len(sums), sums.width)
            return cls(rows[:, :width].tobytes(), width, len(sums))
        items = [bytes(s)[:width] for s in sums]
        if any(len(s) != width for s in items):
            raise ValueError(f"a strong sum shorter than {width} bytes")
        return cls(b"".join(items), width, len(items))

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        return self.blob[index * self.width : (index + 1) * self.width]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StrongSums):
            return (self.width, self.blob) == (other.width, other.blob)
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def array(self) -> np.ndarray:
        """The sums as a NumPy ``S{width}`` array, shape ``(count,)`` (width >= 1)."""
        import numpy as np  # loaded by the first session that needs it
        return np.frombuffer(self.blob, dtype=f"S{self.width}")


def decode_block_sums(data: bytes | memoryview, head: SumHead) -> tuple[np.ndarray, StrongSums]:
    """Split the block sums: sum1 uint32, shape ``(count,)``; sum2 ``s2_len`` bytes each.

    About ``4 + s2_len`` bytes kept per block (C: 24 + digest length),
    twice that while decoding.

    Raises:
        ProtocolError: ``data`` is not exactly ``count * (4 + s2_len)`` bytes.
    """
    import numpy as np  # loaded by the first session that needs it
    width = 4 + head.s2_len
    if len(data) != head.count * width:
        raise ProtocolError(
            f"block sums of {len(data)} bytes, want {head.count} x {width}"
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(head.count, width)
    sum1 = rows[:, :4].copy().view("<u4").reshape(head.count).astype(np.uint32, copy=False)
    sum2 = StrongSums(rows[:, 4:].tobytes(), head.s2_len, head.count)
    return sum1, sum2
