"""Token streams: literal data and basis-block references, plain or compressed.

A file's data travels sender -> receiver as a token stream: literal runs,
references to blocks of the receiver's basis, and an end marker (then the
whole-file sum, which is not part of this module). Plain streams are int32
tokens; compressed streams (zlib, zlibx, zstd, lz4) are flag bytes with
block runs and DEFLATED_DATA chunks. Readers are driven by a blocking
``read(n)`` callable; writers return the wire bytes of one ``send_token``
call. Source: rsync token.c (3.5.0); docs/rsync-protocol-b.md §6, §13.8-9.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lz4.block
import zstandard

from backupd.errors import ExitCode, ProtocolError, Unsupported
from backupd.protocol import zstd_stream
from backupd.protocol.constants import CHUNK_SIZE, MAX_DEFLATED_CHUNK
from backupd.protocol.sums import SumHead

END_FLAG = 0x00          # end of file data
TOKEN_LONG = 0x20        # + int32 block number
TOKENRUN_LONG = 0x21     # + int32 block number + u16 run count
DEFLATED_DATA = 0x40     # + 6 high bits of length, then the low length byte
TOKEN_REL = 0x80         # + 6-bit delta from the last block
TOKENRUN_REL = 0xC0      # + 6-bit delta, then u16 run count
MAX_TOKEN_INDEX = 0x7FFFFFFE
MAX_RUN = 65535          # blocks after the first in one run (u16)
MAX_LITERAL = 16 * 1024 * 1024   # longest plain literal run we accept (C: any int32)
LITERAL_PIECE = 256 * 1024       # largest Literal a decompressing reader hands out
ZSTD_WINDOW_LOG_MAX = 24        # 16 MiB: zstd levels up to 19 (C default 3: 2 MiB); --ultra 20+ refused
LZ4_CAPACITY = 32912             # max(LZ4_compressBound(32768), 16385)
ZLIB_LEVEL = 6
ZSTD_LEVEL = 3
SYNC_MARKER = b"\x00\x00\xff\xff"
SUPPORTED_COMPRESSIONS: tuple[str, ...] = ("zstd", "lz4", "zlibx", "zlib")

_INT32 = struct.Struct("<i")
_U16 = struct.Struct("<H")

Read = Callable[[int], bytes]
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Literal:
    """Literal file data (one piece of a run; never empty)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class BlockMatch:
    """Copy basis block ``index`` (C: token ``-(index + 1)`` on a plain stream)."""

    index: int


class TokenEnd:
    """End of this file's data; the whole-file sum follows on the wire."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TOKEN_END"


TOKEN_END = TokenEnd()
Token = Literal | BlockMatch | TokenEnd


def _stream_error(what: str, exc: Exception) -> ProtocolError:
    return ProtocolError(f"bad compressed data ({what}): {exc}", ExitCode.STREAMIO)


def _read_int32(read: Read) -> int:
    return _INT32.unpack(read(4))[0]


class TokenReader:
    """Receiver side: turns a token stream into ``Literal``/``BlockMatch``/``TOKEN_END``.

    Call ``start_file(head)`` before each file, ``next_token(read)`` until
    ``TOKEN_END``, and ``see_block(data)`` with the bytes of every matched
    block before asking for the next token (zlib needs them; a no-op for the
    others). With ``head`` given, block indexes beyond ``head.count`` are
    refused.
    """

    def __init__(self) -> None:
        self._count: int | None = None

    def start_file(self, head: SumHead | None = None) -> None:
        """Reset the per-file state; ``head`` is the sum head echoed in front of the tokens."""
        self._count = head.count if head is not None else None

    def next_token(self, read: Read) -> Token:
        """Read and return the next token.

        Args:
            read: blocking ``read(n)`` returning exactly n bytes (or raising).

        Raises:
            ProtocolError: bad token, length or block index (exit 2), or bad
                compressed data (exit 12).
        """
        raise NotImplementedError

    def see_block(self, data: Buffer) -> None:
        """Show the reader the bytes of the block just matched (zlib history)."""

    def _check_block(self, index: int) -> None:
        if self._count is not None and index >= self._count:
            raise ProtocolError(f"block {index} outside {self._count} blocks of the sum head")


class _PlainReader(TokenReader):
    """int32 tokens: ``n > 0`` literal bytes follow, ``n < 0`` block ``-n - 1``, 0 ends.

    Long literal runs are handed out in CHUNK_SIZE pieces (token.c
    simple_recv_token()).
    """

    def __init__(self, max_literal: int = MAX_LITERAL) -> None:
        super().__init__()
        self._max_literal = max_literal
        self._residue = 0

    def start_file(self, head: SumHead | None = None) -> None:
        super().start_file(head)
        self._residue = 0

    def next_token(self, read: Read) -> Token:
        if not self._residue:
            value = _read_int32(read)
            if value == 0:
                return TOKEN_END
            if value < 0:
                index = -value - 1
                self._check_block(index)
                return BlockMatch(index)
            if value > self._max_literal:
                raise ProtocolError(f"literal run of {value} bytes (max {self._max_literal})")
            self._residue = value
        n = min(CHUNK_SIZE, self._residue)
        self._residue -= n
        return Literal(bytes(read(n)))


class _CompressedReader(TokenReader):
    """Flag-byte framing shared by zlib, zlibx, zstd and lz4 (token.c recv_*_token()).

    Subclasses decode DEFLATED_DATA payloads (``_feed``), hand out the
    output (``_pending``), and may act before a non-data flag (``_data_done``).
    Runs are expanded into one ``BlockMatch`` per block.
    """

    def __init__(self) -> None:
        super().__init__()
        self._token = 0
        self._run = 0

    def start_file(self, head: SumHead | None = None) -> None:
        super().start_file(head)
        self._token = 0
        self._run = 0

    def next_token(self, read: Read) -> Token:
        if self._run:
            self._run -= 1
            self._token += 1
            return BlockMatch(self._token)
        while True:
            piece = self._pending()
            if piece:
                return Literal(piece)
            flag = read(1)[0]
            if flag & 0xC0 == DEFLATED_DATA:
                size = (flag & 0x3F) << 8 | read(1)[0]
                if not size:
                    raise ProtocolError("empty DEFLATED_DATA chunk", ExitCode.STREAMIO)
                self._feed(bytes(read(size)))
                continue
            self._data_done()
            if flag == END_FLAG:
                self._token = 0
                return TOKEN_END
            return self._block_token(flag, read)

    def _block_token(self, flag: int, read: Read) -> BlockMatch:
        """Decode TOKEN_REL/TOKENRUN_REL/TOKEN_LONG/TOKENRUN_LONG (recv_compressed_token_num)."""
        if flag & TOKEN_REL:
            token = self._token + (flag & 0x3F)
            has_run = flag & 0x40
            if token > MAX_TOKEN_INDEX:
                raise ProtocolError(f"invalid token number {token} in compressed stream")
        elif flag in (TOKEN_LONG, TOKENRUN_LONG):
            token = _read_int32(read)
            has_run = flag & 1
            if not 0 <= token <= MAX_TOKEN_INDEX:
                raise ProtocolError(f"invalid token number {token} in compressed stream")
        else:
            raise ProtocolError(f"unknown token flag {flag:#04x} in compressed stream")
        run = _U16.unpack(read(2))[0] if has_run else 0
        if has_run and (run == 0 or token + run > MAX_TOKEN_INDEX):
            raise ProtocolError(f"invalid run of {run} after block {token}")
        self._check_block(token + run)
        self._token, self._run = token, run
        return BlockMatch(token)

    def _feed(self, payload: bytes) -> None:
        raise NotImplementedError

    def _pending(self) -> bytes | None:
        raise NotImplementedError

    def _data_done(self) -> None:
        """Called before every non-data flag."""


class _DeflateReader(_CompressedReader):
    """zlib / zlibx: raw inflate, one stream per file; zlib primes matched blocks.

    The sender strips the ``00 00 ff ff`` ending every sync flush; it is fed
    back before the first non-data flag after data. Output is handed out
    in pieces of at most LITERAL_PIECE bytes. Source: token.c
    recv_deflated_token(), see_deflate_token(); protocol-b §6.3.
    """

    def __init__(self, prime: bool) -> None:
        super().__init__()
        self._prime = prime
        self._new_inflater()

    def _new_inflater(self) -> None:
        self._inflater = zlib.decompressobj(-15)
        self._tail = b""
        self._more = False        # output may be pending
        self._inflated = False    # data since the last token: restore the sync marker

    def start_file(self, head: SumHead | None = None) -> None:
        super().start_file(head)
        self._new_inflater()

    def _feed(self, payload: bytes) -> None:
        self._tail, self._more, self._inflated = payload, True, True

    def _pending(self) -> bytes | None:
        if not self._more:
            return None
        try:
            out = self._inflater.decompress(self._tail, LITERAL_PIECE)
        except zlib.error as exc:
            raise _stream_error("inflate", exc) from exc
        self._tail = self._inflater.unconsumed_tail
        self._more = bool(self._tail) or len(out) == LITERAL_PIECE
        if self._inflater.eof:
            raise ProtocolError("deflate stream ended inside a file", ExitCode.STREAMIO)
        return out

    def _data_done(self) -> None:
        if not self._inflated:
            return
        self._inflated = False
        try:
            out = self._inflater.decompress(SYNC_MARKER, 1)   # an empty stored block: no output
        except zlib.error as exc:
            raise _stream_error("inflate sync", exc) from exc
        if out or self._inflater.eof or self._inflater.unconsumed_tail:
            raise ProtocolError("decompressor lost sync", ExitCode.STREAMIO)

    def next_token(self, read: Read) -> Token:
        token = super().next_token(read)
        if token is TOKEN_END:
            self._new_inflater()
        return token

    def see_block(self, data: Buffer) -> None:
        """Feed a matched block to zlib's history as fake stored blocks (zlib only).

        Each piece of <= 65535 bytes must come back as output unchanged,
        else the inflater was not at a block boundary.

        Raises:
            ProtocolError: the decompressor lost sync (exit 12).
        """
        if not self._prime:
            return
        view = memoryview(data).cast("B")
        for start in range(0, len(view), 0xFFFF):
            piece = bytes(view[start : start + 0xFFFF])
            n = len(piece)
            header = bytes((0, n & 0xFF, n >> 8, ~n & 0xFF, (~n >> 8) & 0xFF))
            try:
                out = self._inflater.decompress(header + piece, n + 1)
            except zlib.error as exc:
                raise _stream_error("inflate token", exc) from exc
            if out != piece or self._inflater.unconsumed_tail:
                raise ProtocolError("decompressor lost sync", ExitCode.STREAMIO)


class _ZstdReader(_CompressedReader):
    """zstd: one decompression stream for the whole session (token.c recv_zstd_token()).

    Every DEFLATED_DATA chunk is decoded in steps of at most ``piece``
    output bytes, as C decodes into its fixed buffer: a 16 KB chunk may
    stand for hundreds of MiB (a C sender's chunk of a zero-filled file
    does), and only one piece is held at a time. The next flag is read
    only once a chunk's input is consumed and a step left room in its
    output (nothing more inside zstd). A frame asking for a window over
    ZSTD_WINDOW_LOG_MAX is refused before zstd allocates it.
    """

    def __init__(self, piece: int = LITERAL_PIECE) -> None:
        super().__init__()
        self._stream = zstd_stream.ZstdStream(piece, ZSTD_WINDOW_LOG_MAX)
        self._more = False

    def _feed(self, payload: bytes) -> None:
        self._stream.feed(payload)
        self._more = True

    def _pending(self) -> bytes | None:
        while self._more:
            try:
                out, self._more = self._stream.step()
            except zstd_stream.ZstdStreamError as exc:
                raise _stream_error("zstd", exc) from exc
            if out:
                return out
        return None


class _Lz4Reader(_CompressedReader):
    """lz4: every chunk is an independent raw block (token.c recv_compressed_token())."""

    def __init__(self) -> None:
        super().__init__()
        self._out: bytes | None = None

    def _feed(self, payload: bytes) -> None:
        try:
            self._out = lz4.block.decompress(payload, uncompressed_size=LZ4_CAPACITY)
        except (lz4.block.LZ4BlockError, ValueError) as exc:
            raise _stream_error("lz4", exc) from exc

    def _pending(self) -> bytes | None:
        out, self._out = self._out, None
        return out


def _canonical(compression: str | None) -> str:
    name = "none" if compression is None else compression
    if name not in SUPPORTED_COMPRESSIONS + ("none",):
        raise Unsupported(f"compression {compression!r} is not supported")
    return name


def make_token_reader(compression: str | None, *, max_literal: int = MAX_LITERAL) -> TokenReader:
    """Return the receiver-side decoder for the negotiated compression.

    Create one per session: the zstd stream spans all files.

    Args:
        compression: None or "none" (plain int32 tokens), "zlib", "zlibx",
            "zstd" or "lz4".
        max_literal: longest plain literal run accepted.

    Raises:
        Unsupported: unknown compression name.
    """
    name = _canonical(compression)
    if name == "none":
        return _PlainReader(max_literal)
    if name in ("zlib", "zlibx"):
        return _DeflateReader(prime=name == "zlib")
    if name == "zstd":
        return _ZstdReader()
    return _Lz4Reader()


# ---------------------------------------------------------------- writers


class TokenWriter:
    """Sender side: the wire bytes of each C ``send_token(literal, token)`` call.

    ``token >= 0`` sends block ``token`` after the literal, ``-1`` ends the
    file (the caller then writes the whole-file sum), ``-2`` sends literal
    data only. Create one per session (zstd continues one stream across
    files); ``start_file()`` before each file.
    """

    def start_file(self) -> None:
        """Forget the previous file's run state (a new file starts)."""

    def send(self, literal: Buffer, token: int, block_data: Buffer | None = None) -> bytes:
        """Encode one send_token call.

        Args:
            literal: data between the last match and this token (may be empty).
            token: block index, -1 (end of file) or -2 (literal only).
            block_data: the matched block's bytes; needed by zlib to prime
                its history, ignored otherwise.

        Raises:
            ValueError: token below -2, or zlib without ``block_data``.
        """
        raise NotImplementedError


class _PlainWriter(TokenWriter):
    """int32 tokens, literal runs in pieces of at most CHUNK_SIZE (simple_send_token())."""

    def send(self, literal: Buffer, token: int, block_data: Buffer | None = None) -> bytes:
        if token < -2:
            raise ValueError(f"token {token} < -2")
        view = memoryview(literal).cast("B")
        out = bytearray()
        for start in range(0, len(view), CHUNK_SIZE):
            piece = view[start : start + CHUNK_SIZE]
            out += _INT32.pack(len(piece))
            out += piece
        if token != -2:
            out += _INT32.pack(-(token + 1))
        return bytes(out)


def _frame(payload: bytes) -> bytes:
    return bytes((DEFLATED_DATA | len(payload) >> 8, len(payload) & 0xFF)) + payload


def _split(data: bytes, size: int = MAX_DEFLATED_CHUNK) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class _CompressedWriter(TokenWriter):
    """Run building shared by the compressed senders (send_deflated_token() et al.).

    Consecutive blocks without literal data in between become one run;
    the run is written when a call breaks it: REL form for a delta 0..63
    from the previous run's last block, else LONG with the absolute number.
    """

    _needs_block = False          # zlib primes its history with matched blocks

    def __init__(self) -> None:
        self._last_token = -1     # -1: a new file starts with the next call
        self._run_start = 0
        self._last_run_end = 0
        self._flush_pending = False

    def start_file(self) -> None:
        self._last_token = -1

    def send(self, literal: Buffer, token: int, block_data: Buffer | None = None) -> bytes:
        if token < -2:
            raise ValueError(f"token {token} < -2")
        if token >= 0 and block_data is None and self._needs_block:
            raise ValueError("zlib needs the matched block's bytes to prime its history")
        view = memoryview(literal).cast("B")
        out = bytearray()
        if self._last_token == -1:
            self._new_file()
            self._last_run_end, self._run_start, self._flush_pending = 0, token, False
        elif self._last_token == -2:
            self._run_start = token
        elif len(view) or token != self._last_token + 1 or token >= self._run_start + MAX_RUN + 1:
            out += self._run_bytes()
            self._last_run_end, self._run_start = self._last_token, token
        self._last_token = token
        if len(view) or self._flush_pending:
            for payload in self._compress(view, flush=token != -2):
                out += _frame(payload)
            self._flush_pending = token == -2
        if token == -1:
            out.append(END_FLAG)
        elif token >= 0:
            self._see_block(block_data)
        return bytes(out)

    def _run_bytes(self) -> bytes:
        delta = self._run_start - self._last_run_end
        extra = self._last_token - self._run_start
        if 0 <= delta <= 63:
            out = bytes(((TOKENRUN_REL if extra else TOKEN_REL) + delta,))
        else:
            out = bytes((TOKENRUN_LONG if extra else TOKEN_LONG,)) + _INT32.pack(self._run_start)
        return out + _U16.pack(extra) if extra else out

    def _new_file(self) -> None:
        """Per-file compressor reset (zlib)."""

    def _compress(self, literal: memoryview, flush: bool) -> Iterator[bytes]:
        raise NotImplementedError

    def _see_block(self, block_data: Buffer | None) -> None:
        """Prime the compressor with a matched block (zlib)."""


class _DeflateWriter(_CompressedWriter):
    """zlib / zlibx: raw deflate reset per file, sync flush before tokens, marker stripped.

    Chunk boundaries follow C's 16383-byte output buffer (in flush mode C
    holds back the last 4 bytes of a full buffer: 16379-byte chunks).
    Source: token.c send_deflated_token(); protocol-b §6.3, §6.6.
    """

    def __init__(self, level: int, prime: bool) -> None:
        super().__init__()
        self._level = level
        self._prime = self._needs_block = prime
        self._deflater = self._make()

    def _make(self):  # -> zlib.Compress
        return zlib.compressobj(self._level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)

    def _new_file(self) -> None:
        self._deflater = self._make()

    def _compress(self, literal: memoryview, flush: bool) -> Iterator[bytes]:
        starts = range(0, len(literal), CHUNK_SIZE) or range(1)   # a pending flush: no input
        buf = bytearray()
        syncing = False
        for start in starts:
            out = self._deflater.compress(literal[start : start + CHUNK_SIZE])
            if flush and start == starts[-1]:
                out += self._deflater.flush(zlib.Z_SYNC_FLUSH)
                syncing = True
            pos = 0
            while pos < len(out):
                take = min(MAX_DEFLATED_CHUNK - len(buf), len(out) - pos)
                buf += out[pos : pos + take]
                pos += take
                if len(buf) == MAX_DEFLATED_CHUNK:
                    keep = 4 if syncing else 0
                    yield bytes(buf[: len(buf) - keep])
                    del buf[: len(buf) - keep]
        if syncing:
            del buf[-4:]      # the sync flush's trailing 00 00 ff ff
        if buf:
            yield bytes(buf)

    def _see_block(self, block_data: Buffer | None) -> None:
        if not self._prime or block_data is None:
            return
        view = memoryview(block_data).cast("B")
        for start in range(0, len(view), 0xFFFF):
            self._deflater.compress(view[start : start + 0xFFFF])
            self._deflater.flush(zlib.Z_SYNC_FLUSH)


class _ZstdWriter(_CompressedWriter):
    """zstd: one stream per session, ``ZSTD_e_flush`` before tokens (send_zstd_token())."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._stream = zstandard.ZstdCompressor(level=level).compressobj()

    def _compress(self, literal: memoryview, flush: bool) -> Iterator[bytes]:
        out = self._stream.compress(literal)
        if flush:
            out += self._stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return _split(out)


class _Lz4Writer(_CompressedWriter):
    """lz4: raw blocks of <= 16383 input bytes, halved until they fit (send_compressed_token())."""

    def _compress(self, literal: memoryview, flush: bool) -> Iterator[bytes]:
        pos = 0
        while True:        # C's do-while: an empty pending flush still sends one block
            size = min(len(literal) - pos, MAX_DEFLATED_CHUNK)
            while True:
                piece = literal[pos : pos + size]
                out = lz4.block.compress(piece, mode="default", store_size=False)
                if len(out) <= MAX_DEFLATED_CHUNK:
                    break
                size //= 2
            yield out
            pos += size
            if pos >= len(literal):
                return


def make_token_writer(compression: str | None, level: int | None = None) -> TokenWriter:
    """Return the sender-side encoder for the negotiated compression (one per session).

    Args:
        compression: None or "none", "zlib", "zlibx", "zstd" or "lz4".
        level: --compress-level; zlib 1..9 (default 6), zstd its own range
            (default 3); ignored by lz4 and plain.

    Raises:
        Unsupported: unknown compression name.
        ValueError: zlib level outside 1..9.
    """
    name = _canonical(compression)
    if name == "none":
        return _PlainWriter()
    if name in ("zlib", "zlibx"):
        level = ZLIB_LEVEL if level is None else level
        if not 1 <= level <= 9:
            raise ValueError(f"zlib compression level {level} outside 1..9")
        return _DeflateWriter(level, prime=name == "zlib")
    if name == "zstd":
        return _ZstdWriter(ZSTD_LEVEL if level is None else level)
    return _Lz4Writer()
