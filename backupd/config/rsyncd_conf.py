r"""Reader for a real rsyncd.conf: global section, ``[module]`` sections, directives.

File format (rsyncd.conf(5), rsync params.c): line based; a line whose first
non-blank character is ``#`` or ``;`` is a comment; a line ending in ``\``
continues on the next one; ``[name]`` starts a module (``[global]`` returns to
the global section); everything else is ``name = value``, only the first ``=``
counting. ``&include`` and ``&merge`` read other files or directories
(``*.conf`` / ``*.inc``, in name order); relative names are taken from the
directory of the file holding the directive.

Unlike rsyncd, which logs and skips them, a line that is not ``name = value``,
a bad number and a bad boolean are errors here (``ConfigError`` with
``file:line``); unknown parameters are warnings, as in rsyncd.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from backupd.config.builder import ConfigBuilder, is_global_name
from backupd.config.model import DaemonConfig
from backupd.errors import ConfigError

MAX_INCLUDE_DEPTH = 16  # nested &include/&merge levels before we call it a loop

_LEADING_JUNK = re.compile(r"^[\s\\]+")  # blanks and rsync's "bogus backslash"
_DIRECTIVE = re.compile(r"(&[^\s=]*)\s*=?(.*)", re.DOTALL)  # "&include /x", "&merge=/y"


def load_rsyncd_conf(path: Path) -> DaemonConfig:
    """Read and parse the rsyncd.conf at ``path``.

    Raises:
        ConfigError: the file cannot be read, or its content is wrong
            (``file:line: message``).
    """
    return parse_rsyncd_conf(read_config_text(path), source=path)


def parse_rsyncd_conf(text: str, source: Path | None = None) -> DaemonConfig:
    """Parse rsyncd.conf ``text``; ``source`` names it and anchors relative paths.

    Args:
        text: the whole file.
        source: the file it came from; relative paths (module ``path``,
            ``secrets file``, ...) are resolved against its directory, or
            against the current directory when None.

    Returns:
        The configuration, with warnings (unknown or ignored parameters) in
        ``DaemonConfig.warnings``.

    Raises:
        ConfigError: ``file:line: message`` for a malformed line, a bad value,
            a module without ``path``, an unreadable ``&include``.
    """
    builder = ConfigBuilder()
    label = str(source) if source is not None else "<string>"
    base = source.absolute().parent if source is not None else Path.cwd()
    _parse_text(builder, text, label, base, depth=0)
    return builder.build(source)


def read_config_text(path: Path) -> str:
    """The text of a config file; undecodable bytes kept as surrogate escapes.

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    return data.decode("utf-8", "surrogateescape")


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continued lines; drop comments and blank lines.

    Returns:
        ``(line number of the first physical line, content)`` pairs, content
        stripped of leading blanks. Source: rsync params.c Parse(), Continuation().
    """
    lines = text.replace("\r", "").split("\n")
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        number, line = i + 1, _LEADING_JUNK.sub("", lines[i])
        i += 1
        if not line or line[0] in "#;":
            continue
        while (body := line.rstrip()).endswith("\\"):
            line = body[:-1]
            if i >= len(lines):
                break
            line += lines[i]
            i += 1
        out.append((number, line.strip()))
    return out


def _parse_text(builder: ConfigBuilder, text: str, label: str, base: Path, depth: int) -> None:
    """Feed one file's lines into ``builder``; directives recurse."""
    for number, line in logical_lines(text):
        where = f"{label}:{number}"
        if line.startswith("["):
            _section(builder, line, where)
        elif line.startswith("&"):
            name, value = _DIRECTIVE.fullmatch(line).groups()  # always matches
            _directive(builder, name, value.strip(), where, base, depth)
        else:
            name, equals, value = line.partition("=")
            if not equals or not name.strip():
                raise ConfigError(f"{where}: expected 'name = value', got {line!r}")
            builder.set(name.strip(), value.strip(), where, base)


def _section(builder: ConfigBuilder, line: str, where: str) -> None:
    """Handle a ``[name]`` header; text after ``]`` is ignored, as in rsyncd."""
    end = line.find("]")
    if end < 0:
        raise ConfigError(f"{where}: section header without ']': {line!r}")
    name = line[1:end]
    if is_global_name(name):
        builder.enter_global()
    else:
        builder.enter_module(name, where)


def _directive(
    builder: ConfigBuilder, name: str, value: str, where: str, base: Path, depth: int
) -> None:
    """``&include`` (own defaults, rsyncd ``]push``/``]pop``) or ``&merge`` (inline).

    Raises:
        ConfigError: unknown directive, missing file, or nesting too deep.
    """
    kind = name.lower()
    if kind not in ("&include", "&merge"):
        raise ConfigError(f"{where}: unknown directive {name!r}")
    if depth >= MAX_INCLUDE_DEPTH:
        raise ConfigError(f"{where}: {name} nested more than {MAX_INCLUDE_DEPTH} deep")
    target = Path(value) if Path(value).is_absolute() else base / value
    files = _directive_files(target, "*.inc" if kind == "&merge" else "*.conf", where)
    if kind == "&merge":
        for file in files:
            _parse_file(builder, file, depth + 1)
        return
    builder.push()
    for n, file in enumerate(files):
        if n:
            builder.reset()
        _parse_file(builder, file, depth + 1)
    builder.pop()


def _directive_files(target: Path, pattern: str, where: str) -> list[Path]:
    """The file itself, or a directory's files matching ``pattern`` in name order."""
    if target.is_dir():
        names = sorted(p.name for p in target.iterdir() if fnmatch.fnmatchcase(p.name, pattern))
        return [target / name for name in names]
    if target.is_file():
        return [target]
    raise ConfigError(f"{where}: cannot read {target}: not a file or directory")


def _parse_file(builder: ConfigBuilder, path: Path, depth: int) -> None:
    """Parse an included or merged file into the same builder."""
    _parse_text(builder, read_config_text(path), str(path), path.absolute().parent, depth)
