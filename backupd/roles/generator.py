"""The generator of a push: walks the sorted file list against the module tree.

Per entry it creates directories and symlinks, decides whether a regular
file needs a transfer (quick check), and for each transfer writes ndx,
iflags, the sum head and the block sums of the basis file. It also deletes
(moves to history) what the client no longer has, and fixes directory times
at the end. Source: rsync generator.c generate_files()/recv_generator(),
delete_in_dir(); rsync-protocol-b.md §1.4, §3, §4, §8.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
from collections import OrderedDict

from backupd.errors import ExitCode, PathEscape, RsyncError, StorageError
from backupd.protocol.constants import (
    NDX_DONE,
    SIGNIFICANT_ITEM_FLAGS,
    ItemFlags,
    MsgCode,
)
from backupd.protocol.flist import FileEntry
from backupd.protocol.negotiate import inc_recurse_allowed
from backupd.protocol.sums import NULL_SUM_HEAD, Checksum, iter_sums_wire, sum_sizes
from backupd.protocol.wire import NdxEncoder, encode_int32, encode_shortint, encode_vstring
from backupd.roles.acl_sync import GeneratorAcls
from backupd.roles.alt_dest import AltBasis, AltDest, Outcome
from backupd.roles.delete_plan import Note
from backupd.roles.deletion import Deleter
from backupd.roles.errors import FileErrors
from backupd.roles.fuzzy import FNAMECMP_FUZZY, FuzzyFinder
from backupd.roles.owners import owner_ids
from backupd.roles.partial_dir import FNAMECMP_PARTIAL_DIR, drop_partial, partial_basis
from backupd.roles.push import PushState
from backupd.roles.receiver import new_file_mode
from backupd.roles.verbosity import delta_line
from backupd.roles.xattr_sync import GeneratorXattrs, for_push
from backupd.storage.fsops import split_path

SCAN_CACHE_DIRS = 32
# lstats the cached scans hold at most (~800 bytes each) beside the directory being read and its
# ancestors: memory follows the largest directories on one path, not the tree
SCAN_CACHE_ENTRIES = 2048
GENERATOR_BUFFER = 32 * 1024  # rsync io.c IO_BUFFER_SIZE
HLINK_LOOKAHEAD = 500  # generator.c: MIN_FILECNT_LOOKAHEAD / 2 entries read ahead with -H
STOP_WAIT_S = 30.0  # how long a failed push waits for the generator thread to notice
# the attributes the generator sets on an entry it does not transfer
_ATTR_CHANGES = ItemFlags.REPORT_PERMS | ItemFlags.REPORT_TIME | ItemFlags.REPORT_OWNER | ItemFlags.REPORT_GROUP


class _Aborted(Exception):
    """The receiver side failed; the generator stops quietly."""


class Generator:
    """Runs in its own thread; see the module docstring."""

    def __init__(self, state: PushState, session) -> None:
        self.state = state
        self.opts = state.opts
        self.out = session.outbox
        self.out.msgs_overtake = True  # rsync's generator: messages go ahead of buffered data
        if state.inc is not None:  # io.c: its 32 KiB output buffer goes out when full, requests stream
            self.out.flush_size = GENERATOR_BUFFER
        self.log = session.log
        self.ndx = NdxEncoder(state.protocol)
        self.error: RsyncError | None = None
        self.errors = FileErrors(self.out.send_msg, self.log, "generator", state)
        self.deleter = Deleter(state, self.out, self.log, self.errors)
        self._scans: OrderedDict[bytes, dict | None] = OrderedDict()
        self._thread = threading.Thread(target=self._run, name="generator", daemon=True)
        self._dirs: list[tuple[int, bytes, bool]] = []
        self._aborted = False
        self._hlink_leader = _hlink_leaders(state.flist) if self.opts.hard_links and state.inc is None else {}
        self._group_leader: dict[int, int] = {}  # incremental -H: group -> its leader's ndx (hlink.c match_gnums)
        self._settled: set[int] = set()          # ...leaders written, up to date or not sent: followers link now
        self._group_last: dict[int, int] = {}    # ...group -> its last member in the lists read so far
        self._group_scanned = 0
        self._held: set[int] = set()             # ...followers their list waits for
        self._hlink_followers: list[tuple[int, int]] = []
        self._refused_dirs: list[bytes] = []  # module-excluded dirs: their contents are skipped
        # -ii or -vv (INFO_GTE(NAME, 2), capped): unchanged entries are itemized too
        self.itemize_all = "%i%I" in (self.opts.log_format or "") or state.verbosity >= 2
        self.alt = AltDest(self) if state.alt_dirs else None  # --link/copy/compare-dest
        self._alt_basis: dict[int, AltBasis] = {}
        self._parent_seen = b""  # recv_generator parent_dirname: the last parent checked
        self.fuzzy = FuzzyFinder(state) if state.opts.fuzzy else None
        self._hlink_done: dict[int, int] = {}  # -H with alternates: group -> ndx of its written leader
        self.xattrs = for_push(GeneratorXattrs, state)
        self.acls = GeneratorAcls(state.tree, dry_run=self.opts.dry_run) if self.opts.acls else None
        self.inc = state.inc  # incremental recursion: the lists as they arrive (inc_lists.py)
        self._stash: list[tuple[str, object]] = []  # receiver events read while working on the lists
        self._redo_queue: list[int] = []
        self._first_unfinished = 0  # position in inc.lists of the oldest list not yet freed by an NDX_DONE
        self._cur_list: int | None = 0
        self._precreated: set[bytes] = set()  # dirs made 0700 while their parent's list was processed
        self._quiet_uptodate = self._nothing_follows_uptodate()
        self._plain_check = self._plain_check_ids()

    # -- thread control ----------------------------------------------------------------
    def start(self) -> None:
        """Start the generator thread."""
        self._thread.start()

    def join(self) -> None:
        """Wait for the generator thread."""
        self._thread.join()

    def abort(self) -> None:
        """Stop waiting for the receiver (it failed)."""
        self._aborted = True
        self.state.events.put(("abort", None))

    def stop(self, timeout_s: float = STOP_WAIT_S) -> bool:
        """Abort and wait up to ``timeout_s`` for the thread; True once it has ended.

        The generator checks for the abort before each entry, so after a
        receiver error it makes no further call on the module's fd: the
        caller may close that fd only when this returns True.
        """
        self.abort()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _check_aborted(self) -> None:
        if self._aborted:
            raise _Aborted()

    def _wait(self, kind: str, value=None) -> list:
        """Block until the receiver reports ``kind`` (and ``value``); return redo ndxs seen."""
        self.out.flush()
        redo = []
        while True:
            event, arg = self._stash.pop(0) if self._stash else self.state.events.get()
            if event == "abort":
                raise _Aborted()
            if event == "redo":
                redo.append(arg)
            elif event == kind and (value is None or arg == value):
                return redo

    def _run(self) -> None:
        try:
            self._generate()
        except _Aborted:
            return
        except RsyncError as exc:
            self.error = exc
            self._send_fatal(exc)
        except PathEscape as exc:  # e.g. a parent turned symlink before the redo pass: as run_push does
            self.error = RsyncError(str(exc), ExitCode.FILESELECT)
            self._send_fatal(self.error)
        except Exception as exc:  # a bug: keep the traceback in the server log
            self.log.exception("generator failed")
            self.error = RsyncError(f"internal error in the generator: {exc}", ExitCode.CRASHED)
            self._send_fatal(self.error)

    def _send_fatal(self, exc: RsyncError) -> None:
        self.out.send_msg(MsgCode.ERROR, f"rsync: [generator] {exc}\n".encode("utf-8", "replace"))
        self.out.send_msg(MsgCode.ERROR_EXIT, encode_int32(int(exc.exit_code)))

    # -- the phases --------------------------------------------------------------------
    def _generate(self) -> None:
        st, opts = self.state, self.opts
        deleting = opts.deleting and self.deleter.allowed()
        if deleting and opts.delete_mode == "before":
            self.deleter.delete_pass()
        if st.verbosity >= 2:  # generate_files, DEBUG FLIST
            self.out.send_msg(MsgCode.INFO, delta_line(opts.whole_file))
        per_dir = deleting and opts.delete_mode in ("during", "delay")  # delay: remembered in the walk
        if self.inc is not None:
            self._generate_lists(per_dir)
        else:
            first_flush = self._first_flush_ndx()
            for ndx, entry in enumerate(st.flist):
                if ndx in st.skip:
                    continue
                self._process(ndx, entry, per_dir)
                if first_flush is not None and ndx >= first_flush:
                    self.out.flush()  # rsyncd's first loop check: this much reaches the client first
                    first_flush = None
            self.out.write(self.ndx.encode(NDX_DONE))
        redo = self._wait("phase", 1)
        for ndx in redo:
            self._request_file(ndx, st.flist[ndx], redo=True)
        redone = set(redo)
        self._link_followers(lambda leader: leader not in redone)  # their leaders are written: itemize them
        if st.protocol >= 29:  # generator.c generate_files: the delay-updates phase is protocol 29+
            self.out.write(self.ndx.encode(NDX_DONE) + self.ndx.encode(NDX_DONE))
            self._wait("phase", 3)
        else:
            self.out.write(self.ndx.encode(NDX_DONE))
            self._wait("phase", 2)
        self._link_followers(lambda leader: True)
        if deleting and opts.delete_mode == "after":
            self.deleter.delete_pass()
        elif deleting and opts.delete_mode == "delay":
            self.deleter.delete_delayed()  # generator.c do_delayed_deletions
        self._touch_up_dirs()
        if opts.deleting:  # the stats themselves: not below protocol 30 (only 31+ in rsync; 30 kept as it was)
            self.deleter.send_del_stats(self.ndx, counts=st.protocol >= 30)
        if st.protocol >= 31:  # generator.c generate_files(): the late-delete DONE is protocol 31+
            self.out.write(self.ndx.encode(NDX_DONE))
        self._wait("goodbye")
        self.out.write(self.ndx.encode(NDX_DONE))
        self.out.flush()

    # -- incremental recursion ------------------------------------------------------------
    def _generate_lists(self, delete_during: bool) -> None:
        """Each list as it arrives, in order; an NDX_DONE per finished list (generator.c generate_files).

        A list's directory is handled in full at its reserved ndx, right
        before its contents (the deletions in it too); directories inside
        the list are only made (0700) so the parent's mtime can be set
        (recv_generator with is_dir < 0). The last list's NDX_DONE is the
        end of phase 0.
        """
        st, inc, hard_links = self.state, self.inc, self.opts.hard_links
        position, first_flush = 0, None
        if hard_links:  # generate_files: -H reads lists ahead (flist_eof or MIN_FILECNT_LOOKAHEAD/2 files)
            self._read_ahead(HLINK_LOOKAHEAD)
            first_flush = 2 if st.flist[1:2] and st.flist[1].name == b"." else 1
        while (lst := self._next_list(position)) is not None:
            self._cur_list = position
            entries = st.flist[lst.start:lst.start + lst.count]
            if delete_during:  # the names a deletion in their directory keeps
                self.deleter.add_children(entries)
            if hard_links:
                self._list_leaders(lst)
            if lst.parent is not None and lst.start - 1 not in st.skip:
                self._process(lst.start - 1, st.flist[lst.start - 1], delete_during)
            for ndx, entry in enumerate(entries, lst.start):
                if ndx not in st.skip:
                    self._process(ndx, entry, delete_during)
                    self._check_finished(check_redo=False)
                if first_flush is not None and ndx >= first_flush:
                    self.out.flush()  # rsyncd's first loop check, the lists being complete
                    first_flush = None
            if hard_links:  # leaders skipped, refused or failed here: their followers must not wait
                for ndx in range(lst.start, lst.start + lst.count):
                    self._settle_if_not_sent(ndx)
            if position == 0 and not hard_links:  # rsyncd's generator then waits for the next list
                self.out.flush()
            position += 1
        self._cur_list = None
        while self._first_unfinished < len(inc.lists):
            self._check_finished(check_redo=True)
            if self._first_unfinished < len(inc.lists):
                self._next_event()

    def _next_list(self, position: int):
        """The list at ``position`` once it has arrived; None after NDX_FLIST_EOF and the last list."""
        inc = self.inc
        while True:
            self._check_finished(check_redo=True)
            if position < len(inc.lists):
                return inc.lists[position]
            if inc.eof:
                return None
            self._next_event()

    def _read_ahead(self, entries: int) -> None:
        """Wait until the lists hold ``entries`` entries or NDX_FLIST_EOF came (io.c wait_for_receiver)."""
        inc = self.inc
        while not inc.eof and sum(lst.count for lst in inc.lists) < entries:
            self._next_event()

    def _list_leaders(self, lst) -> None:
        """-H leaders for the groups a new list starts: each group's last member in the lists read so far.

        As rsyncd's receiver does after reading the lists ahead (the generator
        waits for HLINK_LOOKAHEAD entries first), that is the member it
        transfers; the others are linked to it (hlink.c match_gnums).
        """
        flist, inc, last = self.state.flist, self.inc, self._group_last
        known = inc.lists[-1]
        end = known.start + known.count
        for ndx in range(self._group_scanned, end):
            entry = flist[ndx]
            if entry.hlink_group is not None and entry.is_reg and not inc.is_parent_slot(ndx):
                last[entry.hlink_group] = ndx
        self._group_scanned = max(self._group_scanned, end)
        for ndx in range(lst.start, lst.start + lst.count):
            entry = flist[ndx]
            if entry.hlink_group is not None and entry.is_reg:
                leader = self._group_leader.setdefault(entry.hlink_group, last[entry.hlink_group])
                self._hlink_leader[ndx] = leader

    def _follow(self, ndx: int, leader: int) -> None:
        """A follower waits for its leader; its list is not finished before it is linked (hlink.c hard_link_check)."""
        self._hlink_followers.append((ndx, leader))
        if self.inc is None:
            return
        self.inc.lists[self.inc.index_of(ndx)].held += 1
        self._held.add(ndx)
        if leader in self._settled:
            self._link_followers(lambda lead: lead == leader)

    def _settle_if_not_sent(self, ndx: int) -> None:
        """Incremental -H: a leader with no transfer coming (or a dry run) settles now."""
        if self._hlink_leader.get(ndx) == ndx and (ndx not in self.state.requested or self.opts.dry_run):
            self._settle(ndx)

    def _settle(self, leader: int) -> None:
        """Incremental -H: ``leader`` is as it will stay; its waiting followers are linked (finish_hard_link)."""
        if self.inc is not None and leader not in self._settled:
            self._settled.add(leader)
            self._link_followers(lambda lead: lead == leader)

    def _next_event(self) -> None:
        """Block for one receiver event and account for it (io.c wait_for_receiver)."""
        self.out.flush()
        self._account(*self.state.events.get())

    def _account(self, event: str, arg) -> None:
        """A receiver event (io.c got_flist_entry_status): a redo, a written -H leader, a new list, a wake-up."""
        if event == "abort":
            raise _Aborted()
        if event == "redo":  # the request is void until it is made again
            lst = self.inc.lists[self.inc.index_of(arg)]
            lst.requested -= 1
            lst.to_redo += 1
            self._redo_queue.append(arg)
        elif event == "fdone":  # a hard-linked file was written: a leader settles
            if self._group_leader.get(self.state.flist[arg].hlink_group) == arg:
                self._settle(arg)
        elif event not in ("flist", "flist_eof", "wake"):
            self._stash.append((event, arg))

    def _check_finished(self, *, check_redo: bool) -> None:
        """Redo requests, then an NDX_DONE for each oldest finished list (generator.c check_for_finished_files).

        Only counters are compared here (the receiver counts what it
        finished); the event queue is read while the generator waits
        (``_next_event``), and with ``check_redo``.
        """
        inc = self.inc
        if check_redo:
            while True:
                try:
                    self._account(*self.state.events.get_nowait())
                except queue.Empty:
                    break
            while self._redo_queue:
                ndx = self._redo_queue.pop(0)
                inc.lists[inc.index_of(ndx)].to_redo -= 1
                self._request_file(ndx, self.state.flist[ndx], redo=True)
        cur = len(inc.lists) if self._cur_list is None else self._cur_list
        done, quiet = self._first_unfinished, not self.out.buffered
        while self._first_unfinished < cur:
            lst = inc.lists[self._first_unfinished]
            if lst.finished != lst.requested or lst.held or lst.to_redo:
                break
            inc.dones_sent += 1  # before the write: the echo may come back at once
            self.out.write(self.ndx.encode(NDX_DONE))
            self._first_unfinished += 1
        if self._first_unfinished != done and quiet:
            # NDX_DONEs alone are sent now, not when the buffer fills: the client's sender keeps
            # only so many files ahead of the lists it was told are done (sender.c
            # send_extra_file_list), so held ones stall its next lists (a noop push ran 6% faster).
            # Other data waits for rsyncd's flush points: the client prints its lines in the order
            # the messages that overtake it come.
            self.out.flush()

    def _precreate_dir(self, entry: FileEntry, path: bytes) -> None:
        """A directory of the list being processed, made 0700 if missing (recv_generator, is_dir < 0).

        Only with -t and without -O; nothing else is checked or said here
        (rsync's daemon filter passes it too): the full pass at the
        directory's own list itemizes, refuses or fixes it.
        """
        opts = self.opts
        if not opts.times or opts.omit_dir_times or opts.dry_run or opts.existing:
            return
        if entry.is_implied_dir and not opts.implied_dirs:
            return
        if self._refused_dirs and any(path.startswith(d + b"/") for d in self._refused_dirs):
            return
        if self.state.tree.is_history_path(path) or self._lstat(path) is not None:
            return
        try:
            self.state.tree.mkdir(path, entry.mode & 0o700, exist_ok=True)
        except StorageError:
            return  # generator.c: any error is reported by the full pass
        self._precreated.add(path)

    # -- one entry ---------------------------------------------------------------------
    def _process(self, ndx: int, entry: FileEntry, delete_during: bool) -> None:
        self._check_aborted()
        path, is_dir = self.state.dest[ndx], entry.is_dir
        if self.inc is not None and is_dir and not self.inc.is_parent_slot(ndx):
            self._precreate_dir(entry, path)
            return
        if self.state.tree.is_history_path(path):
            self._file_error(f"refusing to write {os.fsdecode(path)!r} inside the history folder", entry)
            return
        if self._refused_dirs and any(path.startswith(d + b"/") for d in self._refused_dirs):
            self.state.skip.add(ndx)  # generator.c recv_generator: skip_dir, nothing said
            return
        if entry.name != b"." and self.state.daemon_excluded(path, is_dir):
            self._refuse(ndx, entry, path)
            return
        try:
            if self.opts.relative and not self.opts.implied_dirs and entry.mode != 0:
                if entry.is_implied_dir:
                    return  # recv_generator: !implied_dirs && FLAG_IMPLIED_DIR, left as it is
                self._make_missing_parent(path)
            if entry.mode == 0:
                self.deleter.delete_missing(ndx, entry, path)
            elif is_dir:
                self._process_dir(ndx, entry, path, delete_during)
            elif entry.is_reg:
                leader = self._hlink_leader.get(ndx, ndx)
                if self.alt is not None and ndx in self._hlink_leader:
                    if self.alt.kind == "compare":  # each member compared and sent on its own
                        self._process_file(ndx, entry, path)
                    else:
                        self._hlink_member(ndx, entry, path, leader)
                    return
                if leader != ndx:
                    if self.state.verbosity >= 2:
                        self._linked_uptodate(entry, path, leader)
                    self._follow(ndx, leader)
                    return
                self._process_file(ndx, entry, path)
                if self._hlink_leader:
                    self._settle_if_not_sent(ndx)  # up to date, failed or a dry run: nothing more will come
            elif entry.is_link:
                self._process_symlink(ndx, entry, path)
            else:
                self._process_device(ndx, entry, path)
        except StorageError as exc:
            self._file_error(str(exc), entry)

    def _make_missing_parent(self, path: bytes) -> None:
        """``-R --no-implied-dirs``: a missing parent is made with default modes, unreported (make_path)."""
        parent = path.rpartition(b"/")[0]
        if parent and parent != self._parent_seen and not self.opts.dry_run:
            self._parent_seen = parent
            if self.state.tree.lstat(parent) is None:
                self.state.tree.makedirs(parent, 0o777)

    def _refuse(self, ndx: int, entry: FileEntry, path: bytes) -> None:
        """An entry the module's exclude rules refuse (generator.c recv_generator, daemon_filter_list).

        A refused directory's contents are skipped without a word after
        rsyncd's "Skipping any contents" line.
        """
        what = "directory" if entry.is_dir else "file"
        self.errors.record(f'ERROR: daemon refused to receive {what} "{os.fsdecode(entry.name)}"', prefixed=False)
        self.state.skip.add(ndx)
        if entry.is_dir:
            self.out.send_msg(MsgCode.ERROR, b"*** Skipping any contents from this failed directory ***\n")
            self._refused_dirs.append(path)

    def _file_error(self, message: str, entry: FileEntry) -> None:
        self.errors.record(message, entry.name)

    def _itemize(self, ndx: int, iflags: int) -> None:
        """Send ndx + iflags for a non-transfer item when it changed or -ii asks.

        With -X the xattr comparison adds ``ITEM_REPORT_XATTR`` and its
        request follows the header (generator.c itemize).
        """
        entry, path = self.state.flist[ndx], self.state.dest[ndx]
        if self.acls is not None and (acl := self.acls.report(entry, path, bool(iflags & ItemFlags.IS_NEW))):
            iflags |= acl
            if entry.is_reg:  # set before the xattrs are compared, as rsync's set_file_attrs (dirs: at the end)
                if not self.opts.dry_run and self.acls.access_changed:
                    iflags &= ~ItemFlags.REPORT_PERMS  # the ACL set gave the file its mode (acls.c change_sacl_perms)
                for message in self.acls.apply(entry, path, rewrite=True):
                    self._file_error(message, entry)
        if self.xattrs is not None:
            iflags |= self.xattrs.report(entry, path, bool(iflags & ItemFlags.IS_NEW))
        if self.state.protocol < 29:  # generator.c itemize: no iflags on the wire below 29
            self._legacy_name_line(entry, iflags)
            return
        if iflags & SIGNIFICANT_ITEM_FLAGS or self.itemize_all:
            trailer = b"" if self.xattrs is None else self.xattrs.trailer(self.state.flist[ndx], iflags)
            self.out.write(self.ndx.encode(ndx) + encode_shortint(iflags) + trailer)

    def _legacy_name_line(self, entry: FileEntry, iflags: int, realname: bytes | None = None) -> None:
        """Below protocol 29 the generator names what it made itself, with -v (MSG_INFO).

        A directory whose attributes it set (``NAME/``), a symlink, device
        or special it created (``NAME -> TARGET``, ``NAME``), a hard link
        (``NAME => LEADER``). Source: generator.c recv_generator() and
        hlink.c maybe_hard_link(), ``rprintf(code, ...)`` with INFO_GTE(NAME, 1).
        """
        if not self.opts.verbose:
            return
        name = entry.name
        if realname is not None:
            line = name + b" => " + realname
        elif entry.is_dir:
            if not iflags & (ItemFlags.IS_NEW | _ATTR_CHANGES):
                return
            line = name + b"/"
        elif not iflags & ItemFlags.LOCAL_CHANGE:
            return
        elif entry.is_link:
            line = name + b" -> " + (entry.link_target or b"")
        else:
            line = name
        self.out.send_msg(MsgCode.INFO, line + b"\n")

    def _process_dir(self, ndx: int, entry: FileEntry, path: bytes, delete_during: bool) -> None:
        tree, dry = self.state.tree, self.opts.dry_run
        # below 29 name lines overtake requests; with real incremental lists _generate_lists flushes
        if ndx and self.inc is None and self.state.protocol >= 29 and self._flushes_at_dirs():
            self.out.flush()  # where rsyncd's generator output reaches the client before a directory
        st = self._lstat(path)
        if st is None and self.opts.existing:  # no new directory, nor anything in it
            return
        if path in self._precreated:  # FLAG_DIR_CREATED: itemized and set up as new
            st = None
        if ndx == 0 and self.state.dir_created:  # get_local_name made it: FLAG_DIR_CREATED
            st = None
            iflags = ItemFlags.IS_NEW | ItemFlags.LOCAL_CHANGE
        elif st is not None and stat.S_ISDIR(st.st_mode):
            iflags = self._attr_changes(entry, st)
        elif st is not None and stat.S_ISLNK(st.st_mode) and (kept := self._kept_dirlink(ndx, path)):
            real, real_st = kept
            iflags = self._attr_changes(entry, real_st)
            if delete_during and entry.is_content_dir:
                self.deleter.delete_in_dir(ndx, entry, real)
                self._changed(real)
            self._dirs.append((ndx, path, False))
            self._itemize(ndx, iflags)
            return
        else:
            if st is not None and not dry:
                tree.delete(path)  # delete_item DEL_FOR_DIR: making room is neither said nor counted
            if not dry:
                # a concurrent push may have made it: recv_generator lets EEXIST pass
                tree.mkdir(path, 0o700 | (entry.mode & 0o7777), exist_ok=True)
                self._noted(path)  # the parent's scan learns it: no rescan of the parent per new dir
            iflags = ItemFlags.IS_NEW | ItemFlags.LOCAL_CHANGE
        if iflags & ItemFlags.IS_NEW and self.alt is not None:
            iflags = self._alt_dir_flags(ndx, entry, path, iflags)
        if delete_during and st is not None and entry.is_content_dir:
            self.deleter.delete_in_dir(ndx, entry, path)
            self._changed(path)
        self._dirs.append((ndx, path, st is None))
        if iflags is not None:
            self._itemize(ndx, iflags)

    def _first_flush_ndx(self) -> int | None:
        """After which entry rsyncd's generator first flushes its output, or None.

        generate_files checks after its first entry (next_loopchk 0) and
        maybe_flush_socket flushes once the file list is complete
        (flist_eof): always without incremental recursion (so after the
        ``.`` entry and its deletions); with it only under -H, whose
        generator reads the lists ahead; there the first list's first entry
        is the first one inside ``.`` (``.`` is that list's parent).
        """
        if not self._rsyncd_inc_recurse():
            return 0
        if not self.opts.hard_links:
            return None
        flist = self.state.flist
        return 1 if flist and flist[0].name == b"." else 0

    def _flushes_at_dirs(self) -> bool:
        """Whether rsyncd's output reaches the client before each directory's entries.

        Only with incremental recursion: generator.c check_for_finished_files
        flushes (maybe_flush_socket) as each finished file list is dropped,
        while more lists are still to come. Without it the whole list is
        there from the start; with -H the generator first reads the lists
        ahead (generate_files: until flist_eof or MIN_FILECNT_LOOKAHEAD/2
        files), so for such trees they are complete too and nothing is
        flushed before the end of the phase.
        """
        return self._rsyncd_inc_recurse() and not self.opts.hard_links

    def _rsyncd_inc_recurse(self) -> bool:
        """Whether stock rsyncd would recurse incrementally for this client (compat.c setup_protocol)."""
        return inc_recurse_allowed(self.opts)

    def _alt_dir_flags(self, ndx: int, entry: FileEntry, path: bytes, iflags: int) -> int | None:
        """A new dir with an alternate: None (matched, not reported) or iflags against it."""
        found = self.alt.try_non(ndx, entry, path)
        if found is Outcome.NONE:
            return iflags
        if isinstance(found, AltBasis):
            return self.alt.item_flags(entry, found.st, ItemFlags.LOCAL_CHANGE)
        return None

    def _kept_dirlink(self, ndx: int, path: bytes) -> tuple[bytes, os.stat_result] | None:
        """-K: the module directory a symlink at ``path`` leads to, kept as the directory.

        rsync generator.c recv_generator with keep_dirlinks stats through the
        link; what the file list puts below ``path`` is then written below
        the link's target (the destinations of later entries are rewritten).
        None without -K, or for a link that leads out of the module, into its
        history folder, or to no directory: it is then replaced as usual.
        """
        if not self.opts.keep_dirlinks:
            return None
        from backupd.roles.flist_builder import Resolver, _Unreachable

        try:
            real, real_st = Resolver(self.state.tree).resolve(path, follow_last=True)
        except (_Unreachable, StorageError):
            return None
        if not stat.S_ISDIR(real_st.st_mode) or self.state.tree.is_history_path(real):
            return None
        prefix, dest = path + b"/", self.state.dest
        for j in range(ndx + 1, len(dest)):
            if dest[j].startswith(prefix):  # later lists only: none is freed yet
                dest[j] = real + b"/" + dest[j][len(prefix):]
        return real, real_st

    def _lstat(self, path: bytes) -> os.stat_result | None:
        """lstat through per-directory scans (one scandir per directory, not one walk per entry).

        The main pass looks at each entry once, right after its directory was
        scanned; the generator's own changes drop the scan (``_changed``).
        Beyond SCAN_CACHE_DIRS directories or SCAN_CACHE_ENTRIES entries the
        least recently used scans go, but never the one just read or its
        ancestors: rsync's order comes back to a parent after each subtree
        (and every list's directory is an entry of its parent).
        """
        parent, _, name = path.rpartition(b"/")
        if not name or name == b".":
            return self.state.tree.lstat(path)
        key = parent or b"."
        scans = self._scans
        if key in scans:
            scans.move_to_end(key)
        else:
            scans[key] = self.state.tree.scan_dir(key)
            self._trim_scans(key)
        scan = scans[key]
        return None if scan is None else scan.get(name)

    def _trim_scans(self, key: bytes) -> None:
        """Drop least recently used scans over the bounds, keeping ``key`` and its ancestors (see _lstat)."""
        scans = self._scans
        while len(scans) > SCAN_CACHE_DIRS or sum(len(s) for s in scans.values() if s) > SCAN_CACHE_ENTRIES:
            victim = next((k for k in scans if k != key and k != b"." and not key.startswith(k + b"/")), None)
            if victim is None:
                return
            del scans[victim]

    def _noted(self, path: bytes) -> None:
        """``path`` was just written, made or removed: refresh its entry in a cached scan.

        A scan of ``path`` itself (None while it was missing, or a directory
        it replaced) is dropped. Cheaper than :meth:`_changed` for a run of
        entries in one directory (a --link-dest rotation links every one, a
        push makes each new directory): no rescan of the parent.
        """
        self._scans.pop(path, None)
        parent, _, name = path.rpartition(b"/")
        scan = self._scans.get(parent or b".")
        if scan is None:
            return
        st = self.state.tree.lstat(path)
        if st is None:
            scan.pop(name, None)
        else:
            scan[name] = st

    def _changed(self, path: bytes) -> None:
        """Forget the scans of ``path``'s directory and of ``path`` itself."""
        self._scans.pop(path.rpartition(b"/")[0] or b".", None)
        self._scans.pop(path, None)

    def _process_symlink(self, ndx: int, entry: FileEntry, path: bytes) -> None:
        if not self.opts.links or entry.link_target is None:
            self._skip_non_regular(entry, path)
            return
        if self.opts.safe_links and unsafe_symlink(entry.link_target, entry.name):
            if self.opts.verbose:
                text = f'ignoring unsafe symlink "{os.fsdecode(entry.name)}" -> "{os.fsdecode(entry.link_target)}"\n'
                self.out.send_msg(MsgCode.INFO, text.encode("utf-8", "replace"))
            return
        tree = self.state.tree
        st = self._lstat(path)
        if st is None and self.opts.existing:
            return
        found = self._alt_non(ndx, entry, path) if st is None else Outcome.NONE
        if found is None:
            return
        if st is not None and not stat.S_ISLNK(st.st_mode):
            if not self._make_room(entry, path, st, "symlink"):
                return
            st = None
        if st is not None and tree.readlink(path) == entry.link_target:
            iflags = self._attr_changes(entry, st) & ~ItemFlags.REPORT_PERMS
            if iflags & ItemFlags.REPORT_TIME and not self.opts.dry_run:
                tree.set_attrs(path, mtime_ns=entry.mtime_ns)
            self._attrs_report(entry, iflags)
        else:
            if not self.opts.dry_run:
                tree.symlink(entry.link_target, path)
                self._changed(path)
                mtime = entry.mtime_ns if self.opts.times and not self.opts.omit_link_times else None
                made = tree.lstat(path) if mtime is not None else None
                if made is not None and self._same_mtime(entry, made):
                    mtime = None  # rsync set_file_attrs: a new link within the same second keeps its time
                tree.set_attrs(path, mtime_ns=mtime, **self._owner(entry))
            iflags = ItemFlags.LOCAL_CHANGE | ItemFlags.IS_NEW
            if st is not None:  # retargeted: the change, and the new link's time (itemize of the old one)
                keep_time = self.opts.times and not self.opts.omit_link_times  # else itemize reports it anyway
                time = self._attr_changes(entry, st) & ItemFlags.REPORT_TIME if keep_time else ItemFlags.REPORT_TIME
                iflags = ItemFlags.LOCAL_CHANGE | ItemFlags.REPORT_CHANGE | time
            if found is not Outcome.NONE:
                iflags = self._alt_made_flags(entry, found)
        if iflags is not None:
            self._itemize(ndx, iflags)
        self._success(ndx)

    def _alt_non(self, ndx: int, entry: FileEntry, path: bytes) -> Outcome | AltBasis | None:
        """A symlink, device or special the module lacks, against the alternates (try_dests_non).

        None when done (linked, or matched by --compare-dest); otherwise the
        outcome for :meth:`_alt_made_flags` after the entry is created.
        """
        if self.alt is None:
            return Outcome.NONE
        found = self.alt.try_non(ndx, entry, path)
        if found is Outcome.UPTODATE and self.alt.kind != "copy":
            return None
        return found

    def _alt_made_flags(self, entry: FileEntry, found: Outcome | AltBasis) -> int | None:
        """iflags of an entry created after an alternate was found: against it, or unreported."""
        if isinstance(found, AltBasis):
            return self.alt.item_flags(entry, found.st, ItemFlags.LOCAL_CHANGE | ItemFlags.REPORT_CHANGE)
        return None

    def _success(self, ndx: int) -> None:
        """MSG_SUCCESS for an entry the receiver needs not write (generator.c return_with_success).

        With --remove-source-files the client removes its copy of a symlink,
        device or special that is now in place, and of an unchanged file.
        """
        if self.opts.remove_source_files and not self.opts.dry_run:
            self.out.send_msg(MsgCode.SUCCESS, encode_int32(ndx))

    def _skip_non_regular(self, entry: FileEntry, path: bytes) -> None:
        """rsyncd's note for a symlink, device or special it was not asked to keep (recv_generator, INFO_NONREG)."""
        if self.opts.existing and self._lstat(path) is None:
            return
        text = f'skipping non-regular file "{os.fsdecode(entry.name)}"\n'
        self.out.send_msg(MsgCode.INFO, text.encode("utf-8", "replace"))

    def _make_room(self, entry: FileEntry, path: bytes, st: os.stat_result, what: str) -> bool:
        """Remove what is in the way of a new ``what`` (generator.c recv_generator, delete_item DEL_MAKE_ROOM).

        A non-empty directory goes only with --delete or --force (its contents
        reported as deleted, the directory itself not); otherwise rsync's two
        messages and the entry is skipped. Returns False when it is still there.
        """
        tree, rel = self.state.tree, entry.name
        if stat.S_ISDIR(st.st_mode):
            items = self.deleter.room_contents(rel, path)
            if items and not (self.opts.deleting or self.opts.force):
                self.out.send_msg(MsgCode.INFO, Note(rel).text)
                self.errors.record(f"could not make way for new {what}: {os.fsdecode(rel)}", prefixed=False)
                return False
            for item_rel, item_is_dir in items:
                self.deleter.report_deleted(item_rel, item_is_dir)
        if not self.opts.dry_run:
            counts = tree.delete(path)
            counts.dirs -= stat.S_ISDIR(st.st_mode)  # the room made is not a deletion, what was in it is
            self.deleter.count(counts)
            self._changed(path)
        return True

    def _process_device(self, ndx: int, entry: FileEntry, path: bytes) -> None:
        wanted = (self.opts.devices and entry.is_device) or (self.opts.specials and entry.is_special)
        if not wanted:
            self._skip_non_regular(entry, path)
            return
        if entry.is_device and not self.state.is_root:
            self._file_error(f"mknod {path!r} failed: Operation not permitted", entry)
            return
        tree = self.state.tree
        st = self._lstat(path)
        if st is None and self.opts.existing:
            return
        found = self._alt_non(ndx, entry, path) if st is None else Outcome.NONE
        if found is None:
            return
        rdev = os.makedev(entry.rdev_major, entry.rdev_minor) if entry.is_device else 0
        if (
            st is not None
            and stat.S_IFMT(st.st_mode) == stat.S_IFMT(entry.mode)
            and (not entry.is_device or st.st_rdev == rdev)
        ):
            self._itemize(ndx, self._attr_changes(entry, st))
            self._success(ndx)
            return
        if not self.opts.dry_run:
            tree.mknod(path, entry.mode, rdev)
            self._changed(path)
            tree.set_attrs(
                path,
                mode=entry.mode & 0o7777,
                mtime_ns=entry.mtime_ns if self.opts.times else None,
                **self._owner(entry),
            )
        iflags = ItemFlags.LOCAL_CHANGE | (ItemFlags.REPORT_CHANGE if st is not None else ItemFlags.IS_NEW)
        if found is not Outcome.NONE:
            iflags = self._alt_made_flags(entry, found)
        if iflags is not None:
            self._itemize(ndx, iflags)
        self._success(ndx)

    # -- regular files -----------------------------------------------------------------
    def _nothing_follows_uptodate(self) -> bool:
        """True when a regular file the quick check finds current, attributes too, needs no further step.

        The general path (size limits, --existing/--ignore-existing/--update,
        alternates, the partial dir, -H leaders, ACLs and xattrs, -ii and -vv
        lines, --remove-source-files, the name lines below protocol 29) would
        then set, say and send nothing for it; with any of those options on,
        every file takes the general path.
        """
        opts, state = self.opts, self.state
        return (opts.min_size is None and opts.max_size is None
                and not (opts.existing or opts.ignore_existing or opts.update or opts.append or opts.partial_dir
                         or opts.hard_links or opts.remove_source_files)
                and self.alt is None and self.acls is None and self.xattrs is None
                and not self.itemize_all and state.protocol >= 29)

    def _plain_check_ids(self) -> tuple[bool, bool, bool] | None:
        """What :meth:`_plainly_uptodate` compares: (-p, uid, gid); None when it cannot decide alone.

        It decides for the options whose quick check is size and whole-second
        mtime (no -I, -c, --size-only, --modify-window) and whose attribute
        check is the mode bits under -p (not -E alone) and, as root, the
        uid/gid (under -o/-g; as root without -o/-g nothing is compared).
        """
        opts = self.opts
        if not self._quiet_uptodate or opts.ignore_times or opts.checksum or opts.size_only or opts.modify_window:
            return None
        if opts.executability and not opts.perms:
            return None
        root = self.state.is_root
        return bool(opts.perms), bool(root and opts.owner), bool(root and opts.group)

    def _plainly_uptodate(self, entry: FileEntry, st: os.stat_result) -> bool:
        """True when a regular file is current, attributes too, by the plain check (``_plain_check``).

        What ``_unchanged`` and ``_attr_changes`` would conclude, for the
        options ``_plain_check_ids`` admits, in one expression; False only
        means "ask them": an id with a name to map (no --numeric-ids) is
        left to them, as is any difference.
        """
        perms, uid, gid = self._plain_check
        return (st.st_mode & 0o170000 == 0o100000 and st.st_size == entry.size
                and st.st_mtime_ns // 1_000_000_000 == entry.mtime
                and not (perms and (st.st_mode ^ entry.mode) & 0o7777)
                and (not uid or entry.uid is None
                     or (st.st_uid == entry.uid and (self.opts.numeric_ids or not entry.user_name)))
                and (not gid or entry.gid is None
                     or (st.st_gid == entry.gid and (self.opts.numeric_ids or not entry.group_name))))

    def _process_file(self, ndx: int, entry: FileEntry, path: bytes) -> None:
        opts = self.opts
        if self._quiet_uptodate:  # the common noop entry ends at its quick check
            st = self._lstat(path)
            if st is not None and self._plain_check is not None and self._plainly_uptodate(entry, st):
                return
            if (st is not None and stat.S_ISREG(st.st_mode) and self._unchanged(entry, path, st)
                    and not self._attr_changes(entry, st)):
                return
        elif (opts.min_size is not None and entry.size < opts.min_size) or (
            opts.max_size is not None and entry.size > opts.max_size
        ):
            return
        else:
            st = self._lstat(path)
        if st is None and opts.existing:
            return
        if st is not None and opts.ignore_existing:
            return
        regular = st is not None and stat.S_ISREG(st.st_mode)
        if st is not None and not regular:
            if not self._make_room(entry, path, st, "regular file"):
                return
            st = None
        if regular and opts.update and st.st_mtime_ns // 1_000_000_000 > entry.mtime:
            return
        if self.alt is not None and (not regular or self.alt.kind != "copy"):
            found = self.alt.try_reg(ndx, entry, path, st if regular else None)
            if found is True:  # linked, copied or matched: nothing to receive (try_dests_reg -2)
                self._success(ndx)
                return
            if found is not False:  # a basis in an alternate dir, unless a partial file replaces it
                partial = partial_basis(self.state, path) if opts.partial_dir else None  # prepare_to_open
                if partial is None:
                    self._alt_basis[ndx] = found
                    self._request_file(ndx, entry, redo=False)
                else:  # itemized against the alternate (real_sx), its blocks from the partial file
                    self._note_basis(ndx, entry, path, None, partial)
                    self._request_file(ndx, entry, redo=False, st=found.st)
                return
        partial = partial_basis(self.state, path) if opts.partial_dir else None
        if regular:
            if opts.append and st.st_size >= entry.size:
                return
            if self._unchanged(entry, path, st):
                if partial is not None and not opts.dry_run:  # recv_generator: up to date, partialptr unlinked
                    drop_partial(self.state, partial.path, self.log)
                self._update_attrs(ndx, entry, path, st)
                if self.alt is None and self.inc is None and self._hlink_leader.get(ndx) == ndx:
                    # recv_generator: an up-to-date leader links its members at once (finish_hard_link);
                    # with incremental lists _process settles it right after this
                    self._link_followers(lambda lead: lead == ndx)
                self._success(ndx)
                return
        self._note_basis(ndx, entry, path, st, partial)
        self._request_file(ndx, entry, redo=False, st=st)

    def _note_basis(self, ndx: int, entry: FileEntry, path: bytes, st: os.stat_result | None,
                    partial: AltBasis | None) -> AltBasis | None:
        """recv_generator prepare_to_open: a partial file, else (no target) a fuzzy match, is the basis."""
        if partial is None and st is None and self.fuzzy is not None:
            partial = self.fuzzy.find(entry, path)  # find_fuzzy: a similar file's blocks
        if partial is not None:
            self._alt_basis[ndx] = partial
            self.state.basis_paths[ndx] = (partial.index, partial.path)
        return partial

    def _unchanged(self, entry: FileEntry, path: bytes, st: os.stat_result) -> bool:
        opts = self.opts
        if opts.ignore_times or opts.append:
            return False
        if st.st_size != entry.size:
            return False
        if opts.checksum:
            return self._file_checksum(path) == entry.checksum
        if opts.size_only:
            return True
        return self._same_mtime(entry, st)

    def _same_mtime(self, entry: FileEntry, st: os.stat_result) -> bool:
        """rsync util1.c same_time(): whole seconds, unless ``--modify-window`` says otherwise.

        Window 0 (the default) compares seconds only, a negative window
        (``-@-1``) nanoseconds too, a positive one allows that many seconds.
        """
        window = self.opts.modify_window
        sec = st.st_mtime_ns // 1_000_000_000
        if window > 0:
            return abs(sec - entry.mtime) <= window
        if sec != entry.mtime:
            return False
        return window == 0 or self.state.protocol < 31 or st.st_mtime_ns % 1_000_000_000 == entry.mtime_nsec

    def _file_checksum(self, path: bytes) -> bytes | None:
        """The whole-file checksum of the module's copy (for -c), or None if it is no regular file."""
        basis = self.state.tree.open_basis(path)
        if basis is None:
            return None
        with basis:
            hasher = Checksum(self.state.negotiated.file_checksum, 0).file_sum_hasher()
            step = 4 << 20
            for off in range(0, basis.size, step):
                hasher.update(basis.view(off, min(step, basis.size - off)))
            return hasher.digest()

    def _update_attrs(self, ndx: int, entry: FileEntry, path: bytes, st: os.stat_result) -> None:
        iflags = self._attr_changes(entry, st)
        if not self.opts.dry_run and iflags & _ATTR_CHANGES:
            self.state.tree.set_attrs(
                path,
                # rsync.c dest_mode
                mode=new_file_mode(self.state, entry, st) if iflags & ItemFlags.REPORT_PERMS else None,
                mtime_ns=entry.mtime_ns if iflags & ItemFlags.REPORT_TIME else None,
                **self._owner(entry),
            )
        self._attrs_report(entry, iflags)
        self._itemize(ndx, iflags)

    def _attrs_report(self, entry: FileEntry, iflags: int) -> None:
        """-vv (INFO NAME2), not -i: ``NAME is uptodate``, or ``NAME`` when attributes changed.

        rsync.c set_file_attrs with ATTRS_REPORT, for an entry the quick
        check found current; MSG_INFO (FCLIENT).
        """
        if iflags & _ATTR_CHANGES:
            self.say_uptodate(entry.name, updated=True)
        else:
            self.say_uptodate(entry.name)

    def _linked_uptodate(self, entry: FileEntry, path: bytes, leader: int) -> None:
        """-vv: a member already linked to its up-to-date leader says so at its own place.

        rsync takes the group's first existing member as its leader and each
        later one is then "uptodate" in hlink.c maybe_hard_link; backupd
        links them to the last one afterwards, finding nothing to do.
        """
        st, lead_st = self._lstat(path), self._lstat(self.state.dest[leader])
        if (st is not None and lead_st is not None and stat.S_ISREG(lead_st.st_mode)
                and (st.st_dev, st.st_ino) == (lead_st.st_dev, lead_st.st_ino)
                and self._unchanged(self.state.flist[leader], self.state.dest[leader], lead_st)):
            self.say_uptodate(entry.name)

    def say_uptodate(self, name: bytes, *, updated: bool = False) -> None:
        """-vv (INFO NAME2), not -i: ``NAME is uptodate`` (``NAME`` alone when ``updated``), MSG_INFO."""
        if self.state.verbosity >= 2 and "%i" not in (self.opts.log_format or ""):
            self.out.send_msg(MsgCode.INFO, name + (b"\n" if updated else b" is uptodate\n"))

    def _attr_changes(self, entry: FileEntry, st: os.stat_result) -> int:
        opts, iflags = self.opts, 0
        if (opts.times and not (entry.is_dir and opts.omit_dir_times) and not (entry.is_link and opts.omit_link_times)
                and not self._same_mtime(entry, st)):  # itemize keep_time (-O, -J)
            iflags |= ItemFlags.REPORT_TIME
        if opts.perms and (st.st_mode & 0o7777) != (entry.mode & 0o7777):
            iflags |= ItemFlags.REPORT_PERMS
        elif not opts.perms and opts.executability and bool(st.st_mode & 0o111) != bool(entry.mode & 0o111):
            iflags |= ItemFlags.REPORT_PERMS  # generator.c itemize: -E reports an x-bit change
        owner = self._owner(entry)
        if owner.get("uid") is not None and owner["uid"] != st.st_uid:
            iflags |= ItemFlags.REPORT_OWNER
        if owner.get("gid") is not None and owner["gid"] != st.st_gid:
            iflags |= ItemFlags.REPORT_GROUP
        return iflags

    def _owner(self, entry: FileEntry) -> dict:
        return owner_ids(self.state, entry)

    def _request_file(self, ndx: int, entry: FileEntry, *, redo: bool, st: os.stat_result | None = None) -> None:
        self._check_aborted()
        state, opts = self.state, self.opts
        path = state.dest[ndx]
        alt = self._alt_basis.get(ndx)
        if redo and alt is None and opts.partial_dir:  # recv_generator again: a failed update put into the partial dir
            alt = self._note_basis(ndx, entry, path, state.tree.lstat(path), partial_basis(state, path))
        partial = alt is not None and alt.index >= FNAMECMP_PARTIAL_DIR  # itemized against the target (real_sx)
        if alt is not None and not partial:  # generator.c: fnamecmp is basis_dir[j]/fname, itemized against it
            st, path = alt.st, alt.path
        elif st is None and redo:
            st = state.tree.lstat(path)
        exists = partial or (st is not None and stat.S_ISREG(st.st_mode))
        iflags = ItemFlags.TRANSFER if alt is None else ItemFlags.TRANSFER | ItemFlags.BASIS_TYPE_FOLLOWS
        if alt is not None and alt.index >= FNAMECMP_FUZZY:
            iflags |= ItemFlags.XNAME_FOLLOWS
        if self.fuzzy is not None and not opts.whole_file and not opts.dry_run:
            self.fuzzy.mark_sent(state.dest[ndx])  # recv_generator: not a basis for what follows
        if st is None:
            iflags |= ItemFlags.IS_NEW
        else:
            iflags |= self._attr_changes(entry, st) | (ItemFlags.REPORT_SIZE if st.st_size != entry.size else 0)
            if opts.checksum:
                iflags |= ItemFlags.REPORT_CHANGE
            if not opts.times:
                iflags |= ItemFlags.REPORT_TIME
        if self.xattrs is not None:
            iflags |= self.xattrs.report(entry, path, st is None)
        if self.acls is not None:
            iflags |= self.acls.report(entry, path, st is None)
        state.requested.add(ndx)
        if state.protocol < 29:  # only the ndx: the sender assumes ITEM_TRANSFER (rsync.c read_ndx_and_attrs)
            header = self.ndx.encode(ndx)
            if alt is not None:  # no basis type on the wire: the receiver takes the generator's choice
                state.basis_paths.setdefault(ndx, (alt.index, alt.path))
        else:
            header = self.ndx.encode(ndx) + encode_shortint(iflags & 0xFFFF)
        # io.c write_ndx_and_attrs: basis type, the fuzzy name, then the xattr request
        if alt is not None and state.protocol >= 29:
            header += bytes((alt.index,))
            if alt.index >= FNAMECMP_FUZZY:
                header += encode_vstring(alt.path.rpartition(b"/")[2])
        if self.xattrs is not None:
            header += self.xattrs.trailer(entry, iflags)
        if opts.dry_run:
            self.out.write(header)
            return
        if self.inc is not None:  # generator.c recv_generator notify_others: the list waits for it
            self.inc.lists[self.inc.index_of(ndx)].requested += 1
        self.out.write(header + self._sums_for(alt.path if partial else path, entry, exists, redo))
        backup = state.tree.backup
        if opts.inplace and not redo and alt is None and exists and backup is not None and backup.report:
            backup.report(split_path(path, state.tree.module))  # recv_generator: its --inplace backup copy

    def _sums_for(self, path: bytes, entry: FileEntry, exists: bool, redo: bool) -> bytes:
        opts = self.opts
        if not exists or opts.whole_file or self.state.negotiated.checksum == "none":
            return NULL_SUM_HEAD.encode()
        basis = self.state.tree.open_basis(path)
        if basis is None or basis.size == 0:
            if basis is not None:
                basis.close()
            return NULL_SUM_HEAD.encode()
        with basis:
            digest_len = self.state.checksum.digest_len
            head = sum_sizes(
                basis.size, digest_len, block_size=opts.block_size, redo=redo, align=self._clone_align()
            )
            if opts.append and not redo:
                return head.encode()
            parts, per_block = [head.encode()], 4 + head.s2_len
            for piece in iter_sums_wire(basis.view(0, basis.size), head, self.state.checksum):
                parts.append(piece)
                basis.read_through(len(piece) // per_block * head.block_len)  # a GB file must not stay in our RSS
            return b"".join(parts)

    def _clone_align(self) -> int:
        """Reflinked deltas: the alignment for block lengths (0 unless the receiver will clone)."""
        opts = self.opts
        if opts.sparse or opts.inplace or opts.append:
            return 0
        return self.state.tree.clone_align

    def _link_followers(self, ready) -> None:
        """-H: make the other members of a group hard links to their leader (hlink.c finish_hard_link).

        Only followers whose leader ``ready(leader)`` says is written; each is
        itemized as rsync does, ``hf+++++++++ name => leader``, the members of
        a group in reverse file-list order.
        """
        later = []
        for ndx, leader in sorted(self._hlink_followers, key=lambda f: (f[1], -f[0])):
            if ready(leader):
                self._link_one(ndx, leader)
                self._release(ndx)
            else:
                later.append((ndx, leader))
        self._hlink_followers = later

    def _release(self, ndx: int) -> None:
        """Incremental -H: follower ``ndx`` is linked (or failed to be): its list may finish."""
        if ndx in self._held:
            self._held.discard(ndx)
            self.inc.lists[self.inc.index_of(ndx)].held -= 1

    def _link_one(self, ndx: int, leader: int) -> None:
        """Hard-link follower ``ndx`` to its written ``leader`` and itemize it (hlink.c maybe_hard_link)."""
        tree = self.state.tree
        entry, path, target = self.state.flist[ndx], self.state.dest[ndx], self.state.dest[leader]
        try:
            lead_st = tree.lstat(target)
            st = tree.lstat(path)
            if lead_st is None and self.alt is not None and self.alt.kind == "compare":
                return  # its leader matched a --compare-dest file and was not written: nor is it
            if self.opts.dry_run and lead_st is None:
                lead_st = st = None
            elif lead_st is None or not stat.S_ISREG(lead_st.st_mode):
                self._file_error(f"cannot hard-link {os.fsdecode(entry.name)}: its first link was not written", entry)
                return
            elif st is not None and (st.st_dev, st.st_ino) == (lead_st.st_dev, lead_st.st_ino):
                return
            # xattrs compare with what was there before the link (hlink.c)
            xreport = 0 if self.xattrs is None else self.xattrs.report(entry, path, st is None)
            if not self.opts.dry_run:
                tree.hardlink(target, path)
                self._noted(path)
            iflags = ItemFlags.LOCAL_CHANGE | ItemFlags.XNAME_FOLLOWS | (ItemFlags.IS_NEW if st is None else 0)
            xname = self.state.flist[leader].name
            if st is None and self.alt is not None:  # itemized against a matching alternate
                alt_st, report = self.alt.follower_match(entry, path, lead_st)
                if not report:
                    return
                if alt_st is not None:
                    linked = ItemFlags.LOCAL_CHANGE | ItemFlags.XNAME_FOLLOWS
                    iflags = self.alt.item_flags(entry, alt_st, linked, xname=xname)
            iflags |= xreport
            if self.state.protocol < 29:
                self._legacy_name_line(entry, iflags, realname=xname)
                return
            trailer = b"" if self.xattrs is None else self.xattrs.trailer(entry, iflags)
            self.out.write(self.ndx.encode(ndx) + encode_shortint(iflags) + encode_vstring(xname) + trailer)
        except StorageError as exc:
            self._file_error(str(exc), entry)

    def _hlink_member(self, ndx: int, entry: FileEntry, path: bytes, last: int) -> None:
        """-H with alternate dirs: a group member in file-list order (hlink.c hard_link_check).

        The first member that is linked or copied from an alternate (or the
        last one, when it needs no transfer) becomes the group's leader at
        once: members already waiting are linked to it then, later ones in
        their place. Until then members wait; the last is processed as usual.
        """
        group = entry.hlink_group
        done = self._hlink_done.get(group)
        if done is not None:
            self._link_one(ndx, done)
            return
        if ndx != last:
            if self._lstat(path) is not None or self.alt.try_reg(ndx, entry, path, None, basis_ok=False) is not True:
                self._follow(ndx, last)
            return
        self._process_file(ndx, entry, path)
        if ndx not in self.state.requested and group not in self._hlink_done and self._lstat(path) is not None:
            self._hlink_lead(group, ndx)

    def alt_written(self, ndx: int) -> None:
        """An alternate was linked or copied to ``ndx``: with -H it leads its group from now on."""
        group = self.state.flist[ndx].hlink_group
        if ndx in self._hlink_leader and group not in self._hlink_done:
            self._hlink_lead(group, ndx)

    def _hlink_lead(self, group: int, ndx: int) -> None:
        """``ndx`` is written: it leads ``group``; its waiting members are linked to it now."""
        self._hlink_done[group] = ndx
        waiting = [f for f, _ in self._hlink_followers if self.state.flist[f].hlink_group == group]
        self._hlink_followers = [f for f in self._hlink_followers if f[0] not in waiting]
        for follower in sorted(waiting, reverse=True):
            self._link_one(follower, ndx)
            self._release(follower)

    # -- deletion ----------------------------------------------------------------------
    # -- the end -----------------------------------------------------------------------
    def _touch_up_dirs(self) -> None:
        """Directory modes and mtimes, after everything inside them was written."""
        if self.opts.dry_run:
            return
        state, opts = self.state, self.opts
        for ndx, path, created in reversed(self._dirs):
            entry = state.flist[ndx]
            mode = None
            if opts.keep_dirlinks and (st := state.tree.lstat(path)) is not None and stat.S_ISLNK(st.st_mode):
                mode = None  # a kept dirlink: its times only (a symlink has no mode of its own)
            elif opts.perms:
                mode = entry.mode & 0o7777
            elif created:
                mode = entry.mode & 0o777 & ~state.umask
            mtime = entry.mtime_ns if opts.times and not opts.omit_dir_times else None
            if self.acls is not None:
                for message in self.acls.apply(entry, path, rewrite=False):
                    self._file_error(message, entry)
            try:
                if mtime is not None:  # rsync set_file_attrs: only when mtime_differs()
                    st = state.tree.lstat(path)
                    if st is not None and self._same_mtime(entry, st):
                        mtime = None
                state.tree.set_attrs(path, mode=mode, mtime_ns=mtime, **self._owner(entry))
            except StorageError as exc:
                self._file_error(str(exc), entry)


def unsafe_symlink(target: bytes, name: bytes) -> bool:
    """True if link ``name`` -> ``target`` can point outside the transfer (rsync util1.c unsafe_symlink).

    Empty and absolute targets are unsafe; otherwise each ``..`` climbs one
    level from the link's directory and must never go above the top.
    """
    if not target or target.startswith(b"/"):
        return True
    depth = name.count(b"/") if name != b"." else 0
    for comp in target.split(b"/"):
        if comp == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif comp not in (b"", b"."):
            depth += 1
    return False


def _hlink_leaders(flist: list[FileEntry]) -> dict[int, int]:
    """ndx -> the ndx of its hard-link group's leader: the last sorted regular-file member.

    rsync's receiver transfers that one and links the others to it (hlink.c match_gnums).
    """
    last: dict[int, int] = {}
    for ndx, entry in enumerate(flist):
        if entry.hlink_group is not None and entry.is_reg:
            last[entry.hlink_group] = ndx
    return {
        ndx: last[entry.hlink_group]
        for ndx, entry in enumerate(flist)
        if entry.hlink_group is not None and entry.is_reg
    }
