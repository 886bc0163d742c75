"""Readers for the protocol 27-29 daemon captures in tests/data/captures.

Below protocol 30 the client's arguments end in newlines and its stream is
never multiplexed; the server sends only the seed before its multiplexed
output. ``legacy-*`` captures were recorded with shared/tools/rsync-tap.py
between the stock 3.5.0 client (``--protocol=N``) and a stock 3.5.0 rsyncd;
``daemon-push-proto29`` comes from shared/captures.
"""

from __future__ import annotations

from dataclasses import dataclass

from backupd.protocol.flist import FlistOptions
from backupd.protocol.server_args import TransferOptions, parse_server_args_lenient
from backupd.protocol.wire import ByteReader, decode_int32

from .captures import CAPTURES, split_frames


@dataclass
class LegacySession:
    """One capture split into its parts."""

    protocol: int
    argv: list[bytes]
    opts: TransferOptions
    client: bytes   # the client's raw stream after the arguments
    seed: int
    server: bytes   # the MSG_DATA payload the server sent
    messages: list


def _line(r: ByteReader) -> bytes:
    out = bytearray()
    while (b := r.read(1)) != b"\n":
        out += b
    return bytes(out)


def legacy_session(name: str) -> LegacySession:
    """Parse ``NAME.c2s`` / ``NAME.s2c`` of a protocol 27-29 daemon capture."""
    c2s = ByteReader((CAPTURES / f"{name}.c2s").read_bytes())
    protocol = int(_line(c2s).split()[1].split(b".")[0])
    _line(c2s)  # module
    argv = []
    while arg := _line(c2s):
        argv.append(arg)
    opts, error = parse_server_args_lenient(argv)
    assert error is None, error
    s2c = ByteReader((CAPTURES / f"{name}.s2c").read_bytes())
    assert _line(s2c).startswith(b"@RSYNCD: ")
    assert _line(s2c) == b"@RSYNCD: OK"
    seed = decode_int32(s2c.read)
    data, messages = split_frames(s2c.read(s2c.remaining))
    return LegacySession(protocol, argv, opts, c2s.read(c2s.remaining), seed, data, messages)


def legacy_flist_options(opts: TransferOptions, protocol: int) -> FlistOptions:
    """The entry shape both ends derive from the options (negotiate.file_list_options below 30)."""
    return FlistOptions(
        protocol=protocol,
        preserve_uid=opts.owner,
        preserve_gid=opts.group,
        preserve_links=opts.links,
        preserve_devices=opts.devices,
        preserve_specials=opts.specials,
        preserve_hard_links=bool(opts.hard_links),
        numeric_ids=opts.numeric_ids,
    )
