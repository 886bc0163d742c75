"""The one table of daemon parameters, shared by the rsyncd.conf and YAML readers.

Each parameter names its rsyncd.conf spelling, a converter (text or YAML value
-> model value) and where the value lands: a ``ModuleConfig`` field, a
``DaemonConfig`` field, or nowhere (accepted and ignored). Both readers feed
``(name, value, where)`` triples into one ``ConfigBuilder``, so the two formats
cannot drift. Source: rsync daemon-parm.txt, loadparm.c, rsyncd.conf(5).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from backupd.config.model import AuthUser

UNSET = object()
"""Converter result for rsyncd's ``unset`` (BOOL3): the model default applies."""

Converter = Callable[[object], object]


def norm_name(name: str) -> str:
    """Lookup key of a parameter name: case, whitespace, ``_`` and ``-`` ignored.

    rsyncd compares names ignoring case and whitespace (loadparm.c strwiEQ);
    backupd also treats ``_`` (the YAML spelling) and ``-`` as insignificant.
    """
    return re.sub(r"[\s_\-]+", "", name).lower()


# ---------------------------------------------------------------- converters


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value).strip()


def to_str(value: object) -> str:
    """A string value, verbatim apart from surrounding whitespace; None -> ""."""
    return "" if value is None else _text(value)


def to_opt_str(value: object) -> str | None:
    """A string value where empty means "not set" (``uid``, ``incoming chmod``)."""
    text = to_str(value)
    return text or None


def to_chmod(value: object) -> str | None:
    """An ``incoming/outgoing chmod`` spec, checked now so a typo fails at load; empty = not set."""
    from backupd.protocol.chmod import parse_chmod

    text = to_opt_str(value)
    if text is not None:
        parse_chmod(text, umask=0)
    return text


def to_path(value: object) -> Path | None:
    """A file or directory path; empty means "not set". Made absolute later."""
    text = to_str(value)
    return Path(text) if text else None


def to_bool(value: object) -> bool:
    """yes/no, true/false, 1/0 in any case (loadparm.c set_boolean()); YAML bools."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = re.sub(r"\s+", "", value).lower()
        if word in ("yes", "true", "1"):
            return True
        if word in ("no", "false", "0"):
            return False
    raise ValueError(f"expected a boolean (yes/no, true/false, 1/0), got {value!r}")


def to_bool3(value: object) -> object:
    """A boolean that may also be ``unset``/``-1`` (rsyncd BOOL3) -> ``UNSET``."""
    if isinstance(value, str) and re.sub(r"\s+", "", value).lower() in ("unset", "-1"):
        return UNSET
    if value == -1 and not isinstance(value, bool):
        return UNSET
    return to_bool(value)


def int_range(low: int | None, high: int | None) -> Converter:
    """A converter for a decimal integer within ``low .. high`` (None: unbounded)."""

    def to_int(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            number = int(value)
        else:
            raise ValueError(f"expected an integer, got {value!r}")
        if (low is not None and number < low) or (high is not None and number > high):
            bound = f"{low if low is not None else '-inf'} .. {high if high is not None else 'inf'}"
            raise ValueError(f"{number} is outside {bound}")
        return number

    return to_int


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 366 * 86400


def to_duration_s(value: object) -> int:
    """Seconds from ``N`` or ``N`` with a unit ``s``, ``m``, ``h``, ``d`` (``6h``, ``1d``); 0 = off.

    Raises:
        ValueError: not a whole number with one of those units, or over a year.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    else:
        found = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", str(value).lower()) if isinstance(value, str) else None
        if found is None:
            raise ValueError(f"expected a duration such as 3600, 90s, 30m, 6h or 1d, got {value!r}")
        number, unit = int(found[1]), found[2]
    seconds = number * _DURATION_UNITS[unit]
    if not 0 <= seconds <= MAX_DURATION_S:
        raise ValueError(f"{value!r} is outside 0 .. {MAX_DURATION_S} s (a year)")
    return seconds


def _items(value: object, split: Callable[[str], list[str]]) -> tuple[str, ...]:
    """A list value: a YAML list keeps its items whole; a string is split."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        items = [_text(item) for item in value]
    else:
        items = split(_text(value))
    return tuple(item for item in items if item)


def to_words(value: object) -> tuple[str, ...]:
    """Whitespace-separated words (``refuse options``, ``exclude``, ``dont compress``)."""
    return _items(value, str.split)


def to_hosts(value: object) -> tuple[str, ...]:
    """Comma and/or whitespace separated host patterns (rsync access.c)."""
    return _items(value, lambda text: re.split(r"[\s,]+", text))


def _split_auth_users(text: str) -> list[str]:
    """Split like rsync util1.c conf_strtok(): a leading comma means commas only."""
    if text.startswith(","):
        return [item.strip() for item in text[1:].split(",")]
    return re.split(r"[\s,]+", text)


def parse_auth_user(entry: str) -> AuthUser:
    """One ``auth users`` rule: ``name``, ``@group``, with ``:ro``/``:rw``/``:deny``.

    Like rsync authenticate.c auth_server(), the option is read by its first
    letters (``d...`` deny, ``ro``, ``rw``); any other option is ignored.
    """
    name, colon, option = entry.partition(":")
    access = None
    if colon:
        option = option.strip().lower()
        if option.startswith("d"):
            access = "deny"
        elif option[:2] in ("ro", "rw"):
            access = option[:2]
    is_group = name.startswith("@")
    name = name[1:] if is_group else name
    if not name.strip():
        raise ValueError(f"auth users entry {entry!r} has no name")
    return AuthUser(name=name.strip(), is_group=is_group, access=access)


def to_auth_users(value: object) -> tuple[AuthUser, ...]:
    """``auth users`` -> AuthUser rules, in the order they are matched."""
    return tuple(parse_auth_user(entry) for entry in _items(value, _split_auth_users))


# A filter-rule prefix without its pattern: rule name or letter, then modifiers.
_FILTER_PREFIX = re.compile(
    r"(?:[-+.:HSPR]|exclude|include|merge|dir-merge|hide|show|protect|risk)"
    r"(?:,?[-+/!Cenwsrpx]*)"
)


def split_filter_rules(text: str) -> list[str]:
    """Split a ``filter`` value into rules, like rsync's FILTRULE_WORD_SPLIT parse.

    Each rule is a prefix word and a pattern word (``- *.tmp``), a single word
    with ``_`` between prefix and pattern (``-_*.tmp``), or ``!``/``clear``.
    """
    words, rules, i = text.split(), [], 0
    while i < len(words):
        word = words[i]
        if word not in ("!", "clear") and _FILTER_PREFIX.fullmatch(word) and i + 1 < len(words):
            rules.append(f"{word} {words[i + 1]}")
            i += 2
        else:
            rules.append(word)
            i += 1
    return rules


def to_filter(value: object) -> tuple[str, ...]:
    """``filter`` -> one string per rule (``"- *.tmp"``); YAML list items are rules."""
    return _items(value, split_filter_rules)


def to_history_dir(value: object) -> str:
    """``history dir``: a relative path inside the module, without ``..``."""
    text = to_str(value)
    parts = PurePosixPath(text).parts
    if not parts or text.startswith("/") or ".." in parts or "\0" in text:
        raise ValueError(f"expected a relative path inside the module, got {text!r}")
    return text


# --------------------------------------------------------------------- table


@dataclass(frozen=True)
class Param:
    """One parameter: its rsyncd.conf name and where its value goes.

    ``module_field`` set: a module parameter; in the global section it is the
    default for modules defined after it. ``daemon_field`` set: the global
    section's value goes to ``DaemonConfig``. Neither: accepted and ignored,
    with a warning when ``note`` says why that matters. ``global_only``: rsyncd
    refuses it in a module section (a warning here).
    """

    name: str
    convert: Converter = to_str
    module_field: str | None = None
    daemon_field: str | None = None
    global_only: bool = False
    note: str | None = None


def _m(name: str, convert: Converter, field: str | None = None) -> Param:
    return Param(name, convert, module_field=field or name.replace(" ", "_"))


def _g(name: str, convert: Converter, field: str | None = None) -> Param:
    return Param(name, convert, daemon_field=field or name.replace(" ", "_"), global_only=True)


def _ignored(name: str, note: str | None = None, global_only: bool = False) -> Param:
    return Param(name, global_only=global_only, note=note)


_PORT = int_range(0, 65535)
_NO_EXEC = "backupd never runs commands"
_NO_PRIVDROP = "backupd does not switch users or chroot; run it as the intended user"

PARAMS: tuple[Param, ...] = (
    # rsyncd globals
    _g("port", _PORT),
    _g("address", to_opt_str),
    _g("motd file", to_path),
    _g("pid file", to_path),
    _ignored("socket options", global_only=True),
    _ignored("listen backlog", global_only=True),
    _ignored("daemon chroot", _NO_PRIVDROP, global_only=True),
    _ignored("daemon uid", _NO_PRIVDROP, global_only=True),
    _ignored("daemon gid", _NO_PRIVDROP, global_only=True),
    _ignored("proxy protocol", "PROXY protocol headers are not understood", True),
    _ignored("proxy protocol hosts", "PROXY protocol headers are not understood", True),
    # rsyncd module parameters that backupd keeps per daemon only
    Param("log file", to_path, daemon_field="log_file"),
    Param("reverse lookup", to_bool, daemon_field="reverse_lookup"),
    # module parameters
    _m("path", to_path),
    _m("comment", to_str),
    _m("read only", to_bool),
    _m("write only", to_bool),
    _m("list", to_bool),
    _m("auth users", to_auth_users),
    _m("secrets file", to_path),
    _m("strict modes", to_bool),
    _m("hosts allow", to_hosts),
    _m("hosts deny", to_hosts),
    Param("max connections", int_range(None, None), "max_connections", "max_connections"),
    _m("lock file", to_path),
    _m("timeout", int_range(0, None), "timeout_s"),
    _m("max verbosity", int_range(None, None)),
    _m("refuse options", to_words),
    _m("filter", to_filter),
    _m("exclude", to_words),
    _m("include", to_words),
    _m("incoming chmod", to_chmod),
    _m("outgoing chmod", to_chmod),
    _m("dont compress", to_words),
    _m("transfer logging", to_bool),
    _m("log format", to_str),
    _m("numeric ids", to_bool3),
    _m("open noatime", to_bool3),
    _m("munge symlinks", to_bool3),
    _m("ignore errors", to_bool),
    _m("uid", to_opt_str),
    _m("gid", to_opt_str),
    _m("fake super", to_bool),
    _m("use chroot", to_bool),
    _m("forward lookup", to_bool),
    # backupd's own
    _m("history", to_bool),
    _m("history dir", to_history_dir),
    _m("history keep days", int_range(0, None)),
    _m("catalog", to_bool),
    _m("catalog dir", to_path),
    _m("verify interval", to_duration_s, "verify_interval_s"),
    _m("fsync", to_bool),
    _g("handshake timeout", int_range(1, 3600), "handshake_timeout_s"),
    _g("ssh port", _PORT),
    _g("ssh address", to_opt_str),
    _g("ssh host key", to_path),
    _g("ssh authorized keys", to_path),
    _g("ssh password auth", to_bool),
    # rsyncd module parameters accepted and ignored
    _ignored("name"),
    _ignored("charset"),
    _ignored("syslog facility"),
    _ignored("syslog tag"),
    _ignored("open noatime"),
    _ignored("temp dir"),
    _ignored("name converter"),
    _ignored("ignore nonreadable"),
    _ignored("insecure links"),
    _ignored("auth digest", "every digest the client offers is accepted"),
    _ignored("use pam", "only the secrets file authenticates"),
    _ignored("early exec", _NO_EXEC),
    _ignored("pre-xfer exec", _NO_EXEC),
    _ignored("post-xfer exec", _NO_EXEC),
    _ignored("exclude from", "put the rules in 'filter', 'exclude' or 'include'"),
    _ignored("include from", "put the rules in 'filter', 'exclude' or 'include'"),
)

ALIASES = {"bind address": "address", "rsync port": "port"}

_BY_NAME: dict[str, Param] = {norm_name(p.name): p for p in PARAMS}
_BY_NAME.update({norm_name(alias): _BY_NAME[norm_name(name)] for alias, name in ALIASES.items()})


def lookup(name: str) -> Param | None:
    """The parameter called ``name`` in any accepted spelling, or None if unknown."""
    return _BY_NAME.get(norm_name(name))
