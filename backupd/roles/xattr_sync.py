"""``-X``: the roles' side of extended attributes (push: generator + receiver; pull: sender).

The generator compares each entry's set from the file list with the module's
copy and flags ``ITEM_REPORT_XATTR``; after such an item's header it asks for
the abbreviated values it lacks. The receiver reads the values the client
sender returns, keeps them in the set cache (a set shared by many files is
fetched once), and applies the set: on the staged file before its rename,
or, for an attribute-only change, on the live entry (a regular file through
a new inode, so that history keeps the old one with its old attributes).
On a pull the sender lists each entry's attributes and answers requests.

Generator and receiver keep their own state, as rsync's two processes do:
the generator which abbreviated items were asked for (``XSTATE_DONE``), the
receiver which full values it has. Source: rsync xattrs.c (xattr_diff,
send_xattr_request, recv_xattr_request, rsync_xal_set), generator.c itemize,
receiver.c recv_files, sender.c send_files / write_ndx_and_attrs.
"""

from __future__ import annotations

import os
from functools import partial

from backupd.errors import StorageError
from backupd.protocol.constants import CompatFlags, ItemFlags
from backupd.protocol.flist import FileEntry
from backupd.protocol.xattrs import (
    XattrEncoder,
    XattrSet,
    decode_xattr_request,
    decode_xattr_values,
    encode_xattr_request,
    encode_xattr_values,
    keep_local_name,
    keep_removable_name,
    make_items,
    xattr_diff,
)

_LINKED = ItemFlags.XNAME_FOLLOWS | ItemFlags.LOCAL_CHANGE
_EMPTY = XattrSet(-1, ())


def session_am_root() -> int:
    """rsync's ``am_root`` for this session process: 1 as root, else 0 (fake super is not offered)."""
    return 1 if os.geteuid() == 0 else 0


def xattr_name_filter(lists, side: str | None):
    """rsync's name_is_excluded(NAME_IS_XATTR) over the daemon's and the client's lists, or None.

    None when no list has an ``x`` rule (``saw_xattr_filter`` off: the
    namespace rules apply instead). ``lists``: FilterList or None each.
    """
    lists = [f for f in lists if f is not None]
    if not any(f.has_xattr_rules for f in lists):
        return None
    return lambda name: any(f.xattr_excluded(name, side) for f in lists)


def xattr_optim(protocol: int, compat_flags: int) -> bool:
    """rsync's ``want_xattr_optim``: protocol >= 31 and the client did not send ``x`` (compat.c)."""
    return protocol >= 31 and not compat_flags & CompatFlags.AVOID_XATTR_OPTIM


def exchanges(iflags: int, optim: bool) -> bool:
    """True when an item with ``iflags`` carries the request/answer (generator.c itemize, sender.c)."""
    return bool(iflags & ItemFlags.REPORT_XATTR) and not (optim and iflags & _LINKED == _LINKED)


def for_push(kind, state):
    """``kind`` (GeneratorXattrs or ReceiverXattrs) set up for a push's ``state``; None without -X.

    Both sides of a push share the session's settings: root or not, the -X
    level, the xattr optimisation the protocol allows, and the receiver-side
    ``-x`` rules of the module and the client.
    """
    if not state.opts.xattrs:
        return None
    return kind(
        state.tree,
        am_root=int(state.is_root),
        level=state.opts.xattrs,
        optim=xattr_optim(state.protocol, state.negotiated.compat_flags),
        dry_run=state.opts.dry_run,
        excluded=xattr_name_filter([state.module_filters, state.filters], "receiver"),
    )


class GeneratorXattrs:
    """Push generator: which entries differ, and the request after their header."""

    def __init__(self, tree, *, am_root: int, level: int, optim: bool, dry_run: bool, excluded=None) -> None:
        self.tree, self.optim, self.dry_run = tree, optim, dry_run
        self.keep = partial(keep_local_name, am_root=am_root, sender=False, level=level, excluded=excluded)
        self._done: set[tuple[int, int]] = set()  # (set ndx, num): asked for, or matched locally
        self._todo: set[tuple[int, int]] = set()

    def report(self, entry: FileEntry, path: bytes, is_new: bool) -> int:
        """``ITEM_REPORT_XATTR`` if the module's copy differs from ``entry``'s set, else 0.

        Marks the abbreviated values to ask for (xattr_diff with find_all).
        """
        xset = entry.xattrs or _EMPTY
        local = None
        if not is_new:
            try:
                local = self.tree.xattrs.get(path, self.keep)
            except StorageError:
                local = None
        differ, needed = xattr_diff(xset.items, local)
        for item in needed:
            key = (xset.ndx, item.num)
            if key not in self._done:
                self._todo.add(key)
        return ItemFlags.REPORT_XATTR if differ else 0

    def trailer(self, entry: FileEntry, iflags: int) -> bytes:
        """What follows the header of an item sent with ``iflags`` (send_xattr_request, generator side)."""
        if self.dry_run or not iflags & (ItemFlags.REPORT_XATTR | ItemFlags.TRANSFER):
            return b""
        xset = entry.xattrs or _EMPTY
        nums = []
        for item in xset.items:
            if not item.abbreviated:
                continue
            key = (xset.ndx, item.num)
            if key in self._todo:
                self._todo.discard(key)
                nums.append(item.num)
            self._done.add(key)
        return encode_xattr_request(nums) if exchanges(iflags, self.optim) else b""


class ReceiverXattrs:
    """Push receiver: values in, sets applied to staged files and live entries."""

    def __init__(self, tree, *, am_root: int, level: int, optim: bool, dry_run: bool, excluded=None) -> None:
        self.tree, self.optim, self.dry_run = tree, optim, dry_run
        self.keep = partial(keep_local_name, am_root=am_root, sender=False, level=level, excluded=excluded)
        self._removable = partial(keep_removable_name, am_root=am_root, excluded=excluded)
        self._values: dict[tuple[int, int], bytes] = {}

    def read_values(self, read, entry: FileEntry, iflags: int) -> None:
        """Read the sender's answer after an item header, if ``iflags`` say one follows (recv_xattr_request)."""
        if self.dry_run or not exchanges(iflags, self.optim):
            return
        xset = entry.xattrs or _EMPTY
        for num, value in decode_xattr_values(read, xset).items():
            self._values[(xset.ndx, num)] = value

    def applies_to_live(self, iflags: int) -> bool:
        """True when a non-transfer item's set is to be applied now (receiver.c recv_files)."""
        return not self.dry_run and bool(iflags & ItemFlags.REPORT_XATTR) and iflags & _LINKED != _LINKED

    def wanted(self, entry: FileEntry, local: dict[bytes, bytes] | None) -> tuple[dict[bytes, bytes], list[bytes]]:
        """The values to set for ``entry`` and the names whose value is nowhere (rsync_xal_set).

        An abbreviated value comes from the sender's answer, else from the
        module's copy (``local``) if its digest matches; either is kept for
        later files sharing the set.
        """
        xset = entry.xattrs or _EMPTY
        out, missing = {}, []
        for item in xset.items:
            if not item.abbreviated:
                out[item.name] = item.value
                continue
            key = (xset.ndx, item.num)
            value = self._values.get(key)
            if value is None and local is not None and item.matches(local.get(item.name)):
                value = self._values[key] = local[item.name]
            if value is None:
                missing.append(item.name)
            else:
                out[item.name] = value
        return out, missing

    def removable(self, entry: FileEntry):
        """Filter of the local names that may be removed: ours, and not in the set at all."""
        names = {item.name for item in (entry.xattrs or _EMPTY).items}
        return lambda name: name not in names and self._removable(name)

    def local(self, path: bytes) -> dict[bytes, bytes] | None:
        """The module copy's attributes that take part, or None (no copy, or unreadable)."""
        try:
            return self.tree.xattrs.get(path, self.keep)
        except StorageError:
            return None

    def apply_staged(self, entry: FileEntry, path: bytes, staged) -> list[str]:
        """Set ``entry``'s attributes on its staged file (before the rename); returns error messages."""
        wanted, missing = self.wanted(entry, self.local(path))
        return _missing(missing, path) + staged.set_xattrs(wanted, self.removable(entry))

    def apply_live(self, entry: FileEntry, path: bytes) -> list[str]:
        """An xattr-only change of the live entry; returns error messages."""
        wanted, missing = self.wanted(entry, self.local(path))
        access = self.tree.xattrs
        update = access.update_file if entry.is_reg else access.set_in_place
        return _missing(missing, path) + update(path, wanted, self.removable(entry))


def _missing(names: list[bytes], path: bytes) -> list[str]:
    return [
        f"Missing abbreviated xattr value, {os.fsdecode(n)}, for {os.fsdecode(path)}" for n in names
    ]


class SenderXattrs:
    """Pull sender: each entry's set into the file list, and the answers to requests."""

    def __init__(
        self, tree, *, am_root: int, level: int, optim: bool, preserve: dict[str, bool], excluded=None
    ) -> None:
        self.tree, self.optim, self.preserve = tree, optim, preserve
        self.keep = partial(keep_local_name, am_root=am_root, sender=True, level=level, excluded=excluded)
        self.encoder = XattrEncoder(am_root=am_root)
        self.errors: list[str] = []

    def encode(self, entry: FileEntry, source: bytes) -> bytes:
        """The file-list block of ``entry`` (read from ``source``); keeps the set on the entry (get_xattr)."""
        values: dict[bytes, bytes] = {}
        if self._has_xattrs(entry):
            try:
                values = self.tree.xattrs.get(source, self.keep) or {}
            except StorageError as exc:
                self.errors.append(str(exc))
        block, entry.xattrs = self.encoder.encode(make_items(values))
        return block

    def _has_xattrs(self, entry: FileEntry) -> bool:
        if entry.is_reg or entry.is_dir:
            return True
        if entry.is_link:
            return self.preserve["links"]
        if entry.is_device:
            return self.preserve["devices"]
        return entry.is_special and self.preserve["specials"]

    def answer(self, read, entry: FileEntry, source: bytes, iflags: int, dry_run: bool) -> bytes:
        """Read the generator's request after an item header and return the answer for the echo."""
        if dry_run or not exchanges(iflags, self.optim):
            return b""
        wanted = decode_xattr_request(read, entry.xattrs or _EMPTY)
        pairs = []
        for item in wanted:
            value = self.tree.xattrs.get_value(source, item.name)
            if value is None:
                self.errors.append(f"failed to re-read xattr {os.fsdecode(item.name)} for {os.fsdecode(source)}")
                value = b""
            pairs.append((item.num, value))
        return encode_xattr_values(pairs)
