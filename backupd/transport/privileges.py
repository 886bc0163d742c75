"""A session worker takes on the module's ``uid``/``gid`` before it touches the module.

As rsyncd does after auth and before ``@RSYNCD: OK`` (rsync clientserver.c
rsync_module()): a root server sets the group, reduces the supplementary
groups to that one, then the user, so the session cannot win root back; a
non-root server can only "switch" to its own ids and refuses other ones.
The module directory is opened first, as rsyncd chdirs (or chroots) into it
before it switches: the module path may lie below directories the module's
user cannot enter.

Unlike rsyncd, a root server with neither ``uid`` nor ``gid`` set stays root
(rsyncd would switch to nobody); a ``uid`` without a ``gid`` takes that
user's primary group.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from loguru import logger

from backupd.errors import DaemonRefusal


@dataclass(frozen=True)
class Identity:
    """Numeric ids to switch to; None leaves that id as it is."""

    uid: int | None
    gid: int | None


def resolve_identity(uid_text: str | None, gid_text: str | None) -> Identity:
    """The ids named by a module's ``uid``/``gid`` (names or numbers).

    Raises:
        DaemonRefusal: an unknown user or group ("invalid uid NAME", as rsyncd).
    """
    uid = gid = None
    if uid_text:
        try:
            entry = pwd.getpwuid(int(uid_text)) if uid_text.isdigit() else pwd.getpwnam(uid_text)
            uid, primary = entry.pw_uid, entry.pw_gid
        except KeyError:
            if not uid_text.isdigit():
                raise DaemonRefusal(f"invalid uid {uid_text}") from None
            uid, primary = int(uid_text), None
        gid = primary
    if gid_text:
        if gid_text.isdigit():
            gid = int(gid_text)
        else:
            try:
                gid = grp.getgrnam(gid_text).gr_gid
            except KeyError:
                raise DaemonRefusal(f"invalid gid {gid_text}") from None
    return Identity(uid, gid)


def switch_to(identity: Identity) -> bool:
    """Become ``identity``; True if the process changed users or groups.

    Root sets the group, the supplementary groups (just that one) and the
    user. A non-root process makes the same setgid/setuid calls, which
    succeed only for its own ids, so a module naming another user is
    refused, as rsyncd refuses it.

    Raises:
        DaemonRefusal: setgid, setgroups or setuid failed (the session ends
            with rsyncd's "@ERROR: setgid failed" and so on).
    """
    if identity.uid is None and identity.gid is None:
        return False
    before = (os.getuid(), os.getgid(), os.getgroups())
    if identity.gid is not None:
        _call("setgid", os.setgid, identity.gid)
        if os.geteuid() == 0:
            _call("setgroups", os.setgroups, [identity.gid])
    if identity.uid is not None:
        _call("setuid", os.setuid, identity.uid)
    return (os.getuid(), os.getgid(), os.getgroups()) != before


def _call(what: str, fn, arg) -> None:
    try:
        fn(arg)
    except OSError as exc:
        logger.error("{} {} failed: {}", what, arg, exc.strerror)
        raise DaemonRefusal(f"{what} failed") from None
