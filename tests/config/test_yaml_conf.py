import dataclasses
import importlib.util
from pathlib import Path

import pytest

from backupd.config.load import load_config
from backupd.config.model import AuthUser, ModuleConfig
from backupd.config.rsyncd_conf import load_rsyncd_conf
from backupd.config.yaml_conf import load_yaml_conf, parse_yaml_conf
from backupd.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data" / "config"
REPO = Path(__file__).resolve().parents[2]
BENCH_RUN = [REPO / "bench" / "run.py", REPO.parent / "shared" / "bench" / "run.py"]


def _bare(cfg):
    return dataclasses.replace(cfg, source=None, warnings=())


def test_yaml_twin_equals_rsyncd_conf():
    from_conf = load_rsyncd_conf(DATA / "rsyncd.conf")
    from_yaml = load_yaml_conf(DATA / "backupd.yaml")
    assert _bare(from_yaml) == _bare(from_conf)
    assert from_yaml.source == DATA / "backupd.yaml"
    # same two warnings (ignored pre-xfer exec, unknown key), located in YAML terms
    assert len(from_yaml.warnings) == 2
    assert "modules.db.pre_xfer_exec: 'pre-xfer exec' is ignored" in from_yaml.warnings[0]
    assert from_yaml.warnings[1].endswith(
        "modules.db.sync_interval: unknown parameter 'sync_interval' ignored"
    )


def test_yaml_warning_names_file_line_and_key():
    text = "global:\n  port: 1\nmodules:\n  m:\n    path: /m\n    bogus_key: 3\n"
    cfg = parse_yaml_conf(text, source=Path("/etc/backupd.yaml"))
    assert cfg.warnings == (
        "/etc/backupd.yaml:6: modules.m.bogus_key: unknown parameter 'bogus_key' ignored",
    )


def _bench_render():
    for path in BENCH_RUN:
        if path.is_file():
            spec = importlib.util.spec_from_file_location("bench_run", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    return None


def test_bench_harness_yaml_loads(tmp_path):
    bench = _bench_render()
    if bench is None:
        pytest.skip("bench/run.py not found; bench.yaml fixture covers the shape")
    cfg_dict = {  # the shape of run.py Server.write_configs()
        "global": {
            "address": "127.0.0.1",
            "port": 40999,
            "use_chroot": False,
            "reverse_lookup": False,
            "log_file": str(tmp_path / "server.log"),
            "pid_file": str(tmp_path / "server.pid"),
        },
        "modules": {
            "bench": {
                "path": str(tmp_path / "module"),
                "comment": "benchmark module",
                "read_only": False,
                "uid": 0,
                "gid": 0,
                "numeric_ids": True,
                "munge_symlinks": False,
            }
        },
    }
    (tmp_path / "config.yaml").write_text(bench.render_yaml(cfg_dict))
    (tmp_path / "rsyncd.conf").write_text(bench.render_rsyncd_conf(cfg_dict))
    from_yaml = load_config(tmp_path / "config.yaml")
    assert from_yaml.warnings == ()
    assert (from_yaml.port, from_yaml.address) == (40999, "127.0.0.1")
    assert from_yaml.log_file == tmp_path / "server.log"
    assert from_yaml.modules["bench"].read_only is False
    assert (from_yaml.modules["bench"].uid, from_yaml.modules["bench"].gid) == ("0", "0")
    assert _bare(from_yaml) == _bare(load_config(tmp_path / "rsyncd.conf"))


def test_bench_yaml_fixture_loads():
    cfg = load_yaml_conf(DATA / "bench.yaml")
    assert cfg.warnings == ()
    assert (cfg.port, cfg.address, cfg.reverse_lookup) == (40873, "127.0.0.1", False)
    assert cfg.pid_file == Path("/tmp/bench-work/server.pid")
    assert cfg.modules == {
        "bench": ModuleConfig(
            name="bench",
            path=Path("/tmp/bench-work/module"),
            comment="benchmark module",
            read_only=False,
            uid="0",
            gid="0",
            numeric_ids=True,
            munge_symlinks=False,
            use_chroot=False,
        ),
    }


def test_yaml_lists_and_strings_both_accepted():
    cfg = parse_yaml_conf(
        "modules:\n  m:\n    path: /m\n    auth_users: alice @ops:ro\n"
        "    hosts_allow: '10.0.0.1, 10.0.0.2'\n    filter: '- *.tmp + /keep/'\n"
        "    refuse_options: [delete, c]\n    read only: 'no'\n"
    )
    m = cfg.modules["m"]
    assert m.auth_users == (AuthUser("alice"), AuthUser("ops", True, "ro"))
    assert m.hosts_allow == ("10.0.0.1", "10.0.0.2")
    assert m.filter == ("- *.tmp", "+ /keep/")
    assert m.refuse_options == ("delete", "c")
    assert m.read_only is False


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "modules:\n  m:\n    path: /m\n    read_only: maybe\n",
            4,
            "modules.m.read_only: 'read only': expected a boolean",
        ),
        ("global:\n  port: eighty\n", 2, "global.port: 'port': expected an integer"),
        ("global:\n  timeout: true\n", 2, "global.timeout: 'timeout': expected an integer"),
        (
            "modules:\n  a:\n    path: /a\n  b:\n    comment: x\n",
            4,
            "modules.b: module [b] has no path",
        ),
        ("modules:\n  c:\n", 2, "modules.c: module [c] has no path"),
        ("modules:\n  m:\n    path: {a: 1}\n", 3, "modules.m.path: 'path': expected a string"),
        ("modules:\n  global:\n    path: /g\n", 2, "modules.global: module name 'global'"),
        ("modules:\n  a/b:\n    path: /g\n", 2, "invalid module name 'a/b'"),
        ("modules: [a, b]\n", 1, "modules must be a mapping"),
        ("- just a list\n", 1, "the top level must be a mapping"),
        ("global:\n  port: 1\n   bad: indent\n", 3, "invalid YAML"),
    ],
)
def test_yaml_errors_name_file_line_and_key(tmp_path, text, line, message):
    conf = tmp_path / "backupd.yaml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_yaml_conf(conf)
    assert str(info.value).startswith(f"{conf}:{line}: ")
    assert message in str(info.value)


def test_empty_yaml_is_an_empty_daemon():
    cfg = parse_yaml_conf("# nothing yet\n")
    assert cfg.modules == {} and cfg.port == 873


def test_unknown_section_warns():
    cfg = parse_yaml_conf("pusher:\n  x: 1\nmodules: {}\n")
    assert cfg.warnings == ("<string>:1: pusher: unknown section 'pusher' ignored",)


def test_load_config_picks_reader_by_suffix(tmp_path):
    text_conf = "[m]\npath = /m\n"
    text_yaml = "modules:\n  m:\n    path: /m\n"
    (tmp_path / "a.yml").write_text(text_yaml)
    (tmp_path / "b.YAML").write_text(text_yaml)
    (tmp_path / "c.conf").write_text(text_conf)
    (tmp_path / "d").write_text(text_conf)
    for name in ("a.yml", "b.YAML", "c.conf", "d"):
        assert load_config(tmp_path / name).modules["m"].path == Path("/m")
    (tmp_path / "e.yaml").write_text(text_conf)  # rsyncd text under a YAML name
    with pytest.raises(ConfigError, match="e.yaml:2: invalid YAML"):
        load_config(tmp_path / "e.yaml")


def test_load_config_none_is_embedded_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg.modules["backup"].path == tmp_path / "backupd-data" / "backup"
    assert (tmp_path / "backupd-data" / "secrets").is_file()
