"""The file-list codec against real client file lists, byte by byte."""

from __future__ import annotations

import pytest

from backupd.protocol.constants import NDX_FLIST_EOF
from backupd.protocol.flist import FlistDecoder, FlistEncoder, FlistOptions
from backupd.protocol.wire import ByteReader, NdxDecoder

from .captures import client_side, decoded_names

PUSHES = [
    "daemon-push-av_c3.5.0",
    "daemon-push-delete_c3.5.0",
    "daemon-push-hardlinks-inc",
    "daemon-push-relative",
    "daemon-push-avz_c3.2.7-proto31",
    "daemon-push-proto30",
    "daemon-push-protect-args",
]


def flist_options(opts, protocol=32) -> FlistOptions:
    return FlistOptions(
        protocol=protocol,
        preserve_uid=opts.owner,
        preserve_gid=opts.group,
        preserve_links=opts.links,
        preserve_devices=opts.devices,
        preserve_specials=opts.specials,
        preserve_hard_links=bool(opts.hard_links),
        inc_recurse="i" in opts.capabilities and opts.recursive and opts.delete_mode not in ("before", "after"),
        id0_names=True,
    )


def read_all_lists(name: str):
    """Decode every file list the client sent (incremental sub-lists included).

    Returns (entries in wire order, bytes consumed by the lists, decoder options).
    """
    side = client_side(name)
    protocol = 30 if "proto30" in name else 32
    fopts = flist_options(side.opts, protocol)
    reader = ByteReader(side.data)
    if side.opts.deleting:
        while int.from_bytes(reader.read(4), "little"):
            pass
    start = reader.pos
    decoder = FlistDecoder(fopts)
    ndx = NdxDecoder()
    spans = []
    while True:
        list_start = reader.pos
        while decoder.read_entry(reader.read) is not None:
            pass
        spans.append((list_start, reader.pos))
        if not fopts.inc_recurse:
            break
        save = reader.pos
        value = ndx.decode(reader.read)
        if value == NDX_FLIST_EOF:
            break
        if value > -101:
            reader.pos = save
            break
        decoder.next_list()
    return decoder.wire_entries, side.data, spans, fopts, start


@pytest.mark.parametrize("name", PUSHES)
def test_client_file_list_decodes_to_the_reference_names(name):
    entries, _, _, _, _ = read_all_lists(name)
    assert [e.name.decode() for e in entries] == decoded_names(name)


@pytest.mark.parametrize("name", PUSHES)
def test_reencoding_the_first_list_gives_the_client_bytes(name):
    entries, data, spans, fopts, _ = read_all_lists(name)
    encoder = FlistEncoder(fopts)
    start, end = spans[0]
    n_first = _count_entries(data[start:end], fopts)
    wire = b"".join(encoder.encode_entry(e) for e in entries[:n_first]) + encoder.encode_end(0)
    assert wire.hex() == data[start:end].hex()


def _count_entries(blob: bytes, fopts) -> int:
    decoder = FlistDecoder(fopts)
    reader = ByteReader(blob)
    count = 0
    while decoder.read_entry(reader.read) is not None:
        count += 1
    return count


def test_entry_fields_of_the_baseline_push():
    entries, _, _, _, _ = read_all_lists("daemon-push-av_c3.5.0")
    by_name = {e.name: e for e in entries}
    link = by_name[b"link"]
    assert link.is_link and link.link_target == b"hello.txt" and link.size == 9
    hello = by_name[b"hello.txt"]
    assert hello.size == 12 and hello.mtime == 1704164645 and hello.mtime_nsec == 123456789
    assert hello.mode == 0o100644 and hello.uid == 0 and hello.user_name == b"root"
    assert by_name[b"."].is_dir and by_name[b"."].xflags & 1
