"""Filter rules: wire form <-> FilterRule, pattern matching, per-directory merges.

Sans-IO: merge files reach us through a ``read_merge_file(path)`` callable the
caller supplies (confined to the module by storage); nothing here touches the OS.

Wire (client -> server, first thing in the client's data): each rule as
``int32 LE length`` + rule text (no NUL), ended by ``int32 0``. Clients send the
normalised short form ``<type>[/][!][C|n][w][+|-][e][x][s][r][p] <pattern>[/]``;
the server's parser also takes the long forms (``exclude,x PAT``, ``protect PAT``).
Source: rsync exclude.c (parse_rule_tok, add_rule, rule_matches, push_local_filters,
send_rules/recv_filter_list), lib/wildmatch.c; rsync(1) FILTER RULES;
``rsync-protocol-a.md`` §7.

Paths given to ``FilterList`` are relative to the transfer root (the directory
the file-list names are relative to); ``abs_root`` is that root relative to the
module root, used by ``/``-modifier rules and to name merge files.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from backupd.errors import ExitCode, ProtocolError, RsyncError, Unsupported
from backupd.protocol.wildmatch import compile_glob

RuleKind = Literal["include", "exclude", "merge", "dir_merge", "clear"]
Side = Literal["sender", "receiver"] | None
MergeReader = Callable[[bytes], "bytes | None"]

MAX_RULE_LEN = 5119          # rsync BIGPATHBUFLEN 5120: recv_filter_list needs len < 5120
MAX_PATTERN_LEN = 4095       # rsync MAXPATHLEN 4096: longer patterns are discarded by rsync
MAX_FILTER_RULES = 100_000   # our bound on one received list (rsync has none)
MAX_MERGE_FILE_SIZE = 1 << 20  # our bound on one merge file's content, bytes
MAX_MERGE_DEPTH = 32         # rsync exclude.c MAX_MERGE_DEPTH: nested merge files
_SPACE = frozenset(b" \t\n\v\f\r")   # C isspace() in the C locale
_INT32 = struct.Struct("<i")

# rsync's built-in list (rsync.1 --cvs-exclude, DEFAULT_CVSIGNORE), in the order a
# 3.5.0 client sends it as "-p PAT" rules (captures/daemon-push-cvs-exclude-delete).
CVS_DEFAULT_PATTERNS: tuple[bytes, ...] = tuple(
    b"RCS SCCS CVS CVS.adm RCSLOG cvslog.* tags TAGS .make.state .nse_depinfo *~ #* .#*"
    b" ,* _$* *$ *.old *.bak *.BAK *.orig *.rej .del-* *.a *.olb *.o *.obj *.so *.exe"
    b" *.Z *.elc *.ln core .svn/ .git/ .hg/ .bzr/".split()
)


@dataclass(frozen=True)
class FilterRule:
    """One filter rule after parsing (rsync ``filter_rule``; rflags as fields).

    The short prefixes fold into ``kind`` plus sides: ``H`` = exclude +
    ``sender_side``, ``S`` = include + ``sender_side``, ``P`` = exclude +
    ``receiver_side``, ``R`` = include + ``receiver_side``. ``pattern`` is stored
    without the trailing ``/`` that sets ``dir_only`` (rsync add_rule()).
    ``anchor_dir`` is internal: the module-relative directory of the per-dir merge
    file an anchored rule came from (rsync prefixes the pattern with it).
    """

    kind: RuleKind
    pattern: bytes = b""
    sender_side: bool = False            # 's', H, S
    receiver_side: bool = False          # 'r', P, R
    negate: bool = False                 # '!'
    absolute: bool = False               # '/': match the path from the module root
    dir_only: bool = False               # trailing '/'
    cvs: bool = False                    # 'C'
    no_inherit: bool = False             # 'n' (merge)
    word_split: bool = False             # 'w' (merge)
    merge_default_include: bool = False  # '+' (merge): lines are include patterns
    merge_default_exclude: bool = False  # '-' (merge): lines are exclude patterns
    exclude_self: bool = False           # 'e' (merge)
    xattr: bool = False                  # 'x'
    perishable: bool = False             # 'p'
    anchor_dir: bytes = b""
    _matcher: object = field(default=None, init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        where = f", anchor_dir={self.anchor_dir!r}" if self.anchor_dir else ""
        return f"FilterRule({encode_rule(self)!r}{where})"

    @property
    def is_wildcard(self) -> bool:
        """True if the pattern holds ``*``, ``?`` or ``[`` (rsync FILTRULE_WILD)."""
        return any(c in self.pattern for c in b"*?[")

    @property
    def anchored(self) -> bool:
        """True if the pattern starts with ``/`` (anchored at the transfer root)."""
        return self.pattern.startswith(b"/")

    def applies_to(self, side: Side) -> bool:
        """Whether the rule acts on ``side``; a rule with neither side flag acts on both."""
        if side is None or not (self.sender_side or self.receiver_side):
            return True
        return self.sender_side if side == "sender" else self.receiver_side


def encode_rule(rule: FilterRule) -> bytes:
    """Rule text in the normalised form clients send (rsync get_rule_prefix(), proto >= 30)."""
    if rule.kind == "clear":
        return b"!"
    out = bytearray({"include": b"+", "exclude": b"-", "merge": b".", "dir_merge": b":"}[rule.kind])
    flags = [(rule.absolute, b"/"), (rule.negate, b"!")]
    if rule.cvs:
        flags.append((True, b"C"))
    else:
        flags += [(rule.no_inherit, b"n"), (rule.word_split, b"w"),
                  (rule.merge_default_include, b"+"),
                  (rule.merge_default_exclude and not rule.merge_default_include, b"-")]
    flags += [(rule.exclude_self, b"e"), (rule.xattr, b"x"), (rule.sender_side, b"s"),
              (rule.receiver_side, b"r"), (rule.perishable, b"p")]
    out += b"".join(ch for on, ch in flags if on)
    pattern = rule.pattern + (b"/" if rule.dir_only else b"")
    if pattern or not rule.cvs:
        out += b" " + pattern
    return bytes(out)


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Template:
    """What rules read from a merge file inherit (rsync FILTRULES_FROM_CONTAINER)."""

    word_split: bool = False
    no_prefixes: bool = False
    include: bool = False
    cvs: bool = False
    absolute: bool = False
    dir_only: bool = False
    perishable: bool = False
    sender_side: bool = False
    receiver_side: bool = False
    old_prefixes: bool = False           # rsync XFLG_OLD_PREFIXES (rsyncd include/exclude)


_TOP = _Template()
_LONG_NAMES = {ord("c"): (b"clear", "!"), ord("d"): (b"dir-merge", ":"),
               ord("e"): (b"exclude", "-"), ord("h"): (b"hide", "H"),
               ord("i"): (b"include", "+"), ord("m"): (b"merge", "."),
               ord("p"): (b"protect", "P"), ord("r"): (b"risk", "R"), ord("s"): (b"show", "S")}
_PREFIX_KIND = {"-": ("exclude", False, False), "+": ("include", False, False),
                ".": ("merge", False, False), ":": ("dir_merge", False, False),
                "!": ("clear", False, False), "H": ("exclude", True, False),
                "S": ("include", True, False), "P": ("exclude", False, True),
                "R": ("include", False, True)}


def _syntax(msg: str) -> ProtocolError:
    return ProtocolError(msg, ExitCode.SYNTAX)


def _prefix(text: bytes, pos: int) -> tuple[str, int]:
    """Rule type and the position of its last byte (rsync parse_rule_tok's RULE_STRCMP part)."""
    first = text[pos]
    if first in _LONG_NAMES:
        word, ch = _LONG_NAMES[first]
        nxt = pos + len(word)
        if text.startswith(word, pos):
            if nxt >= len(text) or text[nxt] in _SPACE or text[nxt] == 0x5F:
                return ch, nxt - 1
            if text[nxt] == 0x2C:                    # "exclude,MODS"
                return ch, nxt
        raise _syntax(f"unknown filter rule: {text[:40]!r}")
    ch = chr(first)
    if ch not in _PREFIX_KIND:
        raise _syntax(f"unknown filter rule: {text[:40]!r}")
    return ch, pos + 1 if text[pos + 1:pos + 2] == b"," else pos


def _modifiers(text: bytes, pos: int, f: dict, by_prefix: bool, tpl: _Template) -> int:
    """Apply modifier letters after the rule type; return the position of the pattern."""
    merge = f["kind"] in ("merge", "dir_merge")
    while True:
        pos += 1
        if pos >= len(text) or text[pos] in (0x20, 0x5F):
            break
        c = chr(text[pos])
        if tpl.word_split and text[pos] in _SPACE:
            pos -= 1
            break
        nopre = f["merge_default_include"] or f["merge_default_exclude"]
        ok = {"-": merge and not nopre, "+": merge and not nopre, "!": not merge,
              "C": not nopre and not by_prefix, "e": merge, "n": merge, "w": merge,
              "r": not by_prefix, "s": not by_prefix, "/": True, "p": True, "x": True}
        if not ok.get(c, False):
            raise _syntax(f"invalid modifier {c!r} at position {pos} in filter rule")
        if c == "C":
            f["cvs"] = True
            if merge:
                f.update(no_inherit=True, word_split=True, merge_default_exclude=True)
        else:
            f[{"-": "merge_default_exclude", "+": "merge_default_include", "!": "negate",
               "e": "exclude_self", "n": "no_inherit", "w": "word_split", "r": "receiver_side",
               "s": "sender_side", "/": "absolute", "p": "perishable", "x": "xattr"}[c]] = True
    return pos + 1 if pos < len(text) else pos


def _parse_tok(text: bytes, pos: int, tpl: _Template) -> tuple[FilterRule | None, int]:
    """Parse the rule at ``text[pos:]``; return it (None at the end) and where the next starts.

    Source: rsync exclude.c parse_rule_tok() and the checks in parse_filter_str().
    """
    n = len(text)
    if tpl.word_split:
        while pos < n and text[pos] in _SPACE:
            pos += 1
    if pos >= n:
        return None, pos
    f = dict(kind="include" if tpl.include else "exclude", absolute=tpl.absolute,
             dir_only=tpl.dir_only, perishable=tpl.perishable,
             merge_default_include=False, merge_default_exclude=False)
    sides = False
    if tpl.no_prefixes or tpl.old_prefixes:
        old = tpl.old_prefixes and not tpl.no_prefixes
        if old and text[pos] in b"+-" and text[pos + 1:pos + 2] == b" ":
            f["kind"] = "include" if text[pos] == 0x2B else "exclude"
            pos += 2
        elif text[pos] == 0x21 and (old or tpl.cvs):
            f["kind"] = "clear"                      # tentative: only a lone "!"
    else:
        ch, pos = _prefix(text, pos)
        f["kind"], f["sender_side"], f["receiver_side"] = _PREFIX_KIND[ch]
        sides = f["sender_side"] or f["receiver_side"]
        if f["kind"] == "clear":
            pos += 1
        else:
            pos = _modifiers(text, pos, f, sides, tpl)
    if tpl.sender_side or tpl.receiver_side:
        if f.get("sender_side") or f.get("receiver_side"):
            raise _syntax("specified-side merge file contains specified-side filter")
        f.update(sender_side=tpl.sender_side, receiver_side=tpl.receiver_side)
    end = pos
    while end < n and not (tpl.word_split and text[end] in _SPACE):
        end += 1
    return _finish(f, text[pos:end], tpl), end


def _finish(f: dict, pattern: bytes, tpl: _Template) -> FilterRule:
    """Length checks, ``.cvsignore`` default, trailing-``/`` strip (parse_rule_tok, add_rule)."""
    if f["kind"] == "clear":
        if pattern and not (tpl.no_prefixes or tpl.old_prefixes):
            raise _syntax("'!' rule has trailing characters")
        if len(pattern) > 1:
            f["kind"] = "include" if tpl.include else "exclude"
        else:
            return FilterRule("clear")
    if not pattern and not f.get("cvs"):
        raise _syntax("unexpected end of filter rule")
    if len(pattern) > MAX_PATTERN_LEN:
        raise _syntax(f"filter pattern of {len(pattern)} bytes, over {MAX_PATTERN_LEN}")
    if f["kind"] in ("merge", "dir_merge") and not pattern:
        pattern = b".cvsignore"
    if f["kind"] != "merge" and len(pattern) > 1 and pattern.endswith(b"/"):
        pattern, f["dir_only"] = pattern[:-1], True
    return FilterRule(pattern=pattern, **f)


def _parse_all(text: bytes, tpl: _Template) -> list[FilterRule]:
    """Every rule in ``text`` (rsync parse_filter_str()); stops at a NUL like C does."""
    text = text.split(b"\0", 1)[0]
    rules, pos = [], 0
    while True:
        rule, pos = _parse_tok(text, pos, tpl)
        if rule is None:
            return rules
        rules.append(rule)


def parse_rule(text: bytes) -> FilterRule:
    """Parse one rule as a client sends it or as given to ``--filter``.

    Args:
        text: rule text, e.g. ``b"- *.o"``, ``b"-r keep"``, ``b"exclude,x user.foo"``,
            ``b":C"``, ``b"!"``; at most 5119 bytes, no NUL.

    Raises:
        ProtocolError: (exit code 1, like rsync) unknown prefix, bad modifier, missing
            pattern, a NUL byte, text over 5119 bytes or pattern over 4095 bytes.
    """
    if len(text) > MAX_RULE_LEN:
        raise ProtocolError(f"filter rule of {len(text)} bytes, over {MAX_RULE_LEN}")
    if b"\0" in text:
        raise _syntax("filter rule holds a NUL byte")
    rule, _ = _parse_tok(text, 0, _TOP)
    if rule is None:
        raise _syntax("empty filter rule")
    return rule


def parse_rules(text: bytes, default: Literal["filter", "include", "exclude"] = "filter"
                ) -> list[FilterRule]:
    """Parse an rsyncd.conf ``filter`` / ``include`` / ``exclude`` value (daemon rules).

    ``filter``: whitespace-separated rules with prefixes (``- /a  + b``).
    ``include``/``exclude``: whitespace-separated patterns, optional ``+ ``/``- ``
    prefix, ``!`` clears. As rsyncd does (clientserver.c, XFLG_ABS_IF_SLASH |
    XFLG_DIR2WILD3), a pattern with a ``/`` matches from the module root
    (``absolute``) and an exclude of ``dir/`` becomes ``dir/***``. Match these
    rules against module-relative names (``abs_root`` = the transfer root).

    Raises:
        ProtocolError: a malformed rule (callers reading config wrap it in ConfigError).
    """
    tpl = _Template(word_split=True, include=default == "include",
                    old_prefixes=default != "filter")
    out = []
    for rule in _parse_all(text, tpl):
        if rule.kind in ("include", "exclude"):
            if b"/" in rule.pattern and not rule.absolute:
                rule = replace(rule, absolute=True)
            if rule.kind == "exclude" and rule.dir_only:
                rule = replace(rule, dir_only=False, pattern=rule.pattern + b"/***")
        out.append(rule)
    return out


def _merge_template(rule: FilterRule) -> _Template:
    return _Template(word_split=rule.word_split, cvs=rule.cvs, include=rule.merge_default_include,
                     no_prefixes=rule.merge_default_include or rule.merge_default_exclude,
                     absolute=rule.absolute, dir_only=rule.dir_only, perishable=rule.perishable,
                     sender_side=rule.sender_side, receiver_side=rule.receiver_side)


def parse_merge_file(content: bytes, rule: FilterRule, where: str = "merge file"
                     ) -> list[FilterRule]:
    """Rules in a merge file read for ``rule`` (rsync parse_filter_file()).

    Lines end at LF or CR; empty lines and lines starting ``;`` or ``#`` are
    skipped; with ``w`` (or ``C``) the file is split on whitespace instead and
    each word is one rule. Lines over 5119 bytes are dropped, as rsync does.
    Error messages name ``where`` and the line, never the text (the peer chose
    the file; rsync 3.5 hides it the same way).

    Raises:
        ProtocolError: (exit code 1) a malformed rule.
    """
    tpl = _merge_template(rule)
    units = content.split() if rule.word_split else re.split(rb"[\r\n]", content)
    rules: list[FilterRule] = []
    for line_no, unit in enumerate(units, 1):
        unit = unit.split(b"\0", 1)[0]
        if not unit or len(unit) > MAX_RULE_LEN:
            continue
        if not rule.word_split and unit[:1] in (b";", b"#"):
            continue
        try:
            rules += _parse_all(unit, tpl)
        except ProtocolError as exc:
            unit_name = "word" if rule.word_split else "line"
            raise _syntax(f"bad filter rule in {where} {unit_name} {line_no}") from exc
    return rules


def old_prefix_rule(text: bytes) -> bytes:
    """A rule of a protocol 27-28 client in today's syntax (exclude.c XFLG_OLD_PREFIXES).

    Only ``+ `` and ``- `` are prefixes then; ``!`` alone clears the list;
    anything else is an exclude of the whole text (``+`` and ``- `` at the
    start of a pattern travel behind a ``- `` prefix, get_rule_prefix()).
    """
    if text[:2] in (b"+ ", b"- ") or text == b"!":
        return text
    return b"- " + text


def rules_from_client(texts: Iterable[bytes], *, sender: bool, cvs_exclude: bool = False
                      ) -> list[FilterRule]:
    """Parse a received filter list, adding what rsync's server adds for ``-C``.

    A 3.x client pushing with ``-C`` sends ``:C`` and the CVS defaults itself;
    pulling, it sends neither and the sending server appends ``:C`` then ``-C``
    (rsync recv_filter_list(), protocol >= 29).

    Args:
        texts: rule texts from :func:`decode_filter_list`.
        sender: the server is the sender (a pull).
        cvs_exclude: the client's arguments hold ``C`` (``--cvs-exclude``).

    Raises:
        ProtocolError: a malformed rule.
    """
    rules = [parse_rule(t) for t in texts]
    if cvs_exclude and sender:
        rules += [parse_rule(b":C"), parse_rule(b"-C")]
    return rules


# ------------------------------------------------------------------------- wire codec


def encode_filter_list(rules: Iterable[bytes]) -> bytes:
    """The client's filter list: each rule as int32 LE length + text, then int32 0.

    Raises:
        ValueError: an empty rule, one over 5119 bytes, or one holding NUL.
    """
    out = bytearray()
    for text in rules:
        if not 0 < len(text) <= MAX_RULE_LEN or b"\0" in text:
            raise ValueError(f"filter rule {text[:40]!r} cannot be sent")
        out += _INT32.pack(len(text)) + text
    return bytes(out + _INT32.pack(0))


def decode_filter_list(read: Callable[[int], bytes], *, max_rules: int = MAX_FILTER_RULES
                       ) -> list[bytes]:
    """Read a filter list (rsync recv_filter_list()) with ``read(n)`` -> exactly n bytes.

    Returns the rule texts, to be given to :func:`parse_rule`.

    Raises:
        ProtocolError: a negative length or one >= 5120, a rule holding NUL, more than
            ``max_rules`` rules, or ``read`` returning fewer bytes than asked.
    """
    rules: list[bytes] = []
    while True:
        (length,) = _INT32.unpack(_read_exact(read, 4))
        if length == 0:
            return rules
        if not 0 < length <= MAX_RULE_LEN:
            raise ProtocolError(f"filter rule length {length} outside 1..{MAX_RULE_LEN}")
        if len(rules) >= max_rules:
            raise ProtocolError(f"filter list longer than {max_rules} rules")
        text = _read_exact(read, length)
        if b"\0" in text:
            raise ProtocolError(f"filter rule {len(rules)} holds a NUL byte")
        rules.append(text)


def _read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    data = read(n)
    if len(data) != n:
        raise ProtocolError(f"filter list cut short: wanted {n} bytes, got {len(data)}")
    return data


def cvs_rules(*, perishable: bool = True) -> list[FilterRule]:
    """rsync's built-in CVS excludes as exclude rules, in rsync's order.

    ``perishable``: rsync marks them so for protocol >= 30 (always, for us).
    """
    return _cvs_expand(FilterRule("exclude", cvs=True), perishable)


def _cvs_expand(rule: FilterRule, perishable: bool = True) -> list[FilterRule]:
    """Rules a ``-C`` / ``+C`` rule stands for (rsync get_cvs_excludes(), built-in list only).

    They inherit the rule's type, sides and ``/ ! p`` flags (FILTRULES_FROM_CONTAINER).
    rsync also reads ``$HOME/.cvsignore`` and ``$CVSIGNORE``; a server has neither.
    """
    tpl = _Template(word_split=True, no_prefixes=True, include=rule.kind == "include",
                    absolute=rule.absolute, dir_only=rule.dir_only,
                    perishable=perishable or rule.perishable,
                    sender_side=rule.sender_side, receiver_side=rule.receiver_side)
    rules = _parse_all(b" ".join(CVS_DEFAULT_PATTERNS), tpl)
    return [replace(r, negate=True) for r in rules] if rule.negate else rules


# --------------------------------------------------------------------------- matching

def _with_lead(lead: bytes, glob: Callable[[bytes], bool]) -> Callable[[bytes], bool]:
    """Match ``lead`` literally (a merge file's directory), then ``glob`` on the rest."""
    return lambda text: text.startswith(lead) and glob(text[len(lead):])


def _trailing(text: bytes, count: int) -> bytes | None:
    """The last ``count`` path elements of ``text`` (wildmatch.c trailing_N_elements())."""
    end = len(text)
    for i in range(count):
        end = text.rfind(b"/", 0, end)
        if end < 0:
            return text if i == count - 1 else None
    return text[end + 1:]


MatchFn = Callable[[bytes, bool, "bytes | None"], bool]


def _compile_rule(rule: FilterRule) -> MatchFn:
    """Build ``match(name, is_dir, abs_name)`` for one include/exclude rule (rule_matches())."""
    pat, negate = rule.pattern, rule.negate
    wild = rule.is_wildcard
    slashes = pat.count(b"/")
    wild2 = wild and b"**" in pat
    wild2_prefix, wild3 = wild2 and pat.startswith(b"**"), wild2 and pat.endswith(b"***")
    anchored = pat.startswith(b"/")
    body = pat[1:] if anchored else pat
    last_only = not slashes and not wild2
    trail = 0 if anchored or wild2 or not slashes else slashes + 1
    lead = rule.anchor_dir + b"/" if anchored and rule.anchor_dir else b""
    if wild:
        glob = compile_glob(body, not anchored and not wild2_prefix and wild2)
        test = _with_lead(lead, glob) if lead else glob
    else:
        test = (lead + body).__eq__
    dir_only, absolute = rule.dir_only, rule.absolute and not last_only

    def match(name: bytes, is_dir: bool, abs_name: bytes | None) -> bool:
        if last_only:
            text = name[name.rfind(b"/") + 1:]
        elif absolute and abs_name is not None:
            text = abs_name
        elif wild2_prefix:
            text = b"/" + name
        else:
            text = name
        if is_dir:
            if wild3:
                text += b"/"
        elif dir_only:
            return negate
        if trail:
            tail = _trailing(text, trail)
            return (tail is not None and test(tail)) != negate
        return test(text) != negate

    return match


def _matcher(rule: FilterRule) -> MatchFn:
    fn = rule._matcher
    if fn is None:
        fn = _compile_rule(rule)
        object.__setattr__(rule, "_matcher", fn)
    return fn  # type: ignore[return-value]


def rule_matches(rule: FilterRule, path: bytes, is_dir: bool, abs_root: bytes = b"") -> bool:
    """Test one rule's pattern (with ``!``) against ``path``.

    Source: rsync exclude.c rule_matches(). ``path`` is relative to the transfer
    root (a leading ``/`` is ignored); ``abs_root`` is the transfer root relative
    to the module root. Xattr rules and merge/clear rules never match names; an
    empty name matches nothing.
    """
    name = path[1:] if path.startswith(b"/") else path
    if not name or rule.xattr or rule.kind not in ("include", "exclude"):
        return False
    return _matcher(rule)(name, is_dir, abs_root + b"/" + name if abs_root else None)


# ------------------------------------------------------------------ lists and merges


@dataclass(frozen=True)
class _DirMerge:
    """A dir-merge (``:``) rule and the rules its files put in effect in one directory.

    ``entries`` = this directory's rules, then the inherited ones (unless ``n``);
    rsync keeps the same as a local list chained to its parent's (exclude.c).
    """

    rule: FilterRule
    name: bytes                      # the per-directory file name
    entries: tuple = ()              # FilterRule | _DirMerge, first match wins
    scan_from: bytes | None = None   # module-relative dir for the one-time parent scan
    depth: int = 0


@dataclass
class _Ctx:
    abs_root: bytes
    delete_excluded: bool
    read: MergeReader | None
    active: set[bytes]               # per-dir merge names in effect (rsync mergelist_parents)


def _norm(path: bytes) -> bytes:
    """``a/./b//c/../d`` -> ``a/b/d``; ``..`` stops at the root (rsync sanitize_path())."""
    parts: list[bytes] = []
    for part in path.split(b"/"):
        if part == b"..":
            if parts:
                parts.pop()
        elif part and part != b".":
            parts.append(part)
    return b"/".join(parts)


def _join(a: bytes, b: bytes) -> bytes:
    return a + b"/" + b if a and b else a or b


def _read_merge(ctx: _Ctx, path: bytes, required: bool, where: str) -> bytes | None:
    if ctx.read is None:
        raise Unsupported("merge-file rules need a merge-file reader, none was given")
    content = ctx.read(path)
    if content is None:
        if required:
            raise RsyncError(f"failed to open {where}", ExitCode.FILEIO)
        return None
    if len(content) > MAX_MERGE_FILE_SIZE:
        raise RsyncError(f"{where} is {len(content)} bytes, over {MAX_MERGE_FILE_SIZE}",
                         ExitCode.FILEIO)
    return content


def _add_rules(rules: Iterable[FilterRule], ctx: _Ctx, out: list, *, anchor: bytes | None,
               depth: int, base: bytes) -> bool:
    """Put ``rules`` into ``out`` the way rsync parse_filter_str() adds them to a list.

    ``anchor``: module-relative dir of the per-dir merge file being read, whose
    anchored rules match from there (XFLG_ANCHORED2ABS). ``base``: directory
    relative merge-file names start from. Returns True if a ``!`` cleared ``out``.
    """
    cleared = False
    for rule in rules:
        if rule.kind == "clear":
            out.clear()
            cleared = True
            continue
        if rule.kind in ("merge", "dir_merge") and rule.exclude_self:
            self_name = rule.pattern.rsplit(b"/", 1)[-1]
            if self_name:
                out.append(FilterRule("exclude", self_name))
            rule = replace(rule, exclude_self=False)
        if rule.kind == "merge":
            cleared |= _add_merge(rule, ctx, out, depth, base)
        elif rule.kind == "dir_merge":
            _add_dir_merge(rule, ctx, out, depth, base)
        else:
            if ctx.delete_excluded and not (rule.sender_side or rule.receiver_side):
                rule = replace(rule, sender_side=True)   # --delete-excluded (parse_rule_tok)
            if anchor is not None and rule.anchored and not rule.absolute:
                rule = replace(rule, absolute=True, anchor_dir=anchor)
            out.extend(_cvs_expand(rule) if rule.cvs else (rule,))
    return cleared


def _add_merge(rule: FilterRule, ctx: _Ctx, out: list, depth: int, base: bytes) -> bool:
    """Read a ``.`` merge file now, into the same list (a ``!`` in it clears that list)."""
    if depth >= MAX_MERGE_DEPTH:
        raise RsyncError(f"merge files nested deeper than {MAX_MERGE_DEPTH}", ExitCode.FILEIO)
    path = _norm(rule.pattern if rule.pattern.startswith(b"/") else _join(base, rule.pattern))
    where = "merge file" if depth else f"merge file {path.decode(errors='replace')!r}"
    content = _read_merge(ctx, path, True, where)
    rules = parse_merge_file(content, rule, where)
    return _add_rules(rules, ctx, out, anchor=None, depth=depth + 1,
                      base=path.rpartition(b"/")[0])


def _add_dir_merge(rule: FilterRule, ctx: _Ctx, out: list, depth: int, base: bytes) -> None:
    """Add a per-dir merge placeholder; its files are read by enter_dir (add_rule())."""
    head, _, name = rule.pattern.rpartition(b"/")
    if name in (b"", b".", b".."):
        raise _syntax("per-directory merge-file name must name a file")
    if name in ctx.active or depth >= MAX_MERGE_DEPTH:
        return                       # rsync: "already mentioned" / depth limit: dropped
    scan_from = None
    if b"/" in rule.pattern:         # ": /.rsync-filter": scan parents first (setup_merge_file)
        scan_from = _norm(head if rule.pattern.startswith(b"/") else _join(base, head))
    ctx.active.add(name)
    out.append(_DirMerge(rule, name, (), scan_from, depth))


def _enter(entries: tuple, dir_mod: bytes, ctx: _Ctx) -> tuple:
    return tuple(_enter_node(e, dir_mod, ctx) if isinstance(e, _DirMerge) else e
                 for e in entries)


def _enter_node(node: _DirMerge, dir_mod: bytes, ctx: _Ctx) -> _DirMerge:
    """The node's rules inside ``dir_mod`` (rsync push_local_filters())."""
    inherited = node.entries
    if node.scan_from is not None:
        inherited = _parent_scan(node, dir_mod, ctx)
    if node.rule.no_inherit:
        inherited = ()
    inherited = _enter(inherited, dir_mod, ctx)
    where = f"{node.name.decode(errors='replace')!r}" if node.depth == 0 else "merge file"
    where += f" in {dir_mod.decode(errors='replace') or '.'!r}"
    content = _read_merge(ctx, _join(dir_mod, node.name), False, where)
    if content is None:
        return replace(node, entries=inherited, scan_from=None)
    local: list = []
    cleared = _add_rules(parse_merge_file(content, node.rule, where), ctx, local,
                         anchor=dir_mod, depth=node.depth + 1, base=dir_mod)
    entries = _enter(tuple(local), dir_mod, ctx) + (() if cleared else inherited)
    return replace(node, entries=entries, scan_from=None)


def _parent_scan(node: _DirMerge, dir_mod: bytes, ctx: _Ctx) -> tuple:
    """Rules from the merge files in the dirs from ``scan_from`` down to ``dir_mod``'s parent."""
    start = node.scan_from or b""
    if start == dir_mod or not (start == b"" or dir_mod.startswith(start + b"/")):
        return node.entries
    below = dir_mod[len(start):].strip(b"/").split(b"/")
    acc: tuple = ()
    for depth in range(len(below)):
        parent = _join(start, b"/".join(below[:depth]))
        where = f"merge file in {parent.decode(errors='replace') or '.'!r}"
        content = _read_merge(ctx, _join(parent, node.name), False, where)
        if content is None:
            continue
        local: list = []
        cleared = _add_rules(parse_merge_file(content, node.rule, where), ctx, local,
                             anchor=parent, depth=node.depth + 1, base=parent)
        if not node.rule.no_inherit:
            acc = tuple(local) + (() if cleared else acc)
    return acc


def _flatten(entries: tuple, out: list) -> list:
    for e in entries:
        if isinstance(e, _DirMerge):
            _flatten(e.entries, out)
        else:
            out.append(e)
    return out


def _merge_names(entries: tuple, out: set[bytes]) -> set[bytes]:
    for e in entries:
        if isinstance(e, _DirMerge):
            out.add(e.name)
            _merge_names(e.entries, out)
    return out


class FilterList:
    """The rules in effect in one directory; first match wins, no match = included.

    Built from parsed rules in order: ``!`` clears what came before, ``-C``
    expands to the CVS defaults, ``.`` merge files are read at once (through
    ``read_merge_file``), ``:`` rules become per-directory lists that
    :meth:`enter_dir` fills. Immutable: ``enter_dir`` returns a new list.

    Args:
        rules: parsed rules, e.g. ``[parse_rule(t) for t in decode_filter_list(read)]``.
        abs_root: the transfer root relative to the module root (``b""`` = the root).
        delete_excluded: the client sent ``--delete-excluded``: rules without a side
            (also from merge files) act on the sender only.
        read_merge_file: ``read(module_relative_path) -> bytes | None``, needed only
            for ``.`` rules; must stay inside the module and read at most
            ``MAX_MERGE_FILE_SIZE + 1`` bytes.

    Raises:
        ProtocolError: a bad rule in a merge file or a bad per-dir merge name.
        Unsupported: a ``.`` rule and no ``read_merge_file``.
        RsyncError: (FILEIO) a ``.`` merge file missing, too big, or nested over 32 deep.
    """

    def __init__(self, rules: Iterable[FilterRule] = (), *, abs_root: bytes = b"",
                 delete_excluded: bool = False,
                 read_merge_file: MergeReader | None = None) -> None:
        self.abs_root = _norm(abs_root)
        self.delete_excluded = delete_excluded
        ctx = _Ctx(self.abs_root, delete_excluded, read_merge_file, set())
        out: list = []
        _add_rules(rules, ctx, out, anchor=None, depth=0, base=self.abs_root)
        self._set_entries(tuple(out))

    def _set_entries(self, entries: tuple) -> None:
        self._entries = entries
        self._has_merges = any(isinstance(e, _DirMerge) for e in entries)
        self._by_side: dict[Side, tuple] = {}

    @property
    def rules(self) -> tuple[FilterRule, ...]:
        """Every include/exclude rule in effect here, in matching order."""
        return tuple(_flatten(self._entries, []))

    def __repr__(self) -> str:
        return f"FilterList({[encode_rule(r) for r in self.rules]!r})"

    def enter_dir(self, dirpath: bytes, read_merge_file: MergeReader) -> FilterList:
        """The list in effect inside ``dirpath``, reading its per-directory merge files.

        Call it on the list of ``dirpath``'s parent, first with ``b""`` for the
        transfer root (rsync push_local_filters(), called per scanned directory).
        A ``:`` name holding a ``/`` (``-F`` sends ``: /.rsync-filter``) also
        reads that file, once, in each directory from the named one down to the
        first one entered. Merge-file rules are inherited by subdirectories
        unless the rule has ``n``; a ``!`` in a file clears the inherited ones.

        Args:
            dirpath: directory relative to the transfer root (like ``matches`` paths).
            read_merge_file: ``read(module_relative_path) -> bytes | None`` (None: no
                such file); confine it to the module; it should read at most
                ``MAX_MERGE_FILE_SIZE + 1`` bytes.

        Raises:
            ProtocolError: (exit code 1) a malformed rule in a merge file.
            RsyncError: (FILEIO) a merge file over ``MAX_MERGE_FILE_SIZE``.
        """
        if not self._has_merges:
            return self
        ctx = _Ctx(self.abs_root, self.delete_excluded, read_merge_file,
                   _merge_names(self._entries, set()))
        entries = _enter(self._entries, _norm(_join(self.abs_root, _norm(dirpath))), ctx)
        child = object.__new__(FilterList)
        child.abs_root, child.delete_excluded = self.abs_root, self.delete_excluded
        child._set_entries(entries)
        return child

    def _for_side(self, side: Side) -> tuple:
        found = self._by_side.get(side)
        if found is None:
            found = tuple((r, _matcher(r)) for r in _flatten(self._entries, [])
                          if not r.xattr and r.applies_to(side))
            self._by_side[side] = found
        return found

    @property
    def has_xattr_rules(self) -> bool:
        """True if any rule (``x`` modifier) filters xattr names (rsync ``saw_xattr_filter``)."""
        return any(r.xattr for r in _flatten(self._entries, []))

    def xattr_excluded(self, name: bytes, side: Side) -> bool:
        """True if the first ``x`` rule for ``side`` matching xattr ``name`` excludes it.

        Source: rsync exclude.c name_is_excluded(NAME_IS_XATTR) / rule_matches():
        only ``x`` rules take part, matched against the whole name.
        """
        key = ("x", side)
        found = self._by_side.get(key)  # type: ignore[call-overload]
        if found is None:
            found = tuple((r, _matcher(r)) for r in _flatten(self._entries, [])
                          if r.xattr and r.kind in ("include", "exclude") and r.applies_to(side))
            self._by_side[key] = found  # type: ignore[index]
        for rule, match in found:
            if name and match(name, False, None):
                return rule.kind == "exclude"
        return False

    def matches(self, path: bytes, is_dir: bool, *, side: Side,
                skip_perishable: bool = False) -> FilterRule | None:
        """The first rule acting on ``side`` whose pattern matches, or None.

        Args:
            path: name relative to the transfer root, as in the file list.
            is_dir: the name is a directory (``dir/`` rules match only those).
            side: ``"sender"`` skips receiver-only rules (``r``, P, R),
                ``"receiver"`` skips sender-only ones (``s``, H, S); None applies all
                (rsyncd's daemon filter). Xattr (``x``) rules never match names.
            skip_perishable: ignore ``p`` rules (rsync ignore_perishable).
        """
        name = path[1:] if path.startswith(b"/") else path
        if not name:
            return None
        abs_name = self.abs_root + b"/" + name if self.abs_root else None
        for rule, match in self._for_side(side):
            if (skip_perishable and rule.perishable) or not match(name, is_dir, abs_name):
                continue
            return rule
        return None

    def excluded(self, path: bytes, is_dir: bool, side: Side) -> bool:
        """True if the first matching rule for ``side`` is an exclude (rsync check_filter() < 0).

        Sender: leave the name (and, for a directory, all below it) out of the file
        list. Receiver: the name is protected from ``--delete``.
        """
        rule = self.matches(path, is_dir, side=side)
        return rule is not None and rule.kind == "exclude"

    def protected_from_delete(self, path: bytes, is_dir: bool, *, perishable_ok: bool) -> bool:
        """Whether a receiver's ``--delete`` sweep must keep ``path`` (§7.4).

        Exclude rules acting on the receiver (plain ``-`` and ``-r``/P) protect;
        an earlier ``+``/``+r`` (R) match puts the name at risk again. Set
        ``perishable_ok`` while looking inside a directory that is itself being
        deleted: ``p`` rules then protect nothing, so files such as the CVS
        defaults do not keep a doomed directory alive (rsync delete_item()).
        An excluded directory's contents are not swept at all.
        """
        rule = self.matches(path, is_dir, side="receiver", skip_perishable=perishable_ok)
        return rule is not None and rule.kind == "exclude"
