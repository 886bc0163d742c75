"""``backupd history ls``, ``backupd restore`` and ``backupd prune``: history from the shell.

Each reads the same configuration as ``serve`` (``--config``, else the
embedded default under ``--data-dir``) and works on the module folders
directly; nothing here talks to a running daemon.
"""

from __future__ import annotations

import os
import sys
from datetime import date, datetime
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
AT_HELP = "YYYY-MM-DD (that day's newest version) or 'YYYY-MM-DD HH:MM[:SS]' (the newest before it)"
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


# ---------------------------------------------------------------- history ls


@history_app.command("ls")
def history_ls(module: ModuleArg, path: PathArg, config: ConfigOpt = None,
               data_dir: DataDirOpt = DEFAULT_DATA_DIR) -> None:
    """Every version of PATH: the current one, then history newest first."""
    from backupd.storage import ModuleTree
    from backupd.storage.versions import find_versions

    mod = _module(_config(config, data_dir), module)
    try:
        with ModuleTree(mod.path, module=mod.name) as tree:
            versions = find_versions(tree, _wire_path(path), mod.history_dir)
    except StorageError as exc:
        raise _fail(str(exc)) from None
    if not versions:
        raise _fail(f"{path}: no current version and nothing in {mod.history_dir}/ of module {module}")
    typer.echo(f"{'DATE':10} {'TIME':8}  {'SIZE':>14}  {'MODIFIED':19}  VERSION")
    for v in versions:
        typer.echo(_version_line(v))


def _version_line(v) -> str:
    if v.current:
        when, clock = "current", ""
    else:
        when = v.day.isoformat()
        clock = v.archived.strftime("%H:%M:%S") if v.archived is not None else "--:--:--"
    modified = datetime.fromtimestamp(v.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    size = _size(v.size) if v.kind == "file" else v.kind
    return f"{when:10} {clock:8}  {size:>14}  {modified:19}  {os.fsdecode(v.path)}"


# ---------------------------------------------------------------- restore


def parse_at(text: str) -> date | datetime:
    """``YYYY-MM-DD`` -> a date; ``YYYY-MM-DD HH:MM[:SS]`` or with ``T`` -> a local datetime.

    Raises:
        typer.BadParameter: anything else.
    """
    text = text.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: want YYYY-MM-DD or 'YYYY-MM-DD HH:MM[:SS]'") from None


@app.command()
def restore(
    module: ModuleArg,
    path: PathArg,
    at: Annotated[str, typer.Option("--at", help=AT_HELP)],
    to: Annotated[Path, typer.Option("--to", help="directory to copy the version into (created if missing)")],
    force: Annotated[bool, typer.Option("--force", help="replace what is already there")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show which version goes where, write nothing")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
) -> None:
    """Copy a version of PATH out of the module's history into --to DIR."""
    from backupd.storage import ModuleTree
    from backupd.storage.versions import find_versions, pick_version, restore_target, restore_version

    when = parse_at(at)
    cfg = _config(config, data_dir)
    mod = _module(cfg, module)
    try:
        with ModuleTree(mod.path, module=mod.name) as tree:
            versions = find_versions(tree, _wire_path(path), mod.history_dir)
            chosen = pick_version(versions, when)
            if chosen is None:
                days = sorted({v.day.isoformat() for v in versions if v.day is not None})
                shown = ", ".join(days) or "none"
                raise _fail(f"{path}: no version in history for {at} (days with versions: {shown})")
            target = restore_target(tree, chosen, to)
            if dry_run:
                exists = " (exists: --force would replace it)" if os.path.lexists(target) else ""
                typer.echo(f"would restore {os.fsdecode(chosen.path)} -> {target}{exists}; dry run, nothing written")
                return
            if force and os.path.lexists(target):
                inside = _module_containing(cfg, target)
                if inside is not None:
                    raise _fail(f"{target} is live data of module {inside.name}: "
                                "--force there would replace it without keeping it in history; restore to "
                                "another directory and push it back, so the replaced version is kept")
            target = restore_version(tree, chosen, to, force=force)
    except FileExistsError as exc:
        raise _fail(f"{exc.strerror}") from None
    except (StorageError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"restored {os.fsdecode(chosen.path)} -> {target}")


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
