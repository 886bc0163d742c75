"""The sender's file list: path arguments x module tree -> sorted entries.

Follows rsync's naming rules for what a pull lists (flist.c
send_file_list(), send_directory(), send_implied_dirs(), make_file()):
a trailing slash (or the bare module) lists ``.`` and the directory's
contents, a name without one lists that name, ``-R`` keeps the path
(the part before ``/./`` dropped) and sends its parents as implied
directories, ``--files-from`` names are relative to the first path
argument. Client filter rules (sender side) and the module's own rules
are applied; top-level names are only checked, never filtered inside.

Confinement: every path is reached from the module root fd one directory at
a time without following symlinks (``storage``). Symlinks are listed as
symlinks; they are followed only where rsync follows them (a trailing
slash, a directory part of an argument, ``-L``, ``-k``, implied dirs) and
then only while the target stays inside the module (relative targets,
``..`` never above the root, at most 40 hops). Each entry keeps the real
module path it was found at (``source``), which the transfer opens.

Source: rsync flist.c (3.5.0), rsync-protocol-a.md §7.5, §8.10.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from backupd.errors import PathEscape, StorageError
from backupd.protocol.constants import MUNGE_PREFIX, IoError, MsgCode, XmitFlags
from backupd.protocol.filters import MAX_MERGE_FILE_SIZE, FilterList
from backupd.protocol.flist import FileEntry, sort_key_for
from backupd.protocol.server_args import TransferOptions
from backupd.roles.errors import ErrorTally, FileErrors
from backupd.storage import ModuleTree
from backupd.storage.fsops import DIR_READ_FLAGS, open_dir, split_path

MAX_SYMLINK_HOPS = 40              # Linux MAXSYMLINKS
MAX_NAME_LEN = 4095                # MAXPATHLEN - 1
_GLOB_CHARS = frozenset(b"*?[")

Report = Callable[[MsgCode, str], None]


@dataclass
class Listed:
    """One file-list entry and the module path of what it describes."""

    entry: FileEntry
    source: bytes
    inode: tuple[int, int] | None = None  # (st_dev, st_ino) of a non-directory with st_nlink > 1


@dataclass
class BuiltList:
    """The sorted list (ndx = position), the io_error bits, and counts."""

    items: list[Listed]
    io_error: int = 0
    errors: int = 0
    dir_io: dict[bytes, int] = field(default_factory=dict)  # IOERR_* bits met listing each directory
    list_dir: Callable[[bytes], tuple[list[Listed], int]] | None = None  # inc_recurse: a dir's list, its bits

    def list_io(self, directory: bytes | None) -> int:
        """The IOERR_* bits met while listing ``directory`` (None: the top level and ``.``).

        With incremental recursion these end that directory's file list
        (flist.c send_extra_file_list: io_error changed while it was listed).
        """
        return self.dir_io.get(directory or b".", 0)

    @property
    def entries(self) -> list[FileEntry]:
        """The file entries in ndx order."""
        return [item.entry for item in self.items]

    leaders: dict[tuple[int, int], int] = field(default_factory=dict)  # -H: inode -> leader ndx, all lists

    def group_hard_links(self, numbered=None) -> None:
        """Mark entries that share an inode as one hard-link group (``-H``).

        Every non-directory with more than one link is sent as hard-linked,
        even when its other links are outside the transfer, as rsync does;
        the first of a group in ndx order is its leader (``hlink_first``) and
        every member's ``hlink_group`` is the leader's ndx, which is what the
        file list sends (rsync flist.c send_file_entry, protocol 30+).
        ``numbered`` gives (wire ndx, item) in wire order when the lists are
        incremental (default: position in the one list); called list by list,
        a group's leader may be in an earlier list.
        """
        leaders = self.leaders
        for ndx, item in numbered if numbered is not None else enumerate(self.items):
            if item.inode is not None:
                first = leaders.setdefault(item.inode, ndx)
                item.entry.hlink_group, item.entry.hlink_first = first, first == ndx


class _Unreachable(Exception):
    """A path that is missing or leaves the module; ``err`` is an errno (0: escape)."""

    def __init__(self, err: int, why: str) -> None:
        super().__init__(why)
        self.err = err


def join(base: bytes, name: bytes) -> bytes:
    """``base/name``, with ``b""`` / ``b"."`` meaning the module root on either side."""
    if name in (b"", b"."):
        return b"" if base in (b"", b".") else base
    return name if base in (b"", b".") else base + b"/" + name


def sanitize_arg(arg: bytes) -> bytes:
    """An argument made safe as rsyncd's sanitize_path(SP_KEEP_DOT_DIRS) does.

    Leading slashes go, ``//`` collapses, ``..`` removes the previous
    component and is dropped at the top, ``.`` components and a trailing
    slash are kept (they carry meaning for -R and for "list contents").
    """
    trailing = arg.endswith(b"/") and arg.strip(b"/") != b""
    out: list[bytes] = []
    for part in arg.split(b"/"):
        if part == b"..":
            if out and out[-1] != b".":
                out.pop()
        elif part:
            out.append(part)
    text = b"/".join(out)
    return text + b"/" if trailing and text else text


def _clean(path: bytes) -> bytes:
    """Drop empty and ``.`` components (rsync clean_fname)."""
    return b"/".join(p for p in path.split(b"/") if p and p != b".")


class Resolver:
    """Follows symlinks inside the module only (the confined stand-in for stat/chdir)."""

    def __init__(self, tree: ModuleTree) -> None:
        self.tree = tree

    def resolve(self, path: bytes, *, follow_last: bool) -> tuple[bytes, os.stat_result]:
        """Real module path and stat of ``path``; symlinks followed inside the module.

        Raises:
            _Unreachable: missing (ENOENT), not a directory (ENOTDIR), a loop
                (ELOOP), or a symlink leading out of the module (err 0).
        """
        todo = [p for p in path.split(b"/") if p]
        done: list[bytes] = []
        hops = 0
        st = self._lstat(b"")
        while todo:
            name = todo.pop(0)
            if name == b".":
                continue
            if name == b"..":
                if not done:
                    raise _Unreachable(0, "symlink leads out of the module")
                done.pop()
                st = self._lstat(b"/".join(done))
                continue
            cur = b"/".join([*done, name])
            st = self._lstat(cur)
            if stat.S_ISLNK(st.st_mode) and (todo or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise _Unreachable(errno.ELOOP, os.strerror(errno.ELOOP))
                target = self.tree.readlink(cur)
                if target.startswith(b"/") or not target:
                    raise _Unreachable(0, "symlink leads out of the module")
                todo = [p for p in target.split(b"/") if p] + todo
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                raise _Unreachable(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            done.append(name)
        return b"/".join(done), st

    def _lstat(self, path: bytes) -> os.stat_result:
        try:
            st = self.tree.lstat(path)
        except PathEscape as exc:
            raise _Unreachable(0, str(exc)) from None
        if st is None:
            raise _Unreachable(errno.ENOENT, os.strerror(errno.ENOENT))
        return st


@dataclass
class _Arg:
    """One path argument after rsync's name handling: root, name, kind.

    ``dot_dir`` is rsync's DOTDIR_NAME (``dir/.``: never filtered),
    ``contents`` also covers SLASH_ENDING_NAME (``-R dir/``): both list the
    directory's members even without -r and follow a symlink to a directory.
    """

    root: bytes            # transfer root, module-relative (may hold symlinks)
    name: bytes            # wire name relative to root; b"." for the root itself
    dot_dir: bool
    contents: bool
    implied_dot: bool = False


def split_arg(fbuf: bytes, base: bytes, relative: bool) -> _Arg:
    """Apply send_file_list()'s name rules to one sanitized argument.

    Non-relative: the last component is the name, the rest the root; a
    trailing slash means ``dir/.``. Relative (-R): the name keeps its path,
    the root is ``base`` plus the part before ``/./``.
    """
    if not relative:
        dot = fbuf == b"" or fbuf.endswith(b"/") or fbuf == b"." or fbuf.endswith(b"/.")
        path = fbuf.rstrip(b"/")
        head, _, tail = path.rpartition(b"/")
        name = tail if tail else b"."
        if dot and name != b".":
            head, name = path, b"."
        dot = dot or name == b"."
        return _Arg(join(base, _clean(head)), name, dot, dot)
    root = base
    if b"/./" in fbuf:
        head, _, fbuf = fbuf.partition(b"/./")
        root = join(base, _clean(head))
    implied_dot = fbuf.startswith(b"./") and len(fbuf) > 2
    name = _clean(fbuf)
    dot = not name
    slash_end = fbuf.endswith(b"/") and not dot
    return _Arg(root, name or b".", dot, dot or slash_end, implied_dot)


class FlistBuilder:
    """Builds the one (non-incremental) file list of a pull.

    Args:
        tree: the module, opened by the caller.
        opts: the client's options (recursive, dirs, relative, links, ...).
        client_rules: the client's rules as a FilterList factory:
            ``make_filters(abs_root) -> FilterList | None``.
        module_filters: the module's own rules (module-relative names), or None.
        report: ``report(code, text)`` sends a message to the client.
        munge_symlinks: the module's ``munge symlinks``: strip the prefix.
        file_checksum: ``fn(module_path) -> (digest, size) | None`` for ``-c``
            (None: the file is gone), else None.
        protocol: the session's protocol (below 29 the list sorts by whole path).
        inc_recurse: build only the first list (the arguments, and a ``dir/``
            argument's members); each directory is listed when
            :meth:`list_dir` asks for it (flist.c send_file_list with
            inc_recurse, send1extra()).
    """

    def __init__(self, tree: ModuleTree, opts: TransferOptions, *,
                 make_filters: Callable[[bytes], FilterList | None],
                 module_filters: FilterList | None, report: Report,
                 module: str = "", munge_symlinks: bool = False,
                 file_checksum: Callable[[bytes], tuple[bytes, int] | None] | None = None,
                 protocol: int = 32, inc_recurse: bool = False) -> None:
        self.tree, self.opts, self.module = tree, opts, module
        self.protocol = protocol
        self.resolver = Resolver(tree)
        self.make_filters = make_filters
        self.module_filters = module_filters
        self.report = report
        self.munge = munge_symlinks
        self.file_checksum = file_checksum
        self.recurse = opts.recursive
        self.inc_recurse = inc_recurse and opts.recursive
        self._pending: dict[bytes, tuple[bytes, FilterList | None, set]] = {}  # dirs still to list
        self._held: dict[bytes, list[Listed]] = {}  # entries built with the arguments, by parent dir
        self.xfer_dirs = opts.dirs or opts.recursive or opts.list_only or opts.files_from is not None
        self.items: list[Listed] = []
        self.errors = FileErrors(  # report() takes text: the wire bytes of names survive the round trip
            lambda code, data: report(code, data.decode("utf-8", "surrogateescape")),
            None, "sender", ErrorTally(), io_flag=IoError.GENERAL,
        )
        self._root_dev = tree.lstat(b"").st_dev
        self._scope = b"."                  # the directory being listed (its file list's io_error)
        self._dir_io: dict[bytes, int] = {}
        self._merge_cache: dict[bytes, FilterList | None] = {}

    # -- messages ----------------------------------------------------------------------
    def _error(self, text: str, bits: int = IoError.GENERAL) -> None:
        self.errors.record(text, io_flag=bits)
        self._note(bits)

    def _note(self, bits: int) -> None:
        if bits:
            self._dir_io[self._scope] = self._dir_io.get(self._scope, 0) | bits

    def _shown(self, path: bytes) -> str:
        return f'"{os.fsdecode(path or b".")}" (in {self.module})'

    def _unreachable(self, what: str, path: bytes, exc: _Unreachable) -> None:
        if exc.err == 0:
            self._error(f"{what} {self._shown(path)} refused: {exc}")
        else:
            bits = IoError.GENERAL if exc.err != errno.ENOENT else 0
            self._error(f"{what} {self._shown(path)} failed: {os.strerror(exc.err)} ({exc.err})", bits)

    # -- the arguments -----------------------------------------------------------------
    def build(self, args: list[bytes], names: list[bytes] | None = None) -> BuiltList:
        """Build, sort and de-duplicate the list for ``args`` (or files-from ``names``).

        Args:
            args: module-stripped, sanitized path arguments (b"" = the module root).
            names: the ``--files-from`` names; relative to ``args[0]``.
        """
        if names is not None:
            base = _clean(args[0]) if args else b""
            todo = [(sanitize_arg(n), base) for n in names]
        else:
            todo = [(a, b"") for a in (args or [b""])]
        relative = self.opts.relative
        implied_sent: set[bytes] = set()
        for fbuf, base in todo:
            self._add_arg(split_arg(fbuf, base, relative), relative, implied_sent)
        items = self._sorted()
        if self.inc_recurse:
            items = self._hold_nested(items)
        return BuiltList(items, self.errors.tally.io_error, self.errors.tally.file_errors, self._dir_io)

    def _hold_nested(self, items: list[Listed]) -> list[Listed]:
        """The first list; entries under a listed dir (``-R`` paths) wait for that dir's list."""
        first, self._held = split_nested(items)
        return first

    def list_dir(self, name: bytes) -> tuple[list[Listed], int]:
        """The sorted members of directory ``name`` for its list, and the IOERR_* bits met.

        Reads the directory now (send1extra -> send_directory), with the
        filters and loop guard it was found with; its subdirectories wait
        for their own lists. A directory not to be read (no content, gone,
        refused) gives only the entries held for it (``-R`` paths below it).
        """
        pending = self._pending.pop(name, None)
        self.items = []
        if pending is not None:
            real, filters, ancestors = pending
            self._scan(name, real, filters, ancestors)
        self.items = self._held.pop(name, []) + self.items
        out, self.items = self._sorted(), []
        return out, self._dir_io.pop(name, 0)

    def _add_arg(self, arg: _Arg, relative: bool, implied_sent: set[bytes]) -> None:
        filters = self._filters_for(arg.root)
        if arg.implied_dot and b"." not in implied_sent:
            implied_sent.add(b".")
            self._implied(arg.root, b".")
        path = join(arg.root, arg.name)
        try:
            real, st = self._stat_arg(path, arg)
        except _Unreachable as exc:
            self._missing_arg(arg, path, exc, relative, implied_sent)
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if not arg.dot_dir and self._daemon_excluded(real, is_dir):
            self._missing_arg(arg, path, _Unreachable(errno.ENOENT, os.strerror(errno.ENOENT)), relative, implied_sent)
            return
        if not arg.dot_dir and filters is not None and filters.excluded(arg.name, is_dir, "sender"):
            return
        if is_dir and not self.xfer_dirs:
            self.report(MsgCode.INFO, f"skipping directory {os.fsdecode(arg.name)}\n")
            return
        if relative and b"/" in arg.name:
            self._implied_parents(arg.root, arg.name, implied_sent)
        if self.recurse or (self.xfer_dirs and arg.contents):
            entry = self._add(arg.name, real, st, XmitFlags.TOP_DIR)
            if entry is not None and is_dir:
                if self.inc_recurse and not arg.dot_dir:  # its members come in its own list
                    self._pending[arg.name] = (real, filters, {(st.st_dev, st.st_ino)})
                else:
                    self._scan(arg.name, real, filters, {(st.st_dev, st.st_ino)})
        else:
            self._add(arg.name, real, st, 0 if not is_dir else XmitFlags.NO_CONTENT_DIR)

    def _stat_arg(self, path: bytes, arg: _Arg) -> tuple[bytes, os.stat_result]:
        """link_stat(): follow a final symlink for ``dir/``, -L, or -k to a directory."""
        real, st = self.resolver.resolve(path, follow_last=arg.contents or self.opts.copy_links)
        if stat.S_ISLNK(st.st_mode) and self.opts.copy_dirlinks:
            try:
                target_real, target_st = self.resolver.resolve(path, follow_last=True)
            except _Unreachable:
                return real, st
            if stat.S_ISDIR(target_st.st_mode):
                return target_real, target_st
        return real, st

    def _missing_arg(self, arg: _Arg, path: bytes, exc: _Unreachable, relative: bool,
                     implied_sent: set[bytes]) -> None:
        """A missing argument: an error, or nothing (--ignore-missing-args).

        With --delete-missing-args: its implied dirs, then a mode-0 entry that
        tells the client to delete it.
        """
        opts = self.opts
        if exc.err == errno.ENOENT and opts.ignore_missing_args:
            return
        if exc.err == errno.ENOENT and opts.delete_missing_args:
            if relative and b"/" in arg.name:
                self._implied_parents(arg.root, arg.name, implied_sent)
            self.items.append(Listed(FileEntry(name=arg.name, mode=0), path))
            return
        self._unreachable("link_stat", path, exc)

    def _implied_parents(self, root: bytes, name: bytes, implied_sent: set[bytes]) -> None:
        parts = name.split(b"/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = b"/".join(parts[:depth])
            if parent not in implied_sent:
                implied_sent.add(parent)
                self._implied(root, parent)

    def _implied(self, root: bytes, name: bytes) -> None:
        """An implied directory (-R): daemon rules only, symlinks followed in the module."""
        path = join(root, name)
        try:
            real, st = self.resolver.resolve(path, follow_last=True)
        except _Unreachable as exc:
            if exc.err == errno.ENOENT:
                self._vanished(path)
            else:
                self._unreachable("link_stat", path, exc)
            return
        if self._daemon_excluded(real, stat.S_ISDIR(st.st_mode)):
            return
        flags = XmitFlags.TOP_DIR | XmitFlags.NO_CONTENT_DIR if stat.S_ISDIR(st.st_mode) else 0
        self._add(name, real, st, flags)

    # -- directories -------------------------------------------------------------------
    def _scan(self, name: bytes, real: bytes, filters: FilterList | None,
              ancestors: set[tuple[int, int]]) -> None:
        """send_directory(): list ``real`` as ``name``; recurse when -r."""
        outer, self._scope = self._scope, name
        try:
            self._scan_listed(name, real, filters, ancestors)
        finally:
            self._scope = outer

    def _scan_listed(self, name: bytes, real: bytes, filters: FilterList | None,
                     ancestors: set[tuple[int, int]]) -> None:
        rel_dir = b"" if name == b"." else name
        if filters is not None:
            filters = filters.enter_dir(rel_dir, self.read_merge_file)
        try:
            children = self._read_dir(real)
        except FileNotFoundError:  # send_directory: ENOENT is a vanished dir (interpret_stat_error)
            self._vanished(real, what="directory")
            return
        except (StorageError, OSError) as exc:
            self._error(f"opendir {self._shown(real)} failed: {getattr(exc, 'strerror', None) or exc}")
            return
        subdirs = []
        for child, st in children:
            child_name = join(rel_dir, child)
            found = self._child(child_name, join(real, child), st, filters)
            if found is not None and self.recurse and stat.S_ISDIR(found[1].st_mode):
                subdirs.append((child_name, *found))
        for child_name, child_real, st in subdirs:
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                self._error(f"directory loop at {self._shown(child_real)}, not descending")
                continue
            if self.opts.one_file_system and st.st_dev != self._root_dev:
                continue
            if self.inc_recurse:
                self._pending[child_name] = (child_real, filters, ancestors | {key})
                continue
            self._scan(child_name, child_real, filters, ancestors | {key})

    def _child(self, name: bytes, real: bytes, st: os.stat_result,
               filters: FilterList | None) -> tuple[bytes, os.stat_result] | None:
        """make_file() for a directory member: follow links as asked, filter, add."""
        if len(name) > MAX_NAME_LEN:
            self._error(f"skipping overly long name: {os.fsdecode(name[:80])}...")
            return None
        if stat.S_ISLNK(st.st_mode) and (self.opts.copy_links or self.opts.copy_dirlinks):
            try:
                target_real, target_st = self.resolver.resolve(real, follow_last=True)
            except _Unreachable as exc:
                if self.opts.copy_links:
                    self._unreachable("symlink", real, exc)
                    return None
            else:
                if self.opts.copy_links or stat.S_ISDIR(target_st.st_mode):
                    real, st = target_real, target_st
        is_dir = stat.S_ISDIR(st.st_mode)
        if self._daemon_excluded(real, is_dir):
            return None
        if filters is not None and filters.excluded(name, is_dir, "sender"):
            return None
        flags = 0
        if is_dir:
            mount = self.opts.one_file_system and st.st_dev != self._root_dev
            flags = 0 if self.recurse and not mount else XmitFlags.NO_CONTENT_DIR
        if self._add(name, real, st, flags) is None:
            return None
        return real, st

    def _read_dir(self, real: bytes) -> list[tuple[bytes, os.stat_result]]:
        """Names and lstat of a directory's members, through one confined dir fd."""
        tree = self.tree
        fd = open_dir(tree.root_fd, split_path(real, tree.module), tree.module, real)
        try:
            read_fd = os.open(b".", DIR_READ_FLAGS, dir_fd=fd)
            try:
                names = [os.fsencode(n) for n in os.listdir(read_fd)]
            finally:
                os.close(read_fd)
            out = []
            for child in names:
                try:
                    out.append((child, os.stat(child, dir_fd=fd, follow_symlinks=False)))
                except FileNotFoundError:
                    self._vanished(join(real, child))
            return out
        finally:
            os.close(fd)

    def _vanished(self, path: bytes, what: str = "file") -> None:
        """``WHAT has vanished: NAME`` and IOERR_VANISHED (flist.c make_file / interpret_stat_error)."""
        self.errors.flag(IoError.VANISHED)
        self._note(IoError.VANISHED)
        self.report(MsgCode.WARNING, f"{what} has vanished: {self._shown(path)}\n")

    # -- entries -----------------------------------------------------------------------
    def _add(self, name: bytes, real: bytes, st: os.stat_result, xflags: int) -> FileEntry | None:
        """Make the entry for ``name`` from ``st`` and append it; None if it cannot be sent."""
        mode = st.st_mode
        entry = FileEntry(
            name=name, mode=mode, size=st.st_size, mtime=st.st_mtime_ns // 1_000_000_000,
            mtime_nsec=st.st_mtime_ns % 1_000_000_000, uid=st.st_uid, gid=st.st_gid,
            xflags=xflags if stat.S_ISDIR(mode) else 0,
        )
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            entry.size, entry.rdev_major, entry.rdev_minor = 0, os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            entry.size = 0
        elif stat.S_ISLNK(mode):
            if not self._link_target(entry, real):
                return None
        elif stat.S_ISREG(mode) and self.file_checksum is not None:
            if not self._checksum(entry, real):
                return None
        linked = (st.st_dev, st.st_ino) if st.st_nlink > 1 and not stat.S_ISDIR(mode) else None
        self.items.append(Listed(entry, real, linked))
        return entry

    def _link_target(self, entry: FileEntry, real: bytes) -> bool:
        try:
            target = self.tree.readlink(real)
        except StorageError as exc:
            self._error(f"readlink {self._shown(real)} failed: {exc}")
            return False
        if self.munge and target.startswith(MUNGE_PREFIX):
            target = target[len(MUNGE_PREFIX):]
        if not target and self.opts.links:
            self._error(f"skipping symlink with 0-length value: {self._shown(real)}")
            return False
        entry.link_target = target
        return True

    def _checksum(self, entry: FileEntry, real: bytes) -> bool:
        try:
            found = self.file_checksum(real)
        except StorageError as exc:
            self._error(f"failed to open {self._shown(real)}: {exc}")
            return False
        if found is None:
            self._vanished(real)
            return False
        entry.checksum, entry.size = found
        return True

    # -- filters -----------------------------------------------------------------------
    def _daemon_excluded(self, real: bytes, is_dir: bool) -> bool:
        return self.module_filters is not None and self.module_filters.excluded(real, is_dir, "sender")

    def _filters_for(self, root: bytes) -> FilterList | None:
        if root not in self._merge_cache:
            self._merge_cache[root] = self.make_filters(root)
        return self._merge_cache[root]

    def read_merge_file(self, path: bytes) -> bytes | None:
        """A per-directory merge file's content (module-relative path), confined.

        A file the module's filters hide reads as missing (rsync exclude.c
        parse_filter_file: checked against daemon_filter_list first), so
        its lines never leak through what the rules then do (issue 15.10).
        """
        if self._daemon_excluded(path, False):
            return None
        try:
            real, st = self.resolver.resolve(path, follow_last=True)
            hidden = self._daemon_excluded(real, False)
            basis = self.tree.open_basis(real) if stat.S_ISREG(st.st_mode) and not hidden else None
        except (_Unreachable, StorageError):
            return None
        if basis is None:
            return None
        with basis:
            return bytes(basis.view(0, min(basis.size, MAX_MERGE_FILE_SIZE + 1)))

    # -- order -------------------------------------------------------------------------
    def _sorted(self) -> list[Listed]:
        """rsync order without duplicate names (flist.c flist_sort_and_clean()).

        The first of two equal names stays, except that a directory wins over
        a non-directory and a content directory over one sent without its
        contents (an implied dir), as the receiver merges them.
        """
        order = sort_key_for(self.protocol)
        ordered = sorted(self.items, key=lambda it: order(it.entry.name, it.entry.is_dir))
        out: list[Listed] = []
        seen: dict[bytes, int] = {}
        for item in ordered:
            name = item.entry.name
            at = seen.get(name)
            if at is None:
                seen[name] = len(out)
                out.append(item)
            elif item.entry.is_dir and (not out[at].entry.is_dir or
                                        (item.entry.is_content_dir and not out[at].entry.is_content_dir)):
                out[at] = item
        if len(out) != len(ordered):
            out.sort(key=lambda it: order(it.entry.name, it.entry.is_dir))
        return out


def split_nested(items: list[Listed]) -> tuple[list[Listed], dict[bytes, list[Listed]]]:
    """(the first list, the other entries by the directory whose list holds them).

    The rule of :func:`backupd.protocol.inc_flist.plan_inc_lists`: an entry
    goes in the list of the directory entry its parent path names, else in
    the first list. Order is kept.
    """
    dirs = {item.entry.name for item in items if item.entry.is_dir and item.entry.name != b"."}
    first: list[Listed] = []
    held: dict[bytes, list[Listed]] = {}
    for item in items:
        head, sep, _ = item.entry.name.rpartition(b"/")
        if sep and head in dirs:
            held.setdefault(head, []).append(item)
        else:
            first.append(item)
    return first, held


def expand_globs(tree: ModuleTree, arg: bytes) -> list[bytes]:
    """rsyncd's glob_expand() of one argument, confined to the module.

    Components with ``*``, ``?`` or ``[`` match directory members (a leading
    ``.`` only by a pattern that starts with one); results are sorted. An
    argument without wildcards, or one that matches nothing, is returned
    as it is (rsync then reports it missing).
    """
    if not _GLOB_CHARS & set(arg):
        return [arg]
    trailing = b"/" if arg.endswith(b"/") else b""
    parts = [p for p in arg.split(b"/") if p]
    found = [b""]
    for part in parts:
        nxt = []
        for base in found:
            nxt += _glob_step(tree, base, part)
        found = nxt
        if not found:
            return [arg]
    return [f + trailing for f in found]


def _glob_step(tree: ModuleTree, base: bytes, part: bytes) -> list[bytes]:
    if not _GLOB_CHARS & set(part):
        return [join(base, part)]
    try:
        names = tree.listdir(base)
    except (StorageError, OSError):
        return []
    pattern = os.fsdecode(part)
    hits = [n for n in names if (not n.startswith(b".") or part.startswith(b"."))
            and fnmatch.fnmatchcase(os.fsdecode(n), pattern)]
    return [join(base, n) for n in sorted(hits)]
