"""The push side's incremental file lists: wire indices, reserved slots, bad sub-lists."""

from __future__ import annotations

import io
import queue
import stat
from types import SimpleNamespace

import pytest

from backupd.errors import ProtocolError
from backupd.protocol.flist import FileEntry, FlistEncoder, FlistOptions
from backupd.roles.inc_lists import PLACEHOLDER, FileListReader, IncLists
from backupd.roles.push import receive_sub_list

OPTS = FlistOptions(protocol=31, inc_recurse=True)
DIR, REG = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644


def _entries(*names: str) -> list[FileEntry]:
    return [FileEntry(name=n.rstrip("/").encode(), mode=DIR if n.endswith("/") else REG, mtime=1) for n in names]


def test_lists_number_as_rsync_and_each_reserves_its_parent():
    flist, dest, inc = [], [], IncLists()
    first = inc.add(flist, dest, _entries("./", "a.txt", "d/", "e/"), [b".", b"a.txt", b"d", b"e"], None)
    assert (first.start, first.count, first.parent) == (1, 4, 0)
    assert flist[0] is flist[1]                      # ndx 0 names '.', the first list's parent
    assert inc.dirs == [1, 3, 4]                    # dir_flist: '.', d, e
    parent = inc.parent_of_sub_list(1)              # NDX_FLIST_OFFSET - 1: the list of d
    sub = inc.add(flist, dest, _entries("d/x"), [b"d/x"], 1)
    assert parent == 3 and (sub.start, sub.count) == (6, 1)   # 1 + 4 + 1
    assert flist[5] is flist[3] and dest[5] == b"d"
    assert inc.index_of(5) == inc.index_of(6) == 1 and inc.index_of(4) == 0
    assert inc.is_parent_slot(5) and inc.is_parent_slot(0) and not inc.is_parent_slot(3)
    empty = inc.add(flist, dest, [], [], 2)         # e/ is empty: its list still takes a slot
    assert empty.start == 8 and flist[7] is flist[4]


def test_a_first_list_without_dot_has_no_parent():
    flist, dest, inc = [], [], IncLists()
    first = inc.add(flist, dest, _entries("d/"), [b"d"], None)
    assert first.parent is None and flist[0] is PLACEHOLDER and inc.dirs == [1]
    assert inc.parent_of_sub_list(0) == 1


@pytest.mark.parametrize("index", [-1, 3, 0])
def test_an_unknown_or_repeated_dir_index_is_refused(index):
    inc = IncLists()
    inc.add([], [], _entries("./", "d/", "e/"), [b".", b"d", b"e"], None)  # '.' (index 0) came with the list
    with pytest.raises(ProtocolError, match="Invalid dir index"):
        inc.parent_of_sub_list(index)
    if index == 0:
        return
    inc.parent_of_sub_list(1)
    with pytest.raises(ProtocolError, match="Invalid dir index"):
        inc.parent_of_sub_list(1)


def _state(first_names: list[str]):
    """A PushState stand-in holding a first list; its reader continues the encoder's numbering."""
    encoder = FlistEncoder(OPTS)
    first = _entries(*first_names)
    wire = b"".join(encoder.encode_entry(e) for e in first) + encoder.encode_end()
    reader = FileListReader(OPTS)
    got = reader.read_entries(io.BytesIO(wire).read)
    reader.sort(got)
    state = SimpleNamespace(flist=[], dest=[], inc=IncLists(), list_reader=reader, incoming=lambda e: None,
                            io_error=0, dest_dir=b"into", events=queue.Queue())
    state.inc.add(state.flist, state.dest, got, [b"into/" + e.name for e in got], None)
    return state, encoder


def _sub_list(encoder: FlistEncoder, *names: str) -> bytes:
    return b"".join(encoder.encode_entry(e) for e in _entries(*names)) + encoder.encode_end()


def test_a_sub_list_is_read_sorted_and_mapped_below_the_destination():
    state, encoder = _state(["./", "d/"])
    receive_sub_list(state, 1, io.BytesIO(_sub_list(encoder, "d/z", "d/sub/", "d/a")).read)
    lst = state.events.get_nowait()[1]
    names = [e.name for e in state.flist[lst.start:lst.start + lst.count]]
    assert names == [b"d/a", b"d/z", b"d/sub"]          # files before dirs (flist.c f_name_cmp)
    assert state.dest[lst.start - 1] == b"into/d" and state.dest[lst.start] == b"into/d/a"
    assert state.inc.dirs[-1] == lst.start + 2          # d/sub is directory 2 now


@pytest.mark.parametrize("name", ["e/x", "d/sub/deeper", "x"])
def test_an_entry_outside_the_announced_directory_is_refused(name):
    state, encoder = _state(["./", "d/", "e/"])
    with pytest.raises(ProtocolError, match="is not in directory"):
        receive_sub_list(state, 1, io.BytesIO(_sub_list(encoder, name)).read)


def test_a_finished_list_releases_its_files_but_keeps_its_directories():
    flist, dest, inc = [], [], IncLists()
    inc.add(flist, dest, _entries("./", "a.txt", "d/", "b.txt"), [b".", b"a.txt", b"d", b"b.txt"], None)
    inc.parent_of_sub_list(1)
    inc.add(flist, dest, _entries("d/x", "d/y"), [b"d/x", b"d/y"], 1)
    requested, skip = {2, 4, 6}, {7}
    inc.release(0, flist, dest, requested, skip)
    assert [e.name if e is not None else None for e in flist] == [b".", b".", None, b"d", None, b"d", b"d/x", b"d/y"]
    assert dest[:5] == [b".", b".", None, b"d", None]
    assert (requested, skip) == ({6}, {7})          # the second list's ndxs are untouched
    inc.release(1, flist, dest, requested, skip)
    assert flist[5:] == [flist[3], None, None] and (requested, skip) == (set(), set())
