"""A killed session's temp file is not a version (issue 15.10).

A push killed mid-file leaves rsync's ``.NAME.XXXXXX`` (mode 0600, never
renamed) in the module. The next ``--delete`` push deletes it as rsyncd does
(same itemized lines, same tree); backupd deletes it for real instead of
keeping it in history. A file of the same shape that a client pushed is a
version, and still goes to history.
"""

from __future__ import annotations

import os

from tests.helpers import File, make_tree
from tests.interop.conftest import T0, show

TEMP = ".a.txt.Qx81Zp"  # what storage.fsops.create_temp leaves: rsync receiver.c get_tmpname()


def _leave_temp(module) -> None:
    """The state a SIGKILL during the data phase leaves: a partly written temp file, mode 0600."""
    fd = os.open(module / TEMP, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"half of the new a.t")
    os.close(fd)
    os.chmod(module / TEMP, 0o600)


def test_a_stale_temp_file_is_deleted_not_archived(make_targets, rsync_clients, tmp_path):
    client = rsync_clients["3.5.0"]
    src = make_tree(tmp_path / "src", {"a.txt": File("a\n", mtime=T0)})
    os.utime(src, (T0, T0))  # not "now": whether ./ is itemized must not hang on a second boundary
    lines = {}
    for kind, target in make_targets(seed={"a.txt": File("a\n", mtime=T0)}).items():
        _leave_temp(target.module)
        done = target.push(client, "-rti", "--delete", f"{src}/")
        assert done.returncode == 0, f"{kind}: {show(done)}"
        lines[kind] = sorted(done.stdout.splitlines())
        assert sorted(os.listdir(target.module)) in (["a.txt"], ["a.txt", "history-backup"]), kind
        if kind == "backupd":
            assert os.fsencode(TEMP) not in target.history_files(), "a temp file was kept as a version"
    assert f"*deleting   {TEMP}" in lines["rsyncd"]
    assert lines["backupd"] == lines["rsyncd"]


def test_a_pushed_file_shaped_like_a_temp_file_is_still_a_version(backupd_target, rsync_clients, tmp_path):
    client = rsync_clients["3.5.0"]
    src = make_tree(tmp_path / "src", {"a.txt": File("a\n", mtime=T0), TEMP: File("mine\n", mode=0o600, mtime=T0)})
    assert backupd_target.push(client, "-rtp", f"{src}/").returncode == 0
    os.unlink(src / TEMP)
    done = backupd_target.push(client, "-rtp", "--delete", f"{src}/")
    assert done.returncode == 0, show(done)
    assert not (backupd_target.module / TEMP).exists()
    assert backupd_target.versions(TEMP) == [b"mine\n"]
