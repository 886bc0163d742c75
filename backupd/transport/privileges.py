"""A session worker takes on the module's ``uid``/``gid`` before it touches the module.

As rsyncd does after auth and before ``@RSYNCD: OK`` (rsync clientserver.c
rsync_module()): a root server sets the group, reduces the supplementary
groups to that one, then the user, so the session cannot win root back; a
non-root server can only "switch" to its own ids and refuses other ones.
The module directory is opened first, as rsyncd chdirs (or chroots) into it
before it switches: the module path may lie below directories the module's
user cannot enter.

As rsyncd 3.5.0, a root server runs a module without ``uid`` as ``nobody``
and a module without ``gid`` as ``nogroup`` (``nobody`` where there is no
``nogroup`` group), whatever the ``uid``: the unset one never stays root
(rsync clientserver.c rsync_module, NOBODY_USER/NOBODY_GROUP). A non-root
server leaves an unset id as it is.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from loguru import logger

from backupd.errors import DaemonRefusal

NOBODY_USER = "nobody"  # rsync configure.ac NOBODY_USER


def nobody_group() -> str:
    """rsync's NOBODY_GROUP: ``nogroup`` where that group exists, else ``nobody``."""
    try:
        grp.getgrnam("nogroup")
    except KeyError:
        return "nobody"
    return "nogroup"


def session_identity(uid_text: str | None, gid_text: str | None, *, as_root: bool) -> Identity:
    """The ids a session of a module runs as, defaults included.

    Source: rsync clientserver.c rsync_module(): ``uid`` defaults to
    NOBODY_USER and ``gid`` to NOBODY_GROUP when the daemon is root; a
    non-root daemon switches only to what the module names.

    Args:
        uid_text: the module's ``uid`` (name or number), None or "" if unset.
        gid_text: the module's ``gid``, likewise.
        as_root: the server runs as root (effective uid 0).

    Raises:
        DaemonRefusal: an unknown user or group ("invalid uid NAME").
    """
    if as_root:
        uid_text = uid_text or NOBODY_USER
        gid_text = gid_text or nobody_group()
    return resolve_identity(uid_text, gid_text)


@dataclass(frozen=True)
class Identity:
    """Numeric ids to switch to; None leaves that id as it is."""

    uid: int | None
    gid: int | None


def resolve_identity(uid_text: str | None, gid_text: str | None) -> Identity:
    """The ids named by a module's ``uid``/``gid`` (names or numbers); unset: None.

    A ``uid`` alone leaves the group as it is, as rsyncd (which, as root,
    then takes NOBODY_GROUP: see :func:`session_identity`).

    Raises:
        DaemonRefusal: an unknown user or group ("invalid uid NAME", as rsyncd).
    """
    uid = gid = None
    if uid_text:
        try:
            entry = pwd.getpwuid(int(uid_text)) if uid_text.isdigit() else pwd.getpwnam(uid_text)
            uid = entry.pw_uid
        except KeyError:
            if not uid_text.isdigit():
                raise DaemonRefusal(f"invalid uid {uid_text}") from None
            uid = int(uid_text)
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
