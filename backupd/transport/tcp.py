"""The daemon's TCP listener: accept, check the global limit, fork a session.

The listener never runs protocol code itself: each accepted connection is
handed to a worker process (worker.py), so it keeps accepting while
sessions run, and a failing session cannot take it down.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable

from loguru import logger

from backupd.config.load import module_path_problems
from backupd.config.model import DaemonConfig
from backupd.protocol.greeting import encode_error, encode_greeting
from backupd.transport.worker import fork_session

MAX_WORKERS = 256  # a hard cap on session processes; per-module limits are `max connections`


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
        self.listeners: list[socket.socket] = []
        self._stop = False
        self.periodic: list[tuple[float, Callable[[], None]]] = []
        self._next_run: list[float] = []

    def bind(self) -> None:
        """Create the listening sockets (IPv4 and/or IPv6).

        Raises:
            OSError: the address is in use or not available.
        """
        hosts = [self.address] if self.address else ["0.0.0.0", "::"]
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, self.port))
            except OSError as exc:
                sock.close()
                if self.address is None and exc.errno == errno.EADDRNOTAVAIL:
                    continue
                raise
            sock.listen(128)
            sock.setblocking(False)
            self.listeners.append(sock)

    def add_periodic(self, interval_s: float, job: Callable[[], None]) -> None:
        """Run ``job`` every ``interval_s`` seconds in the listener (keep it short)."""
        self.periodic.append((interval_s, job))
        self._next_run.append(time.monotonic() + interval_s)

    def stop(self, *_args) -> None:
        """Stop accepting (signal handler)."""
        self._stop = True

    def request_reload(self, *_args) -> None:
        """Re-read the configuration before the next accept (SIGHUP handler)."""
        self._reload_pending = True

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
        selector = selectors.DefaultSelector()
        for sock in self.listeners:
            selector.register(sock, selectors.EVENT_READ)
        while not self._stop:
            if self._reload_pending:
                self.reload()
            for key, _ in selector.select(timeout=0.5):
                self._accept(key.fileobj)
            self._reap()
            self._run_periodic()
        for sock in self.listeners:
            sock.close()
        self._wait_children(10.0)

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.warning("accept failed: {}", exc)
            return
        conn.setblocking(True)
        if len(self.children) >= MAX_WORKERS:
            self._refuse(conn, f"max connections ({MAX_WORKERS}) reached -- try again later")
            return
        try:
            pid = fork_session(conn, peer[0], self.config, self.listeners)
        except OSError as exc:
            logger.error("cannot fork a session for {}: {}", peer[0], exc)
            conn.close()
            return
        self.children[pid] = time.monotonic()
        conn.close()

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
