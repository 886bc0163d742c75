"""Section-by-section assembly of a DaemonConfig, shared by both config readers.

A reader walks its file and calls ``enter_global``, ``enter_module`` and
``set(name, value, where, base)``; the builder looks each name up in the one
parameter table (``params.py``), converts the value, applies rsyncd's
inheritance and collects warnings. ``where`` is the location prefix of every
message, ``file:line`` (rsyncd.conf) or ``file:line: modules.x.key`` (YAML).

Inheritance follows rsyncd.conf(5): a module starts from the module
parameters set in the global section *above* its header (loadparm.c
init_section() copies the defaults at that point), then its own settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from backupd.config import params
from backupd.config.model import DaemonConfig, ModuleConfig
from backupd.errors import ConfigError

_ENV_REF = re.compile(r"%[A-Z][A-Za-z0-9_]*%")


@dataclass
class _Module:
    """A module being assembled: its name, header location and fields so far."""

    name: str
    where: str
    fields: dict[str, object] = field(default_factory=dict)


def module_name(raw: str, where: str) -> str:
    """A module name as rsyncd keeps it: whitespace runs become one space.

    Raises:
        ConfigError: empty name, or a name with ``/`` or ``]`` (rsyncd.conf(5)).
    """
    name = " ".join(raw.split())
    if not name or "/" in name or "]" in name:
        raise ConfigError(f"{where}: invalid module name {raw!r} (empty, or has '/' or ']')")
    return name


def is_global_name(name: str) -> bool:
    """True for the special section name ``[global]`` (any case and spacing)."""
    return params.norm_name(name) == "global"


class ConfigBuilder:
    """Collects global and module parameters, then builds a ``DaemonConfig``."""

    def __init__(self) -> None:
        self._daemon: dict[str, object] = {}
        self._defaults: dict[str, object] = {}
        self._modules: dict[str, _Module] = {}
        self._current: _Module | None = None
        self._saved: list[tuple[dict[str, object], dict[str, object]]] = []
        self.warnings: list[str] = []

    def warn(self, where: str, message: str) -> None:
        """Record a warning ``where: message``."""
        self.warnings.append(f"{where}: {message}")

    def enter_global(self) -> None:
        """Switch to the global section (rsyncd's ``[global]``)."""
        self._current = None

    def enter_module(self, raw_name: str, where: str) -> str:
        """Switch to module ``raw_name``, creating it from the current defaults.

        A second section of the same name (compared like rsyncd: case and
        whitespace ignored) continues the first one.

        Returns:
            The module's name as stored.

        Raises:
            ConfigError: the name is invalid (see ``module_name``).
        """
        name = module_name(raw_name, where)
        key = params.norm_name(name)
        if key not in self._modules:
            self._modules[key] = _Module(name, where, dict(self._defaults))
        self._current = self._modules[key]
        return self._current.name

    def push(self) -> None:
        """Save the global settings and defaults (``&include`` start)."""
        self._saved.append((dict(self._daemon), dict(self._defaults)))
        self.enter_global()

    def reset(self) -> None:
        """Restore the settings saved by the last ``push`` and keep them saved."""
        daemon, defaults = self._saved[-1]
        self._daemon, self._defaults = dict(daemon), dict(defaults)
        self.enter_global()

    def pop(self) -> None:
        """Restore the settings saved by the last ``push`` (``&include`` end)."""
        self.reset()
        self._saved.pop()

    def set(self, name: str, value: object, where: str, base: Path) -> None:
        """Apply one ``name = value`` in the current section.

        Args:
            name: the parameter name in any accepted spelling.
            value: text (rsyncd.conf) or a YAML scalar or list.
            where: location prefix for messages.
            base: directory that relative paths are resolved against.

        Raises:
            ConfigError: the value does not convert (bad number, boolean, ...).
        """
        param = params.lookup(name)
        if param is None:
            self.warn(where, f"unknown parameter {name!r} ignored")
            return
        if not self._accepts_here(param, where):
            return
        try:
            converted = param.convert(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {param.name!r}: {exc}") from None
        if isinstance(converted, Path):
            if _ENV_REF.search(str(converted)):
                self.warn(where, f"{param.name!r}: %VAR% references are not expanded")
            converted = converted if converted.is_absolute() else base / converted
        self._store(param, converted)

    def _accepts_here(self, param: params.Param, where: str) -> bool:
        """Whether ``param`` has an effect in the current section; warn if not."""
        module = self._current
        if module is not None and param.global_only:
            self.warn(where, f"global parameter {param.name!r} ignored in module [{module.name}]")
            return False
        if module is not None and param.module_field is None and param.daemon_field:
            self.warn(
                where,
                f"per-module {param.name!r} is not supported; set it in the global section",
            )
            return False
        if param.module_field is None and param.daemon_field is None:
            if param.note:
                self.warn(where, f"{param.name!r} is ignored by backupd: {param.note}")
            return False
        return True

    def _store(self, param: params.Param, value: object) -> None:
        """Put a converted value into the current module, or the globals."""
        targets: list[tuple[dict[str, object], str]] = []
        if self._current is not None:
            targets.append((self._current.fields, param.module_field or ""))
        else:
            if param.daemon_field:
                targets.append((self._daemon, param.daemon_field))
            if param.module_field:
                targets.append((self._defaults, param.module_field))
        for fields, key in targets:
            if value is params.UNSET:
                fields.pop(key, None)
            else:
                fields[key] = value

    def build(self, source: Path | None) -> DaemonConfig:
        """The finished configuration, modules in the order first defined.

        Raises:
            ConfigError: a module has no ``path`` (located at its header).
        """
        modules: dict[str, ModuleConfig] = {}
        for module in self._modules.values():
            if module.fields.get("path") is None:
                raise ConfigError(f"{module.where}: module [{module.name}] has no path")
            if module.fields.get("auth_users") and module.fields.get("secrets_file") is None:
                self.warn(
                    module.where,
                    f"module [{module.name}] has auth users but no "
                    "secrets file: no login can succeed",
                )
            fields = module.fields
            if "numeric_ids" not in fields:  # unset: on with chroot (clientserver.c, no name converter here)
                fields = {**fields, "numeric_ids": fields.get("use_chroot", ModuleConfig.use_chroot)}
            modules[module.name] = ModuleConfig(name=module.name, **fields)
        return DaemonConfig(
            modules=modules, source=source, warnings=tuple(self.warnings), **self._daemon
        )
