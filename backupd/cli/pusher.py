"""``backupd watch``, ``backupd push``, ``backupd status``: the pusher (sersync mode).

``--config`` takes the pusher's YAML (``.yaml``/``.yml``) or a sersync.conf
(anything else; parsed, never run).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import typer
from loguru import logger

from backupd.cli import app
from backupd.config.pusher_model import PusherConfig
from backupd.ops.logging import setup_logging

CONFIG_HELP = "pusher YAML (.yaml/.yml) or a sersync.conf"


def load_pusher_config(path: Path) -> PusherConfig:
    """Read the pusher configuration; the reader is picked by the file name.

    Raises:
        ConfigError: unreadable or wrong (``file:line: ...``).
    """
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        from backupd.config.pusher_yaml import load_pusher_yaml

        return load_pusher_yaml(Path(path))
    from backupd.config.sersync_conf import load_sersync_conf

    return load_sersync_conf(Path(path))


def _setup(config: Path, log_json: bool) -> PusherConfig:
    cfg = load_pusher_config(config)
    setup_logging(json=log_json)
    for warning in cfg.warnings:
        logger.warning(warning)
    return cfg


@app.command()
def watch(
    config: Path = typer.Option(..., "--config", help=CONFIG_HELP),
    log_json: bool = typer.Option(False, "--log-json", help="log as JSON lines"),
) -> None:
    """Watch the source directories and push every change (the daemon)."""
    cfg = _setup(config, log_json)
    asyncio.run(_watch(cfg))


async def _watch(cfg: PusherConfig) -> None:
    from backupd.pusher.daemon import Pusher

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pusher = Pusher(cfg)
    if cfg.metrics_port:
        pusher.metrics.serve(cfg.metrics_address, cfg.metrics_port)
        logger.info("metrics on http://{}:{}/metrics", cfg.metrics_address, cfg.metrics_port)
    await pusher.run(stop)


@app.command()
def push(
    config: Path = typer.Option(..., "--config", help=CONFIG_HELP),
    log_json: bool = typer.Option(False, "--log-json", help="log as JSON lines"),
) -> None:
    """One full sync of every source to every target, then exit (for cron)."""
    from backupd.pusher.daemon import push_once

    cfg = _setup(config, log_json)
    sys.exit(asyncio.run(push_once(cfg)))  # typer.Exit is swallowed in main()'s non-standalone mode


@app.command()
def status(
    config: Path = typer.Option(..., "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Per target: pending paths, lag, last success, owed full sync, last error."""
    from backupd.pusher.status import as_dicts, collect_status, format_status

    rows = collect_status(load_pusher_config(config))
    typer.echo(json.dumps(as_dicts(rows), indent=2) if as_json else format_status(rows))
