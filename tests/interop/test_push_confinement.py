"""Nothing a client pushes reaches outside the module, even through symlinks inside it."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import make_tree


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_symlinked_dirs_in_the_module_are_never_followed(backupd_server, rsync_clients, tmp_path):
    client = rsync_clients["3.5.0"]
    outside = make_tree(tmp_path / "outside", {"secret.txt": "do not touch\n"})
    before = snapshot(outside)
    module = tmp_path / "mod"
    module.mkdir()
    os.symlink(outside, module / "evil")
    os.symlink(outside, module / "evil2")
    server = backupd_server({"modules": {"mod": {"path": str(module), "read_only": False}}})
    src = make_tree(tmp_path / "src", {"evil": {"secret.txt": "overwritten?\n", "new.txt": "x"}})

    tree_push = client.run("-a", f"{src}/", server.url("mod"))
    into_link = client.run("-a", f"{src}/evil/", server.url("mod", "evil2/"))
    relative = client.run("-aR", "evil/new.txt", server.url("mod", "evil2/sub/"), cwd=src)

    assert snapshot(outside) == before
    assert tree_push.returncode == 0, tree_push.stderr
    assert (module / "evil").is_dir() and not (module / "evil").is_symlink()
    assert (module / "evil" / "secret.txt").read_text() == "overwritten?\n"
    kept = list((module / "history-backup").rglob("evil"))
    assert kept and all(p.is_symlink() for p in kept)
    assert into_link.returncode != 0 and relative.returncode != 0
    assert (module / "evil2").is_symlink()
