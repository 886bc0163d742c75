"""Scheduled verify (`verify interval`): when a module is due, what a run finds, logs and exports."""

from __future__ import annotations

import dataclasses
import fcntl
import time
from pathlib import Path

import pytest
from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backupd.config.model import DaemonConfig, ModuleConfig
from backupd.config.params import to_duration_s
from backupd.ops.verify_schedule import LOCK_NAME, VerifyCollector, due_modules, last_run, run_verify, verify_job
from backupd.storage import HistoryStore, ModuleTree
from backupd.storage.catalog import module_catalog_file, session_writer


@pytest.fixture
def config(tmp_path) -> DaemonConfig:
    modules = {}
    for name in ("bad", "good"):
        (tmp_path / name).mkdir()
        modules[name] = ModuleConfig(name=name, path=tmp_path / name, read_only=False, verify_interval_s=60,
                                     catalog_dir=tmp_path / "catalogs")
    return DaemonConfig(modules=modules)


def push(module: ModuleConfig, data: bytes) -> None:
    with ModuleTree(module.path, module=module.name, history=HistoryStore(module.history_dir),
                    catalog=session_writer(module)) as tree:
        with tree.create_staged(b"f", 0o600) as staged:
            staged.write(data)
            staged.commit(mtime_ns=1_700_000_000 * 10**9, mode=0o644)


def flip_history_byte(module: ModuleConfig) -> Path:
    (stored,) = [p for p in (Path(module.path) / module.history_dir).rglob("*") if p.is_file()]
    blob = bytearray(stored.read_bytes())
    blob[3] ^= 0x01
    stored.write_bytes(bytes(blob))
    return stored


@pytest.fixture
def logged():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


def gauges(collector) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return {(s.name, s.labels["module"]): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples}


@pytest.mark.parametrize(("text", "seconds"), [("0", 0), ("3600", 3600), ("90s", 90), ("30m", 1800),
                                               ("6h", 21600), ("1d", 86400), (" 2 D ", 172800), (45, 45)])
def test_durations(text, seconds):
    assert to_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1", "1.5h", "1w", "400d", "", True])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        to_duration_s(text)


def test_a_flipped_history_byte_is_found_logged_and_exported_and_intact_reports_zero(config, logged):
    for module in config.modules.values():
        push(module, b"version one\n")
        push(module, b"version two, longer\n")               # version one goes to history
    flip_history_byte(config.modules["bad"])
    ran = []
    job = verify_job(config, clock=lambda: 1_000_000.0, spawn=lambda work: (ran.append(1), work()))
    job()
    assert ran == [1]                                         # one background pass for both modules
    bad, good = last_run(config.modules["bad"]), last_run(config.modules["good"])
    assert (bad["mismatches"], bad["missing"], bad["checked"]) == (1, 0, 2)
    assert (good["mismatches"], good["missing"], good["checked"]) == (0, 0, 2)
    assert any(line.startswith("verify module bad: MISMATCH f (history-backup/") for line in logged), logged
    assert not any("verify module good: MISMATCH" in line for line in logged)
    got = gauges(VerifyCollector(lambda: config))
    assert got[("backupd_verify_last_run_mismatches", "bad")] == 1
    assert got[("backupd_verify_last_run_mismatches", "good")] == 0
    assert got[("backupd_verify_last_run_missing", "good")] == 0
    assert got[("backupd_verify_last_run_versions", "bad")] == 2
    assert got[("backupd_verify_last_run_bytes", "good")] == len(b"version one\n") + len(b"version two, longer\n")
    assert abs(got[("backupd_verify_last_run_timestamp_seconds", "bad")] - time.time()) < 60
    job()                                                     # same instant: nothing is due
    assert ran == [1]


def test_a_deleted_history_version_counts_as_missing(config):
    module = config.modules["bad"]
    push(module, b"one\n")
    push(module, b"two\n")
    flip_history_byte(module).unlink()
    record = run_verify(module)
    assert (record["mismatches"], record["missing"]) == (0, 1)


def test_due_only_after_the_interval_since_the_last_run(config):
    bad = config.modules["bad"]
    assert due_modules(config, 0.0, {}) == []                 # no catalog yet: nothing to verify
    push(bad, b"one\n")
    assert [m.name for m in due_modules(config, 0.0, {})] == ["bad"]   # never verified
    run_verify(bad, clock=lambda: 1000.0)
    assert due_modules(config, 1059.0, {}) == []              # stored run, 59 s ago
    assert [m.name for m in due_modules(config, 1060.0, {})] == ["bad"]
    assert due_modules(config, 1060.0, {"bad": 1030.0}) == []  # started here 30 s ago, still going
    off = dataclasses.replace(config, modules={"bad": dataclasses.replace(bad, verify_interval_s=0)})
    assert due_modules(off, 10**9, {}) == []


def test_one_run_per_module_at_a_time(config):
    module = config.modules["good"]
    push(module, b"one\n")
    with open(module_catalog_file(module).parent / LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert run_verify(module) is None
    assert run_verify(module)["checked"] == 1
