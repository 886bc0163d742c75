"""The daemon's TCP listener: accept, check the global limit, fork a session.

The listener never runs protocol code itself: each accepted connection is
handed to a worker process (worker.py), so it keeps accepting while
sessions run, and a failing session cannot take it down.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from backupd.config.load import module_path_problems
from backupd.config.model import DaemonConfig
from backupd.protocol.greeting import encode_error, encode_greeting
from backupd.roles.session import AUTH_FAIL_DELAY_S
from backupd.transport.listen import bind_listeners
from backupd.transport.slots import anonymous_lock_file
from backupd.transport.worker import fork_session, trim_heap

MAX_WORKERS = 256  # a hard cap on session processes; per-module limits are `max connections`
MAX_PREAUTH = 64  # connections not yet past auth; beyond it the oldest one is cut
MAX_PREAUTH_PER_ADDRESS = 16  # the same, per client address, once the oldest has waited PREAUTH_PATIENCE_S
PREAUTH_PATIENCE_S = 5.0  # a login takes milliseconds; a burst of one host's clients is not a flood
FAILURE_WINDOW_S = 60.0  # failed logins counted per address over this window
MAX_AUTH_FAIL_DELAY_S = 8.0


@dataclass
class PreAuth:
    """A session process whose client has not logged in yet."""

    pid: int
    addr: str
    started: float
    status_fd: int  # read end of the child's status pipe


def worker_cap(config: DaemonConfig) -> int:
    """The cap on session processes: MAX_WORKERS, or more when the configured limits allow more.

    A module's ``max connections = 300`` (the seed container's default) must
    not be cut at 256; unauthenticated connections have their own cap on top.
    """
    limits = [config.max_connections, *(m.max_connections for m in config.modules.values())]
    return max(MAX_WORKERS, max(limits) + MAX_PREAUTH)


def auth_fail_delay(recent_failures: int) -> float:
    """Seconds a session waits before refusing a wrong login: 1 s, doubling per recent failure, at most 8 s."""
    return min(MAX_AUTH_FAIL_DELAY_S, AUTH_FAIL_DELAY_S * 2 ** min(recent_failures, 8))


class DaemonServer:
    """Listens on ``address:port`` and forks a worker per connection."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        address: str | None,
        port: int,
        reload: Callable[[], DaemonConfig] | None = None,
    ) -> None:
        """``reload`` re-reads the configuration on SIGHUP (None: nothing to re-read).

        It raises on a broken file (ConfigError, OSError); the old
        configuration then stays in force.
        """
        self.config = config
        self.reload_config = reload
        self._reload_pending = False
        self.address = address
        self.port = port
        self.children: dict[int, float] = {}
        self.preauth: dict[int, PreAuth] = {}  # by the read end of its status pipe
        self.failures: dict[str, deque[float]] = {}  # address -> times of failed logins
        self._selector: selectors.BaseSelector | None = None
        self.slot_fd = anonymous_lock_file()  # `max connections` slots, inherited by every session
        self.listeners: list[socket.socket] = []
        self._stop = False
        self.periodic: list[tuple[float, Callable[[], None]]] = []
        self.sidecars: dict[int, str] = {}  # pid -> name: the SSH listener process; signalled with us
        self._next_run: list[float] = []

    def bind(self) -> None:
        """Create the listening sockets (IPv4 and/or IPv6).

        Raises:
            OSError: the address is in use or not available.
        """
        self.listeners.extend(bind_listeners(self.address, self.port))

    def add_periodic(self, interval_s: float, job: Callable[[], None]) -> None:
        """Run ``job`` every ``interval_s`` seconds in the listener (keep it short)."""
        self.periodic.append((interval_s, job))
        self._next_run.append(time.monotonic() + interval_s)

    def stop(self, *_args) -> None:
        """Stop accepting (signal handler)."""
        self._stop = True

    def request_reload(self, *_args) -> None:
        """Re-read the configuration before the next accept (SIGHUP handler); sidecars re-read theirs."""
        self._reload_pending = True
        self._signal_sidecars(signal.SIGHUP)

    def _signal_sidecars(self, sig: int) -> None:
        for pid in self.sidecars:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def reload(self) -> bool:
        """Re-read the configuration now; new sessions get it, running ones keep theirs.

        Returns:
            True if the new configuration is in force. A file that fails to
            load leaves the old one in force and logs why; the listening
            address and port are not changed (that needs a restart).
        """
        self._reload_pending = False
        if self.reload_config is None:
            logger.info("SIGHUP: no configuration file to re-read (embedded default)")
            return False
        try:
            new = self.reload_config()
        except Exception as exc:  # a broken file must never stop the daemon
            logger.error("SIGHUP: configuration not reloaded, the previous one stays in force: {}", exc)
            return False
        old = self.config
        added = sorted(set(new.modules) - set(old.modules))
        removed = sorted(set(old.modules) - set(new.modules))
        changed = sorted(n for n in set(new.modules) & set(old.modules) if new.modules[n] != old.modules[n])
        if (new.port, new.address) != (old.port, old.address):
            logger.warning("SIGHUP: 'port' and 'address' apply after a restart only")
        for warning in new.warnings:
            logger.warning(warning)
        for problem in module_path_problems(new):
            logger.error(problem)
        self.config = new
        logger.info(
            "SIGHUP: configuration reloaded ({} modules; added: {}; removed: {}; changed: {})",
            len(new.modules), ", ".join(added) or "none", ", ".join(removed) or "none", ", ".join(changed) or "none",
        )
        return True

    def serve_forever(self) -> None:
        """Accept until stopped (SIGTERM/SIGINT); SIGHUP re-reads the configuration."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        selector = self._selector = selectors.DefaultSelector()
        for sock in self.listeners:
            selector.register(sock, selectors.EVENT_READ, "listener")
        trim_heap()
        while not self._stop:
            if self._reload_pending and self.reload():
                trim_heap()
            for key, _ in selector.select(timeout=0.5):
                if key.data == "listener":
                    self._accept(key.fileobj)
                else:
                    self._status(key.data)
            self._reap()
            self._run_periodic()
        for sock in self.listeners:
            sock.close()
        self._signal_sidecars(signal.SIGTERM)
        self.children.update(dict.fromkeys(self.sidecars, time.monotonic()))
        self._wait_children(10.0 + 2.0 * bool(self.sidecars))

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.warning("accept failed: {}", exc)
            return
        conn.setblocking(True)
        addr = peer[0]
        self._make_room(addr)
        cap = worker_cap(self.config)
        if len(self.children) >= cap:
            self._refuse(conn, f"max connections ({cap}) reached -- try again later")
            return
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            pid = fork_session(
                conn, addr, self.config, self.listeners, status_fd=write_fd,
                close_fds=[read_fd, *(p.status_fd for p in self.preauth.values())],
                auth_fail_delay_s=auth_fail_delay(self._recent_failures(addr)), slot_fd=self.slot_fd,
            )
        except OSError as exc:
            logger.error("cannot fork a session for {}: {}", addr, exc)
            conn.close()
            os.close(read_fd)
            return
        finally:
            os.close(write_fd)
        now = time.monotonic()
        self.children[pid] = now
        self.preauth[read_fd] = PreAuth(pid, addr, now, read_fd)
        if self._selector is not None:
            self._selector.register(read_fd, selectors.EVENT_READ, read_fd)
        conn.close()

    def _make_room(self, addr: str) -> None:
        """Cut the oldest pre-auth connection when the global or per-address cap is reached.

        Slow or silent clients that never log in then cannot keep a new
        client out: the newest connection always gets its chance to log in.
        The per-address cap cuts only a connection that has waited
        PREAUTH_PATIENCE_S, so a burst of one host's parallel pushes (stock
        rsyncd serves them all) is not cut while its logins are under way on a
        busy machine; the global cap (MAX_PREAUTH processes) is always kept.
        """
        now = time.monotonic()
        same = [p for p in self.preauth.values() if p.addr == addr]
        for pool, cap, patience in ((same, MAX_PREAUTH_PER_ADDRESS, PREAUTH_PATIENCE_S),
                                    (list(self.preauth.values()), MAX_PREAUTH, 0.0)):
            if len(pool) >= cap:
                oldest = min(pool, key=lambda p: p.started)
                if now - oldest.started < patience:
                    continue
                logger.warning("{} connections not yet logged in; cutting the oldest, from {} ({:.0f} s old)",
                               len(pool), oldest.addr, now - oldest.started)
                self._forget_preauth(oldest.status_fd)
                try:
                    os.kill(oldest.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return

    def _status(self, read_fd: int) -> None:
        """A session's status pipe is readable: ``A`` past auth, ``F`` a failed login, EOF ended."""
        entry = self.preauth.get(read_fd)
        try:
            data = os.read(read_fd, 16)
        except OSError:
            data = b""
        if entry is not None and b"F" in data:
            self.failures.setdefault(entry.addr, deque(maxlen=64)).append(time.monotonic())
        if not data or b"A" in data:
            self._forget_preauth(read_fd)

    def _forget_preauth(self, read_fd: int) -> None:
        if self.preauth.pop(read_fd, None) is None:
            return
        if self._selector is not None:
            try:
                self._selector.unregister(read_fd)
            except (KeyError, ValueError):
                pass
        os.close(read_fd)

    def _recent_failures(self, addr: str) -> int:
        times = self.failures.get(addr)
        if not times:
            return 0
        horizon = time.monotonic() - FAILURE_WINDOW_S
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            del self.failures[addr]
        return len(times)

    def _refuse(self, conn: socket.socket, message: str) -> None:
        try:
            conn.sendall(encode_greeting() + encode_error(message))
        except OSError:
            pass
        conn.close()

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.pop(pid, None)
            if pid in self.sidecars:
                (logger.info if self._stop else logger.error)(
                    "{} (pid {}) exited with status {:#x}", self.sidecars.pop(pid), pid, status)
            for entry in [p for p in self.preauth.values() if p.pid == pid]:
                self._forget_preauth(entry.status_fd)
            if os.WIFSIGNALED(status):
                logger.warning("session process {} killed by signal {}", pid, os.WTERMSIG(status))

    def _run_periodic(self) -> None:
        now = time.monotonic()
        for i, (interval, job) in enumerate(self.periodic):
            if now >= self._next_run[i]:
                self._next_run[i] = now + interval
                try:
                    job()
                except Exception:
                    logger.exception("periodic job failed")

    def _wait_children(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
