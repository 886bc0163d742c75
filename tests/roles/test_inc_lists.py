"""The push side's incremental file lists: wire indices, reserved slots, bad sub-lists."""

from __future__ import annotations

import io
import queue
import stat
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.errors import ProtocolError
from backupd.protocol.flist import FileEntry, FlistEncoder, FlistOptions
from backupd.roles.inc_lists import CHUNK_SHIFT, PLACEHOLDER, FileListReader, IncLists, NdxTable
from backupd.roles.push import receive_sub_list

OPTS = FlistOptions(protocol=31, inc_recurse=True)
DIR, REG = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644


def _entries(*names: str) -> list[FileEntry]:
    return [FileEntry(name=n.rstrip("/").encode(), mode=DIR if n.endswith("/") else REG, mtime=1) for n in names]


def test_lists_number_as_rsync_and_each_reserves_its_parent():
    flist, dest, inc = NdxTable(), NdxTable(), IncLists()
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
    flist, dest, inc = NdxTable(), NdxTable(), IncLists()
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
    state = SimpleNamespace(flist=NdxTable(), dest=NdxTable(), inc=IncLists(), list_reader=reader,
                            incoming=lambda e: None, io_error=0, dest_dir=b"into", events=queue.Queue())
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
    flist, dest, inc = NdxTable(), NdxTable(), IncLists()
    inc.add(flist, dest, _entries("./", "a.txt", "d/", "b.txt"), [b".", b"a.txt", b"d", b"b.txt"], None)
    inc.parent_of_sub_list(1)
    inc.add(flist, dest, _entries("d/x", "d/y"), [b"d/x", b"d/y"], 1)
    requested, skip = {2, 4, 6}, {7}
    inc.release(0, flist, dest, requested, skip)
    assert [e.name if e is not None else None for e in flist] == [b".", b".", None, b"d", None, b"d", b"d/x", b"d/y"]
    assert len(flist) == 8
    assert dest[:5] == [b".", b".", None, b"d", None]
    assert (requested, skip) == ({6}, {7})          # the second list's ndxs are untouched
    inc.release(1, flist, dest, requested, skip)
    assert flist[5:] == [flist[3], None, None] and (requested, skip) == (set(), set())


def test_released_lists_give_up_their_chunks_and_keep_their_directories():
    chunk = 1 << CHUNK_SHIFT
    flist, dest, inc = NdxTable(), NdxTable(), IncLists()
    names = ["./"] + [f"f{i:05d}" for i in range(chunk)] + ["d/"]
    inc.add(flist, dest, _entries(*names), [n.rstrip("/").encode() for n in names], None)
    inc.parent_of_sub_list(1)
    sub = [f"d/g{i:05d}" for i in range(2 * chunk)]
    inc.add(flist, dest, _entries(*sub), [n.encode() for n in sub], 1)
    d_ndx = inc.dirs[1]
    inc.release(0, flist, dest)
    # the first list ends at chunk + 2: chunk 0 goes, its '.' kept; chunk 1 holds the sub-list's start
    assert flist._chunks[0] is None and flist._chunks[1] is not None
    assert flist[0].name == b"." and flist[1] is flist[0] and flist[5] is None and dest[5] is None
    assert flist[d_ndx].name == b"d" and dest[d_ndx] == b"d"
    assert len(flist._kept) == 2                     # ndx 0 and 1 ('.'), nothing per file
    inc.release(1, flist, dest)
    assert flist._chunks[:3] == [None, None, None] and len(flist) == 3 * chunk + 4
    assert flist[d_ndx].name == b"d" and flist[d_ndx + 1] is flist[d_ndx]   # the sub-list's reserved slot
    assert flist[d_ndx + 2] is None and sum(e is not None for e in flist) == 4
    assert flist[len(flist) - 1] is None and dest[len(dest) - 1] is None
    with pytest.raises(IndexError):
        flist[len(flist)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["extend", "set", "drop"]), st.integers(0, 3 << CHUNK_SHIFT),
                          st.integers(0, 9)), max_size=12))
def test_an_ndx_table_reads_as_the_list_it_models(ops):
    """Whatever is dropped, every read (index, slice, iteration, len) equals a plain list's."""
    model: list = []
    table = NdxTable()
    for op, n, v in ops:
        if op == "set" and v == 9 and model:  # a bulk clear instead
            ndxs = range(n % len(model), len(model), 3)
            table.clear(ndxs)
            for ndx in ndxs:
                model[ndx] = None
        if op == "extend":
            values = [None if (i + v) % 3 == 0 else (v, i) for i in range(n % 5000)]
            model.extend(values)
            table.extend(values)
        elif op == "set" and model:
            ndx = n % len(model)
            model[ndx] = None if v < 3 else (v, ndx)
            table[ndx] = model[ndx]
        elif op == "drop":
            table.drop_below(n)
        assert len(table) == len(model)
        if model:
            ndx = n % len(model)
            assert table[ndx] == model[ndx]
            lo, hi = sorted((ndx, (n * 7 + v) % (len(model) + 1)))
            assert table[lo:hi] == model[lo:hi]
    assert list(table) == model
    kept = sum(1 for c, chunk in enumerate(table._chunks) if chunk is None
               for i in range(c << CHUNK_SHIFT, (c + 1) << CHUNK_SHIFT) if model[i] is not None)
    assert len(table._kept) == kept                  # a dropped chunk keeps its non-None slots only
