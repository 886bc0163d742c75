"""``--usermap`` / ``--groupmap`` (and ``--chown``, which the client sends as them) on push.

rsync uidlist.c: ``parse_name_map`` reads ``FROM:TO[,FROM:TO...]`` where
FROM is a sender id (``1000``), an id range (``1000-1999``), a wildcard
name (``*``, ``web?``, ``[a-c]*``) or a name; TO is a local name or id.
``recv_add_id`` maps each sender id: the first rule that matches wins
(a name rule compares the sender's name for that id, ``""`` when it sent
none); without a match the id is mapped by name as usual. Sender id 0
counts as ``root`` when the sender does not send id 0's name (every
client at protocol < 31 and 3.x without ``xmit_id0_names``).
"""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from backupd.errors import ExitCode, RsyncError
from backupd.protocol.wildmatch import compile_glob
from backupd.roles.owners import lookup_id

if TYPE_CHECKING:
    from backupd.protocol.flist import FileEntry
    from backupd.protocol.server_args import TransferOptions


@dataclass(frozen=True)
class MapRule:
    """One ``FROM:TO`` rule: ``low``..``high`` ids, or a name (``glob``: a wildcard)."""

    target: int
    low: int = 0
    high: int = 0
    name: bytes | None = None
    glob: bool = False

    def matches(self, ident: int, name: bytes) -> bool:
        """True when sender id ``ident`` with sender name ``name`` (b"" for none) is FROM."""
        if self.name is None:
            return self.low <= ident <= self.high
        if self.glob:
            return compile_glob(self.name, any_slash=True)(name)
        return name == self.name


@dataclass
class IdMap:
    """The parsed rules of one map; ``unknown`` lists TO names the receiver does not know."""

    users: bool
    rules: list[MapRule] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    _cache: dict[tuple[int, bytes | None], int] = field(default_factory=dict)

    def map(self, ident: int, name: bytes | None, *, numeric: bool) -> int:
        """Local id for sender id ``ident`` whose sender name is ``name`` (None: none sent).

        rsync uidlist.c recv_add_id: first matching rule, else by name
        (unless numeric ids, or no name, or id 0), else the id itself.
        """
        key = (ident, name)
        if key not in self._cache:
            if numeric:
                name = None  # --numeric-ids sends no names; a daemon's `numeric ids` drops them (numeric_ids < 0)
            elif name is None and ident == 0:
                name = b"root"  # parse_name_map: id 0's name is assumed when not sent
            text = (name or b"").split(b"\0", 1)[0]
            for rule in self.rules:
                if rule.matches(ident, text):
                    self._cache[key] = rule.target
                    break
            else:
                local = None
                if text and ident and not numeric:
                    local = lookup_id(*(pwd.getpwnam, "pw_uid") if self.users else (grp.getgrnam, "gr_gid"), text)
                self._cache[key] = ident if local is None else local
        return self._cache[key]


def parse_name_map(spec: str, *, users: bool) -> IdMap:
    """Parse a ``--usermap``/``--groupmap`` value (rsync uidlist.c parse_name_map).

    Raises:
        RsyncError: a rule without ``:``, without a TO, or a bad number: rsync's
            message, exit 1 (RERR_SYNTAX).
    """
    kind = "user" if users else "group"
    out = IdMap(users=users)
    for item in spec.split(","):
        source, colon, target = item.partition(":")
        if not colon:
            raise RsyncError(f"No colon found in --{kind}map: {item}", ExitCode.SYNTAX, bare=True)
        if not target:
            raise RsyncError(f"No name found after colon --{kind}map: {item}", ExitCode.SYNTAX, bare=True)
        local = _local_id(target, users)
        if local is None:
            out.unknown.append(target)
            continue
        if source[:1].isdigit():
            low, dash, high = source.partition("-")
            if not (low.isdigit() and (not dash or high.isdigit())):
                raise RsyncError(f"Invalid number in --{kind}map: {source}", ExitCode.SYNTAX, bare=True)
            out.rules.append(MapRule(local, int(low), int(high) if dash else int(low)))
        else:
            name = source.encode("utf-8", "surrogateescape")
            out.rules.append(MapRule(local, name=name, glob=any(c in source for c in "*[?")))
    return out


def _local_id(target: str, users: bool) -> int | None:
    """A TO: a number as is, else the local id of that name (uidlist.c user_to_uid/group_to_gid)."""
    if target.isdigit():
        return int(target)
    lookup = (pwd.getpwnam, "pw_uid") if users else (grp.getgrnam, "gr_gid")
    return lookup_id(*lookup, target.encode("utf-8", "surrogateescape"))


def apply_name_maps(entries: list[FileEntry], opts: TransferOptions, *, module_numeric_ids: bool) -> list[str]:
    """Map the entries' sender ids to local ids by the client's maps, in place (root only).

    rsync uidlist.c recv_id_list: ``match_uid``/``match_gid`` on every entry
    once the id lists are in; a mapped entry keeps no sender name, so later
    owner lookups take its id as local. The module's ``numeric ids`` (rsyncd's
    default) drops the sender's names as clientserver.c does (numeric_ids =
    -1), so name rules only see ``""``. Returns rsync's messages for TO names
    the receiver does not know (their rules are dropped, as rsync does).

    Raises:
        RsyncError: a malformed map (see parse_name_map).
    """
    messages = []
    numeric = opts.numeric_ids or module_numeric_ids
    for users, spec in ((True, opts.usermap), (False, opts.groupmap)):
        if spec is None:
            continue
        idmap = parse_name_map(spec, users=users)
        kind = "user" if users else "group"
        messages += [f"Unknown --{kind}map name on receiver: {name}" for name in idmap.unknown]
        for entry in entries:
            if users and entry.uid is not None:
                entry.uid = idmap.map(entry.uid, entry.user_name, numeric=numeric)
                entry.user_name = None
            elif not users and entry.gid is not None:
                entry.gid = idmap.map(entry.gid, entry.group_name, numeric=numeric)
                entry.group_name = None
    return messages
