"""What a pull lists: rsync's naming rules, -R implied dirs, filters, files-from, confinement."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from backupd.errors import ExitCode, ProtocolError
from backupd.protocol.constants import IoError, MsgCode, XmitFlags
from backupd.protocol.wire import ByteReader
from backupd.roles.flist_builder import sanitize_arg, split_arg
from backupd.roles.sender import read_files_from, strip_module_arg
from tests.helpers import Symlink, make_tree
from tests.roles.sender_harness import PullClient

TOP, NOC = XmitFlags.TOP_DIR, XmitFlags.NO_CONTENT_DIR
IMPLIED = TOP | NOC


@pytest.fixture
def module(tmp_path):
    outside = tmp_path / "outside"
    make_tree(outside, {"secret.txt": "not for clients\n", "dir": {"x": "x\n"}})
    root = tmp_path / "mod"
    make_tree(root, {
        "top.txt": "top\n",
        "a.o": "object\n",
        "a": {"b": {"c": "c\n", "d.o": "d\n"}, "e.txt": "e\n"},
        "sub": {"inner.txt": "inner\n", "deep": {"x.bin": "x\n"}, ".ignore": "*.log\n", "run.log": "log\n"},
        "links": {
            "abs": Symlink(str(outside / "secret.txt")),
            "up": Symlink("../../outside/secret.txt"),
            "dirup": Symlink("../../outside/dir"),
            "in": Symlink("../top.txt"),
            "indir": Symlink("../a"),
        },
        "history-backup": {"2026-11-20": {"top.txt": "old top\n", "sub": {"inner.txt": "old\n"}}},
    })
    return root


def listing(module, args, paths, **kw):
    result = PullClient(module, args, paths).run(want=lambda e: False, **kw)
    return result, [(e.name, e.xflags if e.is_dir else None) for e in result.entries]


# -- rsync-protocol-a.md §8.10: the names of the first list ---------------------------------

NAMING = [
    (["-r"], [b"mod/sub/"], [(b".", TOP), (b".ignore", None), (b"inner.txt", None), (b"run.log", None),
                             (b"deep", 0), (b"deep/x.bin", None)]),
    (["-r"], [b"mod/sub"], [(b"sub", TOP), (b"sub/.ignore", None), (b"sub/inner.txt", None),
                            (b"sub/run.log", None), (b"sub/deep", 0), (b"sub/deep/x.bin", None)]),
    (["-r"], [b"mod/top.txt"], [(b"top.txt", None)]),
    (["-r"], [b"mod/a/b/c", b"mod/top.txt"], [(b"c", None), (b"top.txt", None)]),
    (["-d"], [b"mod/a/"], [(b".", TOP), (b"e.txt", None), (b"b", NOC)]),
    (["-d"], [b"mod/a"], [(b"a", NOC)]),
    (["-d"], [b"mod"], [(b".", TOP), (b"a.o", None), (b"top.txt", None), (b"a", NOC),
                        (b"history-backup", NOC), (b"links", NOC), (b"sub", NOC)]),
    (["-rR"], [b"mod/a/b/c"], [(b"a", IMPLIED), (b"a/b", IMPLIED), (b"a/b/c", None)]),
    (["-rR"], [b"mod/a/./b/c"], [(b"b", IMPLIED), (b"b/c", None)]),
    (["-rR"], [b"mod/a/b/", b"mod/a/e.txt"], [(b"a", IMPLIED), (b"a/e.txt", None), (b"a/b", TOP),
                                             (b"a/b/c", None), (b"a/b/d.o", None)]),
    (["-dR"], [b"mod/a/b/"], [(b"a", IMPLIED), (b"a/b", TOP), (b"a/b/c", None), (b"a/b/d.o", None)]),
    (["-r"], [b"mod/*.txt"], [(b"top.txt", None)]),
    (["-r"], [b"mod/history-backup/2026-11-20/"], [(b".", TOP), (b"top.txt", None), (b"sub", 0),
                                                   (b"sub/inner.txt", None)]),
]


@pytest.mark.parametrize(("args", "paths", "want"), NAMING, ids=[b" ".join(p).decode() + " " + a[0]
                                                                for a, p, _ in NAMING])
def test_names_and_dir_flags_follow_rsync(module, args, paths, want):
    result, names = listing(module, args, paths)
    assert names == want
    assert result.exit_code == ExitCode.OK


def test_directory_without_recursion_is_skipped_with_a_note(module):
    result, names = listing(module, ["-t"], [b"mod/a", b"mod/top.txt"])
    assert names == [(b"top.txt", None)]
    assert result.texts(MsgCode.INFO) == ["skipping directory a\n"]


# -- filters ---------------------------------------------------------------------------------


def test_client_rules_are_applied_on_the_sender_side(module):
    rules = [b"- *.o", b"- /top.txt", b"-s run.log", b"+ deep/", b"- deep/*", b"-r inner.txt"]
    _, names = listing(module, ["-r"], [b"mod/"], rules=rules)
    got = [n for n, _ in names]
    assert b"a.o" not in got and b"a/b/d.o" not in got and b"top.txt" not in got
    assert b"sub/run.log" not in got                      # hide (-s) acts on the sender
    assert b"sub/inner.txt" in got                        # protect (-r) does not
    assert b"sub/deep" in got and b"sub/deep/x.bin" not in got


def test_per_directory_merge_files_are_read_inside_the_module(module):
    _, names = listing(module, ["-r"], [b"mod/sub/"], rules=[b":- .ignore"])
    got = [n for n, _ in names]
    assert b"run.log" not in got and b"inner.txt" in got


def test_module_rules_hide_names_even_when_named(tmp_path, module):
    client = PullClient(module, ["-r"], [b"mod/"], exclude=("sub/",))
    result = client.run(want=lambda e: False)
    assert not [e for e in result.names() if e.startswith(b"sub")]
    named = PullClient(module, ["-r"], [b"mod/sub/inner.txt"], exclude=("sub/",)).run()
    assert named.entries == [] and any("failed" in t for t in named.texts(MsgCode.ERROR_XFER))


def test_a_top_level_name_excluded_by_the_client_is_left_out(module):
    _, names = listing(module, ["-r"], [b"mod/top.txt", b"mod/a.o"], rules=[b"- *.o"])
    assert names == [(b"top.txt", None)]


# -- --files-from ---------------------------------------------------------------------------


def test_files_from_names_are_relative_to_the_first_path(module):
    _, names = listing(module, ["-R", "--files-from=-", "--from0"], [b"mod/"],
                       files_from=[b"top.txt", b"a/b/c", b"sub/deep/x.bin"])
    assert names == [(b"top.txt", None), (b"a", IMPLIED), (b"a/b", IMPLIED),
                     (b"a/b/c", None), (b"sub", IMPLIED), (b"sub/deep", IMPLIED), (b"sub/deep/x.bin", None)]
    _, names = listing(module, ["-R", "--files-from=-", "--from0"], [b"mod/a/"], files_from=[b"b/c", b"e.txt"])
    assert names == [(b"e.txt", None), (b"b", IMPLIED), (b"b/c", None)]


def test_files_from_directory_without_r_is_sent_without_contents(module):
    _, names = listing(module, ["-R", "--files-from=-", "--from0"], [b"mod/"], files_from=[b"a/b"])
    assert names == [(b"a", IMPLIED), (b"a/b", NOC)]
    _, names = listing(module, ["-rR", "--files-from=-", "--from0"], [b"mod/"], files_from=[b"a/b"])
    assert names == [(b"a", IMPLIED), (b"a/b", TOP), (b"a/b/c", None), (b"a/b/d.o", None)]


def test_a_server_side_files_from_is_refused(module):
    result = PullClient(module, ["-R", "--files-from=/etc/passwd"], [b"mod/"]).run()
    assert result.exit_code == ExitCode.UNSUPPORTED and result.entries == []


# -- confinement ------------------------------------------------------------------------------


def test_symlinks_are_listed_as_symlinks_never_followed(module):
    result, _ = listing(module, ["-rl"], [b"mod/links/"])
    targets = {e.name: e.link_target for e in result.entries if e.is_link}
    assert targets[b"up"] == b"../../outside/secret.txt" and targets[b"in"] == b"../top.txt"
    assert not any(b"secret" in e.name for e in result.entries)


def test_copy_links_follows_only_inside_the_module(module):
    result = PullClient(module, ["-rL"], [b"mod/links/"]).run()
    names = result.names()
    assert b"in" in names and result.files[b"in"].data == b"top\n"
    assert b"indir/e.txt" in names and result.files[b"indir/e.txt"].data == b"e\n"
    for escaping in (b"abs", b"up", b"dirup"):
        assert escaping not in names
    assert not any(b"secret" in f.data for f in result.files.values())
    assert result.io_error & IoError.GENERAL and result.exit_code == ExitCode.PARTIAL


def test_an_argument_through_an_escaping_symlink_lists_nothing(module):
    result = PullClient(module, ["-r"], [b"mod/links/dirup/"]).run()
    assert result.entries == [] and result.exit_code == ExitCode.PARTIAL
    assert any("out of the module" in t for t in result.texts(MsgCode.ERROR_XFER))


def test_dot_dot_in_an_argument_cannot_climb_out(module):
    result = PullClient(module, ["-r"], [b"mod/../outside/secret.txt"]).run()
    assert result.entries == []      # sanitized to "outside/secret.txt" inside the module: missing


def test_an_in_module_symlinked_directory_with_a_slash_is_listed(module):
    result, names = listing(module, ["-r"], [b"mod/links/indir/"])
    assert (b"e.txt", None) in names and (b"b/c", None) in names


# -- pure helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(("arg", "want"), [
    (b"mod", b""), (b"mod/", b""), (b"mod/a/b", b"a/b"), (b"modx/a", b"modx/a"), (b"a", b"a"),
])
def test_strip_module_arg(arg, want):
    assert strip_module_arg(arg, "mod") == want


@given(st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b), max_size=20))
@example([b"a", b"b/c"])
def test_files_from_names_round_trip(names):
    wire = b"".join(n + b"\0" for n in names) + b"\0" + b"after"
    reader = ByteReader(wire)
    assert read_files_from(reader.read, True) == names
    assert reader.read(5) == b"after"


def test_files_from_name_too_long_is_refused():
    with pytest.raises(ProtocolError):
        read_files_from(ByteReader(b"a" * 5000 + b"\0\0").read, True)


@given(st.lists(st.sampled_from([b"a", b"b", b".", b"..", b"", b"c.d"]), max_size=8))
def test_sanitized_arguments_never_leave_the_module(parts):
    clean = sanitize_arg(b"/".join(parts))
    assert not clean.startswith(b"/")
    assert b".." not in clean.split(b"/")


@pytest.mark.parametrize(("fbuf", "relative", "want"), [
    (b"", False, (b"", b".", True)), (b"sub/", False, (b"sub", b".", True)),
    (b"sub", False, (b"", b"sub", False)), (b"a/b/c", False, (b"a/b", b"c", False)),
    (b"a/b/c", True, (b"", b"a/b/c", False)), (b"a/./b/c", True, (b"a", b"b/c", False)),
    (b"a/b/", True, (b"", b"a/b", False)),
])
def test_split_arg(fbuf, relative, want):
    arg = split_arg(fbuf, b"", relative)
    assert (arg.root, arg.name, arg.dot_dir) == want


def test_an_implied_dir_named_again_as_a_content_dir_keeps_its_contents(module):
    _, names = listing(module, ["-rR"], [b"mod/a/b/c", b"mod/a/"])
    assert (b"a", TOP) in names and (b"a", IMPLIED) not in names
    assert (b"a/e.txt", None) in names


def test_missing_args_ignored_or_sent_for_deletion(module):
    result, names = listing(module, ["-R", "--ignore-missing-args"], [b"mod/sub/nothere", b"mod/top.txt"])
    assert names == [(b"top.txt", None)] and not result.texts(MsgCode.ERROR_XFER)
    result, names = listing(module, ["-R", "--delete-missing-args"], [b"mod/sub/nothere", b"mod/top.txt"])
    assert names == [(b"top.txt", None), (b"sub", IMPLIED), (b"sub/nothere", None)]
    assert result.by_name(b"sub/nothere").mode == 0 and not result.texts(MsgCode.ERROR_XFER)


def test_a_directory_that_vanishes_between_lists_is_a_vanished_warning(tmp_path):
    """Incremental lists read each dir when its list goes out: one gone by then is flist.c
    send_directory's ENOENT, ``directory has vanished: NAME`` and IOERR_VANISHED (exit 24), not
    an opendir error; the other lists go out as usual."""
    import shutil

    from backupd.protocol.server_args import parse_server_args
    from backupd.roles.flist_builder import FlistBuilder
    from backupd.storage.tree import ModuleTree

    root = tmp_path / "mod"
    make_tree(root, {"a": {"x": "x\n"}, "gone": {"y": "y\n", "deeper": {"z": "z\n"}}, "f": "f\n"})
    opts = parse_server_args([b"--server", b"--sender", b"-re.iLsfxC", b".", b"mod/"])
    said: list[tuple[MsgCode, str]] = []
    with ModuleTree(root, module="mod") as tree:
        builder = FlistBuilder(tree, opts, make_filters=lambda abs_root: None, module_filters=None,
                               report=lambda code, text: said.append((code, text)), module="mod",
                               inc_recurse=True)
        first = builder.build([b""])
        assert [item.entry.name for item in first.items] == [b".", b"f", b"a", b"gone"]
        shutil.rmtree(root / "gone")
        items, bits = builder.list_dir(b"a")
        assert ([item.entry.name for item in items], bits) == ([b"a/x"], 0)
        items, bits = builder.list_dir(b"gone")
    assert (items, bits) == ([], IoError.VANISHED)
    assert said == [(MsgCode.WARNING, "directory has vanished: \"gone\" (in mod)\n")]
    assert builder.errors.tally.io_error == IoError.VANISHED  # the exit code 24 of a pull
