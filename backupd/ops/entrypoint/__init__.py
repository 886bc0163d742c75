"""The container entrypoint: environment -> rendered config + secrets -> the argv it execs.

All decisions are in ``plan_from_env`` (no writes, no exec), so they are
tested without Docker; ``apply_plan`` writes the files, ``main`` execs.
``container/entrypoint.sh`` only runs ``python -m backupd.ops.entrypoint``.

``RUN_MODE=rsyncd`` renders ``$BACKUPD_CONFIG_DIR/backupd.yaml`` (one
writable module) and ``rsyncd.secrets``, then execs ``backupd serve``.
``RUN_MODE=sersync`` renders ``pusher.yaml`` and ``rsync.passwd``, then
execs ``backupd watch``. ``USE_CONF_FILE=1`` (or a path) uses a mounted
config as is, after loading it once to fail early.

The seed image's forms work unchanged: without ``RUN_MODE`` the mode is
sersync when a sersync.conf is mounted at ``SERSYNC_CONF_PATH``
(``/usr/local/sersync/etc/sersync.conf``, the seed's path), else rsyncd;
in sersync mode that mounted file is used as is without ``USE_CONF_FILE``
(unless ``LISTEN_DIR`` asks for a rendered config). The HEALTHCHECK
(``healthcheck``) resolves the mode the same way. The variables, their
defaults and meaning are listed in ``RSYNCD_VARS`` / ``SERSYNC_VARS`` (and
in container/Dockerfile). Bad values stop with every problem listed and
exit status 78 (EX_CONFIG).

No password is baked in: in rsyncd mode without ``RSYNCD_PASSWD`` one is
generated on the first start, printed once and kept (mode 600) in the
secrets file, which later starts reuse.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Mapping

from backupd.errors import ConfigError
from backupd.ops.entrypoint.apply import apply_plan, plan_as_json
from backupd.ops.entrypoint.env import (
    COMMON_VARS,
    DEFAULT_CONFIG_DIR,
    DEFAULT_METRICS,
    DEFAULT_RUN_AS,
    DEFAULT_STATE_DIR,
    EX_CONFIG,
    OFF_WORDS,
    ON_WORDS,
    RENDERED_HEADER,
    RSYNCD_VARS,
    SERSYNC_LEGACY_CONF,
    SERSYNC_VARS,
    EntrypointError,
    HostFacts,
    Plan,
    RenderedFile,
    _Env,
    legacy_sersync_conf,
)
from backupd.ops.entrypoint.rsyncd import _plan_rsyncd
from backupd.ops.entrypoint.sersync import _load_pusher, _plan_sersync
from backupd.ops.healthcheck import healthcheck

__all__ = [
    "COMMON_VARS",
    "DEFAULT_CONFIG_DIR",
    "DEFAULT_METRICS",
    "DEFAULT_RUN_AS",
    "DEFAULT_STATE_DIR",
    "EX_CONFIG",
    "EntrypointError",
    "HostFacts",
    "OFF_WORDS",
    "ON_WORDS",
    "Plan",
    "RENDERED_HEADER",
    "RSYNCD_VARS",
    "RenderedFile",
    "SERSYNC_LEGACY_CONF",
    "SERSYNC_VARS",
    "_Env",
    "_backupd",
    "_check_loads",
    "_drop_prefix",
    "_load_pusher",
    "_use_conf_file",
    "apply_plan",
    "healthcheck",
    "legacy_sersync_conf",
    "main",
    "plan_as_json",
    "plan_from_env",
    "resolve_mode",
]


def plan_from_env(env: Mapping[str, str], host: HostFacts | None = None) -> Plan:
    """Decide everything from ``env``: the files to write and the argv to exec.

    Reads (never writes) the filesystem: directories named by the
    environment, a kept secrets file, a mounted config.

    Raises:
        EntrypointError: one line per bad or missing value.
    """
    host = host or HostFacts.current()
    e = _Env(env)
    mode = resolve_mode(env)
    config_dir = e.abs_dir("BACKUPD_CONFIG_DIR", e.text("BACKUPD_CONFIG_DIR", str(DEFAULT_CONFIG_DIR)), False)
    if mode not in DEFAULT_RUN_AS:
        raise EntrypointError(f"RUN_MODE={mode!r}: expected rsyncd or sersync")
    metrics = _metrics_address(e)
    run_as = _run_as(e, mode, host)
    if mode == "rsyncd":
        plan = _plan_rsyncd(e, config_dir, metrics, run_as, host)
    else:
        plan = _plan_sersync(e, config_dir, metrics, run_as)
    if e.errors:
        raise EntrypointError("\n".join(e.errors))
    return plan


def resolve_mode(env: Mapping[str, str]) -> str:
    """``RUN_MODE`` (lower case); unset: ``sersync`` if a sersync.conf is mounted, else ``rsyncd``.

    The seed image defaults to sersync when its sersync.conf is mounted,
    so its ``docker run -v .../sersync.conf:/usr/local/sersync/etc/sersync.conf``
    form (no ``RUN_MODE``) starts the pusher here too.
    """
    given = env.get("RUN_MODE", "").strip().lower()
    if given:
        return given
    return "sersync" if legacy_sersync_conf(env).is_file() else "rsyncd"


def _metrics_address(e: _Env) -> str | None:
    raw = e.env.get("METRICS_ADDRESS")
    if raw is not None and raw.strip().lower() in OFF_WORDS:
        return None
    from backupd.ops.metrics import parse_address

    text = e.text("METRICS_ADDRESS", DEFAULT_METRICS)
    try:
        parse_address(text)
    except ConfigError as exc:
        e.errors.append(f"METRICS_ADDRESS: {exc}")
    return text


def _run_as(e: _Env, mode: str, host: HostFacts) -> tuple[int, int] | None:
    """``(uid, gid)`` to drop to, or None to stay as we are."""
    name = e.text("RUN_AS", DEFAULT_RUN_AS[mode])
    if host.euid != 0 and not e.given("RUN_AS"):
        return None  # started as a user already (docker run --user): stay
    ids = _resolve_user(name)
    if ids is None:
        e.errors.append(f"RUN_AS={name!r}: no such user (use a name, uid or uid:gid; root to stay root)")
        return None
    if host.euid != 0:
        if ids[0] != host.euid:
            e.errors.append(f"RUN_AS={name!r}: cannot switch users, the container runs as uid {host.euid}")
        return None
    return None if ids[0] == 0 else ids


def _resolve_user(name: str) -> tuple[int, int] | None:
    uid_text, _, gid_text = name.partition(":")
    if uid_text.isdigit() and (not gid_text or gid_text.isdigit()):
        return int(uid_text), int(gid_text or uid_text)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """``python -m backupd.ops.entrypoint [run|plan|healthcheck]``; ``run`` execs."""
    args = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    command = args[0] if args else "run"
    if command == "healthcheck":
        return healthcheck(env)
    if command not in ("run", "plan"):
        print(f"usage: entrypoint [run|plan|healthcheck] (got {command!r})", file=sys.stderr)
        return 2
    try:
        plan = plan_from_env(env)
        if command == "plan":
            print(plan_as_json(plan))
            return 0
        apply_plan(plan)
    except EntrypointError as exc:
        for line in str(exc).splitlines():
            print(f"backupd-entrypoint: error: {line}", file=sys.stderr)
        return EX_CONFIG
    sys.stdout.flush()
    os.execvp(plan.argv[0], list(plan.argv))
    return 0  # not reached


