"""The seed image's environments, planned without Docker: the mode without RUN_MODE, a mounted sersync.conf.

The seed's sersync container is ``docker run ... -v .../sersync.conf:/usr/local/sersync/etc/sersync.conf``
with no RUN_MODE; here the mount point is a file under tmp_path, named by
``SERSYNC_CONF_PATH`` (its default is the seed's path).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from backupd.config.yaml_conf import parse_yaml_conf
from backupd.ops.entrypoint import (
    SERSYNC_LEGACY_CONF,
    EntrypointError,
    HostFacts,
    legacy_sersync_conf,
    plan_from_env,
    resolve_mode,
)
from backupd.transport.tcp import MAX_PREAUTH, MAX_WORKERS, worker_cap

PY = [sys.executable, "-m", "backupd"]
ROOT = HostFacts(euid=0, unprivileged_port_start=1024)


def seed_sersync_conf(box: Path, port: int = 873) -> Path:
    """A sersync.conf in the seed's shape, its paths under ``box``, at the seed's mount point under ``box``."""
    (box / "src").mkdir(exist_ok=True)
    password = box / "rsync.passwd"
    password.write_text("secret\n")
    password.chmod(0o600)
    conf = box / "usr/local/sersync/etc/sersync.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"work_dir={box / 'sersync'}\n"
        f"listen_dir=('files={box / 'src'}')\n"
        f"rsyncd_mod=('backup1={box / 'src'}')\n"
        f"rsyncd_ip=('backup1=127.0.0.1:{port}')\n"
        "rsync_user=rsync\n"
        f"rsync_passwd_file={password}\n"
        "real_time_sync_enable=1\n"
        "real_time_sync_delay=1\n"
        "full_rsync_first_enable=1\n"
    )
    return conf


def test_the_seed_mount_point_is_the_default():
    assert legacy_sersync_conf({}) == SERSYNC_LEGACY_CONF == Path("/usr/local/sersync/etc/sersync.conf")


def test_no_run_mode_with_a_mounted_sersync_conf_runs_the_pusher(tmp_path):
    conf = seed_sersync_conf(tmp_path)
    env = {"SERSYNC_CONF_PATH": str(conf), "BACKUPD_CONFIG_DIR": str(tmp_path / "etc")}
    assert resolve_mode(env) == "sersync"
    plan = plan_from_env(env, ROOT)
    assert (plan.mode, plan.argv, plan.files) == ("sersync", (*PY, "watch", "--config", str(conf)), ())


def test_no_run_mode_and_nothing_mounted_runs_the_server(tmp_path):
    (tmp_path / "data").mkdir()
    env = {"SERSYNC_CONF_PATH": str(tmp_path / "absent.conf"), "BACKUPD_CONFIG_DIR": str(tmp_path / "etc"),
           "RSYNCD_PATH": str(tmp_path / "data"), "RUN_AS": "root", "RSYNCD_PASSWD": "pw"}
    assert resolve_mode(env) == "rsyncd"
    assert plan_from_env(env, ROOT).argv[len(PY)] == "serve"


def test_run_mode_sersync_uses_the_mounted_sersync_conf_without_use_conf_file(tmp_path):
    conf = seed_sersync_conf(tmp_path)
    env = {"RUN_MODE": "sersync", "SERSYNC_CONF_PATH": str(conf), "BACKUPD_CONFIG_DIR": str(tmp_path / "etc")}
    plan = plan_from_env(env, ROOT)
    assert plan.argv == (*PY, "watch", "--config", str(conf)) and plan.config_path == conf


def test_listen_dir_renders_from_the_environment_and_says_the_mount_is_unused(tmp_path):
    conf = seed_sersync_conf(tmp_path)
    env = {"RUN_MODE": "sersync", "SERSYNC_CONF_PATH": str(conf), "BACKUPD_CONFIG_DIR": str(tmp_path / "etc"),
           "LISTEN_DIR": str(tmp_path / "src"), "RSYNCD_IP": "10.0.0.5", "RSYNCD_PASSWD": "pw",
           "BACKUPD_STATE_DIR": str(tmp_path / "state")}
    plan = plan_from_env(env, ROOT)
    assert plan.config_path == tmp_path / "etc" / "pusher.yaml"
    assert any(f"{conf} is not used: LISTEN_DIR is set" in w for w in plan.warnings)


def test_use_conf_file_0_ignores_the_mount(tmp_path):
    conf = seed_sersync_conf(tmp_path)
    env = {"RUN_MODE": "sersync", "SERSYNC_CONF_PATH": str(conf), "BACKUPD_CONFIG_DIR": str(tmp_path / "etc"),
           "USE_CONF_FILE": "0"}
    with pytest.raises(EntrypointError, match="LISTEN_DIR: required in sersync mode"):
        plan_from_env(env, ROOT)


def test_a_broken_mounted_sersync_conf_stops_with_its_line(tmp_path):
    conf = seed_sersync_conf(tmp_path)
    conf.write_text(conf.read_text() + "listen_dir=$(rm -rf /)\n")
    with pytest.raises(EntrypointError, match=r"sersync.conf:\d+"):
        plan_from_env({"SERSYNC_CONF_PATH": str(conf), "BACKUPD_CONFIG_DIR": str(tmp_path / "etc")}, ROOT)


def test_seed_max_connections_300_is_not_cut_at_the_session_cap(tmp_path):
    (tmp_path / "data").mkdir()
    env = {"BACKUPD_CONFIG_DIR": str(tmp_path / "etc"), "RSYNCD_PATH": str(tmp_path / "data"), "RUN_AS": "root",
           "RSYNCD_USER": "rsync", "RSYNCD_PASSWD": "secret", "RSYNCD_MAX_CONN": "300"}
    plan = plan_from_env(env, ROOT)
    text = next(f.text for f in plan.files if f.path.name == "backupd.yaml")
    cfg = parse_yaml_conf(text, source=plan.config_path)
    assert [m.max_connections for m in cfg.modules.values()] == [300]
    assert worker_cap(cfg) == 300 + MAX_PREAUTH > MAX_WORKERS
    more = parse_yaml_conf(
        next(f.text for f in plan_from_env({**env, "RSYNCD_MAX_CONN": "1000"}, ROOT).files
             if f.path.name == "backupd.yaml"), source=plan.config_path)
    assert worker_cap(more) == 1000 + MAX_PREAUTH
