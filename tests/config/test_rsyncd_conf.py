import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.config.model import AuthUser, DaemonConfig, ModuleConfig
from backupd.config.params import PARAMS, lookup, split_filter_rules
from backupd.config.rsyncd_conf import load_rsyncd_conf, parse_rsyncd_conf
from backupd.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data" / "config"
CONF = DATA / "rsyncd.conf"


@pytest.fixture(scope="module")
def realistic() -> DaemonConfig:
    return load_rsyncd_conf(CONF)


def test_globals(realistic):
    cfg = realistic
    assert cfg.port == 8873
    assert cfg.address == "127.0.0.1"
    assert cfg.pid_file == Path("/var/run/rsyncd.pid")
    assert cfg.log_file == Path("/var/log/rsyncd.log")
    assert cfg.motd_file == DATA / "motd.txt"  # relative -> config file's folder
    assert cfg.reverse_lookup is False
    assert cfg.max_connections == 4
    assert cfg.ssh_port == 2222
    assert cfg.ssh_host_key == DATA / "keys" / "ssh_host_ed25519_key"
    assert cfg.ssh_authorized_keys == DATA / "keys" / "authorized_keys"
    assert cfg.source == CONF
    assert list(cfg.modules) == ["photos", "www", "db"]


def test_module_photos_inherits_globals_and_continues_lines(realistic):
    m = realistic.modules["photos"]
    assert m.path == DATA / "srv" / "photos"
    assert m.comment == "Family photos # the hash is part of the value"
    assert m.read_only is False  # global default
    assert m.uid == "backup" and m.gid == "backup"
    assert m.secrets_file == Path("/etc/rsyncd.secrets")
    assert m.hosts_allow == ("10.0.0.0/8", "192.168.1.0/24", "127.0.0.1")
    assert m.timeout_s == 600
    assert m.refuse_options == ("checksum", "delete-excluded")
    assert m.dont_compress == ("*.gz", "*.zip", "*.jpg")
    assert m.history_keep_days == 14
    assert m.auth_users == (
        AuthUser("alice"),
        AuthUser("bob", access="ro"),
        AuthUser("admins", is_group=True, access="rw"),
        AuthUser("mallory", access="deny"),
    )
    assert m.filter == ("- *.tmp", "+ /keep/", "- /cache/")
    assert m.transfer_logging is True
    assert m.log_format == "%t %a %m %f %b"
    assert m.max_connections == 2
    # set in the second [global], after this module: not inherited
    assert m.strict_modes is True
    assert m.history_dir == "history-backup"
    assert m.fake_super is False


def test_module_www_overrides(realistic):
    m = realistic.modules["www"]  # "[ www ]": blanks around the name dropped
    assert m.name == "www"
    assert m.path == Path("/srv/www")
    assert m.read_only is True and m.list is False
    assert m.exclude == ("*.log", ".cache/")
    assert m.include == ("important.log",)
    assert m.hosts_deny == ("10.9.9.9",)
    assert m.history is False and m.numeric_ids is False
    assert m.incoming_chmod == "Dg+s,ug+w,Fo-w,+X"
    assert m.outgoing_chmod == "o-rwx"
    assert m.max_connections == 4
    assert m.strict_modes is True


def test_module_db_gets_later_global_defaults(realistic):
    m = realistic.modules["db"]
    assert m.strict_modes is False
    assert m.history_dir == ".versions"
    assert m.fake_super is True
    assert m.write_only is True
    assert m.timeout_s == 0
    assert m.munge_symlinks is True and m.ignore_errors is True
    assert m.lock_file == Path("/run/rsyncd-db.lock")
    assert m.auth_users == (
        AuthUser("backup agent", access="rw"),
        AuthUser("DB Admins", is_group=True, access="ro"),
    )


def test_realistic_warnings_name_file_and_line(realistic):
    text = CONF.read_text().splitlines()
    line_of = {
        key: n
        for n, line in enumerate(text, 1)
        for key in ("pre-xfer", "sync interval")
        if line.strip().startswith(key)
    }
    assert len(realistic.warnings) == 2
    pre, unknown = realistic.warnings
    assert pre.startswith(f"{CONF}:{line_of['pre-xfer']}: ") and "never runs commands" in pre
    where = f"{CONF}:{line_of['sync interval']}"
    assert unknown == f"{where}: unknown parameter 'sync interval' ignored"


def test_ignored_known_parameters_are_silent():
    cfg = parse_rsyncd_conf(
        "use chroot = yes\nsyslog facility = local3\nsyslog tag = x\n"
        "charset = utf-8\nopen noatime = yes\nforward lookup = no\ntemp dir = /tmp\n"
        "socket options = SO_KEEPALIVE\nlisten backlog = 10\n[m]\npath = /m\n"
        "name converter = /bin/nc\nignore nonreadable = yes\n"
    )
    assert cfg.warnings == ()
    # use chroot / forward lookup only pick refusal texts and host matching; as globals they are module defaults
    assert cfg.modules["m"] == ModuleConfig(name="m", path=Path("/m"), forward_lookup=False)


@pytest.mark.parametrize(
    ("spelling", "value"),
    [
        ("yes", True),
        ("YES", True),
        ("True", True),
        ("1", True),
        ("y e s", True),
        ("no", False),
        ("No", False),
        ("false", False),
        ("FALSE", False),
        ("0", False),
    ],
)
def test_boolean_spellings(spelling, value):
    cfg = parse_rsyncd_conf(f"[m]\npath = /m\nread only = {spelling}\nlist = {spelling}\n")
    assert cfg.modules["m"].read_only is value
    assert cfg.modules["m"].list is value


@pytest.mark.parametrize("name", ["read only", "READ ONLY", "read_only", "readonly", "Read  Only"])
def test_parameter_name_spellings(name):
    cfg = parse_rsyncd_conf(f"[m]\npath = /m\n{name} = no\n")
    assert cfg.modules["m"].read_only is False
    assert cfg.warnings == ()


def test_aliases_and_unset():
    cfg = parse_rsyncd_conf(
        "rsync port = 1873\nbind address = ::1\nnumeric ids = no\n"
        "[m]\npath = /m\nnumeric ids = unset\n[n]\npath = /n\n"
    )
    assert (cfg.port, cfg.address) == (1873, "::1")
    assert cfg.modules["m"].numeric_ids is True  # unset: follows `use chroot` (on by default)
    assert cfg.modules["n"].numeric_ids is False  # global default


def test_numeric_ids_unset_follows_use_chroot():
    """clientserver.c: an unset `numeric ids` is on with chroot, off without (the differential
    scenario push-client-names-numeric-unset shows rsyncd mapping names then)."""
    cfg = parse_rsyncd_conf(
        "use chroot = no\n[plain]\npath = /p\n[set]\npath = /s\nnumeric ids = yes\n"
        "[chroot]\npath = /c\nuse chroot = yes\n[unset]\npath = /u\nuse chroot = yes\nnumeric ids = unset\n"
    )
    assert {name: m.numeric_ids for name, m in cfg.modules.items()} == {
        "plain": False, "set": True, "chroot": True, "unset": True}


def test_relative_paths_without_source_use_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_rsyncd_conf("[m]\npath = data/m/\nsecrets file = s\n")
    assert cfg.modules["m"].path == tmp_path / "data" / "m"
    assert cfg.modules["m"].secrets_file == tmp_path / "s"


def test_duplicate_section_continues_first_and_global_in_module_warns():
    cfg = parse_rsyncd_conf("[m]\npath = /m\n[n]\npath = /n\n[M]\nread only = no\nport = 9\n")
    assert list(cfg.modules) == ["m", "n"]
    assert cfg.modules["m"].read_only is False
    assert cfg.port == 873
    assert cfg.warnings == ("<string>:7: global parameter 'port' ignored in module [m]",)


def test_per_module_log_file_warns():
    cfg = parse_rsyncd_conf("[m]\npath = /m\nlog file = /var/log/m.log\n")
    assert cfg.log_file is None
    assert cfg.warnings[0].startswith("<string>:3: per-module 'log file'")


def test_auth_users_without_secrets_file_warns():
    cfg = parse_rsyncd_conf("[m]\npath = /m\nauth users = joe\n")
    assert cfg.warnings == (
        "<string>:1: module [m] has auth users but no secrets file: no login can succeed",
    )


def test_env_reference_in_path_warns():
    cfg = parse_rsyncd_conf("[m]\npath = /home/%RSYNC_USER_NAME%\n")
    assert cfg.modules["m"].path == Path("/home/%RSYNC_USER_NAME%")
    assert "not expanded" in cfg.warnings[0]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("port = 80\n\n[m]\ncomment = no path\n", 3, "module [m] has no path"),
        ("[m]\npath =\n", 1, "module [m] has no path"),
        ("[m]\npath = /m\ntimeout = 10s\n", 3, "'timeout': expected an integer, got '10s'"),
        ("[m]\npath = /m\nmax connections = many\n", 3, "expected an integer"),
        ("# c\nport = 70000\n", 2, "'port': 70000 is outside 0 .. 65535"),
        ("[m]\npath = /m\nhistory keep days = -1\n", 3, "-1 is outside 0 .. inf"),
        ("[m]\npath = /m\n\nread only = maybe\n", 4, "'read only': expected a boolean"),
        ("[m]\npath = /m\njust some words\n", 3, "expected 'name = value'"),
        ("= value\n", 1, "expected 'name = value'"),
        ("[m\npath = /m\n", 1, "section header without ']'"),
        ("[a/b]\npath = /m\n", 1, "invalid module name 'a/b'"),
        ("[  ]\n", 1, "invalid module name"),
        ("[m]\npath = /m\nhistory dir = ../out\n", 3, "expected a relative path inside"),
        ("[m]\npath = /m\nhistory dir = ./\n", 3, "expected a relative path inside"),
        ("[m]\npath = /m\nauth users = joe @:ro\n", 3, "auth users entry '@:ro' has no name"),
        ("&frobnicate x\n", 1, "unknown directive '&frobnicate'"),
        ("&include no-such-file.conf\n", 1, "cannot read"),
    ],
)
def test_errors_name_file_and_line(tmp_path, text, line, message):
    conf = tmp_path / "rsyncd.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_rsyncd_conf(conf)
    assert str(info.value).startswith(f"{conf}:{line}: ")
    assert message in str(info.value)


def test_unreadable_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_rsyncd_conf(tmp_path / "missing.conf")


def test_continuation_and_comments():
    cfg = parse_rsyncd_conf(
        "# comment \\\nport = 1\n  ; indented comment\n[m]\n"
        "path = /m\nrefuse options = a \\\n  b\\\n c\ncomment = x \\\n"
    )
    assert cfg.port == 1  # a comment line never continues
    assert cfg.modules["m"].refuse_options == ("a", "b", "c")
    assert cfg.modules["m"].comment == "x"  # backslash on the last line


def test_include_keeps_defaults_merge_shares_them(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.conf").write_text("read only = no\n[b]\npath = b\n")
    (tmp_path / "conf.d" / "a.conf").write_text("timeout = 5\n[a]\npath = /a\n")
    (tmp_path / "conf.d" / "ignored.txt").write_text("[x]\npath = /x\n")
    (tmp_path / "common.inc").write_text("uid = nobody\n")
    conf = tmp_path / "rsyncd.conf"
    conf.write_text("&merge common.inc\n&include conf.d\n[c]\npath = /c\n")
    cfg = load_rsyncd_conf(conf)
    assert list(cfg.modules) == ["a", "b", "c"]  # *.conf in name order
    a, b, c = cfg.modules["a"], cfg.modules["b"], cfg.modules["c"]
    assert b.path == tmp_path / "conf.d" / "b"  # relative to the included file
    assert (a.timeout_s, a.read_only) == (5, True)  # b.conf's default did not leak into a
    assert (b.timeout_s, b.read_only) == (0, False)  # nor a.conf's into b
    assert (c.timeout_s, c.read_only) == (0, True)  # nor either into the parent
    assert a.uid == b.uid == c.uid == "nobody"  # merged globals reach every module


def test_include_loop_is_refused(tmp_path):
    conf = tmp_path / "loop.conf"
    conf.write_text("&include loop.conf\n")
    with pytest.raises(ConfigError, match="nested more than"):
        load_rsyncd_conf(conf)


@pytest.mark.parametrize(
    ("text", "rules"),
    [
        ("- *.tmp + /keep/", ["- *.tmp", "+ /keep/"]),
        ("-_*.o exclude foo ! include,/ bar", ["-_*.o", "exclude foo", "!", "include,/ bar"]),
        (": .rsync-filter clear - -", [": .rsync-filter", "clear", "- -"]),
        ("P /keep -", ["P /keep", "-"]),
    ],
)
def test_filter_rules_split(text, rules):
    assert split_filter_rules(text) == rules


# --- property: any generated module settings come back from the text ---------

_WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789.*-/", min_size=1, max_size=8).filter(
    lambda w: not w.startswith("-")
)
_BOOL_FIELDS = [
    "read only",
    "write only",
    "list",
    "strict modes",
    "transfer logging",
    "ignore errors",
    "fake super",
    "history",
    "munge symlinks",
    "numeric ids",
]
_SPELL = {True: ["yes", "true", "1"], False: ["no", "false", "0"]}


def _respell(name: str, data) -> str:
    sep = data.draw(st.sampled_from([" ", "_", "  "]))
    return "".join(c.upper() if data.draw(st.booleans()) else c for c in name.replace(" ", sep))


@settings(max_examples=60, deadline=None)
@given(
    bools=st.fixed_dictionaries({k: st.booleans() for k in _BOOL_FIELDS}),
    timeout=st.integers(0, 10**6),
    keep=st.integers(0, 3650),
    refuse=st.lists(_WORD, max_size=4),
    hosts=st.lists(_WORD, max_size=4),
    users=st.lists(
        st.tuples(
            st.booleans(),
            _WORD.filter(lambda w: ":" not in w),
            st.sampled_from([None, "ro", "rw", "deny"]),
        ),
        max_size=4,
    ),
    data=st.data(),
)
def test_generated_settings_round_trip(bools, timeout, keep, refuse, hosts, users, data):
    lines = ["[mod]", "path = /srv/mod"]
    for name, value in bools.items():
        spelled = data.draw(st.sampled_from(_SPELL[value]))
        lines.append(f"{_respell(name, data)} = {spelled.upper() if len(lines) % 2 else spelled}")
    rules = [("@" if g else "") + n + (f":{a}" if a else "") for g, n, a in users]
    lines += [
        f"timeout = {timeout}",
        f"history keep days = {keep}",
        f"refuse options = {' '.join(refuse)}",
        f"hosts allow = {', '.join(hosts)}",
        f"auth users = {' , '.join(rules)}",
    ]
    m = parse_rsyncd_conf("\n".join(lines) + "\n").modules["mod"]
    for name, value in bools.items():
        assert getattr(m, re.sub(" ", "_", name)) is value
    assert (m.timeout_s, m.history_keep_days) == (timeout, keep)
    assert m.refuse_options == tuple(refuse)
    assert m.hosts_allow == tuple(hosts)
    assert m.auth_users == tuple(AuthUser(n, g, a) for g, n, a in users)


# Every parameter of rsync 3.4's daemon-parm.txt (plus "use pam" from 3.2/3.3).
RSYNCD_PARAMS = """
address bind_address daemon_chroot daemon_gid daemon_uid motd_file pid_file
proxy_protocol_hosts socket_options listen_backlog port rsync_port proxy_protocol
auth_digest auth_users charset comment dont_compress early_exec exclude exclude_from
filter gid hosts_allow hosts_deny include include_from incoming_chmod lock_file
log_file log_format name name_converter outgoing_chmod post-xfer_exec pre-xfer_exec
refuse_options secrets_file syslog_tag uid path temp_dir max_connections max_verbosity
timeout syslog_facility fake_super forward_lookup ignore_errors ignore_nonreadable
insecure_links list read_only reverse_lookup strict_modes transfer_logging write_only
use_pam munge_symlinks numeric_ids open_noatime use_chroot
""".split()


@pytest.mark.parametrize("name", RSYNCD_PARAMS)
def test_every_rsyncd_parameter_is_known(name):
    assert lookup(name.replace("_", " ")) is not None


def test_table_reaches_every_model_field():
    module_fields = {f.name for f in dataclasses.fields(ModuleConfig)} - {"name"}
    daemon_fields = {f.name for f in dataclasses.fields(DaemonConfig)}
    daemon_fields -= {"modules", "source", "warnings"}
    assert module_fields == {p.module_field for p in PARAMS if p.module_field}
    assert daemon_fields == {p.daemon_field for p in PARAMS if p.daemon_field}


def test_max_verbosity_caps_per_module():
    cfg = parse_rsyncd_conf("max verbosity = 3\n[a]\npath = /a\n[b]\npath = /b\nmax verbosity = 0\n[c]\npath = /c\n")
    assert [cfg.modules[m].max_verbosity for m in "abc"] == [3, 0, 3]
    assert parse_rsyncd_conf("[m]\npath = /m\n").modules["m"].max_verbosity == 1  # rsyncd's default
