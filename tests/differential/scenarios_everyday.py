"""Everyday client commands not covered elsewhere: quiet and human-readable output, -s,
name rules of --usermap, --chown on a pull, --modify-window, -x, --bwlimit, --delete-before with -v,
the "delete only" idiom (--existing --ignore-existing --delete), -8 and listings with
--no-motd / -h.

Imported by scenarios.py, which holds the list.
"""

from __future__ import annotations

from tests.differential.harness import T0, rsync
from tests.differential.scenarios import ODD, mod_tree, pull, pulled_tree, push, scenario, src_tree
from tests.helpers import Dir, File

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
