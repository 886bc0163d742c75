"""The daemon protocol on stdin/stdout: ``backupd serve --stdio``.

For tests, RSYNC_CONNECT_PROG, and ``rsync --server --daemon .`` over a remote shell.
"""

from __future__ import annotations

import uuid

from backupd.config.model import DaemonConfig
from backupd.errors import ExitCode
from backupd.roles.session import SessionContext, run_session
from backupd.transport.stream import FdStream


def serve_stdio(config: DaemonConfig, peer_addr: str = "stdio", read_fd: int = 0, write_fd: int = 1) -> ExitCode:
    """Run one daemon session on two file descriptors; return its exit code."""
    ctx = SessionContext(config=config, peer_addr=peer_addr, session_id=uuid.uuid4().hex[:8])
    return run_session(FdStream(read_fd, write_fd), ctx)
