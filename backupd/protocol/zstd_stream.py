"""Streaming zstd decoding with a bound on every step's output.

python-zstandard's ``decompressobj().decompress()`` returns all the output
of its input at once: a 16 KB chunk can be hundreds of MiB. rsync decodes
with ``ZSTD_decompressStream`` into a fixed buffer and hands each buffer
out before it asks for more; ``ZstdStream`` does the same through libzstd
(ctypes), and where libzstd cannot be loaded it feeds python-zstandard
input slices so small that their output stays bounded. Both refuse a
frame whose window exceeds ``window_log_max`` before zstd allocates it.

Source: rsync token.c recv_zstd_token(); zstd.h ZSTD_decompressStream(),
ZSTD_d_windowLogMax; RFC 8878 §3.1.1.2 (a block decodes to at most 128 KiB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import weakref

import zstandard

ZSTD_D_WINDOW_LOG_MAX = 100      # zstd.h ZSTD_dParameter ZSTD_d_windowLogMax
BLOCK_MAX = 128 * 1024           # largest decoded zstd block (ZSTD_BLOCKSIZE_MAX)
FALLBACK_SLICE = 64              # input bytes per python-zstandard call: <= 17 blocks out
MIN_BLOCK_INPUT = 4              # an RLE block: 3-byte header + 1 byte


class ZstdStreamError(Exception):
    """Corrupt data, or a frame that needs more memory than allowed."""


class _Buffer(ctypes.Structure):
    """ZSTD_inBuffer / ZSTD_outBuffer: pointer, size, pos."""

    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


def _load_libzstd():
    """libzstd with the prototypes used here, or None."""
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    try:
        lib = ctypes.CDLL(name)
        lib.ZSTD_createDCtx.restype = ctypes.c_void_p
        lib.ZSTD_createDCtx.argtypes = []
        lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
        lib.ZSTD_freeDCtx.restype = ctypes.c_size_t
        lib.ZSTD_DCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.ZSTD_DCtx_setParameter.restype = ctypes.c_size_t
        lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Buffer), ctypes.POINTER(_Buffer)]
        lib.ZSTD_decompressStream.restype = ctypes.c_size_t
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
        lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    except (OSError, AttributeError):
        return None
    return lib


_LIB = _load_libzstd()


class ZstdStream:
    """One zstd stream across many input chunks; output in pieces of at most ``piece`` bytes.

    ``feed(chunk)`` once the previous chunk is consumed (``step()`` said no
    more), then ``step()`` until it says no more. libzstd when available
    (each step: one ``ZSTD_decompressStream`` into a ``piece``-byte
    buffer), else python-zstandard on input slices of FALLBACK_SLICE bytes
    (at most about 17 decoded blocks held, handed out ``piece`` at a time).

    Args:
        piece: most output bytes one step returns.
        window_log_max: largest window a frame may ask for (log2 bytes).
        use_libzstd: False forces the python-zstandard path (tests).
    """

    def __init__(self, piece: int, window_log_max: int, *, use_libzstd: bool = True) -> None:
        self.piece = piece
        self._input = b""
        self._pos = 0
        self._spill = b""    # fallback: decoded, not handed out yet
        self._lib = _LIB if use_libzstd else None
        if self._lib is not None:
            self._init_lib(window_log_max)
        else:
            dctx = zstandard.ZstdDecompressor(max_window_size=1 << window_log_max)
            self._dobj = dctx.decompressobj()

    def _init_lib(self, window_log_max: int) -> None:
        lib = self._lib
        dctx = lib.ZSTD_createDCtx()
        if not dctx:
            raise MemoryError("ZSTD_createDCtx failed")
        weakref.finalize(self, lib.ZSTD_freeDCtx, dctx)
        self._dctx = dctx
        self._check(lib.ZSTD_DCtx_setParameter(dctx, ZSTD_D_WINDOW_LOG_MAX, window_log_max))
        self._out = ctypes.create_string_buffer(self.piece)
        self._out_buf = _Buffer(ctypes.cast(self._out, ctypes.c_void_p), self.piece, 0)
        self._in_buf = _Buffer(None, 0, 0)

    def _check(self, code: int) -> int:
        if self._lib.ZSTD_isError(code):
            raise ZstdStreamError(self._lib.ZSTD_getErrorName(code).decode("ascii", "replace"))
        return code

    def feed(self, chunk: bytes) -> None:
        """Give the next compressed chunk (the previous one must be consumed)."""
        self._input, self._pos = bytes(chunk), 0
        if self._lib is not None:
            self._keep = ctypes.c_char_p(self._input)   # the buffer zstd reads from
            self._in_buf.ptr = ctypes.cast(self._keep, ctypes.c_void_p)
            self._in_buf.size, self._in_buf.pos = len(self._input), 0

    def step(self) -> tuple[bytes, bool]:
        """Decode a little: ``(output, more)``; ``more`` False once the chunk is done.

        Raises:
            ZstdStreamError: corrupt data or a window over the limit.
        """
        if self._lib is not None:
            return self._step_lib()
        return self._step_fallback()

    def _step_lib(self) -> tuple[bytes, bool]:
        self._out_buf.pos = 0
        self._check(self._lib.ZSTD_decompressStream(self._dctx, self._out_buf, self._in_buf))
        n = self._out_buf.pos
        more = self._in_buf.pos < self._in_buf.size or n == self.piece
        return ctypes.string_at(self._out, n), more

    def _step_fallback(self) -> tuple[bytes, bool]:
        if not self._spill:
            end = min(len(self._input), self._pos + FALLBACK_SLICE)
            try:
                self._spill = self._dobj.decompress(self._input[self._pos : end])
            except zstandard.ZstdError as exc:
                raise ZstdStreamError(str(exc)) from exc
            self._pos = end
        out, self._spill = self._spill[: self.piece], self._spill[self.piece :]
        return out, bool(self._spill) or self._pos < len(self._input)
