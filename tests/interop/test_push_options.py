"""Push options a backup client uses, against backupd and the stock rsyncd.

Most scenarios run twice, on modules seeded with the same tree: once into
the stock rsyncd, once into backupd. The client must exit with the same code
and itemize the same changes, and the two modules must end up identical
(history folder aside); on top of that backupd must have kept exactly the
replaced and deleted files in history, with their old content.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import (
    Dir,
    File,
    assert_trees_equal,
    kill_group,
    make_tree,
    scan_tree,
    tree_differences,
)
from tests.interop.conftest import (
    HISTORY,
    T0,
    assert_ok,
    local_days,
    parse_stats,
    set_mtime,
    show,
    write_random,
)

# ---------------------------------------------------------------- the scenario

SEED = {  # the module before the push
    "keep.txt": File(b"unchanged\n", mode=0o644, mtime=T0),
    "changed.txt": File(b"old content\n", mode=0o644, mtime=T0),
    "samesize.txt": File(b"aaaa", mode=0o644, mtime=T0),  # src: same size, newer mtime
    "samemtime.txt": File(b"1111", mode=0o644, mtime=T0),  # src: same size and mtime
    "newer.txt": File(b"server copy, newer\n", mode=0o644, mtime=T0 + 1000),  # src is older
    "extra.txt": File(b"extraneous\n", mode=0o644, mtime=T0),
    "extra.log": File(b"extraneous log\n", mode=0o644, mtime=T0),
    "extradir": Dir(
        {
            "x": File(b"x\n", mode=0o644, mtime=T0),
            "y": Dir({"z": File(b"z\n", mode=0o600, mtime=T0)}, mode=0o700, mtime=T0),
        },
        mode=0o755,
        mtime=T0,
    ),
    "sub": Dir(
        {"a": File(b"a\n", mode=0o644, mtime=T0), "stale": File(b"stale\n", mode=0o644, mtime=T0)},
        mode=0o755,
        mtime=T0,
    ),
}
SOURCE = {
    "keep.txt": File(b"unchanged\n", mode=0o644, mtime=T0),
    "changed.txt": File(b"new content, longer than before\n", mode=0o644, mtime=T0 + 50),
    "samesize.txt": File(b"bbbb", mode=0o644, mtime=T0 + 100),
    "samemtime.txt": File(b"2222", mode=0o644, mtime=T0),
    "newer.txt": File(b"client copy\n", mode=0o644, mtime=T0),
    "added.txt": File(b"added\n", mode=0o640, mtime=T0 + 10),
    "sub": Dir(
        {"a": File(b"a\n", mode=0o644, mtime=T0), "b": File(b"b\n", mode=0o644, mtime=T0 + 20)},
        mode=0o755,
        mtime=T0 + 30,
    ),
}
SEED_CONTENT = {
    "keep.txt": b"unchanged\n",
    "changed.txt": b"old content\n",
    "samesize.txt": b"aaaa",
    "samemtime.txt": b"1111",
    "newer.txt": b"server copy, newer\n",
    "extra.txt": b"extraneous\n",
    "extra.log": b"extraneous log\n",
    "extradir/x": b"x\n",
    "extradir/y/z": b"z\n",
    "sub/a": b"a\n",
    "sub/stale": b"stale\n",
}
QUICK_CHECK = {"changed.txt", "samesize.txt", "newer.txt"}  # size or mtime differ
EXTRANEOUS = {"extra.txt", "extra.log", "extradir/x", "extradir/y/z", "sub/stale"}


def make_source(root: Path, spec=SOURCE) -> Path:
    make_tree(root, spec)
    os.chmod(root, 0o755)
    set_mtime(root, T0 + 40)
    return root


@pytest.fixture
def client(rsync_clients):
    """The 3.5.0 client (the scenarios are about the server, not the client version)."""
    return rsync_clients["3.5.0"]


@pytest.fixture
def source(tmp_path) -> Path:
    return make_source(tmp_path / "src")


ITEM_LINE = re.compile(r"^([<>ch.*][fdLDS][ .+?a-zA-Z]{9} |\*deleting +)(.*)$")


def itemized(stdout: str) -> list[str]:
    """The itemize (-i) and ``*deleting`` lines of a client's output, sorted."""
    lines = [m.groups() for m in map(ITEM_LINE.match, stdout.splitlines()) if m]
    return sorted(f"{item.strip()} {name}" for item, name in lines)


def run_both(make_targets, client, args, *, seed=SEED, path="", cwd=None, volatile=(), items=True):
    """Run ``rsync <args> URL`` into seeded rsyncd and backupd modules; compare.

    Asserts equal exit codes, equal itemized output (unless ``items`` is
    false) and equal modules, history aside. ``volatile`` names directories
    whose mtime is not compared: ones outside the transfer that changed
    anyway (an entry created or deleted in them), so both servers leave
    "now" there. Returns ``(targets, results)``, both keyed by kind.
    """
    targets = make_targets(seed=seed)
    results = {
        kind: target.push(client, *args, path=path, cwd=cwd) for kind, target in targets.items()
    }
    stock, ours = results["rsyncd"], results["backupd"]
    assert ours.returncode == stock.returncode, f"{show(stock)}\n\n{show(ours)}"
    if items:
        assert itemized(ours.stdout) == itemized(stock.stdout), f"{show(stock)}\n\n{show(ours)}"
    diffs = tree_differences(targets["rsyncd"].module, targets["backupd"].module)
    skip = tuple(f"{os.fsencode(p)!r}: mtime differs" for p in volatile)
    diffs = [d for d in diffs if not d.startswith(skip)]
    assert not diffs, "modules differ (rsyncd vs backupd):\n" + "\n".join(diffs)
    return targets, results


def expect_history(target, paths, content=SEED_CONTENT) -> None:
    """History holds exactly ``paths``, each once, with its content from ``content``."""
    assert target.history_contents() == {rel: [content[rel]] for rel in paths}


# ---------------------------------------------------------------- selection and deletion


@pytest.mark.parametrize(
    ("args", "replaced", "deleted"),
    [
        pytest.param([], QUICK_CHECK, set(), id="plain"),
        pytest.param(["--delete"], QUICK_CHECK, EXTRANEOUS, id="delete"),
        pytest.param(["--delete-before"], QUICK_CHECK, EXTRANEOUS, id="delete-before"),
        pytest.param(["--delete-during"], QUICK_CHECK, EXTRANEOUS, id="delete-during"),
        pytest.param(["--delete-delay"], QUICK_CHECK, EXTRANEOUS, id="delete-delay"),
        pytest.param(["--delete-after"], QUICK_CHECK, EXTRANEOUS, id="delete-after"),
        pytest.param(
            ["--delete", "--exclude=*.log"],
            QUICK_CHECK,
            EXTRANEOUS - {"extra.log"},
            id="exclude-protects",
        ),
        pytest.param(
            ["--delete", "--exclude=/extradir/y/"],
            QUICK_CHECK,
            EXTRANEOUS - {"extradir/y/z"},
            id="exclude-protects-inside-deleted-dir",
        ),
        pytest.param(
            ["--delete", "--delete-excluded", "--exclude=*.log", "--exclude=keep.txt"],
            QUICK_CHECK,
            EXTRANEOUS | {"keep.txt"},
            id="delete-excluded",
        ),
        pytest.param(
            ["--delete", "--filter=P extra.txt", "--filter=P /sub/stale"],
            QUICK_CHECK,
            EXTRANEOUS - {"extra.txt", "sub/stale"},
            id="protect-filter",
        ),
        pytest.param(["--size-only"], QUICK_CHECK - {"samesize.txt"}, set(), id="size-only"),
        pytest.param(["-c"], QUICK_CHECK | {"samemtime.txt"}, set(), id="checksum"),
        pytest.param(["-u"], QUICK_CHECK - {"newer.txt"}, set(), id="update"),
        pytest.param(["--existing", "--delete"], QUICK_CHECK, EXTRANEOUS, id="existing"),
        pytest.param(["--ignore-existing"], set(), set(), id="ignore-existing"),
        pytest.param(
            ["-I"], QUICK_CHECK | {"samemtime.txt", "keep.txt", "sub/a"}, set(), id="ignore-times"
        ),
        pytest.param(["--whole-file", "--delete"], QUICK_CHECK, EXTRANEOUS, id="whole-file"),
        pytest.param(["--inplace"], QUICK_CHECK, set(), id="inplace"),
    ],
)
def test_push_option_matches_rsyncd_and_keeps_history(
    make_targets, client, source, args, replaced, deleted
):
    # extradir/ stays for its protected y/; deleting x/ left "now" as its mtime on both
    volatile = ["extradir"] if "--exclude=/extradir/y/" in args else []
    _check_option(make_targets, client, source, args, replaced, deleted, volatile)


@pytest.mark.parametrize(
    "delete", ["--delete", "--delete-before", "--delete-during", "--delete-delay", "--delete-after"]
)
def test_delete_variants_with_the_327_client(make_targets, rsync_clients, source, delete):
    client = rsync_clients["3.2.7"]
    _check_option(make_targets, client, source, [delete], QUICK_CHECK, EXTRANEOUS)


def _check_option(make_targets, client, source, args, replaced, deleted, volatile=()) -> None:
    started = time.time()
    argv = ["-a", "-i", *args, f"{source}/"]
    targets, _ = run_both(make_targets, client, argv, volatile=volatile)
    backupd = targets["backupd"]
    kept = replaced | deleted
    expect_history(backupd, kept)
    assert set(backupd.day_dirs()) <= local_days(started)
    for rel in deleted:
        assert not (backupd.module / rel).exists()
    for rel in replaced:
        assert (backupd.module / rel).read_bytes() == (source / rel).read_bytes()


def test_deleted_directory_is_itemized_entry_by_entry(make_targets, client, source):
    targets = make_targets(seed=SEED)
    args = ["-a", "-i", "--stats", "--delete", f"{source}/"]
    results = {kind: target.push(client, *args) for kind, target in targets.items()}
    stock, ours = results["rsyncd"], results["backupd"]
    assert itemized(ours.stdout) == itemized(stock.stdout), f"{show(stock)}\n\n{show(ours)}"
    count = "Number of deleted files"
    assert parse_stats(ours.stdout)[count] == parse_stats(stock.stdout)[count]


def test_existing_creates_nothing_new(make_targets, client, source):
    targets, _ = run_both(make_targets, client, ["-a", "-i", "--existing", f"{source}/"])
    module = targets["backupd"].module
    assert not (module / "added.txt").exists() and not (module / "sub/b").exists()
    assert (module / "changed.txt").read_bytes() == (source / "changed.txt").read_bytes()


def test_ignore_existing_only_creates(make_targets, client, source):
    targets, _ = run_both(make_targets, client, ["-a", "-i", "--ignore-existing", f"{source}/"])
    module = targets["backupd"].module
    assert (module / "added.txt").read_bytes() == b"added\n"
    assert (module / "changed.txt").read_bytes() == SEED_CONTENT["changed.txt"]
    assert not (module / HISTORY).exists()


def test_max_delete_stops_after_n_deletions(make_targets, client, source):
    targets = make_targets(seed=SEED)
    args = ["-a", "-i", "--delete", "--max-delete=2", f"{source}/"]
    results = {kind: t.push(client, *args) for kind, t in targets.items()}
    assert results["backupd"].returncode == results["rsyncd"].returncode, show(results["backupd"])
    for kind, target in targets.items():
        assert "Deletions stopped due to --max-delete limit" in results[kind].stderr, show(
            results[kind]
        )
        left = scan_tree(target.module, ignore=[HISTORY])
        gone = [
            rel
            for rel in (
                b"extra.txt",
                b"extra.log",
                b"extradir",
                b"extradir/x",
                b"extradir/y",
                b"extradir/y/z",
                b"sub/stale",
            )
            if rel not in left
        ]
        assert 1 <= len(gone) <= 2, (kind, gone)  # files and directories both count
    backupd = targets["backupd"]
    gone_files = {rel for rel in EXTRANEOUS if not (backupd.module / rel).exists()}
    expect_history(backupd, QUICK_CHECK | gone_files)


def test_max_delete_counts_each_file_of_a_deleted_directory(make_targets, client, tmp_path):
    seed = {"old": Dir({n: File(n.encode(), mtime=T0) for n in "abcd"}, mtime=T0)}
    src = make_source(tmp_path / "src", {"new.txt": File(b"new\n", mtime=T0)})
    targets = make_targets(seed=seed)
    for kind in ("rsyncd", "backupd"):
        target = targets[kind]
        done = target.push(client, "-a", "--delete", "--max-delete=1", f"{src}/")
        left = [n for n in "abcd" if (target.module / "old" / n).exists()]
        assert len(left) >= 3, (kind, left, show(done))
        assert "Deletions stopped due to --max-delete limit" in done.stderr, show(done)


def test_dry_run_changes_nothing(make_targets, client, source):
    targets, results = run_both(
        make_targets, client, ["-a", "-i", "--delete", "--dry-run", f"{source}/"]
    )
    out = results["backupd"].stdout
    assert "*deleting   extra.txt" in out and "<f+++++++++ added.txt" in out, out
    module = targets["backupd"].module
    seeded = make_tree(module.parent / "fresh-seed", SEED)
    os.chmod(seeded, 0o755)
    set_mtime(seeded, T0)
    assert_trees_equal(seeded, module, ignore=())  # not even a history folder


# ---------------------------------------------------------------- history protection


def test_delete_of_the_module_root_leaves_history_intact(backupd_target, client, source):
    module = backupd_target.module
    make_tree(module, {HISTORY: {"2020-01-01": {"old.txt": b"kept for ever\n"}}})
    before = scan_tree(module / HISTORY)
    done = assert_ok(backupd_target.push(client, "-a", "-i", "--delete", f"{source}/"))
    assert HISTORY not in done.stdout, done.stdout
    assert_trees_equal(source, module)
    assert {k: v for k, v in scan_tree(module / HISTORY).items() if k.startswith(b"2020")} == {
        k: v for k, v in before.items() if k.startswith(b"2020")
    }


def test_delete_excluded_of_history_leaves_it_intact(backupd_target, client, source):
    module = backupd_target.module
    make_tree(module, {HISTORY: {"2020-01-01": {"old.txt": b"kept for ever\n"}}})
    done = backupd_target.push(
        client, "-a", "-i", "--delete", "--delete-excluded", f"--exclude=/{HISTORY}", f"{source}/"
    )
    assert done.returncode == 0, show(done)
    assert HISTORY not in done.stdout, done.stdout
    assert (module / HISTORY / "2020-01-01" / "old.txt").read_bytes() == b"kept for ever\n"
    assert_trees_equal(source, module)


@pytest.mark.parametrize("path", [f"{HISTORY}/", f"{HISTORY}/2020-01-01/", f"{HISTORY}/new/"])
def test_push_into_history_is_refused(backupd_target, client, source, path):
    module = backupd_target.module
    make_tree(module, {HISTORY: {"2020-01-01": {"old.txt": b"kept for ever\n"}}})
    before = scan_tree(module)
    done = backupd_target.push(client, "-a", "--delete", f"{source}/", path=path)
    assert done.returncode != 0, show(done)
    assert HISTORY in done.stderr or "history" in done.stderr.lower(), show(done)
    assert scan_tree(module) == before


def test_source_named_like_history_cannot_write_into_it(backupd_target, client, tmp_path):
    module = backupd_target.module
    make_tree(module, {HISTORY: {"2020-01-01": {"old.txt": b"kept for ever\n"}}})
    before = scan_tree(module / HISTORY)
    src = make_source(tmp_path / "src", {**SOURCE, HISTORY: {"2020-01-01": {"old.txt": b"forged"}}})
    done = backupd_target.push(client, "-a", "--delete", f"{src}/")
    assert done.returncode != 0, show(done)
    assert HISTORY in done.stderr, show(done)
    assert scan_tree(module / HISTORY) == before
    assert (module / "changed.txt").read_bytes() == (src / "changed.txt").read_bytes()


@pytest.mark.parametrize(
    "backup_args", [["--backup", "--backup-dir=x"], ["--backup"], ["-b", "--suffix=.bak"]]
)
def test_client_backup_is_folded_into_history(backupd_target, client, source, backup_args):
    module = backupd_target.module
    make_tree(module, SEED)
    done = assert_ok(backupd_target.push(client, "-a", "--delete", *backup_args, f"{source}/"))
    assert_trees_equal(source, module, ignore=[HISTORY, "samemtime.txt"])  # quick check skips it
    assert not list(module.rglob("*.bak")) and not list(module.rglob("*~")), show(done)
    expect_history(backupd_target, QUICK_CHECK | EXTRANEOUS)


# ---------------------------------------------------------------- transfer modes

MiB = 1 << 20


def big_pair(tmp_path: Path, seed: int) -> tuple[bytes, bytes]:
    """Old and new versions of a 2 MiB file: three 4 KiB regions differ."""
    old = write_random(tmp_path / f"old-{seed}.bin", 2 * MiB, seed).read_bytes()
    new = bytearray(old)
    for k, off in enumerate((100_000, 900_000, 1_700_000)):
        new[off : off + 4096] = bytes([k + 1]) * 4096
    return old, bytes(new)


@pytest.mark.parametrize(
    ("args", "literal_max"),
    [
        pytest.param([], 200_000, id="delta"),
        pytest.param(["--inplace"], 200_000, id="inplace"),
        pytest.param(["--whole-file"], None, id="whole-file"),
        pytest.param(["--no-whole-file", "--partial"], 200_000, id="partial"),
    ],
)
def test_changed_big_file_transfer_modes(make_targets, client, tmp_path, args, literal_max):
    old, new = big_pair(tmp_path, seed=5)
    seed = {"big.bin": File(old, mode=0o644, mtime=T0)}
    src = make_source(tmp_path / "src", {"big.bin": File(new, mode=0o644, mtime=T0 + 60)})
    targets, results = run_both(
        make_targets, client, ["-a", "-i", "--stats", *args, f"{src}/"], seed=seed
    )
    stats = parse_stats(results["backupd"].stdout)
    if literal_max is None:
        assert stats["Matched data"] == 0 and stats["Literal data"] == len(new), stats
    else:
        assert stats["Literal data"] < literal_max, results["backupd"].stdout
    assert_trees_equal(src, targets["backupd"].module)
    # --inplace must not write through a hard link into the kept version
    assert targets["backupd"].versions("big.bin") == [old]


@pytest.mark.parametrize("corrupt", [False, True], ids=["prefix-matches", "prefix-differs"])
def test_append_verify(make_targets, client, tmp_path, corrupt):
    full = write_random(tmp_path / "full.bin", MiB, seed=6).read_bytes()
    prefix = bytearray(full[:600_000])
    if corrupt:
        prefix[1000:1010] = b"X" * 10
    seed = {"log.bin": File(bytes(prefix), mode=0o644, mtime=T0)}
    src = make_source(tmp_path / "src", {"log.bin": File(full, mode=0o644, mtime=T0 + 60)})
    argv = ["-a", "-i", "--stats", "--append-verify", f"{src}/"]
    # itemize lines of a failed verification: see test_append_verify_retains_failed_update
    targets, results = run_both(make_targets, client, argv, seed=seed, items=not corrupt)
    assert results["backupd"].returncode == 0, show(results["backupd"])
    assert_trees_equal(src, targets["backupd"].module)
    if not corrupt:  # only the appended part travels
        assert parse_stats(results["backupd"].stdout)["Literal data"] <= len(full) - len(prefix)
    assert targets["backupd"].versions("log.bin")[0] == bytes(prefix)


def test_append_verify_retains_failed_update(make_targets, client, tmp_path):
    full = write_random(tmp_path / "full.bin", MiB, seed=6).read_bytes()
    prefix = bytearray(full[:600_000])
    prefix[1000:1010] = b"X" * 10
    seed = {"log.bin": File(bytes(prefix), mode=0o644, mtime=T0)}
    src = make_source(tmp_path / "src", {"log.bin": File(full, mode=0o644, mtime=T0 + 60)})
    argv = ["-a", "-i", "--stats", "--append-verify", f"{src}/"]
    _, results = run_both(make_targets, client, argv, seed=seed)  # itemized alike: the redo is '<f..t......'
    assert "update retained" in results["rsyncd"].stderr, show(results["rsyncd"])
    assert "update retained" in results["backupd"].stderr, show(results["backupd"])
    stock, ours = (parse_stats(results[k].stdout)["Literal data"] for k in ("rsyncd", "backupd"))
    # the redo is a delta against the retained file, not the whole file once more
    assert ours <= stock + 64 * 1024 and ours < len(full), (stock, ours)


def test_interrupted_partial_push_keeps_old_version_and_resumes(make_targets, client, tmp_path):
    size = 24 * MiB
    old, new, src, targets = big_file_update(make_targets, tmp_path, size, seed=7)
    for kind, target in targets.items():
        module = target.module
        kill_push_midway(client, target, src, "--partial", after_s=1.0)  # ~4 MiB of the 24 MiB are through
        partial = _wait_settled(module).read_bytes()
        # --partial: the data received so far replaces the file
        assert 0 < len(partial) < size and new.startswith(partial), (kind, len(partial))
        if kind == "backupd":
            assert target.versions("big.bin") == [old]

        done = assert_ok(target.push(client, "-a", "--partial", "--stats", f"{src}/"))
        assert parse_stats(done.stdout)["Matched data"] > 0, done.stdout  # resumed from it
        assert_trees_equal(src, module)
        if kind == "backupd":
            assert target.versions("big.bin") == [old, partial]


def test_interrupted_partial_dir_push_keeps_the_partial_aside_and_resumes(make_targets, client, tmp_path):
    size = 24 * MiB
    old, new, src, targets = big_file_update(make_targets, tmp_path, size, seed=17)
    for kind, target in targets.items():
        module = target.module
        kill_push_midway(client, target, src, "--partial-dir=.part", after_s=1.0)
        _wait_settled(module)
        # --partial-dir: the data so far goes to .part/big.bin (dir 0700), the file itself stays as it was
        assert (module / "big.bin").read_bytes() == old, kind
        partial = (module / ".part" / "big.bin").read_bytes()
        assert 0 < len(partial) < size and new.startswith(partial), (kind, len(partial))
        assert (module / ".part").stat().st_mode & 0o777 == 0o700, kind

        done = assert_ok(target.push(client, "-a", "--partial-dir=.part", "--stats", f"{src}/"))
        assert parse_stats(done.stdout)["Matched data"] > 0, done.stdout  # resumed from the partial file
        assert not (module / ".part").exists(), kind  # used, then removed with its dir
        assert_trees_equal(src, module)


@pytest.mark.parametrize("update", [False, True], ids=["new", "delta"])
def test_sparse_push_leaves_holes_like_rsyncd(make_targets, client, tmp_path, update):
    data = os.urandom(100_000) + bytes(6 * MiB) + os.urandom(50_000) + bytes(2 * MiB)
    seed = {"disk.img": File(data[: 3 * MiB] + os.urandom(1000), mode=0o644, mtime=T0)} if update else {}
    src = make_source(tmp_path / "src", {"disk.img": File(data, mode=0o644, mtime=T0 + 60)})
    targets, results = run_both(make_targets, client, ["-a", "-S", "--stats", f"{src}/"], seed=seed)
    if update:  # the zeros came as matched blocks of the old copy: still holes
        assert parse_stats(results["backupd"].stdout)["Matched data"] > 0
    used = {kind: os.stat(t.module / "disk.img").st_blocks * 512 for kind, t in targets.items()}
    assert used["backupd"] <= 1 * MiB, used  # ~150 KB of data, the 8 MiB of zeros are holes
    assert used["rsyncd"] <= 1 * MiB, used
    dense = targets["backupd"]
    assert_ok(dense.push(client, "-a", "-I", f"{src}/"))  # without -S: every byte written
    assert os.stat(dense.module / "disk.img").st_blocks * 512 >= 8 * MiB


def test_killed_client_without_partial_leaves_old_file_and_no_temp(make_targets, client, tmp_path):
    old, _, src, targets = big_file_update(make_targets, tmp_path, 16 * MiB, seed=9)
    for kind, target in targets.items():
        module = target.module
        kill_push_midway(client, target, src, after_s=0.5)
        # the server drops the unfinished temp file; the old version stays in place
        assert _wait_settled(module).read_bytes() == old, kind
        assert not list(module.glob(".big.bin.*")), kind
        if kind == "backupd":
            assert target.versions("big.bin") == []  # nothing was replaced, so nothing moved
            log = target.server.log()
            assert re.search(r"WARNING .*session ended: connection unexpectedly closed", log), log
        assert_ok(target.push(client, "-a", f"{src}/"))
        assert_trees_equal(src, module)
        if kind == "backupd":
            assert target.versions("big.bin") == [old]


def big_file_update(make_targets, tmp_path: Path, size: int, seed: int):
    """Random old and new ``big.bin`` of ``size`` bytes: (old, new, source dir, targets seeded with old)."""
    old = write_random(tmp_path / "old.bin", size, seed=seed).read_bytes()
    new = write_random(tmp_path / "new.bin", size, seed=seed + 1).read_bytes()
    src = make_source(tmp_path / "src", {"big.bin": File(new, mode=0o644, mtime=T0 + 60)})
    return old, new, src, make_targets(seed={"big.bin": File(old, mode=0o644, mtime=T0)})


def kill_push_midway(client, target, src: Path, *extra: str, after_s: float) -> None:
    """Push ``src/`` at 4 MB/s, SIGKILL the client ``after_s`` after big.bin's temp file appears."""
    argv = [*client.argv_prefix, "-a", *extra, "--bwlimit=4m", f"{src}/", target.url()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSYNC_")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not list(target.module.glob(".big.bin.*")):
        time.sleep(0.02)
    time.sleep(after_s)
    kill_group(proc, grace_s=0)
    assert proc.returncode == -signal.SIGKILL, "the push ended before it was interrupted"


def _wait_settled(module: Path, timeout: float = 30) -> Path:
    """Wait until no temp file is left next to big.bin (the server ended its session)."""
    deadline = time.monotonic() + timeout
    while list(module.glob(".big.bin.*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return module / "big.bin"


# ---------------------------------------------------------------- paths


def test_relative_with_implied_dirs(make_targets, client, tmp_path):
    src = make_source(
        tmp_path / "src",
        {
            "a": Dir(
                {
                    "b": Dir(
                        {
                            "c": Dir(
                                {"f.txt": File(b"deep\n", mode=0o600, mtime=T0 + 1)},
                                mode=0o711,
                                mtime=T0 + 2,
                            )
                        },
                        mode=0o750,
                        mtime=T0 + 3,
                    )
                },
                mode=0o705,
                mtime=T0 + 4,
            ),
            "other.txt": File(b"other\n", mtime=T0 + 5),
        },
    )
    targets, _ = run_both(
        make_targets,
        client,
        ["-a", "-i", "-R", "a/b/c/f.txt", "other.txt"],
        cwd=src,
        seed={},
        volatile=["."],
    )
    module = targets["backupd"].module
    assert (module / "a/b/c/f.txt").read_bytes() == b"deep\n"
    for rel in ("a", "a/b", "a/b/c"):
        assert (module / rel).stat().st_mode & 0o777 == (src / rel).stat().st_mode & 0o777, rel


@pytest.mark.parametrize("force", [pytest.param(False, id="no-force"), pytest.param(True, id="force")])
def test_delete_missing_args_with_files_from(make_targets, client, source, tmp_path, force):
    listing = tmp_path / "files.txt"
    listing.write_text("changed.txt\nadded.txt\nsub/stale\nextradir\nnowhere.txt\n")
    started = time.time()
    args = ["-a", "-i", f"--files-from={listing}", "--delete-missing-args", f"{source}/"]
    args += ["--force"] if force else []
    targets, _ = run_both(make_targets, client, args, volatile=["."])  # "." is not sent
    backupd = targets["backupd"]
    module = backupd.module
    assert not (module / "sub/stale").exists()
    assert (module / "added.txt").exists() and (module / "extra.txt").exists()
    # a missing directory goes only with --force (rsyncd: "cannot delete non-empty directory")
    assert (module / "extradir").exists() is not force
    in_dir = {"extradir/x", "extradir/y/z"} if force else set()
    expect_history(backupd, {"changed.txt", "sub/stale"} | in_dir)
    assert set(backupd.day_dirs()) <= local_days(started)


# ---------------------------------------------------------------- choices and refusals

COMPRESSIBLE = b"".join(b"line %06d of a rather compressible text file\n" % n for n in range(8000))


@pytest.mark.parametrize("version", ["3.5.0", "3.2.7"])
@pytest.mark.parametrize(
    "choice",
    [
        ["-z", "--compress-choice=zstd"],
        ["-z", "--compress-choice=lz4"],
        ["-z", "--compress-choice=zlibx"],
        ["-z", "--compress-choice=zlib"],
        ["-z"],
        ["--checksum-choice=xxh128"],
        ["--checksum-choice=xxh3"],
        ["--checksum-choice=xxh64"],
        ["--checksum-choice=md5"],
    ],
    ids=lambda c: c[-1].lstrip("-"),
)
def test_compression_and_checksum_choices(backupd_target, rsync_clients, tmp_path, version, choice):
    client = rsync_clients[version]
    module = backupd_target.module
    old = COMPRESSIBLE
    new = old[:100_000] + b"a changed region in the middle\n" * 40 + old[101_000:]
    make_tree(module, {"text.txt": File(old, mtime=T0), "same.txt": File(b"same\n", mtime=T0)})
    src = make_source(
        tmp_path / "src",
        {
            "text.txt": File(new, mtime=T0 + 60),
            "same.txt": File(b"same\n", mtime=T0),
            "fresh.txt": File(COMPRESSIBLE[::-1], mtime=T0 + 70),
            "d": {"small": File(b"small\n", mtime=T0 + 80)},
        },
    )
    done = assert_ok(backupd_target.push(client, "-a", "--stats", *choice, f"{src}/"))
    stats = parse_stats(done.stdout)
    assert stats["Matched data"] > 0, done.stdout  # the delta path ran
    literal = stats["Literal data"]
    assert literal >= len(COMPRESSIBLE), done.stdout
    if "-z" in choice:
        assert stats["Total bytes sent"] < literal // 3, done.stdout  # really compressed
    else:
        assert stats["Total bytes sent"] > literal, done.stdout
    assert_trees_equal(src, module)
    assert backupd_target.versions("text.txt") == [old]


def test_zstd_new_file_just_over_256k_from_327(backupd_target, rsync_clients, tmp_path):
    src = make_source(tmp_path / "src", {"f.txt": File(COMPRESSIBLE[: 256 * 1024 + 1], mtime=T0)})
    done = backupd_target.push(rsync_clients["3.2.7"], "-a", "-z", "--zc=zstd", f"{src}/")
    assert done.returncode == 0, show(done)
    assert_trees_equal(src, backupd_target.module)


@pytest.mark.parametrize("option", ["-U"])
def test_unsupported_option_refused_with_code_4(make_targets, client, source, option):
    ours = make_targets(("backupd",))["backupd"]
    stock = make_targets(("rsyncd",), params={"refuse options": "atimes"})["rsyncd"]
    done = ours.push(client, "-a", option, f"{source}/")
    stock_done = stock.push(client, "-a", option, f"{source}/")
    assert stock_done.returncode == 4, show(stock_done)
    assert done.returncode == 4, show(done)
    # rsyncd's words for an option its parser does not know: the whole cluster that holds it
    assert re.search(r"rsync: on remote machine: -\w*U[\w.]*: unknown option", done.stderr), show(done)
    assert "code 4" in done.stderr, show(done)
    assert os.listdir(ours.module) == []


def test_refuse_options_xattrs_refuses_x_as_rsyncd(make_targets, client, source):
    targets = make_targets(params={"refuse options": "xattrs"})
    done = {kind: t.push(client, "-aX", f"{source}/") for kind, t in targets.items()}
    assert done["backupd"].returncode == done["rsyncd"].returncode != 0, show(done["backupd"])
    refused = [line for line in done["rsyncd"].stderr.splitlines() if "refuse" in line]
    assert refused and all(line in done["backupd"].stderr for line in refused), show(done["backupd"])
    assert os.listdir(targets["backupd"].module) == []


@pytest.mark.parametrize("option", [(), ("--open-noatime",)], ids=["plain", "open-noatime"])
def test_open_noatime_leaves_source_atimes_as_rsyncd(make_targets, client, tmp_path, option):
    """A pull reads the module's files; with --open-noatime (O_NOATIME) their atimes stay put.

    The atimes are set far below the mtimes first, so a relatime mount updates
    them on a plain read; both servers must agree on which files changed.
    """
    data = b"read me\n" * 1000
    targets = make_targets(seed={"a.bin": File(data, mtime=T0), "sub": {"b.bin": File(data, mtime=T0)}})
    got = {}
    for kind, target in targets.items():
        for rel in ("a.bin", "sub/b.bin"):
            os.utime(target.module / rel, ns=(10**9, T0 * 10**9))
        done = client.run("-a", *option, target.url(), f"{tmp_path / kind}/")
        assert done.returncode == 0, show(done)
        assert (tmp_path / kind / "a.bin").read_bytes() == data
        got[kind] = {rel: os.stat(target.module / rel).st_atime_ns == 10**9 for rel in ("a.bin", "sub/b.bin")}
    assert got["backupd"] == got["rsyncd"], got
    if option:
        assert all(got["rsyncd"].values()), got  # O_NOATIME: untouched
    elif all(got["rsyncd"].values()):
        pytest.skip("this file system does not update atimes on read (noatime mount)")
