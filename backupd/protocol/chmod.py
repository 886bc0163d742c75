"""rsync's chmod strings: ``--chmod`` and rsyncd.conf ``incoming/outgoing chmod``.

A spec is a comma-separated list of clauses. Each clause is an optional
``D`` (directories only) or ``F`` (everything but directories) prefix, then
either an octal mode (``D2775``, ``F664``) or ``[ugoa]*`` followed by one
``+``, ``-`` or ``=`` and ``[rwxXst]*``. Without ``u/g/o/a`` the bits apply
to all three classes minus the umask, as chmod(1) does. ``X`` sets execute
only on directories and on files that already had an execute bit.

Each clause becomes an AND mask and an OR mask applied in order; symlinks
are never changed. Semantics: rsync chmod.c parse_chmod()/tweak_mode() and
the ``--chmod`` section of rsync(1).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

_WHO_BITS = {"u": 0o100, "g": 0o010, "o": 0o001, "a": 0o111}
_SETID_BITS = {"u": 0o4000, "g": 0o2000}
_PERM_BITS = {"r": 4, "w": 2, "x": 1, "X": 1}
_SYMBOLIC = re.compile(r"([DF]?)([ugoa]*)([-+=])([rwxXst]*)")
_OCTAL = re.compile(r"([DF]?)([0-7]{1,4})")


@dataclass(frozen=True, slots=True)
class ChmodClause:
    """One clause: ``mode = (mode & and_mask) | or_mask`` for the files it selects."""

    and_mask: int
    or_mask: int
    dirs_only: bool = False
    files_only: bool = False
    keep_x: bool = False  # from ``X``: execute only if the file had some already


@dataclass(frozen=True, slots=True)
class ChmodSpec:
    """A parsed chmod string; ``apply(mode)`` gives the tweaked full st_mode."""

    clauses: tuple[ChmodClause, ...]

    def apply(self, mode: int) -> int:
        """The tweaked mode (file-type bits kept); symlinks and mode 0 unchanged."""
        if mode == 0 or stat.S_ISLNK(mode):
            return mode
        kind = mode & ~0o7777
        is_dir = stat.S_ISDIR(mode)
        had_x = mode & 0o111
        perms = mode & 0o7777
        for c in self.clauses:
            if (c.dirs_only and not is_dir) or (c.files_only and is_dir):
                continue
            perms &= c.and_mask
            perms |= c.or_mask & ~0o111 if c.keep_x and not had_x and not is_dir else c.or_mask
        return kind | perms


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def parse_chmod(text: str, umask: int | None = None) -> ChmodSpec:
    """Parse ``text`` (e.g. ``"Dg+s,ug+w,Fo-w,+X"`` or ``"D2775,F664"``).

    Args:
        text: the spec; whitespace around clauses is ignored.
        umask: masks clauses without ``u/g/o/a``; defaults to the process umask.

    Raises:
        ValueError: an empty spec or a clause that does not parse.
    """
    umask = current_umask() if umask is None else umask
    clauses = []
    for raw in text.split(","):
        part = raw.strip()
        if m := _OCTAL.fullmatch(part):
            flag, digits = m.groups()
            clauses.append(_clause(0, int(digits, 8), flag))
            continue
        m = _SYMBOLIC.fullmatch(part)
        if m is None:
            raise ValueError(f"invalid chmod clause {part!r} in {text!r}")
        flag, who, op, perms = m.groups()
        where = 0
        setid = 0
        for ch in who:
            where |= _WHO_BITS[ch]
            setid |= _SETID_BITS.get(ch, 0)  # rsync: only u and g name set-id bits
        what = 0
        top = 0
        for ch in perms:
            what |= _PERM_BITS.get(ch, 0)
            if ch == "s":
                top |= setid or 0o4000
            elif ch == "t":
                top |= 0o1000
        if where:
            bits = where * what
        else:
            where = 0o111
            bits = (where * what) & ~umask
        if op == "+":
            and_mask, or_mask = 0o7777, bits | top
        elif op == "-":
            and_mask, or_mask = 0o7777 & ~(bits | top), 0
        else:
            and_mask = 0o7777 & ~(where * 7) & ~(setid if top else 0)
            or_mask = bits | top
        clauses.append(_clause(and_mask, or_mask, flag, keep_x="X" in perms))
    return ChmodSpec(tuple(clauses))


def _clause(and_mask: int, or_mask: int, flag: str, keep_x: bool = False) -> ChmodClause:
    return ChmodClause(and_mask, or_mask, dirs_only=flag == "D", files_only=flag == "F", keep_x=keep_x)
