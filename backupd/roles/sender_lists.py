"""The pull sender's file lists by wire ndx: one list, or rsync's incremental lists.

Without incremental recursion: one list, ndx = position from 0. With it
(CF_INC_RECURSE), the lists of :func:`backupd.protocol.inc_flist.plan_inc_lists`:
the first list goes out with the file list, the others as the client's
generator asks for files, keeping at least ``LOOKAHEAD`` entries beyond
the list being worked on (sender.c send_files() calling
send_extra_file_list(f_out, MIN_FILECNT_LOOKAHEAD) before each request).
The whole tree is scanned before the first list goes out, so memory is
that of the whole list (as without incremental recursion); only the wire
order is rsync's. Each NDX_DONE of the client frees the oldest list
(sender.c send_files(): echoed, no phase change, until the last list goes).

Source: rsync flist.c flist_new(), flist_free(), send_extra_file_list();
rsync.c flist_for_ndx(), read_ndx_and_attrs(); sender.c send_files().
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from backupd.errors import ProtocolError
from backupd.protocol.constants import NDX_FLIST_OFFSET
from backupd.protocol.inc_flist import plan_inc_lists
from backupd.roles.flist_builder import Listed

LOOKAHEAD = 1000   # rsync.h MIN_FILECNT_LOOKAHEAD


@dataclass
class WireList:
    """One file list: its first ndx, entries, parent directory and ``dir_flist`` index."""

    start: int
    items: list[Listed]
    parent: Listed | None = None
    dir_index: int | None = None

    @property
    def end(self) -> int:
        """One past the last ndx of this list."""
        return self.start + len(self.items)

    @property
    def announce_ndx(self) -> int:
        """The ndx that announces this list (NDX_FLIST_OFFSET - dir_index)."""
        assert self.dir_index is not None
        return NDX_FLIST_OFFSET - self.dir_index


class WireLists:
    """Lists in send order; ``sent`` of them are out, ``freed`` of them done by the client.

    Args:
        items: the sorted list of the pull.
        inc_recurse: cut it into incremental lists (else one list from 0).
    """

    def __init__(self, items: list[Listed], inc_recurse: bool) -> None:
        self.inc_recurse = inc_recurse
        if not inc_recurse:
            self.lists = [WireList(0, items)]
        else:
            plan = plan_inc_lists([item.entry for item in items])
            self.lists = [
                WireList(sub.start, [items[p] for p in sub.members],
                         None if sub.parent is None else items[sub.parent], sub.dir_index)
                for sub in plan.lists
            ]
        self._starts = [wl.start for wl in self.lists]
        self.sent = 1          # the first list goes out with the file list
        self.freed = 0
        self.cur = 0           # the list of the last request (rsync cur_flist)
        self._ahead = 0        # entries in sent lists after ``cur`` (file_total - file_old_total)

    def numbered(self):
        """(ndx, item) of every entry, in wire order."""
        for wl in self.lists:
            yield from enumerate(wl.items, wl.start)

    @property
    def eof(self) -> bool:
        """All lists are out (rsync flist_eof)."""
        return self.sent == len(self.lists)

    @property
    def live(self) -> bool:
        """Some sent list is not freed yet (rsync first_flist != NULL)."""
        return self.freed < self.sent

    def next_to_send(self, at_least: int) -> WireList | None:
        """The next list to send while fewer than ``at_least`` entries are ahead, else None."""
        if self.eof or self._ahead >= at_least:
            return None
        wl = self.lists[self.sent]
        self.sent += 1
        self._ahead += len(wl.items)
        return wl

    def free_oldest(self) -> None:
        """The client is done with the oldest list (sender.c send_files on NDX_DONE)."""
        if self.freed == self.cur:
            self.cur += 1
            self._ahead -= len(self.lists[self.cur].items) if self.cur < self.sent else 0
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
        if at < self.freed or at >= self.sent or ndx >= self.lists[at].end or ndx < low:
            last = self.lists[self.sent - 1].end - 1
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
            self._ahead -= len(self.lists[self.cur].items)
        while self.cur > at:
            self._ahead += len(self.lists[self.cur].items)
            self.cur -= 1

    def find(self, ndx: int) -> Listed | None:
        """The entry ``ndx`` names, or None (no state change; for MSG_SUCCESS)."""
        if not self.inc_recurse:
            items = self.lists[0].items
            return items[ndx] if 0 <= ndx < len(items) else None
        at = bisect_right(self._starts, ndx) - 1
        if at < 0 or at >= self.sent or ndx >= self.lists[at].end:
            return None
        return self.lists[at].items[ndx - self.lists[at].start]
