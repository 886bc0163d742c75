"""The client's file lists on a push: one list, or incremental sub-lists as they arrive.

Without incremental recursion the client sends one list (then its uid/gid
name lists) and ndx ``i`` is the i-th sorted entry. With it (compat flag
``CF_INC_RECURSE``) the first list holds the top-level entries, and every
directory then gets a sub-list of its own, announced in the sender's data
stream by ``NDX_FLIST_OFFSET - dir_index`` and ended by ``NDX_FLIST_EOF``
(rsync flist.c recv_file_list / recv_additional_file_list, protocol 30+).
List k starts at ndx ``prev_start + prev_count + 1``; the skipped ndx
``start - 1`` names the list's parent directory (flist.c flist_new), which
the generator itemizes, and the client's sender resolves, by that number.

``PushState.flist`` and ``PushState.dest`` are indexed by wire ndx (an
``NdxTable`` each): each list's reserved slot holds its parent's entry (the
same object as in the parent's list) or, for a first list without ``.``, a
placeholder that is never processed. Nothing else about the push changes:
every ndx-keyed table (skip, requested, basis paths) works across lists.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from stat import S_ISDIR

from backupd.errors import ProtocolError
from backupd.protocol.acls import AclDecoder
from backupd.protocol.flist import FileEntry, check_wire_name, clean_wire_name, plain_wire_name, sort_key_for
from backupd.protocol.flist_legacy import new_flist_decoder
from backupd.protocol.xattrs import XattrDecoder

PLACEHOLDER = FileEntry(name=b"", mode=0)  # the reserved slot of a first list that has no '.'
CHUNK_SHIFT = 12  # NdxTable: 4,096 slots per chunk
_CHUNK = 1 << CHUNK_SHIFT
_MASK = _CHUNK - 1


class NdxTable:
    """A list indexed by wire ndx whose released lists cost only what they keep.

    Reads and writes as a list does (``t[ndx]``, ``t[a:b]``, ``len``,
    iteration, ``append``/``extend``), with the slots held in chunks of
    4,096. ``drop_below(end)`` gives up every chunk wholly below ``end``:
    what such a chunk still holds (the directories and reserved slots of
    released lists; their files are None by then) moves to a dict, so a
    push holds the lists in flight and the directories, not one slot per
    file of the tree (rsync frees each list's array, flist.c flist_free).
    A slot of a dropped chunk reads as what was kept there, or None.
    Indexes are wire ndxs, never negative.
    """

    __slots__ = ("_chunks", "_kept", "_len", "_dropped")

    def __init__(self) -> None:
        self._chunks: list[list | None] = []
        self._kept: dict[int, object] = {}
        self._len = 0
        self._dropped = 0  # chunks below this index are dropped

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, ndx):
        try:
            return self._chunks[ndx >> CHUNK_SHIFT][ndx & _MASK]
        except TypeError:  # a slice, or a dropped chunk (None)
            if isinstance(ndx, slice):
                return self._slice(*ndx.indices(self._len))
            if not 0 <= ndx < self._len:
                raise IndexError(ndx) from None
            return self._kept.get(ndx)

    def _slice(self, start: int, stop: int, step: int) -> list:
        if step != 1:
            return [self[i] for i in range(start, stop, step)]
        out: list = []
        while start < stop:
            c = start >> CHUNK_SHIFT
            end = min(stop, (c + 1) << CHUNK_SHIFT)
            chunk = self._chunks[c]
            if chunk is None:
                out.extend(map(self._kept.get, range(start, end)))
            else:
                out.extend(chunk[start & _MASK:((end - 1) & _MASK) + 1])
            start = end
        return out

    def __setitem__(self, ndx: int, value) -> None:
        if not 0 <= ndx < self._len:
            raise IndexError(ndx)
        chunk = self._chunks[ndx >> CHUNK_SHIFT]
        if chunk is not None:
            chunk[ndx & _MASK] = value
        elif value is None:
            self._kept.pop(ndx, None)
        else:
            self._kept[ndx] = value

    def __iter__(self):
        for c, chunk in enumerate(self._chunks):
            if chunk is not None:
                yield from chunk
            else:
                kept = self._kept
                yield from (kept.get(ndx) for ndx in range(c << CHUNK_SHIFT, (c + 1) << CHUNK_SHIFT))

    def append(self, value) -> None:
        """Add one slot at ndx ``len(self)``."""
        self.extend((value,))

    def extend(self, values) -> None:
        """Add slots at ndx ``len(self)`` onwards."""
        chunks = self._chunks
        values = list(values)
        done = 0
        while done < len(values):
            if not chunks or len(chunks[-1]) == _CHUNK:
                chunks.append([])
            last = chunks[-1]
            room = _CHUNK - len(last)
            last.extend(values[done:done + room])
            done += room
        self._len += len(values)

    def clear(self, ndxs) -> None:
        """Set the slots ``ndxs`` (each below ``len(self)``) to None."""
        chunks, kept = self._chunks, self._kept
        for ndx in ndxs:
            chunk = chunks[ndx >> CHUNK_SHIFT]
            if chunk is not None:
                chunk[ndx & _MASK] = None
            else:
                kept.pop(ndx, None)

    def drop_below(self, end: int) -> None:
        """Give up every full chunk that ends at or below ndx ``end``, keeping its non-None slots."""
        chunks, kept, end = self._chunks, self._kept, min(end, self._len)  # whole chunks only
        while (self._dropped + 1) << CHUNK_SHIFT <= end:
            base = self._dropped << CHUNK_SHIFT
            for i, value in enumerate(chunks[self._dropped]):
                if value is not None:
                    kept[base + i] = value
            chunks[self._dropped] = None
            self._dropped += 1


class FileListReader:
    """Decodes the client's file lists; its "same as previous" state runs across sub-lists.

    ``flist_options`` comes from negotiate.file_list_options; with ``-X``
    each entry is followed by its xattr block (flist.c recv_file_entry ->
    receive_xattr), with ``-A`` by its ACLs; ``am_root`` and the xattr
    filter ``excluded`` (None: no ``x`` rules) decide which names are kept.
    """

    def __init__(self, flist_options, *, xattrs: int = 0, acls: bool = False, am_root: int = 0,
                 excluded=None, inbox=None) -> None:
        self.decoder = new_flist_decoder(flist_options)
        # protocol 30+ entries are decoded straight from the session's received bytes (channel.Inbox.decode)
        self.inbox = inbox if flist_options.protocol >= 30 else None
        if flist_options.inc_recurse:  # the lists hold the entries, and free them (IncLists.release)
            self.decoder.keep_entries = False
        self.xattrs = XattrDecoder(am_root=am_root, level=xattrs, excluded=excluded) if xattrs else None
        self.acls = AclDecoder() if acls else None
        self.order = sort_key_for(flist_options.protocol)

    @property
    def io_error(self) -> int:
        """The io_error the last end-of-list marker carried (0 if none)."""
        return self.decoder.io_error

    def read_entries(self, read) -> list[FileEntry]:
        """One list's entries up to its end marker, cleaned and checked, in wire order.

        Raises:
            ProtocolError: an unsafe name, a '.' that is not a directory, or a
                malformed entry.
        """
        entries = []
        acls, xattrs, decoder = self.acls, self.xattrs, self.decoder
        inbox = self.inbox if self.inbox is not None and self.inbox.muxed else None
        decode_at = decoder.decode_at
        while (entry := decoder.read_entry(read) if inbox is None else inbox.decode(decode_at)) is not None:
            if acls is not None and not entry.is_link:
                entry.acls = acls.decode(read, entry.mode, entry.is_dir)
            if xattrs is not None:
                entry.xattrs = xattrs.decode(read)
            if not plain_wire_name(entry.name):
                entry.name = clean_wire_name(entry.name)  # x//y -> x/y, sub/ -> sub (issue 15.9)
                if entry.name != b".":
                    check_wire_name(entry.name)
                elif not entry.is_dir:
                    raise ProtocolError("file-list entry '.' is not a directory")
            entries.append(entry)
        return entries

    def sort(self, entries: list[FileEntry]) -> None:
        """rsync's file-list order (flist.c f_name_cmp), in place."""
        order = self.order  # S_ISDIR, not the is_dir property: once per entry of every list
        entries.sort(key=lambda e: order(e.name, S_ISDIR(e.mode)))

    def next_list(self) -> None:
        """The ndx numbering of the next sub-list (its start follows this one's end plus one)."""
        self.decoder.next_list()


@dataclass(slots=True)
class FileList:
    """One received list: wire ndx ``start .. start+count-1``; ``start-1`` names ``parent``.

    ``parent`` is the dir_flist index of the directory whose contents this is
    (None for a first list without ``.``). A list is finished, and freed
    with an extra NDX_DONE, once the receiver has ``finished`` every transfer
    the generator ``requested`` from it, no -H follower is ``held`` for its
    leader and none waits ``to_redo`` (generator.c check_for_finished_files;
    rsync's in_progress is requested - finished + held). ``finished`` is
    written by the receiver's thread only, the others by the generator's.
    """

    start: int
    count: int
    parent: int | None
    requested: int = 0
    finished: int = 0
    held: int = 0
    to_redo: int = 0


class IncLists:
    """The lists of an incremental push and rsync's dir_flist of every directory received.

    Appended to only by the receiver's thread (``add``); the generator learns
    of each new list from an event and reads ``lists`` up to what it was told.
    """

    def __init__(self) -> None:
        self.lists: list[FileList] = []
        self.dirs: list[int] = []          # dir_flist: ndx of each directory, list by list, sorted
        self._listed: set[int] = set()     # dir_flist indexes whose sub-list has arrived
        self._starts: list[int] = []
        self.eof = False
        self.dones_sent = 0  # the generator's per-list NDX_DONEs: the client sender echoes no more than these

    def parent_of_sub_list(self, dir_index: int) -> int:
        """ndx of the directory a sub-list announced as ``NDX_FLIST_OFFSET - dir_index`` belongs to.

        Raises:
            ProtocolError: an index no list has named, or a second list for
                the same directory (flist.c recv_additional_file_list:
                "Invalid dir index").
        """
        if not 0 <= dir_index < len(self.dirs) or dir_index in self._listed:
            raise ProtocolError(f"Invalid dir index: {dir_index} ({len(self.dirs)} directories known)")
        self._listed.add(dir_index)
        return self.dirs[dir_index]

    def add(self, flist: NdxTable, dest: NdxTable, entries: list[FileEntry], paths: list[bytes],
            parent: int | None) -> FileList:
        """Append one sorted list (and its destination paths) to the wire-indexed tables.

        ``parent`` is the dir_flist index of a sub-list's directory; None for
        the first list, whose parent is its own ``.`` when it has one
        (flist.c recv_file_list: parent_ndx 0, else -1).
        """
        start = len(flist) + 1
        first_dir = len(self.dirs)
        flist.append(PLACEHOLDER if parent is None else flist[self.dirs[parent]])
        dest.append(b"" if parent is None else dest[self.dirs[parent]])
        flist.extend(entries)
        dest.extend(paths)
        self.dirs.extend(start + i for i, e in enumerate(entries) if S_ISDIR(e.mode))
        if parent is None and not self.lists and entries and entries[0].name == b"." and entries[0].is_dir:
            flist[start - 1], dest[start - 1], parent = entries[0], paths[0], first_dir
            self._listed.add(first_dir)  # its contents are this list
        lst = FileList(start=start, count=len(entries), parent=parent)
        self.lists.append(lst)
        self._starts.append(start - 1)
        return lst

    def release(self, position: int, flist: NdxTable, dest: NdxTable, *ndx_sets: set[int]) -> None:
        """Drop what the list at ``position`` holds once both sides are done with it (receiver.c flist_free).

        Its files' entries and paths become None and their ndxs leave
        ``ndx_sets``; its directories stay (their modes and times are set
        at the end, and later lists name them as parents). Lists are
        released in order, so the tables then give up their chunks below
        this list's end (``NdxTable.drop_below``). A push then holds the
        lists in flight and the directories, not the whole tree.
        """
        lst = self.lists[position]
        end = lst.start + lst.count
        freed = [ndx for ndx, entry in enumerate(flist[lst.start:end], lst.start)
                 if entry is not None and not S_ISDIR(entry.mode)]
        flist.clear(freed)
        dest.clear(freed)
        for ndxs in ndx_sets:
            if ndxs:
                ndxs.difference_update(freed)
        flist.drop_below(end)
        dest.drop_below(end)

    def index_of(self, ndx: int) -> int:
        """Which list (position in ``lists``) wire ndx ``ndx`` belongs to (its reserved slot included)."""
        return bisect_right(self._starts, ndx) - 1

    def is_parent_slot(self, ndx: int) -> bool:
        """True for a list's reserved ndx (``start - 1``): the generator's full pass over that directory."""
        i = self.index_of(ndx)
        return i >= 0 and self.lists[i].start - 1 == ndx
