"""A push (the client sends, backupd receives): file list in, generator + receiver.

The generator runs in a thread and writes requests; the receiver runs in
the session's thread and reads the client sender's data; they talk through
a queue, as rsync's generator and receiver processes talk through a pipe.
Source: rsync main.c do_server_recv()/do_recv(); rsync-protocol-b.md §1.4.
"""

from __future__ import annotations

import os
import queue
import stat
from dataclasses import dataclass, field

from backupd.errors import ExitCode, PathEscape, ProtocolError, RsyncError, StorageError
from backupd.protocol.chmod import current_umask, parse_chmod
from backupd.protocol.constants import MUNGE_PREFIX, NDX_FLIST_EOF, NDX_FLIST_OFFSET, CompatFlags, IoError, MsgCode
from backupd.protocol.filters import decode_filter_list, old_prefix_rule
from backupd.protocol.flist import FileEntry
from backupd.protocol.negotiate import Negotiated, file_list_options
from backupd.protocol.server_args import TransferOptions, read_flags
from backupd.protocol.sums import Checksum
from backupd.protocol.wire import NdxDecoder
from backupd.roles.acl_sync import map_acl_ids
from backupd.roles.idmap import apply_name_maps
from backupd.roles.inc_lists import FileListReader, IncLists, NdxTable
from backupd.roles.verbosity import server_verbosity
from backupd.roles.xattr_sync import xattr_name_filter
from backupd.storage import HistoryStore, ModuleTree
from backupd.storage.catalog import session_writer


@dataclass
class PushState:
    """Everything the generator and the receiver share for one push."""

    opts: TransferOptions
    negotiated: Negotiated
    tree: ModuleTree
    flist: list[FileEntry] | NdxTable  # incremental: a finished list's files become None (IncLists.release)
    dest: list[bytes] | NdxTable
    dest_dir: bytes
    checksum: Checksum
    filters: object | None
    module_filters: object | None
    protocol: int
    io_error: int = 0
    skip: set[int] = field(default_factory=set)
    requested: set[int] = field(default_factory=set)
    events: queue.Queue = field(default_factory=queue.Queue)
    umask: int = 0o022
    file_errors: int = 0
    is_root: bool = False
    dir_created: bool = False
    curr_dir: bytes = b"."  # the receiver's working dir (rsync curr_dir): alt-dest dirs are relative to it
    alt_dirs: list[bytes] = field(default_factory=list)  # resolved --link/copy/compare-dest dirs
    temp_dir: bytes | None = None  # module path of --temp-dir, where the receiver makes its temp files
    basis_paths: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # ndx -> partial/fuzzy basis chosen
    verbosity: int = 1  # the client's -v capped by the module's max verbosity (roles/verbosity.py)
    inc: IncLists | None = None  # incremental recursion: the lists so far (inc_lists.py)
    ndx_in: NdxDecoder | None = None  # the receiver's ndx decoder, when run_push read from it first
    list_reader: FileListReader | None = None
    incoming: object = None  # callable(entries): the module's and client's adjustments of a new list

    def module_path(self, ndx: int) -> bytes:
        """Module-relative destination of entry ``ndx``."""
        return self.dest[ndx]

    def daemon_excluded(self, path: bytes, is_dir: bool) -> bool:
        """True if the module's own rules exclude this module-relative path."""
        return self.module_filters is not None and self.module_filters.excluded(path, is_dir, side=None)


def strip_module(arg: bytes, module: str) -> bytes:
    """Module-relative path of a path argument ``module/sub/dir`` (b"." for the root).

    ``..`` is resolved lexically and stops at the module root, as rsyncd's
    sanitize_path() does for a daemon's arguments (``mod/../x`` -> ``x``).

    Raises:
        RsyncError: the argument does not name this module.
    """
    name = module.encode()
    if arg == name or arg.startswith(name + b"/"):
        rest = arg[len(name) :]
    else:
        raise RsyncError(f"path {arg!r} is not inside module {module}", ExitCode.SYNTAX)
    return sanitize_path(rest, 0).rstrip(b"/") or b"."


def join_path(base: bytes, name: bytes) -> bytes:
    """``base/name`` with b"." meaning the module root on either side."""
    if name in (b".", b""):
        return base
    return name if base in (b".", b"") else base + b"/" + name


def read_file_list(
    state_opts: TransferOptions, negotiated: Negotiated, protocol: int, read, *, am_root: int = 0, excluded=None,
    inbox=None, module_numeric_ids: bool = False,
) -> tuple[list[FileEntry], int]:
    """Read the client's single file list and its id lists; return (sorted entries, io_error).

    With ``-X`` each entry is followed by its xattr block (flist.c
    recv_file_entry -> receive_xattr); ``am_root`` and the xattr filter
    ``excluded`` (None: no ``x`` rules) decide which names are kept. The ACLs'
    ids are mapped by the id lists' names unless ids are numeric (the
    client's --numeric-ids or the module's ``numeric ids``: uidlist.c
    recv_id_list calls match_acl_ids only without).

    Raises:
        ProtocolError: an unsafe name or a malformed entry.
    """
    reader = list_reader(state_opts, negotiated, protocol, am_root=am_root, excluded=excluded, inbox=inbox)
    entries = reader.read_entries(read)
    users, groups = reader.decoder.read_id_lists(read)
    if reader.acls is not None and not (state_opts.numeric_ids or module_numeric_ids):
        map_acl_ids(entries, users, groups)
    for entry in entries:
        if entry.uid is not None and entry.user_name is None:
            entry.user_name = users.get(entry.uid)
        if entry.gid is not None and entry.group_name is None:
            entry.group_name = groups.get(entry.gid)
    reader.sort(entries)
    return entries, reader.io_error


def list_reader(opts: TransferOptions, negotiated: Negotiated, protocol: int, *, am_root: int = 0,
                excluded=None, inbox=None) -> FileListReader:
    """The decoder of this push's file lists (inc_lists.FileListReader), reading ``inbox`` when given."""
    return FileListReader(file_list_options(opts, negotiated, protocol), xattrs=opts.xattrs, acls=opts.acls,
                          am_root=am_root, excluded=excluded, inbox=inbox)


def receive_sub_list(state: PushState, dir_index: int, read) -> None:
    """Read the sub-list of directory ``dir_index`` and append it (rsync flist.c recv_file_list(f, dir_ndx)).

    Its entries must all lie directly in that directory; they get the same
    adjustments as the first list, are sorted, and mapped to module paths
    below the destination as plan_destination mapped the first list.

    Raises:
        ProtocolError: an unknown or repeated directory index, an entry from
            another directory, or a malformed entry.
    """
    inc, reader = state.inc, state.list_reader
    parent_ndx = inc.parent_of_sub_list(dir_index)
    parent = state.flist[parent_ndx].name
    prefix = b"" if parent == b"." else parent + b"/"
    reader.next_list()
    entries = reader.read_entries(read)
    for entry in entries:
        if not entry.name.startswith(prefix) or b"/" in entry.name[len(prefix):]:
            raise ProtocolError(f"file-list entry {entry.name!r} is not in directory {parent!r}")
    state.incoming(entries)
    reader.sort(entries)
    state.io_error |= reader.io_error
    base = state.dest_dir
    paths = [e.name for e in entries] if base in (b".", b"") else [join_path(base, e.name) for e in entries]
    lst = inc.add(state.flist, state.dest, entries, paths, dir_index)
    state.events.put(("flist", lst))


def _read_first_lists(reader: FileListReader, ndx_in: NdxDecoder, read) -> tuple[list, list | None, bool]:
    """The first incremental list, and when it holds one entry the list after it (main.c do_server_recv).

    Returns (first list, the directory's sub-list or None, NDX_FLIST_EOF seen).

    Raises:
        ProtocolError: the next ndx is neither a sub-list of that entry nor NDX_FLIST_EOF.
    """
    first = reader.read_entries(read)
    reader.sort(first)
    if len(first) != 1:
        return first, None, False
    ndx = ndx_in.decode(read)  # flist.c recv_additional_file_list
    if ndx == NDX_FLIST_EOF:
        return first, None, True
    if ndx != NDX_FLIST_OFFSET or not first[0].is_dir:
        raise ProtocolError(f"Invalid dir index: {NDX_FLIST_OFFSET - ndx}")
    reader.next_list()
    extra = reader.read_entries(read)
    reader.sort(extra)
    return first, extra, False


def adjust_incoming(entries: list[FileEntry], module) -> None:
    """Apply the module's ``numeric ids``, ``incoming chmod`` and ``munge symlinks`` to a received file list.

    ``numeric ids`` drops the sender's user and group names, so the ids are
    kept as sent, not mapped by this host's accounts (clientserver.c sets
    numeric_ids -1, uidlist.c recv_user_name frees the names). Modes of
    everything but symlinks go through the chmod spec (rsync flist.c
    recv_file_entry with daemon_chmod_modes); with ``munge symlinks`` every
    link target gets the ``/rsyncd-munged/`` prefix, so the stored link can
    point nowhere outside (rsync syscall.c do_symlink). Entries are changed in place.
    """
    spec = parse_chmod(module.incoming_chmod) if module.incoming_chmod else None
    # rsyncd without chroot sanitizes paths, link targets too unless it munges them (clientserver.c)
    sanitize = not module.use_chroot and not module.munge_symlinks
    for entry in entries:
        if module.numeric_ids:
            entry.user_name = entry.group_name = None
        if spec is not None:
            entry.mode = spec.apply(entry.mode)
        if entry.link_target is None:
            continue
        if module.munge_symlinks:
            entry.link_target = MUNGE_PREFIX + entry.link_target
        elif sanitize and entry.link_target:
            depth = entry.name.count(b"/") if entry.name != b"." else 0
            entry.link_target = sanitize_path(entry.link_target, depth)


def sanitize_path(path: bytes, depth: int) -> bytes:
    """A path made unable to climb more than ``depth`` levels (rsync util1.c sanitize_path).

    Leading and doubled slashes and ``.`` components go; a ``..`` is kept
    only at the start and at most ``depth`` times, any other climbs back
    over what came before it (or is dropped). Nothing left is ``.``.
    """
    out: list[bytes] = []
    start = 0
    for comp in path.split(b"/"):
        if comp in (b"", b"."):
            continue
        if comp == b"..":
            if depth <= 0 or len(out) > start:
                if len(out) > start:
                    out.pop()
                continue
            depth -= 1
            out.append(comp)
            start = len(out)
            continue
        out.append(comp)
    if not out:
        return b"."
    return b"/".join(out) + (b"/" if path.endswith(b"/") and out[-1] != b".." else b"")


def build_filters(client_rules: list[bytes]):
    """The client's rules (relative to the transfer root); None when there are none."""
    if not client_rules:
        return None
    from backupd.protocol.filters import FilterList, parse_rule

    return FilterList([parse_rule(r) for r in client_rules])


def build_module_filters(module):
    """The module's own filter/include/exclude (relative to the module root); None if none.

    Raises:
        ConfigError: a rule that does not parse.
    """
    from backupd.errors import ConfigError
    from backupd.protocol.filters import FilterList, parse_rules

    rules = []
    try:
        for text in module.filter:
            rules += parse_rules(text.encode(), "filter")
        for text in module.include:
            rules += parse_rules(text.encode(), "include")
        for text in module.exclude:
            rules += parse_rules(text.encode(), "exclude")
    except ProtocolError as exc:
        raise ConfigError(f"module {module.name}: bad filter rule: {exc}") from None
    return FilterList(rules) if rules else None


def plan_destination(state: PushState, dest_arg: bytes, info=None) -> None:
    """Map each entry to its module path, creating the destination (rsync main.c get_local_name).

    A single non-directory entry pushed to a name that is not an existing
    directory (and has no trailing slash) is written under that name. A
    missing destination directory is created (``created directory X``; its
    ``.`` entry then itemizes as new), with ``--mkpath`` its missing parents
    too (``created N directories for X``). ``info(text)`` sends a line the
    client prints (MSG_INFO); it is called when rsync's receiver would print.

    Raises:
        RsyncError: the destination is inside the history folder, its parent
            does not exist (exit 11, as rsyncd), or it is not a directory
            where one is needed (exit 3).
    """
    opts, tree, base = state.opts, state.tree, state.dest_dir
    total = len(state.flist)
    trailing = dest_arg.endswith(b"/") and base != b"."
    has_slash = trailing or b"/" in base
    say = opts.verbose >= 1 or "%i" in (opts.log_format or "")
    st = _stat_destination(state, base)
    if opts.mkpath and st is None and (has_slash or total > 1):
        target = base if (trailing or total > 1) else base.rpartition(b"/")[0]
        made = _make_path(state, target)
        if made and say and info is not None:
            many = "y" if made == 1 else "ies"
            info(f"created {made} director{many} for {os.fsdecode(target)}\n")
        if made and not opts.dry_run:
            st = tree.lstat(base)
    state.curr_dir = base
    if st is not None and stat.S_ISDIR(st.st_mode):
        if base in (b".", b""):  # the module root: join_path is the name itself (no call per entry)
            state.dest = [base if e.name in (b".", b"") else e.name for e in state.flist]
        else:
            state.dest = [join_path(base, e.name) for e in state.flist]
        return
    if st is not None:
        if total > 1:
            raise RsyncError(
                "ERROR: destination must be a directory when copying more than 1 file", ExitCode.FILESELECT
            )
        if total == 1 and state.flist[0].is_dir:
            raise RsyncError("ERROR: cannot overwrite non-directory with a directory", ExitCode.FILESELECT)
    if total > 1 or trailing:
        if st is not None:
            raise RsyncError("ERROR: destination path is not a directory", ExitCode.SYNTAX)
        if not opts.dry_run:
            try:
                tree.mkdir(base, 0o777)
            except (StorageError, OSError) as exc:
                raise _mkdir_error(state, base, exc) from None
        if state.flist and state.flist[0].name == b".":
            state.dir_created = True
        if say and info is not None:
            info(f"created directory {os.fsdecode(base)}\n")
        if base in (b".", b""):  # the module root: join_path is the name itself (no call per entry)
            state.dest = [base if e.name in (b".", b"") else e.name for e in state.flist]
        else:
            state.dest = [join_path(base, e.name) for e in state.flist]
        return
    state.dest = [base]
    state.curr_dir = base.rpartition(b"/")[0] or b"."


def _make_path(state: PushState, target: bytes) -> int:
    """Create ``target`` and its missing parents; return how many were made (util1.c make_path).

    Raises:
        RsyncError: a component could not be made (exit 11).
    """
    made, path = 0, b""
    for comp in target.split(b"/"):
        path = path + b"/" + comp if path else comp
        st = state.tree.lstat(path)
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise _mkdir_error(state, target, OSError(20, "Not a directory"))
            continue
        made += 1
        if state.opts.dry_run:
            continue
        try:
            state.tree.mkdir(path, 0o777, exist_ok=True)  # util1.c make_path allows EEXIST
        except (StorageError, OSError) as exc:
            raise _mkdir_error(state, target, exc) from None
    return made


def _stat_destination(state: PushState, base: bytes) -> os.stat_result | None:
    """lstat of the destination; None if missing (rsync main.c get_local_name do_stat).

    Raises:
        RsyncError: any other failure, e.g. a name too long: rsyncd's
            ``ERROR: cannot stat destination "x" (in mod): File name too
            long (36)``, exit 3.
    """
    try:
        return state.tree.lstat(base)
    except StorageError as exc:
        cause = exc.__cause__
        if isinstance(exc, PathEscape) or not isinstance(cause, OSError) or not cause.errno:
            raise
        raise RsyncError(
            f'ERROR: cannot stat destination "{os.fsdecode(base)}" (in {state.tree.module}): '
            f"{os.strerror(cause.errno)} ({cause.errno})", ExitCode.FILESELECT) from None


def _mkdir_error(state: PushState, path: bytes, exc: Exception) -> RsyncError:
    """rsyncd's ``mkdir "x/y" (in mod) failed: No such file or directory (2)``, exit 11."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    reason = f"{os.strerror(cause.errno)} ({cause.errno})" if isinstance(cause, OSError) and cause.errno else str(exc)
    return RsyncError(f'mkdir "{os.fsdecode(path)}" (in {state.tree.module}) failed: {reason}', ExitCode.FILEIO)


def prune_empty_dirs(state: PushState) -> None:
    """-m: skip every directory that holds no non-directory, however deep (flist.c flist_sort_and_clean).

    As rsync's receiver prunes: the top directory (``.``) stays, and so do a
    directory the receiver's filter rules exclude and the directories above
    it. Pruned entries go into ``state.skip``.
    """
    keep: set[bytes] = set()

    def keep_chain(name: bytes) -> None:
        while name and name not in keep:
            keep.add(name)
            name = name.rpartition(b"/")[0]

    for entry in state.flist:
        if not entry.is_dir:
            keep_chain(entry.name.rpartition(b"/")[0])
        elif state.filters is not None and state.filters.excluded(entry.name, True, side="receiver"):
            keep_chain(entry.name)
    for ndx, entry in enumerate(state.flist):
        if entry.is_dir and entry.name != b"." and entry.name not in keep:
            state.skip.add(ndx)


def check_temp_dir(state: PushState, module) -> None:
    """Refuse a --temp-dir that is not a directory in the module (rsync main.c do_recv).

    rsyncd sanitizes the value into the module (options.c sanitize_path): an
    absolute one is taken from the module root, a relative one from the
    destination directory; the message shows the sanitized value. The
    receiver then makes its temp files there (``state.temp_dir``).

    Raises:
        RsyncError: missing (or not a directory), exit 1 as rsyncd's.
    """
    raw = state.opts.temp_dir
    if raw is None:
        return
    clean = sanitize_path(raw, 0).rstrip(b"/") or b"."
    if raw.startswith(b"/"):
        rel = clean
        root = b"" if module.use_chroot else os.fsencode(module.path).rstrip(b"/")
        shown = root + b"/" + clean if clean != b"." else root or b"/"
    else:
        rel, shown = join_path(state.dest_dir, clean), clean
    st = state.tree.lstat(rel)
    text = os.fsdecode(shown)
    if st is None:
        raise RsyncError(f"The temp-dir does not exist: {text}", ExitCode.SYNTAX, bare=True)
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise RsyncError(f"The temp-dir is not a directory: {text}", ExitCode.SYNTAX, bare=True)
    state.temp_dir = rel  # receiver.c get_tmpname: the temp files are made there


def run_push(session, request, negotiated: Negotiated) -> ExitCode:
    """Receive one push into the request's module. Returns the session's exit code.

    Raises:
        RsyncError: fatal problems (reported by the session).
    """
    from backupd.roles.alt_dest import send_warning, setup_alt_dirs
    from backupd.roles.backup_opts import backup_policy, check_backup_dir
    from backupd.roles.generator import STOP_WAIT_S, Generator
    from backupd.roles.receiver import Receiver

    opts, module = request.opts, request.module
    if len(opts.paths) != 1:
        raise RsyncError("a push names exactly one destination", ExitCode.SYNTAX)
    read = session.inbox.read
    session.input_buffered = True  # main.c do_server_recv: io_start_multiplex_in
    # exclude.c send_filter_list: below 29 a --delete-excluded client sends no list
    wants_list = opts.prune_empty_dirs or (opts.deleting and (not opts.delete_excluded or request.protocol >= 29))
    client_rules = decode_filter_list(read) if wants_list else []
    if request.protocol < 29:
        client_rules = [old_prefix_rule(t) for t in client_rules]
    is_root = os.geteuid() == 0
    filters, module_filters = build_filters(client_rules), build_module_filters(module)
    excluded = xattr_name_filter([module_filters, filters], "receiver")
    inc = bool(negotiated.compat_flags & CompatFlags.INC_RECURSE)
    reader = ndx_in = first = extra = None
    if inc:
        reader = list_reader(opts, negotiated, request.protocol, am_root=int(is_root), excluded=excluded,
                             inbox=session.inbox)
        ndx_in = NdxDecoder(request.protocol)
        first, extra, eof = _read_first_lists(reader, ndx_in, read)
        flist, io_error = first + (extra or []), reader.io_error
    else:
        flist, io_error = read_file_list(
            opts, negotiated, request.protocol, read, am_root=int(is_root), excluded=excluded, inbox=session.inbox,
            module_numeric_ids=bool(module.numeric_ids),
        )
    maps = is_root and (opts.usermap is not None or opts.groupmap is not None)  # uidlist.c: root maps owners

    def incoming(entries: list[FileEntry], say=None) -> None:
        if maps:
            for text in apply_name_maps(entries, opts, module_numeric_ids=bool(module.numeric_ids)):
                if say is not None:
                    say(text)
        adjust_incoming(entries, module)

    incoming(flist, lambda text: session.outbox.send_msg(MsgCode.ERROR, f"{text}\n".encode("utf-8", "replace")))
    history = HistoryStore(module.history_dir.encode()) if module.history else None
    tree = ModuleTree(
        module.path, module=module.name, history=history, fsync=module.fsync or opts.fsync, root_fd=request.root_fd,
        catalog=session_writer(module, lambda exc: session.log.warning("catalog of module {}: {}", module.name, exc)),
    )
    tree.read_flags = read_flags(opts, module.open_noatime)
    generator = None
    try:
        dest_dir = strip_module(opts.paths[0], module.name)
        if tree.is_history_path(dest_dir):
            raise RsyncError(
                f"refusing to write into the history folder {module.history_dir}/ of module {module.name}",
                ExitCode.FILESELECT,
            )
        state = PushState(
            opts=opts,
            negotiated=negotiated,
            tree=tree,
            flist=flist,
            dest=[],
            dest_dir=dest_dir,
            checksum=Checksum(
                negotiated.checksum,
                negotiated.seed,
                seed_fix=bool(negotiated.compat_flags & CompatFlags.CHKSUM_SEED_FIX),
            ),
            filters=filters,
            module_filters=module_filters,
            protocol=request.protocol,
            io_error=io_error,
            is_root=is_root,
        )
        state.umask, state.verbosity = current_umask(), server_verbosity(opts.verbose, module.max_verbosity)
        plan_destination(
            state, opts.paths[0], lambda text: session.outbox.send_msg(MsgCode.INFO, text.encode("utf-8", "replace"))
        )
        if inc:
            _index_lists(state, first, extra, eof, reader, ndx_in, incoming)
        check_temp_dir(state, module)
        if opts.backup and not module.history:  # with history, --backup folds into it
            tree.backup = backup_policy(state, module, lambda line: session.outbox.send_msg(MsgCode.INFO, line))
            opts.omit_dir_times = opts.omit_dir_times or opts.backup_dir is None  # options.c: implied -O
        else:
            check_backup_dir(state)
        if opts.alt_dest_dirs:
            setup_alt_dirs(state, module, lambda text: send_warning(session, text))
        if opts.prune_empty_dirs:
            prune_empty_dirs(state)
        generator = Generator(state, session)
        receiver = Receiver(state, session)
        return _run_both(generator, receiver, session)
    except PathEscape as exc:
        raise RsyncError(str(exc), ExitCode.FILESELECT) from None
    finally:
        if generator is None or generator.stop():
            tree.close()
        else:  # never close an fd a running thread may still use (the number could be reused)
            session.log.warning("generator still running after {} s: module fd left open", STOP_WAIT_S)


def _index_lists(state: PushState, first, extra, eof: bool, reader, ndx_in, incoming) -> None:
    """The first list (and the one read with it) as wire-indexed tables with reserved slots (inc_lists.py)."""
    dest = state.dest
    state.flist, state.dest = NdxTable(), NdxTable()
    state.inc = IncLists()
    state.inc.add(state.flist, state.dest, first, dest[:len(first)], None)
    if extra is not None:
        state.inc.parent_of_sub_list(0)
        state.inc.add(state.flist, state.dest, extra, dest[len(first):], 0)
    state.inc.eof = eof
    state.list_reader, state.ndx_in, state.incoming = reader, ndx_in, incoming


def _run_both(generator, receiver, session) -> ExitCode:
    generator.start()
    try:
        receiver.run()
    except BaseException as exc:
        stopped = generator.stop()  # no generator call on the module after this (issue 15.9)
        if stopped and isinstance(exc, RsyncError) and generator.error is not None:
            raise generator.error from None
        raise
    generator.join()
    if generator.error is not None:
        raise generator.error
    state = receiver.state
    return ExitCode.PARTIAL if state.file_errors or state.io_error & IoError.GENERAL else ExitCode.OK
