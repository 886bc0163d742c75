"""File systems the tests need and /tmp may lack: big xattrs (ext4 holds user xattrs up to 4 KiB), reflinks.

``xattr_base`` (session fixture): ``$BACKUPD_XATTR_DIR`` if set; else the
pytest tmp dir if it takes such values; else, as root with ``mkfs.xfs``, a
loop-mounted XFS image (unmounted at the end of the session); else the test
is skipped (failed in CI). ``reflink_base``: the same for shared extents
(FICLONERANGE), on a loop XFS made with ``reflink=1``. Import a fixture into
a test module to use it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from backupd.storage.reflink import clone_align
from tests.helpers import unavailable

BIG = 6000  # bytes: over ext4's one-block limit


def big_values_ok(path: Path) -> bool:
    """True if a file under ``path`` takes a ``user.*`` value of BIG bytes."""
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, b"user.probe", b"x" * BIG)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.E2BIG, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ERANGE):
            return False
        raise
    finally:
        probe.unlink()


@pytest.fixture(scope="session")
def xattr_base(tmp_path_factory):
    """A fresh directory whose file system takes big ``user.*`` xattrs."""
    env = os.environ.get("BACKUPD_XATTR_DIR")
    if env:
        base = Path(env) / f"run-{os.getpid()}"
        base.mkdir(parents=True, exist_ok=True)
        yield base
        shutil.rmtree(base, ignore_errors=True)
        return
    tmp = tmp_path_factory.mktemp("xattr-fs")
    if big_values_ok(tmp):
        yield tmp
        return
    yield from _loop_xfs(tmp, "big xattrs", [])


def _loop_xfs(tmp: Path, what: str, mkfs_args: list[str]):
    """Yield a loop-mounted XFS (512 MiB image under ``tmp``), unmounted afterwards; skip (fail in CI) without."""
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        unavailable(f"no file system for {what}: tmp is not one, and no root + mkfs.xfs for a loop-mounted XFS")
    image, mnt = tmp / "xfs.img", tmp / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(512 << 20)
    made = subprocess.run(["mkfs.xfs", "-q", *mkfs_args, str(image)], capture_output=True, text=True, timeout=60)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, timeout=60
    ).returncode == 0
    if not mounted:
        unavailable(f"no file system for {what}: mkfs.xfs/mount failed: {made.stderr.strip()}")
    try:
        os.chmod(mnt, 0o755)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60)


def reflinks_ok(path: Path) -> bool:
    """True if files under ``path`` can share extents (FICLONERANGE works)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return clone_align(fd) > 0
    finally:
        os.close(fd)


@pytest.fixture(scope="session")
def reflink_base(tmp_path_factory):
    """A fresh directory on a file system with reflinks: tmp if it has them, else a loop XFS (reflink=1)."""
    tmp = tmp_path_factory.mktemp("reflink-fs")
    if reflinks_ok(tmp):
        yield tmp
        return
    yield from _loop_xfs(tmp, "reflinks", ["-m", "reflink=1"])


@pytest.fixture
def xattr_dir(xattr_base, request) -> Path:
    """A fresh directory per test under ``xattr_base``."""
    path = xattr_base / request.node.name.replace("/", "_").replace("[", "-").replace("]", "")[:80]
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path
