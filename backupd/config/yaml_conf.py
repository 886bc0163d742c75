"""Reader for ``backupd.yaml``: the rsyncd.conf settings as YAML.

Shape (design.md §1 Configuration; bench/run.py render_yaml() writes it)::

    global:                    # rsyncd's global section
      port: 8730
      read_only: false         # a module parameter here is every module's default
    modules:
      bench:                   # module name -> its settings
        path: /srv/bench
        auth_users: [alice, "@staff:ro"]

Keys are the rsyncd.conf names with ``_`` for spaces (spaces work too);
values are YAML scalars, or lists for list parameters (a list item is one
entry, kept whole). Names and conversions come from the same table as the
rsyncd.conf reader (``params.py``). Messages name ``file:line: key.path``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from backupd.config.builder import ConfigBuilder, is_global_name
from backupd.config.model import DaemonConfig
from backupd.config.rsyncd_conf import read_config_text
from backupd.errors import ConfigError

_SECTIONS = ("global", "modules")
KeyPath = tuple[str, ...]


def load_yaml_conf(path: Path) -> DaemonConfig:
    """Read and parse the YAML config at ``path``.

    Raises:
        ConfigError: the file cannot be read, is not valid YAML, or a value
            is wrong (``file:line: key.path: message``).
    """
    return parse_yaml_conf(read_config_text(path), source=path)


def parse_yaml_conf(text: str, source: Path | None = None) -> DaemonConfig:
    """Parse YAML ``text``; ``source`` names it and anchors relative paths.

    Returns:
        The configuration; unknown keys are warnings in ``DaemonConfig.warnings``.

    Raises:
        ConfigError: invalid YAML, a section that is not a mapping, a bad
            value, a module without ``path``.
    """
    label = str(source) if source is not None else "<string>"
    base = source.absolute().parent if source is not None else Path.cwd()
    data, lines = _compose(text, label)
    locate = _Locator(label, lines)
    root = _mapping(data, (), locate)
    builder = ConfigBuilder()
    for key in root:
        if str(key) not in _SECTIONS:
            builder.warn(locate((str(key),)), f"unknown section {str(key)!r} ignored")
    for key, value in _mapping(root.get("global"), ("global",), locate).items():
        builder.set(str(key), value, locate(("global", str(key))), base)
    for name, settings in _mapping(root.get("modules"), ("modules",), locate).items():
        path = ("modules", str(name))
        if is_global_name(str(name)):
            raise ConfigError(f"{locate(path)}: module name {name!r} is reserved")
        builder.enter_module(str(name), locate(path))
        for key, value in _mapping(settings, path, locate).items():
            builder.set(str(key), value, locate((*path, str(key))), base)
    builder.enter_global()
    return builder.build(source)


class _Locator:
    """Formats ``file:line: key.path`` for a key path (line of its key)."""

    def __init__(self, label: str, lines: dict[KeyPath, int]) -> None:
        self._label = label
        self._lines = lines

    def __call__(self, path: KeyPath) -> str:
        line = next(
            (self._lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in self._lines), 1
        )
        where = f"{self._label}:{line}"
        return f"{where}: {'.'.join(path)}" if path else where


def _mapping(value: object, path: KeyPath, locate: _Locator) -> dict:
    """``value`` as a dict (None -> empty).

    Raises:
        ConfigError: ``value`` is not a mapping.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        what = "the top level" if not path else ".".join(path)
        raise ConfigError(f"{locate(path)}: {what} must be a mapping, got {value!r}")
    return value


def load_yaml_node(text: str, label: str) -> tuple[object, yaml.Node | None]:
    """Load YAML (safe types only); return the data and its node tree (for line numbers).

    Raises:
        ConfigError: not valid YAML, with ``label:line`` of the problem.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{label}:{line}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    return data, node


def _compose(text: str, label: str) -> tuple[object, dict[KeyPath, int]]:
    """Load YAML and note each key's line, three levels deep."""
    data, node = load_yaml_node(text, label)
    lines: dict[KeyPath, int] = {}
    _note_lines(node, (), lines)
    return data, lines


def _note_lines(node: yaml.Node | None, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    """Record the 1-based line of every mapping key down to depth 3."""
    if not isinstance(node, yaml.MappingNode) or len(path) >= 3:
        return
    for key_node, value_node in node.value:
        key_path = (*path, str(key_node.value))
        lines[key_path] = key_node.start_mark.line + 1
        _note_lines(value_node, key_path, lines)
