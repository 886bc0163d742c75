"""A client that gives up while it sends its file list (MSG_ERROR_EXIT) ends the
session at once, as with stock rsyncd: same exit code and message, no hang.
"""

from __future__ import annotations

import time

import pytest

from tests.interop.conftest import show

VERSIONS = ("3.5.0", "3.2.7")


@pytest.fixture(params=VERSIONS, ids=[f"c{v}" for v in VERSIONS])
def client(request, rsync_clients):
    return rsync_clients[request.param]


def test_client_error_exit_during_the_file_list_ends_the_session(make_targets, client, tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f").write_text("f\n")
    results = {}
    for kind, target in make_targets(params={"history": False}).items():
        started = time.monotonic()
        done = target.push(client, "-aR", "src/./a/../a", cwd=tmp_path, timeout=30)
        results[kind] = (done, time.monotonic() - started)
    (theirs, _), (mine, elapsed) = results["rsyncd"], results["backupd"]
    assert mine.returncode == theirs.returncode != 0, (show(theirs), show(mine))
    assert mine.stderr.splitlines()[0] == theirs.stderr.splitlines()[0], (show(theirs), show(mine))
    assert elapsed < 5, f"the client waited {elapsed:.1f} s for backupd"
