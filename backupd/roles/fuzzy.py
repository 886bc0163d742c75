"""``--fuzzy`` (``-y``): a similarly named file as the basis of a file the module lacks.

When the destination file does not exist, rsync's generator looks in its
directory (``-yy``: the same directory under each ``--compare/copy/link-dest``
dir too) for a regular, non-empty file with the same size and mtime, else the
one whose name is nearest by rsync's weighted Levenshtein distance (under 25
units, suffixes weighing ten times). The listing is read once per directory;
a file about to be updated in it is no longer offered as a basis.

Source: rsync generator.c find_fuzzy() / recv_generator (fuzzy_dirlist),
util1.c fuzzy_distance() / find_filename_suffix(), protocols 30-32.
"""

from __future__ import annotations

import os
import stat

from backupd.errors import StorageError
from backupd.protocol.flist import FileEntry, sort_key
from backupd.roles.alt_dest import AltBasis, alt_path
from backupd.roles.push import PushState, join_path

FNAMECMP_FUZZY = 0x83  # rsync.h: the basis is a fuzzy match; + i for the i-th fuzzy dir
UNIT = 1 << 16  # one Levenshtein edit (util1.c)
MAX_DIST = 25 << 16  # find_fuzzy: a greater distance is ignored
_NO_MATCH = 0xFFFF * UNIT + 1


def find_filename_suffix(name: bytes) -> bytes:
    """The most significant suffix of ``name``: ``.bak``, ``.old``, ``.orig``, ``.~N~``, ``~`` skipped.

    As rsync compares ``.bak``/``.old``/``.orig`` with the rest of the whole
    name, they are only skipped at its very end (not before a ``~``).
    Source: rsync util1.c find_filename_suffix().
    """
    full = name.lstrip(b".")
    fn = full
    had_tilde = len(fn) > 1 and fn.endswith(b"~")
    if had_tilde:
        fn = fn[:-1]
    suf = b""
    end = len(fn)
    while end > 1:
        dot = fn.rfind(b".", 1, end)
        if dot <= 0:
            break
        s, rest = fn[dot:end], full[dot + 1 :]
        end = dot
        if (len(s) == 4 and rest in (b"bak", b"old")) or (len(s) == 5 and rest == b"orig"):
            continue
        if len(s) > 2 and had_tilde and s[1:2] == b"~" and s[2:3].isdigit():
            continue
        suf = s
        if len(s) == 1 or not s[1:].isdigit():
            return suf
        # an all-digit suffix may not be that significant: look further left
    return suf


def fuzzy_distance(s1: bytes, s2: bytes, upper: int) -> int:
    """rsync's Levenshtein distance in 1/65536 units, tweaked by the byte values (util1.c fuzzy_distance).

    Strings whose length difference alone exceeds ``upper`` get 0xFFFF units + 1.
    """
    len1, len2 = len(s1), len(s2)
    if abs(len1 - len2) * UNIT > upper:
        return _NO_MATCH
    if not len1 or not len2:
        rest = s1 or s2
        return len(rest) * UNIT + sum(b - 256 if b > 127 else b for b in rest)  # signed chars
    row = [(i + 1) * UNIT for i in range(len2)]
    for i1 in range(len1):
        c1 = s1[i1]
        diag, above = i1 * UNIT, (i1 + 1) * UNIT
        for i2 in range(len2):
            left = row[i2]
            cost = c1 - s2[i2]
            if cost:
                cost = UNIT - cost if cost < 0 else UNIT + cost
            diag_inc = diag + cost
            left_inc = left + UNIT + c1
            above_inc = above + UNIT + s2[i2]
            above = min(left_inc, diag_inc) if left < above else min(above_inc, diag_inc)
            row[i2] = above
            diag = left
    return row[-1]


class FuzzyFinder:
    """The generator's fuzzy dir listings, one directory at a time (recv_generator fuzzy_dirlist)."""

    def __init__(self, state: PushState) -> None:
        self.state = state
        self.levels = 1 + (len(state.alt_dirs) if state.opts.fuzzy > 1 else 0)
        self._dir: bytes | None = None
        self._lists: list[list[tuple[bytes, os.stat_result]]] | None = None
        self._sent: set[bytes] = set()

    def find(self, entry: FileEntry, path: bytes) -> AltBasis | None:
        """The basis for missing file ``path`` (fnamecmp_type, module path, lstat), or None.

        Source: rsync generator.c find_fuzzy(): an exact size and mtime match
        first, else the lowest distance (the last of equals wins).
        """
        lists = self._listings(path)
        for i, listing in enumerate(lists):
            for name, st in listing:
                if st.st_size == entry.size and int(st.st_mtime) == entry.mtime:
                    return AltBasis(FNAMECMP_FUZZY + i, self._basis(i, path, name), st)
        fname = entry.name.rpartition(b"/")[2]
        fname_suf = find_filename_suffix(fname)
        lowest, found = MAX_DIST, None
        for i, listing in enumerate(lists):
            for name, st in listing:
                dist = fuzzy_distance(name, fname, lowest)
                if dist < 0xFFFF0000:
                    dist += fuzzy_distance(find_filename_suffix(name), fname_suf, 0xFFFF0000) * 10
                if dist <= lowest:
                    lowest, found = dist, AltBasis(FNAMECMP_FUZZY + i, self._basis(i, path, name), st)
        return found

    def mark_sent(self, path: bytes) -> None:
        """A file of the listed dir is about to change: no longer a basis (FLAG_FILE_SENT)."""
        parent, _, name = path.rpartition(b"/")
        if self._lists is not None and (parent or b".") == self._dir:
            self._sent.add(name)
            self._lists[0] = [item for item in self._lists[0] if item[0] != name]

    def _basis(self, level: int, path: bytes, name: bytes) -> bytes:
        parent = path.rpartition(b"/")[0] or b"."
        if level == 0:
            return join_path(parent, name)
        return join_path(alt_path(self.state, level - 1, parent), name)

    def _listings(self, path: bytes) -> list[list[tuple[bytes, os.stat_result]]]:
        parent = path.rpartition(b"/")[0] or b"."
        if self._lists is None or self._dir != parent:
            self._dir, self._sent = parent, set()
            dirs = [parent] + [alt_path(self.state, i, parent) for i in range(self.levels - 1)]
            self._lists = [self._regular_files(d) for d in dirs]
        return self._lists

    def _regular_files(self, directory: bytes) -> list[tuple[bytes, os.stat_result]]:
        """Non-empty regular files of ``directory`` in file-list order (get_dirlist, no filters)."""
        try:
            found = self.state.tree.scan_dir(directory)
        except StorageError:
            return []
        items = [(n, st) for n, st in (found or {}).items() if stat.S_ISREG(st.st_mode) and st.st_size]
        items.sort(key=lambda item: sort_key(item[0], False))
        return items
