"""The receiver of a push: rebuilds each file from the basis file and tokens.

For every item the client sender echoes, it reads the sum head, the token
stream and the whole-file checksum, writes a StagedFile (temp file in the
target directory), verifies the checksum and commits (history first, then an
atomic rename). A mismatch in phase 0 asks the generator for a redo.
Source: rsync receiver.c recv_files()/receive_data(); rsync-protocol-b.md §7.
"""

from __future__ import annotations

import os
import stat

from backupd.errors import FileError, ProtocolError, RsyncError, StorageError
from backupd.ops import logging as ops_logging
from backupd.protocol.constants import NDX_DONE, NDX_FLIST_EOF, NDX_FLIST_OFFSET, IoError, ItemFlags, MsgCode
from backupd.protocol.sums import MD4_OLD, decode_sum_head
from backupd.protocol.tokens import BlockMatch, Literal, make_token_reader
from backupd.protocol.wire import NdxDecoder, decode_int32, decode_shortint, decode_vstring, encode_int32
from backupd.roles.acl_sync import apply_staged
from backupd.roles.alt_dest import alt_path
from backupd.roles.channel import peer_exit
from backupd.roles.errors import FileErrors, wire_text
from backupd.roles.fuzzy import FNAMECMP_FUZZY
from backupd.roles.owners import owner_ids
from backupd.roles.partial_dir import FNAMECMP_PARTIAL_DIR, drop_partial, keep_in_partial_dir, partial_path
from backupd.roles.push import PushState, receive_sub_list
from backupd.roles.xattr_sync import ReceiverXattrs, for_push

MAX_PHASE = 2
FNAMECMP_FNAME = 0x80  # rsync.h: the basis is the destination file itself


class _Sink:
    """Where a file's rebuilt bytes go: the staged file until a write fails.

    A failed write (a full disk, an I/O error) aborts the staged file, keeps
    the error and drops the rest of the file's data, so that the stream stays
    in step and the old version stays untouched.
    """

    def __init__(self, staged) -> None:
        self.staged = staged
        self.error: StorageError | None = None

    def write(self, data) -> None:
        if self.staged is None:
            return
        try:
            self.staged.write(data)
        except StorageError as exc:
            self._failed(exc)

    def write_block(self, basis, offset: int, data) -> None:
        """A matched block of ``basis`` at ``offset``: reflinked where the staged file can."""
        if self.staged is None:
            return
        try:
            self.staged.write_block(basis, offset, data)
        except StorageError as exc:
            self._failed(exc)

    def _failed(self, exc: StorageError) -> None:
        self.error = exc
        self.staged.abort()
        self.staged = None


class Receiver:
    """Runs in the session's thread; see the module docstring."""

    def __init__(self, state: PushState, session) -> None:
        self.state = state
        self.opts = state.opts
        self.inbox = session.inbox
        self.out = session.outbox
        self.log = session.log
        self.ndx = NdxDecoder(state.protocol)
        self.tokens = make_token_reader(state.negotiated.compression)
        self.inbox.on_message = self._on_message
        self.files_received = 0
        self.bytes_literal = 0
        self.xattrs = for_push(ReceiverXattrs, state)
        self.errors = FileErrors(self.out.send_msg, self.log, "receiver", state, io_flag=IoError.GENERAL)
        if state.ndx_in is not None:  # run_push read an ndx already (the list after a one-entry first list)
            self.ndx = state.ndx_in
        self._lists_freed = 0      # incremental recursion: lists the client sender's NDX_DONEs freed
        self._sent_once: set[int] = set()  # ...and files already received once (FLAG_FILE_SENT: a redo)
        self._redo_asked = False

    def _on_message(self, code: MsgCode, payload: bytes) -> None:
        """Messages from the client sender (rsync io.c read_a_msg)."""
        if code == MsgCode.ERROR_EXIT:
            raise peer_exit(payload)
        if code == MsgCode.IO_ERROR and len(payload) == 4:
            self.errors.flag(int.from_bytes(payload, "little") & 7)
        elif code == MsgCode.NO_SEND and len(payload) == 4:
            ndx = int.from_bytes(payload, "little")
            self.log.info("client could not send ndx {}", ndx)
            if self.state.inc is not None and 0 <= ndx < len(self.state.flist) and self.state.flist[ndx] is not None:
                self._finished(ndx)  # io.c got_flist_entry_status FES_NO_SEND
        elif code in (MsgCode.INFO, MsgCode.WARNING, MsgCode.ERROR, MsgCode.ERROR_XFER):
            self.log.info("client says: {}", payload.decode("utf-8", "replace").rstrip())
        elif code not in (MsgCode.NOOP, MsgCode.DATA):
            raise ProtocolError(f"unexpected message {code.name} from the client")

    def run(self) -> None:
        """Read items until the third NDX_DONE, then the final goodbye.

        Raises:
            ProtocolError: bad ndx, unrequested transfer, phase violations.
            StreamClosed: the client went away.
        """
        read, phase = self.inbox.read, 0
        max_phase = MAX_PHASE if self.state.protocol >= 29 else 1
        inc = self.state.inc
        while True:
            ndx = self.ndx.decode(read)
            if ndx == NDX_DONE:
                if inc is not None and phase == 0:  # receiver.c recv_files: each frees the oldest list
                    if self._lists_freed >= inc.dones_sent:  # an echo of nothing: the generator still works
                        raise ProtocolError("NDX_DONE for a file list the generator has not finished")
                    self._lists_freed += 1
                    if not self.opts.hard_links:  # -H: a later list's member may link to one of it
                        inc.release(self._lists_freed - 1, self.state.flist, self.state.dest,
                                    self.state.requested, self.state.skip, self._sent_once)
                    if self._lists_freed < len(inc.lists):
                        continue
                phase += 1
                self.state.events.put(("phase", phase))
                if phase > max_phase:
                    break
                continue
            if ndx < 0:
                self._file_list(ndx)
                continue
            self._check_ndx(ndx)
            if self.state.protocol < 29:  # rsync.c read_ndx_and_attrs: no iflags on the wire
                self._check_transfer(ndx, phase, max_phase)
                if not self.opts.dry_run:
                    chosen = self.state.basis_paths.get(ndx)  # receiver.c: no fnamecmp_type below 29
                    self._receive_file(ndx, phase, self.state.dest[ndx] if chosen is None else chosen[1])
                continue
            iflags = decode_shortint(read)
            basis_type = read(1)[0] if iflags & ItemFlags.BASIS_TYPE_FOLLOWS else FNAMECMP_FNAME
            if iflags & ItemFlags.XNAME_FOLLOWS:
                decode_vstring(read, 4096)
            if self.xattrs is not None:
                self.xattrs.read_values(read, self.state.flist[ndx], iflags)
            if not iflags & ItemFlags.TRANSFER:
                if self.xattrs is not None and self.xattrs.applies_to_live(iflags):
                    self._xattrs_live(ndx)
                continue
            self._check_transfer(ndx, phase, max_phase)
            if not self.opts.dry_run:
                self._receive_counted(ndx, phase, self._basis_path(ndx, basis_type))
        # protocol 31+: the client echoes the generator's last DONE (main.c read_final_goodbye);
        # a protocol-30 client reads one DONE and says nothing more
        if self.state.protocol >= 31 and self.ndx.decode(read) != NDX_DONE:
            raise ProtocolError("Invalid packet at end of run")
        if self.state.tree.catalog is not None:  # this session's versions are in the catalog before the client ends
            self.state.tree.catalog.flush()
        self.state.events.put(("goodbye", None))

    def _receive_counted(self, ndx: int, phase: int, basis_path: bytes) -> None:
        """One file; with incremental recursion its list learns it is done (MSG_SUCCESS/MSG_NO_SEND in rsync).

        There a redo comes in phase 0: a file received once before is the
        redo (receiver.c FLAG_FILE_SENT), reported as an error if it fails again.
        """
        if self.state.inc is None:
            self._receive_file(ndx, phase, basis_path)
            return
        redoing = ndx in self._sent_once
        self._sent_once.add(ndx)
        self._redo_asked = False
        try:
            self._receive_file(ndx, 1 if redoing or phase else 0, basis_path)
        finally:
            if not self._redo_asked:
                self._finished(ndx)

    def _finished(self, ndx: int) -> None:
        """Count a finished transfer for its list; wake the generator only when that may finish the list.

        One event per file would wake the generator's thread for each of
        them and halve the receiver's speed; a -H member still says which
        file was written (its followers are linked to it then).
        """
        inc = self.state.inc
        lst = inc.lists[inc.index_of(ndx)]
        lst.finished += 1
        if self.opts.hard_links and self.state.flist[ndx].hlink_group is not None:
            self.state.events.put(("fdone", ndx))
        elif lst.finished == lst.requested:
            self.state.events.put(("wake", None))

    def _file_list(self, ndx: int) -> None:
        """A sub-list or NDX_FLIST_EOF in the client sender's stream (rsync.c read_ndx_and_attrs).

        Raises:
            ProtocolError: any other negative ndx, a list without incremental
                recursion or after NDX_FLIST_EOF, or a bad list.
        """
        inc = self.state.inc
        if inc is None or inc.eof or (ndx != NDX_FLIST_EOF and ndx > NDX_FLIST_OFFSET):
            raise ProtocolError(f"Invalid file index: {ndx}")
        if ndx == NDX_FLIST_EOF:
            inc.eof = True
            self.state.events.put(("flist_eof", None))
            return
        receive_sub_list(self.state, NDX_FLIST_OFFSET - ndx, self.inbox.read)

    def _check_ndx(self, ndx: int) -> None:
        if not 0 <= ndx < len(self.state.flist):
            raise ProtocolError(f"Invalid file index: {ndx} (file list of {len(self.state.flist)} entries)")
        if self.state.flist[ndx] is None:  # rsync.c read_ndx_and_attrs: not in a list still held
            raise ProtocolError(f"File-list index {ndx} is in a file list already finished")

    def _check_transfer(self, ndx: int, phase: int, max_phase: int = MAX_PHASE) -> None:
        if phase == max_phase and max_phase == MAX_PHASE:
            raise ProtocolError("got transfer request in phase 2")
        if not self.state.flist[ndx].is_reg:
            raise ProtocolError(f"received request to transfer non-regular file: {ndx}")
        if ndx not in self.state.requested:
            raise ProtocolError(f"received data for ndx {ndx}, which was never requested")

    # -- one file ----------------------------------------------------------------------
    def _basis_path(self, ndx: int, basis_type: int) -> bytes:
        """The basis the generator chose, by the fnamecmp_type the sender echoes (receiver.c recv_files).

        Raises:
            ProtocolError: a type or alternate-dir index backupd never sends.
        """
        path = self.state.dest[ndx]
        if basis_type == FNAMECMP_FNAME:
            return path
        if basis_type == FNAMECMP_PARTIAL_DIR or basis_type >= FNAMECMP_FUZZY:
            chosen = getattr(self.state, "basis_paths", {}).get(ndx)  # the generator's own choice, not the echo
            if chosen is None or chosen[0] != basis_type:
                raise ProtocolError(f"invalid basis_dir index: {basis_type}.")
            return chosen[1]
        if basis_type >= len(self.state.alt_dirs):
            raise ProtocolError(f"invalid basis_dir index: {basis_type}.")
        return alt_path(self.state, basis_type, path)

    def _receive_file(self, ndx: int, phase: int, basis_path: bytes) -> None:
        state = self.state
        entry, path = state.flist[ndx], state.dest[ndx]
        head = decode_sum_head(self.inbox.read(16))
        basis = state.tree.open_basis(basis_path) if head.count or head.remainder else None
        sink = _Sink(self._open_staged(path, entry))
        try:
            ok = self._rebuild(head, basis, sink, entry, append=self.opts.append if phase == 0 else 0)
        except BaseException:
            self._interrupted(sink.staged)
            raise
        finally:
            if basis is not None:
                basis.close()
        if sink.error is not None:
            self._file_error(f"write failed on {os.fsdecode(entry.name)}: {sink.error}")
            return
        if sink.staged is None:
            return
        if ok:
            committed = self._commit(ndx, entry, path, sink.staged, basis_path)
            if committed and state.basis_paths.get(ndx, (0, b""))[0] == FNAMECMP_PARTIAL_DIR:
                drop_partial(state, basis_path, self.log)  # receiver.c: the used partial file goes
        elif self.opts.partial_dir and (ppath := partial_path(state, path)) is not None:
            if not keep_in_partial_dir(state, sink.staged, ppath):  # receiver.c: the failed update, put aside
                self.out.send_msg(MsgCode.ERROR, f"Unable to create partial-dir for {os.fsdecode(entry.name)}"
                                  " -- discarding completed file.\n".encode("utf-8", "replace"))
            self._verification_failed(ndx, entry, phase, kept="put into partial-dir")
        elif self._retains_failed():
            self._retain(entry, sink.staged)
            self._verification_failed(ndx, entry, phase, kept="retained")
        else:
            sink.staged.abort()
            self._verification_failed(ndx, entry, phase)

    def _open_staged(self, path: bytes, entry):
        try:
            if self.opts.inplace:  # receiver.c: the live inode itself (its old version copied to history)
                st = self.state.tree.lstat(path)
                if st is None or stat.S_ISREG(st.st_mode):
                    return self.state.tree.open_inplace(path, 0o600, sparse=self.opts.sparse)
            return self.state.tree.create_staged(path, 0o600, sparse=self.opts.sparse, temp_dir=self.state.temp_dir)
        except (StorageError, FileError) as exc:
            self._file_error(f"cannot create {os.fsdecode(entry.name)}: {exc}")
            return None

    def _rebuild(self, head, basis, staged, entry, append: int) -> bool:
        """Copy literals and basis blocks into ``staged``; True if the file sum matches.

        ``append`` (1 = --append, 2 = --append-verify) holds in phase 0 only:
        the redo pass resends the whole file (receiver.c recv_files).
        """
        read, tokens = self.inbox.read, self.tokens
        hasher = self.state.checksum.file_sum_hasher()
        good = True
        prefix = head.prefix_len if append else 0
        if prefix:  # a new file (null sum head) has no prefix to keep: all of it comes as literal data
            if basis is None or basis.size < prefix:
                good = False
            else:
                data = basis.view(0, prefix)
                staged.write(data)
                if append > 1:
                    hasher.update(data)
        tokens.start_file()
        while True:
            token = tokens.next_token(read)
            if isinstance(token, Literal):
                self.bytes_literal += len(token.data)
                hasher.update(token.data)
                staged.write(token.data)
            elif isinstance(token, BlockMatch):
                data = self._block(head, basis, token.index)
                if data is None:
                    good = False
                    continue
                hasher.update(data)
                tokens.see_block(data)
                staged.write_block(basis, token.index * head.block_len, data)
            else:
                break
        sent = read(self.state.checksum.digest_len)
        ok = good and hasher.digest() == sent
        # the catalog keeps the checksum the transfer verified (not md4_old's: it is seeded)
        if ok and staged.staged is not None and self.state.checksum.name != MD4_OLD:
            staged.staged.xfer_sum = (self.state.checksum.name, sent.hex())
        return ok

    def _block(self, head, basis, index: int):
        if not 0 <= index < head.count:
            raise ProtocolError(f"block {index} outside the {head.count} blocks of the sum head")
        length = head.remainder if (index == head.count - 1 and head.remainder) else head.block_len
        offset = index * head.block_len
        if basis is None or offset + length > basis.size:
            return None
        return basis.view(offset, length)

    def _commit(self, ndx: int, entry, path: bytes, staged, basis_path: bytes | None = None) -> bool:
        state, opts = self.state, self.opts
        mode_st = None  # -p: the sender's mode, whatever is there
        if not opts.perms:  # receiver.c: the mode follows the basis opened (fd1), which may be another file
            mode_st = staged.target_stat() if basis_path in (None, path) else self._basis_stat(basis_path)
        mode = new_file_mode(state, entry, mode_st)
        if opts.acls:  # ACLs, then xattrs (rsync.c set_file_attrs)
            for message in apply_staged(entry, staged, mode):
                self._file_error(message)
        if self.xattrs is not None:
            for message in self.xattrs.apply_staged(entry, path, staged):
                self._file_error(message)
        try:
            staged.commit(mtime_ns=entry.mtime_ns if opts.times else None, mode=mode, **owner_ids(state, entry))
        except (StorageError, FileError) as exc:
            staged.abort()
            self._file_error(f"cannot write {os.fsdecode(entry.name)}: {exc}")
            return False
        self.files_received += 1
        ops_logging.file_received(self, entry, path, staged.replaced)  # ops hook: transfer log line, counters
        if opts.remove_source_files:
            self.out.send_msg(MsgCode.SUCCESS, encode_int32(ndx))
        return True

    def _basis_stat(self, basis_path: bytes):
        try:
            return self.state.tree.lstat(basis_path)
        except StorageError:
            return None

    def _xattrs_live(self, ndx: int) -> None:
        """An attribute-only change: the entry's xattrs onto the live entry (receiver.c set_file_attrs)."""
        entry, path = self.state.flist[ndx], self.state.dest[ndx]
        try:
            failed = self.xattrs.apply_live(entry, path)
        except (StorageError, FileError) as exc:
            failed = [str(exc)]
        for message in failed:
            self._file_error(message)

    def _retains_failed(self) -> bool:
        """receiver.c recv_files: --inplace (which --append implies) or --partial keeps a failed update."""
        opts = self.opts
        return bool(opts.inplace or opts.append or (opts.partial and not opts.partial_dir))

    def _retain(self, entry, staged) -> None:
        """A failed update stays in place, its mtime left unset (finish_transfer with ok_to_set_time 0)."""
        state = self.state
        try:
            mode = new_file_mode(state, entry, staged.target_stat())
            staged.commit(mtime_ns=None, mode=mode, **owner_ids(state, entry))
        except (StorageError, FileError) as exc:
            staged.abort()
            self._file_error(f"cannot write {os.fsdecode(entry.name)}: {exc}")

    def _verification_failed(self, ndx: int, entry, phase: int, kept: str = "discarded") -> None:
        name = os.fsdecode(entry.name)
        if phase == 0:
            if self.opts.verbose or "%i" in (self.opts.log_format or ""):  # INFO_GTE(NAME, 1) or -i
                self.out.send_msg(  # the name as sent: its bytes need not be UTF-8 (issue 15.9)
                    MsgCode.WARNING,
                    wire_text(f"WARNING: {name} failed verification -- update {kept} (will try again).\n"),
                )
            self._redo_asked = True
            self.state.events.put(("redo", ndx))
        else:
            self._file_error(f"ERROR: {name} failed verification -- update {kept}.")

    def _interrupted(self, staged) -> None:
        if staged is None:
            return
        ppath = partial_path(self.state, staged.path) if self.opts.partial_dir else None
        if ppath is not None and not self.opts.inplace:  # cleanup.c: into the partial dir (keep_partial implied)
            if not keep_in_partial_dir(self.state, staged, ppath):
                staged.abort()
            return
        if self.opts.partial or self.opts.partial_dir:  # a --partial-dir of "." is plain --partial (options.c)
            try:
                staged.keep_partial()
                return
            except (StorageError, FileError, OSError):
                pass
        staged.abort()

    def _file_error(self, message: str) -> None:
        """One per-file error: 23 at the end, and no --delete-after (io_error general)."""
        self.errors.record(message, prefixed=not message.startswith("ERROR"))


def new_file_mode(state: PushState, entry, st) -> int:
    """Permission bits of a file written over ``st`` (None: a new file); rsync.c dest_mode().

    -p: the sender's; otherwise an existing regular file keeps its own, a
    new one gets the sender's minus the umask; -E on an existing file clears
    x when the sender's has none, or adds x where r is when it had none.
    """
    opts = state.opts
    if opts.perms:
        return entry.mode & 0o7777
    if st is None or not stat.S_ISREG(st.st_mode):
        return entry.mode & 0o777 & ~state.umask  # a new file: no -E tweak
    mode = st.st_mode & 0o7777
    if opts.executability and stat.S_ISREG(entry.mode):
        if not entry.mode & 0o111:
            mode &= ~0o111
        elif not st.st_mode & 0o111:  # x for whoever may read, only if not executable yet
            mode |= (mode & 0o444) >> 2
    return mode


__all__ = ["Receiver", "RsyncError", "decode_int32", "new_file_mode"]
