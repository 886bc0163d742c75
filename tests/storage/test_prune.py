"""Retention: exactly the day folders older than N days go; nothing else is touched."""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backupd.errors import PathEscape
from backupd.storage import ModuleTree
from backupd.storage.prune import apply_prune, cutoff_date, parse_day, plan_prune

NOW = datetime(2026, 11, 21, 10, 30)      # naive: the server's local time
HIST = "history-backup"


def day(offset: int) -> str:
    return (NOW.date() - timedelta(days=offset)).isoformat()


@pytest.fixture
def module(tmp_path, snapshot):
    root = tmp_path / "mod"
    hist = root / HIST
    for offset in (0, 1, 7, 8, 30, 400):
        d = hist / day(offset) / "sub"
        d.mkdir(parents=True)
        (d / "f.txt").write_bytes(b"x" * (offset + 1))
        (d.parent / "g.bin").write_bytes(b"y" * 10)
    (hist / "notes").mkdir()                          # not a day folder
    (hist / "2026-02-30").mkdir()                     # not a real date
    (hist / (day(50) + ".txt")).write_text("a file")    # neither
    (root / day(30)).mkdir()                          # dated names outside history
    (root / day(30) / "keep.txt").write_text("outside")
    (root / "data").mkdir()
    (root / "data" / day(100)).write_text("a file named like a date")
    return root


def outside(snapshot, root):
    return {k: v for k, v in snapshot(root).items() if not k.startswith(HIST)}


def test_plan_names_exactly_the_folders_older_than_the_retention(module):
    plan = plan_prune(module, NOW, 7, module="m")
    assert [f.name.decode() for f in plan.remove] == [day(400), day(30), day(8)]
    assert [f.name.decode() for f in plan.keep] == [day(7), day(1), day(0)]
    assert plan.cutoff == date(2026, 11, 14)
    assert {n for n, _ in plan.ignored} == {b"notes", b"2026-02-30", (day(50) + ".txt").encode()}
    assert plan.files == 6 and plan.size == (401 + 10) + (31 + 10) + (9 + 10)
    assert all("before 2026-11-14" in f.reason for f in plan.remove)


def test_planning_changes_nothing(module, snapshot):
    before = snapshot(module)
    plan_prune(module, NOW, 1)
    assert snapshot(module) == before


def test_apply_removes_those_folders_and_nothing_else(module, snapshot):
    before = outside(snapshot, module)
    plan = plan_prune(module, NOW, 7)
    ticks = []
    result = apply_prune(plan, progress=ticks.append)
    kept = [day(7), day(1), day(0), "notes", "2026-02-30", day(50) + ".txt"]
    assert sorted(os.listdir(module / HIST)) == sorted(kept)
    assert outside(snapshot, module) == before
    assert (result.files, result.size) == (plan.files, plan.size) and not result.errors
    assert sum(ticks) == plan.entries
    assert [n.decode() for n in result.removed] == [day(400), day(30), day(8)]


def test_keep_days_zero_keeps_everything(module):
    plan = plan_prune(module, NOW, 0)
    assert plan.cutoff is None and plan.remove == () and len(plan.keep) == 6
    assert apply_prune(plan).removed == []


def test_no_history_folder_is_an_empty_plan(tmp_path):
    (tmp_path / "m").mkdir()
    plan = plan_prune(tmp_path / "m", NOW, 3)
    assert plan.remove == plan.keep == ()


def test_symlinked_history_folder_is_refused(tmp_path):
    target = tmp_path / "elsewhere" / day(100)
    target.mkdir(parents=True)
    (tmp_path / "m").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "m" / HIST)
    with pytest.raises(PathEscape):
        plan_prune(tmp_path / "m", NOW, 3)
    assert target.is_dir()


def test_symlinks_in_history_are_removed_never_followed(module, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    os.symlink(victim, module / HIST / day(30) / "escape")          # inside an old day folder
    os.symlink(victim, module / HIST / day(60))                     # a "day folder" that is a symlink
    plan = plan_prune(module, NOW, 7)
    assert (day(60).encode(), "not a directory") in plan.ignored
    apply_prune(plan)
    assert (victim / "precious").read_text() == "keep me"
    assert os.path.islink(module / HIST / day(60))


def test_apply_rechecks_a_folder_swapped_for_a_symlink(module, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    plan = plan_prune(module, NOW, 7)
    os.rename(module / HIST / day(8), tmp_path / "moved")
    os.symlink(victim, module / HIST / day(8))
    result = apply_prune(plan)
    assert (victim / "precious").exists()
    assert any("no longer a directory" in e for e in result.errors)


def test_plan_on_an_open_tree(module):
    with ModuleTree(module, module="m") as tree:
        assert len(plan_prune(tree, NOW, 29).remove) == 2


@given(st.sets(st.integers(min_value=0, max_value=60), max_size=12), st.integers(min_value=1, max_value=40))
def test_removed_days_are_those_before_today_minus_keep(tmp_path_factory, offsets, keep):
    root = tmp_path_factory.mktemp("m")
    (root / HIST).mkdir()
    for offset in offsets:
        (root / HIST / day(offset)).mkdir(parents=True)
    plan = plan_prune(root, NOW, keep)
    assert {f.day for f in plan.remove} == {NOW.date() - timedelta(days=o) for o in offsets if o > keep}
    apply_prune(plan)
    assert sorted(os.listdir(root / HIST)) == sorted(day(o) for o in offsets if o <= keep)


def test_helpers():
    assert parse_day(b"2026-11-21") == date(2026, 11, 21)
    assert parse_day(b"2026-13-01") is None and parse_day(b"2026-11-21x") is None
    assert cutoff_date(NOW, 0) is None
    with pytest.raises(ValueError):
        cutoff_date(NOW, -1)
