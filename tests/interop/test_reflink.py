"""Reflinked deltas: a version made from a delta shares the basis's extents with its history ancestor.

On a loop-mounted XFS (``reflink=1``, tests/xattr_fs.py ``reflink_base``)
stock rsyncd and backupd each get the same module; a file is pushed, edited
in place at a few offsets and pushed again as a delta. Stock rsyncd is the
oracle for everything the client sees and for the resulting file; on top of
that the backupd version and its history ancestor must share most of their
physical extents (FIEMAP), and both must read back byte-identical to what
was pushed. On a file system without reflinks (tmp on ext4: every other
test) the same code copies, which the rest of the suite covers.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

import pytest

from backupd.storage.reflink import clone_align
from backupd.storage.staging import Basis
from backupd.storage.tree import ModuleTree
from tests import xattr_fs
from tests.interop.conftest import MODULE, _start_backupd, parse_stats, show, write_random

reflink_base = xattr_fs.reflink_base  # fixture

SIZE = 24 << 20  # sqrt block length 5016 (rsync), aligned to 8192 by backupd
EDITS = (3 << 20, 11 << 20, (17 << 20) + 123)  # in-place edits: the offsets of the rest stay
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_LAST = 0x1
_HEAD = struct.Struct("=QQLLLL")
_EXTENT = struct.Struct("=QQQQQLLLL")


def physical_extents(path: Path) -> list[tuple[int, int]]:
    """(physical offset, length) of every extent of ``path`` (FIEMAP, synced first), bytes."""
    out: list[tuple[int, int]] = []
    start = 0
    with open(path, "rb") as f:
        for _ in range(10_000):  # bounded: at most 10,000 x 512 extents
            count = 512
            buf = bytearray(_HEAD.pack(start, (1 << 64) - 1 - start, 1, 0, count, 0) + bytes(_EXTENT.size * count))
            fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
            mapped = _HEAD.unpack_from(buf)[3]
            if not mapped:
                return out
            for i in range(mapped):
                logical, physical, length, _, _, flags, *_ = _EXTENT.unpack_from(buf, _HEAD.size + i * _EXTENT.size)
                out.append((physical, length))
                start = logical + length
                if flags & FIEMAP_EXTENT_LAST:
                    return out
    return out


def shared_bytes(a: Path, b: Path) -> int:
    """Bytes of ``a``'s extents that are also ``b``'s (physical overlap)."""
    theirs = sorted(physical_extents(b))
    total = 0
    for pa, la in physical_extents(a):
        for pb, lb in theirs:
            total += max(0, min(pa + la, pb + lb) - max(pa, pb))
    return total


@pytest.fixture
def modules(reflink_base, request):
    base = reflink_base / request.node.name.replace("[", "-").replace("]", "")
    out = {}
    for kind in ("rsyncd", "backupd"):
        path = base / kind / MODULE
        path.mkdir(parents=True)
        out[kind] = path
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")
def test_delta_version_shares_extents_with_its_history_ancestor(
    modules, stock_rsyncd, backupd_server, rsync_clients, tmp_path
):
    src = tmp_path / "src"
    src.mkdir()
    big = write_random(src / "disk.img", SIZE, seed=7)
    os.utime(big, (1_700_000_000, 1_700_000_000))
    old = big.read_bytes()
    servers = {
        "rsyncd": stock_rsyncd({MODULE: {"path": modules["rsyncd"], "read only": False}}),
        "backupd": _start_backupd(
            backupd_server, modules["backupd"].parent, {MODULE: {"path": modules["backupd"], "read only": False}}, None
        ),
    }
    client = rsync_clients["3.5.0"]
    for server in servers.values():
        first = client.run("-a", f"{src}/", server.url(MODULE))
        assert first.returncode == 0, show(first)
    with open(big, "r+b") as f:
        for at in EDITS:
            f.seek(at)
            f.write(b"edited!" * 100)
    os.utime(big, (1_700_000_100, 1_700_000_100))
    new = big.read_bytes()
    done = {kind: client.run("-ai", "--stats", f"{src}/", server.url(MODULE)) for kind, server in servers.items()}
    for kind in done:
        assert done[kind].returncode == 0, show(done[kind])
    itemized = {k: [ln for ln in d.stdout.splitlines() if ln.startswith("<f")] for k, d in done.items()}
    assert itemized["backupd"] == itemized["rsyncd"] == ["<f..t...... disk.img"]
    stats = {k: parse_stats(d.stdout) for k, d in done.items()}
    literal = {k: s["Literal data"] for k, s in stats.items()}
    assert literal["backupd"] <= max(2 * literal["rsyncd"], literal["rsyncd"] + (64 << 10)), literal

    live = modules["backupd"] / "disk.img"
    (ancestor,) = (modules["backupd"] / "history-backup").glob("*/disk.img*")
    assert live.read_bytes() == new == (modules["rsyncd"] / "disk.img").read_bytes()
    assert ancestor.read_bytes() == old
    shared = shared_bytes(live, ancestor)
    assert shared >= SIZE * 0.9, f"only {shared} of {SIZE} bytes shared"
    assert shared_bytes(modules["rsyncd"] / "disk.img", live) == 0  # sanity: separate copies share nothing
    assert "module mod: reflinked deltas on (4096-byte blocks" in servers["backupd"].log_path.read_text()


def test_clone_align_is_zero_where_the_file_system_cannot_clone(tmp_path):
    if xattr_fs.reflinks_ok(tmp_path):
        pytest.skip("tmp has reflinks")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert clone_align(fd) == 0
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == []  # the probe's files were anonymous


def test_refused_clone_falls_back_to_a_copy(tmp_path):
    """A staged file told to clone on a file system that cannot copies the same bytes instead."""
    if xattr_fs.reflinks_ok(tmp_path):
        pytest.skip("tmp has reflinks")
    basis_bytes = os.urandom(64 << 10)
    (tmp_path / "f").write_bytes(basis_bytes)
    tree = ModuleTree(tmp_path, module="m")
    try:
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        basis = Basis.open_at(fd, b"f")
        os.close(fd)
        staged = tree.create_staged(b"f", 0o644)
        staged.clone_align = 4096  # pretend: the kernel refuses at the first run
        staged.write(b"x" * 4096)
        for off in range(0, 32 << 10, 4096):
            staged.write_block(basis, off, basis.view(off, 4096))
        staged.write(b"tail")
        assert staged.tell() == 4096 + (32 << 10) + 4
        staged.commit(mtime_ns=None)
        basis.close()
    finally:
        tree.close()
    assert (tmp_path / "f").read_bytes() == b"x" * 4096 + basis_bytes[: 32 << 10] + b"tail"


@pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")
def test_unaligned_blocks_are_copied_and_aligned_runs_cloned(reflink_base, request):
    """Mixed writes on a reflink file system: content exact, aligned runs shared, one run per contiguous stretch."""
    base = reflink_base / request.node.name
    base.mkdir()
    data = os.urandom(1 << 20)
    (base / "f").write_bytes(data)
    tree = ModuleTree(base, module="m")
    try:
        assert tree.clone_align == 4096
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        basis = Basis.open_at(fd, b"f")
        os.close(fd)
        staged = tree.create_staged(b"g", 0o644)
        for off in range(0, 512 << 10, 8192):  # aligned, contiguous: one run
            staged.write_block(basis, off, basis.view(off, 8192))
        staged.write_block(basis, 100, basis.view(100, 5000))  # unaligned: copied
        staged.write(b"z" * (4096 * 2 - 5000))  # back to alignment
        staged.write_block(basis, 512 << 10, basis.view(512 << 10, 4096))
        staged.commit(mtime_ns=None)
        basis.close()
    finally:
        tree.close()
    want = data[: 512 << 10] + data[100:5100] + b"z" * (8192 - 5000) + data[512 << 10 : (512 << 10) + 4096]
    assert (base / "g").read_bytes() == want
    assert shared_bytes(base / "g", base / "f") >= (512 << 10) + 4096
