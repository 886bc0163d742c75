"""The daemon's daily retention pass (ops/retention.py) over every module."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

from backupd.config.model import DaemonConfig, ModuleConfig
from backupd.ops.retention import daily_prune_job, prune_all_modules

NOW = datetime(2026, 11, 21, 3, 0)


def make_module(root, name, offsets, **params) -> ModuleConfig:
    path = root / name
    for offset in offsets:
        day = (NOW.date() - timedelta(days=offset)).isoformat()
        (path / params.get("history_dir", "history-backup") / day).mkdir(parents=True)
    path.mkdir(exist_ok=True)
    return ModuleConfig(name=name, path=path, **params)


def days_left(module: ModuleConfig) -> int:
    return len(os.listdir(module.path / module.history_dir))


def test_each_module_is_pruned_to_its_own_retention(tmp_path):
    short = make_module(tmp_path, "short", [0, 2, 5], history_keep_days=1)
    long = make_module(tmp_path, "long", [0, 2, 5], history_keep_days=3, history_dir="old")
    forever = make_module(tmp_path, "forever", [0, 400], history_keep_days=0)
    off = make_module(tmp_path, "off", [0, 400], history=False, history_keep_days=1)
    config = DaemonConfig(modules={m.name: m for m in (short, long, forever, off)})
    results = prune_all_modules(config, NOW)
    assert (days_left(short), days_left(long), days_left(forever), days_left(off)) == (1, 2, 2, 2)
    assert set(results) == {"short", "long"} and len(results["short"].removed) == 2


def test_a_broken_module_does_not_stop_the_others(tmp_path):
    broken = ModuleConfig(name="broken", path=tmp_path / "missing", history_keep_days=1)
    fine = make_module(tmp_path, "fine", [0, 9], history_keep_days=1)
    results = prune_all_modules(DaemonConfig(modules={"broken": broken, "fine": fine}), NOW)
    assert list(results) == ["fine"] and days_left(fine) == 1


def test_the_job_runs_once_per_local_day(tmp_path):
    module = make_module(tmp_path, "m", [0], history_keep_days=1)
    clock = [NOW]
    runs = []
    config = DaemonConfig(modules={"m": module})
    job = daily_prune_job(config, clock=lambda: clock[0], spawn=runs.append)
    job()
    job()
    clock[0] = NOW + timedelta(hours=20)
    job()
    clock[0] = NOW + timedelta(hours=22)      # the next day
    job()
    assert len(runs) == 2
    (module.path / "history-backup" / "2026-11-01").mkdir()
    runs[-1]()
    assert days_left(module) == 1


def test_the_default_job_prunes_in_a_detached_process(tmp_path):
    module = make_module(tmp_path, "m", [0, 30], history_keep_days=2)
    job = daily_prune_job(DaemonConfig(modules={"m": module}), clock=lambda: NOW)
    job()                                    # returns once the middle process has exited
    deadline = datetime.now() + timedelta(seconds=10)
    while days_left(module) != 1 and datetime.now() < deadline:
        time.sleep(0.02)
    assert days_left(module) == 1
