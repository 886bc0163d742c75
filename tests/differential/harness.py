"""Differential harness: one scenario, run against stock rsyncd and backupd, compared.

A :class:`Scenario` is a module description (rsyncd.conf parameters, secrets),
a seed tree for the module, a client tree, and a list of steps: rsync client
commands (:class:`Rsync`), tree changes between them (:class:`Change`),
commands run at the same time (:class:`Parallel`), commands run while
another connection holds a slot (:class:`Busy`) and commands of a client
whose every write is late (:class:`Slow`).

Both sides run in the *same* directories (``<base>/mod`` is the module of
both servers, ``<base>/client`` the client's cwd): the rsyncd side first, then
the trees are rebuilt and the backupd side runs, so every path the client
prints is the same. After every step both trees are snapshotted and every
command's exit code, stdout and stderr are recorded; then the sides are
compared step by step. Normalised: ports, times that are "now", directory
sizes in listings, the ``at main.c(N) [sender=V]`` trailer, and (history on)
everything under ``history-backup/``.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import RsyncClient, make_tree, unavailable

MODULE = "mod"
HISTORY = "history-backup"
T0 = 1_600_000_000  # every seeded mtime is T0 + n
PASSWORD = "secret-pw"
USER = "alice"


# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class Rsync:
    """One client command. ``args`` may use ``{mod}`` (``rsync://127.0.0.1:PORT/mod``),
    ``{umod}`` (same with ``alice@``), ``{host}`` (``rsync://127.0.0.1:PORT``),
    ``{port}``, ``{base}`` (the scenario dir). cwd is the client tree.
    ``delta`` compares ``--stats`` literal data (backupd <= 2x and <= +64 KiB)."""

    args: tuple[str, ...]
    password: str | None = None
    delta: bool = False
    env: tuple[tuple[str, str], ...] = ()

    def argv(self, ctx: SideContext) -> list[str]:
        host = f"rsync://127.0.0.1:{ctx.port}"
        fmt = {
            "mod": f"{host}/{MODULE}",
            "umod": f"rsync://{USER}@127.0.0.1:{ctx.port}/{MODULE}",
            "host": host,
            "port": str(ctx.port),
            "base": str(ctx.base),
        }
        return [a.format(**fmt) for a in self.args]


def rsync(*args: str, password: str | None = None, delta: bool = False, **env: str) -> Rsync:
    """Shorthand for :class:`Rsync`."""
    return Rsync(tuple(args), password, delta, tuple(env.items()))


@dataclass(frozen=True)
class Change:
    """Change the trees between commands: ``fn(base)`` with ``base/client`` and ``base/mod``."""

    fn: Callable[[Path], None]
    label: str = "change"


@dataclass(frozen=True)
class Parallel:
    """Commands started together; each one's output is compared on its own."""

    commands: tuple[Rsync, ...]


@dataclass(frozen=True)
class Busy:
    """Run ``command`` while another connection holds the module open (max connections)."""

    command: Rsync


@dataclass(frozen=True)
class Slow:
    """Run ``command`` with every write(2) of the client delayed by ``delay_ms`` (strace inject).

    A slow client: its answers reach the daemon after the daemon has gone on,
    e.g. after it closed, so a reset or an EOF shows which of the two it was.
    """

    command: Rsync
    delay_ms: int = 100


@dataclass(frozen=True)
class OwnNames:
    """Run ``command`` with the client seeing its own names for some ids (a mount namespace).

    ``names`` maps an id to the name the client's /etc/passwd and /etc/group
    give it (a line ahead of the system's), as on a client machine whose
    accounts differ from the server's: the client sends those names with the
    ids (uidlist.c add_uid), and the daemon maps them by its own accounts
    unless the module has ``numeric ids``.
    """

    command: Rsync
    names: Mapping[int, str]


Step = Rsync | Change | Parallel | Busy | Slow | OwnNames


@dataclass(frozen=True)
class Scenario:
    """A named list of steps with the module settings and trees they start from."""

    name: str
    steps: tuple[Step, ...]
    client: Mapping = field(default_factory=dict)
    seed: Mapping = field(default_factory=dict)
    params: Mapping[str, object] = field(default_factory=dict)
    secrets: Mapping[str, str] | None = None
    # history on: module paths (fnmatch) a history-required difference leaves apart
    history_ignore: tuple[str, ...] = ()
    # history on: a client's --backup folds into history by design, so only the
    # exit codes, stderr and the files (not stdout, not dir mtimes) are compared
    history_loose: bool = False

    @property
    def group(self) -> str:
        """Scenarios with equal module settings share one server pair."""
        return repr((sorted(self.params.items(), key=str), sorted((self.secrets or {}).items())))


# ---------------------------------------------------------------- running one side


@dataclass
class SideContext:
    kind: str
    port: int
    base: Path
    client: RsyncClient
    history: bool
    start_ns: int = 0


@dataclass
class Outcome:
    """One command's result, normalised."""

    argv: str
    code: int
    stdout: list[str]
    stderr: list[str]
    stats: dict[str, int]


@dataclass
class StepRecord:
    label: str
    outcomes: list[Outcome]
    module: dict[str, tuple]
    client: dict[str, tuple]


def reset_dirs(base: Path, scenario: Scenario) -> None:
    """Fresh ``base/mod`` (the seed) and ``base/client`` (the client tree), roots 0755 at T0."""
    for name, spec in (("mod", scenario.seed), ("client", scenario.client)):
        root = base / name
        if root.exists() or root.is_symlink():
            _rmtree(root)
        make_tree(root, spec)
        os.chmod(root, 0o755)
        os.utime(root, ns=(T0 * 10**9, T0 * 10**9))
    for extra in base.iterdir():
        if extra.name not in ("mod", "client", "conf"):
            _rmtree(extra)


def _rmtree(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for dirpath, dirs, _ in os.walk(path):  # a test may leave 0500 dirs behind
        for d in dirs:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
    shutil.rmtree(path)


def run_side(ctx: SideContext, scenario: Scenario) -> list[StepRecord]:
    """Run every step of ``scenario`` on one side; a snapshot after each."""
    reset_dirs(ctx.base, scenario)
    ctx.start_ns = time.time_ns()
    records = []
    for n, step in enumerate(scenario.steps):
        outcomes: list[Outcome] = []
        if isinstance(step, Rsync):
            outcomes = [run_command(ctx, step)]
            label = " ".join(step.args)
        elif isinstance(step, Change):
            step.fn(ctx.base)
            label = f"change: {step.label}"
        elif isinstance(step, Parallel):
            outcomes = run_parallel(ctx, step.commands)
            label = "parallel: " + " | ".join(" ".join(c.args) for c in step.commands)
        elif isinstance(step, Busy):
            with hold_connection(ctx.port):
                outcomes = [run_command(ctx, step.command)]
            label = "busy: " + " ".join(step.command.args)
        elif isinstance(step, Slow):
            outcomes = [run_command(ctx, step.command, wrapper=slow_writes(step.delay_ms))]
            label = "slow client: " + " ".join(step.command.args)
        elif isinstance(step, OwnNames):
            outcomes = [run_command(ctx, step.command, wrapper=own_names(ctx.base, step.names))]
            label = f"client names {dict(step.names)}: " + " ".join(step.command.args)
        else:
            raise TypeError(step)
        records.append(
            StepRecord(
                f"step {n + 1}: {label}",
                outcomes,
                snapshot(ctx.base / "mod", ctx, module=True),
                snapshot(ctx.base / "client", ctx, module=False),
            )
        )
    return records


def run_command(ctx: SideContext, cmd: Rsync, wrapper: Sequence[str] = ()) -> Outcome:
    argv = cmd.argv(ctx)
    done = ctx.client.run(
        *argv,
        password=cmd.password,
        cwd=ctx.base / "client",
        timeout=60,
        env=dict(cmd.env) or None,
        wrapper=wrapper,
    )
    return normalise(ctx, " ".join(cmd.args), done)


def run_parallel(ctx: SideContext, cmds: Sequence[Rsync]) -> list[Outcome]:
    results: list[Outcome | None] = [None] * len(cmds)

    def one(i: int) -> None:
        results[i] = run_command(ctx, cmds[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(cmds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def slow_writes(delay_ms: int) -> tuple[str, ...]:
    """The strace prefix that delays each write(2) of the client (and its children) by ``delay_ms``."""
    strace = shutil.which("strace")
    if strace is None:
        unavailable("strace is not installed (.ci/run installs it): no slow-client scenarios")
    inject = f"write:delay_enter={delay_ms * 1000}"
    return (strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=write", "-e", f"inject={inject}")


def own_names(base: Path, names: Mapping[int, str]) -> tuple[str, ...]:
    """The prefix that runs the client with ``names`` for those uids and gids (see :class:`OwnNames`).

    The system's /etc/passwd and /etc/group with one line per id put first,
    bind-mounted over the real ones in a private mount namespace (root only).
    """
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        unavailable("own client names need unshare(1) and root (a private mount namespace)")
    files = []
    for kind, system in (("passwd", "/etc/passwd"), ("group", "/etc/group")):
        lines = [f"{name}:x:{ident}:{ident}::/:/usr/sbin/nologin" if kind == "passwd" else f"{name}:x:{ident}:"
                 for ident, name in names.items()]
        path = base / f"client-{kind}"
        path.write_text("\n".join(lines) + "\n" + Path(system).read_text())
        files.append(str(path))
    script = 'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && exec "$@"'
    return (unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh", *files)


class hold_connection:
    """A raw daemon connection that has selected the module and waits (holds a slot)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def __enter__(self) -> hold_connection:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock = sock
        self._read_line()  # @RSYNCD: 32.0 ...
        sock.sendall(b"@RSYNCD: 32.0 sha1 md5\n" + MODULE.encode() + b"\n")
        while not self._read_line().startswith(b"@RSYNCD: OK"):
            pass
        return self

    def _read_line(self) -> bytes:
        assert self.sock is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError(f"daemon closed the held connection after {line!r}")
            line += chunk
        return line

    def __exit__(self, *exc) -> None:
        assert self.sock is not None
        self.sock.close()
        time.sleep(0.3)  # let the daemon notice, so the slot is free for the next step


# ---------------------------------------------------------------- normalising

# rsync's " at main.c(1338) [sender=3.5.0]"; backupd's own " at backupd [Receiver=backupd-V]"
TRAILER = re.compile(r" at (?:[\w./-]+\.c\(\d+\)|backupd) \[[A-Za-z]+=[^\]]*\]")
PORT = re.compile(r"127\.0\.0\.1:\d+")
TCP_PORT = re.compile(r"(?<=^opening tcp connection to 127\.0\.0\.1 port )\d+$")  # -vv
STAMP = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d")
LISTING = re.compile(r"^([-dlcbps][-rwxsStT]{9})\s+([\d,]+) (.*)$")
STAT_LINE = re.compile(r"^([A-Z][A-Za-z ]+?):\s+([\d,]+)(?: bytes)?\b")
# --stats lines that depend on the implementation, not on the transfer
VOLATILE_STATS = (
    "Total bytes sent",
    "Total bytes received",
    "Literal data",
    "Matched data",
    "File list size",
    "File list generation time",
    "File list transfer time",
)
VOLATILE_LINE = re.compile(r"^(sent [\d,]+ bytes .*|total size is .*speedup is .*)$")


def normalise(ctx: SideContext, label: str, done: subprocess.CompletedProcess) -> Outcome:
    stats = {
        m.group(1): int(m.group(2).replace(",", ""))
        for m in map(STAT_LINE.match, done.stdout.splitlines())
        if m
    }
    return Outcome(
        label,
        done.returncode,
        _lines(ctx, done.stdout, stdout=True),
        _lines(ctx, done.stderr, stdout=False),
        stats,
    )


def _lines(ctx: SideContext, text: str, *, stdout: bool) -> list[str]:
    out = []
    for line in text.splitlines():
        line = TRAILER.sub("", line)
        line = PORT.sub("127.0.0.1:PORT", line)
        line = TCP_PORT.sub("PORT", line)
        line = STAMP.sub(lambda m: _stamp(ctx, m.group(0)), line)
        if stdout:
            if VOLATILE_LINE.match(line) or line.startswith(VOLATILE_STATS):
                continue
            if (m := LISTING.match(line)) and m.group(1).startswith("d"):
                line = f"{m.group(1)} <dirsize> {m.group(3)}"
        if ctx.history and HISTORY in line:
            continue
        out.append(line)
    return out


def _stamp(ctx: SideContext, text: str) -> str:
    t = time.mktime(time.strptime(text, "%Y/%m/%d %H:%M:%S"))
    return "<now>" if t * 1e9 >= ctx.start_ns - 2e9 else text


def snapshot(root: Path, ctx: SideContext, *, module: bool) -> dict[str, tuple]:
    """path -> (kind, mode, mtime|'now', size, content, target, uid, gid, link group)."""
    broot = os.fsencode(root)
    entries: dict[str, tuple] = {".": _stat_entry(broot, ctx)}
    inodes: dict[tuple[int, int], list[str]] = {}
    hist = os.fsencode(HISTORY)
    for dirpath, dirs, files in os.walk(broot):
        rel_dir = os.path.relpath(dirpath, broot)
        if ctx.history and dirpath == broot:
            if hist in dirs:
                dirs.remove(hist)
            if module:  # history on: creating history-backup/ touches the module root
                kind, mode, _mtime, *rest = entries["."]
                entries["."] = (kind, mode, "<root: history on>", *rest)
        dirs.sort()
        for name in sorted(dirs + files):
            full = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.normpath(os.path.join(rel_dir, name)))
            entries[rel] = _stat_entry(full, ctx)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    for group in inodes.values():
        if len(group) > 1:
            leader = min(group)
            for rel in group:
                entries[rel] = (*entries[rel], f"linked to {leader}")
    return entries


def _stat_entry(path: bytes, ctx: SideContext) -> tuple:
    st = os.lstat(path)
    mode = st.st_mode
    mtime: object = st.st_mtime_ns
    if st.st_mtime_ns >= ctx.start_ns - 2_000_000_000:
        mtime = "<now>"
    if stat.S_ISREG(mode):
        with open(path, "rb") as f:
            data = f.read()
        content = data if len(data) <= 64 else f"{len(data)} bytes, hash {hash(data)}"
        blocks = "sparse" if st.st_blocks * 512 < st.st_size // 2 and st.st_size > 65536 else ""
        return ("file", oct(stat.S_IMODE(mode)), mtime, st.st_size, content, blocks,
                st.st_uid, st.st_gid)
    if stat.S_ISDIR(mode):
        return ("dir", oct(stat.S_IMODE(mode)), mtime, st.st_uid, st.st_gid)
    if stat.S_ISLNK(mode):
        return ("symlink", os.readlink(path), mtime, st.st_uid, st.st_gid)
    return ("special", oct(mode), mtime, st.st_rdev, st.st_uid, st.st_gid)


# ---------------------------------------------------------------- comparing


def compare(stock: list[StepRecord], ours: list[StepRecord]) -> list[str]:
    """Readable differences between the two sides' records (empty when they match)."""
    problems: list[str] = []
    for a, b in zip(stock, ours, strict=True):
        for oa, ob in zip(a.outcomes, b.outcomes, strict=True):
            problems += _compare_outcome(a.label, oa, ob)
        for where in ("module", "client"):
            ta, tb = getattr(a, where), getattr(b, where)
            diffs = _tree_diff(ta, tb)
            if diffs:
                problems.append(f"{a.label}: {where} trees differ (rsyncd vs backupd):")
                problems += [f"    {d}" for d in diffs]
        if problems:  # later steps start from a different state: stop at the first
            break
    return problems


def _compare_outcome(label: str, a: Outcome, b: Outcome) -> list[str]:
    out = []
    if a.code != b.code:
        out.append(f"{label}: exit code {a.code} (rsyncd) vs {b.code} (backupd)")
    for name in ("stdout", "stderr"):
        la, lb = getattr(a, name), getattr(b, name)
        if la != lb:
            diff = difflib.unified_diff(la, lb, "rsyncd " + name, "backupd " + name, lineterm="")
            out.append(f"{label}: {name} differs:\n" + "\n".join(diff))
    if a.stats.get("Literal data") is not None and "Literal data" in b.stats:
        lit_a, lit_b = a.stats["Literal data"], b.stats["Literal data"]
        if lit_b > 2 * lit_a or lit_b > lit_a + 65536:
            out.append(f"{label}: literal data {lit_b} (backupd) vs {lit_a} (rsyncd): too much")
    return out


def _tree_diff(ta: Mapping[str, tuple], tb: Mapping[str, tuple]) -> list[str]:
    diffs = [f"{p!r}: only on rsyncd side: {ta[p]}" for p in sorted(ta.keys() - tb.keys())]
    diffs += [f"{p!r}: only on backupd side: {tb[p]}" for p in sorted(tb.keys() - ta.keys())]
    diffs += [
        f"{p!r}: {ta[p]} (rsyncd) vs {tb[p]} (backupd)"
        for p in sorted(ta.keys() & tb.keys())
        if ta[p] != tb[p]
    ]
    return diffs


def run_scenario(
    scenario: Scenario,
    client: RsyncClient,
    servers: Mapping[str, int],
    base: Path,
    history: bool,
) -> list[str]:
    """Run on rsyncd, then on backupd, in the same ``base``; the differences."""
    records = {}
    for kind in ("rsyncd", "backupd"):
        ctx = SideContext(kind, servers[kind], base, client, history)
        records[kind] = run_side(ctx, scenario)
    if history and scenario.history_loose:
        for recs in records.values():
            for rec in recs:
                for out in rec.outcomes:
                    out.stdout = []
                rec.module = {
                    p: (e[:2] + ("<dir mtime>",) + e[3:]) if e[0] == "dir" else e
                    for p, e in rec.module.items()
                }
    if history and scenario.history_ignore:
        for recs in records.values():
            for rec in recs:
                rec.module = {
                    p: e for p, e in rec.module.items()
                    if not any(fnmatch.fnmatch(p, pat) for pat in scenario.history_ignore)
                }
    return compare(records["rsyncd"], records["backupd"])
