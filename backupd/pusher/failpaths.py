r"""Which paths made an rsync run fail, from the error lines the client printed. Pure.

A run that exits 23 (some files were not transferred) names each failure on
a line of its own, with the path in double quotes, e.g.::

    ERROR: daemon refused to receive file "blocked.txt"
    rsync: [receiver] mkstemp "/d/.f.Xy12ab" (in mod) failed: Permission denied (13)
    rsync: [generator] recv_generator: mkdir "/mod/d" failed: File exists (17)
    rsync: [sender] send_files failed to open "/src/./d/f": Permission denied (13)
    rsync: [receiver] cannot write d/f: module mod: d/f: Operation not permitted   (backupd)

(rsync's ``rsyserr``/``rprintf(FERROR ...)`` calls, which quote the name
with ``full_fname()``: a path relative to the transfer's top, prefixed by
the module or the source directory, a temp file ``.NAME.XXXXXX`` in place
of ``NAME``, non-printable bytes as ``\#ooo``). :func:`failing_paths` maps
every such line to a path the caller knows (listed in the batch, present in
the source); if one line names no known path, the failure is not
identifiable and the caller treats the whole run as failed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

_QUOTED = re.compile(r'"([^"]*)"')
_OCTAL = re.compile(rb"\\#([0-7]{3})")
_TEMP = re.compile(rb"^\.(.+)\.[A-Za-z0-9]{6}$")
# lines that report no path of their own: the run's closing line, the note after a failed directory
_NO_PATH = ("rsync error: ", "*** Skipping any contents", "file has vanished: ")
# lines about the whole run (deletions skipped after an I/O error): not one path's failure
_WHOLE_RUN = ("IO error encountered", "cannot delete")


def _unescape(text: str) -> bytes:
    r"""rsync's ``\#ooo`` escapes (log.c, safe output of non-printable bytes) back to bytes."""
    raw = text.encode("utf-8", "surrogateescape")
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), raw)


def _suffixes(quoted: bytes) -> Iterable[bytes]:
    """``/mod/./a/b`` -> ``mod/a/b``, ``a/b``, ``b`` (longest first), a temp name as its file's first."""
    parts = [p for p in quoted.split(b"/") if p not in (b"", b".")]
    for i in range(len(parts)):
        rest = parts[i:]
        temp = _TEMP.match(rest[-1])
        if temp:  # the file a temp file was for, first
            yield b"/".join([*rest[:-1], temp.group(1)])
        yield b"/".join(rest)


def path_of(line: str, known: Callable[[bytes], bool]) -> bytes | None:
    """The known path one error line names (the longest matching suffix of a quoted name), or None.

    An ``rsync: [role]`` line without quotes falls back to its words
    (``cannot write d/f: ...``, a name without blanks printed unquoted).
    """
    names = list(reversed(_QUOTED.findall(line)))
    if not names and line.startswith("rsync: ["):
        names = [word.rstrip(":,;") for word in reversed(line.split()[2:])]
    for name in names:
        for candidate in _suffixes(_unescape(name)):
            if known(candidate):
                return candidate
    return None


def failing_paths(errors: Iterable[str], known: Callable[[bytes], bool]) -> dict[bytes, str] | None:
    """Map a failed run's error lines to the paths that failed.

    Args:
        errors: the run's error lines (``targets.error_lines``), in order.
        known: True for a path (relative to the source, no leading ``/``)
            the run could have failed on.

    Returns:
        ``{path: its last error line}``; None if no line names a path or one
        line (other than the closing ``rsync error:`` line) names none known.
    """
    found: dict[bytes, str] = {}
    for line in errors:
        if line.startswith(_NO_PATH):
            continue
        if line.startswith(_WHOLE_RUN):
            return None
        path = path_of(line, known)
        if path is None:
            return None
        found[path] = line
    return found or None


def in_batch(files: Iterable[bytes]) -> Callable[[bytes], bool]:
    """``known`` for a batch: a listed path, or one below a listed directory (sent with ``-r``)."""
    listed = set(files)

    def known(path: bytes) -> bool:
        if path in listed:
            return True
        while (cut := path.rfind(b"/")) > 0:
            path = path[:cut]
            if path in listed:
                return True
        return False

    return known
