"""What a push's receiving side says at -vv, as far as the module's ``max verbosity`` allows.

rsyncd caps the client's -v count at the module's ``max verbosity`` (default
1) once the server args are parsed (clientserver.c rsync_module,
options.c limit_output_verbosity), so by default a -vv push hears no more
than a -v one. At level 2 the receiving side adds (options.c
info_verbosity / debug_verbosity):

- DEBUG FLIST: ``delta-transmission enabled`` (or ``disabled for local
  transfer or --whole-file``) as the generator starts (generate_files);
- INFO BACKUP: ``(new) backup_dir is DIR`` before the transfer (main.c
  do_recv) and ``backed up NAME to BACKUP`` for each version ``--backup``
  keeps (backup.c make_backup_inner, generator.c for ``--inplace``);
- INFO NAME2: ``NAME is uptodate`` for an entry whose attributes needed no
  change (rsync.c set_file_attrs with ATTRS_REPORT, not with -i).

All go to the client as MSG_INFO.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def server_verbosity(verbose: int, max_verbosity: int) -> int:
    """The -v level rsyncd's receiving side works at: the client's, capped by the module."""
    return max(0, min(verbose, max_verbosity))


def delta_line(whole_file: bool) -> bytes:
    """generator.c generate_files' DEBUG FLIST line (``--append`` never disables deltas)."""
    how = "disabled for local transfer or --whole-file" if whole_file else "enabled"
    return f"delta-transmission {how}\n".encode()


def backup_dir_shown(raw: bytes, clean: bytes, module_path: str) -> bytes:
    """``--backup-dir`` as rsync's receiver names it (options.c sanitize_path, backup_dir_buf).

    ``raw`` as the client gave it, ``clean`` sanitized (``./`` and a leading
    ``..`` dropped, push.sanitize_path). Relative: ``clean``; absolute: below
    the module's path. No trailing slash.
    """
    clean = clean.rstrip(b"/")
    if raw.startswith(b"/"):
        return os.fsencode(module_path).rstrip(b"/") + b"/" + clean
    return clean or b"."


def backup_dir_line(shown: bytes, exists: bool) -> bytes:
    """main.c do_recv: ``backup_dir is DIR``, ``(new) ...`` when it is still to be made."""
    return (b"" if exists else b"(new) ") + b"backup_dir is " + shown + b"\n"


class BackupReporter:
    """``backed up NAME to BACKUP`` lines for a BackupPolicy (backup.c make_backup_inner).

    Called with the module components of each entry kept; NAME is relative
    to the destination dir (``base``), BACKUP is ``DIR/NAME+suffix`` with a
    backup dir (``dir_shown``), else ``NAME+suffix``. ``send`` takes the
    line. A thread may ``hold()`` its lines and ``take()`` them later
    (deletions report each after the whole tree is gone, interleaved).
    """

    def __init__(self, send: Callable[[bytes], None], base: tuple[bytes, ...], suffix: bytes,
                 dir_shown: bytes | None) -> None:
        self.send = send
        self.base = base
        self.suffix = suffix
        self.dir_shown = dir_shown
        self._held = threading.local()

    def __call__(self, comps: tuple[bytes, ...]) -> None:
        """One kept version of module entry ``comps``."""
        rel = comps[len(self.base):] if comps[: len(self.base)] == self.base else comps
        name = b"/".join(rel)
        backup = (self.dir_shown + b"/" if self.dir_shown is not None else b"") + name + self.suffix
        line = b"backed up " + name + b" to " + backup + b"\n"
        held = getattr(self._held, "lines", None)
        if held is None:
            self.send(line)
        else:
            held.append((comps, line))

    def hold(self) -> None:
        """Keep this thread's lines until ``take``."""
        self._held.lines = []

    def take(self) -> list[tuple[tuple[bytes, ...], bytes]]:
        """This thread's held (components, line) pairs, in order; lines go out directly again."""
        lines = getattr(self._held, "lines", None) or []
        self._held.lines = None
        return lines
