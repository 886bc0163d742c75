"""Start-up reconcile is skipped only after a clean shutdown with every writer finished.

Each case changes the tree behind the catalog's back (a file the catalog never
heard of), so a skipped walk and a full one give different catalogs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backupd.config.model import DaemonConfig, ModuleConfig
from backupd.ops.catalog_start import mark_clean_shutdown, reconcile_all
from backupd.storage import HistoryStore, ModuleTree
from backupd.storage.catalog import Catalog, module_catalog_file, session_writer
from backupd.storage.catalog_state import STATE_KEY, left_marks
from backupd.storage.prune import apply_prune, plan_prune


@pytest.fixture
def config(tmp_path) -> DaemonConfig:
    (tmp_path / "mod").mkdir()
    module = ModuleConfig(name="mod", path=tmp_path / "mod", read_only=False, catalog_dir=tmp_path / "catalogs")
    return DaemonConfig(modules={"mod": module})


def push(module: ModuleConfig, path: bytes, data: bytes, *, close: bool = True) -> ModuleTree:
    """What a push session does: write ``path`` through a tree with the session's catalog writer."""
    tree = ModuleTree(module.path, module=module.name, history=HistoryStore(module.history_dir),
                      catalog=session_writer(module))
    with tree.create_staged(path, 0o600) as staged:
        staged.write(data)
        staged.commit(mtime_ns=1_700_000_000 * 10**9, mode=0o644)
    if close:
        tree.close()
    return tree


def rows(module: ModuleConfig) -> set[bytes]:
    with Catalog(module_catalog_file(module)) as catalog:
        return {r.path for r in catalog.rows("live_to IS NULL")}


def behind_its_back(module: ModuleConfig) -> None:
    (Path(module.path) / "stray").write_bytes(b"made by hand\n")


def clean_cycle(config: DaemonConfig) -> None:
    """A daemon that starts, serves one push and stops cleanly."""
    started = reconcile_all(config)
    push(config.modules["mod"], b"f", b"v1\n")
    mark_clean_shutdown(config, started)


def test_first_start_walks_and_a_clean_restart_does_not(config):
    module = config.modules["mod"]
    (Path(module.path) / "old").write_bytes(b"before the catalog\n")
    push(module, b"f0", b"first\n")                       # the catalog exists, the daemon never ran
    assert reconcile_all(config)["mod"] == 1              # no clean-shutdown record: walked, "old" indexed
    push(module, b"f", b"v1\n")
    mark_clean_shutdown(config, {"mod": 1})
    behind_its_back(module)
    assert reconcile_all(config) == {"mod": None}         # skipped
    assert b"stray" not in rows(module) and {b"old", b"f0", b"f"} <= rows(module)


def test_a_daemon_that_did_not_stop_cleanly_is_walked(config):
    module = config.modules["mod"]
    clean_cycle(config)
    reconcile_all(config)                                 # started ... and SIGKILLed: no mark_clean_shutdown
    behind_its_back(module)
    assert reconcile_all(config)["mod"] == 1
    assert b"stray" in rows(module)


def test_a_killed_session_leaves_a_mark_and_the_next_start_walks(config):
    module = config.modules["mod"]
    clean_cycle(config)
    started = reconcile_all(config)
    tree = push(module, b"g", b"never flushed\n", close=False)   # SIGKILLed: its batch never reached the catalog
    assert len(left_marks(module_catalog_file(module))) == 1
    tree.catalog._ops.clear()
    tree.catalog = None
    tree.close()
    mark_clean_shutdown(config, started)                  # the daemon itself stopped cleanly
    behind_its_back(module)
    assert reconcile_all(config)["mod"] == 2              # g and stray
    assert {b"g", b"stray"} <= rows(module)
    assert left_marks(module_catalog_file(module)) == []  # the dead writer's mark is cleared by the walk


def test_a_finished_session_leaves_no_mark_and_a_read_only_one_none(config):
    module = config.modules["mod"]
    clean_cycle(config)
    with ModuleTree(module.path, module=module.name, history=HistoryStore(module.history_dir),
                    catalog=session_writer(module)) as tree:
        tree.lstat(b"f")                                  # a pull: reads only
    assert left_marks(module_catalog_file(module)) == []
    with Catalog(module_catalog_file(module)) as catalog:
        assert catalog.meta(STATE_KEY) == "clean"


def test_a_module_whose_catalog_was_switched_off_is_walked(config):
    import dataclasses

    clean_cycle(config)
    started = reconcile_all(config)
    off = dataclasses.replace(config, modules={"mod": dataclasses.replace(config.modules["mod"], catalog=False)})
    mark_clean_shutdown(off, started)                     # reloaded with catalog = no: not marked clean
    behind_its_back(config.modules["mod"])
    assert reconcile_all(config)["mod"] == 1


def test_an_unfinished_prune_leaves_a_mark(config, monkeypatch):
    from datetime import datetime, timedelta

    import backupd.storage.prune as prune

    module = config.modules["mod"]
    clean_cycle(config)
    old = Path(module.path) / module.history_dir / (datetime.now() - timedelta(days=30)).strftime("%Y-%m-%d")
    old.mkdir(parents=True)
    (old / "f").write_bytes(b"old\n")
    plan = plan_prune(module.path, datetime.now(), 7, module="mod", catalog_file=module_catalog_file(module))

    def killed(*_args):
        raise KeyboardInterrupt   # the pass dies between the rows and the folder

    monkeypatch.setattr(prune, "_remove_folder", killed)
    with pytest.raises(KeyboardInterrupt):
        apply_prune(plan)
    assert len(left_marks(module_catalog_file(module))) == 1
    monkeypatch.undo()
    apply_prune(plan)
    assert len(left_marks(module_catalog_file(module))) == 1   # the finished pass removes only its own mark
