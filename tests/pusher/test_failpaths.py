"""Error lines -> failing paths (``failpaths.py``), with lines stock rsync and backupd print."""

from __future__ import annotations

from backupd.pusher.failpaths import failing_paths, in_batch

CLOSING = "rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1394)"


def test_each_line_names_a_listed_path():
    known = in_batch([b"blocked.txt", b"d/locked", b"tree", b"x y"])
    lines = [
        'ERROR: daemon refused to receive file "blocked.txt"',  # a module exclude rule (rsyncd, backupd)
        'rsync: [receiver] rename "/d/.locked.Ab12cD" (in mod) -> "d/locked": Operation not permitted (1)',
        'rsync: [receiver] mkstemp "/srv/mod/tree/sub/.f.XyZ123" failed: Permission denied (13)',
        'rsync: [sender] send_files failed to open "/home/u/src/./x y": Permission denied (13)',
        CLOSING,
    ]
    assert failing_paths(lines, known) == {
        b"blocked.txt": lines[0], b"d/locked": lines[1], b"tree/sub/f": lines[2], b"x y": lines[3]}


def test_backupd_unquoted_receiver_line():
    line = "rsync: [receiver] cannot write d/locked: module mod: d/locked: Operation not permitted"
    assert failing_paths([line, CLOSING], in_batch([b"d/locked", b"other"])) == {b"d/locked": line}


def test_unidentifiable_runs_fail_whole():
    known = in_batch([b"a", b"b"])
    assert failing_paths([CLOSING], known) is None  # no line names a path
    assert failing_paths(['ERROR: daemon refused to receive file "a"',
                          'rsync: [receiver] write failed on "/elsewhere": No space left on device (28)'],
                         known) is None
    assert failing_paths(['ERROR: daemon refused to receive file "a"',
                          "IO error encountered -- skipping file deletion"], known) is None
    assert failing_paths(["rsync: [generator] failed to set times on a b: ok"], in_batch([b"c"])) is None


def test_escaped_bytes_and_the_longest_suffix_win():
    known = in_batch([b"caf\xe9", b"f", b"sub/f"])
    assert failing_paths(['ERROR: daemon refused to receive file "caf\\#351"'], known) == {
        b"caf\xe9": 'ERROR: daemon refused to receive file "caf\\#351"'}
    assert list(failing_paths(['rsync: [receiver] open "/mod/sub/f" failed: Permission denied (13)'],
                              known)) == [b"sub/f"]
