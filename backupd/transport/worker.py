"""A worker process per session, as rsyncd forks one per connection.

The child runs the synchronous session and exits with its ExitCode; a crash
or a protocol error there never reaches the listener.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid

from loguru import logger

from backupd.config.model import DaemonConfig
from backupd.errors import ExitCode
from backupd.roles.session import SessionContext, run_session


def preload_session_modules() -> None:
    """Import the role modules once in the listener, so each forked session starts warm."""
    import importlib

    for name in ("backupd.roles.push", "backupd.roles.generator", "backupd.roles.receiver", "backupd.roles.sender"):
        try:
            importlib.import_module(name)
        except ImportError as exc:  # a role not built yet must not stop the daemon
            logger.debug("preload of {} skipped: {}", name, exc)


def fork_session(conn: socket.socket, peer_addr: str, config: DaemonConfig, listeners: list[socket.socket]) -> int:
    """Fork a child that runs one session on ``conn``; return its pid (parent side)."""
    session_id = uuid.uuid4().hex[:8]
    pid = os.fork()
    if pid:
        return pid
    code = ExitCode.CRASHED
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for listener in listeners:
            listener.close()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = SessionContext(config=config, peer_addr=peer_addr, session_id=session_id)
        logger.bind(session=session_id).info("connection from {}", peer_addr)
        code = run_session(conn, ctx)
        logger.bind(session=session_id).info("session ended with code {}", int(code))
    except BaseException:  # the child must never return into the listener's loop
        logger.exception("session {} crashed", session_id)
    finally:
        logger.complete()
        os._exit(int(code))
