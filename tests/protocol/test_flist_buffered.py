"""The file-list decoder reading the received bytes in place (FlistDecoder.decode_at, Inbox.decode).

A push decodes its entries straight from the MSG_DATA frames it holds; an
entry split across frames must come out as the field-by-field decoder reads
it, and the decoder must never ask for a byte past the entry it is reading
(the client may send nothing more until the server answers). Round trips
under every option set (hypothesis), split at random frame boundaries, and
each prefix of a list checked for what it asks for.
"""

from __future__ import annotations

import stat
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.errors import ProtocolError
from backupd.protocol.constants import MsgCode
from backupd.protocol.flist import FileEntry, FlistDecoder, FlistEncoder, FlistOptions, plain_wire_name
from backupd.protocol.flist_legacy import new_flist_encoder
from backupd.protocol.mux import encode_frame
from backupd.protocol.wire import ByteReader, Truncated
from backupd.roles.channel import Inbox
from backupd.roles.inc_lists import FileListReader
from tests.protocol.test_flist_roundtrip import file_lists

TRAILER = b"after the list"


class FrameStream:
    """A Stream that hands out the given bytes ``step`` bytes per recv (0: all at once)."""

    def __init__(self, data: bytes, step: int = 0) -> None:
        self.data, self.pos, self.step = data, 0, step

    def recv(self, n: int) -> bytes:
        take = min(n, self.step or n)
        chunk = self.data[self.pos:self.pos + take]
        self.pos += len(chunk)
        return chunk

    def settimeout(self, seconds) -> None:
        pass


def framed(wire: bytes, cuts: list[int]) -> bytes:
    """``wire`` as MSG_DATA frames cut at ``cuts``, an empty frame and a message between the first two."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(wire)}), len(wire)]
    frames = [encode_frame(MsgCode.DATA, wire[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    frames[1:1] = [encode_frame(MsgCode.INFO, b"hello\n"), encode_frame(MsgCode.DATA, b"")]
    return b"".join(frames)


def assert_same_entries(got: list[FileEntry], want: list[FileEntry]) -> None:
    assert len(got) == len(want)
    for sent, back in zip(want, got, strict=True):
        for f in fields(FileEntry):
            assert getattr(back, f.name) == getattr(sent, f.name), (f.name, sent, back)


@settings(max_examples=300, deadline=None)
@given(file_lists(), st.lists(st.integers(1, 4000), max_size=12), st.integers(0, 7), st.integers(0, 3))
def test_entries_split_across_frames_decode_as_sent(case, cuts, io_error, step):
    o, entries = case
    encoder = FlistEncoder(o)
    wire = b"".join(encoder.encode_entry(e) for e in entries) + encoder.encode_end(io_error)
    wire += TRAILER + TRAILER
    inbox = Inbox(FrameStream(framed(wire, [*cuts, len(wire) - len(TRAILER)]), step))
    messages = []
    inbox.on_message = lambda code, payload: messages.append((code, payload))
    inbox.start_mux()
    decoder = FlistDecoder(o)
    got = []
    while (e := inbox.decode(decoder.decode_at)) is not None:
        got.append(e)
    assert decoder.io_error == io_error
    assert inbox.read(2 * len(TRAILER)) == TRAILER + TRAILER  # the stream goes on right after the end marker
    assert messages == [(MsgCode.INFO, b"hello\n")]  # dispatched on the way, wherever it fell
    assert_same_entries(got, entries)


@settings(max_examples=150, deadline=None)
@given(file_lists(), st.integers(0, 7))
def test_a_cut_entry_asks_only_for_bytes_of_that_entry_and_changes_nothing(case, io_error):
    o, entries = case
    encoder = FlistEncoder(o)
    parts = [encoder.encode_entry(e) for e in entries] + [encoder.encode_end(io_error)]
    wire = b"".join(parts)
    decoder = FlistDecoder(o)
    start = 0
    for part in parts:
        end = start + len(part)
        for cut in range(start, end):
            with pytest.raises(Truncated) as short:
                decoder.decode_at(wire[:cut], start)
            assert cut < short.value.end <= end  # more than it has, never past its own entry
        assert decoder.decode_at(wire, start)[1] == end  # the cut tries left no trace
        start = end
    assert_same_entries(decoder.wire_entries, entries)


def test_reader_takes_the_inbox_path_and_the_stream_path_alike():
    o = FlistOptions(protocol=31, preserve_uid=True, preserve_gid=True, preserve_links=True, numeric_ids=True)
    encoder = FlistEncoder(o)
    sent = [FileEntry(name=b".", mode=stat.S_IFDIR | 0o755),
            FileEntry(name=b"d//x/", mode=stat.S_IFDIR | 0o700, uid=1, gid=2),
            FileEntry(name=b"d/.hidden", mode=stat.S_IFREG | 0o600, size=70000, mtime=1 << 33, uid=1, gid=2),
            FileEntry(name=b"d/l", mode=stat.S_IFLNK | 0o777, link_target=b"../t", uid=1, gid=2)]
    wire = b"".join(encoder.encode_entry(e) for e in sent) + encoder.encode_end(0)
    by_stream = FileListReader(o).read_entries(ByteReader(wire).read)
    inbox = Inbox(FrameStream(framed(wire, [3, 9, 20]), 5))
    inbox.start_mux()
    by_inbox = FileListReader(o, inbox=inbox).read_entries(inbox.read)
    assert [e.name for e in by_inbox] == [b".", b"d/x", b"d/.hidden", b"d/l"]
    assert_same_entries(by_inbox, by_stream)


def test_an_unsafe_name_is_refused_on_the_inbox_path():
    o = FlistOptions(protocol=31)
    encoder = FlistEncoder(o)
    wire = encoder.encode_entry(FileEntry(name=b"a/../../etc", mode=stat.S_IFREG | 0o644)) + encoder.encode_end(0)
    inbox = Inbox(FrameStream(framed(wire, [4])))
    inbox.start_mux()
    with pytest.raises(ProtocolError, match="unsafe pathname"):
        FileListReader(o, inbox=inbox).read_entries(inbox.read)


@pytest.mark.parametrize("name", [b"a", b"dir/file", b"a..b", b"x/y.z", b"d/e/f.tar.gz"])
def test_plain_names(name):
    assert plain_wire_name(name)


@pytest.mark.parametrize("name", [b"", b".", b"..", b"./a", b"a/.", b"a/..", b"a/../b", b"/a", b"a/", b"a//b",
                                  b"a/./b", b".hidden", b"a/.hidden", b"a\0b"])
def test_names_that_take_the_full_rules(name):
    assert not plain_wire_name(name)


def test_protocol_29_lists_are_read_field_by_field_even_with_an_inbox():
    o = FlistOptions(protocol=29, preserve_uid=True, numeric_ids=True)
    encoder = new_flist_encoder(o)
    sent = [FileEntry(name=b"a", mode=stat.S_IFREG | 0o644, size=3, mtime=7, uid=5),
            FileEntry(name=b"b", mode=stat.S_IFREG | 0o600, size=9, mtime=7, uid=5)]
    wire = b"".join(encoder.encode_entry(e) for e in sent) + encoder.encode_end(0)
    inbox = Inbox(FrameStream(framed(wire, [2, 5])))
    inbox.start_mux()
    got = FileListReader(o, inbox=inbox).read_entries(inbox.read)
    assert [(e.name, e.mode, e.size, e.uid) for e in got] == [(e.name, e.mode, e.size, e.uid) for e in sent]
