"""Fixtures of the differential tests: server pairs per module setting, combos, summary.

One stock rsyncd and one backupd per (module settings, history) group, started
on first use and kept for the session; both serve module ``mod`` at the same
path ``<base>/mod``, which every scenario rebuilds before each side runs.

Combos (client version, history): CI runs 3.5.0 with ``history = no`` and
3.2.7 with history on; ``BACKUPD_DIFF_ALL=1`` adds the other two.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.differential.harness import MODULE, PASSWORD, USER, Scenario
from tests.helpers import ServerProcess, free_port, render_rsyncd_conf, write_secrets

DEFAULT_COMBOS = [("3.5.0", False), ("3.2.7", True)]
ALL_COMBOS = [("3.5.0", False), ("3.2.7", True), ("3.5.0", True), ("3.2.7", False)]


def combos() -> list[tuple[str, bool]]:
    return ALL_COMBOS if os.environ.get("BACKUPD_DIFF_ALL", "") not in ("", "0") else DEFAULT_COMBOS


def combo_id(version: str, history: bool) -> str:
    return f"c{version}-hist-{'yes' if history else 'no'}"


class ServerPairs:
    """Lazily started (rsyncd, backupd) pairs, keyed by module settings and history."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pairs: dict[tuple[str, bool], tuple[dict[str, ServerProcess], Path]] = {}

    def get(self, scenario: Scenario, history: bool) -> tuple[dict[str, ServerProcess], Path]:
        key = (scenario.group, history)
        if key not in self.pairs:
            self.pairs[key] = self._start(scenario, history, len(self.pairs))
        servers, base = self.pairs[key]
        for _kind, server in servers.items():  # a crashed server is restarted
            if server.proc is None or server.proc.poll() is not None:
                server.start()
        return servers, base

    def _start(self, scenario: Scenario, history: bool, n: int):
        base = self.root / f"g{n}"
        conf = base / "conf"
        conf.mkdir(parents=True)
        (base / "mod").mkdir()
        (base / "client").mkdir()
        module = {
            "path": base / "mod",
            "read only": False,
            "munge symlinks": False,
            "numeric ids": True,
            **({"uid": os.getuid(), "gid": os.getgid()} if os.geteuid() == 0 else {}),
        }
        module.update({k.replace("_", " "): v for k, v in scenario.params.items()})
        if scenario.secrets:
            module["secrets file"] = write_secrets(conf / "secrets", scenario.secrets)
        servers = {}
        for kind in ("rsyncd", "backupd"):
            port = free_port()
            log = conf / f"{kind}.log"
            glob = {"use chroot": False, "reverse lookup": False,
                    "lock file": conf / f"{kind}.lock"}
            mod = dict(module)
            if kind == "rsyncd":
                glob.update({"log file": log, "pid file": conf / "rsyncd.pid"})
            else:
                mod["history"] = history
            path = conf / f"{kind}.conf"
            path.write_text(render_rsyncd_conf(port, glob, {MODULE: mod}))
            if kind == "rsyncd":
                argv = ["/usr/bin/rsync", "--daemon", "--no-detach", f"--config={path}",
                        f"--port={port}", "--address=127.0.0.1"]
                env = None
            else:
                argv = [sys.executable, "-m", "backupd", "serve", "--config", str(path),
                        "--port", str(port), "--address", "127.0.0.1"]
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            server = ServerProcess(argv=argv, port=port, log_path=log, cwd=conf, env=env)
            server.start(20)
            servers[kind] = server
        return servers, base

    def stop(self) -> None:
        for servers, _ in self.pairs.values():
            for server in servers.values():
                server.stop()


@pytest.fixture(scope="session")
def server_pairs(tmp_path_factory):
    pairs = ServerPairs(tmp_path_factory.mktemp("differential"))
    yield pairs
    pairs.stop()


def pytest_terminal_summary(terminalreporter) -> None:
    """The count of passing (and xfailing, failing) scenarios per combo."""
    counts: dict[str, Counter] = {}
    for outcome in ("passed", "xfailed", "failed", "xpassed", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if "test_differential.py::test_scenario[" not in nodeid:
                continue
            if getattr(report, "when", "call") not in ("call", "setup") or (
                outcome == "passed" and report.when != "call"
            ):
                continue
            combo = nodeid.split("[", 1)[1].split("/", 1)[0]
            counts.setdefault(combo, Counter())[outcome] += 1
    if not counts:
        return
    terminalreporter.write_sep("=", "differential scenarios (rsyncd vs backupd)")
    for combo, c in sorted(counts.items()):
        rest = ", ".join(f"{c[k]} {k}" for k in ("xfailed", "failed", "xpassed", "skipped") if c[k])
        terminalreporter.write_line(f"{combo}: {c['passed']} passing" + (f", {rest}" if rest else ""))


__all__ = ["PASSWORD", "USER", "combo_id", "combos"]
