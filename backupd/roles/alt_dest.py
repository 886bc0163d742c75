"""--link-dest, --copy-dest and --compare-dest on push: alternate basis dirs.

For an entry the module does not have (or, except with --copy-dest, a
regular file it has), the generator looks for the same name in each
alternate dir, in the client's order, and keeps the best candidate: one of
the same type (level 1), that passes the quick check (2), whose attributes
also match (3). Level 3 is linked (--link-dest), skipped (--compare-dest) or
copied (--copy-dest); level 2 is copied; a level-1 regular file becomes the
basis of a delta transfer (``ITEM_BASIS_TYPE_FOLLOWS``, the dir's index).

The dirs are resolved as a daemon without chroot resolves them: relative to
the receiver's working dir (the destination dir), ``..`` clamped at the
module root, a leading ``/`` meaning the module root; every access then goes
through ModuleTree, so nothing outside the module is read or linked. A
hard link to a file of the history folder would let a later attribute
change of the live name reach that version, so such a file is copied
instead. A link is a new name: it keeps no version in history, a replaced
live file does.

Source: rsync generator.c try_dests_reg(), try_dests_non(), unchanged_attrs(),
quick_check_ok(), copy_altdest_file(); main.c check_alt_basis_dirs();
util1.c sanitize_path(); receiver.c recv_files() (basis dir by fnamecmp_type).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from enum import Enum

from backupd.errors import StorageError
from backupd.protocol.constants import SIGNIFICANT_ITEM_FLAGS, ItemFlags, MsgCode
from backupd.protocol.flist import FileEntry
from backupd.protocol.wire import encode_shortint, encode_vstring
from backupd.roles.owners import owner_ids
from backupd.roles.push import PushState, sanitize_path

COPY_CHUNK = 4 << 20  # bytes copied per write from an alternate file
_MATCHED = 1 << 18  # rsync.h ITEM_MATCHED: itemize()'s own, never on the wire


class Outcome(Enum):
    """What try_non() found (generator.c try_dests_non return values)."""

    NONE = -1  # no alternate of that type: handle the entry as usual
    UPTODATE = -2  # level 3, linked with --link-dest: nothing more to do
    NOT_LINKED = -3  # level 3 but could not be linked: create it, report nothing


@dataclass(frozen=True)
class AltBasis:
    """A level-1/2 alternate: its index (the wire's fnamecmp_type), module path and lstat."""

    index: int
    path: bytes
    st: os.stat_result


def resolve_alt_dir(arg: bytes, curr_dir: bytes, module_path: bytes, *, use_chroot: bool) -> tuple[bytes, str]:
    """Module-relative dir of one --X-dest argument, and the name rsyncd prints for it.

    Without chroot rsyncd sanitizes the argument (util1.c sanitize_path with
    the destination's depth; a leading ``/`` becomes the module path), with
    chroot it joins it to the working dir; both end inside the module, and
    so does this. ``curr_dir`` is module-relative (``b"."`` = the root).
    """
    depth = 0 if curr_dir in (b".", b"") else curr_dir.count(b"/") + 1
    absolute = arg.startswith(b"/")
    clean = sanitize_path(arg, 0 if absolute else depth)
    base = [] if absolute or curr_dir in (b".", b"") else curr_dir.split(b"/")
    comps = list(base)
    for comp in clean.split(b"/"):
        if comp == b"..":
            if comps:
                comps.pop()
        elif comp not in (b"", b"."):
            comps.append(comp)
    shown = arg if use_chroot else clean
    if len(shown) > 1 and shown.endswith(b"/"):
        shown = shown[:-1]
    if use_chroot and not absolute:
        shown = b"/" + (b"" if not base else b"/".join(base) + b"/") + shown
    elif absolute and not use_chroot:
        root = module_path.rstrip(b"/") or b"/"
        shown = root if clean == b"." else root.rstrip(b"/") + b"/" + shown
    return b"/".join(comps) or b".", os.fsdecode(shown)


def setup_alt_dirs(state: PushState, module, warn) -> None:
    """Resolve the client's alternate dirs into ``state.alt_dirs`` (main.c check_alt_basis_dirs).

    A dir that is missing or no directory stays in the list (indexes are
    the wire's) and gets rsyncd's warning through ``warn(text)``.
    """
    opts = state.opts
    module_path = module.path if isinstance(module.path, bytes) else os.fsencode(str(module.path))
    for arg in opts.alt_dest_dirs:
        path, shown = resolve_alt_dir(arg, state.curr_dir, module_path, use_chroot=module.use_chroot)
        state.alt_dirs.append(path)
        try:
            st = state.tree.lstat(path)
        except StorageError:
            st = None
        if st is None:
            warn(f"--{opts.alt_dest_type}-dest arg does not exist: {shown}\n")
        elif not stat.S_ISDIR(st.st_mode):
            warn(f"--{opts.alt_dest_type}-dest arg is not a dir: {shown}\n")


def alt_path(state: PushState, index: int, path: bytes) -> bytes:
    """``basis_dir[index]/fname``: module path ``path`` (a destination) under alternate dir ``index``.

    ``fname`` is ``path`` relative to the receiver's working dir, as rsync's
    generator and receiver join it (generator.c try_dests_reg, receiver.c
    recv_files).
    """
    curr = state.curr_dir
    if curr in (b".", b""):
        rel = path
    else:
        rel = path[len(curr) + 1 :] if path.startswith(curr + b"/") else b"."
    base = state.alt_dirs[index]
    if rel in (b".", b""):
        return base
    return rel if base in (b".", b"") else base + b"/" + rel


def _ftype(mode: int) -> int:
    """generator.c get_file_type: reg, link, dir, special (fifo/socket), device."""
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return stat.S_IFCHR
    if stat.S_ISSOCK(mode):
        return stat.S_IFIFO
    return stat.S_IFMT(mode)


class AltDest:
    """The alternate-dir lookups of one push's generator (``gen``: its helpers and output)."""

    def __init__(self, gen) -> None:
        self.gen = gen
        self.state: PushState = gen.state
        self.opts = gen.opts
        self.kind = self.opts.alt_dest_type
        self.itemize_all = gen.itemize_all

    def alt_path(self, index: int, path: bytes) -> bytes:
        """``basis_dir[index]/fname`` (see :func:`alt_path`)."""
        return alt_path(self.state, index, path)

    def _lstat(self, path: bytes) -> os.stat_result | None:
        try:
            return self.gen._lstat(path)
        except StorageError:  # a symlinked parent: confined, so it is not there
            return None

    # -- levels ----------------------------------------------------------------------------
    def _best(self, entry: FileEntry, path: bytes) -> tuple[int, AltBasis | None]:
        """(level, candidate) over every alternate dir, as try_dests_reg/try_dests_non rank them."""
        level, best = 0, None
        want = _ftype(entry.mode)
        for index in range(len(self.state.alt_dirs)):
            apath = self.alt_path(index, path)
            st = self._lstat(apath)
            if st is None or _ftype(st.st_mode) != want:
                continue
            cand = AltBasis(index, apath, st)
            if level == 0:
                level, best = 1, cand
            if not self._quick_check_ok(entry, cand):
                continue
            if level == 1:
                level, best = 2, cand
            if self._unchanged_attrs(entry, st):
                return 3, cand
        return level, best

    def _quick_check_ok(self, entry: FileEntry, cand: AltBasis) -> bool:
        """generator.c quick_check_ok() against an alternate file."""
        st, opts = cand.st, self.opts
        if entry.is_reg:
            if st.st_size != entry.size:
                return False
            if opts.checksum:
                return self.gen._file_checksum(cand.path) == entry.checksum
            if opts.size_only:
                return True
            return not opts.ignore_times and self.gen._same_mtime(entry, st)
        if entry.is_link:
            try:
                return self.state.tree.readlink(cand.path) == entry.link_target
            except StorageError:
                return False
        if entry.is_device:
            return st.st_rdev == os.makedev(entry.rdev_major, entry.rdev_minor)
        return stat.S_IFMT(st.st_mode) == stat.S_IFMT(entry.mode)

    def _unchanged_attrs(self, entry: FileEntry, st: os.stat_result) -> bool:
        """generator.c unchanged_attrs(): mtime, perms (not of symlinks), owner and group."""
        opts = self.opts
        if opts.times and not (entry.is_link and opts.omit_link_times) and not self.gen._same_mtime(entry, st):
            return False
        if not entry.is_link:
            if opts.perms and (st.st_mode & 0o7777) != (entry.mode & 0o7777):
                return False
            if not opts.perms and opts.executability and bool(st.st_mode & 0o111) != bool(entry.mode & 0o111):
                return False
        owner = owner_ids(self.state, entry)
        return owner.get("uid", st.st_uid) == st.st_uid and owner.get("gid", st.st_gid) == st.st_gid

    def item_flags(self, entry: FileEntry, st: os.stat_result, iflags: int, *, xname: bytes | None = None) -> int:
        """generator.c itemize() for an existing ``st`` (statret >= 0): iflags plus what differs."""
        opts = self.opts
        keep_time = opts.times and not (entry.is_dir and opts.omit_dir_times) and not (
            entry.is_link and opts.omit_link_times
        )
        if entry.is_reg and st.st_size != entry.size:
            iflags |= ItemFlags.REPORT_SIZE
        if keep_time:
            if not self.gen._same_mtime(entry, st):
                iflags |= ItemFlags.REPORT_TIME
        elif (
            iflags & (ItemFlags.TRANSFER | ItemFlags.LOCAL_CHANGE)
            and not iflags & _MATCHED
            and (not iflags & ItemFlags.XNAME_FOLLOWS or xname)
        ):
            iflags |= ItemFlags.REPORT_TIME
        if not entry.is_link:
            if opts.perms:
                if (st.st_mode & 0o7777) != (entry.mode & 0o7777):
                    iflags |= ItemFlags.REPORT_PERMS
            elif opts.executability and bool(st.st_mode & 0o111) != bool(entry.mode & 0o111):
                iflags |= ItemFlags.REPORT_PERMS
        owner = owner_ids(self.state, entry)
        if owner.get("uid", st.st_uid) != st.st_uid:
            iflags |= ItemFlags.REPORT_OWNER
        if owner.get("gid", st.st_gid) != st.st_gid:
            iflags |= ItemFlags.REPORT_GROUP
        return iflags

    def _itemize(self, ndx: int, iflags: int, xname: bytes | None = None) -> None:
        """Send ndx + iflags (+ xname) when significant or -ii asks (itemize's last test)."""
        if self.gen.state.protocol < 29:  # generator.c itemize: no iflags on the wire below 29
            return
        if iflags & SIGNIFICANT_ITEM_FLAGS or self.itemize_all or xname:
            wire = self.gen.ndx.encode(ndx) + encode_shortint(iflags & 0xFFFF)
            if iflags & ItemFlags.XNAME_FOLLOWS:
                wire += encode_vstring(xname or b"")
            self.gen.out.write(wire)

    # -- regular files ----------------------------------------------------------------------
    def try_reg(
        self, ndx: int, entry: FileEntry, path: bytes, st: os.stat_result | None, *, basis_ok: bool = True
    ) -> AltBasis | bool:
        """generator.c try_dests_reg(): True when handled, an AltBasis to send sums of, else False.

        ``st``: the module's regular file at ``path`` (find_exact_for_existing:
        only a level-3 match counts), or None. ``basis_ok=False``: only a
        match that finishes the entry counts (False for a level-1 one).
        """
        level, best = self._best(entry, path)
        if not level or (level == 1 and not basis_ok):
            return False
        if level == 3 and self.kind != "copy":
            if st is not None and self.kind == "link" and (st.st_dev, st.st_ino) == (best.st.st_dev, best.st.st_ino):
                return False
            if self.kind == "compare":
                if st is not None and not self.opts.dry_run:
                    self.gen.deleter.count(self.state.tree.delete(path))
                    self.gen._noted(path)
                self._itemize(ndx, self.item_flags(entry, best.st, 0))
                self.gen.say_uptodate(entry.name)
                return True
            if self._link(best.path, path):
                self.gen.alt_written(ndx)  # -H: its waiting members first (finish_hard_link)
                if self.itemize_all:
                    self._itemize(ndx, ItemFlags.LOCAL_CHANGE | ItemFlags.XNAME_FOLLOWS, b"")
                self.gen.say_uptodate(entry.name)
                return True
        elif st is not None:
            return False
        if level >= 2:
            if not self._copy(entry, best.path, path):
                return False
            self._itemize(ndx, self.item_flags(entry, best.st, ItemFlags.LOCAL_CHANGE))
            if level == 3:
                self.gen.say_uptodate(entry.name)
            self.gen.alt_written(ndx)
            return True
        return best

    def _link(self, apath: bytes, path: bytes) -> bool:
        """Hard-link ``path`` to the alternate (not to a history version); False if it cannot be."""
        tree = self.state.tree
        if tree.is_history_path(apath):
            return False
        if self.opts.dry_run:
            return True
        try:
            tree.hardlink(apath, path)
        except StorageError as exc:
            self.gen.log.info("link {} => {} failed: {}", os.fsdecode(path), os.fsdecode(apath), exc)
            return False
        self.gen._noted(path)
        return True

    def _copy(self, entry: FileEntry, apath: bytes, path: bytes) -> bool:
        """copy_altdest_file(): the alternate's data into ``path`` (staged), the entry's attributes."""
        if self.opts.dry_run:
            return True
        tree = self.state.tree
        from backupd.roles.receiver import new_file_mode

        try:
            basis = tree.open_basis(apath)
            if basis is None:
                return False
            with basis, tree.create_staged(path, 0o600) as staged:
                for off in range(0, basis.size, COPY_CHUNK):
                    staged.write(basis.view(off, min(COPY_CHUNK, basis.size - off)))
                    basis.release()
                staged.commit(
                    mtime_ns=entry.mtime_ns if self.opts.times else None,
                    mode=new_file_mode(self.state, entry, self._lstat(path)),
                    **owner_ids(self.state, entry),
                )
        except StorageError as exc:
            self.gen.log.info("copy {} => {} failed: {}", os.fsdecode(apath), os.fsdecode(path), exc)
            return False
        self.gen._noted(path)
        return True

    def follower_match(
        self, entry: FileEntry, path: bytes, lead_st: os.stat_result | None
    ) -> tuple[os.stat_result | None, bool]:
        """-H: a missing follower's alternate (hlink.c hard_link_check): (its lstat, report it).

        --link-dest: the alternate that already is the leader's inode (then
        reported only with -ii); otherwise the last regular alternate passing
        the quick check, or the first that also has the same attributes.
        """
        found = None
        for index in range(len(self.state.alt_dirs)):
            apath = self.alt_path(index, path)
            st = self._lstat(apath)
            if st is None:
                continue
            if self.kind == "link":
                if lead_st is None or (st.st_dev, st.st_ino) != (lead_st.st_dev, lead_st.st_ino):
                    continue
                return st, self.itemize_all
            if not entry.is_reg or not stat.S_ISREG(st.st_mode):
                continue
            if not self._quick_check_ok(entry, AltBasis(index, apath, st)):
                continue
            found = st
            if self._unchanged_attrs(entry, st):
                break
        return found, True

    # -- everything else --------------------------------------------------------------------
    def try_non(self, ndx: int, entry: FileEntry, path: bytes) -> Outcome | AltBasis:
        """generator.c try_dests_non() for a dir, symlink, device or special the module lacks.

        Level 3: a non-dir is hard-linked with --link-dest (``UPTODATE``; a
        refused link is ``NOT_LINKED``); otherwise, and for dirs, ``UPTODATE``
        tells the caller to create it without reporting it. Levels 1-2: the
        candidate, which the caller itemizes against.
        """
        level, best = self._best(entry, path)
        if not level:
            return Outcome.NONE
        if level < 3:
            return best
        linked = False
        if self.kind == "link" and not entry.is_dir:
            if not self._link(best.path, path):
                return self._report_match(ndx, entry, best, 2, Outcome.NOT_LINKED)
            linked = True
        return self._report_match(ndx, entry, best, 3 if linked else 2, Outcome.UPTODATE)

    def _report_match(self, ndx: int, entry: FileEntry, best: AltBasis, level: int, outcome: Outcome) -> Outcome:
        """-ii: the matched entry's line (try_dests_non's itemize with ITEM_MATCHED)."""
        if self.itemize_all and self.opts.log_format and "%i" in self.opts.log_format:
            chg = 0 if self.kind == "compare" and not entry.is_dir else ItemFlags.LOCAL_CHANGE
            if level == 3:
                chg |= ItemFlags.XNAME_FOLLOWS
            flags = self.item_flags(entry, best.st, chg | _MATCHED, xname=b"" if level == 3 else None)
            self._itemize(ndx, flags & 0xFFFF, b"" if level == 3 else None)
        self.gen.say_uptodate(entry.name + (b"/" if entry.is_dir else b""))
        return outcome


def send_warning(session, text: str) -> None:
    """rsyncd's FWARNING: a line the client prints on stderr."""
    session.outbox.send_msg(MsgCode.WARNING, text.encode("utf-8", "replace"))
