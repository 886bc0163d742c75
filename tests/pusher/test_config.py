"""Pusher config: the YAML reader, the sersync.conf reader (parsed, never run), and their equality."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupd.config.pusher_model import HaConfig, Target, parse_target_url
from backupd.config.pusher_yaml import parse_duration, parse_pusher_yaml
from backupd.config.sersync_conf import ShellAssignments, load_sersync_conf, parse_sersync_conf
from backupd.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data" / "pusher"


def test_sersync_conf_equals_its_yaml_twin():
    from backupd.config.pusher_yaml import load_pusher_yaml

    sersync = load_sersync_conf(DATA / "sersync.conf")
    twin = load_pusher_yaml(DATA / "sersync-twin.yaml")
    assert sersync == twin
    # and the values are the script's, in our units
    assert sersync.delay_s == 60
    assert sersync.full_sync_interval_s == 3 * 86400
    assert sersync.full_sync_timeout_s == 12 * 3600
    img = sersync.sources[2]
    assert [t.url for t in img.targets] == ["rsync://rsync@127.0.0.1/backup2",
                                            "rsync://rsync@192.168.0.163:8730/backup2"]
    assert img.targets[1].dest(img.remote_subdir) == "rsync://rsync@192.168.0.163:8730/backup2/img-backup/"
    assert sersync.sources[1].pre_sync_command == "'/usr/local/sersync/scripts/dump db.sh'"
    assert any("keep_history_backup_days" in w for w in sersync.warnings)


def test_sersync_conf_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    text = f"listen_dir=('/d')\nrsyncd_mod=('m=/d')\nrsyncd_ip=('m=10.0.0.1')\ntouch {marker}\n"
    cfg = parse_sersync_conf(text)
    assert not marker.exists()
    assert any("not an assignment, not run" in w for w in cfg.warnings)
    for bad in ("x=$(touch /tmp/never)", "x=`touch /tmp/never`", 'x="a $(id) b"'):
        with pytest.raises(ConfigError, match="not run"):
            parse_sersync_conf(bad)


def test_shell_words_quotes_and_expansion():
    text = r"""
a=plain   # comment
b="dq $a ${a}x \"q\" \$lit"
c='sq $a'
d=con"cat"'ed'\ x
e=( one "t w o" 'th ree'  # comment inside
    ${a}-y )
f=${unset:-fallback}
g=
"""
    values, lines = ShellAssignments(text, "t").parse()
    assert values == {
        "a": "plain",
        "b": 'dq plain plainx "q" $lit',
        "c": "sq $a",
        "d": "concated x",
        "e": ["one", "t w o", "th ree", "plain-y"],
        "f": "fallback",
        "g": "",
    }
    assert lines["e"] == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen_dir=('/d')\nrsyncd_ip=('m=1.2.3.4')", "in no rsyncd_mod"),
        ("listen_dir=('/d')\nrsyncd_mod=('m=/d')", "has no address"),
        ("listen_dir=('/d'", "not closed"),
        ("x='open", "unterminated"),
        ("listen_dir=('/d')\nrsyncd_mod=('m=/d')\nrsyncd_ip=('m=h')\nreal_time_sync_delay=soon",
         "real_time_sync_delay"),
    ],
)
def test_sersync_errors_name_the_line(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_sersync_conf(text)


def test_sersync_source_without_alias_uses_the_scripts_convention():
    cfg = parse_sersync_conf("listen_dir=('/data/file')\nrsyncd_mod=('m=/data/file')\nrsyncd_ip=('m=h')")
    assert cfg.sources[0].remote_subdir == "_data_file"
    assert cfg.full_sync_interval_s is None  # full_rsync_enable defaults to off
    assert cfg.state_dir == Path("/usr/local/sersync/state")


YAML = """\
state_dir: state
delay_s: 2
full_sync: {at_start: false, interval_s: 3600}
rsync: {bwlimit: 0, extra_args: "--partial -v"}
ha: {dsn: "host=db", node_id: n1, lease_s: 10s}
sources:
  - path: /src
    exclude: ["*.tmp", "re:^cache/"]
    targets:
      - rsync://u%40x@h:8730/mod/sub/dir/
      - {url: "rsync://h2/mod", password_file: pw}
    bogus: 1
"""


def test_yaml_values(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(YAML)
    from backupd.config.pusher_yaml import load_pusher_yaml

    cfg = load_pusher_yaml(path)
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.full_sync_at_start is False and cfg.full_sync_interval_s == 3600
    assert cfg.bwlimit is None and cfg.extra_args == ("--partial", "-v")
    assert cfg.ha == HaConfig("host=db", "n1", "default", 10.0)
    first, second = cfg.sources[0].targets
    assert first == Target("h", "mod", "sub/dir", 8730, "u@x", None)
    assert second.password_file == tmp_path / "pw"
    assert [w.split(": ", 1)[1] for w in cfg.warnings] == ["sources.0.bogus: unknown key ignored"]
    assert cfg.warnings[0].startswith(f"{path}:12:")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("sources: []\nstate_dir: s\n", ":1: sources"),
        ("state_dir: s\nsources:\n  - path: /a\n    targets: [http://x/y]\n", ":4: sources.0.targets.0"),
        ("state_dir: s\ndelay_s: -1\nsources:\n  - {path: /a, targets: [rsync://h/m]}\n", ":2: delay_s"),
        ("state_dir: s\nsources:\n  - {path: /a, targets: [rsync://h/m]}\n  - {path: /a, targets: [rsync://h/n]}\n",
         "configured twice"),
        ("sources:\n  - {path: /a, targets: [rsync://h/m]}\n", "state_dir"),
        ("state_dir: s\nsources: [\n", "invalid YAML"),
    ],
)
def test_yaml_errors_name_file_line_and_key(text, where):
    with pytest.raises(ConfigError, match=where):
        parse_pusher_yaml(text)


def test_pusher_section_inside_a_server_yaml():
    cfg = parse_pusher_yaml("global: {port: 1}\npusher:\n  state_dir: /s\n  sources:\n"
                            "    - {path: /a, targets: [rsync://h/m]}\n")
    assert cfg.sources[0].targets[0].module == "m"


@pytest.mark.parametrize(("text", "seconds"), [(5, 5.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0),
                                               ("3d", 259200.0), ("1.5", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("url", ["rsync://h", "http://h/m", "rsync://h:99999/m", "h::m"])
def test_bad_target_urls(url):
    with pytest.raises(ConfigError):
        parse_target_url(url)


SEED_CONF = """listen_dir=('/d')
rsyncd_mod=('m=/d')
rsyncd_ip=('m=10.0.0.1')
keep_history_backup_days=30
extra_rsync_args="-v --partial --append-verify --ignore-missing-args"
"""


def test_the_seeds_settings_carry_over_with_warnings_that_say_what_to_do():
    from pathlib import Path

    from backupd.pusher.coalesce import Batch
    from backupd.pusher.targets import batch_argv, full_sync_argv

    cfg = parse_sersync_conf(SEED_CONF)
    [keep] = [w for w in cfg.warnings if "keep_history_backup_days" in w]
    assert "history keep days = 30" in keep and "KEEP_HISTORY_BACKUP_DAYS=30" in keep
    [append] = [w for w in cfg.warnings if "--append-verify" in w]
    assert "full syncs run without it" in append
    source, target = cfg.sources[0], cfg.sources[0].targets[0]
    full = full_sync_argv(cfg, source, target)
    assert "--append-verify" not in full and "--partial" in full and "--ignore-missing-args" in full
    batch = batch_argv(cfg, source, target, Batch((b"f",), False, False, (b"f",)), Path("/list"))
    assert "--append-verify" in batch
