"""Incremental recursion on the sending side: which entries go in which file list.

A sorted, de-duplicated file list (what a non-incremental sender sends as
one list) is cut into rsync's incremental lists: the first list holds the
top-level entries (for a ``dir/`` argument also ``.`` and its direct
children), then every directory gets a list of its own direct members,
even an empty or a no-content one (flist.c send1extra() sends the end
marker alone). Directories enter ``dir_flist`` list by list, each list's
directories in sorted order (flist.c add_dirs_to_tree()); a ``.`` entry
is in ``dir_flist`` but gets no list of its own (its members are in the
first list). Lists are sent depth-first in sorted order, as
send_extra_file_list() walks the tree: a directory's list, then the lists
of its subdirectories, then its next sibling's. A list is announced with
ndx ``NDX_FLIST_OFFSET - dir_index``; its entries are numbered from
``start`` = previous start + previous count + 1 (flist.c flist_new()), and
``start - 1`` names its directory (rsync.c flist_for_ndx(), sender.c
send_files()). ``NDX_FLIST_EOF`` follows the last list.

Source: rsync flist.c send_file_list() (its inc_recurse end),
send_extra_file_list(), send1extra(), add_dirs_to_tree(), flist_new();
rsync-protocol-a.md §8.9-8.11, rsync-protocol-b.md §2.2, §9.4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from backupd.protocol.constants import NDX_FLIST_OFFSET
from backupd.protocol.flist import FileEntry


@dataclass
class IncList:
    """One file list: its entries (positions in the sorted input) and its numbering.

    ``parent`` is the position of the list's directory (the ndx ``start - 1``
    alias), None for a first list that does not begin with ``.``;
    ``dir_index`` is that directory's place in ``dir_flist`` (None for the
    first list, which is not announced).
    """

    members: list[int]
    start: int
    parent: int | None
    dir_index: int | None = None

    @property
    def announce_ndx(self) -> int:
        """The ndx that announces this list (NDX_FLIST_OFFSET - dir_index)."""
        assert self.dir_index is not None
        return NDX_FLIST_OFFSET - self.dir_index


@dataclass
class IncPlan:
    """All lists in send order (the first list first) and ``dir_flist`` (positions)."""

    lists: list[IncList]
    dir_flist: list[int] = field(default_factory=list)


def _parent_name(name: bytes) -> bytes | None:
    head, sep, _ = name.rpartition(b"/")
    return head if sep else None


def plan_inc_lists(entries: Sequence[FileEntry]) -> IncPlan:
    """Cut a sorted, duplicate-free list into the incremental lists rsync would send.

    An entry belongs to the list of the directory entry its name's parent
    path names; with no such entry (a top-level name, ``.`` and its
    children, an ``-R`` path whose parents were not sent) it is in the first
    list. Iterative, so deep nesting costs no Python recursion.
    """
    dirs: dict[bytes, int] = {}
    for pos, entry in enumerate(entries):
        if entry.is_dir and entry.name != b".":
            dirs.setdefault(entry.name, pos)
    first: list[int] = []
    children: dict[int, list[int]] = {}
    for pos, entry in enumerate(entries):
        parent = _parent_name(entry.name) if entry.name != b"." else None
        at = dirs.get(parent) if parent is not None else None
        if at is None or at == pos:
            first.append(pos)
        else:
            children.setdefault(at, []).append(pos)
    starts_with_dot = bool(first) and entries[first[0]].name == b"."
    head = IncList(first, 1, first[0] if starts_with_dot else None)
    plan = IncPlan([head])
    dir_index: dict[int, int] = {}

    def add_dirs(members: list[int]) -> list[int]:
        found = [p for p in members if entries[p].is_dir]
        for p in found:
            dir_index[p] = len(plan.dir_flist)
            plan.dir_flist.append(p)
        return [p for p in found if entries[p].name != b"."]

    stack = list(reversed(add_dirs(first)))
    prev = head
    while stack:
        d = stack.pop()
        members = children.get(d, [])
        sub = IncList(members, prev.start + len(prev.members) + 1, d, dir_index[d])
        plan.lists.append(sub)
        prev = sub
        stack.extend(reversed(add_dirs(members)))
    return plan
