"""The receiving side's -vv lines (roles/verbosity.py), against rsync's texts."""

from __future__ import annotations

import pytest

from backupd.roles.verbosity import (
    BackupReporter,
    backup_dir_line,
    backup_dir_shown,
    delta_line,
    server_verbosity,
)


@pytest.mark.parametrize(("verbose", "cap", "level"), [(2, 1, 1), (2, 2, 2), (3, 2, 2), (1, 4, 1), (0, 0, 0)])
def test_server_verbosity_is_capped(verbose, cap, level):
    assert server_verbosity(verbose, cap) == level


def test_delta_line():
    assert delta_line(False) == b"delta-transmission enabled\n"
    assert delta_line(True) == b"delta-transmission disabled for local transfer or --whole-file\n"


@pytest.mark.parametrize(("raw", "clean", "shown"), [
    (b"bak", b"bak", b"bak"),
    (b"./bak/", b"bak/", b"bak"),
    (b"/keep/it", b"keep/it", b"/srv/mod/keep/it"),
])
def test_backup_dir_shown(raw, clean, shown):
    assert backup_dir_shown(raw, clean, "/srv/mod/") == shown
    assert backup_dir_line(shown, False) == b"(new) backup_dir is " + shown + b"\n"
    assert backup_dir_line(shown, True) == b"backup_dir is " + shown + b"\n"


def test_reporter_names_relative_to_the_destination():
    sent = []
    beside = BackupReporter(sent.append, (b"sub",), b"~", None)
    beside((b"sub", b"c.txt"))
    below = BackupReporter(sent.append, (), b".old", b"bak")
    below((b"zdir", b"z1"))
    assert sent == [b"backed up c.txt to c.txt~\n", b"backed up zdir/z1 to bak/zdir/z1.old\n"]


def test_reporter_holds_per_thread():
    sent = []
    rep = BackupReporter(sent.append, (), b"~", None)
    rep.hold()
    rep((b"a",))
    assert sent == []
    assert rep.take() == [((b"a",), b"backed up a to a~\n")]
    rep((b"b",))
    assert sent == [b"backed up b to b~\n"]
