"""The listener's pre-auth accounting (tcp.DaemonServer): failed-login throttling per address."""

from __future__ import annotations

import os

from backupd.config.model import DaemonConfig
from backupd.transport.tcp import MAX_AUTH_FAIL_DELAY_S, DaemonServer, PreAuth, auth_fail_delay


def test_failed_logins_of_one_address_slow_its_next_attempts():
    server = DaemonServer(DaemonConfig(), address="127.0.0.1", port=0)
    delays = []
    for _ in range(5):
        read_fd, write_fd = os.pipe()
        server.preauth[read_fd] = PreAuth(pid=-1, addr="192.0.2.7", started=0.0, status_fd=read_fd)
        os.write(write_fd, b"F")
        os.close(write_fd)
        server._status(read_fd)  # F: a failed login
        assert read_fd in server.preauth
        server._status(read_fd)  # EOF: the session ended
        assert read_fd not in server.preauth
        delays.append(auth_fail_delay(server._recent_failures("192.0.2.7")))
    assert delays == sorted(delays) and delays[0] < delays[-1] == MAX_AUTH_FAIL_DELAY_S
    assert server._recent_failures("198.51.100.1") == 0
    assert auth_fail_delay(0) == 1.0
    assert server.preauth == {}


def test_the_session_cap_follows_the_configured_limits():
    from pathlib import Path

    from backupd.config.model import ModuleConfig
    from backupd.transport.tcp import MAX_PREAUTH, MAX_WORKERS, worker_cap

    assert worker_cap(DaemonConfig()) == MAX_WORKERS
    seed = DaemonConfig(modules={"data": ModuleConfig("data", Path("/data"), max_connections=300)})
    assert worker_cap(seed) == 300 + MAX_PREAUTH
