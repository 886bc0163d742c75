"""Every example in conf/ (and the container's documentation) is loaded here, so none rots."""

import configparser
import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import typer

from backupd.config.pusher_yaml import load_pusher_yaml
from backupd.config.rsyncd_conf import load_rsyncd_conf
from backupd.config.sersync_conf import load_sersync_conf
from backupd.config.yaml_conf import load_yaml_conf
from backupd.ops import entrypoint

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
UNITS = {"systemd/backupd.service": "serve", "systemd/backupd-watch.service": "watch"}


def check_rsyncd_pair():
    from_conf, from_yaml = (
        load_rsyncd_conf(CONF / "rsyncd.conf"),
        load_yaml_conf(CONF / "backupd.yaml"),
    )
    assert from_conf.warnings == () and from_yaml.warnings == ()
    assert dataclasses.replace(from_conf, source=None) == dataclasses.replace(
        from_yaml, source=None
    )


def check_pusher_pair():
    from_yaml, from_conf = (
        load_pusher_yaml(CONF / "pusher.yaml"),
        load_sersync_conf(CONF / "sersync.conf"),
    )
    assert from_yaml.warnings == () and from_conf.warnings == ()
    assert from_yaml.metrics_port == 9874  # sersync.conf has no metrics: the one difference
    assert dataclasses.replace(from_yaml, metrics_port=None) == from_conf
    assert [s.remote_subdir for s in from_yaml.sources] == ["file-backup", "db-backup"]
    assert [t.port for t in from_yaml.sources[0].targets] == [873, 8730]


CHECKERS = {
    "rsyncd.conf": check_rsyncd_pair,
    "backupd.yaml": check_rsyncd_pair,
    "pusher.yaml": check_pusher_pair,
    "sersync.conf": check_pusher_pair,
    **{unit: None for unit in UNITS},
}


def test_every_file_in_conf_is_checked():
    present = {str(p.relative_to(CONF)) for p in CONF.rglob("*") if p.is_file()}
    assert present == set(CHECKERS), "a new conf/ example needs a check here"


@pytest.mark.parametrize("name", [n for n, check in CHECKERS.items() if check is not None])
def test_config_examples_load_and_agree_with_their_twin(name):
    CHECKERS[name]()


def cli_command(name: str):
    from backupd.cli import _register, app

    _register()
    group = typer.main.get_command(app)
    return group.commands.get(name)


@pytest.mark.parametrize(("unit", "command"), UNITS.items())
def test_systemd_units_run_a_real_command_on_an_example_config(unit, command):
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read(CONF / unit)
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    argv = shlex.split(parser["Service"]["ExecStart"])
    assert Path(argv[0]).name == "backupd" and argv[1] == command
    config = Path(argv[argv.index("--config") + 1])
    assert (CONF / config.name).is_file(), f"{unit} runs {config}: its example belongs in conf/"
    sub = cli_command(command)
    if sub is None:
        pytest.skip(f"`backupd {command}` is not built yet; {config.name} is loaded above")
    with sub.make_context(command, argv[2:]) as ctx:  # the options parse as the CLI would
        assert Path(ctx.params["config"]).name == config.name


def test_dockerfile_documents_the_entrypoint_it_runs():
    text = (REPO / "container" / "Dockerfile").read_text()
    assert "COPY container/entrypoint.sh /usr/local/bin/backupd-entrypoint" in text
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/backupd-entrypoint"\]$', text, re.M)
    assert re.search(r"^EXPOSE 873 9873 2222$", text, re.M)  # daemon, metrics, SSH
    assert '"backupd.ops.entrypoint", "healthcheck"' in text
    assert re.search(r'^VOLUME \["/data", "/etc/backupd", "/var/lib/backupd"\]$', text, re.M)
    documented = set(re.findall(r"\b[A-Z][A-Z0-9]+(?:_[A-Z0-9]+)+\b", text))
    for name in (*entrypoint.RSYNCD_VARS, *entrypoint.COMMON_VARS):
        assert name.split("/")[0] in documented or name in ("BACKUPD_CONFIG_DIR",), name
    missing = {
        n
        for n in entrypoint.SERSYNC_VARS
        if n not in documented and not n.startswith(("REAL_TIME", "BACKUPD_"))
    }
    assert missing == set()
