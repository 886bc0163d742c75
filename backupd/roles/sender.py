"""A pull (backupd sends, the client receives): filter list in, file list and data out.

One thread: rsync's sender alternates between reading the client
generator's requests and writing file data; the session's Outbox writer
thread keeps the socket drained, so a long file never blocks the reading
of requests (rsync-protocol-b.md §1.3). Without incremental recursion:
one sorted file list, ndx = position from 0, then the uid/gid lists.
With it (CF_INC_RECURSE, compat.c set_allow_inc_recurse): the first list
(uid/gid names inline, no id lists), then a list per directory sent as
the requests come (``sender_lists``), NDX_FLIST_EOF after the last; each
NDX_DONE of the client frees the oldest list and is echoed, the one that
frees the last is the phase change.

Per request: echo the header; for ITEM_TRANSFER read the sum head and the
block sums, match the file against them (``match_tokens``: NumPy rolling
sums, no per-byte loop), send the token stream in the negotiated
compression and the whole-file checksum. End: DONE echoes per phase,
MSG_IO_ERROR if errors happened, DONE, statistics, the final goodbye
(echoing NDX_DEL_STATS from a ``--delete`` client).

Source: rsync main.c do_server_sender(), read_final_goodbye(),
handle_stats(); sender.c send_files(); rsync-protocol-b.md §1.4, §9, §14.2.
"""

from __future__ import annotations

import grp
import os
import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from backupd.errors import ExitCode, ProtocolError, RsyncError, StorageError, Unsupported
from backupd.protocol.chmod import parse_chmod
from backupd.protocol.constants import (
    FNAMECMP_FNAME,
    MAX_BLOCK_SIZE,
    MAX_PATH_LEN,
    NDX_DEL_STATS,
    NDX_DONE,
    NDX_FLIST_EOF,
    OLD_MAX_BLOCK_SIZE,
    CompatFlags,
    IoError,
    ItemFlags,
    MsgCode,
)
from backupd.protocol.filters import FilterList, decode_filter_list, old_prefix_rule, rules_from_client
from backupd.protocol.flist_legacy import new_flist_encoder
from backupd.protocol.negotiate import Negotiated, file_list_options
from backupd.protocol.server_args import TransferOptions, read_flags
from backupd.protocol.sums import Checksum, SumHead, decode_block_sums, decode_sum_head
from backupd.protocol.tokens import make_token_writer
from backupd.protocol.wire import (
    NdxDecoder,
    NdxEncoder,
    decode_int32,
    decode_shortint,
    decode_varint,
    decode_vstring,
    encode_int32,
    encode_longint,
    encode_shortint,
    encode_varint,
    encode_varlong,
    encode_vstring,
)
from backupd.roles.acl_sync import SenderAcls
from backupd.roles.errors import ErrorTally, FileErrors, wire_text
from backupd.roles.flist_builder import BuiltList, FlistBuilder, expand_globs, sanitize_arg
from backupd.roles.sender_data import (
    SourceFile,
    file_digest,
    open_source,
    send_literal,
    send_matched,
    updating_basis_file,
)
from backupd.roles.sender_lists import LOOKAHEAD, WireList, WireLists
from backupd.roles.verbosity import server_verbosity
from backupd.roles.xattr_sync import SenderXattrs, session_am_root, xattr_name_filter, xattr_optim
from backupd.storage import HistoryStore, ModuleTree
from backupd.storage.catalog import session_writer

MAX_FILES_FROM_NAMES = 10_000_000   # names in one --files-from list
MAX_SUM_COUNT = 1 << 26             # blocks in one sum head (8 TiB at 128 KiB blocks)
MAX_DEL_STAT = 1 << 28              # 3.5.0 read_varint_bounded() limit per count
FLIST_FLUSH = 256 << 10             # file-list bytes buffered before a write


def strip_module_arg(arg: bytes, module: str) -> bytes:
    """The argument relative to the module root (rsync glob_expand_module()).

    ``mod``, ``mod/`` and ``mod/x`` lose the module name; an argument that
    does not start with it is taken as module-relative already.
    """
    name = module.encode()
    if arg == name:
        return b""
    if arg.startswith(name + b"/"):
        return arg[len(name) + 1 :]
    return arg


def read_files_from(read: Callable[[int], bytes], from0: bool) -> list[bytes]:
    """The ``--files-from=-`` names a pulling client streams after its filter list.

    Wire: each name ends with NUL (CR/LF too without ``--from0``); an empty
    name ends the list (io.c forward_filesfrom_data(), read_line()).
    Source: rsync-protocol-a.md §7.5.

    Raises:
        ProtocolError: a name of 4096 bytes or more, or over 10 million names.
    """
    names: list[bytes] = []
    ends = (b"\0",) if from0 else (b"\0", b"\n", b"\r")
    current = bytearray()
    while True:
        ch = read(1)
        if ch not in ends:
            current += ch
            if len(current) >= MAX_PATH_LEN:
                raise ProtocolError(f"files-from name over {MAX_PATH_LEN - 1} bytes")
            continue
        if not current:
            return names
        names.append(bytes(current))
        current.clear()
        if len(names) > MAX_FILES_FROM_NAMES:
            raise ProtocolError(f"files-from list over {MAX_FILES_FROM_NAMES} names")


def _id_names(ids: set[int], lookup: Callable[[int], str]) -> dict[int, bytes]:
    out = {}
    for ident in ids:
        try:
            out[ident] = os.fsencode(lookup(ident))[:255]
        except (KeyError, OverflowError):
            continue
    return out


def _user(uid: int) -> str:
    return pwd.getpwuid(uid).pw_name


def _group(gid: int) -> str:
    return grp.getgrgid(gid).gr_name


@dataclass
class PullState:
    """What the pull's phases share."""

    opts: TransferOptions
    negotiated: Negotiated
    protocol: int
    tree: ModuleTree
    built: BuiltList
    module: str
    writable: bool
    module_numeric_ids: bool
    build_ms: int = 1
    xfer_ms: int = 0
    xattr_filters: tuple = ()  # FilterLists with the ``x`` rules: the module's, the client's
    sent: set[int] = field(default_factory=set)
    verbosity: int = 0         # the client's -v count, capped by the module's ``max verbosity``


def run_pull(session, request, negotiated: Negotiated) -> ExitCode:
    """Serve one pull from the request's module. Returns the session's exit code.

    Raises:
        RsyncError: fatal problems (reported by the session).
    """
    opts, module = request.opts, request.module
    _check_options(opts, request.read_only)
    history = HistoryStore(module.history_dir.encode()) if module.history else None
    try:
        writer = session_writer(module) if opts.remove_source_files else None  # deletes go to history
        tree = ModuleTree(module.path, module=module.name, history=history, root_fd=request.root_fd, catalog=writer)
        tree.read_flags = read_flags(opts, module.open_noatime)
    except StorageError as exc:
        raise RsyncError(f"cannot open module {module.name}: {exc}", ExitCode.FILESELECT) from None
    from backupd.roles.push import build_module_filters

    try:
        names = None
        if opts.files_from not in (None, b"-"):
            try:
                names = files_from_module(tree, module, opts.files_from, opts.from0)
            except RsyncError:
                session.input_buffered = False  # rsyncd fails this while parsing its options
                raise
        read = session.inbox.read
        texts = decode_filter_list(read)
        if request.protocol < 29:
            texts = [old_prefix_rule(t) for t in texts]
        if opts.files_from == b"-":
            names = read_files_from(read, opts.from0)
        rules = rules_from_client(texts, sender=True, cvs_exclude="C" in opts.letters)
        started = time.monotonic()
        built = _build_list(session, tree, request, negotiated, rules, names)
        state = PullState(
            opts=opts, negotiated=negotiated, protocol=request.protocol, tree=tree, built=built,
            module=module.name, writable=not request.read_only, module_numeric_ids=module.numeric_ids,
            build_ms=max(1, int((time.monotonic() - started) * 1000)),
            xattr_filters=(build_module_filters(module), FilterList([r for r in rules if r.xattr])),
            verbosity=server_verbosity(opts.verbose, module.max_verbosity),
        )
        return Sender(session, state).run()
    finally:
        tree.close()


def files_from_module(tree: ModuleTree, module, arg: bytes, from0: bool) -> list[bytes]:
    """The names of ``--files-from=:FILE``, a list the server reads from its module.

    As rsyncd (options.c parse_arguments, flist.c send_file_list): the name
    is sanitized into the module (from its root), refused when the module's
    exclude rules cover it, and read with RL_DUMP_COMMENTS: one name per
    line (CR or LF; NUL with ``--from0``), empty lines and lines starting
    with ``#`` or ``;`` skipped.

    Raises:
        Unsupported: excluded, or the file cannot be read (exit 4, rsyncd's text).
    """
    from backupd.roles.push import build_module_filters, sanitize_path

    shown = arg.decode("utf-8", "replace")
    rel = sanitize_path(arg, 0).rstrip(b"/") or b"."
    filters = build_module_filters(module)
    if rel == b"." or (filters is not None and filters.excluded(rel, False, side=None)):
        raise Unsupported("rsync: Your options have been rejected by the server.")
    try:
        basis = tree.open_basis(rel)
    except StorageError as exc:
        raise Unsupported(f"rsync: failed to open files-from file {shown}: {exc}") from None
    if basis is None:
        raise Unsupported(f"rsync: failed to open files-from file {shown}: No such file or directory")
    with basis:
        data = bytes(basis.view(0, basis.size)) if basis.size else b""
    lines = data.split(b"\0") if from0 else data.replace(b"\r", b"\n").split(b"\n")
    names = [line for line in lines if line and line[:1] not in (b"#", b";")]
    if len(names) > MAX_FILES_FROM_NAMES or any(len(n) >= MAX_PATH_LEN for n in names):
        raise Unsupported(f"rsync: files-from file {shown} is too large")
    return names


def _check_options(opts: TransferOptions, read_only: bool) -> None:
    if opts.remove_source_files and read_only:
        raise RsyncError("ERROR: --remove-source-files cannot be used with a read-only module", ExitCode.SYNTAX)


def _build_list(session, tree: ModuleTree, request, negotiated: Negotiated, rules, names) -> BuiltList:
    """Path arguments -> the sorted file list (messages go to the client as found)."""
    from backupd.roles.push import build_module_filters

    opts, module = request.opts, request.module
    args: list[bytes] = []
    for raw in opts.paths:
        args += expand_globs(tree, sanitize_arg(strip_module_arg(raw, module.name)))

    def make_filters(abs_root: bytes) -> FilterList | None:
        if not rules:
            return None
        return FilterList(rules, abs_root=abs_root, delete_excluded=opts.delete_excluded,
                          read_merge_file=builder.read_merge_file)

    file_checksum = None
    if opts.checksum:
        summer = Checksum(negotiated.file_checksum, 0)
        file_checksum = lambda path: file_digest(tree, path, summer)  # noqa: E731
    builder = FlistBuilder(
        tree, opts, make_filters=make_filters, module_filters=build_module_filters(module),
        report=lambda code, text: session.outbox.send_msg(code, wire_text(text)),
        module=module.name, munge_symlinks=module.munge_symlinks, file_checksum=file_checksum,
        protocol=request.protocol, inc_recurse=bool(negotiated.compat_flags & CompatFlags.INC_RECURSE),
    )
    spec = parse_chmod(module.outgoing_chmod) if module.outgoing_chmod else None

    def chmod(items: list) -> list:
        for item in items if spec is not None else ():  # flist.c make_file(): daemon_chmod_modes
            item.entry.mode = spec.apply(item.entry.mode)
        return items

    built = builder.build(args, names)
    chmod(built.items)
    if builder.inc_recurse:
        def list_dir(name: bytes) -> tuple[list, int]:
            items, bits = builder.list_dir(name)
            return chmod(items), bits

        built.list_dir = list_dir
    return built


class Sender:
    """sender.c send_files() and what do_server_sender() does around it."""

    def __init__(self, session, state: PullState) -> None:
        self.session, self.state, self.opts = session, state, state.opts
        self.read = session.inbox.read
        self.out = session.outbox
        self.log = session.log
        self.items = state.built.items
        self.inc_recurse = bool(state.negotiated.compat_flags & CompatFlags.INC_RECURSE)
        built = state.built
        self.lists = WireLists(self.items, self.inc_recurse, built.list_dir, built.list_io(None))
        self.listed = 0       # entries sent in the lists
        self.total_size = 0   # their size (regular files, symlinks): the statistics' total
        self.encoder = None
        self.list_io = 0   # io_error as the lists sent so far have reported it
        self._names: dict[tuple[str, int], bytes | None] = {}
        self.ndx_out, self.ndx_in = NdxEncoder(state.protocol), NdxDecoder(state.protocol)
        self.legacy = state.protocol < 30  # byte-flag lists, int32 ndx, longint stats, no MSG_NO_SEND
        neg = state.negotiated
        self.checksum = Checksum(neg.checksum, neg.seed, seed_fix=bool(neg.compat_flags & CompatFlags.CHKSUM_SEED_FIX))
        try:
            self.writer = make_token_writer(neg.compression, neg.compress_level)
        except ValueError as exc:
            raise Unsupported(f"compression: {exc}") from None
        tally = ErrorTally(io_error=state.built.io_error, file_errors=state.built.errors)
        self.errors = FileErrors(self.out.send_msg, self.log, "sender", tally, io_flag=IoError.GENERAL)
        self.written = 0
        opts = state.opts
        self.xattrs = (
            SenderXattrs(
                state.tree,
                am_root=session_am_root(),
                level=opts.xattrs,
                optim=xattr_optim(state.protocol, neg.compat_flags),
                preserve={"links": opts.links, "devices": opts.devices, "specials": opts.specials},
                excluded=xattr_name_filter(state.xattr_filters, "sender"),
            )
            if opts.xattrs
            else None
        )
        self.acls = SenderAcls(state.tree, self._acl_name if self.inc_recurse else None) if opts.acls else None
        self.match_counts = None   # DEBUG DELTASUM 1 (-vv): match.c's totals, reported at the end
        if state.verbosity >= 2:
            from backupd.protocol.match_counts import MatchCounts  # NumPy: only for -vv pulls

            self.match_counts = MatchCounts()

    def _write(self, data: bytes) -> None:
        self.written += len(data)
        self.out.write(data)

    # -- the whole pull ----------------------------------------------------------------
    def run(self) -> ExitCode:
        """File list, transfer loop, end phase. Returns the exit code for the log."""
        started = time.monotonic()
        self._send_file_list()
        self.state.xfer_ms = int((time.monotonic() - started) * 1000)
        if not self.items:  # main.c do_server_sender: exit_cleanup() without reading on
            code = self._exit_code()
            self.out.flush()
            self.session.exit_unread(code)
            return code
        if self.opts.remove_source_files:
            self.session.inbox.on_message = self._on_message
        saved = self.io_error
        self._send_files()
        if self.io_error != saved and not self.legacy:  # sender.c send_files: protocol 30+
            self.out.send_msg(MsgCode.IO_ERROR, encode_int32(self.io_error))
        if self.match_counts is not None:               # sender.c send_files: match_report()
            self.out.send_msg(MsgCode.INFO, self.match_counts.report_line())
        self._write(self.ndx_out.encode(NDX_DONE))
        self._write(self._stats())
        self._final_goodbye()
        self.out.flush()
        self.log.info("pull of module {}: {} entries listed, {} files sent, {} bytes written",
                      self.state.module, self.listed, len(self.state.sent), self.written)
        return self._exit_code()

    def _exit_code(self) -> ExitCode:
        if self.io_error & IoError.GENERAL or self.errors.tally.file_errors:
            return ExitCode.PARTIAL
        if self.io_error & IoError.VANISHED:
            return ExitCode.VANISHED
        return ExitCode.OK

    # -- file list ---------------------------------------------------------------------
    def _send_file_list(self) -> None:
        """Entries, the end marker with io_error, the id lists (flist.c send_file_list()).

        With incremental recursion the first list only, then at once the
        next list (or NDX_FLIST_EOF) if it holds exactly one entry, or
        NDX_FLIST_EOF if no directory needs a list (send_file_list's end).
        """
        if self.opts.hard_links:
            self.state.built.group_hard_links(enumerate(self.lists.first.items, self.lists.first.start))
        self.encoder = encoder = new_flist_encoder(
            file_list_options(self.opts, self.state.negotiated, self.state.protocol))
        first = self.lists.first
        saved = self.io_error
        buf = self._encode_items(first)
        ignore = self.opts.ignore_errors
        safe = self._safe_flist
        io = self.io_error
        if self.inc_recurse:
            io = self._list_bits(first, saved)
            self.list_io = io
        buf += encoder.encode_end(io if safe and not ignore else 0)
        if not self.opts.numeric_ids and not self.inc_recurse:
            buf += encoder.encode_id_lists(*self._id_lists())
        if self.legacy:  # flist.c send_file_list: the io_error follows the id lists below 30
            buf += encode_int32(0 if ignore else self.io_error)
        self._write(bytes(buf))
        if not safe and io and not ignore and not self.legacy:
            self.out.send_msg(MsgCode.IO_ERROR, encode_int32(io))
        if self.inc_recurse and self.items:
            if self.lists.eof:
                self._write(self.ndx_out.encode(NDX_FLIST_EOF))
            elif len(first.items) == 1:  # a 1-entry first list: the client checks for a 1-file transfer
                self._send_extra(1)
        self.out.flush()

    @property
    def _safe_flist(self) -> bool:
        """io_error in the end marker (use_safe_inc_flist): protocol 31+ or CF_SAFE_FLIST."""
        return self.state.protocol >= 31 or bool(self.state.negotiated.compat_flags & CompatFlags.SAFE_FLIST)

    def _encode_items(self, wl: WireList) -> bytearray:
        """Entries (with their ACL and xattr blocks) of one list; big lists are written as they grow."""
        buf = bytearray()
        items = wl.items
        if self.inc_recurse:
            self.encoder.ndx_start = wl.start  # hard links to an earlier list are sent in full
        inline = self.inc_recurse and not self.opts.numeric_ids and not self.state.module_numeric_ids
        self.listed += len(items)
        self.total_size += sum(item.entry.size for item in items if item.entry.is_reg or item.entry.is_link)
        for item in items:
            if inline:
                self._inline_names(item.entry)
            buf += self.encoder.encode_entry(item.entry)
            if self.acls is not None:
                buf += self.acls.encode(item.entry, item.source)
            if self.xattrs is not None:
                buf += self.xattrs.encode(item.entry, item.source)
            if len(buf) >= FLIST_FLUSH:
                self._write(bytes(buf))
                buf.clear()
        if self.xattrs is not None:
            self._xattr_errors()
        for text in self.acls.errors if self.acls is not None else ():
            self._file_error(text)
        if self.acls is not None:
            self.acls.errors.clear()
        return buf

    def _inline_names(self, entry) -> None:
        """uid/gid names in the entry (inc_recurse: flist.c send_file_entry add_uid/add_gid)."""
        names = self._names
        if self.opts.owner and entry.uid is not None:
            key = ("u", entry.uid)
            if key not in names:
                names[key] = _id_names({entry.uid}, _user).get(entry.uid)
            entry.user_name = names[key]
        if self.opts.group and entry.gid is not None:
            key = ("g", entry.gid)
            if key not in names:
                names[key] = _id_names({entry.gid}, _group).get(entry.gid)
            entry.group_name = names[key]

    def _acl_name(self, is_user: bool, ident: int) -> bytes | None:
        """An ACL entry's name inline (acls.c send_ida_entries; not with numeric ids of either kind)."""
        if self.opts.numeric_ids or self.state.module_numeric_ids:
            return None
        name = _id_names({ident}, _user if is_user else _group).get(ident)
        return self.encoder.claim_name(is_user, ident, name)

    def _list_bits(self, wl: WireList, saved: int) -> int:
        """io_error for a list's end marker: 0 unless errors were met listing or encoding it.

        rsync sends its global io_error when it changed while the list was
        built (send_extra_file_list); here the bits reported by the lists so far.
        """
        bits = wl.io_bits
        if self.io_error != saved:
            bits |= self.io_error
        return self.list_io | bits if bits else 0

    def _send_extra(self, at_least: int = LOOKAHEAD) -> None:
        """Further lists while fewer than ``at_least`` entries are ahead (flist.c send_extra_file_list).

        Each is NDX_FLIST_OFFSET - dir_index, its entries, the end marker;
        NDX_FLIST_EOF after the last. Protocol 30 also sends MSG_IO_ERROR
        when the io_error changed.
        """
        if not self.inc_recurse or self.lists.eof:
            return
        before = self.list_io
        ignore = self.opts.ignore_errors
        while (wl := self.lists.next_to_send(at_least)) is not None:
            saved = self.io_error
            if self.opts.hard_links:
                self.state.built.group_hard_links(enumerate(wl.items, wl.start))
            buf = bytearray(self.ndx_out.encode(wl.announce_ndx))
            buf += self._encode_items(wl)
            io = self._list_bits(wl, saved)
            if io:
                self.list_io = io
            buf += self.encoder.encode_end(io if self._safe_flist and not ignore else 0)
            if self.lists.eof:
                buf += self.ndx_out.encode(NDX_FLIST_EOF)
            self._write(bytes(buf))
        if self.list_io != before and self.state.protocol == 30 and not ignore:
            self.out.send_msg(MsgCode.IO_ERROR, encode_int32(self.list_io))

    def _id_lists(self) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """uid/gid names for the lists; only id 0's name when the module forces numeric ids."""
        users: dict[int, bytes] = _id_names({0}, _user)
        groups: dict[int, bytes] = _id_names({0}, _group)
        if self.state.module_numeric_ids:
            return users, groups
        entries = [item.entry for item in self.items]
        if self.opts.owner:
            users.update(_id_names({e.uid for e in entries if e.uid}, _user))
        if self.opts.group:
            groups.update(_id_names({e.gid for e in entries if e.gid}, _group))
        if self.acls is not None:  # the ids named in ACLs travel in the same lists (uidlist.c add_uid)
            users.update(_id_names(self.acls.user_ids - {0}, _user))
            groups.update(_id_names(self.acls.group_ids - {0}, _group))
        return users, groups

    # -- requests ----------------------------------------------------------------------
    def _read_ndx(self) -> int:
        """Next ndx of the client generator; NDX_DEL_STATS is read and echoed here.

        Raises:
            ProtocolError: a negative ndx other than DONE/DEL_STATS, or one
                past the file list ("Invalid file index").
        """
        # the client may be waiting for what we wrote before it asks again; below 30, as rsync's
        # sender, only once the requests read so far are answered (one burst, as the client expects)
        if not (self.legacy and self.session.inbox.has_buffered()):
            self.out.flush()
        while True:
            ndx = self.ndx_in.decode(self.read)
            if ndx == NDX_DEL_STATS:
                counts = [decode_varint(self.read) for _ in range(5)]
                if any(not 0 <= c <= MAX_DEL_STAT for c in counts):
                    raise ProtocolError(f"delete statistics {counts} out of range")
                self._write(self.ndx_out.encode(NDX_DEL_STATS) + b"".join(map(encode_varint, counts)))
                continue
            if ndx == NDX_DONE:
                return ndx
            if self.inc_recurse:
                if ndx < 0:
                    raise ProtocolError(f"Invalid file index: {ndx} (-1 - {self._last_ndx}) [sender]")
                return ndx
            if self.legacy and ndx == len(self.items) and self.state.protocol >= 29:
                if decode_shortint(self.read) == ItemFlags.IS_NEW:  # rsync.c: the protocol-29 keep-alive
                    continue
                raise ProtocolError(f"Invalid file index: {ndx} (-1 - {len(self.items) - 1}) [sender]")
            if not 0 <= ndx < len(self.items):
                raise ProtocolError(f"Invalid file index: {ndx} (-1 - {len(self.items) - 1}) [sender]")
            return ndx

    @property
    def _last_ndx(self) -> int:
        return self.lists.lists[-1].end - 1

    def _send_files(self) -> None:
        """The request loop: phases 0 (normal), 1 (redo), 2 (delay), then leave.

        With incremental recursion a DONE first frees the oldest list and is
        echoed; only the one that frees the last list counts as a phase
        (sender.c send_files). Lists go out before each request is read.
        """
        phase, max_phase = 0, 2 if self.state.protocol >= 29 else 1
        while True:
            self._send_extra()
            ndx = self._read_ndx()
            if ndx == NDX_DONE:
                if self.inc_recurse and self.lists.live:
                    self.lists.free_oldest()
                    if self.lists.live:
                        self._write(self.ndx_out.encode(NDX_DONE))
                        continue
                phase += 1
                if phase > max_phase:
                    return
                self._write(self.ndx_out.encode(NDX_DONE))
                continue
            item = self.lists.item(ndx)
            iflags, attrs = self._read_attrs()
            self._send_extra()
            entry = item.entry
            if self.xattrs is not None:
                attrs += self.xattrs.answer(self.read, entry, item.source, iflags, self.opts.dry_run)
                self._xattr_errors()
            if iflags & ItemFlags.TRANSFER and not entry.is_reg:
                raise ProtocolError(f"received request to transfer non-regular file: {ndx} [sender]")
            if not iflags & ItemFlags.TRANSFER or self.opts.dry_run:
                self._write(self.ndx_out.encode(ndx) + attrs)
                continue
            if phase == 2 and max_phase == 2:
                raise ProtocolError("got transfer request in phase 2 [sender]")
            self._transfer(ndx, item, attrs, iflags)

    def _xattr_errors(self) -> None:
        """Report what could not be read (rsync: FERROR_XFER, io_error general)."""
        for text in self.xattrs.errors:
            self._file_error(text)
        self.xattrs.errors.clear()

    def _read_attrs(self) -> tuple[int, bytes]:
        """iflags, then the basis type and xname if flagged; returns them re-encoded for the echo.

        Below protocol 29 nothing follows the ndx: a transfer (rsync.c read_ndx_and_attrs).
        """
        if self.state.protocol < 29:
            return ItemFlags.TRANSFER | ItemFlags.MISSING_DATA, b""
        iflags = decode_shortint(self.read)
        echo = encode_shortint(iflags)
        if iflags & ItemFlags.BASIS_TYPE_FOLLOWS:
            echo += self.read(1)
        if iflags & ItemFlags.XNAME_FOLLOWS:
            echo += encode_vstring(decode_vstring(self.read, MAX_PATH_LEN))
        return iflags, echo

    def _read_sums(self, append: bool) -> tuple[SumHead, object, list[bytes]]:
        head = decode_sum_head(self.read(16), self.checksum.digest_len,
                               max_block_len=OLD_MAX_BLOCK_SIZE if self.legacy else MAX_BLOCK_SIZE)
        if append or not head.count:
            return head, None, []
        if head.count > MAX_SUM_COUNT:
            raise ProtocolError(f"sum head of {head.count} blocks exceeds {MAX_SUM_COUNT}")
        sum1, sum2 = decode_block_sums(self.read(head.count * (4 + head.s2_len)), head)
        return head, sum1, sum2

    # -- one file ----------------------------------------------------------------------
    def _transfer(self, ndx: int, item, attrs: bytes, iflags: int) -> None:
        """Sum head and sums in; header, sum head, tokens and file sum out (or MSG_NO_SEND)."""
        redo = ndx in self.state.sent
        basis_type = attrs[2] if iflags & ItemFlags.BASIS_TYPE_FOLLOWS else FNAMECMP_FNAME  # after the shortint
        updating = updating_basis_file(
            inplace=self.opts.inplace, fnamecmp_type=basis_type, protocol=self.state.protocol,
            inplace_partial=bool(self.state.negotiated.compat_flags & CompatFlags.INPLACE_PARTIAL_DIR),
            backup=self.opts.backup, redo=redo)
        append = 0 if redo else self.opts.append
        head, sum1, sum2 = self._read_sums(bool(append))
        src = self._open(item.source, ndx)
        if src is None:
            return
        with src:
            if append and src.size < item.entry.size:
                text = f"skipped diminished file: {self._shown(item.source)}\n"
                self.out.send_msg(MsgCode.WARNING, text.encode("utf-8", "replace"))
                if not self.legacy:
                    self.out.send_msg(MsgCode.NO_SEND, encode_int32(ndx))
                return
            self._write(self.ndx_out.encode(ndx) + attrs + head.encode())
            self.writer.start_file()
            if append:
                start = min(head.prefix_len, src.size)
                ok = send_literal(src, self.writer, self.checksum, self._write, start=start,
                                  hash_from=0 if append > 1 else start, counts=self.match_counts)
            elif head.count:
                ok = self._send_matched(src, head, sum1, sum2, item.source, updating)
            else:
                ok = send_literal(src, self.writer, self.checksum, self._write, counts=self.match_counts)
        if not ok:
            self._file_error(f"read errors mapping {self._shown(item.source)}: the file shrank while it was sent")
        self.state.sent.add(ndx)

    def _send_matched(self, src: SourceFile, head: SumHead, sum1, sum2: list[bytes], source: bytes,
                      updating: bool) -> bool:
        try:
            return send_matched(src, head, sum1, sum2, self.checksum, self.writer, self._write,
                                counts=self.match_counts, updating_basis=updating)
        except StorageError as exc:
            raise RsyncError(f"send_files: {self._shown(source)}: {exc}", ExitCode.FILEIO) from None

    def _open(self, source: bytes, ndx: int) -> SourceFile | None:
        """The file opened, or None after MSG_NO_SEND (vanished: 24, unreadable: 23)."""
        try:
            src = open_source(self.state.tree, source)
        except StorageError as exc:
            self._file_error(f"send_files failed to open {self._shown(source)}: {exc}")
            src = None
        else:
            if src is None:
                self.errors.flag(IoError.VANISHED)
                text = f"file has vanished: {self._shown(source)}\n"
                self.out.send_msg(MsgCode.WARNING, text.encode("utf-8", "replace"))
        if src is None and not self.legacy:  # sender.c: MSG_NO_SEND is protocol 30+
            self.out.send_msg(MsgCode.NO_SEND, encode_int32(ndx))
        return src

    def _file_error(self, text: str) -> None:
        self.errors.record(text)

    @property
    def io_error(self) -> int:
        """The IOERR_* bits so far: the file list's, then the transfer's (rsync io_error)."""
        return self.errors.tally.io_error

    # -- after the loop ----------------------------------------------------------------
    def _stats(self) -> bytes:
        """handle_stats(): read, written, total size, build and transfer time (5 x varlong(3)).

        Below protocol 30 longints; below 29 without the two times (main.c handle_stats).
        """
        total_size = self.total_size
        written = max(self.out.bytes_written, self.written)
        values = (self.session.inbox.bytes_read, written, total_size, self.state.build_ms, self.state.xfer_ms)
        if self.legacy:
            return b"".join(encode_longint(v) for v in values[: 5 if self.state.protocol >= 29 else 3])
        return b"".join(encode_varlong(v, 3) for v in values)

    def _final_goodbye(self) -> None:
        """main.c read_final_goodbye(): echo DONE #4, then expect DONE #5 (protocol 30: one DONE).

        Raises:
            ProtocolError: anything but DONE ("Invalid packet at end of run").
        """
        ndx = self._read_goodbye_ndx()
        if ndx == NDX_DONE and self.state.protocol >= 31:     # protocol 30 has no DONE #4 exchange
            self._write(self.ndx_out.encode(NDX_DONE))
            ndx = self._read_goodbye_ndx()
        if ndx != NDX_DONE:
            raise ProtocolError(f"Invalid packet at end of run ({ndx}) [sender]")

    def _read_goodbye_ndx(self) -> int:
        try:
            return self._read_ndx()
        except ProtocolError as exc:
            raise ProtocolError(f"Invalid packet at end of run: {exc}") from None

    # -- --remove-source-files ---------------------------------------------------------
    def _on_message(self, code: MsgCode, payload: bytes) -> None:
        """MSG_SUCCESS ndx: the client has the file; remove ours (into history)."""
        if code != MsgCode.SUCCESS or len(payload) != 4:
            return
        ndx = decode_int32(lambda n: payload[:n])
        item = self.lists.find(ndx)
        if item is None or not self.state.writable:
            return
        try:
            st = self.state.tree.lstat(item.source)
            if st is None or st.st_size != item.entry.size or st.st_mtime_ns != item.entry.mtime_ns:
                raise StorageError("changed since it was sent")
            self.state.tree.delete(item.source)
        except StorageError as exc:
            self.errors.record(f"not removing {self._shown(item.source)}: {exc}", item.source, io_flag=0)

    def _shown(self, path: bytes) -> str:
        return f'"{os.fsdecode(path or b".")}" (in {self.state.module})'
