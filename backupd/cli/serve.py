"""``backupd serve``: the rsync daemon (TCP, or stdio with --stdio)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from backupd.cli import app


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
    from backupd.ops.daemon import ServeOptions, exec_daemon, run_stdio

    opts = ServeOptions(config=config, port=port, address=address, log_json=log_json, data_dir=data_dir,
                        metrics_address=metrics_address, ssh_port=ssh_port)
    if stdio:
        sys.exit(run_stdio(opts))
    exec_daemon(opts)  # the listener runs without typer (ops/daemon.py); only a failed exec returns
