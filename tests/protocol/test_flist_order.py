"""The file-list order key (flist.c f_name_cmp) and the name cleaner's fast path, against plain readings.

``tuple_key`` is the rule as rsync's f_name_cmp states it, component by
component: files before directories at each level, a directory compared
with a trailing ``/``, ``.`` first, bytes unsigned. ``sort_key`` packs it
into one bytes key; the two must order every pair of names alike.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.protocol.flist import sort_key


def tuple_key(name: bytes, is_dir: bool) -> tuple:
    parts = name.split(b"/")
    key = []
    for i, part in enumerate(parts):
        if i < len(parts) - 1 or (is_dir and part != b"."):
            key.append((1, part + b"/"))
        elif not is_dir:
            key.append((0, part))
    return tuple(key)


component = st.binary(min_size=1, max_size=4).filter(lambda b: b"/" not in b and b"\x00" not in b)
name = st.lists(st.one_of(component, st.sampled_from([b"a", b"a.", b"\x01", b"\xff", b"a\x01"])),
                min_size=1, max_size=4).map(b"/".join)
entry = st.tuples(name, st.booleans())


@settings(max_examples=3000)
@given(entry, entry)
def test_bytes_key_orders_every_pair_as_f_name_cmp(a, b):
    ka, kb = sort_key(*a), sort_key(*b)
    ta, tb = tuple_key(*a), tuple_key(*b)
    assert (ka < kb, ka == kb) == (ta < tb, ta == tb), (a, b)


def test_dot_first_then_files_before_dirs_and_a_dir_before_its_contents():
    entries = [(b"b", True), (b"b/x", False), (b"a.txt", False), (b".", True), (b"a", True), (b"z", False),
               (b"a/b/c", False), (b"a/b", True), (b"a/c", False), (b"ab", True)]
    ordered = [n for n, d in sorted(entries, key=lambda e: sort_key(*e))]
    assert ordered == [b".", b"a.txt", b"z", b"a", b"a/c", b"a/b", b"a/b/c", b"ab", b"b", b"b/x"]


@settings(max_examples=3000)
@given(st.lists(st.sampled_from([b"a", b".", b"..", b"", b"b.c", b"\x01"]), min_size=1, max_size=6).map(b"/".join))
def test_clean_wire_name_fast_path_agrees_with_the_component_rule(name):
    from backupd.protocol.flist import _clean_components, clean_wire_name

    assert clean_wire_name(name) == (_clean_components(name) if name else name)
