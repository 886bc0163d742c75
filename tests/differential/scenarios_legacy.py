"""Scenarios for old clients: ``--protocol=29``, ``28`` and ``27`` (rsync 2.6.x - 3.0 on a NAS).

The same everyday commands at each legacy protocol: push of new files, a
delta re-push, ``--delete``, ``-H``, pull, ``--list-only``, and protocol 26,
which stock rsyncd refuses. Imported by scenarios.py, which holds the list.
"""

from __future__ import annotations

from tests.differential.harness import PASSWORD, T0, USER
from tests.differential.scenarios import (
    BIG,
    BIG2,
    hardlink,
    mkfifo,
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

# the options backup scripts add, at each legacy protocol
EXTRA = [
    ("push-checksum", lambda p: (push(p, "-aic"),), dict(client=src_tree(), seed=mod_tree())),
    ("push-dry-run", lambda p: (push(p, "-ain", "--delete"),), dict(client=src_tree(), seed=mod_tree())),
    ("push-delete-after", lambda p: (push(p, "-ai", "--delete-after"),), dict(client=src_tree(), seed=mod_tree())),
    ("push-delete-verbose", lambda p: (push(p, "-av", "--delete"),), dict(client=src_tree(), seed=mod_tree())),
    ("push-delete-outformat", lambda p: (push(p, "-a", "--delete", "--out-format=%o %n"),),
     dict(client=src_tree(), seed=mod_tree())),
    ("push-delete-ii", lambda p: (push(p, "-aii", "--delete"),), dict(client=src_tree(), seed=mod_tree())),
    ("push-exclude-delete", lambda p: (push(p, "-ai", "--delete", "--exclude=*.log", "--exclude=zdir/"),),
     dict(client=src_tree(), seed=mod_tree())),
    ("push-specials", lambda p: (mkfifo("client/src/fifo"), push(p, "-ai")), dict(client=src_tree())),
    ("push-relative", lambda p: (rsync(p, "-aiR", "src/sub/c.txt", "{mod}/"),), dict(client=src_tree())),
    ("push-inplace", lambda p: (push(p, "-ai", "--inplace", "--stats", delta=True),),
     dict(client=DELTA_CLIENT, seed=DELTA_SEED)),
    ("push-append", lambda p: (push(p, "-ai", "--append", "--stats", delta=True),),
     dict(client=DELTA_CLIENT, seed={"big.bin": File(BIG2[:50000], mtime=T0)})),
    ("push-whole-file", lambda p: (push(p, "-aiW", "--stats"),), dict(client=DELTA_CLIENT, seed=DELTA_SEED)),
    ("push-timeout", lambda p: (push(p, "-ai", "--timeout=30"),), dict(client=src_tree())),
    ("pull-z-delta", lambda p: (pull(p, "-aiz", "--stats", delta=True),),
     dict(seed={"big.bin": File(BIG2, mode=0o644, mtime=T0 + 900)},
          client={"dst": Dir({"big.bin": File(BIG[:90000], mode=0o644, mtime=T0)}, mode=0o755, mtime=T0)})),
    ("pull-checksum", lambda p: (pull(p, "-aic"),), dict(seed=pulled_tree(),
     client={"dst": Dir({"a.txt": File(b"alphA\n", mtime=T0)}, mode=0o755, mtime=T0)})),
    ("pull-dry-run", lambda p: (pull(p, "-ain"),), dict(seed=pulled_tree())),
    ("pull-exclude", lambda p: (pull(p, "-ai", "--exclude=*.log", "--exclude=deep/"),), dict(seed=pulled_tree())),
    ("pull-file", lambda p: (pull(p, "-ai", path="sub/c.txt"),), dict(seed=pulled_tree())),
    ("pull-stats", lambda p: (pull(p, "-a", "--stats"),), dict(seed=pulled_tree())),
    ("link-dest", lambda p: (push(p, "-ai", dest="s1/"), write("client/src/a.txt", b"ALPHA\n", mtime=T0 + 50),
                              push(p, "-ai", "--link-dest=../s1", dest="s2/")), dict(client=src_tree())),
    ("compare-dest-delta", lambda p: (push(p, "-ai", "--stats", "--compare-dest=../s1", dest="s2/", delta=True),),
     dict(client={"src": Dir({"big.bin": File(BIG2, mode=0o644, mtime=T0 + 900)}, mode=0o755, mtime=T0)},
          seed={"s1": Dir({"big.bin": File(BIG[:90000], mode=0o644, mtime=T0)}, mtime=T0)})),
    ("partial-dir-resume", lambda p: (write("mod/src-partial/big.bin", BIG2[:50000], mtime=T0 + 5),
                                      push(p, "-ai", "--partial-dir=src-partial", "--stats", delta=True)),
     dict(client=DELTA_CLIENT)),
    ("push-secluded", lambda p: (push(p, "-ais"),), dict(client=src_tree())),
    ("pull-secluded", lambda p: (pull(p, "-ais"),), dict(seed=pulled_tree())),
    ("push-verbose-stats", lambda p: (push(p, "-av", "--stats"),), dict(client=src_tree(), seed=mod_tree())),
    ("list-only-long", lambda p: (rsync(p, "--list-only", "{mod}/sub/"),), dict(seed=pulled_tree())),
]
for proto in ("29", "28", "27"):
    for name, steps, kw in EXTRA:
        scenario(f"proto{proto}-{name}", *steps(f"--protocol={proto}"), **kw)

# module settings an old client meets: auth, read only, refused options, module excludes, the listing
_AUTH = {"auth users": f"{USER} bob:ro", "strict modes": True}
_SECRETS = {USER: PASSWORD, "bob": "bobpw"}
for proto in ("29", "28", "27"):
    p = f"--protocol={proto}"
    scenario(f"proto{proto}-auth-right", rsync(p, "-ai", "src/", "{umod}/", password=PASSWORD), client=src_tree(),
             params=_AUTH, secrets=_SECRETS)
    scenario(f"proto{proto}-auth-wrong", rsync(p, "-ai", "src/", "{umod}/", password="nope"), client=src_tree(),
             params=_AUTH, secrets=_SECRETS)
    scenario(f"proto{proto}-read-only-push", push(p, "-ai"), client=src_tree(), params={"read only": True})
    scenario(f"proto{proto}-refuse-delete", push(p, "-ai", "--delete"), client=src_tree(),
             params={"refuse options": "delete* compress"})
    scenario(f"proto{proto}-refuse-compress-pull", pull(p, "-aiz"), seed=pulled_tree(),
             params={"refuse options": "delete* compress"})
    scenario(f"proto{proto}-module-exclude-pull", pull(p, "-ai"), seed=pulled_tree(
        secret=Dir({"s": File(b"s\n", mtime=T0)}, mtime=T0)), params={"exclude": "*.log secret/"})
    scenario(f"proto{proto}-module-exclude-push", push(p, "-ai"), client=src_tree(
        secret=Dir({"s": File(b"s\n", mtime=T0)}, mtime=T0)), params={"exclude": "*.log secret/"})
    scenario(f"proto{proto}-module-list", rsync(p, "{host}/"), params={"comment": "the backup module"})
