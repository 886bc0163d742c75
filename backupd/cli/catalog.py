"""History from the catalog: ``history ls|days|diff|reindex``, ``restore --at T``, ``verify``.

Every command reads the same configuration as ``serve``. T is an ISO date
(the end of that day), an ISO date-time, or a relative time ("2 hours ago",
"yesterday 18:00", parsed by ``dateparser``); "at T" is the state at the end
of the second T names (``storage/catalog.py``). ``--json`` prints one JSON
document instead of the table.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from backupd.cli import app
from backupd.cli.history import (
    DEFAULT_DATA_DIR,
    ConfigOpt,
    DataDirOpt,
    ModuleArg,
    _config,
    _fail,
    _module,
    _module_containing,
    _wire_path,
    history_app,
)
from backupd.errors import StorageError

AT_HELP = "ISO date (its end) or date-time, or relative: '2 hours ago', 'yesterday 18:00'"
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
OptPathArg = Annotated[str, typer.Argument(help="path inside the module (default: the module root)")]


def parse_at(text: str, now: datetime | None = None) -> datetime:
    """A local naive datetime for T (``catalog.parse_instant``).

    Raises:
        typer.BadParameter: nothing ``dateparser`` understands either.
    """
    from backupd.storage.catalog import parse_instant

    parsed = parse_instant(text, now)
    if parsed is None:
        raise typer.BadParameter(f"{text!r}: want an ISO date or date-time, or e.g. '2 hours ago'")
    return parsed


NS = 1_000_000_000


def _stamp(ns: int | None) -> str:
    return "-" if ns is None else datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _open(mod, *, write: bool = False):
    from backupd.storage.catalog import Catalog, module_catalog_file

    path = module_catalog_file(mod)
    try:
        return Catalog(path, readonly=not write)
    except FileNotFoundError:
        raise _fail(f"module {mod.name} has no catalog yet ({path}): start backupd serve, "
                    f"or run backupd history reindex {mod.name}") from None
    except sqlite3.Error as exc:
        raise _fail(f"module {mod.name}: catalog {path}: {exc}") from None


def _row_json(row) -> dict:
    return {"path": os.fsdecode(row.path), "type": row.type, "live_from": _stamp(row.live_from),
            "live_to": None if row.live_to is None else _stamp(row.live_to), "size": row.size,
            "mode": f"{row.mode & 0o7777:04o}", "mtime": _stamp(row.mtime_ns), "xxh128": row.xxh128,
            "stored": os.fsdecode(row.stored), "approximate": bool(row.approx), "missing": bool(row.missing),
            "restore_at": _stamp(row.live_to - NS if row.live_to is not None else row.live_from)}  # a --at T giving it


# ---------------------------------------------------------------- history ls / days / diff


@history_app.command("ls")
def history_ls(module: ModuleArg, path: OptPathArg = ".", as_json: JsonOpt = False, config: ConfigOpt = None,
               data_dir: DataDirOpt = DEFAULT_DATA_DIR) -> None:
    """Every version at or below PATH: its live interval, size, where it is stored, how to restore it."""
    mod = _module(_config(config, data_dir), module)
    wire = _wire_path(path)
    with _open(mod) as catalog:
        rows = catalog.under(wire)
    if not rows:
        raise _fail(f"{path}: no version in the catalog of module {module}")
    if as_json:
        typer.echo(json.dumps([_row_json(r) for r in rows], indent=1))
        return
    typer.echo(f"{'LIVE FROM':19}  {'LIVE TO':19}  {'SIZE':>12}  {'PATH':30}  STORED")
    for r in rows:
        size = f"{r.size:,}" if r.type == "file" else r.type
        to = "live" if r.live_to is None else _stamp(r.live_to)
        flags = (" ~approximate" if r.approx else "") + (" MISSING" if r.missing else "")
        typer.echo(f"{_stamp(r.live_from):19}  {to:19}  {size:>12}  {os.fsdecode(r.path):30}  "
                   f"{os.fsdecode(r.stored)}{flags}")
    last = rows[-1]
    typer.echo(f"restore one: backupd restore {module} {os.fsdecode(last.path)} --at '{_stamp(last.live_from)}' "
               "--to DIR")


@history_app.command("days")
def history_days(module: ModuleArg, as_json: JsonOpt = False, config: ConfigOpt = None,
                 data_dir: DataDirOpt = DEFAULT_DATA_DIR) -> None:
    """What changed per day: versions made live (and their bytes), versions replaced or deleted."""
    mod = _module(_config(config, data_dir), module)
    days: dict[str, dict[str, int]] = {}
    with _open(mod) as catalog:
        for r in catalog.rows():
            if r.live_from is not None:
                day = days.setdefault(_stamp(r.live_from)[:10], {"new": 0, "bytes": 0, "retired": 0})
                day["new"] += 1
                day["bytes"] += r.size if r.type == "file" else 0
            if r.live_to is not None:
                days.setdefault(_stamp(r.live_to)[:10], {"new": 0, "bytes": 0, "retired": 0})["retired"] += 1
    ordered = dict(sorted(days.items()))
    if as_json:
        typer.echo(json.dumps(ordered, indent=1))
        return
    typer.echo(f"{'DAY':10}  {'NEW':>8}  {'BYTES':>14}  {'REPLACED/DELETED':>16}")
    for day, c in ordered.items():
        typer.echo(f"{day:10}  {c['new']:>8,}  {c['bytes']:>14,}  {c['retired']:>16,}")


@history_app.command("diff")
def history_diff(module: ModuleArg, t1: Annotated[str, typer.Argument(help="from T1")],
                 t2: Annotated[str, typer.Argument(help="to T2")], path: OptPathArg = ".",
                 as_json: JsonOpt = False, config: ConfigOpt = None,
                 data_dir: DataDirOpt = DEFAULT_DATA_DIR) -> None:
    """Added (+), changed (~) and deleted (-) paths at or below PATH between T1 and T2."""
    from backupd.storage.catalog import at_bound

    mod = _module(_config(config, data_dir), module)
    wire = _wire_path(path)
    with _open(mod) as catalog:
        before = {r.path: r for r in catalog.live_at(wire, at_bound(parse_at(t1)))}
        after = {r.path: r for r in catalog.live_at(wire, at_bound(parse_at(t2)))}
    changes = []
    for p in sorted(before.keys() | after.keys()):
        a, b = before.get(p), after.get(p)
        if a is None:
            changes.append(("added", b))
        elif b is None:
            changes.append(("deleted", a))
        elif a.id != b.id and (a.xxh128, a.mode, a.mtime_ns, a.type) != (b.xxh128, b.mode, b.mtime_ns, b.type):
            changes.append(("changed", b))
    if as_json:
        typer.echo(json.dumps([{"change": c, **_row_json(r)} for c, r in changes], indent=1))
        return
    marks = {"added": "+", "changed": "~", "deleted": "-"}
    for change, r in changes:
        typer.echo(f"{marks[change]} {os.fsdecode(r.path)}{'/' if r.type == 'dir' else ''}")


@history_app.command("reindex")
def history_reindex(module: ModuleArg, rebuild: Annotated[bool, typer.Option(
                        "--rebuild", help="drop every row first (intervals then all approximate)")] = False,
                    config: ConfigOpt = None, data_dir: DataDirOpt = DEFAULT_DATA_DIR) -> None:
    """Bring the catalog in line with the tree: versions without rows are added (approximate)."""
    from backupd.storage.reconcile import reconcile_module

    mod = _module(_config(config, data_dir), module)
    try:
        plan = reconcile_module(mod, rebuild=rebuild, log=lambda text: typer.echo(text, err=True))
    except (StorageError, sqlite3.Error, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"module {module}: {plan.live_entries} live and {plan.history_entries} history entries; "
               f"repairs: {plan.counts() or 'none'}")


# ---------------------------------------------------------------- restore


@app.command()
def restore(
    module: ModuleArg,
    path: Annotated[str, typer.Argument(help="path inside the module ('.': the whole module)")],
    at: Annotated[str, typer.Option("--at", help=AT_HELP)],
    to: Annotated[Path, typer.Option("--to", help="directory to restore into (created if missing)")],
    force: Annotated[bool, typer.Option("--force", help="replace what is already there")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be restored, write nothing")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
) -> None:
    """Restore PATH as it was at T into --to DIR: a file's version, or a directory's whole tree.

    Into a directory of a live module, the restore is a versioned change:
    what it replaces goes to that module's history first.
    """
    from backupd.storage.catalog import at_bound
    from backupd.storage.restore_at import plan_restore

    when = parse_at(at)
    cfg = _config(config, data_dir)
    mod = _module(cfg, module)
    wire = _wire_path(path)
    name = b"" if wire == b"." else wire.rpartition(b"/")[2]
    target = to / os.fsdecode(name) if name else to
    inside = _module_containing(cfg, Path(os.path.abspath(target)))
    with _open(mod) as catalog:
        plan = plan_restore(catalog, wire, at_bound(when), _dest_root(inside, to, name))
    if not plan.items:
        raise _fail(f"{path}: nothing was live at {when:%Y-%m-%d %H:%M:%S} in module {module} "
                    f"(see backupd history ls {module} {path})")
    exists = os.path.lexists(target) and bool(name)
    what = f"{plan.files:,} files, {plan.size:,} bytes"
    if dry_run:
        note = " (exists: --force would replace it)" if exists else ""
        typer.echo(f"would restore {path} as of {when:%Y-%m-%d %H:%M:%S} ({what}) -> {target}{note}; "
                   "dry run, nothing written")
        return
    if exists and not force:
        raise _fail(f"{target} exists (use --force to replace it)")
    result = _apply(plan, mod, inside, to, force)
    for line in result.errors:
        typer.echo(f"backupd: {line}", err=True)
    versioned = f" (replaced versions kept in module {inside.name}'s history)" if inside is not None else ""
    typer.echo(f"restored {path} as of {when:%Y-%m-%d %H:%M:%S} -> {target}: {result.files:,} files, "
               f"{result.bytes:,} bytes{versioned}")
    if result.errors:
        raise SystemExit(1)


def _dest_root(inside, to: Path, name: bytes) -> bytes:
    """The restored path's place in the destination tree (a module, or the --to directory)."""
    if inside is None:
        return name
    rel = os.path.relpath(os.path.realpath(to), os.path.realpath(inside.path))
    base = b"" if rel == "." else os.fsencode(rel)
    return b"/".join(p for p in (base, name) if p)


def _apply(plan, mod, inside, to: Path, force: bool):
    from backupd.storage import HistoryStore, ModuleTree
    from backupd.storage.catalog import session_writer
    from backupd.storage.restore_at import apply_restore

    try:
        with ModuleTree(mod.path, module=mod.name) as source:
            if inside is not None:
                history = HistoryStore(inside.history_dir) if inside.history else None
                dest = ModuleTree(inside.path, module=inside.name, history=history, catalog=session_writer(inside))
                if dest.is_history_path(plan.dest_root or b"."):
                    raise _fail(f"{to} is inside the history of module {inside.name}")
            else:
                to.mkdir(parents=True, exist_ok=True)
                dest = ModuleTree(to, module=str(to))
            with dest:
                return _with_progress(plan, lambda progress: apply_restore(plan, source, dest, replace=force,
                                                                           progress=progress))
    except (StorageError, OSError) as exc:
        raise _fail(str(exc)) from None


def _with_progress(plan, run):
    if not sys.stderr.isatty() or not plan.size:
        return run(None)
    with typer.progressbar(length=plan.size, label="restoring", file=sys.stderr) as bar:
        return run(bar.update)


# ---------------------------------------------------------------- verify


@app.command()
def verify(
    module: Annotated[str | None, typer.Argument(help="module (default: every module with a catalog)")] = None,
    since: Annotated[str | None, typer.Option("--since", help="only versions live at or after T")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
) -> None:
    """Re-read stored versions (live and history) against the catalog's checksums; exit 1 on findings."""
    from backupd.storage.catalog import module_catalog_file, time_ns

    cfg = _config(config, data_dir)
    mods = [_module(cfg, module)] if module else [
        m for m in cfg.modules.values() if m.history and m.catalog and module_catalog_file(m).exists()]
    since_ns = time_ns(parse_at(since)) if since else None
    reports, found = [], 0
    for mod in mods:
        report = _verify_one(mod, since_ns)
        found += len(report["findings"])
        reports.append(report)
        if not as_json:
            _print_verify(report)
    if as_json:
        typer.echo(json.dumps(reports, indent=1))
    if found:
        raise SystemExit(1)


def _verify_one(mod, since_ns: int | None) -> dict:
    from backupd.storage import ModuleTree
    from backupd.storage.verify import verify_module

    started, started_at = time.monotonic(), time.time()
    with _open(mod) as catalog, ModuleTree(mod.path, module=mod.name) as tree:
        total = sum(r.size for r in catalog.rows() if r.type == "file")
        if sys.stderr.isatty() and total:
            with typer.progressbar(length=total, label=f"verifying {mod.name}", file=sys.stderr) as bar:
                result = verify_module(tree, catalog, since_ns=since_ns, progress=bar.update)
        else:
            result = verify_module(tree, catalog, since_ns=since_ns)
    seconds = time.monotonic() - started
    _store_run(mod, started_at, seconds, result)
    return {"module": mod.name, "checked": result.checked, "bytes": result.bytes, "seconds": round(seconds, 3),
            "mb_per_s": round(result.bytes / 1e6 / seconds, 1) if seconds > 0 else None,
            "mismatches": result.count("mismatch"), "missing": result.count("missing"),
            "findings": [{"kind": f.kind, "path": os.fsdecode(f.path), "stored": os.fsdecode(f.stored),
                          "detail": f.detail} for f in result.findings]}


def _store_run(mod, started_at: float, seconds: float, result) -> None:
    """The run's figures in the catalog meta, as the daemon's scheduled runs (its metrics show them)."""
    from backupd.ops.verify_schedule import run_record, store_run

    try:
        store_run(mod, run_record(result, started_at, time.time(), seconds))
    except (sqlite3.Error, OSError) as exc:
        typer.echo(f"module {mod.name}: run not recorded in the catalog: {exc}", err=True)


def _print_verify(report: dict) -> None:
    for f in report["findings"]:
        typer.echo(f"module {report['module']}: {f['kind'].upper()} {f['path']} ({f['stored']}): {f['detail']}")
    typer.echo(f"module {report['module']}: checked {report['checked']:,} versions, {report['bytes']:,} bytes in "
               f"{report['seconds']} s ({report['mb_per_s']} MB/s): {report['mismatches']} mismatches, "
               f"{report['missing']} missing")
