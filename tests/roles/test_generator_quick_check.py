"""The generator's plain up-to-date check against the general quick check it shortcuts.

``Generator._plainly_uptodate`` decides a noop entry in one expression;
whenever it says "current", ``_unchanged`` and ``_attr_changes`` (rsync
generator.c quick_check_ok and itemize's attribute tests) must say so too,
and for entries without names to map they must agree both ways.
"""

from __future__ import annotations

import itertools
import os
import stat
from types import SimpleNamespace

import pytest

from backupd.protocol.flist import FileEntry
from backupd.protocol.server_args import TransferOptions
from backupd.roles.generator import Generator

MTIME = 1_700_000_000


def generator(opts: TransferOptions, *, root: bool) -> Generator:
    """A Generator with only what its quick-check methods read."""
    gen = object.__new__(Generator)
    gen.opts, gen.state = opts, SimpleNamespace(opts=opts, is_root=root, protocol=31)
    gen._quiet_uptodate = True
    gen._plain_check = gen._plain_check_ids()
    return gen


def stat_result(mode: int, size: int, mtime_ns: int, uid: int, gid: int) -> os.stat_result:
    sec = mtime_ns // 1_000_000_000
    return os.stat_result((mode, 1, 1, 1, uid, gid, size, sec, sec, sec, float(sec), mtime_ns / 1e9, float(sec),
                           mtime_ns, mtime_ns, mtime_ns))


DIFFERS = (None, "type", "mode", "size", "second", "nanosecond", "uid", "gid")  # how the module's file differs
NAMES = (None, b"", b"root", b"no-such-name-here")  # b"root" maps to 0 without --numeric-ids


@pytest.mark.parametrize("general_only", [{"checksum": True}, {"size_only": True}, {"ignore_times": True},
                                          {"modify_window": 1}, {"modify_window": -1},
                                          {"executability": True, "perms": False}])
def test_the_plain_check_leaves_these_options_to_the_general_one(general_only):
    assert generator(TransferOptions(times=True, **general_only), root=True)._plain_check is None


def test_plain_check_agrees_with_the_general_one():
    """Every combination of the options it reads, who runs, the ids and names sent and one difference."""
    checked = 0
    for perms, owner, group, times, numeric, executability, root, sent_ids, user, group_name, differs in (
            itertools.product(*[(False, True)] * 8, NAMES, NAMES, DIFFERS)):
        if executability and not perms:
            continue
        opts = TransferOptions(perms=perms, owner=owner, group=group, times=times, numeric_ids=numeric,
                               executability=executability)
        gen = generator(opts, root=root)
        entry = FileEntry(name=b"f", mode=stat.S_IFREG | 0o644, size=100, mtime=MTIME, mtime_nsec=5,
                          uid=1 if sent_ids else None, gid=2 if sent_ids else None,
                          user_name=user, group_name=group_name)
        st_ = stat_result(
            (stat.S_IFLNK if differs == "type" else stat.S_IFREG) | (0o755 if differs == "mode" else 0o644),
            101 if differs == "size" else 100,
            MTIME * 10**9 + 5 + {"second": 10**9, "nanosecond": 1}.get(differs, 0),
            3 if differs == "uid" else 1, 3 if differs == "gid" else 2)
        general = (stat.S_ISREG(st_.st_mode) and gen._unchanged(entry, b"f", st_)
                   and not gen._attr_changes(entry, st_))
        plain = gen._plainly_uptodate(entry, st_)
        context = (opts, root, entry, differs)
        assert general or not plain, context  # "current" only where the general check says so
        if numeric or not (user or group_name):
            assert plain == general, context  # nothing to map: the plain check decides alone
        checked += 1
    assert checked == (2**8 - 2**6) * len(NAMES) ** 2 * len(DIFFERS)  # all but -E without -p
