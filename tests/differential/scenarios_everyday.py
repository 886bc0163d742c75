"""Everyday client commands not covered elsewhere: quiet and human-readable output, -s,
name rules of --usermap, --chown on a pull, --modify-window, -x, --bwlimit, --delete-before with -v,
the "delete only" idiom (--existing --ignore-existing --delete), -8, listings with
--no-motd / -h, --no-perms/--no-owner/--no-group, symbolic --chmod, hidden-file excludes,
the "only *.txt" filter idiom with -m, -J, --fake-super, -u --delete, a pull with --chmod.

Imported by scenarios.py, which holds the list.
"""

from __future__ import annotations

import os
import shutil

from tests.differential.harness import T0, Change, rsync
from tests.differential.scenarios import ODD, mod_tree, pull, pulled_tree, push, scenario, src_tree
from tests.helpers import Dir, File, Symlink

scenario("push-quiet", push("-aq", "--delete"), client=src_tree(), seed=mod_tree())
scenario("push-stats-human", push("-a", "--stats", "-h"), client=src_tree(), seed=mod_tree())
scenario("push-secluded-args", rsync("-ais", "src/", "{mod}/with space/"),
         client=src_tree(**{"name with space.txt": File(b"s\n", mtime=T0)}))
scenario("push-usermap-name-rules", push("-ai", "--usermap=nobody:1,root:777", "--groupmap=r*:888"),
         client=src_tree(), seed=mod_tree(), params={"numeric ids": False})
scenario("pull-chown", pull("-ai", "--chown=4321:8765"), seed=pulled_tree())
scenario("push-modify-window", push("-ai", "--modify-window=2"), client=src_tree(),
         seed=mod_tree(**{"a.txt": File(b"alpha\n", mode=0o644, mtime=T0 + 2),
                          "x.log": File(b"log line\n", mode=0o644, mtime=T0 + 5)}))
scenario("push-one-file-system", push("-aix", "--delete"), client=src_tree(), seed=mod_tree())
scenario("push-bwlimit", push("-ai", "--bwlimit=10m"), client=src_tree(), seed=mod_tree())
scenario("push-delete-before-verbose", push("-av", "--delete-before"), client=src_tree(), seed=mod_tree())
scenario("push-delete-only", push("-ai", "--existing", "--ignore-existing", "--delete"), client=src_tree(),
         seed=mod_tree())
scenario("push-8-bit-output", push("-ai8"), client={"src": Dir(dict(ODD), mode=0o755, mtime=T0)})
scenario("list-no-motd", rsync("--no-motd", "{host}/"))
scenario("list-only-human", rsync("--list-only", "-rh", "{mod}/"),
         seed=pulled_tree(big=File(b"x" * 123456, mtime=T0)))
scenario("push-no-perms-owner", push("-ai", "--no-perms", "--no-owner", "--no-group"), client=src_tree(),
         seed=mod_tree())
scenario("push-chmod-symbolic", push("-ai", "--chmod=ugo=rwX,o-w"), client=src_tree(), seed=mod_tree())
scenario("push-exclude-hidden", push("-ai", "--exclude=.*", "--delete"),
         client=src_tree(**{".hidden": File(b"h\n", mtime=T0), ".cache": Dir({"c": File(b"c\n", mtime=T0)},
                                                                              mtime=T0)}),
         seed=mod_tree(**{".keep": File(b"k\n", mtime=T0)}))
scenario("push-only-txt-prune", push("-aim", "--include=*/", "--include=*.txt", "--exclude=*"), client=src_tree())
scenario("push-omit-link-times", push("-aiJ"), client=src_tree(), seed=mod_tree())
scenario("push-omit-link-times-again", push("-aiJ"), push("-aiJ"),
         Change(lambda b: (b / "client/src/link").unlink() or (b / "client/src/link").symlink_to("b.txt"),
                "retarget link"),
         push("-aiJ"), client=src_tree(), seed=mod_tree(link=Symlink("a.txt", mtime=T0)))
scenario("push-fake-super", push("-ai", "--fake-super"), client=src_tree())
scenario("push-update-delete", push("-aiu", "--delete"), client=src_tree(),
         seed=mod_tree(**{"x.log": File(b"newer on the server\n", mtime=T0 + 9999)}))
scenario("pull-chmod-delete", pull("-ai", "--chmod=Fgo-rwx", "--delete"), seed=pulled_tree())
scenario("push-double-colon", rsync("-ai", "--port={port}", "src/", "127.0.0.1::mod/"), client=src_tree())
scenario("push-contimeout", push("-ai", "--contimeout=10", "--timeout=30"), client=src_tree())
scenario("push-checksum-xxh128", push("-aic", "--cc=xxh128"), client=src_tree(), seed=mod_tree())
scenario("push-remote-option", push("-ai", "--remote-option=--omit-dir-times"), client=src_tree(), seed=mod_tree())
scenario("push-out-format-fields", push("-a", "--out-format=%o %n%L %l %b %f"), client=src_tree(), seed=mod_tree())
scenario("pull-delete-excluded", Change(lambda b: (b / "client/dst").mkdir(), "mkdir dst"),
         Change(lambda b: (b / "client/dst/old.log").write_bytes(b"o\n"), "dst/old.log"),
         pull("-ai", "--delete-excluded", "--exclude=*.log"), seed=pulled_tree())
scenario("push-several-files", rsync("-ai", "src/a.txt", "src/b.txt", "src/sub", "{mod}/two/"), client=src_tree(),
         seed={"two": Dir({"a.txt": File(b"other\n", mtime=T0)}, mtime=T0)})
scenario("push-delay-updates-delete", push("-ai", "--delay-updates", "--delete"), client=src_tree(), seed=mod_tree())
scenario("push-backup-dir-delete-after", push("-ai", "--delete-after", "--backup-dir=/old", dest="cur/"),
         client=src_tree(), seed={"cur": Dir(mod_tree(), mtime=T0)}, history_ignore=("old", "old/*"),
         history_loose=True)
# the backup dir inside the deleted tree (a relative --backup-dir is below the destination): rsyncd's
# delete pass reads each dir as it gets there, so it also deletes (and backs up again, into old/old)
# the backups it made of the dirs deleted before; --delete-delay decides in the walk, before the
# transfer made old, and deletes at the end. The second push finds old/old there: zz2's backups land in
# it before the pass reads it, so they are deleted (backed up into old/old/old) too.
_REMOVE_ZZ2 = Change(lambda b: shutil.rmtree(b / "client/src/zz2") or os.utime(b / "client/src", (T0 + 8, T0 + 8)),
                     "remove zz2, src keeps its mtime")  # a new mtime itemizes ./ only across a second boundary
for _when in ("after", "before", "during", "delay"):
    _inside = ("-ai", f"--delete-{_when}", "--backup-dir=old")
    scenario(f"push-backup-dir-inside-delete-{_when}", push(*_inside, dest="cur/"), client=src_tree(),
             seed={"cur": Dir(mod_tree(), mtime=T0)}, history_ignore=("cur/old", "cur/old/*"), history_loose=True)
    scenario(f"push-backup-dir-inside-delete-{_when}-again", push(*_inside, dest="cur/"), _REMOVE_ZZ2,
             push(*_inside, dest="cur/"), client=src_tree(zz2=Dir({"q": File(b"q\n", mtime=T0)}, mtime=T0)),
             seed={"cur": Dir(mod_tree(), mtime=T0)}, history_ignore=("cur/old", "cur/old/*"), history_loose=True)
scenario("push-delete-delay-verbose", push("-av", "--delete-delay", "--no-inc-recursive"), client=src_tree(),
         seed=mod_tree())
