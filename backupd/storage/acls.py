"""POSIX ACLs of module entries through pylibacl: read as rsync sends them, set as rsync sets them.

An entry is reached as in storage/xattrs.py (its own ``O_NOFOLLOW`` fd, the
default ACL of a directory through ``/proc/self/fd/<fd>``). Symlinks have no
ACLs. Source: rsync acls.c get_rsync_acl()/unpack_smb_acl() (reading),
set_rsync_acl()/pack_smb_acl()/change_sacl_perms() (writing), Linux libacl.
"""

from __future__ import annotations

import errno
import os
import stat

import posix1e

from backupd.protocol.acls import IdAccess, RsyncAcl

_NO_ACLS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
_OBJ = {posix1e.ACL_USER_OBJ: "user_obj", posix1e.ACL_GROUP_OBJ: "group_obj",
        posix1e.ACL_MASK: "mask_obj", posix1e.ACL_OTHER: "other_obj"}


def _perms(permset) -> int:
    return (4 if permset.read else 0) | (2 if permset.write else 0) | (1 if permset.execute else 0)


def unpack(acl) -> RsyncAcl:
    """A libacl ACL as rsync's full form: every object entry present, named entries in libacl order."""
    fields: dict = {}
    names = []
    for entry in acl:
        tag = entry.tag_type
        if tag in _OBJ:
            fields[_OBJ[tag]] = _perms(entry.permset)
        elif tag in (posix1e.ACL_USER, posix1e.ACL_GROUP):
            names.append(IdAccess(entry.qualifier, _perms(entry.permset), tag == posix1e.ACL_USER))
    return RsyncAcl(**fields, names=tuple(names))


def read_acls(fd: int, mode: int, is_dir: bool) -> tuple[RsyncAcl, RsyncAcl | None]:
    """(access ACL, default ACL or None) of the open entry ``fd`` (acls.c get_acl).

    Without ACL support the access ACL is the mode's (rsync_acl_fake_perms) and
    there is no default ACL.

    Raises:
        OSError: reading failed otherwise.
    """
    try:
        access = unpack(posix1e.ACL(fd=fd))
        default = unpack(posix1e.ACL(filedef=f"/proc/self/fd/{fd}")) if is_dir else None
    except OSError as exc:
        if exc.errno not in _NO_ACLS:
            raise
        return RsyncAcl((mode >> 6) & 7, (mode >> 3) & 7, None, mode & 7), (RsyncAcl() if is_dir else None)
    return access, default


def _build(acl: RsyncAcl):
    out = posix1e.ACL()
    objs = ((posix1e.ACL_USER_OBJ, acl.user_obj), (posix1e.ACL_GROUP_OBJ, acl.group_obj),
            (posix1e.ACL_MASK, acl.mask_obj), (posix1e.ACL_OTHER, acl.other_obj))
    for tag, perms in objs:
        if perms is not None:
            _add(out, tag, perms)
    for entry in acl.names:
        _add(out, posix1e.ACL_USER if entry.is_user else posix1e.ACL_GROUP, entry.perms, entry.id)
    return out


def _add(acl, tag, perms: int, qualifier: int | None = None) -> None:
    entry = acl.append()
    entry.tag_type = tag
    if qualifier is not None:
        entry.qualifier = qualifier
    for bit, flag in ((4, posix1e.ACL_READ), (2, posix1e.ACL_WRITE), (1, posix1e.ACL_EXECUTE)):
        if perms & bit:
            entry.permset.add(flag)


def access_to_set(received: RsyncAcl, mode: int) -> RsyncAcl:
    """The access ACL rsync writes for a received (condensed) one and the new ``mode``.

    user_obj, other_obj and a present mask come from the mode; group_obj too
    unless it was sent (acls.c change_sacl_perms).
    """
    group_bits = (mode >> 3) & 7
    return RsyncAcl(
        (mode >> 6) & 7,
        group_bits if received.group_obj is None else received.group_obj,
        None if received.mask_obj is None else group_bits,
        mode & 7,
        received.names,
    )


def apply_acls(fd: int, access: RsyncAcl, default: RsyncAcl | None, mode: int) -> list[str]:
    """Set the received ACLs on the open entry ``fd`` (a directory also gets ``default``).

    An empty default ACL (no user_obj) deletes the directory's default ACL.
    Returns failures as messages (rsync: ``set_acl: ...``, the transfer goes on).
    """
    failed = []
    try:
        _build(access_to_set(access, mode)).applyto(fd)
    except OSError as exc:
        failed.append(f"set_acl: sys_acl_set_file(access ACL): {exc.strerror} ({exc.errno})")
    if default is None:
        return failed
    path = f"/proc/self/fd/{fd}"
    try:
        if default.user_obj is None:
            posix1e.delete_default(path)
        else:
            _build(default).applyto(path, posix1e.ACL_TYPE_DEFAULT)
    except OSError as exc:
        failed.append(f"set_acl: sys_acl_set_file(default ACL): {exc.strerror} ({exc.errno})")
    return failed


class AclAccess:
    """The ACL side of one ``ModuleTree`` (regular files and directories only)."""

    def __init__(self, tree) -> None:
        self.tree = tree
        self._x = tree.xattrs

    def get(self, path: bytes) -> tuple[RsyncAcl, RsyncAcl | None] | None:
        """(access, default or None) of the entry, None when missing or not a file or directory.

        Raises:
            StorageError: reading failed.
        """
        def read(target):
            if not isinstance(target, int):
                return None
            st = os.fstat(target)
            return read_acls(target, st.st_mode, stat.S_ISDIR(st.st_mode))

        return self._x.at(path, read)

    def set_in_place(self, path: bytes, access: RsyncAcl, default: RsyncAcl | None, mode: int) -> list[str]:
        """Set the ACLs on the live entry (a directory: also its default ACL)."""
        return self._x.apply_at(path, _applier(access, default, mode))

    def update_file(self, path: bytes, access: RsyncAcl, default: RsyncAcl | None, mode: int) -> list[str]:
        """An ACL-only change of a regular file, the old version kept in history (XattrAccess.rewrite)."""
        return self._x.rewrite(path, _applier(access, default, mode), skip=lambda name: False)


def _applier(access: RsyncAcl, default: RsyncAcl | None, mode: int):
    def apply(target) -> list[str]:
        if not isinstance(target, int):
            return []
        return apply_acls(target, access, default, mode)

    return apply
