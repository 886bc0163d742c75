"""Parity with stock rsyncd 3.5.0 for the concrete examples of issue 9.

Every scenario runs the same client command against the stock rsyncd and
against backupd, both with ``history = no`` and seeded with the same module
tree, and compares the exit code, the itemized (``-i``) and ``*deleting``
lines in the order the client printed them, the daemon messages the client
prints, and the resulting module trees. Stock rsyncd is the oracle: nothing
here states what the output must be, only that both servers agree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.helpers import Dir, File, Symlink, make_tree, tree_differences
from tests.interop.conftest import T0, set_mtime, show

NO_HISTORY = {"history": False}


@pytest.fixture(params=["3.5.0", "3.2.7"], ids=["c3.5.0", "c3.2.7"])
def client(request, rsync_clients):
    """Both stock clients in turn."""
    return rsync_clients[request.param]


# stdout lines that differ for reasons outside these scenarios (incremental recursion, byte counts)
OTHER = re.compile(
    r"^(?:(?:sending|building|receiving) (?:incremental )?file list|sent \d|total size is|$"
    r"|Number of |Total |Literal data|Matched data|File list )"
)
NOISE = re.compile(r" at [\w./]+(?:\(\d+\))? \[\w+=[\w.-]+\]$")


def printed(done) -> list[str]:
    """The client's stdout lines (itemize, ``*deleting``, info lines), in its order.

    The file-list banner and the byte counts of -v are left out.
    """
    return [line for line in done.stdout.splitlines() if not OTHER.match(line)]


def messages(done, ignore: str | None = None) -> list[str]:
    """stderr lines, without rsync's ``at main.c(N) [sender=V]`` tails, sorted; ``ignore``: a regex of lines to drop."""
    lines = (NOISE.sub("", line).strip() for line in done.stderr.splitlines() if line.strip())
    return sorted(line for line in lines if not (ignore and re.search(ignore, line)))


def make_source(root: Path, spec) -> Path:
    make_tree(root, spec)
    os.chmod(root, 0o755)
    set_mtime(root, T0 + 40)
    return root


def compare(
    make_targets,
    client,
    args,
    *,
    seed=None,
    path="",
    params=None,
    cwd=None,
    volatile=(),
    order=True,
    stderr=True,
    ignore=None,
):
    """Run ``rsync <args> URL/path`` into rsyncd and backupd modules seeded with ``seed``.

    Asserts equal exit codes, equal printed lines (in order unless ``order``
    is false), equal stderr messages (if ``stderr``) and equal module trees;
    ``volatile`` names paths whose mtime is not compared (changed "now").
    """
    targets = make_targets(seed=seed or {}, params={**NO_HISTORY, **(params or {})})
    results = {k: t.push(client, *args, path=path, cwd=cwd) for k, t in targets.items()}
    stock, ours = results["rsyncd"], results["backupd"]
    both = f"--- rsyncd\n{show(stock)}\n\n--- backupd\n{show(ours)}"
    assert ours.returncode == stock.returncode, both
    a, b = printed(stock), printed(ours)
    if not order:
        a, b = sorted(a), sorted(b)
    assert b == a, both
    if stderr:
        assert messages(ours, ignore) == messages(stock, ignore), both
    diffs = tree_differences(targets["rsyncd"].module, targets["backupd"].module)
    skip = tuple(f"{os.fsencode(p)!r}: mtime differs" for p in volatile)
    diffs = [d for d in diffs if not d.startswith(skip)]
    assert not diffs, "modules differ (rsyncd vs backupd):\n" + "\n".join(diffs) + "\n" + both
    return targets, results


SRC = {
    "a.txt": File(b"a\n", mode=0o644, mtime=T0),
    "sub": Dir({"b.txt": File(b"b\n", mode=0o644, mtime=T0)}, mode=0o755, mtime=T0),
}


# ---------------------------------------------------------------- 1. missing destination


def test_push_into_missing_dir(make_targets, client, tmp_path):
    src = make_source(tmp_path / "src", SRC)
    compare(make_targets, client, ["-ai", f"{src}/"], path="x/", volatile=["."])


def test_push_mkpath(make_targets, client, tmp_path):
    src = make_source(tmp_path / "src", SRC)
    compare(make_targets, client, ["-ai", "--mkpath", f"{src}/"], path="x/y/", volatile=[".", "x", "x/y"])


@pytest.mark.parametrize(
    "args,path",
    [
        (["-ai", "SRC"], "x/"),  # the dir itself, not its contents
        (["-ai", "-n", "SRC/"], "x/"),
        (["-ai", "SRC/"], "x/y/"),  # missing parent: mkdir fails
        (["-ai", "--mkpath", "SRC/a.txt"], "x/y/f"),
        (["-ai", "--mkpath", "SRC/a.txt"], "x/y/"),
        (["-av", "--mkpath", "SRC/"], "x/y"),
    ],
    ids=["dir", "dry-run", "no-parent", "mkpath-file", "mkpath-file-slash", "mkpath-v"],
)
def test_push_missing_dest_forms(make_targets, client, tmp_path, args, path):
    src = make_source(tmp_path / "src", SRC)
    args = [a.replace("SRC", str(src)) for a in args]
    compare(make_targets, client, args, path=path, volatile=[".", "x", "x/y"])


# ---------------------------------------------------------------- 2. deletion order, --max-delete


def _f(content: bytes, mtime=T0) -> File:
    return File(content, mode=0o644, mtime=mtime)


DEL_SEED = {
    "keep.txt": _f(b"keep\n"),
    "gone1.txt": _f(b"1\n"),
    "gone2.txt": _f(b"2\n"),
    "zz.txt": _f(b"zz\n"),
    "adir": Dir(
        {"a": _f(b"a\n"), "b": _f(b"b\n"), "deep": Dir({"x": _f(b"x\n"), "y": _f(b"y\n")}, mode=0o755, mtime=T0)},
        mode=0o755,
        mtime=T0,
    ),
    "sub": Dir({"keep": _f(b"k\n"), "old1": _f(b"o1\n"), "old2": _f(b"o2\n")}, mode=0o755, mtime=T0),
}
DEL_SRC = {
    "keep.txt": _f(b"keep\n"),
    "new.txt": _f(b"new\n", T0 + 5),
    "sub": Dir({"keep": _f(b"k\n"), "new": _f(b"n\n", T0 + 5)}, mode=0o755, mtime=T0),
}


@pytest.mark.parametrize(
    "extra",
    [
        ["--delete"],
        ["--delete-before"],
        ["--delete-after"],
        ["--delete-delay"],
        ["--delete", "-n"],
        ["--delete", "--max-delete=1"],
        ["--delete", "--max-delete=3"],
        ["--delete", "--max-delete=6"],
        ["--delete-after", "--max-delete=4"],
        ["--delete", "--filter=P adir/deep/y"],
        ["--delete", "--filter=P adir/b"],
    ],
    ids=lambda x: " ".join(x),
)
def test_delete_order(make_targets, client, tmp_path, extra):
    src = make_source(tmp_path / "src", DEL_SRC)
    compare(make_targets, client, ["-ai", *extra, f"{src}/"], seed=DEL_SEED, volatile=[".", "sub", "adir", "adir/deep"])


# ---------------------------------------------------------------- 3. --existing, -m, type changes, -K


EX_SEED = {"keep.txt": _f(b"old\n"), "sub": Dir({"a": _f(b"old a\n")}, mode=0o755, mtime=T0)}
EX_SRC = {
    "keep.txt": _f(b"new keep\n", T0 + 9),
    "added.txt": _f(b"added\n"),
    "sub": Dir({"a": _f(b"new a\n", T0 + 9), "b": _f(b"b\n")}, mode=0o755, mtime=T0 + 3),
    "newdir": Dir({"c": _f(b"c\n"), "inner": Dir({"d": _f(b"d\n")}, mode=0o755, mtime=T0)}, mode=0o755, mtime=T0),
}


@pytest.mark.parametrize("extra", [["--existing"], ["--existing", "--delete"], ["--ignore-existing"]], ids=" ".join)
def test_existing(make_targets, client, tmp_path, extra):
    src = make_source(tmp_path / "src", EX_SRC)
    compare(make_targets, client, ["-ai", *extra, f"{src}/"], seed=EX_SEED, volatile=[".", "sub"])


PRUNE_SRC = {
    "a.txt": _f(b"a\n"),
    "empty": Dir({}, mode=0o755, mtime=T0),
    "onlylog": Dir(
        {"x.log": _f(b"x\n"), "deeper": Dir({"y.log": _f(b"y\n")}, mode=0o755, mtime=T0)}, mode=0o755, mtime=T0
    ),
    "kept": Dir({"k.txt": _f(b"k\n"), "e": Dir({}, mode=0o755, mtime=T0)}, mode=0o755, mtime=T0),
}


@pytest.mark.parametrize(
    "extra", [["-m"], ["-m", "--exclude=*.log"], ["-m", "--exclude=*.log", "--delete"]], ids=" ".join
)
def test_prune_empty_dirs(make_targets, client, tmp_path, extra):
    src = make_source(tmp_path / "src", PRUNE_SRC)
    compare(make_targets, client, ["-ai", *extra, f"{src}/"], volatile=["."])


TYPE_SEED = {
    "d2f": Dir({"inner": _f(b"i\n"), "sub": Dir({"x": _f(b"x\n")}, mode=0o755, mtime=T0)}, mode=0o755, mtime=T0),
    "f2l": _f(b"file\n"),
    "l2f": Symlink("f2l"),
    "f2d": _f(b"was a file\n"),
    "emptyd2f": Dir({}, mode=0o755, mtime=T0),
}
TYPE_SRC = {
    "d2f": _f(b"now a file\n"),
    "f2l": Symlink("d2f"),
    "l2f": _f(b"now a file too\n"),
    "f2d": Dir({"n": _f(b"n\n")}, mode=0o755, mtime=T0),
    "emptyd2f": _f(b"e\n"),
}


@pytest.mark.parametrize(
    "extra", [[], ["--delete"], ["--delete", "--force"], ["--force"], ["--delete-after", "--force"]], ids=" ".join
)
def test_type_changes(make_targets, client, tmp_path, extra):
    src = make_source(tmp_path / "src", TYPE_SRC)
    # rsyncd's output buffering puts "./" first there (its flushes follow its reads, not ours)
    in_order = "--delete-after" not in extra
    compare(make_targets, client, ["-ai", *extra, f"{src}/"], seed=TYPE_SEED, volatile=["."], order=in_order)


DIRLINK_SEED = {
    "real": Dir({"old": _f(b"old\n")}, mode=0o755, mtime=T0),
    "link": Symlink("real"),
}
DIRLINK_SRC = {"link": Dir({"new": _f(b"new\n"), "old": _f(b"old2\n", T0 + 4)}, mode=0o755, mtime=T0)}




@pytest.mark.parametrize(
    "extra",
    [
        ["-K"],
        [],
        ["-K", "--delete"],  # rsyncd too deletes the link (it is not in the list) and makes a dir
    ],
    ids=lambda x: " ".join(x) or "plain",
)
def test_keep_dirlinks(make_targets, client, tmp_path, extra):
    src = make_source(tmp_path / "src", DIRLINK_SRC)
    compare(make_targets, client, ["-ai", *extra, f"{src}/"], seed=DIRLINK_SEED, volatile=[".", "real"])


# ---------------------------------------------------------------- 4. --safe-links


LINKS_SRC = {
    "f": _f(b"f\n"),
    "abs": Symlink("/etc/passwd", mtime=T0),
    "up": Symlink("../../outside", mtime=T0),
    "ok": Symlink("f", mtime=T0),
    "sub": Dir({"in": Symlink("../f", mtime=T0), "out": Symlink("../../f", mtime=T0)}, mode=0o755, mtime=T0),
}


@pytest.mark.parametrize("chroot", [False, True], ids=["no-chroot", "chroot"])
@pytest.mark.parametrize("extra", [["--safe-links"], ["--safe-links", "-v"], []], ids=lambda x: " ".join(x) or "plain")
def test_safe_links(make_targets, client, tmp_path, extra, chroot):
    if chroot and os.geteuid() != 0:
        pytest.skip("rsyncd chroots only as root")
    src = make_source(tmp_path / "src", LINKS_SRC)
    compare(make_targets, client, ["-ai", *extra, f"{src}/"], params={"use chroot": chroot}, volatile=["."])


# ---------------------------------------------------------------- 5. daemon messages


SPECIAL_SRC = {"f": _f(b"f\n"), "ln": Symlink("f"), "sub": Dir({"g": _f(b"g\n")}, mode=0o755, mtime=T0)}


def test_skipping_non_regular(make_targets, client, tmp_path):
    src = make_source(tmp_path / "src", SPECIAL_SRC)
    os.mkfifo(src / "fifo")
    set_mtime(src, T0 + 40)
    compare(make_targets, client, ["-rti", f"{src}/"], volatile=["."])


def test_daemon_exclude(make_targets, client, tmp_path):
    src = make_source(tmp_path / "src", {**SPECIAL_SRC, "x.secret": _f(b"s\n")})
    compare(make_targets, client, ["-ai", f"{src}/"], params={"exclude": "*.secret"}, volatile=["."])


@pytest.mark.parametrize("extra", [["--delete"], ["--delete-after"], ["-b"]], ids=" ".join)
def test_refuse_options(make_targets, client, tmp_path, extra):
    src = make_source(tmp_path / "src", SPECIAL_SRC)
    # the client's "read error: Connection reset by peer" after rsyncd's exit is TCP timing
    compare(
        make_targets,
        client,
        ["-ai", *extra, f"{src}/"],
        params={"refuse options": "delete b"},
        volatile=["."],
        ignore="Connection reset by peer",
    )


# ---------------------------------------------------------------- 6. itemize details


def test_symlink_retarget(make_targets, client, tmp_path):
    src = make_source(tmp_path / "src", {"f": _f(b"f\n"), "g": _f(b"g\n"), "ln": Symlink("g", mtime=T0 + 7)})
    seed = {"f": _f(b"f\n"), "g": _f(b"g\n"), "ln": Symlink("f", mtime=T0)}
    compare(make_targets, client, ["-ai", f"{src}/"], seed=seed, volatile=["."])


def test_hard_link_groups(make_targets, client, tmp_path):
    src = make_source(tmp_path / "src", {"a": _f(b"shared\n"), "z": _f(b"z\n")})
    os.link(src / "a", src / "b")
    os.link(src / "a", src / "c")
    set_mtime(src, T0 + 40)
    compare(make_targets, client, ["-aiH", f"{src}/"], volatile=["."])


# ---------------------------------------------------------------- 7. --append of a new file


@pytest.mark.parametrize("extra", [["--append"], ["--append-verify"]], ids=" ".join)
def test_append_new_file(make_targets, client, tmp_path, extra):
    src = make_source(tmp_path / "src", {"new": _f(b"n" * 5000), "grow": _f(b"g" * 3000, T0 + 1)})
    targets, results = compare(
        make_targets, client, ["-ai", "--stats", *extra, f"{src}/"], seed={"grow": _f(b"g" * 1000)}, volatile=["."]
    )
    stats = {k: re.search(r"Total bytes sent: ([\d,]+)", r.stdout).group(1) for k, r in results.items()}
    assert abs(int(stats["backupd"].replace(",", "")) - int(stats["rsyncd"].replace(",", ""))) < 200, stats
