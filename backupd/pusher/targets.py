"""The stock ``rsync`` client as the pusher's transport: argv, exit classes, one run.

A batch is one run per target per window::

    rsync -a -R --files-from=LIST --from0 --delete-missing-args --modify-window=-1
          [-r --delete] [--force] [--exclude-from=EXCL]
          [--timeout=N] [--bwlimit=X] [--password-file=F] --stats EXTRA... SRC/ DEST/

(``-r --delete``: the batch holds a directory to send with its content;
``--force``: it deletes or replaces a directory, see ``coalesce.py``;
``--modify-window=-1``: see ``NS_QUICK_CHECK``, unless the extra args set
their own window). A full
sync is ``rsync -a --delete --force [--exclude-from=EXCL] ... SRC/ DEST/``.
``--from0`` also makes the exclude file NUL-separated. Exit 24 (files
vanished before they could be sent) is a success: the next event settles them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from backupd.config.pusher_model import APPEND_ARGS, PusherConfig, SourceConfig, Target
from backupd.errors import EXIT_TEXT, ExitCode
from backupd.pusher.coalesce import Batch

# A batch compares mtimes to the nanosecond (receiver 3.1.3+): a path changed again within the second
# of its last push, with its size unchanged, is sent again instead of being skipped by the whole-second
# quick check (a write racing the previous run leaves the target with the content but an older mtime).
NS_QUICK_CHECK = "--modify-window=-1"


class ExitClass(Enum):
    """What an rsync exit code means for the queue."""

    OK = "ok"  # 0, 24: settled
    PARTIAL = "partial"  # 23, 25: some paths failed; retry, then a full sync
    UNREACHABLE = "unreachable"  # the target or the network: retry with backoff
    FATAL = "fatal"  # our argv or config: retry slowly, the log says why


# exit 5 with one of these is a wrong password, user, module or host rule: retrying fast will not help
_REFUSALS = ("@ERROR: auth failed", "@ERROR: Unknown module", "@ERROR: access denied", "@ERROR: chroot failed",
             "@ERROR: chdir failed")

_UNREACHABLE = {
    ExitCode.STARTCLIENT, ExitCode.SOCKETIO, ExitCode.STREAMIO, ExitCode.MESSAGEIO,
    ExitCode.IPC, ExitCode.CRASHED, ExitCode.TERMINATED, ExitCode.SIGNAL, ExitCode.WAITCHILD,
    ExitCode.TIMEOUT, ExitCode.CONTIMEOUT, ExitCode.FILEIO, ExitCode.MALLOC,
}
KILLED = -9  # our own timeout killed the run
SSH_FAILED = 255  # a `transport: ssh` target: ssh could not connect or log in


def classify_exit(code: int) -> ExitClass:
    """The class of an rsync exit code (errcode.h); negative: killed by a signal."""
    if code in (ExitCode.OK, ExitCode.VANISHED):
        return ExitClass.OK
    if code in (ExitCode.PARTIAL, ExitCode.DEL_LIMIT):
        return ExitClass.PARTIAL
    if code < 0 or code in _UNREACHABLE or code == SSH_FAILED:
        return ExitClass.UNREACHABLE
    return ExitClass.FATAL


def exit_text(code: int) -> str:
    """``"23 (some files/attrs were not transferred ...)"``."""
    if code < 0:
        return f"killed by signal {-code}"
    if code == 0:
        return "0"
    try:
        return f"{code} ({EXIT_TEXT.get(ExitCode(code), 'unknown')})"
    except ValueError:
        return f"{code} (unknown)"


def _common(config: PusherConfig, target: Target, exclude_file: Path | None, full: bool = False) -> list[str]:
    args: list[str] = []
    if exclude_file is not None:
        args.append(f"--exclude-from={exclude_file}")
    if config.rsync_timeout_s:
        args.append(f"--timeout={config.rsync_timeout_s}")
    if config.bwlimit:
        args.append(f"--bwlimit={config.bwlimit}")
    if target.password_file is not None:
        args.append(f"--password-file={target.password_file}")
    if (rsh := target.rsh()) is not None:
        args += ["-e", rsh]
    extra = [a for a in config.extra_args if not (full and a in APPEND_ARGS)]  # a full sync repairs all
    return [*args, "--stats", *extra]


def source_arg(source: SourceConfig) -> str:
    """The source directory with a trailing ``/`` (its content, not itself)."""
    return os.fspath(source.path).rstrip("/") + "/"


def batch_argv(
    config: PusherConfig, source: SourceConfig, target: Target, batch: Batch,
    files_from: Path, exclude_file: Path | None = None,
) -> list[str]:
    """The argv of one batch run (see the module docstring)."""
    argv = [config.rsync_binary, "-a", "-R", f"--files-from={files_from}", "--from0", "--delete-missing-args"]
    if not any(a.startswith(("--modify-window", "-@")) for a in config.extra_args):
        argv.append(NS_QUICK_CHECK)
    if batch.recursive:
        argv += ["-r", "--delete"]
    if batch.force:
        argv.append("--force")
    argv += _common(config, target, exclude_file if batch.recursive else None)
    return [*argv, source_arg(source), target.dest(source.remote_subdir)]


def full_sync_argv(
    config: PusherConfig, source: SourceConfig, target: Target, exclude_file: Path | None = None
) -> list[str]:
    """The argv of one full sync: the whole source, deletions included."""
    argv = [config.rsync_binary, "-a", "--delete", "--force"]
    if exclude_file is not None:
        argv.append("--from0")
    argv += _common(config, target, exclude_file, full=True)
    return [*argv, source_arg(source), target.dest(source.remote_subdir)]


def write_list(path: Path, items: Sequence[bytes]) -> Path:
    """Write NUL-terminated entries (``--files-from``/``--exclude-from`` with ``--from0``)."""
    with open(path, "wb") as f:
        f.write(b"".join(item + b"\0" for item in items))
    return path


@dataclass(frozen=True)
class RsyncResult:
    """One finished rsync run."""

    code: int
    seconds: float
    bytes_sent: int
    files_sent: int
    log_tail: str
    errors: tuple[str, ...] = ()  # the run's error lines (rsync:, @ERROR, ...), in order

    @property
    def exit_class(self) -> ExitClass:
        """The class of this run's exit code; a refused login or module is our config, not the network."""
        if self.code == ExitCode.STARTCLIENT and any(line.startswith(_REFUSALS) for line in self.errors):
            return ExitClass.FATAL
        return classify_exit(self.code)


_STAT = re.compile(rb"^(Total bytes sent|Number of regular files transferred):\s+([\d,]+)", re.M)
# what rsync prints about a failure (its rprintf(FERROR...) lines), wherever they fall among the stats
_ERROR_LINE = re.compile(
    rb"^(?:rsync: .*|rsync error: .*|@ERROR.*|ERROR: .*|cannot delete .*|file has vanished: .*"
    rb"|\*\*\* Skipping .*|IO error encountered .*|skipping .*|.*failed verification.*)$", re.M)
MAX_ERROR_LINES = 20
LOG_ROTATE_BYTES = 4 << 20  # the per-target log is appended to; past this it becomes .1
MAX_SCAN_BYTES = 16 << 20


def error_lines(output: bytes) -> tuple[str, ...]:
    """The error lines of one run's output, at most MAX_ERROR_LINES (the last ones, with the closing line)."""
    found = [m.group(0).decode(errors="replace").rstrip("\r") for m in _ERROR_LINE.finditer(output)]
    return tuple(found[-MAX_ERROR_LINES:])


def open_run_log(log_path: Path, argv: Sequence[str]):
    """The per-target log, for appending one run: rotated past LOG_ROTATE_BYTES, a header line first.

    Returns:
        ``(file, offset)``: the open file and where this run's output starts.
    """
    try:
        if log_path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))
    except FileNotFoundError:
        pass
    log = open(log_path, "ab")  # noqa: SIM115 - closed by the caller
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    log.write(f"=== {stamp} {' '.join(argv)}\n".encode(errors="replace"))
    log.flush()
    return log, log.tell()


async def run_rsync(argv: Sequence[str], log_path: Path, timeout_s: float | None = None) -> RsyncResult:
    """Run rsync to its end (stdout+stderr to ``log_path``); kill its group after ``timeout_s``.

    Cancelling the awaiting task kills the run too (a leader that lost its lease).
    """
    start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "RSYNC_PASSWORD"}
    env["LC_ALL"] = "C"
    log, offset = open_run_log(log_path, argv)
    with log:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
            env=env, start_new_session=True,
        )
    try:
        code = await asyncio.wait_for(proc.wait(), timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        _kill_group(proc.pid)
        await proc.wait()
        if asyncio.current_task() is not None and asyncio.current_task().cancelling():
            raise
        code = KILLED
    output = _read_from(log_path, offset)
    tail = output[-8192:]
    stats = {k: int(v.replace(b",", b"")) for k, v in _STAT.findall(tail)}
    return RsyncResult(
        code=code,
        seconds=time.monotonic() - start,
        bytes_sent=stats.get(b"Total bytes sent", 0),
        files_sent=stats.get(b"Number of regular files transferred", 0),
        log_tail=tail[-2000:].decode(errors="replace"),
        errors=error_lines(output),
    )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_from(path: Path, offset: int) -> bytes:
    """One run's output: the log from ``offset`` on (its last MAX_SCAN_BYTES)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(offset, os.fstat(f.fileno()).st_size - MAX_SCAN_BYTES))
            return f.read()
    except OSError:
        return b""


async def run_command(command: str, log_path: Path, timeout_s: float | None) -> int:
    """Run a pre-sync command with ``/bin/sh -c``; its exit status (KILLED on timeout)."""
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=asyncio.subprocess.DEVNULL, stdout=log,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    try:
        return await asyncio.wait_for(proc.wait(), timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        _kill_group(proc.pid)
        await proc.wait()
        if asyncio.current_task() is not None and asyncio.current_task().cancelling():
            raise
        return KILLED
