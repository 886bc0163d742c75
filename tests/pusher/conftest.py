"""Fixtures of the pusher tests: a PostgreSQL server, push targets, pushers in a thread or a process.

- ``postgres`` (session): initdb into a fresh tmp dir and ``postgres`` on a
  free loopback port; as root the server runs as the ``postgres`` user.
  Missing binaries skip the test, but fail it when CI is true.
- ``targets``: a backupd server and a stock rsyncd, each with one writable
  module ``mod`` (an empty dir), as :class:`Target` objects.
- :class:`PusherThread`: a :class:`Pusher` running in a thread (its own
  event loop), for tests that reach into the watcher.
- :func:`spawn_watch`: ``python -m backupd watch`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import ServerProcess, free_port, kill_group, tree_differences, unavailable

MODULE = "mod"
HISTORY = "history-backup"


# ---------------------------------------------------------------- waiting


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.2):
    """Poll ``predicate`` until it returns something true (returned) or ``timeout_s`` passes (None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval_s)


def wait_converged(src: Path, targets, timeout_s: float = 60.0, ignore=()) -> list[str]:
    """Wait until every target module equals ``src`` (dir mtimes aside); the last differences.

    ``ignore``: relative paths skipped on both sides (besides history-backup).
    """
    skip = [HISTORY.encode(), *ignore]
    last: list[str] = []

    def same() -> bool:
        nonlocal last
        last = [d for t in targets for d in tree_differences(src, t.module, check_dir_mtimes=False, ignore=skip)]
        return not last

    wait_until(same, timeout_s, 0.3)
    return last


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    """One running server with module ``mod`` at ``module``."""

    kind: str
    server: ServerProcess
    module: Path
    restart: Callable[[], ServerProcess]

    @property
    def url(self) -> str:
        return f"rsync://127.0.0.1:{self.server.port}/{MODULE}"


@pytest.fixture
def make_targets(backupd_server, stock_rsyncd, tmp_path_factory) -> Callable[..., dict[str, Target]]:
    """Factory: ``make_targets(**params)`` -> ``{"backupd": Target, "rsyncd": Target}``, each module an
    empty writable dir with the extra module ``params`` (rsyncd.conf names, e.g. ``exclude="x"``).
    """

    def make(**params) -> dict[str, Target]:
        out = {}
        for kind in ("backupd", "rsyncd"):
            module = tmp_path_factory.mktemp(f"{kind}-mod")
            module.chmod(0o755)  # like a source made with mkdir
            port = free_port()
            if kind == "backupd":
                conf = {"global": {"reverse_lookup": False},
                        "modules": {MODULE: {"path": module, "read_only": False, "numeric_ids": True,
                                             "munge_symlinks": False, **params}}}

                def start(conf=conf, port=port):
                    return backupd_server(conf, port=port)
            else:
                def start(module=module, port=port):
                    return stock_rsyncd({MODULE: {"path": module, "read_only": False, **params}}, port=port)
            out[kind] = Target(kind, start(), module, start)
        return out

    return make


@pytest.fixture
def targets(make_targets) -> dict[str, Target]:
    """``{"backupd": Target, "rsyncd": Target}``, each module an empty writable dir."""
    return make_targets()


def history_files(module: Path) -> dict[str, list[bytes]]:
    """Path in the module (version suffix dropped) -> contents kept in history."""
    import re

    suffix = re.compile(r"\.~\d{6}~(?:\.\d+)?$")
    out: dict[str, list[bytes]] = {}
    top = module / HISTORY
    for day in sorted(os.listdir(top)) if top.is_dir() else []:
        for dirpath, _dirs, files in os.walk(top / day):
            for name in files:
                full = Path(dirpath) / name
                rel = suffix.sub("", os.path.relpath(full, top / day))
                out.setdefault(rel, []).append(full.read_bytes())
    return out


# ---------------------------------------------------------------- configs and pushers


def write_config(path: Path, state_dir: Path, sources: list[dict], **top) -> Path:
    """Write a pusher YAML: ``sources`` as given, fast timings unless overridden."""
    doc = {"state_dir": str(state_dir), "delay_s": 0.3,
           "queue": {"retry_min_s": 0.2, "retry_max_s": 1.0}, **top, "sources": sources}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class PusherThread:
    """A Pusher on its own event loop in a thread; ``with`` starts and stops it."""

    def __init__(self, config, **kwargs) -> None:
        self.config = config
        self.kwargs = kwargs
        self.pusher = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - shown by __exit__
            self.error = exc
            self._ready.set()

    async def _run(self) -> None:
        from backupd.pusher.daemon import Pusher

        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.pusher = Pusher(self.config, **self.kwargs)
        self._ready.set()
        await self.pusher.run(self.stop)

    def call(self, fn, *args) -> None:
        """Run ``fn(*args)`` in the pusher's loop thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def __enter__(self) -> PusherThread:
        self._thread.start()
        assert self._ready.wait(30), "pusher thread did not start"
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "pusher thread did not stop"
        if self.error and not exc[0]:
            raise self.error


@dataclass
class WatchProcess:
    """``backupd watch`` running as a subprocess (own session); output in ``log``."""

    proc: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """SIGKILL the whole process group (no clean shutdown)."""
        kill_group(self.proc, grace_s=0)

    def stop(self) -> None:
        kill_group(self.proc, grace_s=10)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def spawn_watch(tmp_path):
    """Factory: ``spawn_watch(config_path, env=None, name="watch") -> WatchProcess``."""
    procs: list[WatchProcess] = []

    def spawn(config: Path, env: dict | None = None, name: str = "watch") -> WatchProcess:
        log = tmp_path / f"{name}-{len(procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "backupd", "watch", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                cwd=Path(__file__).resolve().parents[2], start_new_session=True,
            )
        procs.append(WatchProcess(proc, log))
        return procs[-1]

    yield spawn
    for p in procs:
        if p.proc.poll() is None:
            p.stop()


# ---------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL on 127.0.0.1; yields its DSN (trust auth, user postgres)."""
    psycopg = pytest.importorskip("psycopg")
    bindir = _pg_bindir()
    if bindir is None:
        unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    run_as: dict = {}
    root = Path(tempfile.mkdtemp(prefix="backupd-pg-"))
    if os.geteuid() == 0:
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no 'postgres' user to run the server")
        os.chown(root, pg.pw_uid, pg.pw_gid)
        run_as = {"user": pg.pw_uid, "group": pg.pw_gid, "extra_groups": []}
    data, port = root / "data", free_port()
    done = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                           "-E", "UTF8", "--no-sync"], capture_output=True, text=True, cwd=root,
                          timeout=120, check=False, **run_as)
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        unavailable(f"initdb failed: {done.stderr[-2000:]}")
    log = open(root / "postgres.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
         "-c", f"unix_socket_directories={root}", "-c", "fsync=off", "-c", "max_connections=50"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root,
        start_new_session=True, **run_as,
    )
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5"

    def up() -> bool:
        try:
            psycopg.connect(dsn).close()
        except psycopg.Error:
            return proc.poll() is not None
        return True

    wait_until(up, 30)
    if proc.poll() is not None or not up():
        unavailable(f"postgres did not start: {(root / 'postgres.log').read_text()[-2000:]}")
    yield dsn
    proc.send_signal(signal.SIGINT)  # fast shutdown
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        kill_group(proc, grace_s=0)
    log.close()
    shutil.rmtree(root, ignore_errors=True)
