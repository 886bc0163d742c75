"""Scenarios for old clients: ``--protocol=29``, ``28`` and ``27`` (rsync 2.6.x - 3.0 on a NAS).

The same everyday commands at each legacy protocol: push of new files, a
delta re-push, ``--delete``, ``-H``, pull, ``--list-only``, and protocol 26,
which stock rsyncd refuses. Imported by scenarios.py, which holds the list.
"""

from __future__ import annotations

from tests.differential.harness import T0
from tests.differential.scenarios import (
    BIG,
    BIG2,
    hardlink,
    mod_tree,
    pull,
    pulled_tree,
    push,
    rsync,
    scenario,
    src_tree,
    write,
)
from tests.helpers import Dir, File

DELTA_CLIENT = {"src": Dir({"big.bin": File(BIG2, mode=0o644, mtime=T0 + 900),
                            "a.txt": File(b"alpha\n", mtime=T0)}, mode=0o755, mtime=T0)}
DELTA_SEED = {"big.bin": File(BIG[:90000], mode=0o644, mtime=T0)}

for proto in ("29", "28", "27"):
    p = f"--protocol={proto}"
    scenario(f"proto{proto}-push-new", push(p, "-ai"), client=src_tree())
    scenario(f"proto{proto}-push-verbose", push(p, "-av"), client=src_tree())
    scenario(f"proto{proto}-push-again", push(p, "-ai"), write("client/src/a.txt", b"changed alpha\n"),
             push(p, "-ai"), client=src_tree())
    scenario(f"proto{proto}-push-delta", push(p, "-ai", "--stats", delta=True), client=DELTA_CLIENT,
             seed=DELTA_SEED)
    scenario(f"proto{proto}-push-delta-z", push(p, "-aiz", "--stats", delta=True), client=DELTA_CLIENT,
             seed=DELTA_SEED)
    scenario(f"proto{proto}-push-delete", push(p, "-ai", "--delete"), client=src_tree(), seed=mod_tree())
    scenario(f"proto{proto}-push-hardlinks", hardlink("client/src/a.txt", "client/src/a2"),
             hardlink("client/src/sub/c.txt", "client/src/c2"), push(p, "-aiH"), push(p, "-aiH"), client=src_tree())
    scenario(f"proto{proto}-pull", pull(p, "-ai"), seed=pulled_tree())
    scenario(f"proto{proto}-pull-verbose", pull(p, "-av"), seed=pulled_tree())
    scenario(f"proto{proto}-pull-delta", pull(p, "-ai", "--stats", delta=True),
             seed={"big.bin": File(BIG2, mode=0o644, mtime=T0 + 900)},
             client={"dst": Dir({"big.bin": File(BIG[:90000], mode=0o644, mtime=T0)}, mode=0o755, mtime=T0)})
    scenario(f"proto{proto}-pull-delete", pull(p, "-ai", "--delete"), seed=pulled_tree(),
             client={"dst": Dir({"old.txt": File(b"old\n", mtime=T0)}, mode=0o755, mtime=T0)})
    scenario(f"proto{proto}-pull-hardlinks", hardlink("mod/a.txt", "mod/a2"), pull(p, "-aiH"),
             seed=pulled_tree())
    scenario(f"proto{proto}-list-only", rsync(p, "--list-only", "-r", "{mod}/"), seed=pulled_tree())

scenario("proto26-refused", push("--protocol=26", "-ai"), client=src_tree())
