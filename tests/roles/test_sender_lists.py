"""Incremental lists of a pull: which entries go where, ndx aliases, DONE freeing, lookahead."""

from __future__ import annotations

import pytest

from backupd.errors import ProtocolError
from backupd.protocol.constants import XmitFlags
from backupd.protocol.flist import FileEntry, sort_key
from backupd.protocol.inc_flist import plan_inc_lists
from backupd.roles.flist_builder import Listed
from backupd.roles.sender_lists import WireLists

D, F = 0o40755, 0o100644
IMPLIED = XmitFlags.TOP_DIR | XmitFlags.NO_CONTENT_DIR


def entries(*spec) -> list[FileEntry]:
    out = []
    for item in spec:
        name, mode, *flags = item if isinstance(item, tuple) else (item, F)
        out.append(FileEntry(name=name.encode(), mode=mode, xflags=flags[0] if flags else 0))
    return sorted(out, key=lambda e: sort_key(e.name, e.is_dir))


def names(es, positions) -> list[str]:
    return [es[p].name.decode() for p in positions]


def test_subdir_without_slash_is_a_one_entry_first_list():
    es = entries(("sub", D, XmitFlags.TOP_DIR), "sub/a", ("sub/d", D), "sub/d/b")
    plan = plan_inc_lists(es)
    assert [names(es, sub.members) for sub in plan.lists] == [["sub"], ["sub/a", "sub/d"], ["sub/d/b"]]
    assert [(sub.start, sub.dir_index, sub.announce_ndx if sub.dir_index is not None else None)
            for sub in plan.lists] == [(1, None, None), (3, 0, -101), (6, 1, -102)]
    assert plan.lists[0].parent is None  # no "." first: ndx 0 names nothing


def test_relative_paths_go_one_level_per_list():
    es = entries(("a", D, IMPLIED), ("a/b", D, IMPLIED), ("a/b/c", D, XmitFlags.TOP_DIR), "a/b/c/f", "top")
    plan = plan_inc_lists(es)
    assert [names(es, sub.members) for sub in plan.lists] == [["top", "a"], ["a/b"], ["a/b/c"], ["a/b/c/f"]]


def test_every_directory_gets_a_list_even_empty_or_without_contents():
    es = entries((".", D, XmitFlags.TOP_DIR), ("e", D), ("m", D, XmitFlags.NO_CONTENT_DIR), "f")
    plan = plan_inc_lists(es)
    assert [names(es, sub.members) for sub in plan.lists] == [[".", "f", "e", "m"], [], []]
    assert [sub.start for sub in plan.lists] == [1, 6, 7]
    assert es[plan.lists[0].parent].name == b"."


def test_deep_nesting_needs_no_recursion():
    chain = ["d"]
    for _ in range(3000):
        chain.append(chain[-1] + "/d")
    plan = plan_inc_lists(entries(*[(n, D) for n in chain]))
    assert len(plan.lists) == 3002
    assert [sub.dir_index for sub in plan.lists[1:4]] == [0, 1, 2]


def _wire(es) -> WireLists:
    return WireLists([Listed(e, e.name) for e in es], inc_recurse=True)


def test_aliases_lookup_and_freeing():
    es = entries((".", D, XmitFlags.TOP_DIR), "f", ("d", D), "d/x", ("e", D), "e/y")
    wl = _wire(es)
    assert not wl.eof
    while wl.next_to_send(1000) is not None:
        pass
    assert wl.eof
    assert [(w.start, len(w.items), w.dir_index) for w in wl.lists] == [(1, 4, None), (6, 1, 1), (8, 1, 2)]
    assert wl.item(0).entry.name == b"."         # the first list's parent: "."
    assert wl.item(5).entry.name == b"d"         # start - 1 of d's list
    assert wl.item(6).entry.name == b"d/x"
    assert wl.item(7).entry.name == b"e"
    with pytest.raises(ProtocolError, match="File-list index 9 not in 0 - 8"):
        wl.item(9)
    wl.free_oldest()
    assert wl.live
    with pytest.raises(ProtocolError, match="File-list index 3 not in 5 - 8"):
        wl.item(3)
    wl.free_oldest()
    wl.free_oldest()
    assert not wl.live


def test_first_list_without_dot_has_no_alias():
    wl = _wire(entries("f", ("d", D), "d/x"))
    with pytest.raises(ProtocolError, match="parent"):
        wl.item(0)


def test_lookahead_sends_lists_until_enough_entries_are_ahead():
    es = entries((".", D, XmitFlags.TOP_DIR), *[(f"d{i}", D) for i in range(4)],
                 *[f"d{i}/f{j}" for i in range(4) for j in range(3)])
    wl = _wire(es)
    sent = []
    while (w := wl.next_to_send(5)) is not None:
        sent.append(w)
    assert len(sent) == 2                        # 3 + 3 entries ahead of the first list
    wl.item(sent[0].start)                       # the client works on d0's list now
    assert wl.next_to_send(5) is not None        # 3 ahead: one more
    assert wl.next_to_send(5) is None


def test_one_list_without_incremental_recursion():
    es = entries("a", ("d", D), "d/x")
    wl = WireLists([Listed(e, e.name) for e in es], inc_recurse=False)
    assert [w.start for w in wl.lists] == [0] and wl.eof
    assert wl.item(2).entry.name == b"d/x"
    assert wl.find(3) is None


def test_lazy_lists_follow_the_plan():
    """The lists read directory by directory come in plan_inc_lists' order and numbering."""
    es = entries((".", D, XmitFlags.TOP_DIR), "f", ("a-b", D), ("a-b/s", D), "a-b/s/t", "a-b/y",
                 ("a", D), ("a/b", D), ("a/b/c", D), "a/b/c/d", "a/x", ("e", D), ("z", D), "z/q")
    plan = plan_inc_lists(es)
    wl = _wire(es)
    while wl.next_to_send(1000) is not None:
        pass
    assert [(w.start, w.dir_index, [i.entry.name for i in w.items]) for w in wl.lists] == [
        (sub.start, sub.dir_index, [es[p].name for p in sub.members]) for sub in plan.lists]
    assert wl.dir_count == len(plan.dir_flist)
