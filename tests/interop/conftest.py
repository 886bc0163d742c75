"""Shared pieces of the push interop tests: targets, history readers, trees.

A *target* is one running server with one writable module ``mod``: backupd
(``python -m backupd serve``) or the stock rsyncd, both configured from the
same rsyncd.conf parameters, so a test can run one scenario against both and
compare what the user sees. Plain helpers (``assert_ok``, ``parse_stats``,
``local_days``, ...) are imported by the test files from this module
(``from tests.interop.conftest import ...``); fixtures come in as usual.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (
    RsyncClient,
    ServerProcess,
    free_port,
    make_tree,
    render_rsyncd_conf,
    write_secrets,
)

MODULE = "mod"
HISTORY = "history-backup"
KINDS = ("backupd", "rsyncd")
T0 = 1_600_000_000  # 2020-09-13, whole seconds: every seeded mtime is T0 + n
# a second same-day version: NAME.~HHMMSS~, then NAME.~HHMMSS~.1, .2, ...
VERSION_SUFFIX = re.compile(rb"\.~\d{6}~(?:\.\d+)?$")
STDLIB_SUBSET = ("json", "email", "asyncio")


# ---------------------------------------------------------------- results


def show(done: subprocess.CompletedProcess) -> str:
    """The command, exit code, stdout and stderr of a run, for assertion messages."""
    argv = " ".join(map(str, done.args))
    return f"$ {argv}\nexit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def assert_ok(done: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    """Assert the client exited with ``code``; the message shows its output."""
    assert done.returncode == code, show(done)
    return done


STAT_LINE = re.compile(r"^([A-Z][A-Za-z ]+?):\s+([\d,]+)(?: bytes)?\b", re.M)


def parse_stats(stdout: str) -> dict[str, int]:
    """``--stats`` lines as numbers: ``{"Literal data": 86880, "Matched data": ...}``."""
    return {name: int(value.replace(",", "")) for name, value in STAT_LINE.findall(stdout)}


def local_days(since: float, until: float | None = None) -> set[str]:
    """Every local ``YYYY-MM-DD`` from ``since`` to ``until`` (now): a run may span midnight."""
    first = date.fromtimestamp(since)
    last = date.fromtimestamp(time.time() if until is None else until)
    return {(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)}


# ---------------------------------------------------------------- targets


@dataclass
class PushTarget:
    """One server with module ``name`` at ``module``; ``kind`` is backupd or rsyncd."""

    kind: str
    server: ServerProcess
    module: Path
    name: str = MODULE

    def url(self, path: str = "", user: str | None = None) -> str:
        """``rsync://[user@]127.0.0.1:PORT/<module>/<path>``."""
        return self.server.url(self.name, path, user)

    def push(
        self, client: RsyncClient, *args: str | os.PathLike[str], path: str = "", **kw
    ) -> subprocess.CompletedProcess[str]:
        """``rsync <args> rsync://.../<module>/<path>``; ``kw`` as in ``RsyncClient.run``."""
        return client.run(*args, self.url(path), **kw)

    @property
    def history(self) -> Path:
        """The module's history folder."""
        return self.module / HISTORY

    def day_dirs(self) -> list[str]:
        """Names of the day folders in history (empty list if there is no history)."""
        return sorted(os.listdir(self.history)) if self.history.is_dir() else []

    def history_files(self) -> dict[bytes, list[Path]]:
        """Every file kept in history: path in the module (suffix dropped) -> its versions.

        ``history-backup/2026-01-02/a/b.~101112~.1`` is a version of ``a/b``;
        the versions of one path are listed by day, then by name.
        """
        out: dict[bytes, list[Path]] = {}
        for day in self.day_dirs():
            top = os.fsencode(self.history / day)
            for dirpath, dirs, files in os.walk(top):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(dirpath, name)
                    rel = VERSION_SUFFIX.sub(b"", os.path.relpath(full, top))
                    out.setdefault(rel, []).append(Path(os.fsdecode(full)))
        return out

    def history_contents(self) -> dict[str, list[bytes]]:
        """:meth:`history_files` with str paths and the versions' contents."""
        return {
            os.fsdecode(rel): [p.read_bytes() for p in paths]
            for rel, paths in self.history_files().items()
        }

    def versions(self, rel: str | bytes) -> list[bytes]:
        """The contents kept in history for module path ``rel`` (all days, oldest day first)."""
        return [p.read_bytes() for p in self.history_files().get(os.fsencode(rel), [])]


def digest(path: str | os.PathLike[str]) -> bytes:
    """blake2b of a file's content, read in 1 MiB pieces."""
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def module_conf(
    modules: Mapping[str, Mapping[str, object]],
    port: int,
    global_params: Mapping[str, object] | None = None,
) -> str:
    """rsyncd.conf text for backupd: ``modules`` as given, plus the stock defaults."""
    mods = {
        name: {"munge symlinks": False, "numeric ids": True, **params}
        for name, params in modules.items()
    }
    return render_rsyncd_conf(port, {"reverse lookup": False, **(global_params or {})}, mods)


TargetFactory = Callable[..., dict[str, PushTarget]]


@pytest.fixture
def make_targets(backupd_server, stock_rsyncd, tmp_path_factory) -> TargetFactory:
    """Factory: ``make_targets(kinds=KINDS, *, params=None, seed=None, secrets=None,
    extra_modules=None) -> {kind: PushTarget}``.

    Each target gets its own empty module dir, writable (``read only = no``)
    plus ``params``; ``seed`` is a :func:`make_tree` spec written into every
    module first (then the module root gets mode 0755 and mtime T0).
    ``extra_modules`` maps more module names to parameters (a ``path`` of
    None gets a fresh dir). ``secrets`` as for ``stock_rsyncd``.
    """

    def make(
        kinds: Sequence[str] = KINDS,
        *,
        params: Mapping[str, object] | None = None,
        seed: Mapping | None = None,
        secrets: Mapping[str, str] | None = None,
        extra_modules: Mapping[str, Mapping[str, object]] | None = None,
    ) -> dict[str, PushTarget]:
        out = {}
        for kind in kinds:
            work = tmp_path_factory.mktemp(f"{kind}-mods")
            module = work / MODULE
            module.mkdir()
            if seed is not None:
                make_tree(module, seed)
                os.chmod(module, 0o755)
                os.utime(module, ns=(T0 * 10**9, T0 * 10**9))
            modules = {MODULE: {"path": module, "read only": False, **(params or {})}}
            for name, extra in (extra_modules or {}).items():
                extra = dict(extra)
                if extra.get("path") is None:
                    extra["path"] = work / name
                    extra["path"].mkdir()
                modules[name] = extra
            if kind == "rsyncd":
                server = stock_rsyncd(modules, secrets=secrets)
            else:
                server = _start_backupd(backupd_server, work, modules, secrets)
            out[kind] = PushTarget(kind, server, module)
        return out

    return make


def _start_backupd(backupd_server, work: Path, modules: dict, secrets) -> ServerProcess:
    if secrets:
        path = write_secrets(work / "backupd.secrets", secrets)
        for params in modules.values():
            if "auth users" in params or "auth_users" in params:
                params.setdefault("secrets file", path)
    port = free_port()
    conf = work / "rsyncd.conf"
    conf.write_text(module_conf(modules, port))
    return backupd_server(conf, port=port)


@pytest.fixture
def backupd_target(make_targets) -> PushTarget:
    """A backupd server with one empty writable module ``mod``."""
    return make_targets(("backupd",))["backupd"]


# ---------------------------------------------------------------- trees


def write_random(path: Path, size: int, seed: int, piece: int = 1 << 20) -> Path:
    """Write ``size`` seeded random bytes to ``path`` in ``piece``-sized writes."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for off in range(0, size, piece):
            f.write(rng.bytes(min(piece, size - off)))
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a tree keeping symlinks, modes and mtimes (copytree copies dir stats too)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def stdlib_trees(tmp_path_factory) -> dict[str, Path]:
    """Pristine copies of the standard library, made once per session.

    ``"full"``: all of ``sysconfig.get_paths()["stdlib"]`` without
    ``__pycache__`` and ``site-packages`` (symlinks kept); ``"subset"``: only
    its json, email and asyncio packages. Copy before changing them.
    """
    base = tmp_path_factory.mktemp("stdlib")
    full = base / "full"
    shutil.copytree(
        sysconfig.get_paths()["stdlib"],
        full,
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "site-packages"),
    )
    subset = base / "subset"
    subset.mkdir()
    for name in STDLIB_SUBSET:
        copy_tree(full / name, subset / name)
    for root in (full, subset):
        os.chmod(root, 0o755)
        os.utime(root, ns=(T0 * 10**9, T0 * 10**9))
    return {"full": full, "subset": subset}


def set_mtime(path: Path, seconds: int) -> None:
    """Set a path's mtime (and atime) to whole ``seconds``, not following symlinks."""
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9), follow_symlinks=False)
