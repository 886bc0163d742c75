"""``backupd serve``: the rsync daemon (TCP, or stdio with --stdio)."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path

import typer
from loguru import logger

from backupd.cli import app
from backupd.errors import ConfigError
from backupd.ops.logging import setup_logging


@app.command()
def serve(
    config: Path = typer.Option(None, "--config", help="rsyncd.conf or backupd.yaml; default: the embedded default"),
    port: int = typer.Option(None, "--port", min=0, max=65535, help="TCP port (overrides the config; 0 = any)"),
    address: str = typer.Option(None, "--address", help="address to listen on (overrides the config)"),
    stdio: bool = typer.Option(False, "--stdio", help="run one session on stdin/stdout"),
    log_json: bool = typer.Option(False, "--log-json", help="log as JSON lines"),
    data_dir: Path = typer.Option(
        Path("backupd-data"), "--data-dir", help="where the embedded default keeps its module"
    ),
    metrics_address: str = typer.Option(None, "--metrics-address", help="serve Prometheus metrics on HOST:PORT"),
    ssh_port: int = typer.Option(None, "--ssh-port", min=0, max=65535, help="SSH port for rsync -e ssh (0 = off)"),
) -> None:
    """Serve rsync clients: every overwritten or deleted file is kept in history."""
    from backupd.config.load import load_config, module_path_problems

    creds = None
    if config is None:
        from backupd.config.default import embedded_default

        cfg, creds = embedded_default(data_dir)
    else:
        cfg = load_config(config)
    setup_logging(json=log_json, log_file=cfg.log_file)
    for warning in cfg.warnings:
        logger.warning(warning)
    for problem in module_path_problems(cfg):
        logger.error(problem)
    if stdio:
        from backupd.transport.stdio import serve_stdio

        sys.exit(int(serve_stdio(cfg)))
    from backupd.ops.catalog_start import reconcile_all

    started = reconcile_all(cfg)  # a crash left the tree ahead of the catalog: repaired and logged
    _log_reflinks(cfg)
    reload = None if config is None else functools.partial(load_config, config)
    if ssh_port is not None:
        cfg = dataclasses.replace(cfg, ssh_port=ssh_port)
    ssh = _prepare_ssh(cfg, data_dir if config is None else None, address or cfg.address, reload)
    server = _serve_tcp(cfg, port if port is not None else cfg.port, address or cfg.address, creds, metrics_address,
                        reload, ssh)
    from backupd.ops.catalog_start import mark_clean_shutdown

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
        typer.echo(f"backupd: SSH on {host or '*'}:{cfg.ssh_port}: {exc}", err=True)
        raise typer.Exit(10) from None
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
        typer.echo(f"backupd: cannot listen on {address or '*'}:{port}: {exc.strerror}", err=True)
        raise typer.Exit(10) from None
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
            typer.echo(f"Created module 'backup' in {cfg.modules['backup'].path} with user '{creds.user}'.")
        typer.echo("Push a folder to it with:")
        typer.echo(push_command_hint(cfg, creds, port=port, address=address))
        if ssh is not None and ssh[1] is not None:
            typer.echo("or over SSH with:")
            typer.echo(ssh[1])
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
