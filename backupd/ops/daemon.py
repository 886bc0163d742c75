"""The daemon's start-up, run without the CLI framework: ``backupd serve`` execs it.

``backupd serve`` parses its options with typer, then replaces itself (same
pid, ``os.execv``) with ``python -m backupd.ops.daemon OPTIONS_JSON
<original command line>``. The listener then never imports typer, click or
the pydantic that typer coerces every parameter with: about 20 MB of
resident memory that every forked session would otherwise share and that
the listener would hold for the life of the daemon (``ps`` shows the
original command line after the options, so ``pgrep -f 'backupd serve'``
still finds it).

What runs here is the whole of a TCP daemon's life: load the configuration,
reconcile the catalogs, bind the daemon and SSH ports, print the embedded
default's push command, serve until SIGTERM. ``--stdio`` runs in the CLI
process itself (``run_stdio``): a one-session process gains nothing from
a second start.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

from loguru import logger

from backupd.errors import BackupdError, ConfigError


class StartError(Exception):
    """The daemon cannot start: ``message`` for stderr, ``code`` to exit with (10: a port cannot be bound)."""

    def __init__(self, message: str, code: int = 10) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """``backupd serve``'s options, as typer validated them (None: not given)."""

    config: Path | None = None
    port: int | None = None
    address: str | None = None
    log_json: bool = False
    data_dir: Path = Path("backupd-data")
    metrics_address: str | None = None
    ssh_port: int | None = None

    def to_json(self) -> str:
        """One JSON object (paths as strings), the argument ``main`` reads back."""
        return json.dumps({k: (os.fspath(v) if isinstance(v, Path) else v)
                           for k, v in dataclasses.asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        """The options ``to_json`` wrote; ValueError/TypeError on anything else."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("serve options: not a JSON object")
        for key in ("config", "data_dir"):
            if raw.get(key) is not None:
                raw[key] = Path(raw[key])
        return cls(**raw)


def exec_daemon(opts: ServeOptions) -> None:
    """Replace this process with the lean daemon (``main``); returns only if exec fails (OSError)."""
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-m", "backupd.ops.daemon", opts.to_json(), *sys.argv]
    os.execv(sys.executable, argv)


def load(opts: ServeOptions):
    """The configuration in force and the embedded default's credentials (None with --config).

    Sets up logging and logs the configuration's warnings and module path
    problems. Raises ConfigError (or SecretsError) as load_config does.
    """
    from backupd.config.load import load_config, module_path_problems
    from backupd.ops.logging import setup_logging

    creds = None
    if opts.config is None:
        from backupd.config.default import embedded_default

        cfg, creds = embedded_default(opts.data_dir)
    else:
        cfg = load_config(opts.config)
    setup_logging(json=opts.log_json, log_file=cfg.log_file)
    for warning in cfg.warnings:
        logger.warning(warning)
    for problem in module_path_problems(cfg):
        logger.error(problem)
    return cfg, creds


def one_blas_thread(environ=os.environ) -> None:
    """Have numpy's OpenBLAS, which sessions load, run in the calling thread (unless the operator says otherwise).

    It would start a thread per core in every session. The generator's
    block sums are matrix-vector products of a few MiB, too short for
    them: their hand-offs made the sums of a 512 MiB basis take 0.1 to
    0.2 s from one run to the next, against 0.1 s in one thread, and
    every concurrent session would hold threads of its own.
    OPENBLAS_NUM_THREADS is read when the library loads, so this runs
    before the first session.
    """
    environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def run_stdio(opts: ServeOptions) -> int:
    """``--stdio``: one session on stdin/stdout; its rsync exit code."""
    from backupd.transport.stdio import serve_stdio

    one_blas_thread()
    cfg, _ = load(opts)
    return int(serve_stdio(cfg))


def run_daemon(opts: ServeOptions) -> None:
    """Serve TCP (and SSH if configured) until told to stop. Raises StartError, ConfigError."""
    from backupd.config.load import load_config
    from backupd.ops.catalog_start import mark_clean_shutdown, reconcile_all

    one_blas_thread()
    cfg, creds = load(opts)
    started = reconcile_all(cfg)  # a crash left the tree ahead of the catalog: repaired and logged
    _log_reflinks(cfg)
    reload = None if opts.config is None else functools.partial(load_config, opts.config)
    if opts.ssh_port is not None:
        cfg = dataclasses.replace(cfg, ssh_port=opts.ssh_port)
    address = opts.address or cfg.address
    ssh = _prepare_ssh(cfg, opts.data_dir if opts.config is None else None, address, reload)
    port = opts.port if opts.port is not None else cfg.port
    server = _serve_tcp(cfg, port, address, creds, opts.metrics_address, reload, ssh)
    mark_clean_shutdown(server.config, started)   # the next start need not walk the modules


def _log_reflinks(cfg) -> None:
    """Say per writable module whether deltas are reflinked (storage.reflink) or copied."""
    from backupd.storage.reflink import clone_align

    for module in cfg.modules.values():
        if module.read_only:
            continue
        try:
            fd = os.open(module.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # module_path_problems said why
        try:
            align = clone_align(fd)
        finally:
            os.close(fd)
        how = f"on ({align}-byte blocks shared with the basis)" if align else "off (matched blocks are copied)"
        logger.info("module {}: reflinked deltas {}", module.name, how)


def _prepare_ssh(cfg, data_dir: Path | None, address: str | None, reload):
    """The SSH listener (bound, not started) and the embedded default's hint, or None when off."""
    if not cfg.ssh_port:
        return None
    from backupd.transport.listen import bind_listeners
    from backupd.transport.ssh import SshDaemon
    from backupd.transport.ssh_auth import HOST_KEY_NAME, ensure_client_key, ensure_host_key

    host = cfg.ssh_address or address
    if data_dir is not None:  # the embedded default: keys and authorized_keys under backupd-data/
        base = data_dir.absolute()
        keys = base / "authorized_keys" / "%u"
        cfg = dataclasses.replace(cfg, ssh_host_key=base / HOST_KEY_NAME, ssh_authorized_keys=keys)
    key_path = cfg.ssh_host_key or (cfg.source.parent if cfg.source else Path.cwd()) / HOST_KEY_NAME
    try:
        host_key = ensure_host_key(key_path)
        hint = ensure_client_key(data_dir.absolute(), host_key, host, cfg.ssh_port) if data_dir is not None else None
        sockets = bind_listeners(host, cfg.ssh_port)
    except (OSError, ConfigError) as exc:
        raise StartError(f"backupd: SSH on {host or '*'}:{cfg.ssh_port}: {exc}") from None
    if cfg.ssh_authorized_keys is None and not cfg.ssh_password_auth:
        logger.warning("SSH: neither 'ssh authorized keys' nor 'ssh password auth' is set: nobody can log in")
    logger.info("backupd SSH listening on {}:{}", host or "*", cfg.ssh_port)
    return SshDaemon(cfg, sockets, host_key, reload=reload), hint


def _serve_tcp(cfg, port: int, address: str | None, creds, metrics_address: str | None = None, reload=None,
               ssh=None):
    from backupd.transport.tcp import DaemonServer
    from backupd.transport.worker import preload_session_modules

    preload_session_modules()
    server = DaemonServer(cfg, address=address, port=port, reload=reload)
    try:
        server.bind()
    except OSError as exc:
        raise StartError(f"backupd: cannot listen on {address or '*'}:{port}: {exc.strerror}") from None
    if ssh is not None:
        from backupd.transport.ssh import start_ssh_process

        ssh[0].slot_fd = server.slot_fd
        server.sidecars[start_ssh_process(ssh[0], server.listeners)] = "SSH listener"
    exporter = _start_metrics(metrics_address, cfg, server)  # ops hook: backupd/ops/metrics.py
    if cfg.pid_file is not None:
        cfg.pid_file.write_text(f"{os.getpid()}\n")
    logger.info("backupd listening on {}:{} ({} modules)", address or "*", port, len(cfg.modules))
    if creds is not None:
        from backupd.config.default import push_command_hint

        if creds.created:
            print(f"Created module 'backup' in {cfg.modules['backup'].path} with user '{creds.user}'.")
        print("Push a folder to it with:")
        print(push_command_hint(cfg, creds, port=port, address=address))
        if ssh is not None and ssh[1] is not None:
            print("or over SSH with:")
            print(ssh[1])
    sys.stdout.flush()
    from backupd.ops.retention import PRUNE_CHECK_S, daily_prune_job  # history retention, once a day

    server.add_periodic(PRUNE_CHECK_S, daily_prune_job(lambda: server.config, server.listeners))
    from backupd.ops.verify_schedule import VERIFY_CHECK_S, verify_job  # `verify interval`, in the background

    server.add_periodic(VERIFY_CHECK_S, verify_job(lambda: server.config, server.listeners))
    try:
        server.serve_forever()
    finally:
        if exporter is not None:
            exporter.close()
    return server


def _start_metrics(metrics_address: str | None, cfg, server):
    """Ops hook: the Prometheus exporter (multiprocess mode, before any fork); None if off."""
    if not metrics_address:
        return None
    from backupd.ops.metrics import start_server_exporter

    exporter = start_server_exporter(metrics_address, cfg, server)
    logger.info("metrics on http://{}:{}/metrics", *exporter.httpd.server_address[:2])
    return exporter


def error_line(exc: BaseException) -> str | None:
    """The one stderr line for an error the command line reports without a traceback, else None.

    Shared by ``backupd.cli.main`` and this module's ``main``, so a daemon
    that fails after the exec says it exactly as the CLI would have.
    """
    if isinstance(exc, StartError):
        return str(exc)
    if isinstance(exc, ConfigError):
        return f"backupd: config error: {exc}"
    if isinstance(exc, BackupdError):
        return f"backupd: {exc}"
    return None


def main(argv: list[str]) -> int:
    """``python -m backupd.ops.daemon OPTIONS_JSON [ORIGINAL ARGV...]``: the exit code.

    Exit codes as ``backupd serve`` has them: 1 for a configuration error,
    10 for a port that cannot be bound, 130 on Ctrl-C, 2 for an argument
    that is not ``ServeOptions.to_json`` output.
    """
    try:
        opts = ServeOptions.from_json(argv[0])
    except (IndexError, ValueError, TypeError) as exc:
        print(f"backupd: daemon: bad options argument: {exc}", file=sys.stderr)
        return 2
    try:
        run_daemon(opts)
    except KeyboardInterrupt:
        return 130
    except (StartError, BackupdError) as exc:
        print(error_line(exc), file=sys.stderr)
        return exc.code if isinstance(exc, StartError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
