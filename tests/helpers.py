"""Test helpers shared by every test folder: rsync clients, servers, trees.

Import as ``from tests.helpers import make_tree, File, ...`` (the repo root is
on ``sys.path`` through pytest's ``pythonpath``). Fixtures built on these live
in ``tests/conftest.py``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import NoReturn

import pytest

# ---------------------------------------------------------------- environment

TRUTHY = {"1", "true", "yes", "on"}


def in_ci() -> bool:
    """True when the CI env var is set to a true value (CI=true in .ci/run)."""
    return os.environ.get("CI", "").strip().lower() in TRUTHY


def unavailable(why: str) -> NoReturn:
    """Skip the test for a missing tool or resource (``why``); fail it when CI is true.

    .ci/run installs everything the tests need, so there a skip would hide a
    broken CI set-up as a green run.
    """
    if in_ci():
        pytest.fail(f"CI is true, so a missing requirement fails: {why}", pytrace=False)
    pytest.skip(why)


def cache_dir() -> Path:
    """The cache scripts/get-rsync-327.sh extracts into (BACKUPD_CACHE)."""
    return Path(os.environ.get("BACKUPD_CACHE") or Path.home() / ".cache" / "backupd")


# ---------------------------------------------------------------- rsync clients

SYSTEM_RSYNC = Path("/usr/bin/rsync")
RSYNC_327 = "3.2.7"
RSYNC_350 = "3.5.0"


@dataclass(frozen=True)
class RsyncClient:
    """A stock rsync client binary, optionally forced to an older protocol.

    ``version`` and ``max_protocol`` are what the binary reports (``rsync
    version 3.2.7  protocol version 32``: Debian's 3.2.7 speaks 32);
    ``protocol`` is the ``--protocol=N`` it is forced to, or None.
    """

    id: str
    binary: Path
    version: str
    max_protocol: int
    protocol: int | None = None

    @property
    def argv_prefix(self) -> tuple[str, ...]:
        """The binary and the forced protocol flag, if any."""
        forced = (f"--protocol={self.protocol}",) if self.protocol else ()
        return (str(self.binary), *forced)

    @property
    def mtime_precision_ns(self) -> int:
        """Mtime precision this client transfers: whole seconds below protocol 31."""
        return 1_000_000_000 if self.protocol is not None and self.protocol < 31 else 1

    def run(
        self,
        *args: str | os.PathLike[str],
        password: str | None = None,
        timeout: float = 120,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run ``rsync <args>`` (after ``wrapper``, e.g. strace) to its end; stdout/stderr as text.

        The environment is ours minus every inherited ``RSYNC_*`` variable (so
        no password or connect program leaks in), with ``LC_ALL=C``, then
        ``RSYNC_PASSWORD`` if ``password`` is given, then ``env``. stdin is
        /dev/null and the client runs in its own session (no tty to prompt on).

        Raises:
            subprocess.TimeoutExpired: the client (whole process group, killed)
                ran longer than ``timeout`` seconds.
        """
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("RSYNC_")}
        run_env["LC_ALL"] = "C"
        if password is not None:
            run_env["RSYNC_PASSWORD"] = password
        run_env.update(env or {})
        argv = [*wrapper, *self.argv_prefix, *map(os.fspath, args)]
        return run_in_session(argv, timeout=timeout, cwd=cwd, env=run_env)

    def with_protocol(self, protocol: int | None, id: str) -> RsyncClient:
        """The same binary forced to ``protocol``, under another id."""
        return RsyncClient(id, self.binary, self.version, self.max_protocol, protocol)


def run_in_session(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a new session; on timeout kill its whole process group."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc, grace_s=0)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def probe_rsync(binary: Path) -> tuple[str, int]:
    """Version and protocol a binary reports, e.g. ``("3.5.0", 32)``.

    Raises:
        OSError: the binary is missing or cannot be executed.
        ValueError: it ran but did not print an rsync version line.
    """
    done = subprocess.run(
        [str(binary), "--version"],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=20,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    first = done.stdout.partition("\n")[0].split()  # rsync version 3.5.0 protocol version 32
    if done.returncode != 0 or first[:2] != ["rsync", "version"] or not first[-1].isdigit():
        raise ValueError(f"{binary} --version exited {done.returncode}: {first!r} {done.stderr!r}")
    return first[2], int(first[-1])


def discover_rsync_clients() -> dict[str, RsyncClient | str]:
    """Find the 3.5.0 and 3.2.7 clients: version -> client, or why it is missing.

    3.5.0 is ``$BACKUPD_RSYNC_350`` or ``/usr/bin/rsync`` (Debian ``rsync``,
    any 3.5.x); 3.2.7 is ``$BACKUPD_RSYNC_327`` or the binary that
    ``scripts/get-rsync-327.sh`` extracts under :func:`cache_dir`.
    """
    wanted = {
        RSYNC_350: os.environ.get("BACKUPD_RSYNC_350") or SYSTEM_RSYNC,
        RSYNC_327: os.environ.get("BACKUPD_RSYNC_327")
        or cache_dir() / "rsync-3.2.7" / "usr" / "bin" / "rsync",
    }
    how = {RSYNC_350: "apt-get install rsync", RSYNC_327: "scripts/get-rsync-327.sh"}
    found: dict[str, RsyncClient | str] = {}
    for want, binary in wanted.items():
        binary = Path(binary)
        try:
            version, max_protocol = probe_rsync(binary)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            found[want] = f"rsync {want} client not usable at {binary} ({exc}); run {how[want]}"
            continue
        if version.rsplit(".", 1)[0] != want.rsplit(".", 1)[0]:
            found[want] = f"{binary} is rsync {version}, not {want}; run {how[want]}"
            continue
        found[want] = RsyncClient(f"c{want}", binary, version, max_protocol)
    return found


# ---------------------------------------------------------------- processes


def kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group led by ``proc``, then SIGKILL what is left.

    ``grace_s`` is how long the leader has to exit after SIGTERM (0: SIGKILL
    at once). The group is SIGKILLed in any case, so forked children go too.
    """
    if grace_s > 0:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_inodes(port: int) -> set[int] | None:
    """Socket inodes in LISTEN state on ``port`` (/proc/net/tcp*), None if no /proc."""
    inodes: set[int] = set()
    seen_any = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen_any = True
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(cols[9]))
    return inodes if seen_any else None


def _group_socket_inodes(pgid: int) -> set[int]:
    """Socket inodes held open by the processes of process group ``pgid``."""
    inodes: set[int] = set()
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            fields = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # state ppid pgrp ...
                continue
            for fd in (proc_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except (OSError, IndexError, ValueError):
            continue
    return inodes


def is_listening(port: int, proc: subprocess.Popen) -> bool:
    """True once ``proc``'s process group listens on 127.0.0.1:``port``.

    Reads /proc (no probe connection, so the server logs no aborted session and
    a stranger already on the port does not count); without /proc, connects.
    """
    listeners = _listening_inodes(port)
    if listeners is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True
    return bool(listeners) and bool(listeners & _group_socket_inodes(proc.pid))


class ServerStartError(AssertionError):
    """A test server exited or did not listen in time; the message has its log."""


def tail(path: Path, max_bytes: int = 20_000) -> str:
    """The last ``max_bytes`` of a log file as text ('' if it does not exist)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    cut = data[-max_bytes:]
    return ("[...]\n" if len(cut) < len(data) else "") + cut.decode(errors="replace")


@dataclass
class ServerProcess:
    """A server under test running in its own session; logs to ``log_path``."""

    argv: list[str]
    port: int
    log_path: Path
    cwd: Path
    proc: subprocess.Popen | None = None
    config_path: Path | None = None
    env: Mapping[str, str] | None = None

    def url(self, module: str, path: str = "", user: str | None = None) -> str:
        """``rsync://[user@]127.0.0.1:PORT/module/path``."""
        who = f"{user}@" if user else ""
        return f"rsync://{who}127.0.0.1:{self.port}/{module}/{path}"

    def start(self, timeout_s: float = 10.0) -> ServerProcess:
        """Start the server and wait until it listens.

        Raises:
            ServerStartError: it exited, or did not listen within ``timeout_s``
                (it is then killed); the message ends with its log.
        """
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while not is_listening(self.port, self.proc):
            if self.proc.poll() is not None:
                raise ServerStartError(self._why(f"exited with {self.proc.returncode}"))
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(self._why(f"not listening after {timeout_s} s"))
            time.sleep(0.05)
        return self

    def stop(self) -> int | None:
        """SIGTERM then SIGKILL its process group; returns the leader's exit status.

        A leader that already exited gets no SIGTERM, but what is left of its
        group (forked session workers) is still SIGKILLed.
        """
        if self.proc is None:
            return None
        kill_group(self.proc, grace_s=5.0 if self.proc.poll() is None else 0)
        return self.proc.returncode

    def log(self) -> str:
        """The server's log so far (last 20 kB)."""
        return tail(self.log_path)

    def _why(self, what: str) -> str:
        return f"{' '.join(self.argv)}\n{what} on port {self.port}; log:\n{self.log()}"


def render_rsyncd_conf(
    port: int, global_params: Mapping[str, object], modules: Mapping[str, Mapping[str, object]]
) -> str:
    """rsyncd.conf text: global ``key = value`` lines, then a section per module.

    Keys may use underscores for spaces; values: bool -> yes/no, sequences are
    joined with spaces, anything else is ``str()``. As root, a module without
    ``uid``/``gid`` gets ours (:func:`own_ids`); pass ``uid=""`` for the
    server's default (nobody/nogroup, as rsyncd).
    """

    def line(key: str, value: object) -> str:
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, (list, tuple)):
            value = " ".join(map(str, value))
        return f"{key.replace('_', ' ')} = {value}\n"

    text = "".join(line(k, v) for k, v in {"port": port, **global_params}.items())
    for name, params in modules.items():
        params = own_ids(params)
        text += f"\n[{name}]\n" + "".join("    " + line(k, v) for k, v in params.items())
    return text


def own_ids(params: Mapping[str, object]) -> dict:
    """``params`` with ``uid``/``gid`` = ours when we are root and the module names neither.

    A root rsyncd (and backupd) runs a module without them as nobody/nogroup,
    who may not write the tests' tmp dirs; the tests' servers run as us.
    """
    out = dict(params)
    if os.geteuid() == 0 and not any(k in out for k in ("uid", "gid")):
        out.update(uid=os.getuid(), gid=os.getgid())
    return out


def write_secrets(path: Path, secrets: Mapping[str, str]) -> Path:
    """Write a ``user:password`` secrets file with mode 600 (strict modes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{user}:{password}\n" for user, password in secrets.items())
    os.chmod(path, 0o600)
    return path


# ---------------------------------------------------------------- trees


@dataclass(frozen=True)
class File:
    """A regular file for :func:`make_tree`; ``mtime`` in seconds or ``mtime_ns``."""

    content: bytes | str = b""
    mode: int | None = None
    mtime: float | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Dir:
    """A directory for :func:`make_tree`; mode and mtime are set after its entries."""

    entries: Mapping[str | bytes, object] = field(default_factory=dict)
    mode: int | None = None
    mtime: float | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Symlink:
    """A symlink for :func:`make_tree`; its own mtime (lutimes) if given."""

    target: str | bytes
    mtime: float | None = None
    mtime_ns: int | None = None


def _ns(node: File | Dir | Symlink) -> int | None:
    if node.mtime_ns is not None:
        return node.mtime_ns
    # via the decimal repr: 1600000000.123 means ...123_000_000 ns, not the float's error
    return None if node.mtime is None else round(Decimal(repr(node.mtime)) * 1_000_000_000)


def make_tree(root: str | os.PathLike[str] | bytes, spec: Mapping[str | bytes, object]) -> Path:
    """Build files, dirs and symlinks under ``root`` (created if missing).

    ``spec`` maps a name (str or bytes, one path component) to: ``bytes`` or
    ``str`` (a file with that content), a ``dict`` (a directory), or
    :class:`File`, :class:`Dir`, :class:`Symlink` for modes and mtimes.
    Returns ``root`` as a Path.
    """
    broot = os.fsencode(root)
    os.makedirs(broot, exist_ok=True)
    _fill(broot, spec)
    return Path(os.fsdecode(broot))


def _fill(dir_path: bytes, spec: Mapping[str | bytes, object]) -> None:
    for name, node in spec.items():
        path = os.path.join(dir_path, os.fsencode(name))
        if isinstance(node, (bytes, str)):
            node = File(node)
        elif isinstance(node, Mapping):
            node = Dir(node)
        if isinstance(node, File):
            data = node.content.encode() if isinstance(node.content, str) else node.content
            with open(path, "wb") as f:
                f.write(data)
        elif isinstance(node, Dir):
            os.makedirs(path, exist_ok=True)
            _fill(path, node.entries)
        elif isinstance(node, Symlink):
            os.symlink(os.fsencode(node.target), path)
        else:
            raise TypeError(f"make_tree: {name!r}: unsupported node {node!r}")
        if getattr(node, "mode", None) is not None:
            os.chmod(path, node.mode)
        if (ns := _ns(node)) is not None:
            os.utime(path, ns=(ns, ns), follow_symlinks=False)


@dataclass(frozen=True)
class TreeEntry:
    """What :func:`scan_tree` records of one path (lstat, never follows links)."""

    kind: str  # "file", "dir", "symlink", "fifo", "chr", "blk", "sock"
    mode: int  # permission bits, S_IMODE
    mtime_ns: int
    size: int
    digest: bytes = b""  # blake2b of a file's content
    target: bytes = b""  # a symlink's target
    rdev: int = 0
    uid: int = 0
    gid: int = 0


_KINDS = (
    (stat.S_ISREG, "file"),
    (stat.S_ISDIR, "dir"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISCHR, "chr"),
    (stat.S_ISBLK, "blk"),
    (stat.S_ISSOCK, "sock"),
)


def _entry(path: bytes) -> TreeEntry:
    st = os.lstat(path)
    kind = next(name for test, name in _KINDS if test(st.st_mode))
    digest = target = b""
    if kind == "file":
        h = hashlib.blake2b()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = h.digest()
    elif kind == "symlink":
        target = os.readlink(path)
    rdev = st.st_rdev if kind in ("chr", "blk") else 0
    return TreeEntry(
        kind,
        stat.S_IMODE(st.st_mode),
        st.st_mtime_ns,
        st.st_size,
        digest,
        target,
        rdev,
        st.st_uid,
        st.st_gid,
    )


def scan_tree(
    root: str | os.PathLike[str] | bytes, ignore: Sequence[bytes | str] = ()
) -> dict[bytes, TreeEntry]:
    """Every path under ``root`` (root itself as ``b"."``) -> :class:`TreeEntry`.

    ``ignore`` holds relative paths skipped with everything below them.
    """
    broot = os.fsencode(root)
    skip = {os.fsencode(p).strip(b"/") for p in ignore}
    out = {b".": _entry(broot)}
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        try:  # a tree still being written (polling for convergence): entries may vanish
            names = sorted(os.listdir(os.path.join(broot, rel_dir) if rel_dir else broot))
        except FileNotFoundError:
            continue
        for name in names:
            rel = os.path.join(rel_dir, name) if rel_dir else name
            if rel in skip:
                continue
            try:
                out[rel] = entry = _entry(os.path.join(broot, rel))
            except FileNotFoundError:
                continue
            if entry.kind == "dir":
                stack.append(rel)
    return out


def tree_differences(
    a: str | os.PathLike[str] | bytes,
    b: str | os.PathLike[str] | bytes,
    *,
    ignore: Sequence[bytes | str] = (b"history-backup",),
    mtime_precision_ns: int = 1,
    check_dir_mtimes: bool = True,
    check_owner: bool = False,
) -> list[str]:
    """Differences between two trees, one line each (empty when they match).

    Compares names, kinds, content, permission bits (not for symlinks),
    symlink targets, mtimes (``a // precision == b // precision``; rsync
    sends nanoseconds from protocol 31, whole seconds at 30) and, if asked,
    uid/gid.
    """
    ta, tb = scan_tree(a, ignore), scan_tree(b, ignore)
    diffs = [
        f"{p!r}: only in {which}"
        for which, x, y in (("a", ta, tb), ("b", tb, ta))
        for p in sorted(x.keys() - y.keys())
    ]
    for path in sorted(ta.keys() & tb.keys()):
        ea, eb = ta[path], tb[path]
        if ea.kind != eb.kind:
            diffs.append(f"{path!r}: {ea.kind} vs {eb.kind}")
            continue
        checks = [
            ("content", ea.digest, eb.digest, f"{ea.size} vs {eb.size} bytes"),
            ("symlink target", ea.target, eb.target, f"{ea.target!r} vs {eb.target!r}"),
            ("rdev", ea.rdev, eb.rdev, f"{ea.rdev} vs {eb.rdev}"),
        ]
        if ea.kind != "symlink":
            checks.append(("mode", ea.mode, eb.mode, f"{ea.mode:04o} vs {eb.mode:04o}"))
        if ea.kind != "dir" or check_dir_mtimes:
            # a directory's or symlink's mtime only in whole seconds: rsync's same_time() leaves
            # one whose mtime is within the second (touch_up_dirs, set_file_attrs mtime_differs)
            coarse = ea.kind in ("dir", "link", "symlink")
            precision = max(mtime_precision_ns, 1_000_000_000) if coarse else mtime_precision_ns
            qa, qb = ea.mtime_ns // precision, eb.mtime_ns // precision
            checks.append(("mtime", qa, qb, f"{ea.mtime_ns} vs {eb.mtime_ns} ns"))
        if check_owner:
            checks.append(
                (
                    "owner",
                    (ea.uid, ea.gid),
                    (eb.uid, eb.gid),
                    f"{ea.uid}:{ea.gid} vs {eb.uid}:{eb.gid}",
                )
            )
        diffs += [f"{path!r}: {what} differs: {detail}" for what, x, y, detail in checks if x != y]
    return diffs


def assert_trees_equal(
    a: str | os.PathLike[str] | bytes,
    b: str | os.PathLike[str] | bytes,
    *,
    ignore: Sequence[bytes | str] = (b"history-backup",),
    mtime_precision_ns: int = 1,
    check_dir_mtimes: bool = True,
    check_owner: bool = False,
) -> None:
    """Assert two trees match (see :func:`tree_differences`); lists up to 30 differences.

    Raises:
        AssertionError: one line per difference.
    """
    diffs = tree_differences(
        a,
        b,
        ignore=ignore,
        mtime_precision_ns=mtime_precision_ns,
        check_dir_mtimes=check_dir_mtimes,
        check_owner=check_owner,
    )
    if diffs:
        more = f"\n... and {len(diffs) - 30} more" if len(diffs) > 30 else ""
        raise AssertionError(
            f"trees differ: {os.fsdecode(a)} vs {os.fsdecode(b)}\n" + "\n".join(diffs[:30]) + more
        )


def scrape_metrics(port: int) -> dict[tuple, float]:
    """Scrape ``http://127.0.0.1:PORT/metrics``: ``{(sample name, sorted labels): value}``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def client_350_or_skip() -> RsyncClient:
    """The stock 3.5.0 client, or a skip with the reason it is missing."""
    import pytest

    found = discover_rsync_clients()[RSYNC_350]
    if isinstance(found, str):
        pytest.skip(found)
    return found

