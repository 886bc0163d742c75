"""The container HEALTHCHECK (``python -m backupd.ops.entrypoint healthcheck``).

rsyncd mode: the daemon greets on its port. sersync mode: the pusher's
heartbeat (pusher/heartbeat.py) is fresh and its pid runs. The mode and the
config are resolved from the environment exactly as the entrypoint does
(backupd/ops/entrypoint/), which imports this module.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from backupd.errors import ConfigError


def healthcheck(env: Mapping[str, str], timeout_s: float = 5.0) -> int:
    """0 if the server greets on its port (rsyncd) or the pusher's heartbeat is fresh (sersync); else 1.

    The mode is resolved as the entrypoint does (:func:`resolve_mode`: no
    ``RUN_MODE`` and a mounted sersync.conf is sersync). rsyncd:
    RSYNCD_ADDRESS (a wildcard means loopback) and RSYNCD_PORT, so with
    USE_CONF_FILE set RSYNCD_PORT when the config's port is not 873. The
    check asks for the module listing, which ends the session cleanly (it
    shows in the log and the metrics as a session of module ``-``).
    sersync: the config the entrypoint runs (mounted or rendered) names the
    state dir, where ``backupd watch`` rewrites its heartbeat every second
    (pusher/heartbeat.py): healthy while it is fresh and its pid runs.
    """
    from backupd.ops.entrypoint import resolve_mode

    if resolve_mode(env) == "rsyncd":
        return _rsyncd_health(env, timeout_s)
    return _pusher_health(env)


def _rsyncd_health(env: Mapping[str, str], timeout_s: float) -> int:
    port = int(env.get("RSYNCD_PORT", "").strip() or 873)
    host = env.get("RSYNCD_ADDRESS", "").strip()
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            greeting = sock.recv(64)
            sock.sendall(b"@RSYNCD: 30.0\n\n")  # a module listing: the session ends cleanly
            while sock.recv(4096):
                pass
    except OSError:
        return 1
    return 0 if greeting.startswith(b"@RSYNCD: ") else 1


def _pusher_health(env: Mapping[str, str]) -> int:
    from backupd.ops.entrypoint import EntrypointError, HostFacts, _load_pusher, plan_from_env
    from backupd.pusher.heartbeat import is_alive, read_heartbeat

    try:
        plan = plan_from_env(env, HostFacts(euid=0))  # the same plan as at start; nothing is run
        rendered = next((f.text for f in plan.files if f.path == plan.config_path), None)
        state_dir = _load_pusher(plan.config_path, rendered).state_dir
    except (EntrypointError, ConfigError, OSError):
        return 1
    return 0 if is_alive(read_heartbeat(state_dir)) else 1
