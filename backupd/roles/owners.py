"""Owners for written files: ids from the file list, mapped by name unless numeric.

Only root changes owners (rsync.c set_file_attrs()); names are looked up
once per session (each lookup reads /etc/passwd or /etc/group).
"""

from __future__ import annotations

import functools
import grp
import pwd
from typing import TYPE_CHECKING

from backupd.protocol.flist import FileEntry

if TYPE_CHECKING:
    from backupd.roles.push import PushState


def owner_ids(state: PushState, entry: FileEntry) -> dict:
    """uid/gid to set for ``entry``: only as root, mapped by name unless numeric ids."""
    out = {}
    if not state.is_root:
        return out
    numeric = state.opts.numeric_ids
    if state.opts.owner and entry.uid is not None:
        out["uid"] = _map_id(entry.uid, entry.user_name, numeric, pwd.getpwnam, "pw_uid")
    if state.opts.group and entry.gid is not None:
        out["gid"] = _map_id(entry.gid, entry.group_name, numeric, grp.getgrnam, "gr_gid")
    return out


def _map_id(ident: int, name: bytes | None, numeric: bool, lookup, attr: str) -> int:
    if numeric or not name:
        return ident
    local = lookup_id(lookup, attr, name)
    return ident if local is None else local


@functools.lru_cache(maxsize=4096)
def lookup_id(lookup, attr: str, name: bytes) -> int | None:
    """Local id of a user or group name (cached: each lookup reads /etc/passwd).

    The wire name is a C string to rsync (uidlist.c recv_user_name reads it
    into a NUL-terminated buffer), so a NUL ends it: ``root``, NUL, ``x`` is
    ``root``, and a name that starts with NUL matches nobody (None).
    """
    name = name.split(b"\0", 1)[0]
    if not name:
        return None
    try:
        return getattr(lookup(name.decode("utf-8", "replace")), attr)
    except KeyError:
        return None
