"""Exclude rules of a source: globs and ``re:`` regexes over relative ``bytes`` paths.

A rule without ``/`` is a glob on one name at any depth (``*.tmp``); with a
``/`` it is a glob on the path from the source root (a leading ``/`` is
dropped; ``*`` crosses ``/``); a trailing ``/`` limits it to directories.
``re:REGEX`` is searched in the relative path (decoded with surrogate
escapes). A path is excluded when it or any directory above it matches.

rsync is never handed our rules: :meth:`ExcludeRules.anchored` walks a tree
and lists the excluded paths as anchored, escaped rsync patterns, so globs and
regexes mean the same in an event, a batch and a full sync.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

_WILD = re.compile(rb"[*?\[]")
_ESCAPE = re.compile(rb"([*?\[\\])")


class ExcludeRules:
    """Compiled exclude rules; ``bool(rules)`` is False when there are none."""

    def __init__(self, rules: Sequence[str] = ()) -> None:
        self.rules = tuple(rules)
        self._names: list[bytes] = []
        self._paths: list[tuple[bytes, bool]] = []
        self._regexes: list[re.Pattern[str]] = []
        for rule in rules:
            if rule.startswith("re:"):
                self._regexes.append(re.compile(rule[3:]))
                continue
            raw = os.fsencode(rule)
            dir_only = raw.endswith(b"/") and len(raw) > 1
            raw = raw.rstrip(b"/") if dir_only else raw
            if b"/" in raw:
                self._paths.append((raw.lstrip(b"/"), dir_only))
            elif dir_only:
                self._paths.append((b"*/" + raw, True))
                self._paths.append((raw, True))
            else:
                self._names.append(raw)
        self._cached = lru_cache(maxsize=4096)(self._matches)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _matches(self, path: bytes, is_dir: bool) -> bool:
        """Does ``path`` itself match a rule (ancestors not looked at)."""
        name = path.rsplit(b"/", 1)[-1]
        if any(fnmatch.fnmatchcase(name, pat) for pat in self._names):
            return True
        if any(fnmatch.fnmatchcase(path, pat) for pat, dir_only in self._paths if is_dir or not dir_only):
            return True
        text = os.fsdecode(path)
        return any(rx.search(text) for rx in self._regexes)

    def excluded(self, path: bytes, is_dir: bool = False) -> bool:
        """Whether ``path`` (relative, ``bytes``) or a directory above it is excluded."""
        if not self.rules or path == b".":
            return False
        if self._cached(path, is_dir):
            return True
        cut = path.rfind(b"/")
        while cut > 0:
            if self._cached(path[:cut], True):
                return True
            cut = path.rfind(b"/", 0, cut)
        return False

    def anchored(self, root: bytes, tops: Iterable[bytes] = (b"",), limit: int = 1_000_000) -> list[bytes]:
        """rsync exclude patterns (``/path``, escaped) for every excluded path under ``tops``.

        ``tops`` are directories relative to ``root`` (``b""``: all of it);
        excluded directories are listed and not entered. Stops after ``limit``
        directories walked.
        """
        if not self.rules:
            return []
        out: list[bytes] = []
        stack = [t.strip(b"/") for t in tops]
        walked = 0
        while stack and walked < limit:
            rel_dir = stack.pop()
            walked += 1
            try:
                entries = list(os.scandir(os.path.join(root, rel_dir) if rel_dir else root))
            except OSError:
                continue
            for entry in entries:
                rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if self._cached(rel, is_dir):
                    out.append(rsync_anchored(rel))
                elif is_dir:
                    stack.append(rel)
        return sorted(out)


def rsync_anchored(path: bytes) -> bytes:
    r"""``a/b*c`` -> ``/a/b\*c``: an rsync pattern matching exactly this path."""
    if _WILD.search(path):
        path = _ESCAPE.sub(rb"\\\1", path)
    return b"/" + path
