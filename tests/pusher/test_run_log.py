"""The cause of a failed rsync run stays visible: its error lines (not the stats
that follow them) are kept, and the per-target log keeps earlier runs.
"""

from __future__ import annotations

import asyncio

from backupd.pusher.targets import error_lines, run_rsync
from tests.helpers import make_tree

STATS_TAIL = b"""Number of files: 3 (reg: 2, dir: 1)
Total bytes sent: 143
Total bytes received: 176

sent 143 bytes  received 176 bytes  638.00 bytes/sec
total size is 4  speedup is 0.01
"""


def test_error_lines_are_found_among_the_stats():
    out = (b'ERROR: daemon refused to receive file "blocked.txt"\n' + STATS_TAIL
           + b"rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1394)\n")
    assert error_lines(out) == (
        'ERROR: daemon refused to receive file "blocked.txt"',
        "rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1394)",
    )
    assert error_lines(STATS_TAIL) == ()


def test_a_refused_file_shows_why_and_the_log_keeps_every_run(stock_rsyncd, rsync_clients, tmp_path):
    module = tmp_path / "mod"
    module.mkdir()
    server = stock_rsyncd({"mod": {"path": module, "read only": False, "exclude": "blocked.txt"}})
    src = make_tree(tmp_path / "src", {"blocked.txt": "no\n", "ok.txt": "yes\n"})
    log = tmp_path / "target.rsync.log"
    argv = [str(rsync_clients["3.5.0"].binary), "-a", "--stats", f"{src}/", server.url("mod")]
    first = asyncio.run(run_rsync(argv, log, timeout_s=60))
    second = asyncio.run(run_rsync(argv, log, timeout_s=60))
    for result in (first, second):
        assert result.code == 23
        assert 'ERROR: daemon refused to receive file "blocked.txt"' in result.errors
        assert any(line.startswith("rsync error: ") for line in result.errors)
        assert not any("bytes" in line for line in result.errors)
    text = log.read_text()
    assert text.count("=== ") == 2 and text.count("daemon refused") == 2
    assert (module / "ok.txt").read_text() == "yes\n"
