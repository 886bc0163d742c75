r"""Reader for ``sersync.conf``, the shell-variable file of the inotify+rsync script pusher.

The file is bash (``. sersync.conf`` in the scripts); here it is *parsed*,
never run: ``name=value`` and ``name=( 'word' ... )`` assignments with
single/double quotes, backslashes and ``$var``/``${var}``/``${var:-default}``
expansion of earlier variables. A command substitution (``$(...)``, backticks)
is an error; any other line is a warning naming file:line.

Variables (the scripts' meaning; units as there):

=========================  ====================================================
``listen_dir``             ``('alias=/dir' ...)``: sources; the alias is the
                           subdir under the module (no alias: ``/a/b`` -> ``_a_b``)
``exclude_file_rule``      ``('/dir=REGEX' ...)``: events only (``watch_exclude``)
``rsyncd_mod``             ``('module=/dir1,/dir2' ...)``: module of each dir
``rsyncd_ip``              ``('module=host[:port],host2' ...)``: replicas
``rsync_user``             user in every target URL
``rsync_passwd_file``      ``--password-file``
``real_time_sync_enable``  1/0: watch (``realtime``)
``real_time_sync_delay``   seconds: the coalescing window
``full_rsync_first_enable`` 1/0: a full sync at start
``full_rsync_enable``      1/0: scheduled full syncs, every
``full_rsync_interval``    days, each limited to
``full_rsync_timeout``     hours
``rsync_timeout``          seconds: ``--timeout``
``rsync_bwlimit``          ``--bwlimit`` (``50M``)
``extra_rsync_args``       more rsync arguments (split like the shell does)
``exec_command_enable``    1/0, with
``exec_command_list``      ``('/dir=script.sh' ...)``: ``$work_dir/scripts/script.sh``
                           runs before each full sync of that dir
``work_dir``               default ``/usr/local/sersync``; the pusher keeps its
                           queues in ``$work_dir/state`` (``state_dir`` overrides)
``logs_dir``               where the per-target rsync logs go (default: ``state_dir``)
=========================  ====================================================
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from backupd.config.pusher_model import (
    APPEND_ARGS,
    RSYNC_PORT,
    PusherConfig,
    SourceConfig,
    Target,
    validate_pusher,
)
from backupd.config.pusher_yaml import _bwlimit, parse_duration
from backupd.config.rsyncd_conf import read_config_text
from backupd.errors import ConfigError

Value = str | list[str]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KNOWN = {
    "listen_dir", "exclude_file_rule", "rsyncd_mod", "rsyncd_ip", "rsync_user",
    "rsync_passwd_file", "real_time_sync_enable", "real_time_sync_delay",
    "full_rsync_first_enable", "full_rsync_enable", "full_rsync_interval",
    "full_rsync_timeout", "rsync_timeout", "rsync_bwlimit", "extra_rsync_args",
    "exec_command_enable", "exec_command_list", "work_dir", "logs_dir", "state_dir",
}
DEFAULT_WORK_DIR = "/usr/local/sersync"


def load_sersync_conf(path: Path) -> PusherConfig:
    """Read and parse the sersync.conf at ``path``.

    Raises:
        ConfigError: unreadable, not parseable, or a wrong value (``file:line``).
    """
    return parse_sersync_conf(read_config_text(path), source=path)


def parse_sersync_conf(text: str, source: Path | None = None) -> PusherConfig:
    """Parse sersync.conf ``text`` into the pusher configuration.

    Raises:
        ConfigError: a command substitution, an unterminated quote or array,
            a dir in no ``rsyncd_mod``, a module without ``rsyncd_ip``, a bad number.
    """
    label = str(source) if source is not None else "<string>"
    parser = ShellAssignments(text, label)
    values, lines = parser.parse()
    warnings = list(parser.warnings)
    warnings += [_unknown_warning(label, lines[k], k, values[k]) for k in values if k not in KNOWN]
    return _build(values, lines, label, source, warnings)


def _unknown_warning(label: str, line: int, name: str, value: Value) -> str:
    if name == "keep_history_backup_days":
        days = " ".join(value) if isinstance(value, list) else value
        return (f"{label}:{line}: keep_history_backup_days={days}: history is kept by the backupd server: "
                f"set 'history keep days = {days}' in its module (rsyncd.conf), or "
                f"KEEP_HISTORY_BACKUP_DAYS={days} in its container; the server's default is 7")
    return f"{label}:{line}: {name}: not a pusher setting, ignored"


class ShellAssignments:
    """Parses ``name=value`` / ``name=(...)`` lines of a bash file without running it."""

    def __init__(self, text: str, label: str) -> None:
        self.text = text.replace("\r\n", "\n")
        self.label = label
        self.pos = 0
        self.line = 1
        self.values: dict[str, Value] = {}
        self.lines: dict[str, int] = {}
        self.warnings: list[str] = []

    def parse(self) -> tuple[dict[str, Value], dict[str, int]]:
        """Every assignment, in order (a later one replaces an earlier one)."""
        while self.pos < len(self.text):
            self._skip_blanks(newlines=True)
            if self.pos >= len(self.text):
                break
            if self._peek() == "#":
                self._skip_line()
                continue
            start_line = self.line
            match = _NAME.match(self.text, self.pos)
            if match and self.text.startswith("=", match.end()):
                self.pos = match.end() + 1
                self.values[match[0]] = self._value()
                self.lines[match[0]] = start_line
                self._end_of_statement()
            else:
                self.warnings.append(f"{self.label}:{start_line}: not an assignment, not run: "
                                     f"{self._rest_of_line()!r}")
        return self.values, self.lines

    # ------------------------------------------------------------ scanning

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _advance(self) -> str:
        ch = self.text[self.pos]
        self.pos += 1
        self.line += ch == "\n"
        return ch

    def _skip_blanks(self, newlines: bool) -> None:
        while self._peek() in (" ", "\t", ";") or (newlines and self._peek() == "\n"):
            if self._peek() == "":
                return
            self._advance()

    def _skip_line(self) -> None:
        while self._peek() not in ("", "\n"):
            self._advance()

    def _rest_of_line(self) -> str:
        start = self.pos
        self._skip_line()
        return self.text[start:self.pos].strip()

    def _end_of_statement(self) -> None:
        self._skip_blanks(newlines=False)
        if self._peek() == "#":
            self._skip_line()
        elif self._peek() not in ("", "\n"):
            self.warnings.append(f"{self.label}:{self.line}: ignored after assignment: {self._rest_of_line()!r}")

    def error(self, message: str) -> ConfigError:
        """A ConfigError at the current line."""
        return ConfigError(f"{self.label}:{self.line}: {message}")

    # ------------------------------------------------------------ values

    def _value(self) -> Value:
        if self._peek() != "(":
            return self._word() or ""
        self._advance()
        items: list[str] = []
        while True:
            self._skip_blanks(newlines=True)
            ch = self._peek()
            if ch == "":
                raise self.error("array not closed with ')'")
            if ch == ")":
                self._advance()
                return items
            if ch == "#":
                self._skip_line()
                continue
            word = self._word()
            if word is not None:
                items.append(word)

    def _word(self) -> str | None:
        """One shell word: quoted and unquoted pieces up to an unquoted blank."""
        out: list[str] = []
        seen = False
        while (ch := self._peek()) not in ("", " ", "\t", "\n", ";", ")", "("):
            seen = True
            if ch == "'":
                self._advance()
                out.append(self._until("'"))
            elif ch == '"':
                self._advance()
                out.append(self._double_quoted())
            elif ch == "\\":
                self._advance()
                if self._peek() == "\n":
                    self._advance()
                elif self._peek():
                    out.append(self._advance())
            elif ch == "$":
                out.append(self._dollar())
            elif ch == "`":
                raise self.error("command substitution (`...`) is not run; write the value")
            else:
                out.append(self._advance())
        return "".join(out) if seen else None

    def _until(self, end: str) -> str:
        start = self.pos
        while self._peek() != end:
            if self._peek() == "":
                raise self.error(f"unterminated {end} quote")
            self._advance()
        self._advance()
        return self.text[start:self.pos - 1]

    def _double_quoted(self) -> str:
        out: list[str] = []
        while (ch := self._peek()) != '"':
            if ch == "":
                raise self.error('unterminated " quote')
            if ch == "\\" and self.text[self.pos + 1:self.pos + 2] in ('"', "\\", "$", "`", "\n"):
                self._advance()
                nxt = self._advance()
                out.append("" if nxt == "\n" else nxt)
            elif ch == "$":
                out.append(self._dollar())
            elif ch == "`":
                raise self.error("command substitution (`...`) is not run; write the value")
            else:
                out.append(self._advance())
        self._advance()
        return "".join(out)

    def _dollar(self) -> str:
        """``$name``, ``${name}``, ``${name:-default}``; ``$(`` is refused."""
        self._advance()
        if self._peek() == "(":
            raise self.error("command substitution $(...) is not run; write the value")
        if self._peek() == "{":
            self._advance()
            body = self._until("}")
            name, sep, default = body.partition(":-")
            if not _NAME.fullmatch(name):
                raise self.error(f"unsupported expansion ${{{body}}}")
            value = self.values.get(name, "")
            value = " ".join(value) if isinstance(value, list) else value
            return value if value or not sep else default
        match = _NAME.match(self.text, self.pos)
        if not match:
            return "$"
        self.pos = match.end()
        value = self.values.get(match[0], "")
        return " ".join(value) if isinstance(value, list) else value


# ---------------------------------------------------------------- to the model


def _build(values: dict[str, Value], lines: dict[str, int], label: str, source: Path | None,
           warnings: list[str]) -> PusherConfig:
    def where(name: str) -> str:
        return f"{label}:{lines.get(name, 1)}: {name}"

    def scalar(name: str, default: str = "") -> str:
        value = values.get(name, default)
        return " ".join(value) if isinstance(value, list) else value

    def number(name: str, default: float, scale: float = 1) -> float:
        text = scalar(name, "")
        try:
            return parse_duration(text) * scale if text else default
        except ValueError as exc:
            raise ConfigError(f"{where(name)}: {exc}") from None

    def flag(name: str, default: bool) -> bool:
        return scalar(name, "1" if default else "0").strip() == "1"

    work_dir = Path(scalar("work_dir", DEFAULT_WORK_DIR))
    sources = _sources(values, where, scalar, work_dir, flag("exec_command_enable", False))
    try:
        bwlimit = _bwlimit(scalar("rsync_bwlimit")) if scalar("rsync_bwlimit") else None
    except ValueError as exc:
        raise ConfigError(f"{where('rsync_bwlimit')}: {exc}") from None
    extra_args = tuple(shlex.split(scalar("extra_rsync_args")))
    appending = [a for a in extra_args if a in APPEND_ARGS]
    if appending:
        warnings.append(f"{where('extra_rsync_args')}: {' '.join(appending)} skips files whose size did not "
                        "grow (a same-size or shrinking edit never lands); batches keep it, full syncs run "
                        "without it so they repair what it skipped")
    config = PusherConfig(
        sources=sources,
        state_dir=Path(scalar("state_dir")) if scalar("state_dir") else work_dir / "state",
        logs_dir=Path(scalar("logs_dir")) if scalar("logs_dir") else None,
        delay_s=number("real_time_sync_delay", 5.0),
        realtime=flag("real_time_sync_enable", True),
        full_sync_at_start=flag("full_rsync_first_enable", True),
        full_sync_interval_s=(number("full_rsync_interval", 0, 86400) or None)
        if flag("full_rsync_enable", False) else None,
        full_sync_timeout_s=number("full_rsync_timeout", 0, 3600) or None,
        rsync_timeout_s=int(number("rsync_timeout", 600)),
        bwlimit=bwlimit,
        extra_args=extra_args,
        source=source,
        warnings=tuple(warnings),
    )
    return validate_pusher(config, label)


def _pairs(values: dict[str, Value], name: str) -> list[tuple[str, str]]:
    """``('a=b' 'c')`` -> ``[("a", "b"), ("", "c")]`` (split at the first ``=``)."""
    raw = values.get(name, [])
    items = raw if isinstance(raw, list) else raw.split()
    return [(k, v) if sep else ("", k) for k, sep, v in (item.partition("=") for item in items)]


def _sources(values, where, scalar, work_dir: Path, exec_enabled: bool) -> tuple[SourceConfig, ...]:
    module_of: dict[str, str] = {}
    for module, dirs in _pairs(values, "rsyncd_mod"):
        for d in filter(None, dirs.split(",")):
            module_of.setdefault(d.rstrip("/") or "/", module)  # the first one wins
    hosts_of = {module: [h for h in hosts.split(",") if h] for module, hosts in _pairs(values, "rsyncd_ip")}
    excludes = {d.rstrip("/"): rule for d, rule in _pairs(values, "exclude_file_rule") if d}
    scripts = {d.rstrip("/"): s for d, s in _pairs(values, "exec_command_list") if d}
    user = scalar("rsync_user") or None
    pw = Path(scalar("rsync_passwd_file")) if scalar("rsync_passwd_file") else None
    out = []
    for alias, directory in _pairs(values, "listen_dir"):
        key = directory.rstrip("/") or "/"
        module = module_of.get(key)
        if module is None:
            raise ConfigError(f"{where('listen_dir')}: {directory} is in no rsyncd_mod entry")
        if not hosts_of.get(module):
            raise ConfigError(f"{where('rsyncd_ip')}: module {module} has no address")
        targets = tuple(_target(h, module, user, pw, where) for h in hosts_of[module])
        script = scripts.get(key) if exec_enabled else None
        out.append(SourceConfig(
            path=Path(key),
            targets=targets,
            remote_subdir=alias.strip("/") or key.replace("/", "_"),
            watch_exclude=(f"re:{excludes[key]}",) if key in excludes else (),
            pre_sync_command=shlex.quote(str(work_dir / "scripts" / script)) if script else None,
        ))
    return tuple(out)


def _target(host: str, module: str, user: str | None, pw: Path | None, where) -> Target:
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    if port and not port.isdigit():
        raise ConfigError(f"{where('rsyncd_ip')}: bad port in {host!r}")
    return Target(name, module, "", int(port) if port else RSYNC_PORT, user, pw)
