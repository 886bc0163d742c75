"""Readers for the raw daemon captures in tests/data/captures (copied from shared/captures).

``NAME.c2s`` / ``NAME.s2c`` hold the raw bytes of each direction. These
helpers split the client's side into handshake, arguments and the
multiplexed MSG_DATA stream, using the codecs under test only for the parts
that are not themselves being checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backupd.errors import Unsupported
from backupd.protocol.mux import MuxDecoder
from backupd.protocol.server_args import TransferOptions, has_protected_args, parse_server_args_lenient
from backupd.protocol.wire import ByteReader, decode_vstring

CAPTURES = Path(__file__).resolve().parent.parent / "data" / "captures"


@dataclass
class ClientSide:
    """The client's bytes of one daemon capture, split into parts."""

    lines: list[bytes]
    argv: list[bytes]
    opts: TransferOptions
    data: bytes
    messages: list


def _read_until(reader: ByteReader, stop: bytes) -> bytes:
    out = bytearray()
    while (b := reader.read(1)) != stop:
        out += b
    return bytes(out)


def split_frames(raw: bytes) -> tuple[bytes, list]:
    """A multiplexed stream: (the MSG_DATA payloads joined, the other frames in order)."""
    mux = MuxDecoder()
    mux.feed(raw)
    data, messages = bytearray(), []
    while (frame := mux.next_frame()) is not None:
        if frame.code == 0:
            data += frame.payload
        else:
            messages.append(frame)
    return bytes(data), messages


def client_side(name: str) -> ClientSide:
    """Parse ``NAME.c2s`` of a daemon capture (protocol >= 30)."""
    raw = (CAPTURES / f"{name}.c2s").read_bytes()
    s2c = (CAPTURES / f"{name}.s2c").read_bytes()
    r = ByteReader(raw)
    lines = [_read_until(r, b"\n"), _read_until(r, b"\n")]
    if b"AUTHREQD" in s2c:
        lines.append(_read_until(r, b"\n"))
    argv = []
    while arg := _read_until(r, b"\0"):
        argv.append(arg)
    if has_protected_args(argv):
        second = []
        while arg := _read_until(r, b"\0"):
            second.append(arg)
        argv += second[1:]
    opts, error = parse_server_args_lenient(argv)
    if error is not None and not isinstance(error, Unsupported):  # -A captures: refused, still parsed
        raise error
    if "v" in opts.capabilities and opts.checksum_choice is None:
        decode_vstring(r.read)
    if "v" in opts.capabilities and opts.compression_on and opts.compress_choice is None:
        decode_vstring(r.read)
    data, messages = split_frames(r.read(r.remaining))
    return ClientSide(lines, argv, opts, data, messages)


def decoded_names(name: str) -> list[str]:
    """The names the reference decoder printed in NAME.txt, in wire order."""
    text = (CAPTURES / f"{name}.txt").read_text(errors="replace")
    return [line.split("-> name '", 1)[1].rstrip("'") for line in text.splitlines() if "-> name '" in line]


@dataclass
class ServerSide:
    """The server's bytes of one daemon capture (protocol >= 30): compat flags and MSG_DATA."""

    compat_flags: int
    seed: int
    data: bytes
    messages: list


def server_side(name: str, client: ClientSide) -> ServerSide:
    """Parse ``NAME.s2c``: greeting and OK lines, compat flags, name lists, seed, frames."""
    from backupd.protocol.wire import decode_int32, decode_varint

    r = ByteReader((CAPTURES / f"{name}.s2c").read_bytes())
    line = _read_until(r, b"\n")
    while line != b"@RSYNCD: OK":
        line = _read_until(r, b"\n")
    flags = decode_varint(r.read)
    if "v" in client.opts.capabilities and client.opts.checksum_choice is None:
        decode_vstring(r.read)
    if "v" in client.opts.capabilities and client.opts.compression_on and client.opts.compress_choice is None:
        decode_vstring(r.read)
    seed = decode_int32(r.read)
    data, messages = split_frames(r.read(r.remaining))
    return ServerSide(flags, seed, data, messages)
