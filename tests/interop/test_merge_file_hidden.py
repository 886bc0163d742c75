"""A merge file the module hides is never read on a pull (issue 15.10).

``--filter=':- secret.txt'`` makes the sender read ``secret.txt`` in each
directory; when the module's ``exclude`` hides it, rsyncd treats it as
missing (exclude.c parse_filter_file checks daemon_filter_list first), so
its lines cannot be probed through which files a pull then gets.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers import File
from tests.interop.conftest import T0, show


@pytest.mark.parametrize("rule", [":- secret.txt", "dir-merge secret.txt"])
def test_a_merge_file_hidden_by_the_module_is_not_read(make_targets, rsync_clients, tmp_path, rule):
    seed = {"a.txt": File("a\n", mtime=T0), "b.txt": File("b\n", mtime=T0),
            "secret.txt": File("- a.txt\n", mtime=T0),
            "d": {"a.txt": File("da\n", mtime=T0), "secret.txt": File("- a.txt\n", mtime=T0)}}
    got = {}
    for kind, target in make_targets(params={"exclude": "secret.txt"}, seed=seed).items():
        dst = tmp_path / kind
        done = rsync_clients["3.5.0"].run("-r", f"--filter={rule}", target.url(), f"{dst}/")
        got[kind] = (done.returncode, sorted(
            os.path.relpath(os.path.join(d, f), dst) for d, _, fs in os.walk(dst) for f in fs))
        assert done.returncode in (0, 23), f"{kind}: {show(done)}"
    assert "a.txt" in got["rsyncd"][1] and "secret.txt" not in got["rsyncd"][1]
    assert got["backupd"] == got["rsyncd"]
