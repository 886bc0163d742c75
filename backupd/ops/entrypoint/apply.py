"""Entrypoint, doing it: write a plan's files (mode 600, atomically) and show a plan as JSON."""

from __future__ import annotations

import json
import os
import sys

from backupd.ops.entrypoint.env import (
    EntrypointError,
    Plan,
    RenderedFile,
)


def apply_plan(plan: Plan, out=None) -> None:
    """Create the directories, write the files (mode 600, atomically), print notices.

    Raises:
        EntrypointError: a directory or file cannot be written.
    """
    try:
        for path in plan.dirs:
            path.mkdir(parents=True, exist_ok=True)
            if plan.owner is not None:
                os.chown(path, *plan.owner)
        for item in plan.files:
            _write_file(item, plan.owner)
    except OSError as exc:
        raise EntrypointError(f"cannot write {exc.filename}: {exc.strerror}") from None
    for line in (*plan.warnings, *plan.notices):
        print(line, file=out or sys.stdout, flush=True)


def _write_file(item: RenderedFile, owner: tuple[int, int] | None) -> None:
    tmp = item.path.with_name(f".{item.path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, item.mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), item.mode)  # exact, whatever the umask
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(item.text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, item.path)
    finally:
        tmp.unlink(missing_ok=True)


def plan_as_json(plan: Plan) -> str:
    """The plan for people and tests: argv, files (secrets redacted), notices redacted."""
    files = {str(f.path): {"mode": f"{f.mode:04o}", "text": "<secret>" if f.secret else f.text} for f in plan.files}
    doc = {
        "mode": plan.mode,
        "argv": list(plan.argv),
        "config": str(plan.config_path),
        "files": files,
        "warnings": list(plan.warnings),
        "generates_password": bool(plan.notices),
    }
    return json.dumps(doc, indent=2)


