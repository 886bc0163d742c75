"""Fixtures for every test folder: hypothesis profiles, rsync clients, servers.

- Hypothesis profile ``ci`` (derandomized, no deadline, 100 examples) when
  CI is true, else ``dev``; ``HYPOTHESIS_PROFILE`` overrides.
- ``rsync_clients`` / ``rsync_client``: the stock 3.5.0 and 3.2.7 clients
  (:class:`tests.helpers.RsyncClient`). A missing client skips the test, but
  fails it when CI is true.
- ``stock_rsyncd`` / ``backupd_server``: factories that start a server on
  127.0.0.1 and stop it at teardown; a failed test shows the server's log.
- Tests using any of these are marked ``interop`` automatically.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, settings

from tests.helpers import (
    RSYNC_327,
    RSYNC_350,
    SYSTEM_RSYNC,
    RsyncClient,
    ServerProcess,
    discover_rsync_clients,
    free_port,
    in_ci,
    own_ids,
    render_rsyncd_conf,
    unavailable,
    write_secrets,
)

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=100,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if in_ci() else "dev"))

# (id, client version, forced --protocol) for the parametrized rsync_client
CLIENT_VARIANTS = [
    ("c3.5.0", RSYNC_350, None),
    ("c3.2.7", RSYNC_327, None),
    ("c3.2.7-p31", RSYNC_327, 31),
    ("c3.5.0-p30", RSYNC_350, 30),
]
_INTEROP_FIXTURES = {"rsync_client", "rsync_clients", "stock_rsyncd", "backupd_server"}
_SERVERS = pytest.StashKey[list[tuple[str, ServerProcess]]]()


@pytest.fixture(scope="session", autouse=True)
def _private_state_dir(tmp_path_factory):
    """The catalogs of every server and CLI the tests run go under the session's tmp dir.

    Without it, a run as root leaves one catalog per module path in the real
    state dir (/var/lib/backupd): thousands after a few runs. A
    BACKUPD_STATE_DIR already set (CI's, a developer's) is kept.
    """
    if "BACKUPD_STATE_DIR" in os.environ:
        yield
        return
    os.environ["BACKUPD_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    yield
    os.environ.pop("BACKUPD_STATE_DIR", None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEROP_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.interop)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On a failed test, add the log of every server it started to the report."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for label, server in item.stash.get(_SERVERS, []):
            status = server.proc.poll() if server.proc else None
            state = "running" if status is None else f"exited {status}"
            title = f"{label} log, port {server.port}, {state} ({server.log_path})"
            report.sections.append((title, server.log() or "(empty)"))
    return report


# ---------------------------------------------------------------- rsync clients


@pytest.fixture(scope="session")
def _discovered_clients() -> dict[str, RsyncClient | str]:
    return discover_rsync_clients()


def _need(found: dict[str, RsyncClient | str], version: str) -> RsyncClient:
    client = found[version]
    if isinstance(client, str):
        unavailable(client)
    return client


@pytest.fixture(scope="session")
def rsync_clients(_discovered_clients) -> dict[str, RsyncClient]:
    """Both stock clients: ``{"3.5.0": ..., "3.2.7": ...}``."""
    return {v: _need(_discovered_clients, v) for v in (RSYNC_350, RSYNC_327)}


@pytest.fixture(params=CLIENT_VARIANTS, ids=[v[0] for v in CLIENT_VARIANTS])
def rsync_client(request, _discovered_clients) -> RsyncClient:
    """Each stock client variant in turn: c3.5.0, c3.2.7, c3.2.7-p31, c3.5.0-p30."""
    client_id, version, protocol = request.param
    return _need(_discovered_clients, version).with_protocol(protocol, client_id)


# ---------------------------------------------------------------- servers


def _register(request, label: str, server: ServerProcess) -> None:
    request.node.stash.setdefault(_SERVERS, []).append((label, server))


def _module_params(params: Mapping[str, object], secrets_path: Path | None) -> dict:
    own = {"uid": os.getuid(), "gid": os.getgid()} if os.geteuid() == 0 else {}
    module = {"munge symlinks": False, "numeric ids": True, **own}
    module.update({k.replace("_", " "): v for k, v in params.items()})
    if secrets_path is not None and "auth users" in module:
        module.setdefault("secrets file", secrets_path)
    return module


@pytest.fixture
def stock_rsyncd(request, tmp_path_factory) -> Callable[..., ServerProcess]:
    """Factory: ``stock_rsyncd(modules, *, secrets=None, global_params=None, port=None,
    rsync=/usr/bin/rsync) -> ServerProcess`` running ``rsync --daemon --no-detach``.

    ``modules`` maps a module name to its rsyncd.conf parameters (underscores
    allowed for spaces, bools become yes/no). Defaults added: ``use chroot =
    no``, ``reverse lookup = no``, per module ``munge symlinks = no``,
    ``numeric ids = yes`` and, as root, ``uid``/``gid`` = ours (rsyncd would
    drop to nobody). ``secrets`` (user -> password) is written mode 600 and
    set as ``secrets file`` of every module with ``auth users``.
    """
    servers: list[ServerProcess] = []

    def start(
        modules: Mapping[str, Mapping[str, object]],
        *,
        secrets: Mapping[str, str] | None = None,
        global_params: Mapping[str, object] | None = None,
        port: int | None = None,
        rsync: str | os.PathLike[str] = SYSTEM_RSYNC,
    ) -> ServerProcess:
        work = tmp_path_factory.mktemp("rsyncd")
        port = port or free_port()
        log = work / "server.log"
        secrets_path = write_secrets(work / "rsyncd.secrets", secrets) if secrets else None
        params = {
            "use chroot": False,
            "reverse lookup": False,
            "log file": log,
            "pid file": work / "rsyncd.pid",
            **(global_params or {}),
        }
        mods = {name: _module_params(p, secrets_path) for name, p in modules.items()}
        conf = work / "rsyncd.conf"
        conf.write_text(render_rsyncd_conf(port, params, mods))
        argv = [
            os.fspath(rsync),
            "--daemon",
            "--no-detach",
            f"--config={conf}",
            f"--port={port}",
            "--address=127.0.0.1",
        ]
        server = ServerProcess(argv=argv, port=port, log_path=log, cwd=work, config_path=conf)
        servers.append(server)
        server.start()
        _register(request, "stock rsyncd", server)
        return server

    yield start
    for server in servers:
        server.stop()


def _plain(value: object) -> object:
    """Paths -> str, recursively, so yaml.safe_dump takes a test's config dict."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value


@pytest.fixture
def backupd_server(request, tmp_path_factory) -> Callable[..., ServerProcess]:
    """Factory: ``backupd_server(config=None, *, port=None, args=(), timeout_s=10)
    -> ServerProcess`` running ``python -m backupd serve`` in the foreground.

    ``config`` is a path (rsyncd.conf or .yaml), a dict (written as
    ``backupd.yaml``), or None for the embedded default (cwd is a fresh tmp
    dir, so ``backupd-data/`` lands there: ``server.cwd``). Output goes to
    ``server.log_path``; teardown sends SIGTERM, then SIGKILL.
    """
    servers: list[ServerProcess] = []

    def start(
        config: str | os.PathLike[str] | Mapping | None = None,
        *,
        port: int | None = None,
        args: tuple[str, ...] = (),
        timeout_s: float = 10.0,
    ) -> ServerProcess:
        work = tmp_path_factory.mktemp("backupd")
        port = port or free_port()
        if isinstance(config, Mapping):
            config = {**config, "modules": {n: own_ids(m) for n, m in config.get("modules", {}).items()}}
            path = work / "backupd.yaml"
            path.write_text(yaml.safe_dump(_plain(config), sort_keys=False))
            config = path
        argv = [sys.executable, "-m", "backupd", "serve"]
        argv += ["--config", os.fspath(config)] if config is not None else []
        argv += ["--port", str(port), "--address", "127.0.0.1", *args]
        server = ServerProcess(
            argv=argv,
            port=port,
            log_path=work / "server.log",
            cwd=work,
            config_path=Path(config) if config is not None else None,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        servers.append(server)
        server.start(timeout_s)
        _register(request, "backupd", server)
        return server

    yield start
    for server in servers:
        server.stop()
