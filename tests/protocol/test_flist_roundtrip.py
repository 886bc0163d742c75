"""File-list codec round trips (hypothesis): whatever FlistEncoder writes,
FlistDecoder reads back field for field, under every combination of the
options that shape an entry (protocol 30-32, -o/-g/-l/-D/-H, -c), including
hard-link groups whose later members are sent abbreviated.
"""

from __future__ import annotations

import stat
from dataclasses import fields

from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.protocol.constants import XmitFlags
from backupd.protocol.flist import FileEntry, FlistDecoder, FlistEncoder, FlistOptions
from backupd.protocol.wire import ByteReader

TOP, NO_CONTENT = int(XmitFlags.TOP_DIR), int(XmitFlags.NO_CONTENT_DIR)
KINDS = ("reg", "dir", "link", "chr", "blk", "fifo", "sock")
TYPE_BITS = {
    "reg": stat.S_IFREG, "dir": stat.S_IFDIR, "link": stat.S_IFLNK, "chr": stat.S_IFCHR,
    "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO, "sock": stat.S_IFSOCK,
}


@st.composite
def options(draw) -> FlistOptions:
    return FlistOptions(
        protocol=draw(st.sampled_from((30, 31, 32))),
        preserve_uid=draw(st.booleans()),
        preserve_gid=draw(st.booleans()),
        preserve_links=draw(st.booleans()),
        preserve_devices=draw(st.booleans()),
        preserve_specials=draw(st.booleans()),
        preserve_hard_links=draw(st.booleans()),
        csum_len=draw(st.sampled_from((0, 16))),
        numeric_ids=True,
    )


def allowed_kinds(o: FlistOptions) -> list[str]:
    kinds = ["reg", "dir"]
    kinds += ["link"] if o.preserve_links else []
    kinds += ["chr", "blk"] if o.preserve_devices else []
    kinds += ["fifo", "sock"] if o.preserve_specials else []
    return kinds


NAME_PART = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b)


@st.composite
def entry(draw, o: FlistOptions, name: bytes) -> FileEntry:
    kind = draw(st.sampled_from(allowed_kinds(o)))
    e = FileEntry(
        name=name,
        mode=TYPE_BITS[kind] | draw(st.integers(0, 0o7777)),
        size=draw(st.integers(0, 1 << 62)) if kind == "reg" else 0,
        mtime=draw(st.integers(-(1 << 40), 1 << 40)),
        mtime_nsec=draw(st.integers(0, 999_999_999)) if o.protocol >= 31 else 0,
        uid=draw(st.integers(0, 1 << 31)) if o.preserve_uid else None,
        gid=draw(st.integers(0, 1 << 31)) if o.preserve_gid else None,
    )
    if kind in ("chr", "blk"):
        e.rdev_major, e.rdev_minor = draw(st.integers(0, 4095)), draw(st.integers(0, 1 << 20))
    if kind == "link":
        e.link_target = draw(st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b))
    if kind == "reg" and o.csum_len:
        e.checksum = draw(st.binary(min_size=o.csum_len, max_size=o.csum_len))
    if kind == "dir":
        e.xflags = draw(st.sampled_from((0, TOP, NO_CONTENT, TOP | NO_CONTENT)))
    return e


@st.composite
def file_lists(draw) -> tuple[FlistOptions, list[FileEntry]]:
    o = draw(options())
    paths = draw(st.lists(st.lists(NAME_PART, min_size=1, max_size=4), min_size=1, max_size=30))
    names = sorted({b"/".join(p) for p in paths})
    entries = [draw(entry(o, name)) for name in names]
    if o.preserve_hard_links:  # some later regular files become links to an earlier one
        for ndx, e in enumerate(entries):
            leaders = [i for i in range(ndx) if entries[i].is_reg and entries[i].hlink_first]
            if not e.is_reg:
                continue
            if leaders and draw(st.booleans()):
                first = entries[draw(st.sampled_from(leaders))]
                for attr in ("mode", "size", "mtime", "mtime_nsec", "uid", "gid", "checksum"):
                    setattr(e, attr, getattr(first, attr))
                e.hlink_group, e.hlink_first = first.hlink_group, False
            elif draw(st.booleans()):
                e.hlink_group, e.hlink_first = ndx, True
    return o, entries


@settings(max_examples=300, deadline=None)
@given(file_lists(), st.integers(0, 7))
def test_entries_round_trip_field_for_field(case, io_error):
    o, entries = case
    encoder = FlistEncoder(o)
    wire = b"".join(encoder.encode_entry(e) for e in entries) + encoder.encode_end(io_error)
    decoder = FlistDecoder(o)
    reader = ByteReader(wire)
    got = []
    while (e := decoder.read_entry(reader.read)) is not None:
        got.append(e)
    assert decoder.io_error == io_error
    assert reader.pos == len(wire)
    assert len(got) == len(entries)
    for sent, back in zip(entries, got, strict=True):
        for f in fields(FileEntry):
            assert getattr(back, f.name) == getattr(sent, f.name), (f.name, sent, back)
