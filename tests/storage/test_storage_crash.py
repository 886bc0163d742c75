"""SIGKILL during a commit: the target is the old or the new file, never torn, never lost.

A forked child stages a file and commits it; it is SIGKILLed either by a hook
on the n-th filesystem call of the commit (every n, so every step of the
sequence is hit) or from outside after a random delay during a 64 MiB commit.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import sys
import time
import traceback
from pathlib import Path

import pytest

from backupd.storage import HistoryStore, ModuleTree

OLD = b"old version\n" * 50_000
OLD_MODE, OLD_MTIME = 0o600, 1_600_000_000_123_456_789
NEW_MODE, NEW_MTIME = 0o640, 1_700_000_000_000_000_001
TARGET = "dir/big.bin"
HOOKED = ("open", "close", "write", "fsync", "fchmod", "chmod", "utime", "chown", "link",
          "rename", "unlink", "rmdir", "mkdir", "sendfile", "stat", "fstat")


def new_content(size: int) -> bytes:
    return (b"NEW" + bytes(range(256)) + b"\n") * (size // 260) + b"!" * (size % 260)


def setup_module_dir(root: Path, old_is_dir: bool) -> None:
    shutil.rmtree(root, ignore_errors=True)
    (root / "dir").mkdir(parents=True)
    target = root / TARGET
    if old_is_dir:
        (target / "inner").mkdir(parents=True)
        (target / "inner" / "f").write_bytes(OLD)
        return
    target.write_bytes(OLD)
    os.chmod(target, OLD_MODE)
    os.utime(target, ns=(OLD_MTIME, OLD_MTIME))


def child(root: Path, size: int, kill_at: int, no_link: bool, report_fd: int) -> None:
    """Runs in the forked child; never returns."""
    try:
        calls = [0]

        def hook(real):
            def call(*args, **kwargs):
                calls[0] += 1
                if calls[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)
            return call

        data = memoryview(new_content(size))
        with ModuleTree(root, module="crash", history=HistoryStore()) as tree:
            staged = tree.create_staged(TARGET.encode(), 0o644)
            for start in range(0, size, 1 << 20):
                staged.write(data[start : start + (1 << 20)])
            if no_link:
                os.link = _no_cross_dir_link(os.link)
            real_write = os.write
            if kill_at:
                for name in HOOKED:
                    setattr(os, name, hook(getattr(os, name)))
            real_write(report_fd, b"c")  # about to commit
            staged.commit(mtime_ns=NEW_MTIME, mode=NEW_MODE)
        real_write(report_fd, b"%d" % calls[0])
        os._exit(0)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)


def _no_cross_dir_link(real):
    def link(src, dst, *, src_dir_fd=None, dst_dir_fd=None, **kwargs):
        if src_dir_fd != dst_dir_fd:
            raise OSError(18, "Invalid cross-device link")
        return real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, **kwargs)
    return link


def run(root: Path, size: int, kill_at: int = 0, no_link: bool = False,
        delay_s: float | None = None) -> tuple[int, bytes]:
    """Fork a committing child; return (wait status, what it reported)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        child(root, size, kill_at, no_link, write_fd)
    os.close(write_fd)
    report = os.read(read_fd, 1)  # "c": commit starts now
    if delay_s is not None:
        time.sleep(delay_s)
        os.kill(pid, signal.SIGKILL)
    while chunk := os.read(read_fd, 64):
        report += chunk
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    return status, report


def check_outcome(root: Path, size: int, old_is_dir: bool) -> str:
    """Assert the crash invariants; return "old", "new" or "moved"."""
    target = root / TARGET
    history = list((root / "history-backup").glob("*/dir/big.bin*"))
    if old_is_dir:
        kept_dirs = [p for p in history if (p / "inner" / "f").is_file()]
        for kept in history:
            assert (kept / "inner" / "f").read_bytes() == OLD
        if target.is_dir():
            assert (target / "inner" / "f").read_bytes() == OLD
            return "old"
        assert kept_dirs, "old directory lost"
        if not target.exists():
            return "moved"
        assert target.read_bytes() == new_content(size)
        return "new"
    for kept in history:  # every version in history is the old file, whole
        st = kept.stat()
        assert kept.read_bytes() == OLD
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (OLD_MODE, OLD_MTIME)
    content = target.read_bytes()
    if content == OLD:
        st = target.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (OLD_MODE, OLD_MTIME)
        return "old"
    assert content == new_content(size), "torn target"
    st = target.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (NEW_MODE, NEW_MTIME)
    assert history, "new version in place but the old one is not in history"
    return "new"


@pytest.mark.parametrize(("no_link", "old_is_dir"), [(False, False), (True, False), (False, True)],
                         ids=["link", "copy-fallback", "old-is-dir"])
def test_kill_at_every_step_of_commit(tmp_path, no_link, old_is_dir):
    root, size = tmp_path / "module", 300_000
    setup_module_dir(root, old_is_dir)
    status, report = run(root, size, kill_at=-1, no_link=no_link)  # count the calls
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report
    total = int(report[1:])
    assert check_outcome(root, size, old_is_dir) == "new"
    outcomes = set()
    for kill_at in range(1, total + 1):
        setup_module_dir(root, old_is_dir)
        status, _ = run(root, size, kill_at=kill_at, no_link=no_link)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        outcomes.add(check_outcome(root, size, old_is_dir))
    assert "old" in outcomes and "new" in outcomes  # the kills did span the commit


def test_kill_at_random_moments_of_a_large_commit(tmp_path):
    root, size = tmp_path / "module", 64 << 20
    setup_module_dir(root, old_is_dir=False)
    started = time.monotonic()
    status, _ = run(root, size)
    commit_s = time.monotonic() - started
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert check_outcome(root, size, old_is_dir=False) == "new"
    rng = random.Random(20240517)
    for _ in range(8):
        setup_module_dir(root, old_is_dir=False)
        status, _ = run(root, size, delay_s=rng.uniform(0, commit_s * 1.2))
        check_outcome(root, size, old_is_dir=False)
