"""Fixtures for storage tests: a module dir, an 'outside' dir, a fixed clock."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest

from backupd.storage import HistoryStore, ModuleTree

FIXED_NOW = datetime(2024, 5, 17, 13, 45, 9)  # naive = the server's local time


def _snapshot(top: Path) -> dict[str, tuple]:
    """Everything under ``top``: relative path -> (kind, content/target, mode, mtime_ns)."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            st = full.lstat()
            rel = str(full.relative_to(top))
            if full.is_symlink():
                result[rel] = ("link", os.readlink(full), st.st_mode, st.st_mtime_ns)
            elif full.is_dir():
                result[rel] = ("dir", None, st.st_mode, st.st_mtime_ns)
            elif full.is_file():
                result[rel] = ("file", full.read_bytes(), st.st_mode, st.st_mtime_ns)
            else:  # FIFO, socket, device: never opened
                result[rel] = ("special", st.st_rdev, st.st_mode, st.st_mtime_ns)
    return result


@pytest.fixture
def snapshot():
    return _snapshot


@pytest.fixture
def now() -> datetime:
    return FIXED_NOW


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "module"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_bytes(b"outside data")
    os.chmod(path / "secret", 0o600)
    return path


@pytest.fixture
def tree(root: Path):
    with ModuleTree(root, module="backup",
                    history=HistoryStore(clock=lambda: FIXED_NOW)) as module_tree:
        yield module_tree


@pytest.fixture
def plain_tree(root: Path):
    with ModuleTree(root, module="backup") as module_tree:
        yield module_tree
