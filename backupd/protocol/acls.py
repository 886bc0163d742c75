"""POSIX ACLs (``-A``) on the wire: the file-list blocks and their caches by index.

Wire, per file-list entry that is not a symlink (before the xattr block): one
block for the access ACL, and for a directory a second one for its default
ACL, each with its own cache (roles/acl_sync.py uses it)::

    varint ndx        0: a new ACL follows; n > 0: the same ACL as cached ACL n-1 of this kind
    -- a new ACL:
    byte   flags      1 user_obj, 2 group_obj, 4 mask_obj, 8 other_obj, 16 named entries
    varint perms      for each of user_obj, group_obj, mask_obj, other_obj flagged
    if 16: varint count, count x { varint id, varint (perms << 2 | 2 if a user | 1 if a name follows),
                                   [byte len + name] }

The sender leaves out what the mode already says (acls.c rsync_acl_strip_perms):
the access ACL's user_obj and other_obj always, group_obj when there is no
mask or it equals the mode's group bits, the mask when there are named
entries and it equals them. Names follow only with incremental recursion;
otherwise the ids travel in the uid/gid lists after the file list.

Source: rsync acls.c send_rsync_acl(), send_ida_entries(), recv_rsync_acl(),
recv_ida_entries(), rsync_acl_strip_perms(), rsync_acl_fake_perms() (Linux,
protocol >= 30).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from backupd.errors import ProtocolError
from backupd.protocol.wire import Read, decode_varint, encode_varint

XMIT_USER_OBJ, XMIT_GROUP_OBJ, XMIT_MASK_OBJ, XMIT_OTHER_OBJ, XMIT_NAME_LIST = 1, 2, 4, 8, 16
XFLAG_NAME_FOLLOWS, XFLAG_NAME_IS_USER = 1, 2
VALID_BITS = 7  # lib/sysacls.h SMB_ACL_VALID_NAME_BITS / _OBJ_BITS (rwx)
MAX_WIRE_ACL_COUNT = 65536


@dataclass(frozen=True, slots=True)
class IdAccess:
    """One named entry: ``id`` a uid (``is_user``) or gid, ``perms`` rwx bits (0..7)."""

    id: int
    perms: int
    is_user: bool
    name: bytes | None = None  # only on the wire, with incremental recursion; not compared


@dataclass(frozen=True, slots=True)
class RsyncAcl:
    """An ACL as rsync sends it: each ``*_obj`` perms 0..7, or None where left out."""

    user_obj: int | None = None
    group_obj: int | None = None
    mask_obj: int | None = None
    other_obj: int | None = None
    names: tuple[IdAccess, ...] = ()

    def key(self) -> tuple:
        """What makes two ACLs equal for the cache (acls.c rsync_acl_equal; names not compared)."""
        return (self.user_obj, self.group_obj, self.mask_obj, self.other_obj,
                tuple((e.id, e.perms, e.is_user) for e in self.names))


def fake_perms(mode: int) -> RsyncAcl:
    """The access ACL a file without one has: its mode bits (acls.c rsync_acl_fake_perms)."""
    return RsyncAcl((mode >> 6) & 7, (mode >> 3) & 7, None, mode & 7)


def strip_perms(acl: RsyncAcl, mode: int) -> RsyncAcl:
    """The access ACL without what ``mode`` says (acls.c rsync_acl_strip_perms)."""
    group, mask = acl.group_obj, acl.mask_obj
    group_perms = (mode >> 3) & 7
    if mask is None:
        group = None
    else:
        if group == group_perms:
            group = None
        if acl.names and mask == group_perms:
            mask = None
    return RsyncAcl(None, group, mask, None, acl.names)


class AclEncoder:
    """The sender's two caches (access, default) and the block encoder (acls.c send_acl).

    ``name_for(is_user, id)``: with incremental recursion, the name to send
    after a named entry's id, or None (acls.c send_ida_entries: add_uid /
    add_gid give a name only the first time an id is met, file list included).
    """

    def __init__(self, *, send_names: bool = False,
                 name_for: Callable[[bool, int], bytes | None] | None = None) -> None:
        self.send_names = send_names
        self.name_for = name_for
        self._caches: tuple[dict[tuple, int], dict[tuple, int]] = ({}, {})

    def encode(self, access: RsyncAcl, default: RsyncAcl | None, mode: int, is_dir: bool) -> bytes:
        """The blocks of one entry: ``access`` as read (full), ``default`` for a directory.

        ``access`` is stripped of what ``mode`` carries before it is sent and cached.
        """
        out = [self._one(strip_perms(access, mode), 0)]
        if is_dir:
            out.append(self._one(default or RsyncAcl(), 1))
        return b"".join(out)

    def _one(self, acl: RsyncAcl, kind: int) -> bytes:
        cache = self._caches[kind]
        key = acl.key()
        ndx = cache.get(key)
        if ndx is not None:
            return encode_varint(ndx + 1)
        cache[key] = len(cache)
        objs = (acl.user_obj, acl.group_obj, acl.mask_obj, acl.other_obj)
        flags = sum(bit for bit, value in zip((1, 2, 4, 8), objs, strict=True) if value is not None)
        flags |= XMIT_NAME_LIST if acl.names else 0
        out = [b"\x00", bytes([flags])] + [encode_varint(v) for v in objs if v is not None]
        if acl.names:
            out.append(encode_varint(len(acl.names)))
            for entry in acl.names:
                xbits = entry.perms << 2 | (XFLAG_NAME_IS_USER if entry.is_user else 0)
                out.append(encode_varint(entry.id))
                name = self.name_for(entry.is_user, entry.id) if self.name_for is not None else None
                if name is None and self.send_names:
                    name = entry.name
                if name:
                    name = name[:255]
                    out.append(encode_varint(xbits | XFLAG_NAME_FOLLOWS) + bytes([len(name)]) + name)
                else:
                    out.append(encode_varint(xbits))
        return b"".join(out)


class AclDecoder:
    """The receiver's two caches and the block decoder (acls.c receive_acl, recv_rsync_acl)."""

    def __init__(self) -> None:
        self.caches: tuple[list[RsyncAcl], list[RsyncAcl]] = ([], [])

    def decode(self, read: Read, mode: int, is_dir: bool) -> tuple[RsyncAcl, RsyncAcl | None]:
        """Read one entry's blocks: (access ACL, default ACL or None for a non-directory), as sent.

        A named list without a mask gets one computed as rsync does: from the
        mode's group bits (access) or from the entries and group_obj (default).

        Raises:
            ProtocolError: an index past the cache, perms over rwx, a count over the bound.
        """
        access = self._one(read, 0, mode)
        default = self._one(read, 1, 0) if is_dir else None
        return access, default

    def _one(self, read: Read, kind: int, mode: int) -> RsyncAcl:
        cache = self.caches[kind]
        ndx = decode_varint(read)
        if ndx < 0 or ndx > len(cache):
            raise ProtocolError(f"{('access', 'default')[kind]} ACL index {ndx} > {len(cache)}")
        if ndx:
            return cache[ndx - 1]
        flags = read(1)[0]
        objs = [_perms(decode_varint(read)) if flags & bit else None for bit in (1, 2, 4, 8)]
        names: tuple[IdAccess, ...] = ()
        if flags & XMIT_NAME_LIST:
            names = _read_names(read)
        if names and objs[2] is None:
            if kind == 0:
                objs[2] = (mode >> 3) & 7
            else:
                computed = 0
                for entry in names:
                    computed |= entry.perms
                objs[2] = computed | (objs[1] or 0)
        acl = RsyncAcl(*objs, names=names)
        cache.append(acl)
        return acl


def _perms(value: int) -> int:
    if not 0 <= value <= VALID_BITS:
        raise ProtocolError(f"recv_acl_access: value out of range: {value & 0xFFFFFFFF:x}")
    return value


def _read_names(read: Read) -> tuple[IdAccess, ...]:
    count = decode_varint(read)
    if not 0 <= count <= MAX_WIRE_ACL_COUNT:
        raise ProtocolError(f"ACL count {count} outside 0..{MAX_WIRE_ACL_COUNT}")
    out = []
    for _ in range(count):
        ident = decode_varint(read) & 0xFFFFFFFF
        xbits = decode_varint(read) & 0xFFFFFFFF
        name = read(read(1)[0]) if xbits & XFLAG_NAME_FOLLOWS else None
        out.append(IdAccess(ident, _perms(xbits >> 2), bool(xbits & XFLAG_NAME_IS_USER), name))
    return tuple(out)


def _names_key(acl: RsyncAcl) -> tuple:
    return tuple((e.id, e.perms, e.is_user) for e in acl.names)


def access_equal_enough(local: RsyncAcl, received: RsyncAcl, mode: int) -> bool:
    """True if a local (full) access ACL needs no change for a received one (acls.c rsync_acl_equal_enough).

    What the mode carries is left to the chmod; only a mask's presence, the
    group entry under a mask and the named entries count.
    """
    if (local.mask_obj is None) != (received.mask_obj is None):
        return False
    if local.mask_obj is not None:
        group = (mode >> 3) & 7 if received.group_obj is None else received.group_obj
        if local.group_obj != group:
            return False
    return _names_key(local) == _names_key(received)


def default_equal(local: RsyncAcl | None, received: RsyncAcl | None) -> bool:
    """True if two default ACLs are the same (acls.c rsync_acl_equal)."""
    return (local or RsyncAcl()).key() == (received or RsyncAcl()).key()
