"""Whether a module's catalog can be trusted at start without walking the tree.

A full reconcile (``reconcile.py``) walks the live tree and every history
day folder: on a large module that is the whole start-up time. It is only
needed when something may have changed the tree without its catalog rows
being committed. Two records tell:

- **Writer marks**: every writer of the tree (a push session's
  ``CatalogWriter``, a prune pass) creates a file
  ``<catalog folder>/writers/<pid>-<random>`` before its first change to
  the tree and removes it after its last batch is committed. A mark left
  behind is a writer that was killed (or whose catalog failed): its last
  batch may be lost.
- **The daemon's state** (catalog meta ``daemon``): ``running`` from the
  moment ``serve`` has reconciled at start, ``clean`` once it stopped
  cleanly (after its sessions ended). A SIGKILLed daemon leaves ``running``;
  a catalog made before this record, or a module whose catalog was off
  for a while (no ``clean`` written then), has none.

``start_check`` gives the reason for a full reconcile, or None when the
state is ``clean`` and no mark is left: the catalog is then exactly as
the last committed batch left it and the walk is skipped. Changes made
to a module by hand while the daemon was down are not seen then;
``backupd history reindex MODULE`` walks on demand.

Source: issue 12 ("reconcile at start ... incremental").
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backupd.process import pid_alive

STATE_KEY = "daemon"
RUNNING, CLEAN = "running", "clean"
MARKS = "writers"
MAX_MARKS_LISTED = 10_000   # a folder with more is not read further (a full reconcile anyway)


def marks_dir(db_path: Path | str) -> Path:
    """The folder of writer marks beside the catalog database ``db_path``."""
    return Path(db_path).parent / MARKS


def open_mark(db_path: Path | str) -> Path:
    """Create this writer's mark (before its first change to the tree); returns its path.

    Raises:
        OSError: the catalog folder cannot be written.
    """
    folder = marks_dir(db_path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    return path


def close_mark(path: Path) -> None:
    """Remove a mark: its writer's every change is committed in the catalog."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextmanager
def writer_mark(db_path: Path | str | None) -> Iterator[None]:
    """A mark held while the body runs; left in place when the body raises (or the process dies)."""
    if db_path is None:
        yield
        return
    mark = open_mark(db_path)
    yield
    close_mark(mark)


def left_marks(db_path: Path | str) -> list[Path]:
    """Marks of writers that did not finish (at most MAX_MARKS_LISTED)."""
    folder = marks_dir(db_path)
    found: list[Path] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                found.append(Path(entry.path))
                if len(found) >= MAX_MARKS_LISTED:
                    break
    except FileNotFoundError:
        pass
    return found


def start_check(db_path: Path | str, state: str | None) -> str | None:
    """Why the catalog at ``db_path`` needs a full reconcile, or None when it can be trusted.

    Args:
        db_path: the module's catalog database.
        state: its meta ``daemon`` value (None when absent).
    """
    if not Path(db_path).exists():
        return "no catalog yet"
    if state != CLEAN:
        return "the daemon did not stop cleanly" if state == RUNNING else "no clean-shutdown record"
    marks = left_marks(db_path)
    if marks:
        return f"{len(marks)} writer(s) did not finish (e.g. pid {marks[0].name.split('-', 1)[0]})"
    return None


def clear_dead_marks(db_path: Path | str) -> int:
    """After a full reconcile: remove the marks of writers no longer running; returns how many."""
    removed = 0
    for mark in left_marks(db_path):
        pid_text = mark.name.split("-", 1)[0]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue
        close_mark(mark)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own marks at start are a previous process's with a reused pid
    return pid_alive(pid)


__all__ = ["CLEAN", "RUNNING", "STATE_KEY", "clear_dead_marks", "close_mark", "left_marks", "marks_dir",
           "open_mark", "start_check", "writer_mark"]
