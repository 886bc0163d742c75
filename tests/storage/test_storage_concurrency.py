"""Sessions replacing or deleting the same path at once lose no version.

Forked children (as the server's workers are) commit versions of one path
while others delete it; history's link step is slowed down so that the
sessions' steps interleave every time. Afterwards each version committed
without an error is live or in history.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

import pytest

from backupd.storage import HistoryStore, ModuleTree

TARGET = b"dir/f"
WRITERS, VERSIONS = 6, 8


def _slow_history(store: HistoryStore) -> None:
    """Make the gap between 'old entry linked into history' and the rename wide."""
    for name in ("preserve_entry", "move_entry"):
        real = getattr(store, name)

        def slow(*args, _real=real, **kwargs):
            out = _real(*args, **kwargs)
            time.sleep(0.01)
            return out

        setattr(store, name, slow)


def _writer(root: Path, n: int, report_fd: int, deleter: bool) -> None:
    try:
        store = HistoryStore()
        _slow_history(store)
        with ModuleTree(root, module="m", history=store) as tree:
            for v in range(VERSIONS):
                if deleter and v % 2:
                    tree.delete(TARGET)
                    continue
                data = b"writer %d version %d\n" % (n, v)
                with tree.create_staged(TARGET, 0o644) as staged:
                    staged.write(data)
                    staged.commit(mtime_ns=None)
                os.write(report_fd, data)
        os._exit(0)
    except BaseException:
        traceback.print_exc()
        os._exit(3)


def _all_files(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


@pytest.mark.parametrize("deleters", [0, 2], ids=["replace", "replace-and-delete"])
def test_concurrent_commits_lose_no_version(tmp_path, deleters):
    root = tmp_path / "module"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "f").write_bytes(b"seed\n")
    read_fd, write_fd = os.pipe()
    pids = []
    for n in range(WRITERS):
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _writer(root, n, write_fd, deleter=n < deleters)
        pids.append(pid)
    os.close(write_fd)
    committed = b""
    while chunk := os.read(read_fd, 4096):
        committed += chunk
    os.close(read_fd)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    versions = [line + b"\n" for line in committed.splitlines()] + [b"seed\n"]
    kept = _all_files(root)
    lost = [v for v in versions if v not in kept]
    assert lost == []
    assert sorted(kept) == sorted(versions)  # each exactly once, nothing torn
