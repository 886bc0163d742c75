"""The generator's per-directory scans: each directory of the module is read once per push.

A real client pushes to a session running in this process (a loopback
listener thread), with ModuleTree.scan_dir counted. The generator lstats
entries through one scan per directory (rsync's link_stat is one stat per
entry, in C); a directory it makes must not throw its parent's scan away,
or a push of N new directories reads the parent N times (it did: the
small-new bench spent a fifth of its generator time there).
"""

from __future__ import annotations

import collections
import os
import socket
import threading

from backupd.config.model import DaemonConfig, ModuleConfig
from backupd.roles.session import SessionContext, run_session
from backupd.storage.tree import ModuleTree

NEW_DIRS = 30


def test_new_directories_do_not_rescan_their_parent(tmp_path, monkeypatch, rsync_client):
    module = tmp_path / "mod"
    module.mkdir()
    (module / "old").mkdir()  # something the parent's scan must keep seeing
    src = tmp_path / "src"
    for i in range(NEW_DIRS):
        (src / f"d{i:02d}").mkdir(parents=True)
        (src / f"d{i:02d}" / "f").write_text(f"file {i}\n")
    # the session runs in this process: as our own ids (a root server's default would be nobody)
    mod = ModuleConfig("m", module, read_only=False, use_chroot=False, history=False,
                       uid=str(os.getuid()), gid=str(os.getgid()))
    config = DaemonConfig(modules={"m": mod}, reverse_lookup=False)

    scans: collections.Counter[bytes] = collections.Counter()
    real_scan = ModuleTree.scan_dir

    def counted(self, path):
        scans[path] += 1
        return real_scan(self, path)

    monkeypatch.setattr(ModuleTree, "scan_dir", counted)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    codes = []

    def serve_one() -> None:
        conn, peer = listener.accept()
        with conn:
            codes.append(run_session(conn, SessionContext(config=config, peer_addr=peer[0], session_id="scan")))

    server = threading.Thread(target=serve_one, daemon=True)
    server.start()
    try:
        done = rsync_client.run("-r", f"{src}/", f"rsync://127.0.0.1:{port}/m/", timeout=60)
        server.join(30)
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr
    assert codes == [0]
    assert sorted(p.name for p in module.iterdir()) == sorted(["old", *(f"d{i:02d}" for i in range(NEW_DIRS))])
    assert all((module / f"d{i:02d}" / "f").read_text() == f"file {i}\n" for i in range(NEW_DIRS))
    assert scans[b"."] == 1, f"the module root was scanned {scans[b'.']} times for {NEW_DIRS} new directories"
    assert max(scans.values()) == 1, {p: n for p, n in scans.items() if n > 1}


def test_cached_scans_are_bounded_by_entries_keeping_the_path_being_read(monkeypatch):
    """The generator's scans hold at most SCAN_CACHE_ENTRIES lstats beside the directory read and its ancestors."""
    import collections
    from types import SimpleNamespace

    from backupd.roles import generator as gen_module

    monkeypatch.setattr(gen_module, "SCAN_CACHE_ENTRIES", 100)
    sizes = {b".": 60, **{b"d%d" % i: 30 for i in range(6)}, b"big": 500, b"big/sub": 200, b"big/sub/s2": 10}

    def children(path: bytes) -> list[bytes]:
        prefix = b"" if path == b"." else path + b"/"
        return [name[len(prefix):] for name in sizes
                if name != b"." and name.startswith(prefix) and b"/" not in name[len(prefix):]]

    reads: collections.Counter[bytes] = collections.Counter()

    def scan_dir(path):
        reads[path] += 1
        names = children(path)
        return {name: object() for name in [*names, *(b"e%d" % i for i in range(sizes[path] - len(names)))]}

    gen = object.__new__(gen_module.Generator)
    gen._scans = collections.OrderedDict()
    gen.state = SimpleNamespace(tree=SimpleNamespace(scan_dir=scan_dir))

    def held() -> int:
        return sum(len(s) for s in gen._scans.values())

    for name in [b"d0", b"d1", b"d2", b"d3", b"d4", b"d5"]:  # a list's parent slot, then its contents
        assert gen._lstat(name) is not None  # in the root's scan
        assert gen._lstat(name + b"/e1") is not None
        assert held() <= 100 or len(gen._scans) <= 2
    assert reads[b"."] == 1  # the root, used by every list, stays
    assert gen._lstat(b"big/e400") is not None
    assert set(gen._scans) == {b"big", b"."}  # over the bound: only the path being read
    assert gen._lstat(b"big/sub/e0") is not None and gen._lstat(b"big/sub/s2/e0") is not None
    assert set(gen._scans) == {b".", b"big", b"big/sub", b"big/sub/s2"}  # ancestors stay
    assert gen._lstat(b"big/e1") is not None and gen._lstat(b"e0") is not None  # back up: no new read
    assert reads[b"big"] == 1 and reads[b"."] == 1
    assert gen._lstat(b"d0/e0") is not None and reads[b"d0"] == 2  # dropped earlier: read again
    assert held() <= 100 or set(gen._scans) == {b".", b"d0"}
