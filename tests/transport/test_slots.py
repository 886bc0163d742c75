"""``max connections`` slots: the listener's anonymous lock file, and the shared
temp-dir file that a local user must not be able to plant or hold.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from backupd.config.model import ModuleConfig
from backupd.transport.slots import anonymous_lock_file, claim_slot, open_private_lock


def module(limit: int) -> ModuleConfig:
    return ModuleConfig("m", Path("/m"), max_connections=limit)


def test_slots_of_the_anonymous_lock_file_are_shared_by_forked_sessions():
    lock = anonymous_lock_file()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a session holding the only slot
        try:
            os.write(ready_w, b"1" if claim_slot(module(1), 0, lock) is not None else b"0")
            time.sleep(30)  # killed by the parent
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        assert claim_slot(module(1), 0, lock) is None, "a second session got the only slot"
        assert claim_slot(module(2), 0, lock) == lock, "the second of two slots was refused"
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert claim_slot(module(1), 1, lock) == lock, "another module's slots are separate"
    os.close(lock)


def test_a_planted_symlink_is_not_followed(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious\n")
    link = tmp_path / "backupd.lock"
    link.symlink_to(target)
    with pytest.raises(OSError) as err:
        open_private_lock(link)
    assert err.value.errno == errno.ELOOP
    assert target.read_text() == "precious\n"


def test_a_lock_file_others_can_write_or_own_is_refused(tmp_path):
    path = tmp_path / "backupd.lock"
    path.write_bytes(b"")
    os.chmod(path, 0o666)
    with pytest.raises(PermissionError):
        claim_slot(module(1), 0, path)
    os.chmod(path, 0o600)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
        with pytest.raises(PermissionError):
            open_private_lock(path)
        os.chown(path, 0, 0)
    fd = claim_slot(module(1), 0, path)
    assert fd is not None and fd >= 0
    os.close(fd)
