"""Wildcard patterns of filter rules compiled to fast, non-backtracking matchers.

A pattern becomes tokens: single-byte sets, STAR (``*``, never ``/``) and
DSTAR (``**``, anything). Each is compiled to one bytes regex; ``*`` gaps use
atomic lazy groups where committing to the earliest match is provably right,
so a regex never backtracks over more than one gap. Patterns needing more
fall back to a bit-parallel NFA (linear in the name). Semantics: rsync
lib/wildmatch.c. Sans-IO; used by ``filters.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_STAR, _DSTAR = "*", "**"
_NFA_ABOVE = 512                     # name length from which a one-gap regex yields to the NFA
_ANY = frozenset(range(256)) - {0x2F}
_CLASSES = {
    b"alnum": b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    b"alpha": b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    b"blank": b" \t", b"cntrl": bytes(range(32)) + b"\x7f", b"digit": b"0123456789",
    b"graph": bytes(range(33, 127)), b"lower": b"abcdefghijklmnopqrstuvwxyz",
    b"print": bytes(range(32, 127)),
    b"punct": bytes(c for c in range(33, 127) if not chr(c).isalnum()),
    b"space": b" \t\n\v\f\r", b"upper": b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    b"xdigit": b"0123456789ABCDEFabcdef",
}


def _glob_tokens(pat: bytes) -> list | None:
    """Tokens of a wildcard pattern; None if it can never match (bad class, lone end backslash)."""
    tokens: list = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == 0x5C:                                # backslash
            if i + 1 >= n:
                return None
            tokens.append(frozenset((pat[i + 1],)))
            i += 2
        elif c == 0x3F:                              # ?
            tokens.append(_ANY)
            i += 1
        elif c == 0x2A:                              # * run
            j = i
            while j < n and pat[j] == 0x2A:
                j += 1
            tokens.append(_STAR if j - i == 1 else _DSTAR)
            i = j
        elif c == 0x5B:                              # [
            cls = _glob_class(pat, i + 1)
            if cls is None:
                return None
            members, i = cls
            tokens.append(members)
        else:
            tokens.append(frozenset((c,)))
            i += 1
    return tokens


def _glob_class(pat: bytes, i: int) -> tuple[frozenset, int] | None:
    """Parse ``[...]`` from just after ``[``; return (bytes it matches, index after ``]``)."""
    n = len(pat)
    negated = i < n and pat[i] in b"!^"
    i += negated
    members: set[int] = set()
    prev = 0
    while True:
        if i >= n:
            return None
        c = pat[i]
        if c == 0x5C:
            i += 1
            if i >= n:
                return None
            prev = pat[i]
            members.add(prev)
        elif c == 0x2D and prev and i + 1 < n and pat[i + 1] != 0x5D:
            i += 1
            if pat[i] == 0x5C:
                i += 1
                if i >= n:
                    return None
            members.update(range(prev, pat[i] + 1))
            prev = 0
        elif c == 0x5B and i + 1 < n and pat[i + 1] == 0x3A:
            named = _named_class(pat, i)
            if named is None:
                return None
            chars, end = named
            members.update(chars)
            i, prev = (end, 0) if end != i else (i, 0x5B)
        else:
            prev = c
            members.add(c)
        i += 1
        if i < n and pat[i] == 0x5D:
            break
    chosen = (set(range(256)) - members) if negated else members
    return frozenset(chosen - {0x2F}), i + 1


def _named_class(pat: bytes, i: int) -> tuple[bytes, int] | None:
    """``[:name:]`` at ``pat[i]``: (its bytes, index of its ``]``); a plain ``[`` if no ``:]``."""
    close = pat.find(b"]", i + 2)
    if close < 0:
        return None                                  # wildmatch.c: ABORT_ALL
    if close - (i + 2) - 1 < 0 or pat[close - 1] != 0x3A:
        return b"[", i
    chars = _CLASSES.get(pat[i + 2:close - 1])
    return None if chars is None else (chars, close)


def _set_regex(chars: frozenset) -> bytes:
    if len(chars) == 1:
        return re.escape(bytes(chars))
    if chars == _ANY:
        return b"[^/]"
    if not chars:
        return b"(?!)"
    return b"[" + b"".join(b"\\x%02x" % c for c in sorted(chars)) + b"]"


def _glob_regex(tokens: list, any_slash: bool) -> tuple[re.Pattern, int]:
    """Compile tokens to a fullmatch regex; also count the gaps left to backtrack.

    A gap is committed (atomic, lazy) when taking the earliest next piece cannot
    lose a match: the gap is ``*`` (then a ``/`` in the piece pins it, or none is
    crossed), or the gap after the piece is ``**``. Otherwise it is left to
    backtracking and counted; with two such gaps we do not use the regex.
    """
    pieces: list[list] = [[]]
    gaps: list[str] = []
    for tok in tokens:
        if isinstance(tok, str):
            gaps.append(tok)
            pieces.append([])
        else:
            pieces[-1].append(tok)
    body = [b"".join(_set_regex(t) for t in piece) for piece in pieces]
    unsafe = 0
    out = [body[0]]
    if any_slash:
        if gaps and gaps[0] == _DSTAR:
            out = [b"(?>(?:.*?/)??" + body[0] + b")"]
        else:
            out = [b"(?:.*/)?" + body[0]]
            unsafe += 1
    for i, gap in enumerate(gaps, 1):
        greedy = b"[^/]*" if gap == _STAR else b".*"
        if i == len(gaps):
            out.append(greedy + body[i])
        elif gap == _STAR or gaps[i] == _DSTAR:
            out.append(b"(?>" + greedy + b"?" + body[i] + b")")
        else:
            out.append(greedy + body[i])
            unsafe += 1
    return re.compile(b"".join(out), re.DOTALL), unsafe


class _GlobNFA:
    """Bit-parallel (shift-and) matcher for patterns too gappy for a regex; linear per name."""

    def __init__(self, tokens: list, any_slash: bool) -> None:
        self.sets: list[frozenset] = []
        self.star = self.dstar = 0
        for tok in tokens:
            if isinstance(tok, str):
                bit = 1 << len(self.sets)
                if tok == _STAR:
                    self.star |= bit
                else:
                    self.dstar |= bit
            else:
                self.sets.append(tok)
        self.any_slash = any_slash
        self.accept = 1 << len(self.sets)
        self._masks: dict[int, int] = {}

    def _mask(self, c: int) -> int:
        mask = self._masks.get(c)
        if mask is None:
            mask = sum(2 << j for j, s in enumerate(self.sets) if c in s)
            self._masks[c] = mask
        return mask

    def fullmatch(self, text: bytes) -> bool:
        state = 1
        for c in text:
            loop = self.dstar if c == 0x2F else self.dstar | self.star
            state = ((state << 1) & self._mask(c)) | (state & loop)
            if c == 0x2F and self.any_slash:
                state |= 1
            elif not state and not self.any_slash:
                return False
        return bool(state & self.accept)


def compile_glob(pat: bytes, any_slash: bool, force_nfa: bool = False
                  ) -> Callable[[bytes], bool]:
    """A matcher ``f(text) -> bool`` for wildcard pattern ``pat`` (rsync wildmatch()).

    ``any_slash``: ``*`` may also cross ``/`` (rsync's ``**``-anywhere mode).
    ``force_nfa`` picks the linear NFA even where a regex would do (tests).
    """
    tokens = _glob_tokens(pat)
    if tokens is None:
        return lambda text: False
    regex, unsafe = _glob_regex(tokens, any_slash)
    if unsafe > 1 or force_nfa:
        return _GlobNFA(tokens, any_slash).fullmatch
    if unsafe:                       # one backtracking gap: O(len^2) regex, so long names go
        nfa = _GlobNFA(tokens, any_slash)   # to the linear NFA
        return lambda text: (nfa.fullmatch(text) if len(text) > _NFA_ABOVE
                             else regex.fullmatch(text) is not None)
    return lambda text: regex.fullmatch(text) is not None
