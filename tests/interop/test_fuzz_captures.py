"""2,000 mutated capture sessions against one backupd daemon (issue 15, "Must show").

Every recorded client stream of tests/data/captures is mutated (bit flips,
interesting int32s, inserts, deletes, splices, truncation: tests/interop/fuzz.py)
and replayed over 127.0.0.1 to a server whose modules are the ones the
captures name. The daemon must survive all of them, answer a real push
afterwards, and its log must hold no traceback: every bad input is refused as a
clean session error, never an internal error.
"""

from __future__ import annotations

import re
import time

from tests.helpers import File, free_port, make_tree, render_rsyncd_conf, write_secrets
from tests.interop import fuzz
from tests.interop.conftest import T0, show

SESSIONS = 2000  # ~80-100 s on 2 busy cores; each session is bounded by its deadline_s


def _server(backupd_server, tmp_path):
    tree = {"hello.txt": File("hello world\n", mtime=T0), "empty": File("", mtime=T0),
            "sub": {"inner.txt": File("inner\n", mtime=T0)},
            "a.bin": File(bytes(range(256)) * 80, mtime=T0)}
    modules = {}
    for name, extra in {"mod": {}, "m": {}, "chr": {"timeout": 300},
                        "ro": {"read only": True},
                        "refuse": {"refuse options": "delete"},
                        "priv": {"auth users": "alice", "secrets file": "SECRETS"}}.items():
        path = make_tree(tmp_path / "mods" / name, tree)
        modules[name] = {"path": path, "read only": False, "munge symlinks": False, "numeric ids": True,
                         "timeout": 30, **extra}
    secrets = write_secrets(tmp_path / "secrets", {"alice": "s3cret"})
    modules["priv"]["secrets file"] = secrets
    port = free_port()
    conf = tmp_path / "rsyncd.conf"
    conf.write_text(render_rsyncd_conf(port, {"reverse lookup": False}, modules))
    return backupd_server(conf, port=port)


def test_mutated_captures_never_crash_the_daemon_or_the_session(backupd_server, rsync_clients, tmp_path):
    server = _server(backupd_server, tmp_path)
    seeds = fuzz.load_seeds()
    assert len(seeds) >= 50, "the captures are missing"
    started = time.monotonic()
    result = fuzz.run(server.port, SESSIONS, seed=15, parallel=6, deadline_s=20, seeds=seeds)
    took = time.monotonic() - started
    log = server.log_path.read_text(errors="replace")
    tracebacks = log.count("Traceback (most recent call last)")
    internal = len(re.findall(r"internal error|crashed|generator failed", log))
    print(f"fuzz: {result.sent} sessions in {took:.1f} s, refused {result.refused}, "
          f"not closed in time {len(result.timed_out)}, tracebacks {tracebacks}")
    assert server.proc.poll() is None, f"the daemon died; log:\n{server.log()}"
    assert result.sent == SESSIONS and result.refused == 0
    assert tracebacks == 0 and internal == 0, _first_traceback(log)
    assert not result.timed_out, f"sessions {result.timed_out[:10]} were not closed in time"
    # still serving: a real push gets through
    src = make_tree(tmp_path / "src", {"after.txt": File("still here\n", mtime=T0)})
    done = rsync_clients["3.5.0"].run("-rt", f"{src}/", server.url("mod"))
    assert done.returncode == 0, show(done)
    assert (tmp_path / "mods" / "mod" / "after.txt").read_text() == "still here\n"


def _first_traceback(log: str) -> str:
    """Each distinct internal error once, then the first traceback in full."""
    kinds = sorted(set(re.findall(r"session failed \(code 15\): (.*)", log)))
    at = log.find("Traceback (most recent call last)")
    if at < 0:
        at = max(log.find("internal error"), 0)
    return "\n".join(kinds) + "\n" + log[max(0, at - 600) : at + 4000]
