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
