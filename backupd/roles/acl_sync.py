"""``-A``: the roles' side of POSIX ACLs (push: generator + receiver; pull: sender).

The generator compares each existing entry's ACLs with the file list's
(``ITEM_REPORT_ACL``) and applies them itself to what it does not transfer
(directories at the end, with their times; an unchanged file through a new
inode so that history keeps the old one); the receiver sets them on each
staged file before its rename. The sender reads them into the file list.
Symlinks, devices and specials have none here. Named ids are mapped by name
through the uid/gid lists unless ``--numeric-ids`` (uidlist.c match_acl_ids).

Source: rsync acls.c (get_acl, send_acl, receive_acl, set_acl),
generator.c itemize, rsync.c set_file_attrs.
"""

from __future__ import annotations

import dataclasses
import grp
import pwd
import stat

from backupd.errors import StorageError
from backupd.protocol.acls import AclEncoder, RsyncAcl, access_equal_enough, default_equal
from backupd.protocol.constants import ItemFlags
from backupd.protocol.flist import FileEntry
from backupd.roles.owners import lookup_id


def has_acls(entry: FileEntry) -> bool:
    """Entries with ACLs here: regular files and directories."""
    return entry.is_reg or entry.is_dir


def map_acl_ids(entries: list[FileEntry], users: dict[int, bytes], groups: dict[int, bytes]) -> None:
    """Sender ids in the ACLs -> local ids, by the names of the id lists (uidlist.c match_acl_ids)."""
    cache: dict = {}

    def local(entry) -> int:
        key = (entry.id, entry.is_user)
        if key not in cache:
            name = (users if entry.is_user else groups).get(entry.id)
            found = None
            if name:
                found = lookup_id(pwd.getpwnam, "pw_uid", name) if entry.is_user else lookup_id(
                    grp.getgrnam, "gr_gid", name)
            cache[key] = entry.id if found is None else found
        return cache[key]

    done: dict[int, tuple[RsyncAcl, RsyncAcl]] = {}  # id(acl) -> (acl kept alive, its mapped form)

    def mapped(acl: RsyncAcl | None) -> RsyncAcl | None:
        if acl is None or not acl.names:
            return acl
        if (hit := done.get(id(acl))) is None:  # the wire's ACL cache shares one object among many entries
            names = tuple(e if local(e) == e.id else dataclasses.replace(e, id=local(e)) for e in acl.names)
            same = all(a is b for a, b in zip(names, acl.names, strict=True))
            hit = done[id(acl)] = (acl, acl if same else dataclasses.replace(acl, names=names))
        return hit[1]

    for entry in entries:
        if entry.acls is not None:
            entry.acls = (mapped(entry.acls[0]), mapped(entry.acls[1]))


class GeneratorAcls:
    """Push generator: ``ITEM_REPORT_ACL`` and the ACLs of what is not transferred."""

    def __init__(self, tree, *, dry_run: bool) -> None:
        self.tree, self.dry_run = tree, dry_run
        self.access_changed = False  # of the last entry reported

    def report(self, entry: FileEntry, path: bytes, is_new: bool) -> int:
        """``ITEM_REPORT_ACL`` if the module's entry has other ACLs than ``entry`` (set_acl(NULL, ...))."""
        if is_new or entry.acls is None or not has_acls(entry):
            return 0
        try:
            local = self.tree.acls.get(path)
        except StorageError:
            return 0
        if local is None:
            return 0
        access, default = entry.acls
        self.access_changed = not access_equal_enough(local[0], access, entry.mode)
        same = not self.access_changed and (not entry.is_dir or default_equal(local[1], default))
        return 0 if same else ItemFlags.REPORT_ACL

    def apply(self, entry: FileEntry, path: bytes, *, rewrite: bool) -> list[str]:
        """Set ``entry``'s ACLs on the live entry (a regular file ``rewrite``: a new inode, history first)."""
        if self.dry_run or entry.acls is None or not has_acls(entry):
            return []
        access, default = entry.acls
        mode = stat.S_IMODE(entry.mode)
        if rewrite:
            return self.tree.acls.update_file(path, access, None, mode)
        if not self.report(entry, path, False):  # already as sent (set_acl compares first)
            return []
        return self.tree.acls.set_in_place(path, access, default if entry.is_dir else None, mode)


def apply_staged(entry: FileEntry, staged, mode: int) -> list[str]:
    """Receiver: ``entry``'s ACLs on its staged file, for the final ``mode``."""
    if entry.acls is None:
        return []
    return staged.set_acls(entry.acls[0], stat.S_IMODE(mode))


class SenderAcls:
    """Pull sender: each entry's ACLs into the file list, and their ids into the id lists."""

    def __init__(self, tree, name_for=None) -> None:
        self.tree = tree
        self.encoder = AclEncoder(name_for=name_for)  # names inline with incremental recursion
        self.user_ids: set[int] = set()
        self.group_ids: set[int] = set()
        self.errors: list[str] = []

    def encode(self, entry: FileEntry, source: bytes) -> bytes:
        """The ACL blocks of ``entry`` (none for a symlink), read from ``source`` (send_acl)."""
        if entry.is_link:
            return b""
        mode = entry.mode
        access = RsyncAcl((mode >> 6) & 7, (mode >> 3) & 7, None, mode & 7)
        default = RsyncAcl() if entry.is_dir else None
        if has_acls(entry):
            try:
                got = self.tree.acls.get(source)
            except StorageError as exc:
                self.errors.append(str(exc))
                got = None
            if got is not None:
                access, default = got[0], (got[1] if entry.is_dir else None)
        for acl in (access, default):
            for named in acl.names if acl else ():
                (self.user_ids if named.is_user else self.group_ids).add(named.id)
        entry.acls = (access, default)
        return self.encoder.encode(access, default, mode, entry.is_dir)


