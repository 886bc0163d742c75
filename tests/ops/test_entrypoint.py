import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from backupd.config.model import AuthUser
from backupd.config.pusher_yaml import load_pusher_yaml
from backupd.config.secrets import read_secrets
from backupd.config.yaml_conf import load_yaml_conf, parse_yaml_conf
from backupd.ops.entrypoint import (
    EX_CONFIG,
    EntrypointError,
    HostFacts,
    apply_plan,
    healthcheck,
    plan_from_env,
)

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "container" / "entrypoint.sh"
PY = [sys.executable, "-m", "backupd"]
ROOT = HostFacts(euid=0, unprivileged_port_start=1024)


@pytest.fixture
def box(tmp_path):
    """A config dir, a data dir and two source dirs, all under tmp_path."""
    for name in ("data", "src1", "src2"):
        (tmp_path / name).mkdir()
    return tmp_path


def rsyncd_env(box, **more):
    return {
        "RUN_MODE": "rsyncd",
        "RUN_AS": "root",
        "BACKUPD_CONFIG_DIR": str(box / "etc"),
        "RSYNCD_PATH": str(box / "data"),
        **more,
    }


def rendered(plan, name):
    return next(f for f in plan.files if f.path.name == name)


# ---------------------------------------------------------------- rsyncd mode


def test_rsyncd_defaults_render_one_module_and_generate_a_password(box):
    plan = plan_from_env(rsyncd_env(box), ROOT)

    etc = box / "etc"
    assert plan.argv == (
        *PY,
        "serve",
        "--config",
        str(etc / "backupd.yaml"),
        "--metrics-address",
        "0.0.0.0:9873",
    )
    cfg = parse_yaml_conf(rendered(plan, "backupd.yaml").text, source=etc / "backupd.yaml")
    assert cfg.warnings == ()
    assert (cfg.port, cfg.address, cfg.reverse_lookup) == (873, "0.0.0.0", False)
    (module,) = cfg.modules.values()
    assert (module.name, module.path, module.read_only) == ("data", box / "data", False)
    assert module.auth_users == (AuthUser("rsync"),)
    assert (module.secrets_file, module.hosts_allow) == (etc / "rsyncd.secrets", ("0.0.0.0/0",))
    assert (module.max_connections, module.history, module.history_keep_days) == (300, True, 7)
    assert module.transfer_logging is False
    secret = rendered(plan, "rsyncd.secrets")
    user, _, password = secret.text.rstrip("\n").partition(":")
    assert (user, secret.mode, secret.secret) == ("rsync", 0o600, True)
    assert len(password) >= 20
    (notice,) = plan.notices
    assert password in notice and str(etc / "rsyncd.secrets") in notice


def test_rsyncd_every_variable(box):
    env = rsyncd_env(
        box,
        RSYNCD_USER="backup",
        RSYNCD_PASSWD="s3cret:with colon",
        RSYNCD_MOD_NAME="nightly",
        RSYNCD_PORT="8873",
        RSYNCD_ADDRESS="127.0.0.1",
        RSYNCD_MAX_CONN="0",
        RSYNCD_HOSTS_ALLOW="10.0.0.0/8, 192.168.1.* ::1 10.0.0.0/255.255.0.0 *.example.com",
        KEEP_HISTORY_BACKUP_DAYS="0",
        RSYNCD_TRANSFER_LOGGING="yes",
        RSYNCD_LOG_FORMAT="%t %o %f %'l",
        RSYNCD_LOG_FILE="/dev/stdout",
        METRICS_ADDRESS="",
        LOG_JSON="true",
    )
    plan = plan_from_env(env, ROOT)

    assert plan.argv == (*PY, "serve", "--config", str(box / "etc" / "backupd.yaml"), "--log-json")
    cfg = parse_yaml_conf(rendered(plan, "backupd.yaml").text, source=box / "etc" / "backupd.yaml")
    m = cfg.modules["nightly"]
    assert (cfg.port, cfg.address, cfg.log_file) == (8873, "127.0.0.1", Path("/dev/stdout"))
    assert m.hosts_allow == (
        "10.0.0.0/8",
        "192.168.1.*",
        "::1",
        "10.0.0.0/255.255.0.0",
        "*.example.com",
    )
    assert (m.max_connections, m.history_keep_days, m.transfer_logging, m.log_format) == (
        0,
        0,
        True,
        "%t %o %f %'l",
    )
    assert rendered(plan, "rsyncd.secrets").text == "backup:s3cret:with colon\n"
    assert plan.notices == ()


def test_generated_password_is_kept_and_printed_only_once(box, capsys):
    env = rsyncd_env(box)
    first = plan_from_env(env, ROOT)
    apply_plan(first)
    out = capsys.readouterr().out
    secrets_file = box / "etc" / "rsyncd.secrets"
    password = read_secrets(secrets_file, strict_modes=True)["rsync"]
    assert f"password of user 'rsync': {password}" in out
    for name in ("rsyncd.secrets", "backupd.yaml"):
        assert stat.S_IMODE((box / "etc" / name).stat().st_mode) == 0o600
    assert load_yaml_conf(box / "etc" / "backupd.yaml").modules["data"].path == box / "data"

    second = plan_from_env(env, ROOT)
    apply_plan(second)
    assert password not in capsys.readouterr().out
    assert read_secrets(secrets_file, strict_modes=True)["rsync"] == password
    # a new user gets a new password
    third = plan_from_env({**env, "RSYNCD_USER": "other"}, ROOT)
    assert third.notices and password not in rendered(third, "rsyncd.secrets").text


def test_run_as_drops_privileges_keeping_only_the_low_port(box):
    (box / "data").chmod(0o777)
    plan = plan_from_env(rsyncd_env(box, RUN_AS="12345:12346"), ROOT)
    assert plan.argv[:7] == (
        "setpriv",
        "--reuid=12345",
        "--regid=12346",
        "--clear-groups",
        "--inh-caps=+net_bind_service",
        "--ambient-caps=+net_bind_service",
        "--",
    )
    assert plan.argv[7:10] == tuple(PY) and plan.owner == (12345, 12346)
    high = plan_from_env(rsyncd_env(box, RUN_AS="12345", RSYNCD_PORT="8873"), ROOT)
    assert high.argv[:5] == ("setpriv", "--reuid=12345", "--regid=12345", "--clear-groups", "--")
    opened = plan_from_env(
        rsyncd_env(box, RUN_AS="12345"), HostFacts(euid=0, unprivileged_port_start=0)
    )
    assert "--ambient-caps=+net_bind_service" not in opened.argv


def test_run_as_needs_a_writable_module_path(box):
    (box / "data").chmod(0o755)
    with pytest.raises(
        EntrypointError, match=r"RSYNCD_PATH=.* is not writable by uid 12345: chown 12345:12345"
    ):
        plan_from_env(rsyncd_env(box, RUN_AS="12345"), ROOT)


def test_started_as_a_user_stays_that_user(box):
    user = HostFacts(euid=1000)
    env = rsyncd_env(box)
    del env["RUN_AS"]
    assert plan_from_env(env, user).argv[0] == sys.executable
    with pytest.raises(
        EntrypointError, match="RUN_AS='root': cannot switch users, the container runs as uid 1000"
    ):
        plan_from_env({**env, "RUN_AS": "root"}, user)


def test_use_conf_file_uses_the_mounted_config_as_is(box):
    etc = box / "etc"
    etc.mkdir()
    shutil.copy(REPO / "conf" / "rsyncd.conf", etc / "rsyncd.conf")
    plan = plan_from_env(
        rsyncd_env(box, USE_CONF_FILE="1", RSYNCD_PORT="1873", METRICS_ADDRESS="off"), ROOT
    )
    assert plan.argv == (*PY, "serve", "--config", str(etc / "rsyncd.conf"), "--port", "1873")
    assert plan.files == () and plan.notices == ()
    by_path = plan_from_env(
        rsyncd_env(box, USE_CONF_FILE=str(REPO / "conf" / "backupd.yaml")), ROOT
    )
    assert by_path.argv[4:6] == ("--config", str(REPO / "conf" / "backupd.yaml"))


def test_use_conf_file_with_a_broken_config_names_file_and_line(box):
    etc = box / "etc"
    etc.mkdir()
    (etc / "rsyncd.conf").write_text("[m]\n  path = /x\n  timeout = soon\n")
    with pytest.raises(EntrypointError, match=r"rsyncd.conf:3"):
        plan_from_env(rsyncd_env(box, USE_CONF_FILE="yes"), ROOT)


def test_use_conf_file_under_run_as_checks_what_the_user_can_reach(box):
    etc, mod, ro = box / "etc", box / "mod", box / "ro"
    for d in (etc, mod, ro):
        d.mkdir()
    secrets = box / "rsyncd.secrets"
    secrets.write_text("u:p\n")
    secrets.chmod(0o600)  # root's, as a mounted secrets file usually is
    mod.chmod(0o755)
    ro.chmod(0o755)
    conf = etc / "rsyncd.conf"
    conf.write_text(
        f"[mod]\n  path = {mod}\n  read only = no\n  auth users = u\n  secrets file = {secrets}\n"
        f"[ro]\n  path = {ro}\n"
    )
    conf.chmod(0o644)
    with pytest.raises(EntrypointError) as caught:
        plan_from_env(rsyncd_env(box, USE_CONF_FILE="1", RUN_AS="12345"), ROOT)
    assert str(caught.value).splitlines() == [
        f"secrets file of module mod {secrets} is not readable by uid 12345: "
        "chown 12345:12345 it, or set RUN_AS=root",
        f"path of module mod {mod} is not writable by uid 12345: "
        "chown 12345:12345 it, or set RUN_AS=root",
    ]
    os.chown(secrets, 12345, 12345)
    mod.chmod(0o777)
    plan = plan_from_env(
        rsyncd_env(box, USE_CONF_FILE="1", RUN_AS="12345", RSYNCD_PORT="8873"), ROOT
    )
    assert plan.argv[:5] == ("setpriv", "--reuid=12345", "--regid=12345", "--clear-groups", "--")


# ---------------------------------------------------------------- sersync mode


def sersync_env(box, **more):
    return {
        "RUN_MODE": "sersync",
        "BACKUPD_CONFIG_DIR": str(box / "etc"),
        "BACKUPD_STATE_DIR": str(box / "state"),
        "LISTEN_DIR": f"files={box / 'src1'} {box / 'src2'}",
        "RSYNCD_IP": "10.0.0.5, 10.0.0.6:8730",
        "RSYNCD_MOD_NAME": "backup1",
        "RSYNCD_PASSWD": "pw",
        **more,
    }


def test_sersync_renders_the_pusher_config(box):
    plan = plan_from_env(
        sersync_env(
            box,
            REAL_TIME_SYNC_DELAY="2",
            FULL_RSYNC_ENABLE="1",
            FULL_RSYNC_INTERVAL="12h",
            RSYNC_BWLIMIT="50M",
            EXTRA_RSYNC_ARGS="--partial '--exclude=a b'",
            PUSH_EXCLUDE="*.tmp re:^cache/",
            METRICS_ADDRESS="127.0.0.1:9874",
            LOG_JSON="1",
        ),
        ROOT,
    )

    etc = box / "etc"
    assert plan.argv == (*PY, "watch", "--config", str(etc / "pusher.yaml"), "--log-json")
    assert plan.dirs == (etc, box / "state") and plan.owner is None
    assert rendered(plan, "rsync.passwd").text == "pw\n"
    (etc).mkdir()
    (etc / "pusher.yaml").write_text(rendered(plan, "pusher.yaml").text)
    cfg = load_pusher_yaml(etc / "pusher.yaml")
    assert cfg.warnings == ()
    assert (cfg.state_dir, cfg.delay_s, cfg.full_sync_interval_s, cfg.full_sync_timeout_s) == (
        box / "state",
        2,
        43200,
        43200,
    )
    assert (cfg.full_sync_at_start, cfg.rsync_timeout_s, cfg.bwlimit) == (True, 180, "50M")
    assert cfg.extra_args == ("--partial", "--exclude=a b")
    assert (cfg.metrics_address, cfg.metrics_port) == ("127.0.0.1", 9874)
    first, second = cfg.sources
    assert (first.path, first.remote_subdir, second.path, second.remote_subdir) == (
        box / "src1",
        "files",
        box / "src2",
        "",
    )
    assert first.exclude == ("*.tmp", "re:^cache/")
    assert [t.url for t in first.targets] == [
        "rsync://rsync@10.0.0.5/backup1",
        "rsync://rsync@10.0.0.6:8730/backup1",
    ]
    assert {t.password_file for t in first.targets} == {etc / "rsync.passwd"}


def test_sersync_with_target_urls_and_a_mounted_password_file(box):
    (box / "pw").write_text("x\n")
    env = sersync_env(
        box,
        PUSH_TARGETS="rsync://u@b1:8730/mod/sub rsync://u@b2/mod",
        RSYNC_PASSWD_FILE=str(box / "pw"),
        FULL_RSYNC_FIRST_ENABLE="0",
        REAL_TIME_SYNC_ENABLE="no",
    )
    del env["RSYNCD_PASSWD"], env["RSYNCD_IP"]
    plan = plan_from_env(env, ROOT)
    assert [f.path.name for f in plan.files] == ["pusher.yaml"]
    (box / "etc").mkdir()
    (box / "etc" / "pusher.yaml").write_text(rendered(plan, "pusher.yaml").text)
    cfg = load_pusher_yaml(box / "etc" / "pusher.yaml")
    assert (cfg.full_sync_at_start, cfg.realtime, cfg.full_sync_interval_s) == (False, False, None)
    assert [
        (t.host, t.port, t.module, t.path, t.password_file) for t in cfg.sources[0].targets
    ] == [("b1", 8730, "mod", "sub", box / "pw"), ("b2", 873, "mod", "", box / "pw")]


def test_sersync_use_conf_file_takes_a_sersync_conf(box):
    etc = box / "etc"
    etc.mkdir()
    shutil.copy(REPO / "conf" / "sersync.conf", etc / "sersync.conf")
    plan = plan_from_env(
        {
            "RUN_MODE": "sersync",
            "BACKUPD_CONFIG_DIR": str(etc),
            "USE_CONF_FILE": "1",
            "KEEP_HISTORY_BACKUP_DAYS": "7",
        },
        ROOT,
    )
    assert plan.argv == (*PY, "watch", "--config", str(etc / "sersync.conf"))
    assert plan.files == ()
    assert any("KEEP_HISTORY_BACKUP_DAYS is ignored in sersync mode" in w for w in plan.warnings)


# ---------------------------------------------------------------- bad environments


@pytest.mark.parametrize(
    ("mode", "more", "message"),
    [
        ("rsyncd", {"RUN_MODE": "ftp"}, "RUN_MODE='ftp': expected rsyncd or sersync"),
        ("rsyncd", {"RSYNCD_PORT": "abc"}, "RSYNCD_PORT='abc': expected a whole number 1..65535"),
        (
            "rsyncd",
            {"RSYNCD_PORT": "70000"},
            "RSYNCD_PORT='70000': expected a whole number 1..65535",
        ),
        (
            "rsyncd",
            {"RSYNCD_MAX_CONN": "ten"},
            "RSYNCD_MAX_CONN='ten': expected a whole number >= 0",
        ),
        (
            "rsyncd",
            {"KEEP_HISTORY_BACKUP_DAYS": "-1"},
            "KEEP_HISTORY_BACKUP_DAYS='-1': expected a whole number >= 0",
        ),
        ("rsyncd", {"RSYNCD_PATH": "data"}, "RSYNCD_PATH='data': expected an absolute path"),
        (
            "rsyncd",
            {"RSYNCD_PATH": "/nonexistent/backupd-x"},
            "does not exist (mount a volume there)",
        ),
        ("rsyncd", {"RSYNCD_MOD_NAME": "my mod"}, "RSYNCD_MOD_NAME='my mod': must not contain ' '"),
        ("rsyncd", {"RSYNCD_USER": "a:b"}, "RSYNCD_USER='a:b': must not contain ':'"),
        ("rsyncd", {"RSYNCD_PASSWD": "two\nlines"}, "RSYNCD_PASSWD: must be one line"),
        (
            "rsyncd",
            {"RSYNCD_HOSTS_ALLOW": "10.0.0.0/8 10.0.0.0/33"},
            "RSYNCD_HOSTS_ALLOW: '10.0.0.0/33' is not",
        ),
        ("rsyncd", {"RSYNCD_HOSTS_ALLOW": "10.1.2.300"}, "RSYNCD_HOSTS_ALLOW: '10.1.2.300' is not"),
        ("rsyncd", {"RSYNCD_HOSTS_ALLOW": "a;b"}, "RSYNCD_HOSTS_ALLOW: 'a;b' is not"),
        (
            "rsyncd",
            {"METRICS_ADDRESS": "localhost"},
            "METRICS_ADDRESS: metrics address 'localhost'",
        ),
        ("rsyncd", {"LOG_JSON": "maybe"}, "LOG_JSON='maybe': expected 1/0"),
        ("rsyncd", {"RUN_AS": "no-such-user-here"}, "RUN_AS='no-such-user-here': no such user"),
        ("rsyncd", {"USE_CONF_FILE": "1"}, "USE_CONF_FILE=1: no config found at"),
        (
            "rsyncd",
            {"USE_CONF_FILE": "/nonexistent/rsyncd.conf"},
            "no config found at /nonexistent/rsyncd.conf",
        ),
        ("rsyncd", {"USE_CONF_FILE": "perhaps"}, "USE_CONF_FILE='perhaps': expected 0, 1"),
        (
            "rsyncd",
            {"BACKUPD_CONFIG_DIR": "etc"},
            "BACKUPD_CONFIG_DIR='etc': expected an absolute path",
        ),
        ("sersync", {"LISTEN_DIR": ""}, "LISTEN_DIR: required in sersync mode"),
        (
            "sersync",
            {"LISTEN_DIR": "/nonexistent/src"},
            "LISTEN_DIR='/nonexistent/src': does not exist",
        ),
        ("sersync", {"RSYNCD_IP": ""}, "RSYNCD_IP or PUSH_TARGETS: at least one target"),
        (
            "sersync",
            {"RSYNCD_IP": "host:port"},
            "RSYNCD_IP: 'host:port': expected host or host:port",
        ),
        (
            "sersync",
            {"RSYNCD_PASSWD": ""},
            "RSYNCD_PASSWD or RSYNC_PASSWD_FILE: the targets' password is required",
        ),
        (
            "sersync",
            {"RSYNCD_PASSWD": "", "RSYNC_PASSWD_FILE": "/nonexistent/pw"},
            "RSYNC_PASSWD_FILE='/nonexistent/pw': no such file",
        ),
        (
            "sersync",
            {"REAL_TIME_SYNC_DELAY": "soon"},
            "REAL_TIME_SYNC_DELAY='soon': expected a number of seconds",
        ),
        (
            "sersync",
            {"FULL_RSYNC_ENABLE": "1", "FULL_RSYNC_INTERVAL": "weekly"},
            "FULL_RSYNC_INTERVAL='weekly': expected a number of days",
        ),
        ("sersync", {"PUSH_TARGETS": "ftp://x/y"}, "target 'ftp://x/y': expected rsync://"),
        ("sersync", {"EXTRA_RSYNC_ARGS": "'unclosed"}, "EXTRA_RSYNC_ARGS: No closing quotation"),
    ],
)
def test_bad_environment_stops_with_a_clear_message(box, mode, more, message):
    env = rsyncd_env(box) if mode == "rsyncd" else sersync_env(box)
    with pytest.raises(EntrypointError) as caught:
        plan_from_env({**env, **more}, ROOT)
    assert message in str(caught.value)


def test_every_problem_is_listed_at_once(box):
    env = rsyncd_env(box, RSYNCD_PORT="x", RSYNCD_MAX_CONN="y", RSYNCD_PATH="/nonexistent/z")
    with pytest.raises(EntrypointError) as caught:
        plan_from_env(env, ROOT)
    lines = str(caught.value).splitlines()
    assert len(lines) == 3 and [line.split("=")[0] for line in lines] == [
        "RSYNCD_PORT",
        "RSYNCD_PATH",
        "RSYNCD_MAX_CONN",
    ]


# ---------------------------------------------------------------- the wrapper, for real


def run_wrapper(args, env, cwd):
    full = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "BACKUPD_PYTHON": sys.executable,
        **env,
    }
    return subprocess.run(
        [str(WRAPPER), *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_wrapper_plan_prints_the_exact_argv_and_redacts_secrets(box):
    done = run_wrapper(["plan"], rsyncd_env(box, RSYNCD_PASSWD="topsecret"), box)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["argv"] == [
        *PY,
        "serve",
        "--config",
        str(box / "etc" / "backupd.yaml"),
        "--metrics-address",
        "0.0.0.0:9873",
    ]
    assert doc["files"][str(box / "etc" / "rsyncd.secrets")] == {"mode": "0600", "text": "<secret>"}
    assert "topsecret" not in done.stdout and not (box / "etc").exists()


def test_wrapper_stops_a_bad_environment_with_status_78(box):
    done = run_wrapper([], rsyncd_env(box, RUN_MODE="sersync", RSYNCD_PORT="x"), box)
    assert done.returncode == EX_CONFIG
    assert "backupd-entrypoint: error: LISTEN_DIR: required in sersync mode" in done.stderr
    assert "backupd-entrypoint: error: RSYNCD_PORT='x'" in done.stderr
    assert not (box / "etc").exists()


def test_wrapper_runs_any_other_command(box):
    done = run_wrapper(["sh", "-c", "echo passthrough $RUN_MODE"], {"RUN_MODE": "rsyncd"}, box)
    assert (done.returncode, done.stdout) == (0, "passthrough rsyncd\n")


def test_healthcheck_fails_when_nothing_listens():
    from tests.helpers import free_port

    assert healthcheck({"RUN_MODE": "rsyncd", "RSYNCD_PORT": str(free_port())}, timeout_s=2) == 1
    assert (
        healthcheck(
            {"RUN_MODE": "sersync", "METRICS_ADDRESS": f"127.0.0.1:{free_port()}"}, timeout_s=2
        )
        == 1
    )
    # no pusher configured (no LISTEN_DIR, nothing mounted), so none can be running
    assert healthcheck({"RUN_MODE": "sersync", "METRICS_ADDRESS": ""}) == 1


def test_rsyncd_ssh_port_turns_on_the_ssh_transport(box):
    off = parse_yaml_conf(rendered(plan_from_env(rsyncd_env(box), ROOT), "backupd.yaml").text)
    assert not off.ssh_port
    plan = plan_from_env(rsyncd_env(box, RSYNCD_SSH_PORT="2222", RSYNCD_SSH_KEYS="/keys/%u"), ROOT)
    cfg = parse_yaml_conf(rendered(plan, "backupd.yaml").text, source=box / "etc" / "backupd.yaml")
    assert (cfg.ssh_port, cfg.ssh_authorized_keys) == (2222, Path("/keys/%u"))
    assert cfg.ssh_host_key == box / "etc" / "ssh_host_ed25519_key"  # kept on the /etc/backupd volume
    default = plan_from_env(rsyncd_env(box, RSYNCD_SSH_PORT="2222"), ROOT)
    keys = parse_yaml_conf(rendered(default, "backupd.yaml").text).ssh_authorized_keys
    assert keys == Path("/etc/backupd/authorized_keys/%u")
