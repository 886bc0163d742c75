"""ModuleTree reading, attributes, errors, basis files and rsync temp names."""

from __future__ import annotations

import errno
import os
import re
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.errors import StorageError
from backupd.storage import ModuleTree
from backupd.storage.fsops import fs_errors, temp_name


def test_lstat_and_missing_cases(plain_tree, root):
    (root / "d").mkdir()
    (root / "f").write_bytes(b"abc")
    os.symlink("nowhere", root / "dangling")
    assert plain_tree.lstat(b"f").st_size == 3
    assert stat.S_ISDIR(plain_tree.lstat(b".").st_mode)
    assert stat.S_ISDIR(plain_tree.lstat(b"").st_mode)
    assert stat.S_ISLNK(plain_tree.lstat(b"dangling").st_mode)
    assert plain_tree.lstat(b"missing") is None
    assert plain_tree.lstat(b"missing/x") is None
    assert plain_tree.lstat(b"f/x") is None  # parent is not a directory
    assert plain_tree.lstat(b"d/missing") is None


def test_listdir_readlink(plain_tree, root):
    (root / "d").mkdir()
    for name in ["a", "b", "\udcff-raw"]:
        (root / "d" / name).write_bytes(b"")
    os.symlink(b"target/\xff", os.fsencode(root / "d" / "ln"))
    assert sorted(plain_tree.listdir(b"d")) == sorted([b"a", b"b", b"\xff-raw", b"ln"])
    assert sorted(plain_tree.listdir(b".")) == [b"d"]
    assert plain_tree.readlink(b"d/ln") == b"target/\xff"


def test_os_errors_become_storage_errors_naming_module_and_path(plain_tree, root):
    (root / "dir").mkdir()
    (root / "dir" / "f").write_bytes(b"")
    cases = [
        (lambda: plain_tree.listdir(b"nope"), b"nope", errno.ENOENT),
        (lambda: plain_tree.readlink(b"dir/f"), b"dir/f", errno.EINVAL),
        (lambda: plain_tree.mkdir(b"dir", 0o755), b"dir", errno.EEXIST),
        (lambda: plain_tree.mkdir(b"no/sub", 0o755), b"no/sub", errno.ENOENT),
        (lambda: plain_tree.create_staged(b"no/f", 0o644), b"no/f", errno.ENOENT),
        (lambda: plain_tree.set_attrs(b"dir/missing", mode=0o644), b"dir/missing", errno.ENOENT),
        (lambda: plain_tree.makedirs(b"dir/f/x", 0o755), b"dir/f/x", errno.ENOTDIR),
        (lambda: plain_tree.symlink(b"a\0b", b"dir/s"), b"dir/s", errno.EINVAL),
    ]
    for call, path, code in cases:
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.errno == code
        assert info.value.path == path
        prefix = f"module backup: {path.decode()}: "
        assert str(info.value) == prefix + os.strerror(code) or (
            code == errno.EINVAL and str(info.value).startswith(prefix))


def test_fs_errors_converts_os_errors_only():
    with pytest.raises(StorageError) as info, fs_errors("backup", b"d/f"):
        os.stat(b"/nonexistent/\xff")
    assert (info.value.errno, info.value.path, type(info.value.__cause__)) == (errno.ENOENT, b"d/f", FileNotFoundError)
    with pytest.raises(KeyError), fs_errors("backup", b"d/f"):  # anything else passes through as it is
        raise KeyError("x")
    with fs_errors("backup", b"d/f"):
        pass  # nothing raised, nothing to convert


def test_missing_root_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="module m: .*No such file"):
        ModuleTree(tmp_path / "nope", module="m")


def test_mkdir_makedirs(plain_tree, root):
    plain_tree.mkdir(b"a", 0o750)
    assert (root / "a").is_dir()
    plain_tree.mkdir(b"a", 0o750, exist_ok=True)
    plain_tree.makedirs(b"a/b/c/d", 0o755)
    plain_tree.makedirs(b"a/b/c/d", 0o755)  # existing dirs are fine
    assert (root / "a" / "b" / "c" / "d").is_dir()
    (root / "file").write_bytes(b"")
    with pytest.raises(StorageError):
        plain_tree.mkdir(b"file", 0o755, exist_ok=True)


def test_set_attrs_on_file_dir_symlink_and_root(plain_tree, root):
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"x")
    os.symlink("f", root / "d" / "ln")
    plain_tree.set_attrs(b"d/f", mode=0o100604, mtime_ns=1_500_000_000_123_456_789)
    plain_tree.set_attrs(b"d", mode=0o711, mtime_ns=2_000_000_000_000_000_000)
    plain_tree.set_attrs(b"d/ln", mode=0o600, mtime_ns=3_000_000_000)
    plain_tree.set_attrs(b".", mode=0o705, mtime_ns=4_000_000_000)
    f, d, ln, top = (os.lstat(p) for p in (root / "d" / "f", root / "d", root / "d" / "ln", root))
    assert (stat.S_IMODE(f.st_mode), f.st_mtime_ns) == (0o604, 1_500_000_000_123_456_789)
    assert (stat.S_IMODE(d.st_mode), d.st_mtime_ns) == (0o711, 2_000_000_000_000_000_000)
    assert ln.st_mtime_ns == 3_000_000_000 and stat.S_ISLNK(ln.st_mode)
    assert f.st_mtime_ns != 3_000_000_000  # the link's target untouched
    assert (stat.S_IMODE(top.st_mode), top.st_mtime_ns) == (0o705, 4_000_000_000)


def test_set_attrs_leaves_unset_values_alone(plain_tree, root):
    (root / "f").write_bytes(b"x")
    os.chmod(root / "f", 0o640)
    os.utime(root / "f", ns=(5, 5_000_000_000))
    plain_tree.set_attrs(b"f")
    plain_tree.set_attrs(b"f", mode=0o600)
    assert os.stat(root / "f").st_mtime_ns == 5_000_000_000
    plain_tree.set_attrs(b"f", mtime_ns=7_000_000_000)
    assert stat.S_IMODE(os.stat(root / "f").st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_owner_changes_as_root_on_file_and_symlink(plain_tree, root):
    (root / "f").write_bytes(b"x")
    os.symlink("f", root / "ln")
    plain_tree.set_attrs(b"f", uid=1234, gid=2345)
    plain_tree.set_attrs(b"ln", uid=3456, gid=4567)
    assert (os.stat(root / "f").st_uid, os.stat(root / "f").st_gid) == (1234, 2345)
    assert (os.lstat(root / "ln").st_uid, os.lstat(root / "ln").st_gid) == (3456, 4567)


def test_owner_change_is_skipped_and_failures_ignored_as_non_root(plain_tree, root, monkeypatch):
    (root / "f").write_bytes(b"x")
    before = os.stat(root / "f")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    real_chown = os.chown
    calls = []

    def failing_chown(*args, **kwargs):
        calls.append(args)
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "chown", failing_chown)
    plain_tree.set_attrs(b"f", uid=1234, gid=before.st_gid + 1, mode=0o600)
    assert calls and all(args[1] == -1 for args in calls)  # never the owner as non-root
    monkeypatch.setattr(os, "chown", real_chown)
    after = os.stat(root / "f")
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert stat.S_IMODE(after.st_mode) == 0o600


def _mapped_kib(path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_a_basis_read_piece_by_piece_releases_its_pages_every_release_every_bytes(plain_tree, root, monkeypatch):
    """What the generator's sums of a GB file do: the mapped pages stay bounded, one release per RELEASE_EVERY."""
    from backupd.storage import staging

    every, piece, size = 2 << 20, 512 << 10, 16 << 20
    monkeypatch.setattr(staging, "RELEASE_EVERY", every)
    data = os.urandom(size)
    (root / "big").write_bytes(data)
    releases = []
    real_release = staging.Basis.release
    monkeypatch.setattr(staging.Basis, "release", lambda self: (releases.append(1), real_release(self)))
    with plain_tree.open_basis(b"big") as basis:
        whole = basis.view(0, basis.size)  # counted at once: one release before anything is read
        peak = 0
        for off in range(0, basis.size, piece):
            assert whole[off : off + piece] == data[off : off + piece]  # faults the piece in
            if (off + piece) % every == 0:  # the most is mapped just before a release
                peak = max(peak, _mapped_kib(root / "big"))
            basis.read_through(piece)
        del whole
        assert len(releases) == 1 + size // every
        # what was read since the last release, plus a fault that maps a whole large folio (up to 2 MiB)
        assert peak <= (every >> 10) + (2 << 10) < size >> 10


def test_open_basis_views(plain_tree, root):
    data = bytes(range(256)) * 1000
    (root / "f").write_bytes(data)
    (root / "empty").write_bytes(b"")
    (root / "d").mkdir()
    os.mkfifo(root / "fifo")
    with plain_tree.open_basis(b"f") as basis:
        assert basis.size == len(data)
        assert bytes(basis.view(0, 10)) == data[:10]
        assert bytes(basis.view(1000, 5000)) == data[1000:6000]
        assert bytes(basis.view(len(data) - 7, 7)) == data[-7:]
        assert bytes(basis.view(len(data), 0)) == b""
        for offset, length in [(-1, 1), (0, len(data) + 1), (len(data), 1), (5, -1)]:
            with pytest.raises(ValueError):
                basis.view(offset, length)
        kept = basis.view(0, 4)
    assert bytes(kept) == data[:4]  # a view outliving close() stays valid
    with plain_tree.open_basis(b"empty") as basis:
        assert basis.size == 0 and bytes(basis.view(0, 0)) == b""
    for path in [b"d", b"fifo", b"missing", b"missing/x", b"f/x", b"."]:
        assert plain_tree.open_basis(path) is None


TMP_RE = re.compile(rb"\.(.*)\.([A-Za-z0-9]{6})\Z", re.DOTALL)


@pytest.mark.parametrize(
    ("basename", "core"),
    [
        (b"foo", b"foo"),
        (b".foo", b"foo"),  # leading dot not doubled
        (b"foo.", b"foo"),  # one trailing dot dropped
        (b"foo..", b"foo."),
        (b"a" * 246, b"a" * 246),
        (b"a" * 300, b"a" * 246),
        # the cut hits a high-bit byte: every trailing high-bit byte goes, whole chars too
        (b"a" * 244 + "é".encode() * 3, b"a" * 244),
        (b"a" * 245 + "é".encode() * 3, b"a" * 245),  # cut inside: dangling byte dropped
        (b"a" * 245 + b".b" + b"c" * 9, b"a" * 245),  # cut leaves a trailing dot: dropped
    ],
)
def test_temp_name_follows_rsync(basename, core):
    name = temp_name(basename)
    match = TMP_RE.match(name)
    assert match and match.group(1) == core
    assert len(name) <= 255


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300).filter(lambda b: b"/" not in b and b"\0" not in b))
def test_temp_names_fit_and_are_distinct(basename):
    names = {temp_name(basename) for _ in range(3)}
    assert all(len(n) <= 255 and n.startswith(b".") and b"/" not in n for n in names)
    assert len(names) >= 2  # 62**6 suffixes: equal draws are a bug


def test_scan_dir_skips_entries_that_vanish_while_it_reads(tmp_path, monkeypatch):
    """Regression: a temp file renamed away between readdir and stat made the scan fail (ENOENT)."""
    import os

    from backupd.storage import ModuleTree
    from backupd.storage import tree as tree_mod

    (tmp_path / "keep").write_bytes(b"k")
    (tmp_path / ".gone.ABCDEF").write_bytes(b"g")
    real_scandir = os.scandir

    class ListedThenRemoved:
        """Every entry read from the directory first; then one is renamed away before its stat."""

        def __init__(self, fd):
            with real_scandir(fd) as it:
                self.entries = list(it)
            os.unlink(tmp_path / ".gone.ABCDEF")

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    def scandir_then_remove(fd):
        return ListedThenRemoved(fd)

    monkeypatch.setattr(tree_mod.os, "scandir", scandir_then_remove)
    with ModuleTree(tmp_path) as tree:
        scan = tree.scan_dir(b".")
    assert set(scan) == {b"keep"}
