"""The pull sender's file lists by wire ndx: one list, or rsync's incremental lists.

Without incremental recursion: one list, ndx = position from 0. With it
(CF_INC_RECURSE): the first list goes out with the file list; each
directory's list is read from the module when it is about to be sent
(``list_dir``, the builder's send1extra()), as the client's generator
asks for files, keeping at least ``LOOKAHEAD`` entries beyond the list
being worked on (sender.c send_files() calling
send_extra_file_list(f_out, MIN_FILECNT_LOOKAHEAD) before each request).
Lists go depth-first in sorted order, directories numbered into
``dir_flist`` list by list (flist.c add_dirs_to_tree(); the order of
:func:`backupd.protocol.inc_flist.plan_inc_lists`). Each NDX_DONE of the
client frees the oldest list (sender.c send_files(): echoed, no phase
change, until the last list goes); a freed list's entries are dropped, so
memory holds the lists in flight, not the tree.

Source: rsync flist.c flist_new(), flist_free(), send_extra_file_list();
rsync.c flist_for_ndx(), read_ndx_and_attrs(); sender.c send_files().
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from backupd.errors import ProtocolError
from backupd.protocol.constants import NDX_FLIST_OFFSET
from backupd.roles.flist_builder import Listed, split_nested

LOOKAHEAD = 1000   # rsync.h MIN_FILECNT_LOOKAHEAD

ListDir = Callable[[bytes], tuple[list[Listed], int]]


@dataclass
class WireList:
    """One file list: first ndx, entries, parent directory, ``dir_flist`` index, IOERR_* bits met."""

    start: int
    items: list[Listed]
    parent: Listed | None = None
    dir_index: int | None = None
    io_bits: int = 0
    count: int = 0

    def __post_init__(self) -> None:
        self.count = len(self.items)

    @property
    def end(self) -> int:
        """One past the last ndx of this list."""
        return self.start + self.count

    @property
    def announce_ndx(self) -> int:
        """The ndx that announces this list (NDX_FLIST_OFFSET - dir_index)."""
        assert self.dir_index is not None
        return NDX_FLIST_OFFSET - self.dir_index


class WireLists:
    """Lists in send order; all of ``lists`` are sent, ``freed`` of them done by the client.

    Args:
        items: the first list (incremental) or the one sorted list.
        inc_recurse: incremental lists (else one list from 0).
        list_dir: ``list_dir(name) -> (sorted members, IOERR_* bits)`` of a
            directory; None: ``items`` is the whole sorted list, cut here.
        first_bits: the IOERR_* bits met building the first list.
    """

    def __init__(self, items: list[Listed], inc_recurse: bool, list_dir: ListDir | None = None,
                 first_bits: int = 0) -> None:
        self.inc_recurse = inc_recurse
        self.freed = 0
        self.cur = 0           # the list of the last request (rsync cur_flist)
        self._ahead = 0        # entries in sent lists after ``cur`` (file_total - file_old_total)
        self._stack: list[tuple[Listed, int]] = []   # dirs whose lists are still to go, next last
        self.dir_count = 0     # entries of dir_flist so far
        if not inc_recurse:
            self.lists = [WireList(0, items)]
            self._starts = [0]
            return
        if list_dir is None:
            items, held = split_nested(items)
            list_dir = lambda name: (held.pop(name, []), 0)  # noqa: E731
        self.list_dir = list_dir
        dot = items[0] if items and items[0].entry.name == b"." else None
        self.lists = [WireList(1, items, dot, None, first_bits)]
        self._starts = [1]
        self._add_dirs(items)

    def _add_dirs(self, items: list[Listed]) -> None:
        """A new list's dirs join dir_flist in order; all but ``.`` will get a list (add_dirs_to_tree)."""
        found = []
        for item in items:
            if item.entry.is_dir:
                if item.entry.name != b".":
                    found.append((item, self.dir_count))
                self.dir_count += 1
        self._stack.extend(reversed(found))

    @property
    def first(self) -> WireList:
        """The first list."""
        return self.lists[0]

    @property
    def sent(self) -> int:
        """Lists sent so far (the first with the file list)."""
        return len(self.lists)

    @property
    def eof(self) -> bool:
        """All lists are out (rsync flist_eof)."""
        return not self._stack

    @property
    def live(self) -> bool:
        """Some sent list is not freed yet (rsync first_flist != NULL)."""
        return self.freed < self.sent

    def next_to_send(self, at_least: int) -> WireList | None:
        """The next list, read now, while fewer than ``at_least`` entries are ahead; else None."""
        if not self._stack or self._ahead >= at_least:
            return None
        parent, dir_index = self._stack.pop()
        items, bits = self.list_dir(parent.entry.name)
        wl = WireList(self.lists[-1].end + 1, items, parent, dir_index, bits)
        self.lists.append(wl)
        self._starts.append(wl.start)
        self._ahead += wl.count
        self._add_dirs(items)
        return wl

    def free_oldest(self) -> None:
        """The client is done with the oldest list (sender.c send_files on NDX_DONE); drop its entries."""
        if self.freed == self.cur:
            self.cur += 1
            self._ahead -= self.lists[self.cur].count if self.cur < self.sent else 0
        self.lists[self.freed].items = []
        self.freed += 1

    def item(self, ndx: int) -> Listed:
        """The entry ``ndx`` names; a list's ``start - 1`` names its directory.

        Raises:
            ProtocolError: outside the lists not yet freed (rsync "File-list
                index ... not in ..."), or the alias of a list without a parent.
        """
        if not self.inc_recurse:
            return self.lists[0].items[ndx]
        at = bisect_right(self._starts, ndx + 1) - 1
        low = self.lists[self.freed].start - 1 if self.live else 0
        if at < self.freed or ndx >= self.lists[at].end or ndx < low:
            last = self.lists[-1].end - 1
            raise ProtocolError(f"File-list index {ndx} not in {low} - {last} (read_ndx_and_attrs) [sender]")
        self._set_cur(at)
        wl = self.lists[at]
        if ndx >= wl.start:
            return wl.items[ndx - wl.start]
        if wl.parent is None:
            raise ProtocolError(f"ndx {ndx} names the parent of a file list that has none [sender]")
        return wl.parent

    def _set_cur(self, at: int) -> None:
        """cur_flist moves (rsync.c read_ndx_and_attrs recounts file_old_total)."""
        while self.cur < at:
            self.cur += 1
            self._ahead -= self.lists[self.cur].count
        while self.cur > at:
            self._ahead += self.lists[self.cur].count
            self.cur -= 1

    def find(self, ndx: int) -> Listed | None:
        """The entry ``ndx`` names in a live list, or None (no state change; for MSG_SUCCESS)."""
        at = bisect_right(self._starts, ndx) - 1
        if at < self.freed or ndx >= self.lists[at].end:
            return None
        return self.lists[at].items[ndx - self.lists[at].start]
