"""copy_file_at: a copy kept as a version carries the original's xattrs and ACLs (issue 15.5)."""

from __future__ import annotations

import os

import posix1e
import pytest

from backupd.storage.fsops import copy_file_at


def _copy(tmp_path, src):
    fd = os.open(src, os.O_RDONLY)
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        copy_file_at(fd, dfd, b"copy")
    finally:
        os.close(fd)
        os.close(dfd)
    return tmp_path / "copy"


def test_copy_keeps_user_xattrs_mode_and_mtime(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"data\n")
    try:
        os.setxattr(src, b"user.note", b"kept with the version")
    except OSError as exc:
        pytest.skip(f"no user xattrs here: {exc}")
    os.chmod(src, 0o640)
    os.utime(src, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    dst = _copy(tmp_path, src)
    assert dst.read_bytes() == b"data\n"
    assert os.getxattr(dst, b"user.note") == b"kept with the version"
    assert dst.stat().st_mode & 0o7777 == 0o640
    assert dst.stat().st_mtime_ns == 1_700_000_000_123_456_789


def test_copy_keeps_the_access_acl(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"acl\n")
    os.chmod(src, 0o640)
    acl = posix1e.ACL(text="u::rw-,u:12345:r--,g::r--,m::r--,o::---")
    try:
        acl.applyto(os.fspath(src))
    except OSError as exc:
        pytest.skip(f"no ACLs here: {exc}")
    dst = _copy(tmp_path, src)
    assert posix1e.ACL(file=os.fspath(dst)).to_any_text() == posix1e.ACL(file=os.fspath(src)).to_any_text()
    assert "user:12345:r--" in posix1e.ACL(file=os.fspath(dst)).to_any_text().decode()
