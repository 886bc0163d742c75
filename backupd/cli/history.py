"""``backupd prune`` and the helpers every history command shares (``catalog.py`` has the rest).

Each reads the same configuration as ``serve`` (``--config``, else the
embedded default under ``--data-dir``) and works on the module folders
directly; nothing here talks to a running daemon.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from backupd.cli import app
from backupd.config.model import DaemonConfig, ModuleConfig
from backupd.errors import ConfigError, StorageError

history_app = typer.Typer(no_args_is_help=True, help="Look into a module's history.")
app.add_typer(history_app, name="history")

CONFIG_HELP = "rsyncd.conf or backupd.yaml; default: the embedded default"
ConfigOpt = Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)]
DataDirOpt = Annotated[Path, typer.Option("--data-dir", help="where the embedded default keeps its module")]
ModuleArg = Annotated[str, typer.Argument(help="module name")]
PathArg = Annotated[str, typer.Argument(help="path inside the module")]
DAYS_HELP = "keep this many days (default: each module's 'history keep days'; 0 = keep all)"
DEFAULT_DATA_DIR = Path("backupd-data")


def _config(config: Path | None, data_dir: Path) -> DaemonConfig:
    if config is not None:
        from backupd.config.load import load_config

        return load_config(config)
    from backupd.config.default import existing_default

    return existing_default(data_dir)  # these commands only read: never create a default


def _module(cfg: DaemonConfig, name: str) -> ModuleConfig:
    module = cfg.modules.get(name)
    if module is None:
        known = ", ".join(cfg.modules) or "none"
        raise ConfigError(f"no module {name!r} in the configuration (modules: {known})")
    return module


def _module_containing(cfg: DaemonConfig, path: Path) -> ModuleConfig | None:
    """The module whose tree holds ``path`` (symlinks resolved), or None."""
    real = Path(os.path.realpath(path.parent)) / path.name
    for module in cfg.modules.values():
        root = Path(os.path.realpath(module.path))
        if real == root or root in real.parents:
            return module
    return None


def _wire_path(path: str) -> bytes:
    return os.fsencode(path).strip(b"/") or b"."


def _size(n: int) -> str:
    return f"{n:,}"


def _fail(message: str, code: int = 1) -> SystemExit:
    """Print ``message`` and give the exception that exits with ``code``.

    SystemExit, not typer.Exit: ``main()`` runs click with
    ``standalone_mode=False``, which turns typer.Exit into a return value
    that is then dropped (exit status 0).
    """
    typer.echo(f"backupd: {message}", err=True)
    return SystemExit(code)


# ---------------------------------------------------------------- prune


@app.command()
def prune(
    module: Annotated[str | None, typer.Option("--module", help="only this module (default: all with history)")] = None,
    days: Annotated[int | None, typer.Option("--days", min=0, help=DAYS_HELP)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be removed, remove nothing")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
) -> None:
    """Remove history day folders older than the retention; nothing outside history is touched."""
    cfg = _config(config, data_dir)
    modules = [_module(cfg, module)] if module else [m for m in cfg.modules.values() if m.history]
    now = datetime.now()
    failed = False
    for mod in modules:
        failed |= not _prune_one(mod, now, days, dry_run)
    if failed:
        raise SystemExit(1)


def _prune_one(mod: ModuleConfig, now: datetime, days: int | None, dry_run: bool) -> bool:
    from backupd.storage.catalog import module_catalog_file
    from backupd.storage.prune import apply_prune, plan_prune

    keep = mod.history_keep_days if days is None else days
    try:
        plan = plan_prune(mod.path, now, keep, history_dir=mod.history_dir, module=mod.name,
                          catalog_file=module_catalog_file(mod) if mod.catalog else None)
    except (StorageError, OSError) as exc:
        typer.echo(f"backupd: module {mod.name}: {exc}", err=True)
        return False
    if plan.cutoff is None:
        typer.echo(f"module {mod.name}: history is kept forever (keep days 0), nothing to prune")
        return True
    verb = "would remove" if dry_run else "removing"
    for folder in plan.remove:
        typer.echo(f"module {mod.name}: {verb} {mod.history_dir}/{os.fsdecode(folder.name)} "
                   f"({folder.files:,} files, {_size(folder.size)} bytes): {folder.reason}")
    if dry_run:
        typer.echo(f"module {mod.name}: would remove {len(plan.remove)} day folders, {plan.files:,} files, "
                   f"{_size(plan.size)} bytes (keep {keep} days, oldest kept {plan.cutoff}); dry run, nothing removed")
        return True
    result = _apply_with_progress(plan, apply_prune)
    for error in result.errors:
        typer.echo(f"backupd: module {mod.name}: {error}", err=True)
    typer.echo(f"module {mod.name}: removed {len(result.removed)} day folders, {result.files:,} files, "
               f"{_size(result.size)} bytes (keep {keep} days, oldest kept {plan.cutoff})")
    return not result.errors


def _apply_with_progress(plan, apply_prune):
    if not plan.remove or not sys.stderr.isatty():
        return apply_prune(plan)
    with typer.progressbar(length=plan.entries, label=f"pruning {plan.module}", file=sys.stderr) as bar:
        return apply_prune(plan, progress=bar.update)
