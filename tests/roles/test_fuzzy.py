"""--fuzzy name helpers (rsync util1.c find_filename_suffix / fuzzy_distance)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backupd.roles.fuzzy import MAX_DIST, UNIT, find_filename_suffix, fuzzy_distance


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        (b"a.txt", b".txt"),
        (b"a.tar.gz", b".gz"),
        (b"report.txt.bak", b".txt"),   # .bak, .old, .orig at the end are skipped
        (b"report.c.orig", b".c"),
        (b"x.c.1", b".c"),               # an all-digit suffix gives way to one further left
        (b"x.1", b".1"),                 # ... unless there is none
        (b"foo.c.~2~", b".c"),           # an emacs-style numbered backup
        (b".bashrc", b""),               # leading dots are no suffix
        (b"noext", b""),
        (b"foo.bak~", b".bak"),          # rsync compares .bak with the rest of the name: '~' stays
    ],
)
def test_find_filename_suffix(name, suffix):
    assert find_filename_suffix(name) == suffix


def test_distance_units():
    assert fuzzy_distance(b"abc", b"abc", MAX_DIST) == 0
    assert fuzzy_distance(b"abc", b"abd", MAX_DIST) == UNIT + 1        # one substitution, 'c' vs 'd'
    assert fuzzy_distance(b"abc", b"ab", MAX_DIST) == UNIT + ord("c")  # one deletion, weighted by the byte
    assert fuzzy_distance(b"", b"ab", MAX_DIST) == 2 * UNIT + ord("a") + ord("b")
    assert fuzzy_distance(b"a" * 40, b"a", MAX_DIST) > MAX_DIST        # the length heuristic cuts it off


@given(st.binary(min_size=1, max_size=12), st.binary(min_size=1, max_size=12))
def test_distance_is_symmetric_in_edit_count(a, b):
    d1, d2 = fuzzy_distance(a, b, 1 << 31), fuzzy_distance(b, a, 1 << 31)
    assert d1 >> 16 == d2 >> 16  # whole edits agree; only the byte-value tweak may differ
    assert (d1 == 0) == (a == b)
