"""A push to a snapshot view ``MODULE@T`` is refused as stock rsyncd refuses a push to a
``read only = yes`` module: the same client exit code, with a message naming the view.

rsyncd cannot refuse a push before ``@RSYNCD: OK``: the direction (``--sender`` or
not) arrives with the arguments, after the OK, so its read-only refusal is
main.c do_server_recv's ``ERROR: module is read only`` sent once the transfer
starts. backupd refuses a view push at that same point, so every client sees
what it sees for a read-only rsyncd module.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import pytest

from tests.helpers import File, make_tree, scan_tree
from tests.interop.conftest import T0, assert_ok, show


@pytest.fixture
def source(tmp_path):
    return make_tree(tmp_path / "src", {"a.txt": File(b"a\n", mtime=T0), "d": {"b": File(b"b\n", mtime=T0)}})


@pytest.mark.parametrize("form", ["url", "double-colon"])
def test_push_to_a_view_is_refused_like_a_read_only_module(make_targets, rsync_client, source,
                                                           tmp_path, form):
    stock = make_targets(("rsyncd",), extra_modules={"ro": {"path": None, "read only": True}})["rsyncd"]
    ours = make_targets(("backupd",), params={"catalog dir": tmp_path / "catalogs"})["backupd"]
    assert_ok(ours.push(rsync_client, "-a", f"{source}/"))          # a catalog with one version of each
    before = scan_tree(ours.module)
    view = f"mod@{(datetime.now() + timedelta(seconds=1)).strftime('%Y-%m-%dT%H:%M:%S')}"
    if form == "url":
        refused_stock = rsync_client.run("-a", f"{source}/", stock.server.url("ro"), timeout=30)
        refused = rsync_client.run("-a", f"{source}/", ours.server.url(view, "d/"), timeout=30)
    else:
        refused_stock = rsync_client.run("-a", f"--port={stock.server.port}", f"{source}/", "127.0.0.1::ro",
                                         timeout=30)
        refused = rsync_client.run("-a", f"--port={ours.server.port}", f"{source}/", f"127.0.0.1::{view}/",
                                   timeout=30)
    assert "ERROR: module is read only" in refused_stock.stderr, show(refused_stock)
    assert f"ERROR: module {view} is a read-only snapshot view" in refused.stderr, show(refused)
    assert os.listdir(stock.module.parent / "ro") == []
    assert scan_tree(ours.module) == before                          # nothing written, nothing archived
    assert refused.returncode == refused_stock.returncode != 0, f"{show(refused_stock)}\n\n{show(refused)}"
